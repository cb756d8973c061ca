"""Extrapolation against RL (PAPER.md Sec. 6): the numbers behind Figure 5 and Table 1, and their plots.

- `rl_accuracy`: held-out avg@k of every RL checkpoint (the "actual RL" curve).
- `weight_extrapolation_curves` + `summarize_extrapolation`: Figure 5 and finding (e), where the
  weight-extrapolated model peaks and where it matches or beats actual RL at the same step.
- `logits_extrapolation_rows` + `logits_comparison` + `late_stage_decline`: Table 1 and finding (g), against RL
  at the target step (the paper's "same step") and at t_1 (as many real RL steps), in percent like the paper.
- `plot_distance`: how far the weights moved from a base checkpoint (`rlvr_nb.motion.distance`).

Every comparison is paired: two policies evaluated on the same held-out problems (with the same seed)
differ question by question, and the confidence interval of that mean difference says whether one
"beats", "matches" or is "below" the other (`rlvr_nb.evaluate.paired_difference`; in percent,
`rlvr_nb.evaluate.relative_difference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from rlvr_nb.evaluate import EvalConfig, EvalResult, PairedDifference, Policy, paired_difference, relative_difference
from rlvr_nb.extrapolate import (
    LogitsExtrapolationPolicy, evaluate_and_close, target_step_for, weight_extrapolation_accuracy,
)

Checkpoints = Mapping[int, Path]  # step -> checkpoint directory
AlphaCurve = Mapping[float, EvalResult]  # alpha -> evaluation of the extrapolated model


# ----------------------------------------------------------------------------------------------------
# Evaluating a run and its extrapolations


def _check_steps(checkpoints: Checkpoints, steps: Sequence[int], what: str) -> None:
    missing = [s for s in steps if s not in checkpoints]
    if missing:
        raise ValueError(f"{what}: no checkpoint at step(s) {missing}; the run has {sorted(checkpoints)}")


def rl_accuracy(checkpoints: Checkpoints, problems, cfg: EvalConfig, *, grader="exact", cache_dir=None,
                make_policy: Callable[[Path], Policy] | None = None, progress: bool = True) -> dict[int, EvalResult]:
    """avg@k of every checkpoint of a run: the actual RL curve, {step: result}."""
    return {s: evaluate_and_close(make_policy(d) if make_policy else d, problems, cfg, grader=grader, cache_dir=cache_dir)
            for s, d in tqdm(sorted(checkpoints.items()), desc=f"RL checkpoints (T={cfg.temperature:g})",
                             disable=not progress)}


def weight_extrapolation_curves(checkpoints: Checkpoints, t_base: int, t_seconds: Sequence[int], alphas: Sequence[float],
                                out_root: str | Path, problems, cfg: EvalConfig, *, grader="exact", cache_dir=None,
                                make_policy: Callable[[Path], Policy] | None = None,
                                progress: bool = True) -> dict[int, dict[float, EvalResult]]:
    """PAPER.md Figure 5: for each t_second, the weight-extrapolated model from t_base through t_second at
    each alpha (target step t_base + alpha (t_second - t_base)), evaluated. {t_second: {alpha: result}}."""
    _check_steps(checkpoints, [t_base, *t_seconds], "weight extrapolation")
    if any(t <= t_base for t in t_seconds):
        raise ValueError(f"every t_second must be after t_base={t_base}, got {list(t_seconds)}")
    return {t: weight_extrapolation_accuracy(checkpoints[t_base], checkpoints[t], alphas, out_root, problems, cfg,
                                             grader=grader, cache_dir=cache_dir, make_policy=make_policy,
                                             progress=progress)
            for t in t_seconds}


def accuracy_grid(curves: Mapping[int, AlphaCurve]) -> dict[int, tuple[list[float], list[float]]]:
    """{t_second: (alphas, avg@k)} for the alpha slider's predicted-accuracy curve."""
    return {t: (sorted(c), [c[a].avg_at_k for a in sorted(c)]) for t, c in curves.items()}


# ----------------------------------------------------------------------------------------------------
# Finding (e): Figure 5 read off


