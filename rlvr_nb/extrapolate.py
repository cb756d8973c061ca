"""Using the linearity (PAPER.md Sec. 6): weight-space and logits-space extrapolation, and the alpha slider.

Both extrapolations read the RL trajectory as a straight line through two checkpoints, base (step
t_base) and second (step t_second), and follow it to a target step:
alpha = (t_target - t_base) / (t_second - t_base).

- `extrapolate_weights` writes W_base + alpha (W_second - W_base) as a complete HuggingFace directory,
  streamed tensor by tensor (and row block by row block), so a checkpoint of any size needs only a few
  tensors' worth of memory.
- `LogitsExtrapolationPolicy` steps both checkpoints on the same prefixes (each with its own KV cache)
  and samples from l_base + alpha (l_second - l_base); it is a policy for `rlvr_nb.evaluate.evaluate`.
- `ResponseLogits`: teacher-forced logits of a few example responses under base and second, cached, so
  the log-prob of any alpha is recomputed at once (the slider of `rlvr_nb.notebook.widgets.alpha_explorer`).

Checkpoints are read and written through the one checkpoint layer (`rlvr_nb.checkpoint_files`,
`rlvr_nb.checkpoint_writes`): the output is written beside its target and renamed in, it may not be, hold
or lie inside an input, and replacing it deletes only files this package wrote.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from rlvr_nb.checkpoint_files import (FLOATING_DTYPES, READ_DTYPES, TOKENIZER_FILES, WEIGHT_INDEX, check_same_tokenizer,
                                      read_rows, read_safetensors_header, read_step, read_weight_index, weight_files)
from rlvr_nb.checkpoint_writes import atomic_dir, refuse_overlap, write_safetensors
from rlvr_nb.evaluate import EvalConfig, EvalResult, ModelPolicy, Policy, as_policy, evaluate
from rlvr_nb.sampling import generate

COPIED_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES
CHUNK_ELEMENTS = 1 << 24  # rows are processed in blocks of at most this many elements (64 MiB in float32)

# ----------------------------------------------------------------------------------------------------
# The equations


def alpha_for(t_base: float, t_second: float, t_target: float) -> float:
    """PAPER.md Sec. 6, extrapolation coefficient: alpha = (t_target - t_base) / (t_second - t_base)."""
    if t_second == t_base:
        raise ValueError(f"base and second are at the same step ({t_base}); alpha is undefined")
    return (t_target - t_base) / (t_second - t_base)


def target_step_for(t_base: float, t_second: float, alpha: float) -> float:
    """The step an extrapolation reaches: t_base + alpha (t_second - t_base)."""
    return t_base + alpha * (t_second - t_base)


def extrapolate_tensor(w_base: torch.Tensor, w_second: torch.Tensor, alpha: float) -> torch.Tensor:
    """PAPER.md Sec. 6, weight-space extrapolation: W = W_base + alpha (W_second - W_base), in float32.

    Computed as W_second + (alpha - 1) (W_second - W_base), the same line, so that alpha = 1 gives
    W_second bit for bit (and the extrapolated model at alpha = 1 samples exactly like second)."""
    w_base, w_second = w_base.float(), w_second.float()
    return w_second + (alpha - 1.0) * (w_second - w_base)


def mix_logits(l_base: torch.Tensor, l_second: torch.Tensor, alpha: float) -> torch.Tensor:
    """PAPER.md Sec. 6, output-space extrapolation: l = l_base + alpha (l_second - l_base). [..., V]

    The one mixing of the package, used by the CPU policy (`LogitsExtrapolationPolicy`) and inside vLLM
    (`rlvr_nb.backends.vllm_extrapolation`, on GPU tensors). Precision: float32 in, float32 out, computed
    as l_second + (alpha - 1) (l_second - l_base) (the same line, as `extrapolate_tensor` does), so that
    alpha = 1 gives l_second bit for bit; alpha = 0 returns l_base bit for bit. Measured against a float64
    computation rounded to float32 on [64, 151936] logits: at most 1 ulp apart (1e-6 at |l| ~ 10), log-softmax
    within 1.4e-6, no argmax changed; float64 took 2.3x as long on CPU."""
    if l_base.shape != l_second.shape:
        raise ValueError(f"logit shapes differ: {tuple(l_base.shape)} vs {tuple(l_second.shape)}")
    if alpha == 0:
        return l_base.to(torch.float32, copy=True)
    l_base, l_second = l_base.float(), l_second.float()
    return l_second + (alpha - 1.0) * (l_second - l_base)


def is_norm_weight(name: str) -> bool:
    """Normalisation tensors (input_layernorm, post_attention_layernorm, model.norm, q_norm, ...):
    not extrapolated but copied from the second checkpoint (PAPER.md Sec. 6)."""
    return "norm" in name.lower()


# ----------------------------------------------------------------------------------------------------
# Weight-space extrapolation


def extrapolate_weights(
    base_dir: str | Path,
    second_dir: str | Path,
    out_dir: str | Path,
    alpha: float | None = None,
    target_step: float | None = None,
    base_step: int | None = None,
    second_step: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write W_base + alpha (W_second - W_base) as a complete HuggingFace directory at out_dir
    (PAPER.md Sec. 6, weight-space extrapolation).

    Give alpha, or target_step (alpha = (target - t_base) / (t_second - t_base), steps read from each
    checkpoint's trainer_state.json unless given). Normalisation tensors and non-float tensors are
    copied from second; every other tensor is computed in float32 and written in its stored dtype.
    The output keeps second's sharding, config, generation config and tokenizer files, and adds
    extrapolation.json (base, second, alpha, steps). It is written beside out_dir and renamed into
    place, so out_dir never holds a half-written model.
    """
    base, second, out = Path(base_dir), Path(second_dir), Path(out_dir)
    for d, what in ((base, "base"), (second, "second")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} checkpoint directory {d} does not exist")
    if base.resolve() == second.resolve():
        raise ValueError(f"base and second are the same checkpoint ({base.resolve()})")
    refuse_overlap(out, (base, second), "out_dir")
    if (alpha is None) == (target_step is None):
        raise ValueError("give exactly one of alpha and target_step")
    if target_step is not None:
        base_step = read_step(base) if base_step is None else base_step
        second_step = read_step(second) if second_step is None else second_step
        alpha = alpha_for(base_step, second_step, target_step)
    else:
        base_step = base_step if base_step is not None else read_step(base, missing_ok=True)
        second_step = second_step if second_step is not None else read_step(second, missing_ok=True)
        if base_step is not None and second_step is not None and base_step != second_step:
            target_step = target_step_for(base_step, second_step, alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"out_dir {out} already exists; pass overwrite=True to replace a model this package wrote")
    check_same_tokenizer([base, second])

    head_base, head_second = read_weight_index(base), read_weight_index(second)
    if set(head_base) != set(head_second):
        only_b, only_s = sorted(set(head_base) - set(head_second)), sorted(set(head_second) - set(head_base))
        raise ValueError(f"base and second hold different tensors: only in base {only_b[:5]}, only in second {only_s[:5]}")
    for name, ts in head_second.items():
        tb = head_base[name]
        if (tb.dtype, tb.shape) != (ts.dtype, ts.shape):
            raise ValueError(f"tensor {name}: base has dtype/shape {(tb.dtype, tb.shape)}, second has {(ts.dtype, ts.shape)}")
        if ts.dtype not in READ_DTYPES:
            raise ValueError(f"{ts.file}: tensor {name} has dtype {ts.dtype}, which is not read")
    by_file: dict[Path, list[str]] = {}
    for name, ts in sorted(head_second.items(), key=lambda kv: kv[1].offset):
        by_file.setdefault(ts.file, []).append(name)

    counts = {"extrapolated": 0, "copied_from_second": 0}
    with atomic_dir(out, (base, second), replace=overwrite) as tmp:
        bar = tqdm(total=len(head_second), desc="extrapolating", disable=not progress, leave=False)
        for file, names in by_file.items():

            def chunks() -> Iterator[torch.Tensor]:
                for name in names:
                    ts, tb = head_second[name], head_base[name]
                    mixed = ts.dtype in FLOATING_DTYPES and not is_norm_weight(name)
                    counts["extrapolated" if mixed else "copied_from_second"] += 1
                    n_rows = ts.shape[0] if ts.shape else 1
                    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(ts.shape[1:]))) if ts.shape else 1
                    for r in range(0, max(n_rows, 1), step):
                        block = read_rows(ts, name, r, min(r + step, n_rows))  # [rows, ...]
                        if mixed:
                            mix = extrapolate_tensor(read_rows(tb, name, r, min(r + step, n_rows)), block, alpha)
                            if not torch.isfinite(mix).all():
                                raise ValueError(f"tensor {name} (rows {r}..{min(r + step, n_rows)}) is not finite "
                                                 f"after extrapolation: base {base} or second {second} holds NaN/Inf "
                                                 "there, or alpha overflows its dtype; nothing was written")
                            block = mix.to(block.dtype)
                        yield block
                    bar.update(1)

            _, metadata = read_safetensors_header(file)
            write_safetensors(tmp / file.name, [(n, head_second[n].dtype, head_second[n].shape) for n in names],
                              metadata, chunks())
        bar.close()
        for name in COPIED_FILES + (WEIGHT_INDEX,):
            if (second / name).is_file():
                shutil.copy2(second / name, tmp / name)
        note = {"method": "weight-space extrapolation, PAPER.md Sec. 6", "base": str(base.resolve()),
                "second": str(second.resolve()), "alpha": alpha, "base_step": base_step,
                "second_step": second_step, "target_step": target_step, "tensors": counts,
                "norm_weights": "copied from second"}
        (tmp / "extrapolation.json").write_text(json.dumps(note, indent=2))
    return out


