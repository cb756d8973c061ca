"""Start-up of `rlvr-nb linearity` on a small run: wall and CPU seconds of the whole command, with and
without figures, and the imports that cost the most, on a fabricated 20-checkpoint run of a ~100k-parameter
model in the TRL layout.

    .venv/bin/python benchmarks/bench_cli.py
    git archive HEAD~1 | tar -x -C /tmp/before     # an older package, timed side by side:
    .venv/bin/python benchmarks/bench_cli.py --baseline /tmp/before

Goal: at most 3 s wall on an idle machine. Each command runs in a fresh interpreter (after one untimed
run, so that numba's kernel is compiled and cached on disk, as for any later use); the fastest of
--repeats runs is shown, with the load average, since a loaded machine stretches the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = [50 * (k + 1) for k in range(20)]


def fabricate(root: Path) -> int:
    """20 TRL checkpoints (checkpoint-N) of a 2-layer, 64-wide model drifting along one direction; its size."""
    import torch
    from safetensors.torch import save_file

    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer

    cfg = ModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=192, max_positions=32)
    tok = build_tokenizer()
    model = build_model(cfg, tok)
    model.config.architectures = [type(model).__name__]
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    direction = {n: torch.randn(p.shape, generator=g) for n, p in base.items()}
    for k, step in enumerate(STEPS):
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        w = {n: (b + 1e-2 * k / 19 * direction[n] + 1e-3 * torch.randn(b.shape, generator=g)).to(torch.bfloat16)
             for n, b in base.items()}
        save_file({n: t.contiguous() for n, t in w.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
        model.config.to_json_file(str(d / "config.json"))
        tok.save_pretrained(d)
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "global_step": step}))
    return sum(t.numel() for t in base.values())


def timed(args: list[str], source: Path | None, importtime: bool = False) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stderr) of `python -m rlvr_nb.cli ARGS` in a fresh interpreter."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "rlvr_nb.cli", *args],
                         capture_output=True, text=True, env=env, check=False, cwd=tempfile.gettempdir())
    # (not the repository as working directory: `python -m` puts it first on sys.path, before PYTHONPATH)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise RuntimeError(f"rlvr-nb {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out.stderr


def top_imports(stderr: str, names=("torch", "numba", "matplotlib.pyplot", "transformers", "rlvr_nb.logprobs",
                                    "rlvr_nb.linearity", "rlvr_nb.checkpoint_files")) -> str:
    """Cumulative import seconds of the heavy modules, from `python -X importtime`'s report."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cumulative, name = line.split("|")
            if name.strip() in names:
                found[name.strip()] = int(cumulative) / 1e6
    return ", ".join(f"{n} {s:.2f} s" for n, s in found.items()) or "none of them"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", help="another rlvr_nb source tree, timed side by side (interleaved)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_cli_") as tmp:
        run = Path(tmp) / "run"
        n_params = fabricate(run)
        sources = [("ours", None)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
        variants = [(f"{name}{label}", source, ["linearity", str(run), "--out", str(Path(tmp) / name), "--no-progress",
                                                *extra])
                    for name, source in sources for label, extra in (("", []), (", --no-figures", ["--no-figures"]))
                    if not (source is not None and extra)]  # an older package may not have --no-figures
        for _, source, cmd in variants:
            timed(cmd, source)  # compiles or loads the kernel, fills the page cache
        best: dict[str, tuple[float, float]] = {}
        loads = [os.getloadavg()[0]]
        for _ in range(args.repeats):
            for name, source, cmd in variants:
                wall, cpu, _ = timed(cmd, source)
                best[name] = min(best.get(name, (wall, cpu)), (wall, cpu))
            loads.append(os.getloadavg()[0])
        imports = {name: top_imports(timed(cmd, source, importtime=True)[2]) for name, source, cmd in variants}
    print(f"\n`rlvr-nb linearity` on a {len(STEPS)}-checkpoint TRL run of {n_params:,} parameters; "
          f"{os.cpu_count()} CPU cores, load average {min(loads):.1f}-{max(loads):.1f}; fastest of {args.repeats}\n")
    head = f"{'command':<24} {'wall s':>7} {'CPU s':>6}  heavy imports (cumulative, -X importtime)"
    print(head + "\n" + "-" * len(head))
    for name, (wall, cpu) in best.items():
        print(f"{name:<24} {wall:>7.2f} {cpu:>6.2f}  {imports[name]}")
    print("goal: <= 3 s wall on an idle machine")


if __name__ == "__main__":
    main()
