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
    assert steps_to_target(steps, acc, 0.325) == 250  # the first evaluated step: no crossing is invented
    assert steps_to_target(steps, acc, 0.325, method="interpolate") == pytest.approx(225)
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
    assert rows[0]["setting"] == "standard RL" and rows[1]["100 steps"] == "0.305 ± 0.005"
    assert rows[1]["Δ@100"].startswith(f"{100 * (0.305 / 0.205 - 1):+.1f}%")  # seed means, in percent


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


def test_speedup_summary_with_a_bootstrap_over_seeds():
    from rlvr_nb.experiments.rl_extra import best_speedup, speedup_summary

    f = lambda s: 0.6 - 0.4 * np.exp(-s / 300)  # noqa: E731  reaches 0.45 at step 294
    std_steps, rg_steps = np.arange(0, 1001, 50.0), np.arange(0, 201, 50.0)
    std = {s: Curve(std_steps, std_steps, f(std_steps)) for s in (0, 1, 2)}
    fast = {s: Curve(rg_steps, 2 * rg_steps, f(k * rg_steps)) for s, k in ((0, 2.0), (1, 3.0), (2, 6.0))}
    slow = {0: Curve(rg_steps, rg_steps, f(rg_steps)), 1: Curve(rg_steps, rg_steps, f(2 * rg_steps)),
            2: Curve(rg_steps, rg_steps, f(0.5 * rg_steps))}
    ups = speedup_summary(std, {"fast": fast, "slow": slow}, target=0.45)
    up, down = ups
    # first crossings at evaluated steps: standard 300; fast seeds at 150 / 100 / 50
    assert [up.per_seed[s] for s in (0, 1, 2)] == [2.0, 3.0, 6.0] and up.std_steps == {0: 300, 1: 300, 2: 300}
    assert up.ci[0] >= 2.0 and up.ci[1] <= 6.0 and up.ci[0] < up.ci[1]  # resamples lie between the extreme seeds
    assert up.passes(2.0) == [True, True, True] and up.passes(2.5) == [False, True, True]
    assert up.row()["per seed"] == "2.00 / 3.00 / 6.00"
    # seeds 0 and 2 never reach the target in 200 steps: a bound, and draws of them count as 0
    assert math.isnan(down.per_seed[0]) and down.per_seed[1] == 2.0 and down.passes(2.0) == [False, True, False]
    assert down.ci[0] == 0.0 and down.row()["per seed"].startswith("<1.50 / 2.00")
    assert up.row()["95% bootstrap over seeds"] == f"[{up.ci[0]:.2f}, {up.ci[1]:.2f}]"
    assert math.isnan(down.value) and down.ci_text() == "none (not reached)"  # seed-mean curves never reach it:
    # a bound, not an interval of zeros
    assert best_speedup(ups) is up
    again = speedup_summary(std, {"fast": fast}, target=0.45)[0]
    assert again.ci == up.ci  # the bootstrap is seeded: the same interval every time
    (start,) = speedup_summary(std, {"fast": fast}, target=0.1)  # the start already reaches it: nothing measured
    assert math.isnan(start.value) and start.text() == "n/a (the target is not above the start)"
    assert math.isnan(speedup(0, 0)) and speedup(50, 0) == math.inf


def test_seed_bootstrap():
    from rlvr_nb.regrounding import seed_bootstrap

    values = np.array([1.0, 2.0, 3.0])
    lo, hi = seed_bootstrap(lambda idx: values[idx].mean(), 3)
    assert 1.0 <= lo < 2.0 < hi <= 3.0
    assert seed_bootstrap(lambda idx: values[idx].mean(), 3) == (lo, hi)
    assert seed_bootstrap(lambda idx: 5.0, 1) == (5.0, 5.0)  # one seed: the value itself
    assert seed_bootstrap(lambda idx: math.nan if 2 in idx else values[idx].mean(), 3)[1] <= 2.0  # NaN draws left out
    assert all(math.isnan(x) for x in seed_bootstrap(lambda idx: math.nan, 3))
    with pytest.raises(ValueError, match="n_seeds >= 1"):
        seed_bootstrap(lambda idx: 0.0, 0)


