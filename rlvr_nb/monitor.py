"""Linearity of a run in progress: after every checkpoint, how linear the weights have been so far, how
steady the drift direction is, and how far the run's own history says a linear extrapolation holds.

Three readings per checkpoint, on a fixed random sample of weight entries (as in the paper, 0.1% of each
tensor, at least 50), so that memory stays small for any model size:

- running weight R^2 (PAPER.md Sec. 4, weight linearity) over all checkpoints so far: the entries, the
  filters and the R^2 are those of `rlvr-nb linearity --sample-fraction` (`linearity.sample_indices`,
  `linearity.sample_r2`, the engine's kernel), so on a finished run the last row equals its numbers;
- drift stability: cosine (`motion.cosine`) between consecutive checkpoint deltas, and between the latest
  delta and the overall direction w_k - w_0; `pace` compares the distance covered along that direction
  with the time elapsed (1: constant speed, < 1: slowing down);
- a suggested extrapolation horizon (PAPER.md Sec. 6, weight extrapolation replayed on the run's own
  past): extrapolate from w_0 through an earlier checkpoint w_j by alpha_j = (t_k - t_0) / (t_j - t_0),
  compare with the latest checkpoint w_k, and score skill = 1 - |pred - w_k| / |w_j - w_k| (1: exact,
  0: no better than stopping at w_j). The suggested alpha is the largest alpha_j with skill >= skill_min,
  and the horizon t_0 + alpha (t_k - t_0). It is weight-space evidence, an upper bound to try: the paper's
  accuracy peaked near alpha ~1.3 (t1 = 1400 -> 1800).

Two ways in: `LinearityCallback` for `transformers.Trainer` / TRL's `GRPOTrainer(callbacks=[...])`, and
`watch(run_dir)` (`rlvr-nb watch RUN_DIR`), which follows a run directory as checkpoints appear; they are
found by the checkpoint layer (`checkpoint_files.scan_checkpoints`: ours, HF Trainer / TRL, verl). A
checkpoint is read when its writer has marked it complete, or, without a marker, when its safetensors
headers validate and its files' sizes and mtimes are equal on two consecutive looks; one whose files change
after it was read is read again and the rows from its step on are recomputed. A checkpoint that cannot be
used (NaN weights, a corrupt or unreadable file) is an error row naming the tensor, file and step; it is
tried again when its files change. Both print a table row per checkpoint and rewrite
`linearity_monitor.png` and `linearity_monitor.jsonl` atomically (`checkpoint_writes`).
"""

from __future__ import annotations

import bisect
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rlvr_nb.checkpoint_files import (FLOATING_DTYPES, CheckpointError, describe_error, files_signature, has_weights,
                                      read_tensors, read_weight_index, scan_checkpoints)
from rlvr_nb.checkpoint_writes import write_text
from rlvr_nb.linearity import LinearityConfig, sample_indices, sample_r2
from rlvr_nb.motion import cosine, delta, drift_pace, extrapolation_backtest, suggest_alpha

try:  # the callback is a TrainerCallback when transformers is there (it always is in this package)
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[misc,assignment]



@dataclass(frozen=True)
class MonitorConfig:
    sample_fraction: float | None = 1e-3
    """Fraction of each tensor's entries followed (the paper: 0.1%); None: every entry."""
    min_samples: int = 50
    """At least this many entries per tensor (all of them in smaller tensors)."""
    min_range: float = 1e-4
    """Sec. 4 filter: an entry counts for R^2 only if it moved more than this over the checkpoints."""
    min_distinct: int = 4
    """Sec. 4 filter: ... and took at least this many distinct values (bf16 moves in steps)."""
    threshold: float = 0.7
    """Report the fraction of entries with R^2 above this (the paper: > 70% of weights)."""
    skill_min: float = 0.5
    """Smallest backtest skill for an extrapolation factor to count as supported."""
    seed: int = 0
    """Seed of the entry sample (with the tensor name, so every checkpoint gets the same entries)."""

    def __post_init__(self) -> None:
        if self.sample_fraction is not None and not 0 < self.sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {self.sample_fraction}")

    def linearity(self) -> LinearityConfig:
        """The engine's configuration with the same entries and filters (`rlvr-nb linearity --sample-fraction`)."""
        return LinearityConfig(min_range=self.min_range, min_distinct=self.min_distinct,
                               sample_fraction=self.sample_fraction, min_samples=self.min_samples,
                               threshold=self.threshold, seed=self.seed, drift=False)


