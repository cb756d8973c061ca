"""Notebook 06 (PAPER.md Sec. 6, Figure 6 and Table 2 on our model): periodic re-grounding against standard RL.

The method is `rlvr_nb.regrounding` (the equations, `RegroundConfig`, `run_regrounding`, the ledger); this
module is the study built on it:

- cached runs: `ensure_regrounding_run` (embedded or verl blocks) and `ensure_verl_standard_run` (01's run
  at `gpu` too); 06's standard-RL seeds are the profile's run with each seed (`standard_configs`);
- which model a run holds at each block end (`models_at_block_ends`, both readings: the extrapolated model
  and the block's RL checkpoint) and its held-out accuracy there (`accuracy_curve` -> `Curve`);
- the study table (`regrounding_table`, written by `compute_regrounding_table` through
  `rlvr_nb.notebook.report.study_table`): standard RL evaluated first, the target fixed from it by a rule
  (`target_from_standard`), then every re-grounding run trained and evaluated;
- the speed-up to the target at the evaluated models (`speedup_rows`, `speedup_summary` with a bootstrap
  interval over seeds, `best_speedup`), accuracy at equal real-step budgets in percent (`budget_rows`,
  `relative_gain`), the accuracy change of a jump (`extrapolation_jump`);
- Figure 6 on our model (`plot_regrounding`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.backends.verl_launcher import EMBEDDED, from_rl_config, run_verl_into, train_block_verl
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.checkpoints import config_differences, to_jsonable
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook.report import study_table
from rlvr_nb.regrounding import (RegroundConfig, accuracy_at_budgets, read_ledger, run_regrounding, seed_bootstrap,
                                 speedup, steps_to_target)

WRITER = "rlvr_nb.experiments.rl_extra.compute_regrounding_table"
READINGS = ("extrapolated", "rl")
"""The two readings of a re-grounding run at a block end: the extrapolated model (the method's product, the
primary reading) and the block's RL checkpoint before the extrapolation (the secondary one)."""
STANDARD = "standard RL"
TARGET_RULE = ("the seed-mean held-out accuracy of standard RL at step {step}, read off the standard-RL curves "
               "before any re-grounding run")

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


def standard_configs(rl: RLConfig, seeds: Sequence[int], steps: int) -> dict[int, RLConfig]:
    """06's standard-RL seeds: the profile's RL run with each seed and `steps` steps, everything else equal (at
    `cpu` with steps = the run's own, exactly the cached runs of 01 (seed 0) and of 02/03's seed study)."""
    return {s: replace(rl, seed=s, steps=steps) for s in seeds}


# ----------------------------------------------------------------------------------------------------
# Curves: accuracy against real (and virtual) steps


def models_at_real_steps(run_dir: str | Path, steps: Sequence[int], prefer: str = "extrapolated") -> list[tuple[int, int, Path]]:
    """(real step, virtual step, model dir) of a re-grounding run's model at each real step.

    prefer='extrapolated': the newest model (at a block boundary the extrapolated one, the method's product);
    prefer='rl': the RL checkpoint (at a block boundary the block's end, before its extrapolation).
    A step with no model is an error naming the ones there are."""
    if prefer not in READINGS:
        raise ValueError(f"prefer must be one of {READINGS}, got {prefer!r}")
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


def models_at_block_ends(run_dir: str | Path, prefer: str = "extrapolated") -> list[tuple[int, int, Path]]:
    """`models_at_real_steps` at the start (real step 0) and at every block end of the run, and nowhere else
    (not at checkpoints inside a block): the models a reading of the method can stop at."""
    ends = sorted({e["real_step"] for e in read_ledger(run_dir) if e["kind"] == "start" or "next_n" in e})
    if not ends:
        raise ValueError(f"{run_dir} has no ledger entries: not a re-grounding run, or no block finished yet")
    return models_at_real_steps(run_dir, ends, prefer)


