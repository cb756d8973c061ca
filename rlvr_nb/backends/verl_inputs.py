"""What a verl run is given, checked before verl starts: the data files (`load_problems`), the training rows in
verl's format (`task_problems`, `verl_rows`), the model's tokenizer against what verl 0.9.1's rollout needs of
it (`check_tokenizer`), the prompt lengths (`check_prompts`), and the held-out problems of a run formatted the
way its training prompts were (`heldout_problems`). Each bad input is one ValueError naming the file, row or
model directory, raised before anything is written (`rlvr_nb.backends.verl_launcher.prepare_run` calls these
first).

verl 0.9.1 builds every rollout prompt with a "continuous token" builder chosen by the model's config.json
model_type (verl/utils/tokenizer/continuous_token_wiring.py). For the Qwen family (model_type qwen2, qwen3,
...) its QwenContinuousTokenBuilder raises unless "\\n" encodes as exactly one token and '<|im_end|>' is a token
(continuous_token.py); every builder renders the row's messages with apply_chat_template, which raises for a
tokenizer without a chat template. Both would fail inside verl's rollout workers, after Ray, FSDP and vLLM have
started; here they fail first, with the model directory named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from rlvr_nb.backends.verl_config import EMBEDDED, MATH_SUFFIX, VERL_VERSION, PromptFormat, VerlRunConfig
from rlvr_nb.checkpoint_files import find_checkpoints, read_json
from rlvr_nb.tasks import AdditionTask, Problem, TaskConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# model_type -> verl 0.9.1's QwenContinuousTokenBuilder (continuous_token_wiring._MODEL_TYPE_TO_FAMILY)
QWEN_MODEL_TYPES = ("qwen2", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_5_moe")
QWEN_TURN_END = "<|im_end|>"


# ----------------------------------------------------------------------------------------------------
# Data files


def load_problems(path: str | Path, question_key: str = "question", answer_key: str = "answer",
                  what: str = "data file") -> list[Problem]:
    """Problems from a local .jsonl or .parquet file whose every row has a question and an answer.

    what: how the error names the file (e.g. 'data_path'). Raises FileNotFoundError for a missing file and
    ValueError for anything else wrong with it (unreadable, not JSON, no rows, a row without either key)."""
    if not path:
        raise ValueError(f"{what} is required: a .jsonl or .parquet file with {question_key!r} and {answer_key!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: " + ("not a file" if path.exists() else "no such file"))
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{what} {path}: data files must be .jsonl or .parquet")
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{what} {path} cannot be read: {e}") from None
        rows, where = [], []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{what} {path}, line {n}: not JSON ({e})") from None
                where.append(f"line {n}")
    else:
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # OSError, or pyarrow's error for a file that is not parquet
            raise ValueError(f"{what} {path} cannot be read as parquet: {e}") from None
        where = [f"row {i}" for i in range(len(rows))]
    if not rows:
        raise ValueError(f"{what} {path} holds no rows")
    for row, at in zip(rows, where):
        if not isinstance(row, dict):
            raise ValueError(f"{what} {path}, {at}: a row must be an object, got {type(row).__name__}")
        missing = [k for k in (question_key, answer_key) if row.get(k) is None]
        if missing:
            raise ValueError(f"{what} {path}, {at}: no {' or '.join(map(repr, missing))}; its columns are "
                             f"{sorted(row)} (set question_key / answer_key)")
    return [Problem(str(r[question_key]), str(r[answer_key])) for r in rows]


def task_problems(cfg: VerlRunConfig) -> tuple[list[Problem], list[Problem], str]:
    """(train, val, data_source). The embedded task gets steps * prompts_per_step fresh training problems
    (one epoch, like our own trainer) drawn with the seed, and its fixed held-out split as val."""
    if cfg.train_data == EMBEDDED:
        task = AdditionTask(TaskConfig(digits=cfg.embedded_digits, seed=cfg.seed))
        train = task.sample_train(cfg.steps * cfg.prompts_per_step, torch.Generator().manual_seed(cfg.seed))
        return train, list(task.eval_problems), f"rlvr_nb/addition{cfg.embedded_digits}"
    train = load_problems(cfg.train_data, cfg.question_key, cfg.answer_key, what="train_data")
    val = (load_problems(cfg.val_data, cfg.question_key, cfg.answer_key, what="val_data") if cfg.val_data
           else train[: min(len(train), 64)])
    return train, val, f"rlvr_nb/{Path(cfg.train_data).stem}"


def verl_rows(problems: Sequence[Problem], data_source: str, split: str, fmt: PromptFormat) -> list[dict]:
    """verl's RL dataset rows: `prompt` is the chat-message list of `fmt`, the reward spec is rule-based."""
    return [{
        "data_source": data_source,
        "prompt": fmt.messages(p.prompt),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": p.answer},
        "extra_info": {"split": split, "index": i, "question": p.prompt, "answer": p.answer},
    } for i, p in enumerate(problems)]


# ----------------------------------------------------------------------------------------------------
# The model's tokenizer and the prompts, as verl's rollout will see them


