"""Logits extrapolation (PAPER.md Sec. 6) at vLLM speed: one engine, one model class holding two decoder
stacks (base and second checkpoint, same architecture), whose next-token logits are

    l = l_base + alpha (l_second - l_base)        in float32,

so that vLLM's own sampler applies temperature and top-p, and continuous batching, prefix caching and the
paged KV cache work unchanged. How it fits into vLLM (checked against vLLM 0.24's source):

- The class is registered out of tree (`register()`: `ModelRegistry.register_model`, also usable as a
  `vllm.general_plugins` entry point so that spawned engine processes see it).
- `forward` runs both stacks on the same tokens and returns their final hidden states side by side,
  [T, 2H]; `compute_logits` splits them, applies each stack's LM head and mixes in float32. vLLM only
  calls compute_logits on the rows it samples, so the mixing costs nothing on prefill rows.
- Each stack's attention layers are ordinary vLLM layers named `base.model.layers.N...` and
  `second.model.layers.N...`: vLLM allocates a KV cache for each and both share one block table (two
  layers per layer index is the encoder-decoder case vLLM's runner accepts on CUDA). Stack prefixes hold
  no digits, since vLLM reads the layer index from the one integer in a layer's name.
- Each stack is built under its own `set_model_tag`, so torch.compile caches of the two stacks are kept
  apart (as vLLM's Gemma3n does for its two decoders).
- Weights come from one directory written by `write_two_stack_checkpoint`: both checkpoints' safetensors
  with names prefixed `base.` / `second.`, and the base config with `architectures` set to this class and
  `extrapolation_alpha` (overridable per engine: `LLM(..., hf_overrides={"extrapolation_alpha": a})`).

Everything that does not need vLLM (the mixing, the name mapping, the checkpoint writer, the routing of
weights and hidden states) is plain torch and tested on CPU; vLLM is imported only inside the methods
that build the stacks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch

ARCHITECTURE = "TwoStackExtrapolationForCausalLM"
STACKS = ("base", "second")
SMALL_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
               "tokenizer.model", "chat_template.jinja", "generation_config.json")
# Config entries that must agree between the two checkpoints (same architecture, same shapes).
SHAPE_KEYS = ("model_type", "architectures", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "tie_word_embeddings", "head_dim")


def mix_logits(l_base: torch.Tensor, l_second: torch.Tensor, alpha: float) -> torch.Tensor:
    """PAPER.md Sec. 6, logits extrapolation: l_base + alpha (l_second - l_base), computed in float32. [N, V]"""
    if l_base.shape != l_second.shape:
        raise ValueError(f"logit shapes differ: {tuple(l_base.shape)} vs {tuple(l_second.shape)}")
    b = l_base.float()
    return b + alpha * (l_second.float() - b)


def alpha_from_steps(t_base: float, t_second: float, t_target: float) -> float:
    """PAPER.md Sec. 6: alpha = (t_target - t_base) / (t_second - t_base)."""
    if t_second == t_base:
        raise ValueError("t_second must differ from t_base")
    return (t_target - t_base) / (t_second - t_base)


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


def layer_index(name: str) -> int:
    """The layer index vLLM reads from a layer name: its one integer component (vLLM asserts there is one)."""
    ints = [int(p) for p in name.split(".") if p.isdigit()]
    if len(ints) != 1:
        raise ValueError(f"layer name {name!r} must hold exactly one integer, holds {ints}")
    return ints[0]


# ----------------------------------------------------------------------------------------------------
# The two-stack checkpoint directory


def _config(path: Path) -> dict:
    f = path / "config.json"
    if not f.exists():
        raise FileNotFoundError(f"{path} has no config.json (not a HuggingFace model directory)")
    return json.loads(f.read_text())


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.exists():
        return [path / s for s in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    raise FileNotFoundError(f"{path} holds no model.safetensors (or model.safetensors.index.json)")


def check_same_architecture(base_cfg: dict, second_cfg: dict) -> None:
    diffs = [f"{k}: {base_cfg.get(k)!r} vs {second_cfg.get(k)!r}" for k in SHAPE_KEYS if base_cfg.get(k) != second_cfg.get(k)]
    if diffs:
        raise ValueError("base and second checkpoints differ in architecture: " + "; ".join(diffs))


def write_two_stack_checkpoint(base_dir: str | Path, second_dir: str | Path, out_dir: str | Path, alpha: float,
                               t_base: float | None = None, t_second: float | None = None) -> Path:
    """Write the directory vLLM loads the two-stack model from: every safetensors shard of both
    checkpoints with tensor names prefixed `base.` / `second.` (one input shard in memory at a time),
    an index, the base config with architectures = [TwoStackExtrapolationForCausalLM], the inner
    architecture and alpha, and the second checkpoint's tokenizer files."""
    from safetensors.torch import load_file, save_file

    base_dir, second_dir, out_dir = Path(base_dir), Path(second_dir), Path(out_dir)
    base_cfg, second_cfg = _config(base_dir), _config(second_dir)
    check_same_architecture(base_cfg, second_cfg)
    inner = (base_cfg.get("architectures") or [None])[0]
    if inner is None:
        raise ValueError(f"{base_dir}/config.json names no architecture")
    if inner == ARCHITECTURE:
        raise ValueError(f"{base_dir} is already a two-stack checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for stack, src in zip(STACKS, (base_dir, second_dir)):
        files = _weight_files(src)
        for i, f in enumerate(files):
            tensors = {stack_weight_name(stack, k): v for k, v in load_file(str(f)).items()}
            name = f"{stack}-{i + 1:05d}-of-{len(files):05d}.safetensors"
            save_file(tensors, str(out_dir / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in tensors})
            total_bytes += sum(v.numel() * v.element_size() for v in tensors.values())
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=1))
    cfg = dict(base_cfg)
    cfg.update({"architectures": [ARCHITECTURE], "extrapolation_inner_architecture": inner,
                "extrapolation_alpha": float(alpha), "extrapolation_t_base": t_base,
                "extrapolation_t_second": t_second, "extrapolation_base_path": str(base_dir.resolve()),
                "extrapolation_second_path": str(second_dir.resolve())})
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in SMALL_FILES:
        if (second_dir / f).exists():
            shutil.copyfile(second_dir / f, out_dir / f)
    return out_dir


# ----------------------------------------------------------------------------------------------------
# The vLLM model class (plain nn.Module; vLLM is imported only when the stacks are built)


class TwoStackExtrapolationForCausalLM(torch.nn.Module):
    """vLLM model: base and second decoder stacks on the same tokens; logits mixed by `mix_logits`.

    Each stack is the vLLM implementation of the checkpoints' own architecture (e.g. Qwen2ForCausalLM),
    so its weight-name mapping (fused qkv / gate_up projections) and LM head are vLLM's."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        from vllm.compilation.backends import set_model_tag
        from vllm.model_executor.models.registry import ModelRegistry
        from vllm.model_executor.models.utils import maybe_prefix

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
        """Each stack's LM head on its half, mixed in float32. [N, 2H] -> [N, V]"""
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
