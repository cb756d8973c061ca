"""Weight R^2 engine against an independent float64 numpy computation, filters, summaries, drift
spectrum, and the `rlvr-nb linearity` command."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from trajectory_fixtures import fabricated_weights, make_run, reference_r2, stored_values, write_hf_dir

from rlvr_nb.linearity import (
    LinearityConfig,
    drift_spectrum,
    histogram_median,
    middle_values,
    module_and_layer,
    r2_against_steps,
    summarize_r2,
    trajectory_linearity,
    weight_linearity,
)
from rlvr_nb.streaming import HIST_BINS, ChunkAccumulator, chunk_stats
from rlvr_nb.trajectory import MappedReader, Rows, load_trajectory

UNEVEN = (0, 50, 60, 200, 210, 500, 900)


def reference_filters(values: np.ndarray, min_range: float, min_distinct: int) -> np.ndarray:
    """The paper's filters, computed the obvious way: range and np.unique per column."""
    distinct = np.array([np.unique(values[:, j]).size for j in range(values.shape[1])])
    return (values.max(0) - values.min(0) > min_range) & (distinct >= min_distinct)


def test_r2_equation_against_least_squares():
    rng = np.random.default_rng(0)
    steps = np.array(UNEVEN, float)
    y = rng.standard_normal((len(steps), 200)) + np.outer(steps, rng.standard_normal(200)) / 300
    r2, slope = r2_against_steps(y, steps)
    np.testing.assert_allclose(r2, reference_r2(y, steps), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(slope, [np.polyfit(steps, y[:, j], 1)[0] for j in range(200)], rtol=1e-9)
    line = 3.0 - 0.02 * steps[:, None] * np.ones((1, 5))
    assert np.allclose(r2_against_steps(line, steps)[0], 1.0)
    assert np.isnan(r2_against_steps(np.ones((len(steps), 3)), steps)[0]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_engine_matches_float64_reference_per_parameter(tmp_path, dtype):
    weights = fabricated_weights(UNEVEN, noise=3e-3)
    weights[0]["model.norm.weight"] = weights[1]["model.norm.weight"].clone()  # partly constant tensors
    for w in weights:
        w["model.norm.weight"][:8] = 1.0
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w, dtype=dtype)) for s, w in zip(UNEVEN, weights)]
    traj = load_trajectory(pairs, progress=False)
    cfg = LinearityConfig(chunk_elems=1000)  # many chunks, none a multiple of the kernel's block
    res = weight_linearity(traj, cfg, save_r2=tmp_path / "r2.safetensors", progress=False)
    saved = load_file(str(tmp_path / "r2.safetensors"))
    all_r2, all_above = [], 0
    for name, info in traj.tensors.items():
        values = stored_values(traj.dirs, name)  # [T, numel] float64
        keep = reference_filters(values, cfg.min_range, cfg.min_distinct)
        ref = np.where(keep, reference_r2(values, UNEVEN), np.nan)
        got = saved[name].reshape(-1).astype(np.float64)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=name)
        np.testing.assert_allclose(got[keep], ref[keep], atol=2e-6, err_msg=name)
        s = res.per_tensor[name]
        assert s.count == keep.sum() and s.total == info.numel
        if keep.any():
            assert s.mean == pytest.approx(ref[keep].mean(), abs=1e-6)
            assert s.median == pytest.approx(np.median(ref[keep]), abs=2e-6)
            assert s.frac_above == pytest.approx((ref[keep] > 0.7).mean(), abs=1e-9)
        else:
            assert math.isnan(s.median) and s.row()["median"] is None  # never NaN in a reported summary
        all_r2.append(ref[keep])
        all_above += (ref[keep] > 0.7).sum()
    all_r2 = np.concatenate(all_r2)
    assert res.overall.count == all_r2.size
    assert res.overall.median == pytest.approx(np.median(all_r2), abs=1.5e-4)
    assert res.overall.frac_above == pytest.approx(all_above / all_r2.size, abs=1e-9)
    assert res.per_tensor["model.norm.weight"].count < 16  # the constant entries were excluded
    # examples are real entries of real tensors, with their R^2
    assert len(res.examples) == 4
    for e in res.examples:
        values = stored_values(traj.dirs, e.name)[:, e.index]
        np.testing.assert_array_equal(e.values, values)
        assert e.r2 == pytest.approx(reference_r2(values[:, None], UNEVEN)[0], abs=2e-6)


