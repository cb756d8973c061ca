"""Every reader of the package sees the same steps of a run, whatever its layout: the checkpoint layer is
the one way in (before it, `watch` found 3 checkpoints of a launcher tree where `linearity` found none)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlvr_nb.backends.verl_launcher import ingest_verl_checkpoints
from rlvr_nb.backends.vllm_extrapolation import write_two_stack_checkpoint
from rlvr_nb.checkpoint_files import find_checkpoints, read_step
from rlvr_nb.checkpoints import list_checkpoints
from rlvr_nb.decomposition import trajectory_decomposition
from rlvr_nb.logprobs import Probe, token_linearity
from rlvr_nb.monitor import LinearityCallback, MonitorConfig, watch
from rlvr_nb.trajectory import load_trajectory
from trajectory_fixtures import make_run, small_model_and_tokenizer

STEPS = [0, 100, 200, 300, 500]
LAYOUTS = ["ours", "flat", "trl", "trl_sharded", "verl", "launcher"]


def build(tmp_path: Path, layout: str) -> Path:
    """A run in one layout; 'launcher' is the tree `rlvr_nb.backends.verl_launcher` writes, before ingestion."""
    if layout == "launcher":
        run = tmp_path / "run"
        make_run(run / "verl_checkpoints", "verl", steps=STEPS)  # verl saves no step 0: the model it started from is
        (run / "verl_checkpoints" / "global_step_0" / "actor" / "huggingface").rename(tmp_path / "init")
        shutil.rmtree(run / "verl_checkpoints" / "global_step_0")
        (run / "verl_checkpoints" / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
        (run / "launch.json").write_text(json.dumps({"config": {"model_path": str(tmp_path / "init")}}))
        return run
    run = make_run(tmp_path / "run", layout, steps=STEPS)
    if layout == "verl":
        (run / "latest_checkpointed_iteration.txt").write_text(str(STEPS[-1]))
    return run


def probes(tok) -> list[Probe]:
    return [Probe(prompt="12+34=", response_ids=tok("6400", add_special_tokens=False)["input_ids"], response_text="6400")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_reader_sees_the_same_steps(tmp_path, layout):
    run = build(tmp_path, layout)
    traj = load_trajectory(run, progress=False)
    assert traj.steps == STEPS, "linearity"
    pairs = find_checkpoints(run)
    # extrapolation reads each directory's own step (the launcher's initial model records none: it is 0 by place)
    assert [read_step(d, missing_ok=True) for _, d in pairs] == ([None] + STEPS[1:] if layout == "launcher" else STEPS)

    _, tok = small_model_and_tokenizer()
    assert token_linearity(traj, probes(tok), min_change=0.0, progress=False).steps == STEPS, "logprobs"

    ids = torch.tensor([tok("12+34=6400", add_special_tokens=False)["input_ids"]])
    changes = trajectory_decomposition(run, ids, torch.ones_like(ids), progress=False)
    assert [c.step0 for c in changes] + [changes[-1].step1] == STEPS, "decomposition"

    monitor = watch(run, once=True, out_dir=tmp_path / "mon", cfg=MonitorConfig(), print_fn=lambda s: None)
    assert monitor.steps == STEPS, "watch"

    out = write_two_stack_checkpoint(pairs[0][1], pairs[-1][1], tmp_path / "two", 1.5, t_base=pairs[0][0])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["extrapolation_t_base"], cfg["extrapolation_t_second"]) == (STEPS[0], STEPS[-1]), "vLLM writer"

    if layout in ("verl", "launcher"):
        verl_dir = run if layout == "verl" else run / "verl_checkpoints"
        init = tmp_path / "init" if layout == "launcher" else None  # what the launcher passes: its model_path
        ingested = ingest_verl_checkpoints(verl_dir, tmp_path / "ingested", initial_model=init)
        assert [s for s, _ in ingested] == STEPS == [s for s, _ in list_checkpoints(tmp_path / "ingested")], "ingestion"
    if layout in ("trl", "trl_sharded"):
        cb = LinearityCallback(MonitorConfig(), out_dir=tmp_path / "cb", print_fn=lambda s: None)
        args = SimpleNamespace(output_dir=str(run))
        for s in STEPS:  # the trainer saved checkpoint-N; parameters sharded, so it reads the directory
            cb.on_save(args, SimpleNamespace(global_step=s, is_world_process_zero=True), None, model=None)
        assert cb.monitor.steps == STEPS, "TRL callback"
