"""rlvr-nb: linear dynamics in RLVR training (arXiv 2601.04537), reproduced in runnable notebooks.

Modules are named after what they hold: `tasks` (the verifiable arithmetic task), `models` (the tiny
Qwen2 model and its tokenizer), `sampling` (KV-cached sampling), `grpo` (the RLVR trainer), `sft`
(supervised trainers), `checkpoints`, `embedded` (the embedded default run), `trajectory` and
`linearity` (Sec. 4), `lowpass` (Sec. 5), `evaluate` (with `grading`) and `extrapolate` (Sec. 6), `regrounding`,
`profiles` and `run` (the notebook runner).
"""

__version__ = "0.1.0"
