"""Notebook 06 (PAPER.md Sec. 6, Figure 6 and Table 2 on our model): periodic re-grounding against standard RL.

The method is `rlvr_nb.regrounding` (the equations, `RegroundConfig`, `run_regrounding`, the ledger); this
module is the study built on it:

- cached runs: `ensure_regrounding_run` (embedded or verl blocks) and `ensure_verl_standard_run` (01's run
  at `gpu` too);
- which model a run holds at each real step (`models_at_real_steps`, `standard_models`) and its held-out
  accuracy there (`accuracy_curve` -> `Curve`);
- the speed-up to a target accuracy (`speedup_rows`, `speedup_summary`, `best_speedup`), accuracy at equal
  real-step budgets (`budget_rows`), the accuracy change of a jump (`extrapolation_jump`);
- Figure 6 on our model (`plot_regrounding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.backends.verl_launcher import EMBEDDED, from_rl_config, run_verl_into, train_block_verl
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.grpo import RLConfig
from rlvr_nb.regrounding import (RegroundConfig, accuracy_at_budgets, read_ledger, run_regrounding, speedup,
                                 steps_to_target)

# ----------------------------------------------------------------------------------------------------
# Cached runs


def ensure_regrounding_run(cfg: RegroundConfig, rl: RLConfig, emb=None, progress: bool = True,
                           trainer: str = "embedded", verl_options: Mapping | None = None,
                           init_dir: str | Path | None = None) -> Path:
    """A re-grounding run from the embedded warm start (or init_dir), cached under runs_root() by config
    hash: trained, resumed or found complete. trainer='verl' trains each block with
    `rlvr_nb.backends.verl_launcher.train_block_verl` (GPU; verl_options: train_data, n_gpus)."""
    from rlvr_nb.embedded import EmbeddedConfig, config_hash, ensure_warm_start, run_lock, runs_root

    emb = EmbeddedConfig() if emb is None else emb
    init = Path(init_dir) if init_dir is not None else ensure_warm_start(emb, progress)
    rl = replace(rl, steps=cfg.budget, ckpt_every=cfg.m)  # per-block values are set by block_rl_config
    key = {'trainer': trainer, 'init': str(init)}
    if trainer == "verl" and verl_options:  # the data and GPUs of its blocks (runs without keep their hashes)
        data = verl_options.get("train_data")
        key["verl"] = {**verl_options, "train_data": str(Path(data).resolve()) if data else None}
    run = runs_root() / f"reground-{config_hash(emb, rl, cfg, key)}"
    train_block = partial(train_block_verl, **dict(verl_options or {})) if trainer == "verl" else None
    with run_lock(run):
        if not (run / "complete.json").exists():
            run_regrounding(cfg, rl, init, run, emb.task, resume=True, progress=progress, trainer=trainer,
                            train_block=train_block)
    return run


def ensure_verl_standard_run(rl: RLConfig, model_path: str | Path, train_data: str | None = None, n_gpus: int = 1,
                             progress: bool = True) -> Path:
    """Standard RL with verl (GPU) from model_path on train_data, cached under runs_root() by config hash like
    the embedded runs: 01 at `gpu` trains it, 06's standard-RL seed 0 (the same RLConfig) finds it. A complete
    run is reused; one not yet there is trained through `run_verl_into`, written beside its place and renamed in
    once complete (an interrupted run is started again: verl runs here are never resumed; a directory in its
    place that this code did not write is refused). The hash holds the RLConfig, the resolved model path, the
    data file's resolved path and content, and n_gpus. Checkpoints: <run>/checkpoints/step_N/."""
    import hashlib

    from rlvr_nb.embedded import config_hash, run_lock, runs_root

    data = str(Path(train_data).resolve()) if train_data and train_data != EMBEDDED else None
    key: dict = {"model": str(Path(model_path).resolve()), "data": data, "n_gpus": n_gpus}
    if data is not None and Path(data).is_file():
        h = hashlib.sha256()
        with open(data, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        key["data_sha256"] = h.hexdigest()
    run = runs_root() / f"verl-rl-{config_hash(rl, key)}"
    with run_lock(run):
        run_verl_into(run, lambda out: from_rl_config(rl, model_path, out, train_data=data, n_gpus=n_gpus),
                      inputs=[model_path, *([data] if data else [])], progress=progress)
    return run


# ----------------------------------------------------------------------------------------------------
# Curves: accuracy against real (and virtual) steps


def models_at_real_steps(run_dir: str | Path, steps: Sequence[int], prefer: str = "extrapolated") -> list[tuple[int, int, Path]]:
    """(real step, virtual step, model dir) of a re-grounding run's model at each real step.

    prefer='extrapolated': the newest model (at a block boundary the extrapolated one, the method's product);
    prefer='rl': the RL checkpoint (at a block boundary the block's end, before its extrapolation).
    A step with no model is an error naming the ones there are."""
    if prefer not in ("extrapolated", "rl"):
        raise ValueError(f"prefer must be 'extrapolated' or 'rl', got {prefer!r}")
    run_dir = Path(run_dir)
    newest: dict[int, dict] = {}
    for e in read_ledger(run_dir):
        if prefer == "extrapolated" or e["kind"] != "extrapolated":
            newest[e["real_step"]] = e  # later lines (the extrapolated model) win
    out = []
    for s in steps:
        if s not in newest:
            raise ValueError(f"{run_dir} has no model at real step {s}; it has {sorted(newest)}")
        out.append((int(s), int(newest[s]["virtual_step"]), run_dir / newest[s]["path"]))
    return out


def standard_models(run_dir: str | Path, steps: Sequence[int]) -> list[tuple[int, int, Path]]:
    """(step, step, checkpoint dir) of a standard RL run at each step (real = virtual)."""
    have = dict(find_checkpoints(run_dir, allow_empty=True))
    missing = [s for s in steps if s not in have]
    if missing:
        raise ValueError(f"{run_dir} has no checkpoint at step(s) {missing}; it has {sorted(have)}")
    return [(int(s), int(s), have[s]) for s in steps]


@dataclass
class Curve:
    """Held-out accuracy of the models of one run against their real and virtual steps."""

    real_steps: np.ndarray
    """[K] real RL steps spent."""
    virtual_steps: np.ndarray
    """[K] real plus extrapolated steps."""
    accuracy: np.ndarray
    """[K] avg@k at temperature 1 on the held-out problems."""
    label: str = ""
    meta: dict = field(default_factory=dict)


def accuracy_curve(models: Sequence[tuple[int, int, Path]], problems, eval_cfg, cache_dir: str | Path | None = None,
                   label: str = "", progress: bool = True, grader: str = "exact", policy=None) -> Curve:
    """Evaluate each (real, virtual, dir) model with `rlvr_nb.evaluate.evaluate` (cached) into a Curve.
    policy: dir -> a policy for `evaluate` (e.g. `rlvr_nb.backends.vllm_backend.VllmPolicy`); None samples on the CPU."""
    from rlvr_nb.evaluate import evaluate

    acc = []
    for _, _, d in tqdm(models, desc=f"evaluating {label}", disable=not progress, leave=False):
        p = d if policy is None else policy(d)
        acc.append(evaluate(p, problems, eval_cfg, grader=grader, cache_dir=cache_dir, progress=False).avg_at_k)
        if hasattr(p, "close"):
            p.close()
    return Curve(np.array([r for r, _, _ in models], float), np.array([v for _, v, _ in models], float),
                 np.array(acc, float), label)


def speedup_rows(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], target: float,
                 method: str = "interpolate") -> list[dict]:
    """One row per (setting, seed) plus one per setting for the seed-mean curves: steps to the target of
    standard RL (same seed) and of re-grounding, and their ratio. A run that never reaches the target within
    its budget gets a bound: speed-up < standard steps / budget."""
    rows = []
    for name, by_seed in runs.items():
        for seed in list(by_seed) + ["mean"]:
            c = mean_curve(list(by_seed.values())) if seed == "mean" else by_seed[seed]
            s = mean_curve([std[k] for k in by_seed if k in std]) if seed == "mean" else std.get(seed)
            if s is None:
                continue
            t_std = steps_to_target(s.real_steps, s.accuracy, target, method)
            t_rg = steps_to_target(c.real_steps, c.accuracy, target, method)
            su = speedup(t_std, t_rg)
            if math.isnan(t_rg) and not math.isnan(t_std):
                note = f"< {t_std / c.real_steps[-1]:.2f} (not reached in {int(c.real_steps[-1])} steps)"
            elif math.isnan(t_std):
                note = "standard RL never reaches the target"
            else:
                note = ""
            rows.append({"setting": name, "seed": seed, "standard steps": t_std, "re-grounding steps": t_rg,
                         "speed-up": su, "note": note})
    return rows


