"""Evaluation: k sampled completions per question, graded, summarised as avg@k and unbiased pass@k.

PAPER.md "Evaluation conventions": avg@k is the mean accuracy over k samples per question, averaged
over questions; pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k) from n samples with c correct;
answers are the last `\\boxed{...}` (balanced braces), graded by symbolic equivalence (`math-verify`).
The embedded addition task answers with the bare digit string and is graded by exact match.

A *policy* is whatever samples completions: `ModelPolicy` (one model, given in memory or as a
checkpoint directory that is loaded only when sampling is needed) or the logits-extrapolation pair of
`rlvr_nb.extrapolate.LogitsExtrapolationPolicy`. `evaluate` accepts a policy, a checkpoint directory
or an in-memory model. Results are cached as JSON, keyed by the policy's fingerprint (a hash of the
checkpoint's files or of the in-memory weights), the problems and the sampling settings, so that a
notebook re-run reads them back instead of sampling again.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from rlvr_nb.checkpoint_files import TOKENIZER_FILES, WEIGHT_INDEX, read_safetensors_header, weight_files
from rlvr_nb.checkpoint_writes import write_json
from rlvr_nb.grading import Grader, exact_grader, extract_boxed, math_grader  # noqa: F401  (extract_boxed: re-exported)
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.sampling import decode_responses, encode_prompts, generate
from rlvr_nb.tasks import Problem

CACHE_VERSION = 1  # bump when the cached JSON or the sampling procedure changes meaning
CONTENT_HASH_MAX_BYTES = 1 << 30  # checkpoints up to 1 GiB are fingerprinted by content, larger by metadata
SMALL_FILES = ("config.json", *TOKENIZER_FILES)
"""Hashed into a checkpoint's fingerprint beside its weights (`checkpoint_fingerprint`)."""

# ----------------------------------------------------------------------------------------------------
# Settings and results


