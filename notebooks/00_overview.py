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
# # 00 · Overview: linear dynamics in RLVR training
#
# > "RLVR consistently enters a robust linear regime, where both parameter weights and output
# > log-probabilities, measured rigorously via teacher-forced evaluation, evolve in a highly linear
# > manner (R^2 > 0.7)." — arXiv 2601.04537, abstract
#
# **The paper in one page.** These are the paper's claims; what our runs measured is in the findings table
# below, generated from the notebooks' own outputs.
#
# 1. *Observation (Sec. 4).* Fit every scalar weight against the training step, $w(t) \approx a + b\,t$;
#    the paper finds the $R^2$ of that fit concentrated near 0.9 during RLVR (over 70% of weights above 0.7),
#    the teacher-forced log-probability of each token of fixed probe responses doing the same (median ~0.83),
#    and so hidden activations. It reports SFT trajectories as far less linear (medians ~0.43 / ~0.34); on our
#    model that contrast depends on how SFT is matched to RL (02 and 03 measure it under four comparisons; the
#    findings table gives each).
# 2. *Mechanism (Sec. 5).* The RLVR credit is one bit per response, so per-token gradient signals are
#    noisy. Summed over many steps the noise cancels and a stable drift remains: a low-pass filter on the
#    updates. The paper reports that injecting token-level noise into SFT makes it *more* linear at
#    moderate negative SNR (04 tests this on our model). Second-order terms of the output change are
#    negligible, so linear weights give linear outputs.
# 3. *Use (Sec. 6).* With $\alpha = (t_\text{target} - t_\text{base}) / (t_\text{second} - t_\text{base})$,
#    extrapolate weights, $W = W_\text{base} + \alpha (W_\text{second} - W_\text{base})$, or logits,
#    $\ell = \ell_\text{base} + \alpha(\ell_\text{second} - \ell_\text{base})$, to get a better model without
#    more RL steps; alternating $m$ real steps with an extrapolation of $n$ more ("re-grounding") reaches
#    a target accuracy with fewer real steps.
#
# Each numbered notebook tests one of these on a tiny model we build ourselves, on a laptop CPU, and
# says plainly where our numbers agree with the paper's and where they do not.

# %% tags=["parameters"]
profile = "cpu"  # smoke | cpu | gpu (this notebook only reads the runner's manifests and findings files)

# %%
from IPython.display import Markdown

from rlvr_nb.notebook import profiles
from rlvr_nb.notebook.overview import findings_section, timings
from rlvr_nb.notebook.report import markdown_table

P = profiles.resolve("00_overview", profile)

# %% [markdown]
# ## Findings
# Every finding the notebooks measured at this profile: our value with its interval (over seeds, or a
# bootstrap), the paper's value (from `rlvr_nb.paper`), the goal and the verdict each notebook computed. The table
# is rendered from `papermill_runs/<profile>/findings/*.json`, which each notebook writes when it completes;
# nothing in it is typed here. The README shows the same table for `cpu`.

# %%
Markdown(findings_section(P.profile))

# %% [markdown]
# ## The map, and how long each notebook took
# Wall times are read from `papermill_runs/<profile>/manifest.json`, written by
# `python -m rlvr_nb.notebook.run --profile <profile>` (a dash: that profile has not been run on this checkout).
# The `cpu` column comes from the committed reference run on a 2-core machine. A time marked "trained" includes
# training the runs named in that notebook's manifest entry; "nothing trained" means every trajectory it used
# was already cached in `runs/`, so a first run on a fresh checkout takes longer; an unmarked time predates
# that record. The runner executes this notebook last, so every other row is from the same run, but this
# notebook's own row is from the run before (its entry is written after it completes).

# %%
markdown_table(timings())

# %% [markdown]
# ## How to run
# `make run` executes every notebook at the `cpu` profile into `papermill_runs/cpu/`; `make test` runs the
# unit tests and every notebook at `smoke`. One notebook: `python -m rlvr_nb.notebook.run --profile cpu --only 02`.
# A knob: `python -m rlvr_nb.notebook.run --profile cpu --only 01 -p lr 3e-4`.
