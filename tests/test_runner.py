"""The notebook runner: clear errors for bad requests before anything runs; a notebook's outputs replace
the committed ones only when it completes, and a failing or interrupted one leaves them byte-identical."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import papermill
import pytest

import rlvr_nb.embedded as embedded
import rlvr_nb.notebook.run as runner
from rlvr_nb.notebook.profiles import NOTEBOOKS, PARAMS, RL_RUNS, resolve, rl_config
from rlvr_nb.notebook.run import main, parse_value, resolved_parameters, resolved_seed


class FakePapermill:
    """Stands in for papermill.execute_notebook: writes the output notebook, one figure and its findings file where
    the runner points RLVR_NB_OUT (and, for the notebooks in `trains`, notes a trained run the way
    `rlvr_nb.embedded` does), then completes, raises, or is interrupted."""

    def __init__(self, outcomes: dict | None = None):
        self.outcomes = outcomes or {}
        self.trains: set[str] = set()
        self.calls: list[tuple[str, dict, Path]] = []

    def __call__(self, nb, output_path, parameters=None, **kwargs):
        name = Path(output_path).stem
        out = Path(os.environ["RLVR_NB_OUT"])
        self.calls.append((name, dict(parameters or {}), out))
        Path(output_path).write_text(f"new {name}")
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "figures" / f"{name}_curves.png").write_bytes(b"new figure")
        (out / "findings").mkdir(parents=True, exist_ok=True)
        (out / "findings" / f"{name}.json").write_text(f'{{"notebook": "{name}", "findings": []}}')
        if name in self.trains:
            embedded.note_trained(Path(f"rl-{name}"), time.perf_counter() - 12.0)
        outcome = self.outcomes.get(name)
        if outcome is not None:
            raise outcome


@pytest.fixture
def fake(monkeypatch):
    f = FakePapermill()
    monkeypatch.setattr(papermill, "execute_notebook", f)
    return f


@pytest.fixture
def committed(tmp_path):
    """A committed reference: 01's notebook and figure, 02's notebook and a manifest entry for both."""
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "01_training.ipynb").write_text("reference 01")
    (out / "02_weight_linearity.ipynb").write_text("reference 02")
    (out / "figures" / "01_training_curves.png").write_bytes(b"reference figure")
    (out / "manifest.json").write_text(json.dumps({"profile": "smoke", "git_commit": "abc", "notebooks": {
        "01_training": {"status": "ok", "wall_seconds": 1.0}, "02_weight_linearity": {"status": "ok"}}}, indent=2))
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def committed_files(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(root).items() if not k.startswith("partial/")}


def test_unknown_profile_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit, match="unknown profile 'laptop'; valid profiles: smoke, cpu, gpu"):
        main(["--profile", "laptop"])
    with pytest.raises(ValueError, match="valid profiles"):
        resolve("01_training", "laptop")


def test_unknown_parameter_lists_the_valid_ones(fake, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"unknown parameter 'learning_rate'; valid parameters: .*\blr\b") as e:
        main(["--profile", "smoke", "--only", "01", "-p", "learning_rate", "1e-3", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "unknown parameter 'learning_rate'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown notebook") as e:
        main(["--profile", "smoke", "--only", "99_nothing", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not fake.calls and not (tmp_path / "o").exists()


def test_parse_value_and_overrides():
    assert parse_value("1e-4") == 1e-4 and parse_value("True") is True and parse_value("grpo") == "grpo"
    assert rl_config("smoke", lr=3e-4, steps=None).lr == 3e-4
    with pytest.raises(ValueError, match="unknown RLConfig field"):
        rl_config("smoke", learning_rate=1.0)


@pytest.mark.parametrize("args, message", [
    (["-p", "lr", "abc"], "parameter 'lr' expects a float (like 0.0001, from the smoke profile's RL run); "
                          "got 'abc' (read as str)"),
    (["-p", "seed", "1.5"], "parameter 'seed' expects an int (like 0, from 01_training at profile smoke); "
                            "got '1.5' (read as float)"),
    (["-p", "model_path", "7"], "parameter 'model_path' expects a str (like '', from 01_training at profile gpu); "
                                "got '7' (read as int); to pass a string, quote it: -p model_path \"'7'\""),
])
def test_bad_parameter_value_is_rejected_before_anything_runs(fake, committed, capsys, args, message):
    before = snapshot(committed)
    with pytest.raises(SystemExit) as e:
        main(["--profile", "smoke", "--only", "01", "02", *args, "--out", str(committed)])
    assert e.value.code == 2 and str(e.value) == "error: " + message
    assert capsys.readouterr().err.strip() == "error: " + message
    assert not fake.calls and snapshot(committed) == before


def test_nested_and_non_none_defaults_are_checked(fake, tmp_path):
    out = str(tmp_path / "o")
    with pytest.raises(SystemExit, match=r"'sampling' expects a list of tuple of float .* got '\[0.6\]'"):
        main(["--profile", "smoke", "--only", "05", "-p", "sampling", "[0.6]", "--out", out])
    with pytest.raises(SystemExit, match=r"'interactive' expects a bool \(like False, from 05_extrapolation's "
                                         r"parameters cell\); got 'None'"):
        main(["--profile", "smoke", "--only", "05", "-p", "interactive", "None", "--out", out])
    assert not fake.calls and not (tmp_path / "o").exists()


def test_good_values_are_injected_with_the_profile(fake, tmp_path):
    code = main(["--profile", "smoke", "--only", "01", "-p", "lr", "1", "-p", "seed", "None", "-p", "steps", "20",
                 "--out", str(tmp_path / "o")])
    assert code == 0 and len(fake.calls) == 1
    params = fake.calls[0][1]
    assert params["lr"] == 1.0 and isinstance(params["lr"], float) and params["seed"] is None
    assert params["steps"] == 20 and params["profile"] == "smoke"


@pytest.mark.parametrize("only", [[""], [" "], ["01", ""]])
def test_empty_only_is_an_error_not_every_notebook(fake, tmp_path, capsys, only):
    with pytest.raises(SystemExit, match=r"error: --only .* names no notebook; give a name or a prefix such as 01; "
                                         r"valid: 00_overview, ") as e:
        main(["--profile", "smoke", "--only", *only, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not fake.calls and not (tmp_path / "o").exists()


def test_failing_notebook_leaves_the_reference_byte_identical(fake, committed, capsys):
    fake.outcomes["01_training"] = RuntimeError("cell 7 broke")
    before = snapshot(committed)
    code = main(["--profile", "smoke", "--only", "01", "--out", str(committed)])
    assert code == 1 and committed_files(committed) == before
    partial = committed / "partial"
    assert (partial / "01_training.ipynb").read_text() == "new 01_training"
    assert (partial / "figures" / "01_training_curves.png").read_bytes() == b"new figure"
    rec = json.loads((partial / "manifest.json").read_text())["notebooks"]["01_training"]
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: cell 7 broke"
    assert rec["output"] == "partial/01_training.ipynb"
    assert rec["files"] == ["figures/01_training_curves.png", "findings/01_training.json"]
    assert not (committed / "findings").exists()  # a failed notebook's findings never reach the committed outputs
    err = capsys.readouterr().err
    assert f"[smoke] 01_training: failed after 0 s (RuntimeError: cell 7 broke); partial notebook: " \
           f"{partial / '01_training.ipynb'}; committed outputs in {committed} unchanged" in err
    assert not list(committed.glob(".staging-*"))


def test_interrupted_notebook_leaves_the_reference_and_stops_the_run(fake, committed, capsys):
    fake.outcomes["01_training"] = KeyboardInterrupt()
    before = snapshot(committed)
    code = main(["--profile", "smoke", "--only", "01", "02", "--out", str(committed)])
    assert code == 130 and committed_files(committed) == before
    assert [c[0] for c in fake.calls] == ["01_training"]  # 02 never started
    assert (committed / "partial" / "01_training.ipynb").read_text() == "new 01_training"
    rec = json.loads((committed / "partial" / "manifest.json").read_text())["notebooks"]["01_training"]
    assert rec["status"] == "interrupted"
    assert f"partial notebook: {committed / 'partial' / '01_training.ipynb'}" in capsys.readouterr().err
    assert not list(committed.glob(".staging-*"))


def test_completed_notebook_replaces_its_outputs_from_staging(fake, committed):
    code = main(["--profile", "smoke", "--only", "01", "--out", str(committed)])
    assert code == 0
    _, _, staged_in = fake.calls[0]
    assert staged_in.parent == committed.resolve() and staged_in.name == f".staging-01_training-{os.getpid()}"
    assert (committed / "01_training.ipynb").read_text() == "new 01_training"
    assert (committed / "figures" / "01_training_curves.png").read_bytes() == b"new figure"
    assert (committed / "02_weight_linearity.ipynb").read_text() == "reference 02"
    manifest = json.loads((committed / "manifest.json").read_text())
    rec = manifest["notebooks"]["01_training"]
    assert rec["status"] == "ok" and rec["files"] == ["figures/01_training_curves.png", "findings/01_training.json"]
    assert json.loads((committed / "findings" / "01_training.json").read_text())["notebook"] == "01_training"
    assert manifest["notebooks"]["02_weight_linearity"] == {"status": "ok"}  # other entries kept
    assert not list(committed.glob(".staging-*")) and not list(committed.glob(".manifest.json.*"))
    assert not (committed / "partial").exists()


def test_stale_staging_of_a_dead_runner_is_removed(fake, committed):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = committed / f".staging-01_training-{dead.pid}"
    (stale / "figures").mkdir(parents=True)
    (stale / "figures" / "01_training_curves.png").write_bytes(b"half")
    assert main(["--profile", "smoke", "--only", "02", "--out", str(committed)]) == 0
    assert not stale.exists()


def test_failing_notebook_is_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path / "runs"))
    # a learning rate the trainer rejects: 01 fails in its first training cell (a real kernel)
    code = main(["--profile", "smoke", "--only", "01", "-p", "lr", "-1.0", "--out", str(tmp_path / "out")])
    assert code == 1
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / "01_training.ipynb").exists()
    manifest = json.loads((tmp_path / "out" / "partial" / "manifest.json").read_text())
    rec = manifest["notebooks"]["01_training"]
    assert rec["status"] == "failed" and "lr must be > 0" in rec["error"]
    assert rec["parameters"]["lr"] == -1.0 and manifest["profile"] == "smoke" and "torch" in manifest["versions"]
    assert (tmp_path / "out" / "partial" / "01_training.ipynb").exists()  # partial output kept
    assert "FAILED: 01_training" in capsys.readouterr().err


def test_output_path_reads_the_last_completed_run_when_this_run_has_not_written_it(tmp_path, monkeypatch):
    """A notebook runs in a staging folder: a table it only reads comes from the last completed run's outputs."""
    import rlvr_nb.figures as figures

    monkeypatch.setattr(figures, "REPO_ROOT", tmp_path)
    monkeypatch.setenv("RLVR_NB_OUT", str(tmp_path / "papermill_runs" / "smoke" / ".staging-02-1"))
    committed = tmp_path / "papermill_runs" / "smoke" / "t.json"
    staged = tmp_path / "papermill_runs" / "smoke" / ".staging-02-1" / "t.json"
    assert figures.output_path("t.json", "smoke", reading=True) == staged  # nothing anywhere: where to write
    committed.parent.mkdir(parents=True)
    committed.write_text("{}")
    assert figures.output_path("t.json", "smoke", reading=True) == committed
    assert figures.output_path("t.json", "smoke") == staged  # writing always goes to this run's outputs
    staged.parent.mkdir(parents=True)
    staged.write_text("{}")
    assert figures.output_path("t.json", "smoke", reading=True) == staged


