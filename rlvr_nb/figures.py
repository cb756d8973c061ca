"""Figures: where they are saved, and the linearity plots of Sec. 4 (Fig. 1 of the paper).

`save_figure` writes a PNG to `$RLVR_NB_OUT/figures/<name>.png` when the RLVR_NB_OUT environment
variable is set (the notebook runner sets it), else to `papermill_runs/interactive/figures/` under the
repository root, or to an explicit `directory`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from rlvr_nb import paper

if TYPE_CHECKING:  # only for annotations: save_figure stays importable without numba
    from rlvr_nb.linearity import Example, R2Summary

REPO_ROOT = Path(__file__).resolve().parent.parent
DPI = 110
COLORS = {"RL": "tab:blue", "SFT": "tab:orange"}


def figure_dir() -> Path:
    """$RLVR_NB_OUT/figures, else papermill_runs/interactive/figures under the repository root."""
    out = os.environ.get("RLVR_NB_OUT")
    return Path(out) / "figures" if out else REPO_ROOT / "papermill_runs" / "interactive" / "figures"


def output_path(name: str, profile: str, reading: bool = False) -> Path:
    """<this run's output folder>/<name> (beside figure_dir()); with reading=True, when this run has not written it
    (the runner executes each notebook in a staging folder), the last completed run's papermill_runs/<profile>/<name>."""
    path = figure_dir().parent / name
    committed = REPO_ROOT / "papermill_runs" / profile / name
    return committed if reading and not path.exists() and committed.exists() else path


def save_figure(fig: plt.Figure, name: str, directory: str | Path | None = None) -> Path:
    """Save `fig` as <directory or figure_dir()>/<name>.png and return the path."""
    from rlvr_nb.checkpoint_writes import atomic_file

    d = Path(directory) if directory is not None else figure_dir()
    path = d / f"{name}.png"
    with atomic_file(path, mode="wb") as f:  # a reader never sees half a PNG
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    return path


