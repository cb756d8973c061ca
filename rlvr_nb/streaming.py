"""The fused kernel behind the weight R^2 engine: least-squares statistics of many scalar trajectories.

`chunk_stats` takes one chunk of a tensor read across all T checkpoints, as raw bit patterns (bf16 as
uint16 or float32 as int32; a [T, n] array or T rows [n], such as the views of memory-mapped checkpoint
files that `trajectory.MappedReader` gives, so that a chunk is never copied), and per block of `BLOCK`
columns computes what `linearity.weight_linearity` needs: the line fit against the step and its R^2
(PAPER.md Sec. 4, the closed form of `linearity.r2_against_steps`), the paper's filters (range >
min_range, at least `min_distinct` distinct values, no NaN/Inf), a histogram of the kept R^2 values and
the T x T Gram matrix of the trajectory (for the drift spectrum). The sums are float64, in checkpoint
order, of d_t = w_t - w_0 (exact differences); the Gram matrix is float32 within a block, float64 across.

Written with numba: a block stays in the L1/L2 cache while a few short passes compute every statistic,
each a loop over the columns of one row that LLVM vectorises with 512-bit registers on AVX-512 CPUs
(`_wide_vectors`). Measured to matter: no reference counts in the passes (`_nrt=False`: numba's atomic
counts on each row view cost more than a block's arithmetic), integer keys and shifts of the input's
width (bf16: 32 lanes of int16), four rows per pass over the float64 sums, the Gram matrix in 3 x 3 tiles
of rows (a BLAS `d @ d.T` per chunk is ~3x slower for T = 14). The kernel is compiled once per T and
input width and cached on disk; benchmarks/bench_r2.py measures it.

Distinct values without sorting: floats are compared through an integer key with the same order (sign
and magnitude to two's complement: -0.0 and +0.0 share the key 0); with lo_1 < lo_2 < ... the smallest
distinct keys and hi_1 > hi_2 > ... the largest, a column has at least k = a + b distinct values iff
lo_a < hi_b (a = ceil(k / 2), b = floor(k / 2)). lo_2 and hi_2 (the paper's k = 4) are updated in the
pass that finds the extreme keys; each higher rank takes one more pass (`_peel`). A column holds a NaN or
Inf iff its float64 sum of squared differences is not finite.
"""
from __future__ import annotations

import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

BLOCK = 512  # columns per cache-resident block
PIECE = 1 << 16  # columns per unit of work for a thread (`ChunkAccumulator`)
HIST_BINS = 10_000
"""Bins of the R^2 histogram on [0, 1]: with many values, medians read from it are within ~1e-4."""
SPARE_BINS = 16  # excluded columns count here in turn (one bin would chain every increment to the last one)
N_ACC = 4  # scalar accumulators: kept count, sum of R^2, count above threshold, columns with NaN/Inf

FAST = {"reassoc", "contract", "arcp", "nsz"}  # not nnan / ninf: NaN marks excluded entries
ORDERED = {"contract", "arcp", "nsz"}  # sums over checkpoints stay in checkpoint order
JIT = {"error_model": "numpy"}  # division without Python's zero check, so that the loops vectorise


