"""Profiles are data: the sizes every notebook runs at, per profile, in one place.

- `smoke`: seconds to a minute per notebook, for CI; the same code with smaller numbers.
- `cpu`:   a full run on a 2-core laptop-class CPU that shows every finding (reference outputs committed).
- `gpu`:   real models on a GPU server (verl for training, vLLM for generation).

A notebook's `parameters` cell holds `profile` and its knobs, each defaulting to None, which means "the
profile's value from this table"; `resolve` fills them in, so papermill's `-p` and a reader editing the
cell both override exactly one value.

At `gpu` the data files are required and checked by `resolve`, before anything runs (`GPU_DATA`): without
data_path a real model would train on the embedded task (reversed-digit addition, no instruction; reward ~0).
"""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace

from rlvr_nb.embedded import EmbeddedConfig
from rlvr_nb.grpo import RLConfig, validate
from rlvr_nb.sft import SFTConfig
from rlvr_nb.tasks import TaskConfig

PROFILES = ("smoke", "cpu", "gpu")

NOTEBOOKS = (
    "00_overview",
    "01_training",
    "02_weight_linearity",
    "03_logprob_linearity",
    "04_lowpass_theory",
    "05_extrapolation",
    "06_rl_extra",
)

# The embedded default per profile: smoke uses 2-digit addition, whose warm start takes seconds.
EMBEDDED: dict[str, EmbeddedConfig] = {
    "smoke": EmbeddedConfig(task=TaskConfig(digits=2, n_eval=128)),
    "cpu": EmbeddedConfig(),
    "gpu": EmbeddedConfig(),
}

# The embedded RL trajectory per profile: 01 trains it, 02, 03, 05 and 06 read it (06's standard-RL seeds are its
# seeds; seeds 1 and 2 are also 02/03's seed study); 04's sweeps at `cpu` vary CHEAP_RL below. GRPO,
# AdamW, clip 0.2/0.28, token-mean loss, no KL: the paper's recipe at tiny scale. The `cpu` size (128 prompts x 16
# rollouts, lr 5e-5, 1200 steps) is the last row of 02's tuning sweep, made with the previous embedded model
# (4 heads of 16): token log-prob R^2 needed a long run, weight R^2 slowly fell with run length, and only the
# largest batch left a window where both passed. On the current model 02's seed table and its windows say how
# it fares.
RL_RUNS: dict[str, RLConfig] = {
    "smoke": RLConfig(steps=40, prompts_per_step=8, group_size=8, lr=1e-4, ckpt_every=10, eval_problems=64),
    "cpu": RLConfig(steps=1200, prompts_per_step=128, group_size=16, lr=5e-5, ckpt_every=50, eval_problems=256),
    "gpu": RLConfig(steps=1400, prompts_per_step=128, group_size=16, lr=1e-6, ckpt_every=100, max_new_tokens=8192,
                    loss_agg="seq-mean-token-mean", eval_problems=500),
}

# 04's sweeps (robustness grid) train many variants, so at `cpu` they vary the first, cheaper default: 32 prompts
# x 16 rollouts, lr 3e-5, 1000 steps, a checkpoint every 50 (a quarter of RL_RUNS["cpu"]'s rollouts); 04 reports
# this recipe's own (a)/(b) numbers beside its results. 02's sweep starts from it too.
CHEAP_RL: dict = {"steps": 1000, "prompts_per_step": 32, "lr": 3e-5, "ckpt_every": 50}

# 02's tuning sweep at `cpu`: settings changed together from CHEAP_RL; the last one is RL_RUNS["cpu"].
SWEEP_COMBINED: list[dict] = [
    {"lr": 5e-5, "steps": 2000}, {"lr": 5e-5, "steps": 3000, "ckpt_every": 100},
    {"lr": 5e-5, "steps": 1500, "prompts_per_step": 64, "ckpt_every": 100}, {"lr": 5e-5, "steps": 2000, "prompts_per_step": 64},
    {"lr": 5e-5, "prompts_per_step": 128}, {"lr": 5e-5, "steps": 1500, "prompts_per_step": 128, "ckpt_every": 50},
    {"lr": 5e-5, "steps": 1200, "prompts_per_step": 128, "ckpt_every": 50},
]

