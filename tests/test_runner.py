"""The notebook runner: clear errors for bad requests; a failing notebook is named, kept and recorded."""

import json

import pytest

from rlvr_nb.notebook.profiles import resolve, rl_config
from rlvr_nb.notebook.run import main, parse_value


def test_unknown_profile_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit, match="unknown profile 'laptop'; valid profiles: smoke, cpu, gpu"):
        main(["--profile", "laptop"])
    with pytest.raises(ValueError, match="valid profiles"):
        resolve("01_training", "laptop")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(SystemExit, match=r"unknown parameter 'learning_rate'; valid parameters: .*\blr\b"):
        main(["--profile", "smoke", "--only", "01", "-p", "learning_rate", "1e-3"])
    with pytest.raises(SystemExit, match="unknown notebook"):
        main(["--profile", "smoke", "--only", "99_nothing"])


def test_parse_value_and_overrides():
    assert parse_value("1e-4") == 1e-4 and parse_value("True") is True and parse_value("grpo") == "grpo"
    assert rl_config("smoke", lr=3e-4, steps=None).lr == 3e-4
    with pytest.raises(ValueError, match="unknown RLConfig field"):
        rl_config("smoke", learning_rate=1.0)


def test_failing_notebook_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path / "runs"))
    # a learning rate the trainer rejects: 01 fails in its first training cell
    code = main(["--profile", "smoke", "--only", "01", "-p", "lr", "-1.0", "--out", str(tmp_path / "out")])
    assert code == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rec = manifest["notebooks"]["01_training"]
    assert rec["status"] == "failed" and "lr must be > 0" in rec["error"]
    assert rec["parameters"]["lr"] == -1.0 and manifest["profile"] == "smoke" and "torch" in manifest["versions"]
    assert (tmp_path / "out" / "01_training.ipynb").exists()  # partial output kept
    assert "FAILED: 01_training" in capsys.readouterr().err
