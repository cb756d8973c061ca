"""Weight motion (rlvr_nb.motion): the cosine, and the streamed directory measures against dense numpy."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from trajectory_fixtures import fabricated_weights, write_hf_dir

from rlvr_nb import motion


def flat(states, names=None):
    """All floating tensors of a state dict, in name order, as one float64 vector (the dense reference)."""
    names = sorted(states) if names is None else names
    return np.concatenate([states[n].double().numpy().ravel() for n in names if states[n].is_floating_point()])


def test_cosine_is_the_normalised_dot_product():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([-2.0, 0.5, 4.0])
    assert motion.cosine(a, b) == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-15)
    assert motion.cosine(a, 3 * a) == pytest.approx(1.0) and motion.cosine(a, -a) == pytest.approx(-1.0)
    assert motion.cosine([[1.0, 0.0]], [0.0, 2.0]) == 0.0  # any shape, flattened
    assert math.isnan(motion.cosine(a, np.zeros(3))) and math.isnan(motion.cosine_of_sums(1.0, 0.0, 4.0))
    assert motion.cosine_of_sums(2.0, 4.0, 1.0) == 1.0


def test_relative_change_is_the_norm_ratio_and_skips_integer_tensors(tmp_path):
    w0 = {"a": torch.ones(3, 4), "b": torch.full((5,), 2.0)}
    w1 = {"a": torch.ones(3, 4) + 0.5, "b": torch.full((5,), 2.0)}
    d0 = write_hf_dir(tmp_path / "0", w0, dtype=torch.float32)
    d1 = write_hf_dir(tmp_path / "1", w1, dtype=torch.float32)
    assert motion.relative_change(d0, d1) == pytest.approx(math.sqrt(12 * 0.25) / math.sqrt(12 + 5 * 4), rel=1e-12)
    assert motion.distance(d0, d1) == pytest.approx(math.sqrt(12 * 0.25), rel=1e-12)
    for d, w, step in ((d0, w0, 0), (d1, w1, 7)):  # an integer buffer that changes must not count
        save_file({**w, "ids": torch.tensor([step, step])}, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert motion.distance(d0, d1) == pytest.approx(math.sqrt(12 * 0.25), rel=1e-12)
    assert math.isnan(motion.relative_change(write_hf_dir(tmp_path / "z", {"a": torch.zeros(2)}, dtype=torch.float32),
                                             write_hf_dir(tmp_path / "z1", {"a": torch.ones(2)}, dtype=torch.float32)))


def test_streamed_measures_equal_the_dense_ones_on_bf16_and_shards(tmp_path):
    steps = (0, 10, 20)
    states = fabricated_weights(steps, seed=3, noise=1e-2)
    dirs = [write_hf_dir(tmp_path / f"s{s}", w, dtype=torch.bfloat16, shards=1 + i) for i, (s, w) in enumerate(zip(steps, states))]
    stored = [{n: t.to(torch.bfloat16) for n, t in w.items()} for w in states]  # what the files hold
    x0, x1, x2 = (flat(w) for w in stored)
    assert motion.distance(dirs[0], dirs[2]) == pytest.approx(np.linalg.norm(x2 - x0), rel=1e-12)
    assert motion.relative_change(dirs[0], dirs[1]) == pytest.approx(np.linalg.norm(x1 - x0) / np.linalg.norm(x0), rel=1e-12)
    assert motion.segment_cosine(*dirs) == pytest.approx(motion.cosine(x1 - x0, x2 - x1), rel=1e-12)
    keep = [n for n in sorted(stored[0]) if "norm" not in n]
    assert len(keep) < len(stored[0])
    assert motion.distance(dirs[0], dirs[2], include_norms=False) == pytest.approx(
        np.linalg.norm(flat(stored[2], keep) - flat(stored[0], keep)), rel=1e-12)


def test_segment_cosine_tells_a_line_from_a_walk_and_a_return(tmp_path):
    line = [write_hf_dir(tmp_path / f"line{s}", w, dtype=torch.float32)
            for s, w in zip((0, 10, 20), fabricated_weights((0, 10, 20), noise=0.0, drift=1e-1))]
    assert motion.segment_cosine(*line) == pytest.approx(1.0, abs=1e-6)
    assert motion.segment_cosine(line[0], line[2], line[0]) == pytest.approx(-1.0)  # there and back
    g = torch.Generator().manual_seed(0)
    w = fabricated_weights((0,))[0]
    walk = []
    for i in range(3):
        walk.append(write_hf_dir(tmp_path / f"walk{i}", w, dtype=torch.float32))
        w = {n: t + torch.randn(t.shape, generator=g) for n, t in w.items()}
    assert abs(motion.segment_cosine(*walk)) < 0.1  # independent steps: about orthogonal
    assert math.isnan(motion.segment_cosine(line[0], line[0], line[1]))  # the first segment has no direction


def test_directories_with_other_tensors_are_one_clear_error(tmp_path):
    d0 = write_hf_dir(tmp_path / "0", {"a": torch.ones(3, 4), "b": torch.ones(5)}, dtype=torch.float32)
    d1 = write_hf_dir(tmp_path / "1", {"a": torch.ones(3, 4)}, dtype=torch.float32)
    d2 = write_hf_dir(tmp_path / "2", {"a": torch.ones(4, 3), "b": torch.ones(5)}, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"0 and .*1 hold different tensors: \['b'\]"):
        motion.relative_change(d0, d1)
    with pytest.raises(ValueError, match=r"hold tensors of different shapes: a \[3, 4\] vs \[4, 3\]"):
        motion.segment_cosine(d0, d0, d2)
    with pytest.raises(FileNotFoundError):
        motion.distance(d0, tmp_path / "missing")
