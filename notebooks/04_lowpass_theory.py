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
# # 04 · Why it is linear: the low-pass filter, noise-injected SFT, and the source of output change
#
# > "RLVR credit comes only from final-answer correctness, so per-token gradient signals are noisy and
# > high-variance. Summed over a long window, fluctuations cancel and a stable drift remains. [...] a
# > low-pass filter on updates." — PAPER.md, Sec. 5
#
# > "SFT with injected token-level random-sign noise at a chosen signal-to-noise ratio (10 dB down to
# > -20 dB and a zero-signal control). Weighted mean/median R^2 of active parameters peaks at moderate
# > negative SNR (median 0.58 at -10 dB) against an SFT baseline of ~0.43, and falls back at -20 dB and
# > zero signal." — PAPER.md, Sec. 5, Figure 3
#
# > "The second-order part is negligible, which is why linear weights give near-linear outputs."
# > — PAPER.md, Sec. 5, Figure 4
#
# This notebook has five parts: (1) the filter as a model you can compute and play with, (2) the paper's
# noise-injection experiment on our tiny model, (3) where the output change of each layer comes from,
# (4) how robust the weight linearity of our RL run is to the optimizer and the RL hyperparameters, and
# (5), beyond the paper, a direct test of the mechanism: make the credit sparser (a scratchpad before the
# answer) and see whether RL becomes more linear than SFT, with two controls for Adam's part in it.
#
# **Which run.** Parts 2-4 train many variants, so at `cpu` they start from a cheaper recipe than the default
# trajectory that 01-03, 05 and 06 analyse (`profiles.CHEAP_RL`); the cell after the parameters prints both
# recipes and the cheaper one's own findings (a) and (b), read from 02's committed sweep table. Part 5 has
# its own small runs (its table says which).

# %% tags=["parameters"]
profile = "cpu"  # smoke | cpu | gpu
rl_recipe = None  # RLConfig fields changed from the profile's RL run (cpu: the cheaper first default, profiles.CHEAP_RL)
interactive = False  # True: ipywidgets sliders for SNR and K (papermill: False, one static figure)
theory_points = None  # points per theory curve; the exact median costs ~0.1 s a point (cpu 40)
sim_params = None  # simulated parameters per setting in the theory figures (cpu 400)
snr_dbs = None  # injected SNRs of Figure 3, in dB (cpu [10.0, 0.0, -5.0, -10.0, -15.0, -20.0])
sft_high_lr = None  # the noisy-SFT sweep runs at this lr and at the RL run's lr (cpu 0.001)
sft_steps = None  # steps of each noisy-SFT run (cpu 500)
sft_ckpt_every = None  # steps between checkpoints of those runs (cpu 50)
grad_batches = None  # batches for the per-step gradient SNR at the RL start (cpu 200)
n_probe = None  # fixed teacher-forced held-out sequences for Figure 4 (cpu 256)
robust_steps = None  # steps of each robustness RL run (cpu 400)
robust_lrs = None  # AdamW learning rates of the robustness grid (cpu [3e-05, 0.0001])
sgd_lr = None  # SGD learning rate of the robustness grid (cpu 0.01)
group_sizes = None  # rollouts per prompt of the robustness grid (cpu [16, 8])
estimators = None  # advantage estimators of the robustness grid (cpu ["grpo", "reinforce_pp"])
sgd_calibration_steps = None  # steps of each SGD calibration run, from the RL start (cpu 100)
compute_robustness = None  # True: train the robustness runs and rewrite the table (make reproduce; smoke True, tiny); False: read the committed cpu table
recompute_robustness = False  # recompute even when the cached table matches the settings
robustness_cache = None  # the cached table (cpu "notebooks/data/04_robustness_cpu.json"; "": this run's output folder)
seed = None  # seed of the SFT batches and the injected noise (cpu 0)
mechanism_study = None  # part 5: MechanismStudy fields changed from its defaults (the cpu sizes); see profiles.PARAMS
recompute_mechanism = None  # part 5: train and measure the study (smoke True); False: read the committed table
mechanism_table = None  # part 5: the committed table, relative to the repository (empty: in this run's output folder)

# %%
import math

import numpy as np
import torch
from IPython.display import display

from rlvr_nb import decomposition as dc
from rlvr_nb import lowpass as lp
from rlvr_nb import paper
from rlvr_nb.notebook import profiles
from rlvr_nb.experiments import lowpass_theory as lt
from rlvr_nb.experiments import mechanism as mech
from rlvr_nb.experiments import robustness as rb
from rlvr_nb.embedded import ensure_rl_run, ensure_warm_start, matched_sft, repo_root
from rlvr_nb.figures import output_path, save_figure
from rlvr_nb.findings import Finding, record_findings
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.notebook.report import load_json_table, markdown_table
from rlvr_nb.sft import sequence_batch
from rlvr_nb.tasks import AdditionTask
from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.checkpoints import to_jsonable

