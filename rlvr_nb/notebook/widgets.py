"""Notebook widgets: the explorers whose sliders redraw a figure (static at the parameter's value under
papermill, live ipywidgets in JupyterLab with `interactive = True`).

- `alpha_explorer` (05, PAPER.md Sec. 6): the log-prob shift of a few responses under logits
  extrapolation at any alpha (cached teacher-forced logits, `rlvr_nb.extrapolate.ResponseLogits`), beside
  the accuracy of weight-extrapolated models precomputed on a grid of alphas. Its axes are fixed over the
  whole slider range (`alpha_axes`), so panels compare across alphas and nothing is clipped at the ends.
- `with_front_end_note`: what every explorer returns in interactive mode, so that a front end without the
  Jupyter widget extension shows `FRONT_END_NOTE` (what is missing, and how to get it) instead of a repr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from rlvr_nb.extrapolate import ResponseLogits, target_step_for
from rlvr_nb.models import EOS

FRONT_END_NOTE = (
    "This explorer's sliders need the Jupyter widget front end, which this JupyterLab (or viewer) lacks: a figure "
    "above is the one drawn at the start, and it does not move. In this repository run `make lab`; in your own "
    "JupyterLab install `jupyterlab_widgets` into the environment JupyterLab itself runs from (not only the "
    "kernel's), then reload the page."
)


def with_front_end_note(widget):
    """`widget`, whose plain-text form (what a front end without the widget extension shows in place of the
    sliders, and what a saved notebook keeps) is FRONT_END_NOTE rather than the widget's repr."""
    rich = widget._repr_mimebundle_

    def bundle(**kwargs):
        data = rich(**kwargs)
        return {**data, "text/plain": FRONT_END_NOTE} if data else data

    widget._repr_mimebundle_ = bundle  # IPython looks the method up on the instance first
    return widget


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


@dataclass(frozen=True)
class AlphaAxes:
    """Axis limits of the alpha figure that hold for every slider value and every t_second."""

    accuracy_x: tuple[float, float]
    """Target steps of the left panel."""
    accuracy_y: tuple[float, float]
    """Accuracy of the left panel."""
    shift_y: tuple[float, float]
    """Log-prob shift of the right panel."""


def padded(lo: float, hi: float, frac: float, min_span: float) -> tuple[float, float]:
    """(lo, hi) widened by frac of the span on each side (the span at least min_span), so end markers show."""
    pad = frac * max(hi - lo, min_span)
    return lo - pad, hi + pad


def alpha_axes(cache: ResponseLogits, grid: AccuracyGrid, alpha_max: float,
               rl_accuracy: Mapping[int, float] | None = None, n_alphas: int = 13) -> AlphaAxes:
    """The limits of `draw_alpha_figure` for alpha in [0, alpha_max] and every cached t_second.

    The log-prob of a token under mixed logits is concave in alpha (a linear term minus a log-sum-exp of
    an affine function), so its lowest shift lies at alpha = 0 or alpha_max, both sampled here; the highest
    may lie inside and is read off n_alphas evenly spaced alphas (plus alpha = 1), with a margin."""
    t_base = cache.base_step
    steps = [target_step_for(t_base, t, a) for t, (alphas, _) in grid.items() for a in (0.0, alpha_max, *alphas)]
    steps += [target_step_for(t_base, t, a) for t in cache.second_logits for a in (0.0, alpha_max)]
    accs = [float(a) for _, values in grid.values() for a in values]
    if rl_accuracy:
        steps += list(rl_accuracy)
        accs += list(rl_accuracy.values())
    accs = [a for a in accs if not math.isnan(a)] or [0.0, 1.0]
    lo = hi = 0.0
    for t in cache.second_logits:
        for a in sorted({*np.linspace(0.0, alpha_max, n_alphas).tolist(), 1.0}):
            for s in cache.logprob_shift(t, a):
                lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    shift_lo, shift_hi = padded(lo, hi, 0.06, 0.1)
    return AlphaAxes(accuracy_x=padded(min(steps), max(steps), 0.04, 1.0),
                     accuracy_y=padded(min(accs), max(accs), 0.1, 0.05),
                     shift_y=(shift_lo, shift_hi + 0.12 * (shift_hi - shift_lo)))  # headroom for the labels


