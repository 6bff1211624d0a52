"""A local OpenAI API (aiohttp) speaking the documented wire formats of three endpoints.

* ``POST /v1/chat/completions`` with ``stream: true``: ``text/event-stream`` of
  ``chat.completion.chunk`` objects (``data: {...}`` events) ending with ``data: [DONE]``; the
  deltas it streams are scripted (:attr:`FakeOpenAi.chat_deltas`; :func:`tool_call_deltas`
  makes the pieces of streamed tool calls). Requests are checked as the API checks them: a
  ``tools`` entry must be a ``function`` with a valid name, and every ``tool_calls`` entry of
  an assistant message must be answered by the ``role: "tool"`` messages right after it (and
  those only there), else 400 with the API's message.
* ``POST /v1/audio/speech`` with ``response_format: "pcm"``: raw 24 kHz PCM16LE, streamed in
  :attr:`FakeOpenAi.chunk_size` pieces; the "speech" is :func:`fake_speech` of the input.
* ``GET /v1/realtime?intent=transcription`` (WebSocket, GA protocol): ``session.created``,
  ``session.update``/``session.updated`` for a ``transcription`` session, audio through
  ``input_audio_buffer.append`` (base64 PCM16 at 24 kHz), ``input_audio_buffer.commit`` →
  ``input_audio_buffer.committed`` and the item's transcription ``delta`` events (one per word)
  and ``completed``; ``input_audio_buffer.clear`` → ``cleared``. What it "hears" on each commit
  is the next of :attr:`FakeOpenAi.transcripts`.

Auth is ``Authorization: Bearer <key>``; a wrong key gets the API's 401 error body over HTTP,
and over the WebSocket an ``error`` event (``invalid_api_key``) then close code 3000, as the
service does. API errors are ``{"error": {"message", "type", "param", "code"}}``. Everything a
client sends is recorded. Failure switches: ``drop_after`` (TCP reset after that many body
pieces or commits), ``stall_after`` (stops answering but keeps the connection open),
``fail_transcription`` (``...input_audio_transcription.failed`` instead of ``completed``),
``refuse_tools`` (a chat request with ``tools`` gets 400, as an OpenAI-compatible server whose
model has no tool support answers, e.g. Ollama's ``... does not support tools``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = [
    "FakeOpenAi",
    "RealtimeConnection",
    "Recorded",
    "check_chat_request",
    "fake_speech",
    "tool_call_deltas",
]

SPEECH_RATE = 24000
MIN_COMMIT_BYTES = 4800  # 100 ms of 24 kHz PCM16


def fake_speech(text: str) -> bytes:
    """Deterministic 24 kHz PCM16LE 'speech' for ``text``: 5 ms per character."""
    samples = [(ord(ch) * 53 + i * 7) % 30000 - 15000 for ch in text for i in range(120)]
    return struct.pack(f"<{len(samples)}h", *samples)


def tool_call_deltas(
    calls: list[tuple[str, str, str]], *, pieces: int = 3, first_index: int = 0
) -> list[dict[str, Any]]:
    """The ``delta`` objects streaming ``calls`` (each ``(id, name, arguments)``) as the API
    does: a call's first piece has its ``index``, ``id``, ``type`` and function ``name`` with
    empty ``arguments``, then the arguments follow in ``pieces`` parts keyed by ``index``. The
    chunk after them has ``finish_reason: "tool_calls"``."""
    deltas: list[dict[str, Any]] = []
    for number, (call_id, name, arguments) in enumerate(calls):
        index = first_index + number
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )
        size = max(1, -(-len(arguments) // pieces))
        for start in range(0, len(arguments), size):
            part = arguments[start : start + size]
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
    return deltas


_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def check_chat_request(body: dict[str, Any]) -> tuple[str, str] | None:
    """What the API would refuse in a chat request's ``tools`` and ``messages``:
    ``(message, param)``, or None when it is fine."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "Invalid type for 'tools': expected an array.", "tools"
        for number, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return f"Invalid value for 'tools[{number}].type'.", f"tools[{number}].type"
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
                param = f"tools[{number}].function.name"
                return f"Invalid '{param}': string does not match pattern.", param
            parameters = function.get("parameters", {}) if isinstance(function, dict) else {}
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                param = f"tools[{number}].function.parameters"
                return f"Invalid schema for function '{name}'.", param
    waiting: list[str] = []  # tool_call_ids still to answer
    for number, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if message.get("tool_call_id") not in waiting:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a"
                    " preceeding message with 'tool_calls'.",
                    f"messages.[{number}].role",
                )
            waiting.remove(message["tool_call_id"])
            continue
        if waiting:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages"
                " responding to each 'tool_call_id'. The following tool_call_ids did not have"
                f" response messages: {', '.join(waiting)}",
                f"messages.[{number}].role",
            )
        if role == "assistant" and message.get("tool_calls"):
            waiting = [str(call.get("id")) for call in message["tool_calls"]]
    if waiting:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages responding"
            f" to each 'tool_call_id'. The following tool_call_ids did not have response"
            f" messages: {', '.join(waiting)}",
            "messages",
        )
    return None


