"""Weight R^2 over every parameter: our streaming engine against the machine's memory bandwidth and
against the paper's original method, on a fabricated trajectory of 14 bf16 checkpoints.

    .venv/bin/python benchmarks/bench_r2.py            # ~58M-parameter Qwen2-like model, 14 checkpoints
    .venv/bin/python benchmarks/bench_r2.py --layers 2 # smaller, faster
    git archive HEAD~1 | tar -x -C /tmp/before         # an older engine, run side by side:
    .venv/bin/python benchmarks/bench_r2.py --baseline /tmp/before --repeats 3 --data /tmp/bench_r2_data

Prints one table. Goals: ours >= 50% of memory-copy bandwidth for the same bytes, peak RSS < 2 GiB,
>= 100x the paper's method in parameters per second. Each method runs in its own subprocess so that its
peak RSS (VmHWM, which includes the interpreter, torch and numba) is its own. On a loaded machine compare
engines with --baseline: the runs are interleaved, so that both see the same load, and the table ends
with the speed-ups; the memory-copy rate is measured in the same run.

Two rows split our time into phases: "reads only" maps every chunk as the engine does and faults its
pages in (no statistics); "statistics only" times just the kernel (`chunk_stats`) on chunks already
copied into memory (so read from the cache, where the full run reads the page cache's memory). What the
full run spends beyond the two is memory traffic, Python per tensor and chunk (examples, exact medians of
small tensors, summaries) and page faults.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

T = 14  # checkpoints, as in the paper (steps 0, 100, ..., 1300)
STEPS = [100 * i for i in range(T)]


def qwen2_like_shapes(hidden: int, layers: int, intermediate: int, vocab: int, kv_heads_frac: int = 1) -> dict:
    """Tensor names and shapes of a Qwen2ForCausalLM (untied embeddings)."""
    kv = hidden // kv_heads_frac
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                   p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.q_proj.bias": (hidden,),
                   p + "self_attn.k_proj.weight": (kv, hidden), p + "self_attn.k_proj.bias": (kv,),
                   p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.v_proj.bias": (kv,),
                   p + "self_attn.o_proj.weight": (hidden, hidden), p + "mlp.gate_proj.weight": (intermediate, hidden),
                   p + "mlp.up_proj.weight": (intermediate, hidden), p + "mlp.down_proj.weight": (hidden, intermediate)}
    return shapes


def fabricate(root: Path, shapes: dict, seed: int = 0) -> list[Path]:
    """14 bf16 checkpoints: w_t = w_0 + drift * t + accumulated noise, written as model.safetensors."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    state = {n: 0.02 * torch.randn(s, generator=g) if len(s) > 1 else torch.ones(s) for n, s in shapes.items()}
    drift = {n: 3e-4 * torch.randn(s, generator=g) for n, s in shapes.items()}
    dirs = []
    for k, step in enumerate(STEPS):
        d = root / f"step_{step}"
        d.mkdir(parents=True)
        if k:
            for n in state:
                state[n] += drift[n] + 2e-4 * torch.randn(shapes[n], generator=g)
        save_file({n: w.to(torch.bfloat16) for n, w in state.items()}, str(d / "model.safetensors"))
        dirs.append(d)
    return dirs


