"""Findings (a) and (b) over seeds of the embedded default RL run (PAPER.md Sec. 4, at tiny scale).

A seed changes the problems drawn, the rollouts sampled and nothing else: every seed starts from the same warm
start (the cool-down's last checkpoint) with the same recipe. Each seed's run is the cached
`embedded.ensure_rl_run(replace(rl, seed=s))`, so seed 0 is the run 01 trains and 02/03 analyse, and 06's
standard-RL seeds are these runs too. The token R^2 of every seed is read on the same probes: responses
sampled from the common first checkpoint (saved under seed 0's run, the file 03 reads).

Training three 1200-step runs takes longer than `make run` allows, so at `cpu` 02 and 03 read the committed
table (`seed_table`, written with its provenance by `rlvr_nb.notebook.report.study_table`) and recompute it
when their `recompute_seeds` knob is set.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from rlvr_nb import paper
from rlvr_nb.checkpoints import to_jsonable
from rlvr_nb.embedded import EmbeddedConfig, ensure_rl_run
from rlvr_nb.experiments.comparisons import GAP_FRACTION, Measurer, RunSpec
from rlvr_nb.findings import Finding, verdict_over
from rlvr_nb.grpo import RLConfig
from rlvr_nb.logprobs import ProbeConfig, ensure_probes
from rlvr_nb.notebook.report import study_table
from rlvr_nb.tasks import AdditionTask
from rlvr_nb.trajectory import load_trajectory

WRITER = "rlvr_nb.experiments.seeds.compute_seed_table"
STATS = {"weight": ("weight median", "weight >0.7"), "token": ("token median", "token >0.7")}


def seed_config(rl: RLConfig, seed: int) -> RLConfig:
    """The default run with another seed (everything else equal)."""
    return replace(rl, seed=seed)


def compute_seed_table(rl: RLConfig, emb: EmbeddedConfig, seeds: Sequence[int], responses_per_prompt: int,
                       progress: bool = True) -> dict:
    """Train (or read, cached) the run of every seed and measure its weight and token R^2 and accuracy:
    {"config", "seeds", "probes", "rows"}, one row per seed."""
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    first = ensure_rl_run(seed_config(rl, seeds[0]), emb, progress)
    prompts = [p.prompt for p in AdditionTask(emb.task).eval_problems]
    probes, probe_path = ensure_probes(load_trajectory(first, progress=False), first, prompts,
                                       ProbeConfig(responses_per_prompt=responses_per_prompt, max_new_tokens=rl.max_new_tokens))
    measurer = Measurer(emb, probes, progress=progress)
    rows = []
    for s in seeds:
        spec = RunSpec(seed_config(rl, s))
        w, t = measurer.weight(spec), measurer.token(spec)
        a0, a1 = measurer.accuracy(spec)
        rows.append({"seed": s, "weight median": round(w.median, 4), "weight >0.7": round(w.frac_above, 4),
                     "token median": round(t.median, 4), "token >0.7": round(t.frac_above, 4),
                     "acc start": round(a0, 4), "acc end": round(a1, 4),
                     "(a)": bool(paper.weight_finding_holds(w.median, w.frac_above)),
                     "(b)": bool(paper.token_finding_holds(t.median)),
                     "run": ensure_rl_run(spec.config, emb, progress).name})
    return {"config": to_jsonable(replace(rl, seed=None)), "seeds": list(seeds),
            "probes": f"{len(probes)} probes ({probe_path.name})", "rows": rows}


def seed_table(path: str | Path, recompute: bool, rl: RLConfig, emb: EmbeddedConfig, seeds: Sequence[int],
               responses_per_prompt: int, command: str, progress: bool = True) -> dict:
    """The seed table at `path`: recomputed and written when `recompute`, else read (its provenance says how it
    was made). A table of another recipe or other seeds than asked is refused, naming what differs."""
    table = study_table(path, recompute, lambda: compute_seed_table(rl, emb, seeds, responses_per_prompt, progress),
                        WRITER, command)
    want = to_jsonable(replace(rl, seed=None))
    if table.get("config") != want or table.get("seeds") != list(seeds):
        differs = sorted(k for k in set(want) | set(table.get("config") or {})
                         if (table.get("config") or {}).get(k) != want.get(k))
        raise ValueError(f"the seed table {path} was computed for other runs than asked (fields {differs}, seeds "
                         f"{table.get('seeds')} vs {list(seeds)}): recompute it with {command}")
    return table


def summary(rows: Sequence[dict], key: str) -> tuple[float, float, float]:
    """(mean, min, max) of one statistic over the seeds."""
    v = np.array([r[key] for r in rows], dtype=float)
    return float(v.mean()), float(v.min()), float(v.max())


def summary_rows(rows: Sequence[dict]) -> list[dict]:
    """The per-seed rows, then one row of seed means with their ranges, then the paper's numbers."""
    out = [dict(r) for r in rows]
    mean = {"seed": f"mean of {len(rows)}"}
    for key in ("weight median", "weight >0.7", "token median", "token >0.7", "acc start", "acc end"):
        m, lo, hi = summary(rows, key)
        mean[key] = f"{m:.3f} [{lo:.3f}, {hi:.3f}]"
    mean["(a)"] = verdict_over([r["(a)"] for r in rows])
    mean["(b)"] = verdict_over([r["(b)"] for r in rows])
    out.append(mean)
    out.append({"seed": "paper", "weight median": paper.RL_WEIGHT_R2, "weight >0.7": f"> {paper.WEIGHT_FRAC_ABOVE:.2f}",
                "token median": paper.RL_TOKEN_R2})
    return out


