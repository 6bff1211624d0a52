"""RTP and RTCP packets (RFC 3550 §5, §6): frozen dataclasses with ``parse()`` and ``serialize()``.

:class:`RtpPacket` carries the fixed header, the CSRC list, a header extension and padding.
RTCP comes as compound packets: :func:`parse_rtcp` splits one datagram into
:class:`SenderReport`, :class:`ReceiverReport`, :class:`SourceDescription`, :class:`Bye` and
:class:`RtcpUnknown` (APP, feedback, XR: kept as bytes), and :func:`serialize_rtcp` joins them.
Every malformed input raises :class:`PacketError` saying what is wrong; nothing here does I/O.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

__all__ = [
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "Bye",
    "PacketError",
    "ReceiverReport",
    "ReportBlock",
    "RtcpPacket",
    "RtcpUnknown",
    "RtpExtension",
    "RtpPacket",
    "SdesChunk",
    "SenderReport",
    "SourceDescription",
    "is_rtcp",
    "parse_rtcp",
    "serialize_rtcp",
]

RTCP_SR = 200
"""RTCP packet type of a sender report."""
RTCP_RR = 201
"""RTCP packet type of a receiver report."""
RTCP_SDES = 202
"""RTCP packet type of a source description."""
RTCP_BYE = 203
"""RTCP packet type of a goodbye."""
SDES_CNAME = 1
"""SDES item type of the canonical name (the one item every SDES chunk carries)."""

_RTP_HEADER = struct.Struct("!BBHII")
_WORD = struct.Struct("!I")
_EXT_HEADER = struct.Struct("!HH")
_RTCP_HEADER = struct.Struct("!BBH")
_SR_INFO = struct.Struct("!IQIII")
_REPORT_BLOCK = struct.Struct("!IIIIII")
_MAX_CSRC = 15
_MAX_REPORTS = 31


class PacketError(ValueError):
    """A datagram that is not a valid RTP or RTCP packet; the message says why."""


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram on a multiplexed port is RTCP (RFC 5761 §4: packet type 192-223)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# --------------------------------------------------------------------------------------- RTP


@dataclass(frozen=True, slots=True)
class RtpExtension:
    """An RTP header extension: a 16-bit profile-defined id and data of whole 32-bit words."""

    profile: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.profile <= 0xFFFF:
            raise PacketError(f"extension profile {self.profile} is not a 16-bit value")
        if len(self.data) % 4:
            raise PacketError(f"extension data must be whole 32-bit words, got {len(self.data)}")


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``padding`` counts the padding bytes, its last included."""

    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrc: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise PacketError(f"payload type {self.payload_type} is not in 0-127")
        if not 0 <= self.sequence_number <= 0xFFFF:
            raise PacketError(f"sequence number {self.sequence_number} is not a 16-bit value")
        if not 0 <= self.timestamp <= 0xFFFFFFFF:
            raise PacketError(f"timestamp {self.timestamp} is not a 32-bit value")
        if not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise PacketError(f"SSRC {self.ssrc} is not a 32-bit value")
        if len(self.csrc) > _MAX_CSRC:
            raise PacketError(f"at most {_MAX_CSRC} CSRCs fit an RTP header, got {len(self.csrc)}")
        if not 0 <= self.padding <= 255:
            raise PacketError(f"padding {self.padding} is not in 0-255")

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse one RTP datagram; :class:`PacketError` if it is truncated or not RTP v2."""
        n = len(data)
        if n < 12:
            raise PacketError(f"RTP packet of {n} bytes is shorter than the 12-byte header")
        b0, b1, seq, ts, ssrc = _RTP_HEADER.unpack_from(data)
        if b0 >> 6 != 2:
            raise PacketError(f"RTP version {b0 >> 6}, expected 2")
        pos = 12
        cc = b0 & 0x0F
        csrc: tuple[int, ...] = ()
        if cc:
            end = pos + 4 * cc
            if end > n:
                raise PacketError(f"RTP header announces {cc} CSRCs but the packet ends first")
            csrc = struct.unpack_from(f"!{cc}I", data, pos)
            pos = end
        extension = None
        if b0 & 0x10:
            if pos + 4 > n:
                raise PacketError("RTP header extension is truncated")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            end = pos + 4 + 4 * words
            if end > n:
                raise PacketError(f"RTP header extension of {words} words runs past the packet")
            extension = RtpExtension(profile, bytes(data[pos + 4 : end]))
            pos = end
        stop = n
        padding = 0
        if b0 & 0x20:
            padding = data[n - 1]
            if padding == 0 or pos + padding > n:
                raise PacketError(f"RTP padding count {padding} does not fit the packet")
            stop = n - padding
        return cls(
            b1 & 0x7F,
            seq,
            ts,
            ssrc,
            bytes(data[pos:stop]),
            bool(b1 & 0x80),
            csrc,
            extension,
            padding,
        )

    def serialize(self) -> bytes:
        """The packet as bytes (padding bytes are zero, the last one is the count)."""
        b0 = 0x80 | len(self.csrc)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = self.payload_type | (0x80 if self.marker else 0)
        parts = [_RTP_HEADER.pack(b0, b1, self.sequence_number, self.timestamp, self.ssrc)]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            ext = self.extension
            parts.append(_EXT_HEADER.pack(ext.profile, len(ext.data) // 4))
            parts.append(ext.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


# -------------------------------------------------------------------------------------- RTCP


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception statistics about one source (RFC 3550 §6.4.1).

    ``fraction_lost`` is in 1/256 units; ``cumulative_lost`` is signed (duplicates make it
    negative); ``jitter`` is in timestamp units; ``lsr`` and ``dlsr`` (1/65536 s) give the RTT.
    """

    ssrc: int
    fraction_lost: int = 0
    cumulative_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction_lost <= 255:
            raise PacketError(f"fraction lost {self.fraction_lost} is not in 0-255")
        if not -0x800000 <= self.cumulative_lost <= 0x7FFFFF:
            raise PacketError(f"cumulative lost {self.cumulative_lost} is not a 24-bit value")
        for name in ("ssrc", "highest_sequence", "jitter", "lsr", "dlsr"):
            value = getattr(self, name)
            if not 0 <= value <= 0xFFFFFFFF:
                raise PacketError(f"report block {name} {value} is not a 32-bit value")

    @classmethod
    def _parse(cls, data: bytes | memoryview, pos: int) -> ReportBlock:
        ssrc, lost, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, pos)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        return cls(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr)

    def _serialize(self) -> bytes:
        lost = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _REPORT_BLOCK.pack(
            self.ssrc, lost, self.highest_sequence, self.jitter, self.lsr, self.dlsr
        )