def memcpy_bandwidth(n_bytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes per second of numpy copying a buffer far larger than the caches (best of `repeats`)."""
    src = np.ones(n_bytes, np.uint8)
    dst = np.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return n_bytes / best


# ---------------------------------------------------------------------------------------------
# The two methods, each run in a subprocess


def worker_ours(root: Path, drift: bool) -> dict:
    from rlvr_nb.linearity import LinearityConfig, weight_linearity
    from rlvr_nb.trajectory import load_trajectory

    warm_kernel()
    rss_before = peak_rss_bytes()
    cpu0 = cpu_seconds()
    t = time.perf_counter()
    traj = load_trajectory([(s, root / f"step_{s}") for s in STEPS], progress=False)
    res = weight_linearity(traj, LinearityConfig(drift=drift), progress=False)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0, "analysed": res.overall.total,
            "median": res.overall.median,
            "frac_above": res.overall.frac_above, "kept": res.overall.count,
            "rss_bytes": peak_rss_bytes(), "rss_after_imports": rss_before}


def warm_kernel() -> None:
    """Load the compiled kernel for T bf16 rows (compiled once per T and width, then cached on disk)."""
    from rlvr_nb.streaming import ChunkAccumulator, chunk_stats

    chunk_stats(np.zeros((T, 8), np.uint16), np.arange(float(T)), ChunkAccumulator(T), min_range=0, min_distinct=4,
                threshold=0.7, gram=True)


def worker_read(root: Path) -> dict:
    """Only the reads our engine does (every chunk mapped across the checkpoints and its pages faulted in,
    then released), no statistics."""
    from rlvr_nb.linearity import LinearityConfig
    from rlvr_nb.trajectory import MappedReader, load_trajectory

    rss_before = peak_rss_bytes()
    cpu0 = cpu_seconds()
    t = time.perf_counter()
    traj = load_trajectory([(s, root / f"step_{s}") for s in STEPS], progress=False)
    chunk = LinearityConfig().chunk_elems
    page = 4096
    with MappedReader(traj) as mapped:
        for name, info in traj.tensors.items():
            for start in range(0, info.numel, chunk):
                stop = min(start + chunk, info.numel)
                if not mapped.serves(name):
                    traj.read(name, start, stop)
                    continue
                for row in mapped.rows(name, start, stop):
                    row[::page // row.itemsize].max(initial=0)  # one value per page: every page faulted in
                mapped.release(name, start, stop)
    return {"seconds": time.perf_counter() - t, "analysed": traj.n_params, "median": math.nan,
            "frac_above": math.nan, "kept": 0, "cpu_seconds": cpu_seconds() - cpu0, "rss_bytes": peak_rss_bytes(),
            "rss_after_imports": rss_before}


def worker_stats(root: Path) -> dict:
    """Only our kernel: `chunk_stats` on every chunk, each read into memory first (reads not timed)."""
    from rlvr_nb.linearity import LinearityConfig
    from rlvr_nb.streaming import ChunkAccumulator, chunk_stats
    from rlvr_nb.trajectory import load_trajectory

    warm_kernel()
    rss_before = peak_rss_bytes()
    traj = load_trajectory([(s, root / f"step_{s}") for s in STEPS], progress=False)
    cfg = LinearityConfig()
    acc = ChunkAccumulator(T)
    steps = np.array(STEPS, np.float64)
    seconds = cpu = 0.0
    for name, info in traj.tensors.items():
        for start in range(0, info.numel, cfg.chunk_elems):
            raw = traj.read(name, start, min(start + cfg.chunk_elems, info.numel))
            cpu0, t = cpu_seconds(), time.perf_counter()
            chunk_stats(raw, steps, acc, min_range=cfg.min_range, min_distinct=cfg.min_distinct,
                        threshold=cfg.threshold, gram=cfg.drift)
            seconds += time.perf_counter() - t
            cpu += cpu_seconds() - cpu0
    acc.close()
    hist, counts = acc.take_counts()
    return {"seconds": seconds, "cpu_seconds": cpu, "analysed": traj.n_params, "median": math.nan,
            "frac_above": counts[2] / max(counts[0], 1), "kept": int(counts[0]), "rss_bytes": peak_rss_bytes(),
            "rss_after_imports": rss_before}


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker_paper(root: Path, fraction: float = 1e-3, min_samples: int = 50) -> dict:
    """The original method: load every checkpoint fully, sample 0.1% of each tensor (at least 50 entries),
    then a Python loop over the sampled entries with np.polyfit and the range / distinct filters."""
    from safetensors.torch import load_file

    rss_before = peak_rss_bytes()
    cpu0 = cpu_seconds()
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    samples: dict[str, list[np.ndarray]] = {}
    index: dict[str, np.ndarray] = {}
    for s in STEPS:
        state = load_file(str(root / f"step_{s}" / "model.safetensors"))  # the whole checkpoint
        for name, w in state.items():
            flat = w.float().numpy().reshape(-1)
            if name not in index:
                k = min(flat.size, max(min_samples, math.ceil(fraction * flat.size)))
                index[name] = rng.choice(flat.size, size=k, replace=False)
            samples.setdefault(name, []).append(flat[index[name]].astype(np.float64))
        del state
    steps = np.array(STEPS, np.float64)
    r2s = []
    analysed = 0
    for rows in samples.values():
        values = np.stack(rows)  # [T, k]
        for j in range(values.shape[1]):
            w = values[:, j]
            analysed += 1
            if w.max() - w.min() <= 1e-4 or len(np.unique(w)) < 4:
                continue
            slope, intercept = np.polyfit(steps, w, 1)
            resid = w - (slope * steps + intercept)
            r2s.append(1 - (resid @ resid) / ((w - w.mean()) @ (w - w.mean())))
    seconds = time.perf_counter() - t
    r2s = np.array(r2s)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds() - cpu0, "analysed": analysed,
            "median": float(np.median(r2s)),
            "frac_above": float((r2s > 0.7).mean()), "kept": int(r2s.size),
            "rss_bytes": peak_rss_bytes(), "rss_after_imports": rss_before}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux: an upper bound


def run_worker(method: str, root: Path, source: Path | None = None) -> dict:
    """One method in a fresh interpreter; `source`: import rlvr_nb from that source tree instead."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run([sys.executable, __file__, "--worker", method, "--root", str(root)],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{method} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


METHODS = {"ours": "ours", "ours, no drift spectrum": "ours_nodrift", "ours, reads only (no stats)": "read",
           "ours, statistics only": "stats", "paper's method (0.1% sample)": "paper"}
"""Table row -> worker."""
BASELINE = ("ours", "ours, no drift spectrum", "ours, statistics only")
"""Rows that --baseline repeats with the other source tree."""


def fabricated(root: Path, shapes: dict) -> float:
    """Fabricate the checkpoints into root unless a previous --data run left them there; seconds spent."""
    if all((root / f"step_{s}" / "model.safetensors").is_file() for s in STEPS):
        return 0.0
    t = time.perf_counter()
    fabricate(root, shapes)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--data", help="directory for the fabricated checkpoints, kept and reused (default: a temporary "
                                  "directory, removed)")
    p.add_argument("--baseline", help="another rlvr_nb source tree (e.g. `git archive` of an older commit): its "
                                      "engine runs side by side, interleaved, for a speed-up under the same load")
    p.add_argument("--repeats", type=int, default=1, help="runs of each method, interleaved; the fastest is shown")
    p.add_argument("--only", help="comma-separated workers to run (ours, ours_nodrift, read, stats, paper)")
    p.add_argument("--worker", choices=sorted(set(METHODS.values())), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        root = Path(args.root)
        if args.worker == "paper":
            res = worker_paper(root)
        elif args.worker == "read":
            res = worker_read(root)
        elif args.worker == "stats":
            res = worker_stats(root)
        else:
            res = worker_ours(root, drift=args.worker == "ours")
        print(json.dumps(res))
        return

    shapes = qwen2_like_shapes(args.hidden, args.layers, args.intermediate, args.vocab)
    n_params = sum(math.prod(s) for s in shapes.values())
    n_bytes = T * n_params * 2  # bf16
    only = set(args.only.split(",")) if args.only else set(METHODS.values())
    plan = [(name, worker, None) for name, worker in METHODS.items() if worker in only]
    if args.baseline:
        plan += [(f"baseline: {name}", METHODS[name], Path(args.baseline).resolve()) for name in BASELINE
                 if METHODS[name] in only]
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="bench_r2_"))
    root.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    loads = [os.getloadavg()[0]]
    try:
        fab_s = fabricated(root, shapes)
        bw = memcpy_bandwidth()
        for _ in range(args.repeats):  # interleaved, so that a change of load hits every method alike
            for name, worker, source in plan:
                r = run_worker(worker, root, source)
                if name not in rows or r["seconds"] < rows[name]["seconds"]:
                    rows[name] = r
            loads.append(os.getloadavg()[0])
        bw = max(bw, memcpy_bandwidth())  # the machine's rate: the better of before and after
    finally:
        if not args.data:
            shutil.rmtree(root, ignore_errors=True)
    report(rows, n_params, n_bytes, bw, fab_s, loads, args.repeats)


