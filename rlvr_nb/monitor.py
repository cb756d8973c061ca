"""Linearity of a run in progress: after every checkpoint, how linear the weights have been so far, how
steady the drift direction is, and how far the run's own history says a linear extrapolation holds.

Three readings per checkpoint, on a fixed random sample of weight entries (as in the paper, 0.1% of each
tensor, at least 50 entries), so that memory stays small for any model size:

- running weight R^2 (PAPER.md Sec. 4, weight linearity) over all checkpoints so far;
- drift stability: cosine between consecutive checkpoint deltas, and between the latest delta and the
  overall direction w_k - w_0; `pace` compares the distance covered along that direction with the time
  elapsed (1: constant speed, < 1: slowing down);
- a suggested extrapolation horizon (PAPER.md Sec. 6, weight extrapolation replayed on the run's own
  past): extrapolate from w_0 through an earlier checkpoint w_j by alpha_j = (t_k - t_0) / (t_j - t_0),
  compare with the latest checkpoint w_k, and score skill = 1 - |pred - w_k| / |w_j - w_k| (1: exact,
  0: no better than stopping at w_j). The suggested alpha is the largest alpha_j with skill >= skill_min,
  and the horizon t_0 + alpha (t_k - t_0). It is weight-space evidence, an upper bound to try: the paper's
  accuracy peaked near alpha ~1.3 (t1 = 1400 -> 1800).

Two ways in: `LinearityCallback` for `transformers.Trainer` / TRL's `GRPOTrainer(callbacks=[...])`, and
`watch(run_dir)` (`python -m rlvr_nb.monitor RUN_DIR`), which follows any run directory as checkpoints
appear: ours (checkpoints/step_N), HF Trainer / TRL (checkpoint-N), verl (global_step_N/actor/huggingface).
Both print a table row per checkpoint and refresh `linearity_monitor.png` and `linearity_monitor.jsonl`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

try:  # the callback is a TrainerCallback when transformers is there (it always is in this package)
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object  # type: ignore[misc,assignment]


@dataclass(frozen=True)
class MonitorConfig:
    sample_fraction: float = 1e-3
    """Fraction of each tensor's entries followed (the paper: 0.1%)."""
    min_per_tensor: int = 50
    """At least this many entries per tensor (all of them in smaller tensors)."""
    min_range: float = 1e-4
    """Sec. 4 filter: an entry counts for R^2 only if it moved more than this over the checkpoints."""
    min_distinct: int = 4
    """Sec. 4 filter: ... and took at least this many distinct values (bf16 moves in steps)."""
    r2_threshold: float = 0.7
    """Report the fraction of entries with R^2 above this (the paper: > 70% of weights)."""
    skill_min: float = 0.5
    """Smallest backtest skill for an extrapolation factor to count as supported."""
    seed: int = 0
    """Seed of the entry sample (with the tensor name, so every checkpoint gets the same entries)."""


@dataclass
class MonitorRow:
    step: int
    """Training step of the latest checkpoint."""
    n_checkpoints: int
    """Checkpoints seen so far (including step 0 when known)."""
    r2_median: float
    """Median R^2 of the kept entries' line fits over all checkpoints (nan until min_distinct checkpoints)."""
    r2_frac_above: float
    """Fraction of kept entries with R^2 > r2_threshold."""
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
# The measures (each on a [K, P] matrix: K checkpoints, P sampled entries)


