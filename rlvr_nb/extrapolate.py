"""Using the linearity (PAPER.md Sec. 6): weight-space and logits-space extrapolation, and the alpha slider.

Both extrapolations read the RL trajectory as a straight line through two checkpoints, base (step
t_base) and second (step t_second), and follow it to a target step:
alpha = (t_target - t_base) / (t_second - t_base).

- `extrapolate_weights` writes W_base + alpha (W_second - W_base) as a complete HuggingFace directory,
  streamed tensor by tensor (and row block by row block), so a checkpoint of any size needs only a few
  tensors' worth of memory.
- `LogitsExtrapolationPolicy` steps both checkpoints on the same prefixes (each with its own KV cache)
  and samples from l_base + alpha (l_second - l_base); it is a policy for `rlvr_nb.evaluate.evaluate`.
- `ResponseLogits` / `alpha_explorer`: teacher-forced logits of a few example responses under base and
  second, cached, so the log-prob of any alpha is recomputed at once; the slider draws it beside the
  accuracy of weight-extrapolated models precomputed on a grid of alphas.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from rlvr_nb.evaluate import EvalConfig, EvalResult, ModelPolicy, Policy, as_policy, evaluate
from rlvr_nb.sampling import generate

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json")
COPIED_FILES = ("config.json", "generation_config.json") + TOKENIZER_FILES
CHUNK_ELEMENTS = 1 << 24  # rows are processed in blocks of at most this many elements (64 MiB in float32)
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


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
    """PAPER.md Sec. 6, output-space extrapolation: l = l_base + alpha (l_second - l_base).

    Computed in float64 and returned in float32, so that alpha = 1 gives exactly l_second."""
    l_base, l_second = l_base.double(), l_second.double()
    return (l_base + alpha * (l_second - l_base)).float()


def is_norm_weight(name: str) -> bool:
    """Normalisation tensors (input_layernorm, post_attention_layernorm, model.norm, q_norm, ...):
    not extrapolated but copied from the second checkpoint (PAPER.md Sec. 6)."""
    return "norm" in name.lower()


# ----------------------------------------------------------------------------------------------------
# Checkpoint files


def read_step(ckpt_dir: str | Path) -> int:
    """The RL step of a checkpoint, from its trainer_state.json ("step" or HF's "global_step")."""
    f = Path(ckpt_dir) / "trainer_state.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} not found: give the step explicitly (base_step= / second_step=)")
    state = json.loads(f.read_text())
    for key in ("step", "global_step"):
        if key in state:
            return int(state[key])
    raise ValueError(f"{f} has neither 'step' nor 'global_step'")


class SafetensorsFile:
    """The header of one .safetensors file and positioned reads of its tensors.

    Reads use plain file reads, not the memory map of `safetensors.safe_open`: pages of a memory-mapped
    file count in the process's resident set until it is closed, which would put whole checkpoints in
    RSS. Row blocks of a tensor are contiguous on disk, so a block is one read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        self.metadata: dict = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, dict] = header  # name -> {"dtype", "shape", "data_offsets"}
        self.data_start = 8 + n

    def names(self) -> list[str]:
        """Tensor names in the order of their data in the file."""
        return sorted(self.tensors, key=lambda k: self.tensors[k]["data_offsets"][0])

    def spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        t = self.tensors[name]
        if t["dtype"] not in DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {t['dtype']}")
        return t["dtype"], tuple(t["shape"])

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of a tensor (the whole tensor for 0-d ones), in its stored dtype."""
        dtype_str, shape = self.spec(name)
        dtype = DTYPES[dtype_str]
        row = math.prod(shape[1:]) * dtype.itemsize
        begin = self.data_start + self.tensors[name]["data_offsets"][0] + start * row
        n_bytes = (stop - start) * row if shape else dtype.itemsize
        out_shape = ((stop - start), *shape[1:]) if shape else ()
        if n_bytes == 0:
            return torch.empty(out_shape, dtype=dtype)
        buf = bytearray(n_bytes)
        view = memoryview(buf)
        with open(self.path, "rb", buffering=0) as f:
            f.seek(begin)
            got = 0
            while got < n_bytes:
                n = f.readinto(view[got:])
                if not n:
                    raise ValueError(f"{self.path} is truncated (tensor {name})")
                got += n
        return torch.frombuffer(buf, dtype=dtype).reshape(out_shape)