def standard_models(run_dir: str | Path, steps: Sequence[int] | None = None) -> list[tuple[int, int, Path]]:
    """(step, step, checkpoint dir) of a standard RL run at each step (real = virtual); None: every checkpoint."""
    have = dict(find_checkpoints(run_dir, allow_empty=True))
    steps = sorted(have) if steps is None else steps
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


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """The seed-mean of curves, on the real steps they all have."""
    common = sorted(set.intersection(*[set(c.real_steps.tolist()) for c in curves]))
    acc = np.mean([[dict(zip(c.real_steps.tolist(), c.accuracy))[s] for s in common] for c in curves], axis=0)
    virt = np.mean([[dict(zip(c.real_steps.tolist(), c.virtual_steps))[s] for s in common] for c in curves], axis=0)
    return Curve(np.array(common, float), virt, np.asarray(acc, float), curves[0].label)


# ----------------------------------------------------------------------------------------------------
# The study table: standard RL first, the target from it, then the re-grounding runs


def target_from_standard(std: Mapping[int, Curve], step: int) -> float:
    """06's target rule (`TARGET_RULE`): the seed-mean accuracy of the standard-RL curves at `step`, an
    evaluated checkpoint of every seed."""
    missing = [s for s, c in std.items() if step not in c.real_steps]
    if not std or missing:
        raise ValueError(f"the target step {step} is not an evaluated checkpoint of standard RL seed(s) {missing or 'any'}")
    return float(np.mean([c.accuracy[list(c.real_steps).index(step)] for c in std.values()]))


def study_record(rl: RLConfig, eval_cfg, problems: str, std: Mapping[int, RLConfig],
                 configs: Mapping[str, tuple[RegroundConfig, Sequence[int]]], target_step: int | None,
                 target: float | None) -> dict:
    """What a re-grounding table is computed from, as JSON: the block recipe (seed aside), the evaluation and
    the held-out problems (described), the standard-RL configs, every setting with its seeds, and the target
    (its rule's step, or a fixed value)."""
    return to_jsonable({"rl": replace(rl, seed=0), "eval": eval_cfg, "problems": problems,
                        "standard": {str(s): c for s, c in std.items()}, "target_step": target_step, "target": target,
                        "settings": {name: {"config": c, "seeds": list(seeds)} for name, (c, seeds) in configs.items()}})


def _curve_rows(setting: str, seed: int, reading: str, c: Curve) -> list[dict]:
    return [{"setting": setting, "seed": seed, "reading": reading, "real_step": int(r), "virtual_step": int(v),
             "accuracy": float(a)} for r, v, a in zip(c.real_steps, c.virtual_steps, c.accuracy)]


def compute_regrounding_table(record: dict, configs: Mapping[str, tuple[RegroundConfig, Sequence[int]]],
                              standard_run: Callable[[int], Path], regrounding_run: Callable[[RegroundConfig, int], Path],
                              curve: Callable[[Sequence[tuple[int, int, Path]], str], Curve]) -> dict:
    """06's study, in this order: (1) standard RL of every seed in `record["standard"]` (`standard_run(seed)`, a
    cached run) evaluated at each of its checkpoints (`curve(models, label)`); (2) the target fixed from those
    curves alone (`record["target"]` when given, else `target_from_standard` at `record["target_step"]`);
    (3) every setting's run per seed (`regrounding_run(config, seed)`) evaluated at every block end in both
    `READINGS`. Returns {"study", "target", "target_rule", "runs", "blocks", "rows"}; a row is one evaluated
    model (setting, seed, reading, real_step, virtual_step, accuracy)."""
    rows, runs, std = [], {}, {}
    for key in record["standard"]:
        seed = int(key)
        run = standard_run(seed)
        runs[f"{STANDARD} seed {seed}"] = run.name
        std[seed] = curve(standard_models(run), f"{STANDARD} seed {seed}")
        rows += _curve_rows(STANDARD, seed, "rl", std[seed])
    fixed = record.get("target")
    target = float(fixed) if fixed is not None else target_from_standard(std, record["target_step"])
    rule = "fixed by the profile" if fixed is not None else TARGET_RULE.format(step=record["target_step"])
    blocks = []
    for name, (cfg, seeds) in configs.items():
        for seed in seeds:
            run = regrounding_run(cfg, seed)
            runs[f"{name} seed {seed}"] = run.name
            for reading in READINGS:
                rows += _curve_rows(name, seed, reading, curve(models_at_block_ends(run, reading), f"{name} seed {seed} ({reading})"))
            blocks += [{"setting": name, "seed": seed, **{k: e.get(k) for k in
                        ("block", "real_step", "virtual_step", "n", "alpha", "block_r2", "next_n")}}
                       for e in read_ledger(run) if "next_n" in e]
    return {"study": record, "target": target, "target_rule": rule, "runs": runs, "blocks": blocks, "rows": rows}


