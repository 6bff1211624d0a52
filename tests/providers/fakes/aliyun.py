"""A local DashScope inference WebSocket (aiohttp) that speaks the documented run-task protocol.

Only the wire format is the service's (Paraformer/CosyVoice WebSocket API documents, see
``activecall.providers.aliyun``): the handshake needs ``Authorization: Bearer <key>`` (else HTTP
401), instructions are ``{"header": {action, task_id, streaming}, "payload": ...}`` JSON, audio
travels in binary frames, and events are ``task-started`` / ``result-generated`` /
``task-finished`` / ``task-failed``. What it "recognises" and "says" is scripted:

* recognition reports each scripted :class:`Sentence` once the audio received passes its
  midpoint (an interim with the first half of the words) and its end (the final); sentences
  still unreported at finish-task come as finals then, as the real service flushes them;
* synthesis answers each continue-task with :func:`fake_speech` of its text, in two binary
  frames, each announced by a ``sentence-synthesis`` result.

Every connection is recorded (headers, instructions in order, audio and frame sizes), so
tests assert on what the client sent. Failure switches: a wrong key, ``fail_after_bytes``
(task-failed), ``drop_after_bytes`` / ``drop_after_frames`` (TCP reset mid-stream),
``silent`` (never answers) and ``silent_after_finish`` (answers nothing to finish-task).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["Connection", "FakeDashScope", "Sentence", "fake_speech"]


@dataclass(frozen=True)
class Sentence:
    """A sentence the fake recogniser reports, at ``[begin_ms, end_ms)`` of the audio."""

    text: str
    begin_ms: int
    end_ms: int


@dataclass
class Connection:
    """What one client connection sent (and was sent) over the socket."""

    headers: dict[str, str]
    path: str
    instructions: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    frame_sizes: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    audio_sent: bytearray = field(default_factory=bytearray)

    def actions(self) -> list[str]:
        """The ``header.action`` of each instruction, in order."""
        return [i["header"]["action"] for i in self.instructions]


def fake_speech(text: str, sample_rate: int) -> bytes:
    """Deterministic PCM16LE 'speech' for ``text``: 10 ms per character."""
    per_char = sample_rate // 100
    samples = [(ord(ch) * 37 + i) % 20000 - 10000 for ch in text for i in range(per_char)]
    return struct.pack(f"<{len(samples)}h", *samples)


class FakeDashScope:
    """The fake service on 127.0.0.1 with an ephemeral port; use ``async with``."""

    def __init__(self, *, api_key: str = "sk-test", sentences: tuple[Sentence, ...] = ()) -> None:
        self.api_key = api_key
        self.sentences = sentences
        self.connections: list[Connection] = []
        self.refused = 0  # handshakes refused for a bad key
        self.fail_after_bytes: int | None = None
        self.fail_code = "CLIENT_ERROR"
        self.fail_message = "request timeout after 23 seconds."
        self.fail_run_task: tuple[str, str] | None = None  # (error_code, error_message)
        self.drop_after_bytes: int | None = None
        self.drop_after_frames: int | None = None
        self.silent = False
        self.silent_after_finish = False
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._live: dict[int, web.Request] = {}  # requests whose socket is open

    async def __aenter__(self) -> FakeDashScope:
        app = web.Application()
        app.router.add_get("/api-ws/v1/inference", self._tracked(self._handle))
        # a test that failed mid-call leaves sockets open: do not wait on them
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"ws://{host}:{port}/api-ws/v1/inference"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        for request in self._live.values():
            if request.transport is not None:
                request.transport.abort()
        await self._runner.cleanup()

    def _tracked(self, handler: Handler) -> Handler:
        """``handler``, with its request kept in ``_live`` while it runs."""

        async def run(request: web.Request) -> web.StreamResponse:
            self._live[id(request)] = request
            try:
                return await handler(request)
            finally:
                del self._live[id(request)]

        return run

    # --- the service ---

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            self.refused += 1
            body = {"code": "InvalidApiKey", "message": "Invalid API-key provided."}
            return web.json_response(body, status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(dict(request.headers), request.path)
        self.connections.append(conn)
        session = _Session(self, conn, ws, request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                instruction = json.loads(message.data)
                conn.instructions.append(instruction)
                if not self.silent and not await session.instruction(instruction):
                    break
            elif message.type == WSMsgType.BINARY:
                conn.audio += message.data
                conn.frame_sizes.append(len(message.data))
                if not self.silent and not await session.audio():
                    break
        return ws


class _Session:
    """One connection's task state."""

    def __init__(
        self, fake: FakeDashScope, conn: Connection, ws: web.WebSocketResponse, request: web.Request
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        self.request = request
        self.task_id = ""
        self.task = ""
        self.sample_rate = 16000
        self.heartbeat = False
        self.reported: dict[int, str] = {}  # sentence number -> "interim" | "final"
        self.frames_sent = 0
        self.failed = False

    async def send(self, event: str, payload: dict[str, Any], **header: Any) -> None:
        message = {
            "header": {"task_id": self.task_id, "event": event, "attributes": {}, **header},
            "payload": payload,
        }
        self.conn.events.append(message)
        await self.ws.send_str(json.dumps(message, ensure_ascii=False))

    def drop(self) -> None:
        """A TCP reset: no close frame, no task-finished."""
        transport = self.request.transport
        assert transport is not None
        transport.abort()

    async def instruction(self, instruction: dict[str, Any]) -> bool:
        header, payload = instruction["header"], instruction["payload"]
        action = header["action"]
        if action == "run-task":
            self.task_id = header["task_id"]
            self.task = payload["task"]
            parameters = payload.get("parameters", {})
            self.sample_rate = parameters.get("sample_rate", 16000)
            self.heartbeat = parameters.get("heartbeat") is True
            if self.fake.fail_run_task is not None:
                code, text = self.fake.fail_run_task
                await self.send("task-failed", {}, error_code=code, error_message=text)
                return False
            await self.send("task-started", {})
        elif action == "continue-task":
            return await self.speak(payload["input"]["text"])
        elif action == "finish-task":
            if self.fake.silent_after_finish:
                return True
            if self.task == "asr":
                await self.recognise(finishing=True)
            await self.send("task-finished", {"output": {}, "usage": None})
        return True

    async def audio(self) -> bool:
        fake = self.fake
        if fake.drop_after_bytes is not None and len(self.conn.audio) >= fake.drop_after_bytes:
            self.drop()
            return False
        if fake.fail_after_bytes is not None and len(self.conn.audio) >= fake.fail_after_bytes:
            await self.send(
                "task-failed", {}, error_code=fake.fail_code, error_message=fake.fail_message
            )
            await self.ws.close()
            return False
        await self.recognise(finishing=False)
        return True

    async def recognise(self, *, finishing: bool) -> None:
        heard_ms = len(self.conn.audio) // 32  # 16 kHz PCM16
        for number, sentence in enumerate(self.fake.sentences):
            state = self.reported.get(number)
            if state == "final":
                continue
            if finishing or heard_ms >= sentence.end_ms:
                await self.result(sentence, sentence.text, final=True)
                self.reported[number] = "final"
            elif state is None and heard_ms >= (sentence.begin_ms + sentence.end_ms) // 2:
                words = sentence.text.split()
                await self.result(sentence, " ".join(words[: max(1, len(words) // 2)]), final=False)
                self.reported[number] = "interim"
        if self.heartbeat and not finishing:
            heartbeat = {"begin_time": heard_ms, "end_time": None, "text": "", "heartbeat": True}
            await self.send("result-generated", {"output": {"sentence": heartbeat}, "usage": None})

    async def result(self, sentence: Sentence, text: str, *, final: bool) -> None:
        output = {
            "sentence": {
                "begin_time": sentence.begin_ms,
                "end_time": sentence.end_ms if final else None,
                "text": text,
                "words": [],
                "heartbeat": False,
                "sentence_end": final,
            }
        }
        usage = {"duration": 1} if final else None
        await self.send("result-generated", {"output": output, "usage": usage})

    async def speak(self, text: str) -> bool:
        pcm = fake_speech(text, self.sample_rate)
        half = len(pcm) // 4 * 2  # two frames, each whole samples
        for frame in (pcm[:half], pcm[half:]):
            drop_after = self.fake.drop_after_frames
            if drop_after is not None and self.frames_sent >= drop_after:
                self.drop()
                return False
            await self.send("result-generated", {"output": {"type": "sentence-synthesis"}})
            await self.ws.send_bytes(frame)
            self.conn.audio_sent += frame
            self.frames_sent += 1
        return True
