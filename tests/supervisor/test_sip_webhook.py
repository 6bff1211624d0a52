"""The webhook invite handler against a real HTTP application (aiohttp on loopback)."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from activecall.config import WebhookHandler
from activecall.supervisor.webhook import Webhook, WebhookError, invite_payload

PAYLOAD = invite_payload(
    dialog_id="c1-a-b",
    created_at=datetime(2025, 1, 2, 3, 4, 5, 678000, UTC),
    caller="sip:alice@192.0.2.1",
    callee="sip:bob@192.0.2.9",
    headers=["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "X-Case: a1"],
    offer="v=0\r\n",
)


def test_payload_is_the_reference_shape() -> None:
    assert PAYLOAD == {
        "dialogId": "c1-a-b",
        "createdAt": "2025-01-02T03:04:05.678Z",
        "caller": "sip:alice@192.0.2.1",
        "callee": "sip:bob@192.0.2.9",
        "event": "invite",
        "headers": ["Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1", "X-Case: a1"],
        "offer": "v=0\r\n",
    }


class Recorder:
    """An application that records what it gets; ``status`` is what it answers."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.got: list[tuple[str, str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        body = await request.json()
        self.got.append((request.method, request.path, dict(request.headers), body))
        return web.json_response({}, status=self.status)


async def serve(recorder: Recorder) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{path}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, int(port)


def test_posts_round_robin_with_the_configured_method_and_headers() -> None:
    async def scenario() -> tuple[list[str], Recorder]:
        recorder = Recorder()
        runner, port = await serve(recorder)
        handler = WebhookHandler(
            urls=(f"http://127.0.0.1:{port}/one", f"http://127.0.0.1:{port}/two"),
            method="PUT",
            headers=(("X-Api-Key", "k1"),),
        )
        hook = Webhook(handler)
        try:
            sent_to = [await hook.notify(PAYLOAD) for _ in range(3)]
        finally:
            await hook.aclose()
            await runner.cleanup()
        return sent_to, recorder

    sent_to, recorder = asyncio.run(scenario())
    assert [url.rsplit("/", 1)[1] for url in sent_to] == ["one", "two", "one"]
    assert [path for _, path, _, _ in recorder.got] == ["/one", "/two", "/one"]
    for method, _, headers, body in recorder.got:
        assert method == "PUT" and headers["X-Api-Key"] == "k1"
        assert headers["Content-Type"] == "application/json" and body == PAYLOAD


@pytest.mark.parametrize("status", [404, 500, 302])
def test_a_non_2xx_answer_is_a_failure(status: int) -> None:
    async def scenario() -> str:
        runner, port = await serve(Recorder(status=status))
        hook = Webhook(WebhookHandler(url=f"http://127.0.0.1:{port}/invite"))
        try:
            with pytest.raises(WebhookError) as failed:
                await hook.notify(PAYLOAD)
        finally:
            await hook.aclose()
            await runner.cleanup()
        return str(failed.value)

    assert f"answered {status}" in asyncio.run(scenario())


def test_unreachable_and_slow_applications_are_failures() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens once the socket is closed

    async def scenario() -> tuple[str, str]:
        hook = Webhook(WebhookHandler(url=f"http://127.0.0.1:{closed_port}/invite"))
        with pytest.raises(WebhookError) as refused:
            await hook.notify(PAYLOAD)
        await hook.aclose()
        runner, port = await serve(Recorder(delay=1.0))
        slow = Webhook(WebhookHandler(url=f"http://127.0.0.1:{port}/invite"), timeout=0.2)
        try:
            with pytest.raises(WebhookError) as late:
                await slow.notify(PAYLOAD)
        finally:
            await slow.aclose()
            await runner.cleanup()
        return str(refused.value), str(late.value)

    refused, late = asyncio.run(scenario())
    assert "ConnectError" in refused and "Timeout" in late


def test_a_handler_without_urls_is_refused() -> None:
    with pytest.raises(ValueError, match="url"):
        Webhook(WebhookHandler())
