# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python (rlvr-nb)
#     language: python
#     name: rlvr-nb
# ---

# %% [markdown]
# # 05 · Using the linearity: weight and logits extrapolation
#
# > "Weight-space extrapolation: W = W_base + alpha (W_second - W_base) for every trainable tensor except
# > normalisation weights, which are copied from the second checkpoint. [...] with t_base = 0 and
# > t_second = 300 / 600 / 1400, avg@64 on AIME24 rises with the target step, peaks (e.g. t1=1400 peaks at
# > target 1800 with 41.5), then falls when extrapolating too far." — PAPER.md Sec. 6, Figure 5
#
# > "Output-space (logits) extrapolation: at every decoding step run both checkpoints on the same prefix
# > (each with its own KV cache), mix logits l = l_base + alpha (l_second - l_base), apply temperature (0.6)
# > and top-p (0.95), sample. Original setting: base 200, second 1400, target 2000 (alpha 1.5) [...]
# > +4.2% on average over standard RL at the same step; it also avoids the late-stage collapse of continued
# > RL." — PAPER.md Sec. 6, Table 1
#
# If RL moves the weights (02) and the log-probs (03) along straight lines, two checkpoints predict the
# later ones. Both methods read the trajectory as the line through a base checkpoint (step $t_0$) and a
# second one ($t_1$), and follow it to a target step $t'$:
#
# $$\alpha = \frac{t' - t_0}{t_1 - t_0}$$
#
# We test both on 01's RL run, the one trajectory 02 and 03 analyse (at `gpu` on the run you give), scoring
# every model on the same held-out problems with avg@k and a 95% confidence interval over questions;
# "beats / matches / below" always means the paired difference on the same questions has its interval above
# 0 / around 0 / below 0. The recipe, with its measured weight and token $R^2$, is printed below.

# %% tags=["parameters"]
profile = "cpu"  # smoke | cpu | gpu
rl_recipe = None  # RLConfig fields changed from the profile's RL run (cpu {})
k = None  # samples per held-out question (cpu 8)
n_problems = None  # held-out problems scored (cpu 512, all of them)
sampling = None  # [(temperature, top_p)] scored; the first is Figure 5's (cpu [(0.6, 0.95), (1.0, 1.0)])
t_seconds = None  # t_1 of Figure 5, extrapolating from step 0 (cpu [200, 400, 600])
alphas = None  # extrapolation coefficients of Figure 5 (cpu [1.0, 1.25, 1.5, 2.0, 2.5, 3.0])
t_base_late = None  # t_0 of the second panel, later in the run (cpu 200)
t_seconds_late = None  # t_1 of the second panel (cpu [400, 600, 800])
logits_pairs = None  # (t_0, t_1) of Table 1 (cpu [(100, 600), (100, 800)])
logits_alpha = None  # alpha of Table 1 (cpu 1.5, as in the paper: paper.TABLE1_ALPHA)
interactive = False  # True in JupyterLab: a live alpha slider; False (papermill): the static figure at slider_alpha
slider_alpha = None  # alpha of the slider's figure (cpu 1.5)
n_examples = None  # example answers whose token log-probs the slider shows (cpu 3)
run_dir = None  # gpu profile: an RL run directory holding checkpoints/step_N; empty: the embedded run
eval_data = None  # gpu profile: JSONL of held-out question/answer rows graded by math-verify (required with run_dir); empty: the embedded task

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import transformers
from IPython.display import display

from rlvr_nb import paper
from rlvr_nb.notebook import profiles
from rlvr_nb.checkpoints import list_checkpoints
from rlvr_nb.embedded import ensure_rl_run
from rlvr_nb.evaluate import EvalConfig, paired_difference
from rlvr_nb.findings import Finding, record_findings
from rlvr_nb.extrapolate import alpha_for, cache_response_logits
from rlvr_nb.notebook.widgets import alpha_explorer
from rlvr_nb.experiments.extrapolation_results import (
    COMPARISONS, accuracy_grid, late_stage_decline, logits_comparison, logits_extrapolation_rows, plot_distance,
    plot_extrapolation_curves, rl_accuracy, summarize_extrapolation, weight_extrapolation_curves,
)
from rlvr_nb.motion import distance, segment_cosine
from rlvr_nb.figures import save_figure
from rlvr_nb.notebook.report import markdown_table
from rlvr_nb.tasks import AdditionTask

