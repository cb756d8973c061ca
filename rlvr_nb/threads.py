"""How many torch threads a trainer uses: a fixed number, because the result depends on it.

Measured here (2-core machine): three GRPO steps of the embedded model from the same start end with weights that
differ by up to 2.5e-7 between 1 and 2 torch threads (the reductions are split differently), and RL amplifies
such differences over a run, so a trajectory trained at 2 threads is not the one trained at 1. Every trainer of
the package therefore runs at `TRAIN_THREADS` (1) whatever the machine, and independent runs are trained in
parallel as separate single-thread processes (`benchmarks/bench_threads.py`, idle machine: 2 processes x 1
thread give 1.83x the steps/s of one, 1 process x 2 threads 1.79x, and a loaded core makes 2 threads slower
than 1). Analyses (R^2, evaluation) keep torch's default.

Setting the count inside a process is not all of it: a process that started at torch's default of 2 threads and
then trains at `set_num_threads(1)` keeps an OpenMP thread spinning at about half a core and, on the default
`cpu` step (128 x 16 rollouts), trains another trajectory (1.8e-4 apart after 50 steps; the 32 x 16 step is not
affected). Processes made to train (`rlvr_nb.notebook.pretrain`) therefore start with OMP_NUM_THREADS=1
(`single_thread_children`); trained that way, two of them at once reproduce the committed runs bit for bit at
0.81 s/step each (3.3 s/step without).

`RLVR_NB_TRAIN_THREADS=n` trains at n threads instead: faster for one run on an idle machine, but its
trajectories (and a resumed run's continuation) differ from those trained at 1 thread.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch

TRAIN_THREADS = 1
"""Torch threads of every trainer (see the module docstring for why it is fixed)."""

F = TypeVar("F", bound=Callable)


def train_threads() -> int:
    """The thread count trainers use: $RLVR_NB_TRAIN_THREADS when set (a positive integer), else TRAIN_THREADS."""
    value = os.environ.get("RLVR_NB_TRAIN_THREADS", "").strip()
    if not value:
        return TRAIN_THREADS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"RLVR_NB_TRAIN_THREADS must be a positive integer, got {value!r}")
    return int(value)


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block at n torch threads, restoring the previous count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def training_threads(fn: F) -> F:
    """Decorator of a trainer: it runs at `train_threads()` torch threads."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threads(train_threads()):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
"""The environment of a training process: one thread from its start (the module docstring says why)."""


@contextmanager
def single_thread_children() -> Iterator[None]:
    """Processes started inside the block inherit SINGLE_THREAD_ENV (this process's torch is already loaded and
    keeps its own thread count); the environment is restored after."""
    before = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update(SINGLE_THREAD_ENV)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker_threads() -> tuple[str | None, int]:
    """(OMP_NUM_THREADS, torch's thread count) as a training process sees them (what the tests check)."""
    return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