@dataclass
class MonitorRow:
    step: int
    """Training step of the latest checkpoint."""
    n_checkpoints: int
    """Checkpoints seen so far (including step 0 when known)."""
    r2_median: float
    """Median R^2 of the kept entries' line fits over all checkpoints (nan until min_distinct checkpoints)."""
    r2_frac_above: float
    """Fraction of kept entries with R^2 > threshold."""
    n_kept: int
    """Entries that pass the range / distinct-values filter."""
    cos_prev: float
    """cos(w_k - w_{k-1}, w_{k-1} - w_{k-2})."""
    cos_total: float
    """cos(w_k - w_{k-1}, w_k - w_0)."""
    pace: float
    """alpha fitted along w_{k-1} - w_0 to reach w_k, over the time ratio (1: steady speed)."""
    skill: float
    """Backtest skill at the suggested alpha (the best skill seen when none is supported)."""
    alpha: float
    """Suggested extrapolation factor from w_0 through the latest checkpoint (1: do not extrapolate)."""
    horizon_step: int
    """t_0 + alpha (t_k - t_0): the step a weight extrapolation would aim at."""


# ----------------------------------------------------------------------------------------------------
# The monitor


TensorSource = Path | str | Mapping[str, torch.Tensor] | torch.nn.Module


def floating_tensors(source: TensorSource) -> tuple[dict[str, int], Callable[[str], torch.Tensor]]:
    """(entries of each non-empty floating tensor, a function reading one tensor) of a checkpoint directory
    (through `checkpoint_files.read_tensors`), a state dict or a module."""
    if isinstance(source, torch.nn.Module):
        source = {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        tensors = source
        return {k: v.numel() for k, v in tensors.items() if v.is_floating_point() and v.numel() > 0}, tensors.__getitem__
    header = read_weight_index(source)
    sizes = {n: math.prod(h.shape) for n, h in header.items() if h.dtype in FLOATING_DTYPES and math.prod(h.shape) > 0}
    return sizes, lambda name: read_tensors(source, [name], header)[name]


class LinearityMonitor:
    """Follows a fixed sample of weight entries across checkpoints; `observe` adds one and returns its row.

    history[k] is the row at steps[k], computed on the checkpoints up to it."""

    def __init__(self, cfg: MonitorConfig = MonitorConfig()) -> None:
        self.cfg = cfg
        self.linearity = cfg.linearity()
        self.plan: dict[str, np.ndarray | None] | None = None  # tensor name -> sorted flat indices (None: all)
        self.sizes: dict[str, int] = {}
        self.steps: list[int] = []
        self.values: list[np.ndarray] = []  # per checkpoint, [P] float32, in step order
        self.history: list[MonitorRow] = []
        self.files: dict[int, tuple[Path, tuple | None]] = {}
        """step -> (directory, `files_signature` of its weight files when read), for steps read from disk."""
        self.errors: dict[int, tuple[tuple | None, str]] = {}
        """step -> (signature of its files, message) of a checkpoint that could not be used."""

    def sample(self, source: TensorSource, step: int) -> np.ndarray:
        """The followed entries of one checkpoint, [P] float32 (the first call fixes which entries).
        CheckpointError naming the tensor and step for NaN/Inf weights, a missing tensor or a changed shape."""
        sizes, read = floating_tensors(source)
        where = f"the checkpoint at step {step}" + (f" ({source})" if isinstance(source, (str, Path)) else "")
        if self.plan is None and not sizes:
            raise CheckpointError(f"no floating-point tensors to follow in {where}")
        plan = self.plan if self.plan is not None else {n: sample_indices(n, k, self.linearity) for n, k in sizes.items()}
        missing = [n for n in plan if n not in sizes]
        if missing:
            raise CheckpointError(f"{where} lacks {len(missing)} tensor(s) followed so far, e.g. {missing[:3]}")
        parts = []
        for name, idx in plan.items():
            if self.plan is not None and sizes[name] != self.sizes[name]:
                raise CheckpointError(f"tensor {name} has {sizes[name]} entries in {where}, {self.sizes[name]} before")
            flat = read(name).detach().reshape(-1)
            bad = ~torch.isfinite(flat)
            if bad.any():
                raise CheckpointError(f"non-finite weights (NaN or Inf) in tensor {name} of {where}: "
                                      f"{int(bad.sum())} of {flat.numel()} values")
            picked = flat if idx is None else flat[torch.from_numpy(idx)]
            parts.append(picked.to(device="cpu", dtype=torch.float32, copy=True).numpy())
        if self.plan is None:
            self.plan, self.sizes = plan, dict(sizes)
        return np.concatenate(parts)

    def observe(self, step: int, source: TensorSource, *, replace: bool = False) -> MonitorRow | None:
        """Add the checkpoint at `step` (replace: read a step seen before again) and recompute the rows from
        its step on; returns the latest row, or None when the step was seen before (and not replace)."""
        step = int(step)
        if step in self.steps and not replace:
            return None
        v = self.sample(source, step)
        if step in self.steps:
            i = self.steps.index(step)
            self.values[i] = v
        else:
            i = bisect.bisect(self.steps, step)
            self.steps.insert(i, step)
            self.values.insert(i, v)
        self.errors.pop(step, None)
        self.history[i:] = [self.report(k) for k in range(i, len(self.steps))]
        return self.history[-1]

    def drop(self, step: int) -> None:
        """Forget the checkpoint at `step` (its files changed and can no longer be used); rows recomputed."""
        if step in self.steps:
            i = self.steps.index(step)
            del self.steps[i], self.values[i]
            self.history[i:] = [self.report(k) for k in range(i, len(self.steps))]
        self.files.pop(step, None)

    def matrix(self, k: int | None = None) -> tuple[np.ndarray, list[int]]:
        """(values [K, P] float32, steps [K]) of the checkpoints up to the k-th (default: all)."""
        k = len(self.steps) if k is None else k + 1
        return np.stack(self.values[:k]), self.steps[:k]

    def report(self, k: int | None = None) -> MonitorRow:
        """The row at the k-th checkpoint (default the latest), from the checkpoints up to it."""
        V, t = self.matrix(k)
        K, nan = len(t), math.nan
        r2_med = r2_frac = nan
        n_kept = 0
        if K >= 3:
            summary = sample_r2(V, t, self.linearity)[1]
            r2_med, r2_frac, n_kept = summary.median, summary.frac_above, summary.count
        cos_prev = cosine(delta(V[-1], V[-2]), delta(V[-2], V[-3])) if K >= 3 else nan
        cos_total = cosine(delta(V[-1], V[-2]), delta(V[-1], V[0])) if K >= 3 else nan
        pace = drift_pace(V[0], V[-2], V[-1], t[0], t[-2], t[-1]) if K >= 3 else nan
        alpha, skill = suggest_alpha(extrapolation_backtest(V, t), self.cfg.skill_min) if K >= 3 else (1.0, nan)
        horizon = t[0] + round(alpha * (t[-1] - t[0]))
        return MonitorRow(t[-1], K, r2_med, r2_frac, n_kept, cos_prev, cos_total, pace, skill, alpha, horizon)


# ----------------------------------------------------------------------------------------------------
# Output: table, JSON lines, PNG


COLUMNS = [("step", 8, "d"), ("ckpts", 5, "d"), ("R2 med", 7, ".3f"), ("R2>thr", 7, ".3f"), ("kept", 8, "d"),
           ("cos prev", 8, ".3f"), ("cos tot", 8, ".3f"), ("pace", 6, ".2f"), ("skill", 6, ".2f"),
           ("alpha", 6, ".2f"), ("horizon", 8, "d")]


def table_header() -> str:
    return " ".join(f"{name:>{w}}" for name, w, _ in COLUMNS)


def table_row(row: MonitorRow) -> str:
    vals = [row.step, row.n_checkpoints, row.r2_median, row.r2_frac_above, row.n_kept, row.cos_prev,
            row.cos_total, row.pace, row.skill, row.alpha, row.horizon_step]
    cells = []
    for (_, w, fmt), v in zip(COLUMNS, vals):
        cells.append(f"{'-':>{w}}" if isinstance(v, float) and math.isnan(v) else f"{v:>{w}{fmt}}")
    return " ".join(cells)


def error_row(step: int, message: str) -> str:
    return f"# step {step}: error: {message}"


def write_outputs(monitor: LinearityMonitor, out_dir: str | Path) -> tuple[Path, Path]:
    """Rewrite <out_dir>/linearity_monitor.jsonl (one row per checkpoint, {"step", "error"} for those that could
    not be used) and linearity_monitor.png, atomically; refused inside a checkpoint that was read."""
    out_dir = Path(out_dir)
    inputs = [path for path, _ in monitor.files.values()]
    rows = [asdict(r) for r in monitor.history] + [{"step": s, "error": m} for s, (_, m) in monitor.errors.items()]
    text = "".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: r["step"]))
    jsonl = write_text(out_dir / "linearity_monitor.jsonl", text, inputs)
    from rlvr_nb.figures import plot_monitor  # matplotlib only when a figure is drawn

    return jsonl, plot_monitor(monitor, out_dir / "linearity_monitor.png", inputs)


