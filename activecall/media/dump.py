"""What stays on disk after a call: the command/event dump and the call record (reference §2.13).

* ``<recording.path>/<id>.events.jsonl``: one line per command or event,
  ``{"type":"event"|"command"|"sip","timestamp":<epoch ms>,"content":"<the JSON text>"}``.
* The CDR: ``<root>/<YYYYMMDD>/<YYYYMMDD-HHMMSS>_<callId>.json``, a camelCase ``CallRecord``
  whose times are RFC 3339 UTC strings with milliseconds (``2025-01-02T03:04:05.678Z``), as
  upstream's chrono ``DateTime<Utc>`` serialises them; the date in the path is the start's, in
  UTC. Absent optional fields are omitted (PROTOCOL.md rule 1).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import orjson

from activecall.media.recorder import safe_file_name

__all__ = [
    "CallRecord",
    "DumpKind",
    "EventDump",
    "RecorderMedia",
    "rfc3339",
    "write_call_record",
]

DumpKind = Literal["event", "command", "sip"]


class EventDump:
    """Appends dump lines to ``path``, buffered.

    A line waits at most ``flush_interval_ms`` (measured on the lines' own timestamps, or by
    :meth:`tick`) or until ``max_buffer`` bytes are pending; :meth:`close` writes the rest.
    """

    __slots__ = (
        "_file",
        "_oldest",
        "_pending",
        "_pending_size",
        "flush_interval_ms",
        "max_buffer",
        "path",
    )

    def __init__(
        self, path: Path | str, *, flush_interval_ms: int = 1000, max_buffer: int = 65536
    ) -> None:
        self.path = Path(path)
        self.flush_interval_ms = flush_interval_ms
        self.max_buffer = max_buffer
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Append: a session id that comes back (a reconnect) must not erase the first dump.
        self._file: BinaryIO | None = self.path.open("ab")
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._oldest: int | None = None

    def event(self, content: str | bytes | Mapping[str, Any], timestamp: int | None = None) -> None:
        """Dump an event (its JSON text or object)."""
        self.write("event", content, timestamp)

    def command(
        self, content: str | bytes | Mapping[str, Any], timestamp: int | None = None
    ) -> None:
        """Dump a command (its JSON text or object)."""
        self.write("command", content, timestamp)

    def write(
        self,
        kind: DumpKind,
        content: str | bytes | Mapping[str, Any],
        timestamp: int | None = None,
    ) -> None:
        """Dump one line; ``timestamp`` is epoch ms (now if ``None``)."""
        if self._file is None:
            raise ValueError(f"event dump {self.path} is closed")
        ts = time.time_ns() // 1_000_000 if timestamp is None else timestamp
        if isinstance(content, bytes):
            text = content.decode()
        elif isinstance(content, str):
            text = content
        else:
            text = orjson.dumps(content).decode()
        line = orjson.dumps({"type": kind, "timestamp": ts, "content": text}) + b"\n"
        self._pending.append(line)
        self._pending_size += len(line)
        if self._oldest is None:
            self._oldest = ts
        self.tick(ts)

    def tick(self, now_ms: int) -> None:
        """Flush if the oldest pending line is ``flush_interval_ms`` old (for a periodic timer)."""
        if self._oldest is not None and (
            now_ms - self._oldest >= self.flush_interval_ms or self._pending_size >= self.max_buffer
        ):
            self.flush()

    def flush(self) -> None:
        """Write the pending lines now."""
        if self._file is None or not self._pending:
            return
        self._file.write(b"".join(self._pending))
        self._file.flush()
        self._pending.clear()
        self._pending_size = 0
        self._oldest = None

    def close(self) -> None:
        """Write the pending lines and close the file; idempotent."""
        if self._file is None:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventDump:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderMedia:
    """One recording of the call: ``{trackId, path, size}`` (bytes)."""

    track_id: str
    path: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """The call detail record; fields in upstream's order, times timezone-aware."""

    call_type: str  # webSocket, webrtc, sip, b2bua
    option: Mapping[str, Any] | None = None  # the call's CallOption, in wire form
    call_id: str
    start_time: datetime
    ring_time: datetime | None = None
    answer_time: datetime | None = None
    end_time: datetime
    caller: str = ""
    callee: str = ""
    status_code: int = 0
    hangup_reason: str | None = None
    hangup_messages: tuple[Mapping[str, Any], ...] = ()
    recorder: tuple[RecorderMedia, ...] = ()
    extras: Mapping[str, Any] | None = None
    dump_event_file: str | None = None
    refer_callrecord: CallRecord | None = None

    def __post_init__(self) -> None:
        for name in ("start_time", "ring_time", "answer_time", "end_time"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"CallRecord.{name} must be timezone-aware")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: camelCase keys, RFC 3339 times, ``None`` fields left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[_camel(f.name)] = _json_value(value)
        return out

    def to_json(self) -> bytes:
        """The CDR file's content (UTF-8 JSON)."""
        return orjson.dumps(self.to_dict())


def rfc3339(moment: datetime) -> str:
    """``moment`` as RFC 3339 UTC with milliseconds: ``2025-01-02T03:04:05.678Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def write_call_record(root: Path, record: CallRecord) -> Path:
    """Write ``record`` to ``<root>/<YYYYMMDD>/<YYYYMMDD-HHMMSS>_<callId>.json``; return it."""
    start = record.start_time.astimezone(UTC)
    folder = Path(root) / start.strftime("%Y%m%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{start.strftime('%Y%m%d-%H%M%S')}_{safe_file_name(record.call_id)}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".cdr.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(record.to_json())
        os.replace(tmp, path)  # a reader (an uploader) never sees half a record
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, CallRecord):
        return value.to_dict()
    if isinstance(value, RecorderMedia):
        return _media(value)
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def _media(media: RecorderMedia) -> dict[str, Any]:
    return {"trackId": media.track_id, "path": media.path, "size": media.size}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
