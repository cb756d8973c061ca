"""Execute the notebooks headlessly with papermill: `python -m rlvr_nb.notebook.run --profile cpu`.

    python -m rlvr_nb.notebook.run --profile {smoke,cpu,gpu} [--only NAME ...] [-p KEY VALUE ...]

Each notebook's `.py` (the source of truth) is read with jupytext and executed in order into
`papermill_runs/<profile>/<name>.ipynb`; figures land in `papermill_runs/<profile>/figures/` and a
`manifest.json` records the git commit, package versions, profile, parameters, seed, wall time and
status of every notebook (rewritten after each one, so an interrupted run loses nothing). A failing
notebook keeps its partial output; the runner names it and exits non-zero.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from rlvr_nb.embedded import repo_root
from rlvr_nb.notebook.profiles import NOTEBOOKS, PROFILES

PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "matplotlib", "papermill", "jupytext",
            "nbclient", "ipykernel", "math-verify", "rlvr-nb")


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
    except (ValueError, SyntaxError):
        return text


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def plan(profile: str, only: list[str] | None, params: list[tuple[str, str]]) -> list[tuple[str, object, dict]]:
    """Validate the request; returns (name, notebook, parameters to inject) per notebook to run."""
    import jupytext

    if profile not in PROFILES:
        raise SystemExit(f"error: unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    names = list(NOTEBOOKS)
    if only:
        bad = [n for n in only if n not in names and not any(x.startswith(n) for x in names)]
        if bad:
            raise SystemExit(f"error: unknown notebook(s) {', '.join(bad)}; valid: {', '.join(names)}")
        names = [x for x in names if any(x == n or x.startswith(n) for n in only)]
    loaded = [(n, jupytext.read(notebook_path(n))) for n in names if notebook_path(n).exists()]
    known = {n: parameters_cell(nb) for n, nb in loaded}
    every = sorted(set().union(*known.values())) if known else []
    for key, _ in params:
        if key == "profile":
            raise SystemExit("error: set the profile with --profile, not -p profile")
        if key not in every:
            raise SystemExit(f"error: unknown parameter {key!r}; valid parameters: {', '.join(k for k in every if k != 'profile')}")
    out = []
    for n, nb in loaded:
        inject = {"profile": profile, **{k: parse_value(v) for k, v in params if k in known[n]}}
        out.append((n, nb, inject))
    return out


def run(profile: str, only: list[str] | None = None, params: list[tuple[str, str]] = (), out_dir: Path | None = None,
        kernel_name: str = "python3", timeout_s: int = 3600) -> int:
    """Execute the planned notebooks; returns the number that failed."""
    import papermill as pm

    todo = plan(profile, only, list(params))
    out_dir = Path(out_dir or repo_root() / "papermill_runs" / profile)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"notebooks": {}}
    manifest.update({"profile": profile, "git_commit": git_commit(), "versions": versions(),
                     "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}})
    os.environ["RLVR_NB_OUT"] = str(out_dir.resolve())
    failed = []
    for name, nb, inject in todo:
        print(f"[{profile}] {name} ...", flush=True)
        t0 = time.time()
        status, error = "ok", None
        try:
            pm.execute_notebook(nb, str(out_dir / f"{name}.ipynb"), parameters=inject, kernel_name=kernel_name,
                                cwd=str(repo_root() / "notebooks"), execution_timeout=timeout_s, progress_bar=False,
                                log_output=False)
        except Exception as exc:  # papermill saved the notebook up to the failing cell
            status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            failed.append(name)
        wall = time.time() - t0
        defaults = parameters_cell(nb)
        # re-read before writing: another runner may have recorded other notebooks meanwhile
        on_disk = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"notebooks": {}}
        manifest["notebooks"] = {**on_disk.get("notebooks", {}), **{name: {
            "status": status, "error": error, "wall_seconds": round(wall, 1), "parameters": {**defaults, **inject},
            "seed": {**defaults, **inject}.get("seed"), "output": f"{name}.ipynb",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}}}
        manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
        print(f"[{profile}] {name}: {status} in {wall:.0f} s" + (f" ({error})" if error else ""), flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)} (partial outputs in {out_dir})", file=sys.stderr)
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
    return 1 if run(args.profile, args.only, [tuple(p) for p in args.p], args.out, args.kernel, args.timeout) else 0


if __name__ == "__main__":
    sys.exit(main())
