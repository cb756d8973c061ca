"""PAPER.md Sec. 4 on the embedded model: RL against SFT under stated comparisons, and the sweep that tuned
the embedded RL default.

The paper reports SFT trajectories far less linear than RL (the medians of `rlvr_nb.paper.MEDIAN_R2`, for
weights and for token log-probs) without saying what the two runs share. At tiny scale the answer
depends on what is held equal (at the same learning rate SFT is about as linear as RL), so `comparisons` builds the
contrast four ways, each an (RL trajectory, SFT trajectory) pair from the same warm start:

    same lr and steps        SFT at RL's learning rate, steps and checkpoint spacing, one sequence per prompt
    same sequences per step  SFT batch = prompts x rollouts of RL, RL's lr; both read over `seq_steps` steps
    same accuracy gain       SFT at its customary lr, read up to the step where its held-out accuracy gain
                             first equals RL's (denser checkpoints, so the window holds as many as RL's)
    customary lr each        RL at its lr, SFT at its customary lr (the warm start's), same steps

Every trajectory is a `RunSpec`: a config trained through the cached `embedded.ensure_trajectory`
(by config hash under `runs/`) and optionally read only up to `max_step`. The trainers have no schedule
that depends on the total number of steps, so the first N steps of a run are the trajectory of an N-step run.

The tuning sweep (`sweep_specs`, `sweep_rows`) varies the RL run one factor at a time (learning rate,
prompts per step, number of steps) and records weight and token log-prob R^2 and the accuracy gain.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from rlvr_nb import paper
from rlvr_nb.checkpoints import read_metrics, to_jsonable
from rlvr_nb.embedded import EmbeddedConfig, ensure_trajectory, matched_sft
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook.report import load_json_table, save_json_table
from rlvr_nb.linearity import LinearityConfig, R2Summary, TrajectoryLinearity, weight_linearity
from rlvr_nb.logprobs import Probe, logprob_linearity, logprob_trajectories, token_positions
from rlvr_nb.sft import SFTConfig
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.trajectory import Trajectory, load_trajectory

GAP_FRACTION = 0.5
"""A comparison "reproduces the paper's gap" when RL's median exceeds SFT's by at least this fraction of the
paper's gap (`paper.MEDIAN_R2`: RL's median minus SFT's)."""


@dataclass(frozen=True)
class RunSpec:
    """One trajectory: a run of the embedded default, read up to `max_step` (None: all of it)."""

    config: RLConfig | SFTConfig
    """The run's config; its directory is `embedded.ensure_trajectory(config)`."""
    max_step: int | None = None
    """Analyse only the checkpoints up to this step."""

    @property
    def kind(self) -> str:
        return "RL" if isinstance(self.config, RLConfig) else "SFT"

    @property
    def steps(self) -> int:
        return self.config.steps if self.max_step is None else self.max_step

    @property
    def sequences_per_step(self) -> int:
        c = self.config
        return c.prompts_per_step * c.group_size if isinstance(c, RLConfig) else c.batch_size

    def describe(self) -> str:
        return f"lr {self.config.lr:g}, {self.steps} steps, {self.sequences_per_step} seq/step"


@dataclass(frozen=True)
class Comparison:
    name: str
    """What is held equal, e.g. "same lr and steps"."""
    basis: str
    """How the SFT trajectory is chosen, in one sentence."""
    rl: RunSpec
    sft: RunSpec


# --------------------------------------------------------------------------------------------------
# Runs, trajectories and accuracy


def ensure_spec(spec: RunSpec, emb: EmbeddedConfig, progress: bool = True) -> Path:
    """The run directory of a spec, trained (cached by config hash) when missing."""
    return ensure_trajectory(spec.config, emb, progress)


def checkpoints_upto(run_dir: str | Path, max_step: int | None = None) -> list[tuple[int, Path]]:
    """(step, dir) of a run's checkpoints up to max_step, which must itself be a checkpoint."""
    pairs = find_checkpoints(run_dir)
    if max_step is None:
        return pairs
    kept = [(s, d) for s, d in pairs if s <= max_step]
    if not kept or kept[-1][0] != max_step:
        raise ValueError(f"{run_dir} has no checkpoint at step {max_step} (checkpoints: {[s for s, _ in pairs]})")
    return kept