P = profiles.resolve("04_lowpass_theory", profile, theory_points=theory_points, sim_params=sim_params, snr_dbs=snr_dbs,
                     sft_high_lr=sft_high_lr, sft_steps=sft_steps, sft_ckpt_every=sft_ckpt_every,
                     grad_batches=grad_batches, n_probe=n_probe, robust_steps=robust_steps, robust_lrs=robust_lrs,
                     sgd_lr=sgd_lr, group_sizes=group_sizes, estimators=estimators, sgd_calibration_steps=sgd_calibration_steps,
                     compute_robustness=compute_robustness, robustness_cache=robustness_cache, seed=seed, rl_recipe=rl_recipe,
                     mechanism_study=mechanism_study, recompute_mechanism=recompute_mechanism, mechanism_table=mechanism_table)
emb = profiles.embedded_config(profile)
rl = profiles.rl_config(profile, **{**P.rl_recipe, "seed": P.seed})
findings = []  # this notebook's findings, recorded at the end
P

# %%
default = profiles.rl_config(profile)
recipe = lambda c: (f"{c.prompts_per_step} prompts x {c.group_size} rollouts, lr {c.lr:g}, {c.optimizer}, {c.steps} "  # noqa: E731
                    f"steps, a checkpoint every {c.ckpt_every}")
print(f"parts 2-4 run on: {recipe(rl)}" + (" (the default trajectory)" if rl == default else
                                           f"\nnot on the default trajectory of 01-03, 05, 06: {recipe(default)}"))
if rl != default:  # this recipe's own findings (a) and (b), from 02's committed sweep (its first row is this recipe)
    sweep_file = profiles.PARAMS["02_weight_linearity"]["cpu"]["sweep_file"]
    sweep = load_json_table(repo_root() / sweep_file, {"rows"}, "02_weight_linearity's sweep", "run 02 at cpu")
    base = next(r for r in sweep["rows"] if r["factor"] == "baseline")
    model = ("this model" if sweep.get("embedded") == to_jsonable(profiles.embedded_config("cpu")) else
             "another embedded model: stale until 02 recomputes it" if sweep.get("embedded") else "a model it does not record")
    print(f"its findings, read from {sweep_file} ({base['setting']}; computed with {model}; "
          f"{sweep.get('provenance') or 'no provenance'}): "
          f"(a) weight R^2 median {base['weight median']:.3f}, {base['weight >0.7']:.1%} above {paper.R2_THRESHOLD}: "
          f"{'holds' if paper.weight_finding_holds(base['weight median'], base['weight >0.7']) else 'fails'}; "
          f"(b) token log-prob R^2 median {base['token median']:.3f}: "
          f"{'holds' if paper.token_finding_holds(base['token median']) else 'fails'}")

# %% [markdown]
# ## 1. The filter you can compute
#
# Take one scalar parameter. At every step it receives an update made of a drift $\mu$ (the part of the
# gradient that points the same way every step) and noise of standard deviation $\sigma$ (everything that
# changes from batch to batch), $u_s = \mu + \sigma\,\varepsilon_s$ with independent $\varepsilon_s$ of unit
# variance. We read it every $K$ steps, at $T$ checkpoints. Summed over $K$ steps the noise grows like
# $\sqrt{K}$ and the drift like $K$, so at checkpoint $j$ (with $w_0 = 0$ and Gaussian noise)
#
# $$ w_j = \mu K j + \sigma \sqrt{K}\, B_j, \qquad B_j = z_1 + \dots + z_j,\quad z_i \sim \mathcal{N}(0, 1). $$
#
# The $R^2$ of the least-squares line through $(j, w_j)$ is unchanged by rescaling $w$, so its whole
# distribution depends only on $T$ and on the **per-checkpoint SNR**
#
# $$ \rho = \frac{\mu}{\sigma}\sqrt{K}, \qquad\text{and, beyond } T \approx 10, \text{ almost only on}\qquad
#    \lambda = \rho\sqrt{T-1} = \frac{\mu N}{\sigma\sqrt{N}},\quad N = K(T-1), $$
#
# the drift over the whole run divided by the noise accumulated over it. Writing
# $SS_\text{res} = w^\top (C - P) w$ and $SS_\text{tot} = w^\top C w$ ($C$ centres, $P$ projects on the
# centred step axis), the expectations are closed forms,
#
# $$ \frac{\mathbb{E}[SS_\text{res}]}{\sigma^2 K} = \frac{T^2 - 4}{15}, \qquad
#    \frac{\mathbb{E}[SS_\text{tot}]}{\sigma^2 K} = \rho^2\,\frac{T (T^2 - 1)}{12} + \frac{T^2 - 1}{6}, $$
#
# and their ratio gives the simple approximation (`lowpass.r2_ratio_approx`, good once $R^2 > 0.96$)
#
# $$ R^2 \approx 1 - \frac{4\,(T^2 - 4)}{5\,(T^2 - 1)\,(\rho^2 T + 2)}. $$
#
# The mean and the median are computed exactly (`lowpass.expected_r2`, `lowpass.median_r2`): the mean as
# $\mathbb{E}[R^2] = 1 - \int_0^\infty \mathbb{E}\!\left[SS_\text{res}\, e^{-s\,SS_\text{tot}}\right] ds$, each
# term a Gaussian integral, and the median from the exact distribution of a Gaussian quadratic form
# (Gil-Pelaez inversion). The unit tests check both against Monte-Carlo within 0.01.
#
# **What this says.** A single step is hopelessly noisy when $\mu/\sigma \ll 1$, yet the trajectory is a
# straight line as soon as $\lambda = (\mu/\sigma)\sqrt{N}$ is a few units: the sum over many steps is a
# low-pass filter that keeps the drift and averages the noise away. Adam rescales drift and noise alike, so
# its trajectories follow the same curve (triangles below).

