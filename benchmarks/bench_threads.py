"""RL steps per second of the default `cpu` recipe at 1 and 2 torch threads, and as 2 processes of 1 thread.

    python benchmarks/bench_threads.py [--steps 4] [--prompts 128] [--group 16]

Each configuration trains the embedded default model from the same fresh weights for `steps` + 1 GRPO steps
(the first is a warm-up and is not timed) and reports the median seconds per step from the run's own
metrics. "2 processes x 1 thread" runs two independent trainings at once (different seeds), as independent
runs of a study would, and reports the throughput of both together. The machine's load average is printed
beside the numbers: on a shared machine a second thread can cost more than it gives.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import sys, statistics, torch
torch.set_num_threads(int(sys.argv[1]))
from rlvr_nb.checkpoints import read_metrics
from rlvr_nb.grpo import RLConfig, train_rl
from rlvr_nb.tasks import TaskConfig
steps, prompts, group, seed = (int(x) for x in sys.argv[2:6])
cfg = RLConfig(steps=steps + 1, prompts_per_step=prompts, group_size=group, ckpt_every=10_000, eval_problems=8,
               lr=5e-5, seed=seed)
train_rl(cfg, sys.argv[6], sys.argv[7], TaskConfig(), progress=False)
seconds = [m["seconds"] for m in read_metrics(sys.argv[7]) if m["step"] >= 2]
print(statistics.median(seconds))
"""


def run_workers(n_procs: int, threads: int, args, init: Path, work: Path) -> tuple[float, float]:
    """(median seconds per step of one process, steps per second of all processes together)."""
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(threads), str(args.steps), str(args.prompts),
                               str(args.group), str(i), str(init), str(work / f"p{n_procs}t{threads}_{i}")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
             for i in range(n_procs)]
    per_step = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            sys.exit(f"worker failed ({p.returncode})")
        per_step.append(float(out.strip().splitlines()[-1]))
    med = statistics.median(per_step)
    return med, sum(1.0 / s for s in per_step)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
    ap.add_argument("--prompts", type=int, default=128, help="prompts per step (the cpu default: 128)")
    ap.add_argument("--group", type=int, default=16, help="rollouts per prompt (the cpu default: 16)")
    args = ap.parse_args()

    from rlvr_nb.models import ModelConfig, build_model, build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        init = work / "init"
        tok = build_tokenizer()
        build_model(ModelConfig(), tok).save_pretrained(init)
        tok.save_pretrained(init)
        load_before = os.getloadavg()
        rows = [("1 process x 1 thread", *run_workers(1, 1, args, init, work)),
                ("1 process x 2 threads", *run_workers(1, 2, args, init, work)),
                ("2 processes x 1 thread", *run_workers(2, 1, args, init, work))]
        load_after = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    print(f"GRPO step: {args.prompts} prompts x {args.group} rollouts, embedded default model, "
          f"{args.steps} timed steps per run\n")
    print(f"| {'configuration':<24} | {'s/step (one run)':>16} | {'steps/s (all runs)':>18} | {'vs 1 x 1':>8} |")
    print(f"|{'-' * 26}|{'-' * 18}|{'-' * 20}|{'-' * 10}|")
    base = rows[0][2]
    for name, sec, sps in rows:
        print(f"| {name:<24} | {sec:16.3f} | {sps:18.3f} | {sps / base:7.2f}x |")


if __name__ == "__main__":
    main()
