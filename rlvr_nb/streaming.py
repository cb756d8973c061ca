"""The fused kernel behind the weight R^2 engine: least-squares statistics of many scalar trajectories.

`chunk_stats` takes one chunk of a tensor read across all T checkpoints, as raw bit patterns (bf16 as
uint16 or float32 as int32; a [T, n] array or T rows [n], such as the views of memory-mapped checkpoint
files that `trajectory.MappedReader` gives, so that a chunk is never copied), and per column block of
at most `BLOCK` columns computes
what `linearity.weight_linearity` needs: the line fit against the step and its R^2 (PAPER.md Sec. 4,
the same closed form as `linearity.r2_against_steps`), the paper's filters (range > min_range, at least
`min_distinct` distinct values, no NaN/Inf), a histogram of the kept R^2 values, and the T x T Gram
matrix of the trajectory (for the drift spectrum). Accumulation is float64 except the Gram matrix, which
is summed in float32 within a block and in float64 across blocks.

Written with numba because the same statistics as a dozen separate numpy/torch passes over the chunk
are several times slower: each block of T x BLOCK values stays in the L1/L2 cache while a few short
passes over it compute every statistic. Each pass is a plain loop over the columns of one row, written
so that LLVM vectorises it (AVX2): rows are sliced before indexing, the order keys have the width of the
input (bf16: int16, 16 lanes), min/max of keys are integer min/max (float min/max through a select
compiles to masked stores, which are slow on AMD), the divisions use numpy's error model (Python's
raises on zero and does not vectorise), and the Gram matrix is computed in 3 x 3 tiles of rows. A BLAS
call (float32 `d @ d.T` per chunk) was measured at ~5x the cost of these tiles for T = 14 (the product
is only T x T, and d would have to be written out). The columns of a chunk are split between threads
(the kernel releases the GIL). The kernel is compiled once per T and input width, then cached on disk.
benchmarks/bench_r2.py measures it.

Counting distinct values without sorting: floats are compared through an integer key with the same
order (sign and magnitude to two's complement, so -0.0 and +0.0 share the key 0), and with
lo_1 < lo_2 < ... the smallest distinct keys and hi_1 > hi_2 > ... the largest, a column has at least
k = a + b distinct values iff lo_a < hi_b (a = ceil(k / 2), b = floor(k / 2)); each lo_i / hi_i costs
one pass over the block. A column holds a NaN or Inf iff its float64 sum of squared differences from
the first checkpoint is not finite (finite float32 differences cannot overflow it).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

BLOCK = 512
"""Columns per cache-resident block (T x BLOCK values in a few arrays stay in L1/L2)."""
HIST_BINS = 10_000
"""Bins of the R^2 histogram on [0, 1]: with many values, medians read from it are within ~1e-4."""
N_ACC = 4
"""Per-thread scalar accumulators: kept count, sum of R^2, count above threshold, columns with NaN/Inf."""

FAST = {"reassoc", "contract", "arcp", "nsz"}  # not nnan / ninf: NaN marks excluded entries
ORDERED = {"contract", "arcp", "nsz"}  # sums over checkpoints stay in checkpoint order
JIT = {"error_model": "numpy"}  # division without Python's zero check, so that the loops vectorise


@njit(cache=True)
def gram_rows(T: int) -> int:
    """Rows of the Gram accumulator: row 0 (d_0 = 0) and the rows 1..T-1 padded to a multiple of 3."""
    return 1 + 3 * ((T + 1) // 3)


@njit(fastmath=ORDERED, **JIT)
def _load(rows, j0, m, shift, lowest, highest, u, key, kmin, kmax):
    """Columns [j0, j0 + m) of every row: float32 bit patterns (u), order keys of the input's width (key),
    and each column's smallest and largest key."""
    for j in range(m):
        kmin[j] = highest
        kmax[j] = lowest
    for t in range(len(rows)):
        b = rows[t][j0:j0 + m]
        ut = u[t, :m]
        kt = key[t, :m]
        for j in range(m):
            ut[j] = np.int32(b[j]) << shift  # bf16 is the top half of a float32
        for j in range(m):
            x = b[j]
            kt[j] = x if x >= 0 else lowest - x  # sign and magnitude -> two's complement
        for j in range(m):
            kmin[j] = min(kmin[j], kt[j])
            kmax[j] = max(kmax[j], kt[j])


