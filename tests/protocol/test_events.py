"""The event codec: exact bytes, round trips, omission of absent fields, the error path."""

from __future__ import annotations

import random

import orjson
import pytest

from activecall.protocol import (
    EVENTS,
    HANGUP_REASONS,
    AddHistoryEvent,
    AnswerEvent,
    AnswerMachineDetectionEvent,
    AsrDeltaEvent,
    AsrFinalEvent,
    Attendee,
    CommandError,
    CustomEvent,
    DtmfEvent,
    EouEvent,
    ErrorEvent,
    Event,
    EventError,
    FunctionCallEvent,
    HangupEvent,
    HoldEvent,
    InactivityEvent,
    IncomingEvent,
    InterruptEvent,
    InterruptionEvent,
    MediaReadyEvent,
    MessageEvent,
    MetricsEvent,
    OtherEvent,
    RejectEvent,
    RingbackStateEvent,
    RingingEvent,
    SilenceEvent,
    SpeakingEvent,
    TrackEndEvent,
    TrackStartEvent,
    TransferRequestEvent,
    error_event_for,
    event_from_dict,
    parse_command,
    parse_event,
)

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z in epoch ms
SID = "s.6f1c"
SST = "server-side-track"

FULL_EVENTS: list[Event] = [
    IncomingEvent(
        track_id=SID,
        timestamp=TS,
        caller="sip:a@x",
        callee="sip:b@x",
        sdp="v=0\r\n",
        headers={"X-Tenant": "t1"},
    ),
    AnswerEvent(track_id=SID, timestamp=TS, sdp="v=0\r\n", refer=True),
    MediaReadyEvent(track_id=SID, timestamp=TS),
    RejectEvent(track_id=SID, timestamp=TS, reason="Busy Here", code=486, refer=False),
    RingingEvent(track_id=SID, timestamp=TS, early_media=True, refer=True),
    HangupEvent(
        track_id=SID,
        timestamp=TS,
        reason="callee",
        initiator="callee",
        start_time="2026-01-01T00:00:00Z",
        hangup_time="2026-01-01T00:01:00Z",
        answer_time="2026-01-01T00:00:05Z",
        ringing_time="2026-01-01T00:00:01Z",
        from_=Attendee(username="alice", realm="x", source="sip:alice@x"),
        to=Attendee(username="bob", realm="y", source="sip:bob@y"),
        extra={"X-Order": "7", "score": 3, "tags": ["a"]},
        refer=False,
    ),
    SpeakingEvent(
        track_id=SID,
        timestamp=TS,
        start_time=TS - 250,
        is_filler=False,
        confidence=1.0,
        refer=True,
    ),
    SilenceEvent(track_id=SID, timestamp=TS, start_time=TS - 900, duration=800, refer=True),
    EouEvent(
        track_id=SID, timestamp=TS, completed=True, interrupt_point="12", text="ok", refer=True
    ),
    AsrDeltaEvent(
        track_id=SID,
        index=2,
        timestamp=TS,
        start_time=TS - 500,
        end_time=TS,
        text="hel",
        is_filler=False,
        confidence=0.5,
        task_id="t",
        refer=True,
    ),
    AsrFinalEvent(
        track_id=SID,
        index=2,
        timestamp=TS,
        start_time=TS - 500,
        end_time=TS,
        text="hello",
        is_filler=True,
        confidence=0.75,
        task_id="t",
        refer=True,
    ),
    DtmfEvent(track_id=SID, timestamp=TS, digit="#", refer=True),
    HoldEvent(track_id=SID, timestamp=TS, on_hold=True, refer=True),
    TransferRequestEvent(
        track_id=SID, timestamp=TS, refer_to="sip:c@x", referred_by="sip:b@x", refer=True
    ),
    MessageEvent(track_id=SID, timestamp=TS, body="hi", content_type="text/plain", refer=True),
    TrackStartEvent(track_id=SST, timestamp=TS, play_id="p1"),
    TrackEndEvent(track_id=SST, timestamp=TS, duration=1234, ssrc=4_000_000_000, play_id="p1"),
    InterruptionEvent(
        track_id=SST,
        timestamp=TS,
        play_id="p1",
        subtitle="Hello there",
        position=6,
        total_duration=3000,
        current=1200,
    ),
    InactivityEvent(track_id=SID, timestamp=TS),
    MetricsEvent(
        timestamp=TS,
        key="completed.tts.aliyun",
        duration=480,
        data={"playId": "p1", "cached": False, "length": 12},
    ),
    ErrorEvent(
        track_id=SID,
        timestamp=TS,
        sender="asr",
        error="connection refused",
        code=502,
        command="tts",
    ),
    AddHistoryEvent(sender=SID, timestamp=TS, speaker="assistant", text="Hi!"),
    FunctionCallEvent(
        track_id=SID, call_id="call_1", name="lookup", arguments='{"id":7}', timestamp=TS
    ),
    InterruptEvent(receiver=SST),
    CustomEvent(timestamp=TS, sender="crm", data=[1, "two", {"three": None}]),
    RingbackStateEvent(
        track_id=SID,
        timestamp=TS,
        state="human_voice",
        state_index=10,
        confidence=0.875,
        prev_state="ringing",
        prev_confidence=0.625,
        refer=False,
        is_final=True,
    ),
    AnswerMachineDetectionEvent(
        track_id=SID, timestamp=TS, start_time=TS - 10, end_time=TS, text="leave a message"
    ),
    OtherEvent(track_id=SID, timestamp=TS, sender="plugin", extra={"k": "v"}),
]