def seed_findings(rows: Sequence[dict], what: str, notebook: str) -> list[Finding]:
    """Finding (a) (what="weight") or (b) (what="token") over the seeds: the seed mean of the median, its range,
    and "holds in k of n seeds"; for (a) also the fraction of weights above the threshold."""
    if what not in STATS:
        raise ValueError(f"what must be 'weight' or 'token', got {what!r}")
    med, frac = STATS[what]
    n = len(rows)
    m, lo, hi = summary(rows, med)
    fm, flo, fhi = summary(rows, frac)
    if what == "weight":
        return [Finding("a", "RL weight R^2 median", m, (lo, hi), paper.RL_WEIGHT_R2,
                        f">= {paper.FINDING_A['median']} with > {paper.FINDING_A['frac_above']:.0%} above {paper.R2_THRESHOLD}",
                        verdict_over([r["(a)"] for r in rows]), notebook, interval_kind=f"range over {n} seeds"),
                Finding("a_frac", f"RL weights with R^2 > {paper.R2_THRESHOLD}", fm, (flo, fhi), paper.WEIGHT_FRAC_ABOVE,
                        f"> {paper.FINDING_A['frac_above']:.2f}",
                        verdict_over([r[frac] > paper.FINDING_A["frac_above"] for r in rows]), notebook,
                        unit="fraction", interval_kind=f"range over {n} seeds")]
    return [Finding("b", "RL token log-prob R^2 median", m, (lo, hi), paper.RL_TOKEN_R2,
                    f">= {paper.FINDING_B['median']}", verdict_over([r["(b)"] for r in rows]), notebook,
                    interval_kind=f"range over {n} seeds",
                    note=f"tokens with R^2 > {paper.R2_THRESHOLD}: {fm:.2f} [{flo:.2f}, {fhi:.2f}]")]


def seed_section(P, rl: RLConfig, emb: EmbeddedConfig, profile: str, what: str, notebook: str,
                 one_run: Finding) -> list[Finding]:
    """What 02 (what="weight") and 03 (what="token") show of the seed study: the table's path and provenance,
    the per-seed rows with the seed means and ranges, a figure, and the verdict lines; returns the findings.
    `P` holds the notebook's resolved `seeds`, `recompute_seeds`, `seeds_file` and `responses_per_prompt`;
    without seeds (the gpu profile) the finding is `one_run`, judged on the notebook's own run."""
    from IPython.display import display

    from rlvr_nb.embedded import repo_root
    from rlvr_nb.figures import output_path, plot_seed_spread, save_figure
    from rlvr_nb.notebook.report import markdown_table

    if not P.seeds:
        print(f"no seeds at this profile: finding ({one_run.key}) is judged on the notebook's run only")
        return [one_run]
    path = repo_root() / P.seeds_file if P.seeds_file else output_path(f"seeds_{profile}.json", profile,
                                                                       reading=not P.recompute_seeds)
    command = f"python -m rlvr_nb.notebook.run --profile {profile} --only {notebook[:2]} -p recompute_seeds True"
    table = seed_table(path, P.recompute_seeds, rl, emb, P.seeds, P.responses_per_prompt, command)
    print(f"seed table {path}: {table['provenance']}")
    display(markdown_table(summary_rows(table["rows"])))
    med, frac = STATS[what]
    goals = ({med: paper.FINDING_A["median"], frac: paper.FINDING_A["frac_above"]} if what == "weight"
             else {med: paper.FINDING_B["median"]})
    fig = plot_seed_spread(table["rows"], (med, frac), goals, title=f"finding ({one_run.key}) per seed")
    save_figure(fig, f"{notebook[:2]}_seeds")
    found = seed_findings(table["rows"], what, notebook)
    for f in found:
        print(f"finding ({f.key}): {f.name} {f.value:.3f} [{f.interval[0]:.3f}, {f.interval[1]:.3f}] over seeds "
              f"{list(P.seeds)}: {f.verdict} (goal {f.threshold}; paper {f.paper})")
    return found


def comparison_findings(comp_rows: Sequence[dict], what: str, notebook: str) -> list[Finding]:
    """The RL-vs-SFT contrast under each comparison of `comparisons.comparison_rows` as findings: the gap of the
    medians (RL - SFT) against the paper's gap; it reproduces the paper when at least half of it."""
    paper_gap = paper.MEDIAN_R2[("RL", what)] - paper.MEDIAN_R2[("SFT", what)]
    out = []
    for r in comp_rows:
        if r["paper's gap?"] not in ("yes", "no", "n/a"):
            continue  # the paper's own row
        gap = r["gap"] if isinstance(r["gap"], (int, float)) and math.isfinite(r["gap"]) else None
        slug = r["comparison"].replace(" ", "_")
        out.append(Finding(f"rl_vs_sft_{what}_{slug}", f"RL - SFT {what} R^2 median, {r['comparison']}", gap, None,
                           round(paper_gap, 3), f">= {GAP_FRACTION * paper_gap:.2f} (half the paper's gap)",
                           {"yes": "reproduces the gap", "no": "no gap", "n/a": "not measurable"}[r["paper's gap?"]],
                           notebook, note=f"RL {r['RL median']}, SFT {r['SFT median']}" if gap is not None
                           else "a run kept no entries"))
    return out
