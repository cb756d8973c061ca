"""CPU tests of the vLLM sampling backend (rlvr_nb.backends.vllm_backend) without vLLM, driven by a fake
`vllm` module: plumbing, requests refused before the engine, chat prompts, and the compile-cache setting of a
two-stack engine. The same code in a real vLLM engine: tests/vllm_engine (.venv-vllm)."""

import os
import sys
import types

import pytest
import torch

from rlvr_nb.backends.vllm_extrapolation import ARCHITECTURE, write_two_stack_checkpoint
from rlvr_nb.models import build_tokenizer
from rlvr_nb.sampling import encode_prompts
from test_vllm_extrapolation import tiny_pair


# ----------------------------------------------------------------------------------------------------
# The sampling backend, with a fake vllm module


class FakeSamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class FakeLLM:
    """Answers an addition prompt `abc+def=` with the reversed sum and EOS (the right answer), n times."""

    instances: list = []

    def __init__(self, **kw):
        self.kw = kw
        self.calls = 0
        self.shut = False
        self.aot_compile_env = os.environ.get("VLLM_USE_AOT_COMPILE")  # what its engine processes would get
        self.llm_engine = types.SimpleNamespace(engine_core=types.SimpleNamespace(shutdown=self._shutdown),
                                                model_config=types.SimpleNamespace(get_vocab_size=lambda: 14))
        FakeLLM.instances.append(self)

    def _shutdown(self):
        self.shut = True

    def generate(self, prompts, params, use_tqdm=True):
        self.calls += 1
        tok = build_tokenizer()
        outs = []
        for p, sp in zip(prompts, params):
            assert sp.stop_token_ids == [tok.eos_token_id] and sp.detokenize is False
            text = tok.decode(p["prompt_token_ids"])
            a, b = text.rstrip("=").split("+")
            answer = str(int(a) + int(b)).zfill(len(a) + 1)[::-1]
            ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)] * sp.n))
        return outs


class FakeRegistry:
    archs: set = set()

    @classmethod
    def get_supported_archs(cls):
        return cls.archs

    @classmethod
    def register_model(cls, arch, qualname):
        cls.archs.add(arch)


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    FakeRegistry.archs = set()
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams,
                                                                   ModelRegistry=FakeRegistry))
    return FakeLLM


def test_vllm_generate_plumbing(tmp_path, fake_vllm):
    from rlvr_nb.backends.vllm_backend import VllmEngineConfig, vllm_generate

    tiny_pair(tmp_path)
    out = vllm_generate(tmp_path / "base", ["123+989=", "001+002="], n=3, max_tokens=6, seed=5,
                        engine=VllmEngineConfig(dtype="float32", hf_overrides={"extrapolation_alpha": 2.0}),
                        progress=False)
    assert out == [["2111"] * 3, ["3000"] * 3]
    llm = fake_vllm.instances[0]
    assert llm.kw["model"] == str((tmp_path / "base").resolve())
    assert llm.kw["skip_tokenizer_init"] is True and llm.kw["trust_remote_code"] is False
    assert llm.kw["dtype"] == "float32" and llm.kw["hf_overrides"] == {"extrapolation_alpha": 2.0}
    assert llm.shut  # an engine built inside the call is shut down


def test_vllm_policy_through_evaluate_with_cache(tmp_path, fake_vllm):
    from rlvr_nb.evaluate import EvalConfig, evaluate
    from rlvr_nb.tasks import AdditionTask, TaskConfig
    from rlvr_nb.backends.vllm_backend import VllmPolicy

    tiny_pair(tmp_path)
    problems = AdditionTask(TaskConfig(n_eval=16)).eval_problems
    with VllmPolicy(tmp_path / "base") as policy:
        r1 = evaluate(policy, problems, EvalConfig(k=4, max_new_tokens=6), cache_dir=tmp_path / "cache", progress=False)
        r2 = evaluate(policy, problems, EvalConfig(k=4, max_new_tokens=6), cache_dir=tmp_path / "cache", progress=False)
        calls = policy.llm.calls
    assert r1.avg_at_k == 1.0 and r1.pass_at_k[1] == 1.0
    assert r2.from_cache and calls == 1
    assert fake_vllm.instances[0].shut
    assert VllmPolicy(tmp_path / "base").fingerprint() != VllmPolicy(
        tmp_path / "base", engine=__import__("rlvr_nb.backends.vllm_backend").backends.vllm_backend.VllmEngineConfig(dtype="bfloat16")).fingerprint()


