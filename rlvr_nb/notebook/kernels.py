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
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Type

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
