"""Sec. 6: weight extrapolation (values, sharding, dtypes, atomic writes, every bad input), the
logits-extrapolation sampler (alpha = 1 is exactly the second model), and the alpha slider's cache."""

import json
import math

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from safetensors import safe_open

import rlvr_nb.extrapolate as ex
from rlvr_nb.evaluate import EvalConfig, ModelPolicy, evaluate
import rlvr_nb.notebook.widgets as widgets
from rlvr_nb.extrapolate import (
    LogitsExtrapolationPolicy, alpha_for, cache_response_logits, extrapolate_weights,
    is_norm_weight, mix_logits, teacher_forced_logits, weight_extrapolation_accuracy,
)
from rlvr_nb.notebook.widgets import alpha_explorer, predicted_accuracy
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer, load_model
from rlvr_nb.sampling import encode_prompts, generate
from rlvr_nb.tasks import AdditionTask, TaskConfig


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run ~10x faster on one thread than on two shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def save_ckpt(d, model, tok, step=None, **kw):
    model.save_pretrained(d, **kw)
    tok.save_pretrained(d)
    if step is not None:
        (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return d


def perturbed(model, seed, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    m = build_model(ModelConfig(), build_tokenizer())
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tok):
    """base at step 100 and second at step 300 (every tensor moved, norms included)."""
    root = tmp_path_factory.mktemp("ckpts")
    base = build_model(ModelConfig(), tok)
    second = perturbed(base, seed=1)
    return save_ckpt(root / "step_100", base, tok, 100), save_ckpt(root / "step_300", second, tok, 300)


def tensors(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def test_alpha_for_and_mix_logits():
    assert alpha_for(0, 300, 600) == 2.0 and alpha_for(200, 1400, 2000) == 1.5
    with pytest.raises(ValueError, match="same step"):
        alpha_for(5, 5, 10)
    g = torch.Generator().manual_seed(0)
    lb, ls = 30 * torch.randn(64, 50, generator=g), 30 * torch.randn(64, 50, generator=g)
    assert torch.equal(mix_logits(lb, ls, 1.0), ls) and torch.equal(mix_logits(lb, ls, 0.0), lb)
    assert torch.allclose(mix_logits(lb, ls, 1.5), lb + 1.5 * (ls - lb), atol=1e-4)
    assert mix_logits(lb, ls, 1.5).dtype == torch.float32
    assert is_norm_weight("model.layers.0.input_layernorm.weight") and is_norm_weight("model.norm.weight")
    assert not is_norm_weight("model.layers.0.self_attn.q_proj.weight")


def test_extrapolated_weights_values_and_files(tmp_path, pair):
    base, second = pair
    out = extrapolate_weights(base, second, tmp_path / "extra", target_step=700, progress=False)
    note = json.loads((out / "extrapolation.json").read_text())
    assert note["alpha"] == 3.0 and (note["base_step"], note["second_step"], note["target_step"]) == (100, 300, 700)
    tb, ts, to = tensors(base), tensors(second), tensors(out)
    assert to.keys() == ts.keys()
    n_norm = 0
    for k in ts:
        if is_norm_weight(k):
            n_norm += 1
            assert torch.equal(to[k], ts[k]), k  # copied from second, not extrapolated
        else:
            assert torch.allclose(to[k], tb[k] + 3.0 * (ts[k] - tb[k]), atol=1e-6), k
    assert n_norm == 5 and note["tensors"]["copied_from_second"] == 5
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / f).read_bytes() == (second / f).read_bytes(), f
    assert not (out / "trainer_state.json").exists()
    load_model(out)  # a complete HF directory
    assert [p.name for p in tmp_path.iterdir()] == ["extra"]  # no temporary directory left behind


def test_sharded_bf16_checkpoints_keep_sharding_and_dtype(tmp_path, tok):
    base = build_model(ModelConfig(), tok)
    second = perturbed(base, seed=2).to(torch.bfloat16)  # Module.to is in place
    base = base.to(torch.bfloat16)
    b = save_ckpt(tmp_path / "b", base, tok, 0, max_shard_size="150KB")
    s = save_ckpt(tmp_path / "s", second, tok, 10, max_shard_size="150KB")
    shards = sorted(p.name for p in s.glob("*.safetensors"))
    assert len(shards) > 1
    out = extrapolate_weights(b, s, tmp_path / "o", alpha=1.5, progress=False)
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] == \
        json.loads((s / "model.safetensors.index.json").read_text())["weight_map"]
    tb, ts, to = tensors(b), tensors(s), tensors(out)
    for k in ts:
        assert to[k].dtype == torch.bfloat16
        want = ts[k] if is_norm_weight(k) else (tb[k].float() + 1.5 * (ts[k].float() - tb[k].float())).to(torch.bfloat16)
        assert torch.equal(to[k], want), k
    assert load_model(out, dtype=torch.bfloat16) is not None


