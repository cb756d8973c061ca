"""04, beyond the paper: a direct test of the low-pass mechanism on our model.

The paper's explanation (PAPER.md Sec. 5): RLVR's credit comes from the final answer only, spread over every
token of the response, so each step's gradient is noisy; summed over many steps the noise averages out and a
straight drift remains. Our bare task's answer is 5 tokens, barely sparser than supervision. The study makes
the credit sparser on purpose and watches what changes:

- **Scratchpad length k** (`tasks.ScratchpadTaskConfig`): the model writes k tokens of working before the
  answer, RL is rewarded on the final answer only, SFT imitates the whole response. For each k (0, the bare
  task, included): the variant's own warm start (the embedded recipe, `embedded.ensure_warm_start`), then an RL
  run and an SFT run at the same learning rate, steps, checkpoint spacing and prompts per step
  (`embedded.matched_sft`). Each run's row: weight R^2 (`robustness.weight_r2_row`), token log-prob R^2 on
  probes sampled from the start (`logprobs.token_linearity`), the per-coordinate gradient SNR of its loss at the
  start (`robustness.gradient_snr`; RL: the policy gradient of `grpo.policy_loss` on fresh rollouts) with the
  constant-drift theory's median R^2 for that SNR (`lowpass.median_r2`), and how far the weights travelled.
- **Control (i), SGD at matched movement** (bare task): AdamW moves a weight whose gradient keeps its sign by
  about one learning rate a step, a straight line whatever the loss, which would make SFT as linear as RL. So
  RL and SFT also run with plain SGD, SFT at the learning rate that makes it travel the same path length as RL
  (the sum of `motion.distance` between consecutive checkpoints): one trial at RL's SGD rate, then rescaled once
  by the ratio of the two path lengths.
- **Control (ii), a new target** (bare task): SFT from the same start towards the answer in forward order, which
  the start model does not produce (the paper's SFT learns a new distribution; ours only sharpens one).

`compute_table` trains (cached under runs/ by config hash) and measures everything; `describe` states, from the
table's numbers, what holds; `findings` turns that into `rlvr_nb.findings` rows; `lowpass_theory.plot_mechanism` draws it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlvr_nb.checkpoint_files import find_checkpoints
from rlvr_nb.checkpoints import config_differences, read_metrics, to_jsonable
from rlvr_nb.embedded import EmbeddedConfig, ensure_rl_run, ensure_sft_run, ensure_warm_start, matched_sft
from rlvr_nb.experiments.robustness import (accuracy_at, batch_gradient_moments, gradient_moments, gradient_snr, rms_snr,
                                            weight_r2_row)
from rlvr_nb.grpo import RLConfig, policy_loss, sample_rollouts, token_logprobs
from rlvr_nb.logprobs import Probe, ProbeConfig, sample_probes, token_linearity
from rlvr_nb.lowpass import median_r2
from rlvr_nb.models import load_model, load_tokenizer
from rlvr_nb.notebook.report import study_table
from rlvr_nb.motion import distance
from rlvr_nb.sft import SFTConfig
from rlvr_nb.threads import threads, train_threads
from rlvr_nb.tasks import AdditionTask, TaskConfig, scratchpad_len, with_scratchpad
from rlvr_nb.trajectory import load_trajectory


@dataclass(frozen=True)
class MechanismStudy:
    """The sizes of the study (the defaults are the `cpu` profile's)."""

    scratchpads: tuple[str, ...] = ("", "carries", "sums")
    """Scratchpad kinds, "" the bare answer (k = 0); k grows with `tasks.SCRATCHPADS`' tokens per column."""
    steps: int = 200
    """Steps of every run (RL and SFT alike)."""
    prompts_per_step: int = 32
    """RL prompts per step; SFT's batch (one sequence per RL prompt)."""
    group_size: int = 16
    """RL rollouts per prompt."""
    lr: float = 5e-5
    """AdamW learning rate of RL and SFT alike."""
    ckpt_every: int = 20
    """Steps between checkpoints."""
    eval_problems: int = 128
    """Held-out problems scored at each checkpoint."""
    grad_batches: int = 48
    """Batches for the per-coordinate gradient SNR at the start of each run."""
    probe_prompts: int = 64
    """Held-out prompts whose responses, sampled from the start, are the token probes."""
    responses_per_prompt: int = 4
    """Probe responses per prompt."""
    sgd_lr: float = 0.01
    """Control (i): RL's SGD learning rate (SFT's is matched to its movement)."""
    new_target: bool = True
    """Control (ii): also run SFT towards the forward answer order."""
    warm_start_steps: int | None = None
    """None: each variant's warm start is the embedded recipe (SFT until 10% sampled accuracy, then the cool-down);
    a number: a plain SFT of that many steps at `warm_start_lr` instead, for every k (a tiny smoke run)."""
    warm_start_lr: float = 3e-3
    """Learning rate of that plain warm start (unused with the embedded recipe)."""
    digits: int | None = None
    """Operand digits: None, the embedded task's; 1 gives a warm start of seconds (smoke)."""
    seed: int = 0
    """Seed of every run, of the probes and of the gradient batches."""


def make_study(changes: dict) -> MechanismStudy:
    """`MechanismStudy` with these fields changed (lists become tuples); ValueError naming an unknown field."""
    names = {f.name for f in fields(MechanismStudy)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown MechanismStudy field(s) {unknown}; valid: {sorted(names)}")
    study = replace(MechanismStudy(), **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
    if "" not in study.scratchpads or len(study.scratchpads) < 2:
        raise ValueError(f"scratchpads must hold the bare answer '' and at least one scratchpad, got {study.scratchpads}")
    return study


# --------------------------------------------------------------------------------------------------
# The runs


def variant(emb: EmbeddedConfig, scratchpad: str, study: MechanismStudy) -> EmbeddedConfig:
    """The embedded config of one scratchpad variant: its task, and its warm start (the recipe, or a fixed one)."""
    task = emb.task
    if study.digits is not None and study.digits != task.digits:  # at most a quarter of the pairs held out
        task = replace(task, digits=study.digits, n_eval=min(task.n_eval, 10 ** (2 * study.digits) // 4))
    emb = replace(emb, task=with_scratchpad(task, scratchpad))
    if study.warm_start_steps is not None:
        warm = SFTConfig(steps=study.warm_start_steps, batch_size=64, lr=study.warm_start_lr,
                         ckpt_every=study.warm_start_steps, eval_problems=study.eval_problems)
        emb = replace(emb, warm_start=warm, cool_down=None)
    return emb


def rl_config(study: MechanismStudy, task: TaskConfig, **changes) -> RLConfig:
    """The study's RL run on a task: the response (scratchpad, "\n", answer, EOS) plus one token of room."""
    return RLConfig(steps=study.steps, prompts_per_step=study.prompts_per_step, group_size=study.group_size, lr=study.lr,
                    ckpt_every=study.ckpt_every, eval_problems=study.eval_problems, seed=study.seed,
                    max_new_tokens=AdditionTask(task).response_len + 2, **changes)


def ensure_sft_from(sft: SFTConfig, emb: EmbeddedConfig, target: TaskConfig, progress: bool = True) -> Path:
    """An SFT run from `emb`'s RL start trained on another task `target` (control ii), cached by config hash."""
    return ensure_sft_run(sft, emb, progress, target=target)


def path_length(run_dir: str | Path) -> float:
    """Distance travelled: sum of ||W_(j+1) - W_j|| over consecutive checkpoints (`motion.distance`)."""
    dirs = [d for _, d in find_checkpoints(run_dir)]
    return float(sum(distance(a, b) for a, b in zip(dirs, dirs[1:])))


# --------------------------------------------------------------------------------------------------
# Measurements


def rl_moments(model, tokenizer, task: AdditionTask, rl: RLConfig, n_batches: int, seed: int) -> dict:
    """Per-parameter moments of RL's policy gradient at a fixed model over n_batches fresh batches of rollouts
    (`grpo.sample_rollouts`, the on-policy loss `grpo.policy_loss` at ratio 1)."""

    def losses(gen: torch.Generator) -> list[torch.Tensor]:
        batch = sample_rollouts(model, tokenizer, task, rl, gen)
        model.train()
        logp, entropy = token_logprobs(model, batch.full, batch.prompt_len, batch.full_mask)
        return [policy_loss(rl, logp, logp.detach(), batch.adv, batch.mask, entropy)]

    return batch_gradient_moments(model, losses, n_batches, seed)[0]


def snr_fields(moments: dict, n_checkpoints: int, steps: int) -> dict:
    """Median and RMS per-coordinate gradient SNR, and the constant-drift theory's median R^2 at the median."""
    snr = float(np.nanmedian(gradient_snr(moments)))
    return {"snr median": round(snr, 5), "snr rms": round(rms_snr(moments), 5),
            "theory median": round(float(median_r2(snr, n_checkpoints, steps // (n_checkpoints - 1))), 4)}


def run_row(run_dir: Path, probes: list[Probe]) -> dict:
    """Weight and token R^2, movement and held-out greedy accuracy of one run."""
    w = weight_r2_row(run_dir)
    tok = token_linearity(load_trajectory(run_dir, progress=False), probes, progress=False).overall
    clean = lambda x: None if x is None or not math.isfinite(x) else round(float(x), 4)  # noqa: E731
    rewards = [m["reward"] for m in read_metrics(run_dir) if "reward" in m]  # RL runs only
    reward = {"reward_start": clean(float(np.mean(rewards[:20]))), "reward_end": clean(float(np.mean(rewards[-20:])))} if rewards else {}
    first, last = find_checkpoints(run_dir)[0][0], w["last_step"]
    return {**reward, "sampled_start": accuracy_at(run_dir, first)["sampled"], "sampled_end": accuracy_at(run_dir, last)["sampled"],
            "weight median": w["median"], "weight >0.7": w["frac_above"], "active": round(w["active"] / w["total"], 4),
            "token median": clean(tok.median), "token >0.7": clean(tok.frac_above), "tokens moved": int(tok.count),
            "tokens": int(tok.total), "path": round(path_length(run_dir), 4), "rel_change": w["rel_change"],
            "drift_cos": w["drift_cos"], "acc_start": w["acc_start"], "acc_end": w["acc_end"],
            "checkpoints": w["checkpoints"], "run": run_dir.name}


def start_probes(start: Path, task: AdditionTask, study: MechanismStudy) -> list[Probe]:
    """Probe responses sampled from the start model on the first held-out prompts."""
    cfg = ProbeConfig(responses_per_prompt=study.responses_per_prompt, max_new_tokens=task.response_len + 2,
                      seed=study.seed)
    prompts = [p.prompt for p in task.eval_problems[: study.probe_prompts]]
    return sample_probes(load_model(start), load_tokenizer(start), prompts, cfg, progress=False)


def compute_table(study: MechanismStudy, emb: EmbeddedConfig, progress: bool = True) -> dict:
    """Train and measure the whole study: {"study", "embedded", "rows"}, one row per run (see the module doc)."""
    rows: list[dict] = []
    bare = variant(emb, "", study)
    for kind in tqdm(study.scratchpads, desc="scratchpad lengths", disable=not progress):
        e = variant(emb, kind, study)
        task = AdditionTask(e.task)
        rl = rl_config(study, e.task)
        sft = matched_sft(rl)
        start = ensure_warm_start(e, progress)
        probes = start_probes(start, task, study)
        model, tokenizer = load_model(start), load_tokenizer(start)
        T = study.steps // study.ckpt_every + 1
        snr = {"RL": snr_fields(rl_moments(model, tokenizer, task, rl, study.grad_batches, study.seed), T, study.steps),
               "SFT": snr_fields(gradient_moments(model, tokenizer, task, sft.batch_size, study.grad_batches, study.seed),
                                 T, study.steps)}
        for method, run in (("RL", ensure_rl_run(rl, e, progress)), ("SFT", ensure_sft_run(sft, e, progress))):
            rows.append({"study": "scratchpad", "scratchpad": kind or "none", "k": scratchpad_len(e.task),
                         "method": method, "optimizer": "adamw", "lr": study.lr, **snr[method], **run_row(run, probes)})
        if kind == "":
            bare_probes, bare_rl = probes, rl
    rl_sgd = replace(bare_rl, optimizer="sgd", lr=study.sgd_lr)
    rl_run = ensure_rl_run(rl_sgd, bare, progress)
    target_path = path_length(rl_run)
    trial = ensure_sft_run(matched_sft(rl_sgd), bare, progress)
    trial_path = path_length(trial)  # one rescaling by the path ratio (none when either run stood still)
    sft_lr = float(f"{study.sgd_lr * target_path / trial_path:.3g}") if target_path > 0 and trial_path > 0 else study.sgd_lr
    sft_run = ensure_sft_run(matched_sft(rl_sgd, lr=sft_lr), bare, progress)
    for method, run, lr in (("RL", rl_run, study.sgd_lr), ("SFT", sft_run, sft_lr)):
        rows.append({"study": "sgd", "scratchpad": "none", "k": 0, "method": method, "optimizer": "sgd", "lr": lr,
                     **run_row(run, bare_probes)})
    if study.new_target:
        forward = replace(bare.task, reverse_answer=not bare.task.reverse_answer)
        run = ensure_sft_from(matched_sft(bare_rl), bare, forward, progress)
        rows.append({"study": "new target", "scratchpad": "none", "k": 0, "method": "SFT", "optimizer": "adamw",
                     "lr": study.lr, **run_row(run, bare_probes)})
    return {"study": to_jsonable(study), "embedded": to_jsonable(emb), "rows": rows}


WRITER = "rlvr_nb.experiments.mechanism.mechanism_table"
COMMAND = "python -m rlvr_nb.experiments.mechanism --profile {profile}"
"""How the committed table is recomputed (one process; its trainers and measurements run at one thread)."""


def mechanism_table(path: str | Path, recompute: bool, study: MechanismStudy, emb: EmbeddedConfig, profile: str,
                    progress: bool = True) -> dict:
    """The study's table: computed (`compute_table`) and written to `path` with its provenance when `recompute`,
    else read from `path`. A table computed from another study or embedded config is an error naming the fields
    that differ, and the way to recompute it (`COMMAND`)."""
    command = COMMAND.format(profile=profile)

    def compute() -> dict:
        with threads(train_threads()):  # the rollouts of the SNR batches, like the trainers, at a fixed count
            return compute_table(study, emb, progress)

    data = study_table(path, recompute, compute, WRITER, command)
    diffs = config_differences({"study": data.get("study"), "embedded": data.get("embedded")},
                               json.loads(json.dumps({"study": to_jsonable(study), "embedded": to_jsonable(emb)})))
    if diffs:
        raise ValueError(f"{path} was computed with another configuration ({'; '.join(diffs[:6])}): recompute it "
                         f"with {command}, or set recompute_mechanism=True")
    return data


def main(argv: list[str] | None = None) -> None:
    """Recompute a profile's committed table (the `cpu` one: notebooks/data/04_mechanism_cpu.json)."""
    import argparse

    from rlvr_nb.embedded import repo_root
    from rlvr_nb.notebook import profiles

    ap = argparse.ArgumentParser(description="04's scratchpad test of the low-pass mechanism: recompute its table")
    ap.add_argument("--profile", default="cpu", choices=list(profiles.PROFILES))
    ap.add_argument("--table", default=None, help="where to write it (default: the profile's mechanism_table)")
    args = ap.parse_args(argv)
    knobs = profiles.resolve("04_lowpass_theory", args.profile)
    path = Path(args.table) if args.table else repo_root() / knobs.mechanism_table
    if not args.table and not knobs.mechanism_table:
        raise SystemExit(f"profile {args.profile} has no committed table: pass --table PATH")
    torch.set_num_threads(1)
    data = mechanism_table(path, True, make_study(knobs.mechanism_study), profiles.embedded_config(args.profile),
                           args.profile)
    print(f"wrote {path} ({data['provenance']['wall_seconds']} s)")
    for line in describe(data["rows"]):
        print(line)


# --------------------------------------------------------------------------------------------------
# What the table says

MARGIN = 0.02
"""A difference in median R^2 counts when it exceeds this (the margin of finding (c), `paper.FINDING_C`)."""


def pick(rows: list[dict], study: str, method: str, k: int | None = None) -> dict:
    """The row of one run; KeyError naming it when the table lacks it."""
    for r in rows:
        if r["study"] == study and r["method"] == method and (k is None or r["k"] == k):
            return r
    raise KeyError(f"the mechanism table has no {study} {method} row" + ("" if k is None else f" at k = {k}"))


def gap(rl: dict, sft: dict, what: str) -> float:
    """RL's median R^2 minus SFT's ("weight" or "token"); NaN when either is missing."""
    a, b = rl.get(f"{what} median"), sft.get(f"{what} median")
    return math.nan if a is None or b is None else a - b


def lengths(rows: list[dict]) -> list[int]:
    """The scratchpad lengths k of the table, in increasing order."""
    return sorted({r["k"] for r in rows if r["study"] == "scratchpad"})


def summary(rows: list[dict]) -> dict:
    """The numbers the verdicts use: per-k gaps and SNRs, and the two controls' gaps (NaN where missing)."""
    ks = lengths(rows)
    by_k = {k: (pick(rows, "scratchpad", "RL", k), pick(rows, "scratchpad", "SFT", k)) for k in ks}
    out = {"k": ks,
           "weight gap": [gap(*by_k[k], "weight") for k in ks], "token gap": [gap(*by_k[k], "token") for k in ks],
           "RL snr": [by_k[k][0]["snr median"] for k in ks], "SFT snr": [by_k[k][1]["snr median"] for k in ks]}
    rl0 = by_k[0][0]
    try:
        sgd_rl, sgd_sft = pick(rows, "sgd", "RL"), pick(rows, "sgd", "SFT")
        out |= {"sgd weight gap": gap(sgd_rl, sgd_sft, "weight"), "sgd token gap": gap(sgd_rl, sgd_sft, "token"),
                "sgd path ratio": sgd_sft["path"] / sgd_rl["path"] if sgd_rl["path"] else math.nan,
                "sgd active": (sgd_rl["active"], sgd_sft["active"])}
    except KeyError:
        pass
    try:
        new = pick(rows, "new target", "SFT")
        out |= {"new weight gap": gap(rl0, new, "weight"), "new token gap": gap(rl0, new, "token"),
                "new acc": (new["acc_start"], new["acc_end"]),
                "new path ratio": new["path"] / rl0["path"] if rl0["path"] else math.nan}
    except KeyError:
        pass
    return out


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def contrast(rl_minus_sft: float, margin: float = MARGIN) -> str:
    """RL against SFT in words: "more linear than", "as linear as" (within the margin) or "less linear than"."""
    if math.isnan(rl_minus_sft):
        return "not comparable with (a median is missing)"
    return "more linear than" if rl_minus_sft > margin else "less linear than" if rl_minus_sft < -margin else "as linear as"


def mechanism_holds(first_gap: float, last_gap: float, margin: float = MARGIN) -> bool:
    """The mechanism's prediction for one measure: as k grows from 0 to its largest value, RL pulls ahead of SFT
    (the RL-minus-SFT median rises by more than `margin`) and ends ahead (by more than `margin`)."""
    return last_gap - first_gap > margin and last_gap > margin


def _trend(values: list[float]) -> str:
    if any(v is None for v in values):
        return "has a missing value"
    if all(b < a for a, b in zip(values, values[1:])):
        return "falls at every step"
    if all(b > a for a, b in zip(values, values[1:])):
        return "rises at every step"
    return "is not monotone"


def describe(rows: list[dict], margin: float = MARGIN) -> list[str]:
    """What holds, in plain words, each sentence built from the table's numbers."""
    s = summary(rows)
    ks, out = s["k"], []
    series = lambda method, key: [pick(rows, "scratchpad", method, k).get(key) for k in ks]  # noqa: E731
    fmt = lambda v: " -> ".join("n/a" if x is None else f"{x:.3f}" for x in v)  # noqa: E731
    for what in ("weight", "token"):
        rl, sft = series("RL", f"{what} median"), series("SFT", f"{what} median")
        gaps = s[f"{what} gap"]
        out.append(f"{what.capitalize()} R^2 median over k = {', '.join(map(str, ks))}: RL {fmt(rl)} ({_trend(rl)}), "
                   f"SFT {fmt(sft)} ({_trend(sft)}); RL is " + ", ".join(f"{contrast(g, margin)} SFT at k = {k} ({_num(g)})"
                                                                          for k, g in zip(ks, gaps)) + ". "
                   + (f"As the mechanism predicts, RL pulls ahead of SFT as the credit gets sparser."
                      if mechanism_holds(gaps[0], gaps[-1], margin) else
                      f"The mechanism predicts RL pulling ahead of SFT as the credit gets sparser (the difference rising "
                      f"by more than {margin} and ending above it); it changes by {_num(gaps[-1] - gaps[0])} and ends at "
                      f"{_num(gaps[-1])}: not what we see."))
    out.append(f"Per-coordinate gradient SNR per step at the start (median over parameters): RL {fmt(s['RL snr'])} "
               f"({_trend(s['RL snr'])} as k grows), SFT {fmt(s['SFT snr'])}. "
               + ("RL's falls as its credit is spread over more tokens, as the mechanism says."
                  if _trend(s["RL snr"]) == "falls at every step" else
                  "The mechanism says RL's should fall as its credit is spread over more tokens; it does not."))
    theory, measured = series("RL", "theory median"), series("RL", "weight median")
    side = lambda cmp: [str(k) for k, t, m in zip(ks, theory, measured) if None not in (t, m) and cmp(m - t)]  # noqa: E731
    below, above = side(lambda d: d < -margin), side(lambda d: d > margin)
    out.append("Part 1's constant-drift theory at RL's measured median SNR predicts a median weight R^2 of "
               f"{fmt(theory)}; measured {fmt(measured)}, with the cosine of the run's two halves (1: a straight drift) "
               f"{fmt(series('RL', 'drift_cos'))}."
               + (f" The measurement is below the prediction at k = {', '.join(below)}: the drift is not constant there."
                  if below else "")
               + (f" It is above the prediction at k = {', '.join(above)}." if above else "")
               + (" Both agree within the margin at every k." if not below and not above else ""))
    if "sgd weight gap" in s:
        w, t, adam_w = s["sgd weight gap"], s["sgd token gap"], s["weight gap"][0]
        out.append(f"Control (i), SGD at matched movement (SFT's path {s['sgd path ratio']:.2f} x RL's; the weight R^2 "
                   f"covers {s['sgd active'][0]:.0%} of RL's and {s['sgd active'][1]:.0%} of SFT's weights): RL minus SFT, "
                   f"median weight R^2 {_num(w)} (AdamW at k = 0: {_num(adam_w)}), token {_num(t)}: with SGD, RL's weights "
                   f"are {contrast(w, margin)} SFT's. "
                   + ("SGD opens a gap that AdamW hides: the Adam-sign explanation fits."
                      if w > max(adam_w, 0.0) + margin else
                      "SGD does not open a gap that AdamW hides: the Adam-sign explanation is not supported."))
    if "new weight gap" in s:
        a0, a1 = s["new acc"]
        out.append(f"Control (ii), SFT towards the forward answer order (held-out greedy accuracy on it {a0:.2f} -> "
                   f"{a1:.2f}; path {s['new path ratio']:.2f} x RL's): RL (bare task) minus this SFT, median weight R^2 "
                   f"{_num(s['new weight gap'])}, token {_num(s['new token gap'])}: RL's weights are "
                   f"{contrast(s['new weight gap'], margin)} this SFT's, its token log-probs "
                   f"{contrast(s['new token gap'], margin)} this SFT's. "
                   + ("Towards a new target SFT is less linear than RL, as in the paper" if s["new weight gap"] > margin
                      else "Even towards a new target SFT's weights are not less linear than RL's")
                   + ("; it has not yet learned to produce that target within the run." if a1 - a0 < 0.05 else "."))
    return out


def findings(rows: list[dict], notebook: str, margin: float = MARGIN) -> list:
    """The study's findings (`rlvr_nb.findings.Finding`): RL pulling ahead of SFT as k grows (weights, tokens;
    `mechanism_holds`), RL's gradient SNR at the longest scratchpad over the bare task's, and the RL-vs-SFT
    contrast under the two controls. The paper has no such experiment (paper: None); the verdicts are those
    `describe` prints."""
    from rlvr_nb.findings import Finding

    s = summary(rows)
    ks, out = s["k"], []
    for what in ("weight", "token"):
        first, last = s[f"{what} gap"][0], s[f"{what} gap"][-1]
        out.append(Finding(f"mechanism_{what}", f"scratchpad k = 0 -> {ks[-1]}: RL minus SFT, median {what} R^2, at the "
                           f"longest scratchpad", last, None, None,
                           f"> {margin} and above its k = 0 value ({_num(first)}) by > {margin}",
                           "holds" if mechanism_holds(first, last, margin) else "fails", notebook,
                           note=f"RL minus SFT at k = {', '.join(f'{k}: {_num(g)}' for k, g in zip(ks, s[f'{what} gap']))}"
                                + ("; NaN: no probe token moved by 0.2" if math.isnan(last) else "")))
    ratio = s["RL snr"][-1] / s["RL snr"][0] if s["RL snr"][0] else math.nan
    out.append(Finding("mechanism_rl_snr", f"RL gradient SNR (median per coordinate) at k = {ks[-1]} over k = 0", ratio,
                       None, None, "< 1", "holds" if ratio < 1 else "fails", notebook, unit="x",
                       note="NaN: no gradient signal at k = 0" if math.isnan(ratio) else
                       f"RL at k = {', '.join(f'{k}: {x:.4f}' for k, x in zip(ks, s['RL snr']))}"))
    for key, name in (("sgd", "SGD at matched movement"), ("new", "SFT towards a new target (forward answer order)")):
        for what in ("weight", "token"):
            g = s.get(f"{key} {what} gap")
            if g is None:
                continue
            out.append(Finding(f"control_{key}_{what}", f"{name}: RL minus SFT, median {what} R^2", g, None, None,
                               f"> {margin} (RL more linear)", "holds" if g > margin else "fails", notebook,
                               note="NaN: no probe token moved by 0.2" if math.isnan(g) else ""))
    return out


def table_rows(rows: list[dict]) -> list[dict]:
    """The table as 04 shows it (one row per run)."""
    keys = ["study", "scratchpad", "k", "method", "optimizer", "lr", "weight median", "weight >0.7", "active",
            "token median", "tokens moved", "snr rms", "snr median", "theory median", "path", "drift_cos",
            "acc_start", "acc_end"]
    return [{k: ("" if r.get(k) is None else r[k]) for k in keys} for r in rows]


if __name__ == "__main__":
    main()
