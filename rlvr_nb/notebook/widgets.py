"""Notebook widgets: the explorers whose sliders redraw a figure (static at the parameter's value under
papermill, live ipywidgets in JupyterLab with `interactive = True`).

- `alpha_explorer` (05, PAPER.md Sec. 6): the log-prob shift of a few responses under logits
  extrapolation at any alpha (cached teacher-forced logits, `rlvr_nb.extrapolate.ResponseLogits`), beside
  the accuracy of weight-extrapolated models precomputed on a grid of alphas.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from rlvr_nb.extrapolate import ResponseLogits, target_step_for


def predicted_accuracy(alphas: Sequence[float], accuracies: Sequence[float], alpha: float) -> float:
    """Accuracy at alpha, linearly interpolated in a precomputed grid (NaN outside the grid)."""
    a, acc = np.asarray(alphas, float), np.asarray(accuracies, float)
    if a.shape != acc.shape or a.size == 0:
        raise ValueError("alphas and accuracies must be non-empty and of equal length")
    order = np.argsort(a)
    a, acc = a[order], acc[order]
    if alpha < a[0] or alpha > a[-1]:
        return float("nan")
    return float(np.interp(alpha, a, acc))


AccuracyGrid = Mapping[int, tuple[Sequence[float], Sequence[float]]]  # t_second -> (alphas, accuracies)


def plot_predicted_accuracy(ax, grid: AccuracyGrid, t_base: int, t_second: int, alpha: float,
                            rl_accuracy: Mapping[int, float] | None = None) -> None:
    """Accuracy of weight-extrapolated models against the target step, with the slider's alpha marked."""
    for t, (alphas, accs) in sorted(grid.items()):
        order = np.argsort(alphas)
        steps = [target_step_for(t_base, t, alphas[i]) for i in order]
        ax.plot(steps, [accs[i] for i in order], "o-" if t == t_second else "-", ms=3,
                alpha=1.0 if t == t_second else 0.3, label=f"extrapolated, t_second={t}")
    if rl_accuracy:
        steps = sorted(rl_accuracy)
        ax.plot(steps, [rl_accuracy[s] for s in steps], "k--", lw=1, label="actual RL")
    target = target_step_for(t_base, t_second, alpha)
    if t_second in grid:
        acc = predicted_accuracy(*grid[t_second], alpha)
        if not math.isnan(acc):
            ax.plot([target], [acc], "r*", ms=14, label=f"alpha={alpha:.2f}: {acc:.3f}")
    ax.axvline(target, color="r", lw=0.8, alpha=0.5)
    ax.set(xlabel="target step", ylabel="held-out accuracy (avg@k)", title=f"weight extrapolation from t_base={t_base}")
    ax.legend(fontsize=7, loc="best")


def plot_logprob_shift(ax, cache: ResponseLogits, t_second: int, alpha: float) -> None:
    """Per-token log p(alpha) - log p(base) of the example responses (bars), alpha = 1 as open markers."""
    shift, at_second = cache.logprob_shift(t_second, alpha), cache.logprob_shift(t_second, 1.0)
    x0, ticks, labels = 0, [], []
    for i, (s, s1, text) in enumerate(zip(shift, at_second, cache.token_text)):
        xs = np.arange(x0, x0 + len(s))
        ax.bar(xs, s.numpy(), color=f"C{i % 10}", alpha=0.8)
        ax.plot(xs, s1.numpy(), "o", mfc="none", mec="k", ms=4)
        ticks += xs.tolist()
        labels += [t.replace("<eos>", "eos") for t in text]
        ax.annotate(f"{cache.prompts[i]}{cache.responses[i]}", ((xs[0] + xs[-1]) / 2, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -10), textcoords="offset points", ha="center", fontsize=8, color=f"C{i % 10}")
        x0 += len(s) + 1
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(ticks, labels, fontsize=7, rotation=90 if len(ticks) > 40 else 0)
    target = target_step_for(cache.base_step, t_second, alpha)
    ax.set(ylabel="log p(alpha) - log p(base)",
           title=f"token log-prob shift, alpha={alpha:.2f} (step {target:g}); o = second (step {t_second})")


def draw_alpha_figure(cache: ResponseLogits, grid: AccuracyGrid, t_second: int, alpha: float,
                      rl_accuracy: Mapping[int, float] | None = None):
    """The slider's figure: predicted accuracy curve (left), per-token log-prob shift (right)."""
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_lp) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    plot_predicted_accuracy(ax_acc, grid, cache.base_step, t_second, alpha, rl_accuracy)
    plot_logprob_shift(ax_lp, cache, t_second, alpha)
    fig.tight_layout()
    return fig


def alpha_explorer(cache: ResponseLogits, grid: AccuracyGrid, *, interactive: bool, alpha: float = 1.5,
                   t_second: int | None = None, rl_accuracy: Mapping[int, float] | None = None,
                   alpha_max: float = 3.0, continuous_update: bool = False):
    """The alpha slider (and a t_second dropdown) redrawing `draw_alpha_figure` from cached logits.

    interactive=False (papermill, CI) returns the static figure at alpha, with no widget or kernel comms;
    interactive=True returns an ipywidgets box to display."""
    t_second = max(cache.second_logits) if t_second is None else t_second
    if t_second not in cache.second_logits:
        raise ValueError(f"no cached logits for t_second={t_second}; have {sorted(cache.second_logits)}")
    if not interactive:
        return draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy)

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    slider = widgets.FloatSlider(value=alpha, min=0.0, max=alpha_max, step=0.05, description="alpha",
                                 continuous_update=continuous_update, readout_format=".2f")
    dropdown = widgets.Dropdown(options=sorted(cache.second_logits), value=t_second, description="t_second")

    def redraw(alpha: float, t_second: int) -> None:
        fig = draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(redraw, {"alpha": slider, "t_second": dropdown})
    return widgets.VBox([widgets.HBox([slider, dropdown]), out])