transformers.logging.disable_progress_bar()  # no "Loading weights" bar for each of the many models loaded
P = profiles.resolve("05_extrapolation", profile, k=k, n_problems=n_problems, sampling=sampling, t_seconds=t_seconds,
                     alphas=alphas, t_base_late=t_base_late, t_seconds_late=t_seconds_late, logits_pairs=logits_pairs,
                     logits_alpha=logits_alpha, slider_alpha=slider_alpha, n_examples=n_examples, run_dir=run_dir,
                     eval_data=eval_data, rl_recipe=rl_recipe)
rl_cfg, emb = profiles.rl_config(profile, **P.rl_recipe), profiles.embedded_config(profile)
run = Path(P.run_dir) if getattr(P, "run_dir", None) else ensure_rl_run(rl_cfg, emb)
ckpts = dict(list_checkpoints(run))  # step -> HF checkpoint directory
if getattr(P, "eval_data", None):  # gpu: prompts formatted as the run's training prompts were
    from rlvr_nb.backends.verl_inputs import heldout_problems

    problems, grader = heldout_problems(P.eval_data, run)[: P.n_problems], "math"
else:
    problems, grader = AdditionTask(emb.task).eval_problems[: P.n_problems], "exact"
cache_dir, out_root = run / "eval_cache", run / "extrapolated"  # git-ignored, beside the run's checkpoints
cfgs = {T: EvalConfig(k=P.k, temperature=T, top_p=top_p, max_new_tokens=rl_cfg.max_new_tokens) for T, top_p in P.sampling}
T_fig = P.sampling[0][0]
make_policy = make_logits_policy = None  # CPU: ModelPolicy and LogitsExtrapolationPolicy
if profile == "gpu":  # vLLM samples; logits extrapolation is one two-stack model in one engine
    from rlvr_nb.backends.vllm_backend import VllmPolicy
    from rlvr_nb.backends.vllm_extrapolation import write_two_stack_checkpoint

    make_policy = VllmPolicy

    def make_logits_policy(base, second, alpha):
        out = out_root / f"two-stack-{base.name}-{second.name}-alpha{alpha:g}"
        return VllmPolicy(write_two_stack_checkpoint(base, second, out, alpha, overwrite=True))

print(f"run {run}: {len(ckpts)} checkpoints, steps {min(ckpts)}..{max(ckpts)}; {len(problems)} held-out problems, "
      f"avg@{P.k}, grader {grader!r}, sampling {P.sampling}")
if not getattr(P, "run_dir", None):
    print(f"recipe: {rl_cfg.steps} steps x {rl_cfg.prompts_per_step} prompts x {rl_cfg.group_size} rollouts, lr {rl_cfg.lr:g} "
          "(01's run; its weight and token R^2 are 02's and 03's findings)")

# %% [markdown]
# ## The actual RL curve
# Every checkpoint of the run, scored at each sampling setting (evaluations are cached beside the run, keyed
# by checkpoint content, problems and settings, so re-runs read them back).

# %%
rl = {T: rl_accuracy(ckpts, problems, c, grader=grader, cache_dir=cache_dir, make_policy=make_policy)
      for T, c in cfgs.items()}  # temperature -> {step: EvalResult}
markdown_table([{"step": s, **{f"avg@{P.k} at T={T:g}": f"{rl[T][s].avg_at_k:.3f} [{rl[T][s].ci_low:.3f}, "
                               f"{rl[T][s].ci_high:.3f}]" for T in rl}} for s in sorted(ckpts)])

# %% [markdown]
# ## Weight-space extrapolation (Figure 5)
#
# $$W(t') = W_{t_0} + \alpha\,(W_{t_1} - W_{t_0})\quad\text{(normalisation weights copied from } t_1\text{)}$$
#
# `extrapolate_weights` writes each extrapolated model as a complete HuggingFace directory (streamed
# tensor by tensor); alpha = 1 is the $t_1$ checkpoint itself. Panel (a) is the paper's setting, $t_0 = 0$.
# Panel (b) starts the line later in the run, at `t_base_late`; panel (c) shows how far the weights have
# moved from step 0 at each step: a straight line at constant speed would be a straight line there too.

# %%
t0 = min(ckpts)
curves = weight_extrapolation_curves(ckpts, t0, P.t_seconds, P.alphas, out_root, problems, cfgs[T_fig],
                                     grader=grader, cache_dir=cache_dir, make_policy=make_policy)
curves_late = weight_extrapolation_curves(ckpts, P.t_base_late, P.t_seconds_late, P.alphas, out_root, problems,
                                          cfgs[T_fig], grader=grader, cache_dir=cache_dir, make_policy=make_policy)
distances = {s: distance(ckpts[t0], d) for s, d in sorted(ckpts.items())}  # ||W_s - W_t0|| for every checkpoint

