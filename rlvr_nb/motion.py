"""Weight motion: how far and in which direction the weights moved between checkpoints (is it a line?).

Two levels, one formula each, everything in float64:

- `cosine(a, b)`, `drift_pace`, `extrapolation_backtest` on flat arrays of the same entries of each checkpoint (all of them, or a sample);
- the directory measures, streamed tensor by tensor over checkpoint directories (one tensor of each
  directory in memory at a time; single-file or sharded safetensors): `distance` (||W_b - W_a||),
  `relative_change` (||W_1 - W_0|| / ||W_0||) and `segment_cosine` (cos(W_1 - W_0, W_2 - W_1): 1 for a
  straight line, about 0 for a random walk, -1 for a return). Only floating tensors count.

Weights are read and listed by the checkpoint layer (`rlvr_nb.checkpoint_files.read_tensors`,
`read_weight_index`, which validates every header).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rlvr_nb.checkpoint_files import read_tensors, read_weight_index

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
"""safetensors dtypes that count as weights (integer buffers do not move)."""


def cosine_of_sums(dot: float, aa: float, bb: float) -> float:
    """a.b / (|a| |b|) from the sums a.b, a.a and b.b; NaN when either vector is zero (no direction)."""
    return dot / (math.sqrt(aa) * math.sqrt(bb)) if aa > 0 and bb > 0 else math.nan


def cosine(a, b) -> float:
    """cos(a, b) = a.b / (|a| |b|) in float64; NaN when either vector is zero (no direction)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return cosine_of_sums(float(a @ b), float(a @ a), float(b @ b))


# --------------------------------------------------------------------------------------------------
# Drift of sampled entries over checkpoints (the monitor's measures; float64, steps as integers)


def delta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b in float64."""
    return np.asarray(a, np.float64) - np.asarray(b, np.float64)


def drift_pace(w0: np.ndarray, w_prev: np.ndarray, w_last: np.ndarray, t0: int, t_prev: int, t_last: int) -> float:
    """Least-squares alpha with w0 + alpha (w_prev - w0) ~ w_last, over the time ratio (t_last - t0) / (t_prev - t0)."""
    d = delta(w_prev, w0)
    dd = float(d @ d)
    if dd == 0 or t_prev == t0:
        return math.nan
    return float(d @ delta(w_last, w0)) / dd / ((t_last - t0) / (t_prev - t0))


def extrapolation_backtest(values: Sequence[np.ndarray], steps: Sequence[int]) -> list[tuple[float, float]]:
    """PAPER.md Sec. 6, weight extrapolation W = W_0 + alpha (W_j - W_0), replayed on the run itself:
    for each earlier checkpoint j, alpha_j = (t_k - t_0) / (t_j - t_0) predicts the latest w_k.
    Returns (alpha_j, skill_j) with skill = 1 - |pred - w_k| / |w_j - w_k|, largest alpha first."""
    w0, wk = np.asarray(values[0], np.float64), np.asarray(values[-1], np.float64)
    out = []
    for j in range(1, len(steps) - 1):
        wj = np.asarray(values[j], np.float64)
        alpha = (steps[-1] - steps[0]) / (steps[j] - steps[0])  # integer differences: exact for any step
        stay = float(np.linalg.norm(wj - wk))
        if stay == 0:
            continue
        pred = w0 + alpha * (wj - w0)
        out.append((alpha, 1 - float(np.linalg.norm(pred - wk)) / stay))
    return sorted(out, reverse=True)


def suggest_alpha(backtest: Sequence[tuple[float, float]], skill_min: float) -> tuple[float, float]:
    """(alpha, skill): the largest backtested alpha with skill >= skill_min, else (1.0, best skill seen)."""
    supported = [(a, s) for a, s in backtest if s >= skill_min]
    if supported:
        return max(supported)
    return 1.0, max((s for _, s in backtest), default=math.nan)


# --------------------------------------------------------------------------------------------------
# Checkpoint directories, streamed


def aligned_tensors(dirs: Sequence[str | Path], include_norms: bool = True) -> Iterator[tuple[str, list[np.ndarray]]]:
    """(name, [that tensor of each directory, float64]) for every floating tensor, in name order.

    The directories must hold the same tensors with the same shapes (a ValueError names the first
    directory that does not). include_norms=False skips normalisation weights
    (`rlvr_nb.extrapolate.is_norm_weight`, the ones weight extrapolation copies instead of extrapolating).
    """
    dirs = [Path(d) for d in dirs]
    indexes = [read_weight_index(d) for d in dirs]
    ref = indexes[0]
    for d, index in zip(dirs[1:], indexes[1:]):
        if set(index) != set(ref):
            raise ValueError(f"{dirs[0]} and {d} hold different tensors: {sorted(set(ref) ^ set(index))[:5]}")
        shapes = [f"{n} {list(ref[n].shape)} vs {list(index[n].shape)}" for n in sorted(ref) if ref[n].shape != index[n].shape]
        if shapes:
            raise ValueError(f"{dirs[0]} and {d} hold tensors of different shapes: " + "; ".join(shapes[:5]))
    skip = lambda name: False  # noqa: E731
    if not include_norms:
        from rlvr_nb.extrapolate import is_norm_weight  # only here: extrapolate imports transformers

        skip = is_norm_weight
    for name in sorted(ref):
        if ref[name].dtype in FLOAT_DTYPES and not skip(name):
            yield name, [read_tensors(d, [name], index)[name].double().numpy() for d, index in zip(dirs, indexes)]


def distance(dir_a: str | Path, dir_b: str | Path, include_norms: bool = True) -> float:
    """||W_b - W_a||_2 over every floating tensor of two checkpoint directories."""
    total = 0.0
    for _, (a, b) in aligned_tensors([dir_a, dir_b], include_norms):
        total += float(((b - a) ** 2).sum())
    return math.sqrt(total)


def relative_change(dir0: str | Path, dir1: str | Path) -> float:
    """||W_1 - W_0|| / ||W_0|| over every floating tensor (NaN when W_0 is all zero)."""
    num = den = 0.0
    for _, (w0, w1) in aligned_tensors([dir0, dir1]):
        num += float(((w1 - w0) ** 2).sum())
        den += float((w0**2).sum())
    return math.sqrt(num / den) if den > 0 else math.nan


def segment_cosine(dir0: str | Path, dir1: str | Path, dir2: str | Path) -> float:
    """cos(W_1 - W_0, W_2 - W_1) over every floating tensor: 1 when the second segment continues the first in
    a straight line, about 0 for a random walk, negative when it undoes it; NaN when either segment is zero."""
    dot = aa = bb = 0.0
    for _, (w0, w1, w2) in aligned_tensors([dir0, dir1, dir2]):
        a, b = (w1 - w0).ravel(), (w2 - w1).ravel()
        dot, aa, bb = dot + float(a @ b), aa + float(a @ a), bb + float(b @ b)
    return cosine_of_sums(dot, aa, bb)
