"""Train the trajectories a profile's notebooks read, in parallel single-thread processes, before they run.

    python -m rlvr_nb.notebook.pretrain --profile cpu [--jobs 2] [--reproduce]

Every trainer runs at one torch thread (`rlvr_nb.threads`: the result depends on the thread count), so on a
2-core machine two independent trainings at once use both cores (`benchmarks/bench_threads.py`: 1.83x the
steps/s of one). The notebooks then find every run cached (`runs/<kind>-<hash>/`; each run's lock makes a second
caller wait for the first instead of training it twice), and `make run` trains each trajectory exactly once.
The warm start comes first, in this process: every other run starts from it. Runs already complete are not
handed to a worker (none is started when every run is complete: a second `make run` spawns no process).

`--reproduce` (what `make reproduce` runs first) adds the runs of the studies that `make run` reads from committed
tables: 02's seeds (also 06's standard-RL seeds) and tuning sweep, 04's robustness grid and 06's re-grounding
runs. Runs are scheduled longest first (`cost`: steps x sequences per step), so that the two processes finish
close together.
"""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from typing import Any, Callable, Iterator

from rlvr_nb.checkpoints import is_complete
from rlvr_nb.embedded import (EmbeddedConfig, ensure_trajectory, ensure_warm_start, matched_sft, runs_root,
                              trajectory_dir)
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook import profiles
from rlvr_nb.regrounding import RegroundConfig, regrounding_study
from rlvr_nb.sft import SFTConfig
from rlvr_nb.threads import single_thread_children

Job = RLConfig | SFTConfig | tuple[RegroundConfig, RLConfig]
"""A run to train: an RL or SFT trajectory, or a re-grounding run (its config and its blocks' RL recipe)."""


def trajectories(profile: str, reproduce: bool = False) -> list[Job]:
    """The embedded runs the profile's notebooks train, known before they run, most expensive first (`cost`): the
    RL run (01-03, 05, 06), its matched SFT run (01-03), the SFT runs of 02/03's comparisons, and 04's robustness
    base (profiles.CHEAP_RL at cpu) with its noise-injected SFT sweep (and its robustness grid where the profile
    computes it). A run whose config depends on another run's result (the "same accuracy gain" window) is left to
    its notebook. With `reproduce`, also the runs of the committed studies (`reproduce_runs`)."""
    rl = profiles.rl_config(profile)
    p02 = profiles.resolve("02_weight_linearity", profile)
    out: list[Job] = [rl]
    if p02.compare:
        out += [matched_sft(rl, batch_size=rl.prompts_per_step * rl.group_size, steps=p02.seq_steps),
                matched_sft(rl, lr=p02.customary_sft_lr)]
    out.append(profiles.sft_config(profile))
    out += lowpass_runs(profile, robustness=reproduce or None)
    if reproduce:
        out += reproduce_runs(profile)
    return sorted(dict.fromkeys(out), key=cost, reverse=True)


def cost(config: Job) -> int:
    """A run's training cost in sequences (steps x sequences per step): measured here, ~3-5e-4 s per sequence at
    one thread for both RL (1200 x 128 x 16: 959 s; 1000 x 32 x 16: 205 s) and SFT (500 x 2048: 304 s)."""
    if isinstance(config, tuple):
        regrounding, rl = config
        return regrounding.budget * rl.prompts_per_step * rl.group_size
    if isinstance(config, RLConfig):
        return config.steps * config.prompts_per_step * config.group_size
    return config.steps * config.batch_size


def reproduce_runs(profile: str) -> list[Job]:
    """The runs behind the committed study tables that `make reproduce` recomputes and that are known before any
    notebook runs: 02's seeds (06's standard-RL seeds are the same runs), every run of 02's tuning sweep (the
    shorter windows read from the base run need none) and every re-grounding run of 06 (each seed and setting
    is its own run). 04's robustness grid comes from `lowpass_runs`; 04's mechanism study trains each variant's
    own warm start first and stays in its study."""
    from rlvr_nb.experiments import comparisons as cmp
    from rlvr_nb.experiments.seeds import seed_config

    rl = profiles.rl_config(profile)
    p02 = profiles.resolve("02_weight_linearity", profile)
    out: list[Job] = [seed_config(rl, s) for s in p02.seeds]
    base = cmp.with_steps(profiles.rl_config(profile, **p02.sweep_base), p02.sweep_base_steps)
    out += [spec.config for _, _, spec in cmp.sweep_specs(base, p02.sweep_lrs, p02.sweep_prompts, p02.sweep_steps,
                                                          p02.sweep_combined)]
    p06 = profiles.resolve("06_rl_extra", profile)
    blocks, settings = regrounding_study(p06, profiles.rl_config(profile, **p06.rl_recipe))
    out += [(cfg, replace(blocks, seed=s)) for cfg, seeds in settings.values() for s in seeds]
    return out


