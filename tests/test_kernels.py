"""The patient kernel client of headless runs: a request the kernel only reads once another message arrives (the
ipykernel 7 stranding, ipython/ipykernel#1554) is answered, and the caller's timeout still holds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from queue import Empty

import pytest
import zmq
import zmq.asyncio
from jupyter_client.channels import AsyncZMQSocketChannel
from jupyter_client.session import Session

from rlvr_nb.notebook import kernels


async def _fake_kernel(router: zmq.asyncio.Socket, session: Session) -> list[str]:
    """A shell socket that only notices a request once a second message arrives, then answers the first."""
    idents, first = session.feed_identities(await router.recv_multipart())
    request = session.deserialize(first)
    _, second = session.feed_identities(await router.recv_multipart())
    session.send(router, "execute_reply", {"status": "ok"}, parent=request, ident=idents)
    return [request["msg_type"], session.deserialize(second)["msg_type"]]


async def _ask(channel_class: type, timeout: float) -> tuple[dict | None, list[str] | None, int]:
    ctx, session = zmq.asyncio.Context(), Session(key=b"test")
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    channel = channel_class(dealer, session)
    kernel = asyncio.ensure_future(_fake_kernel(router, session))
    request = session.msg("execute_request", {"code": "1"})
    channel.send(request)
    try:
        reply = await channel.get_msg(timeout=timeout)
    except Empty:
        reply = None
    seen = await asyncio.wait_for(kernel, 1.0) if kernel.done() or reply else None
    kernel.cancel()
    router.close(0), dealer.close(0), ctx.term()
    assert reply is None or reply["parent_header"]["msg_id"] == request["header"]["msg_id"]
    return reply, seen, getattr(channel, "nudges", 0)


def test_a_stranded_request_is_answered_after_a_nudge(monkeypatch):
    monkeypatch.setattr(kernels, "NUDGE_S", 0.2)
    reply, seen, nudges = asyncio.run(_ask(kernels.PatientShellChannel, timeout=5.0))
    assert reply is not None and reply["msg_type"] == "execute_reply"
    assert seen == ["execute_request", "kernel_info_request"] and nudges == 1


def test_without_the_nudge_the_same_request_is_never_answered():
    reply, _, _ = asyncio.run(_ask(AsyncZMQSocketChannel, timeout=1.0))
    assert reply is None


def test_the_callers_timeout_still_holds(monkeypatch):
    monkeypatch.setattr(kernels, "NUDGE_S", 0.2)

    async def silent() -> float:
        ctx, session = zmq.asyncio.Context(), Session(key=b"test")
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}")
        channel = kernels.PatientShellChannel(dealer, session)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(Empty):
            await channel.get_msg(timeout=0.9)
        waited = asyncio.get_running_loop().time() - t0
        assert 3 <= channel.nudges <= 5  # about every 0.2 s until the deadline
        router.close(0), dealer.close(0), ctx.term()
        return waited

    assert 0.85 <= asyncio.run(silent()) < 3.0


def test_the_runner_and_its_kernels_use_it():
    km = kernels.PatientKernelManager(kernel_name="python3")
    assert km.client_class == "rlvr_nb.notebook.kernels.PatientKernelClient"
    assert km.client().shell_channel_class is kernels.PatientShellChannel


def test_ipc_kernels_get_socket_names_of_their_own(monkeypatch, tmp_path):
    """RLVR_NB_KERNEL_TRANSPORT=ipc: two kernels started from one directory get distinct socket paths (jupyter's own
    default there is `kernel-ipc` for both), and a kernel started that way answers; a runtime directory whose path
    is too long for a socket's name falls back to the temporary directory."""
    from jupyter_client.blocking import BlockingKernelClient

    monkeypatch.setenv(kernels.TRANSPORT_ENV, "ipc")
    runtime = Path(tempfile.mkdtemp(prefix="rt-"))  # short: a socket's name has at most ~107 characters
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.chdir(tmp_path)
    a, b = kernels.PatientKernelManager(kernel_name="python3"), kernels.PatientKernelManager(kernel_name="python3")
    assert a.transport == b.transport == "ipc" and a.ip != b.ip and a.ip.startswith(str(runtime))

    async def start_and_ask():
        await a.start_kernel()
        try:
            client = a.client()
            client.start_channels()
            try:  # the reply on the shell channel (iopub output could be missed by a late subscription under load)
                await client.wait_for_ready(timeout=120)
                msg_id = client.execute("x = 6 * 7")
                reply = await client.get_shell_msg(timeout=120)
                assert reply["parent_header"]["msg_id"] == msg_id and reply["content"]["status"] == "ok"
            finally:
                client.stop_channels()
            return sorted(p.name for p in runtime.iterdir() if "-ipc-" in p.name)
        finally:
            await a.shutdown_kernel(now=True)

    sockets = asyncio.run(start_and_ask())
    assert sockets and all(name.startswith(os.path.basename(a.ip)) for name in sockets)
    assert not [p for p in runtime.iterdir() if "-ipc-" in p.name]  # removed with the kernel
    runtime.rmdir()
    monkeypatch.delenv(kernels.TRANSPORT_ENV)
    assert kernels.PatientKernelManager(kernel_name="python3").transport == "tcp"
    monkeypatch.setenv(kernels.TRANSPORT_ENV, "ipc")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / ("x" * 120)))
    assert kernels.PatientKernelManager(kernel_name="python3").ip.startswith(tempfile.gettempdir() + os.sep + "kernel-")
