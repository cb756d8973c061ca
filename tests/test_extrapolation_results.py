"""Sec. 6 read off: finding (e) from a Figure 5 curve (peak, rise, fall, vs RL at the same step), Table 1 rows
and the late-stage decline, the distance plot, and a tiny end-to-end run."""

import ast
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from rlvr_nb.evaluate import EvalConfig, EvalResult, mean_ci, paired_difference, relative_difference
from rlvr_nb.experiments.extrapolation_results import (
    LogitsRow, accuracy_grid, late_stage_decline, logits_comparison, logits_extrapolation_rows, plot_distance,
    plot_extrapolation_curves, rl_accuracy, summarize_extrapolation, weight_extrapolation_curves,
)
from rlvr_nb.motion import distance, segment_cosine
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.tasks import AdditionTask, TaskConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def result(per_question, k=4):
    lo, hi = mean_ci(per_question)
    return EvalResult(avg_at_k=sum(per_question) / len(per_question), ci_low=lo, ci_high=hi, pass_at_k={1: 0.0},
                      per_question=list(per_question), n_correct=[round(p * k) for p in per_question], k=k)


def shifted(base, delta):
    """Questions 0..n-1 of `base` with delta added to every other one: a clear paired difference."""
    return result([min(1.0, max(0.0, p + (delta if i % 2 == 0 else delta / 2))) for i, p in enumerate(base)])


BASE_Q = [0.25, 0.5, 0.5, 0.75] * 25  # 100 questions


def test_summarize_extrapolation_rise_peak_fall_and_rl_comparison():
    rl = {0: result(BASE_Q), 200: shifted(BASE_Q, 0.1), 300: shifted(BASE_Q, 0.12), 400: shifted(BASE_Q, 0.15)}
    curve = {1.0: rl[200], 1.5: shifted(BASE_Q, 0.16), 2.0: shifted(BASE_Q, 0.2), 3.0: shifted(BASE_Q, -0.1)}
    f = summarize_extrapolation(curve, 0, 200, rl)
    assert (f.peak_alpha, f.peak_target) == (2.0, 400.0)
    assert f.rises and f.falls and f.holds
    assert f.gain_at_peak.diff == pytest.approx(0.075)
    # targets 300 (alpha 1.5) and 400 (alpha 2) are RL checkpoints; 600 (alpha 3) is not
    assert [(a, t) for a, t, _ in f.vs_rl] == [(1.5, 300.0), (2.0, 400.0)]
    assert [c.verdict for _, _, c in f.vs_rl] == ["beats", "beats"]
    assert [t for _, t, _ in f.matches_or_beats_rl] == [300.0, 400.0]
    assert "peak" in f.sentence() and "400" in f.sentence()


def test_summarize_extrapolation_when_the_finding_fails():
    rl = {0: result(BASE_Q), 200: shifted(BASE_Q, 0.1), 300: shifted(BASE_Q, 0.2)}
    falling = {1.5: shifted(BASE_Q, 0.0), 2.0: shifted(BASE_Q, -0.1)}  # alpha 1 (from rl) is the peak
    f = summarize_extrapolation(falling, 0, 200, rl)
    assert f.peak_alpha == 1.0 and not f.rises and not f.holds and f.falls
    assert [c.verdict for _, _, c in f.vs_rl] == ["below"] and f.matches_or_beats_rl == []
    rising = {1.5: shifted(BASE_Q, 0.2), 2.0: shifted(BASE_Q, 0.3)}  # never turns down: no fall
    g = summarize_extrapolation(rising, 0, 200, rl)
    assert g.rises and g.drop_after_peak is None and not g.falls and not g.holds
    assert g.vs_rl[0][2].verdict == "matches"  # 300: extrapolated equals RL
    with pytest.raises(ValueError, match="empty curve"):
        summarize_extrapolation({}, 0, 200, rl)
    with pytest.raises(ValueError, match="t_second=250"):
        summarize_extrapolation({1.5: rl[300]}, 0, 250, rl)


def test_late_stage_decline():
    rl = {0: result(BASE_Q), 100: shifted(BASE_Q, 0.2), 200: shifted(BASE_Q, 0.05)}
    late = late_stage_decline(rl)
    assert (late.best_step, late.last_step) == (100, 200) and late.declines and "late-stage decline" in late.sentence()
    rising = late_stage_decline({0: result(BASE_Q), 100: shifted(BASE_Q, 0.2)})
    assert not rising.declines and "last one" in rising.sentence()
    with pytest.raises(ValueError):
        late_stage_decline({})


def save_ckpt(d, model, tok, step):
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return d


