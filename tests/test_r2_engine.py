"""The weight R^2 kernel (rlvr_nb.streaming) on hard columns against an independent float64 computation,
its independence of the thread count, and the start-up work of `rlvr-nb linearity`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from trajectory_fixtures import make_run, reference_r2

from rlvr_nb.linearity import Example, keep_examples
from rlvr_nb.streaming import BLOCK, HIST_BINS, PIECE, ChunkAccumulator, chunk_stats

STEPS = (0, 40, 90, 100, 250, 300, 310, 400, 520, 600, 700, 810, 900, 1300)  # 14, unevenly spaced


def hard_columns(T: int, n: int, seed: int) -> np.ndarray:
    """float32 trajectories [T, n]: random walks, with constant, tiny-range (either side of 1e-4),
    few-distinct-value (1..6 levels), signed-zero and large-magnitude columns spread among them."""
    rng = np.random.default_rng(seed)
    w = 0.05 * rng.standard_normal(n) + np.cumsum(2e-3 * rng.standard_normal((T, n)), 0)
    kind = rng.integers(0, 8, n)
    w[:, kind == 1] = w[:1, kind == 1]  # constant
    tiny = kind == 2
    w[:, tiny] = 1.0 + rng.choice([5e-5, 2e-4, 1e-3], tiny.sum()) * rng.random((T, tiny.sum()))
    few = kind == 3
    levels = rng.integers(1, 7, few.sum())
    w[:, few] = 0.01 * rng.integers(0, levels, (T, few.sum())) - 0.02
    zeros = kind == 4
    w[:, zeros] = rng.choice([0.0, -0.0, 0.25, 0.5, -0.25], (T, zeros.sum()))
    w[:, kind == 5] *= 1e6  # large, far from overflow
    return w.astype(np.float32)


def as_bits(w: np.ndarray, wide: bool) -> tuple[np.ndarray, np.ndarray]:
    """(kernel input bits, their float64 values): float32 as int32 bits, or rounded to bf16 (uint16)."""
    if wide:
        return w.view(np.int32), w.astype(np.float64)
    bits = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def reference(values: np.ndarray, steps, min_range: float, min_distinct: int) -> np.ndarray:
    """R^2 [n] from numpy's least squares, NaN where the paper's filters exclude the column (range over
    the checkpoints > min_range, at least min_distinct distinct values, -0.0 equal to 0.0)."""
    s = np.sort(values, axis=0)
    distinct = 1 + (np.diff(s, axis=0) != 0).sum(0)
    keep = (values.max(0) - values.min(0) > min_range) & (distinct >= max(min_distinct, 1))
    r2 = reference_r2(values, steps)
    return np.where(keep & np.isfinite(r2), r2, np.nan)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("min_distinct", [0, 3, 4, 5])
def test_kernel_matches_float64_least_squares_on_hard_columns(wide, min_distinct):
    T, n = len(STEPS), PIECE + 3 * BLOCK + 77  # two pieces, the last block partial
    bits, values = as_bits(hard_columns(T, n, seed=min_distinct), wide)
    acc = ChunkAccumulator(T, n_threads=2)
    r2, slope = chunk_stats(bits, list(STEPS), acc, min_range=1e-4, min_distinct=min_distinct, threshold=0.7,
                            gram=True)
    acc.close()
    ref = reference(values, STEPS, 1e-4, min_distinct)
    np.testing.assert_array_equal(np.isnan(r2), np.isnan(ref))
    kept = ~np.isnan(ref)
    assert 0.5 * n < kept.sum() < n  # the hard columns are there and some are excluded
    np.testing.assert_array_equal(acc.block_kept, [kept[i:i + BLOCK].sum() for i in range(0, n, BLOCK)])
    np.testing.assert_allclose(r2[kept], ref[kept], atol=2e-6)
    t = np.asarray(STEPS, np.float64)
    ref_slope = ((t - t.mean()) @ (values - values.mean(0))) / ((t - t.mean()) @ (t - t.mean()))
    np.testing.assert_allclose(slope, ref_slope, rtol=1e-6, atol=1e-12)
    hist, counts = acc.take_counts()
    assert counts[0] == kept.sum() and counts[3] == 0
    assert counts[1] == pytest.approx(r2[kept].astype(np.float64).sum(), rel=1e-12)
    assert counts[2] == (r2[kept] > 0.7).sum()
    bins = np.minimum((r2[kept].astype(np.float64) * HIST_BINS).astype(np.int64), HIST_BINS - 1)
    np.testing.assert_array_equal(hist, np.bincount(bins, minlength=HIST_BINS))
    d = values - values[0]
    np.testing.assert_allclose(acc.gram_matrix(), d @ d.T, rtol=2e-5, atol=1e-7 * np.abs(d @ d.T).max())


@pytest.mark.parametrize("wide", [False, True])
def test_thread_count_does_not_change_any_result(wide):
    T, n = len(STEPS), 3 * PIECE + 5 * BLOCK + 3
    bits, _ = as_bits(hard_columns(T, n, seed=11), wide)
    results = []
    for threads in (1, 2, 3):
        acc = ChunkAccumulator(T, n_threads=threads)
        r2, slope = chunk_stats(bits, list(STEPS), acc, min_range=1e-4, min_distinct=4, threshold=0.7, gram=True)
        chunk_stats(bits[:, :PIECE + 9].copy(), list(STEPS), acc, min_range=1e-4, min_distinct=4, threshold=0.7,
                    gram=True)  # a second chunk into the same accumulators
        acc.close()
        results.append((r2, slope, *acc.take_counts(), acc.gram_matrix()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)  # bit for bit, also the float sums


def test_examples_from_the_kernels_block_counts_are_the_listed_kept_entries():
    rng_values = np.random.default_rng(0)
    n = 5 * BLOCK + 100
    values = rng_values.standard_normal((5, n)).astype(np.float32)
    r2 = rng_values.random(n).astype(np.float32)
    r2[rng_values.random(n) < 0.4] = np.nan  # excluded entries
    r2[BLOCK:2 * BLOCK] = np.nan  # a block with nothing kept
    slope = rng_values.random(n).astype(np.float32)
    counts = np.array([(~np.isnan(r2[i:i + BLOCK])).sum() for i in range(0, n, BLOCK)])
    rng = np.random.default_rng(3)
    listed = [int(j) for _ in range(3) for j in rng.choice(np.flatnonzero(~np.isnan(r2)), 4, replace=False)]
    for block_kept in (counts, None):
        pool: list[Example] = []
        rng = np.random.default_rng(3)
        for _ in range(3):
            keep_examples(pool, "w", values, r2, slope, 0, None, rng, block_kept=block_kept)
        assert [e.index for e in pool] == listed
        assert all(e.r2 == r2[e.index] and np.array_equal(e.values, values[:, e.index]) for e in pool)


def cli(args: list[str]) -> subprocess.CompletedProcess:
    """`rlvr-nb` in a fresh interpreter; prints which heavy libraries the command imported."""
    code = ("import sys\nfrom rlvr_nb.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(sorted(m for m in ('transformers', 'matplotlib') if m in sys.modules), file=sys.stderr)\n"
            "sys.exit(status)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_cli_imports_transformers_and_matplotlib_only_when_used(tmp_path):
    run = make_run(tmp_path / "run", "trl", STEPS[:6])
    plain = cli(["linearity", str(run), "--out", str(tmp_path / "a"), "--json", "--no-progress", "--no-figures"])
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.strip().splitlines()[-1] == "[]"  # neither: no token log-probs, no figures
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["linearity.json"]
    figs = cli(["linearity", str(run), "--out", str(tmp_path / "b"), "--json", "--no-progress"])
    assert figs.returncode == 0, figs.stderr
    assert figs.stderr.strip().splitlines()[-1] == "['matplotlib']"
    assert {p.name for p in (tmp_path / "b").iterdir()} == {"linearity.json", "weight_r2_hist.png",
                                                            "weight_r2_module_layer.png", "weight_examples.png"}
    a, b = json.loads(plain.stdout), json.loads(figs.stdout)
    for report in (a, b):
        for key in ("seconds", "written", "table"):  # wall time, output files
            report.pop(key)
    assert a == b  # the figures change nothing measured
