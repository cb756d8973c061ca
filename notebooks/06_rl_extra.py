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
# # 06 · RL-Extra: periodic re-grounding
#
# > "weight-space extrapolation matches the performance of standard RL optimization while achieving a 6.1x
# > training speedup through periodic re-grounding." — the paper's abstract
#
# > "Periodic re-grounding ("RL-Extra"): repeat { m real RL steps from the current model; extrapolate from
# > the model at the start of the block to the model after m steps by n further steps, alpha = (m + n) / m;
# > continue RL from the extrapolated model }. [...] (m, n) in {(100,100), (300,300), (300,600), (20,100)};
# > 1.3x-1.8x typical, up to 6.1x with (20, 100) to reach AIME24 >= 0.38. [...] at equal real steps
# > (200/400/800/1200) re-grounding beats standard RL on average by +5.2%, +6.3%, +5.7%, +2.3%." — PAPER.md Sec. 6
#
# If weights move on a straight line, m real steps tell us where the next n steps would go, for free. Each
# block of m real RL steps is followed by a weight extrapolation from the block's start to its end,
#
# $$W \;=\; W_{\text{start}} + \alpha\,(W_{\text{end}} - W_{\text{start}}),\qquad \alpha = \frac{m+n}{m},$$
#
# and RL continues from $W$ ("re-grounding": real RL corrects whatever the straight line got wrong). A model
# then has a *real* step (RL steps spent) and a *virtual* step (real plus extrapolated). The paper's measure:
#
# $$\text{speed-up} \;=\; \frac{\text{standard-RL real steps to reach a target accuracy}}{\text{re-grounding real steps to reach it}}.$$
#
# The loop is `rlvr_nb.regrounding.run_regrounding`; every block is a `train_rl` run (a verl run at `gpu`).

# %% tags=["parameters"]
profile = "cpu"  # smoke | cpu | gpu
rl_recipe = None  # RLConfig fields changed from the profile's RL run (cpu: the cheaper first default, profiles.CHEAP_RL)
seeds = None  # seeds of standard RL and of every re-grounding setting (cpu [0, 1, 2])
std_steps = None  # RL steps of the extra standard-RL seeds; seed 0 is the recipe's full run (cpu 500)
budget = None  # real RL steps of every re-grounding run (cpu 200)
settings = None  # fixed (m, n) settings (cpu [(50, 50), (50, 100), (10, 50), (100, 100)])
optimizer = None  # AdamW state at a re-grounding: "keep" or "reset" (cpu "keep")
reset_setting = None  # (m, n) run again with the other optimizer choice (cpu (50, 50))
reset_seeds = None  # seeds of that comparison (cpu [0])
r2_m = None  # m of the R^2-guided horizon (cpu 50)
r2_checkpoints = None  # checkpoints per block for its R^2 (cpu 6)
r2_grow_at = None  # grow n when the drift-to-noise ratio read from the block R^2 reaches this (cpu 2.0)
r2_shrink_below = None  # shrink n when it is below this (cpu 1.0)
target = None  # held-out accuracy to reach, fixed before the re-grounding runs (cpu 0.26)
eval_every = None  # real steps between evaluated models (cpu 50)
eval_k = None  # samples per held-out problem at temperature 1 (cpu 4)
block_eval_problems = None  # the trainer's own per-checkpoint evaluation inside blocks, a log only (cpu 64)
model_path = None  # gpu: HF model directory to start from
data_path = None  # gpu (required): training data (JSONL/parquet with question/answer)
eval_data = None  # gpu (required): held-out data of the same kind
n_gpus = None  # gpu: GPUs per verl run

# %%
import math
from dataclasses import replace

import numpy as np

from rlvr_nb import paper
from rlvr_nb.notebook import profiles
from rlvr_nb.embedded import ensure_rl_run, runs_root
from rlvr_nb.evaluate import EvalConfig
from rlvr_nb.figures import save_figure
from rlvr_nb.experiments.rl_extra import (accuracy_curve, best_speedup, budget_rows, ensure_regrounding_run,
                                          ensure_verl_standard_run, extrapolation_jump, models_at_real_steps,
                                          plot_regrounding, speedup_rows, speedup_summary, standard_models)
