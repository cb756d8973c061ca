"""The RLVR trainer: GRPO and relatives in plain PyTorch, one on-policy loop (CleanRL spirit).

Each step: sample `prompts_per_step` problems, draw `group_size` completions per prompt with a KV cache
at temperature 1, score them with the verifiable 0/1 reward, turn rewards into advantages, and take
`updates_per_batch` PPO-clipped gradient steps. KL and entropy terms exist but are off by default, as
in the paper (PAPER.md, Setting). Every equation is one named function below.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from safetensors.torch import load_file

from rlvr_nb.checkpoints import (append_metrics, load_optimizer_tensors, load_weights_into, mark_complete, open_run, run_lock,
                          restore_training_state, save_checkpoint, to_jsonable,
                                 training_state_file)
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.sampling import decode_responses, encode_prompts, generate
from rlvr_nb.tasks import AdditionTask, Problem, TaskConfig, exact_match_reward
from rlvr_nb.threads import training_threads

ADV_ESTIMATORS = ("grpo", "dr_grpo", "reinforce_pp", "gspo")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class RLConfig:
    steps: int = 2000
    """Number of RL steps (one batch of rollouts each)."""
    prompts_per_step: int = 32
    """Distinct prompts per step (the paper: 128)."""
    group_size: int = 16
    """Completions sampled per prompt (the paper: 16 rollouts)."""
    lr: float = 5e-5
    """Learning rate (the paper: 1e-6 on a 1.5B model; tiny models need larger steps)."""
    optimizer: str = "adamw"
    """'adamw' or 'sgd'."""
    momentum: float = 0.0
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = 0.0
    """Decoupled weight decay of AdamW, or L2 of SGD."""
    adv_estimator: str = "grpo"
    """'grpo' (group mean/std), 'dr_grpo' (group mean, no std), 'reinforce_pp' (batch-normalised, global
    baseline) or 'gspo' (group mean/std with a sequence-level importance ratio)."""
    loss_agg: str = "token-mean"
    """'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum-norm' (Dr. GRPO)."""
    clip_low: float = 0.2
    """PPO clip below 1 (ratio >= 1 - clip_low)."""
    clip_high: float = 0.28
    """PPO clip above 1 (ratio <= 1 + clip_high), the paper's clip-higher."""
    updates_per_batch: int = 1
    """Gradient steps per batch of rollouts; with 1 the update is exactly on-policy (ratio = 1)."""
    kl_coef: float = 0.0
    """Weight of the k3 KL penalty to the starting model (off in the paper)."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (off in the paper)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (the paper: 1.0); 0 disables."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_new_tokens: int = 6
    """Longest completion in tokens (the embedded task needs digits + 2: answer and EOS)."""
    ckpt_every: int = 100
    """Write a checkpoint (and evaluate) every this many steps, and at step 0."""
    eval_problems: int = 256
    """Held-out problems scored at each checkpoint (greedy and one sample at T=1)."""
    seed: int = 0
    """Seed of problem sampling and rollouts."""


# ----------------------------------------------------------------------------------------------------
# The equations


def group_advantages(rewards: torch.Tensor, estimator: str, eps: float = 1e-6) -> torch.Tensor:
    """Advantages from rewards [P, G] (one row per prompt's group). Returns [P, G].

    grpo / gspo:   A = (r - mean_group(r)) / (std_group(r) + eps)      (GRPO, DeepSeekMath)
    dr_grpo:       A = r - mean_group(r)                              (Dr. GRPO: no std division)
    reinforce_pp:  A = (r - mean_batch(r)) / (std_batch(r) + eps)      (REINFORCE++: global baseline)
    """
    if estimator in ("grpo", "gspo"):
        return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + eps)
    if estimator == "dr_grpo":
        return rewards - rewards.mean(1, keepdim=True)
    if estimator == "reinforce_pp":
        return (rewards - rewards.mean()) / (rewards.std() + eps)
    raise ValueError(f"unknown adv_estimator {estimator!r}; valid: {', '.join(ADV_ESTIMATORS)}")


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, sequence_level: bool) -> torch.Tensor:
    """Per-token ratio pi/pi_old [B, N]. GSPO: the sequence-level ratio
    s = exp(mean_t(log pi - log pi_old)), applied to every token (Zheng et al., 2025)."""
    log_ratio = (logp - old_logp) * mask
    if sequence_level:
        seq = log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # [B, 1]
        return torch.exp(seq).expand_as(logp)
    return torch.exp(log_ratio)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float) -> torch.Tensor:
    """PPO clipped objective as a per-token loss [B, N]:
    max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))   (Schulman et al., 2017; DAPO clip-higher)."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))


