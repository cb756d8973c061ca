"""Notebooks: the .py/.ipynb pairs have not drifted, each has one parameters cell whose knobs cover the
profile table, and every notebook executes at the smoke profile (in order, sharing one runs/ cache)."""

import json
from pathlib import Path

import jupytext
import pytest

from rlvr_nb.notebook import profiles
from rlvr_nb.notebook.run import notebook_path, parameters_cell, run

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9]*.py"))


def cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_is_listed_and_paired():
    assert [p.stem for p in SOURCES] == [n for n in profiles.NOTEBOOKS if notebook_path(n).exists()]
    assert {p.stem for p in NB_DIR.glob("[0-9]*.ipynb")} == {p.stem for p in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_pair_has_not_drifted(path):
    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `make sync`"
    a, b = cells(jupytext.read(path)), cells(jupytext.read(ipynb))
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"{path.stem}: cell {i} differs between .py and .ipynb (run `make sync`)"
    assert len(a) == len(b), f"{path.stem}: {len(a)} cells in .py, {len(b)} in .ipynb (run `make sync`)"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_covers_the_profile_table(path):
    params = parameters_cell(jupytext.read(path))
    assert params.get("profile") == "cpu"
    for profile, table in profiles.PARAMS.get(path.stem, {}).items():
        missing = set(table) - set(params)
        assert not missing, f"{path.stem}: profile {profile} sets {missing}, not in the parameters cell"


@pytest.fixture(scope="module")
def smoke_env(tmp_path_factory, monkeypatch_module, smoke_runs):
    """The output folder; the runs are the suite's shared smoke cache, which pretrain filled first (as in `make run`)."""
    out = tmp_path_factory.mktemp("papermill_smoke")
    monkeypatch_module.setenv("RLVR_NB_RUNS", str(smoke_runs[0]))
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.notebook
@pytest.mark.parametrize("name", [p.stem for p in SOURCES])
def test_notebook_runs_at_smoke(name, smoke_env, smoke_runs):
    failed = run("smoke", only=[name], out_dir=smoke_env, timeout_s=600)
    assert failed == 0, f"{name} failed at the smoke profile; see {smoke_env / (name + '.ipynb')}"
    assert (smoke_env / f"{name}.ipynb").exists()
    pretrained = {run_name for run_name, _ in smoke_runs[1][1:]}
    trained = {t.get("run") for t in json.loads((smoke_env / "manifest.json").read_text())["notebooks"][name]["trained"]}
    assert not trained & pretrained, f"{name} trained again what pretrain had trained: {sorted(trained & pretrained)}"
