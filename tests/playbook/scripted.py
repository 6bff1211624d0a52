"""Local servers for playbook tests: the OpenAI chat fake scripted reply by reply, and a plain
HTTP server that records what it gets (``<http>`` targets, posthooks)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.providers.fakes.openai import FakeOpenAi

KEY = "sk-test"


Piece = str | dict[str, Any]
"""A piece of a scripted reply: text (a ``content`` delta) or a raw ``delta`` object (such as
those of :func:`~tests.providers.fakes.openai.tool_call_deltas`)."""


class ScriptedOpenAi(FakeOpenAi):
    """:class:`FakeOpenAi` whose chat replies are streamed from a queue, one per request.

    A reply is a list of pieces, each sent as its own ``chat.completion.chunk`` (SSE event),
    after the ``role`` (merged into the first piece when that is a tool call, as the API does)
    and before the ``finish_reason`` chunk (``tool_calls`` when the reply has any, else
    ``stop``); when the queue is empty the reply is "OK."."""

    def __init__(self, *replies: list[Piece]) -> None:
        super().__init__(api_key=KEY)
        self.replies: list[list[Piece]] = list(replies)

    def chats(self) -> list[dict[str, Any]]:
        """The body of each chat request received, in order."""
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        scripted = bool(self.replies)
        pieces: list[Piece] = self.replies.pop(0) if scripted else ["OK."]
        deltas = [{"content": p} if isinstance(p, str) else dict(p) for p in pieces]
        calls = any("tool_calls" in d for d in deltas)
        role: dict[str, Any] = {"role": "assistant", "content": None if calls else ""}
        if deltas and "tool_calls" in deltas[0]:
            deltas[0] = {**role, **deltas[0]}
        else:
            deltas.insert(0, role)
        self.chat_deltas = [
            *((delta, None) for delta in deltas),
            ({}, "tool_calls" if calls else "stop"),
        ]
        response = await super()._chat(request)
        if response.status != 200 and scripted:
            self.replies.insert(0, pieces)  # refused: the reply stays for the next request
        return response


class Recorder:
    """A local HTTP server recording what it receives and answering JSON."""

    def __init__(self, answer: dict[str, Any], status: int = 200) -> None:
        self.answer = answer
        self.status = status
        self.received: list[tuple[str, str, dict[str, str], Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Recorder:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        text = await request.text()
        body = json.loads(text) if text else None
        self.received.append((request.method, request.path, dict(request.headers), body))
        return web.json_response(self.answer, status=self.status)
