"""Small helpers for what notebooks print: markdown tables of computed numbers."""

from __future__ import annotations

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
