"""Training curves: read a run's metrics.jsonl and plot reward, held-out accuracy, response length and
entropy against the step."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from rlvr_nb.checkpoints import read_metrics


def series(run_dir: str | Path, key: str, window: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric; window > 1 applies a trailing moving average."""
    rows = [m for m in read_metrics(run_dir) if key in m]
    steps = np.array([m["step"] for m in rows], dtype=float)
    values = np.array([m[key] for m in rows], dtype=float)
    if window > 1 and len(values) >= window:
        kernel = np.ones(window) / window
        values = np.convolve(values, kernel, mode="valid")
        steps = steps[window - 1 :]
    return steps, values


def plot_training(runs: Mapping[str, str | Path], window: int = 20) -> plt.Figure:
    """Four panels: training reward, held-out accuracy (greedy and sampled), response length, entropy.
    Metrics a run does not log (SFT has no reward) are skipped for that run."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for i, (label, run) in enumerate(runs.items()):
        c = f"C{i}"
        for ax, key, w in ((axes[0], "reward", window), (axes[2], "response_len", window), (axes[3], "entropy", window)):
            s, v = series(run, key, w)
            if len(s):
                ax.plot(s, v, color=c, label=label)
        for key, ls in (("heldout_sampled", "-"), ("heldout_greedy", "--")):
            s, v = series(run, key)
            axes[1].plot(s, v, color=c, ls=ls, marker=".", label=f"{label} {key.split('_')[1]}")
    for ax, title in zip(axes, ("training reward (moving avg)", "held-out accuracy", "response length (tokens)",
                                "policy entropy (nats/token)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_table(runs: Mapping[str, str | Path]) -> list[dict]:
    """First and last held-out accuracy of each run (greedy and sampled at T = 1)."""
    rows = []
    for label, run in runs.items():
        evals = [m for m in read_metrics(run) if "heldout_sampled" in m]
        rows.append({"run": label, "steps": evals[-1]["step"],
                     "sampled: start": evals[0]["heldout_sampled"], "sampled: end": evals[-1]["heldout_sampled"],
                     "greedy: start": evals[0]["heldout_greedy"], "greedy: end": evals[-1]["heldout_greedy"]})
    return rows
