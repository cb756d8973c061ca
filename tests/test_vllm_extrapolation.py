"""CPU tests of the two-stack logits-extrapolation model without vLLM: its mixing, weight names, checkpoint
writer and routing, driven by transformers stacks standing in for vLLM's (the sampling backend:
tests/test_vllm_backend.py). The same code in a real vLLM engine: tests/vllm_engine (.venv-vllm)."""

import hashlib
import inspect
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rlvr_nb.models import ModelConfig, build_model, build_tokenizer
from rlvr_nb.sampling import encode_prompts, generate
from rlvr_nb.checkpoint_files import CheckpointError
from rlvr_nb.extrapolate import mix_logits
from rlvr_nb.backends.vllm_extrapolation import (
    ARCHITECTURE, TwoStackExtrapolationForCausalLM, split_stack_weight_name, stack_weight_name,
    write_two_stack_checkpoint)


def tiny_pair(tmp_path: Path, second_seed: int = 1):
    """A tiny base checkpoint and a 'later' one (the base plus a random drift), saved as HF directories."""
    tok = build_tokenizer()
    base = build_model(ModelConfig(), tok)
    second = build_model(ModelConfig(), tok)
    g = torch.Generator().manual_seed(second_seed)
    with torch.no_grad():
        for p_b, p_s in zip(base.parameters(), second.parameters()):
            p_s.copy_(p_b + 0.05 * torch.randn(p_b.shape, generator=g))
    for name, m in (("base", base), ("second", second)):
        m.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    return tok, base, second