def test_overview_runs_last(fake, tmp_path):
    assert runner.select(None)[-1] == "00_overview" and sorted(runner.select(None)) == sorted(NOTEBOOKS)
    assert main(["--profile", "smoke", "--only", "00", "01", "02", "--out", str(tmp_path / "o")]) == 0
    assert [c[0] for c in fake.calls] == ["01_training", "02_weight_linearity", "00_overview"]


def test_manifest_records_resolved_values_seed_commit_and_trained_runs(fake, committed, monkeypatch):
    commits = iter(["c01", "c02"])
    monkeypatch.setattr(runner, "git_commit", lambda: next(commits))
    fake.trains = {"01_training"}
    assert main(["--profile", "smoke", "--only", "01", "02", "-p", "steps", "20", "--out", str(committed)]) == 0
    manifest = json.loads((committed / "manifest.json").read_text())
    assert "git_commit" not in manifest  # no single commit stands for notebooks run at several
    r01, r02 = manifest["notebooks"]["01_training"], manifest["notebooks"]["02_weight_linearity"]
    assert (r01["git_commit"], r02["git_commit"]) == ("c01", "c02")  # each taken when its notebook started
    smoke = RL_RUNS["smoke"]
    assert r01["parameters"]["steps"] == 20 and r01["overrides"] == {"steps": 20}
    assert (r01["parameters"]["lr"], r01["parameters"]["group_size"]) == (smoke.lr, smoke.group_size)
    assert r01["seed"] == 0 and r01["parameters"]["seed"] == 0 and r01["parameters"]["data_path"] is None
    assert r02["parameters"]["seq_steps"] == PARAMS["02_weight_linearity"]["smoke"]["seq_steps"]
    assert r02["seed"] is not None and r02["overrides"] == {}
    assert [t["run"] for t in r01["trained"]] == ["rl-01_training"] and r01["trained"][0]["seconds"] >= 12.0
    assert r02["trained"] == []
    assert "trained.jsonl" not in r01["files"] and not (committed / "trained.jsonl").exists()


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_resolved_parameters_are_what_the_notebook_resolves(profile):
    import jupytext

    for name in NOTEBOOKS:
        cell = runner.parameters_cell(jupytext.read(runner.notebook_path(name)))
        values = resolved_parameters(name, profile, {**cell, "profile": profile})
        ns = vars(resolve(name, profile, **{k: v for k, v in cell.items() if k != "profile"}))
        assert {k: values[k] for k in ns} == ns, name
    values = resolved_parameters("01_training", profile, {"profile": profile, "steps": None, "lr": None, "seed": None})
    rl = rl_config(profile)
    assert (values["steps"], values["lr"], values["seed"]) == (rl.steps, rl.lr, rl.seed)


