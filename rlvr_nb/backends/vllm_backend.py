"""Sampling and evaluation with vLLM (GPU): the same prompts, tokens and grading as the CPU sampler.

Prompts are tokenized by the checkpoint's own tokenizer exactly as `rlvr_nb.sampling.encode_prompts`
does, sent to `vllm.LLM` as token ids (the engine never tokenizes, so a tokenizer vLLM does not know,
like the embedded task's character tokenizer, works), stopped at the tokenizer's EOS, and decoded by
`rlvr_nb.sampling.decode_responses`. `VllmPolicy` plugs into `rlvr_nb.evaluate.evaluate` (same API,
same grading, same cache; its fingerprint says "vllm", so CPU and vLLM samples are cached apart).

A checkpoint directory written by `rlvr_nb.backends.vllm_extrapolation.write_two_stack_checkpoint` is the logits
extrapolation of two checkpoints; `open_engine` registers its model class before building the engine.

vLLM is imported only when an engine is built: a CPU install never needs it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from rlvr_nb.checkpoint_files import CheckpointError, read_json, weight_files
from rlvr_nb.models import load_tokenizer
from rlvr_nb.sampling import decode_responses

VLLM_VERSION = "0.24.0"  # what environment.yml pins (verl 0.9.1's vllm extra)


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
        raise ImportError(f"vLLM is not installed; it needs a CUDA GPU: create the environment.yml "
                          f"environment (vllm=={VLLM_VERSION}) or use the CPU sampler (profile cpu)") from e
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
    """A `vllm.LLM` on a local HuggingFace directory (a two-stack extrapolation directory included)."""
    model_dir = Path(model_dir)
    config = model_config(model_dir)
    vllm = import_vllm()
    from rlvr_nb.backends.vllm_extrapolation import ARCHITECTURE, register

    if ARCHITECTURE in (config.get("architectures") or []):
        register()
    return vllm.LLM(**engine_kwargs(model_dir, engine))


def model_config(model_dir: Path) -> dict:
    """config.json of a HuggingFace model directory that holds safetensors weights, or one clear error
    naming the directory (vLLM is asked to load nothing else: never pickled weights)."""
    f = model_dir / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{model_dir} is not a HuggingFace model directory (no config.json)")
    weight_files(model_dir)  # FileNotFoundError naming the directory (and any pickles found instead)
    config = read_json(f)
    if not isinstance(config, dict):
        raise CheckpointError(f"{f} is a JSON {type(config).__name__}, not an object")
    return config


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


def encode(tokenizer, prompts: Sequence[str], chat: bool = False) -> list[dict]:
    """Token prompts as the CPU path encodes them (no special tokens), or through the chat template."""
    if chat:
        return [{"prompt_token_ids": tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                                   add_generation_prompt=True, tokenize=True)}
                for p in prompts]
    return [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]


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
        outputs = llm.generate(encode(tok, prompts, chat), params, use_tqdm=progress)
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

    The engine is built on first use and kept until `close()` (or the end of a `with` block). Each row's
    seed is drawn from the evaluator's torch.Generator, so results are reproducible and cacheable."""

    def __init__(self, path: str | Path, engine: VllmEngineConfig = VllmEngineConfig(), label: str | None = None) -> None:
        self.path = Path(path)
        model_config(self.path)
        self.engine = engine
        self.label = label or self.path.name
        self._llm = None
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
        outputs = self.llm.generate(token_prompts(input_ids, attention_mask), params, use_tqdm=False)
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
        if self._llm is not None:
            close_engine(self._llm)
            self._llm = None

    def __enter__(self) -> "VllmPolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VllmPolicy({self.label!r})"