def accuracy_window(run_dir: str | Path, max_step: int | None = None, key: str = "heldout_sampled") -> tuple[float, float]:
    """Held-out accuracy at the first checkpoint and at max_step (default: the last one)."""
    evals = [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]
    if not evals:
        raise ValueError(f"{run_dir}/metrics.jsonl records no {key!r}")
    last = [a for s, a in evals if max_step is None or s <= max_step][-1]
    return float(evals[0][1]), float(last)


def describe_accuracy(run_dir: str | Path, key: str = "heldout_sampled") -> str:
    """"0.17 -> 0.41": held-out accuracy at a run's first and last checkpoint, or "not recorded"."""
    try:
        start, end = accuracy_window(run_dir, key=key)
    except (FileNotFoundError, ValueError):
        return "not recorded"
    return f"{start:.2f} -> {end:.2f}"


def first_step_with_gain(run_dir: str | Path, gain: float, key: str = "heldout_sampled") -> int | None:
    """The first recorded step whose held-out accuracy exceeds the first one's by at least `gain` (None: never)."""
    evals = [(m["step"], m[key]) for m in read_metrics(run_dir) if key in m]
    return next((s for s, a in evals[1:] if a - evals[0][1] >= gain), None)


# --------------------------------------------------------------------------------------------------
# The comparisons