def test_resolved_seed():
    assert resolved_seed("06_rl_extra", "cpu", {"seeds": [0, 1, 2]}) == [0, 1, 2]
    assert resolved_seed("04_lowpass_theory", "cpu", {"seed": 3}) == 3
    assert resolved_seed("05_extrapolation", "cpu", {"rl_recipe": {}}) == RL_RUNS["cpu"].seed
    assert resolved_seed("05_extrapolation", "cpu", {"rl_recipe": {"seed": 7}, "seeds": []}) == 7
    assert resolved_seed("00_overview", "cpu", {"profile": "cpu"}) is None


def test_embedded_notes_only_the_runs_it_trains(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_NB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("RLVR_NB_OUT", str(tmp_path / "out"))
    done: set[str] = set()
    monkeypatch.setattr(embedded, "is_complete", lambda run: Path(run).name in done)
    monkeypatch.setattr(embedded, "list_checkpoints", lambda run: [(0, Path(run) / "step_0")])
    monkeypatch.setattr(embedded, "train_sft", lambda cfg, run, init, *a, **k: done.add(Path(run).name))
    monkeypatch.setattr(embedded, "train_rl", lambda cfg, init, run, *a, **k: done.add(Path(run).name))
    rl = RL_RUNS["smoke"]
    run = embedded.ensure_rl_run(rl)
    log = tmp_path / "out" / embedded.TRAINED_LOG
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["run"].split("-")[0] for x in lines] == ["warmstart", "cooldown", "rl"] and lines[-1]["run"] == run.name
    assert embedded.ensure_rl_run(rl) == run and len(log.read_text().splitlines()) == 3  # cached: nothing noted
    monkeypatch.delenv("RLVR_NB_OUT")
    embedded.ensure_sft_run(embedded.matched_sft(rl))  # trained, but no runner is listening
    assert len(log.read_text().splitlines()) == 3
