"""Train with verl on GPUs: one training config -> verl parquet data, a reward file that calls our grader,
and the Hydra overrides of `python -m verl.trainer.main_ppo`, run as a subprocess with its log beside the run.

Before anything is written, what verl will be given is checked (`rlvr_nb.backends.verl_inputs`): the data
files, the model's tokenizer against what verl 0.9.1's rollout needs of it, and every training prompt's length.
A standard RL run is cached by config hash like the embedded runs
(`rlvr_nb.experiments.rl_extra.ensure_verl_standard_run`: 01 and 06 at `gpu` share it).

verl (validated against 0.9.1, see `VERL_VERSION`) needs a GPU: its rollouts run on vLLM, SGLang or
TensorRT-LLM. Everything here up to `launch` runs on a CPU: `--dry-run` prepares the run directory and
prints the exact command, whose overrides `rlvr_nb.backends.verl_config` builds and checks against the
config verl packages. verl's checkpoints are read through `rlvr_nb.checkpoint_files` (only the steps verl
marked complete) and linked into our layout; a run meant to appear only when complete (a re-grounding
block, a cached standard run) is trained in a temporary sibling and renamed in (`run_verl_into`).

Layout of a run directory (a fresh one per run; re-grounding starts one per block from the
extrapolated model):

    <out>/data/train.parquet, val.parquet   prompt (chat messages), data_source, reward_model, extra_info
    <out>/reward.py                         compute_score(data_source, solution_str, ground_truth, ...)
    <out>/command.sh, launch.json           the exact command and the config it came from
    <out>/verl.log, verl_metrics.jsonl      live log and verl's per-step metrics (its "file" logger)
    <out>/verl_checkpoints/global_step_N/actor/huggingface/   verl's checkpoints (HF weights: hf_model)
    <out>/checkpoints/step_N/               the same, ingested into our layout (step_0 = model_path)

    python -m rlvr_nb.backends.verl_launcher --model_path M --output_dir D --adv_estimator grpo --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from tqdm.auto import tqdm

from rlvr_nb.backends.verl_config import (EMBEDDED, VERL_VERSION, RunFiles, VerlRunConfig, build_overrides, resolve,
                                          validate_overrides, validate_verl_config, verl_command)
from rlvr_nb.checkpoint_files import VERL_TRACKER, CheckpointError, has_weights, read_json, scan_checkpoints
from rlvr_nb.checkpoint_writes import WRITTEN, atomic_dir, atomic_file, foreign_files, refuse_overlap, write_json, write_text
from rlvr_nb.checkpoints import is_complete, mark_complete
from rlvr_nb.backends.verl_inputs import check_prompts, check_tokenizer, task_problems, verl_rows
from rlvr_nb.tasks import TaskConfig

if TYPE_CHECKING:
    from rlvr_nb.grpo import RLConfig


# ----------------------------------------------------------------------------------------------------
# The run directory's files


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_file(path, mode="wb") as f:
        pq.write_table(pa.Table.from_pylist(rows), f)
    return path


REWARD_FILE = '''"""verl reward function written by rlvr_nb.backends.verl_launcher: grader {grader!r}, bounded in time in
verl's reward threads (rlvr_nb.backends.verl_reward)."""