# Knobs of each notebook per profile (the RL run's own knobs come from RL_RUNS; `rl_recipe` holds the RLConfig
# fields a notebook changes from it).
PARAMS: dict[str, dict[str, dict]] = {
    "00_overview": {p: {} for p in PROFILES},
    "01_training": {
        "smoke": {"seed": 0},
        "cpu": {"seed": 0},
        "gpu": {"seed": 0, "model_path": "", "data_path": "", "n_gpus": 1},
    },
    # 02_weight_linearity: the comparisons and the sweep train the
    # embedded model (cached in runs/); smoke runs a two-point sweep into its output folder, cpu reads the
    # committed table (run_sweep=True recomputes it), gpu analyses the run_dir you give and shows cpu's table.
    "02_weight_linearity": {
        "smoke": {"seeds": [0, 1], "recompute_seeds": True, "seeds_file": "", "run_dir": None, "sft_run_dir": None, "base_dir": None, "sample_fraction": None,
                  "compare": True, "customary_sft_lr": 1e-3, "seq_steps": 30, "run_sweep": True, "sweep_file": "", "sweep_base": {},
                  "sweep_lrs": [3e-4], "sweep_prompts": [], "sweep_base_steps": 40, "sweep_steps": [30, 40],
                  "sweep_combined": [], "responses_per_prompt": 2},
        "cpu": {"seeds": [0, 1, 2], "recompute_seeds": False, "seeds_file": "notebooks/data/seeds_cpu.json", "run_dir": None, "sft_run_dir": None, "base_dir": None, "sample_fraction": None,
                "compare": True, "customary_sft_lr": 1e-3, "seq_steps": 500, "run_sweep": False,
                "sweep_file": "notebooks/data/02_sweep_cpu.json", "sweep_base": CHEAP_RL, "sweep_lrs": [3e-5, 5e-5, 1e-4],
                "sweep_prompts": [], "sweep_base_steps": 1000, "sweep_steps": [250, 500, 1000],
                "sweep_combined": SWEEP_COMBINED, "responses_per_prompt": 8},
        "gpu": {"seeds": [], "recompute_seeds": False, "seeds_file": "", "run_dir": "", "sft_run_dir": "", "base_dir": None, "sample_fraction": None,
                "compare": False, "customary_sft_lr": 1e-3, "seq_steps": 500,
                "run_sweep": False, "sweep_file": "notebooks/data/02_sweep_cpu.json", "sweep_base": CHEAP_RL,
                "sweep_lrs": [3e-5, 5e-5, 1e-4],
                "sweep_prompts": [], "sweep_base_steps": 1000, "sweep_steps": [250, 500, 1000],
                "sweep_combined": SWEEP_COMBINED, "responses_per_prompt": 8},
    },
    # 03_logprob_linearity: probes: responses_per_prompt samples from
    # the first checkpoint for each held-out prompt (gpu: one prompt per line of prompts_file).
    "03_logprob_linearity": {
        "smoke": {"seeds": [0, 1], "recompute_seeds": True, "seeds_file": "", "run_dir": None, "sft_run_dir": None, "base_dir": None, "prompts_file": None,
                  "responses_per_prompt": 2, "activation_probes": 64, "max_coordinates": 20_000, "compare": True,
                  "customary_sft_lr": 1e-3, "seq_steps": 30},
        "cpu": {"seeds": [0, 1, 2], "recompute_seeds": False, "seeds_file": "notebooks/data/seeds_cpu.json", "run_dir": None, "sft_run_dir": None, "base_dir": None, "prompts_file": None,
                "responses_per_prompt": 8, "activation_probes": 1024, "max_coordinates": 200_000, "compare": True,
                "customary_sft_lr": 1e-3, "seq_steps": 500},
        "gpu": {"seeds": [], "recompute_seeds": False, "seeds_file": "", "run_dir": "", "sft_run_dir": "", "base_dir": None, "prompts_file": "",
                "responses_per_prompt": 8, "activation_probes": 64, "max_coordinates": 200_000, "compare": False,
                "customary_sft_lr": 1e-3, "seq_steps": 500},
    },
    # 04_lowpass_theory:
    # The noisy-SFT sweep (Fig. 3) and the robustness grid (Fig. 2) train the embedded model at every profile;
    # cpu reads the committed robustness table (notebooks/data/04_robustness_cpu.json; make reproduce recomputes
    # it), smoke computes a tiny one of its own (the SGD row, 30 steps) into its output folder.
    "04_lowpass_theory": {
        "smoke": {"mechanism_study": {"scratchpads": ["", "carries"], "steps": 12, "prompts_per_step": 4, "group_size": 4, "lr": 1e-3, "ckpt_every": 4, "eval_problems": 16, "grad_batches": 3, "probe_prompts": 4, "responses_per_prompt": 2, "warm_start_steps": 150, "digits": 1}, "recompute_mechanism": True, "mechanism_table": "", "rl_recipe": {}, "theory_points": 10, "sim_params": 100, "snr_dbs": [-10.0], "sft_high_lr": 1e-3, "sft_steps": 15,
                  "sft_ckpt_every": 5, "grad_batches": 8, "n_probe": 64, "robust_steps": 30, "robust_lrs": [],
                  "sgd_lr": 0.01, "group_sizes": [], "estimators": [], "sgd_calibration_steps": 20,
                  "compute_robustness": True, "robustness_cache": "", "seed": 0},
        "cpu": {"mechanism_study": {}, "recompute_mechanism": False, "mechanism_table": "notebooks/data/04_mechanism_cpu.json", "rl_recipe": CHEAP_RL, "theory_points": 40, "sim_params": 400, "snr_dbs": [10.0, 0.0, -5.0, -10.0, -15.0, -20.0],
                "sft_high_lr": 1e-3, "sft_steps": 500, "sft_ckpt_every": 50, "grad_batches": 200, "n_probe": 256,
                "robust_steps": 400, "robust_lrs": [3e-5, 1e-4], "sgd_lr": 0.01, "group_sizes": [16, 8],
                "estimators": ["grpo", "reinforce_pp"], "sgd_calibration_steps": 100, "compute_robustness": False,
                "robustness_cache": "notebooks/data/04_robustness_cpu.json", "seed": 0},
        "gpu": {"mechanism_study": {}, "recompute_mechanism": False, "mechanism_table": "notebooks/data/04_mechanism_cpu.json", "rl_recipe": {}, "theory_points": 40, "sim_params": 400, "snr_dbs": [10.0, 0.0, -5.0, -10.0, -15.0, -20.0],
                "sft_high_lr": 1e-3, "sft_steps": 500, "sft_ckpt_every": 50, "grad_batches": 200, "n_probe": 256,
                "robust_steps": 400, "robust_lrs": [3e-5, 1e-4], "sgd_lr": 0.01, "group_sizes": [16, 8],
                "estimators": ["grpo", "reinforce_pp"], "sgd_calibration_steps": 100, "compute_robustness": False,
                "robustness_cache": "notebooks/data/04_robustness_cpu.json", "seed": 0},
    },
    # 05_extrapolation: steps are checkpoints of the profile's RL run
    # (smoke: 40 steps, every 10; cpu: 1200 steps, every 50; logits targets at alpha 1.5: 850 and 1150, inside the run). sampling: [(temperature, top_p)], the first
    # is Figure 5's; Table 1 uses the paper's base/second/target ratio 200/1400/2000 (alpha 1.5).
    "05_extrapolation": {
        "smoke": {"rl_recipe": {}, "k": 4, "n_problems": 64, "sampling": [(0.6, 0.95), (1.0, 1.0)], "t_seconds": [10, 20, 30],
                  "alphas": [1.0, 1.5, 2.0, 3.0], "t_base_late": 10, "t_seconds_late": [20, 30],
                  "logits_pairs": [(10, 30)], "logits_alpha": 1.5, "slider_alpha": 1.5, "n_examples": 2},
        "cpu": {"rl_recipe": {}, "k": 8, "n_problems": 512, "sampling": [(0.6, 0.95), (1.0, 1.0)], "t_seconds": [200, 400, 600],
                "alphas": [1.0, 1.25, 1.5, 2.0, 2.5, 3.0], "t_base_late": 200, "t_seconds_late": [400, 600, 800],
                "logits_pairs": [(100, 600), (100, 800)], "logits_alpha": 1.5, "slider_alpha": 1.5, "n_examples": 3},
        "gpu": {"rl_recipe": {}, "k": 16, "n_problems": 500, "sampling": [(0.6, 0.95), (1.0, 1.0)], "t_seconds": [300, 600, 1400],
                "alphas": [1.0, 1.25, 1.5, 1.75, 2.0], "t_base_late": 200, "t_seconds_late": [600, 1000, 1400],
                "logits_pairs": [(200, 1400)], "logits_alpha": 1.5, "slider_alpha": 1.5, "n_examples": 3,
                "run_dir": "", "eval_data": ""},
    },
    # 06_rl_extra: standard RL seed s is the profile's RL run with seed s (seed 0: 01's run; 1, 2: 02/03's seed
    # study). Every re-grounding run spends `budget` real steps; settings are (m, n). target None: the rule, standard
    # RL's seed-mean accuracy at target_step (1.5 x the budget). cpu reads the committed study table (about 1400
    # real RL steps: 2 settings x 3 seeds + the reset run, 200 each; recompute_regrounding=True rewrites it).
    "06_rl_extra": {
        "smoke": {"rl_recipe": {}, "seeds": [0, 1], "std_steps": 40, "budget": 20, "settings": [(10, 10)], "optimizer": "keep",
                  "reset_setting": (10, 10), "reset_seeds": [0], "r2_m": 10, "r2_checkpoints": 6, "r2_grow_at": 2.0,
                  "r2_shrink_below": 1.0, "target": None, "target_step": 30, "eval_k": 4, "block_eval_problems": 16,
                  "recompute_regrounding": True, "regrounding_file": ""},
        "cpu": {"rl_recipe": {}, "seeds": [0, 1, 2], "std_steps": 1200, "budget": 200, "settings": [(50, 50), (50, 100)],
                "optimizer": "keep", "reset_setting": (50, 50), "reset_seeds": [0], "r2_m": None, "r2_checkpoints": 6,
                "r2_grow_at": 2.0, "r2_shrink_below": 1.0, "target": None, "target_step": 300, "eval_k": 16,
                "block_eval_problems": 64, "recompute_regrounding": False,
                "regrounding_file": "notebooks/data/06_regrounding_cpu.json"},
        "gpu": {"rl_recipe": {}, "seeds": [0], "std_steps": 1400, "budget": 1200, "settings": [(100, 100), (300, 300), (300, 600), (20, 100)],
                "optimizer": "reset", "reset_setting": None, "reset_seeds": [], "r2_m": 100, "r2_checkpoints": 5,
                "r2_grow_at": 2.0, "r2_shrink_below": 1.0, "target": 0.38, "target_step": None, "eval_k": 16,
                "block_eval_problems": 64, "recompute_regrounding": True, "regrounding_file": "",
                "model_path": "", "data_path": "", "eval_data": "", "n_gpus": 1},
    },
}