def test_relative_gain_and_table2_in_percent():
    from rlvr_nb.experiments.rl_extra import relative_gain
    from rlvr_nb.notebook.report import markdown_table

    steps = np.array([0, 50, 100.0])
    std = {s: Curve(steps, steps, np.array([0.2, 0.25, 0.3])) for s in (0, 1)}
    rg = {0: Curve(steps, 2 * steps, np.array([0.2, 0.3, 0.33])), 1: Curve(steps, 2 * steps, np.array([0.2, 0.25, 0.36]))}
    pct, (lo, hi), per = relative_gain(std, rg, 100)
    assert pct == pytest.approx(15.0) and per == {0: pytest.approx(10.0), 1: pytest.approx(20.0)}
    assert 10.0 - 1e-9 <= lo < pct < hi <= 20.0 + 1e-9
    rows = budget_rows(std, {"(m, n)": rg}, [50, 100])
    assert rows[0]["Δ@100"] == "–" and rows[1]["Δ@100"].startswith("+15.0% [")
    table = markdown_table(rows).data.splitlines()
    assert "Δ@50" in table[0] and "Δ@100" in table[0] and "+10.0% [" in table[3]  # the Δ column is shown


def test_standard_rl_seeds_are_the_cached_profile_runs():
    """06's standard-RL seed s at `cpu` is exactly the run of 01 (s = 0) and of 02/03's seed study: the same
    config hash as profiles.rl_config("cpu", seed=s), so it is found in runs/, never retrained."""
    from rlvr_nb.embedded import config_hash
    from rlvr_nb.experiments.rl_extra import standard_configs
    from rlvr_nb.notebook import profiles

    knobs, emb = profiles.PARAMS["06_rl_extra"]["cpu"], profiles.embedded_config("cpu")
    cfgs = standard_configs(profiles.rl_config("cpu", **knobs["rl_recipe"]), knobs["seeds"], knobs["std_steps"])
    assert sorted(cfgs) == [0, 1, 2]
    for s, cfg in cfgs.items():
        assert config_hash(emb, cfg) == config_hash(emb, profiles.rl_config("cpu", seed=s))