# ----------------------------------------------------------------------------------------------------
# Following a run directory


def run_checkpoints(run_dir: Path, layout: str | None, initial_model: Path | None) -> list[tuple[int, Path, bool | None]]:
    """(step, directory, marked) of every checkpoint of the run, complete or not, with the initial model as
    step 0 (unmarked) when the run has none."""
    found = [(c.step, c.path, c.marked) for c in scan_checkpoints(run_dir, layout)]
    if initial_model is not None and all(s != 0 for s, _, _ in found):
        found.insert(0, (0, initial_model, None))
    return found


def settled(path: Path, marked: bool | None) -> tuple | str:
    """The signature of a checkpoint's weight files when it counts as complete, else why not (a string).
    Complete: marked by its writer, or unmarked with headers that validate and files that did not change
    between two looks. CheckpointError (or OSError) for a marked checkpoint that cannot be read, or an
    unreadable file."""
    if marked is False:
        return "not complete yet: its writer has not marked it complete"
    try:
        first = files_signature(path)
        read_weight_index(path)  # validates every header against its file
        second = files_signature(path)
    except (CheckpointError, FileNotFoundError) as e:  # other OSErrors: unreadable
        if marked or str(e).startswith("cannot read"):
            raise
        return f"not complete yet ({e})"
    return second if first == second else "not complete yet: its files are changing"


