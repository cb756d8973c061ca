"""Execute the notebooks headlessly with papermill: `python -m rlvr_nb.notebook.run --profile cpu`.

    python -m rlvr_nb.notebook.run --profile {smoke,cpu,gpu} [--only NAME ...] [-p KEY VALUE ...]

The request is checked before any notebook starts: an unknown profile, notebook or parameter, or a
`-p` value of the wrong type (checked against the profile's value, else the notebook's parameters cell)
is one error, exit status 2, and nothing is executed or written.

Each notebook's `.py` (the source of truth) is read with jupytext and executed into a staging directory
beside the outputs, `papermill_runs/<profile>/.staging-<name>-<pid>/`; the notebook's figures go there
too (`RLVR_NB_OUT` points at it, see `rlvr_nb.figures.figure_dir`). Only when the notebook completes are
`<name>.ipynb`, every file it wrote (its figures, its `findings/<name>.json`) and its `manifest.json` entry
renamed into `papermill_runs/<profile>/`; the manifest is written to a temporary file and replaced atomically.
An entry records the git commit the notebook started at, the parameter values it resolved (`resolved_parameters`),
its seed, its wall time and the runs it trained rather than read from the cache (`trained`, from the
`rlvr_nb.embedded.TRAINED_LOG` the package appends to in the staging directory); the manifest's header holds
the profile, the package versions and the machine. `00_overview` runs last, since it reads the others' outputs.
A notebook that fails or is interrupted leaves the committed outputs as they were: its partial notebook, figures,
findings and a record of the failure move to `papermill_runs/<profile>/partial/`, and one line says where.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import fields
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from rlvr_nb.embedded import TRAINED_LOG, repo_root
from rlvr_nb.grpo import RLConfig
from rlvr_nb.notebook.profiles import NOTEBOOKS, PARAMS, PROFILES, RL_RUNS
from rlvr_nb.notebook.report import git_commit

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "matplotlib", "papermill", "jupytext",
            "nbclient", "ipykernel", "math-verify", "rlvr-nb")
STAGING_PREFIX = ".staging-"
PARTIAL_DIR = "partial"
RL_FIELDS = frozenset(f.name for f in fields(RLConfig))
OVERVIEW = "00_overview"
"""Reads the other notebooks' manifest entries and findings, so a run executes it last."""


