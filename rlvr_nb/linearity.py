"""Sec. 4 of the paper: how linearly weights move with the training step.

For one scalar trajectory w(t) read at the checkpoint steps t_1..t_T, the least-squares line
w(t) ~ a + b t has

    b = S_tw / S_tt,    R^2 = S_tw^2 / (S_tt S_ww),

with S_tt = sum (t - mean t)^2, S_tw = sum (t - mean t)(w - mean w), S_ww = sum (w - mean w)^2
(`r2_against_steps`). `weight_linearity` evaluates it for every scalar weight of a `Trajectory`,
streaming tensor by tensor and chunk by chunk (the fused kernel is in `streaming.py`), with the paper's
filters: a weight is kept when its range over the checkpoints exceeds 1e-4 and it takes at least four
distinct values. Constant trajectories are always excluded. It also measures the drift spectrum: the
fraction of the trajectory's variance along its first principal direction (`drift_spectrum`).
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.checkpoint_writes import SafetensorsWriter
from rlvr_nb.streaming import (HIST_BINS, ChunkAccumulator, as_float, centred_steps, chunk_spans, chunk_stats,
                               histogram_median, kept_columns, kernel_bits, middle_values)
from rlvr_nb.trajectory import MappedReader, Rows, Trajectory, raise_nonfinite


EXACT_MEDIAN_MAX = 1 << 22
"""Tensors up to this many entries keep their R^2 values for an exact median (16 MiB at most)."""


@dataclass(frozen=True)
class LinearityConfig:
    min_range: float = 1e-4
    """Keep a weight only if max - min over the checkpoints exceeds this (the paper's 1e-4)."""
    min_distinct: int = 4
    """Keep a weight only if it takes at least this many distinct values (bf16 moves in quanta)."""
    sample_fraction: float | None = None
    """None: every weight. 0.001: the paper's mode, that fraction of each tensor (at least `min_samples`)."""
    min_samples: int = 50
    """Fewest sampled entries per tensor in sampled mode (all of them if the tensor is smaller)."""
    skip_first: int = 0
    """Drop this many checkpoints from the start of the trajectory."""
    threshold: float = 0.7
    """The paper reports the fraction of kept weights with R^2 above this."""
    drift: bool = True
    """Also accumulate the T x T Gram matrix for the drift spectrum (costs about as much as the rest)."""
    chunk_elems: int = 1 << 19
    """Elements of a tensor read per checkpoint at a time (memory ~ T x chunk_elems x 2 to 8 bytes: the
    chunk's mapped pages, or two float32 copies where the files cannot be mapped as stored)."""
    n_examples: int = 4
    """Example trajectories to return (chosen at evenly spaced quantiles of R^2)."""
    seed: int = 0
    """Seed of the sampled mode and of the choice of examples."""


@dataclass
class R2Summary:
    """Statistics of a set of R^2 values (excluded trajectories are not counted)."""

    count: int
    """Trajectories kept by the filters."""
    total: int
    """Trajectories considered."""
    mean: float
    median: float
    frac_above: float
    """Fraction of kept R^2 above the threshold (0.7)."""
    hist: np.ndarray = field(repr=False)
    """Counts in HIST_BINS equal bins on [0, 1]."""

    def row(self) -> dict:
        """The summary without its histogram (for tables and JSON); NaN statistics become None."""
        clean = lambda x: None if x is None or not math.isfinite(x) else round(float(x), 4)  # noqa: E731
        return {"median": clean(self.median), "mean": clean(self.mean), "frac_above": clean(self.frac_above),
                "count": int(self.count), "total": int(self.total)}


@dataclass
class Example:
    """One scalar trajectory and its line fit, for plots."""

    name: str
    """Tensor (or group) it belongs to."""
    index: int
    """Flat index in the tensor."""
    r2: float
    slope: float
    values: np.ndarray = field(repr=False)
    """The scalar at each checkpoint [T]."""


@dataclass
class DriftSpectrum:
    """Eigenvalues of the centred trajectory's T x T Gram matrix (PAPER.md Sec. 4, low-dimensional drift)."""

    eigenvalues: np.ndarray
    """Descending [T]; their sum is the trajectory's total variance (times T)."""

    @property
    def explained(self) -> np.ndarray:
        """Fraction of variance along each principal direction [T]."""
        total = self.eigenvalues.sum()
        return self.eigenvalues / total if total > 0 else np.zeros_like(self.eigenvalues)

    @property
    def first(self) -> float:
        """Fraction of the trajectory's variance along its first principal direction."""
        return float(self.explained[0])


@dataclass
class WeightLinearity:
    """Everything `weight_linearity` measured on one trajectory."""

    steps: list[int]
    config: LinearityConfig
    overall: R2Summary
    per_tensor: dict[str, R2Summary]
    per_module_layer: dict[tuple[str, int], R2Summary]
    """Keyed by (module type, layer); layer -1 for tensors outside the layer stack."""
    per_module: dict[str, R2Summary]
    examples: list[Example]
    drift: DriftSpectrum | None
    n_params: int
    """Floating-point scalars per checkpoint."""
    seconds: float
    skipped: list[str]
    """Tensors not analysed (non-floating dtypes)."""

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "config": asdict(self.config),
            "overall": self.overall.row(),
            "per_module": {m: s.row() for m, s in self.per_module.items()},
            "per_module_layer": [{"module": m, "layer": layer, **s.row()}
                                 for (m, layer), s in self.per_module_layer.items()],
            "per_tensor": {n: s.row() for n, s in self.per_tensor.items()},
            "drift_first_direction": None if self.drift is None else round(self.drift.first, 4),
            "n_params": self.n_params,
            "seconds": round(self.seconds, 3),
            "skipped": self.skipped,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text summary table: overall, then one row per module type."""
        rows = [("all", self.overall)] + sorted(self.per_module.items())
        width = max(len(n) for n, _ in rows)
        lines = [f"{'module':<{width}}  median    mean  >{self.config.threshold:<4}      kept     total"]
        for name, s in rows:
            r = s.row()
            fmt = lambda x: "     -" if x is None else f"{x:6.3f}"  # noqa: E731
            lines.append(f"{name:<{width}}  {fmt(r['median'])}  {fmt(r['mean'])}  {fmt(r['frac_above'])}  "
                         f"{s.count:8d}  {s.total:8d}")
        if self.drift is not None:
            lines.append(f"variance along the first principal direction of the trajectory: {self.drift.first:.3f}")
        lines.append(f"{len(self.steps)} checkpoints (steps {self.steps[0]}..{self.steps[-1]}), "
                     f"{self.n_params:,} parameters, {self.seconds:.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The equations
# ---------------------------------------------------------------------------------------------

def r2_against_steps(values: np.ndarray, steps) -> tuple[np.ndarray, np.ndarray]:
    """PAPER.md Sec. 4, linearity: R^2 and slope of the least-squares line of each trajectory vs step.

    values [T, n], steps [T] -> (R^2 [n], slope [n]) in float64; R^2 is NaN for a constant trajectory.
    """
    y = np.asarray(values, np.float64)  # [T, n]
    tc = centred_steps(steps)  # [T], exact for integer steps of any size
    yc = y - y.mean(axis=0)  # [T, n]
    s_tt = tc @ tc
    s_ty = tc @ yc  # [n]
    s_yy = np.einsum("tn,tn->n", yc, yc)  # [n]
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(s_yy > 0, np.clip(s_ty**2 / (s_tt * s_yy), 0.0, 1.0), np.nan)
    return r2, s_ty / s_tt


def drift_spectrum(gram: np.ndarray) -> DriftSpectrum:
    """PAPER.md Sec. 4, stable low-dimensional drift: principal variances of a trajectory from its Gram
    matrix G = sum_p d_p d_p^T [T, T] (d_p = the trajectory of scalar p, any per-scalar offset).

    Centring over checkpoints is linear, so the centred Gram matrix is C G C with C = I - 11^T / T; its
    eigenvalues are the variances along the principal directions. Nothing of size T x P is formed.
    """
    T = gram.shape[0]
    if not np.isfinite(gram).all():
        raise ValueError("drift spectrum: the Gram matrix of the weight trajectory is not finite (non-finite "
                         "weights); run with drift=False (--no-drift) to measure R^2 alone")
    c = np.eye(T) - np.full((T, T), 1.0 / T)
    scale = float(np.abs(gram).max()) if gram.size else 0.0  # the eigen solver is given entries of order 1
    centred = c @ (gram / scale) @ c if scale > 0 else np.zeros((T, T))
    try:
        eig = np.linalg.eigvalsh(centred)[::-1]
    except np.linalg.LinAlgError:  # the singular values of a symmetric PSD matrix are its eigenvalues
        eig = np.linalg.svd(centred, compute_uv=False)
    return DriftSpectrum(np.clip(eig, 0.0, None) * scale)


def summarize_r2(r2: np.ndarray, threshold: float = 0.7) -> R2Summary:
    """Summary of R^2 values held in memory; NaN entries (excluded trajectories) are not counted."""
    r2 = np.asarray(r2, np.float64).ravel()
    kept = r2[np.isfinite(r2)]
    hist = np.bincount(np.minimum((kept * HIST_BINS).astype(np.int64), HIST_BINS - 1), minlength=HIST_BINS)
    if kept.size == 0:
        return R2Summary(0, r2.size, math.nan, math.nan, math.nan, hist)
    return R2Summary(int(kept.size), int(r2.size), float(kept.mean()), float(np.median(kept)),
                     float((kept > threshold).mean()), hist)


def summary_from_counts(hist: np.ndarray, total: int, sum_r2: float, above: int,
                        values: np.ndarray | None = None) -> R2Summary:
    """Summary of streamed R^2 values: exact count, mean and fraction; the median is exact when the kept
    `values` are given, else read from the histogram (linear inside its bin: for many values, within a
    bin width, 1e-4, of the exact median)."""
    count = int(hist.sum())
    if count == 0:
        return R2Summary(0, int(total), math.nan, math.nan, math.nan, hist)
    median = float(np.median(values)) if values is not None else histogram_median(hist)
    return R2Summary(count, int(total), float(sum_r2 / count), median, above / count, hist)


def merge_summaries(parts: list[R2Summary]) -> R2Summary:
    """One summary of the union of several (kept counts, sums and histograms add)."""
    hist = sum(p.hist for p in parts)
    total = sum(p.total for p in parts)
    sum_r2 = sum(p.mean * p.count for p in parts if p.count)
    above = sum(p.frac_above * p.count for p in parts if p.count)
    return summary_from_counts(hist, total, sum_r2, round(above))


@dataclass
class TrajectoryLinearity:
    """R^2 of trajectories held in memory (token log-probs, activations): values, fits and summaries."""

    steps: list[int]
    values: np.ndarray = field(repr=False)
    """The trajectories [T, n]."""
    r2: np.ndarray = field(repr=False)
    """R^2 per trajectory [n]; NaN where excluded (filtered out or constant)."""
    slope: np.ndarray = field(repr=False)
    """Slope per trajectory [n], per step."""
    kept: np.ndarray = field(repr=False)
    """Which trajectories count [n]."""
    overall: R2Summary
    groups: dict[str, R2Summary]
    """Summaries per group (e.g. per layer for activations); empty when no groups were given."""
    examples: list[Example]

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "overall": self.overall.row(),
                "groups": {g: s.row() for g, s in self.groups.items()}}


def trajectory_linearity(values: np.ndarray, steps, keep: np.ndarray | None = None, *, threshold: float = 0.7,
                         labels=None, groups=None, n_examples: int = 4, seed: int = 0) -> TrajectoryLinearity:
    """`r2_against_steps` on trajectories values [T, n] in memory, keeping the columns where keep [n] is
    true (constant ones are always excluded); summaries overall and per group label groups [n]."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] != len(steps):
        raise ValueError(f"values must be [T, n] with T = {len(steps)} checkpoints, got shape {values.shape}")
    r2, slope = r2_against_steps(values, steps)
    kept = np.isfinite(r2) if keep is None else (np.asarray(keep, bool) & np.isfinite(r2))
    r2 = np.where(kept, r2, np.nan)
    by_group: dict[str, R2Summary] = {}
    if groups is not None:
        groups = np.asarray(groups)
        for g in dict.fromkeys(groups.tolist()):
            by_group[str(g)] = summarize_r2(r2[groups == g], threshold)
    idx = np.flatnonzero(kept)
    if idx.size > 4096:  # examples come from a random subset: quantiles of 4096 are plenty
        idx = np.sort(np.random.default_rng(seed).choice(idx, 4096, replace=False))
    pool = [Example(str(labels[j]) if labels is not None else f"#{j}", int(j), float(r2[j]), float(slope[j]),
                    values[:, j]) for j in idx]
    return TrajectoryLinearity(list(steps), values, r2, slope, kept, summarize_r2(r2, threshold), by_group,
                               choose_examples(pool, n_examples))


# ---------------------------------------------------------------------------------------------
# Grouping tensors by module type and layer
# ---------------------------------------------------------------------------------------------

LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.(.+)$")


def module_and_layer(name: str) -> tuple[str, int]:
    """("q_proj.weight", 3) for "model.layers.3.self_attn.q_proj.weight"; layer -1 outside the stack.

    The module type is the last two components of the name (so q_proj.weight and q_proj.bias stay apart,
    and MoE experts of the same projection group together).
    """
    m = LAYER.search(name)
    parts = (m.group(2) if m else name).split(".")
    return ".".join(parts[-2:]), int(m.group(1)) if m else -1


# ---------------------------------------------------------------------------------------------
# The streaming engine
# ---------------------------------------------------------------------------------------------

def sample_indices(name: str, numel: int, cfg: LinearityConfig) -> np.ndarray | None:
    """Sorted flat indices of the sampled entries of one tensor, or None for all of them."""
    if cfg.sample_fraction is None:
        return None
    k = min(numel, max(cfg.min_samples, math.ceil(cfg.sample_fraction * numel)))
    rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(numel, size=k, replace=False))


