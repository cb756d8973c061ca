import os

# Tiny models on a 2-core machine: one thread each avoids OpenMP oversubscription (10-100x slowdowns).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
