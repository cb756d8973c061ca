"""Train with verl on GPUs: one training config -> verl parquet data, a reward file that calls our grader,
and the Hydra overrides of `python -m verl.trainer.main_ppo`, run as a subprocess with its log beside the run.

verl (validated against 0.9.1, see `VERL_VERSION`) needs a GPU: its rollouts run on vLLM, SGLang or
TensorRT-LLM. Everything here up to `launch` runs on a CPU: `--dry-run` prepares the run directory and
prints the exact command, and `validate_overrides` checks every override key against the config verl
packages (`verl/trainer/config/_generated_ppo_trainer.yaml`) in OmegaConf struct mode, so a key verl does
not know fails before any GPU time is spent.

Layout of a run directory (a fresh one per run; re-grounding starts one per block from the
extrapolated model):

    <out>/data/train.parquet, val.parquet   prompt (chat messages), data_source, reward_model, extra_info
    <out>/reward.py                         compute_score(data_source, solution_str, ground_truth, ...)
    <out>/command.sh, launch.json           the exact command and the config it came from
    <out>/verl.log, verl_metrics.jsonl      live log and verl's per-step metrics (its "file" logger)
    <out>/verl_checkpoints/global_step_N/actor/huggingface/   verl's checkpoints (HF weights: hf_model)
    <out>/checkpoints/step_N/               the same, ingested into our layout (step_0 = model_path)

    python -m rlvr_nb.backends.verl_launcher --model_path M --output_dir D --adv_estimator grpo --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from rlvr_nb.tasks import AdditionTask, Problem, TaskConfig

VERL_VERSION = "0.9.1"  # the verl release whose packaged config the overrides are validated against
ADV_ESTIMATORS = ("grpo", "dr_grpo", "reinforce_pp", "gspo")
VERL_LOSS_AGGS = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
EMBEDDED = "embedded"
CONTENT_ONLY_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
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
    """Jinja chat template; None: content-only for the embedded task (its tokenizer has none), the model's own else."""
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
    """Longest prompt in tokens (longer prompts are an error, not truncated)."""
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


def validate(cfg: VerlRunConfig) -> None:
    """One ValueError per bad field, naming it."""
    if not cfg.model_path:
        raise ValueError("model_path is required (a HuggingFace model directory)")
    if not cfg.output_dir:
        raise ValueError("output_dir is required (a fresh run directory)")
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
# Data: verl parquet


def load_problems(path: str | Path, question_key: str = "question", answer_key: str = "answer") -> list[Problem]:
    """Problems from a local .jsonl or .parquet file with question and answer columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ValueError(f"{path}: data files must be .jsonl or .parquet")
    if not rows:
        raise ValueError(f"{path} holds no rows")
    missing = [k for k in (question_key, answer_key) if k not in rows[0]]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; columns are {sorted(rows[0])} "
                         "(set question_key / answer_key)")
    return [Problem(str(r[question_key]), str(r[answer_key])) for r in rows]


def task_problems(cfg: VerlRunConfig) -> tuple[list[Problem], list[Problem], str]:
    """(train, val, data_source). The embedded task gets steps * prompts_per_step fresh training problems
    (one epoch, like our own trainer) drawn with the seed, and its fixed held-out split as val."""
    if cfg.train_data == EMBEDDED:
        task = AdditionTask(TaskConfig(digits=cfg.embedded_digits, seed=cfg.seed))
        train = task.sample_train(cfg.steps * cfg.prompts_per_step, torch.Generator().manual_seed(cfg.seed))
        return train, list(task.eval_problems), f"rlvr_nb/addition{cfg.embedded_digits}"
    train = load_problems(cfg.train_data, cfg.question_key, cfg.answer_key)
    val = (load_problems(cfg.val_data, cfg.question_key, cfg.answer_key) if cfg.val_data
           else train[: min(len(train), 64)])
    return train, val, f"rlvr_nb/{Path(cfg.train_data).stem}"


def verl_rows(problems: Sequence[Problem], data_source: str, split: str, prompt_suffix: str = "") -> list[dict]:
    """verl's RL dataset rows: `prompt` is a chat-message list, the reward spec is rule-based."""
    return [{
        "data_source": data_source,
        "prompt": [{"role": "user", "content": p.prompt + prompt_suffix}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": p.answer},
        "extra_info": {"split": split, "index": i, "question": p.prompt, "answer": p.answer},
    } for i, p in enumerate(problems)]


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


REWARD_FILE = '''"""verl reward function written by rlvr_nb.backends.verl_launcher: grader {grader!r} (rlvr_nb.evaluate)."""

GRADER = {grader!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    from rlvr_nb.evaluate import exact_grader, math_grader  # imported in verl's reward worker

    grade = exact_grader if GRADER == "exact" else math_grader
    return float(grade(solution_str, str(ground_truth)))
'''


def write_reward_file(path: Path, grader: str) -> Path:
    if grader not in ("exact", "math"):
        raise ValueError(f"grader must be 'exact' or 'math', got {grader!r}")
    path.write_text(REWARD_FILE.format(grader=grader))
    return path


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
        "data.truncation": "error",
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


# ----------------------------------------------------------------------------------------------------
# Running


@dataclass
class VerlRun:
    cfg: VerlRunConfig
    files: RunFiles
    command: list[str]
    n_train: int
    returncode: int | None = None
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)


