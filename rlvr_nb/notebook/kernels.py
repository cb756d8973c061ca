"""A Jupyter kernel manager for headless runs whose requests cannot be stranded in the kernel.

ipykernel 7 reads shell requests through a ZMQStream on an edge-triggered socket; when a send on that socket
consumes the read wake-up, a request that arrived at that moment stays unread until some later message arrives
(ipython/ipykernel#1554; #1529 closed one such path in 7.4.0). The kernel then sits idle, the client waits for a
reply that never comes, and a headless run stops: seen here with ipykernel 7.4.0 in 2 of 5 runs of the slider
test beside the vLLM engine tests (py-spy: kernel idle in its event loop, nbclient in `execute()`).

`PatientKernelManager` hands out clients whose shell channel, after `NUDGE_S` seconds without a message, sends
a `kernel_info_request`: any new message wakes the kernel's socket, and a stranded request is read with it. A
nudge's reply carries its own parent id, which nbclient skips while it waits for the reply it asked for; the
caller's timeout still holds. The runner (`rlvr_nb.notebook.run`) and the kernel tests use it:

    papermill.execute_notebook(..., kernel_manager_class=PatientKernelManager)
    nbclient.NotebookClient(nb, kernel_manager_class=PatientKernelManager)

`RLVR_NB_KERNEL_TRANSPORT=ipc` starts its kernels on Unix sockets with names of their own instead of TCP ports:
two processes that start kernels at the same moment can otherwise hand both the same free port (each picks a
free port, closes it and lets the kernel bind it later: jupyter_client#487). The test suite sets it, so that
its two pytest-xdist workers can both start kernels.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from queue import Empty
from typing import Any

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import DottedObjectName, Type, default

TRANSPORT_ENV = "RLVR_NB_KERNEL_TRANSPORT"
"""`tcp` (jupyter's default) or `ipc`; see the module docstring."""

NUDGE_S = 10.0
"""Seconds without any shell message after which the client sends a kernel_info request."""


class PatientShellChannel(AsyncZMQSocketChannel):
    """A shell channel whose waits send a kernel_info request every `NUDGE_S` seconds of silence."""

    nudges = 0
    """kernel_info requests this channel has sent (a nudge a busy kernel answers late costs nothing)."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = NUDGE_S if deadline is None else min(NUDGE_S, max(deadline - time.monotonic(), 0.0))
            try:
                return await super().get_msg(timeout=wait)
            except Empty:
                if wait < NUDGE_S:  # the caller's deadline came before a whole silence: no nudge, no spinning
                    raise
                self.send(self.session.msg("kernel_info_request"))
                self.nudges += 1


class PatientKernelClient(AsyncKernelClient):
    """An asynchronous kernel client with a `PatientShellChannel`."""

    shell_channel_class = Type(PatientShellChannel)  # type: ignore[assignment]


class PatientKernelManager(AsyncKernelManager):
    """An asynchronous kernel manager whose clients are `PatientKernelClient`s."""

    client_class = DottedObjectName("rlvr_nb.notebook.kernels.PatientKernelClient")
    client_factory = Type(PatientKernelClient)  # what `client()` builds (AsyncKernelManager fixes its own)

    @default("transport")
    def _transport_default(self) -> str:
        return os.environ.get(TRANSPORT_ENV, "tcp")

    @default("ip")
    def _ip_default(self) -> str:
        """For ipc: sockets <runtime dir>/kernel-<random>-ipc-<n>, unique per kernel (jupyter's own default without
        a connection file, `kernel-ipc` in the working directory, is shared by every kernel started there), in the
        temporary directory where that path would pass the length limit of a Unix socket's name."""
        if self.transport != "ipc":
            return super()._ip_default()
        stem = (os.path.splitext(self.connection_file)[0] if self.connection_file
                else os.path.join(jupyter_runtime_dir(), f"kernel-{uuid.uuid4().hex[:12]}"))
        if len(stem) + len("-ipc-99") > getattr(zmq, "IPC_PATH_MAX_LEN", 103):
            stem = os.path.join(tempfile.gettempdir(), f"kernel-{uuid.uuid4().hex[:12]}")
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        return stem + "-ipc"
