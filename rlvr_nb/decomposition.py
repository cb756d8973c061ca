"""Sec. 5, Figure 4: where a layer's output change between two checkpoints comes from.

For one linear layer y = W x + b run on the same fixed inputs at checkpoints 0 and 1, the change of its
output splits exactly into three parts (PAPER.md Sec. 5, Figure 4):

    y1 - y0 = W0 (x1 - x0)                      from the change of its input
            + (W1 - W0) x0 + (b1 - b0)          from the change of its own weights (the bias change goes here)
            + (W1 - W0)(x1 - x0)                second order.

If the second-order part is negligible, the output change is linear in the weight changes of all layers
(each layer's input change is itself the output change of the layers below), so weights moving on a line
give outputs that move on a line. Inputs x0, x1 are captured with forward hooks on every `nn.Linear`
(q/k/v/o projections, MLP gate/up/down, lm_head) and all parts are computed in float64. Norms are
Frobenius norms over every non-padding token position (attention_mask == 1) and every output feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from rlvr_nb.checkpoint_files import find_checkpoints, read_step
from rlvr_nb.linearity import module_and_layer



@dataclass
class LayerChange:
    """Norms of the three parts of one linear layer's output change between two checkpoints."""

    name: str
    """Module name, e.g. "model.layers.0.self_attn.q_proj"."""
    layer: int
    """Decoder layer index; -1 outside the layer stack (lm_head)."""
    module_type: str
    """Last component of the name: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head."""
    input_norm: float
    """||W0 (x1 - x0)||: from the input change."""
    weight_norm: float
    """||(W1 - W0) x0 + (b1 - b0)||: from the weight (and bias) change."""
    second_order_norm: float
    """||(W1 - W0)(x1 - x0)||."""
    total_norm: float
    """||W1 x1 + b1 - W0 x0 - b0||, the whole output change."""
    output_norm: float
    """||W0 x0 + b0||, the output itself, for scale."""
    second_order_fraction: float
    """second_order_norm / total_norm (NaN when the output did not change)."""


def split_output_change(
    W0: torch.Tensor, b0: torch.Tensor | None, W1: torch.Tensor, b1: torch.Tensor | None, x0: torch.Tensor, x1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input part, weight part, second order, total) of y1 - y0 for y = W x + b, in float64. PAPER.md Sec. 5, Figure 4.

    W: [out, in], b: [out] or None, x: [N, in]. Returns four [N, out] tensors; the first three sum to
    the fourth up to float64 rounding.
    """
    W0, W1, x0, x1 = W0.double(), W1.double(), x0.double(), x1.double()
    dW, dx = W1 - W0, x1 - x0  # [out, in], [N, in]
    from_input = dx @ W0.T  # W0 (x1 - x0)
    from_weight = x0 @ dW.T + (_bias(b1) - _bias(b0))  # (W1 - W0) x0 + (b1 - b0)
    second_order = dx @ dW.T  # (W1 - W0)(x1 - x0)
    total = linear_output(W1, b1, x1) - linear_output(W0, b0, x0)  # y1 - y0
    return from_input, from_weight, second_order, total


def _bias(b: torch.Tensor | None) -> torch.Tensor | float:
    return 0.0 if b is None else b.double()


def linear_output(W: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """y = W x + b in float64. W: [out, in], x: [N, in] -> [N, out]."""
    return x.double() @ W.double().T + _bias(b)


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of a model by name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def capture_linear_inputs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Input x of every nn.Linear at the non-padding positions: {name: [N, in]} (one forward, no grad)."""
    keep = attention_mask.bool()  # [B, L]
    inputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if name in inputs:
                raise ValueError(f"{name} was called twice in one forward pass; its input change is ambiguous")
            x = args[0]  # [B, L, in]
            if x.shape[:2] != keep.shape:
                raise ValueError(f"{name} saw input of shape {tuple(x.shape)}, not [B, L, in] with [B, L] = "
                                 f"{tuple(keep.shape)}")
            inputs[name] = x[keep].detach()  # [N, in]
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in linear_modules(model).items()]
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _layer_and_type(name: str) -> tuple[int, str]:
    return module_and_layer(name)[1], name.split(".")[-1]