def linear_r2(values: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """PAPER.md Sec. 4, weight linearity: R^2 of the least-squares line w(t) ~ a + b t, per column.

    values [K, P], steps [K] -> [P]; a column that never moves gets R^2 = 0."""
    t = steps.double() - steps.double().mean()  # [K]
    v = values.double() - values.double().mean(0)  # [K, P]
    ss_tot = (v * v).sum(0)  # [P]
    ss_reg = (t @ v) ** 2 / (t @ t)  # [P]
    return torch.where(ss_tot > 0, ss_reg / ss_tot.clamp_min(1e-300), torch.zeros_like(ss_tot)).float()


def keep_mask(values: torch.Tensor, min_range: float, min_distinct: int) -> torch.Tensor:
    """PAPER.md Sec. 4 filter: the entry's range exceeds min_range and it took >= min_distinct values. [P]"""
    rng = values.max(0).values - values.min(0).values  # [P]
    sorted_v = values.sort(0).values  # [K, P]
    distinct = 1 + (sorted_v[1:] != sorted_v[:-1]).sum(0)  # [P]
    return (rng > min_range) & (distinct >= min_distinct)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.double().norm(), b.double().norm()
    return float(a.double() @ b.double() / (na * nb)) if na > 0 and nb > 0 else math.nan


def drift_pace(w0: torch.Tensor, w_prev: torch.Tensor, w_last: torch.Tensor, t0: float, t_prev: float, t_last: float) -> float:
    """Least-squares alpha with w0 + alpha (w_prev - w0) ~ w_last, over the time ratio (t_last - t0) / (t_prev - t0)."""
    d = (w_prev - w0).double()
    if d.norm() == 0 or t_prev == t0:
        return math.nan
    alpha_fit = float(d @ (w_last - w0).double() / (d @ d))
    return alpha_fit / ((t_last - t0) / (t_prev - t0))


def extrapolation_backtest(values: torch.Tensor, steps: Sequence[float]) -> list[tuple[float, float]]:
    """PAPER.md Sec. 6, weight extrapolation W = W_0 + alpha (W_j - W_0), replayed on the run itself:
    for each earlier checkpoint j, alpha_j = (t_k - t_0) / (t_j - t_0) predicts the latest w_k.
    Returns (alpha_j, skill_j) with skill = 1 - |pred - w_k| / |w_j - w_k|, largest alpha first."""
    w0, wk = values[0].double(), values[-1].double()
    t0, tk = float(steps[0]), float(steps[-1])
    out = []
    for j in range(1, len(steps) - 1):
        wj, tj = values[j].double(), float(steps[j])
        alpha = (tk - t0) / (tj - t0)
        stay = (wj - wk).norm()
        if stay == 0:
            continue
        pred = w0 + alpha * (wj - w0)
        out.append((alpha, float(1 - (pred - wk).norm() / stay)))
    return sorted(out, reverse=True)


def suggest_alpha(backtest: Sequence[tuple[float, float]], skill_min: float) -> tuple[float, float]:
    """(alpha, skill): the largest backtested alpha with skill >= skill_min, else (1.0, best skill seen)."""
    supported = [(a, s) for a, s in backtest if s >= skill_min]
    if supported:
        return max(supported)
    return 1.0, max((s for _, s in backtest), default=math.nan)


# ----------------------------------------------------------------------------------------------------
# Sampling entries from checkpoints


def sample_indices(name: str, numel: int, cfg: MonitorConfig) -> torch.Tensor:
    """Sorted distinct flat indices of the entries followed in one tensor (seeded by cfg.seed and the name)."""
    n = min(numel, max(cfg.min_per_tensor, math.ceil(cfg.sample_fraction * numel)))
    if n == numel:
        return torch.arange(numel)
    seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{name}".encode()).digest()[:8], "little") % (2**63)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, numel, (n,), generator=g).unique()  # a few duplicates dropped


def weight_files(ckpt_dir: Path) -> list[Path]:
    """The safetensors files of a HuggingFace checkpoint directory (one file or the shards of an index)."""
    single = ckpt_dir / "model.safetensors"
    if single.exists():
        return [single]
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt_dir / s for s in shards]
    raise FileNotFoundError(f"{ckpt_dir} holds no model.safetensors (or model.safetensors.index.json)")


TensorSource = Path | str | Mapping[str, torch.Tensor] | torch.nn.Module