from rlvr_nb.regrounding import RegroundConfig, r2_for_drift_to_noise, read_ledger, regrounding_alpha
from rlvr_nb.notebook.report import markdown_table
from rlvr_nb.tasks import AdditionTask

P = profiles.resolve("06_rl_extra", profile, seeds=seeds, std_steps=std_steps, budget=budget, settings=settings,
                     optimizer=optimizer, reset_setting=reset_setting, reset_seeds=reset_seeds, r2_m=r2_m,
                     r2_checkpoints=r2_checkpoints, r2_grow_at=r2_grow_at, r2_shrink_below=r2_shrink_below,
                     target=target, eval_every=eval_every, eval_k=eval_k, block_eval_problems=block_eval_problems,
                     model_path=model_path, data_path=data_path, eval_data=eval_data, n_gpus=n_gpus, rl_recipe=rl_recipe)
gpu = profile == "gpu"
rl = profiles.rl_config(profile, **P.rl_recipe)  # 01's recipe (GRPO, AdamW, clip 0.2/0.28, no KL); cpu: 32x16, 1000 steps
emb = profiles.embedded_config(profile)
grid = list(range(0, P.budget + 1, P.eval_every))  # real steps at which every re-grounding run is evaluated
std_grid = list(range(0, P.std_steps + 1, P.eval_every))
rl

# %% [markdown]
# ## The target, fixed before the runs
# The speed-up depends on the target, so it is a parameter, chosen from the standard-RL trajectory of
# the recipe (seed 0; at `cpu` the cheaper 32x16 recipe `rl_recipe`, 01's run elsewhere) before any re-grounding run: held-out accuracy at T = 1 rises almost linearly from 0.24 to 0.30 over
# its 1000 steps and passes **0.26** after about 290. A target standard RL reaches after ~300 steps leaves room
# to see a 2x speed-up inside the re-grounding budget of 200 real steps (it must be reached by ~150), and the
# other standard seeds' 500-step runs should cross it too. Accuracy is avg@k over the 512 held-out problems,
# every model sampled with the same seed (common random numbers: close models draw mostly the same samples, so
# the differences between them are far less noisy than each accuracy). Because of that, the level of every curve
# carries the same sampling offset (about ±0.01 at k = 4), so the target only means something for the
# evaluation it was chosen on: avg@4 with seed 0.

# %%
print(f"target: held-out avg@{P.eval_k} = {P.target} (T = 1), re-grounding budget {P.budget} real steps, "
      f"standard RL evaluated to {P.std_steps} steps, seeds {P.seeds}")

# %% [markdown]
# ## Standard RL, three seeds
# Seed 0 is the recipe's full run (cached; 01's run at `smoke` and `gpu`); the other seeds are the same recipe with another seed, for
# `std_steps` steps (at `gpu`: verl runs from `model_path`).

# %%
def standard_run(seed: int):
    cfg = rl if seed == rl.seed else replace(rl, seed=seed, steps=P.std_steps)
    if gpu:
        return ensure_verl_standard_run(cfg, P.model_path, P.data_path, P.n_gpus)  # seed 0: 01's run
    return ensure_rl_run(cfg, emb)


std_runs = {s: standard_run(s) for s in P.seeds}

# %% [markdown]
# ## Re-grounding runs
# Settings in the paper's spirit, scaled to our 1000-step trajectory: equal m = n, n = 2m, a short-m / long-n
# setting like the paper's (20, 100), and longer equal blocks. Each block trains with the seed
# `seed + 1000 * block` (fresh problems; block 0 is exactly standard RL's first m steps).
#
# **Optimizer state.** We *keep* AdamW's moments across a re-grounding (`optimizer="keep"`): they are running
# averages of the gradient whose drift direction is the extrapolation's own direction, so they stay a sensible
# estimate after the jump, and they avoid the ~lr x sign(g) kick of Adam's first update after a reset. The
# other choice, *reset* (what successive verl runs do, hence the `gpu` profile), is run beside it below.
#
# **R²-guided horizon (ours, not the paper's).** With checkpoints inside each block we measure the block's
# median per-weight $R^2$ against the step (`rlvr_nb.linearity`). Extrapolating a block by n steps adds
# $n\mu$ of drift and $(n/m)\,\sigma\sqrt{m}$ of amplified noise, so it adds more signal than noise exactly
# when the block's drift-to-noise ratio $\lambda = \mu\sqrt{m}/\sigma$ exceeds 1. The low-pass theory of 04
# maps $\lambda$ to the median $R^2$ at our number of checkpoints; the rule doubles n while the block's
# $R^2$ says $\lambda \ge 2$ and halves it when $\lambda < 1$.

