"""The findings table: a notebook's findings are written beside its outputs and read back as they were; bad ones
are refused before anything is written; 00's and the README's tables are generated from the committed files."""

import json
import math

import pytest

import rlvr_nb.figures as figures
from rlvr_nb.findings import Finding, findings_markdown, read_findings, record_findings, verdict_over
from rlvr_nb.notebook import overview

NB = "02_weight_linearity"


def finding(key="a", **changes) -> Finding:
    base = dict(key=key, name="RL weight R^2 median", value=0.872, interval=(0.85, 0.89), paper=0.85,
                threshold="> 0.70", verdict="holds in 3 of 3 seeds", notebook=NB, interval_kind="seed range")
    return Finding(**(base | changes))


@pytest.fixture
def out(tmp_path, monkeypatch):
    """This run's output folder, as the runner sets it."""
    monkeypatch.setenv("RLVR_NB_OUT", str(tmp_path / "staging"))
    return tmp_path / "staging"


def test_verdict_over_seeds():
    assert verdict_over([True]) == "holds" and verdict_over([False]) == "fails"
    assert verdict_over([True, True, True]) == "holds in 3 of 3 seeds"
    assert verdict_over([True, False, True]) == "holds in 2 of 3 seeds"
    assert verdict_over([False, False]) == "fails in 2 of 2 seeds"
    with pytest.raises(ValueError, match="at least one"):
        verdict_over([])


def test_record_and_read_round_trip(out):
    found = [finding(), finding("b", name="token R^2", value=0.55, interval=None, paper="qualitative", verdict="fails",
                                unit="x", note="one seed")]
    path = record_findings(NB, found, "smoke")
    assert path == out / "findings" / f"{NB}.json"
    data = json.loads(path.read_text())
    assert data["profile"] == "smoke" and data["notebook"] == NB and len(data["findings"]) == 2
    assert read_findings(out) == found
    assert not list(path.parent.glob(".*"))  # no temporary file left beside it


def test_nan_is_strict_json_and_needs_a_note(out):
    with pytest.raises(ValueError, match="finding 'f': its value or interval is NaN; say why in its note"):
        record_findings(NB, [finding("f", value=math.nan)], "smoke")
    with pytest.raises(ValueError, match="finding 'g': its value or interval is NaN"):
        record_findings(NB, [finding("g", interval=(0.1, math.nan))], "smoke")
    assert not out.exists()
    path = record_findings(NB, [finding("f", value=math.nan, note="the target was never reached")], "smoke")
    assert "NaN" not in path.read_text()
    (back,) = read_findings(out)
    assert back.value is None and back.note == "the target was never reached"


def test_refusals_name_the_finding_and_write_nothing(out):
    with pytest.raises(ValueError, match="finding 'a' belongs to notebook '03_logprob_linearity', not '02_weight"):
        record_findings(NB, [finding(notebook="03_logprob_linearity")], "smoke")
    with pytest.raises(ValueError, match="finding 'a' appears twice in 02_weight_linearity's findings"):
        record_findings(NB, [finding(), finding(value=0.1)], "smoke")
    with pytest.raises(ValueError, match="finding 'a': value must be a number or None"):
        record_findings(NB, [finding(value="0.8")], "smoke")
    assert not out.exists()


def test_without_the_runner_findings_go_to_the_interactive_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("RLVR_NB_OUT", raising=False)
    monkeypatch.setattr(figures, "REPO_ROOT", tmp_path)
    path = record_findings(NB, [finding()], "cpu")
    assert path == tmp_path / "papermill_runs" / "interactive" / "findings" / f"{NB}.json"
    assert path.parent.parent == figures.figure_dir().parent  # beside the figures


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a findings file"),
    (json.dumps({"notebook": "other", "findings": []}), "needs \"notebook\": '02_weight_linearity'"),
    (json.dumps({"notebook": NB, "findings": [{"key": "a"}]}), "finding 0 is not a finding"),
    (json.dumps({"notebook": NB, "findings": [dict(vars(finding()), interval=[1])]}), "has interval \\[1\\]"),
])
def test_a_malformed_file_is_one_error_naming_it(tmp_path, text, message):
    (tmp_path / "findings").mkdir()
    bad = tmp_path / "findings" / f"{NB}.json"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        read_findings(tmp_path)
    assert str(bad) in str(e.value)


