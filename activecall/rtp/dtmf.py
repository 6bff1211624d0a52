"""DTMF as RFC 4733 telephone events (receive and send) and in SIP INFO bodies. No I/O.

* :class:`DtmfReceiver` turns telephone-event RTP packets into one :class:`DtmfDigit` per key
  press. An event is known by its RTP timestamp (its start): its updates and the three
  copies of its end packet carry the same timestamp and are not new digits. A long event
  split into segments (duration field full, RFC 4733 §2.5.1.3) stays one digit.
* :class:`DtmfSender` makes the event packets for digits to send: a start packet with the
  marker bit, an update every packet interval with the growing duration, the end packet sent
  three times (RFC 4733 §2.5.1.4), then a pause with audio before the next digit. The caller
  asks it every packet interval with the stream's current RTP timestamp.
* :func:`parse_info_dtmf` reads SIP INFO bodies: ``application/dtmf-relay``
  (``Signal=5`` / ``Duration=160``) and ``application/dtmf`` (the digit alone).
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from activecall.rtp.packet import PacketError, RtpPacket

__all__ = [
    "DTMF_DIGITS",
    "DtmfDigit",
    "DtmfError",
    "DtmfPacket",
    "DtmfReceiver",
    "DtmfSender",
    "InfoDtmf",
    "TelephoneEvent",
    "digit_to_event",
    "parse_info_dtmf",
]

DTMF_DIGITS = "0123456789*#ABCD"
"""The 16 DTMF keys; RFC 4733 event code ``n`` is ``DTMF_DIGITS[n]``."""

_EVENT = struct.Struct("!BBH")
_MAX_DURATION = 0xFFFF
_TS_MOD = 1 << 32
_REMEMBERED = 16  # event timestamps kept to recognise their updates and end copies


class DtmfError(ValueError):
    """A DTMF request or body that cannot be used; the message says why."""


def digit_to_event(digit: str) -> int:
    """RFC 4733 event code of a key (``0-9 * # A-D``, letters in any case)."""
    code = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if code < 0:
        raise DtmfError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    return code


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One RFC 4733 event block: code, end bit, volume (-dBm0) and duration (clock units)."""

    event: int
    end: bool
    volume: int
    duration: int

    @classmethod
    def parse_payload(cls, payload: bytes) -> list[TelephoneEvent]:
        """The event blocks of a telephone-event payload (several when events are packed)."""
        if not payload or len(payload) % 4:
            raise PacketError(
                f"telephone-event payload must be whole 4-byte blocks, got {len(payload)} bytes"
            )
        out = []
        for pos in range(0, len(payload), 4):
            event, flags, duration = _EVENT.unpack_from(payload, pos)
            out.append(cls(event, bool(flags & 0x80), flags & 0x3F, duration))
        return out

    def serialize(self) -> bytes:
        """The 4-byte block."""
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @property
    def digit(self) -> str | None:
        """The DTMF key of the event, or ``None`` for other events (flash, tones)."""
        return DTMF_DIGITS[self.event] if self.event < len(DTMF_DIGITS) else None


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    """One key press received: the key and the RTP timestamp its event started at."""

    digit: str
    timestamp: int
    volume: int


class DtmfReceiver:
    """RFC 4733 receive: telephone-event packets in, one digit per key press out."""

    __slots__ = ("_last", "_seen", "_seen_set")

    def __init__(self) -> None:
        self._seen: deque[int] = deque()
        self._seen_set: set[int] = set()
        self._last: tuple[int, int, int] | None = None  # (timestamp, event, duration)

    def reset(self) -> None:
        """Forget past events (the remote source changed)."""
        self._seen.clear()
        self._seen_set.clear()
        self._last = None

    def handle(self, packet: RtpPacket) -> list[DtmfDigit]:
        """The new key presses in a telephone-event packet (usually none or one).

        :class:`~activecall.rtp.packet.PacketError` if the payload is not telephone-event.
        """
        digits = []
        ts = packet.timestamp
        for block in TelephoneEvent.parse_payload(packet.payload):
            if ts not in self._seen_set:
                self._remember(ts)
                last = self._last
                # RFC 4733 §2.5.1.3: a new segment of a long event starts where the full
                # previous one ended, without the marker bit: not a new key press.
                continued = (
                    last is not None
                    and not packet.marker
                    and last[1] == block.event
                    and last[2] == _MAX_DURATION
                    and (last[0] + _MAX_DURATION) % _TS_MOD == ts
                )
                if not continued and block.digit is not None:
                    digits.append(DtmfDigit(block.digit, ts, block.volume))
                self._last = (ts, block.event, block.duration)
            elif self._last is not None and self._last[0] == ts:
                self._last = (ts, block.event, max(self._last[2], block.duration))
            # Packed events (RFC 4733 §2.5.1.5) follow each other without a gap.
            ts = (ts + block.duration) % _TS_MOD
        return digits

    def _remember(self, ts: int) -> None:
        self._seen.append(ts)
        self._seen_set.add(ts)
        if len(self._seen) > _REMEMBERED:
            self._seen_set.discard(self._seen.popleft())


@dataclass(frozen=True, slots=True)
class DtmfPacket:
    """One telephone-event packet to send: payload, RTP timestamp and marker bit."""

    payload: bytes
    timestamp: int
    marker: bool
    end: bool


class DtmfSender:
    """RFC 4733 send: digits in, event packets out, one call per packet interval.

    Each digit lasts ``duration_ms``; its end packet goes out three times, one per interval;
    ``pause_ms`` after the tone ends (the end copies included) the next digit starts.
    """

    __slots__ = (
        "_end_sent",
        "_pause_left",
        "_pause_ticks",
        "_queue",
        "_start_ts",
        "_ticks",
        "_tone_ticks",
        "_units",
        "pause_ms",
        "payload_type",
        "volume",
    )

    def __init__(
        self,
        payload_type: int,
        clock_rate: int,
        *,
        duration_ms: int = 100,
        pause_ms: int = 100,
        volume: int = 10,
        packet_ms: int = 20,
    ) -> None:
        if not 96 <= payload_type <= 127:
            raise DtmfError(f"telephone-event needs a dynamic payload type, got {payload_type}")
        if not 0 <= volume <= 63:
            raise DtmfError(f"volume {volume} is not in 0-63 (-dBm0)")
        if packet_ms <= 0 or duration_ms < packet_ms or pause_ms < 0:
            raise DtmfError("durations must be positive and a tone at least one packet long")
        self._units = clock_rate * packet_ms // 1000  # clock units per packet
        self._tone_ticks = -(-duration_ms // packet_ms)
        if self._tone_ticks * self._units > _MAX_DURATION:
            raise DtmfError(f"a {duration_ms} ms event overflows the 16-bit duration field")
        self.payload_type = payload_type
        self.volume = volume
        self.pause_ms = pause_ms
        self._pause_left = 0
        self._queue: deque[int] = deque()
        self._start_ts: int | None = None
        self._ticks = 0
        self._end_sent = 0
        self._pause_ticks = -(-pause_ms // packet_ms)

    def send(self, digits: str) -> None:
        """Queue ``digits`` (``0-9 * # A-D``); :class:`DtmfError` and nothing queued if bad."""
        if not digits:
            raise DtmfError("no digits to send")
        codes = [digit_to_event(d) for d in digits]
        self._queue.extend(codes)

    @property
    def busy(self) -> bool:
        """Whether digits are being sent or wait to be."""
        return self._start_ts is not None or bool(self._queue) or self._pause_left > 0

    def tick(self, timestamp: int) -> list[DtmfPacket] | None:
        """This interval's event packets, or ``None`` when it is for audio.

        ``timestamp`` is the stream's RTP timestamp now; the caller sends the packets and,
        for a list (even empty), skips this interval's audio.
        """
        if self._start_ts is None:
            if self._pause_left > 0:
                self._pause_left -= 1
                return None
            if not self._queue:
                return None
            self._start_ts = timestamp % _TS_MOD
            self._ticks = 0
            self._end_sent = 0
        code = self._queue[0]
        start = self._start_ts
        if self._ticks < self._tone_ticks:
            self._ticks += 1
            end = self._ticks == self._tone_ticks
            duration = self._ticks * self._units
            if end:
                self._end_sent = 1
            block = TelephoneEvent(code, end, self.volume, duration)
            return [DtmfPacket(block.serialize(), start, self._ticks == 1, end)]
        # The end packet's two more copies, then the pause.
        block = TelephoneEvent(code, True, self.volume, self._tone_ticks * self._units)
        self._end_sent += 1
        if self._end_sent >= 3:
            self._queue.popleft()
            self._start_ts = None
            self._pause_left = max(0, self._pause_ticks - 2)
        return [DtmfPacket(block.serialize(), start, False, True)]

    def cancel(self) -> None:
        """Drop the queued digits (the one being sent still ends properly)."""
        while len(self._queue) > (1 if self._start_ts is not None else 0):
            self._queue.pop()


@dataclass(frozen=True, slots=True)
class InfoDtmf:
    """A digit from a SIP INFO body, with its duration in ms when the body gives one."""

    digit: str
    duration_ms: int | None = None


def parse_info_dtmf(body: bytes | str, content_type: str) -> InfoDtmf:
    """The digit of a SIP INFO ``application/dtmf-relay`` or ``application/dtmf`` body.

    :class:`DtmfError` for another content type, a body without a signal, or a signal that
    is not a DTMF key (numbers 10-15 are read as RFC 4733 codes: ``*``, ``#``, ``A``-``D``).
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "application/dtmf":
        return InfoDtmf(_signal(text.strip()))
    if mime != "application/dtmf-relay":
        raise DtmfError(f"content type {content_type!r} is not a DTMF INFO body")
    fields = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip().lower()] = value.strip()
    if "signal" not in fields:
        raise DtmfError("application/dtmf-relay body has no Signal= line")
    duration = None
    if fields.get("duration"):
        try:
            duration = int(fields["duration"])
        except ValueError:
            raise DtmfError(f"Duration={fields['duration']!r} is not a number") from None
        if duration < 0:
            raise DtmfError(f"Duration={duration} is negative")
    return InfoDtmf(_signal(fields["signal"]), duration)


def _signal(value: str) -> str:
    if value.isdigit() and len(value) == 2 and 10 <= int(value) <= 15:
        return DTMF_DIGITS[int(value)]
    if len(value) != 1 or value.upper() not in DTMF_DIGITS:
        raise DtmfError(f"signal {value!r} is not a DTMF digit (0-9, *, #, A-D)")
    return value.upper()
