"""The embedded default: a tiny Qwen2 warm-started by SFT, then trained with RLVR on 3-digit addition.

Every run lives in `runs/<kind>-<hash of its config>/`, so a notebook that asks for a trajectory either
finds it (same config, already trained), resumes it (interrupted), or trains it. Nothing is downloaded.
Hyperparameters of the embedded default live in one place: the dataclasses below and `rlvr_nb.notebook.profiles`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rlvr_nb.checkpoints import is_complete, list_checkpoints, run_lock, to_jsonable
from rlvr_nb.grpo import RLConfig, train_rl
from rlvr_nb.models import ModelConfig
from rlvr_nb.sft import SFTConfig, train_sft
from rlvr_nb.tasks import TaskConfig


@dataclass(frozen=True)
class EmbeddedConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture of the tiny Qwen2."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The verifiable task (difficulty knob: digits)."""
    warm_start: SFTConfig = field(default_factory=lambda: SFTConfig(
        steps=3000, batch_size=64, lr=5e-4, ckpt_every=10, stop_at_accuracy=0.1))
    """SFT from random init, stopped as soon as held-out sampled accuracy reaches 10%: the RL start has a
    low but non-zero reward. The tiny model learns addition abruptly, after a plateau of ~950 steps, and within
    50 steps goes from 0 to 30% sampled accuracy, hence a checkpoint every 10 steps. At lr 1e-3 the 2 x 32-head
    model never leaves the plateau's end (1-2% after 3000 steps, two init seeds); at 5e-4 it stops at step 1010."""
    cool_down: SFTConfig | None = field(default_factory=lambda: SFTConfig(steps=100, batch_size=64, lr=1e-5, ckpt_every=100))
    """A short low-lr SFT after the warm start. The warm start stops mid-descent at lr 1e-3, off the valley
    floor, and any small step then settles it (greedy accuracy 0.55 -> 0.8 in a few steps, whatever the
    method): without this, every trajectory would begin with that lr-independent jump."""


def repo_root() -> Path:
    """The checkout this package is installed from (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


TRAINED_LOG = "trained.jsonl"
"""Under $RLVR_NB_OUT: one JSON line per run that `ensure_*` trained (or resumed) rather than found complete."""


def note_trained(run: Path, started: float) -> None:
    """Append {"run", "seconds"} (since `started`, a `time.perf_counter()`) to $RLVR_NB_OUT/TRAINED_LOG when that
    variable is set: the notebook runner records which runs a notebook's wall time spent training."""
    out = os.environ.get("RLVR_NB_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / TRAINED_LOG, "a") as f:
            f.write(json.dumps({"run": Path(run).name, "seconds": round(time.perf_counter() - started, 1)}) + "\n")


def runs_root() -> Path:
    """Where trajectories are cached: $RLVR_NB_RUNS, else <repo>/runs."""
    return Path(os.environ.get("RLVR_NB_RUNS", repo_root() / "runs"))


def config_hash(*configs) -> str:
    """Short stable hash of configs (dataclasses or dicts)."""
    blob = json.dumps([to_jsonable(c) for c in configs], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def ensure_warm_start(emb: EmbeddedConfig = EmbeddedConfig(), progress: bool = True) -> Path:
    """The SFT warm start and its cool-down (the RL start, step 0 of every trajectory), trained once and cached."""
    run = runs_root() / f"warmstart-{config_hash(emb)}"
    with run_lock(run):
        if not is_complete(run):
            t0 = time.perf_counter()
            train_sft(emb.warm_start, run, None, emb.task, emb.model, resume=True, progress=progress)
            note_trained(run, t0)
    start = list_checkpoints(run)[-1][1]
    if emb.cool_down is None:
        return start
    cool = runs_root() / f"cooldown-{config_hash(emb)}"
    with run_lock(cool):
        if not is_complete(cool):
            t0 = time.perf_counter()
            train_sft(emb.cool_down, cool, start, emb.task, resume=True, progress=progress)
            note_trained(cool, t0)
    return list_checkpoints(cool)[-1][1]


def trajectory_dir(config: RLConfig | SFTConfig, emb: EmbeddedConfig = EmbeddedConfig(),
                   target: TaskConfig | None = None) -> Path:
    """Where the run of an RL or SFT config of `emb` is cached (an SFT towards another task `target`: see
    `ensure_sft_run`), trained or not."""
    if isinstance(config, RLConfig):
        return runs_root() / f"rl-{config_hash(emb, config)}"
    if isinstance(config, SFTConfig):
        return runs_root() / f"sft-{config_hash(emb, config) if target is None else config_hash(emb, config, target)}"
    raise _not_a_trajectory(config)


def _not_a_trajectory(config) -> ValueError:
    return ValueError(f"a trajectory's config must be an RLConfig or an SFTConfig, got {type(config).__name__}")


def ensure_rl_run(rl: RLConfig, emb: EmbeddedConfig = EmbeddedConfig(), progress: bool = True) -> Path:
    """An RL trajectory of the embedded default; trained (or resumed) only if not already complete."""
    init = ensure_warm_start(emb, progress)
    run = trajectory_dir(rl, emb)
    with run_lock(run):
        if not is_complete(run):
            t0 = time.perf_counter()
            train_rl(rl, init, run, emb.task, resume=True, progress=progress)
            note_trained(run, t0)
    return run


def ensure_sft_run(sft: SFTConfig, emb: EmbeddedConfig = EmbeddedConfig(), progress: bool = True,
                   target: TaskConfig | None = None) -> Path:
    """An SFT trajectory from the same warm start (supervised on correct answers of emb's task, or of `target`:
    an SFT towards a task the model does not yet produce; the target is part of the run's hash)."""
    init = ensure_warm_start(emb, progress)
    run = trajectory_dir(sft, emb, target)
    with run_lock(run):
        if not is_complete(run):
            t0 = time.perf_counter()
            train_sft(sft, run, init, emb.task if target is None else target, resume=True, progress=progress)
            note_trained(run, t0)
    return run


def ensure_trajectory(config: RLConfig | SFTConfig, emb: EmbeddedConfig = EmbeddedConfig(), progress: bool = True) -> Path:
    """The run directory of an RL or SFT config of the embedded default, trained (cached by config hash) if missing."""
    if isinstance(config, RLConfig):
        return ensure_rl_run(config, emb, progress)
    if isinstance(config, SFTConfig):
        return ensure_sft_run(config, emb, progress)
    raise _not_a_trajectory(config)


def matched_sft(rl: RLConfig, **changes) -> SFTConfig:
    """The SFT trajectory with RL's budget: same steps, checkpoint spacing, learning rate, optimizer and seed,
    one sequence per RL prompt (batch = prompts_per_step); `changes` override any field."""
    base = SFTConfig(steps=rl.steps, batch_size=rl.prompts_per_step, lr=rl.lr, optimizer=rl.optimizer,
                     momentum=rl.momentum, weight_decay=rl.weight_decay, grad_clip=rl.grad_clip,
                     ckpt_every=rl.ckpt_every, eval_problems=rl.eval_problems, seed=rl.seed)
    return replace(base, **changes)
