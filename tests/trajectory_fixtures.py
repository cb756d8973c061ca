"""Builders of small fabricated runs in every checkpoint layout `rlvr_nb.trajectory` reads (used by the
trajectory, linearity and log-prob tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from rlvr_nb.models import ModelConfig, build_model, build_tokenizer

SMALL = ModelConfig(hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=32, max_positions=32)


def small_model_and_tokenizer():
    tok = build_tokenizer()
    return build_model(SMALL, tok), tok


def fabricated_weights(steps, seed: int = 0, noise: float = 1e-3, drift: float = 1e-2) -> list[dict[str, torch.Tensor]]:
    """State dicts of the small model moving along a random direction with noise, one per step (float32)."""
    model, _ = small_model_and_tokenizer()
    g = torch.Generator().manual_seed(seed)
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    direction = {n: torch.randn(p.shape, generator=g) for n, p in base.items()}
    t_max = max(steps) or 1
    return [{n: base[n] + drift * (s / t_max) * direction[n] + noise * torch.randn(base[n].shape, generator=g)
             for n in base} for s in steps]


def write_hf_dir(d: Path, tensors: dict[str, torch.Tensor], tokenizer=None, shards: int = 1,
                 dtype: torch.dtype = torch.bfloat16, step: int | None = None) -> Path:
    """A save_pretrained-like directory: config.json, model.safetensors (or shards + index), tokenizer."""
    d.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.to(dtype).contiguous() for n, t in tensors.items()}
    if shards == 1:
        save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(tensors)
        weight_map = {}
        for i in range(shards):
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: tensors[n] for n in names[i::shards]}
            save_file(part, str(d / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model, tok = small_model_and_tokenizer()
    model.config.architectures = [type(model).__name__]
    model.config.to_json_file(str(d / "config.json"))
    (tokenizer or tok).save_pretrained(d)
    if step is not None:
        (d / "trainer_state.json").write_text(json.dumps({"step": step, "global_step": step}))
    return d


def make_run(root: Path, layout: str, steps=(0, 100, 200, 300, 500), seed: int = 0, **kw) -> Path:
    """A run directory in one layout: "ours", "trl", "trl_sharded", "verl", "flat" (step_N in the run dir)."""
    for s, w in zip(steps, fabricated_weights(steps, seed)):
        if layout == "ours":
            d = write_hf_dir(root / "checkpoints" / f"step_{s}", w, step=s, **kw)
            save_file({"0.exp_avg": torch.zeros(3)}, str(d / "optimizer.safetensors"))  # must be ignored
        elif layout == "flat":
            write_hf_dir(root / f"step_{s}", w, step=s, **kw)
        elif layout in ("trl", "trl_sharded"):
            d = write_hf_dir(root / f"checkpoint-{s}", w, shards=3 if layout == "trl_sharded" else 1, step=s, **kw)
            # never opened: a pickle here would fail any reader that tried to unpickle it
            (d / "training_args.bin").write_bytes(b"\x80\x04not a pickle we would ever load")
            (d / "optimizer.pt").write_bytes(b"\x00garbage")
        elif layout == "verl":
            actor = root / f"global_step_{s}" / "actor"
            write_hf_dir(actor / "huggingface", w, **kw)
            (actor / "model_world_size_1_rank_0.pt").write_bytes(b"\x00fsdp shard")
        else:
            raise ValueError(layout)
    return root


def reference_r2(values: np.ndarray, steps) -> np.ndarray:
    """Independent float64 R^2 = 1 - SS_res / SS_tot from numpy's least squares, per column of [T, n]."""
    t = np.asarray(steps, np.float64)
    A = np.stack([np.ones_like(t), t], axis=1)  # [T, 2]
    coef, *_ = np.linalg.lstsq(A, values, rcond=None)  # [2, n]
    resid = values - A @ coef
    ss_tot = ((values - values.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1 - (resid**2).sum(0) / ss_tot, np.nan)


def stored_values(traj_dirs, name: str) -> np.ndarray:
    """A tensor's values at every checkpoint as float64 [T, numel], read with safetensors' own loader."""
    from safetensors import safe_open

    rows = []
    for d in traj_dirs:
        d = Path(d)
        index = d / "model.safetensors.index.json"
        f = d / (json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors")
        with safe_open(str(f), framework="pt") as h:
            rows.append(h.get_tensor(name).double().reshape(-1).numpy())
    return np.stack(rows)
