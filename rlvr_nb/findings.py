"""The findings table: what each notebook measured, beside the paper's value, the goal and a computed verdict.

A notebook builds its `Finding`s from numbers it computed (the paper's value from `rlvr_nb.paper`, the verdict
from the same predicate its cells print, several seeds through `verdict_over`) and calls `record_findings`,
which writes `findings/<notebook>.json` beside its figures: into the folder the executed notebook goes to
(`rlvr_nb.figures.output_path`; the runner moves it into `papermill_runs/<profile>/findings/` when the notebook
completes). `read_findings` reads a profile's folder back and `findings_markdown` renders the table that
`00_overview` and the README show.

File format (strict JSON: a NaN value is written as null and read back as None, a NaN interval end as null,
read back as NaN):

    {"notebook": "02_weight_linearity", "profile": "cpu", "findings": [{"key": "a", "name": ..., ...}, ...]}
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

from rlvr_nb.checkpoint_writes import write_json
from rlvr_nb.figures import output_path

FOLDER = "findings"
"""The sub-folder of an output folder that holds one findings file per notebook."""


@dataclass(frozen=True)
class Finding:
    """One measured claim of one notebook."""

    key: str
    """Short id, unique within the notebook: "a", "f_extrapolated", "rl_vs_sft_matched_lr"."""
    name: str
    """What was measured, in plain words."""
    value: float | None
    """Our value (a seed mean where there are seeds); None when there is nothing to report (say why in `note`)."""
    interval: tuple[float, float] | None
    """(low, high) around `value`; what kind in `interval_kind`."""
    paper: float | str | None
    """The paper's value, from rlvr_nb.paper (a string for a qualitative claim); None when the paper has none."""
    threshold: str
    """The goal in words: "> 0.70", "within 10% of the paper"."""
    verdict: str
    """Computed by the notebook: "holds", "fails", "holds in 2 of 3 seeds" (see `verdict_over`)."""
    notebook: str
    """The notebook that measured it, e.g. "02_weight_linearity"."""
    interval_kind: str = ""
    """"seed range", "95% bootstrap CI", "paired 95% CI"."""
    unit: str = ""
    """Unit of `value` and `interval` ("x", "%"); empty for a plain number."""
    note: str = ""
    """Anything a reader needs to read the row right (required when the value is NaN)."""


def verdict_over(passes: Sequence[bool]) -> str:
    """The verdict of a finding checked once per seed. One seed: "holds" or "fails". Several seeds: always
    "k of n": "holds in k of n seeds" when at least one passes (all included: "holds in 3 of 3 seeds"), else
    "fails in n of n seeds"."""
    passes = [bool(p) for p in passes]
    if not passes:
        raise ValueError("verdict_over needs at least one result (got none)")
    n, k = len(passes), sum(passes)
    if n == 1:
        return "holds" if k else "fails"
    return f"holds in {k} of {n} seeds" if k else f"fails in {n} of {n} seeds"


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _strict(x):
    """JSON has no NaN: written as null."""
    return None if _nan(x) else x