def test_completions_to_tensors_matches_generate_contract():
    from rlvr_nb.backends.vllm_backend import completions_to_tensors, token_prompts

    tokens, mask = completions_to_tensors([[5, 6, 1, 7], [5], [4, 4, 4, 4, 4, 4]], 4, eos_id=1, pad_id=0)
    assert tokens.tolist() == [[5, 6, 1, 0], [5, 0, 0, 0], [4, 4, 4, 4]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    ids = torch.tensor([[0, 0, 3, 4], [2, 3, 4, 5]])
    assert token_prompts(ids, (ids != 0).long()) == [{"prompt_token_ids": [3, 4]}, {"prompt_token_ids": [2, 3, 4, 5]}]


def test_backend_without_vllm_says_how_to_get_it(tmp_path, monkeypatch):
    from rlvr_nb.backends.vllm_backend import vllm_generate

    tiny_pair(tmp_path)
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="environment.yml"):
        vllm_generate(tmp_path / "base", ["1+1="])


def test_vllm_policy_reuses_a_given_engine_and_leaves_it_running(tmp_path, fake_vllm):
    from rlvr_nb.backends.vllm_backend import VllmPolicy, open_engine

    tiny_pair(tmp_path)
    llm = open_engine(tmp_path / "base")
    with VllmPolicy(tmp_path / "base", llm=llm) as policy:
        ids, mask = encode_prompts(build_tokenizer(), ["123+989="])
        tokens, _ = policy.sample(ids, mask, max_new_tokens=6, temperature=1.0, top_p=1.0, generator=torch.Generator())
    assert tokens[0, :5].tolist() == build_tokenizer()("2111", add_special_tokens=False)["input_ids"] + [1]
    assert len(fake_vllm.instances) == 1 and llm.calls == 1 and not llm.shut


# ----------------------------------------------------------------------------------------------------
# Requests refused before they reach the engine


def test_check_requests_refuses_what_would_stop_the_engine():
    from rlvr_nb.backends.vllm_backend import check_requests

    ok = [{"prompt_token_ids": [2, 3, 13]}]
    check_requests(ok, FakeSamplingParams(logprobs=14, prompt_logprobs=None), 14)
    check_requests(ok, FakeSamplingParams(logprobs=-1, prompt_logprobs=0), 14)
    cases = [
        (ok, FakeSamplingParams(logprobs=15), r"request 0: logprobs=15 but the model's vocabulary has 14 tokens; "
                                              r"ask for at most 14 \(or -1 for all\)"),
        (ok, [FakeSamplingParams(prompt_logprobs=20)], r"request 0: prompt_logprobs=20 but"),
        (ok + [{"prompt_token_ids": [2, 14, 99, 14]}], FakeSamplingParams(),
         r"request 1: prompt token ids \[14, 99\] lie outside the model's vocabulary \[0, 14\)"),
        (ok + [{"prompt_token_ids": [-1]}], FakeSamplingParams(), r"request 1: prompt token ids \[-1\]"),
        ([{"prompt_token_ids": []}], FakeSamplingParams(), "request 0: empty prompt"),
        (["123+456="], FakeSamplingParams(), r"request 0: give token prompts .* got str"),
        (ok, [FakeSamplingParams(), FakeSamplingParams()], "1 prompts but 2 sampling parameters"),
    ]
    for prompts, params, message in cases:
        with pytest.raises(ValueError, match=message):
            check_requests(prompts, params, 14)


