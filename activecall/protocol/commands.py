"""Commands, client → server (reference §2.4), and their parser.

One frozen dataclass per command; ``command`` (a class attribute) is the wire discriminator.
:func:`parse_command` turns a text frame into a command or raises :class:`CommandError`, whose
message names the offending field (PROTOCOL.md fix 1: the adapter answers with an ``error``
event, ``sender:"command"``, and the call goes on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from activecall.protocol.options import (
    U32,
    CallOption,
    FieldError,
    LenientBool,
    RecorderOption,
    ReferOption,
    StrMap,
    SynthesisOption,
    decode,
    encode,
    json_kind,
    wire,
)

__all__ = [
    "COMMANDS",
    "AcceptCommand",
    "AddIceCandidateCommand",
    "BridgeCommand",
    "Command",
    "CommandError",
    "CustomCommand",
    "HangupCommand",
    "HistoryCommand",
    "InterruptCommand",
    "InviteCommand",
    "MessageCommand",
    "MuteCommand",
    "PauseCommand",
    "PlayCommand",
    "ReferCommand",
    "RejectCommand",
    "ResumeCommand",
    "RingingCommand",
    "SendDtmfCommand",
    "TtsCommand",
    "UnbridgeCommand",
    "UnmuteCommand",
    "command_from_dict",
    "parse_command",
]


class CommandError(ValueError):
    """A text frame that is not a valid command; ``command`` is its name when known."""

    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


class _Wire:
    """``to_dict``/``to_json`` for the command dataclasses."""

    __slots__ = ()
    command: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: ``{"command": ..., <fields>}``, absent fields left out."""
        return {"command": self.command, **encode(self)}

    def to_json(self) -> bytes:
        """The text frame (UTF-8 JSON)."""
        return orjson.dumps(self.to_dict())


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteCommand(_Wire):
    """Start the call (outbound SIP INVITE, WebRTC answer, or WebSocket audio)."""

    command = "invite"
    option: CallOption


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptCommand(_Wire):
    """Answer the pending inbound SIP call whose dialog id is the session id."""

    command = "accept"
    option: CallOption


@dataclass(frozen=True, slots=True, kw_only=True)
class RejectCommand(_Wire):
    """Reject the pending inbound SIP call with ``code`` (a SIP status)."""

    command = "reject"
    reason: str
    code: U32 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RingingCommand(_Wire):
    """Send 180 Ringing (183 with SDP when ``early_media`` or ``ringtone``)."""

    command = "ringing"
    recorder: RecorderOption | None = None
    early_media: bool | None = None
    ringtone: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TtsCommand(_Wire):
    """Synthesize ``text`` on the server-side track; ``wait_input_timeout`` is in ms."""

    command = "tts"
    text: str
    speaker: str | None = None
    play_id: str | None = None
    auto_hangup: bool | None = None
    streaming: bool | None = None
    end_of_stream: bool | None = None
    option: SynthesisOption | None = None
    wait_input_timeout: U32 | None = None
    base64: bool | None = None
    cache_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlayCommand(_Wire):
    """Play a file or URL on the server-side track; ``play_id`` defaults to the url."""

    command = "play"
    url: str
    play_id: str | None = None
    auto_hangup: bool | None = None
    wait_input_timeout: U32 | None = None
    offset_ms: U32 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InterruptCommand(_Wire):
    """Stop playback; ``fade_out_ms`` fades it out linearly (PROTOCOL.md fix 4)."""

    command = "interrupt"
    graceful: LenientBool | None = None
    fade_out_ms: U32 | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseCommand(_Wire):
    """Freeze server-side playback."""

    command = "pause"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeCommand(_Wire):
    """Resume server-side playback."""

    command = "resume"