def weight_extrapolation_accuracy(
    base_dir: str | Path, second_dir: str | Path, alphas: Sequence[float], out_root: str | Path,
    problems, cfg: EvalConfig = EvalConfig(), *, grader="exact", cache_dir: str | Path | None = None,
    progress: bool = True, make_policy: Callable[[Path], Policy] | None = None,
) -> dict[float, EvalResult]:
    """Evaluate weight-extrapolated models at each alpha (the points of PAPER.md Figure 5). Each model is
    written to `<out_root>/<base>-to-<second>-alpha<alpha>` and reused when it is already there, made from
    the same base, second and alpha after their weights were last written. alpha = 1 is second itself
    (bit for bit, see `extrapolate_tensor`), evaluated without writing a copy.

    make_policy(model_dir) builds the sampler (default: `ModelPolicy` on CPU; e.g. `VllmPolicy` on GPU);
    a policy with a `close()` method is closed after its evaluation."""
    base, second = Path(base_dir), Path(second_dir)
    results = {}
    for a in tqdm(alphas, desc="alphas", disable=not progress):
        if not math.isfinite(a) or a <= 0:
            raise ValueError(f"alpha must be a positive number, got {a}")
        out = second if a == 1 else Path(out_root) / f"{base.name}-to-{second.name}-alpha{a:g}"
        if a != 1 and not _same_extrapolation(out / "extrapolation.json", base, second, a):
            extrapolate_weights(base, second, out, alpha=a, overwrite=True, progress=False)
        results[a] = evaluate_and_close(make_policy(out) if make_policy else out, problems, cfg, grader=grader,
                                        cache_dir=cache_dir)
    return results


