"""Sec. 5 on the embedded model: how the weight R^2 of a trajectory responds to injected noise and to the
training recipe.

Two sweeps, each a list of `Setting`s (one trajectory each), turned into table rows by `sweep_rows`:

- `snr_settings`: SFT with token-level random-sign noise at a list of SNRs, the zero-signal control and
  plain SFT (PAPER.md Sec. 5, Figure 3; the noise itself is `lowpass.token_noise_weights`).
- `robustness_settings`: the RL run with one factor changed at a time from a baseline: optimizer
  (AdamW / SGD), learning rate, rollouts per prompt, advantage estimator (PAPER.md Sec. 3, Figure 2).

Every trajectory is trained through the cached `embedded.ensure_trajectory` (by config hash under
`runs/`), so a sweep re-run only reads checkpoints. A row holds the weight R^2 of the *active*
parameters (those kept by the engine's filters: range over the checkpoints > 1e-4, at least four
distinct values; `rlvr_nb.linearity`): the median and the mean over all active scalars (each tensor
weighted by its number of active entries: the paper's "weighted" mean and median), quartiles and standard
deviation (read from the engine's 10,000-bin histogram), the fraction above 0.7, how far the weights moved
and the held-out accuracy at the first and last analysed checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from rlvr_nb import paper
from rlvr_nb.checkpoints import read_metrics, to_jsonable
from rlvr_nb.embedded import EmbeddedConfig, ensure_trajectory
from rlvr_nb.grpo import RLConfig
from rlvr_nb.linearity import LinearityConfig, weight_linearity
from rlvr_nb.motion import relative_change, segment_cosine
from rlvr_nb.notebook.report import load_json_table, save_json_table
from rlvr_nb.sft import SFTConfig
from rlvr_nb.tasks import AdditionTask
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.trajectory import load_trajectory


@dataclass(frozen=True)
class Setting:
    """One trajectory of a sweep and where it appears in the table."""

    category: str
    """Group in the table and figure: the SFT learning rate, or the factor varied ("optimizer", ...)."""
    label: str
    """Row label within the group, e.g. "-10 dB" or "SGD, lr 0.05"."""
    config: RLConfig | SFTConfig
    """The run's config; the run directory is `embedded.ensure_trajectory(config)`."""
    max_step: int | None = None
    """Analyse only checkpoints up to this step (None: all). Lets a row read the first steps of a longer run."""