def speedup_summary(rows: Sequence[dict]) -> list[dict]:
    """`speedup_rows` pivoted to one row per setting: the speed-up of every seed (a bound '<x' when the run
    never reached the target, 'n/a' when standard RL did not), their median, and that of the seed-mean curves."""
    out: dict[str, dict] = {}
    for r in rows:
        row = out.setdefault(r["setting"], {"setting": r["setting"]})
        su = r["speed-up"]
        if r["seed"] == "mean":
            row["speed-up of the mean curves"] = su
            row["real steps to target (mean curves)"] = r["re-grounding steps"]
            continue
        text = f"{su:.2f}" if not math.isnan(su) else (f"<{r['note'][2:].split()[0]}" if r["note"].startswith("<") else "n/a")
        row.setdefault("_per_seed", []).append(text)
        row.setdefault("_std", []).append("never" if math.isnan(r["standard steps"]) else f"{r['standard steps']:.0f}")
        row.setdefault("_values", []).append(su)
    for row in out.values():
        row["standard steps to target per seed"] = " / ".join(row.pop("_std", []))
        row["speed-up per seed"] = " / ".join(row.pop("_per_seed", []))
        vals = [v for v in row.pop("_values", []) if not math.isnan(v)]
        row["median over seeds reaching it"] = float(np.median(vals)) if vals else math.nan
    return list(out.values())


