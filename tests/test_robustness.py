"""Sweeps of Sec. 5 on the embedded model: statistics of one run, the settings of both sweeps, finding (c),
the cached table and the figures. Runs are fabricated checkpoints; nothing is trained."""

import json
import math
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from trajectory_fixtures import fabricated_weights, small_model_and_tokenizer, write_hf_dir

from rlvr_nb.experiments import robustness as rb
from rlvr_nb.experiments.lowpass_theory import plot_snr_sweep
from rlvr_nb.embedded import EmbeddedConfig, ensure_trajectory
from rlvr_nb.grpo import RLConfig
from rlvr_nb.sft import SFTConfig
from rlvr_nb.streaming import HIST_BINS


def fake_run(root, steps=(0, 10, 20, 30, 40, 50), noise=1e-3, drift=1e-1, walk=False, seed=0):
    """Checkpoints step_N (float32) of the small model: a line plus noise, or (walk=True) a random walk."""
    if walk:
        model, _ = small_model_and_tokenizer()
        g = torch.Generator().manual_seed(seed)
        w = {n: p.detach().clone() for n, p in model.state_dict().items()}
        states = []
        for _ in steps:
            states.append({n: t.clone() for n, t in w.items()})
            w = {n: t + 1e-2 * torch.randn(t.shape, generator=g) for n, t in w.items()}
    else:
        states = fabricated_weights(steps, seed=seed, noise=noise, drift=drift)
    for s, w in zip(steps, states):
        write_hf_dir(root / "checkpoints" / f"step_{s}", w, dtype=torch.float32, step=s)
    with open(root / "metrics.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "heldout_greedy": s / 100, "heldout_sampled": s / 200}) + "\n")
    return root


def binned(values):
    return np.bincount(np.minimum((values * HIST_BINS).astype(int), HIST_BINS - 1), minlength=HIST_BINS)


def test_histogram_quantiles_and_std_match_numpy():
    v = np.random.default_rng(0).beta(5, 2, size=50_000)
    h = binned(v)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert rb.hist_quantile(h, q) == pytest.approx(np.quantile(v, q), abs=2e-4)
    assert rb.hist_std(h) == pytest.approx(v.std(), abs=2e-4)
    assert math.isnan(rb.hist_quantile(np.zeros(10), 0.5)) and math.isnan(rb.hist_std(np.zeros(10)))
    with pytest.raises(ValueError, match="q must lie"):
        rb.hist_quantile(h, 1.5)


def test_weight_r2_row_separates_a_line_from_a_random_walk(tmp_path):
    line = rb.weight_r2_row(fake_run(tmp_path / "line"))
    walk = rb.weight_r2_row(fake_run(tmp_path / "walk", walk=True))
    assert line["median"] > 0.95 and line["frac_above"] > 0.9
    assert walk["median"] < 0.75 and walk["median"] < line["median"] - 0.2
    for row in (line, walk):
        assert row["q25"] <= row["median"] <= row["q75"] and 0 < row["std"] < 0.5
        assert 0 < row["active"] <= row["total"] and row["checkpoints"] == 6 and row["rel_change"] > 0
    assert line["acc_start"] == 0.0 and line["acc_end"] == 0.5
    assert line["drift_cos"] > 0.99 and abs(walk["drift_cos"]) < line["drift_cos"] - 0.3  # motion.segment_cosine


def test_weight_r2_row_reads_a_prefix(tmp_path):
    run = fake_run(tmp_path / "r")
    row = rb.weight_r2_row(run, max_step=30)
    assert row["checkpoints"] == 4 and row["last_step"] == 30 and row["acc_end"] == 0.3
    with pytest.raises(ValueError, match="no checkpoint at step 35"):
        rb.weight_r2_row(run, max_step=35)


def test_snr_settings_sweep_the_noise_only():
    base = SFTConfig(steps=500, lr=1e-3, ckpt_every=50)
    s = rb.snr_settings(base, [10, -10])
    assert [x.label for x in s] == ["plain SFT", "10 dB", "-10 dB", "zero signal"]
    assert {x.category for x in s} == {"SFT lr 0.001"}
    assert [(x.config.noise_snr_db, x.config.zero_signal) for x in s] == [
        (None, False), (10.0, False), (-10.0, False), (None, True)]
    for x in s:  # nothing but the noise changes
        assert replace(x.config, noise_snr_db=None, zero_signal=False) == base
    with pytest.raises(ValueError, match="must be plain SFT"):
        rb.snr_settings(replace(base, noise_snr_db=0.0), [10])
    with pytest.raises(ValueError, match="empty"):
        rb.snr_settings(base, [], zero_signal=False, plain=False)


def test_robustness_settings_change_one_factor_at_a_time():
    base = RLConfig(steps=1000, ckpt_every=50, lr=1e-4, group_size=16)
    s = rb.robustness_settings(base, 400, lrs=[1e-4, 3e-4], sgd_lr=0.05, group_sizes=[16, 8],
                               estimators=["grpo", "reinforce_pp"])
    assert [x.category for x in s] == (["optimizer"] * 2 + ["learning rate"] * 2 + ["rollouts per prompt"] * 2
                                       + ["advantage"] * 2)
    baseline = [x for x in s if x.config == base]
    assert len(baseline) == 4 and all(x.max_step == 400 for x in s)  # baseline: the first 400 steps of base
    short = replace(base, steps=400)
    changed = {x.label: {f.name for f in fields(RLConfig) if getattr(x.config, f.name) != getattr(short, f.name)}
               for x in s if x.config != base}
    assert changed == {"SGD, lr 0.05": {"optimizer", "lr"}, "lr 0.0003": {"lr"}, "G = 8": {"group_size"},
                       "reinforce_pp": {"adv_estimator"}}
    with pytest.raises(ValueError, match="multiple of ckpt_every"):
        rb.robustness_settings(base, 420)
    with pytest.raises(ValueError, match="at most base.steps"):
        rb.robustness_settings(base, 2000)
    with pytest.raises(ValueError, match="fewer than 3 checkpoints"):
        rb.robustness_settings(base, 50)


def test_sweep_rows_analyses_a_shared_run_once(tmp_path, monkeypatch):
    runs = {}  # one fabricated run per distinct config

    def fake_ensure(config, emb, progress=True):
        key = repr(config)
        if key not in runs:
            runs[key] = fake_run(tmp_path / f"run{len(runs)}", seed=len(runs))
        return runs[key]

    monkeypatch.setattr(rb, "ensure_trajectory", fake_ensure)
    calls = []
    real = rb.weight_r2_row
    monkeypatch.setattr(rb, "weight_r2_row", lambda r, m=None: calls.append(m) or real(r, m))
    s = rb.robustness_settings(RLConfig(steps=50, ckpt_every=10), 50, lrs=[3e-4], group_sizes=[4])
    rows = rb.sweep_rows(s, EmbeddedConfig(), progress=False)
    assert len(rows) == 4 and len(runs) == 3 and len(calls) == 3  # the baseline is listed twice, analysed once
    assert rows[0] == dict(rows[2], category="learning rate", label=rows[0]["label"])
    assert rows[0]["category"] == "learning rate" and rows[2]["category"] == "rollouts per prompt"
    assert rows[1]["lr"] == 3e-4 and rows[3]["group_size"] == 4 and rows[0]["run"] == "run0"
    assert rows[0]["median"] != rows[1]["median"]


def test_ensure_trajectory_rejects_other_configs():
    with pytest.raises(ValueError, match="RLConfig or an SFTConfig"):
        ensure_trajectory({"lr": 1}, EmbeddedConfig())


def snr_rows(values):
    labels = ["plain SFT", "10 dB", "0 dB", "-5 dB", "-10 dB", "-15 dB", "-20 dB", "zero signal"]
    dbs = [None, 10.0, 0.0, -5.0, -10.0, -15.0, -20.0, None]
    return [{"category": "SFT lr 0.001", "label": l, "snr_db": d, "zero_signal": l == "zero signal", "median": v,
             "mean": v - 0.05, "std": 0.2} for l, d, v in zip(labels, dbs, values)]


def test_snr_finding_holds_only_for_a_rise_and_a_fall():
    paper_like = rb.snr_finding(snr_rows([0.43, 0.50, 0.43, 0.56, 0.58, 0.52, 0.41, 0.40]))
    assert paper_like["holds"] and paper_like["peak_db"] == -10.0 and paper_like["peak"] == 0.58
    monotone = rb.snr_finding(snr_rows([0.63, 0.63, 0.59, 0.45, 0.39, 0.39, 0.40, 0.44]))
    assert not monotone["rises"] and not monotone["holds"]
    no_fall = rb.snr_finding(snr_rows([0.43, 0.45, 0.45, 0.56, 0.58, 0.57, 0.58, 0.40]))
    assert no_fall["rises"] and not no_fall["falls_back"] and not no_fall["holds"]
    assert rb.snr_finding(snr_rows([0.43] * 8), stat="mean")["plain"] == pytest.approx(0.38)
    with pytest.raises(ValueError, match="lacks"):
        rb.snr_finding(snr_rows([0.4] * 8)[:3])
    assert "finding (c) holds" in rb.describe_snr_finding(snr_rows([0.43, 0.50, 0.43, 0.56, 0.58, 0.52, 0.41, 0.40]))
    text = rb.describe_snr_finding(snr_rows([0.63, 0.63, 0.59, 0.45, 0.39, 0.39, 0.40, 0.44]))
    assert "does not hold" in text and "plain SFT 0.630" in text and "no moderate SNR" in text
    assert "cannot be judged" in rb.describe_snr_finding(snr_rows([0.4] * 8)[:3])


def test_cached_table_is_read_when_settings_match_and_recomputed_otherwise(tmp_path, monkeypatch):
    s = rb.robustness_settings(RLConfig(steps=100, ckpt_every=10), 50, lrs=[3e-4])
    computed = []
    monkeypatch.setattr(rb, "sweep_rows",
                        lambda settings, emb, progress=True: computed.append(1) or [{"median": 0.9}] * len(settings))
    path = tmp_path / "data" / "table.json"
    table, how = rb.cached_rows(path, s, EmbeddedConfig(), progress=False)
    assert how.startswith("computed") and len(computed) == 1 and path.is_file()
    table2, how2 = rb.cached_rows(path, s, EmbeddedConfig(), progress=False)
    assert how2.startswith("read") and table2["rows"] == table["rows"] and len(computed) == 1
    other = rb.robustness_settings(RLConfig(steps=100, ckpt_every=10), 60, lrs=[3e-4])
    assert rb.cached_rows(path, other, EmbeddedConfig(), progress=False)[1].startswith("computed")
    assert len(computed) == 2
    assert rb.cached_rows(path, other, EmbeddedConfig(), recompute=True, progress=False)[1].startswith("computed")
    assert rb.load_table(path)["settings"][0]["config"]["steps"] == 100
    # another embedded model (the table does not describe it), or a missing extra table: recomputed
    smaller = replace(EmbeddedConfig(), task=replace(EmbeddedConfig().task, digits=2))
    assert rb.cached_rows(path, other, smaller, progress=False)[1].startswith("computed") and len(computed) == 4
    assert rb.load_table(path)["embedded"]["task"]["digits"] == 2
    extra = {"sgd_calibration": lambda: [{"lr": 0.01}]}
    table3, how3 = rb.cached_rows(path, other, smaller, progress=False, extra=extra)
    assert how3.startswith("computed") and table3["sgd_calibration"] == [{"lr": 0.01}] and len(computed) == 5
    assert rb.cached_rows(path, other, smaller, progress=False, extra=extra)[1].startswith("read")
    with pytest.raises(FileNotFoundError, match="cpu profile"):
        rb.load_table(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="save_table"):
        rb.load_table(tmp_path / "bad.json")


def test_sgd_calibration_reads_adamw_from_the_base_run_and_picks_the_largest_stable_rate(tmp_path, monkeypatch):
    made = []

    def fake_ensure(config, emb, progress=True):
        run = fake_run(tmp_path / f"run{len(made)}", steps=(0, 10, 20), drift=0.1 * (1 + len(made)), seed=len(made))
        with open(run / "metrics.jsonl", "a") as f:
            for step in range(1, 21):
                f.write(json.dumps({"step": step, "reward": 0.1 * len(made)}) + "\n")
        made.append(config)
        return run

    monkeypatch.setattr(rb, "ensure_trajectory", fake_ensure)
    base = RLConfig(steps=100, ckpt_every=10)
    rows = rb.sgd_calibration_rows(base, [0.01, 0.03], EmbeddedConfig(), steps=20, progress=False)
    assert made[0] == base and made[1] == replace(base, steps=20, optimizer="sgd", lr=0.01)
    assert [(r["optimizer"], r["lr"]) for r in rows] == [("adamw", base.lr), ("sgd", 0.01), ("sgd", 0.03)]
    assert rows[2]["rel_change"] > rows[1]["rel_change"] > rows[0]["rel_change"] > 0
    assert [r["reward_last20"] for r in rows] == [0.0, 0.1, 0.2] and rows[1]["acc_end"] == 0.2
    calib = [{"optimizer": "adamw", "lr": 3e-5, "acc_start": 0.9, "acc_end": 0.9},
             {"optimizer": "sgd", "lr": 0.01, "acc_start": 0.9, "acc_end": 0.87},
             {"optimizer": "sgd", "lr": 0.03, "acc_start": 0.9, "acc_end": 0.5}]
    assert rb.largest_stable_lr(calib) == 0.01 and rb.largest_stable_lr(calib[2:]) is None
    with pytest.raises(ValueError, match="multiple of ckpt_every=10"):
        rb.sgd_calibration_rows(base, [0.01], EmbeddedConfig(), steps=25)
    low = rb.low_coverage([{"label": "SGD", "active": 30, "total": 100}, {"label": "AdamW", "active": 99, "total": 100}])
    assert [(r["label"], r["coverage"]) for r in low] == [("SGD", 0.3)]


def test_batch_gradient_moments_of_several_losses():
    model, _ = small_model_and_tokenizer()
    p = next(model.parameters())

    def losses(gen):
        x = torch.randn(p.shape, generator=gen)
        return [(p * x).sum(), (p * 0).sum() + 3 * p.sum()]  # gradients x (varies) and 3 (constant)

    a, b = rb.batch_gradient_moments(model, losses, 50, seed=0)
    n = p.numel()
    xs = torch.stack([torch.randn(p.shape, generator=g) for g in [torch.Generator().manual_seed(0)] for _ in range(50)])
    np.testing.assert_allclose(a["mean"][:n], xs.double().mean(0).reshape(-1).numpy(), atol=1e-12)
    np.testing.assert_allclose(a["var"][:n], xs.double().var(0).reshape(-1).numpy(), rtol=1e-6)
    assert np.allclose(b["mean"][:n], 3) and np.allclose(b["var"][:n], 0, atol=1e-12) and not b["mean"][n:].any()
    snr = rb.gradient_snr(a)[:n]
    assert np.median(snr) < 0.3  # a zero-mean gradient: no signal beyond 1 / sqrt(n)
    assert np.isnan(rb.gradient_snr(b)[n:]).all()  # parameters without any gradient
    assert rb.rms_snr(a) < 0.2
    with pytest.raises(ValueError, match="n_batches >= 2"):
        rb.batch_gradient_moments(model, losses, 1)


def test_figures():
    rows = snr_rows([0.43, 0.50, 0.43, 0.56, 0.58, 0.52, 0.41, 0.40])
    rows += [dict(r, category="SFT lr 0.0001") for r in rows]
    fig = plot_snr_sweep(rows, show_paper=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "zero\nsignal"
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "paper: peak median 0.582" in labels and "paper: SFT baseline median 0.43" in labels
    assert not any(l.startswith("paper") for l in plot_snr_sweep(rows, show_paper=False).axes[0].get_legend_handles_labels()[1])
    rrows = [{"category": c, "label": l, "median": 0.8, "q25": 0.7, "q75": 0.9}
             for c in ("optimizer", "advantage") for l in ("a", "b")]
    fig2 = rb.plot_robustness(rrows)
    assert len(fig2.axes[0].get_yticks()) == 4
    table = rb.table_rows([{"a": 1, "b": None}], ["a", "b", "c"])
    assert table == [{"a": 1, "b": "", "c": ""}]


def test_a_run_without_analysed_weights_is_drawn_and_described_not_a_crash():
    def row(run, category, label, median, active=90):
        return {"run": run, "category": category, "label": label, "median": median, "q25": None if median is None
                else median - 0.1, "q75": None if median is None else median + 0.1, "active": active, "total": 100,
                "rel_change": 0.01, "checkpoints": 3}

    rows = [row("a", "", "baseline", 0.8), row("b", "optimizer", "SGD", None, active=0),
            row("c", "learning rate", "lr 3e-4", 0.6, active=20)]
    fig = rb.plot_robustness(rows)
    assert "no active weights" in [t.get_text() for t in fig.axes[0].texts]
    from rlvr_nb.experiments.lowpass_theory import describe_grid

    lines = describe_grid(rows)
    assert lines[0].startswith("1 of 3 runs have a median weight R^2 above 0.7 (range 0.600 to 0.800")
    assert any("no analysed weights: optimizer: SGD" in l and "3 checkpoints" in l for l in lines)
    assert any("below 0.7: learning rate: lr 3e-4 (median 0.600)" in l for l in lines)
    assert any("lr 3e-4: its R^2 covers only 20%" in l for l in lines) and not any("SGD: its R^2" in l for l in lines)


def test_injected_snr_matches_a_direct_estimate_and_falls_with_the_noise():
    from rlvr_nb.lowpass import noise_amplitudes, token_noise_weights
    from rlvr_nb.sft import sequence_batch, token_nll
    from rlvr_nb.tasks import AdditionTask, TaskConfig

    model, tok = small_model_and_tokenizer()
    task = AdditionTask(TaskConfig(digits=2, n_eval=8))
    m = rb.gradient_moments(model, tok, task, batch_size=16, n_batches=80)
    assert not model.training  # left in eval mode, as it came
    snr = {db: np.nanmedian(rb.injected_snr(m, db)) for db in (None, 10.0, 0.0, -10.0, -20.0)}
    assert snr[None] > snr[10.0] > snr[0.0] > snr[-10.0] > snr[-20.0] > 0
    zero = rb.injected_snr(m, None, zero_signal=True)
    assert np.isnan(zero).mean() < 0.2 and not np.nan_to_num(zero).any()
    # a direct estimate at 0 dB: |mean| / std of the noisy gradient itself over 80 batches, debiased
    a, sigma = noise_amplitudes(0.0)
    gen = torch.Generator().manual_seed(1)
    model.train()
    params = list(model.parameters())
    gs = []
    for _ in range(80):
        ids, mask, L = sequence_batch(tok, task.sample_train(16, gen))
        nll = token_nll(model, ids, L)
        loss = (nll * token_noise_weights(nll.shape, 0.0, False, gen) * mask).sum() / mask.sum()
        gs.append(torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]).double().numpy())
    model.eval()
    gs = np.stack(gs)
    used = gs.var(0) > 0  # parameters that received a gradient
    r2 = gs.mean(0)[used] ** 2 / gs.var(0, ddof=1)[used]
    direct = np.median(np.sqrt(np.clip(r2 - 1 / 80, 0, None)))
    assert direct == pytest.approx(snr[0.0], rel=0.1)  # measured: 0.511 vs 0.515
    with pytest.raises(ValueError, match="n_batches >= 2"):
        rb.gradient_moments(model, tok, task, batch_size=16, n_batches=1)