def test_perfectly_linear_and_constant_trajectories(tmp_path):
    model_w = fabricated_weights((0,))[0]
    steps = (0, 10, 30, 60, 100)
    pairs = []
    for s in steps:  # float32 storage, exactly linear in the step for every scalar except the norms
        w = {n: (t + 1e-2 * s * torch.ones_like(t)) if "norm" not in n else torch.ones_like(t)
             for n, t in model_w.items()}
        pairs.append((s, write_hf_dir(tmp_path / f"c{s}", w, dtype=torch.float32)))
    res = weight_linearity(load_trajectory(pairs, progress=False), progress=False)
    assert res.overall.mean == pytest.approx(1.0, abs=1e-6)
    for name, s in res.per_tensor.items():
        assert (s.count == 0) == ("norm" in name)
    row = res.to_dict()
    assert all(v is not None for v in row["overall"].values())
    json.dumps(row, allow_nan=False)  # nothing NaN anywhere in the report


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weight_is_named(tmp_path, bad):
    weights = fabricated_weights(UNEVEN)
    weights[4]["model.layers.1.mlp.down_proj.weight"][3, 5] = bad
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w)) for s, w in zip(UNEVEN, weights)]
    with pytest.raises(ValueError, match=r"non-finite .* model\.layers\.1\.mlp\.down_proj\.weight .* step 210"):
        weight_linearity(load_trajectory(pairs, progress=False), progress=False)


@pytest.mark.parametrize("min_distinct", [0, 2, 3, 5, 7])
def test_distinct_value_filter_for_any_count(min_distinct):
    rng = np.random.default_rng(1)
    T, n = 7, 3000
    # few distinct levels per column so that every count from 1 to 7 occurs
    levels = rng.integers(1, 8, size=n)
    values = np.stack([rng.integers(0, levels) for _ in range(T)]).astype(np.float32) * 0.01
    steps = np.arange(T) * 10.0
    r2, _ = chunk_stats(np.ascontiguousarray(values).view(np.int32), steps, ChunkAccumulator(T),
                        min_range=0.0, min_distinct=min_distinct, threshold=0.7, gram=False)
    expected = reference_filters(values.astype(np.float64), 0.0, max(min_distinct, 1))
    np.testing.assert_array_equal(~np.isnan(r2), expected)