@njit(fastmath=ORDERED, **JIT)
def _peel(key, m, lo_rank, hi_rank, lowest, highest, kmin, kmax, lo, hi, plo, phi):
    """lo = the lo_rank-th smallest distinct key, hi = the hi_rank-th largest (a sentinel if none)."""
    for j in range(m):
        lo[j] = kmin[j]
        hi[j] = kmax[j]
    for r in range(2, max(lo_rank, hi_rank) + 1):
        do_lo = r <= lo_rank
        do_hi = r <= hi_rank
        for j in range(m):
            plo[j] = lo[j]
            phi[j] = hi[j]
        if do_lo:
            lo[:m] = highest
        if do_hi:
            hi[:m] = lowest
        for t in range(key.shape[0]):
            kt = key[t, :m]
            if do_lo:  # smallest key above the previous lo
                for j in range(m):
                    x = kt[j]
                    lo[j] = min(lo[j], x if x > plo[j] else highest)
            if do_hi:  # largest key below the previous hi
                for j in range(m):
                    x = kt[j]
                    hi[j] = max(hi[j], x if x < phi[j] else lowest)


@njit(fastmath=ORDERED, **JIT)
def _sums(f, T, m, tc, s1, s2, st):
    """float64 sums of d_t = w_t - w_0 over t = 1..T-1: sum d, sum d^2, sum (t - mean t) d; two
    checkpoints per pass over the accumulators, added in checkpoint order."""
    f0 = f[0, :m]
    s1[:m] = 0.0
    s2[:m] = 0.0
    st[:m] = 0.0
    t = 1
    while t + 1 < T:
        c0 = tc[t]
        c1 = tc[t + 1]
        fa = f[t, :m]
        fb = f[t + 1, :m]
        for j in range(m):
            w0 = np.float64(f0[j])
            da = np.float64(fa[j]) - w0
            db = np.float64(fb[j]) - w0
            a = s1[j]
            a += da
            a += db
            s1[j] = a
            b = s2[j]
            b += da * da
            b += db * db
            s2[j] = b
            c = st[j]
            c += c0 * da
            c += c1 * db
            st[j] = c
        t += 2
    if t < T:
        c0 = tc[t]
        fa = f[t, :m]
        for j in range(m):
            da = np.float64(fa[j]) - np.float64(f0[j])
            s1[j] += da
            s2[j] += da * da
            st[j] += c0 * da


@njit(fastmath=ORDERED, **JIT)
def _key_values(key, lowest, shift, out):
    """The float32 values whose order keys are `key` (the key map is its own inverse)."""
    bits = out.view(np.int32)
    for j in range(key.shape[0]):
        x = key[j]
        bits[j] = np.int32(x if x >= 0 else lowest - x) << shift


@njit(fastmath=FAST, **JIT)
def _r2(T, m, stt, min_range, all_distinct, vmin, vmax, lo, hi, s1, s2, st, r2_out, slope_out):
    """PAPER.md Sec. 4: R^2 = S_tw^2 / (S_tt S_ww), slope = S_tw / S_tt (S_tw = st, S_ww = s2 - s1^2 / T),
    NaN where a filter excludes the column; returns the number of columns holding a NaN or Inf."""
    nonfinite = 0
    for j in range(m):
        finite = s2[j] < np.inf  # False for NaN and Inf
        nonfinite += not finite
        syy = s2[j] - s1[j] * s1[j] / T
        ok = (finite & (np.float64(vmax[j]) - np.float64(vmin[j]) > min_range)
              & (all_distinct | (lo[j] < hi[j])) & (syy > 0.0))
        r2 = min(max(st[j] * st[j] / (stt * max(syy, 1e-300)), 0.0), 1.0)
        slope_out[j] = st[j] / stt
        r2_out[j] = r2 if ok else np.nan
    return nonfinite


@njit(fastmath=FAST, **JIT)
def _hist(r2, threshold, hist, acc):
    """Add the kept (not NaN) R^2 values to the histogram and to the kept / sum / above counters."""
    nbins = hist.shape[0]
    kept = 0.0
    sum_r2 = 0.0
    above = 0.0
    for j in range(r2.shape[0]):
        x = r2[j]
        if x == x:
            hist[min(np.int64(x * nbins), nbins - 1)] += 1
            kept += 1.0
            sum_r2 += x
            above += x > threshold
    acc[0] += kept
    acc[1] += sum_r2
    acc[2] += above


