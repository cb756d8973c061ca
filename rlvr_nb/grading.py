"""Answers and their grading (PAPER.md "Evaluation conventions"): the last `\\boxed{...}` of a response (balanced
braces), graded by symbolic equivalence (`math-verify`); the embedded addition task's bare digit string, graded
by exact match.

Plain Python and math-verify only, no torch: a math grading process (`rlvr_nb.backends.verl_reward`) imports
this module alone and is ready in under a second instead of the ~5 s of torch and transformers.
"""

from __future__ import annotations

import threading
from typing import Callable

Grader = Callable[[str, str], float]


def exact_match_reward(response: str, answer: str) -> float:
    """The verifiable reward of the embedded task: 1.0 for an exact match, else 0.0."""
    return 1.0 if response.strip() == answer else 0.0


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in text, braces balanced; None when there is none
    (PAPER.md, Evaluation conventions). `\\fbox{...}` counts as a box too."""
    starts = [i for key in ("\\boxed{", "\\fbox{") for i in _find_all(text, key)]
    for start in sorted(starts, reverse=True):
        i = text.index("{", start)
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        # unbalanced (e.g. a truncated response): try the box before it
    return None


def _find_all(text: str, key: str) -> list[int]:
    out, i = [], text.find(key)
    while i >= 0:
        out.append(i)
        i = text.find(key, i + 1)
    return out


def exact_grader(response: str, answer: str) -> float:
    """The embedded task's reward: the whole response (stripped) equals the answer."""
    return exact_match_reward(response, answer)


def math_grader(response: str, answer: str) -> float:
    """1.0 when the last `\\boxed{}` of the response is symbolically equal to the answer (math-verify)."""
    from math_verify import parse, verify

    pred = extract_boxed(response)
    if pred is None:
        return 0.0
    # math-verify's timeouts use SIGALRM, which only the main thread may set
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = answer if ("\\boxed" in answer or "$" in answer) else f"${answer}$"
    gold_parsed = parse(gold, parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return 1.0 if pred.strip() == answer.strip() else 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=timeout) else 0.0
