"""04's study of the low-pass filter (PAPER.md Sec. 5): its figures and the SNR / K explorer.

The theory itself (closed forms, simulations, the injected noise) is `rlvr_nb.lowpass`; this module draws it:

- `theory_figure`: closed-form mean and median R^2 against simulated trajectories, over the per-step SNR;
- `failure_modes_figure`: drift + noise against the two ways to lose linearity (curved drift, no signal);
- `explorer_figure`, `snr_explorer`: one setting of the filter, and the sliders that redraw it;
- `plot_snr_sweep`: Figure 3 on our model, from the rows of `robustness.sweep_rows`;
- `plot_mechanism`: the scratchpad test of the mechanism and its controls (`rlvr_nb.experiments.mechanism`).

Simulated trajectories are scored with the package's one R^2, `rlvr_nb.linearity.r2_against_steps`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from rlvr_nb import paper
from rlvr_nb.experiments import robustness as rb
from rlvr_nb.linearity import r2_against_steps
from rlvr_nb.lowpass import (
    check_walk, db_to_snr, expected_r2, median_r2, r2_ratio_approx, simulate_curved_drift, simulate_trajectories,
    snr_to_db,
)


def theory_curves(n_checkpoints: int, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, median) of R^2 on a grid of per-checkpoint SNR rho; reused for every K (snr = rho / sqrt(K))."""
    return expected_r2(rho, n_checkpoints), median_r2(rho, n_checkpoints)


