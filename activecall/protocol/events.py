"""Events, server → client (reference §2.6), their encoder and a parser for clients.

One frozen dataclass per event; ``event`` (a class attribute) is the wire discriminator.
``to_json()`` gives the text frame: camelCase fields, epoch-ms ``timestamp``, absent optional
fields left out. The ``binary`` event is never JSON (audio goes out as binary frames) and the
JSON ``ping`` of upstream's docs never exists (pings are WebSocket control frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from activecall.protocol.commands import CommandError
from activecall.protocol.options import (
    U32,
    U64,
    FieldError,
    JsonObject,
    StrMap,
    decode,
    encode,
    json_kind,
    wire,
)

__all__ = [
    "EVENTS",
    "HANGUP_INITIATORS",
    "HANGUP_REASONS",
    "AddHistoryEvent",
    "AnswerEvent",
    "AnswerMachineDetectionEvent",
    "AsrDeltaEvent",
    "AsrFinalEvent",
    "Attendee",
    "CustomEvent",
    "DtmfEvent",
    "EouEvent",
    "ErrorEvent",
    "Event",
    "EventError",
    "FunctionCallEvent",
    "HangupEvent",
    "HoldEvent",
    "InactivityEvent",
    "IncomingEvent",
    "InterruptEvent",
    "InterruptionEvent",
    "MediaReadyEvent",
    "MessageEvent",
    "MetricsEvent",
    "OtherEvent",
    "RejectEvent",
    "RingbackStateEvent",
    "RingingEvent",
    "SilenceEvent",
    "SpeakingEvent",
    "TrackEndEvent",
    "TrackStartEvent",
    "TransferRequestEvent",
    "error_event_for",
    "event_from_dict",
    "parse_event",
]

HANGUP_REASONS = (
    "caller",
    "callee",
    "refer",
    "system",
    "autohangup",
    "inactivityTimeout",
    "canceled",
    "rejected",
    "failed",
    "error",
)
"""The plain words ``hangup.reason`` takes (PROTOCOL.md fix 2; upstream sends Debug strings)."""

HANGUP_INITIATORS = ("caller", "callee", "system")
"""The values of ``hangup.initiator``."""


class EventError(ValueError):
    """A text frame that is not a valid event; ``event`` is its name when known."""

    def __init__(self, message: str, event: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.event = event


class _Wire:
    """``to_dict``/``to_json`` for the event dataclasses."""

    __slots__ = ()
    event: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``{"event": ..., <fields>}``, absent fields left out."""
        return {"event": self.event, **encode(self)}

    def to_json(self) -> bytes:
        """The text frame (UTF-8 JSON)."""
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True, kw_only=True)
class Attendee:
    """One party of a SIP dialog, in ``hangup.from`` / ``hangup.to``."""

    username: str
    realm: str
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingEvent(_Wire):
    """Inbound SIP call, on the first ``ringing``/``accept``; ``headers``: non-standard ones."""

    event = "incoming"
    track_id: str
    timestamp: U64
    caller: str
    callee: str
    sdp: str
    headers: StrMap | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerEvent(_Wire):
    """The call (or the refer leg, ``refer``) is established; ``sdp`` is "" on ``/call``."""

    event = "answer"
    track_id: str
    timestamp: U64
    sdp: str
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaReadyEvent(_Wire):
    """An RTP track received its first remote media."""

    event = "mediaReady"
    track_id: str
    timestamp: U64


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectEvent(_Wire):
    """The outbound INVITE or refer leg failed (``code`` is the SIP status)."""

    event = "reject"
    track_id: str
    timestamp: U64
    reason: str
    code: U32 | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RingingEvent(_Wire):
    """The outbound leg got a 18x (``early_media``: it carried SDP)."""

    event = "ringing"
    track_id: str
    timestamp: U64
    early_media: bool
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HangupEvent(_Wire):
    """The call ended (every call type, PROTOCOL.md fix 2); times are RFC 3339 strings."""

    event = "hangup"
    track_id: str
    timestamp: U64
    reason: str | None = None
    initiator: str | None = None
    start_time: str
    hangup_time: str
    answer_time: str | None = None
    ringing_time: str | None = None
    from_: Attendee | None = field(default=None, metadata=wire("from"))
    to: Attendee | None = None
    extra: JsonObject | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeakingEvent(_Wire):
    """VAD: speech has lasted ``speechPadding`` ms; ``start_time`` is its start (epoch ms)."""

    event = "speaking"
    track_id: str
    timestamp: U64
    start_time: U64
    is_filler: bool | None = None
    confidence: float | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SilenceEvent(_Wire):
    """VAD: end of speech (start and length of the *speech*), or a silence timeout tick."""

    event = "silence"
    track_id: str
    timestamp: U64
    start_time: U64
    duration: U64
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EouEvent(_Wire):
    """End of utterance, from an external EOU engine."""

    event = "eou"
    track_id: str
    timestamp: U64
    completed: bool
    interrupt_point: str | None = None
    text: str | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AsrDeltaEvent(_Wire):
    """Interim transcript of sentence ``index``."""

    event = "asrDelta"
    track_id: str
    index: U32
    timestamp: U64
    start_time: U64 | None = None
    end_time: U64 | None = None
    text: str
    is_filler: bool | None = None
    confidence: float | None = None
    task_id: str | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AsrFinalEvent(_Wire):
    """Final transcript of sentence ``index``."""

    event = "asrFinal"
    track_id: str
    index: U32
    timestamp: U64
    start_time: U64 | None = None
    end_time: U64 | None = None
    text: str
    is_filler: bool | None = None
    confidence: float | None = None
    task_id: str | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfEvent(_Wire):
    """A DTMF digit received (RFC 4733, SIP INFO or in-band)."""

    event = "dtmf"
    track_id: str
    timestamp: U64
    digit: str
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldEvent(_Wire):
    """The remote party put the call on hold (``on_hold``) or took it off."""

    event = "hold"
    track_id: str
    timestamp: U64
    on_hold: bool
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferRequestEvent(_Wire):
    """An in-dialog SIP REFER arrived (answered 202); the client decides."""

    event = "transferRequest"
    track_id: str
    timestamp: U64
    refer_to: str
    referred_by: str | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent(_Wire):
    """An in-dialog SIP MESSAGE arrived."""

    event = "message"
    track_id: str
    timestamp: U64
    body: str
    content_type: str | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackStartEvent(_Wire):
    """A track started (remote leg: the session id; playback: ``server-side-track``)."""

    event = "trackStart"
    track_id: str
    timestamp: U64
    play_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackEndEvent(_Wire):
    """A track finished; ``duration`` in ms."""

    event = "trackEnd"
    track_id: str
    timestamp: U64
    duration: U64
    ssrc: U32
    play_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InterruptionEvent(_Wire):
    """TTS stopped mid-play; ``current`` and ``total_duration`` in ms."""

    event = "interruption"
    track_id: str
    timestamp: U64
    play_id: str | None = None
    subtitle: str | None = None
    position: U32 | None = None
    total_duration: U32
    current: U32