def test_negative_zero_counts_as_zero():
    values = np.array([[0.0, 1.0], [-0.0, 2.0], [0.5, 3.0], [0.5, 4.0]], np.float32)  # column 0: {0, 0.5}
    r2, _ = chunk_stats(values.view(np.int32), np.arange(4.0), ChunkAccumulator(4), min_range=0.0, min_distinct=3,
                        threshold=0.7, gram=False)
    assert np.isnan(r2[0]) and r2[1] == pytest.approx(1.0)


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values [T, n] rounded to bf16, as uint16 bit patterns (the kernel's bf16 input)."""
    bf16 = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(torch.bfloat16)
    return bf16.view(torch.int16).numpy().view(np.uint16)


def bits_values(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns [T, n] as float64 values."""
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("T", [3, 4, 5, 6, 7, 14])
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_gram_tiles_match_float64_gram(T, wide, threads):
    """The kernel's Gram matrix (3 x 3 tiles of rows, padded; float32 within a block) against float64,
    for odd and even T, bf16 and float32 input, and a column count that is no multiple of the block."""
    rng = np.random.default_rng(T)
    n = 1537
    w = (0.02 * rng.standard_normal(n) + np.cumsum(3e-3 * rng.standard_normal((T, n)), 0)).astype(np.float32)
    bits = w.view(np.int32) if wide else bf16_bits(w)
    values = w.astype(np.float64) if wide else bits_values(bits)
    acc = ChunkAccumulator(T, n_threads=threads)
    chunk_stats(bits, np.arange(T) * 10.0, acc, min_range=0.0, min_distinct=0, threshold=0.7, gram=True)
    chunk_stats(bits[:, :700].copy(), np.arange(T) * 10.0, acc, min_range=0.0, min_distinct=0, threshold=0.7,
                gram=True)  # accumulates across chunks
    acc.close()
    d = values - values[0]
    ref = d @ d.T + d[:, :700] @ d[:, :700].T
    np.testing.assert_allclose(acc.gram_matrix(), ref, rtol=2e-5, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("min_distinct", [0, 2, 3, 4, 5, 7])
def test_bf16_and_float32_paths_agree(min_distinct):
    """bf16 input (16-bit order keys) and the same values as float32 (32-bit keys) give identical R^2,
    slopes and filters, also for negative values and both zeros."""
    rng = np.random.default_rng(2)
    T, n = 7, 4000
    levels = rng.integers(1, 8, size=n)
    values = (np.stack([rng.integers(0, levels) for _ in range(T)]) - 3).astype(np.float32) * 0.01
    values[:, :20] = rng.choice(np.array([0.0, -0.0, 0.5], np.float32), size=(T, 20))  # -0.0 equals 0.0
    values[:, 20:1000] += rng.standard_normal((T, 980)).astype(np.float32)  # all distinct
    bits = bf16_bits(values)
    exact = bits_values(bits)  # the bf16 values
    args = dict(min_range=0.0, min_distinct=min_distinct, threshold=0.7, gram=False)
    r2_16, slope_16 = chunk_stats(bits, np.arange(T) * 10.0, ChunkAccumulator(T), **args)
    r2_32, slope_32 = chunk_stats(exact.astype(np.float32).view(np.int32), np.arange(T) * 10.0, ChunkAccumulator(T),
                                  **args)
    np.testing.assert_array_equal(r2_16, r2_32)
    np.testing.assert_array_equal(slope_16, slope_32)
    np.testing.assert_array_equal(~np.isnan(r2_16), reference_filters(exact, 0.0, max(min_distinct, 1)))


@pytest.mark.parametrize("wide", [False, True])
def test_nonfinite_columns_are_counted_and_excluded(wide):
    rng = np.random.default_rng(3)
    T, n = 6, 1100
    w = (1 + np.cumsum(rng.standard_normal((T, n)), 0)).astype(np.float32)
    bad = {3: (2, np.nan), 600: (0, np.inf), 601: (5, -np.inf), 1099: (1, np.nan)}
    for j, (t, v) in bad.items():
        w[t, j] = v
    w[:, 700] = [3e38, -3e38, 3e38, -3e38, 1e38, 0.0]  # huge but finite: kept
    bits = w.view(np.int32) if wide else bf16_bits(w)
    acc = ChunkAccumulator(T, n_threads=2)
    r2, _ = chunk_stats(bits, np.arange(T) * 1.0, acc, min_range=0.0, min_distinct=4, threshold=0.7, gram=True)
    acc.close()
    assert acc.acc[:, 3].sum() == len(bad)
    assert np.isnan(r2[list(bad)]).all() and np.isfinite(r2[700])
    assert np.isfinite(r2).sum() == n - len(bad)


def test_rows_input_and_out_buffers_equal_array_input():
    rng = np.random.default_rng(4)
    T, n = 5, 3000
    bits = bf16_bits(np.cumsum(rng.standard_normal((T, n)), 0))
    args = dict(min_range=1e-4, min_distinct=4, threshold=0.7, gram=True)
    a, b = ChunkAccumulator(T), ChunkAccumulator(T)
    r2, slope = chunk_stats(bits, np.arange(T) * 1.0, a, **args)
    out = (np.full(n, 7.0, np.float32), np.full(n, 7.0, np.float32))
    got = chunk_stats(Rows(list(bits)), np.arange(T) * 1.0, b, out=out, **args)
    assert got[0] is out[0] and got[1] is out[1]
    np.testing.assert_array_equal(out[0], r2)
    np.testing.assert_array_equal(out[1], slope)
    np.testing.assert_array_equal(a.gram_matrix(), b.gram_matrix())
    with pytest.raises(ValueError, match="out must be"):
        chunk_stats(bits, np.arange(T) * 1.0, a, out=(out[0][:10], out[1]), **args)
    with pytest.raises(ValueError, match="C-contiguous"):
        chunk_stats(np.asfortranarray(bits), np.arange(T) * 1.0, a, **args)


def test_exact_median_from_histogram_bins():
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(1, 2000))
        x = [rng.random(n), rng.choice([0.0, 0.3, 0.5, 0.50005, 0.99999, 1.0], n),
             rng.integers(0, 9, n) / 1e4][trial % 3].astype(np.float32)  # spread, ties, within a few bins
        x[rng.random(n) < 0.2] = np.nan
        kept = x[np.isfinite(x)]
        hist = np.bincount(np.minimum((kept.astype(np.float64) * HIST_BINS).astype(np.int64), HIST_BINS - 1),
                           minlength=HIST_BINS)
        middle = middle_values(np.array_split(x, 3), hist)
        if kept.size:
            assert float(np.median(middle)) == float(np.median(kept))
        else:
            assert middle.size == 0


def test_mapped_rows_equal_copying_reads(tmp_path):
    weights = fabricated_weights(UNEVEN[:4])
    pairs = {kind: [(s, write_hf_dir(tmp_path / kind / f"c{s}", w, dtype=dtype(i)))
                    for i, (s, w) in enumerate(zip(UNEVEN, weights))]
             for kind, dtype in [("bf16", lambda i: torch.bfloat16), ("f32", lambda i: torch.float32),
                                 ("f16", lambda i: torch.float16),
                                 ("mixed", lambda i: torch.float32 if i == 0 else torch.bfloat16)]}
    for kind, ps in pairs.items():
        traj = load_trajectory(ps, progress=False)
        with MappedReader(traj) as mapped:
            for name, info in traj.tensors.items():
                assert mapped.serves(name) == (kind in ("bf16", "f32"))  # else the engine reads copies
                if not mapped.serves(name):
                    continue
                for start, stop in [(0, info.numel), (1, min(info.numel, 37)), (info.numel, info.numel)]:
                    rows = mapped.rows(name, start, stop)
                    np.testing.assert_array_equal(np.stack(rows), traj.read(name, start, stop), err_msg=name)
                    mapped.release(name, start, stop)
                    np.testing.assert_array_equal(np.stack(rows), traj.read(name, start, stop))  # pages read again
                    assert not rows[0].flags.writeable
        # the engine gives the same result whichever way the chunks are read
        res = weight_linearity(traj, LinearityConfig(chunk_elems=333), progress=False)
        values = {n: stored_values(traj.dirs, n) for n in traj.tensors}
        for name, s in res.per_tensor.items():
            keep = reference_filters(values[name], 1e-4, 4)
            assert s.count == keep.sum()
            if keep.any():
                assert s.median == pytest.approx(np.median(reference_r2(values[name], UNEVEN[:4])[keep]), abs=2e-6)
    traj = load_trajectory(pairs["bf16"], progress=False)
    name = "model.embed_tokens.weight"
    path, offset = traj.tensors[name].locations[2]
    with open(path, "r+b") as f:
        f.truncate(offset + 10)
    with MappedReader(traj) as mapped, pytest.raises(ValueError, match="truncated"):
        mapped.rows(name, 0, traj.tensors[name].numel)


def test_sampled_mode_counts_and_values(tmp_path):
    run = make_run(tmp_path / "run", "ours", UNEVEN)
    traj = load_trajectory(run, progress=False)
    cfg = LinearityConfig(sample_fraction=0.01, min_samples=50, min_range=0.0, min_distinct=0)
    res = weight_linearity(traj, cfg, progress=False)
    for name, info in traj.tensors.items():
        assert res.per_tensor[name].total == min(info.numel, max(50, math.ceil(0.01 * info.numel)))
    full = weight_linearity(traj, LinearityConfig(min_range=0.0, min_distinct=0), progress=False)
    assert abs(res.overall.median - full.overall.median) < 0.05  # a 1% sample estimates the median
    with pytest.raises(ValueError, match="save_r2"):
        weight_linearity(traj, cfg, save_r2=tmp_path / "x.safetensors", progress=False)


def test_skip_first_equals_dropping_checkpoints(tmp_path):
    run = make_run(tmp_path / "run", "trl", UNEVEN)
    traj = load_trajectory(run, progress=False)
    a = weight_linearity(traj, LinearityConfig(skip_first=2), progress=False)
    b = weight_linearity(load_trajectory([(s, d) for s, d in zip(traj.steps[2:], traj.dirs[2:])], progress=False),
                         progress=False)
    assert a.steps == list(UNEVEN[2:])
    assert a.overall.count == b.overall.count and a.overall.mean == pytest.approx(b.overall.mean, abs=1e-12)


def test_drift_spectrum_against_svd(tmp_path):
    run = make_run(tmp_path / "run", "ours", UNEVEN)
    traj = load_trajectory(run, progress=False)
    res = weight_linearity(traj, LinearityConfig(chunk_elems=777), progress=False)
    X = np.concatenate([stored_values(traj.dirs, n) for n in traj.tensors], axis=1)  # [T, P]
    sv = np.linalg.svd(X - X.mean(0), compute_uv=False)
    np.testing.assert_allclose(res.drift.explained, sv**2 / (sv**2).sum(), atol=1e-5)
    assert res.drift.first > 0.5  # the fabricated run drifts along one direction
    # one direction only: a rank-one centred trajectory puts all variance on the first axis
    rng = np.random.default_rng(0)
    d = np.outer(np.array(UNEVEN, float), rng.standard_normal(50)) + 3.0
    assert drift_spectrum(d @ d.T).first == pytest.approx(1.0)


def test_summaries_and_grouping():
    r2 = np.array([np.nan, 0.2, 0.8, 0.9, np.nan, 0.95])
    s = summarize_r2(r2)
    assert (s.count, s.total) == (4, 6)
    assert s.median == pytest.approx(0.85) and s.frac_above == pytest.approx(0.75)
    assert summarize_r2(np.full(3, np.nan)).row()["median"] is None
    rng = np.random.default_rng(0)
    x = rng.beta(8, 2, 100_001)
    hist = np.bincount((x * 10_000).astype(int), minlength=10_000)
    assert histogram_median(hist) == pytest.approx(np.median(x), abs=1e-4)
    assert module_and_layer("model.layers.3.self_attn.q_proj.weight") == ("q_proj.weight", 3)
    assert module_and_layer("model.layers.12.mlp.experts.7.up_proj.weight") == ("up_proj.weight", 12)
    assert module_and_layer("model.embed_tokens.weight") == ("embed_tokens.weight", -1)
    assert module_and_layer("lm_head.weight") == ("lm_head.weight", -1)


def test_trajectory_linearity_groups_and_filter():
    steps = [0, 1, 2, 4]
    values = np.array([[0, 0, 1, 5], [1, 0, 1, 5], [2, 0, 1, 5], [4.1, 0, 1, 5]], float)
    values[:, 3] = [0, 3, 1, 2]
    res = trajectory_linearity(values, steps, keep=np.array([True, True, True, True]), groups=["a", "a", "b", "b"])
    assert res.kept.tolist() == [True, False, False, True]  # constant columns are never kept
    assert res.groups["a"].count == 1 and res.groups["b"].count == 1
    assert res.r2[0] == pytest.approx(reference_r2(values[:, :1], steps)[0])


def test_cli_linearity_json_and_figures(tmp_path, capsys):
    from rlvr_nb.cli import main

    run = make_run(tmp_path / "run", "trl", UNEVEN)
    out = tmp_path / "out"
    assert main(["linearity", str(run), "--out", str(out), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == list(UNEVEN)
    assert set(report["overall"]) == {"median", "mean", "frac_above", "count", "total"}
    assert "q_proj.weight" in report["per_module"]
    for f in ("weight_r2_hist.png", "weight_r2_module_layer.png", "weight_examples.png", "linearity.json"):
        assert (out / f).stat().st_size > 0
    assert main(["linearity", str(run), "--out", str(out), "--no-progress"]) == 0
    assert "q_proj.weight" in capsys.readouterr().out
    assert main(["linearity", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Steps of any size, weights of any finite size


BIG = 2**53  # float64 can no longer tell 2^53 from 2^53 + 1


def test_steps_near_2_53_are_centred_exactly():
    rng = np.random.default_rng(6)
    small = np.arange(5)
    y = np.outer(small, rng.standard_normal(300)) + rng.standard_normal((5, 300))
    big = [BIG + int(s) for s in small]
    np.testing.assert_array_equal(r2_against_steps(y, big)[0], r2_against_steps(y, small)[0])
    np.testing.assert_array_equal(trajectory_linearity(y, big).r2, trajectory_linearity(y, list(small)).r2)
    bits = np.ascontiguousarray(y, np.float32).view(np.int32)
    args = dict(min_range=0.0, min_distinct=0, threshold=0.7, gram=False)
    np.testing.assert_array_equal(chunk_stats(bits, big, ChunkAccumulator(5), **args)[0],
                                  chunk_stats(bits, list(small), ChunkAccumulator(5), **args)[0])


def test_engine_at_steps_near_2_53_equals_steps_0_to_4(tmp_path):
    weights = fabricated_weights((0, 1, 2, 3, 4), noise=3e-3)
    dirs = [write_hf_dir(tmp_path / f"c{i}", w) for i, w in enumerate(weights)]
    small = weight_linearity(load_trajectory(list(enumerate(dirs)), progress=False), progress=False)
    big = weight_linearity(load_trajectory([(BIG + i, d) for i, d in enumerate(dirs)], progress=False),
                           progress=False)
    assert big.steps[0] == BIG and big.overall.count == small.overall.count
    assert big.overall.median == small.overall.median and big.overall.frac_above == small.overall.frac_above
    for name, s in small.per_tensor.items():
        assert big.per_tensor[name].median == s.median or (math.isnan(s.median) and math.isnan(big.per_tensor[name].median))


def test_one_weight_of_1e20_gives_a_drift_spectrum(tmp_path):
    weights = fabricated_weights(UNEVEN)
    weights[3]["model.layers.0.mlp.up_proj.weight"][0, 0] = 1e20  # finite, but its square overflows float32
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w)) for s, w in zip(UNEVEN, weights)]
    traj = load_trajectory(pairs, progress=False)
    res = weight_linearity(traj, LinearityConfig(chunk_elems=777), progress=False)
    X = np.concatenate([stored_values(traj.dirs, n) for n in traj.tensors], axis=1)  # [T, P]
    sv = np.linalg.svd(X - X.mean(0), compute_uv=False)
    np.testing.assert_allclose(res.drift.explained, sv**2 / (sv**2).sum(), atol=1e-9)
    assert res.drift.first == pytest.approx(1.0)  # the outlier is all the variance there is
    with pytest.raises(ValueError, match="Gram matrix of the weight trajectory is not finite"):
        drift_spectrum(np.full((3, 3), np.inf))


def test_gram_in_float64_when_float32_products_overflow():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 1500)).astype(np.float32)
    w[2, 700] = 3e19
    acc = ChunkAccumulator(5, n_threads=2)
    chunk_stats(w.view(np.int32), np.arange(5), acc, min_range=0.0, min_distinct=0, threshold=0.7, gram=True)
    acc.close()
    d = w.astype(np.float64) - w[0]
    np.testing.assert_allclose(acc.gram_matrix(), d @ d.T, rtol=1e-12)
