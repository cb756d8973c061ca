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
# # 01 · Training: an RLVR run you can watch on a laptop
#
# > "Base model DeepSeek-R1-Distill-Qwen-1.5B; RL data DeepScaleR-Preview math; GRPO in verl; lr 1e-6
# > (AdamW), train batch 128 prompts, 16 rollouts per prompt, temperature 1.0, clip ratio low 0.2 /
# > high 0.28, no KL loss, no entropy bonus, grad clip 1.0." — the paper's setting (PAPER.md)
#
# Everything later notebooks analyse starts here. At the `smoke` and `cpu` profiles we build the
# **embedded default** ourselves, nothing downloaded: a tiny `Qwen2ForCausalLM` (2 layers, width 64, 2 heads
# of size 32), a character-level `Qwen2Tokenizer` (digits, `+`, `=`, newline, Qwen's `<|endoftext|>` and
# `<|im_end|>`: the directory loads as it is in transformers, vLLM and verl), and a verifiable task, 3-digit
# addition with the answer written least significant digit first (`123+989=` → `2111`). A short SFT warm start
# and a low-lr cool-down give the RL start a low sampled reward; then GRPO with the paper's recipe (clip 0.2/0.28, token-mean loss, no KL, no
# entropy bonus, AdamW, grad clip 1.0) trains it, writing a HuggingFace checkpoint every `ckpt_every` steps.
#
# With the same budget and checkpoint spacing we also train the **SFT trajectory** (supervised on correct
# answers, one sequence per RL prompt, same learning rate) that every later figure puts beside RL.
#
# At the `gpu` profile the same config drives verl (`rlvr_nb.backends.verl_launcher`) on `model_path` and
# `data_path`, and its checkpoints are ingested into the same `checkpoints/step_N/` layout; bring your own
# SFT run for the comparison there (02 takes any run directory).

# %% tags=["parameters"]
profile = "cpu"  # smoke | cpu | gpu
steps = None  # RL steps (None: the profile's value; cpu 1200)
lr = None  # learning rate of RL and of the matched SFT run (cpu 5e-05)
prompts_per_step = None  # prompts per RL step (cpu 128)
group_size = None  # rollouts per prompt (cpu 16)
adv_estimator = None  # grpo | dr_grpo | reinforce_pp | gspo
ckpt_every = None  # steps between checkpoints (cpu 50)
seed = None  # seed of problems, rollouts and SFT batches (cpu 0)
model_path = None  # gpu profile: HF model directory to train with verl
data_path = None  # gpu profile (required): JSONL/parquet with question/answer columns
n_gpus = None  # gpu profile: GPUs for verl

# %%
from rlvr_nb import paper
from rlvr_nb.findings import Finding, record_findings
from rlvr_nb.notebook import profiles
from IPython.display import display

from rlvr_nb.experiments.training import accuracy_table, plot_training, training_metrics
from rlvr_nb.checkpoint_files import read_json
from rlvr_nb.embedded import ensure_rl_run, ensure_sft_run, ensure_warm_start
from rlvr_nb.figures import save_figure
from rlvr_nb.models import load_model, n_params
from rlvr_nb.notebook.report import markdown_table
from rlvr_nb.tasks import AdditionTask

P = profiles.resolve("01_training", profile, seed=seed, model_path=model_path, data_path=data_path, n_gpus=n_gpus)
rl = profiles.rl_config(profile, steps=steps, lr=lr, prompts_per_step=prompts_per_step, group_size=group_size,
                        adv_estimator=adv_estimator, ckpt_every=ckpt_every, seed=P.seed)
sft = profiles.sft_config(profile, steps=rl.steps, lr=rl.lr, ckpt_every=rl.ckpt_every, seed=P.seed)
emb = profiles.embedded_config(profile)
rl

# %% [markdown]
# ## The task and the model
# Problems are generated from a seed; a fixed held-out split (disjoint from training) measures accuracy.
# The reward is verifiable: 1 for an exact answer, else 0.

# %%
task = AdditionTask(emb.task)
markdown_table([{"prompt": p.prompt, "answer (reversed)": p.answer, "a + b": sum(map(int, p.prompt[:-1].split("+")))}
                for p in task.eval_problems[:4]])

