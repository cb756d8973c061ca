"""Supervised fine-tuning on correct answers: the warm start of the embedded default, the SFT trajectory
that every linearity figure compares RL against, and the noise-injected SFT of PAPER.md Sec. 5 (Fig. 3).

Same run-directory and checkpoint layout as the RL trainer (`rlvr_nb.checkpoints`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlvr_nb.checkpoints import (append_metrics, mark_complete, load_weights_into, open_run, restore_training_state, run_lock,
                                 save_checkpoint, to_jsonable)
from rlvr_nb.grpo import checkpoint_eval, make_optimizer
from rlvr_nb.models import ModelConfig, build_model, build_tokenizer, load_model, load_tokenizer
from rlvr_nb.tasks import AdditionTask, Problem, TaskConfig
from rlvr_nb.threads import training_threads


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 32
    """Sequences (prompt + correct answer) per step."""
    lr: float = 5e-5
    """Learning rate."""
    optimizer: str = "adamw"
    """'adamw' or 'sgd'."""
    momentum: float = 0.0
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = 0.0
    """Weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm; 0 disables."""
    ckpt_every: int = 100
    """Checkpoint (and evaluate) every this many steps, and at step 0."""
    eval_problems: int = 256
    """Held-out problems scored at each checkpoint."""
    noise_snr_db: float | None = None
    """Token-level random-sign noise at this SNR in dB (PAPER.md Sec. 5, Fig. 3); None = plain SFT."""
    zero_signal: bool = False
    """The zero-signal control of Fig. 3: noise only, no supervised signal."""
    stop_at_accuracy: float | None = None
    """Stop at the first checkpoint whose held-out sampled (T=1) accuracy reaches this (the warm start)."""
    seed: int = 0
    """Seed of the problem stream (and of the injected noise)."""


def sequence_batch(tokenizer, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prompt + target + EOS as one id tensor [B, L+N], the target mask over the response tokens, prompt length.
    The target is the whole correct response (`Problem.target`: the answer, after the scratchpad if any)."""
    prompts = tokenizer([p.prompt for p in problems], add_special_tokens=False)["input_ids"]
    answers = tokenizer([p.target for p in problems], add_special_tokens=False)["input_ids"]
    L = len(prompts[0])
    if any(len(p) != L for p in prompts) or len({len(a) for a in answers}) != 1:
        raise ValueError("sequence_batch expects prompts and answers of equal lengths (the embedded task)")
    ids = torch.tensor([p + a + [tokenizer.eos_token_id] for p, a in zip(prompts, answers)])
    return ids, torch.ones(ids.shape[0], ids.shape[1] - L), L


def token_nll(model, ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Per-token negative log-likelihood of the answer tokens [B, N] (teacher forcing)."""
    logits = model(input_ids=ids).logits[:, prompt_len - 1 : -1].float()  # [B, N, V]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, prompt_len:], reduction="none")


@training_threads
def train_sft(cfg: SFTConfig, run_dir: str | Path, init_dir: str | Path | None = None, task_cfg: TaskConfig = TaskConfig(),
              model_cfg: ModelConfig = ModelConfig(), resume: bool = False, progress: bool = True,
              stop_after: int | None = None) -> Path:
    """SFT from the HF model in init_dir (or from a fresh `model_cfg` model when init_dir is None)."""
    if cfg.steps < 1 or cfg.ckpt_every < 1 or cfg.lr <= 0:
        raise ValueError(f"steps, ckpt_every and lr must be positive (got {cfg.steps}, {cfg.ckpt_every}, {cfg.lr})")
    run_config = {"kind": "sft", "sft": to_jsonable(cfg), "task": to_jsonable(task_cfg),
                  "init_dir": str(Path(init_dir).resolve()) if init_dir else None,
                  "model": None if init_dir else to_jsonable(model_cfg)}
    with run_lock(run_dir, wait=False):  # no second process may write into this run
        start, ckpt = open_run(run_dir, run_config, resume)
        if init_dir is None:
            tokenizer = build_tokenizer()
            model = build_model(model_cfg, tokenizer)
        else:
            tokenizer, model = load_tokenizer(init_dir), load_model(init_dir)
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        gen = torch.Generator().manual_seed(cfg.seed)
        # the injected noise has its own stream, so every SNR setting sees exactly the same batches
        noise = {"noise": torch.Generator().manual_seed(cfg.seed + 1)}
        task = AdditionTask(task_cfg)
        n_eval, n_new = cfg.eval_problems, task.response_len + 2
        if ckpt is not None:
            load_weights_into(model, ckpt)
            restore_training_state(ckpt, opt, gen, noise)
        else:
            metrics = checkpoint_eval(model, tokenizer, task, n_eval, n_new, cfg.seed)
            save_checkpoint(run_dir, 0, model, tokenizer, {"metrics": metrics, "config": run_config, "seed": cfg.seed}, opt, gen, noise)
            append_metrics(run_dir, {"step": 0, **metrics})

        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        bar = tqdm(initial=start, total=cfg.steps, desc="SFT steps", disable=not progress)
        for step in range(start, last):
            t0 = time.perf_counter()
            ids, target_mask, L = sequence_batch(tokenizer, task.sample_train(cfg.batch_size, gen))
            model.train()
            nll = token_nll(model, ids, L)  # [B, N]
            if cfg.noise_snr_db is not None or cfg.zero_signal:
                from rlvr_nb.lowpass import token_noise_weights  # PAPER.md Sec. 5: injected token-level noise

                nll = nll * token_noise_weights(nll.shape, cfg.noise_snr_db, cfg.zero_signal, noise["noise"])
            loss = (nll * target_mask).sum() / target_mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            opt.step()
            record = {"step": step + 1, "loss": loss.item(), "grad_norm": float(grad_norm), "seconds": time.perf_counter() - t0}
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
                model.eval()
                record.update(checkpoint_eval(model, tokenizer, task, n_eval, n_new, cfg.seed))
                append_metrics(run_dir, record)
                save_checkpoint(run_dir, step + 1, model, tokenizer, {"metrics": record, "config": run_config, "seed": cfg.seed}, opt, gen, noise)
                if cfg.stop_at_accuracy is not None and record["heldout_sampled"] >= cfg.stop_at_accuracy:
                    # the planned end of this run, not a failure: a full bar (green in Jupyter) that says so
                    bar.update(1)
                    bar.total = bar.n
                    if getattr(bar, "container", None) is not None:  # tqdm.notebook: the bar widget's length
                        bar.container.children[1].max = bar.n
                    bar.set_description(f"SFT steps: stopped early by design at step {step + 1} of at most "
                                        f"{cfg.steps}")
                    bar.set_postfix_str(f"held-out accuracy {record['heldout_sampled']:.3f} >= target "
                                        f"{cfg.stop_at_accuracy:g}")
                    bar.close()
                    break
            else:
                append_metrics(run_dir, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            bar.update(1)
        else:
            bar.close()
            if last < cfg.steps:  # stopped by stop_after: the run is not complete
                return Path(run_dir)
        mark_complete(run_dir)
        return Path(run_dir)