def lowpass_runs(profile: str, robustness: bool | None = None) -> list[Job]:
    """04's runs known from its knobs: its RL base (profiles.CHEAP_RL at cpu), the noise-injected SFT sweep at
    both learning rates (Figure 3), and the robustness grid (Figure 2) with its SGD calibration runs when
    `robustness` (default: when the profile computes it)."""
    from rlvr_nb.experiments import robustness as rb

    p04 = profiles.resolve("04_lowpass_theory", profile)
    rl = profiles.rl_config(profile, **{**p04.rl_recipe, "seed": p04.seed})
    bases = [matched_sft(rl, steps=p04.sft_steps, lr=lr, ckpt_every=p04.sft_ckpt_every) for lr in (p04.sft_high_lr, rl.lr)]
    out: list[Job] = [rl] + [s.config for b in bases for s in rb.snr_settings(b, p04.snr_dbs)]
    if p04.compute_robustness if robustness is None else robustness:
        out += [s.config for s in rb.robustness_settings(rl, p04.robust_steps, lrs=p04.robust_lrs, sgd_lr=p04.sgd_lr,
                                                         group_sizes=p04.group_sizes, estimators=p04.estimators)]
        out += rb.sgd_calibration_configs(rl, rb.sgd_candidates(p04.sgd_lr), p04.sgd_calibration_steps)
    return out


def _train(config: Job, emb: EmbeddedConfig) -> tuple[str, float]:
    t0 = time.perf_counter()
    if isinstance(config, tuple):
        from rlvr_nb.experiments.rl_extra import ensure_regrounding_run

        run = ensure_regrounding_run(*config, emb, progress=False)
    else:
        run = ensure_trajectory(config, emb, progress=False)
    return run.name, time.perf_counter() - t0


def in_processes(fn: Callable[..., Any], args: list[tuple], jobs: int) -> Iterator[tuple[tuple, Any]]:
    """fn(*a) for each a of args in `jobs` spawned worker processes, yielding (a, result or the exception it
    raised) as each finishes. A SIGTERM to this process stops the workers too (a Ctrl-C reaches them by itself;
    a `kill` of this process alone would leave them training) and then ends this process with status 143; a
    killed run resumes from its last complete checkpoint on the next call."""
    before = set(multiprocessing.active_children())
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:

        def stop(signum, frame):
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in set(multiprocessing.active_children()) - before:
                worker.terminate()
            raise SystemExit(128 + signum)

        in_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
        previous = signal.signal(signal.SIGTERM, stop) if in_main else None
        try:
            futures = {pool.submit(fn, *a): a for a in args}
            for f in as_completed(futures):
                try:
                    yield futures[f], f.result()
                except Exception as e:  # noqa: BLE001 -- the caller reports it
                    yield futures[f], e
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)


def pretrain(profile: str, jobs: int = 2, reproduce: bool = False) -> list[tuple[str, float]]:
    """Train (or find cached) every run of `trajectories(profile, reproduce)` with `jobs` worker processes; returns
    (run name, seconds) per run. A failed run raises after the others finish, naming its config."""
    if profile == "gpu":
        raise ValueError("pretrain trains the embedded model; at the gpu profile 01 trains your model with verl")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    emb = profiles.embedded_config(profile)
    t0 = time.perf_counter()
    ensure_warm_start(emb, progress=False)
    done = [("warm start", time.perf_counter() - t0)]
    configs = trajectories(profile, reproduce)
    left = []  # what a worker trains: no worker process at all when nothing is left
    for c in configs:
        run = None if isinstance(c, tuple) else trajectory_dir(c, emb)  # (06's re-grounding runs: the worker checks)
        if run is not None and is_complete(run):
            done.append((run.name, 0.0))
        else:
            left.append(c)
    if len(left) < len(configs):
        print(f"[pretrain] {len(configs) - len(left)} of {len(configs)} runs already complete", flush=True)
    errors = []
    with single_thread_children():
        for config, out in in_processes(_train, [(c, emb) for c in left], jobs) if left else ():
            if isinstance(out, Exception):  # reported with its config, after the others finish
                errors.append(f"{type(config[0]).__name__}({config[0]}): {type(out).__name__}: {out}")
                continue
            done.append(out)
            print(f"[pretrain] {out[0]}: {out[1]:.0f} s", flush=True)
    if errors:
        raise RuntimeError("pretrain: " + "; ".join(errors))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=[p for p in profiles.PROFILES if p != "gpu"])
    ap.add_argument("--jobs", type=int, default=2, help="parallel single-thread training processes (default 2)")
    ap.add_argument("--reproduce", action="store_true",
                    help="also the runs of the studies make run reads from committed tables (make reproduce)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    done = pretrain(args.profile, args.jobs, args.reproduce)
    print(f"[pretrain] {len(done)} runs ready under {runs_root()} in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