# %% [markdown]
# ## SFT warm start and cool-down
# Plain SFT from random initialisation, stopped at the first checkpoint whose held-out accuracy at
# temperature 1 reaches the target below, then a short SFT at a low learning rate (the cool-down): the warm
# start stops mid-descent, and without the cool-down every trajectory would begin with the same
# method-independent jump as it settles. The RL start is the cool-down's last checkpoint; its accuracy, printed
# below, is where RL begins (greedy accuracy is much higher than sampled: RL here mostly sharpens a policy that
# already knows the answer, unlike the paper's long-reasoning runs). Cached in `runs/`; trained once.

# %%
init_dir = ensure_warm_start(emb)
start = read_json(init_dir / "trainer_state.json")["metrics"]
print(f"warm start: {init_dir}  ({n_params(load_model(init_dir)):,} parameters)")
print(f"warm start stops at sampled accuracy >= {emb.warm_start.stop_at_accuracy:g}; after the "
      f"{emb.cool_down.steps}-step cool-down at lr {emb.cool_down.lr:g} the RL start has held-out accuracy "
      f"{start['heldout_sampled']:.3f} sampled (T = 1), {start['heldout_greedy']:.3f} greedy")

# %% [markdown]
# ## The RL run (GRPO) and the matched SFT run
# Both are cached by config hash under `runs/`: re-running the notebook with the same parameters re-uses
# them, and an interrupted run resumes from its last complete checkpoint.

# %%
if profile == "gpu":  # a real model trained by verl (see README, "GPU server"), cached like the runs below; 06 reuses it
    from rlvr_nb.experiments.rl_extra import ensure_verl_standard_run

    rl_run = ensure_verl_standard_run(rl, P.model_path, P.data_path, P.n_gpus)
    runs = {"RL (GRPO, verl)": rl_run}
else:
    rl_run = ensure_rl_run(rl, emb)
    sft_run = ensure_sft_run(sft, emb)
    runs = {"RL (GRPO)": rl_run, "SFT": sft_run}
for label, run in runs.items():
    print(f"{label:>8}: {run}")

# %%
fig = plot_training(runs, window=max(1, rl.steps // 50))
save_figure(fig, "01_training_curves")

# %% [markdown]
# ## What we measured
# Held-out accuracy at the first and last checkpoint (256 held-out problems; greedy and one sample at
# T = 1). The paper's RL runs keep improving for over a thousand steps; ours should still be rising at the
# end rather than saturated, which is what keeps RL in the linear regime (see 02).

# %%
markdown_table(accuracy_table(runs))

# %% [markdown]
# ## How this toy differs from the paper's regime
# Read before trusting any comparison with the paper's numbers. The values below are measured on the runs
# above and go into the findings table as context (no verdict):
#
# - **answers are a few tokens long**: the paper's responses run to thousands of tokens (up to 16k), so one
#   outcome reward is spread over very many tokens; here it is spread over the answer digits and the
#   end-of-response token, so outcome-only credit is barely sparser than supervision;
# - **RL starts from a model that already knows the answer**: greedy accuracy at the RL start is far above
#   sampled accuracy, so RL mostly sharpens the sampling distribution rather than learning a new skill;
# - **the model is tiny** (its parameter count is printed above; the paper's models have 1.5B-32B) and trains at a
#   far larger learning rate (the table's last row).

# %%
if profile != "gpu":
    rl_metrics = [m for m in training_metrics(rl_run) if "response_len" in m]
    evals = [m for m in training_metrics(rl_run) if "heldout_sampled" in m]
    resp = sum(m["response_len"] for m in rl_metrics) / len(rl_metrics)
    regime = [
        Finding("regime_response_tokens", "RL response length (tokens, mean over the run)", resp, None,
                paper.MAX_RESPONSE_TOKENS, "", "context", "01_training", note="the paper's value is its maximum"),
        Finding("regime_start_greedy", "held-out greedy accuracy at the RL start", evals[0]["heldout_greedy"], None,
                None, "", "context", "01_training"),
        Finding("regime_start_sampled", "held-out sampled (T=1) accuracy at the RL start", evals[0]["heldout_sampled"],
                None, None, "", "context", "01_training"),
        Finding("regime_end_sampled", f"held-out sampled (T=1) accuracy after {evals[-1]['step']} RL steps",
                evals[-1]["heldout_sampled"], None, None, "", "context", "01_training"),
        Finding("regime_lr", "RL learning rate", rl.lr, None, paper.RL_LR, "", "context", "01_training"),
    ]
    print(f"written to {record_findings('01_training', regime, profile)}")
    display(markdown_table([{"measured": f.name, "ours": f.value, "paper": f.paper} for f in regime]))