def api_error(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """An OpenAI error object (the ``error`` member of error bodies and events)."""
    return {"message": message, "type": kind, "param": param, "code": code}


@dataclass
class Recorded:
    """One HTTP request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class RealtimeConnection:
    """What one Realtime WebSocket client sent (events in order, decoded audio) and received."""

    headers: dict[str, str]
    query: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # every appended byte, in order
    commits: list[bytes] = field(default_factory=list)  # the buffer at each commit
    sent: list[dict[str, Any]] = field(default_factory=list)

    def types(self) -> list[str]:
        """The ``type`` of each client event, in order, runs of appends folded into one."""
        out: list[str] = []
        for event in self.events:
            kind = event["type"]
            if not (out and out[-1] == kind == "input_audio_buffer.append"):
                out.append(kind)
        return out


class FakeOpenAi:
    """The fake service on 127.0.0.1 with an ephemeral port; use ``async with``."""

    def __init__(self, *, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        self.requests: list[Recorded] = []
        self.realtime: list[RealtimeConnection] = []
        self.chat_deltas: list[tuple[dict[str, Any], str | None]] = []
        self.speech: Callable[[str], bytes] = fake_speech
        self.chunk_size = 999  # odd on purpose: clients must keep samples whole
        self.transcripts: list[str] = []
        self.fail_transcription = False  # answer commits with ...transcription.failed
        self.refuse_tools = False  # a model without tool support behind a compatible server
        self.refuse_upgrade = False  # a bad key on the WebSocket gets HTTP 401, not an event
        self.drop_after: int | None = None
        self.stall_after: int | None = None
        self.url = ""  # the base URL, ``http://127.0.0.1:<port>/v1``
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> FakeOpenAi:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/realtime", self._realtime)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._runner is not None
        await self._runner.cleanup()

    # --- HTTP ---

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _unauthorized(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        message = (
            f"Incorrect API key provided: {given[:3]}***{given[-2:]}. You can find your API key"
            " at https://platform.openai.com/account/api-keys."
        )
        body = {"error": api_error(message, "invalid_request_error", "invalid_api_key")}
        return web.json_response(body, status=401)

    async def _record(self, request: web.Request) -> Recorded:
        try:
            body = await request.json()
        except ValueError:
            body = None
        recorded = Recorded(
            request.method, request.path, dict(request.query), dict(request.headers), body
        )
        self.requests.append(recorded)
        return recorded

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if not self._authorized(request):
            return self._unauthorized(request)
        body = recorded.body
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _bad_request("you must provide a model parameter", "model")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _bad_request("[] is too short - 'messages'", "messages")
        if body.get("stream") is not True:
            return _bad_request("this fake streams only", "stream")
        refused = check_chat_request(body)
        if refused is not None:
            return _bad_request(*refused)
        if self.refuse_tools and body.get("tools"):
            message = f"registry.ollama.ai/library/{body['model']}:latest does not support tools"
            return web.json_response({"error": api_error(message, "api_error", None)}, status=400)
        events = [
            json.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
            )
            for delta, finish in self.chat_deltas
        ]
        pieces = [f"data: {event}\n\n".encode() for event in [*events, "[DONE]"]]
        return await self._stream(request, "text/event-stream", pieces)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        if not self._authorized(request):
            return self._unauthorized(request)
        body = recorded.body
        if not isinstance(body, dict):
            return _bad_request("We could not parse the JSON body of your request.", None)
        for name in ("model", "input", "voice"):
            if not isinstance(body.get(name), str) or not body[name]:
                return _bad_request(f"Missing required parameter: '{name}'.", name)
        if len(body["input"]) > 4096:
            return _bad_request("string too long: 'input' takes at most 4096 characters", "input")
        if body.get("response_format") != "pcm":
            return _bad_request("this fake answers response_format 'pcm' only", "response_format")
        speed = body.get("speed", 1.0)
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 4.0:
            return _bad_request(f"{speed!r} is not a valid speed (0.25 to 4.0)", "speed")
        pcm = self.speech(body["input"])
        pieces = [pcm[i : i + self.chunk_size] for i in range(0, len(pcm), self.chunk_size)]
        return await self._stream(request, "audio/pcm", pieces)

    async def _stream(
        self, request: web.Request, content_type: str, pieces: list[bytes]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        for number, piece in enumerate(pieces):
            if number == self.drop_after:
                _reset(request)
                return response
            if number == self.stall_after:
                await self._stop.wait()
                return response
            await response.write(piece)
        await response.write_eof()
        return response

    # --- Realtime ---

    async def _realtime(self, request: web.Request) -> web.StreamResponse:
        authorized = self._authorized(request)
        if not authorized and self.refuse_upgrade:
            return self._unauthorized(request)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = RealtimeConnection(dict(request.headers), dict(request.query))
        self.realtime.append(conn)
        session = _RealtimeSession(self, conn, ws, request)
        if not authorized:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            text = f"Incorrect API key provided: {given[:3]}***{given[-2:]}."
            await session.error(text, "invalid_request_error", "invalid_api_key")
            await ws.close(code=3000, message=b"invalid_request_error.invalid_api_key")
            return ws
        await session.send("session.created", session=session.session)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                await session.error("binary frames are not events", "invalid_request_error", None)
                continue
            event = json.loads(message.data)
            conn.events.append(event)
            if not await session.handle(event):
                break
        return ws


class _RealtimeSession:
    """One Realtime connection's state: the session object, the input audio buffer, items."""

    def __init__(
        self,
        fake: FakeOpenAi,
        conn: RealtimeConnection,
        ws: web.WebSocketResponse,
        request: web.Request,
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        self.request = request
        self.buffer = bytearray()
        self.items = 0
        self.events = 0
        self.session: dict[str, Any] = {
            "type": "transcription",
            "object": "realtime.transcription_session",
            "id": "sess_fake",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": SPEECH_RATE},
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                    },
                }
            },
        }

    async def send(self, kind: str, **fields: Any) -> None:
        self.events += 1
        event = {"event_id": f"event_{self.events}", "type": kind, **fields}
        self.conn.sent.append(event)
        await self.ws.send_str(json.dumps(event))

    async def error(self, message: str, kind: str, code: str | None) -> None:
        await self.send("error", error={**api_error(message, kind, code), "event_id": None})

    async def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "session.update":
            update = event.get("session") or {}
            if update.get("type") != "transcription":
                await self.error(
                    "Passing a realtime session update event to a transcription session is not"
                    " allowed.",
                    "invalid_request_error",
                    "invalid_value",
                )
                return True
            self.session["audio"]["input"].update(update.get("audio", {}).get("input", {}))
            await self.send("session.updated", session=self.session)
            if self.fake.stall_after == 0:
                await self.fake._stop.wait()  # alive, but reads nothing more: pings go unanswered
                return False
        elif kind == "input_audio_buffer.append":
            audio = base64.b64decode(event["audio"], validate=True)
            self.buffer += audio
            self.conn.audio += audio
        elif kind == "input_audio_buffer.commit":
            return await self.commit()
        elif kind == "input_audio_buffer.clear":
            self.buffer.clear()
            await self.send("input_audio_buffer.cleared")
        else:
            await self.error(f"Invalid value: '{kind}'.", "invalid_request_error", "invalid_value")
        return True

    async def commit(self) -> bool:
        if len(self.buffer) < MIN_COMMIT_BYTES:
            ms = len(self.buffer) * 1000 // (SPEECH_RATE * 2)
            await self.error(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms"
                f" of audio, but buffer only has {ms:.2f}ms of audio.",
                "invalid_request_error",
                "input_audio_buffer_commit_empty",
            )
            return True
        if self.fake.drop_after is not None and self.items >= self.fake.drop_after:
            _reset(self.request)
            return False
        self.conn.commits.append(bytes(self.buffer))
        self.buffer.clear()
        previous = f"item_{self.items}" if self.items else None
        self.items += 1
        item_id = f"item_{self.items}"
        await self.send("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        transcripts = self.fake.transcripts
        text = transcripts[self.items - 1] if self.items <= len(transcripts) else ""
        for number, word in enumerate(text.split()):
            await self.send(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=word if number == 0 else f" {word}",
            )
        if self.fake.fail_transcription:
            error = api_error(
                "The audio could not be transcribed.", "transcription_error", "audio_unintelligible"
            )
            await self.send(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error=error,
            )
            return True
        await self.send(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=text,
            usage={"type": "duration", "seconds": 1},
        )
        return True


def _bad_request(message: str, param: str | None) -> web.Response:
    body = {"error": api_error(message, "invalid_request_error", None, param)}
    return web.json_response(body, status=400)


def _reset(request: web.Request) -> None:
    """A TCP reset mid-stream: no end of body, no close frame."""
    transport = request.transport
    assert transport is not None
    transport.abort()
