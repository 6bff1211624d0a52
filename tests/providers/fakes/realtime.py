"""A local OpenAI / Azure OpenAI Realtime API (aiohttp) following the published event schema.

Endpoints (WebSocket):

* ``GET /v1/realtime?model=`` — OpenAI, ``Authorization: Bearer <key>``. The GA dialect, or
  the beta one when the request carries ``OpenAI-Beta: realtime=v1``. A wrong key gets an
  ``error`` event (``invalid_api_key``) and close code 3000, as the service does, or HTTP 401
  on the upgrade when :attr:`FakeRealtime.refuse_upgrade` is set.
* ``GET /openai/v1/realtime?model=<deployment>`` — Azure GA; ``GET /openai/realtime?api-version=
  &deployment=`` — Azure preview (beta dialect). ``api-key: <key>``; a wrong key gets HTTP 401
  with Azure's error body.

The session: ``session.created`` first; ``session.update`` is checked against its dialect's
schema (unknown parameters, ``session.type``, audio formats, turn detection type, tools) and
answered with ``session.updated`` or an ``error`` event. Audio arrives base64 in
``input_audio_buffer.append`` (PCM16 24 kHz). What the service's VAD "hears" is scripted as
:class:`Turn` s on the audio timeline: ``input_audio_buffer.speech_started`` / ``speech_stopped``,
the committed user item, its input transcription (when the session asked for one), then a
reply: an audio message (audio deltas of :attr:`FakeRealtime.delta_ms`, one transcript delta per
word, the ``done`` events, ``response.done``) or a function call (``output_item.added``,
arguments ``delta``/``done`` — with ``name`` in GA, without in beta — ``response.done``).
A reply marked ``hold_after`` stops after that many audio deltas and is still in progress when
the next turn's speech starts: then, after :attr:`FakeRealtime.in_flight` more deltas, the
service cancels it itself (turn detection's ``interrupt_response``, default true) or waits for
``response.cancel``. ``response.cancel`` with no reply in progress is the
``response_cancel_not_active`` error; ``conversation.item.truncate`` of an assistant item is
answered ``conversation.item.truncated`` (an error past the item's audio); a
``function_call_output`` item plus ``response.create`` gets a reply saying
:attr:`FakeRealtime.function_reply`. Event names follow the dialect (``response.output_audio.delta``
in GA, ``response.audio.delta`` in beta, and so on).

Everything a client sends is recorded; :meth:`FakeRealtime.send` and :meth:`FakeRealtime.close`
inject server events and a close. Failure switches: ``silent`` (no ``session.created``),
``drop_after_ms`` (TCP reset once that much audio arrived), ``stall_after_ms`` (stops reading:
pings go unanswered).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["FakeRealtime", "RealtimeConnection", "Turn", "fake_voice"]

RATE = 24000
BYTES_PER_MS = RATE * 2 // 1000
PCM = {"type": "audio/pcm", "rate": RATE}

_GA_SESSION_KEYS = {
    "type",
    "model",
    "audio",
    "instructions",
    "output_modalities",
    "tools",
    "tool_choice",
    "max_output_tokens",
    "tracing",
    "truncation",
    "prompt",
    "include",
}
_BETA_SESSION_KEYS = {
    "model",
    "modalities",
    "instructions",
    "voice",
    "input_audio_format",
    "output_audio_format",
    "input_audio_transcription",
    "input_audio_noise_reduction",
    "turn_detection",
    "tools",
    "tool_choice",
    "temperature",
    "max_response_output_tokens",
    "speed",
    "tracing",
}
_TURN_TYPES = ("server_vad", "semantic_vad")


def fake_voice(text: str) -> bytes:
    """Deterministic 24 kHz PCM16LE 'speech' for ``text``: 20 ms per character."""
    samples = [(ord(ch) * 53 + i * 7) % 30000 - 15000 for ch in text for i in range(480)]
    return struct.pack(f"<{len(samples)}h", *samples)


def api_error(
    message: str, kind: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """A Realtime ``error`` object."""
    return {"type": kind, "code": code, "message": message, "param": param, "event_id": None}


@dataclass(frozen=True)
class Turn:
    """One scripted caller turn on the input audio timeline, and the model's reply to it."""

    speech_start_ms: int
    speech_end_ms: int
    user_text: str = ""  # what input transcription "hears"
    reply: str = ""  # the assistant's spoken words ("" with ``call`` set: a function call)
    call: tuple[str, str] | None = None  # (name, arguments JSON)
    hold_after: int | None = None  # stop after this many audio deltas (still in progress)


