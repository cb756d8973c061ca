"""Pretraining a profile's trajectories in parallel processes: each is trained once, and the notebooks' own
calls then find them cached."""

from __future__ import annotations

import pytest

from rlvr_nb.checkpoints import is_complete
from rlvr_nb.embedded import ensure_trajectory, trajectory_dir
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook import profiles
from rlvr_nb.notebook.pretrain import pretrain, trajectories
from rlvr_nb.threads import single_thread_children, worker_threads


def test_trajectories_are_what_the_notebooks_train():
    cfgs = trajectories("cpu")
    rl = profiles.rl_config("cpu")
    assert cfgs[0] == rl and profiles.sft_config("cpu") in cfgs
    assert profiles.rl_config("cpu", **profiles.CHEAP_RL) in cfgs
    assert len(set(cfgs)) == len(cfgs)


def test_reproduce_adds_the_committed_studies_runs_longest_first():
    from dataclasses import replace

    from rlvr_nb.experiments import comparisons as cmp
    from rlvr_nb.notebook.pretrain import cost

    plain, full = trajectories("cpu"), trajectories("cpu", reproduce=True)
    assert set(plain) < set(full) and len(set(full)) == len(full)
    assert [cost(c) for c in full] == sorted((cost(c) for c in full), reverse=True)
    rl = profiles.rl_config("cpu")
    assert {replace(rl, seed=s) for s in (1, 2)} <= set(full) - set(plain)  # 02's seeds (06's standard RL)
    p02 = profiles.resolve("02_weight_linearity", "cpu")
    base = cmp.with_steps(profiles.rl_config("cpu", **p02.sweep_base), p02.sweep_base_steps)
    longest = cmp.with_steps(base, 3000)  # a combined sweep point (lr 5e-5, 3000 steps, checkpoints every 100)
    assert replace(longest, lr=5e-5, ckpt_every=100) in full
    assert any(getattr(c, "optimizer", "") == "sgd" for c in full)  # 04's grid and its SGD calibration
    from rlvr_nb.regrounding import regrounding_study

    p06 = profiles.resolve("06_rl_extra", "cpu")
    blocks, settings = regrounding_study(p06, profiles.rl_config("cpu", **p06.rl_recipe))
    regrounding = [c for c in full if isinstance(c, tuple)]  # 06's runs, one per setting and seed
    assert len(regrounding) == sum(len(seeds) for _, seeds in settings.values()) == 7
    assert (settings["(m=50, n=50)"][0], replace(blocks, seed=2)) in regrounding
    assert len(trajectories("smoke", reproduce=True)) > len(trajectories("smoke"))


def test_pretrain_at_smoke_trains_each_run_once(smoke_runs, monkeypatch):
    """(The suite's shared smoke cache: pretrain filled it before any notebook test reads it; test_notebooks checks
    that the notebooks then train none of these runs again.)"""
    tmp_path, done = smoke_runs
    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path))
    emb = profiles.embedded_config("smoke")
    runs = {trajectory_dir(c, emb).name: c for c in trajectories("smoke")}
    assert all(name.startswith("rl-" if isinstance(c, RLConfig) else "sft-") for name, c in runs.items())
    assert {name for name, _ in done[1:]} == set(runs)
    for name in runs:
        assert is_complete(tmp_path / name)
    # Only pretrain's runs and the warm starts: the other worker's notebooks train runs of their own (06's
    # re-grounding blocks) into the same cache meanwhile.
    ours = [tmp_path / name for name in runs] + sorted(tmp_path.glob("warmstart-*"))

    def mtimes() -> dict:
        return {p: p.stat().st_mtime_ns for d in ours for p in d.rglob("*.safetensors")}

    before = mtimes()
    assert len(before) > len(runs)
    for c in trajectories("smoke"):  # what a notebook does next: everything cached, nothing rewritten
        ensure_trajectory(c, emb, progress=False)
    assert mtimes() == before


def test_pretrain_on_a_complete_cache_starts_no_process(smoke_runs, monkeypatch):
    from rlvr_nb.notebook import pretrain as pt

    monkeypatch.setenv("RLVR_NB_RUNS", str(smoke_runs[0]))
    monkeypatch.setattr(pt, "in_processes", lambda *a, **k: pytest.fail("a worker process was started"))
    done = pretrain("smoke", jobs=2)
    assert sorted(name for name, _ in done[1:]) == sorted(name for name, _ in smoke_runs[1][1:])


def test_pretrain_refuses_gpu_and_bad_jobs():
    with pytest.raises(ValueError, match="at the gpu profile 01 trains your model with verl"):
        pretrain("gpu")
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        pretrain("smoke", jobs=0)


def test_training_processes_start_at_one_thread(monkeypatch):
    """The workers' OpenMP starts at one thread (a process that starts at two and then calls set_num_threads(1)
    trains another trajectory, 4x slower beside a second worker); the parent's environment is restored."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with single_thread_children(), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(worker_threads).result() == ("1", 1)
    assert os.environ["OMP_NUM_THREADS"] == "2"


def test_a_sigterm_to_pretrain_stops_its_workers(tmp_path):
    """`kill <pretrain>` (SIGTERM to the parent alone) used to leave its spawned workers training."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "pool.py"
    script.write_text("import time\n\n"  # the workers re-import this script: only the parent imports the package
                      "if __name__ == '__main__':\n"
                      "    from rlvr_nb.notebook.pretrain import in_processes\n\n"
                      "    for _ in in_processes(time.sleep, [(120,), (120,), (120,)], 2):\n        pass\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        proc, deadline = psutil.Process(parent.pid), time.monotonic() + 60
        while len(workers := [c for c in proc.children() if "spawn_main" in " ".join(c.cmdline())]) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, "workers never started"
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are now in time.sleep
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, [w.pid for w in alive]
    finally:
        for p in psutil.Process().children(recursive=True):
            p.kill()
