"""The one checkpoint layer: discovery in every layout, completeness, steps, headers, and writes that never
put an input at risk. Each data-loss case here destroyed or corrupted files before the layer existed."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import struct
from pathlib import Path

import pytest

from rlvr_nb.checkpoint_files import (CheckpointError, find_checkpoints, parse_step, read_safetensors_header,
                                      read_step, scan_checkpoints)
from rlvr_nb.checkpoint_writes import WRITTEN, atomic_dir, atomic_file, refuse_overlap, remove_stale_temps
from rlvr_nb.checkpoints import read_metrics, run_lock, save_checkpoint
from rlvr_nb.extrapolate import extrapolate_weights
from rlvr_nb.trajectory import load_trajectory
from trajectory_fixtures import fabricated_weights, make_run, small_model_and_tokenizer, write_hf_dir


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes (what must stay untouched)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Discovery


@pytest.mark.parametrize("layout,expect", [("ours", "rlvr-nb"), ("flat", "rlvr-nb"), ("trl", "hf"),
                                           ("trl_sharded", "hf"), ("verl", "verl")])
def test_every_layout_is_found_with_its_steps(tmp_path, layout, expect):
    run = make_run(tmp_path / "run", layout)
    found = scan_checkpoints(run)
    assert [c.step for c in found] == [0, 100, 200, 300, 500] and {c.layout for c in found} == {expect}
    assert [s for s, _ in find_checkpoints(run)] == [0, 100, 200, 300, 500]


def test_non_ascii_digits_are_not_steps(tmp_path):
    assert parse_step("checkpoint-33") == 33 and parse_step("checkpoint-٣٣") is None and parse_step("step_３") is None
    run = make_run(tmp_path / "run", "trl", steps=(0, 10, 20))
    (run / "checkpoint-10").rename(run / "checkpoint-١٠")  # Arabic-Indic digits: was read as step 10
    assert [s for s, _ in find_checkpoints(run)] == [0, 20]


def test_two_layouts_in_one_directory_are_an_error_unless_one_is_chosen(tmp_path):
    run = make_run(tmp_path / "run", "trl", steps=(0, 100, 200), seed=0)
    make_run(run, "verl", steps=(0, 100, 200, 300), seed=1)  # another seed's verl run, same directory
    with pytest.raises(CheckpointError, match=r"2 layouts \(hf: .*checkpoint-0 .*verl: .*global_step_0"):
        load_trajectory(run, progress=False)
    assert load_trajectory(run, layout="hf", progress=False).steps == [0, 100, 200]
    assert load_trajectory(run, layout="verl", progress=False).steps == [0, 100, 200, 300]


def test_fsdp_only_verl_step_is_one_error_with_the_merge_command(tmp_path):
    run = make_run(tmp_path / "run", "verl", steps=(0, 100, 200))
    for f in (run / "global_step_200" / "actor" / "huggingface").iterdir():
        f.unlink()
    with pytest.raises(CheckpointError, match=r"(?s)FSDP shards .*verl.model_merger merge --backend fsdp"):
        scan_checkpoints(run)


def test_only_complete_checkpoints_count(tmp_path):
    # TRL writes trainer_state.json after the weights; verl bumps its tracker after the checkpoint
    run = make_run(tmp_path / "trl", "trl", steps=(0, 10, 20, 30))
    (run / "checkpoint-30" / "trainer_state.json").unlink()
    assert [s for s, _ in find_checkpoints(run)] == [0, 10, 20]
    with pytest.warns(UserWarning, match="not marked complete.*checkpoint-30"):
        assert load_trajectory(run, progress=False).steps == [0, 10, 20]
    verl = make_run(tmp_path / "verl", "verl", steps=(0, 10, 20, 30))
    (verl / "latest_checkpointed_iteration.txt").write_text("20")
    for f in (verl / "global_step_30" / "actor" / "huggingface").iterdir():
        f.unlink()  # being written: not an FSDP-only error, just not there yet
    assert [s for s, _ in find_checkpoints(verl)] == [0, 10, 20]


def test_read_step_sources(tmp_path):
    run = make_run(tmp_path / "run", "verl", steps=(0, 7, 9))
    assert read_step(run / "global_step_7" / "actor" / "huggingface") == 7
    d = write_hf_dir(tmp_path / "x", fabricated_weights([0])[0], step=42)
    assert read_step(d) == 42
    with pytest.raises(CheckpointError, match=r"cannot tell the step of .*plain: no trainer_state.json"):
        read_step(write_hf_dir(tmp_path / "plain", fabricated_weights([0])[0]))


# ---------------------------------------------------------------------------------------------
# Headers


def write_header(path: Path, header) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 64)
    return path


@pytest.mark.parametrize("header,why", [
    ([1, 2, 3], "a JSON list, not an object"),
    ({"w": "F32"}, "entry of tensor 'w' is not"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0]}}, "entry of tensor 'w' is not"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, "8 bytes for shape"),
    ({"w": {"dtype": "Q9", "shape": [4], "data_offsets": [0, 16]}}, "unknown dtype Q9"),
    ({"w": {"dtype": "F32", "shape": [40], "data_offsets": [0, 160]}}, "truncated safetensors file"),
])
def test_bad_headers_are_one_error_naming_the_file(tmp_path, header, why):
    f = write_header(tmp_path / "model.safetensors", header)
    with pytest.raises(CheckpointError, match=why) as e:
        read_safetensors_header(f)
    assert str(f) in str(e.value)


def test_corrupt_input_of_extrapolation_is_named(tmp_path):
    a = write_hf_dir(tmp_path / "a", fabricated_weights([0])[0], step=0)
    b = write_hf_dir(tmp_path / "b", fabricated_weights([1])[0], step=1)
    (b / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")  # was OverflowError / MemoryError
    with pytest.raises(CheckpointError, match=r"corrupt safetensors file .*b/model.safetensors"):
        extrapolate_weights(a, b, tmp_path / "out", alpha=2.0, progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Writes


def test_extrapolation_into_a_trl_output_directory_deletes_nothing(tmp_path):
    run = make_run(tmp_path / "trl", "trl", steps=(0, 100, 200))
    before = tree_digest(run)
    for out in (run, run / "checkpoint-200", run / "checkpoint-200" / "sub"):
        with pytest.raises(ValueError, match="out_dir .* (contains the input|is one of the inputs|lies inside)"):
            extrapolate_weights(run / "checkpoint-0", run / "checkpoint-200", out, alpha=1.5, overwrite=True,
                                progress=False)
    assert tree_digest(run) == before  # 22 files were deleted here, both inputs among them


def test_overwrite_replaces_only_what_we_wrote(tmp_path):
    a = write_hf_dir(tmp_path / "a", fabricated_weights([0])[0], step=0)
    b = write_hf_dir(tmp_path / "b", fabricated_weights([1])[0], step=1)
    out = extrapolate_weights(a, b, tmp_path / "out", alpha=2.0, progress=False)
    assert (out / WRITTEN).is_file()
    extrapolate_weights(a, b, out, alpha=3.0, overwrite=True, progress=False)  # ours: replaced
    assert json.loads((out / "extrapolation.json").read_text())["alpha"] == 3.0
    (out / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write .*my_notes.txt"):
        extrapolate_weights(a, b, out, alpha=4.0, overwrite=True, progress=False)
    assert (out / "my_notes.txt").read_text() == "mine"
    assert json.loads((out / "extrapolation.json").read_text())["alpha"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no temporary directory left


def test_nan_weights_do_not_pass_through_extrapolation(tmp_path):
    w = fabricated_weights([0, 1])
    name = "model.layers.0.mlp.up_proj.weight"
    w[1][name][0, 0] = float("nan")
    a = write_hf_dir(tmp_path / "a", w[0], step=0)
    b = write_hf_dir(tmp_path / "b", w[1], step=1)
    with pytest.raises(ValueError, match=f"tensor {name} .* not finite"):
        extrapolate_weights(a, b, tmp_path / "out", alpha=2.0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_refuse_overlap_cases(tmp_path):
    (tmp_path / "in" / "ck").mkdir(parents=True)
    inputs = [tmp_path / "in" / "ck"]
    for target, why in ((tmp_path / "in" / "ck", "is one of the inputs"), (tmp_path / "in", "contains the input"),
                        (tmp_path / "in" / "ck" / "model.safetensors", "lies inside the input")):
        with pytest.raises(ValueError, match=why):
            refuse_overlap(target, inputs)
    (tmp_path / "link").symlink_to(tmp_path / "in" / "ck")
    with pytest.raises(ValueError, match="is one of the inputs"):
        refuse_overlap(tmp_path / "link", inputs)
    refuse_overlap(tmp_path / "in" / "other", inputs)  # a sibling is fine


def test_atomic_file_keeps_the_target_on_error(tmp_path):
    target = tmp_path / "t.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_stale_temporaries_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    dead = 2**22 + 12345  # beyond pid_max on this machine: no such process
    stale = [ckpts / f".tmp_step_50_{dead}", ckpts / f".step_50.rlvr-nb-tmp-{dead}-0123abcd",
             tmp_path / ".extra_800.tmp-89abcdef"]
    live = ckpts / f".step_60.rlvr-nb-tmp-{os.getpid()}-0123abcd"  # a write in progress here: kept
    for d in stale + [live]:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 100)
    (ckpts / "notes.txt").write_text("user file")  # not ours: kept
    model, tok = small_model_and_tokenizer()
    save_checkpoint(tmp_path / "run", 100, model, tok, {})
    assert not stale[0].exists() and not stale[1].exists() and live.exists() and (ckpts / "notes.txt").exists()
    assert remove_stale_temps(tmp_path) == [stale[2]]


def test_atomic_dir_refuses_an_existing_directory_it_did_not_write(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_dir(tmp_path / "out"):
            pass
    with pytest.raises(FileExistsError, match="did not write"):
        with atomic_dir(tmp_path / "out", replace=True):
            pass
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


# ---------------------------------------------------------------------------------------------
# Training locks


def _hold_lock(run: str, ready, release) -> None:
    with run_lock(Path(run), wait=False):
        ready.set()
        release.wait(30)


def test_a_second_trainer_on_the_same_run_is_refused(tmp_path):
    from rlvr_nb.grpo import RLConfig, train_rl

    run = tmp_path / "rl"
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(run), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        (run).mkdir()
        (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
        with pytest.raises(RuntimeError, match="another process is training .*rl"):
            train_rl(RLConfig(steps=2), tmp_path / "init", run, progress=False)
        assert [m["step"] for m in read_metrics(run)] == [0, 1]  # was truncated by the second trainer
    finally:
        release.set()
        holder.join(30)
    with run_lock(run, wait=False):
        with run_lock(run, wait=False):  # re-entrant inside one process
            pass


def test_resume_does_not_rewrite_run_config(tmp_path):
    from rlvr_nb.grpo import RLConfig, train_rl
    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
    from rlvr_nb.tasks import TaskConfig

    init = tmp_path / "init"
    tok = build_tokenizer()
    build_model(ModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32),
                tok).save_pretrained(init)
    tok.save_pretrained(init)
    rl = RLConfig(steps=2, prompts_per_step=2, group_size=2, ckpt_every=1, eval_problems=4)
    run = train_rl(rl, init, tmp_path / "rl", TaskConfig(digits=2, n_eval=4), progress=False, stop_after=1)
    before = (run / "run_config.json").stat().st_mtime_ns, (run / "run_config.json").stat().st_ino
    train_rl(rl, init, run, TaskConfig(digits=2, n_eval=4), progress=False, resume=True)
    after = (run / "run_config.json").stat().st_mtime_ns, (run / "run_config.json").stat().st_ino
    assert before == after


def test_a_launcher_run_reads_its_ingested_copy_with_step_zero(tmp_path):
    from rlvr_nb.backends.verl_launcher import ingest_verl_checkpoints

    run = tmp_path / "run"
    make_run(run / "verl_checkpoints", "verl", steps=(0, 10, 20, 30))
    (run / "verl_checkpoints" / "global_step_0" / "actor" / "huggingface").rename(tmp_path / "init")
    import shutil

    shutil.rmtree(run / "verl_checkpoints" / "global_step_0")
    (run / "verl_checkpoints" / "latest_checkpointed_iteration.txt").write_text("30")
    (run / "launch.json").write_text(json.dumps({"config": {"model_path": str(tmp_path / "init")}}))
    assert [(s, d.name) for s, d in find_checkpoints(run)][:2] == [(0, "init"), (10, "huggingface")]
    ingest_verl_checkpoints(run / "verl_checkpoints", run, initial_model=tmp_path / "init")
    found = scan_checkpoints(run)  # both trees now: the ingested copy is the run
    assert [c.step for c in found] == [0, 10, 20, 30] and {c.layout for c in found} == {"rlvr-nb"}