def comparisons(rl: RLConfig, emb: EmbeddedConfig, customary_sft_lr: float, seq_steps: int,
                progress: bool = True) -> list[Comparison]:
    """The four RL-versus-SFT comparisons of the module docstring for the RL run `rl`.

    Trains what it needs (cached): RL's run and the customary-lr SFT run, whose held-out accuracy
    fixes the window of "same accuracy gain".
    """
    if seq_steps % rl.ckpt_every or not 2 * rl.ckpt_every <= seq_steps <= rl.steps:
        raise ValueError(f"seq_steps must be a multiple of ckpt_every={rl.ckpt_every} between "
                         f"{2 * rl.ckpt_every} and {rl.steps}, got {seq_steps}")
    n_ckpt = rl.steps // rl.ckpt_every + 1
    same = matched_sft(rl)
    seqs = matched_sft(rl, batch_size=rl.prompts_per_step * rl.group_size, steps=seq_steps)
    customary = matched_sft(rl, lr=customary_sft_lr)
    rl_start, rl_end = accuracy_window(ensure_trajectory(rl, emb, progress))
    gain = rl_end - rl_start
    reach = first_step_with_gain(ensure_trajectory(customary, emb, progress), gain) if gain > 0 else None
    if reach is None:  # RL gained nothing, or SFT never gains as much: SFT's whole run is the closest match
        gain_spec = RunSpec(customary)
        gain_basis = (f"SFT at lr {customary_sft_lr:g} never reached RL's {gain:+.2f} held-out accuracy gain, so its "
                      "whole run is read" if gain > 0 else "RL gained no held-out accuracy, so SFT's whole run is read")
    else:  # the same seed and batches: a shorter run with denser checkpoints is the same trajectory
        gain_spec = RunSpec(replace(customary, steps=reach, ckpt_every=max(1, reach // (n_ckpt - 1))))
        gain_basis = (f"SFT at lr {customary_sft_lr:g} first gains RL's {gain:+.2f} held-out accuracy at step "
                      f"{reach}; its trajectory up to there, with checkpoints every {gain_spec.config.ckpt_every} steps")
    full = RunSpec(rl)
    return [
        Comparison("same lr and steps", "SFT on correct answers at RL's lr, steps and checkpoints; "
                   "one sequence per RL prompt", full, RunSpec(same)),
        Comparison("same sequences per step", f"SFT batch = RL's {rl.prompts_per_step} x {rl.group_size} rollouts, "
                   f"RL's lr; both read over {seq_steps} steps", RunSpec(rl, seq_steps if seq_steps < rl.steps else None),
                   RunSpec(seqs)),
        Comparison("same accuracy gain", gain_basis, full, gain_spec),
        Comparison("customary lr each", f"RL at lr {rl.lr:g}, SFT at lr {customary_sft_lr:g} (the warm start's), "
                   "same steps", full, RunSpec(customary)),
    ]


# --------------------------------------------------------------------------------------------------
# Measuring trajectories


class Measurer:
    """Weight and token log-prob R^2 of RunSpecs, each run's log-probs teacher-forced only once.

    The token log-probs of a run are computed over all its checkpoints and sliced for `max_step`, so the
    first N steps of a run cost nothing more once the whole run has been read.
    """

    def __init__(self, emb: EmbeddedConfig, probes: Sequence[Probe] | None = None,
                 weight_cfg: LinearityConfig = LinearityConfig(drift=False), progress: bool = True):
        self.emb, self.probes, self.weight_cfg, self.progress = emb, probes, weight_cfg, progress
        self._logprobs: dict[tuple[Path, Path | None], tuple[list[int], np.ndarray]] = {}

    def trajectory(self, spec: RunSpec) -> Trajectory:
        return load_trajectory(checkpoints_upto(ensure_spec(spec, self.emb, self.progress), spec.max_step),
                               progress=False)

    def weight(self, spec: RunSpec) -> R2Summary:
        """PAPER.md Sec. 4, weight linearity of the spec's trajectory (overall summary)."""
        return weight_linearity(self.trajectory(spec), self.weight_cfg, progress=False).overall

    def logprobs(self, run_dir: str | Path, base: str | Path | None = None) -> tuple[list[int], np.ndarray]:
        """(steps, log-probs [T, N]) of the probes through every checkpoint of a run (computed once)."""
        if self.probes is None:
            raise ValueError("token R^2 needs probes: Measurer(emb, probes=...)")
        key = (Path(run_dir).resolve(), None if base is None else Path(base).resolve())
        if key not in self._logprobs:
            traj = load_trajectory(run_dir, base=base, progress=False)
            self._logprobs[key] = (traj.steps, logprob_trajectories(traj, self.probes, progress=self.progress))
        return self._logprobs[key]

    def token_run(self, run_dir: str | Path, base: str | Path | None = None, min_change: float = 0.2,
                  n_examples: int = 4) -> TrajectoryLinearity:
        """PAPER.md Sec. 4, output linearity of a whole run (any layout) on the probes: R^2 of every token
        that moved more than `min_change`, with summaries and examples (`logprobs.token_linearity`)."""
        steps, lp = self.logprobs(run_dir, base)
        return logprob_linearity(lp, steps, min_change=min_change, labels=token_positions(self.probes),
                                 n_examples=n_examples)

    def token(self, spec: RunSpec) -> R2Summary:
        """PAPER.md Sec. 4, output linearity of the spec's trajectory on the probes (overall summary)."""
        steps, lp = self.logprobs(ensure_spec(spec, self.emb, self.progress))
        t = len(steps) if spec.max_step is None else steps.index(spec.max_step) + 1
        return logprob_linearity(lp[:t], steps[:t]).overall

    def measure(self, spec: RunSpec, what: str) -> R2Summary:
        if what not in ("weight", "token"):
            raise ValueError(f"what must be 'weight' or 'token', got {what!r}")
        return self.weight(spec) if what == "weight" else self.token(spec)

    def accuracy(self, spec: RunSpec) -> tuple[float, float]:
        return accuracy_window(ensure_spec(spec, self.emb, self.progress), spec.max_step)


def reproduces_gap(rl_median: float, sft_median: float, what: str) -> bool:
    """Whether RL's median exceeds SFT's by at least GAP_FRACTION of the paper's gap (False if either is NaN)."""
    paper_gap = paper.MEDIAN_R2[("RL", what)] - paper.MEDIAN_R2[("SFT", what)]
    return bool(rl_median - sft_median >= GAP_FRACTION * paper_gap)


def gap_verdict(rl: R2Summary, sft: R2Summary, what: str) -> str:
    """"yes" / "no" for `reproduces_gap`, or "n/a" when a run kept nothing (too few checkpoints or no movement)."""
    if not (math.isfinite(rl.median) and math.isfinite(sft.median)):
        return "n/a"
    return "yes" if reproduces_gap(rl.median, sft.median, what) else "no"


def comparison_rows(comps: Sequence[Comparison], measurer: Measurer, what: str = "weight") -> list[dict]:
    """One row per comparison: both runs, their accuracy gains, R^2 medians and fractions above 0.7, the gap,
    and whether it reproduces the paper's gap; a last row holds the paper's numbers."""
    rows = []
    for c in tqdm(comps, desc=f"{what} R^2 per comparison", disable=not measurer.progress):
        r, s = measurer.measure(c.rl, what), measurer.measure(c.sft, what)
        (r0, r1), (s0, s1) = measurer.accuracy(c.rl), measurer.accuracy(c.sft)
        rows.append({"comparison": c.name, "RL run": c.rl.describe(), "SFT run": c.sft.describe(),
                     "RL acc gain": round(r1 - r0, 3), "SFT acc gain": round(s1 - s0, 3),
                     "RL median": round(r.median, 3), "SFT median": round(s.median, 3),
                     "RL >0.7": round(r.frac_above, 3), "SFT >0.7": round(s.frac_above, 3),
                     "gap": round(r.median - s.median, 3),
                     "paper's gap?": gap_verdict(r, s, what)})
    rl_p, sft_p = paper.MEDIAN_R2[("RL", what)], paper.MEDIAN_R2[("SFT", what)]
    rows.append({"comparison": "paper (Sec. 4)", "RL run": paper.RL_RUN_LABEL, "SFT run": "not stated",
                 "RL acc gain": "", "SFT acc gain": "", "RL median": rl_p, "SFT median": sft_p,
                 "RL >0.7": "", "SFT >0.7": "", "gap": round(rl_p - sft_p, 2), "paper's gap?": ""})
    return rows


def describe_comparisons(rows: Sequence[dict], what: str = "weight") -> str:
    """Which comparisons reproduce the paper's gap, as a sentence built from the rows."""
    all_rows, rows = rows, [r for r in rows if r["paper's gap?"] in ("yes", "no")]
    yes = [r["comparison"] for r in rows if r["paper's gap?"] == "yes"]
    no = [r["comparison"] for r in rows if r["paper's gap?"] == "no"]
    need = GAP_FRACTION * (paper.MEDIAN_R2[("RL", what)] - paper.MEDIAN_R2[("SFT", what)])
    parts = [f"{what} R^2: a gap of at least {need:.2f} (half the paper's) appears under "
             + (", ".join(f"'{n}'" for n in yes) if yes else "no comparison")]
    if no:
        parts.append("not under " + ", ".join(f"'{r['comparison']}' (gap {r['gap']:+.2f})" for r in rows
                                               if r["paper's gap?"] == "no"))
    skipped = [r["comparison"] for r in all_rows if r["paper's gap?"] == "n/a"]
    if skipped:
        parts.append("not measurable under " + ", ".join(f"'{n}'" for n in skipped) + " (nothing kept)")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------------------------------
# The tuning sweep


def with_steps(rl: RLConfig, steps: int) -> RLConfig:
    """`rl` lasting `steps` steps with as many checkpoints (the spacing scaled with the length)."""
    return replace(rl, steps=steps, ckpt_every=max(1, rl.ckpt_every * steps // rl.steps))


def sweep_specs(base: RLConfig, lrs: Sequence[float] = (), prompts_per_step: Sequence[int] = (),
                steps: Sequence[int] = (), combined: Sequence[dict] = ()) -> list[tuple[str, str, RunSpec]]:
    """(factor, label, spec) for the base run and one factor changed at a time, then `combined` settings
    (dicts of RLConfig fields changed together, e.g. {"lr": 5e-5, "steps": 2000}).

    Fewer steps than base's are read from base's own run (`max_step`, fewer checkpoints); more steps train a
    longer run with as many checkpoints as base (`with_steps`, unless ckpt_every is given).
    """
    out = [("baseline", f"lr {base.lr:g}, {base.prompts_per_step}x{base.group_size}, {base.steps} steps", RunSpec(base))]
    out += [("learning rate", f"lr {lr:g}", RunSpec(replace(base, lr=lr))) for lr in lrs if lr != base.lr]
    out += [("prompts per step", f"{p}x{base.group_size}", RunSpec(replace(base, prompts_per_step=p)))
            for p in prompts_per_step if p != base.prompts_per_step]
    for s in steps:
        if s == base.steps:
            continue
        if s < base.steps and (s % base.ckpt_every or s < 2 * base.ckpt_every):
            raise ValueError(f"{s} steps: a shorter window must be a multiple of ckpt_every={base.ckpt_every} "
                             f"holding at least 3 checkpoints")
        out.append(("steps", f"{s} steps", RunSpec(base, s) if s < base.steps else RunSpec(with_steps(base, s))))
    for change in combined:
        cfg = with_steps(base, change["steps"]) if "steps" in change else base
        cfg = replace(cfg, **{k: v for k, v in change.items() if k != "steps"})
        label = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in change.items())
        out.append(("combined", label, RunSpec(cfg)))
    return out


def train_seconds(run_dir: str | Path, max_step: int | None = None) -> float:
    """Wall time of a run's training steps as its metrics recorded them (evaluation excluded)."""
    return float(sum(m.get("seconds", 0.0) for m in read_metrics(run_dir) if max_step is None or m["step"] <= max_step))


def sweep_rows(specs: Sequence[tuple[str, str, RunSpec]], measurer: Measurer) -> list[dict]:
    """One row per sweep point: the run, weight and token R^2 (token only with probes), accuracy, train time."""
    rows = []
    for factor, label, spec in tqdm(specs, desc="sweep", disable=not measurer.progress):
        c = spec.config
        w = measurer.weight(spec)
        t = measurer.token(spec) if measurer.probes is not None else None
        a0, a1 = measurer.accuracy(spec)
        run = ensure_spec(spec, measurer.emb, measurer.progress)
        rows.append({"factor": factor, "setting": label, "lr": c.lr, "rollouts": f"{c.prompts_per_step}x{c.group_size}",
                     "steps": spec.steps, "weight median": round(w.median, 3), "weight >0.7": round(w.frac_above, 3),
                     "token median": None if t is None else round(t.median, 3),
                     "acc start": round(a0, 3), "acc end": round(a1, 3),
                     "train s": round(train_seconds(run, spec.max_step)), "run": run.name})
    return rows


def save_sweep(path: str | Path, rows: Sequence[dict], specs: Sequence[tuple[str, str, RunSpec]], note: str = "",
               emb: EmbeddedConfig | None = None, wall_seconds: float | None = None, command: str | None = None) -> Path:
    """Write the sweep as JSON: {"note", "specs" (the configs it was computed from), "embedded" (the model, task
    and warm start they started from), "rows"}, with its provenance (`command`: how to recompute it)."""
    return save_json_table(path, {"note": note, "specs": sweep_record(specs), "embedded": to_jsonable(emb),
                                  "rows": list(rows)}, wall_seconds, command)


def sweep_differences(sweep: dict, specs: Sequence[tuple[str, str, RunSpec]], emb: EmbeddedConfig) -> list[str]:
    """What a saved sweep was computed from that differs from this profile's sweep: its run configs, and its
    embedded model / task / warm start (a table saved before it recorded them says so)."""
    out = []
    if sweep["specs"] != sweep_record(specs):
        out.append("other run configs than this profile's sweep")
    if "embedded" not in sweep:
        out.append("an embedded model it did not record (it predates the current 2 x 32-head model and its warm start)")
    elif sweep["embedded"] != json.loads(json.dumps(to_jsonable(emb))):
        out.append("another embedded model, task or warm start than the current default")
    return out


def sweep_record(specs: Sequence[tuple[str, str, RunSpec]]) -> list[dict]:
    """The sweep's specs as plain JSON values (what a saved table was computed from)."""
    return json.loads(json.dumps([{"factor": f, "setting": s, "kind": spec.kind, "config": to_jsonable(spec.config),
                                   "max_step": spec.max_step} for f, s, spec in specs]))


def load_sweep(path: str | Path) -> dict:
    """A sweep written by `save_sweep`: {"note", "specs", "rows"}."""
    return load_json_table(path, {"specs", "rows"}, "rlvr_nb.experiments.comparisons.save_sweep",
                           "run 02 with run_sweep=True to compute it")


def sweep_factors(rows: Sequence[dict], key: str = "weight median") -> list[str]:
    """For each factor, the range of `key` across its settings and the baseline, as one sentence each."""
    base = next((r for r in rows if r["factor"] == "baseline"), None)
    out = []
    for factor in dict.fromkeys(r["factor"] for r in rows if r["factor"] != "baseline"):
        pts = [r for r in rows if r["factor"] == factor] + ([base] if base else [])
        pts = [r for r in pts if r.get(key) is not None and math.isfinite(r[key])]
        if len(pts) < 2:
            continue
        lo, hi = min(pts, key=lambda r: r[key]), max(pts, key=lambda r: r[key])
        out.append(f"{factor}: {key} {lo[key]:.3f} ({lo['setting']}) to {hi[key]:.3f} ({hi['setting']}), "
                   f"a spread of {hi[key] - lo[key]:.3f}")
    return out


def rows_meeting_findings(rows: Sequence[dict]) -> list[str]:
    """Settings of the sweep rows where findings (a) and (b) both hold (`rlvr_nb.paper`)."""
    return [r["setting"] for r in rows if paper.weight_finding_holds(r["weight median"], r["weight >0.7"])
            and paper.token_finding_holds(r.get("token median"))]