# At `gpu`: the data-file knobs each notebook needs (required) and may have (checked when given): 01 trains on
# data_path; 06 trains on data_path and evaluates on eval_data; 05 evaluates on eval_data, which a run_dir of a
# real model needs (empty run_dir and eval_data: the embedded run on the embedded task).
GPU_DATA: dict[str, tuple[str, ...]] = {"01_training": ("data_path",), "06_rl_extra": ("data_path", "eval_data")}
GPU_DATA_OPTIONAL: dict[str, tuple[str, ...]] = {"05_extrapolation": ("eval_data",)}


def check_gpu_data(notebook: str, values: dict) -> None:
    """The `gpu` data files of a notebook's resolved knobs: each required one given, and every given one a readable
    .jsonl / .parquet file whose every row has a question and an answer (one error naming the knob and the file)."""
    from rlvr_nb.backends.verl_inputs import load_problems

    required = GPU_DATA.get(notebook, ())
    if notebook == "05_extrapolation" and values.get("run_dir"):
        required = ("eval_data",)
    for key in required:
        if not values.get(key):
            raise ValueError(f"{notebook} at profile gpu needs {key}: a .jsonl or .parquet file with question and "
                             f"answer columns (-p {key} /path/to/file.jsonl); without it a real model would "
                             + ("train" if key == "data_path" else "be evaluated")
                             + " on the embedded task (reversed-digit addition, no instruction)")
    for key in dict.fromkeys(required + GPU_DATA_OPTIONAL.get(notebook, ())):
        if values.get(key):
            load_problems(values[key], what=key)