@dataclass(frozen=True, slots=True, kw_only=True)
class HangupCommand(_Wire):
    """End the call (any call type); ``refer`` ends only the transfer leg."""

    command = "hangup"
    reason: str | None = None
    initiator: str | None = None
    headers: StrMap | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferCommand(_Wire):
    """Dial ``callee`` as a new leg and bridge it (not a SIP REFER); ``caller`` may be ""."""

    command = "refer"
    caller: str
    callee: str
    options: ReferOption | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageCommand(_Wire):
    """Send an in-dialog SIP MESSAGE (``text`` is accepted for ``body``)."""

    command = "message"
    body: str = field(metadata=wire(None, "text"))
    content_type: str | None = None
    headers: StrMap | None = None
    refer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeCommand(_Wire):
    """Patch audio both ways with another session."""

    command = "bridge"
    target_session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UnbridgeCommand(_Wire):
    """Remove the audio bridge with another session."""

    command = "unbridge"
    target_session_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MuteCommand(_Wire):
    """Silence audio coming from ``track_id`` (every track when ``None``)."""

    command = "mute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UnmuteCommand(_Wire):
    """Undo :class:`MuteCommand`."""

    command = "unmute"
    track_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryCommand(_Wire):
    """Add a line to the dialogue history (echoed as ``addHistory``)."""

    command = "history"
    speaker: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomCommand(_Wire):
    """Inject any JSON ``data``; echoed as a ``custom`` event."""

    command = "custom"
    sender: str | None = None
    data: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AddIceCandidateCommand(_Wire):
    """Trickle ICE for a WebRTC call (``sdpMLineIndex`` is accepted for ``sdpMlineIndex``)."""

    command = "addIceCandidate"
    candidate: str
    sdp_mid: str | None = None
    sdp_mline_index: U32 | None = field(default=None, metadata=wire(None, "sdpMLineIndex"))


_DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDtmfCommand(_Wire):
    """Send ``digits`` (0-9, *, #, A-D) as RFC 4733 events (activecall addition)."""

    command = "sendDtmf"
    digits: str

    def __post_init__(self) -> None:
        if not self.digits or not _DTMF_DIGITS.issuperset(self.digits):
            raise FieldError("digits", "must be a non-empty string of 0-9, *, #, A-D")


Command = (
    InviteCommand
    | AcceptCommand
    | RejectCommand
    | RingingCommand
    | TtsCommand
    | PlayCommand
    | InterruptCommand
    | PauseCommand
    | ResumeCommand
    | HangupCommand
    | ReferCommand
    | MessageCommand
    | BridgeCommand
    | UnbridgeCommand
    | MuteCommand
    | UnmuteCommand
    | HistoryCommand
    | CustomCommand
    | AddIceCandidateCommand
    | SendDtmfCommand
)

COMMANDS: Mapping[str, type[Command]] = {
    cls.command: cls
    for cls in (
        InviteCommand,
        AcceptCommand,
        RejectCommand,
        RingingCommand,
        TtsCommand,
        PlayCommand,
        InterruptCommand,
        PauseCommand,
        ResumeCommand,
        HangupCommand,
        ReferCommand,
        MessageCommand,
        BridgeCommand,
        UnbridgeCommand,
        MuteCommand,
        UnmuteCommand,
        HistoryCommand,
        CustomCommand,
        AddIceCandidateCommand,
        SendDtmfCommand,
    )
}
"""Every command class by wire name."""


def command_from_dict(obj: Any) -> Command:
    """The command of a decoded JSON value (e.g. a REST body); raises :class:`CommandError`."""
    if not isinstance(obj, dict):
        raise CommandError(f"a command must be a JSON object, not {json_kind(obj)}")
    name = obj.get("command")
    if name is None:
        raise CommandError("the 'command' field is missing")
    if not isinstance(name, str):
        raise CommandError("the 'command' field must be a string")
    cls = COMMANDS.get(name)
    if cls is None:
        raise CommandError(f"unknown command '{name}'", command=name)
    try:
        return decode(cls, obj)
    except FieldError as exc:
        raise CommandError(f"{name}: {exc}", command=name) from None


def parse_command(text: str | bytes) -> Command:
    """The command of one text frame; raises :class:`CommandError` and nothing else."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CommandError(f"invalid JSON: {exc}") from None
    return command_from_dict(obj)