@dataclass(frozen=True, slots=True)
class SenderReport:
    """RTCP SR (RFC 3550 §6.4.1): the sender's clocks and counts, plus reception reports.

    ``ntp_timestamp`` is the 64-bit NTP time (seconds since 1900 in 32.32 fixed point).
    ``extension`` keeps any profile-specific words after the report blocks.
    """

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    packet_type: ClassVar[int] = RTCP_SR

    def _body(self) -> tuple[int, bytes]:
        info = _SR_INFO.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        blocks = b"".join(r._serialize() for r in self.reports)
        return len(self.reports), info + blocks + self.extension


@dataclass(frozen=True, slots=True)
class ReceiverReport:
    """RTCP RR (RFC 3550 §6.4.2): reception reports from a participant that has not sent."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()
    extension: bytes = b""
    packet_type: ClassVar[int] = RTCP_RR

    def _body(self) -> tuple[int, bytes]:
        body = _WORD.pack(self.ssrc) + b"".join(r._serialize() for r in self.reports)
        return len(self.reports), body + self.extension


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """The SDES items of one source: ``(type, value)`` pairs, e.g. ``(SDES_CNAME, b"x@host")``."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item as text, if the chunk has one."""
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """RTCP SDES (RFC 3550 §6.5): a chunk of items per source."""

    chunks: tuple[SdesChunk, ...] = ()
    packet_type: ClassVar[int] = RTCP_SDES

    def _body(self) -> tuple[int, bytes]:
        parts = []
        for chunk in self.chunks:
            raw = bytearray(_WORD.pack(chunk.ssrc))
            for kind, value in chunk.items:
                if not 1 <= kind <= 255 or len(value) > 255:
                    raise PacketError(f"SDES item type {kind} with {len(value)} bytes is invalid")
                raw += bytes((kind, len(value))) + value
            # The item list ends with a zero byte, and the chunk with zeros to a word boundary.
            raw += bytes(4 - len(raw) % 4)
            parts.append(bytes(raw))
        return len(self.chunks), b"".join(parts)


@dataclass(frozen=True, slots=True)
class Bye:
    """RTCP BYE (RFC 3550 §6.6): these sources leave, with an optional reason."""

    sources: tuple[int, ...] = ()
    reason: str | None = None
    packet_type: ClassVar[int] = RTCP_BYE

    def _body(self) -> tuple[int, bytes]:
        body = b"".join(_WORD.pack(s) for s in self.sources)
        if self.reason is not None:
            text = self.reason.encode()
            if len(text) > 255:
                raise PacketError(f"BYE reason of {len(text)} bytes is longer than 255")
            raw = bytes((len(text),)) + text
            body += raw + bytes(-len(raw) % 4)
        return len(self.sources), body


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """An RTCP packet kept as it came (APP, RTPFB/PSFB feedback, XR, ...): header fields + body."""

    packet_type: int
    count: int = 0
    body: bytes = b""

    def _body(self) -> tuple[int, bytes]:
        if len(self.body) % 4:
            raise PacketError(f"RTCP body must be whole 32-bit words, got {len(self.body)}")
        return self.count, self.body


