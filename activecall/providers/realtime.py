"""The ``realtime`` call option: the call bridged to the OpenAI or Azure OpenAI Realtime API.

Caller audio goes up as ``input_audio_buffer.append`` (base64 PCM16, resampled from the
gateway's 16 kHz to the API's 24 kHz, batched to ``batch_ms``); the model's voice comes back as
audio deltas, resampled to 16 kHz. The service's turn detection (``server_vad`` unless the
option says otherwise) decides when the caller has spoken; when it hears the caller start, the
bridge cancels the reply in progress, truncates the assistant's audio item to what was played
and drops the reply's deltas still in flight (the session stops its playback).

Two dialects of the protocol exist. We send the GA one by default (``session.type:
"realtime"``, ``audio.input``/``audio.output``, no ``OpenAI-Beta`` header; Azure at
``/openai/v1/realtime?model=``); ``extra.protocol: "beta"`` sends the beta one (flat
``modalities``/``input_audio_format``/``turn_detection``, ``OpenAI-Beta: realtime=v1``; Azure at
``/openai/realtime?api-version=&deployment=``). Server events are read in both dialects
(``response.output_audio.delta`` and ``response.audio.delta``, and so on), whichever was sent.

:class:`RealtimeProtocol` is the session without I/O (messages in, events and messages out; the
audio pushed is its only clock); :class:`RealtimeBridge` is its asyncio adapter.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from activecall._native.resample import Resampler
from activecall.protocol.options import FieldError, JsonObject, StrMap, decode, json_kind, wire
from activecall.providers._http import (
    PcmAligner,
    api_key,
    closed_error,
    connect_websocket,
    decode_json,
    endpoint_url,
)
from activecall.providers.base import ProviderError

__all__ = [
    "DEFAULT_AZURE_API_VERSION",
    "DEFAULT_MODEL",
    "DEFAULT_OPENAI_URL",
    "DEFAULT_TURN_DETECTION",
    "GATEWAY_RATE",
    "REALTIME_RATE",
    "AgentAudio",
    "ApiError",
    "Dialect",
    "FunctionCall",
    "RealtimeBridge",
    "RealtimeEvent",
    "RealtimeOption",
    "RealtimeProtocol",
    "ResponseDone",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDelta",
    "TranscriptDone",
    "UserTranscript",
    "instructions_update",
    "realtime_headers",
    "realtime_url",
    "session_update",
]

logger = logging.getLogger(__name__)

PROVIDER = "realtime"
REALTIME_RATE = 24000
"""The PCM rate of the Realtime API, both ways."""
GATEWAY_RATE = 16000
"""The rate of the audio the session pushes and receives."""
DEFAULT_MODEL = "gpt-realtime"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2025-04-01-preview"
"""``api-version`` of the Azure preview (beta-dialect) endpoint unless ``extra.apiVersion``."""
DEFAULT_TURN_DETECTION: Mapping[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}
"""The service's VAD settings unless the option's ``turnDetection`` replaces them."""

Dialect = Literal["ga", "beta"]

_PCM_FORMAT = {"type": "audio/pcm", "rate": REALTIME_RATE}
_MAX_BACKLOG_MS = 2000  # audio queued beyond this (a stalled link) is dropped, never blocks
# Error codes after which the session cannot go on (the service closes it): HTTP-like status.
_FATAL = {"invalid_api_key": 401, "insufficient_quota": 429, "session_expired": 408}
# Our cancel raced the service's own (turn detection cancels the reply it interrupts).
_BENIGN = {"response_cancel_not_active"}


# --- the option ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _RealtimeJson:
    """The wire shape of ``option.realtime`` (reference §2.5), decoded by the options codec."""

    provider: str | None = None
    model: str | None = None
    secret_key: str | None = field(default=None, metadata=wire(None, "apiKey"))
    secret_id: str | None = None
    endpoint: str | None = None
    turn_detection: JsonObject | None = None
    tools: Any = None
    extra: StrMap | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RealtimeOption:
    """``option.realtime``: which Realtime API, which model, and how the session is set up.

    ``provider`` is ``openai``, ``azure`` (needs ``endpoint``; ``model`` is the deployment) or
    a ws(s)/http(s) URL of a compatible server. ``extra`` may set ``instructions``, ``voice``,
    ``protocol`` (``ga``/``beta``), ``transcriptionModel`` (caller transcripts) and
    ``apiVersion`` (Azure beta endpoint).
    """

    provider: str = "openai"
    model: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    secret_id: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    turn_detection: Mapping[str, Any] | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: Any) -> RealtimeOption:
        """Parse ``option.realtime``: unknown keys ignored, a bad value a ValueError naming it."""
        if not isinstance(obj, dict):
            raise FieldError("realtime", f"must be an object, got {json_kind(obj)}")
        wire = decode(_RealtimeJson, obj, "realtime")
        provider = wire.provider or "openai"
        if provider.lower() in ("openai", "azure"):
            provider = provider.lower()
        elif not _is_url(provider):
            raise FieldError(
                "realtime.provider", f"must be openai, azure or a ws(s):// URL, got {provider!r}"
            )
        if wire.endpoint is not None:
            if not _is_url(wire.endpoint):
                raise FieldError(
                    "realtime.endpoint", f"must be an http(s) or ws(s) URL, got {wire.endpoint!r}"
                )
        elif provider == "azure":
            raise FieldError("realtime.endpoint", "is required when provider is azure")
        extra = dict(wire.extra or {})
        protocol = extra.get("protocol", "ga")
        if protocol not in ("ga", "beta"):
            raise FieldError("realtime.extra.protocol", f"must be ga or beta, got {protocol!r}")
        return cls(
            provider=provider,
            model=wire.model or None,
            secret_key=wire.secret_key or None,
            secret_id=wire.secret_id,
            endpoint=wire.endpoint,
            turn_detection=wire.turn_detection,
            tools=_tools(wire.tools),
            extra=extra,
        )

    @property
    def dialect(self) -> Dialect:
        """The protocol dialect we speak: ``ga`` unless ``extra.protocol`` is ``beta``."""
        return "beta" if self.extra.get("protocol") == "beta" else "ga"

    @property
    def instructions(self) -> str | None:
        """The system instructions (``extra.instructions``)."""
        return self.extra.get("instructions") or None

    @property
    def voice(self) -> str | None:
        """The model's voice (``extra.voice``)."""
        return self.extra.get("voice") or None