def verl_tokenizer(model_path: str | Path, fmt: PromptFormat) -> "PreTrainedTokenizerBase":
    """The tokenizer verl's workers use: the model directory's own (verl's hf_tokenizer: AutoTokenizer, no remote
    code) with the run's chat template set on it (verl's HFModelConfig sets custom_chat_template so)."""
    from rlvr_nb.models import load_tokenizer

    try:
        tok = load_tokenizer(model_path)
    except Exception as e:
        raise ValueError(f"verl {VERL_VERSION} cannot load the tokenizer of the model at {model_path}: {e}") from None
    if fmt.chat_template is not None:
        tok.chat_template = fmt.chat_template
    return tok


def tokenizer_problems(tok, model_type: str | None, fmt: PromptFormat, question: str) -> list[str]:
    """What verl 0.9.1's rollout would raise on with this tokenizer, one sentence each (empty: nothing)."""
    out = []
    if model_type in QWEN_MODEL_TYPES:
        builder = f"for config.json model_type {model_type!r} verl's rollout uses its Qwen prompt builder, which"
        ids = tok.encode("\n", add_special_tokens=False)
        if len(ids) != 1:
            out.append(f"{builder} needs \"\\n\" to encode as exactly one token; this tokenizer encodes it as {ids}")
        end = tok.convert_tokens_to_ids(QWEN_TURN_END)
        if isinstance(end, list):
            end = end[0] if len(end) == 1 else None
        if not isinstance(end, int) or end < 0:
            out.append(f"{builder} needs the token {QWEN_TURN_END!r}; this tokenizer has none")
    try:
        fmt.render(tok, question)
    except Exception as e:
        first = re.split(r"(?<=[.!])\s", str(e).strip())[0] or type(e).__name__  # transformers' first sentence
        out.append("its tokenizer has no usable chat template, and verl renders every prompt with "
                   f"apply_chat_template ({first}); give chat_template or a model whose tokenizer has one")
    return out


def check_tokenizer(model_path: str | Path, fmt: PromptFormat, question: str) -> "PreTrainedTokenizerBase":
    """The tokenizer of model_path as verl will use it, or one ValueError naming the directory and listing
    everything verl 0.9.1's rollout would fail on (see the module docstring)."""
    config = read_json(Path(model_path) / "config.json") if (Path(model_path) / "config.json").is_file() else {}
    model_type = config.get("model_type") if isinstance(config, dict) else None
    tok = verl_tokenizer(model_path, fmt)
    found = tokenizer_problems(tok, model_type, fmt, question)
    if found:
        raise ValueError(f"verl {VERL_VERSION} would fail on the model at {model_path} before its first step:\n  - "
                         + "\n  - ".join(found))
    return tok


def prompt_lengths(tok, fmt: PromptFormat, questions: Sequence[str]) -> list[int]:
    """Tokens of each rendered prompt (no special tokens added: the template holds them)."""
    texts = [fmt.render(tok, q) for q in questions]
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]] if texts else []


def check_prompts(tok, fmt: PromptFormat, problems: Sequence[Problem], max_prompt_length: int, where: str) -> None:
    """Refuse prompts longer than max_prompt_length tokens (chat template included): verl 0.9.1 would not refuse
    them (data.truncation is read nowhere) but left-truncate them in its rollout, keeping the question's end only."""
    lengths = prompt_lengths(tok, fmt, [p.prompt for p in problems])
    over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
    if over:
        i = max(over, key=lambda j: lengths[j])
        raise ValueError(f"{len(over)} prompt(s) of {where} are longer than max_prompt_length={max_prompt_length} "
                         f"tokens (chat template included), the longest row {i} with {lengths[i]} tokens: "
                         f"{problems[i].prompt[:80]!r}; verl {VERL_VERSION} would left-truncate them: raise "
                         "max_prompt_length or shorten them")


# ----------------------------------------------------------------------------------------------------
# Evaluation prompts formatted as training's


def run_prompt_format(run_dir: str | Path) -> PromptFormat:
    """The prompt format a run of the launcher trained with (its launch.json); for a run without launch.json,
    the launcher's default for data files: the \\boxed{} instruction and the model's own chat template."""
    f = Path(run_dir) / "launch.json"
    if not f.is_file():
        return PromptFormat(MATH_SUFFIX, None)  # what `resolve` gives for file data
    launch = read_json(f)
    resolved = launch.get("resolved") if isinstance(launch, dict) else None
    if not isinstance(resolved, dict) or "prompt_suffix" not in resolved or "chat_template" not in resolved:
        raise ValueError(f"{f} has no resolved prompt_suffix / chat_template (not written by the verl launcher)")
    return PromptFormat(resolved["prompt_suffix"], resolved["chat_template"])


def heldout_problems(path: str | Path, run_dir: str | Path, question_key: str = "question",
                     answer_key: str = "answer") -> list[Problem]:
    """The problems of a held-out .jsonl / .parquet file, each prompt formatted as the run's training prompts were
    (`run_prompt_format`, rendered by the tokenizer of the run's first checkpoint); grade them with 'math', as
    the run's reward did. Evaluating the raw questions instead would score a model on prompts it never saw."""
    problems = load_problems(path, question_key, answer_key, what="eval_data")
    fmt = run_prompt_format(run_dir)
    first = find_checkpoints(run_dir)[0][1]
    tok = verl_tokenizer(first, fmt)
    found = tokenizer_problems(tok, None, fmt, problems[0].prompt)
    if found:
        raise ValueError(f"cannot format the prompts of {path} for the run at {run_dir}: the tokenizer at {first}: "
                         + "; ".join(found))
    return [Problem(fmt.render(tok, p.prompt), p.answer) for p in problems]