# --------------------------------------------------------------------------------------------------
# Statistics of one run


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """q-quantile of values binned in equal bins on [0, 1], linear inside its bin (within one bin width)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    cum = np.cumsum(hist, dtype=np.float64)
    if cum[-1] <= 0:
        return math.nan
    target = q * cum[-1]
    b = min(int(np.searchsorted(cum, target)), len(hist) - 1)
    before = cum[b - 1] if b > 0 else 0.0
    inside = (target - before) / hist[b] if hist[b] > 0 else 0.0
    return float((b + inside) / len(hist))


def hist_std(hist: np.ndarray) -> float:
    """Standard deviation of values binned in equal bins on [0, 1] (bin centres; error < one bin width)."""
    n = float(np.sum(hist))
    if n <= 0:
        return math.nan
    centres = (np.arange(len(hist)) + 0.5) / len(hist)
    mean = float(hist @ centres) / n
    return float(math.sqrt(max(float(hist @ (centres - mean) ** 2) / n, 0.0)))


def accuracy_at(run_dir: str | Path, step: int) -> dict[str, float | None]:
    """Held-out greedy and sampled accuracy recorded at a checkpoint step (None when not recorded)."""
    rec = next((r for r in read_metrics(run_dir) if r.get("step") == step and "heldout_greedy" in r), {})
    return {"greedy": rec.get("heldout_greedy"), "sampled": rec.get("heldout_sampled")}


def weight_r2_row(run_dir: str | Path, max_step: int | None = None, cfg: LinearityConfig = LinearityConfig(drift=False),
                  progress: bool = False) -> dict:
    """Weight R^2 of the active parameters of one run (PAPER.md Sec. 4, weight linearity), as one table row.

    Keys: median, mean (over all active scalars), std, q25, q75 (from the histogram), frac_above (> 0.7),
    active and total (scalars kept / considered), checkpoints, last_step, rel_change (relative weight change
    from the first to the last analysed checkpoint, `motion.relative_change`), drift_cos (`motion.segment_cosine`
    of the first, middle and last checkpoint: about 1 for a constant drift, about 0 for a random walk, negative
    when the second half undoes the first), acc_start, acc_end (held-out greedy accuracy).
    """
    pairs = find_checkpoints(run_dir)
    if max_step is not None:
        pairs = [(s, d) for s, d in pairs if s <= max_step]
        if not pairs or pairs[-1][0] != max_step:
            last = find_checkpoints(run_dir)[-1][0]
            raise ValueError(f"{run_dir} has no checkpoint at step {max_step} (last: {last})")
    res = weight_linearity(load_trajectory(pairs, progress=progress), cfg, progress=progress)
    s = res.overall
    row = s.row()
    return {
        "median": row["median"], "mean": row["mean"],
        "std": round(hist_std(s.hist), 4), "q25": round(hist_quantile(s.hist, 0.25), 4),
        "q75": round(hist_quantile(s.hist, 0.75), 4), "frac_above": row["frac_above"],
        "active": row["count"], "total": row["total"], "checkpoints": len(pairs), "last_step": pairs[-1][0],
        "rel_change": round(relative_change(pairs[0][1], pairs[-1][1]), 4),
        "drift_cos": round(segment_cosine(pairs[0][1], pairs[len(pairs) // 2][1], pairs[-1][1]), 4),
        "acc_start": accuracy_at(run_dir, pairs[0][0])["greedy"],
        "acc_end": accuracy_at(run_dir, pairs[-1][0])["greedy"],
    }


def batch_gradient_moments(model, batch_losses: Callable[[torch.Generator], Sequence[torch.Tensor]], n_batches: int,
                           seed: int = 0) -> list[dict]:
    """Per-parameter moments, over n_batches batches, of the gradient of each loss that `batch_losses(gen)`
    returns for one batch (all built on one graph, drawn from `gen`, seeded with `seed`).

    Returns one {"mean": mean_b g_b [P], "var": sample variance of g_b [P], "meansq": mean_b g_b^2 [P],
    "n": n_batches} per loss, float64; the model is in train mode meanwhile and left in the mode it came in.
    """
    if n_batches < 2:
        raise ValueError(f"need n_batches >= 2, got {n_batches}")
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    sums = None
    was_training = model.training
    model.train()
    for _ in range(n_batches):
        losses = list(batch_losses(gen))
        grads = []
        for i, loss in enumerate(losses):
            g = torch.autograd.grad(loss, params, retain_graph=i < len(losses) - 1, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if x is None else x).reshape(-1)
                                    for x, p in zip(g, params)]).double())  # [P]
        batch = torch.stack([x for G in grads for x in (G, G * G)])  # [2 * losses, P]
        sums = batch if sums is None else sums + batch
    model.train(was_training)
    out = []
    for i in range(len(sums) // 2):
        mean, meansq = sums[2 * i] / n_batches, sums[2 * i + 1] / n_batches
        var = (meansq - mean**2).clamp(min=0) * (n_batches / (n_batches - 1))
        out.append({"mean": mean.numpy(), "var": var.numpy(), "meansq": meansq.numpy(), "n": n_batches})
    return out


def gradient_moments(model, tokenizer, task: AdditionTask, batch_size: int, n_batches: int, seed: int = 0) -> dict:
    """Per-parameter moments of the SFT gradient at a fixed model, enough to give its SNR under every
    injected-noise setting at once (`injected_snr`).

    For each of n_batches batches (drawn as `sft.train_sft` draws them): the plain gradient G_b of the masked
    mean token NLL, and the gradient N_b of the same batch's loss with independent random-sign token weights
    (the zero-signal loss). Returns {"mean": mean_b G_b [P], "var": sample variance of G_b [P],
    "noise_var": mean_b N_b^2 [P] (N_b has mean zero), "n": n_batches}, float64.
    """
    from rlvr_nb.sft import sequence_batch, token_nll

    if n_batches < 2 or batch_size < 1:
        raise ValueError(f"need n_batches >= 2 and batch_size >= 1, got {n_batches} and {batch_size}")

    def losses(gen: torch.Generator) -> list[torch.Tensor]:
        ids, target_mask, L = sequence_batch(tokenizer, task.sample_train(batch_size, gen))
        nll = token_nll(model, ids, L) * target_mask  # [B, N]
        signs = torch.randint(0, 2, nll.shape, generator=gen).to(nll.dtype) * 2 - 1  # [B, N], +-1
        return [(weights * nll).sum() / target_mask.sum() for weights in (torch.ones_like(nll), signs)]

    plain, noise = batch_gradient_moments(model, losses, n_batches, seed)  # the plain loss, the zero-signal loss
    return {"mean": plain["mean"], "var": plain["var"], "noise_var": noise["meansq"], "n": n_batches}


def gradient_snr(moments: dict, scale: float = 1.0, extra_var: np.ndarray | float = 0.0) -> np.ndarray:
    """Per-parameter, per-step SNR of a stochastic gradient from its moments over n batches
    (`batch_gradient_moments`): SNR_p = scale |E G_p| / sqrt(scale^2 Var G_p + extra_var_p), [P].

    |E G_p|^2 is estimated without bias as mean_p^2 - var_p / n, clipped at 0 (a parameter whose drift is
    below what n batches resolve, about SNR 1 / sqrt(n), reads 0). NaN for a parameter whose gradient was zero
    in every batch (e.g. the embedding of a token that never occurs). `scale`, `extra_var`: see `injected_snr`.
    """
    signal2 = np.clip(moments["mean"] ** 2 - moments["var"] / moments["n"], 0.0, None)  # [P]
    noise2 = scale * scale * moments["var"] + extra_var  # [P]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(noise2 > 0, scale * np.sqrt(signal2) / np.sqrt(np.where(noise2 > 0, noise2, 1.0)), np.nan)


def rms_snr(moments: dict) -> float:
    """sqrt(mean over parameters of SNR_p^2), SNR_p^2 = (mean_p^2 - var_p / n) / var_p unclipped: the typical
    per-parameter SNR where most single ones are below what n batches resolve (their unbiased parts average out
    over many parameters, where the median of the clipped `gradient_snr` reads 0). NaN when nothing varied."""
    used = moments["var"] > 0
    if not used.any():
        return math.nan
    snr2 = (moments["mean"][used] ** 2 - moments["var"][used] / moments["n"]) / moments["var"][used]
    return float(math.sqrt(max(float(snr2.mean()), 0.0)))


def injected_snr(moments: dict, snr_db: float | None, zero_signal: bool = False) -> np.ndarray:
    """Per-parameter, per-step SNR of the noise-injected SFT gradient (PAPER.md Sec. 5, Figure 3). [P]

    With token weights w_i = a + sigma eps_i (`lowpass.noise_amplitudes`) the gradient is a G + sigma N,
    and N has mean zero given the batch, so it is uncorrelated with G:

        SNR_p = a |E G_p| / sqrt(a^2 Var G_p + sigma^2 Var N_p)

    (`gradient_snr` with scale a and extra variance sigma^2 Var N_p).
    """
    from rlvr_nb.lowpass import noise_amplitudes

    a, sigma = noise_amplitudes(snr_db, zero_signal)
    return gradient_snr(moments, a, sigma * sigma * moments["noise_var"])


# --------------------------------------------------------------------------------------------------
# The sweeps


def snr_settings(base: SFTConfig, snr_dbs: Sequence[float], zero_signal: bool = True,
                 plain: bool = True) -> list[Setting]:
    """Figure 3's runs at base's learning rate: plain SFT, noise at each SNR (dB), and the zero-signal control."""
    if base.noise_snr_db is not None or base.zero_signal:
        raise ValueError("base must be plain SFT (noise_snr_db=None, zero_signal=False); the sweep sets the noise")
    if not snr_dbs and not (zero_signal or plain):
        raise ValueError("the sweep is empty: give snr_dbs, zero_signal or plain")
    cat = f"SFT lr {base.lr:g}"
    out = [Setting(cat, "plain SFT", base)] if plain else []
    out += [Setting(cat, f"{float(db):g} dB", replace(base, noise_snr_db=float(db))) for db in snr_dbs]
    if zero_signal:
        out.append(Setting(cat, "zero signal", replace(base, zero_signal=True)))
    return out


def robustness_settings(
    base: RLConfig,
    steps: int,
    lrs: Sequence[float] = (),
    sgd_lr: float | None = None,
    group_sizes: Sequence[int] = (),
    estimators: Sequence[str] = (),
) -> list[Setting]:
    """Figure 2 on our model: the baseline, then one factor changed at a time (each category lists the
    baseline beside its alternatives).

    Every run lasts `steps` steps with base's checkpoint spacing. The baseline row reads the first `steps`
    steps of `base` itself: the trainer has no schedule that depends on the total number of steps, so they
    are the same trajectory as a run of `steps` steps, and the embedded run is re-used instead of retrained.
    """
    if not 0 < steps <= base.steps or steps % base.ckpt_every:
        raise ValueError(f"steps must be a positive multiple of ckpt_every={base.ckpt_every} and at most "
                         f"base.steps={base.steps}, got {steps}")
    if steps // base.ckpt_every < 2:
        raise ValueError(f"{steps} steps with a checkpoint every {base.ckpt_every} give fewer than 3 checkpoints")
    short = replace(base, steps=steps)
    baseline = Setting("", "baseline", base, max_step=steps)

    def alt(category: str, label: str, **change) -> Setting:
        return Setting(category, label, replace(short, **change), max_step=steps)

    def same(category: str, label: str) -> Setting:
        return replace(baseline, category=category, label=label)

    out: list[Setting] = []
    if sgd_lr is not None:
        out += [same("optimizer", f"AdamW, lr {base.lr:g}"),
                alt("optimizer", f"SGD, lr {sgd_lr:g}", optimizer="sgd", lr=sgd_lr)]
    if lrs:
        out += [same("learning rate", f"lr {base.lr:g}")] + [
            alt("learning rate", f"lr {lr:g}", lr=lr) for lr in lrs if lr != base.lr]
    if group_sizes:
        out += [same("rollouts per prompt", f"G = {base.group_size}")] + [
            alt("rollouts per prompt", f"G = {g}", group_size=g) for g in group_sizes if g != base.group_size]
    if estimators:
        out += [same("advantage", base.adv_estimator)] + [
            alt("advantage", e, adv_estimator=e) for e in estimators if e != base.adv_estimator]
    return out or [replace(baseline, category="baseline")]


def setting_fields(setting: Setting) -> dict:
    """The config values a table row shows: learning rate, optimizer, and the noise (SFT) or RL factors."""
    c = setting.config
    if isinstance(c, SFTConfig):
        return {"lr": c.lr, "snr_db": c.noise_snr_db, "zero_signal": c.zero_signal}
    return {"optimizer": c.optimizer, "lr": c.lr, "group_size": c.group_size, "adv_estimator": c.adv_estimator}


def sweep_rows(settings: Sequence[Setting], emb: EmbeddedConfig, progress: bool = True) -> list[dict]:
    """One row per setting: category, label, its config values and `weight_r2_row` of its run.

    Runs are trained if missing; a run shared by several settings (the baseline) is analysed once.
    """
    rows, seen = [], {}
    for s in tqdm(settings, desc="runs of the sweep", disable=not progress):
        run = ensure_trajectory(s.config, emb, progress)
        key = (str(run), s.max_step)
        if key not in seen:
            seen[key] = weight_r2_row(run, s.max_step)
        rows.append({"category": s.category, "label": s.label, **setting_fields(s), **seen[key], "run": run.name})
    return rows


# --------------------------------------------------------------------------------------------------
# A table cached as JSON (computed at the cpu profile, read at smoke)


def settings_record(settings: Sequence[Setting]) -> list[dict]:
    """The settings as JSON-able dicts (what a cached table was computed from)."""
    return [{"category": s.category, "label": s.label, "kind": type(s.config).__name__,
             "config": to_jsonable(s.config), "max_step": s.max_step} for s in settings]


def save_table(path: str | Path, rows: Sequence[dict], settings: Sequence[Setting], note: str = "",
               emb: EmbeddedConfig | None = None, extra: dict | None = None, wall_seconds: float | None = None,
               command: str | None = None) -> Path:
    """Write {"settings", "rows", "note", "embedded"} and any `extra` tables as JSON, with its provenance (the
    command and wall time that made it); returns the path."""
    return save_json_table(path, {"note": note, "settings": settings_record(settings), "rows": list(rows),
                                  "embedded": None if emb is None else to_jsonable(emb), **(extra or {})},
                           wall_seconds, command)


def load_table(path: str | Path) -> dict:
    """A table written by `save_table`: {"note", "settings", "rows", "embedded", ...}."""
    return load_json_table(path, {"settings", "rows"}, "rlvr_nb.experiments.robustness.save_table",
                           "run the notebook at the cpu profile to compute it")


def cached_rows(path: str | Path, settings: Sequence[Setting], emb: EmbeddedConfig, recompute: bool = False,
                progress: bool = True, note: str = "", extra: dict[str, Callable[[], list[dict]]] | None = None,
                command: str | None = None) -> tuple[dict, str]:
    """The sweep's table from the cache at `path` when it was computed from exactly these settings, this embedded
    model and holds every `extra` table; otherwise (missing, different, or recompute=True) computed with
    `sweep_rows` (and each extra table by its function) and written there.

    Returns (the table: "rows" and the extra tables by name, "read from <path>" or "computed, written to <path>").
    """
    path = Path(path)
    extra = extra or {}
    if not recompute and path.is_file():
        data = load_table(path)
        if (data["settings"] == json.loads(json.dumps(settings_record(settings)))
                and data.get("embedded") == json.loads(json.dumps(to_jsonable(emb))) and set(extra) <= set(data)):
            return data, f"read from {path}"
    t0 = time.perf_counter()  # the wall time includes training any run that is not cached yet
    rows = sweep_rows(settings, emb, progress)
    tables = {name: compute() for name, compute in extra.items()}
    save_table(path, rows, settings, note, emb, tables, time.perf_counter() - t0, command)
    return load_table(path), f"computed, written to {path}"


def sgd_calibration_rows(base: RLConfig, lrs: Sequence[float], emb: EmbeddedConfig, steps: int = 100,
                         progress: bool = True) -> list[dict]:
    """How far and how well plain SGD moves the RL run in its first `steps` steps, at each learning rate, beside
    AdamW at base's (read from base's own run): the relative weight change, the reward of the last 20 steps and
    the held-out greedy accuracy at the start and at `steps` (what the SGD learning rate is chosen by)."""
    runs = [("adamw", base.lr, base)] + [("sgd", c.lr, c) for c in sgd_calibration_configs(base, lrs, steps)]
    rows = []
    for optimizer, lr, cfg in runs:
        run = ensure_trajectory(cfg, emb, progress)
        ckpts = dict(find_checkpoints(run))
        rewards = [m["reward"] for m in read_metrics(run) if "reward" in m and steps - 20 < m["step"] <= steps]
        rows.append({"optimizer": optimizer, "lr": lr, "steps": steps,
                     "rel_change": round(relative_change(ckpts[0], ckpts[steps]), 4),
                     "reward_last20": round(float(np.mean(rewards)), 4) if rewards else None,
                     "acc_start": accuracy_at(run, 0)["greedy"], "acc_end": accuracy_at(run, steps)["greedy"],
                     "run": run.name})
    return rows


def sgd_calibration_configs(base: RLConfig, lrs: Sequence[float], steps: int = 100) -> list[RLConfig]:
    """The SGD runs `sgd_calibration_rows` trains: base's first `steps` steps with plain SGD at each rate."""
    if steps % base.ckpt_every:
        raise ValueError(f"steps must be a multiple of ckpt_every={base.ckpt_every}, got {steps}")
    return [replace(base, steps=steps, optimizer="sgd", lr=lr) for lr in lrs]