def weight_map(ckpt_dir: Path) -> dict[str, str]:
    """Tensor name -> safetensors file, from model.safetensors.index.json or the single model.safetensors."""
    index = ckpt_dir / "model.safetensors.index.json"
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    single = ckpt_dir / "model.safetensors"
    if single.exists():
        return {name: single.name for name in SafetensorsFile(single).tensors}
    raise FileNotFoundError(f"{ckpt_dir} holds no model.safetensors nor model.safetensors.index.json")


def write_safetensors(path: Path, specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict,
                      chunks: Iterator[torch.Tensor]) -> None:
    """Stream a .safetensors file: the header from specs (name, dtype, shape), then the tensors' bytes in
    that order, taken from `chunks` (row blocks, each already in its tensor's dtype)."""
    header, offset = {}, 0
    for name, dtype_str, shape in specs:
        n = math.prod(shape) * DTYPES[dtype_str].itemsize
        header[name] = {"dtype": dtype_str, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {str(k): str(v) for k, v in {"format": "pt", **metadata}.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    written = 0
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for chunk in chunks:
            data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(memoryview(data))
            written += data.nbytes
    if written != offset:
        raise RuntimeError(f"{path}: wrote {written} data bytes, header promised {offset}")


def _tokenizers_differ(a: Path, b: Path) -> str | None:
    """Why the tokenizers saved in two checkpoints differ, or None when they match."""
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"):
        fa, fb = a / name, b / name
        if fa.exists() != fb.exists():
            return f"{name} is in only one of them"
        if not fa.exists():
            continue
        if name == "tokenizer.json":
            ja, jb = json.loads(fa.read_text()), json.loads(fb.read_text())
            for key in ("model", "added_tokens", "pre_tokenizer", "normalizer"):
                if ja.get(key) != jb.get(key):
                    return f"tokenizer.json '{key}' differs"
        elif fa.read_bytes() != fb.read_bytes():
            return f"{name} differs"
    ca, cb = a / "tokenizer_config.json", b / "tokenizer_config.json"
    if ca.exists() and cb.exists():
        ja, jb = json.loads(ca.read_text()), json.loads(cb.read_text())
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            if ja.get(key) != jb.get(key):
                return f"tokenizer_config.json '{key}' differs"
    return None


def _holds_model(d: Path) -> bool:
    return (d / "config.json").exists() or any(d.glob("*.safetensors")) or (d / "model.safetensors.index.json").exists()


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
    if out.resolve() in (base.resolve(), second.resolve()):
        raise ValueError(f"out_dir {out} is one of the input checkpoints")
    if (alpha is None) == (target_step is None):
        raise ValueError("give exactly one of alpha and target_step")
    if target_step is not None:
        base_step = read_step(base) if base_step is None else base_step
        second_step = read_step(second) if second_step is None else second_step
        alpha = alpha_for(base_step, second_step, target_step)
    else:
        base_step = base_step if base_step is not None else _maybe_step(base)
        second_step = second_step if second_step is not None else _maybe_step(second)
        if base_step is not None and second_step is not None and base_step != second_step:
            target_step = target_step_for(base_step, second_step, alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"out_dir {out} exists and is not a directory")
        if any(out.iterdir()):
            if not _holds_model(out):
                raise FileExistsError(f"out_dir {out} is not empty and holds no model; refusing to replace it")
            if not overwrite:
                raise FileExistsError(f"out_dir {out} already holds a model; pass overwrite=True to replace it")
    why = _tokenizers_differ(base, second)
    if why is not None:
        raise ValueError(f"the tokenizers of base ({base}) and second ({second}) differ: {why}")

    map_base, map_second = weight_map(base), weight_map(second)
    if set(map_base) != set(map_second):
        only_b, only_s = sorted(set(map_base) - set(map_second)), sorted(set(map_second) - set(map_base))
        raise ValueError(f"base and second hold different tensors: only in base {only_b[:5]}, only in second {only_s[:5]}")
    files_base = {f: SafetensorsFile(base / f) for f in sorted(set(map_base.values()))}
    files_second = {f: SafetensorsFile(second / f) for f in sorted(set(map_second.values()))}
    for name in map_second:
        sb, ss = files_base[map_base[name]].spec(name), files_second[map_second[name]].spec(name)
        if sb != ss:
            raise ValueError(f"tensor {name}: base has dtype/shape {sb}, second has {ss}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    counts = {"extrapolated": 0, "copied_from_second": 0}
    try:
        bar = tqdm(total=len(map_second), desc="extrapolating", disable=not progress, leave=False)
        for fname, fs in files_second.items():
            names = fs.names()

            def chunks() -> Iterator[torch.Tensor]:
                for name in names:
                    dtype_str, shape = fs.spec(name)
                    fb = files_base[map_base[name]]
                    mixed = DTYPES[dtype_str].is_floating_point and not is_norm_weight(name)
                    counts["extrapolated" if mixed else "copied_from_second"] += 1
                    n_rows = shape[0] if shape else 1
                    step = max(1, CHUNK_ELEMENTS // max(1, math.prod(shape[1:]))) if shape else 1
                    for r in range(0, max(n_rows, 1), step):
                        block = fs.read_rows(name, r, min(r + step, n_rows))  # [rows, ...]
                        if mixed:
                            block = extrapolate_tensor(fb.read_rows(name, r, min(r + step, n_rows)), block, alpha).to(block.dtype)
                        yield block
                    bar.update(1)

            write_safetensors(tmp / fname, [(n, *fs.spec(n)) for n in names], fs.metadata, chunks())
        bar.close()
        for name in COPIED_FILES + ("model.safetensors.index.json",):
            if (second / name).exists():
                shutil.copy2(second / name, tmp / name)
        note = {"method": "weight-space extrapolation, PAPER.md Sec. 6", "base": str(base.resolve()),
                "second": str(second.resolve()), "alpha": alpha, "base_step": base_step,
                "second_step": second_step, "target_step": target_step, "tensors": counts,
                "norm_weights": "copied from second"}
        (tmp / "extrapolation.json").write_text(json.dumps(note, indent=2))
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _maybe_step(d: Path) -> int | None:
    try:
        return read_step(d)
    except (FileNotFoundError, ValueError):
        return None


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
    inputs = [d / f for d in (base, second) for f in set(weight_map(d).values())]
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
# The alpha slider: cached teacher-forced logits and the predicted accuracy curve


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


def predicted_accuracy(alphas: Sequence[float], accuracies: Sequence[float], alpha: float) -> float:
    """Accuracy at alpha, linearly interpolated in a precomputed grid (NaN outside the grid)."""
    a, acc = np.asarray(alphas, float), np.asarray(accuracies, float)
    if a.shape != acc.shape or a.size == 0:
        raise ValueError("alphas and accuracies must be non-empty and of equal length")
    order = np.argsort(a)
    a, acc = a[order], acc[order]
    if alpha < a[0] or alpha > a[-1]:
        return float("nan")
    return float(np.interp(alpha, a, acc))


AccuracyGrid = Mapping[int, tuple[Sequence[float], Sequence[float]]]  # t_second -> (alphas, accuracies)


def plot_predicted_accuracy(ax, grid: AccuracyGrid, t_base: int, t_second: int, alpha: float,
                            rl_accuracy: Mapping[int, float] | None = None) -> None:
    """Accuracy of weight-extrapolated models against the target step, with the slider's alpha marked."""
    for t, (alphas, accs) in sorted(grid.items()):
        order = np.argsort(alphas)
        steps = [target_step_for(t_base, t, alphas[i]) for i in order]
        ax.plot(steps, [accs[i] for i in order], "o-" if t == t_second else "-", ms=3,
                alpha=1.0 if t == t_second else 0.3, label=f"extrapolated, t_second={t}")
    if rl_accuracy:
        steps = sorted(rl_accuracy)
        ax.plot(steps, [rl_accuracy[s] for s in steps], "k--", lw=1, label="actual RL")
    target = target_step_for(t_base, t_second, alpha)
    if t_second in grid:
        acc = predicted_accuracy(*grid[t_second], alpha)
        if not math.isnan(acc):
            ax.plot([target], [acc], "r*", ms=14, label=f"alpha={alpha:.2f}: {acc:.3f}")
    ax.axvline(target, color="r", lw=0.8, alpha=0.5)
    ax.set(xlabel="target step", ylabel="held-out accuracy (avg@k)", title=f"weight extrapolation from t_base={t_base}")
    ax.legend(fontsize=7, loc="best")


def plot_logprob_shift(ax, cache: ResponseLogits, t_second: int, alpha: float) -> None:
    """Per-token log p(alpha) - log p(base) of the example responses (bars), alpha = 1 as open markers."""
    shift, at_second = cache.logprob_shift(t_second, alpha), cache.logprob_shift(t_second, 1.0)
    x0, ticks, labels = 0, [], []
    for i, (s, s1, text) in enumerate(zip(shift, at_second, cache.token_text)):
        xs = np.arange(x0, x0 + len(s))
        ax.bar(xs, s.numpy(), color=f"C{i % 10}", alpha=0.8)
        ax.plot(xs, s1.numpy(), "o", mfc="none", mec="k", ms=4)
        ticks += xs.tolist()
        labels += [t.replace("<eos>", "eos") for t in text]
        ax.annotate(f"{cache.prompts[i]}{cache.responses[i]}", ((xs[0] + xs[-1]) / 2, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -10), textcoords="offset points", ha="center", fontsize=8, color=f"C{i % 10}")
        x0 += len(s) + 1
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(ticks, labels, fontsize=7, rotation=90 if len(ticks) > 40 else 0)
    target = target_step_for(cache.base_step, t_second, alpha)
    ax.set(ylabel="log p(alpha) - log p(base)",
           title=f"token log-prob shift, alpha={alpha:.2f} (step {target:g}); o = second (step {t_second})")


def draw_alpha_figure(cache: ResponseLogits, grid: AccuracyGrid, t_second: int, alpha: float,
                      rl_accuracy: Mapping[int, float] | None = None):
    """The slider's figure: predicted accuracy curve (left), per-token log-prob shift (right)."""
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_lp) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.4]})
    plot_predicted_accuracy(ax_acc, grid, cache.base_step, t_second, alpha, rl_accuracy)
    plot_logprob_shift(ax_lp, cache, t_second, alpha)
    fig.tight_layout()
    return fig


