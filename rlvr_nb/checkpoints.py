"""Run directories and checkpoints: HuggingFace directories written atomically, resumable without pickle.

Layout of a run directory:

    <run>/run_config.json              the full config of the run (resuming checks it)
    <run>/metrics.jsonl                one JSON line per training step
    <run>/checkpoints/step_<N>/        model.safetensors, config.json, tokenizer files,
                                       trainer_state.json (step, metrics, config, seed),
                                       training_state/optimizer.safetensors + rng.safetensors
                                       (for resuming; in a subfolder, so that tools that load every
                                       *.safetensors of a model folder, as vLLM does, see only weights;
                                       older checkpoints hold them beside the weights and still resume)

A checkpoint is written into a temporary directory and renamed into place (`checkpoint_writes.atomic_dir`),
so a run killed at any moment leaves only complete checkpoints behind; the temporary directory of a killed
write is removed by the next checkpoint write. Training holds `run_lock` on the run directory, so a second
process can never write into a run that is being trained.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlvr_nb.checkpoint_files import find_checkpoints, read_tensors
from rlvr_nb.checkpoint_writes import atomic_dir, write_json, write_text


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of one of our runs (checkpoints/step_N/), sorted by step; [] when there are none."""
    if not Path(run_dir).is_dir():
        return []
    return find_checkpoints(run_dir, "rlvr-nb", allow_empty=True)


def mark_complete(run_dir: str | Path) -> None:
    """Record that a run finished (its last checkpoint is final)."""
    last = list_checkpoints(run_dir)[-1][0]
    write_json(Path(run_dir) / "complete.json", {"last_step": last})


_HELD: dict[Path, int] = {}
"""Run locks this process holds (run_lock is re-entrant within a process), with their depth."""


@contextlib.contextmanager
def run_lock(run: str | Path, wait: bool = True):
    """Hold an exclusive lock on a run directory while training it (the file .<name>.lock beside it).

    wait=True: a second process asking for the same run waits, then typically finds it complete;
    wait=False: it is an error naming the run. Re-entrant inside one process."""
    run = Path(run).resolve()
    if _HELD.get(run):
        _HELD[run] += 1
        try:
            yield
        finally:
            _HELD[run] -= 1
        return
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f".{run.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RuntimeError(f"another process is training {run} (it holds {f.name}); "
                                   "wait for it to finish or use another run directory") from None
            print(f"waiting for another process that is training {run.name} ...", flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        _HELD[run] = 1
        try:
            yield
        finally:
            _HELD.pop(run, None)
            fcntl.flock(f, fcntl.LOCK_UN)


def is_complete(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "complete.json").exists()


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (nested) to plain JSON values; tuples become lists."""
    if is_dataclass(obj):
        obj = asdict(obj)
    return json.loads(json.dumps(obj, default=str))


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two nested config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def open_run(run_dir: str | Path, config: dict, resume: bool) -> tuple[int, Path | None]:
    """Prepare a run directory. Returns (start_step, checkpoint to resume from or None).

    A new run writes run_config.json. An existing run with checkpoints is an error unless resume=True,
    and resuming with a different config is an error that names the differing fields.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "run_config.json"
    existing = list_checkpoints(run_dir)
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if existing and not resume:
            raise FileExistsError(f"{run_dir} already holds a run (checkpoints up to step {existing[-1][0]}); "
                                  "pass resume=True to continue it or choose a new run directory")
        diffs = config_differences(old, config)
        if diffs:
            raise ValueError(f"cannot resume {run_dir} with a different config; differing fields: " + "; ".join(diffs))
    elif existing:
        raise FileExistsError(f"{run_dir} holds checkpoints but no run_config.json; refusing to overwrite it")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "complete.json").unlink(missing_ok=True)  # ours (mark_complete)
    if not cfg_path.exists():
        write_json(cfg_path, config, sort_keys=True)
    if resume and existing:
        step, path = existing[-1]
        _truncate_metrics(run_dir, step)
        return step, path
    _truncate_metrics(run_dir, -1)
    return 0, None


def _truncate_metrics(run_dir: Path, last_step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be recomputed)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    write_text(path, "".join(line + "\n" for line in keep))


def append_metrics(run_dir: str | Path, record: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors ("<param index>.<key>")."""
    out = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of `optimizer_tensors`: restore per-parameter state, keeping the optimizer's hyperparameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    sd = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


TRAINING_STATE = "training_state"
"""Subfolder of a checkpoint with the optimizer and RNG state (never read as weights)."""


def training_state_file(ckpt: str | Path, name: str) -> Path:
    """<ckpt>/training_state/<name>, or <ckpt>/<name> in checkpoints written before the subfolder existed;
    FileNotFoundError naming both places when neither holds it."""
    ckpt = Path(ckpt)
    for f in (ckpt / TRAINING_STATE / name, ckpt / name):
        if f.is_file():
            return f
    raise FileNotFoundError(f"no {name} in {ckpt / TRAINING_STATE} (nor in {ckpt}, where older checkpoints keep it)")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer,
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    extra_generators: dict[str, torch.Generator] | None = None,
) -> Path:
    """Write <run>/checkpoints/step_<step>/ atomically (`atomic_dir`: temporary directory, fsync, rename)."""
    final = checkpoint_dir(run_dir, step)
    from rlvr_nb.models import quiet_transformers

    with atomic_dir(final) as tmp:
        with quiet_transformers():  # no "Writing model shards" bar per checkpoint
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if optimizer is not None:
            (tmp / TRAINING_STATE).mkdir()
            save_file(optimizer_tensors(optimizer), str(tmp / TRAINING_STATE / "optimizer.safetensors"))
        if generator is not None:
            states = {"generator": generator.get_state(), **{k: g.get_state() for k, g in (extra_generators or {}).items()}}
            (tmp / TRAINING_STATE).mkdir(exist_ok=True)
            save_file(states, str(tmp / TRAINING_STATE / "rng.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **state}, indent=2, default=str))
    return final


def restore_training_state(path: Path, optimizer: torch.optim.Optimizer | None, generator: torch.Generator | None,
                           extra_generators: dict[str, torch.Generator] | None = None) -> dict:
    """Load optimizer and RNG state saved beside a checkpoint; returns its trainer_state.json."""
    if optimizer is not None:
        load_optimizer_tensors(optimizer, load_file(str(training_state_file(path, "optimizer.safetensors"))))
    if generator is not None:
        states = load_file(str(training_state_file(path, "rng.safetensors")))
        generator.set_state(states["generator"])
        for name, g in (extra_generators or {}).items():
            if name in states:  # absent in checkpoints written before that stream existed
                g.set_state(states[name])
    return json.loads((path / "trainer_state.json").read_text())


def load_weights_into(model: torch.nn.Module, path: Path) -> None:
    """Copy a checkpoint's safetensors weights into an existing model (strict)."""
    model.load_state_dict(read_tensors(path, floating_only=False), strict=True)