def sgd_candidates(lr: float, factors: Sequence[float] = (0.3, 1.0, 3.0)) -> list[float]:
    """The SGD learning rates `sgd_calibration_rows` tries around `lr` (3 significant digits)."""
    return [float(f"{lr * f:.3g}") for f in factors]


def largest_stable_lr(rows: Sequence[dict], max_drop: float = 0.05) -> float | None:
    """The largest SGD learning rate of `sgd_calibration_rows` whose held-out greedy accuracy falls by at most
    `max_drop` (the policy does not collapse); None when every rate collapses."""
    ok = [r["lr"] for r in rows if r["optimizer"] == "sgd" and r["acc_end"] >= r["acc_start"] - max_drop]
    return max(ok) if ok else None


def low_coverage(rows: Sequence[dict], below: float = 0.5) -> list[dict]:
    """Rows whose R^2 statistics cover less than `below` of the weights (the rest moved by less than the filters'
    range), each with its `coverage` (active / total)."""
    return [{**r, "coverage": r["active"] / r["total"]} for r in rows if r["total"] and r["active"] / r["total"] < below]


# --------------------------------------------------------------------------------------------------
# Findings


def snr_finding(rows: Sequence[dict], moderate: Sequence[float] = paper.FINDING_C["moderate_db"],
                lowest: float = paper.FINDING_C["lowest_db"], stat: str = "median",
                margin: float = paper.FINDING_C["margin"]) -> dict:
    """Finding (c) of PAPER.md Sec. 5 on the rows of one `snr_settings` sweep (`paper.snr_rises`,
    `paper.snr_falls_back`).

    Holds when the best moderate-negative-SNR value of `stat` exceeds plain SFT's by more than `margin`,
    and both the lowest SNR and the zero-signal control fall back below that peak by more than `margin`.
    """
    by = {r["label"]: r for r in rows}
    need = ["plain SFT", f"{lowest:g} dB", "zero signal"] + [f"{db:g} dB" for db in moderate]
    missing = [k for k in need if k not in by]
    if missing:
        raise ValueError(f"the sweep lacks {missing}; finding (c) needs plain SFT, {list(moderate)} dB, {lowest} dB "
                         "and zero signal")
    plain = by["plain SFT"][stat]
    peak_db = max(moderate, key=lambda db: by[f"{db:g} dB"][stat])
    peak = by[f"{peak_db:g} dB"][stat]
    low, zero = by[f"{lowest:g} dB"][stat], by["zero signal"][stat]
    rises = paper.snr_rises(plain, peak, margin)
    falls = paper.snr_falls_back(peak, low, zero, margin)
    return {"stat": stat, "plain": plain, "peak_db": peak_db, "peak": peak, "lowest_db": lowest, "lowest": low,
            "zero_signal": zero, "rises": rises, "falls_back": falls, "holds": rises and falls}


