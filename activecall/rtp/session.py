"""One RTP session (RFC 3550) of a call, without I/O: what to accept, what to send, what to report.

:class:`RtpSession` takes datagrams with their source address and the time, and hands back
the packets to play; it makes the bytes of outgoing packets and of RTCP reports. The caller
owns the sockets and the clocks (``now_ms`` is any monotonic ms clock, ``wall_time`` Unix
seconds for the NTP field of sender reports).

* Receive: RFC 3550 A.1 sequence validation (a jump of more than 3000 needs a second
  packet in sequence to count as a restart), A.3 loss (expected, lost, fraction lost per
  report interval, extended highest sequence) and A.8 interarrival jitter. A new SSRC takes
  over once it sends two packets in sequence; its statistics start afresh.
* Symmetric latching: with ``latching`` on, the remote address is learned from the first
  packet with a negotiated payload type from an allowed source, and packets from anywhere
  else are dropped until :meth:`RtpSession.set_remote` (a new SDP) starts learning again.
* Send: sequence number, timestamp and SSRC; the marker bit on the first packet of each
  talkspurt (after :meth:`RtpSession.skip`).
* RTCP: an SR when we sent since the last report, else an RR, with a report block on the
  remote source and our CNAME, at a randomised interval (RFC 3550 §6.2: 0.5-1.5 times the
  nominal 5 s); the remote's reports about us give their loss and jitter, and the RTT.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from typing import Any, TypeAlias

from activecall.rtp.packet import (
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    RtpPacket,
    SdesChunk,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    serialize_rtcp,
)

__all__ = [
    "Address",
    "ReceiveStats",
    "RemoteReport",
    "RtpSession",
    "SendStats",
    "SessionStats",
    "ntp_middle",
]

Address: TypeAlias = tuple[str, int]

_SEQ_MOD = 1 << 16
_MAX_DROPOUT = 3000
_MAX_MISORDER = 100
_NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 (NTP) to 1970-01-01 (Unix)
_SENT_SR_MEMORY = 8


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    """What we received from the remote source (RFC 3550 A.3, A.8)."""

    ssrc: int | None
    packets: int
    octets: int
    expected: int
    lost: int
    fraction_lost: float
    jitter_ms: float
    highest_sequence: int
    ssrc_changes: int
    dropped: int


@dataclass(frozen=True, slots=True)
class SendStats:
    """What we sent."""

    ssrc: int
    packets: int
    octets: int


@dataclass(frozen=True, slots=True)
class RemoteReport:
    """The remote's latest reception report about our stream, and the RTT it gives."""

    fraction_lost: float
    cumulative_lost: int
    jitter_ms: float
    rtt_ms: float | None
    sent_packets: int = 0
    """Packets we had sent when the report arrived (what ``cumulative_lost`` is out of,
    give or take those in flight)."""


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Everything a CDR or ``/metrics`` shows about one RTP session."""

    receive: ReceiveStats
    send: SendStats
    remote: RemoteReport | None
    rtcp_sent: int = 0
    """Compound RTCP reports we sent (SR or RR, with a BYE at the end)."""
    rtcp_received: int = 0
    """RTCP datagrams received from the remote that parsed (malformed ones raise)."""
    packets_received_total: int = 0
    """RTP packets accepted over every source of the call (``receive`` is the current one's)."""
    packets_lost_total: int = 0
    """Packets lost over every source of the call (each source's loss, not below 0)."""
    octets_received_total: int = 0
    """Payload octets of the packets in ``packets_received_total``."""
    jitter_max_ms: float = 0.0
    """The highest interarrival jitter estimate of the call (every source; ``receive`` has the
    current one's, which is 0 for a source that only sends RFC 4733 events)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready) of the statistics."""
        return asdict(self)


class _Source:
    """RFC 3550 A.1/A.3/A.8 state for the remote SSRC."""

    __slots__ = (
        "bad_seq",
        "base_seq",
        "cycles",
        "expected_prior",
        "jitter",
        "last_arrival",
        "last_ts",
        "max_seq",
        "octets",
        "received",
        "received_prior",
        "ssrc",
    )

    def __init__(self, ssrc: int, seq: int) -> None:
        self.ssrc = ssrc
        self.jitter = 0.0  # timestamp units, RFC 3550 A.8 (kept unscaled, as a float)
        self.last_arrival: float | None = None
        self.last_ts = 0
        self.octets = 0
        self.init_seq(seq)

    def init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 without probation (the session confirms new sources itself)."""
        udelta = (seq - self.max_seq) % _SEQ_MOD
        if udelta < _MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD  # wrapped
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - _MAX_MISORDER:
            # A very large jump: believe it only when the next packet follows it.
            if seq == self.bad_seq:
                self.init_seq(seq)
            else:
                self.bad_seq = (seq + 1) % _SEQ_MOD
                return False
        # else: a duplicate or reordered packet
        self.received += 1
        return True

    def update_jitter(self, arrival: float, ts: int) -> None:
        if self.last_arrival is not None:
            dts = (ts - self.last_ts + (1 << 31)) % (1 << 32) - (1 << 31)
            d = abs((arrival - self.last_arrival) - dts)
            self.jitter += (d - self.jitter) / 16.0
        self.last_arrival = arrival
        self.last_ts = ts

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return max(-0x800000, min(0x7FFFFF, self.expected - self.received))

    def interval_fraction(self) -> int:
        """Fraction lost (1/256 units) since the last call (RFC 3550 A.3); starts a new one."""
        expected = self.expected
        expected_interval = expected - self.expected_prior
        self.expected_prior = expected
        received_interval = self.received - self.received_prior
        self.received_prior = self.received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval


class RtpSession:
    """The RTP/RTCP state of one call's audio stream; see the module docstring."""

    def __init__(
        self,
        *,
        clock_rate: int,
        payload_type: int,
        payload_types: Collection[int] = (),
        event_payload_types: Collection[int] = (),
        remote: Address | None = None,
        remote_rtcp: Address | None = None,
        rtcp_mux: bool = False,
        latching: bool = True,
        allowed: Callable[[Address], bool] | None = None,
        ssrc: int | None = None,
        cname: str | None = None,
        rtcp_interval_ms: float = 5000.0,
        rng: random.Random | None = None,
    ) -> None:
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} is not in 0-127")
        self._rng = rng if rng is not None else random.Random()
        self.clock_rate = clock_rate
        self.payload_type = payload_type
        """The payload type :meth:`send_audio` uses."""
        self.payload_types = frozenset(payload_types or (payload_type,)) | frozenset(
            event_payload_types
        )
        """Payload types accepted from the remote (audio and events)."""
        self.event_payload_types = frozenset(event_payload_types)
        self.latching = latching
        self.allowed = allowed
        self.ssrc = self._rng.getrandbits(32) if ssrc is None else ssrc
        self.cname = cname if cname is not None else f"activecall-{self.ssrc:08x}"
        self.rtcp_interval_ms = rtcp_interval_ms
        # RFC 3550 §5.1: random initial sequence number and timestamp.
        self._seq = self._rng.getrandbits(16)
        self._ts = self._rng.getrandbits(32)
        self._talkspurt = True
        self._sent_packets = 0
        self._sent_octets = 0
        self._sent_since_report = False
        self._last_send_ms: float | None = None
        self._last_send_ts = self._ts
        self._source: _Source | None = None
        self._candidate: tuple[int, int] | None = None  # (ssrc, seq) of a would-be new source
        self._ssrc_changes = 0
        self._dropped = 0
        self._last_sr: tuple[int, float] | None = None  # (LSR middle 32 bits, arrival ms)
        self._sent_srs: dict[int, float] = {}
        self._remote_report: RemoteReport | None = None
        self._next_rtcp_ms: float | None = None
        self._rtcp_sent = 0
        self._rtcp_received = 0
        self._accepted = 0  # RTP packets accepted, every source
        self._accepted_octets = 0
        self._jitter_peak = 0.0  # timestamp units, like _Source.jitter
        self._earlier_lost = 0  # loss of the sources before the current one
        self.remote_bye = False
        self.remote_rtp: Address | None = None
        self.remote_rtcp: Address | None = None
        self.rtcp_mux = rtcp_mux
        self._latched = False
        self.set_remote(remote, remote_rtcp, rtcp_mux=rtcp_mux)

    # ------------------------------------------------------------------------ addresses

    def set_remote(
        self, rtp: Address | None, rtcp: Address | None = None, *, rtcp_mux: bool = False
    ) -> None:
        """The remote address from SDP (new offer or answer); with latching, learn it again.

        RTCP goes to ``rtcp``, else to the RTP address with ``rtcp_mux``, else to port + 1.
        """
        self.remote_rtp = rtp
        self.rtcp_mux = rtcp_mux
        if rtcp is None and rtp is not None:
            rtcp = rtp if rtcp_mux else (rtp[0], rtp[1] + 1)
        self.remote_rtcp = rtcp
        self._latched = False

    @property
    def latched(self) -> bool:
        """Whether the remote address was learned from received packets."""
        return self._latched

    def _accept_source(self, source: Address, payload_type: int) -> bool:
        if self.allowed is not None and not self.allowed(source):
            return False
        if not self.latching:
            return True
        if self._latched:
            return source == self.remote_rtp
        if payload_type not in self.payload_types:
            return False
        # Symmetric RTP: answer where the packets come from (NAT), RTCP beside them until an
        # RTCP packet shows where it really comes from.
        if source != self.remote_rtp:
            self.remote_rtcp = source if self.rtcp_mux else (source[0], source[1] + 1)
        self.remote_rtp = source
        self._latched = True
        return True

    # -------------------------------------------------------------------------- receive

    def receive_rtp(self, data: bytes, source: Address, now_ms: float) -> RtpPacket | None:
        """Account for one RTP datagram; the packet to play, or ``None`` if it is dropped.

        :class:`~activecall.rtp.packet.PacketError` if the datagram is not RTP.
        """
        packet = RtpPacket.parse(data)
        if packet.payload_type not in self.payload_types or not self._accept_source(
            source, packet.payload_type
        ):
            self._dropped += 1
            return None
        src = self._source
        if src is None:
            src = self._source = _Source(packet.ssrc, packet.sequence_number)
        elif packet.ssrc != src.ssrc:
            cand = self._candidate
            if (
                cand is None
                or cand[0] != packet.ssrc
                or (cand[1] + 1) % _SEQ_MOD != (packet.sequence_number)
            ):
                self._candidate = (packet.ssrc, packet.sequence_number)
                self._dropped += 1
                return None
            # Two packets in sequence: the new source takes over (re-INVITE, transfer, ...).
            self._candidate = None
            self._ssrc_changes += 1
            self._earlier_lost += max(0, src.lost)
            self._last_sr = None
            src = self._source = _Source(packet.ssrc, packet.sequence_number)
        if not src.update_seq(packet.sequence_number):
            self._dropped += 1
            return None
        self._accepted += 1
        self._accepted_octets += len(packet.payload)
        src.octets += len(packet.payload)
        if packet.payload_type not in self.event_payload_types:
            # RFC 4733 events repeat their start timestamp: they would count as jitter.
            src.update_jitter(now_ms * self.clock_rate / 1000.0, packet.timestamp)
            if src.jitter > self._jitter_peak:
                self._jitter_peak = src.jitter
        return packet

    def receive_rtcp(self, data: bytes, source: Address, now_ms: float) -> list[RtcpPacket]:
        """Account for one RTCP datagram; its packets (:class:`PacketError` if malformed).

        From a source other than the latched remote host, nothing is taken into account.
        """
        packets = parse_rtcp(data)
        if self._latched and self.remote_rtp is not None:
            if source[0] != self.remote_rtp[0]:
                self._dropped += 1
                return packets
            self.remote_rtcp = source  # symmetric RTCP
        self._rtcp_received += 1
        src = self._source
        for packet in packets:
            if isinstance(packet, SenderReport) and src is not None and packet.ssrc == src.ssrc:
                self._last_sr = ((packet.ntp_timestamp >> 16) & 0xFFFFFFFF, now_ms)
            if isinstance(packet, SenderReport | ReceiverReport):
                for block in packet.reports:
                    if block.ssrc == self.ssrc:
                        self._remote_report = self._read_block(block, now_ms)
            elif isinstance(packet, Bye) and src is not None and src.ssrc in packet.sources:
                self.remote_bye = True
        return packets

    def _read_block(self, block: ReportBlock, now_ms: float) -> RemoteReport:
        rtt = None
        sent_ms = self._sent_srs.get(block.lsr) if block.lsr else None
        if sent_ms is not None:
            rtt = max(0.0, now_ms - sent_ms - block.dlsr * 1000.0 / 65536.0)
        return RemoteReport(
            fraction_lost=block.fraction_lost / 256.0,
            cumulative_lost=block.cumulative_lost,
            jitter_ms=block.jitter * 1000.0 / self.clock_rate,
            rtt_ms=rtt,
            sent_packets=self._sent_packets,
        )

    # ----------------------------------------------------------------------------- send

    @property
    def timestamp(self) -> int:
        """The RTP timestamp of the next audio packet."""
        return self._ts

    def send_audio(self, payload: bytes, samples: int, now_ms: float) -> bytes:
        """An audio packet at the current timestamp, which then advances by ``samples``.

        The first packet of a talkspurt (the first of all, or the first after :meth:`skip`)
        has the marker bit.
        """
        packet = self._packet(payload, self.payload_type, self._ts, self._talkspurt, now_ms)
        self._talkspurt = False
        self._ts = (self._ts + samples) % (1 << 32)
        return packet

    def skip(self, samples: int) -> None:
        """Let ``samples`` of time pass without audio (silence, hold, a DTMF event)."""
        self._ts = (self._ts + samples) % (1 << 32)
        self._talkspurt = True

    def send_event(
        self, payload: bytes, payload_type: int, timestamp: int, marker: bool, now_ms: float
    ) -> bytes:
        """A packet with its own timestamp and marker (RFC 4733 events keep their start)."""
        return self._packet(payload, payload_type, timestamp % (1 << 32), marker, now_ms)

    def _packet(
        self, payload: bytes, payload_type: int, ts: int, marker: bool, now_ms: float
    ) -> bytes:
        data = RtpPacket(payload_type, self._seq, ts, self.ssrc, payload, marker).serialize()
        self._seq = (self._seq + 1) % _SEQ_MOD
        self._sent_packets += 1
        self._sent_octets += len(payload)
        self._sent_since_report = True
        self._last_send_ms = now_ms
        self._last_send_ts = ts
        return data

    # ----------------------------------------------------------------------------- RTCP

    def poll_rtcp(self, now_ms: float, wall_time: float) -> bytes | None:
        """The compound report when one is due, else ``None``; call it every tick."""
        if self._next_rtcp_ms is None:
            # RFC 3550 §6.2: the first report after half an interval.
            self._next_rtcp_ms = now_ms + self._interval() / 2
            return None
        if now_ms < self._next_rtcp_ms:
            return None
        return self.build_rtcp(now_ms, wall_time)

    def build_rtcp(self, now_ms: float, wall_time: float, *, bye: str | None = None) -> bytes:
        """A compound report now (SR or RR, SDES CNAME, and a BYE if ``bye`` is given)."""
        self._next_rtcp_ms = now_ms + self._interval()
        blocks = (self._report_block(now_ms),) if self._source is not None else ()
        first: RtcpPacket
        if self._sent_since_report:
            ntp = int((wall_time + _NTP_EPOCH_OFFSET) * (1 << 32))
            elapsed = 0.0 if self._last_send_ms is None else now_ms - self._last_send_ms
            rtp_ts = (self._last_send_ts + round(elapsed * self.clock_rate / 1000.0)) % (1 << 32)
            first = SenderReport(
                self.ssrc,
                ntp,
                rtp_ts,
                self._sent_packets & 0xFFFFFFFF,
                self._sent_octets & 0xFFFFFFFF,
                blocks,
            )
            self._sent_srs[(ntp >> 16) & 0xFFFFFFFF] = now_ms
            while len(self._sent_srs) > _SENT_SR_MEMORY:
                del self._sent_srs[next(iter(self._sent_srs))]
        else:
            first = ReceiverReport(self.ssrc, blocks)
        self._sent_since_report = False
        self._rtcp_sent += 1
        cname = self.cname.encode()[:255]
        packets: list[RtcpPacket] = [
            first,
            SourceDescription((SdesChunk(self.ssrc, ((SDES_CNAME, cname),)),)),
        ]
        if bye is not None:
            packets.append(Bye((self.ssrc,), bye or None))
        return serialize_rtcp(packets)

    def _interval(self) -> float:
        return self.rtcp_interval_ms * self._rng.uniform(0.5, 1.5)

    def _report_block(self, now_ms: float) -> ReportBlock:
        src = self._source
        assert src is not None
        lsr, dlsr = 0, 0
        if self._last_sr is not None:
            lsr = self._last_sr[0]
            dlsr = min(0xFFFFFFFF, round((now_ms - self._last_sr[1]) * 65536 / 1000.0))
        return ReportBlock(
            ssrc=src.ssrc,
            fraction_lost=src.interval_fraction(),
            cumulative_lost=src.lost,
            highest_sequence=src.extended_max & 0xFFFFFFFF,
            jitter=min(0xFFFFFFFF, int(src.jitter)),
            lsr=lsr,
            dlsr=dlsr,
        )

    # ---------------------------------------------------------------------------- stats

    def stats(self) -> SessionStats:
        """Receive and send statistics, and the remote's view of our stream."""
        src = self._source
        if src is None:
            receive = ReceiveStats(None, 0, 0, 0, 0, 0.0, 0.0, 0, self._ssrc_changes, self._dropped)
        else:
            expected = src.expected
            fraction = max(0, expected - src.received) / expected if expected > 0 else 0.0
            receive = ReceiveStats(
                ssrc=src.ssrc,
                packets=src.received,
                octets=src.octets,
                expected=expected,
                lost=src.lost,
                fraction_lost=fraction,
                jitter_ms=src.jitter * 1000.0 / self.clock_rate,
                highest_sequence=src.extended_max,
                ssrc_changes=self._ssrc_changes,
                dropped=self._dropped,
            )
        send = SendStats(self.ssrc, self._sent_packets, self._sent_octets)
        lost = self._earlier_lost + (max(0, src.lost) if src is not None else 0)
        return SessionStats(
            receive,
            send,
            self._remote_report,
            rtcp_sent=self._rtcp_sent,
            rtcp_received=self._rtcp_received,
            packets_received_total=self._accepted,
            packets_lost_total=lost,
            octets_received_total=self._accepted_octets,
            jitter_max_ms=self._jitter_peak * 1000.0 / self.clock_rate,
        )


def ntp_middle(wall_time: float) -> int:
    """The middle 32 bits of the NTP timestamp of a Unix time (the LSR of RFC 3550)."""
    return (int((wall_time + _NTP_EPOCH_OFFSET) * (1 << 32)) >> 16) & 0xFFFFFFFF
