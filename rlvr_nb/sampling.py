"""KV-cached batched sampling, for one model or several stepped together on the same prefixes.

`generate` is the one decoding loop of the package: RL rollouts, evaluation, probe responses and the
logits-extrapolation sampler (Sec. 6, several models whose next-token logits are combined by `mix`) all
call it. Prompts are left-padded; each model keeps its own KV cache.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from transformers import DynamicCache, PreTrainedModel

Mix = Callable[[list[torch.Tensor]], torch.Tensor]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token from logits [B, V]: temperature, then top-p (nucleus), then a categorical draw.

    temperature == 0 is greedy decoding.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    models: PreTrainedModel | Sequence[PreTrainedModel],
    input_ids: torch.Tensor,  # [B, L], left-padded
    attention_mask: torch.Tensor | None,  # [B, L], 1 for real tokens; None when nothing is padded
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    mix: Mix | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample up to max_new_tokens per row. Returns (tokens [B, N], mask [B, N]); the mask covers the
    response tokens up to and including the first EOS; tokens after it are pad_id.

    With several models, each runs on the same prefix with its own KV cache and `mix` turns their
    next-token logits (a list of [B, V]) into the logits that are sampled from.
    """
    models = [models] if isinstance(models, PreTrainedModel) else list(models)
    if len(models) > 1 and mix is None:
        raise ValueError("several models need a `mix` function for their logits")
    B, L = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    all_real = bool(attention_mask.all())
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]
    caches = [DynamicCache() for _ in models]
    # transformers >= 5.2x names the cache argument `cache`; older releases call it `past_key_values`
    cache_kw = ["cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values" for m in models]

    def forward(ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = []
        for model, cache, kw in zip(models, caches, cache_kw):
            out = model(input_ids=ids, attention_mask=None if all_real else mask, position_ids=pos,
                        use_cache=True, logits_to_keep=1, **{kw: cache})
            logits.append(out.logits[:, -1].float())  # [B, V]
        return logits[0] if mix is None else mix(logits)

    logits = forward(input_ids, position_ids, attention_mask)
    next_pos = position_ids[:, -1:] + 1  # [B, 1]
    dev = input_ids.device
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    mask = torch.zeros((B, max_new_tokens), dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for i in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)  # [B]
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens[:, i] = tok
        mask[:, i] = (~done).long()
        done = done | (tok == eos_id)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, torch.ones((B, 1), dtype=attention_mask.dtype, device=dev)], dim=1)
        logits = forward(tok[:, None], next_pos, attention_mask)
        next_pos = next_pos + 1
    return tokens, mask


def encode_prompts(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask [B, L] (no special tokens added)."""
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def decode_responses(tokenizer, tokens: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Response strings without EOS and padding."""
    eos = tokenizer.eos_token_id
    out = []
    for row, m in zip(tokens.tolist(), mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep and t != eos]
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out
