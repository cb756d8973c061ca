"""The two-stack logits-extrapolation model (loaded through the `vllm.general_plugins` entry point) at
alpha = 1, eager and compiled: the same engine outputs as the second checkpoint alone in its own engine."""

from __future__ import annotations

import pytest

from rlvr_nb.backends.vllm_backend import close_engine, open_engine
from vllm_engine_helpers import engine_config, response_ids, vllm_logprob_rows, vllm_run

SEEDS = list(range(1000, 1512))


@pytest.fixture(scope="module", params=[False, True], ids=["eager", "compiled"])
def two_stack(request, models):
    llm = open_engine(models.two_stack_dirs[1.0], engine_config(compiled=request.param))
    yield llm, request.param
    close_engine(llm)


COMPILED_LOGPROB_TOL = 1e-4
"""Compiled against the eager single engine: inductor's fused float32 kernels round differently (measured:
max 4.6e-5, mean 6e-6 over all 14 log-probs at every greedy position of 512 prompts, whose values reach
-30). Eager, the two-stack engine's log-probs equal the single engine's bit for bit."""


def test_the_engine_processes_find_the_model_through_the_plugin_entry_point():
    """vLLM's spawned engine processes register the class only through this entry point (pyproject.toml)."""
    from importlib.metadata import entry_points

    (plugin,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "rlvr_nb_two_stack"]
    assert plugin.value == "rlvr_nb.backends.vllm_extrapolation:register"


def test_alpha_1_greedy_and_log_probs_are_the_second_model_alone(models, single_engine, two_stack):
    llm, compiled = two_stack
    V = models.vocab_size
    ref = vllm_run(single_engine, models, temperature=0.0, logprobs=V)
    got = vllm_run(llm, models, temperature=0.0, logprobs=V)
    assert response_ids(got) == response_ids(ref)  # 512 of 512
    diff = max(float((vllm_logprob_rows(g.outputs[0], V) - vllm_logprob_rows(r.outputs[0], V)).abs().max())
               for g, r in zip(got, ref))
    assert diff < COMPILED_LOGPROB_TOL if compiled else diff == 0.0, diff


def test_alpha_1_seeded_samples_are_the_second_model_alone(models, single_engine, two_stack):
    ref = vllm_run(single_engine, models, temperature=1.0, seeds=SEEDS, n=4)
    got = vllm_run(two_stack[0], models, temperature=1.0, seeds=SEEDS, n=4)
    ref_ids, got_ids = response_ids(ref), response_ids(got)
    assert len(ref_ids) == 2048 and len(set(map(tuple, ref_ids))) > 200  # varied samples, not one answer
    assert got_ids == ref_ids  # 2048 of 2048
