"""What a verl run is: its config (`VerlRunConfig`, checked by `validate_verl_config`, resolved per estimator
by `resolve`), the Hydra overrides of `python -m verl.trainer.main_ppo` it becomes (`build_overrides`), and the
check of those overrides against the config the installed verl packages (`validate_overrides`: OmegaConf
struct mode on `verl/trainer/config/_generated_ppo_trainer.yaml`, so a key verl does not know fails before any
GPU time is spent), and the one prompt format of a run (`PromptFormat`: training rows and evaluation prompts
alike). What verl is given is checked by `rlvr_nb.backends.verl_inputs`; running it is
`rlvr_nb.backends.verl_launcher`.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from rlvr_nb.models import CHAT_TEMPLATE as CONTENT_ONLY_TEMPLATE  # the embedded tokenizer's own template

VERL_VERSION = "0.9.1"  # the verl release whose packaged config the overrides are validated against
ADV_ESTIMATORS = ("grpo", "dr_grpo", "reinforce_pp", "gspo")
VERL_LOSS_AGGS = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
EMBEDDED = "embedded"
MATH_SUFFIX = " Let's think step by step and output the final answer within \\boxed{}."
GENERATED_CONFIG = "trainer/config/_generated_ppo_trainer.yaml"

# Per-estimator defaults: (verl adv_estimator, policy loss, norm by std, loss aggregation, clip low, clip high).
# GSPO clips a sequence-level ratio, hence clips ~1000x smaller (GSPO paper Sec. 5.1, verl's gspo example).
ESTIMATORS: dict[str, tuple[str, str, bool, str, float, float]] = {
    "grpo": ("grpo", "vanilla", True, "seq-mean-token-mean", 0.2, 0.28),
    "dr_grpo": ("grpo", "vanilla", False, "seq-mean-token-sum-norm", 0.2, 0.28),
    "reinforce_pp": ("reinforce_plus_plus", "vanilla", True, "token-mean", 0.2, 0.28),
    "gspo": ("grpo", "gspo", True, "seq-mean-token-mean", 3e-4, 4e-4),
}


@dataclass(frozen=True)
class VerlRunConfig:
    model_path: str = ""
    """HuggingFace model directory to start from (step 0); for re-grounding, the extrapolated model."""
    output_dir: str = ""
    """A fresh run directory (data, reward file, command, log, checkpoints); never resumed."""
    train_data: str = EMBEDDED
    """'embedded' (the addition task) or a local .jsonl / .parquet file with question and answer columns."""
    val_data: str | None = None
    """Held-out file of the same kind; None: the embedded task's held-out split, or the first rows of train_data."""
    question_key: str = "question"
    """Column of the question in train_data / val_data files."""
    answer_key: str = "answer"
    """Column of the reference answer (graded against the last \\boxed{} of the response)."""
    prompt_suffix: str | None = None
    """Appended to each question; None: nothing for the embedded task, the \\boxed{} instruction for files."""
    chat_template: str | None = None
    """Jinja chat template; None: content-only for the embedded task (its tokenizer's own), the model's own else
    (a model without one is refused before verl starts: verl renders every prompt with apply_chat_template)."""
    grader: str = "auto"
    """'exact', 'math' (math-verify on the last \\boxed{}) or 'auto' (exact for embedded, math for files)."""
    embedded_digits: int = 3
    """Operand digits of the embedded addition task."""
    adv_estimator: str = "grpo"
    """'grpo', 'dr_grpo' (no std, seq-mean-token-sum-norm), 'reinforce_pp' or 'gspo' (sequence-level ratio)."""
    lr: float = 1e-6
    """AdamW learning rate (the paper: 1e-6)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (verl's default is 0.01; our trainer uses 0)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (the paper: 1.0)."""
    prompts_per_step: int = 128
    """Prompts per RL step (data.train_batch_size; one on-policy update per step)."""
    group_size: int = 16
    """Rollouts per prompt (actor_rollout_ref.rollout.n)."""
    temperature: float = 1.0
    """Rollout temperature."""
    max_prompt_length: int = 1024
    """Longest prompt in tokens, chat template included. A training row with a longer prompt is refused before
    verl starts (`rlvr_nb.backends.verl_inputs.check_prompts`): verl 0.9.1 itself never refuses one, whatever
    data.truncation says (its RLHFDataset reads that key and uses it nowhere; its rollout left-truncates the
    prompt with a warning, so the model would see the end of the question only)."""
    max_response_length: int = 16384
    """Longest response in tokens (the paper: 16k)."""
    steps: int = 1000
    """RL steps (trainer.total_training_steps)."""
    ckpt_every: int = 100
    """Save HF weights every this many steps (and at the last step)."""
    clip_low: float | None = None
    """PPO clip below 1; None: the estimator's default (0.2, GSPO 3e-4)."""
    clip_high: float | None = None
    """PPO clip above 1; None: the estimator's default (0.28, GSPO 4e-4)."""
    loss_agg: str | None = None
    """verl loss_agg_mode; None: the estimator's default (seq-mean-token-mean for GRPO, as in the paper)."""
    n_gpus: int = 1
    """GPUs on this node (trainer.n_gpus_per_node; one node)."""
    rollout_tp: int = 1
    """vLLM tensor parallelism of the rollout engine."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (the rest is for FSDP training, colocated)."""
    max_tokens_per_gpu: int | None = None
    """Dynamic micro-batching budget; None: max(16384, 2 * (prompt + response))."""
    attn_implementation: str = "sdpa"
    """Training attention; 'flash_attention_2' (needs flash-attn built) also turns on padding removal."""
    save_resumable: bool = False
    """Also save FSDP shards and optimizer state (large); only HF weights are needed for the analysis."""
    extra_overrides: tuple[str, ...] = ()
    """More `key=value` Hydra overrides, appended last (validated like the others)."""
    seed: int = 0
    """Seed of the data order, the rollouts and the embedded task's problems."""