def embedded_config(profile: str) -> EmbeddedConfig:
    """The tiny model, task and warm start of the embedded default at this profile."""
    check_profile(profile)
    return EMBEDDED[profile]


def rl_config(profile: str, **overrides) -> RLConfig:
    """The profile's RL run with the given fields replaced (None values are ignored)."""
    check_profile(profile)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {f.name for f in fields(RLConfig)}
    if unknown:
        raise ValueError(f"unknown RLConfig field(s) {sorted(unknown)}; valid: {[f.name for f in fields(RLConfig)]}")
    cfg = replace(RL_RUNS[profile], **given)
    validate(cfg)
    return cfg


def sft_config(profile: str, **overrides) -> SFTConfig:
    """The SFT trajectory matched to the profile's RL run (same steps, spacing, lr, optimizer, seed)."""
    from rlvr_nb.embedded import matched_sft

    return matched_sft(RL_RUNS[profile], **{k: v for k, v in overrides.items() if v is not None})


def check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")


def resolve(notebook: str, profile: str, **given) -> SimpleNamespace:
    """The notebook's knobs at this profile, with every non-None value in `given` taking precedence."""
    check_profile(profile)
    table = PARAMS.get(notebook, {}).get(profile, {})
    values = dict(table)
    values.update({k: v for k, v in given.items() if v is not None})
    if profile == "gpu":
        check_gpu_data(notebook, values)
    return SimpleNamespace(profile=profile, **values)
