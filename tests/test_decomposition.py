"""Sec. 5, Figure 4: the output change of every linear layer splits exactly into its three sources."""

import copy
import json
import math

import pytest
import torch
from matplotlib.figure import Figure

from rlvr_nb import decomposition as dc
from rlvr_nb.checkpoint_files import CheckpointError
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model0(tok):
    return build_model(ModelConfig(), tok)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 14, (6, 12), generator=g)  # character tokens
    mask = torch.ones_like(ids)
    mask[:2, :3] = 0  # left padding on two rows
    ids[mask == 0] = 0
    return ids, mask


def perturbed(model, scale: float, which=lambda name: True, seed: int = 1):
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if which(name):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def test_parts_sum_to_the_total_change(model0, batch):
    ids, mask = batch
    model1 = perturbed(model0, 0.05)  # everything moves: embeddings, norms, all linear layers
    x0s = dc.capture_linear_inputs(model0, ids, mask)
    x1s = dc.capture_linear_inputs(model1, ids, mask)
    outputs = {}

    def keep_output(name):
        def hook(module, args, y):
            outputs[name] = y[mask.bool()].double()
        return hook

    hooks = [m.register_forward_hook(keep_output(n)) for n, m in dc.linear_modules(model1).items()]
    with torch.no_grad():
        model1(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in hooks:
        h.remove()
    mods0, mods1 = dc.linear_modules(model0), dc.linear_modules(model1)
    assert len(mods0) == 15  # 2 layers x (q, k, v, o, gate, up, down) + lm_head
    for name in mods0:
        m0, m1 = mods0[name], mods1[name]
        inp, wt, sec, total = dc.split_output_change(m0.weight, m0.bias, m1.weight, m1.bias, x0s[name], x1s[name])
        assert (inp + wt + sec - total).abs().max() <= 1e-12 * total.abs().max()  # exact in float64
        # and the total is the layer's real output change, seen by the hooks (float32 forward)
        y0 = dc.linear_output(m0.weight, m0.bias, x0s[name])
        assert torch.allclose(y0 + total, outputs[name], atol=1e-4, rtol=1e-4)
    records = dc.output_change_decomposition(model0, model1, ids, mask, batch_size=4)  # two batches
    for r in records:
        assert r.total_norm <= r.input_norm + r.weight_norm + r.second_order_norm + 1e-9
        assert r.total_norm > 0 and r.second_order_fraction >= 0
    assert {r.module_type for r in records} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj", "lm_head"}
    assert [r.layer for r in records if r.module_type == "lm_head"] == [-1]


def test_batches_do_not_change_the_norms(model0, batch):
    ids, mask = batch
    model1 = perturbed(model0, 0.02)
    a = dc.output_change_decomposition(model0, model1, ids, mask, batch_size=64)
    b = dc.output_change_decomposition(model0, model1, ids, mask, batch_size=1, max_elements=1000)  # row blocks too
    for ra, rb in zip(a, b):
        assert ra.total_norm == pytest.approx(rb.total_norm, rel=1e-6)
        assert ra.second_order_norm == pytest.approx(rb.second_order_norm, rel=1e-6, abs=1e-12)


def test_identical_checkpoints_give_zero(model0, batch):
    records = dc.output_change_decomposition(model0, copy.deepcopy(model0), *batch)
    for r in records:
        assert r.input_norm == r.weight_norm == r.second_order_norm == r.total_norm == 0.0
        assert r.output_norm > 0 and math.isnan(r.second_order_fraction)


def test_weight_only_change_leaves_the_first_layer_inputs_alone(model0, batch):
    is_linear_weight = lambda name: name.endswith("proj.weight") or name == "lm_head.weight"  # noqa: E731
    model1 = perturbed(model0, 0.05, is_linear_weight)
    by_name = {r.name: r for r in dc.output_change_decomposition(model0, model1, *batch)}
    for kind in ("q_proj", "k_proj", "v_proj"):  # they read the (unchanged) normed embeddings
        r = by_name[f"model.layers.0.self_attn.{kind}"]
        assert r.input_norm == 0.0 and r.second_order_norm == 0.0
        assert r.weight_norm == pytest.approx(r.total_norm, rel=1e-12) and r.weight_norm > 0
    assert by_name["model.layers.0.self_attn.o_proj"].input_norm > 0  # attention output did change


def test_bias_change_belongs_to_the_weight_part(model0, batch):
    ids, mask = batch
    model1 = copy.deepcopy(model0)
    with torch.no_grad():
        model1.model.layers[0].self_attn.q_proj.bias.add_(0.1)
    r = {r.name: r for r in dc.output_change_decomposition(model0, model1, ids, mask)}["model.layers.0.self_attn.q_proj"]
    n_tokens, out = int(mask.sum()), model1.model.layers[0].self_attn.q_proj.bias.numel()
    assert r.input_norm == 0.0 and r.second_order_norm == 0.0
    assert r.weight_norm == pytest.approx(0.1 * math.sqrt(n_tokens * out), rel=1e-5)


def test_second_order_shrinks_linearly_with_the_step(model0, batch):
    small = dc.total_change(dc.output_change_decomposition(model0, perturbed(model0, 1e-3), *batch))
    big = dc.total_change(dc.output_change_decomposition(model0, perturbed(model0, 2e-3), *batch))
    assert small["second_order_fraction"] < 0.05
    assert big["second_order_fraction"] / small["second_order_fraction"] == pytest.approx(2.0, rel=0.1)


def test_trajectory_of_saved_checkpoints(tmp_path, model0, tok, batch):
    dirs = []
    for k, step in enumerate((0, 100, 200)):
        d = tmp_path / "checkpoints" / f"step_{step}"
        perturbed(model0, 1e-3 * k, seed=0).save_pretrained(d)  # a straight line in weight space
        tok.save_pretrained(d)
        (d / "trainer_state.json").write_text(json.dumps({"step": step}))
        dirs.append(d)
    pairs = dc.trajectory_decomposition(list(reversed(dirs)), *batch, progress=False)  # sorted by step
    assert [(p.step0, p.step1) for p in pairs] == [(0, 100), (100, 200)]
    assert len(pairs[0].records) == 15
    totals = pairs[1].totals()
    assert totals["step1"] == 200 and 0 < totals["second_order_fraction"] < 0.05
    same = dc.trajectory_decomposition([(0, dirs[0]), (1, dirs[1])], *batch, progress=False)
    assert same[0].step1 == 1
    whole = dc.trajectory_decomposition(tmp_path, *batch, progress=False)  # the run directory, found by the layer
    assert [(p.step0, p.step1) for p in whole] == [(0, 100), (100, 200)]
    assert isinstance(dc.plot_trajectory_decomposition(pairs), Figure)
    assert isinstance(dc.plot_layer_decomposition(pairs[0].records), Figure)
    values = dc.output_change_values(model0, perturbed(model0, 1e-2), *batch, "model.layers.1.mlp.down_proj")
    n = int(batch[1].sum()) * 64
    assert all(v.shape == (n,) for v in values.values())
    assert isinstance(dc.plot_output_change_histogram(values, "down_proj"), Figure)


def test_second_order_summary_finds_the_worst_pair_and_layer(model0, batch):
    near = dc.PairChange(0, 10, dc.output_change_decomposition(model0, perturbed(model0, 1e-3), *batch))
    far = dc.PairChange(10, 20, dc.output_change_decomposition(model0, perturbed(model0, 3e-2), *batch))
    s = dc.second_order_summary([near, far])
    fracs = [p.totals()["second_order_fraction"] for p in (near, far)]
    assert s["pairs"] == 2 and s["max_fraction"] == pytest.approx(max(fracs))
    assert s["median_fraction"] == pytest.approx(sum(fracs) / 2)
    assert s["worst_pair"] == (10, 20) and s["worst_layer_fraction"] >= s["max_fraction"] * 0.999
    assert s["worst_layer"] in {r.name for r in far.records}
    assert dc.second_order_summary([near])["holds"] and not dc.second_order_summary([near, far], threshold=fracs[0])["holds"]
    with pytest.raises(ValueError, match="at least one"):
        dc.second_order_summary([])


def test_bad_inputs_raise(model0, tok, batch, tmp_path):
    ids, mask = batch
    with pytest.raises(ValueError, match="B, L"):
        dc.output_change_decomposition(model0, model0, ids, mask[:, :5])
    other = build_model(ModelConfig(intermediate_size=128), tok)
    with pytest.raises(ValueError, match="shape"):
        dc.output_change_decomposition(model0, other, ids, mask)
    with pytest.raises(ValueError, match="at least 2"):
        dc.trajectory_decomposition([tmp_path], ids, mask)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        dc.output_change_values(model0, model0, ids, mask, "model.embed_tokens")
    for name in ("final", "checkpoint-\u0663\u0663"):  # no step; non-ASCII digits are no step either
        (tmp_path / name).mkdir()
    with pytest.raises(CheckpointError, match="cannot tell the step of .*final"):
        dc.trajectory_decomposition([tmp_path / "final", tmp_path / "checkpoint-\u0663\u0663"], ids, mask)
    with pytest.raises(CheckpointError, match="cannot tell the step of .*checkpoint-\u0663\u0663"):
        dc.trajectory_decomposition([tmp_path / "checkpoint-\u0663\u0663", tmp_path / "final"], ids, mask)
    with pytest.raises(FileNotFoundError, match="no complete checkpoints"):
        dc.trajectory_decomposition(tmp_path / "final", ids, mask)  # a run directory without checkpoints