def aggregate_loss(loss_tok: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int) -> torch.Tensor:
    """Reduce a per-token loss [B, N] to a scalar (verl's loss_agg_mode names).

    token-mean:               sum over all tokens / number of tokens
    seq-mean-token-mean:      mean over sequences of (mean over the sequence's tokens)
    seq-mean-token-sum-norm:  mean over sequences of (sum over tokens / max_len)   (Dr. GRPO)
    """
    mask = mask.float()
    if mode == "token-mean":
        return (loss_tok * mask).sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        return ((loss_tok * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum-norm":
        return ((loss_tok * mask).sum(1) / max_len).mean()
    raise ValueError(f"unknown loss_agg {mode!r}; valid: {', '.join(LOSS_AGGS)}")


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate to the reference policy, k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def token_logprobs(model, full_ids: torch.Tensor, prompt_len: int, attention_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log pi(y_i | x, y_<i) of the response tokens and their entropies, both [B, N]."""
    pos = None if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=full_ids, attention_mask=attention_mask, position_ids=pos).logits  # [B, L+N, V]
    logits = logits[:, prompt_len - 1 : -1].float()  # [B, N, V] predicts the response tokens
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, full_ids[:, prompt_len:, None]).squeeze(-1)  # [B, N]
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [B, N]
    return logp, entropy


# ----------------------------------------------------------------------------------------------------
# Plumbing


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: adamw, sgd")


def validate(cfg: RLConfig) -> None:
    group_advantages(torch.zeros(1, 2), cfg.adv_estimator)
    aggregate_loss(torch.zeros(1, 1), torch.ones(1, 1), cfg.loss_agg, 1)
    if cfg.steps < 1 or cfg.ckpt_every < 1:
        raise ValueError(f"steps and ckpt_every must be >= 1 (got {cfg.steps}, {cfg.ckpt_every})")
    if cfg.group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group advantages (got {cfg.group_size})")
    if cfg.lr <= 0:
        raise ValueError(f"lr must be > 0 (got {cfg.lr})")


@torch.no_grad()
def heldout_accuracy(model, tokenizer, problems: list[Problem], temperature: float, generator: torch.Generator | None,
                     max_new_tokens: int, batch_size: int = 512,
                     reward: Callable[[str, str], float] = exact_match_reward) -> float:
    """Fraction of held-out problems answered correctly by `reward` (the task's: `AdditionTask.reward`), one
    completion each (temperature 0 = greedy)."""
    correct = 0
    for i in range(0, len(problems), batch_size):
        chunk = problems[i : i + batch_size]
        ids, am = encode_prompts(tokenizer, [p.prompt for p in chunk])
        toks, mask = generate(model, ids, am, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                              pad_id=tokenizer.pad_token_id, temperature=temperature, generator=generator)
        correct += sum(reward(r, p.answer) for r, p in zip(decode_responses(tokenizer, toks, mask), chunk))
    return correct / max(1, len(problems))


def checkpoint_eval(model, tokenizer, task: AdditionTask, n: int, max_new_tokens: int, seed: int) -> dict:
    """Held-out accuracy at a checkpoint: greedy and sampled (T = 1, fixed seed so checkpoints compare)."""
    problems = task.eval_problems[:n]
    g = torch.Generator().manual_seed(seed + 12345)
    return {
        "heldout_greedy": heldout_accuracy(model, tokenizer, problems, 0.0, None, max_new_tokens, reward=task.reward),
        "heldout_sampled": heldout_accuracy(model, tokenizer, problems, 1.0, g, max_new_tokens, reward=task.reward),
    }


@training_threads
@dataclass
class Rollouts:
    """One step's on-policy batch: G completions for each of P prompts, their rewards and advantages."""

    full: torch.Tensor
    """Prompt + response ids [P*G, L+N]."""
    full_mask: torch.Tensor | None
    """Attention mask of `full` (None when no prompt is padded)."""
    prompt_len: int
    """L, the (left-padded) prompt length."""
    mask: torch.Tensor
    """Response tokens up to and including EOS, as floats [P*G, N]."""
    rewards: torch.Tensor
    """Verifiable reward of each completion [P*G]."""
    adv: torch.Tensor
    """Advantages [P*G, 1] (`group_advantages`)."""


def sample_rollouts(model, tokenizer, task: AdditionTask, cfg: RLConfig, gen: torch.Generator) -> Rollouts:
    """Draw prompts_per_step problems and group_size completions each (KV-cached, at the rollout temperature),
    score them with the task's verifiable reward and turn the rewards into advantages."""
    P, G, N = cfg.prompts_per_step, cfg.group_size, cfg.max_new_tokens
    problems = task.sample_train(P, gen)
    prompt_ids, prompt_mask = (x.repeat_interleave(G, 0) for x in encode_prompts(tokenizer, [p.prompt for p in problems]))  # [P*G, L]
    model.eval()
    tokens, mask = generate(model, prompt_ids, prompt_mask, max_new_tokens=N, eos_id=tokenizer.eos_token_id,
                            pad_id=tokenizer.pad_token_id, temperature=cfg.temperature, generator=gen)
    responses = decode_responses(tokenizer, tokens, mask)
    rewards = torch.tensor([task.reward(r, p.answer) for r, p in zip(responses, (q for q in problems for _ in range(G)))])
    adv = group_advantages(rewards.view(P, G), cfg.adv_estimator).reshape(-1, 1)  # [P*G, 1]
    full = torch.cat([prompt_ids, tokens], 1)  # [P*G, L+N]
    full_mask = None if bool(prompt_mask.all()) else torch.cat([prompt_mask, torch.ones_like(tokens)], 1)
    return Rollouts(full, full_mask, prompt_ids.shape[1], mask.float(), rewards, adv)


def policy_loss(cfg: RLConfig, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                entropy: torch.Tensor, ref_logp: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar RL loss of one update: the clipped surrogate per token, plus the KL penalty (when ref_logp is
    given) and minus the entropy bonus (when entropy_coef), aggregated by cfg.loss_agg."""
    ratio = importance_ratio(logp, old_logp, mask, sequence_level=cfg.adv_estimator == "gspo")
    loss_tok = clipped_surrogate(ratio, adv, cfg.clip_low, cfg.clip_high)
    if ref_logp is not None:
        loss_tok = loss_tok + cfg.kl_coef * k3_kl(logp, ref_logp)
    if cfg.entropy_coef:
        loss_tok = loss_tok - cfg.entropy_coef * entropy
    return aggregate_loss(loss_tok, mask, cfg.loss_agg, cfg.max_new_tokens)


def train_rl(cfg: RLConfig, init_dir: str | Path, run_dir: str | Path, task_cfg: TaskConfig = TaskConfig(),
             resume: bool = False, progress: bool = True, stop_after: int | None = None,
             init_optimizer: str | Path | None = None) -> Path:
    """Run GRPO-style RLVR from the HF model in init_dir; checkpoints land in run_dir/checkpoints/.

    resume=True continues from the last complete checkpoint and, with the same seed, reaches the same
    weights as an uninterrupted run. stop_after (a step count) stops early, as a kill would.
    init_optimizer: a checkpoint directory whose optimizer.safetensors a new run starts from (another run's
    AdamW moments and step count, e.g. across a re-grounding); None starts a fresh optimizer.
    """
    validate(cfg)
    init_dir = Path(init_dir)
    run_config = {"kind": "rl", "rl": to_jsonable(cfg), "task": to_jsonable(task_cfg), "init_dir": str(init_dir.resolve())}
    if init_optimizer is not None:  # only then recorded, so runs without it keep their config (and cache key)
        init_optimizer = Path(init_optimizer)
        try:
            training_state_file(init_optimizer, "optimizer.safetensors")
        except FileNotFoundError as e:
            raise FileNotFoundError(f"init_optimizer: {e}") from None
        run_config["init_optimizer"] = str(init_optimizer.resolve())
    with run_lock(run_dir, wait=False):  # no second process may write into this run
        start, ckpt = open_run(run_dir, run_config, resume)
        torch.manual_seed(cfg.seed)
        tokenizer = load_tokenizer(init_dir)
        model = load_model(init_dir)
        ref_model = copy.deepcopy(model).eval() if cfg.kl_coef > 0 else None
        opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        gen = torch.Generator().manual_seed(cfg.seed)
        task = AdditionTask(task_cfg)
        if ckpt is not None:
            load_weights_into(model, ckpt)
            restore_training_state(ckpt, opt, gen)
        else:
            if init_optimizer is not None:
                load_optimizer_tensors(opt, load_file(str(training_state_file(init_optimizer, "optimizer.safetensors"))))
            state = {"metrics": checkpoint_eval(model, tokenizer, task, cfg.eval_problems, cfg.max_new_tokens, cfg.seed),
                     "config": run_config, "seed": cfg.seed}
            save_checkpoint(run_dir, 0, model, tokenizer, state, opt, gen)
            append_metrics(run_dir, {"step": 0, **state["metrics"]})

        N = cfg.max_new_tokens
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        bar = tqdm(range(start, last), initial=start, total=cfg.steps, desc="RL steps", disable=not progress)
        for step in bar:
            t0 = time.perf_counter()
            batch = sample_rollouts(model, tokenizer, task, cfg, gen)  # 1. rollouts, 2. rewards and advantages
            # 3. Policy-gradient update(s) on the clipped surrogate.
            model.train()
            rewards, mask_f = batch.rewards, batch.mask
            old_logp = ref_logp = None
            for _ in range(cfg.updates_per_batch):
                logp, entropy = token_logprobs(model, batch.full, batch.prompt_len, batch.full_mask)
                if old_logp is None:
                    old_logp = logp.detach()
                    if ref_model is not None:
                        with torch.no_grad():
                            ref_logp, _ = token_logprobs(ref_model, batch.full, batch.prompt_len, batch.full_mask)
                loss = policy_loss(cfg, logp, old_logp, batch.adv, mask_f, entropy, ref_logp)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                opt.step()

            record = {"step": step + 1, "reward": rewards.mean().item(), "loss": loss.item(),
                      "response_len": mask_f.sum(1).mean().item(),
                      "entropy": ((entropy.detach() * mask_f).sum() / mask_f.sum()).item(),
                      "grad_norm": float(grad_norm), "seconds": time.perf_counter() - t0}
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
                model.eval()
                record.update(checkpoint_eval(model, tokenizer, task, cfg.eval_problems, N, cfg.seed))
                append_metrics(run_dir, record)
                save_checkpoint(run_dir, step + 1, model, tokenizer, {"metrics": record, "config": run_config, "seed": cfg.seed}, opt, gen)
            else:
                append_metrics(run_dir, record)
            bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record.get('heldout_sampled', float('nan')):.3f}")
        if last == cfg.steps:
            mark_complete(run_dir)
        return Path(run_dir)