@njit(fastmath=FAST, **JIT)
def _gram(f, T, m, gram):
    """Add the lower triangle of the Gram matrix of d_t = w_t - w_0 (t = 1..T-1; d_0 = 0) to gram,
    in 3 x 3 tiles of rows so that each load feeds three products. f: float32 rows, rows T.. zero; d
    overwrites rows 1..T-1. float32 within the block, float64 across blocks."""
    f0 = f[0, :m]
    for t in range(1, T):
        ft = f[t, :m]
        for j in range(m):
            ft[j] = ft[j] - f0[j]
    for s in range(1, f.shape[0], 3):
        a0, a1, a2 = f[s, :m], f[s + 1, :m], f[s + 2, :m]
        for t in range(1, s + 1, 3):
            b0, b1, b2 = f[t, :m], f[t + 1, :m], f[t + 2, :m]
            g00 = g01 = g02 = g10 = g11 = g12 = g20 = g21 = g22 = np.float32(0.0)
            for j in range(m):
                x0, x1, x2, y0, y1, y2 = a0[j], a1[j], a2[j], b0[j], b1[j], b2[j]
                g00 += x0 * y0
                g01 += x0 * y1
                g02 += x0 * y2
                g10 += x1 * y0
                g11 += x1 * y1
                g12 += x1 * y2
                g20 += x2 * y0
                g21 += x2 * y1
                g22 += x2 * y2
            gram[s, t] += g00
            gram[s, t + 1] += g01
            gram[s, t + 2] += g02
            gram[s + 1, t] += g10
            gram[s + 1, t + 1] += g11
            gram[s + 1, t + 2] += g12
            gram[s + 2, t] += g20
            gram[s + 2, t + 1] += g21
            gram[s + 2, t + 2] += g22


@njit(nogil=True, cache=True, **JIT)
def _columns_stats(rows, col_start, col_stop, tc, stt, min_range, lo_rank, hi_rank, threshold, do_gram,
                   r2_out, slope_out, hist, acc, gram):
    """Columns [col_start, col_stop) of one chunk, block by block (one thread's share; releases the GIL).
    rows: T arrays [n] of int16 (bf16) or int32 (float32) bit patterns."""
    T = len(rows)
    dtype = rows[0].dtype
    wide = rows[0].itemsize == 4
    shift = 0 if wide else 16
    lowest = dtype.type(-2147483648 if wide else -32768)  # also the key sentinels
    highest = dtype.type(2147483647 if wide else 32767)
    all_distinct = lo_rank + hi_rank <= 1
    u = np.zeros((gram_rows(T), BLOCK), np.int32)  # float32 bits; rows T.. stay zero (Gram padding)
    f = u.view(np.float32)
    key = np.empty((T, BLOCK), dtype)
    kmin = np.empty(BLOCK, dtype)
    kmax = np.empty(BLOCK, dtype)
    lo = np.empty(BLOCK, dtype)
    hi = np.empty(BLOCK, dtype)
    plo = np.empty(BLOCK, dtype)
    phi = np.empty(BLOCK, dtype)
    vmin = np.empty(BLOCK, np.float32)
    vmax = np.empty(BLOCK, np.float32)
    s1 = np.empty(BLOCK)
    s2 = np.empty(BLOCK)
    st = np.empty(BLOCK)
    for j0 in range(col_start, col_stop, BLOCK):
        m = min(BLOCK, col_stop - j0)
        _load(rows, j0, m, shift, lowest, highest, u, key, kmin, kmax)
        _peel(key, m, lo_rank, hi_rank, lowest, highest, kmin, kmax, lo, hi, plo, phi)
        _sums(f, T, m, tc, s1, s2, st)
        _key_values(kmin[:m], lowest, shift, vmin[:m])
        _key_values(kmax[:m], lowest, shift, vmax[:m])
        r2 = r2_out[j0:j0 + m]
        acc[3] += _r2(T, m, stt, min_range, all_distinct, vmin, vmax, lo, hi, s1, s2, st, r2, slope_out[j0:j0 + m])
        _hist(r2, threshold, hist, acc)
        if do_gram:
            _gram(f, T, m, gram)


