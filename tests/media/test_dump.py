"""The command/event dump (JSONL) and the call record (CDR) of reference §2.13."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from activecall.media.dump import CallRecord, EventDump, RecorderMedia, rfc3339, write_call_record
from activecall.protocol.events import TrackStartEvent


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dump_lines_are_exactly_the_upstream_shape(tmp_path: Path) -> None:
    path = tmp_path / "rec" / "s.1.events.jsonl"
    event = TrackStartEvent(track_id="s.1", timestamp=1700000000123)
    with EventDump(path) as dump:
        dump.command('{"command":"invite","option":{}}', timestamp=1700000000000)
        dump.event(event.to_json(), timestamp=1700000000123)
        dump.event({"event": "custom", "data": "é"}, timestamp=1700000000200)
        dump.write("sip", "INVITE sip:a@b SIP/2.0", timestamp=1700000000300)
    raw = path.read_bytes().splitlines()
    assert raw[0] == (
        b'{"type":"command","timestamp":1700000000000,'
        b'"content":"{\\"command\\":\\"invite\\",\\"option\\":{}}"}'
    )
    got = lines(path)
    assert [g["type"] for g in got] == ["command", "event", "event", "sip"]
    assert [list(g) for g in got] == [["type", "timestamp", "content"]] * 4
    assert json.loads(str(got[1]["content"])) == event.to_dict()
    assert json.loads(str(got[2]["content"])) == {"event": "custom", "data": "é"}
    assert got[3]["content"] == "INVITE sip:a@b SIP/2.0"


def test_dump_buffers_until_the_interval_has_passed(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    dump = EventDump(path, flush_interval_ms=1000)
    dump.event("{}", timestamp=10_000)
    dump.event("{}", timestamp=10_500)
    assert path.read_bytes() == b""
    dump.tick(10_999)
    assert path.read_bytes() == b""
    dump.event("{}", timestamp=11_000)  # the first line is now 1 s old: all three go out
    assert len(lines(path)) == 3
    dump.event("{}", timestamp=11_100)
    dump.tick(12_100)
    assert len(lines(path)) == 4
    dump.event("{}", timestamp=12_200)
    dump.close()
    dump.close()
    assert len(lines(path)) == 5
    with pytest.raises(ValueError, match="closed"):
        dump.event("{}")


def test_dump_flushes_a_full_buffer(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    dump = EventDump(path, max_buffer=1000)
    for _ in range(30):
        dump.event("x" * 40, timestamp=1)
    assert 0 < len(lines(path)) < 30
    dump.flush()
    assert len(lines(path)) == 30
    dump.close()


def test_dump_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    for ts in (1, 2):
        with EventDump(path) as dump:
            dump.event("{}", timestamp=ts)
    assert [g["timestamp"] for g in lines(path)] == [1, 2]


def test_dump_stamps_the_wall_clock_by_default(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with EventDump(path) as dump:
        dump.command("{}")
    stamp = lines(path)[0]["timestamp"]
    assert isinstance(stamp, int) and stamp > 1_600_000_000_000


START = datetime(2025, 3, 4, 23, 59, 58, 123456, tzinfo=UTC)


def record(**kwargs: object) -> CallRecord:
    fields: dict[str, object] = {
        "call_type": "webSocket",
        "call_id": "s.abc",
        "start_time": START,
        "end_time": START + timedelta(seconds=62),
    }
    fields.update(kwargs)
    return CallRecord(**fields)  # type: ignore[arg-type]


def test_call_record_json_fields() -> None:
    refer = record(call_type="b2bua", call_id="ref-1", status_code=200)
    cdr = record(
        option={"codec": "pcmu", "vad": {"speechPadding": 250}},
        ring_time=START + timedelta(seconds=1),
        answer_time=START + timedelta(seconds=2),
        caller="sip:alice@example.com",
        callee="sip:bob@example.com",
        status_code=200,
        hangup_reason="caller",
        hangup_messages=({"code": 200, "reason": "bye", "target": "bob"},),
        recorder=(RecorderMedia(track_id="s.abc", path="/rec/s.abc.wav", size=1044),),
        extras={"x-tenant": "t1"},
        dump_event_file="/rec/s.abc.events.jsonl",
        refer_callrecord=refer,
    )
    got = json.loads(cdr.to_json())
    assert list(got) == [
        "callType",
        "option",
        "callId",
        "startTime",
        "ringTime",
        "answerTime",
        "endTime",
        "caller",
        "callee",
        "statusCode",
        "hangupReason",
        "hangupMessages",
        "recorder",
        "extras",
        "dumpEventFile",
        "referCallrecord",
    ]
    assert got["startTime"] == "2025-03-04T23:59:58.123Z"
    assert got["endTime"] == "2025-03-05T00:01:00.123Z"
    assert got["recorder"] == [{"trackId": "s.abc", "path": "/rec/s.abc.wav", "size": 1044}]
    assert got["option"] == {"codec": "pcmu", "vad": {"speechPadding": 250}}
    assert got["referCallrecord"]["callId"] == "ref-1"
    assert got["referCallrecord"]["callType"] == "b2bua"


def test_absent_optional_fields_are_omitted() -> None:
    got = json.loads(record().to_json())
    assert got == {
        "callType": "webSocket",
        "callId": "s.abc",
        "startTime": "2025-03-04T23:59:58.123Z",
        "endTime": "2025-03-05T00:01:00.123Z",
        "caller": "",
        "callee": "",
        "statusCode": 0,
        "hangupMessages": [],
        "recorder": [],
    }


def test_times_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="start_time must be timezone-aware"):
        record(start_time=datetime(2025, 1, 1))


def test_rfc3339_is_utc() -> None:
    paris = timezone(timedelta(hours=1))
    assert rfc3339(datetime(2025, 1, 1, 1, 0, 0, 5000, tzinfo=paris)) == "2025-01-01T00:00:00.005Z"


def test_write_call_record_path(tmp_path: Path) -> None:
    cdr = record(start_time=datetime(2025, 3, 5, 0, 30, 1, tzinfo=timezone(timedelta(hours=2))))
    path = write_call_record(tmp_path, cdr)
    # The date of the path is the start's, in UTC (22:30:01 the day before).
    assert path == tmp_path / "20250304" / "20250304-223001_s.abc.json"
    assert json.loads(path.read_bytes())["callId"] == "s.abc"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_call_record_keeps_the_call_id_in_its_folder(tmp_path: Path) -> None:
    path = write_call_record(tmp_path, record(call_id="../../x"))
    assert path.parent == tmp_path / "20250304"
    assert path.name == "20250304-235958_.._.._x.json"
