"""The embedded verifiable task: n-digit addition with the answer written least significant digit first.

A prompt is `abc+def=` (operands zero-padded to `digits`), the answer is the (digits + 1)-digit sum
reversed, e.g. `123+989=` -> sum 1112 -> answer `2111`. A tiny transformer learns the reversed order far
more easily (carries flow left to right: measured at tiny scale before this package). The reward
is verifiable: 1 for an exact match of the whole response, else 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
class Problem:
    prompt: str  # e.g. "123+989="
    answer: str  # e.g. "2111"


def format_problem(a: int, b: int, digits: int, reverse_answer: bool) -> Problem:
    """One problem: zero-padded operands, (digits + 1)-digit answer, optionally reversed."""
    answer = str(a + b).zfill(digits + 1)
    return Problem(f"{a:0{digits}d}+{b:0{digits}d}=", answer[::-1] if reverse_answer else answer)


def exact_match_reward(response: str, answer: str) -> float:
    """The verifiable reward of the embedded task: 1.0 for an exact match, else 0.0."""
    return 1.0 if response.strip() == answer else 0.0


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
        return format_problem(code // hi, code % hi, self.cfg.digits, self.cfg.reverse_answer)

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

    @staticmethod
    def reward(response: str, answer: str) -> float:
        return exact_match_reward(response, answer)