def sample_r2(values: np.ndarray, steps, cfg: LinearityConfig = LinearityConfig()) -> tuple[np.ndarray, R2Summary]:
    """The engine's R^2 of trajectories held in memory, values [T, n] float32 (sampled entries, as
    `rlvr_nb.monitor` follows them): the same kernel (`chunk_stats`), filters and summary as
    `weight_linearity` (its overall median is read from the same histogram). Returns (R^2 [n] float32, NaN
    where excluded; the summary). ValueError when a value is NaN or Inf."""
    values = np.ascontiguousarray(values, np.float32)
    if values.ndim != 2 or values.shape[0] != len(steps):
        raise ValueError(f"values must be [T, n] with T = {len(steps)} checkpoints, got shape {values.shape}")
    acc = ChunkAccumulator(len(steps), n_threads=1 if values.shape[1] < (1 << 16) else None)
    try:
        r2, _ = chunk_stats(kernel_bits(values), list(steps), acc, min_range=cfg.min_range,
                            min_distinct=cfg.min_distinct, threshold=cfg.threshold, gram=False)
    finally:
        acc.close()
    hist, a = acc.take_counts()
    if a[3] > 0:
        raise ValueError(f"{int(a[3])} of the {values.shape[1]} trajectories hold a NaN or Inf")
    return r2, summary_from_counts(hist, values.shape[1], a[1], int(a[2]))


