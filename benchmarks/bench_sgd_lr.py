"""How large an SGD learning rate moves the embedded RL run as far as AdamW at lr 1e-4 (04's robustness rows).

    OMP_NUM_THREADS=1 python benchmarks/bench_sgd_lr.py [--steps 100] [--lrs 0.01 0.03 0.1]

Trains short runs of the cpu profile's RL config (32 prompts x 16 rollouts, grad clip 1.0) from the cpu warm
start in a temporary directory, with AdamW at the profile's lr and with plain SGD (no momentum) at each lr,
and prints the relative weight change ||theta_t - theta_0|| / ||theta_0|| after `steps` steps, the reward of
the last 20 steps and the held-out greedy accuracy. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rlvr_nb.notebook import profiles
from rlvr_nb.checkpoints import list_checkpoints, read_metrics
from rlvr_nb.embedded import ensure_warm_start
from rlvr_nb.grpo import train_rl
from rlvr_nb.motion import relative_change


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = ap.parse_args()
    torch.set_num_threads(1)
    emb = profiles.embedded_config("cpu")
    init = ensure_warm_start(emb, progress=False)
    base = profiles.rl_config("cpu", steps=args.steps, ckpt_every=args.steps)
    runs = [("adamw", base.lr)] + [("sgd", lr) for lr in args.lrs]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread; {args.steps} steps of "
          f"{base.prompts_per_step} x {base.group_size} rollouts from {init}")
    print(f"{'optimizer':>9} {'lr':>8} {'rel. weight change':>19} {'reward (last 20)':>17} {'greedy acc':>11} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (opt, lr) in enumerate(runs):
            run = Path(tmp) / f"run{i}"
            t0 = time.perf_counter()
            train_rl(replace(base, optimizer=opt, lr=lr), init, run, emb.task, progress=False)
            seconds = time.perf_counter() - t0
            ckpts = list_checkpoints(run)
            metrics = read_metrics(run)
            reward = np.mean([m["reward"] for m in metrics if "reward" in m][-20:])
            acc = [m["heldout_greedy"] for m in metrics if "heldout_greedy" in m]
            print(f"{opt:>9} {lr:>8g} {relative_change(ckpts[0][1], ckpts[-1][1]):>19.4f} {reward:>17.3f} "
                  f"{acc[0]:.2f}->{acc[-1]:.2f} {seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