# %%
task_problems = AdditionTask(emb.task).eval_problems
rl_blocks = replace(rl, eval_problems=P.block_eval_problems)
verl_options = {"train_data": P.data_path, "n_gpus": P.n_gpus} if gpu else None
T = P.r2_checkpoints
configs = {f"(m={m}, n={n})": RegroundConfig(m=m, n=n, budget=P.budget, optimizer=P.optimizer,
                                             ckpt_every=math.gcd(m, P.eval_every)) for m, n in P.settings}
r2_name = f"R²-guided (m={P.r2_m})"
configs[r2_name] = RegroundConfig(m=P.r2_m, n=P.r2_m, budget=P.budget, optimizer=P.optimizer, horizon="r2",
                                  r2_checkpoints=T, r2_high=r2_for_drift_to_noise(P.r2_grow_at, T),
                                  r2_low=r2_for_drift_to_noise(P.r2_shrink_below, T),
                                  # gpu: sample 0.1% of each tensor (the paper's mode); bf16 steps are caught by
                                  # the 4-distinct-values filter, and lr 1e-6 moves a weight < 1e-4 inside a block
                                  r2_sample_fraction=0.001 if gpu else None, r2_min_range=0.0 if gpu else 1e-4)
other = "reset" if P.optimizer == "keep" else "keep"
reset_configs = {} if P.reset_setting is None else {
    f"(m={P.reset_setting[0]}, n={P.reset_setting[1]}) {other}": RegroundConfig(
        m=P.reset_setting[0], n=P.reset_setting[1], budget=P.budget, optimizer=other,
        ckpt_every=math.gcd(P.reset_setting[0], P.eval_every))}


def regrounding_run(cfg: RegroundConfig, seed: int):
    return ensure_regrounding_run(cfg, replace(rl_blocks, seed=seed), emb, trainer="verl" if gpu else "embedded",
                                  verl_options=verl_options, init_dir=P.model_path if gpu else None)


rg_runs = {name: {s: regrounding_run(cfg, s) for s in P.seeds} for name, cfg in configs.items()}
rg_runs.update({name: {s: regrounding_run(cfg, s) for s in P.reset_seeds} for name, cfg in reset_configs.items()})
markdown_table([{"setting": name, "m": c.m, "n": c.n if c.horizon == "fixed" else f"{c.n} at first, then R²-guided",
                 "alpha": regrounding_alpha(c.m, c.n), "blocks": P.budget // c.m, "optimizer": c.optimizer,
                 "virtual steps at the budget (seed mean)": sum(read_ledger(r)[-1]["virtual_step"] for r in runs.values()) / len(runs)}
                for (name, runs), c in zip(rg_runs.items(), [*configs.values(), *reset_configs.values()])])

# %% [markdown]
# ## Held-out accuracy against real RL steps (Figure 6 on our model)
# Each re-grounding run is evaluated every `eval_every` real steps: at a block boundary the extrapolated
# model (it cost no real step), inside a block the block's checkpoint. Lines are seed means, bands the
# min-max over seeds. The middle panel puts the same models at their virtual step: a perfect extrapolation
# would lie on standard RL there.

# %%
if gpu:  # prompts formatted as the runs' training prompts were (chat template, \boxed{} instruction)
    from rlvr_nb.backends.verl_inputs import heldout_problems
    from rlvr_nb.backends.vllm_backend import VllmPolicy

    problems, grader, policy = heldout_problems(P.eval_data, std_runs[P.seeds[0]]), "math", VllmPolicy
else:
    problems, grader, policy = task_problems, "exact", None