def regrounding_table(path: str | Path, recompute: bool, record: dict, compute: Callable[[], dict], command: str) -> dict:
    """06's table at `path` (`rlvr_nb.notebook.report.study_table`): computed by `compute()` and written when
    `recompute`, else read. A table computed from another study than `record` is refused, naming the fields."""
    table = study_table(path, recompute, compute, WRITER, command)
    diffs = config_differences(table.get("study") or {}, record)
    if diffs:
        raise ValueError(f"the re-grounding table {path} was computed for another study (differing: "
                         f"{'; '.join(diffs)}): recompute it with {command}")
    return table


def curves_from_table(table: dict) -> tuple[dict[int, Curve], dict[str, dict[str, dict[int, Curve]]]]:
    """(standard RL {seed: Curve}, {reading: {setting: {seed: Curve}}}) from a table's rows."""
    points: dict[tuple, list] = {}
    for r in table["rows"]:
        points.setdefault((r["setting"], r["reading"], r["seed"]), []).append(r)
    std, curves = {}, {reading: {} for reading in READINGS}
    for (setting, reading, seed), rs in points.items():
        rs = sorted(rs, key=lambda r: r["real_step"])
        c = Curve(*(np.array([r[k] for r in rs], float) for k in ("real_step", "virtual_step", "accuracy")),
                  label=f"{setting} seed {seed}")
        if setting == STANDARD:
            std[seed] = c
        else:
            curves[reading].setdefault(setting, {})[seed] = c
    return std, curves


# ----------------------------------------------------------------------------------------------------
# Speed-up to the target, and accuracy at equal budgets


def speedup_rows(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], target: float,
                 method: str = "first") -> list[dict]:
    """One row per (setting, seed) plus one per setting for the seed-mean curves: steps to the target of
    standard RL (same seed) and of re-grounding, and their ratio, at the first evaluated model that reaches it
    (no crossing interpolated between evaluations). A run that never reaches the target within its budget
    gets a bound: speed-up < standard steps / budget."""
    rows = []
    for name, by_seed in runs.items():
        for seed in list(by_seed) + ["mean"]:
            c = mean_curve(list(by_seed.values())) if seed == "mean" else by_seed[seed]
            s = mean_curve([std[k] for k in by_seed if k in std]) if seed == "mean" else std.get(seed)
            if s is None:
                continue
            t_std = steps_to_target(s.real_steps, s.accuracy, target, method)
            t_rg = steps_to_target(c.real_steps, c.accuracy, target, method)
            if math.isnan(t_rg) and not math.isnan(t_std):
                note = f"< {t_std / c.real_steps[-1]:.2f} (not reached in {int(c.real_steps[-1])} steps)"
            else:
                note = "standard RL never reaches the target" if math.isnan(t_std) else ""
            rows.append({"setting": name, "seed": seed, "standard steps": t_std, "re-grounding steps": t_rg,
                         "speed-up": speedup(t_std, t_rg), "note": note})
    return rows