MINIMAL_EVENTS: list[Event] = [
    IncomingEvent(track_id=SID, timestamp=TS, caller="a", callee="b", sdp=""),
    AnswerEvent(track_id=SID, timestamp=TS, sdp=""),
    MediaReadyEvent(track_id=SID, timestamp=TS),
    RejectEvent(track_id=SID, timestamp=TS, reason="r"),
    RingingEvent(track_id=SID, timestamp=TS, early_media=False),
    HangupEvent(track_id=SID, timestamp=TS, start_time="s", hangup_time="h"),
    SpeakingEvent(track_id=SID, timestamp=TS, start_time=TS),
    SilenceEvent(track_id=SID, timestamp=TS, start_time=TS, duration=0),
    EouEvent(track_id=SID, timestamp=TS, completed=False),
    AsrDeltaEvent(track_id=SID, index=0, timestamp=TS, text=""),
    AsrFinalEvent(track_id=SID, index=0, timestamp=TS, text=""),
    DtmfEvent(track_id=SID, timestamp=TS, digit="1"),
    HoldEvent(track_id=SID, timestamp=TS, on_hold=False),
    TransferRequestEvent(track_id=SID, timestamp=TS, refer_to="sip:c@x"),
    MessageEvent(track_id=SID, timestamp=TS, body=""),
    TrackStartEvent(track_id=SID, timestamp=TS),
    TrackEndEvent(track_id=SID, timestamp=TS, duration=0, ssrc=0),
    InterruptionEvent(track_id=SST, timestamp=TS, total_duration=0, current=0),
    InactivityEvent(track_id=SID, timestamp=TS),
    MetricsEvent(timestamp=TS, key="k", duration=0, data={}),
    ErrorEvent(track_id=SID, timestamp=TS, sender="tts", error="e"),
    AddHistoryEvent(timestamp=TS, speaker="user", text="t"),
    FunctionCallEvent(track_id=SID, call_id="c", name="n", arguments="{}", timestamp=TS),
    InterruptEvent(),
    CustomEvent(timestamp=TS, data=None),
    RingbackStateEvent(
        track_id=SID, timestamp=TS, state="ringing", state_index=3, confidence=0.5, is_final=False
    ),
    AnswerMachineDetectionEvent(track_id=SID, timestamp=TS, start_time=0, end_time=0, text=""),
    OtherEvent(track_id=SID, timestamp=TS, sender="x"),
]


def test_every_event_has_examples() -> None:
    assert sorted(e.event for e in FULL_EVENTS) == sorted(EVENTS)
    assert sorted(e.event for e in MINIMAL_EVENTS) == sorted(EVENTS)


@pytest.mark.parametrize("event", FULL_EVENTS + MINIMAL_EVENTS, ids=lambda e: e.event)
def test_round_trip(event: Event) -> None:
    assert parse_event(event.to_json()) == event
    assert event_from_dict(event.to_dict()) == event


@pytest.mark.parametrize("event", MINIMAL_EVENTS, ids=lambda e: e.event)
def test_absent_optional_fields_are_omitted(event: Event) -> None:
    wire = orjson.loads(event.to_json())
    nullable = {"data"}  # `data: any` is required and may be null
    assert all(v is not None for k, v in wire.items() if k not in nullable)
    full = next(e for e in FULL_EVENTS if e.event == event.event)
    assert set(wire) <= set(orjson.loads(full.to_json()))


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            TrackStartEvent(track_id=SID, timestamp=TS),
            b'{"event":"trackStart","trackId":"s.6f1c","timestamp":1767225600000}',
        ),
        (
            AnswerEvent(track_id=SID, timestamp=TS, sdp=""),
            b'{"event":"answer","trackId":"s.6f1c","timestamp":1767225600000,"sdp":""}',
        ),
        (
            SilenceEvent(track_id=SID, timestamp=TS, start_time=TS - 900, duration=800),
            b'{"event":"silence","trackId":"s.6f1c","timestamp":1767225600000,'
            b'"startTime":1767225599100,"duration":800}',
        ),
        (
            AsrFinalEvent(track_id=SID, index=0, timestamp=TS, text="hi", confidence=1.0),
            b'{"event":"asrFinal","trackId":"s.6f1c","index":0,"timestamp":1767225600000,'
            b'"text":"hi","confidence":1.0}',
        ),
        (
            HangupEvent(
                track_id=SID,
                timestamp=TS,
                reason="caller",
                initiator="caller",
                start_time="2026-01-01T00:00:00Z",
                hangup_time="2026-01-01T00:00:09Z",
            ),
            b'{"event":"hangup","trackId":"s.6f1c","timestamp":1767225600000,"reason":"caller",'
            b'"initiator":"caller","startTime":"2026-01-01T00:00:00Z",'
            b'"hangupTime":"2026-01-01T00:00:09Z"}',
        ),
        (InterruptEvent(), b'{"event":"interrupt"}'),
    ],
    ids=lambda v: getattr(v, "event", ""),
)
def test_exact_bytes(event: Event, expected: bytes) -> None:
    assert event.to_json() == expected