eval_cfg = EvalConfig(k=P.eval_k, temperature=1.0, max_new_tokens=rl.max_new_tokens)
cache = runs_root() / "eval_cache"


def curve(models, label):
    return accuracy_curve(models, problems, eval_cfg, cache, label, grader=grader, policy=policy)


std = {s: curve(standard_models(run, std_grid), f"standard seed {s}") for s, run in std_runs.items()}
curves = {name: {s: curve(models_at_real_steps(run, grid), f"{name} seed {s}") for s, run in runs.items()}
          for name, runs in rg_runs.items()}
std_acc = [a for c in std.values() for a in c.accuracy]
zoom = (min(std_acc) - 0.03, max(max(std_acc), P.target) + 0.02)  # standard RL's range: small gaps stay visible
fig = plot_regrounding(std, {name: curves[name] for name in configs}, P.target,
                       {r2_name: [read_ledger(r) for r in rg_runs[r2_name].values()]}, max_real=P.std_steps,
                       ylim=zoom, dashed=[r2_name])
save_figure(fig, "06_regrounding_efficiency")

# %% [markdown]
# ## The same runs, read at their RL checkpoints
# Re-grounding means RL continues from the extrapolated model and corrects it. Reading each run at its RL
# checkpoints instead (at a block boundary, the block's end *before* its extrapolation) separates the two
# effects: how good the extrapolated model is (above), and where RL gets from it (here).

# %%
curves_rl = {name: {s: curve(models_at_real_steps(run, grid, prefer="rl"), f"{name} seed {s} (RL)")
                    for s, run in runs.items()} for name, runs in rg_runs.items()}
fig = plot_regrounding(std, {name: curves_rl[name] for name in configs}, P.target, max_real=P.std_steps, ylim=zoom,
                       dashed=[r2_name], title="re-grounding runs read at their RL checkpoints (block ends before extrapolation)")
save_figure(fig, "06_regrounding_rl_checkpoints")

# %% [markdown]
# ## Speed-up to the target
# Real steps to reach the target by first crossing, interpolated linearly between the two evaluated models
# around it (`steps_to_target(method="interpolate")`); each seed against standard RL with the same seed, and
# the seed-mean curves against each other. A run that never reaches the target within its budget gets a bound
# ("<x": standard steps / budget). Both readings of each run: its newest model, and its RL checkpoints.

# %%
rows = speedup_rows(std, curves, P.target)
rows_rl = speedup_rows(std, curves_rl, P.target)
markdown_table([{"models": "newest (extrapolated at boundaries)", **r} for r in speedup_summary(rows)]
               + [{"models": "RL checkpoints", **r} for r in speedup_summary(rows_rl)])

# %% [markdown]
# ## Accuracy at equal real-step budgets (Table 2 on our model)
# Seed mean ± standard deviation; Δ is the mean over seeds of (re-grounding − standard RL of the same seed).
# Newest models first, then the RL checkpoints of the same runs.

# %%
display(markdown_table(budget_rows(std, curves, grid[1:])))
markdown_table(budget_rows(std, {f"{name} (RL ckpt)": c for name, c in curves_rl.items()}, grid[1:]))

# %% [markdown]
# ## The optimizer state at a re-grounding: keep or reset
# The same (m, n) with AdamW's state kept and reset at every block boundary, read both ways.

# %%
if reset_configs:
    (reset_name,) = reset_configs
    kept_name = f"(m={P.reset_setting[0]}, n={P.reset_setting[1]})"
    std_r = {s: std[s] for s in P.reset_seeds}
    pair = {f"{kept_name} {P.optimizer}": {s: curves[kept_name][s] for s in P.reset_seeds}, reset_name: curves[reset_name],
            f"{kept_name} {P.optimizer} (RL ckpt)": {s: curves_rl[kept_name][s] for s in P.reset_seeds},
            f"{reset_name} (RL ckpt)": curves_rl[reset_name]}
    display(markdown_table(budget_rows(std_r, pair, grid[1:])))
    fig = plot_regrounding(std_r, pair, P.target, max_real=P.budget, title="optimizer state kept or reset", ylim=zoom,
                           dashed=[name for name in pair if name.endswith("(RL ckpt)")])
    save_figure(fig, "06_optimizer_keep_reset")

