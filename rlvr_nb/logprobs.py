"""Sec. 4 of the paper, output linearity: log-probs of fixed probe responses, checkpoint by checkpoint.

Probe responses are sampled once from the first checkpoint (k per prompt, fixed seed) and saved as JSONL
(prompt text, response token ids, response text), so the same probes can be re-used on another run.
Each response token's teacher-forced log-prob

    l_t(i) = log p_t(y_i | x, y_<i)

is a trajectory over the checkpoints t; tokens whose log-prob changed by more than 0.2 between the first
and the last checkpoint are kept, and each gets the R^2 of its least-squares line against the step
(`linearity.r2_against_steps`, the same function as for weights).

The tokenizer is read from the first checkpoint that holds tokenizer files (trainers do not always save
one; `load_trajectory` has checked that those that do agree). Probes are checked against the model's
vocabulary before any forward pass: an id outside it is an error naming the probe, the id and the size.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from rlvr_nb.checkpoint_files import CheckpointError, has_tokenizer, read_json
from rlvr_nb.checkpoint_writes import write_text
from rlvr_nb.linearity import TrajectoryLinearity, trajectory_linearity
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.sampling import encode_prompts, generate
from rlvr_nb.trajectory import Trajectory


@dataclass(frozen=True)
class ProbeConfig:
    responses_per_prompt: int = 8
    """k: responses sampled per prompt (the paper: 64 per AIME24 question)."""
    max_new_tokens: int = 8
    """Longest response in tokens."""
    temperature: float = 1.0
    """Sampling temperature of the probe responses."""
    top_p: float = 1.0
    """Nucleus mass of the probe responses."""
    seed: int = 0
    """Seed of the probe sampling."""
    batch_size: int = 256
    """Sequences per forward pass, when sampling and when teacher-forcing."""


@dataclass(frozen=True)
class Probe:
    """One fixed response to one prompt."""

    prompt: str
    response_ids: list[int]
    """Response token ids, EOS included when the response ended with it."""
    response_text: str


def sample_probes(model: PreTrainedModel, tokenizer, prompts: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                  progress: bool = True) -> list[Probe]:
    """k responses per prompt sampled from `model` with a fixed seed (rlvr_nb.sampling.generate)."""
    if not prompts:
        raise ValueError("no prompts to sample probe responses for")
    if cfg.responses_per_prompt < 1:
        raise ValueError(f"responses_per_prompt must be >= 1, got {cfg.responses_per_prompt}")
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = [p for p in prompts for _ in range(cfg.responses_per_prompt)]
    probes: list[Probe] = []
    for i in tqdm(range(0, len(rows), cfg.batch_size), desc="sampling probes", unit="batch", disable=not progress):
        batch = rows[i : i + cfg.batch_size]
        ids, am = encode_prompts(tokenizer, batch)
        tokens, mask = generate(model, ids, am, max_new_tokens=cfg.max_new_tokens, eos_id=tokenizer.eos_token_id,
                                pad_id=tokenizer.pad_token_id, temperature=cfg.temperature, top_p=cfg.top_p,
                                generator=generator)
        for prompt, row, m in zip(batch, tokens.tolist(), mask.tolist()):
            resp = [t for t, keep in zip(row, m) if keep]
            probes.append(Probe(prompt, resp, tokenizer.decode(resp, skip_special_tokens=True)))
    return probes


def probes_from_first_checkpoint(traj: Trajectory, prompts: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                                 progress: bool = True) -> list[Probe]:
    """Probe responses sampled from the trajectory's first checkpoint (the paper: the base model)."""
    tokenizer = load_tokenizer(tokenizer_dir(traj))
    return sample_probes(load_model(traj.dirs[0]), tokenizer, prompts, cfg, progress)


