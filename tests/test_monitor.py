"""The linearity monitor: its measures on fabricated trajectories (a steady drift against a random walk),
the same entries and R^2 as the engine (`rlvr-nb linearity --sample-fraction`), the run-directory watcher on
fabricated checkpoint trees of every layout (completion markers, bare directories, files that change after
they were read, bad input), and the TrainerCallback on a fabricated TrainerState and on a tiny real TRL
GRPOTrainer run (skipped without TRL)."""

import builtins
import io
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from trajectory_fixtures import make_run

from rlvr_nb.checkpoint_files import CheckpointError, find_checkpoints
from rlvr_nb.cli import watch_main as main
from rlvr_nb.linearity import LinearityConfig, sample_indices, weight_linearity
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.monitor import LinearityCallback, LinearityMonitor, MonitorConfig, table_header, watch
from rlvr_nb.motion import extrapolation_backtest, suggest_alpha
from rlvr_nb.trajectory import load_trajectory

STEPS = [0, 100, 200, 300, 400, 500, 600, 700]
RUN_STEPS = (0, 100, 200, 300, 500, 700)


def trajectory(kind: str, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """State dicts of a tiny model along a trajectory: 'drift' (straight line plus small noise) or
    'walk' (a pure random walk)."""
    sd = build_model(ModelConfig(), build_tokenizer()).state_dict()
    g = torch.Generator().manual_seed(seed)
    direction = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in sd.items()}
    out, walk = [], {k: torch.zeros_like(v) for k, v in sd.items()}
    for i, t in enumerate(STEPS):
        if kind == "drift":
            out.append({k: v + direction[k] * i + 2e-4 * torch.randn(v.shape, generator=g) for k, v in sd.items()})
        else:
            if i:
                walk = {k: walk[k] + 1e-3 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
            out.append({k: v + walk[k] for k, v in sd.items()})
    return out


def write_tree(root: Path, layout: str, sds: list[dict], steps=STEPS) -> None:
    """Fabricated checkpoints in one of the layouts the watcher knows; ours and TRL with their writer's
    completion marker (trainer_state.json), verl without its tracker file (judged by its files)."""
    for t, sd in zip(steps, sds):
        if layout == "ours":
            d = root / "checkpoints" / f"step_{t}"
        elif layout == "trl":
            d = root / f"checkpoint-{t}"
        else:  # verl: FSDP shards plus the HF copy
            d = root / "verl_checkpoints" / f"global_step_{t}" / "actor" / "huggingface"
            d.parent.mkdir(parents=True, exist_ok=True)
            (d.parent / "model_world_size_1_rank_0.pt").write_bytes(b"not read")
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
        if layout in ("ours", "trl"):
            (d / "trainer_state.json").write_text(json.dumps({"global_step": t}))


def rows_equal(a, b) -> bool:
    return json.dumps([asdict(r) for r in a]) == json.dumps([asdict(r) for r in b])


# ----------------------------------------------------------------------------------------------------
# The measures


def test_backtest_on_an_exact_line_supports_the_largest_alpha():
    t = [0, 100, 200, 400]
    V = np.array(t, np.float64)[:, None] * np.array([[1.0, -2.0, 0.5]])  # [K, 3], exactly linear in time
    bt = extrapolation_backtest(V, t)
    assert [a for a, _ in bt] == pytest.approx([4.0, 2.0])
    assert all(s == pytest.approx(1.0) for _, s in bt)
    assert suggest_alpha(bt, 0.5) == pytest.approx((4.0, 1.0))
    assert suggest_alpha([(4.0, 0.1), (2.0, 0.3)], 0.5) == (1.0, 0.3)  # nothing supported: do not extrapolate


def test_monitor_tells_a_drift_from_a_random_walk():
    rows = {}
    for kind in ("drift", "walk"):
        m = LinearityMonitor(MonitorConfig(sample_fraction=0.05))
        for t, sd in zip(STEPS, trajectory(kind)):
            m.observe(t, sd)
        rows[kind] = m.history[-1]
        assert [r.step for r in m.history] == STEPS
        # the Sec. 4 filter asks for >= 4 distinct values per entry: R^2 exists from the 4th checkpoint on
        assert math.isnan(m.history[2].r2_median) and not math.isnan(m.history[3].r2_median)
    d, w = rows["drift"], rows["walk"]
    assert d.r2_median > 0.95 and d.r2_frac_above > 0.85
    assert w.r2_median < 0.6  # a random walk read at 8 points: ~0.47
    assert d.cos_total > 0.9 and abs(w.cos_prev) < 0.2
    assert d.alpha >= 3.5 and d.horizon_step >= 2400  # the line holds: backtests from step 200 pass
    assert w.alpha == 1.0  # no backtest of a random walk beats stopping where it is
    assert 0.8 < d.pace < 1.2


def test_monitor_same_entries_and_rows_whatever_the_arrival_order():
    sds = trajectory("drift")
    a, b = LinearityMonitor(), LinearityMonitor()
    for t, sd in zip(STEPS, sds):
        a.observe(t, sd)
    for t, sd in reversed(list(zip(STEPS, sds))):
        b.observe(t, sd)
    assert a.steps == b.steps
    np.testing.assert_array_equal(a.matrix()[0], b.matrix()[0])
    assert rows_equal(a.history, b.history)  # a late step recomputes the rows after it
    assert a.observe(100, sds[1]) is None  # a step seen before is ignored
    with pytest.raises(CheckpointError, match="step 800 lacks 1 tensor"):
        a.observe(800, {k: v for k, v in list(sds[0].items())[1:]})


def test_monitor_follows_the_engines_entries():
    sds = trajectory("drift")
    cfg = MonitorConfig(sample_fraction=0.01)
    m = LinearityMonitor(cfg)
    m.observe(0, sds[0])
    lin = cfg.linearity()
    assert lin == LinearityConfig(sample_fraction=0.01, drift=False)  # the same filters and seed as the engine
    for name, idx in m.plan.items():
        np.testing.assert_array_equal(idx, sample_indices(name, sds[0][name].numel(), lin))


def test_steps_near_2_53_give_the_same_rows_as_small_steps():
    sds = trajectory("drift")
    small, big = LinearityMonitor(), LinearityMonitor()
    for t, sd in zip(STEPS, sds):
        small.observe(t, sd)
        big.observe(2**53 + t, sd)
    for a, b in zip(small.history, big.history):
        assert b.step - 2**53 == a.step and b.horizon_step - 2**53 == a.horizon_step
        for f in ("r2_median", "r2_frac_above", "n_kept", "cos_prev", "cos_total", "pace", "skill", "alpha"):
            x, y = getattr(a, f), getattr(b, f)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-9), f