# ----------------------------------------------------------------------------------------------------
# Config


def validate_verl_config(cfg: VerlRunConfig) -> None:
    """One ValueError per bad field, naming it."""
    if not cfg.model_path:
        raise ValueError("model_path is required (a HuggingFace model directory)")
    if not cfg.output_dir:
        raise ValueError("output_dir is required (a fresh run directory)")
    if not cfg.train_data:
        raise ValueError(f"train_data is required: {EMBEDDED!r} (the addition task) or a .jsonl / .parquet file")
    if cfg.adv_estimator not in ADV_ESTIMATORS:
        raise ValueError(f"adv_estimator must be one of {ADV_ESTIMATORS}, got {cfg.adv_estimator!r}")
    if cfg.loss_agg is not None and cfg.loss_agg not in VERL_LOSS_AGGS:
        raise ValueError(f"loss_agg must be one of {VERL_LOSS_AGGS} or None, got {cfg.loss_agg!r}")
    if cfg.adv_estimator == "dr_grpo" and cfg.loss_agg not in (None, "seq-mean-token-sum-norm"):
        raise ValueError(f"dr_grpo is defined by loss_agg='seq-mean-token-sum-norm', got {cfg.loss_agg!r}")
    if cfg.grader not in ("auto", "exact", "math"):
        raise ValueError(f"grader must be 'auto', 'exact' or 'math', got {cfg.grader!r}")
    for name in ("prompts_per_step", "group_size", "steps", "ckpt_every", "n_gpus", "rollout_tp",
                 "max_prompt_length", "max_response_length", "embedded_digits"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.group_size < 2 and cfg.adv_estimator != "reinforce_pp":
        raise ValueError(f"{cfg.adv_estimator} needs group_size >= 2 (a group baseline), got {cfg.group_size}")
    if cfg.n_gpus % cfg.rollout_tp:
        raise ValueError(f"n_gpus={cfg.n_gpus} must be a multiple of rollout_tp={cfg.rollout_tp}")
    if (cfg.prompts_per_step * cfg.group_size) % cfg.n_gpus:
        raise ValueError(f"prompts_per_step * group_size = {cfg.prompts_per_step * cfg.group_size} must be "
                         f"divisible by n_gpus={cfg.n_gpus} (verl splits the batch evenly)")
    if not 0 < cfg.gpu_memory_utilization < 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1), got {cfg.gpu_memory_utilization}")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    for name in ("clip_low", "clip_high"):
        v = getattr(cfg, name)
        if v is not None and not 0 < v < 1:
            raise ValueError(f"{name} must be in (0, 1) or None, got {v}")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 for RL rollouts, got {cfg.temperature}")
    for ov in cfg.extra_overrides:
        if "=" not in ov:
            raise ValueError(f"extra override {ov!r} is not of the form key=value")