def evaluate_and_close(policy, problems, cfg: EvalConfig, *, grader="exact", cache_dir=None) -> EvalResult:
    """`evaluate` without a progress bar, then `policy.close()` when the policy has one (a vLLM engine
    holds its GPU memory until closed)."""
    try:
        return evaluate(policy, problems, cfg, grader=grader, cache_dir=cache_dir, progress=False)
    finally:
        close = getattr(policy, "close", None)
        if callable(close):
            close()


def _same_extrapolation(note_file: Path, base: Path, second: Path, alpha: float) -> bool:
    """Does note_file record this extrapolation, written after both inputs' weights?"""
    if not note_file.exists():
        return False
    note = json.loads(note_file.read_text())
    same = note.get("base") == str(base.resolve()) and note.get("second") == str(second.resolve()) and note.get("alpha") == alpha
    inputs = [f for d in (base, second) for f in weight_files(d)]
    return same and note_file.stat().st_mtime_ns >= max(f.stat().st_mtime_ns for f in inputs)


# ----------------------------------------------------------------------------------------------------
# Logits-space extrapolation


class LogitsExtrapolationPolicy:
    """Samples from l_base + alpha (l_second - l_base) (PAPER.md Sec. 6, output-space extrapolation):
    both checkpoints run on the same prefixes, each with its own KV cache, batched."""

    def __init__(self, base: Policy | str | Path, second: Policy | str | Path, alpha: float, *,
                 tokenizer=None, label: str | None = None) -> None:
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        self.base, self.second = as_policy(base, tokenizer), as_policy(second, tokenizer)
        for p in (self.base, self.second):
            if not isinstance(p, ModelPolicy):
                raise TypeError(f"base and second must be single models, got {p!r}")
        if self.base.tokenizer.get_vocab() != self.second.tokenizer.get_vocab():
            raise ValueError("the tokenizers of base and second differ")
        self.alpha = float(alpha)
        self.label = label or f"logits-extra({self.base.label} -> {self.second.label}, alpha={self.alpha:g})"

    @property
    def tokenizer(self):
        return self.second.tokenizer

    def sample(self, input_ids, attention_mask, *, max_new_tokens, temperature, top_p, generator):
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return generate([self.base.model, self.second.model], input_ids, attention_mask,
                        max_new_tokens=max_new_tokens, eos_id=tok.eos_token_id, pad_id=pad,
                        temperature=temperature, top_p=top_p, generator=generator,
                        mix=lambda logits: mix_logits(logits[0], logits[1], self.alpha))

    def fingerprint(self) -> str:
        import hashlib

        key = f"logits-extrapolation|{self.base.fingerprint()}|{self.second.fingerprint()}|{self.alpha!r}"
        return hashlib.sha256(key.encode()).hexdigest()

    def describe(self) -> dict:
        return {"kind": "logits-extrapolation", "label": self.label, "alpha": self.alpha,
                "base": self.base.describe(), "second": self.second.describe()}

    def __repr__(self) -> str:
        return f"LogitsExtrapolationPolicy({self.label!r})"