def prepare_run(cfg: VerlRunConfig, validate_against_verl: bool | None = None) -> VerlRun:
    """Write data, reward file, command.sh and launch.json into a fresh output_dir; returns the run.

    validate_against_verl: check the overrides against the installed verl's config (None: when verl is
    installed)."""
    validate(cfg)
    if not Path(cfg.model_path).is_dir():
        raise FileNotFoundError(f"model_path {cfg.model_path} is not a directory (a HuggingFace model)")
    files = RunFiles(Path(cfg.output_dir).resolve())
    if files.verl_checkpoints.exists() and any(files.verl_checkpoints.iterdir()):
        raise FileExistsError(f"{files.verl_checkpoints} already holds checkpoints; every verl run here starts "
                              "fresh (resume_mode=disable): choose a new output_dir")
    r = resolve(cfg)
    train, val, source = task_problems(cfg)
    write_parquet(verl_rows(train, source, "train", r.prompt_suffix), files.train)
    write_parquet(verl_rows(val, source, "val", r.prompt_suffix), files.val)
    write_reward_file(files.reward, r.grader)
    overrides = build_overrides(cfg, len(train))
    if validate_against_verl or (validate_against_verl is None and importlib.util.find_spec("verl") is not None):
        validate_overrides(overrides)
    command = verl_command(overrides)
    env_line = f"VERL_FILE_LOGGER_PATH={shlex.quote(str(files.metrics))}"
    files.command.write_text("#!/bin/sh\n# written by rlvr_nb.backends.verl_launcher\ncd " + shlex.quote(str(files.root))
                             + f" && {env_line} " + shlex.join(command) + "\n")
    files.launch.write_text(json.dumps({"config": asdict(cfg), "resolved": asdict(r), "command": command,
                                        "n_train": len(train), "n_val": len(val),
                                        "verl_validated_against": VERL_VERSION}, indent=2))
    return VerlRun(cfg, files, command, len(train))


STEP_LINE = re.compile(r"\bstep:(\d+) - ")
SCORE = re.compile(r"critic/score/mean:(-?[\d.e+-]+)")


