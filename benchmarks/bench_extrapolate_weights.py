"""Peak memory of the weight-extrapolation writer (PAPER.md Sec. 6) on a fabricated pair of
1B-parameter checkpoints (bf16, about 2 GB each, sharded like a HuggingFace save).

Goal (issue 6): peak RSS under 2 GiB, i.e. streamed tensor by tensor, never three whole models in
memory. The writer runs in a fresh subprocess that reports its VmHWM (peak resident set) from
/proc/self/status, before and after the call. The checkpoints live in a temporary directory that is
deleted afterwards (about 6 GB of disk: two inputs and the output).

    .venv/bin/python benchmarks/bench_extrapolate_weights.py [--layers 20 --dir /tmp --threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2Config

from rlvr_nb.checkpoint_writes import write_safetensors
from rlvr_nb.models import build_tokenizer

WRITER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from rlvr_nb.extrapolate import extrapolate_weights

def status():
    return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(("VmHWM", "VmRSS"))}

before = status()
t0 = time.perf_counter()
extrapolate_weights(sys.argv[1], sys.argv[2], sys.argv[3], target_step=600, progress=False)
seconds = time.perf_counter() - t0
print(json.dumps({"before": before, "after": status(), "seconds": seconds}))
"""


def qwen2_specs(cfg: Qwen2Config) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor names and shapes of a Qwen2ForCausalLM state dict."""
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    specs = [("model.embed_tokens.weight", (cfg.vocab_size, h))]
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        specs += [(p + "input_layernorm.weight", (h,)),
                  (p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.q_proj.bias", (h,)),
                  (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.k_proj.bias", (kv,)),
                  (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.v_proj.bias", (kv,)),
                  (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i))]
    return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (cfg.vocab_size, h))]


def fabricate(d: Path, cfg: Qwen2Config, step: int, seed: int, shard_bytes: int) -> int:
    """A sharded bf16 checkpoint of random weights, written tensor by tensor. Returns its bytes."""
    d.mkdir(parents=True)
    specs = qwen2_specs(cfg)
    shards, cur, size = [], [], 0
    for name, shape in specs:
        n = math.prod(shape) * 2
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += n
    shards.append(cur)
    g = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"

        def chunks():
            for name, shape in shard:
                rows = shape[0]
                step_rows = max(1, (1 << 24) // max(1, math.prod(shape[1:])))
                for r in range(0, rows, step_rows):
                    yield (0.02 * torch.randn((min(step_rows, rows - r), *shape[1:]), generator=g)).to(torch.bfloat16)

        write_safetensors(d / fname, [(n, "BF16", s) for n, s in shard], {"format": "pt"}, chunks())
        weight_map.update({n: fname for n, _ in shard})
        total += sum(math.prod(s) * 2 for _, s in shard)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    cfg.to_json_file(d / "config.json")
    build_tokenizer().save_pretrained(d)
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=20, help="20 layers of width 2048 is ~1.0B parameters")
    ap.add_argument("--shard-mb", type=int, default=500)
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the temporary checkpoints go")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = Qwen2Config(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=args.layers,
                      num_attention_heads=32, num_key_value_heads=4, tie_word_embeddings=False, torch_dtype="bfloat16")
    n_params = sum(math.prod(s) for _, s in qwen2_specs(cfg))
    need = 3 * 2 * n_params * 1.05
    free = shutil.disk_usage(args.dir).free
    print(f"disk free in {args.dir}: {free / 2**30:.1f} GiB, needed: {need / 2**30:.1f} GiB")
    if free < need * 1.2:
        sys.exit(f"not enough free disk in {args.dir}; use --dir or fewer --layers")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_extrapolate_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        size = fabricate(root / "step_0", cfg, 0, seed=0, shard_bytes=args.shard_mb << 20)
        fabricate(root / "step_300", cfg, 300, seed=1, shard_bytes=args.shard_mb << 20)
        fab_seconds = time.perf_counter() - t0
        n_shards = len(list((root / "step_300").glob("*.safetensors")))
        out = subprocess.run([sys.executable, "-c", WRITER, str(root / "step_0"), str(root / "step_300"),
                              str(root / "extra_600"), str(args.threads)], capture_output=True, text=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
        if out.returncode != 0:
            sys.exit(f"writer failed:\n{out.stderr}")
        m = json.loads(out.stdout.strip().splitlines()[-1])
        # spot check: one extrapolated row equals base + 2 (second - base), rounded to bf16
        from rlvr_nb.checkpoint_files import read_rows, read_weight_index

        name = "model.layers.0.mlp.down_proj.weight"
        rows = [read_rows(read_weight_index(root / d)[name], name, 0, 1).float() for d in ("step_0", "step_300", "extra_600")]
        ok = torch.equal(rows[2], (rows[0] + 2.0 * (rows[1] - rows[0])).to(torch.bfloat16).float())

    gib = 2**30
    peak, before = m["after"]["VmHWM"], m["before"]["VmHWM"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    print(f"checkpoints: Qwen2 {args.layers} x 2048, {n_params / 1e9:.2f}B parameters, bf16, "
          f"{size / gib:.2f} GiB each in {n_shards} shards (fabricated in {fab_seconds:.0f} s, deleted after)\n")
    print(f"| {'measure':<44} | {'value':>10} |")
    print(f"|{'-' * 46}|{'-' * 12}|")
    print(f"| {'peak RSS of the writer process (VmHWM)':<44} | {peak / gib:6.2f} GiB |")
    print(f"| {'  of which: after imports, before the call':<44} | {before / gib:6.2f} GiB |")
    print(f"| {'one checkpoint, for scale':<44} | {size / gib:6.2f} GiB |")
    print(f"| {'wall time of extrapolate_weights':<44} | {m['seconds']:8.1f} s |")
    print(f"| {'throughput (2 read + 1 written)':<44} | {3 * size / gib / m['seconds']:4.2f} GiB/s |")
    print(f"| {'spot check: out = base + 2 (second - base)':<44} | {str(ok):>10} |")
    print(f"\npeak RSS {peak / gib:.2f} GiB (goal < 2 GiB): {'met' if peak < 2 * gib else 'NOT met'}")


if __name__ == "__main__":
    main()