# ----------------------------------------------------------------------------------------------------
# Following run directories: the same numbers as `rlvr-nb linearity`


@pytest.mark.parametrize("layout", ["ours", "verl"])  # marked complete by the writer / judged by its files
@pytest.mark.parametrize("fraction", [0.05, None])
def test_watch_last_row_equals_linearity(tmp_path, layout, fraction):
    run = make_run(tmp_path / "run", layout, RUN_STEPS)
    m = watch(run, once=True, cfg=MonitorConfig(sample_fraction=fraction), print_fn=lambda s: None)
    res = weight_linearity(load_trajectory(run, progress=False), LinearityConfig(sample_fraction=fraction),
                           progress=False)
    last = m.history[-1]
    assert m.steps == list(RUN_STEPS) and last.step == RUN_STEPS[-1]
    assert last.n_kept == res.overall.count
    assert last.r2_median == pytest.approx(res.overall.median, abs=1e-12)
    assert last.r2_frac_above == pytest.approx(res.overall.frac_above, abs=1e-12)


def test_watch_reads_again_a_preallocated_file_once_it_is_filled(tmp_path):
    run = make_run(tmp_path / "run", "verl", RUN_STEPS)  # no tracker file: complete when its files say so
    complete = watch(shutil.copytree(run, tmp_path / "complete"), once=True, print_fn=lambda s: None).history[-1]
    f = run / "global_step_700" / "actor" / "huggingface" / "model.safetensors"
    full = f.read_bytes()
    n = 8 + int.from_bytes(full[:8], "little")
    mtime = f.stat().st_mtime_ns
    lines = []

    def stage(data: bytes, k: int):
        f.write_bytes(data)
        os.utime(f, ns=(mtime + k * 10**9, mtime + k * 10**9))  # a copy takes time: each stage a new mtime
        return watch(run, once=True, monitor=m, print_fn=lines.append)

    m = LinearityMonitor()
    stage(bytes(len(full)), 1)  # preallocated, nothing written yet: no valid header
    assert m.steps == list(RUN_STEPS[:-1]) and any("step 700: not complete yet" in s for s in lines)
    stage(full[:n] + bytes(len(full) - n), 2)  # the header written, the weights still zeros
    assert m.steps == list(RUN_STEPS) and m.history[-1].r2_median != pytest.approx(complete.r2_median, abs=1e-3)
    stage(full, 3)  # filled: the checkpoint is read again and its row recomputed
    assert any("step 700: its files changed after they were read" in s for s in lines)
    assert rows_equal([m.history[-1]], [complete])