GRADER = {grader!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    from rlvr_nb.backends.verl_reward import score  # imported in verl's reward worker

    return score(solution_str, str(ground_truth), GRADER)
'''


def write_reward_file(path: Path, grader: str) -> Path:
    if grader not in ("exact", "math"):
        raise ValueError(f"grader must be 'exact' or 'math', got {grader!r}")
    return write_text(path, REWARD_FILE.format(grader=grader))


# ----------------------------------------------------------------------------------------------------
# Running


@dataclass
class VerlRun:
    cfg: VerlRunConfig
    files: RunFiles
    command: list[str]
    n_train: int
    returncode: int | None = None
    checkpoints: list[tuple[int, Path]] = field(default_factory=list)


def prepare_run(cfg: VerlRunConfig, validate_against_verl: bool | None = None) -> VerlRun:
    """Write data, reward file, command.sh and launch.json into a fresh output_dir; returns the run.

    Everything is checked first and nothing is written when a check fails: the config, the data files, the
    model's tokenizer and the prompts (`rlvr_nb.backends.verl_inputs`: one ValueError naming the model directory
    and what verl 0.9.1 would fail on), and the overrides against the installed verl's config
    (validate_against_verl; None: when verl is installed)."""
    validate_verl_config(cfg)
    if not Path(cfg.model_path).is_dir():
        raise FileNotFoundError(f"model_path {cfg.model_path} is not a directory (a HuggingFace model)")
    data = [d for d in (cfg.train_data, cfg.val_data) if d and d != EMBEDDED]
    refuse_overlap(cfg.output_dir, [cfg.model_path, *data], "output_dir")
    files = RunFiles(Path(cfg.output_dir).resolve())
    if files.verl_checkpoints.exists() and any(files.verl_checkpoints.iterdir()):
        raise FileExistsError(f"{files.verl_checkpoints} already holds checkpoints; every verl run here starts "
                              "fresh (resume_mode=disable): choose a new output_dir")
    r = resolve(cfg)
    train, val, source = task_problems(cfg)
    tok = check_tokenizer(cfg.model_path, r.prompt_format, train[0].prompt)
    check_prompts(tok, r.prompt_format, train, cfg.max_prompt_length, f"train_data {cfg.train_data}")
    overrides = build_overrides(cfg, len(train))
    if validate_against_verl or (validate_against_verl is None and importlib.util.find_spec("verl") is not None):
        validate_overrides(overrides)
    write_parquet(verl_rows(train, source, "train", r.prompt_format), files.train)
    write_parquet(verl_rows(val, source, "val", r.prompt_format), files.val)
    write_reward_file(files.reward, r.grader)
    command = verl_command(overrides)
    env_line = f"VERL_FILE_LOGGER_PATH={shlex.quote(str(files.metrics))}"
    write_text(files.command, "#!/bin/sh\n# written by rlvr_nb.backends.verl_launcher\ncd " + shlex.quote(str(files.root))
               + f" && {env_line} " + shlex.join(command) + "\n")
    write_json(files.launch, {"config": asdict(cfg), "resolved": asdict(r), "command": command, "n_train": len(train),
                              "n_val": len(val), "verl_validated_against": VERL_VERSION})
    return VerlRun(cfg, files, command, len(train))


STEP_LINE = re.compile(r"\bstep:([0-9]+) - ")
SCORE = re.compile(r"critic/score/mean:(-?[\d.e+-]+)")


def launch(run: VerlRun, progress: bool = True, echo: bool = False) -> VerlRun:
    """Run verl as a subprocess in the run directory; every output line goes to verl.log as it comes,
    a tqdm bar follows the steps (and the mean reward). Raises RuntimeError with the log's tail on failure."""
    env = {**os.environ, "VERL_FILE_LOGGER_PATH": str(run.files.metrics), "PYTHONUNBUFFERED": "1",
           "HYDRA_FULL_ERROR": "1"}
    bar = tqdm(total=run.cfg.steps, desc=f"verl {run.cfg.adv_estimator}", disable=not progress)
    tail: list[str] = []
    with open(run.files.log, "w") as log, subprocess.Popen(
            run.command, cwd=run.files.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            tail = (tail + [line])[-40:]
            if echo:
                print(line, end="")
            if m := STEP_LINE.search(line):
                bar.update(int(m.group(1)) - bar.n)
                if s := SCORE.search(line):
                    bar.set_postfix(score=float(s.group(1)))
        run.returncode = proc.wait()
    bar.close()
    if run.returncode != 0:
        raise RuntimeError(f"verl exited with code {run.returncode}; log: {run.files.log}\n" + "".join(tail))
    run.checkpoints = ingest_verl_checkpoints(run.files.verl_checkpoints, run.files.root, run.cfg.model_path,
                                              run.files.metrics)
    return run


def run_verl(cfg: VerlRunConfig, dry_run: bool = False, progress: bool = True) -> VerlRun:
    """Prepare the run directory; with dry_run print the exact command and stop, else train and ingest
    the checkpoints into <output_dir>/checkpoints/step_N/."""
    run = prepare_run(cfg)
    if dry_run:
        print(run.files.command.read_text().splitlines()[-1])
        return run
    return launch(run, progress=progress)


# ----------------------------------------------------------------------------------------------------
# verl checkpoints -> our layout


def complete_verl_checkpoints(verl_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, <verl_dir>/global_step_N/actor/huggingface) of every checkpoint verl marked complete: N up to
    the step in verl's latest_checkpointed_iteration.txt (written after each checkpoint); later steps are
    still being written and are left out. Found by `rlvr_nb.checkpoint_files.scan_checkpoints`.

    A complete step holding only FSDP shards is a CheckpointError that prints verl's merge command."""
    verl_dir = Path(verl_dir)
    if not verl_dir.is_dir():
        return []
    found = scan_checkpoints(verl_dir, "verl")
    if any(c.marked is None for c in found):
        raise CheckpointError(
            f"{verl_dir} holds verl checkpoints (global_step_{found[0].step} ...) but no readable {VERL_TRACKER}; "
            "verl writes it after each complete checkpoint (not with actor.checkpoint.async_save), so which "
            "steps are complete cannot be told: nothing was ingested")
    out = []
    for c in found:
        if not c.marked:
            continue
        if not has_weights(c.path):
            raise CheckpointError(f"verl checkpoint {c.path.parent.parent} (step {c.step}) has no model.safetensors "
                                  f"or model.safetensors.index.json in {c.path}")
        out.append((c.step, c.path))
    return out


def read_verl_metrics(path: str | Path | None) -> dict[int, dict]:
    """verl's per-step metrics ({"step": N, "data": {...}} lines of its "file" logger) by step. A last line
    cut short (verl still writing, or killed) is left out; any other bad line is an error naming it."""
    if path is None or not Path(path).is_file():
        return {}
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    out: dict[int, dict] = {}
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            out[int(rec["step"])] = rec.get("data", {})
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path}, line {i + 1}: not a verl metrics record ({e})") from None
    return out


def _link_target(f: Path, dst: Path, root: Path) -> str:
    """Where dst/<f.name> points: relative inside the run directory (so it can be renamed or moved), absolute
    outside it (the initial model)."""
    target = f.resolve()
    return os.path.relpath(target, dst) if target.is_relative_to(root) else str(target)


def _already_ingested(dst: Path, links: dict[str, str], state: dict) -> bool:
    """dst was written by an ingestion of exactly these links and this trainer_state.json."""
    if not dst.is_dir() or dst.is_symlink() or foreign_files(dst):
        return False
    have = {p.name for p in dst.iterdir()} - {WRITTEN}
    if have != set(links) | {"trainer_state.json"}:
        return False
    if any(not (dst / n).is_symlink() or os.readlink(dst / n) != t for n, t in links.items()):
        return False
    try:
        return read_json(dst / "trainer_state.json") == state
    except CheckpointError:
        return False


def ingest_verl_checkpoints(verl_dir: str | Path, run_dir: str | Path, initial_model: str | Path | None = None,
                            metrics_path: str | Path | None = None) -> list[tuple[int, Path]]:
    """Link verl's complete HF checkpoints (`complete_verl_checkpoints`) as <run_dir>/checkpoints/step_N/:
    symlinks to verl's files plus a trainer_state.json with the step, the source directory (relative to
    run_dir when inside it) and verl's metrics of that step; step_0 links initial_model.

    Each step directory is built beside its target and renamed into place (`atomic_dir`). Ingesting again is
    idempotent: a step already ingested with the same links and state is left untouched; one whose state
    changed (metrics arrived) is replaced as a whole, never rewritten in place. Nothing is written when a
    complete step holds only FSDP shards (CheckpointError with verl's merge command)."""
    root = Path(run_dir).resolve()
    metrics = read_verl_metrics(metrics_path)
    sources = ([(0, Path(initial_model))] if initial_model is not None else []) + complete_verl_checkpoints(verl_dir)
    out = []
    for step, src in sources:
        dst = root / "checkpoints" / f"step_{step}"
        links = {f.name: _link_target(f, dst, root) for f in sorted(src.iterdir())
                 if f.is_file() and f.name != "trainer_state.json" and not f.name.startswith(".")}
        where = src.resolve()
        state = {"step": step, "source": "verl" if step else "initial_model",
                 "path": str(where.relative_to(root)) if where.is_relative_to(root) else str(where),
                 "metrics": metrics.get(step, {})}
        if not _already_ingested(dst, links, state):
            with atomic_dir(dst, [src], replace=dst.exists()) as tmp:
                for name, target in links.items():
                    (tmp / name).symlink_to(target)
                write_json(tmp / "trainer_state.json", state)
        out.append((step, dst))
    return out


def run_verl_into(target: str | Path, make_cfg: Callable[[Path], VerlRunConfig], inputs: Sequence[str | Path] = (),
                  progress: bool = True) -> Path:
    """A complete verl run at `target`, found or trained now. verl runs in a temporary sibling of target that
    is renamed to target only once verl finished, its checkpoints are ingested and complete.json is written
    (`rlvr_nb.checkpoint_writes.atomic_dir`; symlinks inside the run are relative, so they survive the rename).
    An interrupted run leaves only that temporary directory, which the next write beside it removes; nothing
    else is deleted. make_cfg(directory) is the run's config with output_dir = directory."""
    target = Path(target)
    if is_complete(target):
        return target
    if target.exists():
        raise FileExistsError(f"{target} holds an incomplete verl run (no complete.json) that was not written "
                              "through a temporary directory; it is left as it is: remove it to train the run again")
    with atomic_dir(target, inputs) as tmp:
        run_verl(make_cfg(tmp), progress=progress)
        mark_complete(tmp)
    return target


def from_rl_config(rl, model_path: str | Path, output_dir: str | Path, train_data: str | None = None,
                   n_gpus: int = 1) -> VerlRunConfig:
    """The verl run equivalent to one of our `RLConfig`s (the `gpu` profile of 01 and 06): same estimator,
    learning rate, batch, group size, clips, loss aggregation, steps, checkpoint spacing and seed."""
    return VerlRunConfig(
        model_path=str(model_path), output_dir=str(output_dir), train_data=train_data or EMBEDDED,
        adv_estimator=rl.adv_estimator, lr=rl.lr, weight_decay=rl.weight_decay, grad_clip=rl.grad_clip,
        prompts_per_step=rl.prompts_per_step, group_size=rl.group_size, temperature=rl.temperature,
        max_response_length=rl.max_new_tokens, steps=rl.steps, ckpt_every=rl.ckpt_every,
        clip_low=rl.clip_low, clip_high=rl.clip_high, loss_agg=rl.loss_agg, n_gpus=n_gpus, seed=rl.seed)


def train_block_verl(rl_block: RLConfig, init_dir: Path, block_dir: Path, task_cfg: TaskConfig,
                     optimizer_from: Path | None = None, progress: bool = True, stop_after: int | None = None, *,
                     train_data: str | None = None, n_gpus: int = 1) -> bool:
    """One re-grounding block (`rlvr_nb.regrounding.run_regrounding`'s block trainer for trainer='verl',
    passed in by `rlvr_nb.experiments.rl_extra`) as a fresh verl run from init_dir, its checkpoints ingested
    into <block_dir>/checkpoints/step_N/ (step_0 = init_dir); returns True once the block is complete.

    A block is written through `run_verl_into`: an interrupted block is trained again from its start (verl
    runs here are never resumed), and stop_after is not honoured inside a block. Every verl run starts a
    fresh optimizer, so optimizer_from must be None (optimizer='reset')."""
    if optimizer_from is not None:
        raise ValueError("a verl block cannot start from a kept optimizer state (optimizer_from): every verl "
                         "block is a fresh verl run; use optimizer='reset'")
    run_verl_into(block_dir, lambda out: dataclasses.replace(
        from_rl_config(rl_block, init_dir, out, train_data=train_data, n_gpus=n_gpus), embedded_digits=task_cfg.digits),
        inputs=[init_dir], progress=progress)
    return True


# ----------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlvr_nb.backends.verl_launcher", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(VerlRunConfig):
        default = f.default
        if f.name == "extra_overrides":
            p.add_argument("--override", dest=f.name, action="append", default=[], help=f"{f.name}: key=value")
        elif isinstance(default, bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=default)
        else:
            kind = type(default) if default is not None else (float if f.name.startswith("clip") else
                                                              int if f.name == "max_tokens_per_gpu" else str)
            p.add_argument(f"--{f.name}", type=kind, default=default)
    p.add_argument("--dry-run", "--dry_run", action="store_true", help="prepare the run directory and print the command")
    return p


def main(argv: Sequence[str] | None = None) -> VerlRun:
    args = vars(_parser().parse_args(argv))
    dry = args.pop("dry_run")
    args["extra_overrides"] = tuple(args["extra_overrides"])
    return run_verl(VerlRunConfig(**args), dry_run=dry)


if __name__ == "__main__":
    main()
