"""benchmarks/gpu_check.py (the one command for the first CUDA machine) runs here at --device cpu --tiny:
every check passes, what it cannot check is named, a failing check is reported and sets the exit status."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_every_check_passes_on_the_cpu_at_the_tiny_shape(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--tiny", "--json", str(tmp_path / "r.json")]) == 0
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    status = {r["check"]: r["status"] for r in rows}
    for name in ("environment", "random models", "sampler (rlvr_nb.sampling.generate)",
                 "logits extrapolator (LogitsExtrapolationPolicy)", "RL update (rlvr_nb.grpo equations)",
                 "evaluate (rlvr_nb.evaluate) on cpu", "train_rl (embedded task and model)"):
        assert status.pop(name) == "ok", name
    assert set(status.values()) == {"not checked"} and any("vLLM" in k for k in status)
    detail = {r["check"]: r["detail"] for r in rows}
    assert detail["logits extrapolator (LogitsExtrapolationPolicy)"]["alpha1_equals_second"] is True
    assert detail["sampler (rlvr_nb.sampling.generate)"]["rows_checked"] == 8
    assert detail["train_rl (embedded task and model)"]["steps"] == 2
    assert "[ok] RL update" in capsys.readouterr().out


def test_a_failing_check_is_reported_and_sets_the_exit_status(gpu_check, monkeypatch, capsys):
    def broken(*a, **kw):
        raise AssertionError("greedy token differs")

    monkeypatch.setattr(gpu_check, "check_sampler", broken)
    assert gpu_check.main(["--device", "cpu", "--tiny"]) == 1
    out = capsys.readouterr().out
    assert "[FAILED] sampler (rlvr_nb.sampling.generate): AssertionError: greedy token differs" in out
    assert "[ok] logits extrapolator" in out  # the other checks still ran


def test_without_cuda_the_cuda_run_says_so(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main(["--device", "cuda"]) == 1
    assert "no CUDA device visible" in capsys.readouterr().out


def test_train_rl_device_gap_names_the_lines_that_pin_the_cpu(gpu_check):
    import inspect

    from rlvr_nb.grpo import train_rl

    gap = gpu_check.train_rl_device_gap()
    if "device" in inspect.signature(train_rl).parameters:
        assert gap is None
        return
    lines = (ROOT / "rlvr_nb" / "grpo.py").read_text().splitlines()
    refs = [part.split(" ")[0] for part in gap.split("rlvr_nb/grpo.py:")[1:]]
    assert len(refs) == 3
    for ref, text in zip(refs, ("load_model(init_dir)", "torch.Generator()", "encode_prompts(")):
        assert text in lines[int(ref.rstrip(",)")) - 1]
