"""RL steps per second: our GRPO trainer against TRL's GRPOTrainer, same tiny model, batch and length.

    python benchmarks/bench_trainer.py [--steps 8] [--threads N]

Both train the embedded default's Qwen2 (2 layers, width 64) from the same weights on 32 prompts x 16
completions per step, at most 6 completion tokens, temperature 1, clip 0.2/0.28, no KL, AdamW, grad clip 1,
one update per batch. The first step of each is a warm-up and is not timed. Needs the `bench` extra (TRL).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from rlvr_nb.checkpoints import read_metrics
from rlvr_nb.grpo import RLConfig, train_rl
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer, load_model
from rlvr_nb.tasks import AdditionTask, TaskConfig

PROMPTS, GROUP, NEW_TOKENS = 32, 16, 6


def ours(init: Path, steps: int, work: Path) -> float:
    cfg = RLConfig(steps=steps + 1, prompts_per_step=PROMPTS, group_size=GROUP, max_new_tokens=NEW_TOKENS,
                   ckpt_every=10_000, eval_problems=8, lr=1e-4)
    train_rl(cfg, init, work / "ours", TaskConfig(), progress=False)
    seconds = [m["seconds"] for m in read_metrics(work / "ours") if m["step"] >= 2]  # skip step 0 and warm-up step 1
    return len(seconds) / sum(seconds)


def trl(init: Path, steps: int, work: Path) -> float:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = build_tokenizer()
    problems = AdditionTask(TaskConfig()).sample_train(PROMPTS * (steps + 2), torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"prompt": [p.prompt for p in problems], "answer": [p.answer for p in problems]})

    def reward(completions, answer, **kw):
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    class Timer(TrainerCallback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_step_begin(self, args, state, control, **kw):
            self.starts.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

    timer = Timer()
    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
                      max_completion_length=NEW_TOKENS, max_steps=steps + 1, learning_rate=1e-4, temperature=1.0,
                      epsilon=0.2, epsilon_high=0.28, beta=0.0, max_grad_norm=1.0, num_iterations=1,
                      save_strategy="no", logging_steps=1000, report_to=[], use_cpu=True, seed=0,
                      dataloader_num_workers=0, disable_tqdm=True)
    GRPOTrainer(model=load_model(init), reward_funcs=reward, args=args, train_dataset=data, processing_class=tok,
                callbacks=[timer]).train()
    # TRL generates inside the step (in _prepare_inputs), so a step's wall time includes its rollouts
    durations = [e - s for s, e in zip(timer.starts, timer.ends)][1:]
    return len(durations) / sum(durations)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per trainer")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = build_tokenizer()
        model = build_model(ModelConfig(), tok)
        model.save_pretrained(work / "init")
        tok.save_pretrained(work / "init")
        ours_sps = ours(work / "init", a.steps, work)
        trl_sps = trl(work / "init", a.steps, work)
    import trl as trl_pkg

    print(f"\nRL steps/s, {PROMPTS} prompts x {GROUP} completions, <= {NEW_TOKENS} new tokens, "
          f"{a.threads} thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"| trainer | steps/s | s/step |\n|---|---|---|")
    print(f"| rlvr_nb.grpo | {ours_sps:.2f} | {1 / ours_sps:.3f} |")
    print(f"| trl.GRPOTrainer {trl_pkg.__version__} | {trl_sps:.2f} | {1 / trl_sps:.3f} |")
    print(f"ratio ours / TRL: {ours_sps / trl_sps:.2f}x (goal >= 1.0x)")


if __name__ == "__main__":
    main()
