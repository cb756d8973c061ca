"""The tiny model of the embedded default: a `Qwen2ForCausalLM` from transformers and a character-level
`Qwen2Tokenizer`, saved as an ordinary HuggingFace directory.

Nothing is downloaded: both are built from a config and a seed. Loading never uses
`trust_remote_code` and reads weights from safetensors only.

Every engine must load the directory as it is, so the shapes follow what they accept: head size 32 (vLLM's CPU
attention has no kernel below 32), and a tokenizer that is a Qwen2 byte-level BPE with no merges. transformers
loads any `qwen2` model directory with `Qwen2Tokenizer` (Qwen's split regex, byte-level, NFC), so the vocabulary
is written in its byte-level alphabet: one token per character of `CHARS`, `Ċ` for "\n" (one token, as verl's
Qwen prompt builder requires), and Qwen's `<|endoftext|>` (padding) and `<|im_end|>` (end of response). The chat
template writes the messages' contents only, so a chat-formatted prompt is the bare prompt the model trained on.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.utils import logging as hf_logging

CHARS = "0123456789+="
PAD, EOS = "<|endoftext|>", "<|im_end|>"
NEWLINE = "\u010a"  # "Ċ": the byte-level form of "\n"
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Decoder layers."""
    num_heads: int = 2
    """Attention heads (query): 2 x 32 at width 64 (head size 32, the smallest vLLM's CPU attention runs)."""
    num_kv_heads: int = 2
    """Key/value heads (Qwen2 supports grouped-query attention; equal to num_heads is plain MHA)."""
    intermediate_size: int = 256
    """MLP width (4x hidden)."""
    max_positions: int = 64
    """Longest prompt + response in tokens."""
    init_seed: int = 0
    """Seed of the random initialisation."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level Qwen2 tokenizer: <|endoftext|> (pad) 0, <|im_end|> (eos) 1, one token per character of
    `CHARS`, then "\n"; a byte-level BPE without merges, so every character is its own token."""
    vocab = {PAD: 0, EOS: 1, **{c: i + 2 for i, c in enumerate(CHARS)}, NEWLINE: len(CHARS) + 2}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=PAD, eos_token=EOS, pad_token=PAD, padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    return tok


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