def current_signature(path: Path) -> tuple | None:
    try:
        return files_signature(path) if has_weights(path) else None
    except (CheckpointError, OSError):
        return None


def poll(monitor: LinearityMonitor, entries: list[tuple[int, Path, bool | None]], print_fn: Callable[[str], None],
         told: set[int]) -> bool:
    """One look at the run: read each checkpoint that is complete and new, or whose files changed since it
    was read (or since it failed); print its rows or its error row. Returns whether anything changed."""
    changed = False
    for step, path, marked in entries:
        known = monitor.files.get(step)
        if step in monitor.steps and known is None:
            continue  # observed from memory (the callback)
        sig = current_signature(path)
        if (known is not None and known == (path, sig)) or (step in monitor.errors and monitor.errors[step][0] == sig):
            continue  # read, or failed, on these very files
        try:
            state = settled(path, marked)
            if isinstance(state, str):
                if step not in told:
                    print_fn(f"# step {step}: {state}")
                    told.add(step)
                continue
            again = step in monitor.steps
            monitor.observe(step, path, replace=again)
        except (CheckpointError, OSError) as e:
            if monitor.errors.get(step, (None, None))[1] != describe_error(e) or step not in told:
                print_fn(error_row(step, describe_error(e)))
            monitor.drop(step)  # a step read before whose new files fail: its old values are stale
            monitor.errors[step] = (sig, describe_error(e))
            told.add(step)
            changed = True
            continue
        after = current_signature(path)
        monitor.files[step] = (path, state if after == state else None)  # changed while read: read again
        i = monitor.steps.index(step)
        if again:
            print_fn(f"# step {step}: its files changed after they were read; read again, rows from it on recomputed")
        elif i + 1 < len(monitor.steps):
            print_fn(f"# step {step} arrived after later steps: rows from it on recomputed")
        for row in monitor.history[i:]:
            print_fn(table_row(row))
        told.discard(step)
        changed = True
    return changed


