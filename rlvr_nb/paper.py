"""The paper's numbers and the findings this package checks them with, in one place.

Every number of "Linear Dynamics in the RLVR Training of LLMs" that the package quotes is a named constant
here, with the section, figure or table of `PAPER.md` it comes from (numbers read off a figure say so).
Below them, the findings (a)-(g) that the notebooks test at tiny scale, each a predicate on plain numbers
with its thresholds named; the notebooks, the figures and the studies in `rlvr_nb.experiments` read them
from here and type no paper number of their own.

    (a) weight linearity       02   (e) weight extrapolation rises, peaks, falls   05
    (b) token linearity        03   (f) re-grounding speed-up                      06
    (c) noise-injected SFT     04   (g) logits extrapolation beats RL              05
    (d) second order negligible 04

This module imports nothing from the package: anything may read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# --------------------------------------------------------------------------------------------------
# Setting of the original experiments (PAPER.md "Setting")

RL_LR = 1e-6
"""AdamW learning rate of the original GRPO runs (Setting)."""
RL_RUN_LABEL = "R1-Distill-1.5B, lr 1e-6"
"""How tables name the original RL run: DeepSeek-R1-Distill-Qwen-1.5B at RL_LR (Setting)."""
MAX_RESPONSE_TOKENS = 16384
"""Longest response of the original RL runs: 16k tokens (Setting)."""
CHECKPOINT_STEPS = tuple(range(0, 1301, 100))
"""Checkpoints analysed: steps 0, 100, ..., 1300 (Setting)."""
N_CHECKPOINTS = len(CHECKPOINT_STEPS)
"""14 checkpoints (Setting)."""

# --------------------------------------------------------------------------------------------------
# Section 4: the observation (Figure 1; Figure 2 for the robustness grid)

SAMPLE_FRACTION = 0.001
"""Fraction of each tensor's entries sampled for weight R^2 (Sec. 4: 0.1%)."""
MIN_SAMPLES = 50
"""At least this many sampled entries per tensor (Sec. 4)."""
MIN_RANGE = 1e-4
"""An entry counts only if its range over the checkpoints exceeds this (Sec. 4)."""
MIN_DISTINCT = 4
"""... and it takes at least this many distinct values (Sec. 4; bf16 weights move in quanta)."""
R2_THRESHOLD = 0.7
"""The strong-linearity threshold: the fraction of weights with R^2 above it is reported (Sec. 4, Figure 2)."""
WEIGHT_FRAC_ABOVE = 0.70
"""Over 70% of weights have R^2 > 0.7 (Sec. 4, Figure 1a)."""
WEIGHT_R2_CENTRE = 0.9
"""Weight R^2 is concentrated near 0.9 (Sec. 4, Figure 1a)."""
TOKEN_MIN_CHANGE = 0.2
"""A probe token is kept when its log-prob changed by more than this between first and last checkpoint (Sec. 4)."""
PROBE_RESPONSES = 64
"""Probe responses sampled from the base model per AIME24 question (Sec. 4)."""

RL_WEIGHT_R2 = 0.85
"""Median weight R^2 of RL (Sec. 4, SFT contrast: "RL gives ~0.85 and ~0.83")."""
RL_TOKEN_R2 = 0.83
"""Median token log-prob R^2 of RL (Sec. 4, SFT contrast). The one token number of the paper: its histogram's
mass lies higher, see TOKEN_R2_RANGE."""
TOKEN_R2_RANGE = (0.85, 0.9)
"""Where the token log-prob R^2 histogram of RL is concentrated (Sec. 4, Figure 1b: "near 0.85-0.9")."""
SFT_WEIGHT_R2 = 0.43
"""Median weight R^2 of SFT (Sec. 4, SFT contrast)."""
SFT_TOKEN_R2 = 0.34
"""Median token log-prob R^2 of SFT (Sec. 4, SFT contrast)."""
MEDIAN_R2 = {("RL", "weight"): RL_WEIGHT_R2, ("RL", "token"): RL_TOKEN_R2,
             ("SFT", "weight"): SFT_WEIGHT_R2, ("SFT", "token"): SFT_TOKEN_R2}
"""The four medians above by (run kind, what is measured)."""
ROBUSTNESS_WEIGHT_R2_RANGE = (0.73, 0.87)
"""Median weight R^2 of every RL setting of the robustness grid lies in this range (Figure 2, read off)."""

# --------------------------------------------------------------------------------------------------
# Section 5: the mechanism (Figure 3: noise-injected SFT)

SNR_DBS = (10.0, 5.0, 0.0, -3.0, -5.0, -10.0, -15.0, -20.0)
"""Injected token-level SNRs of Figure 3, in dB (plus a zero-signal control)."""
SNR_PEAK_DB = -10.0
"""The SNR at which the weighted median R^2 peaks (Sec. 5, Figure 3)."""
SNR_PEAK_MEDIAN = 0.582
"""That peak median (Figure 3's annotation; Sec. 5 rounds it to 0.58)."""
SNR_BASELINE_MEDIAN = 0.43
"""Median R^2 of the plain-SFT baseline of Figure 3 (Sec. 5: "~0.43")."""

# --------------------------------------------------------------------------------------------------
# Section 6: using the linearity (Figure 5, Table 1, Figure 6, Table 2)

