"""The patient kernel client of headless runs: a request the kernel only reads once another message arrives (the
ipykernel 7 stranding, ipython/ipykernel#1554) is answered, and the caller's timeout still holds."""

from __future__ import annotations

import asyncio
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