def theory_figure(
    n_checkpoints: int = 14,
    steps_between: Sequence[int] = (1, 10, 100),
    snr_db_range: tuple[float, float] = (-45.0, 10.0),
    sim_snr_db: Sequence[float] = (-40, -35, -30, -25, -20, -15, -10, -5, 0, 5, 10),
    n_params: int = 400,
    adam_steps_between: int | None = 100,
    other_n_checkpoints: Sequence[int] = (5, 21),
    seed: int = 0,
    n_points: int = 60,
) -> Figure:
    """Closed-form mean and median R^2 against simulated trajectories, over the per-step SNR (dB).

    (a) one curve pair per K at T = n_checkpoints, simulated means (o) and medians (s), and Adam
    simulations (^) at K = adam_steps_between; (b) the same against the drift-to-noise ratio
    lambda = SNR sqrt(K (T - 1)) for several T, with the ratio-of-expectations approximation (dotted).
    n_points: theory points per curve (the exact median costs ~0.1 s a point: fewer for a quick draw).
    """
    check_walk(n_checkpoints, min(steps_between))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.4))
    lo_db, hi_db = snr_db_range
    rho = np.logspace((lo_db - 1) / 20, (hi_db + 1) / 20 + math.log10(math.sqrt(max(steps_between))), n_points)
    mean, med = theory_curves(n_checkpoints, rho)
    steps_of = lambda K: np.arange(n_checkpoints) * K  # noqa: E731
    for i, K in enumerate(steps_between):
        color = f"C{i}"
        x = snr_to_db(rho / math.sqrt(K))
        keep = (x >= lo_db) & (x <= hi_db)
        ax.plot(x[keep], mean[keep], color=color, label=f"K = {K}: mean (theory)")
        ax.plot(x[keep], med[keep], color=color, ls="--", label=f"K = {K}: median (theory)")
        sims = [r2_against_steps(simulate_trajectories(db_to_snr(db), 1.0, n_checkpoints, K, n_params, seed=seed + j),
                                 steps_of(K))[0] for j, db in enumerate(sim_snr_db)]
        ax.plot(sim_snr_db, [s.mean() for s in sims], "o", color=color, ms=5)
        ax.plot(sim_snr_db, [np.median(s) for s in sims], "s", color=color, ms=4, mfc="none")
        if K == adam_steps_between:
            adam = [r2_against_steps(simulate_trajectories(db_to_snr(db), 1.0, n_checkpoints, K, n_params, adam=True,
                                                           seed=seed + j), steps_of(K))[0] for j, db in enumerate(sim_snr_db)]
            ax.plot(sim_snr_db, [np.median(s) for s in adam], "^", color=color, ms=6, mfc="none", label=f"K = {K}: Adam, median (sim.)")
    ax.plot([], [], "ko", ms=5, label="simulated mean")
    ax.plot([], [], "ks", ms=4, mfc="none", label="simulated median")
    ax.set(xlabel="per-step SNR = mu / sigma (dB)", ylabel="R$^2$ of w(t) vs step", ylim=(0.3, 1.01),
           title=f"(a) T = {n_checkpoints} checkpoints, K steps apart")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    lam = np.logspace(-2, 2, max(8, (2 * n_points) // 3))
    for i, T in enumerate(sorted({n_checkpoints, *other_n_checkpoints})):
        m_T, med_T = theory_curves(T, lam / math.sqrt(T - 1))
        bx.plot(lam, m_T, color=f"C{i}", label=f"T = {T}: mean")
        bx.plot(lam, med_T, color=f"C{i}", ls="--", label=f"T = {T}: median")
    bx.plot(lam, r2_ratio_approx(lam / math.sqrt(n_checkpoints - 1), n_checkpoints), "k:",
            label=f"T = {n_checkpoints}: 1 - E[SS_res]/E[SS_tot]")
    bx.set(xscale="log", xlabel="drift / accumulated noise  lambda = SNR sqrt(K (T-1))", ylim=(0.3, 1.01),
           title="(b) the curves collapse onto lambda")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def failure_modes_figure(
    n_checkpoints: int = 14,
    steps_between: int = 100,
    snr_db: float = -25.0,
    n_params: int = 1000,
    e_foldings: tuple[float, float] = (1.0, 10.0),
    seed: int = 0,
    n_show: int = 6,
) -> Figure:
    """Three columns: drift + noise (filtered, linear), curved drift with no noise, noise with no signal.

    Top: n_show example trajectories with their least-squares lines; bottom: the R^2 histogram of all
    n_params. The curved drift draws each parameter's rate so that the run lasts between e_foldings[0]
    and e_foldings[1] time constants (log-uniform), like directions of different curvature.
    """
    check_walk(n_checkpoints, steps_between)
    steps = np.arange(n_checkpoints) * steps_between
    n_steps = steps[-1]
    rng = np.random.default_rng(seed)
    rates = np.exp(rng.uniform(*np.log(e_foldings), size=n_params)) / n_steps
    cases = [
        (f"drift + noise, SNR {snr_db:g} dB", simulate_trajectories(db_to_snr(snr_db), 1.0, n_checkpoints, steps_between, n_params, seed=seed)),
        (f"curved drift, no noise ({e_foldings[0]:g}-{e_foldings[1]:g} e-foldings)",
         simulate_curved_drift(n_checkpoints, steps_between, n_params, rates, seed=seed)),
        ("noise, no signal (mu = 0)", simulate_trajectories(0.0, 1.0, n_checkpoints, steps_between, n_params, seed=seed)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    tc = steps - steps.mean()
    for col, (title, W) in enumerate(cases):
        r2 = r2_against_steps(W, steps)[0]  # [P]
        top, bottom = axes[0, col], axes[1, col]
        for p in range(n_show):
            w = W[:, p] / (np.abs(W[:, p]).max() + 1e-30)
            fit = w.mean() + tc * (tc @ (w - w.mean())) / (tc @ tc)
            top.plot(steps, w, "o-", color=f"C{p}", ms=3, lw=1)
            top.plot(steps, fit, color=f"C{p}", lw=0.8, ls=":")
        top.set(title=title, xlabel="step", ylabel="w(t) / max |w|")
        bottom.hist(r2, bins=40, range=(0, 1), color="C0", alpha=0.7)
        bottom.axvline(np.median(r2), color="k", ls="--", label=f"median {np.median(r2):.2f}")
        bottom.set(xlabel="R$^2$", ylabel="parameters")
        bottom.legend(fontsize=8)
    fig.suptitle(f"T = {n_checkpoints} checkpoints, K = {steps_between} steps apart", fontsize=10)
    fig.tight_layout()
    return fig


def explorer_figure(
    snr_db: float,
    steps_between: int,
    n_checkpoints: int = 14,
    n_params: int = 500,
    seed: int = 0,
    curve: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> Figure:
    """One setting of the filter: example trajectories, the R^2 histogram with the theory, the theory curve.

    curve: (rho, mean, median) from a previous call's grid, so a slider redraw does not recompute it.
    """
    check_walk(n_checkpoints, steps_between)
    if curve is None:
        curve = explorer_curve(n_checkpoints)
    rho, mean, med = curve
    steps = np.arange(n_checkpoints) * steps_between
    W = simulate_trajectories(db_to_snr(snr_db), 1.0, n_checkpoints, steps_between, n_params, seed=seed)
    r2 = r2_against_steps(W, steps)[0]
    th_mean = expected_r2(db_to_snr(snr_db), n_checkpoints, steps_between)
    th_med = median_r2(db_to_snr(snr_db), n_checkpoints, steps_between)
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    for p in range(5):
        ax.plot(steps, W[:, p], "o-", ms=3, lw=1)
    ax.set(xlabel="step", ylabel="w(t)", title=f"SNR {snr_db:g} dB, K = {steps_between}")
    bx.hist(r2, bins=40, range=(0, 1), color="C0", alpha=0.7, density=True)
    bx.axvline(th_mean, color="k", label=f"theory mean {th_mean:.3f} (sim. {r2.mean():.3f})")
    bx.axvline(th_med, color="k", ls="--", label=f"theory median {th_med:.3f} (sim. {np.median(r2):.3f})")
    bx.set(xlabel="R$^2$", ylabel="density", title=f"{n_params} simulated parameters")
    bx.legend(fontsize=7, loc="upper left")
    x = snr_to_db(rho / math.sqrt(steps_between))
    cx.plot(x, mean, label="mean")
    cx.plot(x, med, ls="--", label="median")
    cx.plot([snr_db], [th_med], "ko", clip_on=False)  # never cut at the ends of the slider's range
    cx.set(xlim=(SNR_RANGE_DB[0] - 2, SNR_RANGE_DB[1] + 2), ylim=(0.3, 1.03), xlabel="per-step SNR (dB)", ylabel="R$^2$",
           title=f"theory, T = {n_checkpoints}, K = {steps_between}")
    cx.grid(alpha=0.3)
    cx.legend(fontsize=8)
    fig.tight_layout()
    return fig


SNR_RANGE_DB = (-50.0, 20.0)
"""The explorer's per-step SNR slider range."""
EXPLORER_KS = (1, 3, 10, 30, 100, 300, 1000)
"""The K values of the explorer's slider (steps between checkpoints)."""


def explorer_curve(n_checkpoints: int, n_points: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rho, mean, median) of the theory on a grid of the drift-to-noise ratio rho that covers the slider's
    SNR range at every K (rho = SNR sqrt(K), SNR in dB = 20 log10 SNR), at least 60 points (about 40 in view
    at any K): computed once per explorer."""
    lo = SNR_RANGE_DB[0] / 20 - 0.1
    hi = SNR_RANGE_DB[1] / 20 + 0.5 * math.log10(max(EXPLORER_KS)) + 0.1
    rho = np.logspace(lo, hi, max(n_points, 60))
    return (rho, *theory_curves(n_checkpoints, rho))


def snr_explorer(
    interactive: bool,
    snr_db: float = -20.0,
    steps_between: int = 100,
    n_checkpoints: int = 14,
    n_params: int = 500,
    seed: int = 0,
    n_points: int = 45,
):
    """Sliders for the per-step SNR (dB) and K that redraw `explorer_figure`; or that figure, static.

    interactive=True returns an ipywidgets VBox (sliders with continuous_update=False, wired with
    `ipywidgets.interactive_output`); interactive=False (papermill) returns the matplotlib Figure at
    the given values and opens no kernel comm. n_points: points of the theory curve (computed once).
    """
    curve = explorer_curve(n_checkpoints, n_points)  # computed once: K only rescales the SNR axis
    if not interactive:
        return explorer_figure(snr_db, steps_between, n_checkpoints, n_params, seed, curve)

    import ipywidgets as widgets
    from IPython.display import display

    from rlvr_nb.notebook.widgets import with_front_end_note

    ks = sorted({*EXPLORER_KS, int(steps_between)})
    snr_slider = widgets.FloatSlider(value=snr_db, min=SNR_RANGE_DB[0], max=SNR_RANGE_DB[1], step=1.0,
                                     description="SNR (dB)", continuous_update=False,
                                     layout=widgets.Layout(width="560px"))  # ~7 px per 1 dB step
    k_slider = widgets.SelectionSlider(options=ks, value=int(steps_between), description="K (steps)",
                                       continuous_update=False)

    def draw(snr_db: float, steps_between: int) -> None:
        fig = explorer_figure(snr_db, steps_between, n_checkpoints, n_params, seed, curve)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(draw, {"snr_db": snr_slider, "steps_between": k_slider})
    return with_front_end_note(widgets.VBox([widgets.HBox([snr_slider, k_slider]), out]))


def plot_snr_sweep(rows: Sequence[dict], show_paper: bool = True) -> Figure:
    """Figure 3 on our model: weight R^2 (mean and median of active parameters) against the injected SNR,
    one panel per SFT learning rate, with plain SFT as dotted lines and the mean +/- std as a band.

    show_paper: mark the paper's peak median and SFT baseline median (`paper.SNR_PEAK_MEDIAN`,
    `paper.SNR_BASELINE_MEDIAN`) as grey lines.
    """
    cats = list(dict.fromkeys(r["category"] for r in rows))
    fig, axes = plt.subplots(1, len(cats), figsize=(6.2 * len(cats), 4.3), squeeze=False, sharey=True)
    for ax, cat in zip(axes[0], cats):
        sweep = [r for r in rows if r["category"] == cat and r["label"] != "plain SFT"]
        sweep.sort(key=lambda r: math.inf if r["zero_signal"] else -r["snr_db"])  # 10 dB ... -20 dB, zero signal
        x = np.arange(len(sweep))
        mean = np.array([r["mean"] for r in sweep], dtype=float)
        std = np.array([r["std"] for r in sweep], dtype=float)
        med = np.array([r["median"] for r in sweep], dtype=float)
        ax.fill_between(x, mean - std, mean + std, color="C0", alpha=0.12, label="mean +/- std")
        ax.plot(x, mean, "o-", color="C0", label="mean R$^2$ (active params)")
        ax.plot(x, med, "s-", color="C1", label="median R$^2$ (active params)")
        plain = next((r for r in rows if r["category"] == cat and r["label"] == "plain SFT"), None)
        if plain is not None:
            ax.axhline(plain["mean"], color="C0", ls=":", label=f"plain SFT mean {plain['mean']:.2f}")
            ax.axhline(plain["median"], color="C1", ls=":", label=f"plain SFT median {plain['median']:.2f}")
        if len(sweep):
            i = int(np.nanargmax(med))
            ax.annotate(f"peak median\n{sweep[i]['label']}, {med[i]:.3f}", (x[i], med[i]), xytext=(30, -45),
                        textcoords="offset points", ha="left", fontsize=8, arrowprops={"arrowstyle": "->"})
        if show_paper:
            ax.axhline(paper.SNR_PEAK_MEDIAN, color="0.5", ls="--", lw=0.8,
                       label=f"paper: peak median {paper.SNR_PEAK_MEDIAN}")
            ax.axhline(paper.SNR_BASELINE_MEDIAN, color="0.5", ls="-.", lw=0.8,
                       label=f"paper: SFT baseline median {paper.SNR_BASELINE_MEDIAN}")
        ax.set_xticks(x, [r["label"].replace(" dB", "") if not r["zero_signal"] else "zero\nsignal" for r in sweep])
        ax.set(xlabel="injected SNR (dB)", title=cat, ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0, 0].set_ylabel("weight R$^2$")
    fig.tight_layout()
    return fig


def plot_mechanism(rows: list[dict]):
    """Four panels against the scratchpad length k: (a) weight and (b) token median R^2 of RL and SFT, with the
    controls beside k = 0 (SGD: squares, new target: stars); (c) per-coordinate gradient SNR at the start (RMS solid,
    median dashed); (d) the constant-drift theory's median R^2 at the measured median SNR against the measured one."""
    from rlvr_nb.experiments.mechanism import lengths, pick

    ks = lengths(rows)
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.0))
    line = lambda method, key: [pick(rows, "scratchpad", method, k).get(key) for k in ks]  # noqa: E731
    nan = lambda v: [math.nan if x is None else x for x in v]  # noqa: E731
    for ax, what in zip(axes[:2], ("weight", "token")):
        for c, method in enumerate(("RL", "SFT")):
            ax.plot(ks, nan(line(method, f"{what} median")), "o-", color=f"C{c}", label=f"{method}, AdamW")
        shift = 0.06 * max(ks)  # the controls beside k = 0, not on top of it
        for study, marker, dx, label in (("sgd", "s", -shift, "SGD, matched movement"), ("new target", "*", shift, "new target")):
            for c, method in enumerate(("RL", "SFT")):
                r = next((r for r in rows if r["study"] == study and r["method"] == method), None)
                if r is not None and r.get(f"{what} median") is not None:
                    ax.plot([dx], [r[f"{what} median"]], marker, color=f"C{c}", ms=10 if marker == "*" else 7, mfc="none",
                            label=f"{method}, {label} (k = 0)")
        ax.set(xlabel="scratchpad length k (tokens)", ylabel=f"median {what} R$^2$", ylim=(0, 1), xticks=ks,
               title=f"({'ab'[what == 'token']}) {what} linearity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left" if what == "weight" else "upper right")
    for c, method in enumerate(("RL", "SFT")):
        axes[2].plot(ks, line(method, "snr rms"), "o-", color=f"C{c}", label=f"{method}: RMS over coordinates")
        axes[2].plot(ks, line(method, "snr median"), "o--", color=f"C{c}", mfc="none", label=f"{method}: median")
        axes[3].plot(line(method, "theory median"), nan(line(method, "weight median")), "o", color=f"C{c}", label=method)
        for k, x, y in zip(ks, line(method, "theory median"), nan(line(method, "weight median"))):
            axes[3].annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes[2].set(xlabel="scratchpad length k (tokens)", ylabel="gradient SNR per step", xticks=ks,
                title="(c) per-coordinate gradient SNR at the start")
    axes[2].set_ylim(bottom=0)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    axes[3].plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    axes[3].set(xlim=(0, 1), ylim=(0, 1), xlabel="theory median R$^2$ (constant drift, measured SNR)",
                ylabel="measured median weight R$^2$", title="(d) low-pass theory vs measurement")
    axes[3].grid(alpha=0.3)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


def describe_grid(rows: Sequence[dict], threshold: float = paper.R2_THRESHOLD) -> list[str]:
    """What 04 prints under the robustness table: how many runs have a median weight R^2 above `threshold`, their
    range beside the paper's, each run below it or without any analysed weight, and each run whose statistics
    cover less than half of the weights."""
    unique = {r["run"]: r for r in rows}
    analysed = [r for r in unique.values() if r["median"] is not None]
    above = [r for r in analysed if r["median"] > threshold]
    span = (f"range {min(r['median'] for r in analysed):.3f} to {max(r['median'] for r in analysed):.3f}"
            if analysed else "no run has analysed weights")
    lines = [f"{len(above)} of {len(unique)} runs have a median weight R^2 above {threshold} ({span}; paper: "
             "{:g} to {:g}).".format(*paper.ROBUSTNESS_WEIGHT_R2_RANGE)]
    for r in rows:
        if r["median"] is None:
            lines.append(f"  no analysed weights: {r['category']}: {r['label']} (no weight passed the R^2 filters, a "
                         f"range of at least 1e-4 and 4 distinct values over its {r['checkpoints']} checkpoints; "
                         f"relative weight change {r['rel_change']:.2e})")
        elif r["median"] <= threshold:
            lines.append(f"  below {threshold}: {r['category']}: {r['label']} (median {r['median']:.3f})")
    base = unique[rows[0]["run"]]["rel_change"] if rows else float("nan")
    for r in {x["run"]: x for x in rb.low_coverage(rows)}.values():
        if r["median"] is not None:
            lines.append(f"  {r['category']}: {r['label']}: its R^2 covers only {r['coverage']:.0%} of the weights (the "
                         f"rest moved by less than 1e-4 over the run and are left out), so its median speaks for that "
                         f"{r['coverage']:.0%} only; it moved the weights {r['rel_change']:.4f} (relative), against "
                         f"{base:.4f} for the baseline.")
    return lines
