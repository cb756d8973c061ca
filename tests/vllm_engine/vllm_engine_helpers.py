"""Models, prompts and CPU references shared by the real-engine tests (imported by conftest.py and the
test modules; vLLM is imported only by the functions that need it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from rlvr_nb.backends.vllm_backend import VllmEngineConfig, completions_to_tensors, engine_generate
from rlvr_nb.backends.vllm_extrapolation import write_two_stack_checkpoint
from rlvr_nb.extrapolate import mix_logits
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer, load_model, load_tokenizer
from rlvr_nb.sampling import encode_prompts, generate
from rlvr_nb.tasks import AdditionTask, TaskConfig

# vLLM's CPU attention has kernels for head sizes 32, 64, 80, ... (not the embedded default's 16).
MODEL = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=256)
SHARPEN = 40.0
"""LM-head scale: a random model's logits are ~0.2 wide; x40 makes its responses likely but not certain
(a response sampled at T=1 equals the greedy one ~70% of the time), so sampling statistics are informative."""
MAX_TOKENS = 5  # 3-digit addition: 4 answer digits and EOS
N_PROMPTS = 512


@dataclass
class EngineModels:
    base_dir: Path
    second_dir: Path
    two_stack_dirs: dict[float, Path]
    tokenizer: object
    base: torch.nn.Module
    second: torch.nn.Module
    prompts: list[str]

    @property
    def vocab_size(self) -> int:
        return int(self.second.config.vocab_size)


def build_engine_models(root: Path) -> EngineModels:
    """A base checkpoint and a 'second' one (the base plus a random drift), saved as HF directories holding
    only weights, config and tokenizer (vLLM loads every *.safetensors of a directory), and the two-stack
    directories at alpha = 1 and 1.5. The CPU references are the models loaded back from those directories."""
    tok = build_tokenizer()
    base = build_model(MODEL, tok)
    second = build_model(MODEL, tok)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p_b, p_s in zip(base.parameters(), second.parameters()):
            p_s.copy_(p_b + 0.05 * torch.randn(p_b.shape, generator=g))
        base.lm_head.weight.mul_(SHARPEN)
        second.lm_head.weight.mul_(SHARPEN)
    for name, m in (("base", base), ("second", second)):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    two = {a: write_two_stack_checkpoint(root / "base", root / "second", root / f"two-{a:g}", alpha=a)
           for a in (1.0, 1.5)}
    prompts = [p.prompt for p in AdditionTask(TaskConfig(n_eval=N_PROMPTS)).eval_problems]
    return EngineModels(root / "base", root / "second", two, load_tokenizer(root / "second"),
                        load_model(root / "base"), load_model(root / "second"), prompts)


def engine_config(compiled: bool) -> VllmEngineConfig:
    return VllmEngineConfig(dtype="float32", enforce_eager=not compiled, max_model_len=64)


def token_prompts_of(tok, prompts: list[str]) -> list[dict]:
    return [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]


def vllm_run(llm, models: EngineModels, *, temperature: float, seeds: list[int] | None = None,
             logprobs: int | None = None, n: int = 1):
    """One request per prompt (request i seeded with seeds[i]); the raw vLLM outputs."""
    import vllm

    tok = models.tokenizer
    seeds = seeds or [None] * len(models.prompts)
    params = [vllm.SamplingParams(n=n, temperature=temperature, max_tokens=MAX_TOKENS, seed=s,
                                  stop_token_ids=[tok.eos_token_id], detokenize=False, logprobs=logprobs)
              for s in seeds]
    return engine_generate(llm, token_prompts_of(tok, models.prompts), params)


def response_ids(outputs) -> list[list[int]]:
    """Every completion's token ids, request-major."""
    return [list(c.token_ids) for o in outputs for c in o.outputs]


def hf_greedy(models: EngineModels, alpha: float | None) -> list[list[int]]:
    """The CPU sampler's greedy responses (with EOS) on every prompt: the second model alone (alpha None)
    or the logits extrapolation of base and second."""
    tok = models.tokenizer
    ids, mask = encode_prompts(tok, models.prompts)
    ms = [models.second] if alpha is None else [models.base, models.second]
    mix = None if alpha is None else (lambda ls: mix_logits(ls[0], ls[1], alpha))
    tokens, resp = generate(ms, ids, mask, max_new_tokens=MAX_TOKENS, eos_id=tok.eos_token_id,
                            pad_id=tok.pad_token_id, temperature=0.0, mix=mix)
    return [row[: int(m.sum())] for row, m in zip(tokens.tolist(), resp)]


@torch.no_grad()
def cpu_logprobs(models: EngineModels, prompt_ids: list[int], response: list[int], alpha: float | None) -> torch.Tensor:
    """log-softmax of the CPU next-token logits before each response token, [len(response), V], float64:
    the second model alone (alpha None) or mix_logits of base and second (teacher forcing)."""
    seq = torch.tensor([prompt_ids + response[:-1]])
    rows = slice(len(prompt_ids) - 1, None)
    l_second = models.second(seq).logits[0, rows].float()
    logits = l_second if alpha is None else mix_logits(models.base(seq).logits[0, rows].float(), l_second, alpha)
    return torch.log_softmax(logits.double(), -1)


def vllm_logprob_rows(completion, vocab_size: int) -> torch.Tensor:
    """A completion's returned log-probs (asked for the whole vocabulary) as [len(tokens), V], float64."""
    out = torch.full((len(completion.token_ids), vocab_size), float("nan"), dtype=torch.float64)
    for j, lp in enumerate(completion.logprobs):
        for t, v in lp.items():
            out[j, t] = v.logprob
    assert not torch.isnan(out).any(), "vLLM returned fewer log-probs than the vocabulary"
    return out


def total_variation(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-row total variation distance between two distributions given as log-probs [N, V]."""
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


def as_tensors(outputs, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return completions_to_tensors(response_ids(outputs), MAX_TOKENS, eos_id, pad_id)
