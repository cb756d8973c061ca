"""Profiles are data: the sizes every notebook runs at, per profile, in one place.

- `smoke`: seconds to a minute per notebook, for CI; the same code with smaller numbers.
- `cpu`:   a full run on a 2-core laptop-class CPU that shows every finding (reference outputs committed).
- `gpu`:   real models on a GPU server (verl for training, vLLM for generation).

A notebook's `parameters` cell holds `profile` and its knobs, each defaulting to None, which means "the
profile's value from this table"; `resolve` fills them in, so papermill's `-p` and a reader editing the
cell both override exactly one value.
"""

from __future__ import annotations

from dataclasses import fields, replace
from types import SimpleNamespace

from .embedded import EmbeddedConfig
from .grpo import RLConfig
from .sft import SFTConfig
from .tasks import TaskConfig

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

# The embedded RL trajectory per profile (01 trains it; 02-06 read it). GRPO, 32 prompts x 16 rollouts,
# AdamW, clip 0.2/0.28, token-mean loss, no KL: the paper's recipe at tiny scale.
RL_RUNS: dict[str, RLConfig] = {
    "smoke": RLConfig(steps=40, prompts_per_step=8, group_size=8, lr=1e-4, ckpt_every=10, eval_problems=64),
    "cpu": RLConfig(steps=1000, prompts_per_step=32, group_size=16, lr=1e-4, ckpt_every=50, eval_problems=256),
    "gpu": RLConfig(steps=1400, prompts_per_step=128, group_size=16, lr=1e-6, ckpt_every=100, max_new_tokens=8192,
                    loss_agg="seq-mean-token-mean", eval_problems=500),
}

# Knobs of each notebook per profile (the RL run's own knobs come from RL_RUNS).
PARAMS: dict[str, dict[str, dict]] = {
    "00_overview": {p: {} for p in PROFILES},
    "01_training": {
        "smoke": {"seed": 0},
        "cpu": {"seed": 0},
        "gpu": {"seed": 0, "model_path": "", "data_path": "", "n_gpus": 1},
    },
    # 02_weight_linearity: (owned by the 02/03 notebook author)
    "02_weight_linearity": {p: {} for p in PROFILES},
    # 03_logprob_linearity: (owned by the 02/03 notebook author)
    "03_logprob_linearity": {p: {} for p in PROFILES},
    # 04_lowpass_theory: (owned by the 04 notebook author)
    "04_lowpass_theory": {p: {} for p in PROFILES},
    # 05_extrapolation: (owned by the 05 notebook author)
    "05_extrapolation": {p: {} for p in PROFILES},
    # 06_rl_extra: (owned by the 06 notebook author)
    "06_rl_extra": {p: {} for p in PROFILES},
}


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
    return replace(RL_RUNS[profile], **given)


def sft_config(profile: str, **overrides) -> SFTConfig:
    """The SFT trajectory matched to the profile's RL run (same steps, spacing, lr, optimizer, seed)."""
    from .embedded import matched_sft

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
    return SimpleNamespace(profile=profile, **values)