def _is_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("ws", "wss", "http", "https") and bool(parts.netloc)


def _tools(value: Any) -> tuple[Mapping[str, Any], ...]:
    """Tool definitions as the Realtime API takes them: chat-completions style
    ``{"type": "function", "function": {...}}`` entries are flattened, others pass through."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise FieldError("realtime.tools", f"must be an array of objects, got {json_kind(value)}")
    tools = []
    for number, tool in enumerate(value):
        path = f"realtime.tools[{number}]"
        if not isinstance(tool, dict):
            raise FieldError(path, f"must be an object, got {json_kind(tool)}")
        nested = tool.get("function")
        if isinstance(nested, dict):
            tool = {"type": "function", **nested}
        if tool.get("type", "function") == "function" and not isinstance(tool.get("name"), str):
            raise FieldError(f"{path}.name", "is required for a function tool")
        tools.append(tool)
    return tuple(tools)


# --- where and how to connect -------------------------------------------------------------------


def realtime_url(option: RealtimeOption) -> str:
    """The WebSocket URL of the option's Realtime endpoint (for its dialect)."""
    model = option.model or DEFAULT_MODEL
    if option.provider == "openai":
        base = option.endpoint or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL
        return endpoint_url(PROVIDER, base, "/realtime", websocket=True, params={"model": model})
    if option.provider == "azure":
        if option.endpoint is None:
            raise ProviderError(PROVIDER, "azure needs the option's endpoint (the resource URL)")
        if option.dialect == "beta":
            version = option.extra.get("apiVersion") or DEFAULT_AZURE_API_VERSION
            params = {"api-version": version, "deployment": model}
            return endpoint_url(
                PROVIDER, option.endpoint, "/openai/realtime", websocket=True, params=params
            )
        return endpoint_url(
            PROVIDER,
            option.endpoint,
            "/openai/v1/realtime",
            websocket=True,
            params={"model": model},
        )
    query = dict(parse_qsl(urlsplit(option.provider).query))
    params = {"model": option.model} if option.model and "model" not in query else {}
    return endpoint_url(PROVIDER, option.provider, "", websocket=True, params=params)


