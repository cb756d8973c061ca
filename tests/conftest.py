import fcntl
import os

# Tiny models on a 2-core machine: one thread each avoids OpenMP oversubscription (10-100x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# Every Jupyter kernel of the suite runs on Unix sockets of its own (rlvr_nb.notebook.kernels): kernels started at
# the same moment by the two pytest-xdist workers could otherwise be handed the same TCP port (jupyter_client
# issue 487), so both workers can run notebooks.
os.environ.setdefault("RLVR_NB_KERNEL_TRANSPORT", "ipc")

# `make test` runs the files on 2 pytest-xdist workers (--dist loadfile: a file stays on one worker, in order);
# the longest files go first, so that the rest fills in around them (--no-loadscope-reorder: else xdist orders the
# files by their number of tests, and the notebooks started 30 s late, the browser test 140 s late).
SLOW_FIRST = ("test_notebooks.py", "test_browser.py", "test_verl_checks.py", "test_alpha_slider_kernel.py",
              "test_monitor.py", "test_pretrain.py", "test_runner.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: order within a file kept


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory) -> tuple[Path, list[tuple[str, float]]]:
    """The runs/ cache of every test that runs notebooks at smoke, and pretrain's (run name, seconds) list: filled
    first by `pretrain("smoke")`, as `make run` fills runs/, so that the suite trains each trajectory once instead
    of once per test. One directory for both pytest-xdist workers (under the session's shared base temp): a worker
    that wants a run the other is training waits on that run's lock."""
    from rlvr_nb.notebook.pretrain import pretrain

    base = tmp_path_factory.getbasetemp()
    runs = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "smoke-runs"
    runs.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("RLVR_NB_RUNS", str(runs))
    # one worker's pretrain at a time: the second finds every run complete and starts no training process
    with open(runs.parent / "smoke-runs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return runs, pretrain("smoke", jobs=2)
        finally:
            mp.undo()
