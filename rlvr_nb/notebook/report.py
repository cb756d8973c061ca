"""Small helpers for what notebooks print (markdown tables of computed numbers) and for the JSON tables
that sweeps write and notebooks read back.

A study too long for `make run` (seeds, sweeps) follows one pattern, `study_table`: at `cpu` a notebook reads the
table the package committed, which records how it was made (command, commit, date, wall time, the study's
parameters); with its `recompute` knob set it computes the table again and writes it, atomically.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from rlvr_nb.checkpoint_writes import write_text
from rlvr_nb.embedded import repo_root


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], digits: int = 3):
    """Rows of dicts as an IPython Markdown table (a column per key of any row, blank where a row lacks it; (renders in Jupyter and in executed notebooks)."""
    from IPython.display import Markdown

    if not rows:
        return Markdown("*(no rows)*")
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's columns, in first-seen order
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, ""), digits) for k in keys) + " |" for r in rows]
    return Markdown("\n".join(lines))


OUTPUT_PATHS = ("papermill_runs",)
"""What the runner writes into the checkout (ignored by `git_commit`'s dirty check)."""


def git_commit() -> str | None:
    """HEAD of the checkout the package runs from, with "-dirty" when tracked files differ; None outside git.
    The executed outputs (papermill_runs/, OUTPUT_PATHS) do not count: a run rewrites them as it goes, so without
    this every notebook after the first of a run from a clean checkout would read as dirty."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                               + [f":(exclude){p}" for p in OUTPUT_PATHS], cwd=repo_root(),
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def provenance(wall_seconds: float | None = None, command: str | None = None) -> dict:
    """How a table was made: the command (this process's, unless given), commit, UTC date and wall time."""
    return {"command": command or " ".join(shlex.quote(a) for a in sys.argv), "git_commit": git_commit(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "wall_seconds": None if wall_seconds is None else round(wall_seconds, 1)}


def save_json_table(path: str | Path, data: dict, wall_seconds: float | None = None, command: str | None = None) -> Path:
    """Write a table (a dict holding "rows" and what they were computed from) as indented JSON, atomically, with
    its `provenance` (kept as given when `data` already has one)."""
    data = {**data, "provenance": data.get("provenance") or provenance(wall_seconds, command)}
    return write_text(path, json.dumps(data, indent=1) + "\n")


def study_table(path: str | Path, recompute: bool, compute: Callable[[], dict], writer: str, command: str) -> dict:
    """The table of an expensive study: computed by `compute()` (a dict with "rows") and written to `path` with its
    provenance when `recompute` is set, else read from `path` (one clear error naming the file and `command`, the
    way to recompute it, when it is missing). `writer` names the function that writes it."""
    if recompute:
        t0 = time.perf_counter()
        data = compute()
        save_json_table(path, data, time.perf_counter() - t0, command)
        return load_json_table(path, {"rows"}, writer, "")
    return load_json_table(path, {"rows"}, writer, f"compute it with {command}")


def load_json_table(path: str | Path, keys: set[str], writer: str, hint: str) -> dict:
    """A table written by `writer`: one clear error when it is missing (with `hint`) or lacks `keys`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no table at {path}: {hint}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not keys <= set(data):
        raise ValueError(f"{path} is not a table written by {writer} (needs {sorted(keys)})")
    return data