class HFStack(torch.nn.Module):
    """What the two-stack model needs from one vLLM stack, served by a transformers model on CPU, with
    the same parameter names: vLLM's flat token layout ([T] ids and positions, one sequence here) in,
    [T, H] hidden states out of forward; compute_logits applies the LM head."""

    def __init__(self, hf) -> None:
        super().__init__()
        self.model, self.lm_head = hf.model, hf.lm_head

    def forward(self, input_ids, positions):
        return self.model(input_ids=input_ids[None], position_ids=positions[None]).last_hidden_state[0]

    def compute_logits(self, hidden):
        return self.lm_head(hidden)

    def embed_input_ids(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def load_weights(self, weights):
        params = dict(self.named_parameters())
        names = set()
        for name, t in weights:
            params[name].data.copy_(t)
            names.add(name)
        return names


# ----------------------------------------------------------------------------------------------------
# The pure functions


def test_mix_logits_is_the_paper_formula_in_float32():
    g = torch.Generator().manual_seed(0)
    lb, ls = torch.randn(3, 11, generator=g).bfloat16(), torch.randn(3, 11, generator=g).bfloat16()
    out = mix_logits(lb, ls, 1.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, lb.float() + 1.5 * (ls.float() - lb.float()))
    torch.testing.assert_close(mix_logits(lb, ls, 0.0), lb.float())
    torch.testing.assert_close(mix_logits(lb, ls, 1.0), ls.float())
    with pytest.raises(ValueError, match="shapes differ"):
        mix_logits(lb, ls[:, :5], 1.0)


def test_one_mix_logits_in_float32_with_exact_endpoints():
    """The CPU policy and the vLLM model mix with the same function (rlvr_nb.extrapolate.mix_logits), whose
    stated precision is float32: within 1 ulp of float64 rounded to float32, and alpha = 0 / 1 give the
    base / second logits bit for bit."""
    import rlvr_nb.backends.vllm_extrapolation as ve
    import rlvr_nb.extrapolate as ex

    assert ve.mix_logits is ex.mix_logits
    g = torch.Generator().manual_seed(0)
    lb, ls = 10 * torch.randn(8, 1000, generator=g), 10 * torch.randn(8, 1000, generator=g)
    for alpha in (0.5, 1.5, 3.0):
        out = mix_logits(lb, ls, alpha)
        ref = (lb.double() + alpha * (ls.double() - lb.double())).float()
        assert out.dtype == torch.float32
        assert (out - ref).abs().max() <= 2 * torch.finfo(torch.float32).eps * ref.abs().max()
    assert torch.equal(mix_logits(lb, ls, 1.0), ls) and torch.equal(mix_logits(lb, ls, 0.0), lb)
    assert mix_logits(lb, ls, 0.0) is not lb  # a copy: vLLM's sampler may scale the logits in place


def test_stack_names_round_trip_and_keep_one_layer_integer():
    names = [n for n, _ in build_model(ModelConfig(), build_tokenizer()).named_parameters()]
    for stack in ("base", "second"):
        for n in names:
            full = stack_weight_name(stack, n)
            assert split_stack_weight_name(full) == (stack, n)
            if ".layers." in n:  # vLLM reads a layer's index from the one integer in its name
                assert [p for p in full.split(".") if p.isdigit()] == [p for p in n.split(".") if p.isdigit()]
                assert len([p for p in full.split(".") if p.isdigit()]) == 1
    for bad in ("model.layers.0.mlp.up_proj.weight", "third.lm_head.weight", "base"):
        with pytest.raises(ValueError, match="belongs to no stack"):
            split_stack_weight_name(bad)
    with pytest.raises(ValueError):
        stack_weight_name("stack2", "lm_head.weight")


# ----------------------------------------------------------------------------------------------------
# The two-stack checkpoint directory


def test_write_two_stack_checkpoint(tmp_path):
    tok, base, second = tiny_pair(tmp_path)
    out = write_two_stack_checkpoint(tmp_path / "base", tmp_path / "second", tmp_path / "two", alpha=1.5,
                                     t_base=0, t_second=300)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == [ARCHITECTURE]
    assert cfg["extrapolation_inner_architecture"] == "Qwen2ForCausalLM"
    assert cfg["extrapolation_alpha"] == 1.5 and cfg["extrapolation_t_second"] == 300
    assert cfg["hidden_size"] == base.config.hidden_size
    weight_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for stack, model in (("base", base), ("second", second)):
        sd = model.state_dict()
        for name, t in sd.items():
            key = stack_weight_name(stack, name)
            with safe_open(str(out / weight_map[key]), framework="pt") as f:
                torch.testing.assert_close(f.get_tensor(key), t, rtol=0, atol=0)
    assert len(weight_map) == 2 * len(base.state_dict())
    assert (out / "tokenizer.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left


def tree_digest(d: Path) -> dict[str, str]:
    """Every file under d (relative path) -> sha256 of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_write_two_stack_checkpoint_never_writes_into_its_inputs(tmp_path):
    """out_dir = base used to rewrite base/config.json and add an index (the package's readers then refused
    the run); now out_dir equal to, containing or inside an input is refused and base stays byte-identical."""
    tiny_pair(tmp_path)
    base, second = tmp_path / "base", tmp_path / "second"
    before = tree_digest(base)
    with pytest.raises(ValueError, match=r"out_dir .*base is one of the inputs .*refusing to write over it"):
        write_two_stack_checkpoint(base, second, base, alpha=1.5)
    with pytest.raises(ValueError, match="contains the input"):
        write_two_stack_checkpoint(base, second, tmp_path, alpha=1.5)
    with pytest.raises(ValueError, match="lies inside the input"):
        write_two_stack_checkpoint(base, second, second / "two", alpha=1.5)
    assert tree_digest(base) == before and not (second / "two").exists()
    out = write_two_stack_checkpoint(base, second, tmp_path / "two", alpha=1.5)
    with pytest.raises(FileExistsError, match="already exists"):
        write_two_stack_checkpoint(base, second, out, alpha=2.0)
    assert json.loads((out / "config.json").read_text())["extrapolation_alpha"] == 1.5
    write_two_stack_checkpoint(base, second, out, alpha=2.0, overwrite=True)  # ours: replaced as a whole
    assert json.loads((out / "config.json").read_text())["extrapolation_alpha"] == 2.0
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        write_two_stack_checkpoint(base, second, out, alpha=3.0, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and tree_digest(base) == before


def test_write_two_stack_checkpoint_refuses_a_corrupt_shard_naming_it(tmp_path):
    tiny_pair(tmp_path)
    f = tmp_path / "second" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])  # truncated copy
    with pytest.raises(CheckpointError, match=r"truncated safetensors file .*second/model.safetensors"):
        write_two_stack_checkpoint(tmp_path / "base", tmp_path / "second", tmp_path / "two", alpha=1.5)
    assert not (tmp_path / "two").exists()


def test_write_two_stack_checkpoint_refuses_different_architectures(tmp_path):
    tok = build_tokenizer()
    build_model(ModelConfig(), tok).save_pretrained(tmp_path / "a")
    build_model(ModelConfig(hidden_size=32, intermediate_size=128), tok).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="hidden_size"):
        write_two_stack_checkpoint(tmp_path / "a", tmp_path / "b", tmp_path / "out", alpha=1.0)
    with pytest.raises(FileNotFoundError):
        write_two_stack_checkpoint(tmp_path / "a", tmp_path / "missing", tmp_path / "out", alpha=1.0)


# ----------------------------------------------------------------------------------------------------
# The model class, with transformers stacks standing in for vLLM's


def loaded_two_stack(tmp_path, alpha):
    """Two-stack model whose stacks start from unrelated weights and load the written checkpoint."""
    tok, base, second = tiny_pair(tmp_path)
    out = write_two_stack_checkpoint(tmp_path / "base", tmp_path / "second", tmp_path / "two", alpha=alpha)
    fresh = [build_model(ModelConfig(init_seed=s), tok) for s in (7, 8)]
    model = TwoStackExtrapolationForCausalLM.from_stacks(HFStack(fresh[0]), HFStack(fresh[1]), alpha,
                                                         base.config.hidden_size)
    weights = [(k, v) for f in sorted(out.glob("*.safetensors")) for k, v in load_file(str(f)).items()]
    random.Random(0).shuffle(weights)  # vLLM gives no order guarantee across files
    loaded = model.load_weights(iter(weights))
    return tok, base, second, model, loaded


def test_load_weights_routes_every_tensor_to_its_stack(tmp_path):
    tok, base, second, model, loaded = loaded_two_stack(tmp_path, 1.5)
    # vLLM compares the returned names with the model's own parameter names
    assert loaded == {n for n, _ in model.named_parameters()}
    for stack, ref in (("base", base), ("second", second)):
        for n, p in ref.named_parameters():
            torch.testing.assert_close(model.get_parameter(f"{stack}.{n}"), p, rtol=0, atol=0)


@torch.no_grad()
def test_two_stack_logits_equal_the_mixed_logits_of_both_checkpoints(tmp_path):
    alpha = 1.5
    tok, base, second, model, _ = loaded_two_stack(tmp_path, alpha)
    ids = torch.tensor(tok("123+456=2", add_special_tokens=False)["input_ids"])  # [T]
    pos = torch.arange(len(ids))
    hidden = model(ids, pos)  # [T, 2H]
    assert hidden.shape == (len(ids), 2 * base.config.hidden_size)
    rows = torch.tensor([3, len(ids) - 1])  # vLLM computes logits only on the rows it samples from
    logits = model.compute_logits(hidden[rows])
    ref = mix_logits(base(ids[None]).logits[0, rows], second(ids[None]).logits[0, rows], alpha)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError):
        model(ids, pos, inputs_embeds=torch.zeros(len(ids), base.config.hidden_size))


@torch.no_grad()
def test_two_stack_greedy_decoding_matches_the_cpu_sampler(tmp_path):
    alpha = 2.0
    tok, base, second, model, _ = loaded_two_stack(tmp_path, alpha)
    prompts = ["123+456=", "999+001=", "500+500="]
    ids, mask = encode_prompts(tok, prompts)
    ref_tokens, ref_mask = generate([base, second], ids, mask, max_new_tokens=6, eos_id=tok.eos_token_id,
                                    pad_id=tok.pad_token_id, temperature=0.0,
                                    mix=lambda ls: mix_logits(ls[0], ls[1], alpha))
    for i, p in enumerate(prompts):  # the two-stack model, one sequence at a time, no KV cache
        seq = tok(p, add_special_tokens=False)["input_ids"]
        out = []
        for _ in range(6):
            t = torch.tensor(seq + out)
            nxt = int(model.compute_logits(model(t, torch.arange(len(t)))[-1:]).argmax(-1))
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
        n = int(ref_mask[i].sum())
        assert out == ref_tokens[i, :n].tolist()


def test_class_passes_vllm_interface_checks():
    """The checks vLLM's registry runs on a model class (interfaces_base.is_text_generation_model)."""
    cls = TwoStackExtrapolationForCausalLM
    init = inspect.signature(cls.__init__).parameters
    assert "vllm_config" in init and init["vllm_config"].kind is inspect.Parameter.KEYWORD_ONLY
    fwd = inspect.signature(cls.forward).parameters
    assert {"input_ids", "positions", "intermediate_tensors", "inputs_embeds"} <= set(fwd)
    for method in ("embed_input_ids", "compute_logits", "load_weights"):
        assert callable(getattr(cls, method))
    assert issubclass(cls, torch.nn.Module)


def test_module_imports_without_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    import importlib

    import rlvr_nb.backends.vllm_extrapolation as ve

    importlib.reload(ve)
    with pytest.raises(ImportError):
        ve.register()
