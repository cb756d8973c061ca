"""Periodic re-grounding: bad inputs, the horizon rule, speed-up arithmetic on synthetic curves, and the loop on a
tiny model (virtual-step ledger, extrapolated weights, optimizer keep/reset, resuming at the last block)."""

import ast
import importlib
import json
import math
import shutil
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import rlvr_nb.regrounding
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.experiments.rl_extra import Curve, budget_rows, models_at_real_steps, speedup_rows
from rlvr_nb.grpo import RLConfig
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.regrounding import (RegroundConfig, accuracy_at_budgets, block_rl_config, next_horizon, read_ledger,
                                 regrounding_alpha, run_regrounding, speedup, steps_to_target,
                                 validate_reground_config)
from rlvr_nb.tasks import AdditionTask, TaskConfig

TINY = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32)
TASK = TaskConfig(digits=2, n_eval=16)
RL = RLConfig(steps=1, prompts_per_step=4, group_size=4, lr=1e-3, eval_problems=4, max_new_tokens=4)


@pytest.fixture(autouse=True)
def partial_credit(monkeypatch):
    """An untrained model never answers exactly: reward a correct first digit so that weights move."""
    monkeypatch.setattr(AdditionTask, "reward", staticmethod(lambda r, a: float(r[:1] == a[:1])))


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    tok = build_tokenizer()
    build_model(TINY, tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def weights(d):
    return load_file(str(d / "model.safetensors"))


def steps_of(block_dir):
    return [s for s, _ in find_checkpoints(block_dir, "rlvr-nb", allow_empty=True)]


# ---------------------------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("kwargs, match", [
    ({"m": 0}, "m .* must be > 0"), ({"m": -3}, "m .* must be > 0"), ({"n": -1}, "n .* must be >= 0"),
    ({"m": 50, "budget": 40}, "smaller than one block"), ({"optimizer": "rescale"}, "optimizer must be one of"),
    ({"horizon": "r2", "m": 10, "r2_checkpoints": 4}, "multiple of r2_checkpoints - 1"),
    ({"horizon": "adaptive"}, "horizon must be one of"),
])
def test_bad_inputs_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_reground_config(RegroundConfig(**kwargs))


def test_bad_inputs_fail_before_training(tmp_path, init_dir):
    with pytest.raises(ValueError, match="smaller than one block"):
        run_regrounding(RegroundConfig(m=4, n=4, budget=3), RL, init_dir, tmp_path / "r", TASK, progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="optimizer='keep' needs the embedded trainer"):
        run_regrounding(RegroundConfig(m=2, n=2, budget=2), RL, init_dir, tmp_path / "r", TASK, trainer="verl")
    with pytest.raises(FileNotFoundError, match="init_dir"):
        run_regrounding(RegroundConfig(m=2, n=2, budget=2), RL, tmp_path / "nope", tmp_path / "r", TASK)


def test_alpha_seeds_and_block_configs():
    assert regrounding_alpha(20, 100) == 6.0 and regrounding_alpha(50, 0) == 1.0
    cfg = RegroundConfig(m=20, n=20, budget=100, horizon="r2", r2_checkpoints=5)
    b0, b3 = block_rl_config(RL, cfg, 0), block_rl_config(RL, cfg, 3)
    assert (b0.steps, b0.ckpt_every, b0.seed) == (20, 5, RL.seed)  # block 0 replays standard RL
    assert b3.seed != b0.seed and b3.lr == RL.lr
    assert block_rl_config(RL, RegroundConfig(m=20), 1).ckpt_every == 20


def test_r2_guided_horizon_grows_shrinks_and_clips():
    cfg = RegroundConfig(m=40, n=40, horizon="r2", r2_high=0.6, r2_low=0.5, grow=2.0, shrink=0.5, n_max=100)
    assert next_horizon(40, 0.7, cfg) == 80
    assert next_horizon(80, 0.7, cfg) == 100  # clipped to n_max
    assert next_horizon(40, 0.55, cfg) == 40  # between the thresholds: unchanged
    assert next_horizon(40, 0.3, cfg) == 20
    assert next_horizon(1, 0.3, cfg) == 0
    assert next_horizon(0, 0.9, cfg) == 10  # restarts at m // 4
    assert next_horizon(40, math.nan, cfg) == 40


