"""The tiny model of the embedded default: a `Qwen2ForCausalLM` from transformers and a character-level
tokenizer built with the `tokenizers` library, saved as an ordinary HuggingFace directory.

Nothing is downloaded: both are built from a config and a seed. Loading never uses
`trust_remote_code` and reads weights from safetensors only.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as hf_logging

CHARS = "0123456789+="
PAD, EOS = "<pad>", "<eos>"


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (query)."""
    num_kv_heads: int = 4
    """Key/value heads (Qwen2 supports grouped-query attention; equal to num_heads is plain MHA)."""
    intermediate_size: int = 256
    """MLP width (4x hidden)."""
    max_positions: int = 64
    """Longest prompt + response in tokens."""
    init_seed: int = 0
    """Seed of the random initialisation."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of `CHARS`, plus <pad> and <eos>."""
    vocab = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2ForCausalLM:
    """A freshly initialised tiny Qwen2 (about 130k parameters at the defaults)."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        model = Qwen2ForCausalLM(config)
    return model.float().eval()


@contextlib.contextmanager
def quiet_transformers():
    """Switch transformers' per-file progress bars off for a block, restoring the previous setting."""
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> Qwen2ForCausalLM:
    """Load a HuggingFace causal LM directory (safetensors only, never remote code)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no model directory at {path}")
    with quiet_transformers():  # no "Loading weights" bar per checkpoint (analyses load dozens)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, use_safetensors=True)
    return model.eval()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved beside a model (never remote code)."""
    return AutoTokenizer.from_pretrained(Path(path), trust_remote_code=False)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