def plot_r2_histograms(summaries: Mapping[str, R2Summary], title: str = "weight R$^2$", bins: int = 50,
                       ax: plt.Axes | None = None) -> plt.Figure:
    """Fig. 1 (a, b): R^2 distributions of several runs (e.g. RL and SFT) overlaid, medians marked."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
    fig = ax.figure
    edges = np.linspace(0, 1, bins + 1)
    for i, (label, s) in enumerate(summaries.items()):
        color = COLORS.get(label, f"C{i}")
        if s.count == 0:
            ax.plot([], [], color=color, label=f"{label}: nothing kept")
            continue
        counts = s.hist.reshape(bins, -1).sum(1) if len(s.hist) % bins == 0 else np.histogram(
            (np.arange(len(s.hist)) + 0.5) / len(s.hist), bins=edges, weights=s.hist)[0]
        ax.stairs(counts / counts.sum(), edges, fill=True, alpha=0.35, color=color)
        ax.stairs(counts / counts.sum(), edges, color=color,
                  label=f"{label}: median {s.median:.2f}, >0.7 {s.frac_above:.0%} (n={s.count:,})")
        ax.axvline(s.median, color=color, ls="--", lw=1)
    ax.set_xlabel("R$^2$ of the linear fit against the step")
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def module_layer_grid(per_module_layer: Mapping[tuple[str, int], R2Summary], stat: str = "median"
                      ) -> tuple[list[str], list[int], np.ndarray]:
    """(modules, layers, values [modules, layers]) of one statistic; NaN where a cell has nothing kept."""
    modules = sorted({m for m, _ in per_module_layer})
    layers = sorted({layer for _, layer in per_module_layer})
    grid = np.full((len(modules), len(layers)), np.nan)
    for (m, layer), s in per_module_layer.items():
        if s.count:
            grid[modules.index(m), layers.index(layer)] = getattr(s, stat)
    return modules, layers, grid


def plot_module_layer_heatmap(runs: Mapping[str, Mapping[tuple[str, int], R2Summary]], stat: str = "median"
                              ) -> plt.Figure:
    """Median R^2 per module type (rows) and layer (columns), one panel per run; '-' is outside the stack."""
    grids = {label: module_layer_grid(grid_in, stat) for label, grid_in in runs.items()}
    shared = len({tuple(g[0]) for g in grids.values()}) == 1  # same module types: label the rows once
    fig, axes = plt.subplots(1, len(runs), figsize=(1.2 + (4.5 if shared else 6.0) * len(runs), 4), squeeze=False)
    for k, (ax, (label, (modules, layers, grid))) in enumerate(zip(axes[0], grids.items())):
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(layers)), ["-" if layer < 0 else str(layer) for layer in layers])
        ax.set_yticks(range(len(modules)), modules if k == 0 or not shared else [], fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(f"{label}: {stat} R$^2$")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]) and grid.size <= 400:
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < 0.6 else "black")
    if not shared:
        fig.subplots_adjust(wspace=0.8)
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03)
    return fig


def plot_example_trajectories(examples: Sequence[Example], steps: Sequence[int], ylabel: str = "weight",
                              title: str | None = None) -> plt.Figure:
    """Fig. 1 (c, d): example trajectories with their least-squares lines and R^2."""
    n = max(len(examples), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    t = np.asarray(steps, np.float64)
    for ax, e in zip(axes[0], examples):
        intercept = e.values.mean() - e.slope * t.mean()
        ax.plot(t, e.values, "o", ms=3)
        ax.plot(t, intercept + e.slope * t, "-", lw=1, color="gray")
        name = e.name.removeprefix("model.")
        name = name if len(name) <= 34 else "…" + name[-33:]
        label = name if " " in name else f"{name}[{e.index}]"  # tensor entries get their index
        ax.set_title(f"{label}\nR$^2$ = {e.r2:.3f}", fontsize=8)
        ax.set_xlabel("step")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_examples_by_run(runs: Mapping[str, tuple[Sequence[Example], Sequence[int]]], ylabel: str = "weight",
                         title: str | None = None) -> plt.Figure:
    """Fig. 1 (c, d) for several runs: one row of example trajectories (with their lines and R^2) per run."""
    n = max((len(ex) for ex, _ in runs.values()), default=1) or 1
    fig, axes = plt.subplots(len(runs), n, figsize=(3.2 * n, 2.6 * len(runs)), squeeze=False)
    for row, (label, (examples, steps)) in zip(axes, runs.items()):
        t = np.asarray(steps, np.float64)
        color = COLORS.get(label.split()[0], None)
        for ax, e in zip(row, examples):
            intercept = e.values.mean() - e.slope * t.mean()
            ax.plot(t, e.values, "o", ms=3, color=color)
            ax.plot(t, intercept + e.slope * t, "-", lw=1, color="gray")
            name = e.name.removeprefix("model.")
            name = name if len(name) <= 30 else "…" + name[-29:]
            ax.set_title(f"{name if ' ' in name else f'{name}[{e.index}]'}\nR$^2$ = {e.r2:.3f}", fontsize=7)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax.tick_params(labelsize=7)
        for ax in row[len(examples):]:
            ax.axis("off")
        row[0].set_ylabel(f"{label}\n{ylabel}", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_comparison_medians(rows: Sequence[dict], what: str, title: str) -> plt.Figure:
    """Median R^2 of RL and SFT side by side under each comparison (rows of
    `comparisons.comparison_rows`), with the paper's RL and SFT medians of `what` ("weight" or "token",
    `paper.MEDIAN_R2`) as dashed lines."""
    rows = [r for r in rows if isinstance(r.get("RL median"), float) and r["comparison"] != "paper (Sec. 4)"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.7 * len(rows), 3.6))
    x = np.arange(len(rows))
    for k, (kind, off) in enumerate((("RL", -0.18), ("SFT", 0.18))):
        vals = [r[f"{kind} median"] for r in rows]
        bars = ax.bar(x + off, vals, width=0.36, color=COLORS[kind], label=f"{kind} (ours)")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ref = paper.MEDIAN_R2[(kind, what)]
        ax.axhline(ref, color=COLORS[kind], ls="--", lw=1, label=f"{kind}, paper: {ref:.2f}")
    ax.set_xticks(x, [r["comparison"].replace(" ", "\n", 1) for r in rows], fontsize=8)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("median R$^2$")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", ncol=4)
    fig.tight_layout()
    return fig


def plot_seed_spread(rows: Sequence[dict], keys: Sequence[str], goals: dict[str, float], title: str = "") -> plt.Figure:
    """One panel per statistic: its value per seed (labelled dots), the seed mean (a bar) and the goal (dotted)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        v = np.array([r[key] for r in rows], dtype=float)
        ax.bar([0], [v.mean()], width=0.5, color="C0", alpha=0.3, label=f"mean of {len(v)} seeds")
        ax.plot(np.zeros(len(v)), v, "o", color="C0")
        for r, y in zip(rows, v):
            ax.annotate(f"seed {r['seed']}", (0, y), xytext=(8, 0), textcoords="offset points", va="center", fontsize=7)
        if key in goals:
            ax.axhline(goals[key], color="k", ls=":", lw=0.8, label=f"goal {goals[key]:g}")
        lo = min(v.min(), goals.get(key, v.min()))
        hi = max(v.max(), goals.get(key, v.max()))
        pad = max(0.02, 0.5 * (hi - lo))
        ax.set(xlim=(-0.6, 0.9), ylim=(lo - pad, min(1.0, hi + pad)), xticks=[], title=key)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_sweep(rows: Sequence[dict], target: float = paper.FINDING_A["median"]) -> plt.Figure:
    """The tuning sweep: weight and token log-prob median R^2 and held-out accuracy gain per setting, one
    panel per factor (each with the baseline), the findings' target median as a dotted line (`paper.FINDING_A`,
    the same as `paper.FINDING_B`)."""
    base = [r for r in rows if r["factor"] == "baseline"]
    factors = list(dict.fromkeys(r["factor"] for r in rows if r["factor"] != "baseline"))
    sizes = [sum(r["factor"] == f for r in rows) + len(base) for f in factors] or [1]
    fig, axes = plt.subplots(1, len(sizes), figsize=(max(8.0, 0.75 * sum(sizes) + 1.2 * len(sizes)), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": [max(n, 2) for n in sizes]})
    key_of = {"learning rate": "lr", "prompts per step": "rollouts", "steps": "steps", "combined": "setting"}
    for ax, factor in zip(axes[0], factors):
        key = key_of.get(factor, "setting")
        pts = [r for r in rows if r["factor"] == factor] + base
        if key != "setting":
            pts = sorted(pts, key=lambda r: (int(r[key].split("x")[0]) if key == "rollouts" else r[key]))
            labels = [f"{r[key]:g}" if key == "lr" else str(r[key]) for r in pts]
        else:  # settings changed together: rollouts, lr and steps of each run, compactly
            labels = [f"{r['rollouts']}\nlr {r['lr']:g}\n{r['steps']} st." for r in pts]
        xs = np.arange(len(pts))
        ax.plot(xs, [r["weight median"] for r in pts], "o-", label="weight R$^2$ median")
        if any(r.get("token median") is not None for r in pts):
            ax.plot(xs, [np.nan if r.get("token median") is None else r["token median"] for r in pts], "s-",
                    label="token log-prob R$^2$ median")
        ax.plot(xs, [r["acc end"] - r["acc start"] for r in pts], "^:", color="gray", label="held-out accuracy gain")
        ax.axhline(target, color="k", ls=":", lw=0.8)
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set_xlabel(factor + ("" if key == "steps" else " (baseline included)"))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("tuning sweep of the embedded RL run (one factor at a time, then combined settings)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_monitor(monitor: LinearityMonitor, path: str | Path, inputs: Sequence[Path] = ()) -> Path:
    """Three panels: running R^2, drift stability, and the backtest skill against alpha at the latest step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    hist = monitor.history
    steps = [r.step for r in hist]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(steps, [r.r2_median for r in hist], "o-", label="median R$^2$")
    ax1.plot(steps, [r.r2_frac_above for r in hist], "s--", label=f"frac R$^2$ > {monitor.cfg.threshold}")
    ax1.set(xlabel="step", ylim=(0, 1.02), title="running weight linearity (Sec. 4)")
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r.cos_prev for r in hist], "o-", label="cos(consecutive deltas)")
    ax2.plot(steps, [r.cos_total for r in hist], "s-", label="cos(delta, w_k - w_0)")
    ax2.plot(steps, [r.pace for r in hist], "^:", label="pace")
    ax2.axhline(0, color="gray", lw=0.5)
    ax2.set(xlabel="step", title="drift direction stability")
    ax2.legend(fontsize=8)
    if len(monitor.steps) >= 3:
        from rlvr_nb.motion import extrapolation_backtest

        bt = extrapolation_backtest(monitor.values, monitor.steps)
        if bt:
            ax3.plot([a for a, _ in bt], [s for _, s in bt], "o-")
        ax3.axhline(monitor.cfg.skill_min, color="gray", ls="--", lw=0.8)
        ax3.axvline(hist[-1].alpha, color="C3", lw=0.8, label=f"suggested alpha {hist[-1].alpha:.2f}")
        ax3.legend(fontsize=8)
    ax3.set(xlabel="alpha (from w_0 through an earlier checkpoint)", ylabel="skill at the latest checkpoint",
            title="extrapolation backtest (Sec. 6)")
    from rlvr_nb.checkpoint_writes import atomic_file

    with atomic_file(path, inputs, mode="wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return Path(path)