def describe_snr_finding(rows: Sequence[dict], **kw) -> str:
    """Finding (c) for one sweep as a sentence built from its numbers (`snr_finding`), or why it cannot be judged."""
    cat = rows[0]["category"] if rows else "?"
    try:
        f = snr_finding(rows, **kw)
    except ValueError as e:
        return f"{cat}: finding (c) cannot be judged here ({e})."
    verdict = "holds" if f["holds"] else "does not hold"
    margin = kw.get("margin", paper.FINDING_C["margin"])
    why = [] if f["rises"] else [f"no moderate SNR beats plain SFT by more than {margin}"]
    if f["rises"] and not f["falls_back"]:
        why.append("the lowest SNR or the zero-signal control does not fall back below the peak")
    return (f"{cat}: finding (c) {verdict}: {f['stat']} R^2 plain SFT {f['plain']:.3f}, best moderate SNR "
            f"{f['peak_db']:g} dB {f['peak']:.3f}, {f['lowest_db']:g} dB {f['lowest']:.3f}, zero signal "
            f"{f['zero_signal']:.3f}" + (f" ({'; '.join(why)})." if why else "."))


# --------------------------------------------------------------------------------------------------
# Figures


def plot_robustness(rows: Sequence[dict], threshold: float = paper.R2_THRESHOLD) -> Figure:
    """Figure 2 (weights) on our model: median weight R^2 (dot) and interquartile range (bar) per setting,
    grouped by the factor varied, with the strong-linearity threshold dashed. A setting none of whose weights
    moved enough to be analysed (median None) keeps its line, marked "no active weights"."""
    cats = list(dict.fromkeys(r["category"] for r in rows))
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.2))
    y, ticks, labels = 0, [], []
    for c, cat in enumerate(cats):
        group = [r for r in rows if r["category"] == cat]
        for r in group:
            if r["median"] is None:
                ax.text(0.02, y, "no active weights", va="center", fontsize=8, color="0.4")
            else:
                ax.errorbar(r["median"], y, xerr=[[r["median"] - r["q25"]], [r["q75"] - r["median"]]], fmt="o",
                            color=f"C{c}", capsize=3)
            ticks.append(y)
            labels.append(f"{cat}: {r['label']}" if cat else r["label"])
            y -= 1
        y -= 0.6
    ax.axvline(threshold, color="0.5", ls="--", lw=1, label=f"R$^2$ = {threshold}")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="weight R$^2$ of active parameters (dot: median, bar: Q1-Q3)",
           title="Weight linearity of RL runs, one factor changed at a time")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def table_rows(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Rows cut to `keys` (for `report.markdown_table`); a missing key shows as an empty cell."""
    return [{k: ("" if r.get(k) is None else r.get(k)) for k in keys} for r in rows]

