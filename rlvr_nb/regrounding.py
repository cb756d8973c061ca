"""Periodic re-grounding, "RL-Extra" (PAPER.md Sec. 6, second half): fewer real RL steps for the same accuracy.

    repeat until `budget` real steps are spent:
        m real RL steps from the current model                     (a `train_rl` run: one *block*)
        extrapolate from the block's start to its end by n steps:  W = W_start + alpha (W_end - W_start),
                                                                   alpha = (m + n) / m
        continue RL from the extrapolated model                    (the next block starts there)

Every model carries two clocks: its *real* step (RL steps actually taken) and its *virtual* step (real
steps plus every extrapolated step so far). The speed-up of the paper's Figure 6 is

    speed-up = (standard-RL real steps to reach a target accuracy) / (re-grounding real steps to reach it).

This module is the method (the equations, `RegroundConfig`, the loop `run_regrounding` with a pluggable block
trainer, the ledger); the study of notebook 06 (accuracy curves, speed-up tables, figures, cached runs) is
`rlvr_nb.experiments.rl_extra`, which also passes in the verl block trainer
(`rlvr_nb.backends.verl_launcher.train_block_verl`) for trainer='verl'.

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
- Resuming: a block is complete when its `train_rl` run is; the ledger is replaced atomically (a new
  file renamed over it, `rlvr_nb.checkpoint_writes.write_text`) after each block's extrapolation. An
  interrupted run resumes after its last complete block, and inside the interrupted block from that
  block's last checkpoint (bit-for-bit the uninterrupted result).
- A run is read at real step R in two ways (`rlvr_nb.experiments.rl_extra.models_at_real_steps`; 06 reads
  it at every block end, `models_at_block_ends`): its newest model (at a block boundary the extrapolated
  model, which cost no real step) or its RL checkpoint (at a boundary the block's end before the
  extrapolation). The first measures the extrapolation, the second where re-grounding RL gets from it.
- R^2-guided horizon (ours, not the paper's, `horizon='r2'`): checkpoints every m / (r2_checkpoints - 1)
  steps inside each block give the block's median per-weight R^2 against the step
  (`rlvr_nb.linearity.weight_linearity`); the next block's n grows (x `grow`) while that R^2 stays at or
  above `r2_high` and shrinks (x `shrink`) when it falls below `r2_low` (`next_horizon`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.checkpoint_files import find_checkpoints, read_json
from rlvr_nb.checkpoint_writes import write_json, write_text
from rlvr_nb.checkpoints import config_differences, is_complete, to_jsonable
from rlvr_nb.extrapolate import alpha_for, extrapolate_weights
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
    """PAPER.md Sec. 6, periodic re-grounding: alpha = (m + n) / m, extrapolating m real steps by n more;
    the paper's alpha (`extrapolate.alpha_for`) from the block's start (0) through its end (m) to m + n."""
    return alpha_for(0, m, m + n)


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


def steps_to_target(steps: Sequence[float], accuracy: Sequence[float], target: float, method: str = "first") -> float:
    """Real steps a curve needs to reach `target` accuracy; NaN when it never does.

    first:       the first evaluated step whose accuracy is >= target (first crossing): the step of a model
                 that was evaluated, which is how 06 reads a run evaluated at every block end;
    interpolate: the step where the straight line between that point and the one before it crosses target
                 (a crossing between two evaluations, of a model nobody evaluated).
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
    (NaN when either never reaches it, or when both start at it: a target not above the start measures nothing)."""
    if math.isnan(std_steps) or math.isnan(rg_steps) or std_steps == rg_steps == 0:
        return math.nan
    return math.inf if rg_steps == 0 else std_steps / rg_steps


def seed_bootstrap(statistic: Callable[[np.ndarray], float], n_seeds: int, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval over seeds: `statistic(idx)` of n_boot draws of n_seeds seed indices [n_seeds]
    taken with replacement (numpy generator seeded by `seed`, so the interval is reproducible). Draws whose
    statistic is NaN are left out; (NaN, NaN) when all are. With one seed the interval is its value."""
    if n_seeds < 1 or n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_seeds >= 1, n_boot >= 1 and 0 < level < 1, got {n_seeds}, {n_boot}, {level}")
    draws = np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))  # [n_boot, n_seeds]
    values = np.array([statistic(d) for d in draws], np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def accuracy_at_budgets(steps: Sequence[float], accuracy: Sequence[float], budgets: Sequence[float]) -> np.ndarray:
    """Accuracy at each real-step budget (Table 2), linear between evaluated steps, NaN outside them. [B]"""
    s, a = np.asarray(steps, np.float64), np.asarray(accuracy, np.float64)
    b = np.asarray(budgets, np.float64)
    out = np.interp(b, s, a)
    return np.where((b < s[0]) | (b > s[-1]), np.nan, out)


# ----------------------------------------------------------------------------------------------------
# Validation and configs


def validate_reground_config(cfg: RegroundConfig) -> None:
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
    write_text(run_dir / "ledger.jsonl", "".join(json.dumps(e) + "\n" for e in entries))


def _open_regrounding(run_dir: Path, config: dict, resume: bool) -> None:
    """Write regrounding.json for a new run; check it for an existing one (as `checkpoints.open_run`),
    which is not rewritten."""
    path = run_dir / "regrounding.json"
    if path.exists():
        if not resume and (read_ledger(run_dir) or (run_dir / "blocks").exists()):
            raise FileExistsError(f"{run_dir} already holds a re-grounding run; pass resume=True to continue it "
                                  "or choose a new run directory")
        diffs = config_differences(read_json(path), config)
        if diffs:
            raise ValueError(f"cannot resume {run_dir} with a different config; differing fields: " + "; ".join(diffs))
        return
    write_json(path, config, sort_keys=True)


# ----------------------------------------------------------------------------------------------------
# One block


class BlockTrainer(Protocol):
    """Trains one block of m real RL steps from init_dir into block_dir (checkpoints/step_0 = the start ..
    step_m = the end); returns True when the block is complete (False: it stopped early, e.g. stop_after)."""

    def __call__(self, rl_block: RLConfig, init_dir: Path, block_dir: Path, task_cfg: TaskConfig,
                 optimizer_from: Path | None, progress: bool, stop_after: int | None) -> bool: ...


def train_block_embedded(rl_block: RLConfig, init_dir: Path, block_dir: Path, task_cfg: TaskConfig,
                         optimizer_from: Path | None, progress: bool, stop_after: int | None) -> bool:
    """One block with our trainer; returns True when the block is complete. optimizer_from: a checkpoint
    whose optimizer.safetensors the block starts from ('keep'), or None for a fresh optimizer ('reset')."""
    if is_complete(block_dir):
        return True
    train_rl(rl_block, init_dir, block_dir, task_cfg, resume=True, progress=progress, stop_after=stop_after,
             init_optimizer=optimizer_from)
    return is_complete(block_dir)


def block_checkpoints(block_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of a block's complete checkpoints, [(0, start), ..., (m, end)]."""
    return find_checkpoints(block_dir, "rlvr-nb", allow_empty=True) if block_dir.is_dir() else []


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
    train_block: BlockTrainer | None = None,
) -> Path:
    """PAPER.md Sec. 6, periodic re-grounding: blocks of m real RL steps (rl's recipe; its steps, ckpt_every
    and seed are set per block by `block_rl_config`), each followed by a weight extrapolation by n steps.

    resume=True continues an interrupted run after its last complete block (and inside the block it was in,
    from that block's last checkpoint). stop_after (real steps) stops early, as a kill would.
    trainer names the block trainer in the run's config: 'embedded' (`train_block_embedded`, the default
    train_block) or 'verl', whose train_block must be given (`rlvr_nb.backends.verl_launcher.train_block_verl`,
    as `rlvr_nb.experiments.rl_extra.ensure_regrounding_run` does).
    """
    validate_reground_config(cfg)
    if trainer not in TRAINERS:
        raise ValueError(f"trainer must be one of {TRAINERS}, got {trainer!r}")
    if trainer == "verl" and cfg.optimizer == "keep":
        raise ValueError("optimizer='keep' needs the embedded trainer: every verl block is a fresh verl run "
                         "(a new optimizer); use optimizer='reset' with trainer='verl'")
    if train_block is None:
        if trainer != "embedded":
            raise ValueError(f"trainer={trainer!r} needs its block trainer: pass train_block= (for 'verl', "
                             "rlvr_nb.backends.verl_launcher.train_block_verl)")
        train_block = train_block_embedded
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
        keep_from = (block_checkpoints(run_dir / "blocks" / f"block_{i - 1}")[-1][1]
                     if i > 0 and cfg.optimizer == "keep" else None)  # the previous block's end
        done = train_block(block_rl_config(rl, cfg, i), current, block_dir, task_cfg, keep_from, progress,
                           None if stop_after is None else stop_after - real)
        if not done:
            return run_dir

        ckpts = block_checkpoints(block_dir)  # [(0, start), ..., (m, end)]
        if not ckpts or ckpts[0][0] != 0 or ckpts[-1][0] != cfg.m:
            raise RuntimeError(f"block {i} in {block_dir} is marked complete but its checkpoints are steps "
                               f"{[s for s, _ in ckpts]}, not 0 .. {cfg.m}")
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
        write_json(run_dir / "complete.json", {"real_steps": real, "virtual_steps": virtual}, indent=None)
    return run_dir


def regrounding_study(P, rl: RLConfig, gpu: bool = False) -> tuple[RLConfig, dict[str, tuple[RegroundConfig, list[int]]]]:
    """06's runs from its resolved knobs `P` and RL recipe `rl`: (the recipe of every block, with the trainer's own
    per-block evaluation of `P.block_eval_problems` problems; {setting name: (RegroundConfig, seeds)}): the fixed
    (m, n) settings over `P.seeds`, the R^2-guided horizon when `P.r2_m`, and the other optimizer choice at
    `P.reset_setting` over `P.reset_seeds` (06's study; `rlvr_nb.notebook.pretrain` trains the same runs ahead)."""
    configs = {f"(m={m}, n={n})": (RegroundConfig(m=m, n=n, budget=P.budget, optimizer=P.optimizer), list(P.seeds))
               for m, n in P.settings}
    if P.r2_m:
        T = P.r2_checkpoints
        configs[f"R²-guided (m={P.r2_m})"] = (
            RegroundConfig(m=P.r2_m, n=P.r2_m, budget=P.budget, optimizer=P.optimizer, horizon="r2", r2_checkpoints=T,
                           r2_high=r2_for_drift_to_noise(P.r2_grow_at, T), r2_low=r2_for_drift_to_noise(P.r2_shrink_below, T),
                           # gpu: sample 0.1% of each tensor (the paper's mode); bf16 steps are caught by the
                           # 4-distinct-values filter, and lr 1e-6 moves a weight < 1e-4 inside a block
                           r2_sample_fraction=0.001 if gpu else None, r2_min_range=0.0 if gpu else 1e-4),
            list(P.seeds))
    if P.reset_setting is not None:
        other = "reset" if P.optimizer == "keep" else "keep"
        m, n = P.reset_setting
        configs[f"(m={m}, n={n}) {other}"] = (RegroundConfig(m=m, n=n, budget=P.budget, optimizer=other),
                                             list(P.reset_seeds))
    return replace(rl, eval_problems=P.block_eval_problems), configs