class UsageError(SystemExit):
    """A bad request (profile, notebook or parameter): one message, exit status 2, nothing run or written."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def notebook_path(name: str) -> Path:
    return repo_root() / "notebooks" / f"{name}.py"


def parameters_cell(nb) -> dict:
    """The literal values of the notebook's one cell tagged `parameters`."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected exactly one cell tagged 'parameters', found {len(cells)}")
    values = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def parse_value(text: str):
    """`-p KEY VALUE`: a Python literal when it parses as one (1e-4, True, None, [1, 2]), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


# ----------------------------------------------------------------------------------------------------
# Parameter types


def reference_value(name: str, key: str, profile: str, defaults: dict) -> tuple[Any, str]:
    """The value a `-p key` override of notebook `name` must match in type, and where it comes from.

    In order: the profile's table value, the profile's RL run (01's RL knobs), the parameters cell's
    default, another profile's table value. (None, "") when every one of them is None."""
    table = PARAMS.get(name, {})
    candidates = [(table.get(profile, {}).get(key), f"{name} at profile {profile}")]
    if key in RL_FIELDS and not any(key in t for t in table.values()):
        candidates.append((getattr(RL_RUNS[profile], key), f"the {profile} profile's RL run"))
    candidates.append((defaults.get(key), f"{name}'s parameters cell"))
    candidates += [(table[p].get(key), f"{name} at profile {p}") for p in PROFILES if p != profile and p in table]
    return next(((v, src) for v, src in candidates if v is not None), (None, ""))


def describe(ref: Any) -> str:
    """The type of a reference value in words: 'float', 'list of tuple of int', 'dict'."""
    if isinstance(ref, (list, tuple)):
        inner = {describe(x) for x in ref}
        return type(ref).__name__ + (f" of {inner.pop()}" if len(inner) == 1 else "")
    return type(ref).__name__


class Mismatch(TypeError):
    """A value whose type differs from the reference's."""


def conform(value: Any, ref: Any) -> Any:
    """`value` checked against the type of `ref` (ints become floats where a float is expected; lists
    and tuples are interchangeable, each item checked against the reference's items when those share one
    type); raises Mismatch. A reference of another type (None included) accepts anything."""
    if isinstance(ref, bool):
        ok = isinstance(value, bool)
    elif isinstance(ref, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(ref, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        ok = False
    elif isinstance(ref, str):
        ok = isinstance(value, str)
    elif isinstance(ref, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise Mismatch
        if ref and len({describe(x) for x in ref}) == 1:
            return type(ref)(conform(v, ref[0]) for v in value)
        return type(ref)(value)
    elif isinstance(ref, dict):
        ok = isinstance(value, dict)
    else:
        return value
    if not ok:
        raise Mismatch
    return value


def check_parameter(name: str, key: str, text: str, profile: str, defaults: dict) -> tuple[Any, str | None]:
    """(the value to inject, None) or (None, the error message) for `-p key text` on notebook `name`."""
    value = parse_value(text)
    ref, source = reference_value(name, key, profile, defaults)
    if value is None and defaults.get(key) is None:
        return None, None  # None means "the profile's value"
    if ref is None:
        return value, None  # no typed value anywhere to check against
    try:
        return conform(value, ref), None
    except Mismatch:
        hint = f"; to pass a string, quote it: -p {key} \"'{text}'\"" if isinstance(ref, str) else ""
        kind = describe(ref)
        kind = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        return None, (f"parameter {key!r} expects {kind} (like {ref!r}, from {source}); "
                      f"got {text!r} (read as {'None' if value is None else type(value).__name__}){hint}")


def select(only: list[str] | None) -> list[str]:
    """The notebooks named by `--only` (a name or a prefix each), in order, `OVERVIEW` last; all of them without it."""
    names = [n for n in NOTEBOOKS if n != OVERVIEW] + [n for n in NOTEBOOKS if n == OVERVIEW]
    if only is None:
        return names
    valid = ", ".join(NOTEBOOKS)
    empty = [n for n in only if not n.strip()]
    if empty or not only:
        raise UsageError(f"error: --only {' '.join(repr(n) for n in only) or '(nothing)'} names no notebook; "
                         f"give a name or a prefix such as 01; valid: {valid}")
    bad = [n for n in only if not any(x.startswith(n) for x in names)]
    if bad:
        raise UsageError(f"error: unknown notebook(s) {', '.join(bad)}; valid: {valid}")
    return [x for x in names if any(x.startswith(n) for n in only)]


def plan(profile: str, only: list[str] | None, params: list[tuple[str, str]]) -> list[tuple[str, object, dict]]:
    """Validate the whole request; returns (name, notebook, parameters to inject) per notebook to run."""
    import jupytext

    if profile not in PROFILES:
        raise UsageError(f"error: unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    names = select(only)
    missing = [n for n in names if not notebook_path(n).exists()]
    if missing:
        raise UsageError(f"error: notebook source(s) missing: {', '.join(str(notebook_path(n)) for n in missing)}")
    loaded = [(n, jupytext.read(notebook_path(n))) for n in names]
    known = {n: parameters_cell(nb) for n, nb in loaded}
    every = sorted(set().union(*known.values()) - {"profile"})
    problems: dict[str, str] = {}  # the first problem of each parameter
    for key, _ in params:
        if key == "profile":
            raise UsageError("error: set the profile with --profile, not -p profile")
        if key not in every:
            raise UsageError(f"error: unknown parameter {key!r}; valid parameters: {', '.join(every) or '(none)'} "
                             f"(of {', '.join(names)})")
    out = []
    for n, nb in loaded:
        inject: dict[str, Any] = {"profile": profile}
        for key, text in params:
            if key in known[n]:
                inject[key], problem = check_parameter(n, key, text, profile, known[n])
                if problem:
                    problems.setdefault(key, problem)
        out.append((n, nb, inject))
    if problems:
        raise UsageError("error: " + "; ".join(problems.values()))
    return out


# ----------------------------------------------------------------------------------------------------
# Staging and committing


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_staging(out_dir: Path) -> None:
    """Remove `.staging-<name>-<pid>` directories left by runners that no longer exist (killed hard)."""
    for d in out_dir.glob(f"{STAGING_PREFIX}*-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if d.is_dir() and not d.is_symlink() and pid.isascii() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def move_tree(src: Path, dst: Path, last: str | None = None) -> list[str]:
    """Rename every file under `src` to the same relative path under `dst` (replacing what is there),
    the file `last` (relative) after all the others; returns the relative paths moved, sorted."""
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file() or p.is_symlink())
    order = [r for r in rels if r != last] + ([last] if last in rels else [])
    for rel in order:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src / rel, target)
    return rels


def remove_empty_dirs(root: Path) -> None:
    """Remove `root` and the directories under it, deepest first, where they are empty (no file is removed)."""
    for d in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` to a temporary file beside `path`, fsync it and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def record_entry(path: Path, name: str, entry: dict, header: dict) -> None:
    """Set the manifest's entry for `name` (re-read first: another runner may have recorded others)."""
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.pop("git_commit", None)  # written by older runners for the whole run; each entry now has its own
    manifest = {**manifest, **header, "notebooks": {**manifest.get("notebooks", {}), name: entry}}
    write_json_atomic(path, manifest)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C while the outputs are renamed into place; raise it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught:
            raise KeyboardInterrupt


@contextmanager
def figures_into(directory: Path) -> Iterator[None]:
    """Point RLVR_NB_OUT (read by `rlvr_nb.figures.figure_dir` and the kernel papermill starts) at `directory`."""
    previous = os.environ.get("RLVR_NB_OUT")
    os.environ["RLVR_NB_OUT"] = str(directory.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RLVR_NB_OUT", None)
        else:
            os.environ["RLVR_NB_OUT"] = previous


def describe_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}".rstrip(": ")


def resolved_parameters(name: str, profile: str, given: dict) -> dict:
    """The values a notebook's knobs resolve to, as `profiles.resolve` fills them in (a non-None given value, else
    the profile's table value, every table key included) and, for an RLConfig field the table does not name (01's
    RL knobs), as `profiles.rl_config` does: the profile's RL run's value."""
    table = PARAMS.get(name, {})
    values = {**table.get(profile, {}), **{k: v for k, v in given.items() if v is not None}}
    for key in given:
        if values.get(key) is None and key in RL_FIELDS and not any(key in t for t in table.values()):
            values[key] = getattr(RL_RUNS[profile], key)
        values.setdefault(key, None)
    return values


def resolved_seed(name: str, profile: str, values: dict):
    """The notebook's seed: its `seed` or `seeds` knob (an empty list of seeds: none given), else its RL run's (the
    profile's, with `rl_recipe`); None for a notebook without knobs (it trains and reads no run)."""
    for key in ("seed", "seeds"):
        if values.get(key) not in (None, [], ()):
            return values[key]
    if not PARAMS.get(name, {}).get(profile):
        return None
    return (values.get("rl_recipe") or {}).get("seed", RL_RUNS[profile].seed)


def read_trained(staging: Path) -> list[dict]:
    """The runs the notebook trained (one JSON line each in its staging directory's TRAINED_LOG, which is then
    removed); a line cut short by a killed kernel is kept as {"unreadable": text}."""
    log = staging / TRAINED_LOG
    if not log.is_file():
        return []
    out = []
    for line in filter(str.strip, log.read_text().splitlines()):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"unreadable": line})
    log.unlink()
    return out


def manifest_entry(name: str, nb, inject: dict, error: str | None, interrupted: bool, wall: float,
                   commit_sha: str | None, trained: list[dict]) -> dict:
    """The manifest record of one notebook's execution."""
    values = resolved_parameters(name, inject["profile"], {**parameters_cell(nb), **inject})
    return {"status": "ok" if error is None else ("interrupted" if interrupted else "failed"), "error": error,
            "wall_seconds": round(wall, 1), "parameters": values,
            "overrides": {k: v for k, v in inject.items() if k != "profile"},
            "seed": resolved_seed(name, inject["profile"], values), "trained": trained,
            "output": f"{name}.ipynb", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_commit": commit_sha}


def commit(staging: Path, out_dir: Path, name: str, entry: dict, header: dict) -> None:
    """A completed notebook: its files (figures and findings first, the notebook last) and then its manifest
    entry replace the committed ones."""
    files = move_tree(staging, out_dir, last=f"{name}.ipynb")
    entry["files"] = [f for f in files if f != f"{name}.ipynb"]
    record_entry(out_dir / "manifest.json", name, entry, header)
    print(f"[{header['profile']}] {name}: ok in {entry['wall_seconds']:.0f} s", flush=True)


def keep_partial(staging: Path, out_dir: Path, name: str, entry: dict, header: dict) -> None:
    """A failed or interrupted notebook: its files and a record go to <out_dir>/partial/; the committed
    outputs are not touched. Prints one line saying where the partial notebook is."""
    partial = out_dir / PARTIAL_DIR
    partial.mkdir(exist_ok=True)
    files = move_tree(staging, partial, last=f"{name}.ipynb")
    entry.update(output=f"{PARTIAL_DIR}/{name}.ipynb", files=[f for f in files if f != f"{name}.ipynb"])
    record_entry(partial / "manifest.json", name, entry, header)
    where = (f"partial notebook: {partial / (name + '.ipynb')}" if f"{name}.ipynb" in files
             else "no partial notebook was written")
    print(f"[{header['profile']}] {name}: {entry['status']} after {entry['wall_seconds']:.0f} s ({entry['error']}); "
          f"{where}; committed outputs in {out_dir} unchanged", file=sys.stderr, flush=True)


def run(profile: str, only: list[str] | None = None, params: list[tuple[str, str]] = (), out_dir: Path | None = None,
        kernel_name: str = "python3", timeout_s: int = 3600) -> int:
    """Execute the planned notebooks; returns the number that failed. A KeyboardInterrupt stops the run
    (after the interrupted notebook's partial output is kept) and is raised again."""
    import papermill as pm

    from rlvr_nb.notebook.kernels import PatientKernelManager

    todo = plan(profile, only, list(params))
    out_dir = Path(out_dir or repo_root() / "papermill_runs" / profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    header = {"profile": profile, "versions": versions(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    failed = []
    for name, nb, inject in todo:
        print(f"[{profile}] {name} ...", flush=True)
        staging = out_dir / f"{STAGING_PREFIX}{name}-{os.getpid()}"
        if staging.is_dir() and not staging.is_symlink():  # left by a dead runner whose pid this process reuses
            shutil.rmtree(staging)
        staging.mkdir()
        commit_sha = git_commit()  # this notebook's: a long run may span commits
        t0, error, interrupted = time.time(), None, None
        try:
            with figures_into(staging):
                pm.execute_notebook(nb, str(staging / f"{name}.ipynb"), parameters=inject, kernel_name=kernel_name,
                                    cwd=str(repo_root() / "notebooks"), execution_timeout=timeout_s,
                                    progress_bar=False, log_output=False, kernel_manager_class=PatientKernelManager)
        except KeyboardInterrupt as exc:
            error, interrupted = "KeyboardInterrupt: interrupted", exc
        except Exception as exc:  # papermill saved the notebook up to the failing cell
            error = describe_error(exc)
        with sigint_deferred():
            entry = manifest_entry(name, nb, inject, error, interrupted is not None, time.time() - t0, commit_sha,
                                   read_trained(staging))
            try:
                if error is None:
                    commit(staging, out_dir, name, entry, header)
                else:
                    failed.append(name)
                    keep_partial(staging, out_dir, name, entry, header)
            except OSError as exc:
                raise OSError(f"{name}: could not move its outputs out of {staging} ({exc}); "
                              "they are still there") from exc
            remove_empty_dirs(staging)
        if interrupted is not None:
            raise interrupted
    if failed:
        print(f"FAILED: {', '.join(failed)} (partial outputs in {out_dir / PARTIAL_DIR})", file=sys.stderr)
    return len(failed)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rlvr_nb.notebook.run", description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)}")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these notebooks (name or prefix, e.g. 01)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help="override a parameter")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default papermill_runs/<profile>)")
    ap.add_argument("--kernel", default="python3", help="Jupyter kernel (default: this interpreter's own)")
    ap.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    args = ap.parse_args(argv)
    try:
        return 1 if run(args.profile, args.only, [tuple(p) for p in args.p], args.out, args.kernel, args.timeout) else 0
    except UsageError as exc:
        print(exc.message, file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