@dataclass
class SpeedUp:
    """The speed-up of one setting: on the seed-mean curves, with a bootstrap interval over seeds, and per seed."""

    setting: str
    value: float
    """Speed-up of the seed-mean curves (NaN: they never reach the target; it is then below `bound`)."""
    ci: tuple[float, float]
    """Percentile bootstrap over seeds of that speed-up; a draw whose curve never reaches the target counts as 0."""
    per_seed: dict[int, float]
    """Each seed against standard RL of the same seed (NaN: not reached)."""
    std_steps: dict[int, float]
    """Standard-RL steps to the target per seed (NaN: never)."""
    rg_steps: dict[int, float]
    """Re-grounding real steps to the target per seed (NaN: not within the budget)."""
    std_mean_steps: float
    """Steps of the seed-mean standard-RL curve to the target."""
    budget: float
    """Real steps of the re-grounding runs (their last block end)."""

    @property
    def bound(self) -> float:
        """Standard steps / budget (seed-mean curves): the speed-up is below it when the target is not reached."""
        return self.std_mean_steps / self.budget

    def passes(self, goal: float) -> list[bool]:
        """Per seed: the speed-up reaches the goal."""
        return [not math.isnan(v) and v >= goal for v in self.per_seed.values()]

    def text(self, seed: int | None = None) -> str:
        """The speed-up of one seed (None: of the seed-mean curves) in words: '2.00', '<1.50' when the target is
        not reached within the budget (the bound), 'n/a (...)' when standard RL never reaches it or starts at it."""
        v, t_std = (self.value, self.std_mean_steps) if seed is None else (self.per_seed[seed], self.std_steps[seed])
        if math.isfinite(v):
            return f"{v:.2f}"
        if math.isnan(t_std) or t_std == 0:
            return "n/a (standard RL never reaches the target)" if math.isnan(t_std) else "n/a (the target is not above the start)"
        return "inf" if v == math.inf else f"<{t_std / self.budget:.2f}"

    def ci_text(self) -> str:
        """The bootstrap interval in words; none where the seed-mean curves never reach the target (the bootstrap
        of such a speed-up is only zeros: `text()` gives the bound instead)."""
        return f"[{self.ci[0]:.2f}, {self.ci[1]:.2f}]" if math.isfinite(self.value) else "none (not reached)"

    def row(self) -> dict:
        """A row for `rlvr_nb.notebook.report.markdown_table`."""
        steps = lambda d: " / ".join("never" if math.isnan(v) else f"{v:.0f}" for v in d.values())  # noqa: E731
        return {"setting": self.setting, "speed-up (seed-mean curves)": self.text(),
                "95% bootstrap over seeds": self.ci_text(),
                "per seed": " / ".join(self.text(s) for s in self.per_seed),
                "standard steps per seed": steps(self.std_steps), "re-grounding steps per seed": steps(self.rg_steps)}


def speedup_summary(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], target: float,
                    level: float = 0.95, n_boot: int = 2000) -> list[SpeedUp]:
    """`SpeedUp` of every setting, read at the first evaluated model reaching the target (`speedup_rows`)."""
    out = []
    for name, by_seed in runs.items():
        seeds = [s for s in by_seed if s in std]
        rows = {r["seed"]: r for r in speedup_rows(std, {name: {s: by_seed[s] for s in seeds}}, target)}
        mean = rows.pop("mean")

        def stat(idx: np.ndarray) -> float:
            draw = [seeds[i] for i in idx]
            t_std = steps_to_target(*_xy(mean_curve([std[s] for s in draw])), target)
            t_rg = steps_to_target(*_xy(mean_curve([by_seed[s] for s in draw])), target)
            return math.nan if math.isnan(t_std) else 0.0 if math.isnan(t_rg) else speedup(t_std, t_rg)

        out.append(SpeedUp(name, mean["speed-up"], seed_bootstrap(stat, len(seeds), level, n_boot),
                           {s: r["speed-up"] for s, r in rows.items()}, {s: r["standard steps"] for s, r in rows.items()},
                           {s: r["re-grounding steps"] for s, r in rows.items()}, mean["standard steps"],
                           float(mean_curve([by_seed[s] for s in seeds]).real_steps[-1])))
    return out