@dataclass
class ExtrapolationFinding:
    """Where one weight-extrapolation curve (fixed t_base, t_second, varying alpha) peaks, and how it
    compares with the t_second checkpoint and with actual RL at the same target step."""

    t_base: int
    t_second: int
    at_second: EvalResult
    """The t_second checkpoint itself (alpha = 1)."""
    peak_alpha: float
    peak_target: float
    peak: EvalResult
    gain_at_peak: PairedDifference
    """Peak minus the t_second checkpoint."""
    drop_after_peak: PairedDifference | None
    """The largest alpha minus the peak (None when the peak is the largest alpha)."""
    vs_rl: list[tuple[float, float, PairedDifference]]
    """(alpha, target step, extrapolated minus RL at that step) for each alpha > 1 whose target is an RL checkpoint."""

    @property
    def rises(self) -> bool:
        """Extrapolating beyond t_second raises accuracy above the t_second checkpoint (CI above 0)."""
        return self.peak_alpha > 1 and self.gain_at_peak.verdict == "beats"

    @property
    def falls(self) -> bool:
        """Pushed further than the peak, accuracy falls (CI below 0)."""
        return self.drop_after_peak is not None and self.drop_after_peak.verdict == "below"

    @property
    def holds(self) -> bool:
        """Finding (e) on this curve: rises above t_second, peaks, then falls."""
        return self.rises and self.falls

    @property
    def matches_or_beats_rl(self) -> list[tuple[float, float, PairedDifference]]:
        return [row for row in self.vs_rl if row[2].verdict in ("beats", "matches")]

    def sentence(self) -> str:
        """One line saying what this curve shows, built from the numbers."""
        s = (f"t_base={self.t_base}, t_second={self.t_second}: checkpoint {self.at_second.avg_at_k:.3f}; peak "
             f"{self.peak.avg_at_k:.3f} [{self.peak.ci_low:.3f}, {self.peak.ci_high:.3f}] at alpha={self.peak_alpha:g} "
             f"(target step {self.peak_target:g}), peak - checkpoint {self.gain_at_peak}")
        if self.drop_after_peak is not None:
            s += f"; largest alpha - peak {self.drop_after_peak}"
        ok = [f"{t:g} ({c.verdict}, {c})" for _, t, c in self.matches_or_beats_rl]
        below = [f"{t:g} ({c})" for _, t, c in self.vs_rl if c.verdict == "below"]
        s += f"; vs actual RL at the same step: matches or beats at {', '.join(ok) or 'no step'}"
        if below:
            s += f"; below at {', '.join(below)}"
        return s


def summarize_extrapolation(curve: AlphaCurve, t_base: int, t_second: int, rl: Mapping[int, EvalResult],
                            level: float = 0.95) -> ExtrapolationFinding:
    """Read finding (e) off one curve of Figure 5. The t_second checkpoint is `rl[t_second]` (or the
    curve's alpha = 1 point when RL lacks it); the peak is the largest avg@k over the curve's alphas,
    alpha = 1 included."""
    if not curve:
        raise ValueError("empty curve: evaluate at least one alpha")
    at_second = rl.get(t_second, curve.get(1.0))
    if at_second is None:
        raise ValueError(f"need the t_second={t_second} checkpoint's evaluation: in rl or as the curve's alpha = 1")
    points = {1.0: at_second, **curve}
    peak_alpha = max(sorted(points), key=lambda a: points[a].avg_at_k)
    last = max(points)
    vs_rl = []
    for a in sorted(points):
        target = target_step_for(t_base, t_second, a)
        if a > 1 and float(target).is_integer() and int(target) in rl:
            vs_rl.append((a, target, paired_difference(points[a], rl[int(target)], level)))
    return ExtrapolationFinding(
        t_base=t_base, t_second=t_second, at_second=at_second, peak_alpha=peak_alpha,
        peak_target=target_step_for(t_base, t_second, peak_alpha), peak=points[peak_alpha],
        gain_at_peak=paired_difference(points[peak_alpha], at_second, level),
        drop_after_peak=None if last == peak_alpha else paired_difference(points[last], points[peak_alpha], level),
        vs_rl=vs_rl)


# ----------------------------------------------------------------------------------------------------
# Finding (g): Table 1 and the late-stage decline


COMPARISONS = {"target": "RL at the target step", "second": "RL at t_1"}
"""Finding (g)'s two baselines. 'target': the RL checkpoint at the step the extrapolation aims at, the paper's
"standard RL at the same step" (its Table 1: base 200, second 1400, target 2000, against RL at 2000). 'second':
the t_1 checkpoint, which used as many real RL steps as the extrapolation (a weaker baseline)."""