class ChunkAccumulator:
    """Per-thread histograms, counters and Gram matrices that `chunk_stats` adds into."""

    def __init__(self, T: int, n_bins: int = HIST_BINS, n_threads: int | None = None):
        self.T = T
        self.n_threads = n_threads or min(available_cpus(), 8)
        self.pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None
        self.hist = np.zeros((self.n_threads, n_bins), np.int64)  # [threads, bins]
        self.acc = np.zeros((self.n_threads, N_ACC), np.float64)  # [threads, 4]
        R = gram_rows(T)
        self.gram = np.zeros((self.n_threads, R, R), np.float64)  # [threads, R, R], lower triangle

    def close(self) -> None:
        """Stop the worker threads."""
        if self.pool is not None:
            self.pool.shutdown()

    def take_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(histogram [bins], accumulators [4]) summed over threads since the last call, then reset."""
        hist, acc = self.hist.sum(0), self.acc.sum(0)
        self.hist[:] = 0
        self.acc[:] = 0
        return hist, acc

    def gram_matrix(self) -> np.ndarray:
        """The full symmetric T x T Gram matrix sum_p d_p d_p^T accumulated so far."""
        g = self.gram.sum(0)[:self.T, :self.T]
        return np.tril(g) + np.tril(g, -1).T


def available_cpus() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def distinct_ranks(min_distinct: int) -> tuple[int, int]:
    """(a, b) with a + b = min_distinct: peel a smallest and b largest distinct values."""
    k = max(int(min_distinct), 0)
    return (k + 1) // 2, k // 2


def kernel_rows(bits) -> tuple[np.ndarray, ...]:
    """The kernel's input: T read-only C-contiguous rows of int16 (bf16 bits) or int32 (float32 bits), from
    a [T, n] array or a sequence of T rows of uint16 or int32 (one compiled kernel per T and width)."""
    rows = []
    for row in bits:
        if row.dtype not in (np.uint16, np.int32) or row.ndim != 1 or not row.flags.c_contiguous:
            raise ValueError(f"chunk_stats needs C-contiguous rows of uint16 or int32, got {row.dtype} {row.shape}")
        view = row.view(np.int16) if row.dtype == np.uint16 else row.view()  # the kernel's keys are signed
        view.flags.writeable = False  # one compiled kernel whether the rows are mapped files or arrays
        rows.append(view)
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"chunk_stats needs T rows of equal length, got lengths {[len(r) for r in rows]}")
    return tuple(rows)


def centred_steps(steps) -> np.ndarray:
    """The steps minus their mean [T] float64, exact for integer steps of any size: the first step is
    subtracted as integers before anything is converted to float (steps near 2^53 would otherwise round to
    each other), then the mean in float64. Every R^2 of the package centres its steps here."""
    steps = list(steps)
    if not steps:
        return np.zeros(0)
    if all(isinstance(s, (int, np.integer)) for s in steps):
        first = int(steps[0])
        rel = np.array([int(s) - first for s in steps], np.float64)
    else:
        rel = np.asarray(steps, np.float64) - np.float64(steps[0])
    return rel - rel.mean()


def chunk_stats(
    bits,  # [T, n] uint16 (bf16 bits) or int32 (float32 bits), C-contiguous; or T such rows [n]
    steps,  # [T] training steps (integers, or floats)
    accumulator: ChunkAccumulator,
    *,
    min_range: float,
    min_distinct: int,
    threshold: float,
    gram: bool,
    out: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """R^2 [n] (NaN where a column is filtered out) and slope [n], both float32 (written to `out` when
    given); adds the kept R^2 values to the accumulator's histogram and counters and, when `gram`, the
    chunk to its Gram matrix (in float64 for a chunk whose float32 products overflow, e.g. a weight of 1e20)."""
    if isinstance(bits, np.ndarray) and (bits.ndim != 2 or not bits.flags.c_contiguous):
        raise ValueError(f"chunk_stats needs a C-contiguous [T, n] array, got {bits.dtype} {bits.shape}")
    rows = kernel_rows(bits)
    T, n = len(rows), len(rows[0])
    if len(steps) != T:
        raise ValueError(f"{len(steps)} steps for {T} rows")
    tc = centred_steps(steps)  # [T]
    stt = float(tc @ tc)
    lo_rank, hi_rank = distinct_ranks(min_distinct)
    r2, slope = out if out is not None else (np.empty(n, np.float32), np.empty(n, np.float32))
    if any(a.shape != (n,) or a.dtype != np.float32 or not a.flags.c_contiguous for a in (r2, slope)):
        raise ValueError(f"out must be two C-contiguous float32 arrays of shape ({n},)")
    a = accumulator
    before = (a.gram.copy(), a.acc[:, 3].sum()) if gram else None
    args = (tc, stt, float(min_range), lo_rank, hi_rank, float(threshold), bool(gram), r2, slope)
    # split the columns between threads at block boundaries; each thread adds into its own accumulators
    n_blocks = (n + BLOCK - 1) // BLOCK
    bounds = [min(n, (i * n_blocks // a.n_threads) * BLOCK) for i in range(a.n_threads + 1)]
    jobs = [(rows, bounds[i], bounds[i + 1], *args, a.hist[i], a.acc[i], a.gram[i])
            for i in range(a.n_threads) if bounds[i] < bounds[i + 1]]
    if a.pool is None or len(jobs) == 1:
        for job in jobs:
            _columns_stats(*job)
    else:
        list(a.pool.map(lambda job: _columns_stats(*job), jobs))
    if before is not None and a.acc[:, 3].sum() == before[1] and not np.isfinite(a.gram).all():
        # finite weights whose float32 products overflowed: this chunk's Gram matrix again, in float64
        a.gram[:] = before[0]
        d = rows_as_float64(rows)
        d -= d[0]
        a.gram[0, :T, :T] += np.tril(d @ d.T)
    return r2, slope


def rows_as_float64(rows: tuple[np.ndarray, ...]) -> np.ndarray:
    """The kernel's input rows (int16 bf16 bits or int32 float32 bits) as float64 values [T, n]."""
    bits = np.stack(rows)
    if bits.dtype == np.int16:
        bits = bits.view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Chunks and the median of streamed R^2 values