def weight_linearity(
    traj: Trajectory,
    cfg: LinearityConfig = LinearityConfig(),
    *,
    save_r2: str | Path | None = None,
    progress: bool = True,
) -> WeightLinearity:
    """PAPER.md Sec. 4, weight linearity: R^2 of every scalar weight against the step, streamed.

    Reads each tensor chunk by chunk across all checkpoints (memory ~ T x chunk_elems, whatever the model
    size), one pass over the data. With `save_r2`, writes the per-parameter R^2 (NaN where excluded) as a
    safetensors file with the model's tensor names: a path that is, or lies inside, one of the checkpoints
    is refused before any weight is read, and the file appears only once complete (`checkpoint_writes.SafetensorsWriter`).
    """
    if cfg.skip_first:
        traj = traj.without_first(cfg.skip_first)
    if cfg.sample_fraction is not None and not 0 < cfg.sample_fraction <= 1:
        raise ValueError(f"sample_fraction must be in (0, 1], got {cfg.sample_fraction}")
    if save_r2 is not None and cfg.sample_fraction is not None:
        raise ValueError("save_r2 needs every parameter; it cannot be combined with sample_fraction")
    steps = list(traj.steps)  # [T] integers: the kernel centres them exactly
    rng = np.random.default_rng(cfg.seed)
    analysed = {n: i for n, i in traj.tensors.items() if i.is_float and i.numel > 0}
    # before any weight is read: refuses a path that is, or lies inside, a checkpoint of the trajectory
    writer = SafetensorsWriter(save_r2, [(n, "F32", i.shape) for n, i in analysed.items()],
                               {"content": "per-parameter R^2 vs training step (NaN: excluded)"}, traj.dirs) \
        if save_r2 is not None else None
    acc = ChunkAccumulator(len(steps))
    per_tensor: dict[str, R2Summary] = {}
    pool: list[Example] = []
    t0, ok = time.perf_counter(), False
    bar = tqdm(total=sum(i.numel for i in analysed.values()), desc="weight R^2", unit="param", unit_scale=True,
               disable=not progress)
    try:
        # maps the next chunk while this one is computed (no copy); takes a chunk's examples and writes its
        # R^2 while the next one is computed
        with ThreadPoolExecutor(1) as reader, MappedReader(traj) as mapped, ThreadPoolExecutor(1) as post:
            out = r2_buffers(cfg)  # reused by every chunk: fresh arrays would page-fault each time
            for name in analysed:
                bar.set_postfix_str(name[-40:], refresh=False)
                per_tensor[name] = tensor_pass(traj, name, cfg, steps, acc, (reader, post), writer, pool, rng, bar,
                                               mapped, out)
        ok = True
    finally:
        bar.close()
        acc.close()
        if writer is not None:
            writer.close(ok)  # renamed into place only when complete; else removed
    per_module_layer = {k: merge_summaries(v) for k, v in sorted(group_by(per_tensor, module_and_layer).items())}
    per_module = {k: merge_summaries(v) for k, v in sorted(group_by(per_module_layer, lambda ml: ml[0]).items())}
    return WeightLinearity(
        steps=list(traj.steps), config=cfg, overall=merge_summaries(list(per_tensor.values())),
        per_tensor=per_tensor, per_module_layer=per_module_layer, per_module=per_module,
        examples=choose_examples(pool, cfg.n_examples),
        drift=drift_spectrum(acc.gram_matrix()) if cfg.drift else None,
        n_params=traj.n_params, seconds=time.perf_counter() - t0,
        skipped=[n for n in traj.tensors if n not in analysed],
    )