def tokenizer_dir(traj: Trajectory) -> Path:
    """The first checkpoint directory of the trajectory that holds tokenizer files; ValueError when none does."""
    for d in traj.dirs:
        if has_tokenizer(d):
            return d
    raise ValueError(f"no checkpoint of the trajectory holds a tokenizer (no tokenizer.json, tokenizer.model or "
                     f"vocab.json in {traj.dirs[0]} or the {len(traj.dirs) - 1} other checkpoint directories); "
                     "token log-probs need one: copy the base model's tokenizer files into a checkpoint, or pass "
                     "the base model (--base) as step 0")


def check_probes(probes: Sequence[Probe], vocab_size: int, where: str | Path, need_tokens: bool = True) -> None:
    """ValueError for an empty probe set (no response tokens, when need_tokens) or for a response token id
    outside the model's vocabulary, naming the probe, the id and the vocabulary size."""
    if need_tokens and not any(p.response_ids for p in probes):
        raise ValueError(f"the probe set holds no response tokens ({len(probes)} probe(s), every response empty): "
                         "there is no token log-prob to measure")
    for i, p in enumerate(probes):
        bad = [t for t in p.response_ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"probe {i} (prompt {p.prompt!r}) has response token id {bad[0]}, outside the "
                             f"vocabulary of {vocab_size} tokens of the model in {where}")


def vocab_size(model_dir: str | Path) -> int:
    """The vocabulary size in a checkpoint's config.json (the rows of its input embedding)."""
    cfg = read_json(Path(model_dir) / "config.json")
    size = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size")) if isinstance(cfg, dict) else None
    if not isinstance(size, int):
        raise CheckpointError(f"{Path(model_dir) / 'config.json'} gives no vocab_size")
    return size


def probe_file(run_dir: str | Path, prompts: Sequence[str], cfg: ProbeConfig) -> Path:
    """Where the probes of these prompts and this config live under a run: <run>/probes/probes-<hash>.jsonl."""
    blob = json.dumps({"prompts": list(prompts), "config": asdict(cfg)}, sort_keys=True)
    return Path(run_dir) / "probes" / f"probes-{hashlib.sha256(blob.encode()).hexdigest()[:10]}.jsonl"


def ensure_probes(traj: Trajectory, run_dir: str | Path, prompts: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                  progress: bool = True) -> tuple[list[Probe], Path]:
    """The probes of `probes_from_first_checkpoint`, read from `probe_file(run_dir, ...)` when already saved
    there, else sampled and saved there. Returns (probes, their JSONL file)."""
    path = probe_file(run_dir, prompts, cfg)
    if path.is_file():
        return load_probes(path), path
    probes = probes_from_first_checkpoint(traj, prompts, cfg, progress)
    return probes, save_probes(probes, path)


def save_probes(probes: Sequence[Probe], path: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """One JSON object per line: prompt, response_ids, response_text (written atomically; a path that is
    or lies inside one of `inputs` is refused)."""
    return write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in probes), inputs)


def load_probes(path: str | Path) -> list[Probe]:
    """Probes saved by `save_probes`; ValueError naming the line of a malformed record."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no probe file at {path}")
    probes = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            probes.append(Probe(str(rec["prompt"]), [int(t) for t in rec["response_ids"]], str(rec["response_text"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a probe record ({e})") from None
    if not probes:
        raise ValueError(f"{path} holds no probes")
    return probes


def teacher_forced_batch(tokenizer, probes: Sequence[Probe]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response ids, attention mask and response-token mask, all [B, L]."""
    prompt_ids = tokenizer([p.prompt for p in probes], add_special_tokens=False)["input_ids"]  # one batched call
    L = max(len(a) + len(p.response_ids) for a, p in zip(prompt_ids, probes))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(probes), L), pad, dtype=torch.long)
    attn = torch.zeros((len(probes), L), dtype=torch.long)
    resp = torch.zeros((len(probes), L), dtype=torch.bool)
    for i, (a, p) in enumerate(zip(prompt_ids, probes)):
        seq = a + p.response_ids
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        resp[i, len(a) : len(seq)] = True
    return ids, attn, resp