def launch(run: VerlRun, progress: bool = True, echo: bool = False) -> VerlRun:
    """Run verl as a subprocess in the run directory; every output line goes to verl.log as it comes,
    a tqdm bar follows the steps (and the mean reward). Raises RuntimeError with the log's tail on failure."""
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(run.files.metrics), "PYTHONUNBUFFERED": "1",
           "HYDRA_FULL_ERROR": "1"}
    bar = tqdm(total=run.cfg.steps, desc=f"verl {run.cfg.adv_estimator}", disable=not progress)
    tail: list[str] = []
    with open(run.files.log, "w") as log, subprocess.Popen(
            run.command, cwd=run.files.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            tail = (tail + [line])[-40:]
            if echo:
                print(line, end="")
            if m := STEP_LINE.search(line):
                bar.update(int(m.group(1)) - bar.n)
                if s := SCORE.search(line):
                    bar.set_postfix(score=float(s.group(1)))
        run.returncode = proc.wait()
    bar.close()
    if run.returncode != 0:
        raise RuntimeError(f"verl exited with code {run.returncode}; log: {run.files.log}\n" + "".join(tail))
    run.checkpoints = ingest_verl_checkpoints(run.files.verl_checkpoints, run.files.root, run.cfg.model_path,
                                              run.files.metrics)
    return run


def run_verl(cfg: VerlRunConfig, dry_run: bool = False, progress: bool = True) -> VerlRun:
    """Prepare the run directory; with dry_run print the exact command and stop, else train and ingest
    the checkpoints into <output_dir>/checkpoints/step_N/."""
    run = prepare_run(cfg)
    if dry_run:
        print(run.files.command.read_text().splitlines()[-1])
        return run
    return launch(run, progress=progress)


# ----------------------------------------------------------------------------------------------------
# verl checkpoints -> our layout


GLOBAL_STEP = re.compile(r"^global_step_(\d+)$")
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def list_verl_checkpoints(verl_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, <verl_dir>/global_step_N/actor/huggingface) for every checkpoint saved with HF weights.

    A checkpoint holding only FSDP shards is an error naming the fix (hf_model in save_contents, or
    `python -m verl.model_merger merge --backend fsdp --local_dir .../actor --target_dir OUT`)."""
    verl_dir = Path(verl_dir)
    if not verl_dir.is_dir():
        return []
    out = []
    for p in verl_dir.iterdir():
        if not (m := GLOBAL_STEP.match(p.name)) or not p.is_dir():
            continue
        hf = p / "actor" / "huggingface"
        if not any((hf / w).exists() for w in WEIGHTS):
            raise FileNotFoundError(
                f"{p} has no HF weights in actor/huggingface/: save with "
                "actor_rollout_ref.actor.checkpoint.save_contents including hf_model, or merge the shards: "
                f"python -m verl.model_merger merge --backend fsdp --local_dir {p / 'actor'} --target_dir OUT")
        out.append((int(m.group(1)), hf))
    return sorted(out)


def ingest_verl_checkpoints(verl_dir: str | Path, run_dir: str | Path, initial_model: str | Path | None = None,
                            metrics_path: str | Path | None = None) -> list[tuple[int, Path]]:
    """Link verl's HF checkpoints as <run_dir>/checkpoints/step_N/ (files symlinked, plus a
    trainer_state.json with the step and verl's metrics of that step); step_0 links initial_model."""
    metrics: dict[int, dict] = {}
    if metrics_path is not None and Path(metrics_path).exists():
        for line in Path(metrics_path).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                metrics[int(rec["step"])] = rec.get("data", {})
    sources = ([(0, Path(initial_model))] if initial_model is not None else []) + list_verl_checkpoints(verl_dir)
    out = []
    for step, src in sources:
        dst = Path(run_dir) / "checkpoints" / f"step_{step}"
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            link = dst / f.name
            if f.is_file() and f.name != "trainer_state.json" and not link.exists():
                link.symlink_to(f.resolve())
        state = {"step": step, "source": "verl" if step else "initial_model", "path": str(src.resolve()),
                 "metrics": metrics.get(step, {})}
        (dst / "trainer_state.json").write_text(json.dumps(state, indent=2))
        out.append((step, dst))
    return out


# ----------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlvr_nb.backends.verl_launcher", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(VerlRunConfig):
        default = f.default
        if f.name == "extra_overrides":
            p.add_argument("--override", dest=f.name, action="append", default=[], help=f"{f.name}: key=value")
        elif isinstance(default, bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=default)
        else:
            kind = type(default) if default is not None else (float if f.name.startswith("clip") else
                                                              int if f.name == "max_tokens_per_gpu" else str)
            p.add_argument(f"--{f.name}", type=kind, default=default)
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="prepare the run directory and print the command")
    return p


def main(argv: Sequence[str] | None = None) -> VerlRun:
    args = vars(_parser().parse_args(argv))
    dry = args.pop("dry_run")
    args["extra_overrides"] = tuple(args["extra_overrides"])
    return run_verl(VerlRunConfig(**args), dry_run=dry)


if __name__ == "__main__":
    main()


def from_rl_config(rl, model_path: str | Path, output_dir: str | Path, train_data: str | None = None,
                   n_gpus: int = 1) -> VerlRunConfig:
    """The verl run equivalent to one of our `RLConfig`s (the `gpu` profile of 01 and 06): same estimator,
    learning rate, batch, group size, clips, loss aggregation, steps, checkpoint spacing and seed."""
    return VerlRunConfig(
        model_path=str(model_path), output_dir=str(output_dir), train_data=train_data or EMBEDDED,
        adv_estimator=rl.adv_estimator, lr=rl.lr, weight_decay=rl.weight_decay, grad_clip=rl.grad_clip,
        prompts_per_step=rl.prompts_per_step, group_size=rl.group_size, temperature=rl.temperature,
        max_response_length=rl.max_new_tokens, steps=rl.steps, ckpt_every=rl.ckpt_every,
        clip_low=rl.clip_low, clip_high=rl.clip_high, loss_agg=rl.loss_agg, n_gpus=n_gpus, seed=rl.seed)