def read_tensors(source: TensorSource, names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Floating-point tensors by name from a checkpoint directory, a state dict or a module (names: only those)."""
    if isinstance(source, torch.nn.Module):
        source = {k: v.detach() for k, v in source.state_dict().items()}
    if isinstance(source, Mapping):
        keys = names if names is not None else list(source)
        return {k: source[k] for k in keys if k in source and source[k].is_floating_point()}
    from safetensors import safe_open

    out, wanted = {}, None if names is None else set(names)
    for f in weight_files(Path(source)):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                if wanted is None or k in wanted:
                    t = st.get_tensor(k)
                    if t.is_floating_point():
                        out[k] = t
    return out


# ----------------------------------------------------------------------------------------------------
# The monitor


class LinearityMonitor:
    """Follows a fixed sample of weight entries across checkpoints; `observe` adds one and returns its row."""

    def __init__(self, cfg: MonitorConfig = MonitorConfig()) -> None:
        self.cfg = cfg
        self.plan: dict[str, torch.Tensor] | None = None  # tensor name -> flat indices
        self.steps: list[int] = []
        self.values: list[torch.Tensor] = []  # per checkpoint, [P] float32, in step order
        self.history: list[MonitorRow] = []

    def _make_plan(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: sample_indices(k, tensors[k].numel(), self.cfg) for k in sorted(tensors)}

    def sample(self, source: TensorSource) -> torch.Tensor:
        """The followed entries of one checkpoint, [P] float32 (the first call fixes which entries)."""
        tensors = read_tensors(source, None if self.plan is None else list(self.plan))
        if self.plan is None:
            if not tensors:
                raise ValueError("no floating-point tensors to follow in the first checkpoint")
            self.plan = self._make_plan(tensors)
        missing = [k for k in self.plan if k not in tensors]
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) followed so far, e.g. {missing[:3]}")
        return torch.cat([tensors[k].reshape(-1)[idx].float() for k, idx in self.plan.items()])

    def observe(self, step: int, source: TensorSource) -> MonitorRow | None:
        """Add the checkpoint at `step` (ignored if seen); returns the row computed at the latest step."""
        if step in self.steps:
            return None
        v = self.sample(source)
        i = sum(s < step for s in self.steps)
        self.steps.insert(i, step)
        self.values.insert(i, v)
        row = self.report()
        if self.history and self.history[-1].step == row.step:  # an earlier step arrived late
            self.history[-1] = row
        else:
            self.history.append(row)
        return row

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [K, P], steps [K])."""
        return torch.stack(self.values), torch.tensor(self.steps, dtype=torch.float64)

    def report(self) -> MonitorRow:
        V, t = self.matrix()
        K, nan = len(self.steps), math.nan
        r2_med = r2_frac = nan
        n_kept = 0
        if K >= 3:
            keep = keep_mask(V, self.cfg.min_range, self.cfg.min_distinct)
            n_kept = int(keep.sum())
            if n_kept:
                r2 = linear_r2(V[:, keep], t)
                r2_med, r2_frac = float(r2.median()), float((r2 > self.cfg.r2_threshold).float().mean())
        cos_prev = cosine(V[-1] - V[-2], V[-2] - V[-3]) if K >= 3 else nan
        cos_total = cosine(V[-1] - V[-2], V[-1] - V[0]) if K >= 3 else nan
        pace = drift_pace(V[0], V[-2], V[-1], *t[[0, -2, -1]].tolist()) if K >= 3 else nan
        alpha, skill = suggest_alpha(extrapolation_backtest(V, t.tolist()), self.cfg.skill_min) if K >= 3 else (1.0, nan)
        horizon = round(self.steps[0] + alpha * (self.steps[-1] - self.steps[0]))
        return MonitorRow(self.steps[-1], K, r2_med, r2_frac, n_kept, cos_prev, cos_total, pace, skill, alpha, horizon)

    def per_entry_r2(self) -> torch.Tensor:
        """R^2 of every kept entry at the latest checkpoint (for the histogram). [P_kept]"""
        V, t = self.matrix()
        if len(self.steps) < 3:
            return torch.empty(0)
        keep = keep_mask(V, self.cfg.min_range, self.cfg.min_distinct)
        return linear_r2(V[:, keep], t)


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


def write_outputs(monitor: LinearityMonitor, out_dir: str | Path) -> tuple[Path, Path]:
    """Refresh <out_dir>/linearity_monitor.jsonl (one row per checkpoint seen) and linearity_monitor.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "linearity_monitor.jsonl"
    jsonl.write_text("".join(json.dumps(asdict(r)) + "\n" for r in monitor.history))
    return jsonl, plot_monitor(monitor, out_dir / "linearity_monitor.png")


def plot_monitor(monitor: LinearityMonitor, path: str | Path) -> Path:
    """Three panels: running R^2, drift stability, and the backtest skill against alpha at the latest step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = sorted(monitor.history, key=lambda r: r.step)
    steps = [r.step for r in hist]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(steps, [r.r2_median for r in hist], "o-", label="median R$^2$")
    ax1.plot(steps, [r.r2_frac_above for r in hist], "s--", label=f"frac R$^2$ > {monitor.cfg.r2_threshold}")
    ax1.set(xlabel="step", ylim=(0, 1.02), title="running weight linearity (Sec. 4)")
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r.cos_prev for r in hist], "o-", label="cos(consecutive deltas)")
    ax2.plot(steps, [r.cos_total for r in hist], "s-", label="cos(delta, w_k - w_0)")
    ax2.plot(steps, [r.pace for r in hist], "^:", label="pace")
    ax2.axhline(0, color="gray", lw=0.5)
    ax2.set(xlabel="step", title="drift direction stability")
    ax2.legend(fontsize=8)
    if len(monitor.steps) >= 3:
        V, t = monitor.matrix()
        bt = extrapolation_backtest(V, t.tolist())
        if bt:
            ax3.plot([a for a, _ in bt], [s for _, s in bt], "o-")
        ax3.axhline(monitor.cfg.skill_min, color="gray", ls="--", lw=0.8)
        ax3.axvline(hist[-1].alpha if hist else 1.0, color="C3", lw=0.8, label=f"suggested alpha {hist[-1].alpha:.2f}")
        ax3.legend(fontsize=8)
    ax3.set(xlabel="alpha (from w_0 through an earlier checkpoint)", ylabel="skill at the latest checkpoint",
            title="extrapolation backtest (Sec. 6)")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------------------------
# Following a run directory