def test_watch_follows_a_run_as_checkpoints_appear(tmp_path):
    sds = trajectory("drift")
    write_tree(tmp_path, "verl", sds[1:4], STEPS[1:4])  # verl saves no step 0: give the initial model
    init = tmp_path / "init"
    init.mkdir()
    save_file(sds[0], str(init / "model.safetensors"))
    lines = []
    m = watch(tmp_path, once=True, initial_model=init, print_fn=lines.append)
    assert m.steps == STEPS[:4] and lines[0] == table_header() and len(lines) == 5
    # a checkpoint still being written is skipped, then read once complete
    write_tree(tmp_path, "verl", sds[4:6], STEPS[4:6])
    partial = tmp_path / "verl_checkpoints" / "global_step_500" / "actor" / "huggingface" / "model.safetensors"
    full = partial.read_bytes()
    partial.write_bytes(full[: len(full) // 2])
    m = watch(tmp_path, once=True, initial_model=init, monitor=m, print_fn=lines.append)
    assert m.steps == STEPS[:5] and any("step 500: not complete yet (truncated" in line for line in lines)
    partial.write_bytes(full)
    m = watch(tmp_path, once=True, initial_model=init, monitor=m, print_fn=lines.append)
    assert m.steps == STEPS[:6]
    rows = [json.loads(line) for line in (tmp_path / "linearity_monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == STEPS[:6]
    assert (tmp_path / "linearity_monitor.png").stat().st_size > 10_000
    assert not [p for p in tmp_path.iterdir() if "rlvr-nb-tmp" in p.name]  # written through temporary files


@pytest.mark.parametrize("layout", ["ours", "trl", "verl"])
def test_watch_reads_every_layout_and_waits_for_the_writers_marker(tmp_path, layout):
    write_tree(tmp_path, layout, trajectory("drift")[:4], STEPS[:4])
    lines = []
    if layout == "trl":
        (tmp_path / "checkpoint-300" / "trainer_state.json").unlink()  # TRL writes it after the weights
    m = watch(tmp_path, once=True, print_fn=lines.append)
    expected = STEPS[:3] if layout == "trl" else STEPS[:4]
    assert m.steps == expected == [s for s, _ in find_checkpoints(tmp_path)]
    if layout == "trl":
        assert "# step 300: not complete yet: its writer has not marked it complete" in lines


def test_watch_command_line(tmp_path, capsys):
    write_tree(tmp_path, "ours", trajectory("drift")[:4], STEPS[:4])
    assert main([str(tmp_path), "--once", "--out", str(tmp_path / "mon")]) == 0
    assert "R2 med" in capsys.readouterr().out and (tmp_path / "mon" / "linearity_monitor.png").exists()


# ----------------------------------------------------------------------------------------------------
# Following run directories: bad input


def test_watch_missing_directory(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        watch(tmp_path / "missing", once=True)
    assert main([str(tmp_path / "missing"), "--once"]) == 2
    err = capsys.readouterr().err
    assert err == f"rlvr-nb watch: error: run directory {tmp_path / 'missing'} does not exist\n"


def test_fsdp_only_verl_step_is_the_same_error_as_in_linearity(tmp_path, capsys):
    run = make_run(tmp_path / "run", "verl", RUN_STEPS[:4])
    shutil.rmtree(run / "global_step_200" / "actor" / "huggingface")  # only the FSDP shards saved
    with pytest.raises(CheckpointError) as in_linearity:
        load_trajectory(run, progress=False)
    with pytest.raises(CheckpointError) as in_watch:
        watch(run, once=True, print_fn=lambda s: None)
    assert str(in_watch.value) == str(in_linearity.value) and "verl.model_merger merge" in str(in_watch.value)
    assert main([str(run), "--once"]) == 2
    assert "global_step_200 holds FSDP shards" in capsys.readouterr().err


def test_watch_two_layouts_need_a_choice(tmp_path):
    make_run(tmp_path / "run", "trl", RUN_STEPS[:4])
    make_run(tmp_path / "run", "verl", RUN_STEPS[:4], seed=1)
    with pytest.raises(CheckpointError, match="2 layouts"):
        watch(tmp_path / "run", once=True, print_fn=lambda s: None)
    assert watch(tmp_path / "run", once=True, layout="hf", print_fn=lambda s: None).steps == list(RUN_STEPS[:4])
    assert main([str(tmp_path / "run"), "--once", "--layout", "verl", "--out", str(tmp_path / "out")]) == 0


def test_nan_weights_are_an_error_row_naming_tensor_and_step(tmp_path, capsys):
    sds = trajectory("drift")[:5]
    sds[3]["model.layers.1.mlp.up_proj.weight"][2, 3] = float("nan")
    write_tree(tmp_path, "ours", sds, STEPS[:5])
    lines = []
    m = watch(tmp_path, once=True, print_fn=lines.append)
    expected = (f"# step 300: error: non-finite weights (NaN or Inf) in tensor model.layers.1.mlp.up_proj.weight of "
                f"the checkpoint at step 300 ({tmp_path / 'checkpoints' / 'step_300'}): 1 of 16384 values")
    assert expected in lines
    assert m.steps == [0, 100, 200, 400] and not math.isnan(m.history[-1].r2_median)  # not a NaN median
    rows = [json.loads(line) for line in (tmp_path / "linearity_monitor.jsonl").read_text().splitlines()]
    assert rows[3] == {"step": 300, "error": expected.split(": error: ")[1]}
    assert main([str(tmp_path), "--once", "--out", str(tmp_path / "o")]) == 2  # the error row sets the status
    assert expected in capsys.readouterr().out


def test_a_checkpoint_that_turns_bad_after_it_was_read_is_dropped(tmp_path):
    sds = trajectory("drift")[:5]
    write_tree(tmp_path, "ours", sds, STEPS[:5])
    m = watch(tmp_path, once=True, print_fn=lambda s: None)
    assert m.steps == STEPS[:5]
    sds[3]["model.norm.weight"][0] = float("nan")
    write_tree(tmp_path, "ours", sds[3:4], STEPS[3:4])  # rewritten in place, now with a NaN
    lines = []
    m = watch(tmp_path, once=True, monitor=m, print_fn=lines.append)
    assert any(s.startswith("# step 300: error: non-finite weights (NaN or Inf) in tensor model.norm.weight")
               for s in lines)
    assert m.steps == [0, 100, 200, 400] and [r.step for r in m.history] == m.steps


def deny(monkeypatch, path: Path) -> None:
    """Opening `path` fails as for a file without read permission (the tests may run as root)."""
    real = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize("layout", ["ours", "verl"])
def test_unreadable_file_is_an_error_row_naming_it(tmp_path, monkeypatch, layout):
    run = make_run(tmp_path / "run", layout, RUN_STEPS[:5])
    d = load_trajectory(run, progress=False).dirs[2]
    deny(monkeypatch, d / "model.safetensors")
    lines = []
    m = watch(run, once=True, print_fn=lines.append)
    assert f"# step 200: error: cannot read {d / 'model.safetensors'}: Permission denied" in lines
    assert m.steps == [0, 100, 300, 500]


def test_outputs_are_refused_inside_a_checkpoint(tmp_path):
    write_tree(tmp_path, "ours", trajectory("drift")[:3], STEPS[:3])
    inside = tmp_path / "checkpoints" / "step_100"
    before = sorted(p.name for p in inside.iterdir())
    with pytest.raises(ValueError, match="lies inside the input"):
        watch(tmp_path, once=True, out_dir=inside, print_fn=lambda s: None)
    assert sorted(p.name for p in inside.iterdir()) == before


# ----------------------------------------------------------------------------------------------------
# The TrainerCallback


def test_callback_on_fabricated_trainer_state(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model = build_model(ModelConfig(), build_tokenizer())
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state, control = TrainerState(), TrainerControl()
    cb = LinearityCallback(MonitorConfig(sample_fraction=0.05), print_fn=lambda s: None)
    cb.on_train_begin(args, state, control, model=model)
    g = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]
    for step in (10, 20, 30, 40):
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(d + 1e-4 * torch.randn(p.shape, generator=g))
        state.global_step = step
        cb.on_save(args, state, control, model=model)
    assert cb.monitor.steps == [0, 10, 20, 30, 40]
    assert cb.monitor.history[-1].r2_median > 0.9
    assert (tmp_path / "linearity_monitor.png").exists()
    state.is_world_process_zero = False  # other ranks do nothing
    state.global_step = 50
    cb.on_save(args, state, control, model=model)
    assert cb.monitor.steps[-1] == 40


def test_callback_keeps_copies_and_reports_nan_weights(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model = build_model(ModelConfig(), build_tokenizer())
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    state, control = TrainerState(), TrainerControl()
    lines = []
    cb = LinearityCallback(MonitorConfig(sample_fraction=None), print_fn=lines.append)  # every entry
    cb.on_train_begin(args, state, control, model=model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-2)
    state.global_step = 10
    cb.on_save(args, state, control, model=model)
    V, _ = cb.monitor.matrix()
    assert (V[1] != V[0]).all()  # step 0 was copied, not a view of the live parameters
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    state.global_step = 20
    cb.on_save(args, state, control, model=model)
    assert lines[-1].startswith("# step 20: error: non-finite weights (NaN or Inf) in tensor model.norm.weight "
                                "of the checkpoint at step 20")
    assert cb.monitor.steps == [0, 10] and 20 in cb.monitor.errors


def test_callback_in_a_tiny_trl_grpo_run(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlvr_nb.tasks import AdditionTask

    tok = build_tokenizer()
    model = build_model(ModelConfig(), tok)
    problems = AdditionTask().sample_train(16, torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})

    def reward(completions, answer, **kw):  # graded by length so that groups disagree and weights move
        return [float(len(c)) for c in completions]

    cb = LinearityCallback(print_fn=lambda s: None)
    cfg = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                     max_completion_length=5, max_steps=3, save_strategy="steps", save_steps=1, logging_steps=1,
                     report_to=[], use_cpu=True, learning_rate=1e-2, seed=0, save_only_model=True,
                     dataloader_num_workers=0, disable_tqdm=True)
    GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                callbacks=[cb]).train()
    assert cb.monitor.steps == [0, 1, 2, 3]
    V, _ = cb.monitor.matrix()
    assert (V[-1] != V[0]).any()  # the run moved the weights the callback follows
    assert not math.isnan(cb.monitor.history[-1].r2_median) or cb.monitor.history[-1].n_kept == 0
    assert (tmp_path / "linearity_monitor.png").exists()
    # the watcher reads the same run from disk (TRL saves no step 0)
    assert [s for s, _ in find_checkpoints(tmp_path)] == [1, 2, 3]
    assert watch(tmp_path, once=True, print_fn=lambda s: None).steps == [1, 2, 3]
