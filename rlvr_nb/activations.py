"""Activation linearity (the paper's v3, Sec. 4): hidden states on fixed inputs, checkpoint by checkpoint.

The fixed inputs are the probe sequences (prompt + response) of `logprobs`. Every coordinate
h_t[layer, token, dim] of the hidden state after each layer (layer 0 is the embedding output) is a
trajectory over the checkpoints t; its R^2 against the step uses the same function as weights and
log-probs (`linearity.r2_against_steps`). A fixed random subset of at most `max_coordinates`
coordinates, drawn once, keeps memory at T x max_coordinates whatever the model and probe set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from rlvr_nb.linearity import TrajectoryLinearity, trajectory_linearity
from rlvr_nb.logprobs import Probe, check_probes, default_device, teacher_forced_batch, tokenizer_dir, vocab_size
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.trajectory import Trajectory


@dataclass(frozen=True)
class ActivationConfig:
    max_coordinates: int = 200_000
    """Coordinates (layer, token, dim) followed; a fixed random subset when there are more."""
    min_range: float = 1e-4
    """Keep a coordinate only if max - min over the checkpoints exceeds this."""
    threshold: float = 0.7
    """Report the fraction of kept R^2 above this."""
    batch_size: int = 256
    """Sequences per forward pass."""
    seed: int = 0
    """Seed of the coordinate subset and of the examples."""


@dataclass(frozen=True)
class CoordinateSubset:
    """Which coordinates are followed, as flat indices into [layers, tokens, hidden]."""

    n_layers: int
    n_tokens: int
    hidden: int
    flat: np.ndarray
    """Sorted flat indices [C]."""

    @property
    def layer(self) -> np.ndarray:
        """Layer of each followed coordinate [C] (0 = embedding output)."""
        return self.flat // (self.n_tokens * self.hidden)


@torch.no_grad()
def hidden_states(model: PreTrainedModel, tokenizer, probes: Sequence[Probe], batch_size: int = 256) -> torch.Tensor:
    """Hidden states of every real token of every probe sequence: [layers + 1, N_tokens, hidden] float32."""
    parts = []
    for i in range(0, len(probes), batch_size):
        ids, attn, _ = teacher_forced_batch(tokenizer, probes[i : i + batch_size])  # [B, L]
        hs = model(input_ids=ids.to(model.device), attention_mask=attn.to(model.device), output_hidden_states=True).hidden_states
        parts.append(torch.stack(hs)[:, attn.bool().to(model.device)].float().cpu())  # [layers + 1, real tokens, hidden]
    return torch.cat(parts, dim=1)


def choose_coordinates(shape: tuple[int, int, int], cfg: ActivationConfig) -> CoordinateSubset:
    """All coordinates, or `max_coordinates` of them drawn uniformly without replacement (seeded)."""
    n = shape[0] * shape[1] * shape[2]
    if n <= cfg.max_coordinates:
        flat = np.arange(n)
    else:
        flat = np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.max_coordinates, replace=False))
    return CoordinateSubset(*shape, flat)


def activation_trajectories(traj: Trajectory, probes: Sequence[Probe], cfg: ActivationConfig = ActivationConfig(),
                            progress: bool = True, device: str | None = None) -> tuple[np.ndarray, CoordinateSubset]:
    """The followed hidden-state coordinates at every checkpoint: ([T, C] float32, which coordinates), each
    checkpoint loaded on `device` (default: a GPU when visible)."""
    check_probes(probes, vocab_size(traj.dirs[0]), traj.dirs[0], need_tokens=False)  # prompts' tokens suffice
    tokenizer = load_tokenizer(tokenizer_dir(traj))
    rows, subset = [], None
    for d in tqdm(traj.dirs, desc="hidden states", unit="ckpt", disable=not progress):
        h = hidden_states(load_model(d).to(device or default_device()), tokenizer, probes, cfg.batch_size)  # [layers + 1, N, H]
        if subset is None:
            subset = choose_coordinates(tuple(h.shape), cfg)
        rows.append(h.reshape(-1).numpy()[subset.flat])
    return np.stack(rows), subset


def activation_linearity(traj: Trajectory, probes: Sequence[Probe], cfg: ActivationConfig = ActivationConfig(),
                         n_examples: int = 4, progress: bool = True) -> TrajectoryLinearity:
    """PAPER.md Sec. 4 (v3), activation linearity: R^2 of each followed hidden-state coordinate against
    the step, kept when its range exceeds `min_range`; summaries overall and per layer."""
    values, subset = activation_trajectories(traj, probes, cfg, progress)  # [T, C]
    keep = values.max(0) - values.min(0) > cfg.min_range
    layer = subset.layer
    within = subset.flat % (subset.n_tokens * subset.hidden)  # index inside the layer: token * hidden + dim
    labels = [f"layer {i} coordinate {c}" for i, c in zip(layer, within)]
    return trajectory_linearity(values, traj.steps, keep, threshold=cfg.threshold, labels=labels,
                                groups=[f"layer {i}" for i in layer], n_examples=n_examples, seed=cfg.seed)