def extrapolation_jump(newest: Curve, rl: Curve) -> float:
    """Mean accuracy change of a jump: extrapolated model minus the RL checkpoint it was extrapolated from, over
    the evaluated real steps where the two readings of a run differ (block boundaries); NaN if there are none."""
    if not np.array_equal(newest.real_steps, rl.real_steps):
        raise ValueError("the two readings must be evaluated at the same real steps")
    jump = newest.virtual_steps != rl.virtual_steps  # [K]
    return float(np.mean(newest.accuracy[jump] - rl.accuracy[jump])) if jump.any() else math.nan


def best_speedup(rows: Sequence[dict]) -> tuple[dict, list[dict]]:
    """Of `speedup_rows`: the setting whose seed-mean curves reach the target fastest relative to standard RL
    (a NaN speed-up counts as none), and that setting's per-seed rows."""
    mean_rows = [r for r in rows if r["seed"] == "mean"]
    if not mean_rows:
        raise ValueError("no seed-mean rows: give the output of speedup_rows")
    best = max(mean_rows, key=lambda r: -1.0 if math.isnan(r["speed-up"]) else r["speed-up"])
    return best, [r for r in rows if r["seed"] != "mean" and r["setting"] == best["setting"]]


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The seed-mean of curves, on the real steps they all have."""
    common = sorted(set.intersection(*[set(c.real_steps.tolist()) for c in curves]))
    acc = np.mean([[dict(zip(c.real_steps.tolist(), c.accuracy))[s] for s in common] for c in curves], axis=0)
    virt = np.mean([[dict(zip(c.real_steps.tolist(), c.virtual_steps))[s] for s in common] for c in curves], axis=0)
    return Curve(np.array(common, float), virt, np.asarray(acc, float), curves[0].label)


def budget_rows(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], budgets: Sequence[int]) -> list[dict]:
    """Table 2 on our model: accuracy at equal real-step budgets, mean (and spread) over seeds, with the
    difference to standard RL of the same seeds."""
    rows = []
    for name, by_seed in {"standard RL": {k: std[k] for k in sorted(std)}, **runs}.items():
        accs = np.array([accuracy_at_budgets(c.real_steps, c.accuracy, budgets) for c in by_seed.values()])  # [S, B]
        base = np.array([accuracy_at_budgets(std[k].real_steps, std[k].accuracy, budgets) for k in by_seed if k in std])
        row = {"setting": name, "seeds": len(by_seed)}
        for j, b in enumerate(budgets):
            row[f"{b} steps"] = f"{np.nanmean(accs[:, j]):.3f} ± {np.nanstd(accs[:, j]):.3f}"
            if name != "standard RL":
                row[f"Δ@{b}"] = float(np.nanmean(accs[:, j] - base[:, j])) if len(base) == len(accs) else math.nan
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# Figures


def _band(ax, curves: Sequence[Curve], x: str, color, label: str, style: str = "-", floor: float | None = None) -> None:
    """Seed-mean line and min-max band of curves against 'real_steps' or 'virtual_steps'; a curve that falls
    below `floor` (the axis' lower limit) says so in its label."""
    m = mean_curve(curves)
    if floor is not None and m.accuracy.min() < floor:
        label = f"{label}, falls to {m.accuracy.min():.2f} (below the axis)"
    xs = getattr(m, x)
    lo = np.min([[dict(zip(c.real_steps.tolist(), c.accuracy))[s] for s in m.real_steps] for c in curves], axis=0)
    hi = np.max([[dict(zip(c.real_steps.tolist(), c.accuracy))[s] for s in m.real_steps] for c in curves], axis=0)
    ax.plot(xs, m.accuracy, style, color=color, marker=".", ms=4, label=f"{label} (n={len(curves)})")
    if len(curves) > 1:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)


