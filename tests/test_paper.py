"""The paper's numbers and the findings (a)-(g) in rlvr_nb.paper: consistent with each other and with the
library's defaults, the predicates' edges, and no paper number typed anywhere else in the studies' code."""

from __future__ import annotations

import ast
import inspect
import math
import re
from pathlib import Path

import pytest

from rlvr_nb import paper

ROOT = Path(__file__).resolve().parents[1]


def test_the_numbers_hang_together():
    assert paper.MEDIAN_R2 == {("RL", "weight"): 0.85, ("RL", "token"): 0.83, ("SFT", "weight"): 0.43,
                               ("SFT", "token"): 0.34}
    assert paper.N_CHECKPOINTS == 14 and paper.CHECKPOINT_STEPS[-1] == 1300
    lo, hi = paper.TOKEN_R2_RANGE
    assert paper.RL_TOKEN_R2 < lo < hi  # one token median; the histogram's mass lies above it
    assert paper.FINDING_B["median"] == lo and paper.FINDING_A["median"] == paper.RL_WEIGHT_R2
    assert paper.SNR_PEAK_DB in paper.SNR_DBS and round(paper.SNR_PEAK_MEDIAN, 2) == 0.58
    assert paper.SNR_BASELINE_MEDIAN == paper.SFT_WEIGHT_R2
    assert paper.FINDING_C["lowest_db"] == min(paper.SNR_DBS)
    assert set(paper.FINDING_C["moderate_db"]) <= set(paper.SNR_DBS)
    assert paper.SPEEDUP_MAX_SETTING in paper.REGROUNDING_SETTINGS and paper.SPEEDUP_TYPICAL[1] < paper.SPEEDUP_MAX
    assert paper.FIG5_PEAK_TARGETS[1400] == 1800 and set(paper.FIG5_PEAK_TARGETS) == set(paper.FIG5_T_SECONDS)
    assert f"lr {paper.RL_LR:.0e}".replace("e-06", "e-6") in paper.RL_RUN_LABEL


def test_table1_alpha_is_the_alpha_formula_of_its_steps():
    from rlvr_nb.extrapolate import alpha_for
    from rlvr_nb.regrounding import regrounding_alpha

    assert alpha_for(*paper.TABLE1_STEPS) == paper.TABLE1_ALPHA
    assert regrounding_alpha(*paper.SPEEDUP_MAX_SETTING) == alpha_for(0, 20, 120) == 6.0


def test_library_defaults_are_the_papers():
    from rlvr_nb.decomposition import second_order_summary
    from rlvr_nb.experiments.robustness import plot_robustness, snr_finding
    from rlvr_nb.figures import plot_sweep
    from rlvr_nb.linearity import LinearityConfig

    c = LinearityConfig()
    assert (c.min_range, c.min_distinct, c.min_samples, c.threshold) == (
        paper.MIN_RANGE, paper.MIN_DISTINCT, paper.MIN_SAMPLES, paper.R2_THRESHOLD)
    default = lambda f, name: inspect.signature(f).parameters[name].default  # noqa: E731
    assert default(second_order_summary, "threshold") == paper.FINDING_D["max_fraction"]
    assert default(snr_finding, "margin") == paper.FINDING_C["margin"]
    assert default(snr_finding, "moderate") == paper.FINDING_C["moderate_db"]
    assert default(plot_robustness, "threshold") == paper.R2_THRESHOLD
    assert default(plot_sweep, "target") == paper.FINDING_A["median"]


def test_findings_a_and_b():
    assert paper.weight_finding_holds(0.85, 0.701)
    assert not paper.weight_finding_holds(0.849, 0.9) and not paper.weight_finding_holds(0.9, 0.70)  # "over 70%"
    assert paper.token_finding_holds(0.85) and not paper.token_finding_holds(0.849)
    assert not paper.token_finding_holds(None) and not paper.token_finding_holds(math.nan)


def test_finding_c_rises_and_falls_back_by_the_margin():
    assert paper.snr_rises(0.43, 0.46) and not paper.snr_rises(0.43, 0.45) and not paper.snr_rises(0.43, 0.44)
    assert paper.snr_falls_back(0.58, 0.41, 0.40) and not paper.snr_falls_back(0.58, 0.57, 0.40)
    assert not paper.snr_falls_back(0.58, 0.41, 0.57) and paper.snr_rises(0.43, 0.44, margin=0.0)


def test_findings_d_to_g():
    assert paper.second_order_negligible(0.049) and not paper.second_order_negligible(0.05)
    assert not paper.second_order_negligible(math.nan)
    assert paper.extrapolation_finding_holds([True, True]) and not paper.extrapolation_finding_holds([True, False])
    assert paper.speedup_finding_holds(2.0) and not paper.speedup_finding_holds(1.99)
    assert not paper.speedup_finding_holds(math.nan)
    assert [paper.logits_finding(b, 3) for b in (3, 1, 0)] == ["holds", "holds in part", "does not hold"]


# --------------------------------------------------------------------------------------------------
# No paper number typed elsewhere


PAPER_NUMBERS = {0.582, 0.58, 0.83, 0.85, 0.34, 0.43, 0.73, 0.87, 6.1, 6.3, 5.2, 5.7, 10.6, 41.5, 0.38, 1e-6}
"""Numbers only the paper's results give (plot styling such as alpha 0.7 or a 0.95 CI level are not among them)."""
QUOTED = re.compile(r"paper:?\s*[~+]?\d")
"""A string that states a paper number itself, e.g. "(paper: +4.2%)" or "paper 0.83-0.85"."""


def studies_code() -> list[Path]:
    return (sorted((ROOT / "notebooks").glob("[0-9]*.py")) + [ROOT / "rlvr_nb" / "figures.py"]
            + sorted((ROOT / "rlvr_nb" / "experiments").glob("*.py")))


@pytest.mark.parametrize("path", studies_code(), ids=lambda p: p.name)
def test_studies_read_paper_numbers_from_paper_py(path):
    """Code (not markdown or comments) of the notebooks, figures and studies types no paper number."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in PAPER_NUMBERS:
            hits.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, ast.JoinedStr):
            parts = [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
            hits += [f"line {node.lineno}: {p!r}" for p in parts if QUOTED.search(p)]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            hits += [f"line {node.lineno}: {a.value!r}" for a in node.args
                     if isinstance(a, ast.Constant) and isinstance(a.value, str) and QUOTED.search(a.value)]
    assert not hits, f"{path.name} types paper numbers (read them from rlvr_nb.paper): {hits}"


def test_comparison_figure_draws_the_papers_medians():
    import matplotlib

    matplotlib.use("Agg")
    from rlvr_nb.figures import plot_comparison_medians

    rows = [{"comparison": "same lr and steps", "RL median": 0.9, "SFT median": 0.5},
            {"comparison": "paper (Sec. 4)", "RL median": 0.85, "SFT median": 0.43}]
    for what in ("weight", "token"):
        labels = plot_comparison_medians(rows, what, "t").axes[0].get_legend_handles_labels()[1]
        assert f"RL, paper: {paper.MEDIAN_R2[('RL', what)]:.2f}" in labels
        assert f"SFT, paper: {paper.MEDIAN_R2[('SFT', what)]:.2f}" in labels
