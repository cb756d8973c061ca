"""The linearity monitor: its measures on fabricated trajectories (a steady drift against a random walk),
the run-directory watcher on fabricated checkpoint trees of every layout, and the TrainerCallback on a
fabricated TrainerState and on a tiny real TRL GRPOTrainer run (skipped without TRL)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.monitor import (
    LinearityCallback, LinearityMonitor, MonitorConfig, extrapolation_backtest, find_checkpoints, keep_mask,
    linear_r2, main, suggest_alpha, table_header, watch)

STEPS = [0, 100, 200, 300, 400, 500, 600, 700]


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
    """Fabricated checkpoints in one of the layouts the watcher knows."""
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


# ----------------------------------------------------------------------------------------------------
# The measures


def test_linear_r2_and_filter():
    t = torch.tensor([0.0, 1, 2, 3, 4])
    line = 2 * t + 1
    V = torch.stack([line, line.flip(0), torch.tensor([0.0, 1, 0, 1, 0]), torch.ones(5)], 1)  # [K, 4]
    r2 = linear_r2(V, t)
    assert r2[0] == pytest.approx(1.0) and r2[1] == pytest.approx(1.0)
    assert r2[2] < 0.1 and r2[3] == 0.0
    keep = keep_mask(V, min_range=1e-4, min_distinct=4)
    assert keep.tolist() == [True, True, False, False]  # 2 distinct values; never moved


def test_backtest_on_an_exact_line_supports_the_largest_alpha():
    t = [0.0, 100, 200, 400]
    V = torch.tensor(t)[:, None] * torch.tensor([[1.0, -2.0, 0.5]])  # [K, 3], exactly linear in time
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


def test_monitor_same_entries_whatever_the_arrival_order():
    sds = trajectory("drift")
    a, b = LinearityMonitor(), LinearityMonitor()
    for t, sd in zip(STEPS, sds):
        a.observe(t, sd)
    for t, sd in reversed(list(zip(STEPS, sds))):
        b.observe(t, sd)
    assert a.steps == b.steps
    torch.testing.assert_close(a.matrix()[0], b.matrix()[0])
    assert a.observe(100, sds[1]) is None  # a step seen before is ignored
    with pytest.raises(ValueError, match="lacks"):
        a.observe(800, {k: v for k, v in list(sds[0].items())[1:]})


# ----------------------------------------------------------------------------------------------------
# Following run directories


@pytest.mark.parametrize("layout", ["ours", "trl", "verl"])
def test_find_checkpoints_in_every_layout(tmp_path, layout):
    write_tree(tmp_path, layout, trajectory("drift")[:3], STEPS[:3])
    (tmp_path / "checkpoint-999").mkdir()  # no weights: not a checkpoint
    assert [s for s, _ in find_checkpoints(tmp_path)] == STEPS[:3]


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
    assert m.steps == STEPS[:5] and any("not readable yet" in line for line in lines)
    partial.write_bytes(full)
    m = watch(tmp_path, once=True, initial_model=init, monitor=m, print_fn=lines.append)
    assert m.steps == STEPS[:6]
    rows = [json.loads(line) for line in (tmp_path / "linearity_monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == STEPS[:6]
    assert (tmp_path / "linearity_monitor.png").stat().st_size > 10_000


def test_watch_command_line(tmp_path, capsys):
    write_tree(tmp_path, "ours", trajectory("drift")[:4], STEPS[:4])
    m = main([str(tmp_path), "--once", "--out", str(tmp_path / "mon")])
    assert m.steps == STEPS[:4]
    assert "R2 med" in capsys.readouterr().out and (tmp_path / "mon" / "linearity_monitor.png").exists()
    with pytest.raises(FileNotFoundError):
        watch(tmp_path / "missing", once=True)


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