def watch(run_dir: str | Path, interval_s: float = 60.0, *, out_dir: str | Path | None = None,
          initial_model: str | Path | None = None, cfg: MonitorConfig = MonitorConfig(),
          monitor: LinearityMonitor | None = None, once: bool = False, timeout_s: float | None = None,
          layout: str | None = None, print_fn: Callable[[str], None] = print) -> LinearityMonitor:
    """Follow a run directory: every interval_s, read the checkpoints that are complete (see the module
    docstring), print a table row for each (an error row for one that cannot be used), and rewrite the JSON
    lines and PNG in out_dir (default: the run directory). initial_model is taken as step 0 when the run
    has none (TRL and verl do not save one; for a run of `rlvr_nb.backends.verl_launcher` it defaults to
    the model_path in its launch.json). layout: read only that layout ('rlvr-nb', 'hf', 'verl'). once: one
    pass, then return. Ctrl-C stops watching.

    A run directory that is missing, or whose checkpoints cannot be listed (an FSDP-only verl step, two
    layouts), raises on the first pass (FileNotFoundError, CheckpointError); later, it is printed and
    looked at again."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    monitor = monitor or LinearityMonitor(cfg)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    initial_model = Path(initial_model) if initial_model is not None else None  # a launcher run's: the layer's
    if initial_model is not None and not initial_model.is_dir():
        raise FileNotFoundError(f"initial model directory {initial_model} does not exist")
    if not monitor.history and not monitor.errors:
        print_fn(table_header())
    start, first, told, last_problem = time.monotonic(), True, set(), None
    try:
        while True:
            try:
                entries = run_checkpoints(run_dir, layout, initial_model)
            except (CheckpointError, OSError) as e:
                if first:
                    raise
                if describe_error(e) != last_problem:
                    print_fn(f"# error: {describe_error(e)} (looking again in {interval_s:g} s)")
                last_problem, entries = describe_error(e), []
            if first and not entries:
                print_fn(f"# no checkpoints in {run_dir} yet")
            if poll(monitor, entries, print_fn, told):
                write_outputs(monitor, out_dir)
            first = False
            if once or (timeout_s is not None and time.monotonic() - start > timeout_s):
                return monitor
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return monitor


# ----------------------------------------------------------------------------------------------------
# transformers / TRL callback


def _is_full(model: torch.nn.Module) -> bool:
    """False when parameters are sharded (FSDP / ZeRO-3 leave empty local tensors)."""
    return all(p.numel() > 0 and not hasattr(p, "ds_numel") for p in model.parameters())


class LinearityCallback(TrainerCallback):
    """`GRPOTrainer(..., callbacks=[LinearityCallback()])`: step 0 is read from the model when training
    begins, then every save adds a checkpoint (from the live model, or from `checkpoint-N` on disk when
    parameters are sharded); prints a table row (an error row for NaN weights) and rewrites the PNG / JSON
    lines in out_dir (default: args.output_dir). Only the main process computes."""

    def __init__(self, cfg: MonitorConfig = MonitorConfig(), out_dir: str | Path | None = None,
                 print_fn: Callable[[str], None] = print) -> None:
        self.monitor = LinearityMonitor(cfg)
        self.out_dir = out_dir
        self.print_fn = print_fn

    def _observe(self, args, state, source: TensorSource) -> None:
        if not self.monitor.history and not self.monitor.errors:
            self.print_fn(table_header())
        try:
            row = self.monitor.observe(state.global_step, source)
        except CheckpointError as e:
            self.monitor.errors[state.global_step] = (None, str(e))
            self.print_fn(error_row(state.global_step, str(e)))
            row = None
        if row is not None:
            self.print_fn(table_row(row))
        write_outputs(self.monitor, self.out_dir or args.output_dir)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None and _is_full(model):
            self._observe(args, state, model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if model is not None and _is_full(model):
            self._observe(args, state, model)
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if has_weights(ckpt):
            self._observe(args, state, ckpt)