RtcpPacket: TypeAlias = SenderReport | ReceiverReport | SourceDescription | Bye | RtcpUnknown


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Split a compound RTCP datagram into its packets; :class:`PacketError` if malformed."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(view)
    if n < 4:
        raise PacketError(f"RTCP packet of {n} bytes is shorter than the 4-byte header")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            raise PacketError(f"{n - pos} stray bytes after the last RTCP packet")
        b0, ptype, words = _RTCP_HEADER.unpack_from(view, pos)
        if b0 >> 6 != 2:
            raise PacketError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + 4 * (words + 1)
        if end > n:
            raise PacketError(f"RTCP packet type {ptype} of {4 * (words + 1)} bytes is truncated")
        stop = end
        if b0 & 0x20:
            # RFC 3550 §6.4.1: only the last packet of a compound may be padded.
            if end != n:
                raise PacketError("RTCP padding on a packet that is not the last of the compound")
            pad = view[end - 1]
            if pad == 0 or pos + 4 + pad > end:
                raise PacketError(f"RTCP padding count {pad} does not fit the packet")
            stop = end - pad
        packets.append(_parse_one(ptype, b0 & 0x1F, bytes(view[pos + 4 : stop])))
        pos = end
    return packets


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """A compound RTCP datagram of ``packets`` in order."""
    out = []
    for packet in packets:
        try:
            count, body = packet._body()
        except struct.error as exc:
            raise PacketError(f"RTCP {type(packet).__name__} field out of range: {exc}") from None
        if count > _MAX_REPORTS:
            raise PacketError(f"at most {_MAX_REPORTS} items fit one RTCP packet, got {count}")
        out.append(_RTCP_HEADER.pack(0x80 | count, packet.packet_type, len(body) // 4) + body)
    return b"".join(out)


def _parse_one(ptype: int, count: int, body: bytes) -> RtcpPacket:
    if ptype == RTCP_SR:
        need = 24 + 24 * count
        if len(body) < need:
            raise PacketError(f"RTCP SR with {count} reports needs {need} bytes, got {len(body)}")
        ssrc, ntp, rtp_ts, packets, octets = _SR_INFO.unpack_from(body)
        return SenderReport(
            ssrc, ntp, rtp_ts, packets, octets, _report_blocks(body, 24, count), body[need:]
        )
    if ptype == RTCP_RR:
        need = 4 + 24 * count
        if len(body) < need:
            raise PacketError(f"RTCP RR with {count} reports needs {need} bytes, got {len(body)}")
        (ssrc,) = _WORD.unpack_from(body)
        return ReceiverReport(ssrc, _report_blocks(body, 4, count), body[need:])
    if ptype == RTCP_SDES:
        return SourceDescription(_sdes_chunks(body, count))
    if ptype == RTCP_BYE:
        return _bye(body, count)
    return RtcpUnknown(ptype, count, body)


def _report_blocks(body: bytes, pos: int, count: int) -> tuple[ReportBlock, ...]:
    return tuple(ReportBlock._parse(body, pos + 24 * i) for i in range(count))


def _sdes_chunks(body: bytes, count: int) -> tuple[SdesChunk, ...]:
    chunks = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(body):
            raise PacketError(f"RTCP SDES announces {count} chunks but holds fewer")
        (ssrc,) = _WORD.unpack_from(body, pos)
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= len(body):
                raise PacketError("RTCP SDES chunk has no end-of-items byte")
            kind = body[pos]
            if kind == 0:
                pos = (pos + 4) & ~3  # the zero byte, then padding to the next word
                break
            if pos + 2 > len(body) or pos + 2 + body[pos + 1] > len(body):
                raise PacketError(f"RTCP SDES item type {kind} is truncated")
            length = body[pos + 1]
            items.append((kind, body[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return tuple(chunks)


def _bye(body: bytes, count: int) -> Bye:
    need = 4 * count
    if len(body) < need:
        raise PacketError(f"RTCP BYE with {count} sources needs {need} bytes, got {len(body)}")
    sources = struct.unpack_from(f"!{count}I", body) if count else ()
    reason = None
    if len(body) > need:
        length = body[need]
        if need + 1 + length > len(body):
            raise PacketError("RTCP BYE reason runs past the packet")
        reason = body[need + 1 : need + 1 + length].decode("utf-8", "replace")
    return Bye(tuple(sources), reason)