# %% [markdown]
# ## The R²-guided horizon, block by block
# n chosen for each block, the block's median weight $R^2$ and the thresholds it is compared with
# (the median $R^2$ of a drift + random walk with drift-to-noise ratio 1 and 2 at our checkpoints).

# %%
print(f"thresholds at {T} checkpoints per block: shrink below R^2 = {configs[r2_name].r2_low:.3f} (lambda = "
      f"{P.r2_shrink_below}), grow at R^2 >= {configs[r2_name].r2_high:.3f} (lambda = {P.r2_grow_at}); "
      f"a pure random walk has median R^2 {r2_for_drift_to_noise(0.0, T):.3f}")
markdown_table([{"seed": s, "block": e["block"], "real steps": e["real_step"], "virtual step": e["virtual_step"],
                 "n": e["n"], "block R²": e["block_r2"], "next n": e["next_n"]}
                for s, run in rg_runs[r2_name].items() for e in read_ledger(run) if "next_n" in e])

# %% [markdown]
# ## What we measured
# Finding (f): a speed-up of at least 2x to the target at some (m, n) (the paper: 1.3x-1.8x typical, up to
# 6.1x with (20, 100)); and whether re-grounding beats standard RL at equal real-step budgets (the paper:
# +2.3% to +6.3%).

# %%
def fmt_speedup(r):
    return f"{r['speed-up']:.2f}x" if not math.isnan(r["speed-up"]) else "not reached"


bests = {"newest models": best_speedup(rows), "RL checkpoints": best_speedup(rows_rl)}
holds = {how: paper.speedup_finding_holds(b["speed-up"]) for how, (b, _) in bests.items()}
lo, hi = paper.SPEEDUP_TYPICAL
print(f"finding (f), a speed-up >= {paper.FINDING_F['min_speedup']:g}x to accuracy {P.target} on the seed-mean curves "
      f"(paper: {lo:g}x-{hi:g}x, up to {paper.SPEEDUP_MAX:g}x):")
for how, (b, seeds_rows) in bests.items():
    print(f"  read at its {how}: {'holds' if holds[how] else 'does not hold'}; best {fmt_speedup(b)} with "
          f"{b['setting']} (per seed: {', '.join(fmt_speedup(r) for r in seeds_rows)})")
for how, cs in (("newest models", curves), ("RL checkpoints", curves_rl)):
    deltas = {r["setting"]: r[f"Δ@{P.budget}"] for r in budget_rows(std, cs, [P.budget])[1:]}
    print(f"at {P.budget} real steps, re-grounding minus standard RL ({how}, seed mean): "
          + ", ".join(f"{name} {d:+.3f}" for name, d in deltas.items())
          + " (paper: {:+.1f}% to {:+.1f}%)".format(min(paper.TABLE2_GAIN_PCT.values()), max(paper.TABLE2_GAIN_PCT.values())))
if not all(holds.values()):
    print("tried: " + "; ".join(f"{name} (alpha {regrounding_alpha(c.m, c.n):g}, {c.optimizer} optimizer)"
                                for name, c in {**configs, **reset_configs}.items())
          + f"; {len(P.seeds)} seeds, {P.budget} real steps each.")
print("accuracy change at a jump (extrapolated model minus the block end it came from, seed mean): "
      + ", ".join(f"{name} {np.nanmean([extrapolation_jump(curves[name][s], curves_rl[name][s]) for s in curves[name]]):+.3f}"
                  for name in curves))
ends = [e for run in rg_runs[r2_name].values() for e in read_ledger(run) if e.get("block_r2") is not None]
if ends:
    r2s, c = [e["block_r2"] for e in ends], configs[r2_name]
    print(f"R^2-guided horizon: block median weight R^2 {min(r2s):.3f}-{max(r2s):.3f}; {sum(r < c.r2_low for r in r2s)} of "
          f"{len(r2s)} blocks below drift-to-noise ratio 1 (R^2 {c.r2_low:.3f}), {sum(r >= c.r2_high for r in r2s)} at or above 2 "
          f"(R^2 {c.r2_high:.3f}); n took the values {sorted({e['n'] for e in ends})} (it starts at {c.n})")
