"""Training curves: read a run's per-step metrics (`training_metrics`: our trainer's metrics.jsonl, or what a verl
run has) and plot reward, held-out accuracy, response length and entropy against the step."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from rlvr_nb.checkpoints import read_metrics

VERL_KEYS = {"reward": "critic/score/mean", "response_len": "response_length/mean", "entropy": "actor/entropy"}
"""Our metric names -> verl 0.9.1's (trainer/ppo/metric_utils.py, ray_trainer.py)."""
NO_HELDOUT = ("not logged: verl runs have no held-out evaluation (the launcher turns verl's validation off); "
              "05 and 06 evaluate their checkpoints")


def training_metrics(run_dir: str | Path) -> list[dict]:
    """Per-step metrics of a run under our trainer's names: its metrics.jsonl; for a verl run (none there),
    verl's own metrics (verl_metrics.jsonl, else those ingested into checkpoints/step_N/trainer_state.json) as
    reward, response_len and entropy (`VERL_KEYS`). verl runs log no held-out accuracy."""
    rows = read_metrics(run_dir)
    if rows:
        return rows
    from rlvr_nb.backends.verl_config import RunFiles
    from rlvr_nb.backends.verl_launcher import read_verl_metrics
    from rlvr_nb.checkpoint_files import read_json

    by_step = read_verl_metrics(RunFiles(Path(run_dir)).metrics)
    if not by_step:
        for f in sorted(Path(run_dir).glob("checkpoints/step_*/trainer_state.json")):
            state = read_json(f)
            if isinstance(state, dict) and state.get("metrics"):
                by_step[int(state["step"])] = state["metrics"]
    return [{"step": step, **{ours: data[theirs] for ours, theirs in VERL_KEYS.items() if theirs in data}}
            for step, data in sorted(by_step.items())]


def series(run_dir: str | Path, key: str, window: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric; window > 1 applies a trailing moving average."""
    rows = [m for m in training_metrics(run_dir) if key in m]
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
            if len(s):  # a verl run logs none
                axes[1].plot(s, v, color=c, ls=ls, marker=".", label=f"{label} {key.split('_')[1]}")
    for ax, title in zip(axes, ("training reward (moving avg)", "held-out accuracy", "response length (tokens)",
                                "policy entropy (nats/token)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(0, 1.15 * axes[2].get_ylim()[1])  # from zero: a fixed-length answer's tiny wobble stays tiny
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8)
    else:  # verl runs log none
        axes[1].text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=axes[1].transAxes)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_table(runs: Mapping[str, str | Path]) -> list[dict]:
    """First and last held-out accuracy of each run (greedy and sampled at T = 1). A run without held-out
    evaluations (a verl run) gets its first and last training reward instead, and says that held-out accuracy
    was not logged; a run without any metrics is a ValueError naming it."""
    rows = []
    for label, run in runs.items():
        metrics = training_metrics(run)
        evals = [m for m in metrics if "heldout_sampled" in m]
        if not evals:
            rewards = [m for m in metrics if "reward" in m]
            if not rewards:
                raise ValueError(f"run {label!r} at {run} has no metrics: no metrics.jsonl, verl_metrics.jsonl or "
                                 "metrics in checkpoints/step_N/trainer_state.json")
            rows.append({"run": label, "steps": rewards[-1]["step"], "training reward: start": rewards[0]["reward"],
                         "training reward: end": rewards[-1]["reward"], "held-out accuracy": NO_HELDOUT})
            continue
        rows.append({"run": label, "steps": evals[-1]["step"],
                     "sampled: start": evals[0]["heldout_sampled"], "sampled: end": evals[-1]["heldout_sampled"],
                     "greedy: start": evals[0]["heldout_greedy"], "greedy: end": evals[-1]["heldout_greedy"]})
    return rows