fig, axes = plt.subplots(1, 3, figsize=(18, 4.6), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
plot_extrapolation_curves(axes[0], curves, t0, rl[T_fig], k=P.k,
                          title=f"(a) weight extrapolation from $t_0$={t0} (paper's setting), T={T_fig:g}")
plot_extrapolation_curves(axes[1], curves_late, P.t_base_late, rl[T_fig], k=P.k,
                          title=f"(b) weight extrapolation from $t_0$={P.t_base_late}, T={T_fig:g}")
plot_distance(axes[2], distances, t0)
axes[2].set_title(f"(c) distance travelled from step {t0}")
fig.tight_layout()
save_figure(fig, "05_weight_extrapolation")

# %% [markdown]
# ## What we measured: finding (e)
# For each curve: the $t_1$ checkpoint, the peak over alpha, the peak's gain over the checkpoint and what
# happens at the largest alpha (paired differences with 95% intervals), and every target step that is an RL
# checkpoint, where the extrapolated model is compared with actual RL at that step. The paper's peaks are
# printed below the table (from `rlvr_nb.paper`).
#
# The last line measures how the weights move. If the first steps move them much faster, or in another
# direction, than later ones, the line through step 0 and $t_1$ does not point where RL goes next, and
# following it past $t_1$ leaves the trajectory; a line through two later checkpoints need not.

# %%
findings = [summarize_extrapolation(c, t0, t, rl[T_fig]) for t, c in curves.items()]
findings_late = [summarize_extrapolation(c, P.t_base_late, t, rl[T_fig]) for t, c in curves_late.items()]
markdown_table([{
    "t_0 → t_1": f"{f.t_base} → {f.t_second}", "checkpoint t_1": f"{f.at_second.avg_at_k:.3f}",
    "peak [CI]": f"{f.peak.avg_at_k:.3f} [{f.peak.ci_low:.3f}, {f.peak.ci_high:.3f}]",
    "peak alpha (target)": f"{f.peak_alpha:g} ({f.peak_target:g})", "peak − t_1": str(f.gain_at_peak),
    "largest alpha − peak": str(f.drop_after_peak) if f.drop_after_peak else "–",
    "matches or beats RL at step": ", ".join(f"{t:g}" for _, t, _ in f.matches_or_beats_rl) or "none",
    "below RL at step": ", ".join(f"{t:g}" for _, t, c in f.vs_rl if c.verdict == "below") or "none",
    "rise, peak, fall": f.holds} for f in findings + findings_late])

# %%
for f in findings + findings_late:
    print(f.sentence())
n_hold, n_late = sum(f.holds for f in findings), sum(f.holds for f in findings_late)
n_rl = sum(bool(f.matches_or_beats_rl) for f in findings)
e_holds = paper.extrapolation_finding_holds([f.holds for f in findings])
print("paper (AIME24 avg@64): " + ", ".join(f"t_1 = {t} peaks at target {paper.FIG5_PEAK_TARGETS[t]}"
                                             for t in paper.FIG5_T_SECONDS))
print(f"\nfinding (e) at t_0 = {t0} (the paper's setting) {'holds' if e_holds else 'does not hold'}: "
      f"{n_hold} of {len(findings)} curves rise above their t_1 checkpoint, peak and fall; {n_rl} of {len(findings)} "
      f"match or beat actual RL at some target step.")
print(f"from t_0 = {P.t_base_late}: {n_late} of {len(findings_late)} curves rise, peak and fall; matches or beats "
      f"actual RL at steps {sorted({t for f in findings_late for _, t, _ in f.matches_or_beats_rl}) or 'none'}.")
first, last = min(s for s in ckpts if s > t0), max(ckpts)
window = first - t0
late_move = distance(ckpts[last - window], ckpts[last])
print(f"how the weights move: the first {window} steps move the weights {distances[first]:.3f}, the last {window} "
      f"steps {late_move:.3f} ({distances[first] / late_move:.1f}x less); cos(W_{P.t_base_late} - W_{t0}, "
      f"W_{last} - W_{P.t_base_late}) = {segment_cosine(ckpts[t0], ckpts[P.t_base_late], ckpts[last]):.2f}, against "
      f"cos(W_{max(P.t_seconds_late)} - W_{P.t_base_late}, W_{last} - W_{max(P.t_seconds_late)}) = "
      f"{segment_cosine(ckpts[P.t_base_late], ckpts[max(P.t_seconds_late)], ckpts[last]):.2f} later in the run")

# %% [markdown]
# ## Output-space (logits) extrapolation (Table 1)
#
# $$l_t = l^{(t_0)}_t + \alpha\,\bigl(l^{(t_1)}_t - l^{(t_0)}_t\bigr),\qquad y_t \sim \text{top-}p\bigl(\text{softmax}(l_t / T)\bigr)$$
#
# Both checkpoints decode the same prefixes, each with its own KV cache (`LogitsExtrapolationPolicy`). The
# paper's setting, base 200 and second 1400 of a run still stable at 1400, target 2000, gives alpha 1.5:
# base at about a seventh of second, target at 10/7 of it. We keep alpha = `logits_alpha` and the ratio
# (`logits_pairs`), with every target step an RL checkpoint of our run, so that each row is compared with two
# RL checkpoints:
#
# - **RL at the target step**, the paper's comparison ("over standard RL at the same step": its extrapolation
#   aims at its target step and is compared with RL there). This is the comparison finding (g) is judged on.
# - **RL at $t_1$**, which used as many real RL steps as the extrapolation (a weaker baseline: RL still
#   improves between $t_1$ and the target).
#
# Both as relative percent like the paper, $100\,(\text{extra} / \text{RL} - 1)$, with a paired 95% interval
# over the same questions and samples (`relative_difference`, delta method); the absolute paired difference
# is in brackets.

# %%
t_base_p, t_second_p, t_target_p = paper.TABLE1_STEPS
print(f"paper: alpha = alpha_for({t_base_p}, {t_second_p}, {t_target_p}) = {alpha_for(*paper.TABLE1_STEPS):g}, "
      f"base/second = {t_base_p / t_second_p:.2f}; "
      f"ours: alpha = {P.logits_alpha:g}, base/second = {', '.join(f'{b / s:.2f}' for b, s in P.logits_pairs)}")
rows = logits_extrapolation_rows(ckpts, P.logits_pairs, P.logits_alpha, P.sampling, problems, cfgs[T_fig], rl,
                                 grader=grader, cache_dir=cache_dir, make_policy=make_logits_policy)
markdown_table([r.as_dict(max(ckpts)) for r in rows])

# %% [markdown]
# ## What we measured: finding (g)
# Per row, then the mean over the rows at the paper's sampling (the first of `sampling`), against each
# baseline, each with its paired interval; the verdict is computed on the paper's comparison (RL at the
# target step): "holds" when logits extrapolation beats RL there in every row. Then whether our RL curve has a
# late-stage decline for extrapolation to avoid (the last checkpoint against the best one).

# %%
for r in rows:
    at_target = (f"{r.relative('target')} vs RL at target step {r.t_target:g} ({r.vs_target.verdict})" if r.vs_target
                 else f"target step {r.t_target:g} is not an RL checkpoint (last step {max(ckpts)})")
    print(f"T={r.temperature:g}, {r.t_base} -> {r.t_second}, alpha {r.alpha:g}: {r.extrapolated.avg_at_k:.3f}; {at_target}; "
          f"{r.relative('second')} vs RL at t_1 = {r.t_second} ({r.vs_same_step.verdict})")
print(f"paper: {paper.TABLE1_GAIN_PCT['average']:+.1f}% on average over RL at the same step (" +
      ", ".join(f"{bench} {gain:+.1f}%" for bench, gain in paper.TABLE1_GAIN_PCT.items() if bench != "average") + ")")
g = {against: logits_comparison(rows, T_fig, against) for against in COMPARISONS}
for against, (rel_mean, n_beats, n_rows) in g.items():
    label = COMPARISONS[against] + (" (the paper's comparison)" if against == "target" else "")
    print(f"against {label}, T={T_fig:g}: " + (f"mean {rel_mean} over {n_rows} rows; beats RL in {n_beats} of {n_rows}: "
          f"{paper.logits_finding(n_beats, n_rows)}" if n_rows else "no row has that RL checkpoint"))
_, n_beats, n_rows = g["target"]
print(f"\nfinding (g), logits extrapolation beats standard RL at the same (target) step: "
      f"{paper.logits_finding(n_beats, n_rows) if n_rows else 'not measured'}.")
late = {T: late_stage_decline(rl[T]) for T in rl}
for T, l in late.items():
    print(f"RL curve at T={T:g}: {l.sentence()}")
for r in rows:
    if r.t_target > max(ckpts):  # past the end of the run: against the best checkpoint RL ever reached
        best = late[r.temperature]
        print(f"T={r.temperature:g}, {r.t_base} -> {r.t_second} (target {r.t_target:g}, beyond the run) against the best "
              f"RL checkpoint (step {best.best_step}, {best.best.avg_at_k:.3f}): "
              f"{paired_difference(r.extrapolated, best.best).verdict} ({paired_difference(r.extrapolated, best.best)})")
declines = [T for T, l in late.items() if l.declines]
print("so extrapolation has a late-stage decline to avoid at T = " + ", ".join(f"{T:g}" for T in declines) if declines else
      "so our run has no late-stage decline for extrapolation to avoid: that half of (g) cannot be tested on it.")

# %% [markdown]
# ## The findings of this notebook
# Written to `findings/05_extrapolation.json` beside the executed notebook (the table of `00_overview`).

# %%
NB = "05_extrapolation"


def e_finding(key, name, fs, holds):
    return Finding(key, name, sum(f.holds for f in fs), None,
                   ", ".join(f"t_1 {t} peaks at {paper.FIG5_PEAK_TARGETS[t]}" for t in paper.FIG5_T_SECONDS),
                   f"all {len(fs)} curves rise above t_1, peak and fall", "holds" if holds else "fails", NB, unit="curves",
                   note="; ".join(f"t_1 {f.t_second}: peak alpha {f.peak_alpha:g}, peak - t_1 {f.gain_at_peak}" for f in fs))


def g_finding(key, against):
    rel_mean, n_beats, n_rows = g[against]
    return Finding(key, f"logits extrapolation vs {COMPARISONS[against]}, T={T_fig:g}",
                   rel_mean.diff if rel_mean else None, (rel_mean.ci_low, rel_mean.ci_high) if rel_mean else None,
                   paper.TABLE1_GAIN_PCT["average"] if against == "target" else None,
                   "beats RL (paired interval above 0) in every row",
                   paper.logits_finding(n_beats, n_rows) if n_rows else "not measured", NB, unit="%",
                   interval_kind="paired 95% CI over questions",
                   note=(f"beats in {n_beats} of {n_rows} rows" if n_rows else "no target step is an RL checkpoint")
                   + ("; the paper's comparison" if against == "target" else "; as many real RL steps, not the paper's"))


decline = late[T_fig]
record_findings(NB, [
    e_finding("e", f"weight extrapolation from step {t0}: curves that rise, peak and fall", findings, e_holds),
    e_finding("e_late", f"weight extrapolation from step {P.t_base_late} (ours)", findings_late,
              paper.extrapolation_finding_holds([f.holds for f in findings_late])),
    g_finding("g", "target"), g_finding("g_t1", "second"),
    Finding("g_decline", f"late-stage decline of RL for extrapolation to avoid (last - best checkpoint), T={T_fig:g}",
            decline.last_vs_best.diff, (decline.last_vs_best.ci_low, decline.last_vs_best.ci_high),
            "continued RL declines late; extrapolation avoids it", "last - best below 0",
            "RL declines late" if decline.declines else "no decline: not testable on this run", NB,
            interval_kind="paired 95% CI over questions", note=decline.sentence()),
], profile)

# %% [markdown]
# ## The alpha slider
# Move alpha (and pick $t_1$) to see, at once, the accuracy of the weight-extrapolated models of panel (b)
# at that alpha (interpolated between the evaluated alphas, left) and how the log-probability of each token
# of a few correct answers moves under the mixed logits $l^{(t_0)} + \alpha (l^{(t_1)} - l^{(t_0)})$ (right;
# open circles: alpha = 1, the $t_1$ checkpoint). The logits are teacher-forced once and cached, so a redraw
# needs no model. Set `interactive = True` in JupyterLab for the live slider; under papermill the cell draws
# the static figure at `slider_alpha`.

# %%
examples = problems[: P.n_examples]
response_logits = cache_response_logits(ckpts[P.t_base_late], {t: ckpts[t] for t in P.t_seconds_late},
                                        [p.prompt for p in examples], [p.answer for p in examples],
                                        base_step=P.t_base_late)
explorer = alpha_explorer(response_logits, accuracy_grid(curves_late), interactive=interactive, alpha=P.slider_alpha,
                          t_second=max(P.t_seconds_late), alpha_max=max(P.alphas),
                          rl_accuracy={s: r.avg_at_k for s, r in rl[T_fig].items()})
if interactive:
    display(explorer)
else:
    save_figure(explorer, "05_alpha_slider")

# %% [markdown]
# How the slider is checked: `tests/test_alpha_slider_kernel.py` executes this notebook at `smoke` with
# `interactive = True` under a real Jupyter kernel (nbclient, which keeps the widget state a frontend would
# render), moves the slider and the $t_1$ dropdown from a later cell, and asserts that the Output widget
# then holds one figure, different from the first.