# %%
T_demo = paper.N_CHECKPOINTS  # the paper's number of checkpoints (steps 0, 100, ..., 1300)
markdown_table([{"lambda = drift / accumulated noise": lam,
                 "mean R^2": lp.expected_r2(lam / math.sqrt(T_demo - 1), T_demo),
                 "median R^2": lp.median_r2(lam / math.sqrt(T_demo - 1), T_demo),
                 "ratio approximation": lp.r2_ratio_approx(lam / math.sqrt(T_demo - 1), T_demo)}
                for lam in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)])

# %%
fig = lt.theory_figure(n_checkpoints=T_demo, n_params=P.sim_params, n_points=P.theory_points, seed=P.seed)
save_figure(fig, "04_theory")

# %% [markdown]
# ### Both ways to lose linearity
# The filter needs two things: noise to average out, and a drift to keep. Without noise, a drift that itself
# bends (gradient descent approaching an optimum, as in SFT on a loss that shrinks as it is minimised) is
# not a line; without drift, what is left is a random walk, whose median $R^2$ at 14 checkpoints is only
# about 0.45. The left column is the regime the paper argues RLVR is in: a small drift under much noise.

# %%
fig = lt.failure_modes_figure(n_checkpoints=T_demo, n_params=P.sim_params, seed=P.seed)
save_figure(fig, "04_failure_modes")
print(f"pure random walk (mu = 0), median R^2: {lp.median_r2(0.0, T_demo):.3f} at T = {T_demo}, "
      f"{lp.median_r2(0.0, 11):.3f} at T = 11 (the noisy-SFT runs below), "
      f"{lp.median_r2(0.0, 9):.3f} at T = 9 (the robustness runs)")

# %% [markdown]
# ### Explore: SNR and K
# Set `interactive = True` (in Jupyter) for sliders over the per-step SNR and the spacing $K$; under papermill
# the figure below is drawn at the given values.

# %%
explorer = lt.snr_explorer(interactive, snr_db=-20.0, steps_between=100, n_checkpoints=T_demo, n_params=P.sim_params,
                           n_points=P.theory_points, seed=P.seed)
if interactive:
    display(explorer)
else:
    save_figure(explorer, "04_explorer")

# %% [markdown]
# ## 2. Figure 3 on our model: SFT with injected token-level noise
#
# The paper makes SFT noisier on purpose and watches its weight linearity. We weight the negative
# log-likelihood of every answer token by a random number (`lowpass.token_noise_weights`, used by
# `sft.train_sft` when `SFTConfig.noise_snr_db` is set or `zero_signal=True`):
#
# $$ \mathcal{L} = \frac{1}{N}\sum_{i=1}^{N} w_i\,\bigl(-\log p_\theta(y_i \mid x, y_{<i})\bigr), \qquad
#    w_i = a + \sigma\,\varepsilon_i,\quad \varepsilon_i = \pm 1 \text{ with probability } \tfrac12, $$
#
# independent per token and step, with
#
# $$ \mathrm{SNR_{dB}} = 20 \log_{10}\frac{a}{\sigma}, \qquad a^2 + \sigma^2 = 1 . $$
#
# $\mathbb{E}[w_i] = a$ carries the supervised signal; the sign flips carry zero-mean noise of standard
# deviation $\sigma$. The power normalisation keeps $\mathbb{E}[w_i^2] = 1$, so the loss scale and the
# gradient norm seen by clipping stay comparable across the sweep. Plain SFT is $(a, \sigma) = (1, 0)$, the
# zero-signal control $(0, 1)$.
#
# **Which learning rate.** At tiny scale, plain SFT at the RL learning rate is already about as linear as
# RL (02's "same lr and steps" comparison), which leaves nothing for noise to repair. So we run the
# sweep twice: at `sft_high_lr` = 1e-3, the customary SFT rate for this model (the warm start's) and far
# above the RL rate, where plain SFT reaches its held-out accuracy plateau early and then wanders (the
# paper's non-linear SFT baseline: a drift that bends, then noise without drift), and at the RL run's own
# learning rate. The tables below show the plain-SFT numbers behind that choice. Every run starts from the
# RL start (the warm start after its cool-down); batch size, steps and checkpoint spacing are the same for
# all of them.

