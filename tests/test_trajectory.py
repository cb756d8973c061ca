"""Trajectory: every checkpoint layout, lazy reads that match safetensors' own loader, one clear error
for each bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from trajectory_fixtures import fabricated_weights, make_run, stored_values, write_hf_dir

from rlvr_nb.checkpoint_files import find_checkpoints, verl_merge_command
from rlvr_nb.trajectory import load_trajectory

STEPS = (0, 100, 200, 300, 500)


@pytest.mark.parametrize("layout", ["ours", "flat", "trl", "trl_sharded", "verl"])
def test_every_layout_is_found_and_read(tmp_path, layout):
    run = make_run(tmp_path / "run", layout, STEPS)
    traj = load_trajectory(run, progress=False)
    assert traj.steps == list(STEPS)
    name = "model.layers.1.mlp.up_proj.weight"
    expected = stored_values(traj.dirs, name)  # [T, numel] via safetensors.safe_open
    got = traj.read(name)  # bf16 bit patterns
    assert got.dtype == np.uint16 and got.shape == expected.shape
    np.testing.assert_array_equal((got.astype(np.uint32) << 16).view(np.float32), expected)
    np.testing.assert_array_equal(traj.read(name, 7, 40), got[:, 7:40])
    assert torch.equal(traj.tensor(name, 2).double().reshape(-1), torch.from_numpy(expected[2]))
    if layout == "verl":
        assert all(d.name == "huggingface" for d in traj.dirs)


def test_explicit_list_and_base_as_step_zero(tmp_path):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200, 300))
    base = run / "checkpoint-0"
    pairs = [(s, run / f"checkpoint-{s}") for s in (300, 100, 200)]  # any order
    traj = load_trajectory(pairs, base=base, progress=False)
    assert traj.steps == [0, 100, 200, 300]
    assert traj.dirs[0] == base


def test_float32_and_mixed_dtypes_are_read_as_float32(tmp_path):
    weights = fabricated_weights(STEPS)
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w, dtype=torch.float32 if s == 0 else torch.bfloat16))
             for s, w in zip(STEPS, weights)]
    traj = load_trajectory(pairs, progress=False)
    name = "model.norm.weight"
    got = traj.read(name)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stored_values(traj.dirs, name))


def test_check_finite_names_the_tensor_and_step(tmp_path):
    weights = fabricated_weights(STEPS)
    weights[3]["model.layers.0.self_attn.k_proj.bias"][2] = float("nan")
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w)) for s, w in zip(STEPS, weights)]
    traj = load_trajectory(pairs, progress=False)  # metadata is fine
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.bias.*step 300"):
        traj.check_finite(progress=False)
    with pytest.raises(ValueError, match=r"k_proj\.bias"):
        load_trajectory(pairs, check_finite=True, progress=False)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear error each


def test_missing_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_trajectory(tmp_path / "nope", progress=False)


def test_missing_checkpoint_directory_in_explicit_list(tmp_path):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200))
    with pytest.raises(FileNotFoundError, match="checkpoint-999"):
        load_trajectory([(0, run / "checkpoint-0"), (100, run / "checkpoint-100"), (999, run / "checkpoint-999")],
                        progress=False)


def test_no_checkpoints(tmp_path):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoints found"):
        find_checkpoints(tmp_path / "run")


def test_fewer_than_three(tmp_path):
    run = make_run(tmp_path / "run", "ours", (0, 100))
    with pytest.raises(ValueError, match="at least 3"):
        load_trajectory(run, progress=False)


def test_duplicate_steps(tmp_path):
    run = make_run(tmp_path / "run", "ours", (0, 100, 200))
    with pytest.raises(ValueError, match="duplicate checkpoint steps 0"):
        load_trajectory(run, base=run / "checkpoints" / "step_100", progress=False)
    d = run / "checkpoints"
    with pytest.raises(ValueError, match="duplicate checkpoint steps 100"):
        load_trajectory([(0, d / "step_0"), (100, d / "step_100"), (100, d / "step_200")], progress=False)


def test_keys_that_differ_are_named(tmp_path):
    weights = fabricated_weights(STEPS)
    del weights[2]["model.layers.1.self_attn.q_proj.bias"]
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w)) for s, w in zip(STEPS, weights)]
    with pytest.raises(ValueError, match=r"missing \['model\.layers\.1\.self_attn\.q_proj\.bias'\]"):
        load_trajectory(pairs, progress=False)


def test_shapes_that_differ_are_named(tmp_path):
    weights = fabricated_weights(STEPS)
    weights[4]["model.norm.weight"] = torch.ones(17)
    pairs = [(s, write_hf_dir(tmp_path / f"c{s}", w)) for s, w in zip(STEPS, weights)]
    with pytest.raises(ValueError, match=r"model\.norm\.weight \[16\] vs \[17\]"):
        load_trajectory(pairs, progress=False)


def test_truncated_safetensors_names_the_file(tmp_path):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200))
    f = run / "checkpoint-100" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"truncated safetensors file .*checkpoint-100/model\.safetensors"):
        load_trajectory(run, progress=False)


def test_corrupt_safetensors_names_the_file(tmp_path):
    run = make_run(tmp_path / "run", "trl_sharded", (0, 100, 200))
    f = run / "checkpoint-200" / "model-00002-of-00003.safetensors"
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"corrupt safetensors file .*checkpoint-200/model-00002-of-00003"):
        load_trajectory(run, progress=False)


def test_missing_shard_is_named(tmp_path):
    run = make_run(tmp_path / "run", "trl_sharded", (0, 100, 200))
    (run / "checkpoint-0" / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00003-of-00003"):
        load_trajectory(run, progress=False)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200))
    (run / "checkpoint-100" / "model.safetensors").unlink()
    (run / "checkpoint-100" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match="never pickle"):
        load_trajectory(run, progress=False)


def test_verl_fsdp_shards_only_names_the_merge_command(tmp_path):
    run = make_run(tmp_path / "run", "verl", (0, 100, 200))
    hf = run / "global_step_100" / "actor" / "huggingface"
    for f in hf.glob("model*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError) as err:
        load_trajectory(run, progress=False)
    msg = str(err.value)
    assert "python -m verl.model_merger merge --backend fsdp" in msg
    assert f"--local_dir {run / 'global_step_100' / 'actor'}" in msg
    assert verl_merge_command(run / "global_step_100" / "actor") in msg


def test_different_tokenizers(tmp_path):
    run = make_run(tmp_path / "run", "ours", (0, 100, 200))
    tj = run / "checkpoints" / "step_200" / "tokenizer.json"
    tok = json.loads(tj.read_text())
    tok["model"]["vocab"]["<extra>"] = len(tok["model"]["vocab"])
    tj.write_text(json.dumps(tok))
    with pytest.raises(ValueError, match="tokenizers differ"):
        load_trajectory(run, progress=False)


def test_resaved_tokenizer_with_other_formatting_is_the_same(tmp_path):
    run = make_run(tmp_path / "run", "ours", (0, 100, 200))
    tj = run / "checkpoints" / "step_100" / "tokenizer.json"
    tok = json.loads(tj.read_text())
    tok["truncation"] = {"max_length": 7}  # a field trainers change on re-saving
    tj.write_text(json.dumps(tok, indent=4))
    assert len(load_trajectory(run, progress=False)) == 3


def test_checkpoint_without_tokenizer_is_accepted(tmp_path):
    run = make_run(tmp_path / "run", "trl", (0, 100, 200))
    (run / "checkpoint-0" / "tokenizer.json").unlink()
    assert load_trajectory(run, progress=False).steps == [0, 100, 200]


def test_skip_first(tmp_path):
    run = make_run(tmp_path / "run", "ours", STEPS)
    traj = load_trajectory(run, progress=False).without_first(2)
    assert traj.steps == [200, 300, 500]
    with pytest.raises(ValueError, match="leaves 2 checkpoints"):
        traj.without_first(1)


def test_temporary_checkpoint_directories_are_ignored(tmp_path):
    run = make_run(tmp_path / "run", "ours", (0, 100, 200))
    shutil.copytree(run / "checkpoints" / "step_100", run / "checkpoints" / ".tmp_step_300_123")
    assert load_trajectory(run, progress=False).steps == [0, 100, 200]