@dataclass(frozen=True)
class Resolved:
    """The settings a None / 'auto' field of VerlRunConfig resolves to."""

    verl_estimator: str
    loss_mode: str
    norm_by_std: bool
    loss_agg: str
    clip_low: float
    clip_high: float
    grader: str
    prompt_suffix: str
    chat_template: str | None

    @property
    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.prompt_suffix, self.chat_template)


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt, for training and evaluation alike: one user message holding the question
    and the suffix, rendered by the chat template (None: the tokenizer's own) with the generation prompt.

    verl's rollout does exactly this with each row of train.parquet (whose `prompt` is `messages`): its prompt
    builder calls apply_chat_template(messages, add_generation_prompt=True, tokenize=True) on the tokenizer
    with actor_rollout_ref.model.custom_chat_template set. `render` gives the same prompt as text, which
    `rlvr_nb.evaluate` tokenizes without special tokens, to the same ids (tests/test_verl_checks.py)."""

    suffix: str = ""
    chat_template: str | None = None

    def messages(self, question: str) -> list[dict]:
        return [{"role": "user", "content": question + self.suffix}]

    def render(self, tokenizer, question: str) -> str:
        """The prompt text of one question (ValueError from transformers when there is no chat template)."""
        return tokenizer.apply_chat_template(self.messages(question), chat_template=self.chat_template,
                                             add_generation_prompt=True, tokenize=False)


def resolve(cfg: VerlRunConfig) -> Resolved:
    est, mode, norm, agg, lo, hi = ESTIMATORS[cfg.adv_estimator]
    embedded = cfg.train_data == EMBEDDED
    return Resolved(
        verl_estimator=est, loss_mode=mode, norm_by_std=norm,
        loss_agg=cfg.loss_agg or agg,
        clip_low=lo if cfg.clip_low is None else cfg.clip_low,
        clip_high=hi if cfg.clip_high is None else cfg.clip_high,
        grader=cfg.grader if cfg.grader != "auto" else ("exact" if embedded else "math"),
        prompt_suffix=cfg.prompt_suffix if cfg.prompt_suffix is not None else ("" if embedded else MATH_SUFFIX),
        chat_template=cfg.chat_template if cfg.chat_template is not None else (CONTENT_ONLY_TEMPLATE if embedded else None),
    )


# ----------------------------------------------------------------------------------------------------
# Overrides


SAFE_VALUE = re.compile(r"[A-Za-z0-9_./@:+\-]+")


def hydra_value(v: Any) -> str:
    """A Python value as a Hydra override value (which OmegaConf's dotlist parser reads the same way)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, (str, Path)):
        s = str(v)
        if "\\" in s or "${" in s or "\n" in s:
            raise ValueError(f"cannot pass {s!r} as a Hydra override value (backslash, '${{' or newline)")
        if SAFE_VALUE.fullmatch(s) and s.lower() not in ("true", "false", "null", "nan", "inf"):
            try:
                float(s)
            except ValueError:
                return s
        if "'" not in s:
            return f"'{s}'"
        if '"' not in s:
            return f'"{s}"'
        raise ValueError(f"cannot quote {s!r} as a Hydra value (holds both quote characters)")
    raise TypeError(f"no Hydra form for {type(v).__name__}")


@dataclass(frozen=True)
class RunFiles:
    """Paths inside a run directory."""

    root: Path

    @property
    def train(self) -> Path:
        return self.root / "data" / "train.parquet"

    @property
    def val(self) -> Path:
        return self.root / "data" / "val.parquet"

    @property
    def reward(self) -> Path:
        return self.root / "reward.py"

    @property
    def log(self) -> Path:
        return self.root / "verl.log"

    @property
    def metrics(self) -> Path:
        return self.root / "verl_metrics.jsonl"

    @property
    def verl_checkpoints(self) -> Path:
        return self.root / "verl_checkpoints"

    @property
    def command(self) -> Path:
        return self.root / "command.sh"

    @property
    def launch(self) -> Path:
        return self.root / "launch.json"


def build_overrides(cfg: VerlRunConfig, n_train: int) -> list[str]:
    """The full `key=value` list for `python -m verl.trainer.main_ppo` (n_train: rows of train.parquet)."""
    r = resolve(cfg)
    files = RunFiles(Path(cfg.output_dir).resolve())
    seq_len = cfg.max_prompt_length + cfg.max_response_length
    epochs = max(1, math.ceil(cfg.steps * cfg.prompts_per_step / n_train))
    contents = ["model", "optimizer", "extra", "hf_model"] if cfg.save_resumable else ["hf_model"]
    ov: dict[str, Any] = {
        "algorithm.adv_estimator": r.verl_estimator,
        "algorithm.norm_adv_by_std_in_grpo": r.norm_by_std,
        "algorithm.use_kl_in_reward": False,
        "data.train_files": str(files.train),
        "data.val_files": str(files.val),
        "data.train_batch_size": cfg.prompts_per_step,
        "data.max_prompt_length": cfg.max_prompt_length,
        "data.max_response_length": cfg.max_response_length,
        # every prompt is checked to fit before verl starts (verl_inputs.check_prompts): nothing for verl to drop;
        # data.truncation is not set, verl 0.9.1 reads it nowhere (see max_prompt_length)
        "data.filter_overlong_prompts": False,
        "data.shuffle": True,
        "data.seed": cfg.seed,
        "actor_rollout_ref.model.path": str(Path(cfg.model_path).resolve()),
        "actor_rollout_ref.model.use_remove_padding": cfg.attn_implementation == "flash_attention_2",
        "+actor_rollout_ref.model.override_config.attn_implementation": cfg.attn_implementation,
        "actor_rollout_ref.actor.optim.lr": cfg.lr,
        "actor_rollout_ref.actor.optim.weight_decay": cfg.weight_decay,
        "actor_rollout_ref.actor.optim.clip_grad": cfg.grad_clip,
        "actor_rollout_ref.actor.grad_clip": cfg.grad_clip,
        "actor_rollout_ref.actor.ppo_mini_batch_size": cfg.prompts_per_step,  # one update per step: on-policy
        "actor_rollout_ref.actor.ppo_epochs": 1,
        "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": cfg.max_tokens_per_gpu or max(16384, 2 * seq_len),
        "actor_rollout_ref.actor.clip_ratio_low": r.clip_low,
        "actor_rollout_ref.actor.clip_ratio_high": r.clip_high,
        "actor_rollout_ref.actor.loss_agg_mode": r.loss_agg,
        "actor_rollout_ref.actor.policy_loss.loss_mode": r.loss_mode,
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "actor_rollout_ref.actor.data_loader_seed": cfg.seed,
        "actor_rollout_ref.actor.fsdp_config.seed": cfg.seed,
        "actor_rollout_ref.actor.checkpoint.save_contents": contents,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": cfg.group_size,
        "actor_rollout_ref.rollout.temperature": cfg.temperature,
        "actor_rollout_ref.rollout.top_p": 1.0,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": cfg.rollout_tp,
        "actor_rollout_ref.rollout.gpu_memory_utilization": cfg.gpu_memory_utilization,
        "actor_rollout_ref.rollout.max_num_batched_tokens": max(8192, seq_len),
        "actor_rollout_ref.rollout.seed": cfg.seed,
        "reward.custom_reward_function.path": str(files.reward),
        "reward.custom_reward_function.name": "compute_score",
        "trainer.n_gpus_per_node": cfg.n_gpus,
        "trainer.nnodes": 1,
        "trainer.total_training_steps": cfg.steps,
        "trainer.total_epochs": epochs,
        "trainer.save_freq": cfg.ckpt_every,
        "trainer.test_freq": -1,
        "trainer.val_before_train": False,
        "trainer.resume_mode": "disable",
        "trainer.default_local_dir": str(files.verl_checkpoints),
        "trainer.project_name": "rlvr_nb",
        "trainer.experiment_name": files.root.name,
        "trainer.logger": ["console", "file"],
    }
    if r.loss_agg == "seq-mean-token-sum-norm":  # Dr. GRPO divides by a constant, the longest response (its paper,
        # and our trainer); unset, verl divides by the padded width of each micro-batch, which varies
        ov["actor_rollout_ref.actor.loss_scale_factor"] = cfg.max_response_length
    if r.chat_template is not None:
        ov["actor_rollout_ref.model.custom_chat_template"] = r.chat_template
    return [f"{k}={hydra_value(v)}" for k, v in ov.items()] + list(cfg.extra_overrides)


def verl_command(overrides: Sequence[str], python: str = sys.executable) -> list[str]:
    return [python, "-m", "verl.trainer.main_ppo", *overrides]


# ----------------------------------------------------------------------------------------------------
# Validation against verl's packaged config


def packaged_config_path() -> Path:
    """verl's flattened trainer config inside the installed package (found without importing verl)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"verl is not installed; `pip install --no-deps verl=={VERL_VERSION}` "
                                  "is enough to validate overrides")
    path = Path(list(spec.submodule_search_locations)[0]) / GENERATED_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"the installed verl has no {GENERATED_CONFIG} (expected verl {VERL_VERSION})")
    return path


def installed_verl_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("verl")
    except PackageNotFoundError:
        return None


def _raw_lookup(tree: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {list: "list", dict: "dict", str: "str"}.get(type(v), type(v).__name__)


def validate_overrides(overrides: Sequence[str], config_path: str | Path | None = None) -> None:
    """Apply every override to verl's packaged config in OmegaConf struct mode. Raises one ValueError
    listing each key verl does not know and each value whose kind (bool / number / str / list / dict)
    differs from verl's default. `+key=value` may only add a key under an existing mapping."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.load(config_path or packaged_config_path())
    raw = OmegaConf.to_container(cfg, resolve=False)
    OmegaConf.set_struct(cfg, True)

    def struct_merge(news: list) -> str | None:
        try:
            OmegaConf.merge(cfg, *news)
        except OmegaConfBaseException as e:
            return f"{type(e).__name__}: {str(e).splitlines()[0]}"
        return None

    errors, news, keys = [], [], []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or not key:
            errors.append(f"{ov!r}: not of the form key=value")
            continue
        add, key = key.startswith("+"), key.lstrip("+")
        if key.startswith("~"):
            errors.append(f"{ov!r}: deleting keys is not supported")
            continue
        new = OmegaConf.from_dotlist([f"{key}={value}"])
        known, old = _raw_lookup(raw, key)
        if add:
            parent_key = key.rpartition(".")[0]
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            if known or not isinstance(parent, DictConfig):
                errors.append(f"{key}: '+' adds a new key under an existing mapping; verl "
                              f"{'already has this key' if known else 'has no mapping ' + repr(parent_key)}")
            continue
        if not known:  # confirm with OmegaConf itself, in struct mode
            errors.append(f"{key}: unknown to verl's config ({struct_merge([new]) or 'not in the YAML'})")
            continue
        news.append(new)
        keys.append(key)
        new_value = _raw_lookup(OmegaConf.to_container(new, resolve=False), key)[1]
        if old is None or (isinstance(old, str) and (old.startswith("${") or old == "???")):
            continue
        if _kind(old) != _kind(new_value):
            errors.append(f"{key}: verl's default is a {_kind(old)} ({old!r}), the override gives a "
                          f"{_kind(new_value)} ({new_value!r})")
    failure = struct_merge(news)  # all known keys at once, in struct mode
    if failure is not None:
        errors += [f"{k}: {msg}" for k, new in zip(keys, news) if (msg := struct_merge([new])) is not None] or [failure]
    if errors:
        raise ValueError(f"{len(errors)} override(s) do not fit verl's config:\n  " + "\n  ".join(errors))
