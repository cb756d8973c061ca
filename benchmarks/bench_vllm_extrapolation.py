"""Logits extrapolation in one vLLM engine (two decoder stacks) against a single-model engine: decode
tokens/s on the same prompts. Issue 8's goal: the two-stack engine reaches >= 0.5x the single model.

    python benchmarks/bench_vllm_extrapolation.py [--layers 24 --hidden 1024 --prompts 256 --max-tokens 256]

The models are built here (Qwen2 architecture, random initialisation, nothing downloaded): a base and a
'second' checkpoint (the base plus a small drift). Responses ignore EOS so both engines decode exactly
prompts x max_tokens tokens. Without a CUDA GPU and vLLM it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch


def build_pair(root: Path, layers: int, hidden: int, vocab: int) -> tuple[Path, Path]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                      max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(root / "second")
    return root / "base", root / "second"


def tokens_per_s(model_dir: Path, prompts: list[list[int]], max_tokens: int, gpu_mem: float) -> float:
    from rlvr_nb.backends.vllm_backend import VllmEngineConfig, close_engine, import_vllm, open_engine

    vllm = import_vllm()
    llm = open_engine(model_dir, VllmEngineConfig(dtype="bfloat16", gpu_memory_utilization=gpu_mem))
    try:
        params = vllm.SamplingParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens, ignore_eos=True,
                                     detokenize=False, seed=0)
        llm.generate([{"prompt_token_ids": p} for p in prompts[:8]], params, use_tqdm=False)  # warm-up
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        elapsed = time.perf_counter() - t0
    finally:
        close_engine(llm)
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--gpu-mem", type=float, default=0.6)
    a = ap.parse_args()
    if not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        print("bench_vllm_extrapolation: skipped (needs a CUDA GPU and vllm, see environment.yml)")
        return
    from rlvr_nb.backends.vllm_extrapolation import write_two_stack_checkpoint

    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(2, a.vocab, (a.prompts, a.prompt_len), generator=g).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        base, second = build_pair(Path(tmp), a.layers, a.hidden, a.vocab)
        two = write_two_stack_checkpoint(base, second, Path(tmp) / "two", alpha=1.5)
        single = tokens_per_s(base, prompts, a.max_tokens, a.gpu_mem)
        double = tokens_per_s(two, prompts, a.max_tokens, a.gpu_mem)
    print(f"GPU: {torch.cuda.get_device_name()}; Qwen2 {a.layers} layers x {a.hidden}, vocab {a.vocab}, bf16; "
          f"{a.prompts} prompts x {a.prompt_len} tokens, {a.max_tokens} new tokens each")
    print(f"{'engine':<28}{'tokens/s':>12}{'vs single':>11}")
    print(f"{'single model':<28}{single:>12.0f}{1.0:>11.2f}")
    print(f"{'two-stack extrapolation':<28}{double:>12.0f}{double / single:>11.2f}   (goal >= 0.50)")


if __name__ == "__main__":
    main()