# %%
markdown_table([{"setting": "plain SFT", "a": 1.0, "sigma": 0.0}]
               + [{"setting": f"{db:g} dB", "a": lp.noise_amplitudes(db)[0], "sigma": lp.noise_amplitudes(db)[1]}
                  for db in P.snr_dbs]
               + [{"setting": "zero signal", "a": 0.0, "sigma": 1.0}])

# %%
sft_bases = [matched_sft(rl, steps=P.sft_steps, lr=lr, ckpt_every=P.sft_ckpt_every) for lr in (P.sft_high_lr, rl.lr)]
sft_settings = [s for base in sft_bases for s in rb.snr_settings(base, P.snr_dbs)]
snr_rows = rb.sweep_rows(sft_settings, emb)
fig = lt.plot_snr_sweep(snr_rows, show_paper=True)
save_figure(fig, "04_snr_sweep")

# %% [markdown]
# ### What we measured
# Weight $R^2$ of the active parameters (range over the checkpoints > 1e-4 and at least four distinct
# values; each scalar counts once, so the mean and median are the paper's active-parameter "weighted"
# statistics), with the held-out greedy accuracy at the first and last checkpoint and the relative weight
# change $\lVert\theta_T - \theta_0\rVert / \lVert\theta_0\rVert$.

# %%
markdown_table(rb.table_rows(snr_rows, ["category", "label", "median", "mean", "std", "frac_above", "rel_change",
                                        "drift_cos", "acc_start", "acc_end"]))

# %%
by_lr = {r["category"]: r for r in snr_rows if r["label"] == "plain SFT"}
for cat, r in by_lr.items():
    print(f"{cat}: plain SFT weight R^2 median {r['median']:.3f} (mean {r['mean']:.3f}), held-out greedy accuracy "
          f"{r['acc_start']:.2f} -> {r['acc_end']:.2f}")
print(f"paper: SFT baseline median ~{paper.SNR_BASELINE_MEDIAN}, peak median {paper.SNR_PEAK_MEDIAN} at "
      f"{paper.SNR_PEAK_DB:g} dB; random-walk median at our "
      f"{snr_rows[0]['checkpoints']} checkpoints: {lp.median_r2(0.0, snr_rows[0]['checkpoints']):.3f}")
for cat in dict.fromkeys(r["category"] for r in snr_rows):
    print(rb.describe_snr_finding([r for r in snr_rows if r["category"] == cat]))
for cat, key in zip(dict.fromkeys(r["category"] for r in snr_rows), ("c", "c_rl_lr")):
    name = f"noise-injected SFT ({cat}): median weight R^2 at the best moderate SNR minus plain SFT's"
    goal = f"> {paper.FINDING_C['margin']}, and the lowest SNR and zero signal fall back below the peak"
    try:
        fc = rb.snr_finding([r for r in snr_rows if r["category"] == cat])
    except ValueError as e:  # a sweep without the settings the finding needs (smoke)
        findings.append(Finding(key, name, None, None, None, goal, "not judged", "04_lowpass_theory", note=str(e)))
        continue
    findings.append(Finding(key, name, fc["peak"] - fc["plain"], None,
                            round(paper.SNR_PEAK_MEDIAN - paper.SNR_BASELINE_MEDIAN, 3), goal,
                            "holds" if fc["holds"] else "fails", "04_lowpass_theory",
                            note=f"plain {fc['plain']:.3f}, peak {fc['peak']:.3f} at {fc['peak_db']:g} dB, "
                                 f"{fc['lowest_db']:g} dB {fc['lowest']:.3f}, zero signal {fc['zero_signal']:.3f}"))