def test_no_folder_no_findings(tmp_path):
    assert read_findings(tmp_path) == []


def test_markdown_table():
    text = findings_markdown([finding(), finding("b", name="a | b", value=2.009, interval=None, paper=None, unit="x",
                                                 verdict="fails", notebook="06_rl_extra", note="per-seed\nmedian")])
    lines = text.splitlines()
    assert lines[0] == "| notebook | finding | ours | paper | goal | verdict | note |"
    assert lines[2] == ("| 02_weight_linearity | RL weight R^2 median | 0.872 [0.85, 0.89] (seed range) | 0.85 | > 0.70 "
                        "| holds in 3 of 3 seeds |  |")
    assert lines[3] == "| 06_rl_extra | a \\| b | 2.01 x | — | > 0.70 | fails | per-seed median |"


def test_overview_section_says_when_nothing_is_recorded(tmp_path):
    assert "no findings recorded yet at cpu" in overview.findings_section("cpu", tmp_path)
    (tmp_path / "cpu" / "findings").mkdir(parents=True)
    (tmp_path / "cpu" / "findings" / f"{NB}.json").write_text(json.dumps(
        {"notebook": NB, "profile": "cpu", "findings": [vars(finding()) | {"interval": [0.85, 0.89]}]}))
    assert overview.findings_section("cpu", tmp_path) == findings_markdown([finding()])


def test_readme_section_is_what_the_command_generates():
    readme = overview.repo_root() / "README.md"
    section = overview.split_readme(readme.read_text(), readme)[1]
    assert section == overview.readme_section(), f"the README's findings section is stale: run {overview.README_COMMAND}"
    assert overview.main(["--check"]) == 0


def test_update_readme_changes_only_the_section(tmp_path):
    runs = tmp_path / "runs"
    (runs / "cpu" / "findings").mkdir(parents=True)
    (runs / "cpu" / "findings" / f"{NB}.json").write_text(json.dumps(
        {"notebook": NB, "profile": "cpu", "findings": [vars(finding()) | {"interval": [0.85, 0.89]}]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{overview.README_START}\nstale text\n{overview.README_END}\n\nend\n")
    assert overview.update_readme(readme, runs) is True
    text = readme.read_text()
    assert text.startswith("# top\n\n<!-- findings:start -->") and text.endswith("<!-- findings:end -->\n\nend\n")
    assert findings_markdown([finding()]) in text and "stale text" not in text
    assert overview.update_readme(readme, runs) is False
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match=f"{readme} needs one findings section"):
        overview.update_readme(readme, runs)
    assert readme.read_text() == "# no markers\n"


def test_timings_mark_trained_and_cached_times(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "manifest.json").write_text(json.dumps({"notebooks": {
        "01_training": {"status": "ok", "wall_seconds": 812.4, "trained": [{"run": "rl-1", "seconds": 700.0},
                                                                            {"run": "sft-2", "seconds": 90.2}]},
        "02_weight_linearity": {"status": "ok", "wall_seconds": 15.2, "trained": []},
        "03_logprob_linearity": {"status": "failed", "wall_seconds": 3.0, "trained": [{"run": "x", "seconds": 1.0}]},
        "04_lowpass_theory": {"status": "ok", "wall_seconds": 9.0}}}))
    rows = {r["notebook"]: r["smoke (s)"] for r in overview.timings(tmp_path)}
    assert rows["01_training"] == "812 (trained 2 runs, 790 s)"
    assert rows["02_weight_linearity"] == "15 (nothing trained)"
    assert rows["03_logprob_linearity"] == "3 (trained 1 run, 1 s) (failed)"
    assert rows["04_lowpass_theory"] == "9" and rows["05_extrapolation"] == "—"