@njit(cache=True)
def gram_rows(T: int) -> int:
    """Rows of the Gram accumulator: row 0 (d_0 = 0) and the rows 1..T-1 padded to a multiple of 3."""
    return 1 + 3 * ((T + 1) // 3)


@intrinsic
def _wide_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers where the CPU has them (LLVM's
    default for AVX-512 CPUs is 256 bits, half the lanes); no effect on other CPUs."""

    def codegen(context, builder, sig, args):
        # a string attribute, which llvmlite's attribute set prints as it is but has no name for
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.none(), codegen


def _value(b):
    """The float32 value of one input bit pattern: int16 (bf16: the top half of a float32) or int32."""
    return np.int32(np.int32(b) << 16 if np.dtype(type(b)).itemsize == 2 else b).view(np.float32)


@overload(_value, inline="always")
def _value_impl(b):
    if b.bitwidth == 16:  # a constant shift, so that the shift stays 32 bits wide
        return lambda b: np.int32(np.int32(b) << 16).view(np.float32)
    return lambda b: np.int32(b).view(np.float32)


@njit(fastmath=ORDERED, _nrt=False, **JIT)
def _keys(rows, j0, m, lowest, highest, second, key, kmin, kmax, lo, hi):
    """Order keys of columns [j0, j0 + m) of every row (key [T, m]; the input's width, bf16: int16, 32
    lanes of a 512-bit register), each column's smallest and largest key and, when `second`, its second
    smallest and second largest distinct key (lo, hi; a sentinel if none)."""
    _wide_vectors()
    for t in range(len(rows)):
        b = rows[t][j0:j0 + m]
        for j in range(m):
            x = b[j]
            key[t, j] = x if x >= 0 else lowest - x  # sign and magnitude -> two's complement
        if t == 0:
            for j in range(m):
                kmin[j], kmax[j], lo[j], hi[j] = key[0, j], key[0, j], highest, lowest
        elif second:
            for j in range(m):
                k, a, c = key[t, j], kmin[j], kmax[j]
                lo[j] = min(lo[j], max(k, a) if k != a else highest)  # k < a: a becomes the second smallest
                hi[j] = max(hi[j], min(k, c) if k != c else lowest)
                kmin[j], kmax[j] = min(a, k), max(c, k)
        else:
            for j in range(m):
                kmin[j], kmax[j] = min(kmin[j], key[t, j]), max(kmax[j], key[t, j])


@njit(fastmath=ORDERED, _nrt=False, **JIT)
def _sums(rows, j0, m, tc, f, s):
    """float32 values of columns [j0, j0 + m): w_0 in f[0], d_t = w_t - w_0 in f[t] (t = 1..T-1, the Gram
    matrix's input), and the float64 sums s[0] = sum d, s[1] = sum d^2, s[2] = sum (t - mean t) d over
    t = 1..T-1, in checkpoint order (d in float64: w_t - w_0 of the float64 values). Four rows per pass
    over the sums."""
    _wide_vectors()
    T = len(rows)
    b0 = rows[0][j0:j0 + m]
    for j in range(m):
        f[0, j], s[0, j], s[1, j], s[2, j] = _value(b0[j]), 0.0, 0.0, 0.0
    t = 1
    while t < T:
        n_rows = min(4, T - t)
        if n_rows == 4:
            ba, bb = rows[t][j0:j0 + m], rows[t + 1][j0:j0 + m]
            bc, bd = rows[t + 2][j0:j0 + m], rows[t + 3][j0:j0 + m]
            c0, c1, c2, c3 = tc[t], tc[t + 1], tc[t + 2], tc[t + 3]
            for j in range(m):
                x0, xa, xb, xc, xd = f[0, j], _value(ba[j]), _value(bb[j]), _value(bc[j]), _value(bd[j])
                f[t, j], f[t + 1, j], f[t + 2, j], f[t + 3, j] = xa - x0, xb - x0, xc - x0, xd - x0
                w0 = np.float64(x0)
                da, db, dc, dd = np.float64(xa) - w0, np.float64(xb) - w0, np.float64(xc) - w0, np.float64(xd) - w0
                s[0, j] = (((s[0, j] + da) + db) + dc) + dd
                s[1, j] = (((s[1, j] + da * da) + db * db) + dc * dc) + dd * dd
                s[2, j] = (((s[2, j] + c0 * da) + c1 * db) + c2 * dc) + c3 * dd
        else:
            for r in range(t, t + n_rows):
                br = rows[r][j0:j0 + m]
                c = tc[r]
                for j in range(m):
                    x = _value(br[j])
                    f[r, j] = x - f[0, j]
                    d = np.float64(x) - np.float64(f[0, j])
                    s[0, j] += d
                    s[1, j] += d * d
                    s[2, j] += c * d
        t += n_rows


@njit(fastmath=ORDERED, _nrt=False, **JIT)
def _peel(key, m, lo_rank, hi_rank, lowest, highest, lo, hi, plo, phi):
    """From the second smallest and largest distinct keys (lo, hi, `_keys`) on to the lo_rank-th smallest
    and the hi_rank-th largest, one pass over the keys per rank (a sentinel where there is none)."""
    _wide_vectors()
    for r in range(3, max(lo_rank, hi_rank) + 1):
        do_lo, do_hi = r <= lo_rank, r <= hi_rank
        for j in range(m):
            plo[j] = lo[j]
            phi[j] = hi[j]
            lo[j] = highest if do_lo else lo[j]
            hi[j] = lowest if do_hi else hi[j]
        for t in range(key.shape[0]):
            kt = key[t, :m]
            if do_lo:  # smallest key above the previous lo
                for j in range(m):
                    lo[j] = min(lo[j], kt[j] if kt[j] > plo[j] else highest)
            if do_hi:  # largest key below the previous hi
                for j in range(m):
                    hi[j] = max(hi[j], kt[j] if kt[j] < phi[j] else lowest)


@njit(fastmath=FAST, _nrt=False, **JIT)
def _r2(T, m, stt, min_range, all_distinct, lowest, threshold, kmin, kmax, lo, hi, s, r2_out, slope_out, bins, acc):
    """PAPER.md Sec. 4: R^2 = S_tw^2 / (S_tt S_ww), slope = S_tw / S_tt (S_tw = s[2], S_ww = s[1] - s[0]^2 / T),
    NaN where a filter excludes the column. The range is that of the float32 values whose order keys are
    kmin and kmax (the key map is its own inverse). Each kept R^2 gets its histogram bin (bins; an
    excluded one one of `SPARE_BINS` past the last, in turn) and is added to the kept / sum / above counters (acc[:3]);
    acc[3] counts the columns holding a NaN or Inf."""
    _wide_vectors()
    nbins = np.int32(HIST_BINS)
    nonfinite = kept = sum_r2 = above = 0.0
    for j in range(m):
        s1, s2, st = s[0, j], s[1, j], s[2, j]
        finite = s2 < np.inf  # False for NaN and Inf
        syy = s2 - s1 * s1 / T
        a, b = kmin[j], kmax[j]
        vmin = _value(kmin.dtype.type(a if a >= 0 else lowest - a))
        vmax = _value(kmax.dtype.type(b if b >= 0 else lowest - b))
        ok = (finite & (np.float64(vmax) - np.float64(vmin) > min_range)
              & (all_distinct | (lo[j] < hi[j])) & (syy > 0.0))
        r2 = np.float32(min(max(st * st / (stt * max(syy, 1e-300)), 0.0), 1.0))
        slope_out[j] = st / stt
        r2_out[j] = r2 if ok else np.float32(np.nan)
        bins[j] = min(np.int32(np.float64(r2) * nbins), nbins - 1) if ok else nbins + np.int32(j % SPARE_BINS)
        nonfinite += 0.0 if finite else 1.0
        kept += 1.0 if ok else 0.0
        sum_r2 += np.float64(r2) if ok else 0.0
        above += 1.0 if ok and r2 > threshold else 0.0
    acc[0], acc[1], acc[2], acc[3] = acc[0] + kept, acc[1] + sum_r2, acc[2] + above, acc[3] + nonfinite


@njit(_nrt=False, inline="always", **JIT)
def _add3(gram, s, t, a, b, c):
    """gram[s, t:t + 3] += (a, b, c)."""
    gram[s, t] += a
    gram[s, t + 1] += b
    gram[s, t + 2] += c


@njit(fastmath=FAST, _nrt=False, **JIT)
def _gram(f, T, m, gram):
    """Add the lower triangle of the Gram matrix of d_t = w_t - w_0 (t = 1..T-1; d_0 = 0) to gram: rows
    in groups of three as 3 x 3 tiles (each load feeds three products), the last one or two rows as
    1 x 3 strips. f: float32 rows, d in rows 1..T-1 (`_sums`), rows T.. zero. float32 within the block,
    float64 across blocks."""
    _wide_vectors()
    full = 1 + 3 * ((T - 1) // 3)  # rows 1..full-1 form whole groups of three
    for s in range(1, full, 3):
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
            _add3(gram, s, t, g00, g01, g02)
            _add3(gram, s + 1, t, g10, g11, g12)
            _add3(gram, s + 2, t, g20, g21, g22)
    for s in range(full, T):
        a0 = f[s, :m]
        for t in range(1, s + 1, 3):  # rows t + 1, t + 2 may be the zero padding
            b0, b1, b2 = f[t, :m], f[t + 1, :m], f[t + 2, :m]
            g00 = g01 = g02 = np.float32(0.0)
            for j in range(m):
                x0 = a0[j]
                g00 += x0 * b0[j]
                g01 += x0 * b1[j]
                g02 += x0 * b2[j]
            _add3(gram, s, t, g00, g01, g02)


@njit(nogil=True, cache=True, **JIT)
def _columns_stats(rows, col_start, col_stop, tc, stt, min_range, lo_rank, hi_rank, threshold, do_gram,
                   r2_out, slope_out, block_kept, hist, acc, gram):
    """Columns [col_start, col_stop) of one chunk, block by block (one thread's share; releases the GIL).
    rows: T arrays [n] of int16 (bf16) or int32 (float32) bit patterns."""
    T = len(rows)
    dtype = rows[0].dtype
    wide = rows[0].itemsize == 4
    lowest = dtype.type(-2147483648 if wide else -32768)  # also the key sentinels
    highest = dtype.type(2147483647 if wide else 32767)
    all_distinct = lo_rank + hi_rank <= 1
    f = np.zeros((gram_rows(T), BLOCK), np.float32)  # row 0: w_0; rows 1..T-1: d; rows T.. stay zero
    s = np.empty((3, BLOCK))  # float64 sums
    key = np.empty((T, BLOCK), dtype)
    ext = np.empty((6, BLOCK), dtype)  # smallest and largest key, lo and hi ranks, `_peel`'s previous ones
    kmin, kmax, lo, hi, plo, phi = ext[0], ext[1], ext[2], ext[3], ext[4], ext[5]
    bins = np.empty(BLOCK, np.int32)
    for j0 in range(col_start, col_stop, BLOCK):
        m = min(BLOCK, col_stop - j0)
        _keys(rows, j0, m, lowest, highest, max(lo_rank, hi_rank) >= 2, key, kmin, kmax, lo, hi)
        if max(lo_rank, hi_rank) > 2:
            _peel(key, m, lo_rank, hi_rank, lowest, highest, lo, hi, plo, phi)
        if lo_rank < 2:
            lo[:m] = kmin[:m]
        if hi_rank < 2:
            hi[:m] = kmax[:m]
        _sums(rows, j0, m, tc, f, s)
        kept = acc[0]
        _r2(T, m, stt, min_range, all_distinct, lowest, threshold, kmin, kmax, lo, hi, s, r2_out[j0:j0 + m],
            slope_out[j0:j0 + m], bins, acc)
        block_kept[j0 // BLOCK] = acc[0] - kept
        for j in range(m):  # the excluded ones into the spare bins
            hist[bins[j]] += 1
        if do_gram:
            _gram(f, T, m, gram)


class ChunkAccumulator:
    """The histogram, counters and Gram matrix that `chunk_stats` adds into, and its worker threads. A
    chunk's pieces of `PIECE` columns go to whichever thread is free; each thread counts into its own
    histogram row (integers: order does not matter), the pieces' float sums (sum of R^2, Gram matrix) are
    added in column order, so no result depends on the number of threads."""

    def __init__(self, T: int, n_threads: int | None = None):
        self.T = T
        self.n_threads = n_threads or min(available_cpus(), 8)
        self.pool = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None
        self.free: queue.SimpleQueue[int] = queue.SimpleQueue()  # histogram rows not in use by a thread
        self.block_kept = np.zeros(0, np.int64)  # [blocks] kept columns in each block of the last chunk
        for i in range(self.n_threads):
            self.free.put(i)
        self.hist = np.zeros((self.n_threads, HIST_BINS + SPARE_BINS), np.int64)  # [threads, bins + spare]
        self.acc = np.zeros((1, N_ACC), np.float64)  # [1, 4]
        self.gram = np.zeros((1, gram_rows(T), gram_rows(T)), np.float64)  # [1, R, R], lower triangle

    def close(self) -> None:
        """Stop the worker threads."""
        if self.pool is not None:
            self.pool.shutdown()

    def take_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(histogram [bins], accumulators [4]) since the last call, then reset."""
        hist, acc = self.hist[:, :HIST_BINS].sum(0), self.acc.sum(0)
        self.hist[:], self.acc[:] = 0, 0
        return hist, acc

    def gram_matrix(self) -> np.ndarray:
        """The full symmetric T x T Gram matrix sum_p d_p d_p^T accumulated so far."""
        g = self.gram.sum(0)[:self.T, :self.T]
        return np.tril(g) + np.tril(g, -1).T


def available_cpus() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    k = max(int(min_distinct), 0)
    lo_rank, hi_rank = (k + 1) // 2, k // 2  # peel so many smallest and largest distinct values
    r2, slope = out if out is not None else (np.empty(n, np.float32), np.empty(n, np.float32))
    if any(a.shape != (n,) or a.dtype != np.float32 or not a.flags.c_contiguous for a in (r2, slope)):
        raise ValueError(f"out must be two C-contiguous float32 arrays of shape ({n},)")
    a = accumulator
    a.block_kept = np.zeros(-(-n // BLOCK), np.int64)  # [blocks] kept columns per block of this chunk
    args = (tc, stt, float(min_range), lo_rank, hi_rank, float(threshold), bool(gram), r2, slope, a.block_kept)
    starts = range(0, n, PIECE)
    part_acc = np.zeros((len(starts), N_ACC))  # [pieces, 4]
    part_gram = np.zeros((len(starts), *a.gram.shape[1:])) if gram else a.gram  # [pieces, R, R]

    def piece(k: int) -> None:
        i = a.free.get()
        try:
            _columns_stats(rows, starts[k], min(starts[k] + PIECE, n), *args, a.hist[i], part_acc[k],
                           part_gram[k if gram else 0])
        finally:
            a.free.put(i)

    if a.pool is None or len(starts) == 1:
        for k in range(len(starts)):
            piece(k)
    else:
        list(a.pool.map(piece, range(len(starts))))
    a.acc[0] += part_acc.sum(0)
    if gram:
        if part_acc[:, 3].sum() == 0 and not np.isfinite(part_gram).all():
            # finite weights whose float32 products overflowed: this chunk's Gram matrix again, in float64
            bits = np.stack(rows)
            d = (bits.view(np.uint16).astype(np.uint32) << 16 if bits.dtype == np.int16 else bits).view(np.float32)
            d = d.astype(np.float64) - d[0]
            a.gram[0, :T, :T] += np.tril(d @ d.T)
        else:
            a.gram[0] += part_gram.sum(0)
    return r2, slope


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


def kept_columns(r2: np.ndarray, ranks: np.ndarray, block_kept: np.ndarray | None = None) -> np.ndarray:
    """The columns of the rank-th kept (not NaN) R^2 values of a chunk, np.flatnonzero(kept)[ranks] without
    listing every kept column when the kept count of each `BLOCK` is given (`ChunkAccumulator.block_kept`)."""
    if block_kept is None:
        return np.flatnonzero(~np.isnan(r2))[ranks]
    ends = np.cumsum(block_kept)  # kept columns up to the end of each block
    blocks = np.searchsorted(ends, ranks, side="right")
    return np.array([b * BLOCK + np.flatnonzero(~np.isnan(r2[b * BLOCK:(b + 1) * BLOCK]))[r - ends[b] + block_kept[b]]
                     for r, b in zip(ranks, blocks)], np.int64)


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