def tensor_pass(traj: Trajectory, name: str, cfg: LinearityConfig, steps: list[int], acc: ChunkAccumulator,
                workers: tuple[ThreadPoolExecutor, ThreadPoolExecutor], writer: "SafetensorsWriter | None",
                pool: list[Example], rng: np.random.Generator, bar, mapped: MappedReader | None = None,
                out: tuple[np.ndarray, np.ndarray] | None = None) -> R2Summary:
    """One tensor, chunk by chunk: R^2 of its entries (all or sampled), its summary, a few examples.
    Chunks are views of the mapped files when `mapped` serves this tensor, else copies (`Trajectory.read`),
    read ahead by workers[0]; workers[1] takes a chunk's examples and writes its R^2 while the kernel
    computes the next. R^2 and slopes go to the buffers `out` (`r2_buffers`), alternating between two
    halves, a small tensor's R^2 one after the other for its exact median."""
    info = traj.tensors[name]
    idx = sample_indices(name, info.numel, cfg)
    spans = chunk_spans(info.numel, idx, cfg.chunk_elems)
    r2_buf, slope_buf = out if out is not None else r2_buffers(cfg)
    small = info.numel <= EXACT_MEDIAN_MAX
    read = mapped.rows if mapped is not None and mapped.serves(name) else traj.read
    pending = workers[0].submit(read, name, *spans[0][:2])
    posts: list = []  # the chunks whose examples and R^2 are being taken, oldest first
    filled = 0  # R^2 values of this tensor in r2_buf (small tensors)
    for k, (start, stop, cols) in enumerate(spans):
        raw = pending.result()  # [T, stop - start]: an array or T mapped rows
        if k + 1 < len(spans):
            pending = workers[0].submit(read, name, *spans[k + 1][:2])
        values = raw if cols is None else np.ascontiguousarray(raw[:, cols])  # [T, n]
        n = values.shape[1]
        half = (k % 2) * cfg.chunk_elems
        at = filled if small else half
        if len(posts) == 2:
            posts.pop(0).result()  # done with the buffers this chunk reuses
        r2, slope = chunk_stats(kernel_bits(values), steps, acc, min_range=cfg.min_range,
                                min_distinct=cfg.min_distinct, threshold=cfg.threshold, gram=cfg.drift,
                                out=(r2_buf[at:at + n], slope_buf[half:half + n]))  # [n]
        filled += n
        if acc.acc[:, 3].sum() > 0:
            raise_nonfinite(traj, name, ~np.isfinite(as_float(values)))
        posts.append(workers[1].submit(finish_chunk, name, values, r2, slope, (start, stop, cols), rng, pool,
                                       writer, mapped if isinstance(raw, Rows) else None, bar, acc.block_kept))
    for post in posts:
        post.result()
    bar.update(info.numel - sum(stop - start for start, stop, _ in spans))  # entries not sampled
    hist, a = acc.take_counts()
    middle = middle_values([r2_buf[:filled]], hist) if small else None
    return summary_from_counts(hist, info.numel if idx is None else idx.size, a[1], int(a[2]), middle)