@dataclass(frozen=True, slots=True, kw_only=True)
class InactivityEvent(_Wire):
    """No audio for ``inactivityTimeout`` s; the server hangs up."""

    event = "inactivity"
    track_id: str
    timestamp: U64


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsEvent(_Wire):
    """A timing (``duration`` ms) under ``key``, e.g. ``ttfb.asr.<provider>``."""

    event = "metrics"
    timestamp: U64
    key: str
    duration: U32
    data: JsonObject


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(_Wire):
    """Something failed; ``sender`` says where, ``command`` names a rejected command."""

    event = "error"
    track_id: str
    timestamp: U64
    sender: str
    error: str
    code: U32 | None = None
    command: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AddHistoryEvent(_Wire):
    """A line added to the dialogue history."""

    event = "addHistory"
    sender: str | None = None
    timestamp: U64
    speaker: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallEvent(_Wire):
    """A realtime-model tool call; ``arguments`` is a JSON string."""

    event = "functionCall"
    track_id: str
    call_id: str
    name: str
    arguments: str
    timestamp: U64


@dataclass(frozen=True, slots=True, kw_only=True)
class InterruptEvent(_Wire):
    """Barge-in signal of the realtime bridge (no timestamp, as upstream)."""

    event = "interrupt"
    receiver: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomEvent(_Wire):
    """Echo of a ``custom`` command."""

    event = "custom"
    timestamp: U64
    sender: str | None = None
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class RingbackStateEvent(_Wire):
    """Ringback classifier result (``state`` one of its class names)."""

    event = "ringbackState"
    track_id: str
    timestamp: U64
    state: str
    state_index: U32
    confidence: float
    prev_state: str | None = None
    prev_confidence: float | None = None
    refer: bool | None = None
    is_final: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerMachineDetectionEvent(_Wire):
    """Answering-machine detection result (declared upstream, never emitted)."""

    event = "answerMachineDetection"
    track_id: str
    timestamp: U64
    start_time: U64
    end_time: U64
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherEvent(_Wire):
    """Free-form event (declared upstream, never emitted)."""

    event = "other"
    track_id: str
    timestamp: U64
    sender: str
    extra: StrMap | None = None


