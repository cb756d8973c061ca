"""Train the trajectories a profile's notebooks read, in parallel single-thread processes, before they run.

    python -m rlvr_nb.notebook.pretrain --profile cpu [--jobs 2]

Every trainer runs at one torch thread (`rlvr_nb.threads`: the result depends on the thread count), so on a
2-core machine two independent trainings at once use both cores (`benchmarks/bench_threads.py`: 1.83x the
steps/s of one). The notebooks then find every run cached (`runs/<kind>-<hash>/`; each run's lock makes a second
caller wait for the first instead of training it twice), and `make run` trains each trajectory exactly once.
The warm start comes first, in this process: every other run starts from it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from rlvr_nb.embedded import EmbeddedConfig, ensure_trajectory, ensure_warm_start, matched_sft, runs_root
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook import profiles
from rlvr_nb.sft import SFTConfig
from rlvr_nb.threads import single_thread_children


def trajectories(profile: str) -> list[RLConfig | SFTConfig]:
    """The embedded runs the profile's notebooks train, known before they run, most expensive first: the RL run
    (01-03, 05, 06), its matched SFT run (01-03), the SFT runs of 02/03's comparisons, and 04's robustness base
    (profiles.CHEAP_RL at cpu) with its noise-injected SFT sweep. Runs whose config depends on another run's result
    (the "same accuracy gain" window, 04's SGD calibration) are left to the notebooks."""
    rl = profiles.rl_config(profile)
    p02 = profiles.resolve("02_weight_linearity", profile)
    out: list[RLConfig | SFTConfig] = [rl]
    if p02.compare:
        out += [matched_sft(rl, batch_size=rl.prompts_per_step * rl.group_size, steps=p02.seq_steps),
                matched_sft(rl, lr=p02.customary_sft_lr)]
    out.append(profiles.sft_config(profile))
    out += lowpass_runs(profile)
    return list(dict.fromkeys(out))


def lowpass_runs(profile: str) -> list[RLConfig | SFTConfig]:
    """04's runs known from its knobs: its RL base (profiles.CHEAP_RL at cpu), the noise-injected SFT sweep at
    both learning rates (Figure 3), and the robustness grid when the profile computes it (Figure 2)."""
    from rlvr_nb.experiments import robustness as rb

    p04 = profiles.resolve("04_lowpass_theory", profile)
    rl = profiles.rl_config(profile, **{**p04.rl_recipe, "seed": p04.seed})
    bases = [matched_sft(rl, steps=p04.sft_steps, lr=lr, ckpt_every=p04.sft_ckpt_every) for lr in (p04.sft_high_lr, rl.lr)]
    out: list[RLConfig | SFTConfig] = [rl] + [s.config for b in bases for s in rb.snr_settings(b, p04.snr_dbs)]
    if p04.compute_robustness:
        out += [s.config for s in rb.robustness_settings(rl, p04.robust_steps, lrs=p04.robust_lrs, sgd_lr=p04.sgd_lr,
                                                         group_sizes=p04.group_sizes, estimators=p04.estimators)]
    return out


def _train(config: RLConfig | SFTConfig, emb: EmbeddedConfig) -> tuple[str, float]:
    t0 = time.perf_counter()
    run = ensure_trajectory(config, emb, progress=False)
    return run.name, time.perf_counter() - t0


def pretrain(profile: str, jobs: int = 2) -> list[tuple[str, float]]:
    """Train (or find cached) every run of `trajectories(profile)` with `jobs` worker processes; returns
    (run name, seconds) per run. A failed run raises after the others finish, naming its config."""
    if profile == "gpu":
        raise ValueError("pretrain trains the embedded model; at the gpu profile 01 trains your model with verl")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    emb = profiles.embedded_config(profile)
    t0 = time.perf_counter()
    ensure_warm_start(emb, progress=False)
    done = [("warm start", time.perf_counter() - t0)]
    configs = trajectories(profile)
    errors = []
    with single_thread_children(), ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train, c, emb): c for c in configs}
        for f in as_completed(futures):
            try:
                name, seconds = f.result()
            except Exception as e:  # noqa: BLE001 -- reported with its config, after the others finish
                errors.append(f"{type(futures[f]).__name__}({futures[f]}): {type(e).__name__}: {e}")
                continue
            done.append((name, seconds))
            print(f"[pretrain] {name}: {seconds:.0f} s", flush=True)
    if errors:
        raise RuntimeError("pretrain: " + "; ".join(errors))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=[p for p in profiles.PROFILES if p != "gpu"])
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-thread training processes (default 2)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    done = pretrain(args.profile, args.jobs)
    print(f"[pretrain] {len(done)} runs ready under {runs_root()} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