def _fake_run(root: Path, m: int, blocks: int, inner: int | None = None) -> Path:
    """A re-grounding run's ledger (no weights): blocks of m steps, RL checkpoints every `inner` steps inside."""
    entries, virtual = [{"block": 0, "kind": "start", "real_step": 0, "virtual_step": 0, "path": "start"}], 0
    for b in range(blocks):
        for k in range(inner or m, m + 1, inner or m):
            entries.append({"block": b, "kind": "rl", "real_step": b * m + k, "virtual_step": virtual + k, "path": f"rl{b}_{k}"})
        virtual += 2 * m
        entries.append({"block": b, "kind": "extrapolated", "real_step": (b + 1) * m, "virtual_step": virtual,
                        "path": f"x{b}", "n": m, "alpha": 2.0, "block_r2": None, "next_n": m})
    root.mkdir(parents=True)
    (root / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root


def test_block_end_crossing_is_not_interpolated(tmp_path):
    """A run is evaluated at its block ends only (not at checkpoints inside a block), and it reaches the target
    at the first evaluated model at or above it, not at a crossing interpolated between two evaluations."""
    from rlvr_nb.experiments.rl_extra import models_at_block_ends

    run = _fake_run(tmp_path / "rg", m=100, blocks=2, inner=50)
    ends = models_at_block_ends(run)
    assert [(r, v, d.name) for r, v, d in ends] == [(0, 0, "start"), (100, 200, "x0"), (200, 400, "x1")]
    assert [d.name for _, _, d in models_at_block_ends(run, "rl")] == ["start", "rl0_100", "rl1_100"]
    with pytest.raises(ValueError, match="no ledger entries"):
        models_at_block_ends(tmp_path)
    steps = np.array([0, 100, 200.0])
    rg = {"x": {0: Curve(steps, 2 * steps, np.array([0.2, 0.29, 0.4]))}}  # crosses 0.3 just after 100
    std = {0: Curve(np.arange(0, 401, 50.0), np.arange(0, 401, 50.0), np.linspace(0.2, 0.4, 9))}  # 0.3 at 200
    row = speedup_rows(std, rg, target=0.3)[0]
    assert row["re-grounding steps"] == 200 and row["standard steps"] == 200 and row["speed-up"] == 1.0


def test_study_table_recomputes_reads_and_refuses_another_study(tmp_path, init_dir):
    """The study at tiny size through `regrounding_table`: standard RL first, the target from it alone, then the
    re-grounding runs evaluated at every block end in both readings; written, read back without computing, and
    refused (one error naming the fields and the command) when asked for another study."""
    from rlvr_nb.evaluate import EvalConfig
    from rlvr_nb.experiments.rl_extra import (accuracy_curve, compute_regrounding_table, curves_from_table,
                                              regrounding_table, standard_configs, study_record)
    from rlvr_nb.grpo import train_rl

    rl = replace(RL, ckpt_every=2)
    std_cfgs = standard_configs(rl, [0, 1], 4)
    configs = {"(m=2, n=2)": (RegroundConfig(m=2, n=2, budget=4, optimizer="reset"), [0, 1])}
    problems = AdditionTask(TASK).eval_problems[:4]
    eval_cfg = EvalConfig(k=2, max_new_tokens=4)
    calls = []

    def standard_run(seed):
        calls.append(("standard", seed))
        return train_rl(std_cfgs[seed], init_dir, tmp_path / f"std{seed}", TASK, progress=False)

    def regrounding_run(cfg, seed):
        calls.append(("regrounding", seed))
        return run_regrounding(cfg, replace(rl, seed=seed), init_dir, tmp_path / f"rg{seed}", TASK, progress=False)

    def curve(models, label):
        calls.append(("curve", label))
        return accuracy_curve(models, problems, eval_cfg, tmp_path / "cache", label, progress=False)

    record = study_record(rl, eval_cfg, "4 problems", std_cfgs, configs, 2, None)
    compute = lambda: compute_regrounding_table(record, configs, standard_run, regrounding_run, curve)  # noqa: E731
    path, command = tmp_path / "table.json", "the command that recomputes it"
    with pytest.raises(FileNotFoundError, match="the command that recomputes it"):
        regrounding_table(path, False, record, compute, command)
    table = regrounding_table(path, True, record, compute, command)
    first_rg = calls.index(("regrounding", 0))
    assert {c for c in calls[:first_rg] if c[0] == "standard"} == {("standard", 0), ("standard", 1)}
    assert all("standard" in c[1] for c in calls[:first_rg] if c[0] == "curve")  # the target came from standard RL only
    std, by_reading = curves_from_table(table)
    assert table["target"] == pytest.approx(np.mean([c.accuracy[1] for c in std.values()]))  # seed mean at step 2
    assert "step 2" in table["target_rule"] and table["provenance"]["command"] == command
    for reading in ("extrapolated", "rl"):
        c = by_reading[reading]["(m=2, n=2)"][1]
        assert c.real_steps.tolist() == [0, 2, 4]  # every block end, and the start
    assert by_reading["extrapolated"]["(m=2, n=2)"][0].virtual_steps.tolist() == [0, 4, 8]
    assert by_reading["rl"]["(m=2, n=2)"][0].virtual_steps.tolist() == [0, 2, 6]
    assert [b["real_step"] for b in table["blocks"] if b["seed"] == 0] == [2, 4]

    n_calls = len(calls)
    assert regrounding_table(path, False, record, compute, command) == table and len(calls) == n_calls  # read, not run
    other = study_record(rl, eval_cfg, "4 problems", std_cfgs, configs, 4, None)
    with pytest.raises(ValueError, match="target_step: 2 -> 4.*the command that recomputes it"):
        regrounding_table(path, False, other, compute, command)


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
    computed with the code before the re-grounding study table, for the 2 x 32-head embedded default)."""
    import rlvr_nb.experiments.rl_extra as rx
    from rlvr_nb.embedded import EmbeddedConfig

    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path))
    monkeypatch.setattr(rx, "run_regrounding", lambda *a, **k: None)
    monkeypatch.setattr(rx, "run_verl_into", lambda *a, **k: None)
    emb = EmbeddedConfig(model=TINY, task=TASK)
    assert rx.ensure_regrounding_run(RegroundConfig(m=2, n=2, budget=2), RL, emb, progress=False,
                                     init_dir="/fixed/init").name == "reground-f5a626eb90"
    assert rx.ensure_regrounding_run(RegroundConfig(m=2, n=2, budget=2, optimizer="reset"), RL, emb, progress=False,
                                     trainer="verl", init_dir="/fixed/init").name == "reground-fe567c0bf3"
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