Event = (
    IncomingEvent
    | AnswerEvent
    | MediaReadyEvent
    | RejectEvent
    | RingingEvent
    | HangupEvent
    | SpeakingEvent
    | SilenceEvent
    | EouEvent
    | AsrDeltaEvent
    | AsrFinalEvent
    | DtmfEvent
    | HoldEvent
    | TransferRequestEvent
    | MessageEvent
    | TrackStartEvent
    | TrackEndEvent
    | InterruptionEvent
    | InactivityEvent
    | MetricsEvent
    | ErrorEvent
    | AddHistoryEvent
    | FunctionCallEvent
    | InterruptEvent
    | CustomEvent
    | RingbackStateEvent
    | AnswerMachineDetectionEvent
    | OtherEvent
)

EVENTS: Mapping[str, type[Event]] = {
    cls.event: cls
    for cls in (
        IncomingEvent,
        AnswerEvent,
        MediaReadyEvent,
        RejectEvent,
        RingingEvent,
        HangupEvent,
        SpeakingEvent,
        SilenceEvent,
        EouEvent,
        AsrDeltaEvent,
        AsrFinalEvent,
        DtmfEvent,
        HoldEvent,
        TransferRequestEvent,
        MessageEvent,
        TrackStartEvent,
        TrackEndEvent,
        InterruptionEvent,
        InactivityEvent,
        MetricsEvent,
        ErrorEvent,
        AddHistoryEvent,
        FunctionCallEvent,
        InterruptEvent,
        CustomEvent,
        RingbackStateEvent,
        AnswerMachineDetectionEvent,
        OtherEvent,
    )
}
"""Every event class by wire name."""


def error_event_for(exc: CommandError, track_id: str, timestamp: int) -> ErrorEvent:
    """The ``error`` event answering a rejected command frame (PROTOCOL.md fix 1)."""
    return ErrorEvent(
        track_id=track_id,
        timestamp=timestamp,
        sender="command",
        error=exc.message,
        command=exc.command,
    )


def event_from_dict(obj: Any) -> Event:
    """The event of a decoded JSON value; raises :class:`EventError`."""
    if not isinstance(obj, dict):
        raise EventError(f"an event must be a JSON object, not {json_kind(obj)}")
    name = obj.get("event")
    if name is None:
        raise EventError("the 'event' field is missing")
    if not isinstance(name, str):
        raise EventError("the 'event' field must be a string")
    cls = EVENTS.get(name)
    if cls is None:
        raise EventError(f"unknown event '{name}'", event=name)
    try:
        return decode(cls, obj)
    except FieldError as exc:
        raise EventError(f"{name}: {exc}", event=name) from None


def parse_event(text: str | bytes) -> Event:
    """The event of one text frame (for clients and tests); raises :class:`EventError`."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"invalid JSON: {exc}") from None
    return event_from_dict(obj)
