"""The embedded verifiable task: n-digit addition with the answer written least significant digit first.

A prompt is `abc+def=` (operands zero-padded to `digits`), the answer is the (digits + 1)-digit sum
reversed, e.g. `123+989=` -> sum 1112 -> answer `2111`. A tiny transformer learns the reversed order far
more easily (carries flow left to right: measured at tiny scale before this package). The reward
is verifiable: 1 for an exact match of the whole response, else 0.

The scratchpad variant (`ScratchpadTaskConfig`, 04's test of the low-pass mechanism) has the model write k
tokens of working before the answer, separated from it by one "\n" token: `response = scratch + "\n" + answer`.
The working is one record per column, least significant column first (column i adds the i-th digits a_i, b_i
from the right and the carry c_(i-1) into it, total t_i = a_i + b_i + c_(i-1) = 10 c_i + u_i):

    carries   c_i                1 token per column    123+989= -> 111\n2111
    sums      c_i u_i            2 tokens per column   123+989= -> 121111\n2111
    work      a_i b_i c_i u_i    4 tokens per column   123+989= -> 391228111911\n2111

Its reward grades the final answer only (the text after the last "\n"; 0 without one), and SFT imitates the
whole response. The bare task is `TaskConfig` itself, so its config (and every cached run's hash) is unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from rlvr_nb.grading import exact_match_reward  # noqa: F401  (re-exported: the embedded task's reward)

SCRATCHPADS: dict[str, int] = {"carries": 1, "sums": 2, "work": 4}
"""Scratchpad kinds and their tokens per column (k = tokens per column x digits)."""
SEPARATOR = "\n"
"""Between the scratchpad and the final answer (one token of the embedded tokenizer)."""


@dataclass(frozen=True)
class TaskConfig:
    digits: int = 3
    """Operand length in digits: the difficulty knob (3 keeps accuracy rising for ~2000 RL steps)."""
    reverse_answer: bool = True
    """Write the answer least significant digit first (much easier for a tiny model)."""
    n_eval: int = 512
    """Held-out problems, disjoint from every training problem."""
    seed: int = 0
    """Seed of the held-out split (training problems are drawn from the trainer's own generator)."""


@dataclass(frozen=True)
class ScratchpadTaskConfig(TaskConfig):
    """The task with a scratchpad of working before the answer (a separate class, so that the bare task's
    config, and the hash of every run of it, does not change)."""

    scratchpad: str = "carries"
    """Kind of working written before the answer: one of `SCRATCHPADS` ("carries", "sums", "work")."""

    def __post_init__(self) -> None:
        if self.scratchpad not in SCRATCHPADS:
            raise ValueError(f"unknown scratchpad {self.scratchpad!r}; valid: {', '.join(SCRATCHPADS)} "
                             "(the bare task is TaskConfig)")


def with_scratchpad(cfg: TaskConfig, scratchpad: str) -> TaskConfig:
    """cfg with a scratchpad of this kind; "" gives the bare task (a plain `TaskConfig`, the same hash as cfg's)."""
    base = {k: v for k, v in asdict(cfg).items() if k != "scratchpad"}
    return TaskConfig(**base) if scratchpad == "" else ScratchpadTaskConfig(**base, scratchpad=scratchpad)


def scratchpad_of(cfg: TaskConfig) -> str:
    """The task's scratchpad kind, "" for the bare task."""
    return cfg.scratchpad if isinstance(cfg, ScratchpadTaskConfig) else ""


def scratchpad_len(cfg: TaskConfig) -> int:
    """k, the scratchpad's length in tokens (0 for the bare task)."""
    kind = scratchpad_of(cfg)
    return SCRATCHPADS[kind] * cfg.digits if kind else 0


@dataclass(frozen=True)
class Problem:
    prompt: str  # e.g. "123+989="
    answer: str  # e.g. "2111"
    scratch: str = ""  # the working before the answer ("" for the bare task), e.g. "111"

    @property
    def target(self) -> str:
        """The whole correct response (what SFT imitates): the answer, after the scratchpad and "\n" if any."""
        return f"{self.scratch}{SEPARATOR}{self.answer}" if self.scratch else self.answer


def scratch_text(a: int, b: int, digits: int, scratchpad: str) -> str:
    """The scratchpad of a + b (see the module docstring): one record per column, least significant first."""
    out, carry = [], 0
    for i in range(digits):
        ai, bi = (a // 10**i) % 10, (b // 10**i) % 10
        total = ai + bi + carry
        carry, unit = divmod(total, 10)
        out.append({"carries": f"{carry}", "sums": f"{carry}{unit}", "work": f"{ai}{bi}{carry}{unit}"}[scratchpad])
    return "".join(out)


def format_problem(a: int, b: int, digits: int, reverse_answer: bool, scratchpad: str = "") -> Problem:
    """One problem: zero-padded operands, (digits + 1)-digit answer, optionally reversed, optionally a scratchpad."""
    answer = str(a + b).zfill(digits + 1)
    return Problem(f"{a:0{digits}d}+{b:0{digits}d}=", answer[::-1] if reverse_answer else answer,
                   scratch_text(a, b, digits, scratchpad) if scratchpad else "")


def final_answer_reward(response: str, answer: str) -> float:
    """The scratchpad task's reward: 1.0 when the text after the last "\n" is exactly the answer, else 0.0
    (the scratchpad itself is not graded; a response without "\n" has no final answer and scores 0)."""
    _, sep, final = response.rpartition(SEPARATOR)
    return exact_match_reward(final, answer) if sep else 0.0


@dataclass
class AdditionTask:
    """Training problems drawn on demand from a generator; a fixed held-out split for evaluation."""

    cfg: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        if self.cfg.digits < 1:
            raise ValueError(f"digits must be >= 1, got {self.cfg.digits}")
        g = torch.Generator().manual_seed(self.cfg.seed)
        hi = 10 ** self.cfg.digits
        n_pairs = hi * hi
        if self.cfg.n_eval > n_pairs // 2:
            raise ValueError(f"n_eval={self.cfg.n_eval} leaves too few training problems for {self.cfg.digits} digits")
        codes = torch.randperm(n_pairs, generator=g)[: self.cfg.n_eval].tolist() if n_pairs <= 10**7 else (
            torch.randint(0, n_pairs, (self.cfg.n_eval,), generator=g).tolist())
        self._eval_codes = set(codes)
        self.eval_problems = [self._problem(c) for c in codes]

    def _problem(self, code: int) -> Problem:
        hi = 10 ** self.cfg.digits
        return format_problem(code // hi, code % hi, self.cfg.digits, self.cfg.reverse_answer, scratchpad_of(self.cfg))

    def sample_train(self, n: int, generator: torch.Generator) -> list[Problem]:
        """n training problems, uniform over all operand pairs except the held-out ones."""
        hi = 10 ** self.cfg.digits
        out: list[Problem] = []
        while len(out) < n:
            for c in torch.randint(0, hi * hi, (n - len(out),), generator=generator).tolist():
                if c not in self._eval_codes:
                    out.append(self._problem(c))
        return out

    @property
    def answer_len(self) -> int:
        return self.cfg.digits + 1

    @property
    def response_len(self) -> int:
        """Tokens of a correct response before EOS: the answer, plus the scratchpad and "\n" if any."""
        k = scratchpad_len(self.cfg)
        return self.answer_len + (k + 1 if k else 0)

    def reward(self, response: str, answer: str) -> float:
        """The task's verifiable reward: the whole response (bare task) or the final answer only (scratchpad)."""
        return final_answer_reward(response, answer) if scratchpad_of(self.cfg) else exact_match_reward(response, answer)