def output_change_decomposition(
    model0: nn.Module,
    model1: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 64,
    max_elements: int = 2**24,
) -> list[LayerChange]:
    """Per linear layer, the norms of the three parts of its output change from model0 to model1 (Sec. 5, Figure 4).

    input_ids, attention_mask: [B, L], the same fixed inputs for both models. Sums of squares are
    accumulated over batches of batch_size sequences (the inputs of every linear layer of one batch are
    held at once: lower batch_size for large models) and over row blocks of at most max_elements outputs.
    """
    if input_ids.shape != attention_mask.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids and attention_mask must both be [B, L]; got {tuple(input_ids.shape)} and "
                         f"{tuple(attention_mask.shape)}")
    mods0, mods1 = linear_modules(model0), linear_modules(model1)
    if list(mods0) != list(mods1):
        raise ValueError("the two models have different linear layers: "
                         f"{sorted(set(mods0) ^ set(mods1))[:5]} ...")
    for name in mods0:
        if mods0[name].weight.shape != mods1[name].weight.shape:
            raise ValueError(f"{name} has shape {tuple(mods0[name].weight.shape)} in model0 but "
                             f"{tuple(mods1[name].weight.shape)} in model1")
    if not mods0:
        raise ValueError("model0 has no nn.Linear modules")
    sq = {name: np.zeros(5) for name in mods0}  # sums of squares: input, weight, second, total, output
    dev0, dev1 = next(model0.parameters()).device, next(model1.parameters()).device
    for i in range(0, input_ids.shape[0], batch_size):
        ids, mask = input_ids[i : i + batch_size], attention_mask[i : i + batch_size]
        x0s = capture_linear_inputs(model0, ids.to(dev0), mask.to(dev0))
        x1s = capture_linear_inputs(model1, ids.to(dev1), mask.to(dev1))
        for name, m0 in mods0.items():
            m1, dev = mods1[name], m0.weight.device
            x0, x1 = x0s.pop(name), x1s.pop(name).to(dev)  # [N, in]
            b1 = None if m1.bias is None else m1.bias.to(dev)
            rows = max(1, max_elements // m0.out_features)  # bounds the float64 [rows, out] temporaries (lm_head)
            for j in range(0, x0.shape[0], rows):
                with torch.no_grad():
                    parts = split_output_change(m0.weight, m0.bias, m1.weight.to(dev), b1, x0[j : j + rows], x1[j : j + rows])
                    y0 = linear_output(m0.weight, m0.bias, x0[j : j + rows])
                sq[name] += [float((p**2).sum()) for p in (*parts, y0)]  # 4 x [rows, out] and [rows, out]
    records = []
    for name, s in sq.items():
        layer, kind = _layer_and_type(name)
        inp, wt, sec, tot, out = np.sqrt(s)
        records.append(LayerChange(name, layer, kind, float(inp), float(wt), float(sec), float(tot), float(out),
                                   float(sec / tot) if tot > 0 else math.nan))
    return records


def total_change(records: Sequence[LayerChange]) -> dict[str, float]:
    """All layers together: each part's norm over every layer (root of the summed squares), and fractions.

    Also the largest and the median per-layer second-order fraction.
    """
    s = {k: math.sqrt(sum(getattr(r, k) ** 2 for r in records))
         for k in ("input_norm", "weight_norm", "second_order_norm", "total_norm", "output_norm")}
    fracs = np.array([r.second_order_fraction for r in records], dtype=np.float64)
    s["second_order_fraction"] = s["second_order_norm"] / s["total_norm"] if s["total_norm"] > 0 else math.nan
    s["max_layer_second_order_fraction"] = float(np.nanmax(fracs)) if np.isfinite(fracs).any() else math.nan
    s["median_layer_second_order_fraction"] = float(np.nanmedian(fracs)) if np.isfinite(fracs).any() else math.nan
    return s


def output_change_values(
    model0: nn.Module, model1: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer_name: str
) -> dict[str, np.ndarray]:
    """Every element of the three parts (and the total) for one layer, for Figure 4's histogram. {part: [N * out]}."""
    mods0, mods1 = linear_modules(model0), linear_modules(model1)
    if layer_name not in mods0 or layer_name not in mods1:
        raise ValueError(f"no nn.Linear named {layer_name!r}; linear layers are: {list(mods0)}")
    x0 = capture_linear_inputs(model0, input_ids, attention_mask)[layer_name]
    x1 = capture_linear_inputs(model1, input_ids, attention_mask)[layer_name]
    m0, m1 = mods0[layer_name], mods1[layer_name]
    with torch.no_grad():
        parts = split_output_change(m0.weight, m0.bias, m1.weight, m1.bias, x0, x1)
    return {k: p.flatten().cpu().numpy() for k, p in zip(("input", "weight", "second_order", "total"), parts)}


# --------------------------------------------------------------------------------------------------
# Along a trajectory


@dataclass
class PairChange:
    """The decomposition between two consecutive checkpoints of a trajectory."""

    step0: int
    """Training step of the earlier checkpoint."""
    step1: int
    """Training step of the later checkpoint."""
    records: list[LayerChange]
    """One record per linear layer."""

    def totals(self) -> dict[str, float]:
        return {"step0": self.step0, "step1": self.step1, **total_change(self.records)}


def trajectory_decomposition(
    checkpoints: str | Path | Sequence[str | Path] | Sequence[tuple[int, str | Path]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    batch_size: int = 64,
    progress: bool = True,
) -> list[PairChange]:
    """The decomposition for every consecutive pair of checkpoints, sorted by step. Each model is loaded once.

    checkpoints: a run directory (its complete checkpoints, `rlvr_nb.checkpoint_files.find_checkpoints`),
    checkpoint directories (steps read by `rlvr_nb.checkpoint_files.read_step`) or (step, dir) pairs."""
    from rlvr_nb.models import load_model

    if isinstance(checkpoints, (str, Path)):
        checkpoints = find_checkpoints(checkpoints)
    if len(checkpoints) < 2:
        raise ValueError(f"need at least 2 checkpoints, got {len(checkpoints)}")
    pairs = [(int(c[0]), Path(c[1])) if isinstance(c, tuple) else (read_step(c), Path(c)) for c in checkpoints]
    pairs.sort(key=lambda sp: sp[0])
    for _, p in pairs:
        if not p.is_dir():
            raise FileNotFoundError(f"no checkpoint directory at {p}")
    out = []
    prev_step, prev = pairs[0][0], load_model(pairs[0][1])
    for step, path in tqdm(pairs[1:], desc="output-change decomposition", disable=not progress):
        model = load_model(path)
        out.append(PairChange(prev_step, step, output_change_decomposition(prev, model, input_ids, attention_mask, batch_size)))
        prev_step, prev = step, model
    return out


def second_order_summary(pairs: Sequence[PairChange], threshold: float = 0.05) -> dict:
    """Finding (d) along a trajectory: the second-order share of the output change for each checkpoint pair.

    Keys: pairs, max_fraction and median_fraction (all linear layers together, over the pairs),
    worst_layer_fraction with worst_layer and worst_pair (the largest share of any one layer in any pair),
    and holds: max_fraction < threshold (the paper's "negligible", read as under 5% of the total change).
    """
    if not pairs:
        raise ValueError("need at least one checkpoint pair")
    fracs = np.array([p.totals()["second_order_fraction"] for p in pairs], dtype=np.float64)  # [pairs]
    worst = max(((r.second_order_fraction, r.name, (p.step0, p.step1)) for p in pairs for r in p.records
                 if math.isfinite(r.second_order_fraction)), default=(math.nan, "", (0, 0)))
    return {"pairs": len(pairs), "max_fraction": float(np.nanmax(fracs)), "median_fraction": float(np.nanmedian(fracs)),
            "worst_layer_fraction": worst[0], "worst_layer": worst[1], "worst_pair": worst[2],
            "threshold": threshold, "holds": bool(np.nanmax(fracs) < threshold)}


# --------------------------------------------------------------------------------------------------
# Figures

PARTS = (("input_norm", "from input change  W0 (x1 - x0)", "C0"),
         ("weight_norm", "from weight change  (W1 - W0) x0", "C1"),
         ("second_order_norm", "second order  (W1 - W0)(x1 - x0)", "C3"))


def plot_layer_decomposition(records: Sequence[LayerChange], title: str = "") -> Figure:
    """Per linear layer: the three parts' norms (log scale) and the second-order fraction of the total."""
    labels = [f"{'head' if r.layer < 0 else f'L{r.layer}'}.{r.module_type.replace('_proj', '')}" for r in records]
    x = np.arange(len(records))
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(records)), 6), sharex=True)
    for i, (key, label, color) in enumerate(PARTS):
        ax.bar(x + (i - 1) * 0.27, [getattr(r, key) for r in records], 0.27, label=label, color=color)
    ax.plot(x, [r.total_norm for r in records], "k_", ms=14, label="total  y1 - y0")
    ax.set(yscale="log", ylabel="norm over tokens")
    ax.legend(fontsize=7, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title or "Sources of each linear layer's output change", fontsize=10)
    bx.bar(x, [100 * r.second_order_fraction for r in records], color="C3")
    bx.axhline(5, color="k", ls="--", lw=1, label="5%")
    bx.set(ylabel="second order / total (%)")
    bx.set_xticks(x, labels, rotation=90, fontsize=8)
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_trajectory_decomposition(pairs: Sequence[PairChange]) -> Figure:
    """Along the trajectory: total norms of the three parts per checkpoint pair, and the second-order fraction."""
    rows = [p.totals() for p in pairs]
    mid = [0.5 * (r["step0"] + r["step1"]) for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    for key, label, color in PARTS:
        ax.plot(mid, [r[key] for r in rows], "o-", color=color, label=label)
    ax.plot(mid, [r["total_norm"] for r in rows], "k--", label="total")
    ax.set(yscale="log", xlabel="step (middle of the checkpoint pair)", ylabel="norm, all linear layers")
    ax.legend(fontsize=8)
    bx.plot(mid, [100 * r["second_order_fraction"] for r in rows], "o-", color="C3", label="all layers")
    bx.plot(mid, [100 * r["max_layer_second_order_fraction"] for r in rows], "^:", color="C3", label="worst layer")
    bx.axhline(5, color="k", ls="--", lw=1, label="5%")
    bx.set(xlabel="step (middle of the checkpoint pair)", ylabel="second order / total (%)", ylim=(0, None))
    bx.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_output_change_histogram(values: dict[str, np.ndarray], layer_name: str = "", bins: int = 241) -> Figure:
    """Figure 4's histogram: the elements of each part of one layer's output change (log density, so the
    narrow parts stay visible beside the wide one; the legend gives each part's root mean square)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lim = float(np.quantile(np.abs(values["total"]), 0.999)) or 1.0
    edges = np.linspace(-lim, lim, bins + 1)
    for key, label, color in (("input", "from input change", "C0"), ("weight", "from weight change", "C1"),
                              ("second_order", "second order", "C3")):
        rms = float(np.sqrt(np.mean(np.square(values[key], dtype=np.float64))))
        ax.hist(np.clip(values[key], -lim, lim), bins=edges, density=True, alpha=0.55, color=color,
                histtype="stepfilled", label=f"{label} (rms {rms:.2g})")
    ax.set(xlabel="change of output (clipped to the 99.9% range of the total)", ylabel="density (log)", yscale="log",
           title=layer_name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