def _xy(c: Curve) -> tuple[np.ndarray, np.ndarray]:
    return c.real_steps, c.accuracy


def best_speedup(summary: Sequence[SpeedUp]) -> SpeedUp:
    """The setting whose seed-mean curves reach the target fastest relative to standard RL (NaN counts as none)."""
    if not summary:
        raise ValueError("no settings: give the output of speedup_summary")
    return max(summary, key=lambda u: -1.0 if math.isnan(u.value) else u.value)


def relative_gain(std: Mapping[int, Curve], by_seed: Mapping[int, Curve], budget: float, level: float = 0.95,
                  n_boot: int = 2000) -> tuple[float, tuple[float, float], dict[int, float]]:
    """Table 2 on our model at one real-step budget: 100 (seed-mean re-grounding / seed-mean standard RL - 1) in
    percent (the paper's unit), its bootstrap interval over seeds, and the same per seed."""
    seeds = [s for s in by_seed if s in std]
    rg = np.array([accuracy_at_budgets(by_seed[s].real_steps, by_seed[s].accuracy, [budget])[0] for s in seeds])  # [S]
    base = np.array([accuracy_at_budgets(std[s].real_steps, std[s].accuracy, [budget])[0] for s in seeds])  # [S]
    stat = lambda idx: 100 * (rg[idx].mean() / base[idx].mean() - 1)  # noqa: E731
    return float(stat(np.arange(len(seeds)))), seed_bootstrap(stat, len(seeds), level, n_boot), \
        {s: float(100 * (a / b - 1)) for s, a, b in zip(seeds, rg, base)}


def budget_rows(std: Mapping[int, Curve], runs: Mapping[str, Mapping[int, Curve]], budgets: Sequence[int],
                level: float = 0.95, n_boot: int = 2000) -> list[dict]:
    """Table 2 on our model: accuracy at equal real-step budgets, mean ± standard deviation over seeds, and Δ,
    re-grounding over standard RL of the same seeds in percent with its bootstrap interval over seeds."""
    rows = []
    for name, by_seed in {STANDARD: {k: std[k] for k in sorted(std)}, **runs}.items():
        accs = np.array([accuracy_at_budgets(c.real_steps, c.accuracy, budgets) for c in by_seed.values()])  # [S, B]
        row = {"setting": name, "seeds": len(by_seed)}
        for j, b in enumerate(budgets):
            row[f"{b} steps"] = f"{np.nanmean(accs[:, j]):.3f} ± {np.nanstd(accs[:, j]):.3f}"
            if name == STANDARD:
                row[f"Δ@{b}"] = "–"
            else:
                pct, (lo, hi), _ = relative_gain(std, by_seed, b, level, n_boot)
                row[f"Δ@{b}"] = f"{pct:+.1f}% [{lo:+.1f}, {hi:+.1f}]"
        rows.append(row)
    return rows


def extrapolation_jump(newest: Curve, rl: Curve) -> float:
    """Mean accuracy change of a jump: extrapolated model minus the RL checkpoint it was extrapolated from, over
    the evaluated real steps where the two readings of a run differ (block boundaries); NaN if there are none."""
    if not np.array_equal(newest.real_steps, rl.real_steps):
        raise ValueError("the two readings must be evaluated at the same real steps")
    jump = newest.virtual_steps != rl.virtual_steps  # [K]
    return float(np.mean(newest.accuracy[jump] - rl.accuracy[jump])) if jump.any() else math.nan


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