# ---------------------------------------------------------------------------------------------------- speed-up


def test_steps_to_target_on_synthetic_curves():
    steps = np.arange(0, 501, 50.0)
    acc = 0.1 + 0.001 * steps  # linear: 0.3 at step 200, 0.325 at 225
    assert steps_to_target(steps, acc, 0.3) == pytest.approx(200)
    assert steps_to_target(steps, acc, 0.325) == pytest.approx(225)
    assert steps_to_target(steps, acc, 0.325, method="first") == 250
    assert math.isnan(steps_to_target(steps, acc, 0.9))
    noisy = np.array([0.1, 0.35, 0.2, 0.4])  # first crossing, not the last
    assert steps_to_target([0, 1, 2, 3], noisy, 0.3, method="first") == 1
    with pytest.raises(ValueError, match="method"):
        steps_to_target(steps, acc, 0.3, method="last")
    with pytest.raises(ValueError, match="increasing"):
        steps_to_target([0, 2, 1], [0, 1, 2], 0.5)


def test_speedup_of_a_curve_compressed_in_time():
    f = lambda s: 0.6 - 0.4 * np.exp(-s / 300)  # noqa: E731  a saturating accuracy curve
    std_steps = np.arange(0, 1001, 50.0)
    rg_steps = np.arange(0, 401, 25.0)
    std = {0: Curve(std_steps, std_steps, f(std_steps))}
    for k in (2.0, 3.0):  # re-grounding that moves k times as fast in real steps
        rg = {"x": {0: Curve(rg_steps, k * rg_steps, f(k * rg_steps))}}
        row = speedup_rows(std, rg, target=0.45)[0]
        assert row["speed-up"] == pytest.approx(k, rel=0.03)
    slow = {"x": {0: Curve(rg_steps, rg_steps, f(0.5 * rg_steps))}}
    row = speedup_rows(std, slow, target=0.45)[0]
    assert math.isnan(row["speed-up"]) and row["note"].startswith("< ")
    assert math.isnan(speedup(math.nan, 10)) and speedup(100, 50) == 2