FIG5_T_SECONDS = (300, 600, 1400)
"""t_second of Figure 5's curves, all from t_base = 0 (Sec. 6)."""
FIG5_PEAK_TARGETS = {300: 900, 600: 1100, 1400: 1800}
"""Target step at which each Figure 5 curve peaks (1400 -> 1800 in Sec. 6; the others read off Figure 5)."""
FIG5_PEAK_AVG = 41.5
"""AIME24 avg@64 at the peak of the t_second = 1400 curve (Sec. 6, Figure 5)."""

TABLE1_STEPS = (200, 1400, 2000)
"""(t_base, t_second, t_target) of the logits extrapolation of Table 1 (Sec. 6)."""
TABLE1_ALPHA = 1.5
"""The alpha those steps give, as the paper states it (Sec. 6)."""
TABLE1_TEMPERATURE = 0.6
"""Sampling temperature of Table 1 (Sec. 6)."""
TABLE1_TOP_P = 0.95
"""Top-p of Table 1 (Sec. 6)."""
TABLE1_SAMPLES = 8
"""Samples per question of Table 1 (Sec. 6)."""
TABLE1_GAIN_PCT = {"AIME24": 6.3, "AIME25": 6.3, "MATH500": 1.1, "LCB": 10.6, "average": 4.2}
"""Logits extrapolation over standard RL at the same step, in percent (Sec. 6, Table 1)."""

REGROUNDING_SETTINGS = ((100, 100), (300, 300), (300, 600), (20, 100))
"""(m, n) of Figure 6: m real RL steps, then n extrapolated ones (Sec. 6)."""
SPEEDUP_TYPICAL = (1.3, 1.8)
"""Typical re-grounding speed-ups (Sec. 6, Figure 6)."""
SPEEDUP_MAX = 6.1
"""The largest speed-up (Sec. 6, Figure 6; the abstract's "6.1x")."""
SPEEDUP_MAX_SETTING = (20, 100)
"""The (m, n) that reaches it (Sec. 6)."""
SPEEDUP_TARGET = 0.38
"""The AIME24 accuracy it is measured to (Sec. 6)."""
TABLE2_GAIN_PCT = {200: 5.2, 400: 6.3, 800: 5.7, 1200: 2.3}
"""Re-grounding over standard RL at equal real steps, average over benchmarks, in percent (Sec. 6, Table 2)."""

# --------------------------------------------------------------------------------------------------
# The findings at tiny scale, and their predicates

FINDING_A = {"median": RL_WEIGHT_R2, "frac_above": WEIGHT_FRAC_ABOVE}
"""(a) RL weight R^2: median at least this, and more than this fraction of weights above R2_THRESHOLD."""
FINDING_B = {"median": 0.85}
"""(b) RL token log-prob R^2: median at least this (the low end of TOKEN_R2_RANGE, above RL_TOKEN_R2)."""
FINDING_C = {"moderate_db": (-5.0, -10.0, -15.0), "lowest_db": -20.0, "margin": 0.02}
"""(c) noise-injected SFT: the best moderate-negative SNR beats plain SFT by more than `margin`, and the lowest
SNR and the zero-signal control fall back below that peak by more than `margin` (Sec. 5, Figure 3)."""
FINDING_D = {"max_fraction": 0.05}
"""(d) the second-order part of the output change is "negligible": under this share of the total (Sec. 5, Figure 4)."""
FINDING_F = {"min_speedup": 2.0}
"""(f) re-grounding reaches the target at least this many times faster than standard RL at some (m, n)."""


def weight_finding_holds(median: float, frac_above: float) -> bool:
    """Finding (a) on one run's weight R^2 summary."""
    return median >= FINDING_A["median"] and frac_above > FINDING_A["frac_above"]


def token_finding_holds(median: float | None) -> bool:
    """Finding (b) on one run's token log-prob R^2 median (None: not measured)."""
    return median is not None and median >= FINDING_B["median"]


def snr_rises(plain: float, peak: float, margin: float = FINDING_C["margin"]) -> bool:
    """Finding (c), first half: the best moderate-SNR statistic exceeds plain SFT's by more than margin."""
    return peak > plain + margin


def snr_falls_back(peak: float, lowest: float, zero_signal: float, margin: float = FINDING_C["margin"]) -> bool:
    """Finding (c), second half: the lowest SNR and the zero-signal control both fall below the peak by more
    than margin."""
    return lowest < peak - margin and zero_signal < peak - margin


def second_order_negligible(max_fraction: float, threshold: float = FINDING_D["max_fraction"]) -> bool:
    """Finding (d): the largest second-order share of the output change over checkpoint pairs is under threshold."""
    return bool(max_fraction < threshold)


def extrapolation_finding_holds(curves_rise_peak_fall: Sequence[bool]) -> bool:
    """Finding (e): every weight-extrapolation curve from t_0 rises above its t_1 checkpoint, peaks and falls
    (each curve's reading: `experiments.extrapolation_results.ExtrapolationFinding.holds`)."""
    return all(curves_rise_peak_fall)


def speedup_finding_holds(speedup: float) -> bool:
    """Finding (f) on the best speed-up to the target (NaN, never reached: False)."""
    return not math.isnan(speedup) and speedup >= FINDING_F["min_speedup"]


def logits_finding(n_beats: int, n_rows: int) -> str:
    """Finding (g): "holds" when logits extrapolation beats the RL checkpoint at the same step in every row of
    Table 1, "does not hold" when in none, "holds in part" otherwise."""
    if n_beats == n_rows:
        return "holds"
    return "does not hold" if n_beats == 0 else "holds in part"