def finish_chunk(name: str, values, r2: np.ndarray, slope: np.ndarray, span: tuple, rng: np.random.Generator,
                 pool: list[Example], writer: "SafetensorsWriter | None", mapped: MappedReader | None, bar,
                 block_kept: np.ndarray) -> None:
    """After the kernel: the chunk's R^2 to the --save-r2 file, a few examples to the pool, its mapped pages
    released (bounded memory: they leave our resident set)."""
    start, stop, cols = span
    if writer is not None:
        writer.write(r2)
    keep_examples(pool, name, values, r2, slope, start, cols, rng, block_kept=block_kept)
    if mapped is not None:
        mapped.release(name, start, stop)
    bar.update(stop - start)


def r2_buffers(cfg: LinearityConfig) -> tuple[np.ndarray, np.ndarray]:
    """float32 buffers for `tensor_pass`: R^2 of a whole small tensor or of two chunks, slopes of two chunks."""
    return np.empty(max(EXACT_MEDIAN_MAX, 2 * cfg.chunk_elems), np.float32), np.empty(2 * cfg.chunk_elems, np.float32)


def group_by(summaries: dict, key) -> dict:
    """{key(name): [summaries]} of a dict of summaries."""
    groups: dict = {}
    for name, s in summaries.items():
        groups.setdefault(key(name), []).append(s)
    return groups