@pytest.fixture(scope="module")
def line_run(tmp_path_factory):
    """Checkpoints at steps 0, 10, 20, 30, 40 on an exact straight line W_0 + t/10 * D."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    m0 = build_model(ModelConfig(), tok)
    sd0 = {k: v.clone() for k, v in m0.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    direction = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in sd0.items()}
    root = tmp_path_factory.mktemp("run")
    ckpts = {}
    for step in (0, 10, 20, 30, 40):
        m0.load_state_dict({k: sd0[k] + step / 10 * direction[k] for k in sd0})
        ckpts[step] = save_ckpt(root / f"step_{step}", m0, tok, step)
    norm = math.sqrt(sum(float((d.double() ** 2).sum()) for d in direction.values()))
    return ckpts, norm


def test_distance_and_cosine_of_a_straight_line(line_run):
    """The measures 05 prints, on save_pretrained checkpoints of the tiny model (rlvr_nb.motion)."""
    ckpts, norm = line_run
    d = {s: distance(ckpts[0], c) for s, c in ckpts.items()}
    assert d[0] == 0 and all(d[s] == pytest.approx(s / 10 * norm, rel=1e-5) for s in ckpts)
    assert segment_cosine(ckpts[0], ckpts[20], ckpts[40]) == pytest.approx(1.0, abs=1e-5)
    assert segment_cosine(ckpts[20], ckpts[40], ckpts[0]) == pytest.approx(-1.0, abs=1e-5)
    fig, ax = plt.subplots()
    plot_distance(ax, d, 0)
    assert ax.get_xlabel() == "RL step t"
    plt.close(fig)


def test_curves_and_table_end_to_end(tmp_path, line_run):
    ckpts, _ = line_run
    problems = AdditionTask(TaskConfig(n_eval=6)).eval_problems
    cfg = EvalConfig(k=2, max_new_tokens=6, temperature=0.6, top_p=0.95)
    rl = {0.6: rl_accuracy(ckpts, problems, cfg, cache_dir=tmp_path / "cache", progress=False)}
    curves = weight_extrapolation_curves(ckpts, 0, [10, 20], [1.0, 2.0], tmp_path / "extra", problems, cfg,
                                         cache_dir=tmp_path / "cache", progress=False)
    # alpha = 1 is the t_1 checkpoint itself; alpha = 2 from a straight line lands on the checkpoint at 2 t_1
    # (up to float rounding), so it samples like RL there
    assert curves[10][1.0].per_question == rl[0.6][10].per_question
    assert curves[20][2.0].avg_at_k == pytest.approx(rl[0.6][40].avg_at_k, abs=0.25)
    assert not (tmp_path / "extra" / "step_0-to-step_10-alpha1").exists()
    f = summarize_extrapolation(curves[20], 0, 20, rl[0.6])
    assert [t for _, t, _ in f.vs_rl] == [40.0]
    grid = accuracy_grid(curves)
    assert grid[10][0] == [1.0, 2.0] and len(grid[10][1]) == 2
    fig, ax = plt.subplots()
    plot_extrapolation_curves(ax, curves, 0, rl[0.6], k=2)
    assert "target step" in ax.get_xlabel() and len(ax.get_legend().get_texts()) == 3
    plt.close(fig)

    rows = logits_extrapolation_rows(ckpts, [(10, 20)], 1.5, [(0.6, 0.95)], problems, cfg, rl,
                                     cache_dir=tmp_path / "cache", progress=False)
    (row,) = rows
    assert row.t_target == 25.0 and row.rl_target is None and row.rl_same_step is rl[0.6][20]
    assert "not a checkpoint" in row.as_dict(last_step=40)["RL at target (the paper's comparison)"]
    (row,) = logits_extrapolation_rows(ckpts, [(20, 30)], 2.0, [(0.6, 0.95)], problems, cfg, rl,
                                       cache_dir=tmp_path / "cache", progress=False)
    assert row.t_target == 40.0 and row.rl_target is rl[0.6][40] and row.vs_target is not None
    (row,) = logits_extrapolation_rows(ckpts, [(20, 40)], 1.5, [(0.6, 0.95)], problems, cfg, rl,
                                       cache_dir=tmp_path / "cache", progress=False)
    assert "beyond the run" in row.as_dict(last_step=40)["RL at target (the paper's comparison)"]
    with pytest.raises(ValueError, match="no checkpoint at step"):
        logits_extrapolation_rows(ckpts, [(0, 15)], 1.5, [(0.6, 0.95)], problems, cfg, rl, progress=False)
    with pytest.raises(ValueError, match="no RL evaluation at temperature"):
        logits_extrapolation_rows(ckpts, [(0, 10)], 1.5, [(1.0, 1.0)], problems, cfg, rl, progress=False)
    with pytest.raises(ValueError, match="after t_base"):
        weight_extrapolation_curves(ckpts, 20, [10], [1.5], tmp_path / "extra", problems, cfg, progress=False)


# ---------------------------------------------------------------------------------------------------- finding (g)


def test_relative_difference_in_percent_with_a_paired_interval():
    a, b = shifted(BASE_Q, 0.1), result(BASE_Q)
    one = relative_difference([(a, b)])
    assert one.unit == "%" and one.diff == pytest.approx(100 * (a.avg_at_k / b.avg_at_k - 1))
    assert one.ci_low < one.diff < one.ci_high and one.verdict == "beats" and str(one).startswith(f"{one.diff:+.1f}% [")
    # the delta-method interval is the width a bootstrap over the (paired) questions finds
    qa, qb = np.array(a.per_question), np.array(b.per_question)
    idx = np.random.default_rng(0).integers(0, qa.size, size=(4000, qa.size))
    boot = 100 * (qa[idx].mean(1) / qb[idx].mean(1) - 1)
    assert one.ci_high - one.ci_low == pytest.approx(np.diff(np.percentile(boot, [2.5, 97.5]))[0], rel=0.15)
    # a constant ratio on every question has no spread: a zero-width interval
    c = result([0.8 * q for q in BASE_Q])
    flat = relative_difference([(c, b)])
    assert flat.diff == pytest.approx(-20.0) and flat.ci_high - flat.ci_low == pytest.approx(0.0, abs=1e-9)
    two = relative_difference([(a, b), (c, b)])
    assert two.diff == pytest.approx((one.diff + flat.diff) / 2)  # the mean over pairs, as the paper averages
    with pytest.raises(ValueError, match="same non-empty question set"):
        relative_difference([(a, result(BASE_Q[:10]))])
    with pytest.raises(ValueError, match="avg@k > 0"):
        relative_difference([(a, result([0.0] * 100))])
    with pytest.raises(ValueError, match="same non-empty question set"):
        relative_difference([])


def logits_row(extra, second, target, temperature=0.6):
    return LogitsRow(temperature, 0.95, 0, 200, 1.5, 300.0, extra, second, paired_difference(extra, second),
                     target, paired_difference(extra, target) if target else None)


def test_logits_comparison_against_the_target_step_and_t1():
    """Finding (g) is read against RL at the target step (the paper's comparison) and at t_1, each in percent with
    a paired interval: here extrapolation beats RL at t_1 but is below RL at the target."""
    second, extra, target = result(BASE_Q), shifted(BASE_Q, 0.1), shifted(BASE_Q, 0.2)
    rows = [logits_row(extra, second, target), logits_row(extra, second, None),  # target beyond the run
            logits_row(extra, second, target, temperature=1.0)]
    rel_t, beats_t, n_t = logits_comparison(rows, 0.6, "target")
    rel_s, beats_s, n_s = logits_comparison(rows, 0.6, "second")
    assert (beats_t, n_t) == (0, 1) and rel_t.verdict == "below" and rel_t.diff < 0
    assert (beats_s, n_s) == (2, 2) and rel_s.verdict == "beats"
    assert rel_t.diff == pytest.approx(rows[0].relative("target").diff)
    assert logits_comparison(rows, 0.3, "target") == (None, 0, 0)
    d = rows[0].as_dict(last_step=400)
    assert d["extra vs RL at target"].startswith(f"{rel_t.diff:+.1f}%") and "RL at target (the paper's comparison)" in d
    assert rows[1].relative("target") is None and rows[1].as_dict(400)["extra vs RL at target"] == "–"
    with pytest.raises(ValueError, match="against must be one of"):
        logits_comparison(rows, 0.6, "same")


# ---------------------------------------------------------------------------------------------------- knob comments

ROOT = Path(__file__).resolve().parents[1]
CPU_COMMENT = re.compile(r"\(cpu (.*?)(?:, [A-Za-z][^()]*)?\)\s*$")


@pytest.mark.parametrize("name", ["05_extrapolation", "06_rl_extra"])
def test_knob_comments_state_the_cpu_profile(name):
    """Every knob comment "(cpu X)" of the parameters cell says the value the profile table has."""
    from rlvr_nb.notebook import profiles

    text = (ROOT / "notebooks" / f"{name}.py").read_text()
    cell = text.split('# %% tags=["parameters"]\n', 1)[1].split("\n# %%", 1)[0]
    table, checked = profiles.PARAMS[name]["cpu"], 0
    for line in cell.splitlines():
        knob, _, comment = line.partition("  # ")
        key = knob.split(" = ")[0]
        m = CPU_COMMENT.search(comment)
        if key in table and m:
            assert ast.literal_eval(m.group(1)) == table[key], f"{name}: {key} says cpu {m.group(1)}, the profile {table[key]!r}"
            checked += 1
    assert checked >= 10
