import os

# Tiny models on a 2-core machine: one thread each avoids OpenMP oversubscription (10-100x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# `make test` runs the files on 2 pytest-xdist workers (--dist loadfile: a file stays on one worker, in order).
# Every file that starts Jupyter kernels runs on one and the same worker, one after the other: kernels started
# at the same moment from two processes can pick the same TCP ports (jupyter_client issue 487), and here one such
# start left the slider test waiting on a kernel that never answered. Those files, the longest (measured: the
# notebooks at smoke ~165 s, the browser ~80 s, the slider kernel ~40 s), go first, and the other worker takes
# the rest meanwhile.
KERNEL_FILES = ("test_notebooks.py", "test_browser.py", "test_alpha_slider_kernel.py", "test_runner.py")
SLOW_FIRST = KERNEL_FILES + ("test_verl_checks.py", "test_pretrain.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: order within a file kept


@pytest.hookimpl(optionalhook=True)  # .venv-vllm's pytest (tests/vllm_engine) has no xdist
def pytest_xdist_make_scheduler(config, log):
    """loadfile, with the KERNEL_FILES as a single unit of work."""
    from xdist.scheduler import LoadFileScheduling

    class KernelFilesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "jupyter kernels" if path.rsplit("/", 1)[-1] in KERNEL_FILES else path

    return KernelFilesTogether(config, log)
