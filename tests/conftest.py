import os

# Tiny models on a 2-core machine: one thread each avoids OpenMP oversubscription (10-100x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


# `make test` runs the files on 2 pytest-xdist workers (--dist loadfile: a file stays on one worker, in order). The
# files that take longest (measured: the notebooks at smoke ~130 s, the slider kernel ~40 s, verl's reward checks
# ~35 s, pretraining at smoke ~25 s, the browser) go first, so that the short ones fill in around them instead
# of leaving one worker alone at the end.
SLOW_FIRST = ("test_notebooks.py", "test_alpha_slider_kernel.py", "test_verl_checks.py", "test_pretrain.py",
              "test_browser.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: order within a file kept