def test_accuracy_at_equal_budgets_and_table():
    steps = np.array([0, 100, 200.0])
    assert accuracy_at_budgets(steps, [0.1, 0.3, 0.4], [100, 150, 300]) == pytest.approx([0.3, 0.35, np.nan], nan_ok=True)
    std = {s: Curve(steps, steps, np.array([0.1, 0.2, 0.3]) + 0.01 * s) for s in (0, 1)}
    rg = {"(m, n)": {s: Curve(steps, 2 * steps, np.array([0.1, 0.3, 0.4]) + 0.01 * s) for s in (0, 1)}}
    rows = budget_rows(std, rg, [100, 200])
    assert rows[0]["setting"] == "standard RL" and rows[1]["Δ@100"] == pytest.approx(0.1)
    assert rows[1]["Δ@200"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------------- the loop


def test_loop_ledger_and_extrapolated_weights(tmp_path, init_dir):
    cfg = RegroundConfig(m=2, n=3, budget=5, optimizer="reset")  # 2 blocks; 1 step of budget left unspent
    run = run_regrounding(cfg, RL, init_dir, tmp_path / "rg", TASK, progress=False)
    ledger = read_ledger(run)
    assert [(e["kind"], e["real_step"], e["virtual_step"]) for e in ledger] == [
        ("start", 0, 0), ("rl", 2, 2), ("extrapolated", 2, 5), ("rl", 4, 7), ("extrapolated", 4, 10)]
    assert json.loads((run / "complete.json").read_text()) == {"real_steps": 4, "virtual_steps": 10}
    # W = W_start + alpha (W_end - W_start), alpha = (m + n) / m, norms copied from the block's end
    start, end = weights(run / "blocks/block_1/checkpoints/step_0"), weights(run / "blocks/block_1/checkpoints/step_2")
    out = weights(run / "models/block_1")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(out[name], start[name] + 2.5 * (end[name] - start[name]), atol=1e-6)
    assert not torch.equal(end[name], start[name])
    assert torch.equal(out["model.norm.weight"], end["model.norm.weight"])
    # block 1 starts from the extrapolated model of block 0, with a fresh optimizer ('reset')
    assert torch.equal(weights(run / "blocks/block_1/checkpoints/step_0")[name], weights(run / "models/block_0")[name])
    assert load_file(str(run / "blocks/block_1/checkpoints/step_0/training_state/optimizer.safetensors")) == {}
    at = models_at_real_steps(run, [0, 2, 4])
    assert [(r, v, d.name) for r, v, d in at] == [(0, 0, "step_0"), (2, 5, "block_0"), (4, 10, "block_1")]
    rl_models = models_at_real_steps(run, [0, 2, 4], prefer="rl")  # the blocks' ends, before extrapolation
    assert [(r, v, d.parent.parent.name + "/" + d.name) for r, v, d in rl_models[1:]] == [
        (2, 2, "block_0/step_2"), (4, 7, "block_1/step_2")]
    with pytest.raises(ValueError, match="no model at real step 3"):
        models_at_real_steps(run, [3])
    with pytest.raises(FileExistsError, match="resume=True"):
        run_regrounding(cfg, RL, init_dir, run, TASK, progress=False)
    with pytest.raises(ValueError, match="regrounding.n: 3 -> 4"):
        run_regrounding(RegroundConfig(m=2, n=4, budget=5, optimizer="reset"), RL, init_dir, run, TASK, resume=True)


def test_keep_carries_the_optimizer_into_the_next_block(tmp_path, init_dir):
    run = run_regrounding(RegroundConfig(m=2, n=2, budget=4, optimizer="keep"), RL, init_dir, tmp_path / "rg", TASK,
                          progress=False)
    prev = load_file(str(run / "blocks/block_0/checkpoints/step_2/training_state/optimizer.safetensors"))
    kept = load_file(str(run / "blocks/block_1/checkpoints/step_0/training_state/optimizer.safetensors"))
    assert prev and set(prev) == set(kept) and all(torch.equal(prev[k], kept[k]) for k in prev)
    after = load_file(str(run / "blocks/block_1/checkpoints/step_2/training_state/optimizer.safetensors"))
    step_keys = [k for k in after if k.endswith(".step")]
    assert step_keys and all(after[k].item() == 4 for k in step_keys)  # AdamW's step count went on: 2 + 2


@pytest.mark.parametrize("optimizer", ["keep", "reset"])
def test_interrupted_run_resumes_at_its_last_complete_block(tmp_path, init_dir, optimizer):
    cfg = RegroundConfig(m=2, n=2, budget=6, optimizer=optimizer)
    whole = run_regrounding(cfg, RL, init_dir, tmp_path / "whole", TASK, progress=False)
    cut = run_regrounding(cfg, RL, init_dir, tmp_path / "cut", TASK, progress=False, stop_after=3)  # killed in block 1
    assert {e["block"] for e in read_ledger(cut)} == {0} and not (cut / "complete.json").exists()
    assert steps_of(cut / "blocks/block_1") == [0]  # block 1 got no further than its start
    run_regrounding(cfg, RL, init_dir, cut, TASK, resume=True, progress=False)
    assert read_ledger(cut) == read_ledger(whole)
    a, b = weights(whole / "models/block_2"), weights(cut / "models/block_2")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_r2_guided_horizon_in_the_loop(tmp_path, init_dir):
    cfg = RegroundConfig(m=4, n=4, budget=8, horizon="r2", r2_checkpoints=3, r2_high=0.99, r2_low=0.98)
    run = run_regrounding(cfg, RL, init_dir, tmp_path / "rg", TASK, progress=False)
    assert steps_of(run / "blocks/block_0") == [0, 2, 4]
    ends = [e for e in read_ledger(run) if "next_n" in e]
    assert len(ends) == 2 and all(0 <= e["block_r2"] <= 1 for e in ends)
    assert ends[0]["next_n"] == next_horizon(4, ends[0]["block_r2"], cfg) == ends[1]["n"]
    assert ends[1]["virtual_step"] == 4 + 4 + 4 + ends[1]["n"]


def test_block_checkpoints_and_r2_thresholds():
    with pytest.raises(ValueError, match="ckpt_every must divide m"):
        validate_reground_config(RegroundConfig(m=50, ckpt_every=20))
    assert block_rl_config(RL, RegroundConfig(m=100, n=100, budget=200, ckpt_every=50), 0).ckpt_every == 50
    from rlvr_nb.regrounding import r2_for_drift_to_noise

    r0, r1, r2 = (r2_for_drift_to_noise(lam, 5) for lam in (0.0, 1.0, 2.0))
    assert 0.5 < r0 < 0.56 and r0 < r1 < r2 < 0.95  # pure random walk at 5 checkpoints: median R^2 ~0.53


def test_speedup_summary_pivots_seeds():
    from rlvr_nb.experiments.rl_extra import speedup_summary

    f = lambda s: 0.6 - 0.4 * np.exp(-s / 300)  # noqa: E731
    std_steps, rg_steps = np.arange(0, 1001, 50.0), np.arange(0, 401, 25.0)
    std = {s: Curve(std_steps, std_steps, f(std_steps)) for s in (0, 1)}
    rg = {"fast": {0: Curve(rg_steps, 2 * rg_steps, f(2 * rg_steps)), 1: Curve(rg_steps, rg_steps, f(0.5 * rg_steps))}}
    (row,) = speedup_summary(speedup_rows(std, rg, target=0.45))
    first, second = row["speed-up per seed"].split(" / ")
    assert float(first) == pytest.approx(2.0, rel=0.03) and second.startswith("<")
    assert row["median over seeds reaching it"] == pytest.approx(2.0, rel=0.03)


def test_verl_blocks_are_successive_fresh_verl_runs(tmp_path, init_dir, monkeypatch):
    """trainer='verl': each block is one `run_verl` call from the current model (a fake verl here, which writes
    the ingested layout: step_0 = the start model, step_m = it perturbed, each with its trainer_state.json), the
    block trainer `train_block_verl` passed in as rlvr_nb.experiments.rl_extra does."""
    import rlvr_nb.backends.verl_launcher as vl

    calls = []

    def fake_run_verl(cfg, dry_run=False, progress=True):
        calls.append(cfg)
        for step, shift in ((0, 0.0), (cfg.steps, 0.01)):
            d = Path(cfg.output_dir) / "checkpoints" / f"step_{step}"
            shutil.copytree(cfg.model_path, d)
            w = weights(d)
            save_file({k: v + shift if "norm" not in k else v for k, v in w.items()}, str(d / "model.safetensors"),
                      metadata={"format": "pt"})
            (d / "trainer_state.json").write_text(json.dumps({"step": step}))

    monkeypatch.setattr(vl, "run_verl", fake_run_verl)
    cfg = RegroundConfig(m=3, n=3, budget=6, optimizer="reset")
    with pytest.raises(ValueError, match="needs its block trainer"):
        run_regrounding(cfg, RL, init_dir, tmp_path / "rg", TASK, trainer="verl", progress=False)
    run = run_regrounding(cfg, RL, init_dir, tmp_path / "rg", TASK, trainer="verl", progress=False,
                          train_block=partial(vl.train_block_verl, train_data=None, n_gpus=1))
    assert [(c.steps, c.seed, c.embedded_digits) for c in calls] == [(3, 0, 2), (3, 1000, 2)]
    assert calls[1].model_path == str(run / "models/block_0")  # block 1 starts from the extrapolated model
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(weights(run / "models/block_1")[name] - weights(init_dir)[name],
                          torch.full_like(weights(init_dir)[name], 0.04), atol=1e-5)  # 2 x (0.01 x alpha 2)


def test_ensure_regrounding_run_caches_by_config(tmp_path, init_dir, monkeypatch):
    from rlvr_nb.embedded import EmbeddedConfig
    from rlvr_nb.experiments.rl_extra import ensure_regrounding_run

    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path))
    emb = EmbeddedConfig(model=TINY, task=TASK)
    cfg = RegroundConfig(m=2, n=2, budget=2)
    run = ensure_regrounding_run(cfg, RL, emb, progress=False, init_dir=init_dir)
    assert run.parent == tmp_path and (run / "complete.json").exists()
    stamp = (run / "ledger.jsonl").stat().st_mtime_ns
    assert ensure_regrounding_run(cfg, RL, emb, progress=False, init_dir=init_dir) == run  # found, not retrained
    assert (run / "ledger.jsonl").stat().st_mtime_ns == stamp
    assert ensure_regrounding_run(replace(cfg, n=3), RL, emb, progress=False, init_dir=init_dir) != run