@dataclass
class LogitsRow:
    """One row of Table 1: logits extrapolation against standard RL at the target step and at t_1."""

    temperature: float
    top_p: float
    t_base: int
    t_second: int
    alpha: float
    t_target: float
    extrapolated: EvalResult
    rl_same_step: EvalResult
    """The t_second checkpoint: as many real RL steps as the extrapolation used."""
    vs_same_step: PairedDifference
    rl_target: EvalResult | None
    """The RL checkpoint at the target step; None when the target is beyond the run (or between checkpoints)."""
    vs_target: PairedDifference | None

    def relative(self, against: str) -> PairedDifference | None:
        """Extrapolated over RL in percent with its paired interval: against 'target' (the paper's comparison)
        or 'second' (t_1); None when the run has no checkpoint at the target or RL scores 0 there."""
        if against not in COMPARISONS:
            raise ValueError(f"against must be one of {sorted(COMPARISONS)}, got {against!r}")
        base = self.rl_target if against == "target" else self.rl_same_step
        return None if base is None or base.avg_at_k <= 0 else relative_difference([(self.extrapolated, base)])

    def as_dict(self, last_step: int) -> dict:
        """A row for `rlvr_nb.notebook.report.markdown_table`."""
        fmt = lambda r: f"{r.avg_at_k:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"  # noqa: E731
        beyond = f"beyond the run (last step {last_step})" if self.t_target > last_step else "not a checkpoint"
        return {
            "T / top-p": f"{self.temperature:g} / {self.top_p:g}",
            "base → second (alpha)": f"{self.t_base} → {self.t_second} ({self.alpha:g})",
            "target step": f"{self.t_target:g}",
            f"logits extra avg@{self.extrapolated.k}": fmt(self.extrapolated),
            "RL at target (the paper's comparison)": fmt(self.rl_target) if self.rl_target else beyond,
            "extra vs RL at target": f"{self.relative('target') or 'n/a'} ({self.vs_target})" if self.vs_target else "–",
            "RL at t_1 (same real steps)": fmt(self.rl_same_step),
            "extra vs RL at t_1": f"{self.relative('second') or 'n/a'} ({self.vs_same_step})",
        }


def logits_comparison(rows: Sequence[LogitsRow], temperature: float, against: str,
                      level: float = 0.95) -> tuple[PairedDifference | None, int, int]:
    """Finding (g) at one temperature against 'target' or 'second' (`COMPARISONS`): the mean relative difference
    over the rows that have that RL checkpoint (and where RL scores above 0), in percent with its paired interval
    over the questions (`rlvr_nb.evaluate.relative_difference`); how many of them beat RL (paired interval above
    0); and how many were compared. (None, 0, 0) when no row has it."""
    if against not in COMPARISONS:
        raise ValueError(f"against must be one of {sorted(COMPARISONS)}, got {against!r}")
    pairs, n_beats = [], 0
    for r in rows:
        base, diff = (r.rl_target, r.vs_target) if against == "target" else (r.rl_same_step, r.vs_same_step)
        if r.temperature == temperature and base is not None and base.avg_at_k > 0:
            pairs.append((r.extrapolated, base))
            n_beats += diff.verdict == "beats"
    return (relative_difference(pairs, level) if pairs else None), n_beats, len(pairs)


def logits_extrapolation_rows(checkpoints: Checkpoints, pairs: Sequence[tuple[int, int]], alpha: float,
                              sampling: Sequence[tuple[float, float]], problems, cfg: EvalConfig,
                              rl: Mapping[float, Mapping[int, EvalResult]], *, grader="exact", cache_dir=None,
                              make_policy: Callable[[Path, Path, float], Policy] | None = None,
                              progress: bool = True) -> list[LogitsRow]:
    """PAPER.md Table 1: for each (t_base, t_second) pair and each (temperature, top_p), sample from
    l_base + alpha (l_second - l_base) and compare with the RL checkpoints in `rl[temperature]`
    ({step: result} evaluated with the same cfg at that temperature).

    make_policy(base_dir, second_dir, alpha) builds the sampler (default `LogitsExtrapolationPolicy`)."""
    _check_steps(checkpoints, [s for p in pairs for s in p], "logits extrapolation")
    if alpha <= 0 or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    make = make_policy or (lambda b, s, a: LogitsExtrapolationPolicy(b, s, a))
    rows = []
    todo = [(t, p, b, s) for t, p in sampling for b, s in pairs]
    for temperature, top_p, t_base, t_second in tqdm(todo, desc="logits extrapolation", disable=not progress):
        if temperature not in rl:
            raise ValueError(f"no RL evaluation at temperature {temperature}; have {sorted(rl)}")
        c = EvalConfig(k=cfg.k, temperature=temperature, top_p=top_p, max_new_tokens=cfg.max_new_tokens,
                       seed=cfg.seed, batch_size=cfg.batch_size)
        extra = evaluate_and_close(make(checkpoints[t_base], checkpoints[t_second], alpha), problems, c,
                                   grader=grader, cache_dir=cache_dir)
        target = target_step_for(t_base, t_second, alpha)
        same = rl[temperature][t_second]
        at_target = rl[temperature].get(int(target)) if float(target).is_integer() else None
        rows.append(LogitsRow(temperature, top_p, t_base, t_second, alpha, target, extra, same, paired_difference(extra, same),
                              at_target, paired_difference(extra, at_target) if at_target else None))
    return rows