def realtime_headers(option: RealtimeOption) -> dict[str, str]:
    """The auth (and dialect) headers; ProviderError naming ``OPENAI_API_KEY`` without a key.

    Azure takes ``api-key`` (also from ``AZURE_OPENAI_API_KEY``); OpenAI a bearer token; a
    custom URL gets the bearer token when a key is set and no auth header otherwise.
    """
    headers: dict[str, str] = {}
    if option.provider == "azure":
        given = option.secret_key or os.environ.get("AZURE_OPENAI_API_KEY")
        headers["api-key"] = api_key(PROVIDER, given, "OPENAI_API_KEY")
        return headers
    if option.provider == "openai":
        key: str | None = api_key(PROVIDER, option.secret_key, "OPENAI_API_KEY")
    else:
        key = option.secret_key or os.environ.get("OPENAI_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if option.dialect == "beta":
        headers["OpenAI-Beta"] = "realtime=v1"
    return headers


def session_update(option: RealtimeOption) -> dict[str, Any]:
    """The first client event: ``session.update`` for the option, in its dialect."""
    turn_detection = dict(option.turn_detection or DEFAULT_TURN_DETECTION)
    transcription = option.extra.get("transcriptionModel")
    session: dict[str, Any]
    if option.dialect == "beta":
        session = {
            "modalities": ["text", "audio"],
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": turn_detection,
        }
        if option.voice:
            session["voice"] = option.voice
        if transcription:
            session["input_audio_transcription"] = {"model": transcription}
    else:
        audio_in: dict[str, Any] = {"format": _PCM_FORMAT, "turn_detection": turn_detection}
        audio_out: dict[str, Any] = {"format": _PCM_FORMAT}
        if transcription:
            audio_in["transcription"] = {"model": transcription}
        if option.voice:
            audio_out["voice"] = option.voice
        session = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {"input": audio_in, "output": audio_out},
        }
    if option.instructions:
        session["instructions"] = option.instructions
    if option.tools:
        session["tools"] = [dict(tool) for tool in option.tools]
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def instructions_update(dialect: Dialect, instructions: str) -> dict[str, Any]:
    """A ``session.update`` that only replaces the instructions (the GA dialect needs the
    session's ``type`` in every update; fields left out keep their values)."""
    if not isinstance(instructions, str):
        raise TypeError(f"instructions must be a string, got {type(instructions).__name__}")
    session: dict[str, Any] = {"instructions": instructions}
    if dialect == "ga":
        session = {"type": "realtime", **session}
    return {"type": "session.update", "session": session}


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """The model's voice: PCM16LE mono at 16 kHz, of assistant item ``item_id``."""

    pcm16k: bytes
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The service heard the caller start (``speaking``; any reply in progress is cut)."""

    audio_start_ms: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The service heard the caller stop; a reply follows unless turn detection says not."""

    audio_end_ms: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """A new piece of the assistant's words (``asrDelta`` in realtime mode)."""

    text: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    """The assistant's whole transcript of item ``item_id`` (cut short if interrupted)."""

    text: str
    item_id: str


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """What the caller said, from the input transcription (``extra.transcriptionModel``)."""

    text: str
    item_id: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """The model calls a tool (``functionCall``); answer with ``send_function_result``."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A reply ended: ``status`` is completed, cancelled, failed or incomplete."""

    status: str = "completed"


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error the service reported that the session survives (report it, go on)."""

    message: str
    code: str | None = None


RealtimeEvent = (
    AgentAudio
    | SpeechStarted
    | SpeechStopped
    | TranscriptDelta
    | TranscriptDone
    | UserTranscript
    | FunctionCall
    | ResponseDone
    | ApiError
)


# --- the protocol without I/O -------------------------------------------------------------------


@dataclass(slots=True)
class _Playback:
    """The assistant audio item being played: when it began (on the pushed-audio clock)."""

    item_id: str
    started: int  # 16 kHz samples pushed when its first delta arrived
    samples: int = 0  # 24 kHz samples received


def _dumps(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def _field(event: Mapping[str, Any], name: str, kind: type) -> Any:
    """``event[name]`` if it is a ``kind``; else the reply is malformed."""
    value = event.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProviderError(
            PROVIDER, f"bad reply: {event.get('type')} without a {kind.__name__} {name!r}"
        )
    return value


class RealtimeProtocol:
    """The client side of one Realtime session, without I/O.

    Methods return the client events to send (JSON text) and :meth:`receive` the events for
    the session. The audio pushed is the clock: the part of an assistant item played when the
    caller interrupts is the audio pushed since its first delta arrived (playback and capture
    both run in real time), unless the session says how much it played.
    """

    def __init__(self, *, batch_ms: int = 100) -> None:
        if not 10 <= batch_ms <= 1000:
            raise ValueError(f"batch_ms must be between 10 and 1000, got {batch_ms}")
        self._up = Resampler(GATEWAY_RATE, REALTIME_RATE)
        self._down = Resampler(REALTIME_RATE, GATEWAY_RATE)
        self._batch_bytes = REALTIME_RATE * 2 * batch_ms // 1000
        self._in = PcmAligner()
        self._pending = bytearray()
        self._pushed = 0  # 16 kHz samples pushed: the clock
        self._out = PcmAligner()
        self._out_item: str | None = None
        self._playback: _Playback | None = None
        self._responding = False  # a reply is in progress
        self._response: str | None = None  # its id
        self._muted: set[str] = set()  # replies interrupted: their late deltas are dropped
        self._names: dict[str, str] = {}  # call_id -> function name (the beta omits it)
        self.last_error: str | None = None
        """The message of the last error event (explains a close that follows)."""
        self._handlers: dict[str, Callable[[dict[str, Any]], list[RealtimeEvent]]] = {
            "error": self._error,
            "input_audio_buffer.speech_started": self._speech_started,
            "input_audio_buffer.speech_stopped": self._speech_stopped,
            "response.created": self._response_created,
            "response.done": self._response_done,
            "response.output_item.added": self._output_item,
            "response.output_audio.delta": self._audio_delta,
            "response.audio.delta": self._audio_delta,
            "response.output_audio.done": self._audio_done,
            "response.audio.done": self._audio_done,
            "response.output_audio_transcript.delta": self._transcript_delta,
            "response.audio_transcript.delta": self._transcript_delta,
            "response.output_text.delta": self._transcript_delta,
            "response.text.delta": self._transcript_delta,
            "response.output_audio_transcript.done": self._transcript_done,
            "response.audio_transcript.done": self._transcript_done,
            "response.output_text.done": self._transcript_done,
            "response.text.done": self._transcript_done,
            "response.function_call_arguments.done": self._function_call,
            "conversation.item.input_audio_transcription.completed": self._user_transcript,
        }
        self._replies: list[str] = []

    @property
    def pushed_ms(self) -> int:
        """Milliseconds of caller audio pushed so far."""
        return self._pushed * 1000 // GATEWAY_RATE

    @property
    def batch_bytes(self) -> int:
        """Bytes of 24 kHz audio an append event carries at least."""
        return self._batch_bytes

    def push_audio(self, pcm16k: bytes) -> list[str]:
        """Caller audio (PCM16LE 16 kHz; an odd byte waits): append events, once a batch is full."""
        if not isinstance(pcm16k, bytes | bytearray | memoryview):
            raise TypeError(f"push_audio takes PCM bytes, got {type(pcm16k).__name__}")
        data = self._in.feed(bytes(pcm16k))
        if not data:
            return []
        self._pushed += len(data) // 2
        self._pending += self._up.process(data).tobytes()
        if len(self._pending) < self._batch_bytes:
            return []
        audio, self._pending = bytes(self._pending), bytearray()
        payload = base64.b64encode(audio).decode("ascii")
        return [_dumps({"type": "input_audio_buffer.append", "audio": payload})]

    def interrupt(self, played_ms: int | None = None) -> list[str]:
        """Cut the reply: cancel it if in progress, drop its late deltas, and truncate the
        assistant audio item to ``played_ms`` (else the estimate) if not all of it was played."""
        out: list[str] = []
        if self._responding:
            if self._response is not None:
                self._muted.add(self._response)
            out.append(_dumps({"type": "response.cancel"}))
        playback, self._playback = self._playback, None
        if playback is not None:
            received = playback.samples * 1000 // REALTIME_RATE
            if played_ms is None:
                played_ms = (self._pushed - playback.started) * 1000 // GATEWAY_RATE
            played = max(0, min(played_ms, received))
            if played < received:
                truncate = {
                    "type": "conversation.item.truncate",
                    "item_id": playback.item_id,
                    "content_index": 0,
                    "audio_end_ms": played,
                }
                out.append(_dumps(truncate))
        # the interrupted item's resampler tail is never played: start the next one clean
        self._down.reset()
        self._out = PcmAligner()
        self._out_item = None
        return out

    def function_result(self, call_id: str, output: str, *, respond: bool = True) -> list[str]:
        """The tool's answer to call ``call_id``, then (``respond``) a request for the model's
        reply."""
        if not isinstance(call_id, str) or not call_id:
            raise TypeError("call_id must be a non-empty string")
        if not isinstance(output, str):
            raise TypeError(f"output must be a string (JSON text), got {type(output).__name__}")
        item = {"type": "function_call_output", "call_id": call_id, "output": output}
        out = [_dumps({"type": "conversation.item.create", "item": item})]
        if respond:
            out.append(_dumps({"type": "response.create"}))
        return out

    def system_message(self, text: str) -> list[str]:
        """A system message (something the model must know now), then a request for its
        reply."""
        if not isinstance(text, str) or not text.strip():
            raise TypeError("a system message must be a non-empty string")
        item = {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": text}],
        }
        return [
            _dumps({"type": "conversation.item.create", "item": item}),
            _dumps({"type": "response.create"}),
        ]

    def receive(self, message: str | bytes) -> tuple[list[RealtimeEvent], list[str]]:
        """One server event: events for the session and client events to send in answer.

        Raises ProviderError for a message that is not an event, a malformed known event, or
        an error the session cannot survive (a refused key).
        """
        event = decode_json(PROVIDER, message)
        kind = event.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return [], []  # session.*, conversation.item.*, rate_limits.updated, ...
        events = handler(event)
        replies, self._replies = self._replies, []
        return events, replies

    # --- handlers ---

    def _error(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        error = event.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = str(error.get("message") or "no message")
        if code in _BENIGN:
            return []
        self.last_error = f"{message} ({code})" if code else message
        if code in _FATAL:
            raise ProviderError(PROVIDER, self.last_error, code=_FATAL[code])
        return [ApiError(message, code)]

    def _speech_started(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        start = _field(event, "audio_start_ms", int)
        item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else None
        self._replies += self.interrupt()
        return [SpeechStarted(start, item_id)]

    def _speech_stopped(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        end = _field(event, "audio_end_ms", int)
        item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else None
        return [SpeechStopped(end, item_id)]

    def _response_created(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        response = _field(event, "response", dict)
        self._responding = True
        self._response = response.get("id") if isinstance(response.get("id"), str) else None
        return []

    def _response_done(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        response = _field(event, "response", dict)
        response_id = response.get("id")
        if response_id == self._response or self._response is None:
            self._responding = False
            self._response = None
        self._muted.discard(str(response_id))
        status = response.get("status")
        status = status if isinstance(status, str) else "completed"
        out: list[RealtimeEvent] = []
        details = response.get("status_details")
        error = details.get("error") if isinstance(details, dict) else None
        if status == "failed" and isinstance(error, dict):
            message = str(error.get("message") or "the reply failed")
            code = error.get("code") if isinstance(error.get("code"), str) else None
            out.append(ApiError(message, code))
        out.append(ResponseDone(status))
        return out

    def _output_item(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        item = _field(event, "item", dict)
        call_id, name = item.get("call_id"), item.get("name")
        function = item.get("type") == "function_call"
        if function and isinstance(call_id, str) and isinstance(name, str):
            self._names[call_id] = name
        return []

    def _late(self, event: dict[str, Any]) -> bool:
        """A delta of a reply that was interrupted: nobody hears it."""
        return event.get("response_id") in self._muted

    def _audio_delta(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        item_id = _field(event, "item_id", str)
        delta = _field(event, "delta", str)
        if self._late(event):
            return []
        try:
            data = base64.b64decode(delta, validate=True)
        except binascii.Error:
            raise ProviderError(PROVIDER, "bad reply: audio delta is not base64") from None
        out: list[RealtimeEvent] = []
        if item_id != self._out_item:
            out += self._flush_audio()
            self._out_item = item_id
            self._playback = _Playback(item_id, self._pushed)
        pcm = self._out.feed(data)
        if self._playback is not None:
            self._playback.samples += len(pcm) // 2
        resampled = self._down.process(pcm)
        if resampled.size:
            out.append(AgentAudio(resampled.tobytes(), item_id))
        return out

    def _audio_done(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        return self._flush_audio()  # an interrupted item has none: interrupt() reset it

    def _flush_audio(self) -> list[RealtimeEvent]:
        """The resampler's tail of the item that ended (none after an interrupt: reset)."""
        item_id, self._out_item = self._out_item, None
        if item_id is None:
            return []
        self._out = PcmAligner()
        tail = self._down.flush()
        return [AgentAudio(tail.tobytes(), item_id)] if tail.size else []

    def _transcript_delta(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        item_id = _field(event, "item_id", str)
        delta = _field(event, "delta", str)
        if self._late(event) or not delta:
            return []
        return [TranscriptDelta(delta, item_id)]

    def _transcript_done(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        item_id = _field(event, "item_id", str)
        text = _field(event, "text" if "text" in event else "transcript", str)
        return [TranscriptDone(text, item_id)]

    def _function_call(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        call_id = _field(event, "call_id", str)
        arguments = _field(event, "arguments", str)
        name = event.get("name") if isinstance(event.get("name"), str) else None
        name = name or self._names.pop(call_id, None)
        if name is None:
            raise ProviderError(PROVIDER, f"bad reply: function call {call_id!r} without a name")
        if self._late(event):
            return []  # the caller interrupted: its arguments may be cut short
        return [FunctionCall(call_id, name, arguments)]

    def _user_transcript(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        item_id = _field(event, "item_id", str)
        text = _field(event, "transcript", str)
        return [UserTranscript(text.strip(), item_id)] if text.strip() else []


# --- the asyncio adapter ------------------------------------------------------------------------


class RealtimeBridge:
    """One call's Realtime session over a WebSocket (made by :meth:`connect`).

    ``push_audio``, ``cancel_response`` and ``send_function_result`` only queue (never block);
    one task sends, one reads; ``events()`` hands out what the service says and raises
    ProviderError when the connection fails (ping timeouts bound a silent one).
    """

    def __init__(
        self,
        ws: ClientConnection,
        protocol: RealtimeProtocol,
        *,
        close_timeout: float,
        dialect: Dialect = "ga",
    ) -> None:
        self._ws = ws
        self._dialect: Dialect = dialect
        self._protocol = protocol
        self._close_timeout = close_timeout
        self._outbox: deque[tuple[str, bool]] = deque()  # (event, is an append)
        self._audio_queued = 0  # append events in the outbox
        backlog_bytes = _MAX_BACKLOG_MS * 2 * REALTIME_RATE // 1000
        self._max_audio = max(1, backlog_bytes // protocol.batch_bytes)
        self._wake = asyncio.Event()
        self._events: asyncio.Queue[RealtimeEvent | ProviderError | None] = asyncio.Queue()
        self._closing = False
        self._closed = False
        self.dropped_audio = 0
        """Append events dropped because the link could not keep up."""
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop())
        self._reader = loop.create_task(self._read_loop())

    @classmethod
    async def connect(
        cls,
        option: RealtimeOption,
        *,
        open_timeout: float = 10.0,
        ping_interval: float | None = 10.0,
        ping_timeout: float | None = 10.0,
        close_timeout: float = 2.0,
        batch_ms: int = 100,
    ) -> RealtimeBridge:
        """Connect and set the session up (``session.created`` → ``session.update`` →
        ``session.updated``); ProviderError if the key is missing or refused, the service
        cannot be reached, or it refuses the session."""
        headers = realtime_headers(option)  # before connecting: a missing key fails here
        url = realtime_url(option)
        protocol = RealtimeProtocol(batch_ms=batch_ms)
        ws = await connect_websocket(
            PROVIDER,
            url,
            headers,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
        )
        try:
            async with asyncio.timeout(open_timeout):
                await _start_session(ws, session_update(option))
        except TimeoutError:
            await ws.close()
            raise ProviderError(PROVIDER, "the session was not set up in time") from None
        except BaseException:
            await ws.close()
            raise
        return cls(ws, protocol, close_timeout=close_timeout, dialect=option.dialect)

    @property
    def pushed_ms(self) -> int:
        """Milliseconds of caller audio pushed so far."""
        return self._protocol.pushed_ms

    def push_audio(self, pcm16k: bytes) -> None:
        """Queue caller audio (PCM16LE 16 kHz); sent in batches; dropped after close."""
        messages = self._protocol.push_audio(pcm16k)
        if self._closing:
            return
        for message in messages:
            if self._audio_queued >= self._max_audio:
                self.dropped_audio += 1
                continue
            self._audio_queued += 1
            self._queue([message], audio=True)

    def cancel_response(self, played_ms: int | None = None) -> None:
        """Stop the reply (the client's ``interrupt``): cancel it, drop its late audio, and
        truncate the assistant item to ``played_ms`` of audio (default: the estimate)."""
        messages = self._protocol.interrupt(played_ms)
        if not self._closing:
            self._queue(messages)

    def send_function_result(self, call_id: str, output: str, *, respond: bool = True) -> None:
        """Answer function call ``call_id`` with ``output`` and (``respond``) ask the model to
        go on."""
        messages = self._protocol.function_result(call_id, output, respond=respond)
        if not self._closing:
            self._queue(messages)

    def update_instructions(self, instructions: str) -> None:
        """Replace the session's instructions (``session.update``)."""
        message = _dumps(instructions_update(self._dialect, instructions))
        if not self._closing:
            self._queue([message])

    def send_system_message(self, text: str) -> None:
        """Tell the model ``text`` as a system message and ask it to reply."""
        messages = self._protocol.system_message(text)
        if not self._closing:
            self._queue(messages)

    async def events(self) -> AsyncGenerator[RealtimeEvent, None]:
        """What the service says, in order; ends at aclose(); raises ProviderError on failure."""
        while True:
            item = await self._events.get()
            if item is None:
                self._events.put_nowait(None)  # a later events() call ends too
                return
            if isinstance(item, ProviderError):
                self._events.put_nowait(None)
                raise item
            yield item

    async def aclose(self) -> None:
        """Close the session (bounded by the close timeout); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._sender.cancel()
        try:
            await self._ws.close()
        finally:
            self._reader.cancel()
            await asyncio.gather(self._sender, self._reader, return_exceptions=True)
            self._events.put_nowait(None)

    # --- plumbing ---

    def _queue(self, messages: list[str], *, audio: bool = False) -> None:
        if messages:
            self._outbox.extend((message, audio) for message in messages)
            self._wake.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                message, audio = self._outbox.popleft()
                if audio:
                    self._audio_queued -= 1
                await self._ws.send(message)
        except ConnectionClosed:
            return  # the read task reports why
        except Exception as exc:  # a bug: say so rather than go quiet
            logger.exception("realtime sender failed")
            self._fail(ProviderError(PROVIDER, f"sending failed: {exc!r}"))

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                events, replies = self._protocol.receive(message)
                self._queue(replies)
                for event in events:
                    self._events.put_nowait(event)
            if not self._closing:
                code, reason = self._ws.close_code, self._ws.close_reason
                detail = f"code {code}: {reason}" if reason else f"code {code}"
                self._fail(
                    ProviderError(
                        PROVIDER, self._explain(f"the service closed ({detail})"), code=code
                    )
                )
        except ConnectionClosed as exc:
            if not self._closing:
                error = closed_error(PROVIDER, exc)
                message = str(error).removeprefix(f"{PROVIDER}: ")
                self._fail(ProviderError(PROVIDER, self._explain(message), code=error.code))
        except ProviderError as exc:
            self._fail(exc)
            await self._ws.close()
        except Exception as exc:  # a bug must still end events(), not leave it waiting
            logger.exception("realtime reader failed")
            self._fail(ProviderError(PROVIDER, f"reading events failed: {exc!r}"))
            await self._ws.close()

    def _explain(self, message: str) -> str:
        last = self._protocol.last_error
        return f"{message} after error: {last}" if last else message

    def _fail(self, error: ProviderError) -> None:
        if self._closing:
            return
        self._closing = True
        self._sender.cancel()
        self._events.put_nowait(error)
        self._events.put_nowait(None)


async def _start_session(ws: ClientConnection, update: Mapping[str, Any]) -> None:
    """Wait for ``session.created``, send ``update``, wait for ``session.updated``."""
    try:
        await _await_event(ws, "session.created", "session refused")
        await ws.send(_dumps(update))
        await _await_event(ws, "session.updated", "session.update refused")
    except ConnectionClosed as exc:
        raise closed_error(PROVIDER, exc) from exc


async def _await_event(ws: ClientConnection, kind: str, context: str) -> None:
    while True:
        event = decode_json(PROVIDER, await ws.recv())
        if event.get("type") == kind:
            return
        if event.get("type") == "error":
            error = event.get("error")
            error = error if isinstance(error, dict) else {}
            code = error.get("code")
            message = str(error.get("message") or "no message")
            detail = f" ({code})" if isinstance(code, str) else ""
            status = _FATAL.get(code) if isinstance(code, str) else None
            raise ProviderError(PROVIDER, f"{context}: {message}{detail}", code=status)