# %% [markdown]
# ### Theory against measurement
# How noisy is each setting, in the theory's terms? At the RL start, where every run begins, we measure the
# mean and variance of every scalar parameter's plain SFT gradient $G$ over `grad_batches` batches, and the
# variance of the gradient $N$ of the same batches' loss under random signs alone. The injected loss has
# gradient $aG + \sigma N$, and $N$ has mean zero given the batch, so the per-step SNR of each parameter
# under every setting follows (`robustness.injected_snr`; the unit test checks it against a direct estimate):
#
# $$ \mathrm{SNR}_p = \frac{a\,|\mathbb{E}\,G_p|}{\sqrt{a^2\,\mathrm{Var}\,G_p + \sigma^2\,\mathrm{Var}\,N_p}} . $$
#
# If that drift stayed constant over the run, part 1 would predict the median $R^2$ printed beside it
# (median SNR over parameters, $\lambda = \mathrm{SNR}\sqrt{N}$ for $N$ steps read at $T$ checkpoints).
# Whether the drift did stay constant is measured directly by `drift_cos`, the cosine between the weight
# change of the first and of the second half of each run (1: a straight line; 0: a random walk; negative:
# the second half undoes the first).

# %%
warm = ensure_warm_start(emb)
moments = rb.gradient_moments(load_model(warm), load_tokenizer(warm), AdditionTask(emb.task), sft_bases[0].batch_size,
                              P.grad_batches, P.seed)