def alpha_explorer(cache: ResponseLogits, grid: AccuracyGrid, *, interactive: bool, alpha: float = 1.5,
                   t_second: int | None = None, rl_accuracy: Mapping[int, float] | None = None,
                   alpha_max: float = 3.0, continuous_update: bool = False):
    """The alpha slider (and a t_second dropdown) redrawing `draw_alpha_figure` from cached logits.

    interactive=False (papermill, CI) returns the static figure at alpha, with no widget or kernel comms;
    interactive=True returns an ipywidgets box to display."""
    t_second = max(cache.second_logits) if t_second is None else t_second
    if t_second not in cache.second_logits:
        raise ValueError(f"no cached logits for t_second={t_second}; have {sorted(cache.second_logits)}")
    if not interactive:
        return draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy)

    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    slider = widgets.FloatSlider(value=alpha, min=0.0, max=alpha_max, step=0.05, description="alpha",
                                 continuous_update=continuous_update, readout_format=".2f")
    dropdown = widgets.Dropdown(options=sorted(cache.second_logits), value=t_second, description="t_second")

    def redraw(alpha: float, t_second: int) -> None:
        fig = draw_alpha_figure(cache, grid, t_second, alpha, rl_accuracy)
        display(fig)
        plt.close(fig)

    out = widgets.interactive_output(redraw, {"alpha": slider, "t_second": dropdown})
    return widgets.VBox([widgets.HBox([slider, dropdown]), out])
