"""RL-versus-SFT comparisons and the tuning sweep, on fabricated runs (no training): which trajectories each
comparison pairs, the matched-accuracy window, truncated trajectories measured like shorter runs, the gap
verdict, and the sweep table."""

import json
import numpy as np
import pytest
from trajectory_fixtures import make_run

from rlvr_nb.experiments import comparisons as cmp
from rlvr_nb.embedded import EmbeddedConfig, matched_sft
from rlvr_nb.grpo import RLConfig
from rlvr_nb.linearity import LinearityConfig, weight_linearity
from rlvr_nb.logprobs import ProbeConfig, logprob_linearity, logprob_trajectories, probes_from_first_checkpoint
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.trajectory import load_trajectory

RL = RLConfig(steps=200, prompts_per_step=4, group_size=8, lr=1e-4, ckpt_every=25)
STEPS = tuple(range(0, 201, 25))


def write_metrics(run, accuracy, steps=STEPS):
    """Like the trainers' metrics.jsonl: one line per step (1 s each), held-out accuracy(step) at checkpoints."""
    run.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s, **({"seconds": 1.0} if s else {}),
              **({"heldout_sampled": accuracy(s), "heldout_greedy": accuracy(s)} if s in steps else {})}
             for s in range(steps[-1] + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    return run


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """ensure_trajectory returns fabricated runs (checkpoints every 25 steps up to the config's
    steps, at most 200): RL gains 0.2 in 200 steps, SFT at lr 1e-3 0.22 by step 100, other SFT 0.08."""
    made = {}

    def run_for(cfg, emb=None, progress=True):
        key = json.dumps(cmp.to_jsonable(cfg), sort_keys=True) + type(cfg).__name__
        if key not in made:
            steps = [s for s in STEPS if s <= cfg.steps]
            d = make_run(tmp_path / f"run{len(made)}", "ours", steps, seed=len(made))
            rate = 1e-3 if isinstance(cfg, RLConfig) else 2.2e-3 if cfg.lr == 1e-3 else 4e-4
            made[key] = write_metrics(d, lambda s: 0.1 + rate * s, steps)
        return made[key]

    monkeypatch.setattr(cmp, "ensure_trajectory", run_for)
    return run_for


def test_accuracy_window_and_first_step_with_gain(tmp_path):
    acc = {0: 0.1, 50: 0.15, 100: 0.35, 150: 0.3, 200: 0.4}
    run = write_metrics(tmp_path / "r", acc.get, steps=tuple(acc))
    assert cmp.accuracy_window(run) == (0.1, 0.4)
    assert cmp.accuracy_window(run, max_step=150) == (0.1, 0.3)
    assert cmp.first_step_with_gain(run, 0.2) == 100  # the first crossing, not the last
    assert cmp.first_step_with_gain(run, 0.5) is None
    assert cmp.describe_accuracy(run) == "0.10 -> 0.40"
    assert cmp.describe_accuracy(tmp_path / "none") == "not recorded"


def test_the_four_comparisons_pair_the_stated_runs(fake_runs):
    comps = cmp.comparisons(RL, EmbeddedConfig(), customary_sft_lr=1e-3, seq_steps=100)
    by = {c.name: c for c in comps}
    assert list(by) == ["same lr and steps", "same sequences per step", "same accuracy gain", "customary lr each"]
    same = by["same lr and steps"].sft.config
    assert (same.lr, same.steps, same.batch_size, same.ckpt_every) == (1e-4, 200, 4, 25)
    seqs = by["same sequences per step"]
    assert seqs.sft.config.batch_size == 32 and seqs.sft.config.steps == 100 and seqs.sft.config.lr == 1e-4
    assert seqs.rl.max_step == 100 and seqs.rl.config == RL  # the first 100 steps of the RL run itself
    gain = by["same accuracy gain"].sft.config  # customary SFT first gains RL's 0.2 at step 100
    assert (gain.lr, gain.steps, gain.ckpt_every) == (1e-3, 100, 12)  # about as many checkpoints as RL's 9
    assert by["customary lr each"].sft.config.lr == 1e-3 and by["customary lr each"].sft.config.steps == 200
    with pytest.raises(ValueError, match="seq_steps"):
        cmp.comparisons(RL, EmbeddedConfig(), 1e-3, seq_steps=60)


def test_matched_gain_falls_back_to_the_whole_run(fake_runs):
    comps = cmp.comparisons(RL, EmbeddedConfig(), customary_sft_lr=1e-2, seq_steps=100)
    gain = next(c for c in comps if c.name == "same accuracy gain")  # this SFT gains 0.08 < RL's 0.2
    assert gain.sft == cmp.RunSpec(matched_sft(RL, lr=1e-2)) and "never reached" in gain.basis


def test_truncated_specs_measure_like_shorter_trajectories(fake_runs):
    emb = EmbeddedConfig()
    run = fake_runs(RL)
    traj = load_trajectory(run, progress=False)
    probes = probes_from_first_checkpoint(traj, ["123+456=", "050+050="], ProbeConfig(responses_per_prompt=2, max_new_tokens=5),
                                          progress=False)
    m = cmp.Measurer(emb, probes, progress=False)
    spec = cmp.RunSpec(RL, max_step=100)
    short = load_trajectory(find_checkpoints(run)[:5], progress=False)
    assert m.weight(spec).median == weight_linearity(short, LinearityConfig(drift=False), progress=False).overall.median
    expected = logprob_linearity(logprob_trajectories(short, probes, progress=False), short.steps).overall
    got = m.token(spec)
    assert (got.count, got.total) == (expected.count, expected.total)
    assert got.median == pytest.approx(expected.median, abs=1e-9) or (np.isnan(got.median) and np.isnan(expected.median))
    m.token(cmp.RunSpec(RL))  # the whole run: the same cached log-probs, nothing teacher-forced again
    assert len(m._logprobs) == 1
    with pytest.raises(ValueError, match="probes"):
        cmp.Measurer(emb).token(spec)


def test_gap_verdict_and_rows(fake_runs):
    assert cmp.reproduces_gap(0.85, 0.6, "weight") and not cmp.reproduces_gap(0.85, 0.7, "weight")
    assert cmp.reproduces_gap(0.83, 0.58, "token") and not cmp.reproduces_gap(0.83, 0.6, "token")
    comps = cmp.comparisons(RL, EmbeddedConfig(), customary_sft_lr=1e-3, seq_steps=100)
    rows = cmp.comparison_rows(comps, cmp.Measurer(EmbeddedConfig(), progress=False), "weight")
    assert len(rows) == 5 and rows[-1]["comparison"] == "paper (Sec. 4)" and rows[-1]["SFT median"] == 0.43
    for r in rows[:-1]:
        assert r["gap"] == pytest.approx(r["RL median"] - r["SFT median"], abs=2e-3)
        assert r["paper's gap?"] == ("yes" if r["gap"] >= 0.21 else "no")
    assert rows[2]["SFT acc gain"] == pytest.approx(0.22) and rows[2]["RL acc gain"] == pytest.approx(0.2)
    text = cmp.describe_comparisons(rows, "weight")
    assert "half the paper's" in text and all(r["comparison"] in text for r in rows[:-1])


def test_sweep_specs_rows_and_table(fake_runs, tmp_path):
    specs = cmp.sweep_specs(RL, lrs=[1e-4, 3e-4], prompts_per_step=[2, 4], steps=[100, 200, 400])
    labels = [(f, s) for f, s, _ in specs]
    assert labels == [("baseline", "lr 0.0001, 4x8, 200 steps"), ("learning rate", "lr 0.0003"),
                      ("prompts per step", "2x8"), ("steps", "100 steps"), ("steps", "400 steps")]
    assert specs[3][2] == cmp.RunSpec(RL, 100)
    assert (specs[4][2].config.steps, specs[4][2].config.ckpt_every, specs[4][2].max_step) == (400, 50, None)
    with pytest.raises(ValueError, match="multiple of ckpt_every"):
        cmp.sweep_specs(RL, steps=[60])
    (factor, label, spec), = cmp.sweep_specs(RL, combined=[{"lr": 5e-5, "steps": 400}])[1:]
    assert (factor, label) == ("combined", "lr 5e-05, steps 400")
    assert (spec.config.lr, spec.config.steps, spec.config.ckpt_every) == (5e-5, 400, 50)
    rows = cmp.sweep_rows(specs[:4], cmp.Measurer(EmbeddedConfig(), progress=False))
    assert [r["steps"] for r in rows] == [200, 200, 200, 100] and rows[0]["token median"] is None
    assert rows[3]["acc end"] == pytest.approx(0.2) and rows[3]["train s"] == 100 and rows[0]["train s"] == 200
    path = cmp.save_sweep(tmp_path / "sweep.json", rows, specs[:4], note="test", wall_seconds=12.3, command="make it")
    data = cmp.load_sweep(path)
    assert data["rows"] == rows and data["specs"] == cmp.sweep_record(specs[:4]) and data["note"] == "test"
    assert data["provenance"]["command"] == "make it" and data["provenance"]["wall_seconds"] == 12.3  # not the kernel's argv
    with pytest.raises(FileNotFoundError, match="run_sweep=True"):
        cmp.load_sweep(tmp_path / "missing.json")
    lines = cmp.sweep_factors(rows)
    assert len(lines) == 3 and lines[0].startswith("learning rate: weight median")


def test_rows_meeting_findings_needs_both_weight_and_token():
    rows = [{"setting": "a", "weight median": 0.9, "weight >0.7": 0.72, "token median": 0.86},
            {"setting": "b", "weight median": 0.9, "weight >0.7": 0.70, "token median": 0.9},  # not > 70%
            {"setting": "c", "weight median": 0.84, "weight >0.7": 0.8, "token median": 0.9},
            {"setting": "d", "weight median": 0.9, "weight >0.7": 0.8, "token median": 0.849},
            {"setting": "e", "weight median": 0.9, "weight >0.7": 0.8, "token median": None}]
    assert cmp.rows_meeting_findings(rows) == ["a"]