@dataclass(frozen=True)
class EvalConfig:
    k: int = 8
    """Samples per question (n in the pass@k estimator)."""
    temperature: float = 1.0
    """Sampling temperature (0 is greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 8
    """Longest response in tokens (the embedded task needs digits + 2: the answer and EOS)."""
    seed: int = 0
    """Seed of the torch.Generator that draws every sample."""
    batch_size: int = 512
    """Rows (question x sample) decoded together; part of the cache key since it changes the draws."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class EvalResult:
    avg_at_k: float
    """Mean accuracy over the k samples of a question, averaged over questions."""
    ci_low: float
    """Lower end of the confidence interval of avg_at_k over questions (see `mean_ci`)."""
    ci_high: float
    """Upper end of that interval."""
    pass_at_k: dict[int, float]
    """Unbiased pass@k for k = 1, 2, 4, ..., n (and n itself), averaged over questions."""
    per_question: list[float]
    """Fraction of the k samples that were correct, one entry per question."""
    n_correct: list[int]
    """Correct samples per question (c in the pass@k estimator)."""
    k: int
    """Samples per question."""
    ci_level: float = 0.95
    """Coverage of [ci_low, ci_high]."""
    responses: list[list[str]] | None = None
    """The sampled responses, [question][sample], when asked for with keep_responses=True."""
    settings: dict = field(default_factory=dict)
    """What was evaluated and how (policy description, EvalConfig, grader, number of questions)."""
    from_cache: bool = False
    """True when read back from the cache directory instead of sampled."""

    @property
    def n_questions(self) -> int:
        return len(self.per_question)

    def __str__(self) -> str:
        p = ", ".join(f"pass@{k}={v:.3f}" for k, v in self.pass_at_k.items())
        return (f"avg@{self.k}={self.avg_at_k:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"({self.n_questions} questions; {p})")

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("from_cache")
        d["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "EvalResult":
        d = dict(d)
        d["pass_at_k"] = {int(k): v for k, v in d["pass_at_k"].items()}
        return cls(**d, from_cache=True)


# ----------------------------------------------------------------------------------------------------
# Graders (rlvr_nb.grading)


GRADERS: dict[str, Grader] = {"exact": exact_grader, "math": math_grader}


def get_grader(grader: str | Grader) -> tuple[str, Grader]:
    """('exact' | 'math' | a callable(response, answer) -> 0.0/1.0) -> (name for the cache key, function)."""
    if callable(grader):
        return f"{grader.__module__}.{grader.__qualname__}", grader
    if grader not in GRADERS:
        raise ValueError(f"grader must be one of {sorted(GRADERS)} or a callable, got {grader!r}")
    return grader, GRADERS[grader]


# ----------------------------------------------------------------------------------------------------
# Estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """PAPER.md Evaluation conventions, unbiased pass@k: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms a binomial coefficient.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def avg_at_k(correct: np.ndarray) -> float:
    """PAPER.md Evaluation conventions, avg@k: mean over samples, then over questions. correct: [Q, k]."""
    return float(correct.mean(axis=1).mean())


def _normal_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    """(mean, half width z sd / sqrt(Q)) of per-question values, z the normal quantile of `level`;
    the half width is 0 for one value. The one interval formula of the package."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size == 1:
        return m, 0.0
    return m, statistics.NormalDist().inv_cdf(0.5 + level / 2) * float(v.std(ddof=1)) / math.sqrt(v.size)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation confidence interval of a mean over questions: mean +- z * sd / sqrt(Q),
    clipped to [0, 1]. The questions are the sampling unit (the k samples of one question are not
    independent evidence about the eval set); with one question the interval is the point."""
    if len(values) == 0:
        raise ValueError("no values to average")
    m, half = _normal_interval(values, level)
    return max(0.0, m - half), min(1.0, m + half)


@dataclass(frozen=True)
class PairedDifference:
    """avg@k of a minus avg@k of b on the same questions, with a confidence interval over questions; with
    unit "%" the relative difference 100 (a / b - 1) (`relative_difference`)."""

    diff: float
    ci_low: float
    ci_high: float
    unit: str = ""

    @property
    def verdict(self) -> str:
        """'beats' (interval above 0), 'below' (under 0) or 'matches' (contains 0)."""
        return "beats" if self.ci_low > 0 else "below" if self.ci_high < 0 else "matches"

    def __str__(self) -> str:
        if self.unit == "%":
            return f"{self.diff:+.1f}% [{self.ci_low:+.1f}%, {self.ci_high:+.1f}%]"
        return f"{self.diff:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]"


def paired_difference(a: EvalResult, b: EvalResult, level: float = 0.95) -> PairedDifference:
    """Paired difference of two evaluations on the same questions (same order, same seed): the mean of
    a_q - b_q +- z sd / sqrt(Q), not clipped. Close policies sampled with common random numbers differ far
    less than each one's own interval says, which is why comparisons are made this way."""
    qa, qb = np.asarray(a.per_question, float), np.asarray(b.per_question, float)  # [Q], [Q]
    if qa.shape != qb.shape or qa.size == 0:
        raise ValueError(f"a paired comparison needs the same non-empty question set; got {qa.size} and {qb.size} questions")
    m, half = _normal_interval(qa - qb, level)
    return PairedDifference(m, m - half, m + half)


def relative_difference(pairs: Sequence[tuple[EvalResult, EvalResult]], level: float = 0.95) -> PairedDifference:
    """Mean over (a, b) pairs of 100 (avg@k of a / avg@k of b - 1), in percent (how the paper reports Table 1),
    with a paired interval over the questions all pairs share (delta method: question q contributes the pairs'
    mean of 100 (a_q - R b_q) / avg_b, R = avg_a / avg_b)."""
    qs = [(np.asarray(a.per_question, float), np.asarray(b.per_question, float)) for a, b in pairs]  # [Q] each
    if not qs or len({q.size for pair in qs for q in pair}) != 1 or qs[0][0].size == 0:
        raise ValueError(f"a relative difference needs pairs scored on the same non-empty question set; got "
                         f"{[(qa.size, qb.size) for qa, qb in qs]} questions")
    if min(qb.mean() for _, qb in qs) <= 0:
        raise ValueError("a relative difference needs every baseline b to have avg@k > 0")
    r = [qa.mean() / qb.mean() for qa, qb in qs]
    _, half = _normal_interval(np.mean([100 * (qa - ri * qb) / qb.mean() for (qa, qb), ri in zip(qs, r)], axis=0), level)
    m = float(np.mean([100 * (ri - 1) for ri in r]))
    return PairedDifference(m, m - half, m + half, "%")


def default_pass_ks(k: int) -> list[int]:
    """1, 2, 4, ... up to k, and k itself."""
    ks = [2**i for i in range(int(math.log2(k)) + 1)]
    return ks if ks[-1] == k else ks + [k]


# ----------------------------------------------------------------------------------------------------
# Policies: what samples the completions


@runtime_checkable
class Policy(Protocol):
    """Anything that samples completions for `evaluate`."""

    @property
    def tokenizer(self): ...

    def sample(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, max_new_tokens: int,
               temperature: float, top_p: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, N], mask [B, N]) as returned by `rlvr_nb.sampling.generate`."""
        ...

    def fingerprint(self) -> str:
        """A hash that changes whenever the policy's samples would (the evaluation cache key)."""
        ...

    def describe(self) -> dict:
        """A JSON-able description stored beside cached results."""
        ...


class ModelPolicy:
    """One causal LM. Give either `path` (a checkpoint directory, loaded on first use) or
    `model` and `tokenizer` in memory."""

    def __init__(self, model: PreTrainedModel | None = None, tokenizer=None, *, path: str | Path | None = None,
                 label: str | None = None, dtype: torch.dtype = torch.float32) -> None:
        if model is None and path is None:
            raise ValueError("ModelPolicy needs a model or a checkpoint path")
        if model is not None and tokenizer is None and path is None:
            raise ValueError("an in-memory model needs its tokenizer (tokenizer=...)")
        if path is not None:
            path = Path(path)
            if not path.is_dir():
                raise FileNotFoundError(f"no checkpoint directory at {path}")
            weight_files(path)  # FileNotFoundError naming the directory when it holds no safetensors weights
        self.path = path
        self.label = label or (path.name if path is not None else type(model).__name__)
        self.dtype = dtype
        self._model = model
        self._tokenizer = tokenizer
        self._fingerprint: str | None = None

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            self._model = load_model(self.path, dtype=self.dtype)
        return self._model

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.path)
        return self._tokenizer

    def sample(self, input_ids, attention_mask, *, max_new_tokens, temperature, top_p, generator):
        tok = self.tokenizer
        return generate(self.model, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        eos_id=tok.eos_token_id, pad_id=_pad_id(tok), temperature=temperature,
                        top_p=top_p, generator=generator)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.path is not None:
                self._fingerprint = checkpoint_fingerprint(self.path)
            else:
                self._fingerprint = model_fingerprint(self.model, self.tokenizer)
        return self._fingerprint

    def describe(self) -> dict:
        return {"kind": "model", "label": self.label, "path": str(self.path) if self.path else None}

    def __repr__(self) -> str:
        return f"ModelPolicy({self.label!r})"