@dataclass
class RealtimeConnection:
    """What one client sent (events in order, the audio decoded) and received."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    dialect: str
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def types(self) -> list[str]:
        """The ``type`` of each client event, runs of appends folded into one."""
        out: list[str] = []
        for event in self.events:
            kind = event.get("type", "?")
            if not (out and out[-1] == kind == "input_audio_buffer.append"):
                out.append(kind)
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The client events of type ``kind``, in order."""
        return [e for e in self.events if e.get("type") == kind]

    def sent_of_type(self, kind: str) -> list[dict[str, Any]]:
        """The server events of type ``kind`` sent to the client, in order."""
        return [e for e in self.sent if e.get("type") == kind]


class FakeRealtime:
    """The fake service on 127.0.0.1 with an ephemeral port; use ``async with``."""

    def __init__(self, *, api_key: str = "sk-test", turns: tuple[Turn, ...] = ()) -> None:
        self.api_key = api_key
        self.turns = turns
        self.function_reply = "done"
        self.delta_ms = 100
        self.in_flight = 0
        self.refuse_upgrade = False
        self.silent = False  # accept the WebSocket but never send session.created
        self.drop_after_ms: int | None = None
        self.stall_after_ms: int | None = None
        self.connections: list[RealtimeConnection] = []
        self.url = ""  # ``http://127.0.0.1:<port>``
        self._sessions: list[_Session] = []
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> FakeRealtime:
        app = web.Application()
        app.router.add_get("/v1/realtime", self._openai)
        app.router.add_get("/openai/v1/realtime", self._azure)
        app.router.add_get("/openai/realtime", self._azure_preview)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def send(self, event: dict[str, Any]) -> None:
        """Send a server event on the latest connection (events the script does not make)."""
        await self._sessions[-1].send(event.pop("type"), **event)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the latest connection with a close frame, as the service ends a session."""
        await self._sessions[-1].ws.close(code=code, message=reason.encode())

    # --- endpoints ---

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        dialect = "beta" if request.headers.get("OpenAI-Beta") == "realtime=v1" else "ga"
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self.api_key and self.refuse_upgrade:
            message = f"Incorrect API key provided: {given[:3]}***{given[-2:]}."
            body = {"error": api_error(message, "invalid_request_error", "invalid_api_key")}
            return web.json_response(body, status=401)
        if "model" not in request.query:
            body = {"error": api_error("Missing required parameter: 'model'.", "x", None)}
            return web.json_response(body, status=400)
        return await self._serve(request, dialect, authorized=given == self.api_key)

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("api-key") != self.api_key:
            return _azure_denied()
        if "api-version" in request.query or "model" not in request.query:
            return web.json_response(
                {"error": {"code": "BadRequest", "message": "GA takes ?model=, no api-version"}},
                status=400,
            )
        return await self._serve(request, "ga", authorized=True)

    async def _azure_preview(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("api-key") != self.api_key:
            return _azure_denied()
        if "api-version" not in request.query or "deployment" not in request.query:
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        return await self._serve(request, "beta", authorized=True)

    async def _serve(
        self, request: web.Request, dialect: str, *, authorized: bool
    ) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        conn = RealtimeConnection(request.path, dict(request.query), dict(request.headers), dialect)
        self.connections.append(conn)
        session = _Session(self, conn, ws, request)
        self._sessions.append(session)
        if not authorized:
            text = "Incorrect API key provided."
            await session.send(
                "error", error=api_error(text, "invalid_request_error", "invalid_api_key")
            )
            await ws.close(code=3000, message=b"invalid_request_error.invalid_api_key")
            return ws
        if self.silent:
            await self._stop.wait()
            return ws
        await session.send("session.created", session=session.session)
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                await session.error("Binary frames are not supported.", "invalid_value")
                continue
            event = json.loads(message.data)
            conn.events.append(event)
            if not await session.handle(event):
                break
        return ws


@dataclass
class _Reply:
    """A reply in progress: its audio message still to stream."""

    response_id: str
    item_id: str
    chunks: list[bytes]
    words: list[str]
    sent_chunks: int = 0
    sent_words: int = 0


class _Session:
    """One connection's state: session config, input audio, turns, items, the reply."""

    def __init__(
        self,
        fake: FakeRealtime,
        conn: RealtimeConnection,
        ws: web.WebSocketResponse,
        request: web.Request,
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        self.request = request
        self.ga = conn.dialect == "ga"
        self.count = 0  # event and object ids
        self.turn_state: list[str] = ["" for _ in fake.turns]  # "", "speaking", "done"
        self.reply: _Reply | None = None
        self.assistant_ms: dict[str, int] = {}  # assistant item -> audio ms sent
        self.calls: set[str] = set()
        self.outputs: list[str] = []  # call ids answered by function_call_output items
        turn_detection = {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        }
        if self.ga:
            self.session: dict[str, Any] = {
                "object": "realtime.session",
                "type": "realtime",
                "id": "sess_fake",
                "model": conn.query.get("model", "gpt-realtime"),
                "output_modalities": ["audio"],
                "instructions": "default",
                "tools": [],
                "tool_choice": "auto",
                "audio": {
                    "input": {
                        "format": PCM,
                        "transcription": None,
                        "turn_detection": turn_detection,
                    },
                    "output": {"format": PCM, "voice": "alloy", "speed": 1.0},
                },
            }
        else:
            self.session = {
                "object": "realtime.session",
                "id": "sess_fake",
                "model": conn.query.get("model") or conn.query.get("deployment"),
                "modalities": ["text", "audio"],
                "instructions": "default",
                "voice": "alloy",
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": None,
                "turn_detection": turn_detection,
                "tools": [],
                "tool_choice": "auto",
            }

    # --- plumbing ---

    def new_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def name(self, ga: str, beta: str) -> str:
        return ga if self.ga else beta

    async def send(self, kind: str, **fields: Any) -> None:
        event = {"event_id": self.new_id("event"), "type": kind, **fields}
        self.conn.sent.append(event)
        await self.ws.send_str(json.dumps(event))

    async def error(self, message: str, code: str | None, param: str | None = None) -> None:
        await self.send("error", error=api_error(message, "invalid_request_error", code, param))

    @property
    def heard_ms(self) -> int:
        return len(self.conn.audio) // BYTES_PER_MS

    @property
    def turn_detection(self) -> Mapping[str, Any]:
        config = self.session["audio"]["input"] if self.ga else self.session
        return config.get("turn_detection") or {}

    @property
    def transcription(self) -> Any:
        return (
            self.session["audio"]["input"].get("transcription")
            if self.ga
            else self.session.get("input_audio_transcription")
        )

    # --- client events ---

    async def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("type")
        if kind == "session.update":
            await self.update(event.get("session"))
        elif kind == "input_audio_buffer.append":
            try:
                audio = base64.b64decode(event["audio"], validate=True)
            except (KeyError, ValueError):
                await self.error("Invalid 'audio'. Expected base64-encoded audio.", "invalid_value")
                return True
            self.conn.audio += audio
            if self.fake.drop_after_ms is not None and self.heard_ms >= self.fake.drop_after_ms:
                transport = self.request.transport
                assert transport is not None
                transport.abort()  # a TCP reset: no close frame
                return False
            if self.fake.stall_after_ms is not None and self.heard_ms >= self.fake.stall_after_ms:
                await self.fake._stop.wait()  # alive but deaf: pings go unanswered
                return False
            await self.hear()
        elif kind == "response.cancel":
            if self.reply is None:
                await self.error(
                    "Cancellation failed: no active response found", "response_cancel_not_active"
                )
            else:
                await self.finish_reply("cancelled", "client_cancelled")
        elif kind == "conversation.item.truncate":
            await self.truncate(event)
        elif kind == "conversation.item.create":
            await self.create_item(event.get("item"))
        elif kind == "response.create":
            await self.respond(Turn(0, 0, reply=self.fake.function_reply))
        else:
            await self.error(f"Invalid value: '{kind}'.", "invalid_value", "type")
        return True

    async def update(self, update: Any) -> None:
        if not isinstance(update, dict):
            await self.error("Missing required parameter: 'session'.", "missing_required_parameter")
            return
        allowed = _GA_SESSION_KEYS if self.ga else _BETA_SESSION_KEYS
        for key in update:
            if key not in allowed:
                await self.error(
                    f"Unknown parameter: 'session.{key}'.", "unknown_parameter", f"session.{key}"
                )
                return
        if self.ga and update.get("type") != "realtime":
            await self.error(
                "Missing required parameter: 'session.type'.",
                "missing_required_parameter",
                "session.type",
            )
            return
        problem = self.check_ga(update) if self.ga else self.check_beta(update)
        if problem is None:
            problem = _check_tools(update.get("tools", []))
        if problem is not None:
            await self.error(problem[0], "invalid_value", problem[1])
            return
        if self.ga:
            audio = update.get("audio", {})
            for direction in ("input", "output"):
                self.session["audio"][direction].update(audio.get(direction, {}))
            rest = {k: v for k, v in update.items() if k != "audio"}
            self.session.update(rest)
        else:
            self.session.update(update)
        await self.send("session.updated", session=self.session)

    def check_ga(self, update: dict[str, Any]) -> tuple[str, str] | None:
        audio = update.get("audio", {})
        for direction in ("input", "output"):
            fmt = audio.get(direction, {}).get("format")
            if fmt is not None and fmt != PCM and fmt.get("type") == "audio/pcm":
                return "Only a 24kHz sample rate is supported.", f"session.audio.{direction}.format"
        modalities = update.get("output_modalities", ["audio"])
        if modalities not in (["audio"], ["text"]):
            return (
                "It is not possible to request both text and audio.",
                "session.output_modalities",
            )
        turn = audio.get("input", {}).get("turn_detection")
        return _check_turn(turn, "session.audio.input.turn_detection.type")

    def check_beta(self, update: dict[str, Any]) -> tuple[str, str] | None:
        for key in ("input_audio_format", "output_audio_format"):
            if update.get(key, "pcm16") not in ("pcm16", "g711_ulaw", "g711_alaw"):
                return f"Invalid value: '{update[key]}'.", f"session.{key}"
        modalities = update.get("modalities", ["text", "audio"])
        if sorted(modalities) not in (["text"], ["audio", "text"]):
            return (
                f"Invalid modalities: {modalities}. Supported combinations are: ['text'] and"
                " ['audio', 'text'].",
                "session.modalities",
            )
        return _check_turn(update.get("turn_detection"), "session.turn_detection.type")

    async def truncate(self, event: dict[str, Any]) -> None:
        item_id, end = event.get("item_id"), event.get("audio_end_ms")
        if item_id not in self.assistant_ms:
            await self.error(f"Item with item_id '{item_id}' not found.", "invalid_value")
            return
        if not isinstance(end, int) or end > self.assistant_ms[item_id]:
            await self.error(
                f"Audio content of {self.assistant_ms[item_id]}ms is already shorter than {end}ms",
                "invalid_value",
                "audio_end_ms",
            )
            return
        await self.send(
            "conversation.item.truncated",
            item_id=item_id,
            content_index=event.get("content_index", 0),
            audio_end_ms=end,
        )

    async def create_item(self, item: Any) -> None:
        if not isinstance(item, dict) or item.get("type") != "function_call_output":
            await self.error("This fake takes function_call_output items only.", "invalid_value")
            return
        call_id, output = item.get("call_id"), item.get("output")
        if call_id not in self.calls or not isinstance(output, str):
            await self.error(f"Tool call ID '{call_id}' not found.", "invalid_value")
            return
        self.outputs.append(call_id)
        created = {**item, "id": self.new_id("item"), "object": "realtime.item"}
        await self.send(
            self.name("conversation.item.added", "conversation.item.created"),
            previous_item_id=None,
            item=created,
        )

    # --- the scripted service side ---

    async def hear(self) -> None:
        for number, turn in enumerate(self.fake.turns):
            state = self.turn_state[number]
            if state == "" and self.heard_ms >= turn.speech_start_ms:
                self.turn_state[number] = state = "speaking"
                await self.send(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=turn.speech_start_ms,
                    item_id=f"item_user_{number}",
                )
                if self.reply is not None:
                    await self.interrupted()
            if state == "speaking" and self.heard_ms >= turn.speech_end_ms:
                self.turn_state[number] = "done"
                await self.speech_stopped(number, turn)

    async def interrupted(self) -> None:
        """Speech started during a reply: deltas already on the wire, then the VAD's cancel."""
        for _ in range(self.fake.in_flight):
            await self.stream_reply(limit=1)
        if self.turn_detection.get("interrupt_response", True):
            await self.finish_reply("cancelled", "turn_detected")

    async def speech_stopped(self, number: int, turn: Turn) -> None:
        item_id = f"item_user_{number}"
        await self.send(
            "input_audio_buffer.speech_stopped", audio_end_ms=turn.speech_end_ms, item_id=item_id
        )
        await self.send("input_audio_buffer.committed", previous_item_id=None, item_id=item_id)
        user_item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send(
            self.name("conversation.item.added", "conversation.item.created"),
            previous_item_id=None,
            item=user_item,
        )
        if self.transcription and turn.user_text:
            await self.send(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=turn.user_text,
                usage={"type": "duration", "seconds": 1},
            )
        if self.turn_detection.get("create_response", True):
            await self.respond(turn)

    async def respond(self, turn: Turn) -> None:
        response_id = self.new_id("resp")
        response = {"object": "realtime.response", "id": response_id, "status": "in_progress"}
        await self.send("response.created", response={**response, "output": []})
        if turn.call is not None:
            await self.function_call(response_id, *turn.call)
            return
        item_id = self.new_id("item")
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )
        part = {"type": self.name("output_audio", "audio"), "transcript": ""}
        await self.send(
            "response.content_part.added",
            response_id=response_id,
            item_id=item_id,
            output_index=0,
            content_index=0,
            part=part,
        )
        audio = fake_voice(turn.reply)
        size = self.fake.delta_ms * BYTES_PER_MS
        self.reply = _Reply(
            response_id,
            item_id,
            [audio[i : i + size] for i in range(0, len(audio), size)],
            [w if n == 0 else f" {w}" for n, w in enumerate(turn.reply.split())],
        )
        self.assistant_ms[item_id] = 0
        await self.stream_reply(limit=turn.hold_after)
        if turn.hold_after is None:
            await self.finish_reply("completed", None)

    async def stream_reply(self, limit: int | None) -> None:
        reply = self.reply
        assert reply is not None
        sent = 0
        while reply.sent_chunks < len(reply.chunks) and (limit is None or sent < limit):
            chunk = reply.chunks[reply.sent_chunks]
            common = {
                "response_id": reply.response_id,
                "item_id": reply.item_id,
                "output_index": 0,
                "content_index": 0,
            }
            if reply.sent_words < len(reply.words):
                await self.send(
                    self.name(
                        "response.output_audio_transcript.delta", "response.audio_transcript.delta"
                    ),
                    delta=reply.words[reply.sent_words],
                    **common,
                )
                reply.sent_words += 1
            await self.send(
                self.name("response.output_audio.delta", "response.audio.delta"),
                delta=base64.b64encode(chunk).decode("ascii"),
                **common,
            )
            reply.sent_chunks += 1
            self.assistant_ms[reply.item_id] += len(chunk) // BYTES_PER_MS
            sent += 1

    async def finish_reply(self, status: str, reason: str | None) -> None:
        reply, self.reply = self.reply, None
        assert reply is not None
        if status == "completed":  # the words not sent yet go out before the done events
            for word in reply.words[reply.sent_words :]:
                await self.send(
                    self.name(
                        "response.output_audio_transcript.delta", "response.audio_transcript.delta"
                    ),
                    response_id=reply.response_id,
                    item_id=reply.item_id,
                    output_index=0,
                    content_index=0,
                    delta=word,
                )
            reply.sent_words = len(reply.words)
        common = {
            "response_id": reply.response_id,
            "item_id": reply.item_id,
            "output_index": 0,
            "content_index": 0,
        }
        transcript = "".join(reply.words[: reply.sent_words])
        await self.send(self.name("response.output_audio.done", "response.audio.done"), **common)
        await self.send(
            self.name("response.output_audio_transcript.done", "response.audio_transcript.done"),
            transcript=transcript,
            **common,
        )
        part = {"type": self.name("output_audio", "audio"), "transcript": transcript}
        await self.send("response.content_part.done", part=part, **common)
        item_status = "completed" if status == "completed" else "incomplete"
        item = {
            "id": reply.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": item_status,
            "content": [part],
        }
        await self.send(
            "response.output_item.done", response_id=reply.response_id, output_index=0, item=item
        )
        details = None if reason is None else {"type": status, "reason": reason}
        response = {
            "object": "realtime.response",
            "id": reply.response_id,
            "status": status,
            "status_details": details,
            "output": [item],
        }
        await self.send("response.done", response=response)

    async def function_call(self, response_id: str, name: str, arguments: str) -> None:
        item_id, call_id = self.new_id("item"), self.new_id("call")
        self.calls.add(call_id)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": name,
            "arguments": "",
        }
        common = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        await self.send(
            "response.output_item.added", response_id=response_id, output_index=0, item=item
        )
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            await self.send(
                "response.function_call_arguments.delta", call_id=call_id, delta=piece, **common
            )
        done: dict[str, Any] = {"call_id": call_id, "arguments": arguments, **common}
        if self.ga:
            done["name"] = name  # the beta event has no name: it is on the output item
        await self.send("response.function_call_arguments.done", **done)
        item = {**item, "status": "completed", "arguments": arguments}
        await self.send(
            "response.output_item.done", response_id=response_id, output_index=0, item=item
        )
        response = {
            "object": "realtime.response",
            "id": response_id,
            "status": "completed",
            "status_details": None,
            "output": [item],
        }
        await self.send("response.done", response=response)


def _check_turn(turn: Any, param: str) -> tuple[str, str] | None:
    if turn is None or (isinstance(turn, dict) and turn.get("type") in _TURN_TYPES):
        return None
    kind = turn.get("type") if isinstance(turn, dict) else turn
    return f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.", param


def _check_tools(tools: Any) -> tuple[str, str] | None:
    if not isinstance(tools, list):
        return "Invalid type for 'session.tools': expected an array.", "session.tools"
    for number, tool in enumerate(tools):
        param = f"session.tools[{number}]"
        if not isinstance(tool, dict) or tool.get("type") not in ("function", "mcp"):
            return f"Invalid value for '{param}.type'.", f"{param}.type"
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            return f"Missing required parameter: '{param}.name'.", f"{param}.name"
        if "function" in tool:
            return f"Unknown parameter: '{param}.function'.", f"{param}.function"
    return None


def _azure_denied() -> web.Response:
    message = (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to"
        " provide a valid key for an active subscription and use a correct regional API"
        " endpoint for your resource."
    )
    return web.json_response({"error": {"code": "401", "message": message}}, status=401)
