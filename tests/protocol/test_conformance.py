"""Wire conformance against the reference (activecall-reference.md §2.3–§2.6, §2.9).

The tables below were written from the reference text, not from the codec: one row per field
of every command, option object and event, with its wire name, JSON type and whether the
reference makes it required. Each row is checked both ways: a message carrying the field
parses, and serializes back under the same name and JSON type; a wrong JSON type is rejected
with an error naming the field; a missing required field is rejected likewise.

JSON types: string, integer (unsigned; rejects booleans, fractions and negatives), int (signed),
number (accepts integers), boolean, object, map (object of strings), array (of strings), any.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import orjson
import pytest

from activecall.protocol import (
    COMMANDS,
    EVENTS,
    CommandError,
    EventError,
    parse_command,
    parse_event,
)

Row = tuple[str, str, str, bool]  # (command or event, wire path, JSON type, required)


def _rows(name: str, spec: str, prefix: str = "") -> list[Row]:
    """Rows from ``"field:type field?:type ..."`` (``?`` = optional)."""
    rows = []
    for item in spec.split():
        field, kind = item.split(":")
        optional = field.endswith("?")
        rows.append((name, prefix + field.rstrip("?"), kind, not optional))
    return rows


# --- §2.5 option objects --------------------------------------------------------------------
CALL_OPTION = (
    "denoise?:boolean agc?:object offer?:string callee?:string caller?:string recorder?:object "
    "vad?:object asr?:object tts?:object mediaPass?:object handshakeTimeout?:integer "
    "enableIpv6?:boolean inactivityTimeout?:integer sip?:object extra?:map codec?:string "
    "ambiance?:object eou?:object realtime?:object subscribe?:boolean enableIceLite?:boolean "
    "ringbackDetection?:object"
)
# SipOption is snake_case on the wire (§2.3).
SIP_OPTION = (
    "username?:string password?:string realm?:string contact?:string headers?:map "
    "hangup_headers?:map extract_headers?:array enable_srtp?:boolean"
)
VAD_OPTION = (
    "type?:string speechPadding?:integer silencePadding?:integer voiceThreshold?:number "
    "silenceTimeout?:integer"
)
RECORDER_OPTION = "recorderFile?:string samplerate?:integer ptime?:integer format?:string"
ASR_OPTION = (
    "provider?:string language?:string appId?:string secretId?:string secretKey?:string "
    "modelType?:string bufferSize?:integer samplerate?:integer endpoint?:string extra?:map "
    "startWhenAnswer?:boolean"
)
# samplerate and volume are signed (i32) upstream, so "int" (integer, negatives allowed).
TTS_OPTION = (
    "samplerate?:int provider?:string speed?:number appId?:string secretId?:string "
    "secretKey?:string volume?:int speaker?:string codec?:string subtitle?:boolean "
    "model?:string language?:string emotion?:string endpoint?:string extra?:map "
    "maxConcurrentTasks?:integer sessionId?:string"
)
REFER_OPTION = (
    "denoise?:boolean agc?:object timeout?:integer moh?:string vad?:object asr?:object "
    "autoHangup?:boolean sip?:object callId?:string pauseParentAsr?:boolean "
    "forwardDtmf?:boolean"
)


def _call_option_rows(name: str) -> list[Row]:
    return [
        *_rows(name, CALL_OPTION, "option."),
        *_rows(name, SIP_OPTION, "option.sip."),
        *_rows(name, VAD_OPTION, "option.vad."),
        *_rows(name, ASR_OPTION, "option.asr."),
        *_rows(name, TTS_OPTION, "option.tts."),
        *_rows(name, RECORDER_OPTION, "option.recorder."),
    ]


# --- §2.4 commands (plus our sendDtmf) ------------------------------------------------------
COMMAND_ROWS: list[Row] = [
    *_rows("invite", "option:object"),
    *_call_option_rows("invite"),
    *_rows("accept", "option:object"),
    *_call_option_rows("accept"),
    *_rows("reject", "reason:string code?:integer"),
    *_rows("ringing", "recorder?:object earlyMedia?:boolean ringtone?:string"),
    *_rows("ringing", RECORDER_OPTION, "recorder."),
    *_rows(
        "tts",
        "text:string speaker?:string playId?:string autoHangup?:boolean streaming?:boolean "
        "endOfStream?:boolean option?:object waitInputTimeout?:integer base64?:boolean "
        "cacheKey?:string",
    ),
    *_rows("tts", TTS_OPTION, "option."),
    *_rows(
        "play",
        "url:string playId?:string autoHangup?:boolean waitInputTimeout?:integer offsetMs?:integer",
    ),
    *_rows("interrupt", "graceful?:boolean fadeOutMs?:integer"),
    *_rows("hangup", "reason?:string initiator?:string headers?:map refer?:boolean"),
    # `caller: string (may be "")`: present but possibly empty.
    *_rows("refer", "caller:string callee:string options?:object"),
    *_rows("refer", REFER_OPTION, "options."),
    *_rows("refer", SIP_OPTION, "options.sip."),
    *_rows("refer", VAD_OPTION, "options.vad."),
    *_rows("message", "body:string contentType?:string headers?:map refer?:boolean"),
    *_rows("bridge", "targetSessionId:string"),
    *_rows("unbridge", "targetSessionId:string"),
    *_rows("mute", "trackId?:string"),
    *_rows("unmute", "trackId?:string"),
    *_rows("history", "speaker:string text:string"),
    *_rows("custom", "sender?:string data:any"),
    *_rows("addIceCandidate", "candidate:string sdpMid?:string sdpMlineIndex?:integer"),
    *_rows("sendDtmf", "digits:string"),
]
FIELDLESS_COMMANDS = ("pause", "resume")

# --- §2.6 events (plus our error.command) ---------------------------------------------------
TRACK = "trackId:string timestamp:integer "
EVENT_ROWS: list[Row] = [
    *_rows("incoming", TRACK + "caller:string callee:string sdp:string headers?:map"),
    *_rows("answer", TRACK + "sdp:string refer?:boolean"),
    *_rows("mediaReady", TRACK),
    *_rows("reject", TRACK + "reason:string code?:integer refer?:boolean"),
    *_rows("ringing", TRACK + "earlyMedia:boolean refer?:boolean"),
    *_rows(
        "hangup",
        TRACK + "reason?:string initiator?:string startTime:string hangupTime:string "
        "answerTime?:string ringingTime?:string from?:object to?:object extra?:object "
        "refer?:boolean",
    ),
    *_rows("hangup", "username:string realm:string source:string", "from."),
    *_rows("hangup", "username:string realm:string source:string", "to."),
    *_rows(
        "speaking",
        TRACK + "startTime:integer isFiller?:boolean confidence?:number refer?:boolean",
    ),
    *_rows("silence", TRACK + "startTime:integer duration:integer refer?:boolean"),
    # interruptPoint has no type in the reference; upstream's event.rs declares a String.
    *_rows("eou", TRACK + "completed:boolean interruptPoint?:string text?:string refer?:boolean"),
    *_rows(
        "asrDelta",
        TRACK + "index:integer startTime?:integer endTime?:integer text:string "
        "isFiller?:boolean confidence?:number taskId?:string refer?:boolean",
    ),
    *_rows(
        "asrFinal",
        TRACK + "index:integer startTime?:integer endTime?:integer text:string "
        "isFiller?:boolean confidence?:number taskId?:string refer?:boolean",
    ),
    *_rows("dtmf", TRACK + "digit:string refer?:boolean"),
    *_rows("hold", TRACK + "onHold:boolean refer?:boolean"),
    *_rows("transferRequest", TRACK + "referTo:string referredBy?:string refer?:boolean"),
    *_rows("message", TRACK + "body:string contentType?:string refer?:boolean"),
    *_rows("trackStart", TRACK + "playId?:string"),
    *_rows("trackEnd", TRACK + "duration:integer ssrc:integer playId?:string"),
    *_rows(
        "interruption",
        TRACK + "playId?:string subtitle?:string position?:integer totalDuration:integer "
        "current:integer",
    ),
    *_rows("inactivity", TRACK),
    *_rows("metrics", "timestamp:integer key:string duration:integer data:object"),
    *_rows("error", TRACK + "sender:string error:string code?:integer command?:string"),
    *_rows("addHistory", "sender?:string timestamp:integer speaker:string text:string"),
    *_rows(
        "functionCall",
        "trackId:string callId:string name:string arguments:string timestamp:integer",
    ),
    *_rows("interrupt", "receiver?:string"),
    *_rows("custom", "timestamp:integer sender?:string data:any"),
    *_rows(
        "ringbackState",
        TRACK + "state:string stateIndex:integer confidence:number prevState?:string "
        "prevConfidence?:number refer?:boolean isFinal:boolean",
    ),
    *_rows("answerMachineDetection", TRACK + "startTime:integer endTime:integer text:string"),
    *_rows("other", TRACK + "sender:string extra?:map"),
]

SAMPLES: dict[str, Any] = {
    "string": "s",
    "integer": 7,
    "int": -7,
    "number": 0.25,
    "boolean": True,
    "object": {"k": "v"},
    "map": {"k": "v"},
    "array": ["a"],
    "any": {"k": [1, None]},
}
# Values whose meaning the codec checks (DTMF digits) or that hold other option objects.
SAMPLE_OVERRIDES: dict[tuple[str, str], Any] = {
    ("sendDtmf", "digits"): "1#",
    ("hangup", "from"): {"username": "u", "realm": "r", "source": "sip:u@r"},
    ("hangup", "to"): {"username": "u", "realm": "r", "source": "sip:u@r"},
}
# An option object is sampled empty, so that its own rows are tested one at a time.
OBJECT_PATHS = {
    "option", "option.recorder", "option.vad", "option.asr", "option.tts", "option.sip",
    "recorder", "options", "options.vad", "options.sip", "options.asr",
}  # fmt: skip

CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*")
SNAKE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


def _sample(name: str, path: str, kind: str) -> Any:
    if (name, path) in SAMPLE_OVERRIDES:
        return copy.deepcopy(SAMPLE_OVERRIDES[(name, path)])
    if path in OBJECT_PATHS:
        return {}
    return copy.deepcopy(SAMPLES[kind])


def _minimal(rows: list[Row], key: str, name: str) -> dict[str, Any]:
    """The message with the discriminator and every required top-level field."""
    msg: dict[str, Any] = {key: name}
    for row_name, path, kind, required in rows:
        if row_name == name and required and "." not in path:
            msg[path] = _sample(name, path, kind)
    return msg


def _with(
    rows: list[Row], key: str, name: str, path: str, value: Any, *, drop: bool = False
) -> dict[str, Any]:
    """The minimal message with ``path`` set to ``value`` (or removed)."""
    msg = _minimal(rows, key, name)
    parts = path.split(".")
    node = msg
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            parent = ".".join(parts[: i + 1])
            kind = next(r[2] for r in rows if r[0] == name and r[1] == parent)
            node[part] = _sample(name, parent, kind)
        node = node[part]
    if drop:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
    return msg


def _get(obj: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        obj = obj[part]
    return obj


def _has_type(value: Any, kind: str) -> bool:
    checks: dict[str, Any] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "map": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "array": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "any": lambda v: True,
    }
    return bool(checks[kind](value))


def _wrong_values(kind: str) -> list[Any]:
    wrong: dict[str, list[Any]] = {
        "string": [123, ["s"]],
        "integer": ["x", True, 1.5, -1],
        "int": ["x", True, 1.5],
        "number": ["x", True],
        "boolean": ["x", 1],
        "object": ["x", [1]],
        "map": ["x", {"k": 1}],
        "array": ["x", [1]],
        "any": [],
    }
    return wrong[kind]


def _flatten(obj: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, value in obj.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _flatten(value, prefix + key + ".")
    return out


def _row_id(row: Row) -> str:
    return f"{row[0]}.{row[1]}"


# --- the tables cover the codec -------------------------------------------------------------


def test_tables_name_every_command_and_event() -> None:
    assert {r[0] for r in COMMAND_ROWS} | set(FIELDLESS_COMMANDS) == set(COMMANDS)
    assert {r[0] for r in EVENT_ROWS} == set(EVENTS)


@pytest.mark.parametrize("row", COMMAND_ROWS + EVENT_ROWS, ids=_row_id)
def test_wire_name_casing(row: Row) -> None:
    name, path, _, _ = row
    parts = path.split(".")
    for i, part in enumerate(parts):
        snake = i > 0 and parts[i - 1] == "sip"
        assert (SNAKE if snake else CAMEL).fullmatch(part), part
    assert CAMEL.fullmatch(name)


# --- commands -------------------------------------------------------------------------------


@pytest.mark.parametrize("row", COMMAND_ROWS, ids=_row_id)
def test_command_field(row: Row) -> None:
    name, path, kind, _ = row
    value = _sample(name, path, kind)
    command = parse_command(orjson.dumps(_with(COMMAND_ROWS, "command", name, path, value)))
    assert command.command == name
    wire = orjson.loads(command.to_json())
    assert wire["command"] == name
    out = _get(wire, path)
    assert _has_type(out, kind)
    if path not in OBJECT_PATHS:
        assert out == value


@pytest.mark.parametrize("row", COMMAND_ROWS, ids=_row_id)
def test_command_field_wrong_type(row: Row) -> None:
    name, path, kind, _ = row
    for wrong in _wrong_values(kind):
        msg = _with(COMMAND_ROWS, "command", name, path, wrong)
        with pytest.raises(CommandError) as info:
            parse_command(orjson.dumps(msg))
        assert info.value.command == name
        assert path.split(".")[-1] in info.value.message, (wrong, info.value.message)


@pytest.mark.parametrize("row", [r for r in COMMAND_ROWS if r[3]], ids=_row_id)
def test_command_required_field_missing(row: Row) -> None:
    name, path, _, _ = row
    msg = _with(COMMAND_ROWS, "command", name, path, None, drop=True)
    with pytest.raises(CommandError) as info:
        parse_command(orjson.dumps(msg))
    assert info.value.message == f"{name}: {path} is required"
    assert info.value.command == name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_minimal_serializes_only_what_was_sent(name: str) -> None:
    msg = _minimal(COMMAND_ROWS, "command", name)
    assert orjson.loads(parse_command(orjson.dumps(msg)).to_json()) == msg


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_emits_only_table_fields(name: str) -> None:
    msg = _minimal(COMMAND_ROWS, "command", name)
    for row in COMMAND_ROWS:
        if row[0] == name:
            msg = _merge(msg, _with(COMMAND_ROWS, "command", name, row[1], _sample(*row[:3])))
    wire = orjson.loads(parse_command(orjson.dumps(msg)).to_json())
    paths = {r[1] for r in COMMAND_ROWS if r[0] == name} | {"command"}
    assert _flatten(wire) <= paths | _inside_opaque(wire, paths)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _inside_opaque(wire: dict[str, Any], paths: set[str]) -> set[str]:
    """Keys inside objects the table types as a whole (``map``/``object`` samples)."""
    flat = _flatten(wire)
    return {p for p in flat if any(p.startswith(q + ".") and q not in OBJECT_PATHS for q in paths)}


# Spellings the reference lists as accepted-but-ignored upstream (or sent by the Go SDK):
# they must not be an error, and are not echoed.
IGNORED_COMMAND_FIELDS = [
    ("invite", "option.vad.samplerate", 16000),
    ("invite", "option.vad.ratio", 0.5),
    ("invite", "option.vad.maxBufferDurationSecs", 50),
    ("invite", "option.vad.endpoint", "http://vad"),
    ("invite", "option.vad.secretKey", "k"),
    ("invite", "option.vad.secretId", "i"),
    ("invite", "option.asr.sampleRate", 16000),
    ("invite", "option.tts.waitInputTimeout", 5000),
    ("invite", "option.sampleRate", 16000),
    ("invite", "option.playbook", "x.md"),
    ("invite", "option.sdp", "v=0"),
    ("addIceCandidate", "usernameFragment", "abcd"),
]


@pytest.mark.parametrize(("name", "path", "value"), IGNORED_COMMAND_FIELDS)
def test_documented_but_ignored_fields(name: str, path: str, value: Any) -> None:
    parents = {"option", "option.vad", "option.asr", "option.tts"}
    rows = COMMAND_ROWS + [(name, p, "object", False) for p in parents]
    command = parse_command(orjson.dumps(_with(rows, "command", name, path, value)))
    assert path not in _flatten(orjson.loads(command.to_json()))


@pytest.mark.parametrize("name", FIELDLESS_COMMANDS)
def test_fieldless_commands(name: str) -> None:
    frame = orjson.dumps({"command": name, "ignored": 1})
    assert orjson.loads(parse_command(frame).to_json()) == {"command": name}


# --- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("row", EVENT_ROWS, ids=_row_id)
def test_event_field(row: Row) -> None:
    name, path, kind, _ = row
    value = _sample(name, path, kind)
    event = parse_event(orjson.dumps(_with(EVENT_ROWS, "event", name, path, value)))
    assert event.event == name
    wire = orjson.loads(event.to_json())
    assert wire["event"] == name
    out = _get(wire, path)
    assert _has_type(out, kind)
    assert out == value


@pytest.mark.parametrize("row", EVENT_ROWS, ids=_row_id)
def test_event_field_wrong_type(row: Row) -> None:
    name, path, kind, _ = row
    for wrong in _wrong_values(kind):
        msg = _with(EVENT_ROWS, "event", name, path, wrong)
        with pytest.raises(EventError) as info:
            parse_event(orjson.dumps(msg))
        assert info.value.event == name
        assert path.split(".")[-1] in info.value.message


@pytest.mark.parametrize("row", [r for r in EVENT_ROWS if r[3]], ids=_row_id)
def test_event_required_field_missing(row: Row) -> None:
    name, path, _, _ = row
    msg = _with(EVENT_ROWS, "event", name, path, None, drop=True)
    with pytest.raises(EventError) as info:
        parse_event(orjson.dumps(msg))
    assert info.value.message == f"{name}: {path} is required"


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_event_optional_fields_are_omitted(name: str) -> None:
    """Rule 1: an event without its optional fields has no key for them (never null)."""
    msg = _minimal(EVENT_ROWS, "event", name)
    wire = orjson.loads(parse_event(orjson.dumps(msg)).to_json())
    required = {r[1] for r in EVENT_ROWS if r[0] == name and r[3] and "." not in r[1]}
    assert set(wire) == required | {"event"}
    assert next(iter(wire)) == "event"


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_event_emits_only_table_fields(name: str) -> None:
    msg = _minimal(EVENT_ROWS, "event", name)
    for row in EVENT_ROWS:
        if row[0] == name:
            msg = _merge(msg, _with(EVENT_ROWS, "event", name, row[1], _sample(*row[:3])))
    wire = orjson.loads(parse_event(orjson.dumps(msg)).to_json())
    paths = {r[1] for r in EVENT_ROWS if r[0] == name} | {"event"}
    assert _flatten(wire) <= paths | _inside_opaque(wire, paths)
    assert wire == msg


# --- §2.9 typical orders, with our hangup on every call type (PROTOCOL.md fix 2) ------------

FLOWS: dict[str, list[str]] = {
    "websocket": [
        "> invite", "< trackStart", "< answer", "< speaking", "< asrDelta", "< silence",
        "< asrFinal", "> tts", "< trackStart", "< metrics", "< trackEnd", "> hangup",
        "< hangup",
    ],
    "websocket-barge-in": [
        "> invite", "< trackStart", "< answer", "> tts", "< trackStart", "< speaking",
        "> interrupt", "< interruption", "< trackEnd", "< silence", "< asrFinal",
        "> history", "< addHistory", "> hangup", "< hangup",
    ],
    "webrtc": [
        "> invite", "< trackStart", "< answer", "> addIceCandidate", "> addIceCandidate",
        "< speaking", "< silence", "< asrFinal", "> play", "< trackStart", "< trackEnd",
        "> hangup", "< hangup",
    ],
    "outbound-sip": [
        "> invite", "< trackStart", "< ringing", "< mediaReady", "< answer", "< dtmf",
        "> sendDtmf", "< trackEnd", "< hangup",
    ],
    "outbound-sip-failure": ["> invite", "< trackStart", "< reject", "< error", "< hangup"],
    "inbound-sip": [
        "> ringing", "< incoming", "> accept", "< answer", "> refer", "< ringing", "< answer",
        "< hangup", "> hangup", "< hangup",
    ],
    "inbound-sip-rejected": ["> reject", "< hangup"],
    "bad-frame": ["> invite", "< trackStart", "< answer", "< error", "> hangup", "< hangup"],
}  # fmt: skip


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_typical_orders_are_representable(flow: str) -> None:
    seen = []
    for step in FLOWS[flow]:
        direction, name = step.split()
        if direction == ">":
            frame = orjson.dumps(_minimal(COMMAND_ROWS, "command", name))
            seen.append("> " + parse_command(parse_command(frame).to_json()).command)
        else:
            frame = orjson.dumps(_minimal(EVENT_ROWS, "event", name))
            seen.append("< " + parse_event(parse_event(frame).to_json()).event)
    assert seen == FLOWS[flow]