def report(rows: dict[str, dict], n_params: int, n_bytes: int, bw: float, fab_s: float, loads: list[float],
           repeats: int) -> None:
    """The table: each method against the memory-copy rate and the paper's method; speed-ups over --baseline."""
    memcpy_s = n_bytes / bw
    paper = rows.get("paper's method (0.1% sample)")
    paper_rate = paper["analysed"] / paper["seconds"] if paper else math.nan
    print(f"\nWeight R^2, {T} bf16 checkpoints of a Qwen2-like model with {n_params / 1e6:.1f}M parameters "
          f"({n_bytes / 2**30:.2f} GiB read per pass; fabricated in {fab_s:.0f} s)")
    print(f"machine: {os.cpu_count()} CPU cores, load average {min(loads):.1f}-{max(loads):.1f} during the runs; "
          f"numpy memory copy {bw / 1e9:.2f} GB/s -> {memcpy_s:.2f} s to copy the same bytes "
          f"({n_params / memcpy_s / 1e6:.0f}M params/s); fastest of {repeats} run(s) per method\n")
    head = (f"{'method':<40} {'params analysed':>16} {'seconds':>8} {'CPU s':>7} {'M params/s':>11} "
            f"{'per CPU s':>10} {'vs memcpy':>10} {'vs paper':>9} {'peak RSS':>10} {'median R2':>10} {'>0.7':>6}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        rate = r["analysed"] / r["seconds"]
        per_cpu = r["analysed"] / max(r["cpu_seconds"], 1e-9)
        print(f"{name:<40} {r['analysed']:>16,} {r['seconds']:>8.2f} {r['cpu_seconds']:>7.2f} {rate / 1e6:>11.3f} "
              f"{per_cpu / 1e6:>10.3f} {rate / (n_params / memcpy_s):>9.1%} {rate / paper_rate:>8.0f}x "
              f"{r['rss_bytes'] / 2**30:>8.2f} GiB {r['median']:>10.3f} {r['frac_above']:>6.2f}")
    for name in BASELINE:
        if name in rows and f"baseline: {name}" in rows:
            new, old = rows[name], rows[f"baseline: {name}"]
            print(f"speed-up over the baseline, {name}: {old['seconds'] / new['seconds']:.2f}x wall, "
                  f"{old['cpu_seconds'] / max(new['cpu_seconds'], 1e-9):.2f}x CPU time")
    if "ours" in rows:
        print(f"\n(peak RSS includes the interpreter and imports: "
              f"{rows['ours']['rss_after_imports'] / 2**30:.2f} GiB for ours after importing torch and numba"
              + (f", {paper['rss_after_imports'] / 2**30:.2f} GiB for the paper's method)" if paper else ")"))
    print("goals: >= 50% of memcpy, < 2 GiB peak RSS, >= 100x the paper's params/s")


if __name__ == "__main__":
    main()
