"""Periodic re-grounding, "RL-Extra" (PAPER.md Sec. 6, second half): fewer real RL steps for the same accuracy.

    repeat until `budget` real steps are spent:
        m real RL steps from the current model                     (a `train_rl` run: one *block*)
        extrapolate from the block's start to its end by n steps:  W = W_start + alpha (W_end - W_start),
                                                                   alpha = (m + n) / m
        continue RL from the extrapolated model                    (the next block starts there)

Every model carries two clocks: its *real* step (RL steps actually taken) and its *virtual* step (real
steps plus every extrapolated step so far). The speed-up of the paper's Figure 6 is

    speed-up = (standard-RL real steps to reach a target accuracy) / (re-grounding real steps to reach it).

Layout of a re-grounding run directory:

    <run>/regrounding.json            the config (resuming checks it, like `checkpoints.open_run`)
    <run>/ledger.jsonl                one line per model: block, kind (start | rl | extrapolated),
                                      real_step, virtual_step, path; the last line of every block also
                                      holds n, alpha, the block's weight R^2 and the next block's n
    <run>/blocks/block_<i>/           block i: a `train_rl` run of m steps (checkpoints/step_0 .. step_m)
    <run>/models/block_<i>/           the extrapolated model after block i (a HuggingFace directory)
    <run>/complete.json

Design decisions (each measured or stated in notebooks/06_rl_extra):

- Seeds: block i trains with seed `rl.seed + 1000 i` (`block_seed`), so blocks draw fresh problems
  instead of replaying the first m problems of the run; block 0 is exactly standard RL's first m steps.
- Optimizer state at a re-grounding (`optimizer`):
  'keep'  the next block starts from the previous block's AdamW moments and step count (moments are
          per-parameter running averages of the gradient: the drift direction they hold is still the
          direction of the extrapolation, so they remain a sensible estimate after the jump);
  'reset' a fresh AdamW each block (what successive independent verl runs do). Adam's first update
          after a reset is ~lr * sign(g) on every weight, a noisy kick the kept state avoids.
  'keep' is `train_rl(init_optimizer=<previous block's last checkpoint>)`. verl blocks can only 'reset'.
- Resuming: a block is complete when its `train_rl` run is; the ledger is rewritten atomically after
  each block's extrapolation. An interrupted run resumes after its last complete block, and inside the
  interrupted block from that block's last checkpoint (bit-for-bit the uninterrupted result).
- A run is read at real step R in two ways (`models_at_real_steps`): its newest model (at a block boundary
  the extrapolated model, which cost no real step) or its RL checkpoint (at a boundary the block's end before
  the extrapolation). The first measures the extrapolation, the second where re-grounding RL gets from it.
- R^2-guided horizon (ours, not the paper's, `horizon='r2'`): checkpoints every m / (r2_checkpoints - 1)
  steps inside each block give the block's median per-weight R^2 against the step
  (`rlvr_nb.linearity.weight_linearity`); the next block's n grows (x `grow`) while that R^2 stays at or
  above `r2_high` and shrinks (x `shrink`) when it falls below `r2_low` (`next_horizon`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.checkpoints import config_differences, is_complete, list_checkpoints, mark_complete, to_jsonable
from rlvr_nb.extrapolate import extrapolate_weights
from rlvr_nb.grpo import RLConfig, train_rl
from rlvr_nb.linearity import LinearityConfig, weight_linearity
from rlvr_nb.tasks import TaskConfig
from rlvr_nb.trajectory import load_trajectory

OPTIMIZER_CHOICES = ("keep", "reset")
HORIZONS = ("fixed", "r2")
TRAINERS = ("embedded", "verl")
SPEEDUP_METHODS = ("first", "interpolate")


@dataclass(frozen=True)
class RegroundConfig:
    m: int = 50
    """Real RL steps per block."""
    n: int = 50
    """Extrapolated steps after each block: alpha = (m + n) / m (with horizon='r2': the first block's n)."""
    budget: int = 200
    """Real RL steps in all: budget // m blocks (a remainder shorter than m is not spent)."""
    optimizer: str = "keep"
    """Optimizer state at a re-grounding: 'keep' (carry AdamW's moments into the next block) or 'reset'."""
    extrapolate_last: bool = True
    """Extrapolate after the last block too (it costs no real step)."""
    ckpt_every: int | None = None
    """Checkpoints inside each block every this many steps (None: the block's start and end only; with
    horizon='r2', m / (r2_checkpoints - 1))."""
    horizon: str = "fixed"
    """'fixed' (the paper: the same n every block) or 'r2' (n of the next block from the block's R^2)."""
    r2_checkpoints: int = 5
    """horizon='r2': checkpoints per block for the R^2 (block start and end included); m must be a
    multiple of r2_checkpoints - 1."""
    r2_high: float = 0.6
    """horizon='r2': grow n when the block's median weight R^2 is at least this."""
    r2_low: float = 0.5
    """horizon='r2': shrink n when the block's median weight R^2 is below this."""
    grow: float = 2.0
    """horizon='r2': factor applied to n when the R^2 is high (from n = 0 it restarts at max(1, m // 4))."""
    shrink: float = 0.5
    """horizon='r2': factor applied to n when the R^2 is low."""
    n_max: int | None = None
    """horizon='r2': largest n (None: 4 m, alpha = 5)."""
    r2_sample_fraction: float | None = None
    """horizon='r2': None measures every weight; 0.001 samples like the paper (large models)."""
    r2_min_range: float = 1e-4
    """horizon='r2': a weight counts when its range inside the block exceeds this (the paper's filter)."""


# ----------------------------------------------------------------------------------------------------
# The equations


def regrounding_alpha(m: int, n: int) -> float:
    """PAPER.md Sec. 6, periodic re-grounding: alpha = (m + n) / m, extrapolating m real steps by n more."""
    return (m + n) / m


def block_seed(seed: int, block: int) -> int:
    """Seed of block `block`: block 0 replays standard RL with `seed`, later blocks draw fresh problems."""
    return seed + 1000 * block


def next_horizon(n: int, r2: float, cfg: RegroundConfig) -> int:
    """R^2-guided horizon (ours): n x grow when the block's median weight R^2 >= r2_high, n x shrink when it
    is below r2_low, else n; clipped to [0, n_max]. From n = 0, growing restarts at max(1, m // 4)."""
    n_max = 4 * cfg.m if cfg.n_max is None else cfg.n_max
    if math.isnan(r2):
        return n
    if r2 >= cfg.r2_high:
        new = max(1, cfg.m // 4) if n == 0 else round(n * cfg.grow)
    elif r2 < cfg.r2_low:
        new = int(n * cfg.shrink)
    else:
        new = n
    return int(min(max(new, 0), n_max))


def r2_for_drift_to_noise(drift_to_noise: float, n_checkpoints: int) -> float:
    """The median weight R^2 of a block whose drift over the block is `drift_to_noise` times the noise it
    accumulated, read at n_checkpoints evenly spaced checkpoints (`rlvr_nb.lowpass.median_r2`). Extrapolating
    a block by n steps adds n mu of drift and (n / m) sigma sqrt(m) of amplified noise: more signal than
    noise exactly when the block's drift-to-noise ratio mu sqrt(m) / sigma exceeds 1, whatever n."""
    from rlvr_nb.lowpass import median_r2

    return float(median_r2(drift_to_noise / math.sqrt(n_checkpoints - 1), n_checkpoints, 1))


def steps_to_target(steps: Sequence[float], accuracy: Sequence[float], target: float, method: str = "interpolate") -> float:
    """Real steps a curve needs to reach `target` accuracy; NaN when it never does.

    first:       the first evaluated step whose accuracy is >= target (first crossing);
    interpolate: the step where the straight line between that point and the one before it crosses target
                 (so a curve evaluated every 50 steps is not rounded up to the next multiple of 50).
    """
    if method not in SPEEDUP_METHODS:
        raise ValueError(f"method must be one of {SPEEDUP_METHODS}, got {method!r}")
    s, a = np.asarray(steps, np.float64), np.asarray(accuracy, np.float64)
    if s.ndim != 1 or s.shape != a.shape or s.size == 0:
        raise ValueError(f"steps and accuracy must be non-empty 1-d arrays of equal length, got {s.shape} and {a.shape}")
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must be strictly increasing")
    hit = np.flatnonzero(a >= target)
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if method == "first" or i == 0:
        return float(s[i])
    return float(s[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (s[i] - s[i - 1]))


def speedup(std_steps: float, rg_steps: float) -> float:
    """PAPER.md Sec. 6, Figure 6: speed-up = standard-RL real steps / re-grounding real steps to the target
    (NaN when either never reaches it)."""
    if math.isnan(std_steps) or math.isnan(rg_steps):
        return math.nan
    return math.inf if rg_steps == 0 else std_steps / rg_steps


def accuracy_at(steps: Sequence[float], accuracy: Sequence[float], budgets: Sequence[float]) -> np.ndarray:
    """Accuracy at each real-step budget (Table 2), linear between evaluated steps, NaN outside them. [B]"""
    s, a = np.asarray(steps, np.float64), np.asarray(accuracy, np.float64)
    b = np.asarray(budgets, np.float64)
    out = np.interp(b, s, a)
    return np.where((b < s[0]) | (b > s[-1]), np.nan, out)


# ----------------------------------------------------------------------------------------------------
# Validation and configs


def validate(cfg: RegroundConfig) -> None:
    """One ValueError per bad field."""
    if cfg.m <= 0:
        raise ValueError(f"m (real RL steps per block) must be > 0, got {cfg.m}")
    if cfg.n < 0:
        raise ValueError(f"n (extrapolated steps per block) must be >= 0, got {cfg.n}")
    if cfg.budget < cfg.m:
        raise ValueError(f"budget ({cfg.budget} real steps) is smaller than one block (m = {cfg.m}): nothing to train")
    if cfg.optimizer not in OPTIMIZER_CHOICES:
        raise ValueError(f"optimizer must be one of {OPTIMIZER_CHOICES}, got {cfg.optimizer!r}")
    if cfg.horizon not in HORIZONS:
        raise ValueError(f"horizon must be one of {HORIZONS}, got {cfg.horizon!r}")
    if cfg.horizon == "r2":
        if cfg.r2_checkpoints < 3:
            raise ValueError(f"r2_checkpoints must be >= 3 (R^2 of a line through 2 points is always 1), got {cfg.r2_checkpoints}")
        if cfg.m % (cfg.r2_checkpoints - 1):
            raise ValueError(f"m = {cfg.m} must be a multiple of r2_checkpoints - 1 = {cfg.r2_checkpoints - 1} "
                             "(checkpoints evenly spaced inside each block)")
        if not cfg.r2_low <= cfg.r2_high:
            raise ValueError(f"need r2_low <= r2_high, got {cfg.r2_low} > {cfg.r2_high}")
        if cfg.grow < 1 or not 0 <= cfg.shrink <= 1:
            raise ValueError(f"need grow >= 1 and 0 <= shrink <= 1, got grow={cfg.grow}, shrink={cfg.shrink}")
        if cfg.n_max is not None and cfg.n_max < 0:
            raise ValueError(f"n_max must be >= 0 or None, got {cfg.n_max}")
    elif cfg.ckpt_every is not None and (cfg.ckpt_every < 1 or cfg.m % cfg.ckpt_every):
        raise ValueError(f"ckpt_every must divide m = {cfg.m}, got {cfg.ckpt_every}")


def block_rl_config(rl: RLConfig, cfg: RegroundConfig, block: int) -> RLConfig:
    """The `train_rl` config of one block: m steps, checkpoints at its ends (and inside it for horizon='r2'),
    the block's seed; everything else as in the standard run."""
    every = cfg.m // (cfg.r2_checkpoints - 1) if cfg.horizon == "r2" else (cfg.ckpt_every or cfg.m)
    return replace(rl, steps=cfg.m, ckpt_every=every, seed=block_seed(rl.seed, block))


# ----------------------------------------------------------------------------------------------------
# Ledger


def read_ledger(run_dir: str | Path) -> list[dict]:
    """The models of a re-grounding run, one dict per model (block, kind, real_step, virtual_step, path)."""
    path = Path(run_dir) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _write_ledger(run_dir: Path, entries: list[dict]) -> None:
    tmp = run_dir / f".ledger.jsonl.tmp-{os.getpid()}"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    os.replace(tmp, run_dir / "ledger.jsonl")


def _open_regrounding(run_dir: Path, config: dict, resume: bool) -> None:
    """Write regrounding.json for a new run; check it for an existing one (as `checkpoints.open_run`)."""
    path = run_dir / "regrounding.json"
    if path.exists():
        if not resume and (read_ledger(run_dir) or (run_dir / "blocks").exists()):
            raise FileExistsError(f"{run_dir} already holds a re-grounding run; pass resume=True to continue it "
                                  "or choose a new run directory")
        diffs = config_differences(json.loads(path.read_text()), config)
        if diffs:
            raise ValueError(f"cannot resume {run_dir} with a different config; differing fields: " + "; ".join(diffs))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "complete.json").unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


# ----------------------------------------------------------------------------------------------------
# One block


def train_block_embedded(rl_block: RLConfig, init_dir: Path, block_dir: Path, task_cfg: TaskConfig,
                         optimizer_from: Path | None, progress: bool, stop_after: int | None) -> bool:
    """One block with our trainer; returns True when the block is complete. optimizer_from: a checkpoint
    whose optimizer.safetensors the block starts from ('keep'), or None for a fresh optimizer ('reset')."""
    if is_complete(block_dir):
        return True
    train_rl(rl_block, init_dir, block_dir, task_cfg, resume=True, progress=progress, stop_after=stop_after,
             init_optimizer=optimizer_from)
    return is_complete(block_dir)


def train_block_verl(rl_block: RLConfig, init_dir: Path, block_dir: Path, task_cfg: TaskConfig,
                     progress: bool, train_data: str | None = None, n_gpus: int = 1) -> bool:
    """One block as a fresh verl run (`rlvr_nb.backends.verl_launcher.run_verl`) from init_dir; an interrupted block
    is started again (verl runs here are never resumed). Its checkpoints are ingested into
    <block_dir>/checkpoints/step_N/ (step_0 = init_dir)."""
    from rlvr_nb.backends.verl_launcher import from_rl_config, run_verl

    if is_complete(block_dir):
        return True
    if block_dir.exists():
        shutil.rmtree(block_dir)
    vcfg = replace(from_rl_config(rl_block, init_dir, block_dir, train_data=train_data, n_gpus=n_gpus),
                   embedded_digits=task_cfg.digits)
    run_verl(vcfg, progress=progress)
    mark_complete(block_dir)
    return True


def block_r2(checkpoints: Sequence[tuple[int, Path]], cfg: RegroundConfig) -> float:
    """Median per-weight R^2 against the step over the checkpoints of one block (PAPER.md Sec. 4, weight
    linearity, measured by `rlvr_nb.linearity.weight_linearity`); NaN when no weight passes the filters."""
    lin = LinearityConfig(min_range=cfg.r2_min_range, min_distinct=min(4, len(checkpoints)),
                          sample_fraction=cfg.r2_sample_fraction, drift=False, n_examples=0)
    return float(weight_linearity(load_trajectory(list(checkpoints), progress=False), lin, progress=False).overall.median)


# ----------------------------------------------------------------------------------------------------
# The loop


def run_regrounding(
    cfg: RegroundConfig,
    rl: RLConfig,
    init_dir: str | Path,
    run_dir: str | Path,
    task_cfg: TaskConfig = TaskConfig(),
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    trainer: str = "embedded",
    verl_options: Mapping | None = None,
) -> Path:
    """PAPER.md Sec. 6, periodic re-grounding: blocks of m real RL steps (rl's recipe; its steps, ckpt_every
    and seed are set per block by `block_rl_config`), each followed by a weight extrapolation by n steps.

    resume=True continues an interrupted run after its last complete block (and inside the block it was in,
    from that block's last checkpoint). stop_after (real steps) stops early, as a kill would.
    trainer='verl' trains each block with `run_verl` (GPU; verl_options: train_data, n_gpus).
    """
    validate(cfg)
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    if trainer == "verl" and cfg.optimizer == "keep":
        raise ValueError("optimizer='keep' needs the embedded trainer: every verl block is a fresh verl run "
                         "(a new optimizer); use optimizer='reset' with trainer='verl'")
    init_dir, run_dir = Path(init_dir), Path(run_dir)
    if not init_dir.is_dir():
        raise FileNotFoundError(f"init_dir {init_dir} does not exist (a HuggingFace model directory)")
    config = {"kind": "regrounding", "regrounding": to_jsonable(cfg), "rl": to_jsonable(rl), "task": to_jsonable(task_cfg),
              "init_dir": str(init_dir.resolve()), "trainer": trainer}
    _open_regrounding(run_dir, config, resume)

    ledger = read_ledger(run_dir)
    if ledger:  # resume after the last complete block
        last = ledger[-1]
        first_block, real, virtual, n = last["block"] + 1, last["real_step"], last["virtual_step"], last["next_n"]
        current = run_dir / last["path"]
    else:
        first_block, real, virtual, n, current = 0, 0, 0, cfg.n, init_dir
    n_blocks = cfg.budget // cfg.m
    bar = tqdm(range(first_block, n_blocks), initial=first_block, total=n_blocks, desc=f"blocks (m={cfg.m})",
               disable=not progress)
    for i in bar:
        if stop_after is not None and real >= stop_after:
            return run_dir
        block_dir = run_dir / "blocks" / f"block_{i}"
        rl_block = block_rl_config(rl, cfg, i)
        if trainer == "verl":
            done = train_block_verl(rl_block, current, block_dir, task_cfg, progress, **dict(verl_options or {}))
        else:
            prev_end = list_checkpoints(run_dir / "blocks" / f"block_{i - 1}")[-1][1] if i > 0 else None
            done = train_block_embedded(rl_block, current, block_dir, task_cfg,
                                        prev_end if cfg.optimizer == "keep" else None, progress,
                                        None if stop_after is None else stop_after - real)
        if not done:
            return run_dir

        ckpts = list_checkpoints(block_dir)  # [(0, start), ..., (m, end)]
        entries = [] if i > 0 else [{"block": 0, "kind": "start", "real_step": 0, "virtual_step": 0,
                                     "path": str(ckpts[0][1].relative_to(run_dir))}]
        entries += [{"block": i, "kind": "rl", "real_step": real + k, "virtual_step": virtual + k,
                     "path": str(d.relative_to(run_dir))} for k, d in ckpts[1:]]
        r2 = block_r2(ckpts, cfg) if cfg.horizon == "r2" else math.nan
        n_here = n if (cfg.extrapolate_last or i < n_blocks - 1) else 0
        if n_here > 0:
            alpha = regrounding_alpha(cfg.m, n_here)
            out = run_dir / "models" / f"block_{i}"
            extrapolate_weights(ckpts[0][1], ckpts[-1][1], out, alpha=alpha, base_step=virtual,
                                second_step=virtual + cfg.m, overwrite=True, progress=False)
            entries.append({"block": i, "kind": "extrapolated", "real_step": real + cfg.m,
                            "virtual_step": virtual + cfg.m + n_here, "path": str(out.relative_to(run_dir))})
        else:
            alpha = 1.0
        n_next = next_horizon(n, r2, cfg) if cfg.horizon == "r2" else n
        entries[-1].update({"n": n_here, "alpha": alpha, "block_r2": None if math.isnan(r2) else r2, "next_n": n_next})
        ledger += entries
        _write_ledger(run_dir, ledger)
        real, virtual, n, current = real + cfg.m, virtual + cfg.m + n_here, n_next, run_dir / entries[-1]["path"]
        bar.set_postfix(real=real, virtual=virtual, n=n_next)
    bar.close()
    if n_blocks and len({e["block"] for e in ledger}) == n_blocks:
        (run_dir / "complete.json").write_text(json.dumps({"real_steps": real, "virtual_steps": virtual}))
    return run_dir


def ensure_regrounding_run(cfg: RegroundConfig, rl: RLConfig, emb=None, progress: bool = True,
                           trainer: str = "embedded", verl_options: Mapping | None = None,
                           init_dir: str | Path | None = None) -> Path:
    """A re-grounding run from the embedded warm start (or init_dir), cached under runs_root() by config
    hash: trained, resumed or found complete."""
    from rlvr_nb.embedded import EmbeddedConfig, config_hash, ensure_warm_start, run_lock, runs_root

    emb = EmbeddedConfig() if emb is None else emb
    init = Path(init_dir) if init_dir is not None else ensure_warm_start(emb, progress)
    rl = replace(rl, steps=cfg.budget, ckpt_every=cfg.m)  # per-block values are set by block_rl_config
    run = runs_root() / f"reground-{config_hash(emb, rl, cfg, {'trainer': trainer, 'init': str(init)})}"
    with run_lock(run):
        if not (run / "complete.json").exists():
            run_regrounding(cfg, rl, init, run, emb.task, resume=True, progress=progress, trainer=trainer,
                            verl_options=verl_options)
    return run


def ensure_verl_standard_run(rl: RLConfig, model_path: str | Path, train_data: str | None = None, n_gpus: int = 1,
                             progress: bool = True) -> Path:
    """Standard RL with verl (GPU) from model_path, cached under runs_root() by config hash; an interrupted
    run is started again (verl runs here are never resumed). Checkpoints: <run>/checkpoints/step_N/."""
    from rlvr_nb.embedded import config_hash, run_lock, runs_root
    from rlvr_nb.backends.verl_launcher import from_rl_config, run_verl

    run = runs_root() / f"verl-rl-{config_hash(rl, {'model': str(model_path), 'data': train_data, 'n_gpus': n_gpus})}"
    with run_lock(run):
        if not is_complete(run):
            if run.exists():
                shutil.rmtree(run)
            run_verl(from_rl_config(rl, model_path, run, train_data=train_data, n_gpus=n_gpus), progress=progress)
            mark_complete(run)
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
    have = dict(list_checkpoints(run_dir))
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
        accs = np.array([accuracy_at(c.real_steps, c.accuracy, budgets) for c in by_seed.values()])  # [S, B]
        base = np.array([accuracy_at(std[k].real_steps, std[k].accuracy, budgets) for k in by_seed if k in std])
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