def _number(x, what: str, key: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        raise ValueError(f"finding {key!r}: {what} must be a number or None, got {x!r}")
    return float(x)


def _check(f: Finding, notebook: str) -> dict:
    """The finding as a JSON-ready dict (NaN as None), or ValueError naming it."""
    if not isinstance(f, Finding):
        raise ValueError(f"expected Finding objects, got {type(f).__name__}: {f!r}")
    if not f.key or not isinstance(f.key, str):
        raise ValueError(f"a finding of {notebook} has no key (name {f.name!r})")
    if f.notebook != notebook:
        raise ValueError(f"finding {f.key!r} belongs to notebook {f.notebook!r}, not {notebook!r}")
    value = _number(f.value, "value", f.key)
    interval = None
    if f.interval is not None:
        if len(f.interval) != 2:
            raise ValueError(f"finding {f.key!r}: interval must be (low, high), got {f.interval!r}")
        interval = [_number(x, "interval", f.key) for x in f.interval]
    if (_nan(value) or any(_nan(x) for x in interval or ())) and not f.note:
        raise ValueError(f"finding {f.key!r}: its value or interval is NaN; say why in its note")
    paper = f.paper if f.paper is None or isinstance(f.paper, str) else _number(f.paper, "paper", f.key)
    return asdict(f) | {"value": _strict(value), "paper": _strict(paper),
                        "interval": None if interval is None else [_strict(x) for x in interval]}


def record_findings(notebook: str, findings: Sequence[Finding], profile: str) -> Path:
    """Write `findings/<notebook>.json` (the findings and the profile) atomically into this run's output folder
    (`rlvr_nb.figures.output_path`) and return its path. Refuses, before writing anything (ValueError naming
    the finding), a finding of another notebook, a NaN value or interval without a note, and duplicate keys."""
    if not notebook or "/" in notebook or notebook.startswith("."):
        raise ValueError(f"not a notebook name: {notebook!r}")
    rows = [_check(f, notebook) for f in findings]
    seen: set[str] = set()
    for r in rows:
        if r["key"] in seen:
            raise ValueError(f"finding {r['key']!r} appears twice in {notebook}'s findings")
        seen.add(r["key"])
    path = output_path(f"{FOLDER}/{notebook}.json", profile)
    return write_json(path, {"notebook": notebook, "profile": profile, "findings": rows}, allow_nan=False)


def _load(path: Path) -> list[Finding]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a findings file ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list) or data.get("notebook") != path.stem:
        raise ValueError(f"{path}: not a findings file (needs \"notebook\": {path.stem!r} and a \"findings\" list)")
    names = {f.name for f in fields(Finding)}
    required = {f.name for f in fields(Finding) if f.default is MISSING}
    out = []
    for i, row in enumerate(data["findings"]):
        if not isinstance(row, dict) or not required <= set(row) or not set(row) <= names:
            raise ValueError(f"{path}: finding {i} is not a finding (needs the keys {sorted(required)}, "
                             f"may have {sorted(names - required)}; got {row!r})")
        interval = row["interval"]
        if interval is not None:
            if not isinstance(interval, list) or len(interval) != 2:
                raise ValueError(f"{path}: finding {row['key']!r} has interval {interval!r}, not [low, high]")
            interval = tuple(math.nan if x is None else float(x) for x in interval)
        f = Finding(**{**row, "interval": interval})
        if f.notebook != path.stem:
            raise ValueError(f"{path}: finding {f.key!r} belongs to notebook {f.notebook!r}")
        out.append(f)
    return out


def read_findings(directory: str | Path) -> list[Finding]:
    """Every finding recorded in `<directory>/findings/*.json` (a profile's output folder, papermill_runs/<profile>),
    in notebook order; [] when there are none. A malformed file is one ValueError naming it."""
    folder = Path(directory) / FOLDER
    return [f for path in sorted(folder.glob("*.json")) for f in _load(path)] if folder.is_dir() else []


def _num(x: float | None) -> str:
    if x is None or _nan(x):
        return "NaN" if _nan(x) else "—"
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def ours(f: Finding) -> str:
    """Our value with its unit and interval: "0.872 [0.85, 0.89] (seed range)"."""
    text = _num(f.value) + (f" {f.unit}" if f.unit and f.value is not None else "")
    if f.interval is not None:
        text += f" [{_num(f.interval[0])}, {_num(f.interval[1])}]" + (f" ({f.interval_kind})" if f.interval_kind else "")
    return text


def findings_markdown(findings: Sequence[Finding]) -> str:
    """The findings as a markdown table: notebook, finding, ours (value with interval), paper, goal, verdict, note."""
    lines = ["| notebook | finding | ours | paper | goal | verdict | note |", "|---|---|---|---|---|---|---|"]
    for f in findings:
        paper = f.paper if isinstance(f.paper, str) else _num(f.paper)
        cells = [f.notebook, f.name, ours(f), paper, f.threshold, f.verdict, f.note]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