PATTERNS = [  # (glob under the run directory, regex on the matched path's parts giving the step)
    ("checkpoints/step_*", re.compile(r"step_(\d+)$")),
    ("step_*", re.compile(r"step_(\d+)$")),
    ("checkpoint-*", re.compile(r"checkpoint-(\d+)$")),
    ("global_step_*/actor/huggingface", re.compile(r"global_step_(\d+)/actor/huggingface$")),
    ("*/global_step_*/actor/huggingface", re.compile(r"global_step_(\d+)/actor/huggingface$")),
]


def find_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint with HF weights in a run directory, any of the layouts:
    ours (checkpoints/step_N), HF Trainer / TRL (checkpoint-N), verl (global_step_N/actor/huggingface,
    also one directory down). The first layout found for a step wins."""
    run_dir = Path(run_dir)
    found: dict[int, Path] = {}
    for pattern, rx in PATTERNS:
        for p in run_dir.glob(pattern):
            m = rx.search(p.as_posix())
            if m and p.is_dir() and int(m.group(1)) not in found and (
                    (p / "model.safetensors").exists() or (p / "model.safetensors.index.json").exists()):
                found[int(m.group(1))] = p
    return sorted(found.items())


def watch(run_dir: str | Path, interval_s: float = 60.0, *, out_dir: str | Path | None = None,
          initial_model: str | Path | None = None, cfg: MonitorConfig = MonitorConfig(),
          monitor: LinearityMonitor | None = None, once: bool = False, timeout_s: float | None = None,
          print_fn: Callable[[str], None] = print) -> LinearityMonitor:
    """Follow a run directory: every interval_s, read the checkpoints that appeared, print a table row for
    each, and refresh the JSON lines and PNG in out_dir (default: the run directory). initial_model is
    taken as step 0 when the run has none (TRL and verl do not save one; for a run of
    `rlvr_nb.backends.verl_launcher` it defaults to the model_path in its launch.json). once: one pass, then return.
    A checkpoint still being written (unreadable) is retried at the next pass. Ctrl-C stops watching."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {run_dir}")
    monitor = monitor or LinearityMonitor(cfg)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    if initial_model is None and (run_dir / "launch.json").exists():
        initial_model = json.loads((run_dir / "launch.json").read_text())["config"]["model_path"] or None
    if not monitor.history:
        print_fn(table_header())
    start = time.monotonic()
    try:
        while True:
            ckpts = find_checkpoints(run_dir)
            if initial_model is not None and all(s != 0 for s, _ in ckpts):
                ckpts = [(0, Path(initial_model))] + ckpts
            changed = False
            for step, path in ckpts:
                if step in monitor.steps:
                    continue
                try:
                    row = monitor.observe(step, path)
                except Exception as e:  # noqa: BLE001 - a checkpoint being written; retried next pass
                    if once:
                        print_fn(f"# step {step}: not readable yet ({type(e).__name__}: {e})")
                    continue
                if row is not None:
                    print_fn(table_row(row))
                    changed = True
            if changed:
                write_outputs(monitor, out_dir)
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
    parameters are sharded); prints a table row and refreshes the PNG / JSON lines in out_dir
    (default: args.output_dir). Only the main process computes."""

    def __init__(self, cfg: MonitorConfig = MonitorConfig(), out_dir: str | Path | None = None,
                 print_fn: Callable[[str], None] = print) -> None:
        self.monitor = LinearityMonitor(cfg)
        self.out_dir = out_dir
        self.print_fn = print_fn

    def _observe(self, args, state, source: TensorSource) -> None:
        if not self.monitor.history and not self.monitor.steps:
            self.print_fn(table_header())
        row = self.monitor.observe(state.global_step, source)
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
        if (ckpt / "model.safetensors").exists() or (ckpt / "model.safetensors.index.json").exists():
            self._observe(args, state, ckpt)


# ----------------------------------------------------------------------------------------------------
# Command line: python -m rlvr_nb.monitor RUN_DIR (the `rlvr-nb watch` command)


def main(argv: Sequence[str] | None = None) -> LinearityMonitor:
    p = argparse.ArgumentParser(prog="rlvr-nb watch", description="Follow a run directory's weight linearity.")
    p.add_argument("run_dir")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between looks at the run directory")
    p.add_argument("--out", default=None, help="where to write linearity_monitor.png/.jsonl (default: run_dir)")
    p.add_argument("--initial-model", default=None, help="HF directory to take as step 0 (TRL and verl save none)")
    p.add_argument("--sample-fraction", type=float, default=MonitorConfig.sample_fraction)
    p.add_argument("--skill-min", type=float, default=MonitorConfig.skill_min)
    p.add_argument("--once", action="store_true", help="one pass over the checkpoints present, then exit")
    a = p.parse_args(argv)
    cfg = MonitorConfig(sample_fraction=a.sample_fraction, skill_min=a.skill_min)
    return watch(a.run_dir, a.interval, out_dir=a.out, initial_model=a.initial_model, cfg=cfg, once=a.once)


if __name__ == "__main__":
    main()