# ----------------------------------------------------------------------------------------------------
# Cached teacher-forced logits (for the alpha slider)


@dataclass
class ResponseLogits:
    """Teacher-forced next-token logits of a few example responses under base and several seconds."""

    prompts: list[str]
    responses: list[str]
    token_ids: list[torch.Tensor]
    """Response tokens, EOS included, one [T_i] per response."""
    token_text: list[list[str]]
    """The same tokens as text, for axis labels."""
    base_step: int
    base_logits: list[torch.Tensor]
    """Logits at the response positions under base, one [T_i, V] per response."""
    second_logits: dict[int, list[torch.Tensor]]
    """t_second -> logits under that checkpoint, one [T_i, V] per response."""

    def logprobs(self, t_second: int, alpha: float) -> list[torch.Tensor]:
        """log p of each response token under mixed logits (alpha = 0 is base, 1 is second), [T_i] each."""
        if t_second not in self.second_logits:
            raise ValueError(f"no cached logits for t_second={t_second}; have {sorted(self.second_logits)}")
        return [mixed_logprobs(lb, ls, ids, alpha)
                for lb, ls, ids in zip(self.base_logits, self.second_logits[t_second], self.token_ids)]

    def logprob_shift(self, t_second: int, alpha: float) -> list[torch.Tensor]:
        """log p(alpha) - log p(base) per response token, [T_i] each."""
        return [a - b for a, b in zip(self.logprobs(t_second, alpha), self.logprobs(t_second, 0.0))]


def mixed_logprobs(l_base: torch.Tensor, l_second: torch.Tensor, token_ids: torch.Tensor, alpha: float) -> torch.Tensor:
    """log_softmax(l_base + alpha (l_second - l_base)) at the given tokens: [T, V], [T, V], [T] -> [T]."""
    logp = torch.log_softmax(mix_logits(l_base, l_second, alpha), dim=-1)  # [T, V]
    return logp.gather(-1, token_ids[:, None]).squeeze(-1)


@torch.no_grad()
def teacher_forced_logits(model, tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(response token ids [T] with EOS appended, logits predicting each of them [T, V])."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if not p:
        raise ValueError("teacher forcing needs a non-empty prompt")
    logits = model(input_ids=torch.tensor([p + r])).logits[0].float()  # [P + T, V]
    return torch.tensor(r), logits[len(p) - 1 : len(p) + len(r) - 1]


def cache_response_logits(base: Policy | str | Path, seconds: Mapping[int, Policy | str | Path],
                          prompts: Sequence[str], responses: Sequence[str], base_step: int = 0,
                          tokenizer=None) -> ResponseLogits:
    """Teacher-force the example (prompt, response) pairs through base and every second checkpoint."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("give as many responses as prompts (at least one)")
    if not seconds:
        raise ValueError("give at least one second checkpoint: {t_second: checkpoint}")
    base_p = as_policy(base, tokenizer)
    tok = base_p.tokenizer
    ids, base_logits = zip(*[teacher_forced_logits(base_p.model, tok, p, r) for p, r in zip(prompts, responses)])
    second_logits = {}
    for t, s in seconds.items():
        sp = as_policy(s, tokenizer)
        if sp.tokenizer.get_vocab() != tok.get_vocab():
            raise ValueError(f"the tokenizer of the second checkpoint at step {t} differs from base's")
        second_logits[int(t)] = [teacher_forced_logits(sp.model, tok, p, r)[1] for p, r in zip(prompts, responses)]
    text = [[tok.convert_ids_to_tokens(i) for i in row.tolist()] for row in ids]
    return ResponseLogits(list(prompts), list(responses), list(ids), text, base_step, list(base_logits), second_logits)