@dataclass
class LateStage:
    """Does the RL curve decline late? The last checkpoint against the best one."""

    best_step: int
    best: EvalResult
    last_step: int
    last: EvalResult
    last_vs_best: PairedDifference

    @property
    def declines(self) -> bool:
        return self.last_vs_best.verdict == "below"

    def sentence(self) -> str:
        if self.best_step == self.last_step:
            return (f"no late-stage decline: the best RL checkpoint is the last one (step {self.last_step}, "
                    f"{self.last.avg_at_k:.3f} [{self.last.ci_low:.3f}, {self.last.ci_high:.3f}])")
        what = "a late-stage decline" if self.declines else "no significant late-stage decline"
        return (f"{what}: best RL checkpoint step {self.best_step} ({self.best.avg_at_k:.3f}), last step "
                f"{self.last_step} ({self.last.avg_at_k:.3f}), last - best {self.last_vs_best}")


def late_stage_decline(rl: Mapping[int, EvalResult], level: float = 0.95) -> LateStage:
    """The best and the last checkpoint of an RL curve {step: result}, and their paired difference."""
    if not rl:
        raise ValueError("no RL checkpoints evaluated")
    best = max(sorted(rl), key=lambda s: rl[s].avg_at_k)
    last = max(rl)
    return LateStage(best, rl[best], last, rl[last], paired_difference(rl[last], rl[best], level))


# ----------------------------------------------------------------------------------------------------
# Plots


def plot_extrapolation_curves(ax, curves: Mapping[int, AlphaCurve], t_base: int, rl: Mapping[int, EvalResult],
                              title: str | None = None, k: int | None = None) -> None:
    """PAPER.md Figure 5: avg@k of weight-extrapolated models against the target step, one curve per
    t_second (error bars: 95% CI over questions, filled marker: the curve's peak), and actual RL (band: CI)."""
    steps = sorted(rl)
    ax.plot(steps, [rl[s].avg_at_k for s in steps], "k-", lw=1.5, label="actual RL checkpoints")
    ax.fill_between(steps, [rl[s].ci_low for s in steps], [rl[s].ci_high for s in steps], color="k", alpha=0.12, lw=0)
    for i, (t, curve) in enumerate(sorted(curves.items())):
        alphas = sorted({1.0, *curve})
        res = [curve.get(a, rl.get(t)) for a in alphas]
        xs = [target_step_for(t_base, t, a) for a in alphas]
        ys = np.array([r.avg_at_k for r in res])
        err = np.array([[r.avg_at_k - r.ci_low for r in res], [r.ci_high - r.avg_at_k for r in res]])
        c = f"C{i}"
        ax.errorbar(xs, ys, yerr=err, color=c, marker="o", mfc="white", ms=5, capsize=2, lw=1.3,
                    label=f"extrapolated, $t_1$={t} (alpha {alphas[0]:g}–{alphas[-1]:g})")
        j = int(np.argmax(ys))
        ax.plot([xs[j]], [ys[j]], marker="o", color=c, ms=9, mec="k", ls="none")
    ax.axvline(max(steps), color="grey", ls=":", lw=1)
    ax.text(max(steps), ax.get_ylim()[0], " end of the RL run", color="grey", fontsize=7, va="bottom")
    ax.set(xlabel="target step $t'$", ylabel=f"held-out avg@{k}" if k else "held-out avg@k",
           title=title or f"weight extrapolation from $t_0$={t_base}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_distance(ax, distances: Mapping[int, float], base_step: int) -> None:
    """||W_t - W_base|| against t, with the straight line through the first and last points for reference."""
    steps = sorted(distances)
    ys = [distances[s] for s in steps]
    ax.plot(steps, ys, "o-", ms=3, label=r"$\|W_t - W_{%d}\|_2$" % base_step)
    ax.plot([steps[0], steps[-1]], [ys[0], ys[-1]], "k:", lw=1, label="straight line (constant speed)")
    ax.set(xlabel="RL step t", ylabel="L2 distance", title=f"distance travelled from step {base_step}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