def test_extrapolation_jump_is_measured_at_boundaries_only():
    from rlvr_nb.experiments.rl_extra import extrapolation_jump

    steps = np.array([0, 50, 100.0])
    rl = Curve(steps, np.array([0, 50, 100.0]), np.array([0.2, 0.3, 0.4]))
    newest = Curve(steps, np.array([0, 100, 100.0]), np.array([0.2, 0.1, 0.4]))  # a jump at 50 only
    assert extrapolation_jump(newest, rl) == pytest.approx(-0.2)
    assert math.isnan(extrapolation_jump(rl, rl))


def test_cache_hashes_of_existing_runs_are_unchanged(tmp_path, monkeypatch):
    """The run directories of the cached runs keep the names the previous code gave them (pinned values,
    computed with the code before the study moved to rlvr_nb.experiments.rl_extra)."""
    import rlvr_nb.experiments.rl_extra as rx
    from rlvr_nb.embedded import EmbeddedConfig

    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path))
    monkeypatch.setattr(rx, "run_regrounding", lambda *a, **k: None)
    monkeypatch.setattr(rx, "run_verl_into", lambda *a, **k: None)
    emb = EmbeddedConfig(model=TINY, task=TASK)
    assert rx.ensure_regrounding_run(RegroundConfig(m=2, n=2, budget=2), RL, emb, progress=False,
                                     init_dir="/fixed/init").name == "reground-529e0e033f"
    assert rx.ensure_regrounding_run(RegroundConfig(m=2, n=2, budget=2, optimizer="reset"), RL, emb, progress=False,
                                     trainer="verl", init_dir="/fixed/init").name == "reground-25f2a90d0c"
    assert rx.ensure_verl_standard_run(RL, "/fixed/model", progress=False).name == "verl-rl-9efe57c685"


def test_regrounding_imports_no_backend(tmp_path, init_dir, monkeypatch):
    """rlvr_nb.regrounding is a top-level library module: it imports (and runs) with rlvr_nb.backends blocked,
    and names no backend, experiment or notebook module anywhere, not even inside a function."""
    tree = ast.parse(Path(rlvr_nb.regrounding.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith(("rlvr_nb.backends", "rlvr_nb.experiments", "rlvr_nb.notebook"))]
    original = sys.modules["rlvr_nb.regrounding"]
    for name in [k for k in sys.modules if k.startswith("rlvr_nb.backends") or k == "rlvr_nb.regrounding"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rlvr_nb.backends", None)  # import rlvr_nb.backends... -> ImportError
    rg = importlib.import_module("rlvr_nb.regrounding")
    try:
        run = rg.run_regrounding(rg.RegroundConfig(m=2, n=2, budget=2, optimizer="reset"), RL, init_dir,
                                 tmp_path / "rg", TASK, progress=False)
        assert (run / "complete.json").exists()
        assert not [k for k, v in sys.modules.items() if k.startswith("rlvr_nb.backends.") and v is not None]
    finally:
        rlvr_nb.regrounding = original  # the package attribute too (sys.modules is restored by monkeypatch)