def plot_regrounding(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], target: float,
                     r2_ledgers: Mapping[str, Sequence[Sequence[dict]]] | None = None, max_real: float | None = None,
                     title: str | None = None, ylim: tuple[float, float] | None = None, dashed: Sequence[str] = ()):
    """Figure 6 on our model: accuracy against real RL steps (left) and against virtual steps (middle; a perfect
    extrapolation would lie on standard RL, drawn up to 1.5 x its last step), seed mean with min-max bands;
    right: the R^2-guided horizon, n and the block R^2 per block of each seed. ylim zooms on the accuracy range
    (curves that fall below it say so in the legend); settings named in `dashed` are drawn dash-dotted."""
    ncols = 3 if r2_ledgers else 2
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.2))
    std_curves = [std[k] for k in sorted(std)]
    if max_real is not None:
        std_curves = [Curve(c.real_steps[c.real_steps <= max_real], c.virtual_steps[c.real_steps <= max_real],
                            c.accuracy[c.real_steps <= max_real], c.label) for c in std_curves]
    for ax, x in ((axes[0], "real_steps"), (axes[1], "virtual_steps")):
        _band(ax, std_curves, "real_steps", "k", "standard RL", "--")
        for j, (name, by_seed) in enumerate(runs.items()):
            _band(ax, list(by_seed.values()), x, f"C{j}", name, "-." if name in dashed else "-",
                  None if ylim is None else ylim[0])
        ax.axhline(target, color="gray", lw=0.8, ls=":", label=f"target {target:g}")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set(xlabel="real RL steps" if x == "real_steps" else "virtual steps (real + extrapolated)",
               ylabel="held-out accuracy (avg@k, T=1)")
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy against the real RL steps spent")
    axes[1].set_title("the same models against their virtual step")
    axes[1].set_xlim(right=1.5 * max(c.real_steps[-1] for c in std_curves))
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    if r2_ledgers:
        ax = axes[2]
        ax2 = ax.twinx()
        for j, (name, ledgers) in enumerate(r2_ledgers.items()):
            for s, ledger in enumerate(ledgers):
                ends = [e for e in ledger if "next_n" in e]
                real = [e["real_step"] for e in ends]
                ax.plot(real, [e["n"] for e in ends], "o-", color=f"C{j}", alpha=0.8, ms=4,
                        label=f"{name}: n" if s == 0 else None)
                ax2.plot(real, [e["block_r2"] if e["block_r2"] is not None else np.nan for e in ends], "s:",
                         color="tab:red", alpha=0.6, ms=3, label="block median R$^2$" if s == 0 and j == 0 else None)
        ax.set(xlabel="real RL steps (block end)", ylabel="n, extrapolated steps after the block",
               title="R$^2$-guided horizon, every seed")
        ax2.set_ylabel("block median weight R$^2$", color="tab:red")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