def chunk_spans(numel: int, idx: np.ndarray | None, chunk_elems: int) -> list[tuple[int, int, np.ndarray | None]]:
    """(start, stop, columns to keep relative to start or None) of each chunk of a flattened tensor."""
    if idx is None:
        return [(s, min(s + chunk_elems, numel), None) for s in range(0, numel, chunk_elems)]
    spans = []
    for s in range(0, numel, chunk_elems):
        sel = idx[(idx >= s) & (idx < s + chunk_elems)]
        if sel.size:
            spans.append((int(sel[0]), int(sel[-1]) + 1, sel - sel[0]))
    return spans


def kernel_bits(values):
    """Raw values [T, n] (an array or T rows, e.g. `trajectory.Rows`) as the kernel's input: bf16 bits
    (uint16) or float32 bits (int32), without a copy for bf16 and float32."""
    if values.dtype == np.uint16:
        return values
    if isinstance(values, tuple) and values.dtype == np.float32:
        return type(values)(row.view(np.int32) for row in values)
    return np.ascontiguousarray(values, dtype=np.float32).view(np.int32)


def as_float(values) -> np.ndarray:
    """Raw values (bf16 bits or floats) [T, n] (an array or T rows) as float64."""
    values = np.asarray(values)
    if values.dtype == np.uint16:
        return (values.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values.astype(np.float64)


def histogram_median(hist: np.ndarray) -> float:
    """Median of values binned in equal bins on [0, 1], interpolated linearly inside its bin."""
    cum = np.cumsum(hist)
    half = cum[-1] / 2
    b = int(np.searchsorted(cum, half))
    before = cum[b - 1] if b > 0 else 0
    return (b + (half - before) / hist[b]) / len(hist)


def middle_values(r2_chunks: list[np.ndarray], hist: np.ndarray) -> np.ndarray:
    """The middle one or two of the kept (not NaN) R^2 values of all chunks [1 or 2], so that their median
    is the exact median of all of them. The histogram of the kept values names the bins that hold the
    middle ranks; only the values in those bins are gathered and partitioned."""
    count = int(hist.sum())
    if count == 0:
        return np.empty(0, np.float32)
    nbins = len(hist)
    cum = np.cumsum(hist)
    ranks = np.array([(count - 1) // 2, count // 2])  # 0-based ranks of the middle values
    first, last = np.searchsorted(cum, ranks + 1)  # bins holding them
    lo, hi = (first - 1) / nbins, (last + 2) / nbins  # a margin of one bin: the exact test follows
    near = np.concatenate([r[(r >= lo) & (r < hi)] for r in r2_chunks])  # NaN compares False
    bins = np.minimum((near.astype(np.float64) * nbins).astype(np.int64), nbins - 1)  # as the kernel bins
    inside = np.sort(near[(bins >= first) & (bins <= last)])
    before = int(cum[first - 1]) if first > 0 else 0
    return inside[np.unique(ranks - before)]
