"""The reward of verl runs (`score`, called by the reward.py the launcher writes), bounded in time in any thread.

verl 0.9.1's reward manager calls the reward function in a thread of its event loop's executor
(`await loop.run_in_executor(None, lambda: compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=...))`, verl/experimental/reward_loop/reward_manager/naive.py). math-verify's timeouts use SIGALRM,
which only a process's main thread may set, so in that thread `rlvr_nb.grading.math_grader` runs without them
and a pathological answer (say \\boxed{9^{9^{9^{9}}}}) never returns, holding a reward worker for good.

Here math grading runs in child processes (`GraderPool`), in their main thread, where math-verify's own
timeouts work (5 s per parse and per comparison); the caller waits at most `hard_timeout` seconds for an answer
and kills and replaces a child that has not given one (a computation SIGALRM cannot interrupt). A grading cut
off so scores 0, as math-verify's own timeout does. A response without \\boxed{} scores 0 without a child; the
exact grader (the embedded task: a string comparison) runs in the caller's thread.

    python -m rlvr_nb.backends.verl_reward      # one child: JSON lines {"response", "answer"} -> {"score"}
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time

HARD_TIMEOUT = 30.0
"""Seconds a caller waits for one math grading (math-verify's own timeouts end it after 5 + 5 s)."""
START_TIMEOUT = 300.0
"""Seconds a child may take to start (it imports math-verify and sympy: under a second here)."""


class _Child:
    """One grading process, spoken to over its stdin / stdout (one request at a time)."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "rlvr_nb.backends.verl_reward"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self._buf = b""
        if self._line(time.monotonic() + START_TIMEOUT) != b"ready":
            self.kill()
            raise RuntimeError(f"the math grading process ({sys.executable} -m rlvr_nb.backends.verl_reward) did not "
                               f"start within {START_TIMEOUT:g} s; its errors are in this process' stderr")

    def _line(self, deadline: float) -> bytes | None:
        """The next line the child writes, or None when it has not written one by the deadline (or died)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def grade(self, response: str, answer: str, timeout: float) -> float | None:
        """The score, or None when the child gave none within timeout seconds."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"response": response, "answer": answer}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._line(time.monotonic() + timeout)
        return None if line is None else float(json.loads(line)["score"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


class GraderPool:
    """Up to `size` grading processes, started when first needed, shared by any number of threads: a caller takes
    an idle one (or waits for one), and a child that does not answer within hard_timeout is killed and replaced."""

    def __init__(self, size: int | None = None, hard_timeout: float = HARD_TIMEOUT) -> None:
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self.hard_timeout = hard_timeout
        self.timeouts = 0
        self._slots: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(self.size):
            self._slots.put(None)  # a free slot without a process yet
        self._all: set[_Child] = set()
        self._lock = threading.Lock()

    def grade(self, response: str, answer: str) -> float:
        """math_grader(response, answer), or 0.0 when it did not finish within hard_timeout seconds."""
        child = self._slots.get()
        try:
            if child is None or child.proc.poll() is not None:
                child = self._start()
            score = child.grade(response, answer, self.hard_timeout)
        except BaseException:
            self._drop(child)
            self._slots.put(None)
            raise
        if score is None:
            self._drop(child)
            self._slots.put(None)
            with self._lock:
                self.timeouts += 1
            print(f"rlvr_nb.backends.verl_reward: math grading of a {len(response)}-character response gave no answer "
                  f"within {self.hard_timeout:g} s; scored 0 (the grading process was replaced)", file=sys.stderr)
            return 0.0
        self._slots.put(child)
        return score

    def _start(self) -> _Child:
        child = _Child()
        with self._lock:
            self._all.add(child)
        return child

    def _drop(self, child: _Child | None) -> None:
        if child is None:
            return
        with self._lock:
            self._all.discard(child)
        child.kill()

    def close(self) -> None:
        """Stop every grading process."""
        with self._lock:
            children, self._all = list(self._all), set()
        for c in children:
            c.kill()


_POOL: GraderPool | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()


def pool() -> GraderPool:
    """This process' pool (a forked process starts its own)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL, _POOL_PID = GraderPool(), os.getpid()
            atexit.register(_POOL.close)
        return _POOL


def score(response: str, answer: str, grader: str) -> float:
    """The reward of one response: grader 'exact' (the embedded task) or 'math' (math-verify on the last \\boxed{},
    in a grading process, bounded by HARD_TIMEOUT seconds whatever thread calls it)."""
    from rlvr_nb.grading import exact_grader, extract_boxed

    if grader == "exact":
        return float(exact_grader(response, answer))
    if grader != "math":
        raise ValueError(f"grader must be 'exact' or 'math', got {grader!r}")
    if extract_boxed(response) is None:
        return 0.0  # what math_grader returns, without a process
    return pool().grade(response, answer)


def serve() -> None:
    """The child's loop: grade each request line in this main thread (math-verify's timeouts on)."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    from rlvr_nb.grading import math_grader

    out.write(b"ready\n")
    for line in sys.stdin.buffer:
        req = json.loads(line)
        try:
            value = float(math_grader(req["response"], req["answer"]))
        except Exception:
            value = 0.0
        out.write(json.dumps({"score": value}).encode() + b"\n")


if __name__ == "__main__":
    serve()
