"""The fused kernel behind the weight R^2 engine: least-squares statistics of many scalar trajectories.

`chunk_stats` takes one chunk of a tensor read across all T checkpoints, as raw bit patterns
([T, n], bf16 as uint16 or float32 as int32), and in a single pass over it per column block computes
what `linearity.weight_linearity` needs: the line fit against the step and its R^2 (PAPER.md Sec. 4,
the same closed form as `linearity.r2_against_steps`), the paper's filters (range > min_range, at least
`min_distinct` distinct values), a histogram of the kept R^2 values, and the T x T Gram matrix of the
trajectory (for the drift spectrum). Accumulation is float64 except the Gram matrix, which is summed in
float32 within a block of at most `BLOCK` columns and in float64 across blocks.

Written with numba because the same statistics as a dozen separate numpy/torch passes over the chunk
are several times slower: fused, each block of T x 512 values stays in the L1/L2 cache while every
statistic is computed from it. The columns of a chunk are split between threads (the kernel releases
the GIL). benchmarks/bench_r2.py measures it.

Counting distinct values without sorting: floats are compared through an integer key with the same
order (flip the low 31 bits of negative floats), and with lo_1 < lo_2 < ... the smallest distinct keys
and hi_1 > hi_2 > ... the largest, a column has at least k = a + b distinct values iff lo_a < hi_b
(a = ceil(k / 2), b = floor(k / 2)); each lo_i / hi_i costs one pass over the block.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

BLOCK = 512
"""Columns per cache-resident block (T x BLOCK float32 stays in L1/L2)."""
HIST_BINS = 10_000
"""Bins of the R^2 histogram on [0, 1]: with many values, medians read from it are within ~1e-4."""
N_ACC = 4
"""Per-thread scalar accumulators: kept count, sum of R^2, count above threshold, columns with NaN/Inf."""


@njit(inline="always")
def _key(u):
    """Integer with the same order as the float32 whose bits are u (-0.0 maps to +0.0's key)."""
    k = u ^ ((u >> 31) & 0x7FFFFFFF)
    return k if k != -1 else 0


@njit(fastmath={"reassoc", "contract", "arcp", "nsz"})  # not nnan / ninf: NaN marks excluded entries
def _block(bits, wide, j0, m, tc, stt, min_range, lo_rank, hi_rank, threshold, do_gram,
           u, key, kmin, kmax, lo, hi, plo, phi, s1, s2, st, vmin, vmax, r2_out, slope_out, hist, acc, gram):
    T = bits.shape[0]
    nbins = hist.shape[0]
    # 1. float32 bit patterns (bf16 is the top half of a float32)
    if wide:  # float32: two little-endian uint16 halves per value
        for t in range(T):
            for j in range(m):
                u[t, j] = np.int32(bits[t, 2 * (j0 + j)]) | (np.int32(bits[t, 2 * (j0 + j) + 1]) << 16)
    else:  # bf16
        for t in range(T):
            for j in range(m):
                u[t, j] = np.int32(bits[t, j0 + j]) << 16
    # 2. order keys, min and max, in one pass
    for j in range(m):
        kmin[j] = 0x7F800001
        kmax[j] = -0x7F800001
    for t in range(T):
        for j in range(m):
            k = _key(u[t, j])
            key[t, j] = k
            kmin[j] = min(kmin[j], k)
            kmax[j] = max(kmax[j], k)
    # 3. peel distinct values from both ends: lo = lo_a (a-th smallest), hi = hi_b (b-th largest)
    for j in range(m):
        lo[j] = kmin[j]
        hi[j] = kmax[j]
    for r in range(2, max(lo_rank, hi_rank) + 1):
        if r <= lo_rank:  # lo <- smallest key above the previous lo
            for j in range(m):
                plo[j] = lo[j]
                lo[j] = 0x7F800001
            for t in range(T):
                for j in range(m):
                    x = key[t, j]
                    lo[j] = min(lo[j], x if x > plo[j] else 0x7F800001)
        if r <= hi_rank:  # hi <- largest key below the previous hi
            for j in range(m):
                phi[j] = hi[j]
                hi[j] = -0x7F800001
            for t in range(T):
                for j in range(m):
                    x = key[t, j]
                    hi[j] = max(hi[j], x if x < phi[j] else -0x7F800001)
    # columns holding a NaN or Inf (keys at or beyond those of -inf and +inf), then the float values of
    # the extremes (the key map is its own inverse)
    nonfinite = 0
    for j in range(m):
        a = kmin[j]
        b = kmax[j]
        nonfinite += (a <= -0x7F800001) | (b >= 0x7F800000)
        kmin[j] = a ^ ((a >> 31) & 0x7FFFFFFF)
        kmax[j] = b ^ ((b >> 31) & 0x7FFFFFFF)
    acc[3] += nonfinite
    vmin[:m] = kmin[:m].view(np.float32)
    vmax[:m] = kmax[:m].view(np.float32)
    # 4. float64 sums of d_t = w_t - w_0: sum d, sum d^2, sum (t - mean t) d
    f = u.view(np.float32)
    for j in range(m):
        s1[j] = 0.0
        s2[j] = 0.0
        st[j] = 0.0
    for t in range(1, T):
        c = tc[t]
        for j in range(m):
            d = np.float64(f[t, j]) - np.float64(f[0, j])
            s1[j] += d
            s2[j] += d * d
            st[j] += c * d
    # 5. R^2 = Sxy^2 / (Sxx Syy), slope = Sxy / Sxx; filters (branch-free, so it vectorises)
    all_distinct = lo_rank + hi_rank <= 1
    for j in range(m):
        syy = s2[j] - s1[j] * s1[j] / T
        ok = (np.float64(vmax[j]) - np.float64(vmin[j]) > min_range) & (all_distinct | (lo[j] < hi[j])) & (syy > 0.0)
        r2 = min(max(st[j] * st[j] / (stt * max(syy, 1e-300)), 0.0), 1.0)
        slope_out[j0 + j] = st[j] / stt
        r2_out[j0 + j] = r2 if ok else np.nan
    # histogram and counters of the kept values
    kept = 0.0
    sum_r2 = 0.0
    above = 0.0
    for j in range(m):
        r2 = r2_out[j0 + j]
        if r2 == r2:  # not NaN
            hist[min(np.int64(r2 * nbins), nbins - 1)] += 1
            kept += 1.0
            sum_r2 += r2
            above += r2 > threshold
    acc[0] += kept
    acc[1] += sum_r2
    acc[2] += above
    # 6. Gram matrix of d = w - w_0 (row 0 is zero; u has an extra zero row when T is odd), in 2 x 2 tiles
    #    of rows so that each load feeds two products; float32 within the block, float64 across blocks
    if do_gram:
        Te = f.shape[0]
        for t in range(T - 1, 0, -1):
            for j in range(m):
                f[t, j] = f[t, j] - f[0, j]
        for j in range(m):
            f[0, j] = 0.0
        for s in range(0, Te, 2):
            for t in range(0, s + 1, 2):
                d00 = np.float32(0.0)
                d01 = np.float32(0.0)
                d10 = np.float32(0.0)
                d11 = np.float32(0.0)
                for j in range(m):
                    a0 = f[s, j]
                    a1 = f[s + 1, j]
                    b0 = f[t, j]
                    b1 = f[t + 1, j]
                    d00 += a0 * b0
                    d01 += a0 * b1
                    d10 += a1 * b0
                    d11 += a1 * b1
                gram[s, t] += d00
                gram[s, t + 1] += d01
                gram[s + 1, t] += d10
                gram[s + 1, t + 1] += d11


@njit(nogil=True, cache=True)
def _columns_stats(bits, wide, col_start, col_stop, tc, stt, min_range, lo_rank, hi_rank, threshold, do_gram,
                   r2_out, slope_out, hist, acc, gram):
    """Columns [col_start, col_stop) of one chunk, block by block (one thread's share; releases the GIL)."""
    T = bits.shape[0]
    u = np.zeros((T + T % 2, BLOCK), np.int32)  # an even number of rows for the Gram tiles
    key = np.empty((T, BLOCK), np.int32)
    kmin = np.empty(BLOCK, np.int32)
    kmax = np.empty(BLOCK, np.int32)
    lo = np.empty(BLOCK, np.int32)
    hi = np.empty(BLOCK, np.int32)
    plo = np.empty(BLOCK, np.int32)
    phi = np.empty(BLOCK, np.int32)
    s1 = np.empty(BLOCK)
    s2 = np.empty(BLOCK)
    st = np.empty(BLOCK)
    vmin = np.empty(BLOCK, np.float32)
    vmax = np.empty(BLOCK, np.float32)
    for j0 in range(col_start, col_stop, BLOCK):
        m = min(BLOCK, col_stop - j0)
        _block(bits, wide, j0, m, tc, stt, min_range, lo_rank, hi_rank, threshold, do_gram,
               u, key, kmin, kmax, lo, hi, plo, phi, s1, s2, st, vmin, vmax, r2_out, slope_out, hist, acc, gram)


class ChunkAccumulator:
    """Per-thread histograms, counters and Gram matrices that `chunk_stats` adds into."""

    def __init__(self, T: int, n_bins: int = HIST_BINS, n_threads: int | None = None):
        self.T = T
        self.n_threads = n_threads or min(available_cpus(), 8)
        self.pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None
        self.hist = np.zeros((self.n_threads, n_bins), np.int64)  # [threads, bins]
        self.acc = np.zeros((self.n_threads, N_ACC), np.float64)  # [threads, 4]
        self.gram = np.zeros((self.n_threads, T + T % 2, T + T % 2), np.float64)  # [threads, T', T'], lower triangle

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


def chunk_stats(
    bits: np.ndarray,  # [T, n] uint16 (bf16 bits) or int32 (float32 bits), C-contiguous
    steps: np.ndarray,  # [T] float64
    accumulator: ChunkAccumulator,
    *,
    min_range: float,
    min_distinct: int,
    threshold: float,
    gram: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """R^2 [n] (NaN where a column is filtered out) and slope [n], both float32; adds the kept R^2 values
    to the accumulator's histogram and counters and, when `gram`, the chunk to its Gram matrix."""
    if bits.dtype not in (np.uint16, np.int32) or bits.ndim != 2 or not bits.flags.c_contiguous:
        raise ValueError(f"chunk_stats needs a C-contiguous [T, n] uint16 or int32 array, "
                         f"got {bits.dtype} {bits.shape}")
    T, n = bits.shape
    wide = bool(bits.dtype == np.int32)
    halves = bits.view(np.uint16)  # one compiled kernel for both: float32 is read as pairs of halves
    tc = np.asarray(steps, np.float64) - np.mean(steps)  # [T]
    stt = float(tc @ tc)
    lo_rank, hi_rank = distinct_ranks(min_distinct)
    r2 = np.empty(n, np.float32)
    slope = np.empty(n, np.float32)
    a = accumulator
    args = (tc, stt, float(min_range), lo_rank, hi_rank, float(threshold), bool(gram), r2, slope)
    # split the columns between threads at block boundaries; each thread adds into its own accumulators
    n_blocks = (n + BLOCK - 1) // BLOCK
    bounds = [min(n, (i * n_blocks // a.n_threads) * BLOCK) for i in range(a.n_threads + 1)]
    jobs = [(halves, wide, bounds[i], bounds[i + 1], *args, a.hist[i], a.acc[i], a.gram[i])
            for i in range(a.n_threads) if bounds[i] < bounds[i + 1]]
    if a.pool is None or len(jobs) == 1:
        for job in jobs:
            _columns_stats(*job)
    else:
        list(a.pool.map(lambda job: _columns_stats(*job), jobs))
    return r2, slope
