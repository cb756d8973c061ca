"""What the real-browser test (tests/test_browser.py) drives: Debian's Chromium, a JupyterLab server on
127.0.0.1 over a temporary root, and the notebooks copied into it at `smoke` with `interactive = True`.

Nothing here downloads a browser: playwright drives the system `chromium` through `executable_path`.
Every process started here is stopped by the context manager that started it, whatever happens inside.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import jupytext
import nbformat

from rlvr_nb.notebook.kernels import TRANSPORT_ENV

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
KERNEL = "rlvr-nb"  # the kernel `make setup` registers (Makefile, KERNEL)
SKIP_ENV = "RLVR_NB_NO_BROWSER"
WIDGET_ERRORS = ("Exception opening new comm", "model not found", "Error displaying widget")


class BrowserSetupError(RuntimeError):
    """The browser test cannot run here; the message says what is missing and how to get it."""


def ensure_chromium() -> str:
    """The path of Debian's `chromium`, installed with apt-get (as root) when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise BrowserSetupError(f"Chromium is not installed and this user cannot install it: run "
                                f"`sudo apt-get install -y chromium`, or set {SKIP_ENV}=1 to skip the browser test")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BrowserSetupError(f"`{' '.join(cmd)}` did not finish ({e}); install Debian's `chromium` package, "
                                    f"or set {SKIP_ENV}=1 to skip the browser test") from e
        log.append((done.stdout + done.stderr)[-1500:])
    found = shutil.which("chromium")
    if not found:
        raise BrowserSetupError(f"`apt-get install -y chromium` did not install Chromium:\n{log[-1]}\n"
                                f"install Debian's `chromium` package, or set {SKIP_ENV}=1 to skip the browser test")
    return found


def check_kernel() -> str:
    """The `rlvr-nb` kernelspec's python, which must be this checkout's .venv (what `make setup` registers)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel as e:
        raise BrowserSetupError(f"the Jupyter kernel `{KERNEL}` is not registered: run `make setup`") from e
    python = Path(spec.argv[0])
    if python.parent != Path(sys.executable).parent:
        raise BrowserSetupError(f"the Jupyter kernel `{KERNEL}` runs {python}, not this checkout's {sys.executable}: "
                                f"run `make setup`, which registers it again")
    return str(python)


def lab_notebook(name: str, root: Path) -> Path:
    """notebooks/<name>.py (the source of truth of the .ipynb pair) written as <root>/<name>.ipynb, its
    parameters cell set to profile = "smoke" and interactive = True."""
    nb = jupytext.read(NOTEBOOKS / f"{name}.py")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    for knob, value in (("profile", '"smoke"'), ("interactive", "True")):
        cell.source, n = re.subn(rf"^{knob} = .*$", f"{knob} = {value}", cell.source, count=1, flags=re.M)
        if n != 1:
            raise ValueError(f"{name}: the parameters cell has no `{knob} = ...` line")
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL:
        raise ValueError(f"{name}: the notebook's kernel is not `{KERNEL}`")
    path = root / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab server."""

    url: str
    token: str
    root: Path
    log: Path

    def open_url(self, path: str) -> str:
        """The page that opens `path` alone (`reset`: not the tabs that an earlier page left in the workspace)."""
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@contextmanager
def jupyterlab(base: Path, widget_front_end: bool = True, timeout: float = 90.0,
               runs: Path | None = None) -> Iterator[Lab]:
    """JupyterLab from this .venv on 127.0.0.1 (free port, random token) over base/root, with its settings,
    workspaces, runtime files and config in `base` (nothing of the user's own JupyterLab set-up is read or
    changed); its kernels cache trained runs in `runs` (default base/runs: never the checkout's runs/). widget_front_end=False disables the widget extension, as in a JupyterLab installed without
    `jupyterlab_widgets`. The server, and with it its kernels, is shut down on exit whatever happened."""
    import jupyterlab  # noqa: F401  (a clear error before a server that cannot start)

    root, config, log = base / "root", base / "config", base / "server.log"
    root.mkdir(parents=True, exist_ok=True)
    settings = base / "settings"
    write_json(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings",
               {"checkForUpdates": False, "fetchNews": "false"})  # no news pop-up over the notebook
    if not widget_front_end:
        write_json(config / "labconfig" / "page_config.json",
                   {"disabledExtensions": {"@jupyter-widgets/jupyterlab-manager": True}})
    port, token = free_port(), secrets.token_hex(16)
    ipc = os.environ.get(TRANSPORT_ENV) == "ipc"  # the suite's kernels on Unix sockets (rlvr_nb.notebook.kernels)
    # the server names its kernels' sockets after their connection files: a short runtime directory keeps those
    # names under a Unix socket's ~107 characters
    runtime = Path(tempfile.mkdtemp(prefix="rlvr-nb-lab-")) if ipc else base / "runtime"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(config),
           "RLVR_NB_OUT": str(base / "out"),  # the notebooks' figures, not papermill_runs/interactive
           "RLVR_NB_RUNS": str(runs or base / "runs")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.allow_root=True", "--LabApp.expose_app_in_browser=True", "--ServerApp.terminals_enabled=False"]
    if ipc:
        cmd.append("--KernelManager.transport=ipc")
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(url, token, root, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BrowserSetupError(f"JupyterLab exited with status {proc.returncode}:\n{lab.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise BrowserSetupError(f"JupyterLab did not answer on {url} within {timeout:g} s:\n{lab.log_tail()}")
            time.sleep(0.25)
        yield lab
    finally:
        stop_server(proc, url, token)
        if ipc:
            shutil.rmtree(runtime, ignore_errors=True)


def stop_server(proc: subprocess.Popen, url: str, token: str) -> None:
    """Shut the server down through its API (which shuts its kernels down), then by signal if it lingers."""
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass
    for sig, wait in ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if sig is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