def test_row_blocks_give_the_same_result(tmp_path, pair, monkeypatch):
    base, second = pair
    whole = extrapolate_weights(base, second, tmp_path / "whole", alpha=2.0, progress=False)
    monkeypatch.setattr(ex, "CHUNK_ELEMENTS", 100)  # forces many row blocks per tensor
    blocks = extrapolate_weights(base, second, tmp_path / "blocks", alpha=2.0, progress=False)
    assert (whole / "model.safetensors").read_bytes() == (blocks / "model.safetensors").read_bytes()


def test_overwrite_and_atomicity(tmp_path, pair, monkeypatch):
    base, second = pair
    out = extrapolate_weights(base, second, tmp_path / "o", alpha=2.0, progress=False)
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        extrapolate_weights(base, second, out, alpha=1.5, progress=False)
    extrapolate_weights(base, second, out, alpha=1.5, overwrite=True, progress=False)
    assert json.loads((out / "extrapolation.json").read_text())["alpha"] == 1.5

    def boom(*a):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "extrapolate_tensor", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        extrapolate_weights(base, second, out, alpha=4.0, overwrite=True, progress=False)
    assert json.loads((out / "extrapolation.json").read_text())["alpha"] == 1.5  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_bad_inputs(tmp_path, pair, tok):
    base, second = pair
    out = tmp_path / "o"
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha must be a positive"):
            extrapolate_weights(base, second, out, alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        extrapolate_weights(base, second, out, target_step=50)  # behind the base
    with pytest.raises(ValueError, match="exactly one"):
        extrapolate_weights(base, second, out)
    with pytest.raises(ValueError, match="exactly one"):
        extrapolate_weights(base, second, out, alpha=2.0, target_step=500)
    with pytest.raises(ValueError, match="same checkpoint"):
        extrapolate_weights(base, base.parent / "." / base.name, out, alpha=2.0)
    with pytest.raises(ValueError, match="one of the input"):
        extrapolate_weights(base, second, second, alpha=2.0, overwrite=True)
    with pytest.raises(FileNotFoundError):
        extrapolate_weights(base, tmp_path / "missing", out, alpha=2.0)
    # steps: none recorded, or equal
    nostep = save_ckpt(tmp_path / "nostep", perturbed(load_model(base), 3), tok)
    with pytest.raises(ValueError, match="cannot tell the step of .*nostep: no trainer_state.json"):
        extrapolate_weights(base, nostep, out, target_step=500)
    with pytest.raises(ValueError, match="same step"):
        extrapolate_weights(base, nostep, out, target_step=500, second_step=100)
    # different shapes
    wide = build_model(ModelConfig(hidden_size=32, intermediate_size=128), tok)
    with pytest.raises(ValueError, match="dtype/shape"):
        extrapolate_weights(base, save_ckpt(tmp_path / "wide", wide, tok, 300), out, alpha=2.0)
    # different tensors
    deep = build_model(ModelConfig(num_layers=3), tok)
    with pytest.raises(ValueError, match="different tensors"):
        extrapolate_weights(base, save_ckpt(tmp_path / "deep", deep, tok, 300), out, alpha=2.0)
    # different tokenizers
    other = save_ckpt(tmp_path / "other_tok", load_model(second), tok, 300)
    tj = json.loads((other / "tokenizer.json").read_text())
    v = tj["model"]["vocab"]
    v["0"], v["1"] = v["1"], v["0"]
    (other / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match="tokenizers .* differ"):
        extrapolate_weights(base, other, out, alpha=2.0)
    # out_dir not empty and not a model: never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(FileExistsError, match="did not write .*todo.txt"):
        extrapolate_weights(base, second, tmp_path / "notes", alpha=2.0, overwrite=True)
    assert not out.exists()


def test_logits_extrapolation_alpha_one_is_exactly_second(pair, tok):
    base, second = pair
    mb, ms = load_model(base), load_model(second)
    ids, mask = encode_prompts(tok, [p.prompt for p in AdditionTask(TaskConfig(n_eval=24)).eval_problems])
    kw = dict(max_new_tokens=6, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=1.0, top_p=0.95)
    alone = generate(ms, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    pol = LogitsExtrapolationPolicy(mb, ms, 1.0, tokenizer=tok)
    paired = pol.sample(ids, mask, generator=torch.Generator().manual_seed(7), **{k: kw[k] for k in ("max_new_tokens", "temperature", "top_p")})
    assert torch.equal(alone[0], paired[0]) and torch.equal(alone[1], paired[1])
    base_alone = generate(mb, ids, mask, generator=torch.Generator().manual_seed(7), **kw)
    base_paired = LogitsExtrapolationPolicy(mb, ms, 0.0, tokenizer=tok).sample(
        ids, mask, generator=torch.Generator().manual_seed(7), max_new_tokens=6, temperature=1.0, top_p=0.95)
    assert torch.equal(base_alone[0], base_paired[0])
    assert not torch.equal(paired[0], base_paired[0])
    # it plugs into evaluate, from checkpoint directories too, with its own cache entries
    problems = AdditionTask(TaskConfig(n_eval=8)).eval_problems
    cfg = EvalConfig(k=4, max_new_tokens=6, top_p=0.95)
    a = evaluate(LogitsExtrapolationPolicy(base, second, 1.0), problems, cfg, keep_responses=True, progress=False)
    b = evaluate(second, problems, cfg, keep_responses=True, progress=False)
    assert a.responses == b.responses
    assert LogitsExtrapolationPolicy(base, second, 1.5).fingerprint() != LogitsExtrapolationPolicy(base, second, 2.0).fingerprint()
    with pytest.raises(ValueError, match="finite"):
        LogitsExtrapolationPolicy(base, second, float("inf"))


def test_cached_response_logits_match_direct_forwards(pair, tok):
    base, second = pair
    mb, ms = load_model(base), load_model(second)
    prompts, responses = ["123+989=", "005+005="], ["2111", "0100"]
    cache = cache_response_logits(mb, {300: ms}, prompts, responses, base_step=100, tokenizer=tok)
    assert cache.token_text[0] == ["2", "1", "1", "1", "<|im_end|>"]
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids, lb = teacher_forced_logits(mb, tok, p, r)
        full = torch.log_softmax(mb(input_ids=torch.tensor([tok(p + r)["input_ids"] + [tok.eos_token_id]])).logits[0], -1)
        direct = full[len(p) - 1 : -1].gather(-1, ids[:, None]).squeeze(-1)  # [T]
        assert torch.allclose(cache.logprobs(300, 0.0)[i], direct, atol=1e-5)
        _, ls = teacher_forced_logits(ms, tok, p, r)
        assert torch.allclose(cache.logprobs(300, 1.0)[i], torch.log_softmax(ls, -1).gather(-1, ids[:, None]).squeeze(-1), atol=1e-5)
        mixed = torch.log_softmax(lb + 2.0 * (ls - lb), -1).gather(-1, ids[:, None]).squeeze(-1)
        assert torch.allclose(cache.logprobs(300, 2.0)[i], mixed, atol=1e-5)
        assert torch.equal(cache.logprob_shift(300, 0.0)[i], torch.zeros(len(ids)))
    with pytest.raises(ValueError, match="no cached logits"):
        cache.logprobs(999, 1.0)


def test_predicted_accuracy_and_alpha_explorer(tmp_path, pair, tok, monkeypatch):
    assert predicted_accuracy([2.0, 1.0, 3.0], [0.4, 0.3, 0.2], 1.5) == pytest.approx(0.35)
    assert math.isnan(predicted_accuracy([1.0, 2.0], [0.3, 0.4], 2.5))
    base, second = pair
    problems = AdditionTask(TaskConfig(n_eval=4)).eval_problems
    results = weight_extrapolation_accuracy(base, second, [1.5, 2.0], tmp_path / "models", problems,
                                            EvalConfig(k=2, max_new_tokens=6), cache_dir=tmp_path / "cache", progress=False)
    assert sorted(results) == [1.5, 2.0] and len(list((tmp_path / "models").iterdir())) == 2
    again = weight_extrapolation_accuracy(base, second, [1.5], tmp_path / "models", problems,
                                          EvalConfig(k=2, max_new_tokens=6), cache_dir=tmp_path / "cache", progress=False)
    assert again[1.5].from_cache
    model_file = tmp_path / "models" / f"{base.name}-to-{second.name}-alpha1.5" / "model.safetensors"
    written = model_file.stat().st_mtime_ns
    (second / "model.safetensors").touch()  # a re-trained second makes the extrapolated model stale
    weight_extrapolation_accuracy(base, second, [1.5], tmp_path / "models", problems,
                                  EvalConfig(k=2, max_new_tokens=6), cache_dir=tmp_path / "cache", progress=False)
    assert model_file.stat().st_mtime_ns > written
    grid = {300: ([1.0, 1.5, 2.0], [0.1] + [results[a].avg_at_k for a in (1.5, 2.0)])}
    cache = cache_response_logits(base, {300: second}, ["123+989="], ["2111"], base_step=100)
    fig = alpha_explorer(cache, grid, interactive=False, alpha=1.7, rl_accuracy={100: 0.05, 300: 0.1})
    assert len(fig.axes) == 2 and "alpha=1.70" in fig.axes[1].get_title()
    import ipywidgets

    drawn = []
    real_draw = widgets.draw_alpha_figure
    monkeypatch.setattr(widgets, "draw_alpha_figure", lambda c, g, t, a, r=None: drawn.append((t, a)) or real_draw(c, g, t, a, r))
    box = alpha_explorer(cache, grid, interactive=True, alpha=1.2)
    slider, dropdown = box.children[0].children
    assert isinstance(slider, ipywidgets.FloatSlider) and dropdown.options == (300,)
    slider.value = 2.5  # redraws through interactive_output
    assert drawn == [(300, 1.2), (300, 2.5)]
    with pytest.raises(ValueError, match="no cached logits"):
        alpha_explorer(cache, grid, interactive=False, t_second=5)


def test_alpha_one_is_second_bit_for_bit(tmp_path, pair):
    base, second = pair
    out = extrapolate_weights(base, second, tmp_path / "a1", alpha=1.0, progress=False)
    to, ts = tensors(out), tensors(second)
    assert all(torch.equal(to[k], ts[k]) for k in ts)
    assert torch.equal(ex.extrapolate_tensor(torch.tensor([0.1, 3.0]), torch.tensor([0.7, -2.3]), 1.0),
                       torch.tensor([0.7, -2.3]))
    problems = AdditionTask(TaskConfig(n_eval=4)).eval_problems
    cfg = EvalConfig(k=2, max_new_tokens=6)
    res = weight_extrapolation_accuracy(base, second, [1.0], tmp_path / "models", problems, cfg, progress=False)
    assert res[1.0].per_question == evaluate(second, problems, cfg, progress=False).per_question
    assert not (tmp_path / "models").exists()  # alpha = 1 evaluates second itself, no copy written
    with pytest.raises(ValueError, match="positive"):
        weight_extrapolation_accuracy(base, second, [0.0], tmp_path / "models", problems, cfg, progress=False)