def keep_examples(reservoir: list[Example], name: str, values: np.ndarray, r2: np.ndarray, slope: np.ndarray,
                  start: int, cols: np.ndarray | None, rng: np.random.Generator, per_chunk: int = 4,
                  block_kept: np.ndarray | None = None) -> None:
    """Add a few random kept trajectories of this chunk to the pool examples are chosen from (with the
    kernel's kept count per block, `streaming.kept_columns` finds them without listing every kept one)."""
    n_kept = int(block_kept.sum()) if block_kept is not None else int((~np.isnan(r2)).sum())
    if min(per_chunk, n_kept) == 0:
        return
    ranks = rng.choice(n_kept, size=min(per_chunk, n_kept), replace=False)  # the draw of rng.choice(kept, ...)
    for j in kept_columns(r2, ranks, block_kept):
        index = start + (int(j) if cols is None else int(cols[j]))
        reservoir.append(Example(name, index, float(r2[j]), float(slope[j]), as_float(values[:, j:j + 1])[:, 0]))


def choose_examples(pool: list[Example], n: int) -> list[Example]:
    """n examples at evenly spaced quantiles of R^2 (10% .. 90%) of the pool."""
    if not pool or n <= 0:
        return []
    pool = sorted(pool, key=lambda e: e.r2)
    qs = np.linspace(0.1, 0.9, n) if n > 1 else np.array([0.5])
    picks = sorted({int(round(q * (len(pool) - 1))) for q in qs})
    return [pool[i] for i in picks]