T_sft, N_sft = snr_rows[0]["checkpoints"], snr_rows[0]["last_step"]
theory_rows = []
for s in [x for x in sft_settings if x.category == sft_settings[0].category]:
    snr = float(np.nanmedian(rb.injected_snr(moments, s.config.noise_snr_db, s.config.zero_signal)))
    measured = {f"{r['category']}: median R^2 / drift_cos": f"{r['median']:.3f} / {r['drift_cos']:+.2f}"
                for r in snr_rows if r["label"] == s.label}
    theory_rows.append({"setting": s.label, "median gradient SNR per step": snr, "lambda": snr * math.sqrt(N_sft),
                        "theory median R^2 (constant drift)": lp.median_r2(snr, T_sft, N_sft // (T_sft - 1)),
                        **measured})
display(markdown_table(theory_rows))
for cat in dict.fromkeys(r["category"] for r in snr_rows):
    gap = [r["median"] - t["theory median R^2 (constant drift)"] for t in theory_rows for r in snr_rows
           if r["category"] == cat and r["label"] == t["setting"]]
    print(f"{cat}: measured minus constant-drift theory, median R^2: "
          + ", ".join(f"{t['setting']} {g:+.2f}" for t, g in zip(theory_rows, gap)))

# %% [markdown]
# **Reading the result.** The low-pass theory of part 1 says that $R^2$ can only fall as the per-step SNR
# falls: noise helps only when it is averaged into a drift that was there anyway, and injecting noise lowers
# that SNR. The paper's Figure 3 needs a second ingredient, a plain-SFT trajectory made non-linear by its
# drift bending, which injected noise would straighten by slowing the run down. With Adam it cannot simply
# slow the run: each step still moves every parameter by about one learning rate, only more of it at random.
# Compare the measured medians with the constant-drift prediction and look at `drift_cos`: where the
# prediction is near the measurement, the sweep is just the filter's SNR curve; where the measurement falls
# below it, the drift bent or reversed (small or negative `drift_cos`), and noise made that worse, not better.
# The sentences printed above state, from the numbers, whether finding (c) holds.

# %% [markdown]
# ## 3. Figure 4: where the output change comes from
#
# For one linear layer $y = W x + b$ run on the same fixed inputs at two checkpoints, the output change
# splits exactly into three parts (`decomposition.split_output_change`):
#
# $$ y_1 - y_0 = \underbrace{W_0 (x_1 - x_0)}_{\text{input change}}
#              + \underbrace{(W_1 - W_0)\, x_0 + (b_1 - b_0)}_{\text{weight change}}
#              + \underbrace{(W_1 - W_0)(x_1 - x_0)}_{\text{second order}} . $$
#
# The input change of a layer is itself the output change of the layers below, so if the second-order part
# is negligible, the output change is linear in the weight changes of all layers: weights moving on a line
# give outputs moving (nearly) on a line. We measure the Frobenius norm of each part over every token of
# `n_probe` fixed held-out sequences (prompt and correct answer, teacher-forced), for every `nn.Linear`
# (attention q/k/v/o, MLP gate/up/down, output head), between every pair of consecutive checkpoints of
# the RL trajectory of the recipe (`rl_recipe`; at `cpu` the cheaper 32x16 run, 01's run elsewhere).

# %%
rl_run = ensure_rl_run(rl, emb)
ckpts = find_checkpoints(rl_run)
tok = load_tokenizer(ckpts[0][1])
probe_ids, _, _ = sequence_batch(tok, AdditionTask(emb.task).eval_problems[:P.n_probe])  # [n_probe, L]
probe_mask = torch.ones_like(probe_ids)
pairs = dc.trajectory_decomposition(ckpts, probe_ids, probe_mask)
whole = dc.trajectory_decomposition([ckpts[0], ckpts[-1]], probe_ids, probe_mask, progress=False)[0]
fig = dc.plot_trajectory_decomposition(pairs)
save_figure(fig, "04_decomposition_trajectory")

# %%
d = dc.second_order_summary(pairs)
worst = next(p for p in pairs if (p.step0, p.step1) == d["worst_pair"])
fig = dc.plot_layer_decomposition(worst.records, title=f"per layer, steps {worst.step0} -> {worst.step1} "
                                                       "(the pair with the largest single-layer second-order share)")
save_figure(fig, "04_decomposition_layers")

# %%
layer = "model.layers.1.mlp.down_proj"
values = dc.output_change_values(load_model(ckpts[0][1]), load_model(ckpts[1][1]), probe_ids, probe_mask, layer)
fig = dc.plot_output_change_histogram(values, f"{layer}, steps {ckpts[0][0]} -> {ckpts[1][0]}")
save_figure(fig, "04_output_change_histogram")

# %% [markdown]
# ### What we measured
# The second-order share is the norm of $(W_1 - W_0)(x_1 - x_0)$ over the norm of the whole change
# $y_1 - y_0$, all linear layers together, for each pair of consecutive checkpoints; the worst single layer
# is shown too, and the first-to-last pair (the whole run in one jump) for scale.

# %%
tot = whole.totals()
markdown_table([
    {"quantity": "checkpoint pairs", "ours": d["pairs"], "paper": "-"},
    {"quantity": "second order / total, all layers: largest over pairs", "ours": d["max_fraction"],
     "paper": "negligible"},
    {"quantity": "second order / total, all layers: median over pairs", "ours": d["median_fraction"],
     "paper": "negligible"},
    {"quantity": f"worst single layer ({d['worst_layer']}, steps {d['worst_pair'][0]}->{d['worst_pair'][1]})",
     "ours": d["worst_layer_fraction"], "paper": "-"},
    {"quantity": f"whole run in one jump (steps {whole.step0}->{whole.step1}), all layers",
     "ours": tot["second_order_fraction"], "paper": "-"},
])

# %%
print(f"finding (d) {'holds' if d['holds'] else 'does not hold'}: the second-order part is at most "
      f"{100 * d['max_fraction']:.2f}% of the total output change between consecutive checkpoints "
      f"(median {100 * d['median_fraction']:.2f}%; threshold {100 * d['threshold']:.0f}%); the worst single layer "
      f"reaches {100 * d['worst_layer_fraction']:.2f}%, and the whole run taken as one jump "
      f"{100 * tot['second_order_fraction']:.2f}%.")
findings.append(Finding("d", "second-order share of the output change, largest over consecutive checkpoint pairs",
                        d["max_fraction"], None, "negligible", f"< {d['threshold']:.0%}",
                        "holds" if paper.second_order_negligible(d["max_fraction"], d["threshold"]) else "fails",
                        "04_lowpass_theory", note=f"median over pairs {d['median_fraction']:.4f}; recipe: {recipe(rl)}"))

# %% [markdown]
# ## 4. Robustness on our model (a small Figure 2)
#
# > "Robustness (Figure 2): 1.5B-32B, Qwen and Llama, dense and MoE, reasoning and non-reasoning data,
# > GRPO / REINFORCE++ / GSPO, AdamW / SGD, lr 1e-6 / 3e-6 / 1e-5, batch 128 / 256, 8 / 16 rollouts [...]"
# > — PAPER.md, Setting; "The linear regime persists with SGD instead of AdamW" — Sec. 5
#
# One factor at a time from the embedded RL run (GRPO, AdamW, 32 prompts x 16 rollouts, the profile's learning
# rate): SGD instead of AdamW, a larger learning rate, 8 rollouts per prompt, and REINFORCE++'s
# batch-normalised advantage instead of GRPO's group-normalised one. Each run lasts `robust_steps` steps with
# the embedded run's checkpoint spacing; the baseline row is the first `robust_steps` steps of the embedded
# trajectory itself (the trainer has no schedule that depends on the total number of steps, so this is the
# same trajectory).
#
# **The SGD learning rate is chosen by measurement.** Plain SGD with gradient clipping at 1.0 moves at most
# one learning rate (in L2 norm) per step, so it needs a rate hundreds of times AdamW's. The first table below
# trains the first `sgd_calibration_steps` steps (100 at `cpu`) from the RL start with SGD at three rates around
# `sgd_lr` and reads AdamW's first as many steps from the baseline run: the relative weight change, the reward of
# the last 20 steps and the held-out greedy accuracy. A rate that moves the weights much further collapses the
# policy (its steps concentrate on the few directions with the largest gradient); the grid uses the largest rate
# that does not (greedy accuracy down by at most 0.05), and the sentence under the table checks that `sgd_lr` is
# that rate.
#
# The runs are trained with `compute_robustness=True` at the `cpu` profile (`make reproduce` does it; cached in
# `runs/`) and their tables are committed as `notebooks/data/04_robustness_cpu.json` with the command, commit, date
# and wall time that made them; `make run` reads those tables instead of training. `smoke` computes a tiny grid of
# its own (the SGD row, 30 steps, and its calibration) into its output folder, through the same code.

# %%
cache = (repo_root() / P.robustness_cache if P.robustness_cache
         else output_path(f"04_robustness_{profile}.json", profile, reading=not P.compute_robustness))
if P.compute_robustness:
    robust_settings = rb.robustness_settings(rl, P.robust_steps, lrs=P.robust_lrs, sgd_lr=P.sgd_lr,
                                             group_sizes=P.group_sizes, estimators=P.estimators)
    calibrate = {"sgd_calibration": lambda: rb.sgd_calibration_rows(rl, rb.sgd_candidates(P.sgd_lr), emb,
                                                                    steps=P.sgd_calibration_steps)}
    robust_table, source = rb.cached_rows(cache, robust_settings, emb, recompute=recompute_robustness,
                                          note=f"04_lowpass_theory robustness grid, {profile} profile", extra=calibrate,
                                          command=f"python -m rlvr_nb.notebook.run --profile {profile} --only 04 -p compute_robustness True")
else:
    robust_table, source = rb.load_table(cache), f"read from {cache} (computed at the cpu profile)"
robust_rows = robust_table["rows"]
print("robustness table:", source.replace(f"{repo_root()}/", ""))
calibration = robust_table.get("sgd_calibration")
if calibration:
    display(markdown_table(rb.table_rows(calibration, ["optimizer", "lr", "steps", "rel_change", "reward_last20",
                                                       "acc_start", "acc_end"])))
    stable = rb.largest_stable_lr(calibration)
    print(f"largest SGD rate whose greedy accuracy falls by at most 0.05: {stable}; the grid's sgd_lr {P.sgd_lr:g} "
          + ("is that rate." if stable == P.sgd_lr else "is NOT that rate: read the grid's SGD row with care."))
else:
    print("the committed table predates the SGD calibration: run this notebook at cpu to compute it")
fig = rb.plot_robustness(robust_rows)
save_figure(fig, "04_robustness")

# %% [markdown]
# ### What we measured
# Median, quartiles and mean of the weight $R^2$ of active parameters for each run, the share of the weights
# that are active (`coverage`: the statistics describe only those), the relative weight change, `drift_cos`
# (as above) and the held-out greedy accuracy at the first and last analysed checkpoint. The paper's range of
# medians over its RL settings is printed under the table.

# %%
for r in robust_rows:
    r["coverage"] = r["active"] / r["total"] if r["total"] else None
markdown_table(rb.table_rows(robust_rows, ["category", "label", "median", "q25", "q75", "mean", "frac_above",
                                           "coverage", "rel_change", "drift_cos", "acc_start", "acc_end"]))

# %%
print("\n".join(lt.describe_grid(robust_rows)))

# %% [markdown]
# ## 5. Beyond the paper: does sparser credit make RL more linear?
#
# The paper's account is that RLVR is linear *because* its credit is noisy: the reward judges only the final
# answer, and its gradient is spread over every token the model wrote. Our bare answer is 5 tokens (4 digits and
# the end token), so outcome-only credit is barely sparser than SFT's per-token supervision, and at the same
# learning rate our SFT is about as linear as RL (02, 03). The test: make the credit sparser on purpose.
#
# **The task variant** (`tasks.ScratchpadTaskConfig`). The model first writes $k$ tokens of working, one record
# per column from the least significant one, then `\n`, then the answer: `carries` writes each column's carry
# ($k$ = 3 for 3 digits: `123+989=` → `111\n2111`), `sums` each column's total as two digits
# ($k$ = 6: `121111\n2111`). RL is rewarded on the final answer only (the text after the last `\n`; the working
# is never graded); SFT imitates the whole response. Each variant has its own warm start (the embedded recipe:
# SFT from scratch until 10% sampled accuracy, then the short cool-down), and from it one RL and one SFT run at
# the same learning rate, steps, checkpoint spacing and prompts per step.
#
# **What is measured** for each run: the weight $R^2$ and token log-prob $R^2$ medians (probes: responses
# sampled from the run's start), and the per-coordinate gradient SNR per step at the start, $|\mathbb{E}\,g_p| /
# \mathrm{sd}(g_p)$ over `grad_batches` batches (RL: the policy gradient of fresh rollouts; SFT: the NLL
# gradient), with the median $R^2$ part 1's constant-drift theory gives for the median SNR. If the mechanism
# is right, RL's SNR should fall as $k$ grows and RL should pull ahead of SFT in linearity.
#
# **Two controls for Adam.** AdamW moves a weight whose gradient keeps its sign by about one learning rate a
# step, a straight line whatever the loss, which alone could make SFT as linear as RL. (i) RL and SFT with plain SGD at *matched movement*: SFT's learning rate is set so that it
# travels the same path length as RL (the sum of the weight distances between consecutive checkpoints; one
# trial run, then one rescaling). (ii) SFT from the same start towards a target the model does not produce,
# the answer in forward order: the paper's SFT learns a new distribution, ours otherwise only sharpens one.
#
# The study trains a warm start and two runs per scratchpad, and the controls: longer than `make run` allows,
# so at `cpu` the committed table is read (its provenance below: command, commit, date, wall time);
# `recompute_mechanism=True` recomputes it (so does `python -m rlvr_nb.experiments.mechanism --profile cpu`).
# `smoke` recomputes it with tiny numbers.

# %%
mech_study = mech.make_study(P.mechanism_study)
mech_path = repo_root() / P.mechanism_table if P.mechanism_table else output_path(f"04_mechanism_{profile}.json", profile)
mech_tab = mech.mechanism_table(mech_path, P.recompute_mechanism, mech_study, emb, profile)
mech_rows = mech_tab["rows"]
print(f"mechanism table {mech_path.relative_to(repo_root()) if mech_path.is_relative_to(repo_root()) else mech_path}: "
      f"{mech_tab['provenance']}")
print(f"runs: {recipe(mech.rl_config(mech_study, emb.task))}; SFT: batch {mech_study.prompts_per_step}, same lr and steps; "
      f"scratchpads {[s or 'none' for s in mech_study.scratchpads]}")
fig = lt.plot_mechanism(mech_rows)
save_figure(fig, "04_mechanism")

# %% [markdown]
# ### What we measured
# One row per run. `snr rms` is the root-mean-square of the per-coordinate SNR (most single coordinates are
# below what `grad_batches` batches resolve, about $1/\sqrt{n}$, where the median of the debiased estimate reads
# 0); `theory median` is part 1's median $R^2$ for a constant drift at the measured median SNR; `active` is the
# share of weights the weight $R^2$ covers; `path` the distance travelled; `acc_*` the held-out greedy accuracy
# on the run's own task (for the new-target run: on the forward order).

# %%
markdown_table(mech.table_rows(mech_rows))

# %%
for line in mech.describe(mech_rows):
    print(line)
print("\nThe warm starts differ: held-out sampled accuracy at each variant's start (RL's reward rate): "
      + ", ".join(f"k = {r['k']}: {r['sampled_start']:.3f}" for r in mech_rows if r["study"] == "scratchpad" and r["method"] == "RL")
      + "; every RL run's reward over its first and last 20 steps: "
      + ", ".join(f"k = {r['k']}: {r['reward_start']:.3f} -> {r['reward_end']:.3f}" for r in mech_rows
                  if r["method"] == "RL" and r["study"] == "scratchpad"))
findings += mech.findings(mech_rows, "04_lowpass_theory")

# %% [markdown]
# **Reading the result.** The sentences above are the verdicts, computed from the table. Two things to keep in
# mind when reading them: each scratchpad variant starts from its own warm start, so RL's reward rate at the
# start differs between them (printed last), and RL's per-step SNR depends on that rate as much as on $k$; and
# the runs are short, so a weak drift under much noise reads as a random walk (part 1) whatever the length of
# the response. Part 1's filter only ever lowers $R^2$ as the SNR falls: sparser credit can make RL more linear
# than SFT only through SFT's drift bending more, which is what the cosine of the two halves measures.

# %% [markdown]
# ## Findings of this notebook
# Each value is computed above; the verdicts are the printed ones. `00_overview` and the README show these rows.

# %%
print(f"written to {record_findings('04_lowpass_theory', findings, profile)}")
markdown_table([{"finding": f.key, "name": f.name, "ours": f.value, "paper": f.paper, "goal": f.threshold,
                 "verdict": f.verdict} for f in findings])