def teacher_forced_batches(tokenizer, probes: Sequence[Probe], batch_size: int = 256) -> list[tuple[torch.Tensor, ...]]:
    """`teacher_forced_batch` of every slice of `batch_size` probes (built once, reused at every checkpoint)."""
    return [teacher_forced_batch(tokenizer, probes[i : i + batch_size]) for i in range(0, len(probes), batch_size)]


@torch.no_grad()
def response_logprobs(model: PreTrainedModel, tokenizer, probes: Sequence[Probe], batch_size: int = 256,
                      batches: list[tuple[torch.Tensor, ...]] | None = None) -> np.ndarray:
    """Teacher-forced log p(y_i | x, y_<i) of every response token of every probe, in probe order [N].
    `batches`: the probes already encoded by `teacher_forced_batches` (skips the tokenizer)."""
    out = []
    for ids, attn, resp in batches if batches is not None else teacher_forced_batches(tokenizer, probes, batch_size):
        ids, attn = ids.to(model.device), attn.to(model.device)
        logits = model(input_ids=ids, attention_mask=attn).logits.float()  # [B, L, V]
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [B, L-1]
        out.append(logp.cpu()[resp[:, 1:]].double().numpy())  # response tokens, row by row
    return np.concatenate(out) if out else np.zeros(0)


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu": where checkpoints are teacher-forced."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def logprob_trajectories(traj: Trajectory, probes: Sequence[Probe], batch_size: int = 256,
                         progress: bool = True, device: str | None = None) -> np.ndarray:
    """Log-prob of every probe response token at every checkpoint: [T, N] float64 (each checkpoint is
    loaded on `device`, default `default_device()`). ValueError for probes without response tokens or with
    ids outside the model's vocabulary."""
    check_probes(probes, vocab_size(traj.dirs[0]), traj.dirs[0])
    batches = teacher_forced_batches(load_tokenizer(tokenizer_dir(traj)), probes, batch_size)
    rows = []
    for d in tqdm(traj.dirs, desc="teacher-forcing probes", unit="ckpt", disable=not progress):
        rows.append(response_logprobs(load_model(d).to(device or default_device()), None, probes, batches=batches))
    return np.stack(rows)


def token_positions(probes: Sequence[Probe]) -> list[str]:
    """A label per response token, in the order of `response_logprobs`: "probe <i> token <j>"."""
    return [f"probe {i} token {j}" for i, p in enumerate(probes) for j in range(len(p.response_ids))]


def token_linearity(traj: Trajectory, probes: Sequence[Probe], *, min_change: float = 0.2, threshold: float = 0.7,
                    batch_size: int = 256, n_examples: int = 4, seed: int = 0,
                    progress: bool = True) -> TrajectoryLinearity:
    """PAPER.md Sec. 4, output linearity: R^2 of each probe token's log-prob against the step, over the
    tokens whose log-prob moved by more than `min_change` between the first and last checkpoint."""
    lp = logprob_trajectories(traj, probes, batch_size, progress)  # [T, N]
    return logprob_linearity(lp, traj.steps, min_change=min_change, threshold=threshold,
                             labels=token_positions(probes), n_examples=n_examples, seed=seed)


def logprob_linearity(lp: np.ndarray, steps: Sequence[int], *, min_change: float = 0.2, threshold: float = 0.7,
                      labels: Sequence[str] | None = None, n_examples: int = 4, seed: int = 0) -> TrajectoryLinearity:
    """R^2 statistics of log-prob trajectories lp [T, N] held in memory (tokens that moved > min_change)."""
    lp = np.asarray(lp, np.float64)
    moved = np.abs(lp[-1] - lp[0]) > min_change  # [N]
    return trajectory_linearity(lp, steps, moved, threshold=threshold, labels=labels, n_examples=n_examples, seed=seed)