def as_policy(policy: Policy | PreTrainedModel | str | Path, tokenizer=None) -> Policy:
    """A policy from a policy, an in-memory model (with its tokenizer) or a checkpoint directory."""
    if isinstance(policy, (str, Path)):
        return ModelPolicy(path=policy, tokenizer=tokenizer)
    if isinstance(policy, PreTrainedModel):
        return ModelPolicy(policy, tokenizer)
    if isinstance(policy, Policy):
        return policy
    raise TypeError(f"expected a Policy, a PreTrainedModel or a checkpoint path, got {type(policy).__name__}")


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 of a checkpoint's weights, config and tokenizer files. Weights up to
    CONTENT_HASH_MAX_BYTES are hashed by content (so a re-trained identical checkpoint hits the cache);
    larger ones by name, size, mtime and safetensors header."""
    path = Path(path)
    index = path / WEIGHT_INDEX
    weights = ([index] if index.is_file() else []) + sorted(weight_files(path), key=lambda f: f.name)
    by_content = sum(f.stat().st_size for f in weights) <= CONTENT_HASH_MAX_BYTES
    h = hashlib.sha256(f"checkpoint v{CACHE_VERSION}".encode())
    for f in weights:
        h.update(f.name.encode())
        if by_content:
            _hash_file(h, f)
        else:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            if f.suffix == ".safetensors":
                read_safetensors_header(f)  # one clear error naming a corrupt file (not a MemoryError)
                with open(f, "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    h.update(fh.read(n))
    for name in SMALL_FILES:
        if (path / name).exists():
            h.update(name.encode())
            _hash_file(h, path / name)
    return h.hexdigest()


def _hash_file(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)


def model_fingerprint(model: torch.nn.Module, tokenizer) -> str:
    """sha256 of an in-memory model's tensors (names, dtypes, shapes, bytes) and its tokenizer's vocab."""
    h = hashlib.sha256(f"model v{CACHE_VERSION}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps([vocab, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Evaluation


def cache_key(policy: Policy, problems: Sequence[Problem], cfg: EvalConfig, grader_name: str) -> str:
    """sha256 of (policy fingerprint, problems, sampling settings, grader)."""
    payload = {"version": CACHE_VERSION, "policy": policy.fingerprint(), "config": asdict(cfg),
               "grader": grader_name, "problems": [[p.prompt, p.answer] for p in problems]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def evaluate(
    policy: Policy | PreTrainedModel | str | Path,
    problems: Sequence[Problem],
    cfg: EvalConfig = EvalConfig(),
    *,
    grader: str | Grader = "exact",
    tokenizer=None,
    cache_dir: str | Path | None = None,
    keep_responses: bool = False,
    ci_level: float = 0.95,
    progress: bool = True,
) -> EvalResult:
    """Sample cfg.k completions per problem, grade them, and summarise (avg@k with a confidence
    interval over questions, pass@k). With cache_dir, a result computed before for the same policy,
    problems, settings and grader is read back from `<cache_dir>/eval-<key>.json`.

    Prompts are fed as they are (no chat template is applied: format math prompts before calling)."""
    if len(problems) == 0:
        raise ValueError("no problems to evaluate")
    policy = as_policy(policy, tokenizer)
    grader_name, grade = get_grader(grader)
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"eval-{cache_key(policy, problems, cfg, grader_name)[:24]}.json"
        if cache_file.exists():
            result = EvalResult.from_json(json.loads(cache_file.read_text()))
            if result.responses is not None or not keep_responses:
                result.ci_low, result.ci_high = mean_ci(result.per_question, ci_level)
                result.ci_level = ci_level
                return result

    responses = sample_responses(policy, [p.prompt for p in problems], cfg, progress=progress)  # [Q][k]
    correct = np.array([[grade(r, p.answer) >= 0.5 for r in rs] for rs, p in zip(responses, problems)],
                       dtype=np.float64)  # [Q, k]
    per_question = correct.mean(axis=1)  # [Q]
    n_correct = correct.sum(axis=1).astype(int)  # [Q]
    ci_low, ci_high = mean_ci(per_question, ci_level)
    result = EvalResult(
        avg_at_k=avg_at_k(correct), ci_low=ci_low, ci_high=ci_high,
        pass_at_k={kk: float(np.mean([pass_at_k(cfg.k, int(c), kk) for c in n_correct]))
                   for kk in default_pass_ks(cfg.k)},
        per_question=per_question.tolist(), n_correct=n_correct.tolist(), k=cfg.k, ci_level=ci_level,
        responses=responses if keep_responses else None,
        settings={"policy": policy.describe(), "config": asdict(cfg), "grader": grader_name,
                  "n_questions": len(problems)},
    )
    if cache_file is not None:
        write_json(cache_file, result.to_json(), indent=None)
    return result


def sample_responses(policy: Policy, prompts: Sequence[str], cfg: EvalConfig, progress: bool = True) -> list[list[str]]:
    """cfg.k responses per prompt, [Q][k]: rows are prompt-major, decoded cfg.batch_size rows at a time
    with one torch.Generator seeded by cfg.seed."""
    tok = policy.tokenizer
    rows = [p for p in prompts for _ in range(cfg.k)]
    g = torch.Generator().manual_seed(cfg.seed)
    out: list[str] = []
    starts = range(0, len(rows), cfg.batch_size)
    for s in tqdm(starts, desc="sampling", disable=not progress or len(starts) < 2, leave=False):
        ids, mask = encode_prompts(tok, rows[s : s + cfg.batch_size])  # [B, L]
        tokens, resp_mask = policy.sample(ids, mask, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                          top_p=cfg.top_p, generator=g)  # [B, N]
        out += decode_responses(tok, tokens, resp_mask)
    return [out[i * cfg.k : (i + 1) * cfg.k] for i in range(len(prompts))]