def test_error_event_for_a_rejected_command() -> None:
    with pytest.raises(CommandError) as info:
        parse_command('{"command":"tts","text":"x","autoHangup":1}')
    event = error_event_for(info.value, SID, TS)
    assert event == ErrorEvent(
        track_id=SID,
        timestamp=TS,
        sender="command",
        error="tts: autoHangup must be a boolean, got an integer",
        command="tts",
    )
    assert orjson.loads(event.to_json()) == {
        "event": "error",
        "trackId": SID,
        "timestamp": TS,
        "sender": "command",
        "error": "tts: autoHangup must be a boolean, got an integer",
        "command": "tts",
    }


def test_error_event_for_invalid_json_names_no_command() -> None:
    with pytest.raises(CommandError) as info:
        parse_command(b"{")
    assert "command" not in orjson.loads(error_event_for(info.value, SID, TS).to_json())


def test_hangup_reasons_are_plain_words() -> None:
    assert all(r.isalpha() for r in HANGUP_REASONS)


def test_parses_an_upstream_style_hangup() -> None:
    # What active-call 0.3.83 sends: a Debug-string reason; the codec carries it unchanged.
    text = (
        '{"event":"hangup","trackId":"s.1","timestamp":1,"reason":"Some(ByCallee)",'
        '"initiator":"callee","startTime":"2026-01-01T00:00:00.000Z",'
        '"hangupTime":"2026-01-01T00:00:09.123Z","from":{"username":"a","realm":"x",'
        '"source":"sip:a@x"},"extra":{"X-Tag":"1"},"unknown":true}'
    )
    event = parse_event(text)
    assert isinstance(event, HangupEvent)
    assert event.reason == "Some(ByCallee)"
    assert event.from_ == Attendee(username="a", realm="x", source="sip:a@x")


@pytest.mark.parametrize(
    ("text", "needle", "name"),
    [
        ("", "invalid JSON", None),
        ("[]", "JSON object", None),
        ('{"trackId":"x"}', "'event'", None),
        ('{"event":false}', "'event'", None),
        ('{"event":"ping","timestamp":1}', "unknown event 'ping'", "ping"),
        ('{"event":"binary","trackId":"x","timestamp":1}', "unknown event", "binary"),
        ('{"event":"answer","trackId":"x","timestamp":1}', "sdp is required", "answer"),
        ('{"event":"answer","trackId":"x","timestamp":"1","sdp":""}', "timestamp", "answer"),
        ('{"event":"answer","trackId":"x","timestamp":-1,"sdp":""}', "timestamp", "answer"),
        (
            '{"event":"hangup","trackId":"x","timestamp":1,"startTime":"s","hangupTime":"h",'
            '"from":{"username":"a"}}',
            "from.realm is required",
            "hangup",
        ),
        (
            '{"event":"speaking","trackId":"x","timestamp":1,"startTime":1,"confidence":"1"}',
            "confidence",
            "speaking",
        ),
        ('{"event":"metrics","timestamp":1,"key":"k","duration":1}', "data is required", "metrics"),
    ],
)
def test_bad_event_frames(text: str, needle: str, name: str | None) -> None:
    with pytest.raises(EventError) as info:
        parse_event(text)
    assert needle in info.value.message
    assert info.value.event == name


def test_fuzzed_event_frames_give_an_event_or_event_error() -> None:
    rng = random.Random(7)
    seeds = [e.to_json() for e in FULL_EVENTS]
    parsed = 0
    for _ in range(4000):
        buf = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 3)):
            pos = rng.randrange(len(buf))
            if rng.random() < 0.5:
                del buf[pos]
            else:
                buf[pos] = rng.choice(b'{}[]":,0123456789-.etrufalsn\xff')
        try:
            event = parse_event(bytes(buf))
        except EventError:
            continue
        assert parse_event(event.to_json()) == event
        parsed += 1
    assert parsed > 50