def plot_predicted_accuracy(ax, grid: AccuracyGrid, t_base: int, t_second: int, alpha: float,
                            rl_accuracy: Mapping[int, float] | None = None) -> None:
    """Accuracy of weight-extrapolated models against the target step, with the slider's alpha marked.

    The legend has the same entries at every alpha (the marker's says when alpha is outside the grid) and
    sits below the axes, so it neither moves nor covers the curves as the slider moves."""
    for t, (alphas, accs) in sorted(grid.items()):
        order = np.argsort(alphas)
        steps = [target_step_for(t_base, t, alphas[i]) for i in order]
        ax.plot(steps, [accs[i] for i in order], "o-" if t == t_second else "-", ms=3,
                alpha=1.0 if t == t_second else 0.3, label=f"extrapolated, t_second={t}")
    if rl_accuracy:
        steps = sorted(rl_accuracy)
        ax.plot(steps, [rl_accuracy[s] for s in steps], "k--", lw=1, label="actual RL")
    target = target_step_for(t_base, t_second, alpha)
    acc = predicted_accuracy(*grid[t_second], alpha) if t_second in grid else float("nan")
    if math.isnan(acc):
        ax.plot([], [], "r*", ms=10, label=f"alpha={alpha:.2f}: outside the evaluated alphas")
    else:
        ax.plot([target], [acc], "r*", ms=14, clip_on=False, label=f"alpha={alpha:.2f}: {acc:.3f}")
    ax.axvline(target, color="r", lw=0.8, alpha=0.5)
    ax.set(xlabel="target step", ylabel="held-out accuracy (avg@k)", title=f"weight extrapolation from t_base={t_base}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=2, frameon=False)


def plot_logprob_shift(ax, cache: ResponseLogits, t_second: int, alpha: float) -> None:
    """Per-token log p(alpha) - log p(base) of the example responses (bars), alpha = 1 as open markers."""
    shift, at_second = cache.logprob_shift(t_second, alpha), cache.logprob_shift(t_second, 1.0)
    x0, ticks, labels = 0, [], []
    for i, (s, s1, text) in enumerate(zip(shift, at_second, cache.token_text)):
        xs = np.arange(x0, x0 + len(s))
        ax.bar(xs, s.numpy(), color=f"C{i % 10}", alpha=0.8)
        ax.plot(xs, s1.numpy(), "o", mfc="none", mec="k", ms=4)
        ticks += xs.tolist()
        labels += [t.replace(EOS, "eos") for t in text]
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
    """The slider's figure: predicted accuracy curve (left), per-token log-prob shift (right), autoscaled
    (`hold_alpha_axes` then fixes the limits over the slider's range)."""
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_lp) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.4]})
    plot_predicted_accuracy(ax_acc, grid, cache.base_step, t_second, alpha, rl_accuracy)
    plot_logprob_shift(ax_lp, cache, t_second, alpha)
    fig.tight_layout()
    return fig


def hold_alpha_axes(fig, limits: AlphaAxes):
    """Set the limits of a `draw_alpha_figure` figure to `limits` and its panels to one fixed place (not a
    layout fitted to each alpha's labels), so that nothing in it moves as the slider moves."""
    ax_acc, ax_lp = fig.axes[:2]
    ax_acc.set(xlim=limits.accuracy_x, ylim=limits.accuracy_y)
    ax_lp.set_ylim(limits.shift_y)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.26, top=0.92, wspace=0.16)
    return fig


def alpha_explorer(cache: ResponseLogits, grid: AccuracyGrid, *, interactive: bool, alpha: float = 1.5,
                   t_second: int | None = None, rl_accuracy: Mapping[int, float] | None = None,
                   alpha_max: float = 3.0, continuous_update: bool = False):
    """The alpha slider (and a t_second dropdown) redrawing `draw_alpha_figure` from cached logits.

    Axes hold still over alpha in [0, alpha_max] and every t_second (`alpha_axes`). interactive=False
    (papermill, CI) returns the static figure at alpha, with no widget or kernel comms; interactive=True
    returns an ipywidgets box to display (slider and dropdown, then the figure), which shows
    FRONT_END_NOTE where no widget front end is installed. The slider's track is wide enough to set alpha
    to its 0.05 step by dragging; the arrow keys move it one step."""
    t_second = max(cache.second_logits) if t_second is None else t_second
    if t_second not in cache.second_logits:
        raise ValueError(f"no cached logits for t_second={t_second}; have {sorted(cache.second_logits)}")
    limits = alpha_axes(cache, grid, max(alpha_max, alpha), rl_accuracy)
    if not interactive:
        return hold_alpha_axes(draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy), limits)

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    slider = widgets.FloatSlider(value=alpha, min=0.0, max=alpha_max, step=0.05, description="alpha",
                                 continuous_update=continuous_update, readout_format=".2f",
                                 layout=widgets.Layout(width="640px"))
    dropdown = widgets.Dropdown(options=sorted(cache.second_logits), value=t_second, description="t_second",
                                layout=widgets.Layout(width="220px"))

    def redraw(alpha: float, t_second: int) -> None:
        fig = hold_alpha_axes(draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy), limits)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(redraw, {"alpha": slider, "t_second": dropdown})
    controls = widgets.HBox([slider, dropdown], layout=widgets.Layout(flex_flow="row wrap"))
    return with_front_end_note(widgets.VBox([controls, out]))