def test_bad_requests_never_reach_the_engine(tmp_path, fake_vllm):
    """A tokenizer can be larger than the model (transformers adds special tokens missing from a vocabulary on
    load); ids beyond the model's vocabulary are refused before the engine sees them."""
    from rlvr_nb.backends.vllm_backend import VllmPolicy, engine_generate, open_engine

    tiny_pair(tmp_path)
    llm = open_engine(tmp_path / "base")
    with pytest.raises(ValueError, match=r"logprobs=15 but the model's vocabulary has 14 tokens"):
        engine_generate(llm, [{"prompt_token_ids": [2, 3]}], FakeSamplingParams(logprobs=15))
    with VllmPolicy(tmp_path / "base", llm=llm) as policy:
        ids = torch.tensor([[2, 3, 14], [2, 3, 4]])
        with pytest.raises(ValueError, match=r"request 0: prompt token ids \[14\] lie outside"):
            policy.sample(ids, torch.ones_like(ids), max_new_tokens=4, temperature=1.0, top_p=1.0,
                          generator=torch.Generator())
    assert llm.calls == 0


# ----------------------------------------------------------------------------------------------------
# Chat prompts: transformers 5.x returns a BatchEncoding from apply_chat_template(tokenize=True)


CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"


def test_encode_chat_takes_a_batch_encoding_or_a_list_of_ids():
    from rlvr_nb.backends.vllm_backend import encode

    tok = build_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    want = tok("12+34=", add_special_tokens=False)["input_ids"]
    assert encode(tok, ["12+34"], chat=True) == [{"prompt_token_ids": want}]
    assert encode(tok, ["12+34="]) == [{"prompt_token_ids": want}]

    class Returns:
        def __init__(self, value):
            self.value = value

        def apply_chat_template(self, *a, **kw):
            return self.value

    for value in (want, [want], {"input_ids": want}, {"input_ids": torch.tensor([want])}):
        assert encode(Returns(value), ["x"], chat=True) == [{"prompt_token_ids": want}]
    with pytest.raises(ValueError, match="apply_chat_template returned a dict without input_ids"):
        encode(Returns({"ids": want}), ["x"], chat=True)
    with pytest.raises(ValueError, match="not one list of token ids"):
        encode(Returns([want, want]), ["x"], chat=True)


# ----------------------------------------------------------------------------------------------------
# Compile caches: one per stack


def test_a_compiled_two_stack_engine_is_built_without_the_shared_aot_cache(tmp_path, fake_vllm, monkeypatch):
    """vLLM's AOT compile cache is one file that both stacks would write and load; open_engine switches it
    off for the engine processes of a compiled two-stack engine only, and restores this process's setting."""
    from rlvr_nb.backends.vllm_backend import VllmEngineConfig, open_engine

    tiny_pair(tmp_path)
    two = write_two_stack_checkpoint(tmp_path / "base", tmp_path / "second", tmp_path / "two", alpha=1.5)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    compiled = open_engine(two)
    eager = open_engine(two, VllmEngineConfig(enforce_eager=True))
    single = open_engine(tmp_path / "base")
    assert compiled.aot_compile_env == "0" and eager.aot_compile_env is None and single.aot_compile_env is None
    assert "VLLM_USE_AOT_COMPILE" not in os.environ and ARCHITECTURE in FakeRegistry.archs
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert open_engine(two).aot_compile_env == "0" and os.environ["VLLM_USE_AOT_COMPILE"] == "1"


def test_the_model_refuses_to_compile_with_the_shared_aot_cache():
    from rlvr_nb.backends.vllm_extrapolation import check_per_stack_compile_caches

    check_per_stack_compile_caches(compiled=False, aot_compile=True)
    check_per_stack_compile_caches(compiled=True, aot_compile=False)
    with pytest.raises(RuntimeError, match=r"AOT compile cache is on \(VLLM_USE_AOT_COMPILE=1\).*second decoder "
                                           r"stack would load the graph the first one saved.*enforce_eager=True"):
        check_per_stack_compile_caches(compiled=True, aot_compile=True)
