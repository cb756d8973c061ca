"""Small helpers for what notebooks print (markdown tables of computed numbers) and for the JSON tables
that sweeps write and notebooks read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e4 or (value and abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict], digits: int = 3):
    """Rows of dicts (same keys) as an IPython Markdown table (renders in Jupyter and in executed notebooks)."""
    from IPython.display import Markdown

    if not rows:
        return Markdown("*(no rows)*")
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, ""), digits) for k in keys) + " |" for r in rows]
    return Markdown("\n".join(lines))


def save_json_table(path: str | Path, data: dict) -> Path:
    """Write a table (a dict holding "rows" and what they were computed from) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load_json_table(path: str | Path, keys: set[str], writer: str, hint: str) -> dict:
    """A table written by `writer`: one clear error when it is missing (with `hint`) or lacks `keys`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no table at {path}: {hint}")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not keys <= set(data):
        raise ValueError(f"{path} is not a table written by {writer} (needs {sorted(keys)})")
    return data
