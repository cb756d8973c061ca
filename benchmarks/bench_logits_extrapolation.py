"""Throughput of the logits-extrapolation sampler (two models stepped together, PAPER.md Sec. 6) against
one model's HF `generate` with KV cache, on the same prompts, batch and length, in one run.

Goal (issue 6): two-model sampler >= 0.45x the tokens/s of HF generate (0.5x is the limit: two forwards
per token). Both decode exactly max_new_tokens per row (EOS never stops them), at temperature 0.6 and
top-p 0.95. Repetitions are interleaved so background load hits every row alike; the best (least
disturbed) repetition is compared, the median is shown beside it.

    .venv/bin/python benchmarks/bench_logits_extrapolation.py [--batch 64 --new-tokens 64 --reps 5 --threads 1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr_nb.extrapolate import LogitsExtrapolationPolicy
from rlvr_nb.evaluate import ModelPolicy
from rlvr_nb.models import build_tokenizer
from rlvr_nb.sampling import encode_prompts
from rlvr_nb.tasks import AdditionTask, TaskConfig


def bench_model(tok, seed: int, hidden: int, layers: int) -> Qwen2ForCausalLM:
    """A Qwen2 bigger than the embedded one (2 x 64) so that the forwards, not Python, dominate."""
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = build_tokenizer()
    base, second = bench_model(tok, 0, args.hidden, args.layers), bench_model(tok, 1, args.hidden, args.layers)
    prompts = [p.prompt for p in AdditionTask(TaskConfig(n_eval=args.batch)).eval_problems]
    ids, mask = encode_prompts(tok, prompts)  # [B, L]
    B, N = args.batch, args.new_tokens
    never = -1  # an EOS id that never occurs: every row decodes N tokens

    class NoEos:  # the same policies the evaluation uses, with EOS switched off
        eos_token_id, pad_token_id = never, tok.pad_token_id

        def get_vocab(self):
            return tok.get_vocab()

    one = ModelPolicy(second, NoEos())
    two = LogitsExtrapolationPolicy(ModelPolicy(base, NoEos()), ModelPolicy(second, NoEos()), alpha=1.5)
    sample_kw = dict(max_new_tokens=N, temperature=0.6, top_p=0.95)

    def run_hf() -> None:
        torch.manual_seed(0)
        with torch.no_grad():
            out = second.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.6, top_p=0.95,
                                  top_k=0, max_new_tokens=N, min_new_tokens=N, use_cache=True,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        assert out.shape == (B, ids.shape[1] + N), out.shape

    def run_policy(policy) -> None:
        tokens, m = policy.sample(ids, mask, generator=torch.Generator().manual_seed(0), **sample_kw)
        assert int(m.sum()) == B * N

    rows = {"HF generate, one model (KV cache)": run_hf,
            "rlvr_nb sampler, one model": lambda: run_policy(one),
            "logits extrapolation, two models": lambda: run_policy(two)}
    for fn in rows.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.reps):
        for name, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    n_params = sum(p.numel() for p in second.parameters())
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model: Qwen2 {args.layers} x {args.hidden} ({n_params / 1e6:.1f}M params)")
    print(f"batch {B}, prompt {ids.shape[1]} tokens, {N} new tokens per row, T=0.6, top-p=0.95, "
          f"best and median of {args.reps} interleaved repetitions\n")
    hf = min(times["HF generate, one model (KV cache)"])
    print(f"| {'sampler':<36} | {'best s':>7} | {'median s':>8} | {'tokens/s':>9} | {'vs HF':>6} |")
    print(f"|{'-' * 38}|{'-' * 9}|{'-' * 10}|{'-' * 11}|{'-' * 8}|")
    for name, ts in times.items():
        s = min(ts)
        print(f"| {name:<36} | {s:7.3f} | {statistics.median(ts):8.3f} | {B * N / s:9.0f} | {hf / s:5.2f}x |")
    ratio = hf / min(times["logits extrapolation, two models"])
    print(f"\ntwo-model sampler / HF generate = {ratio:.2f}x (goal >= 0.45x): {'met' if ratio >= 0.45 else 'NOT met'}")


if __name__ == "__main__":
    main()
