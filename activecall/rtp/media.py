"""The media of one SIP call leg without I/O: RTP datagrams in and out, 16 kHz frames for the call.

:class:`RtpMediaPipeline` joins the cores of this package for a negotiated stream
(:class:`~activecall.rtp.sdp.NegotiatedMedia`):

* in: datagram -> :class:`~activecall.rtp.session.RtpSession` (source, SSRC, statistics) ->
  :class:`~activecall.rtp.jitter.JitterBuffer` -> decoder (PCMU/PCMA/G.722 with our kernels,
  Opus with PyAV's libopus) -> 16 kHz 20 ms frames, one per tick. Telephone events go to the
  :class:`~activecall.rtp.dtmf.DtmfReceiver` at once; the in-band detector listens to the
  decoded audio when no telephone-event was negotiated (``inband_dtmf=None``) or always.
* out: the call's 16 kHz agent frame -> encoder -> RTP packets of the negotiated ``ptime``, or
  the RFC 4733 packets of digits being sent (``send_dtmf``); RTCP reports when due.

The worker owns the socket and the clocks: it calls :meth:`RtpMediaPipeline.receive` for each
datagram and :meth:`RtpMediaPipeline.tick` every 20 ms, and sends the datagrams it gets back.
A lost packet is concealed by repeating the last one at half, then a quarter of its level,
then silence; on hold the remote audio is zeroed (reference §2.6) and nothing is sent.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeAlias

import numpy as np

from activecall._native.dtmf import DtmfDetector
from activecall._native.resample import Resampler
from activecall.media.codec import FRAME_SAMPLES, INTERNAL_RATE, CallCodec, Pcm, Reframer
from activecall.rtp.dtmf import DtmfError, DtmfReceiver, DtmfSender
from activecall.rtp.jitter import JitterBuffer, JitterReport, Lost
from activecall.rtp.packet import RtpPacket, is_rtcp
from activecall.rtp.sdp import NegotiatedMedia
from activecall.rtp.session import Address, RtpSession, SessionStats

__all__ = [
    "Datagram",
    "DigitReceived",
    "MediaReady",
    "MediaStats",
    "PipelineEvent",
    "RemoteBye",
    "RtpMediaPipeline",
    "TickOutput",
]

_SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
_MAX_QUEUED_FRAMES = 3  # decoded frames waiting beyond this are dropped (bounded latency)
_SAMPLES_PER_MS = INTERNAL_RATE // 1000


@dataclass(frozen=True, slots=True)
class Datagram:
    """A datagram to send: to the RTP address, or (``rtcp``) to the RTCP one."""

    data: bytes
    address: Address
    rtcp: bool = False


@dataclass(frozen=True, slots=True)
class DigitReceived:
    """A DTMF key press from the remote: RFC 4733 event or in-band tone."""

    digit: str
    source: Literal["rfc4733", "inband"]


@dataclass(frozen=True, slots=True)
class MediaReady:
    """The first RTP packet of the remote arrived (the ``mediaReady`` event)."""


@dataclass(frozen=True, slots=True)
class RemoteBye:
    """The remote source said goodbye in RTCP."""


PipelineEvent: TypeAlias = DigitReceived | MediaReady | RemoteBye


@dataclass(slots=True)
class TickOutput:
    """One tick's result: the remote's 20 ms frame, datagrams to send, events."""

    pcm: Pcm
    datagrams: list[Datagram] = field(default_factory=list)
    events: list[PipelineEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MediaStats:
    """Statistics of the leg for the CDR and ``/metrics``.

    In a call record it is ``extras.rtp`` (:meth:`to_dict`): ``session.receive`` is our view
    of the remote's current stream (``lost``, ``fraction_lost``, RFC 3550 ``jitter_ms``),
    ``session.remote`` the remote's last RTCP report on ours (``fraction_lost``,
    ``cumulative_lost``, ``jitter_ms``, ``rtt_ms``, ``sent_packets``; ``null`` without RTCP),
    ``session.packets_received_total``/``packets_lost_total``/``jitter_max_ms`` the whole
    call's, ``session.rtcp_sent``/``rtcp_received`` the reports; ``jitter`` the buffer's.
    """

    session: SessionStats
    jitter: JitterReport
    concealed_packets: int
    silent_frames: int
    dropped_frames: int
    bad_datagrams: int
    digits_received: int
    digits_sent: int

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-ready)."""
        return asdict(self)


# ----------------------------------------------------------------------------------- codecs


class _Decoder:
    """Payloads of one codec to 16 kHz PCM."""

    def __init__(self, codec: str) -> None:
        self._opus: Any = None
        if codec == "opus":
            import av

            ctx = av.CodecContext.create("libopus", "r")
            ctx.sample_rate = 48000
            ctx.layout = "mono"  # libopus down-mixes a stereo stream
            ctx.open()
            self._opus = ctx
            self._packet = av.Packet
            self._resampler = Resampler(48000, INTERNAL_RATE)
        else:
            self._call = CallCodec.create(codec).decoder()

    def decode(self, payload: bytes) -> Pcm:
        if self._opus is None:
            return self._call.decode(payload)
        if not payload:
            return _SILENCE[:0]
        frames = self._opus.decode(self._packet(payload))
        pcm = [f.to_ndarray().reshape(-1).astype(np.int16, copy=False) for f in frames]
        return self._resampler.process(np.concatenate(pcm)) if pcm else _SILENCE[:0]


class _Encoder:
    """16 kHz PCM of one packet time to one payload; ``clock`` RTP units per packet."""

    def __init__(self, codec: str, ptime: int, clock_rate: int) -> None:
        self.clock = clock_rate * ptime // 1000
        self._opus: Any = None
        if codec == "opus":
            import av

            ctx = av.CodecContext.create("libopus", "w")
            ctx.sample_rate = INTERNAL_RATE
            ctx.layout = "mono"
            ctx.format = "s16"
            ctx.bit_rate = 32000
            ctx.options = {"application": "voip", "frame_duration": str(ptime)}
            ctx.open()
            self._opus = ctx
            self._frame = av.AudioFrame
            self._pts = 0
        else:
            self._call = CallCodec.create(codec).encoder()

    def encode(self, pcm: Pcm) -> bytes:
        if self._opus is None:
            # Sample codecs: a packet is its 20 ms frames back to back.
            return b"".join(
                self._call.encode_frame(pcm[i : i + FRAME_SAMPLES])
                for i in range(0, len(pcm), FRAME_SAMPLES)
            )
        frame = self._frame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INTERNAL_RATE
        frame.pts = self._pts
        self._pts += len(pcm)
        return b"".join(bytes(p) for p in self._opus.encode(frame))


# --------------------------------------------------------------------------------- pipeline


class RtpMediaPipeline:
    """One call leg's RTP media; see the module docstring."""

    def __init__(
        self,
        media: NegotiatedMedia,
        *,
        latching: bool = True,
        allowed: Callable[[Address], bool] | None = None,
        inband_dtmf: bool | None = None,
        ssrc: int | None = None,
        cname: str | None = None,
        rtcp_interval_ms: float = 5000.0,
        min_delay_ms: float = 20.0,
        max_delay_ms: float = 500.0,
        rng: random.Random | None = None,
    ) -> None:
        self.media = media
        self._inband_setting = inband_dtmf
        self.session = RtpSession(
            clock_rate=media.clock_rate,
            payload_type=media.payload_type,
            payload_types=[pt for pt, _ in media.receive_codecs],
            event_payload_types=_events(media),
            remote=(media.remote_address, media.remote_port),
            remote_rtcp=media.remote_rtcp,
            rtcp_mux=media.rtcp_mux,
            latching=latching,
            allowed=allowed,
            ssrc=ssrc,
            cname=cname,
            rtcp_interval_ms=rtcp_interval_ms,
            rng=rng,
        )
        self.jitter = JitterBuffer(
            media.clock_rate, min_delay_ms=min_delay_ms, max_delay_ms=max_delay_ms
        )
        self._jitter_settings = (min_delay_ms, max_delay_ms)
        self._dtmf_in = DtmfReceiver()
        self._frames: deque[Pcm] = deque()
        self._reframer = Reframer(FRAME_SAMPLES)
        self._last_packet: Pcm = _SILENCE[:0]
        self._loss_run = 0
        self._remote_ssrc: int | None = None
        self._media_ready = False
        self._bye_reported = False
        self._pending: list[PipelineEvent] = []
        self._concealed = self._silent = self._dropped = self._bad = 0
        self._digits_in = self._digits_out = 0
        self._configure(media)

    def _configure(self, media: NegotiatedMedia) -> None:
        """Coders, DTMF and packetiser for ``media`` (at start and after a new offer)."""
        self.media = media
        self._decoders: dict[int, _Decoder] = {}
        self._codecs = dict(media.receive_codecs)
        self._encoder = _Encoder(media.codec, media.ptime, media.clock_rate)
        self._packetiser = Reframer(media.ptime * _SAMPLES_PER_MS)
        self._tick_clock = media.clock_rate * FRAME_SAMPLES // INTERNAL_RATE
        self._dtmf_out = (
            DtmfSender(media.telephone_event, media.clock_rate)
            if media.telephone_event is not None
            else None
        )
        inband = self._inband_setting
        if inband is None:
            inband = media.receive_telephone_event is None
        self._inband = DtmfDetector(INTERNAL_RATE) if inband else None

    # ------------------------------------------------------------------------------ input

    def receive(self, data: bytes, source: Address, now_ms: float) -> list[PipelineEvent]:
        """Take one datagram from the media port (RTP, or RTCP with rtcp-mux).

        Returns the events it causes at once (first packet, RFC 4733 digits). Raises
        :class:`~activecall.rtp.packet.PacketError` for a datagram that is not RTP/RTCP;
        nothing else changes then.
        """
        if is_rtcp(data):
            return self.receive_rtcp(data, source, now_ms)
        try:
            packet = self.session.receive_rtp(data, source, now_ms)
        except ValueError:
            self._bad += 1
            raise
        if packet is None:
            return []
        events: list[PipelineEvent] = []
        if not self._media_ready:
            self._media_ready = True
            events.append(MediaReady())
        if packet.ssrc != self._remote_ssrc:
            if self._remote_ssrc is not None:
                # A new source (re-INVITE, transfer): its numbering and clock start afresh.
                self.jitter.reset()
                self._dtmf_in.reset()
            self._remote_ssrc = packet.ssrc
        if packet.payload_type == self.media.receive_telephone_event:
            self.jitter.skip(packet)
            try:
                digits = self._dtmf_in.handle(packet)
            except ValueError:
                self._bad += 1
                raise
            self._digits_in += len(digits)
            events += [DigitReceived(d.digit, "rfc4733") for d in digits]
        else:
            self.jitter.put(packet, now_ms)
        return events

    def receive_rtcp(self, data: bytes, source: Address, now_ms: float) -> list[PipelineEvent]:
        """Take one datagram from the RTCP port; :class:`PacketError` if it is not RTCP."""
        try:
            self.session.receive_rtcp(data, source, now_ms)
        except ValueError:
            self._bad += 1
            raise
        if self.session.remote_bye and not self._bye_reported:
            self._bye_reported = True
            return [RemoteBye()]
        return []

    def send_dtmf(self, digits: str) -> None:
        """Queue ``digits`` as RFC 4733 events; ``DtmfError`` if a digit is not DTMF or no
        telephone-event was negotiated."""
        if self._dtmf_out is None:
            raise DtmfError("the remote did not negotiate telephone-event (RFC 4733)")
        self._dtmf_out.send(digits)
        self._digits_out += len(digits)

    def update(self, media: NegotiatedMedia) -> None:
        """A new offer/answer (re-INVITE, UPDATE): new address, codec or direction."""
        old = self.media
        where = (media.remote_address, media.remote_port, media.remote_rtcp, media.rtcp_mux)
        if where != (old.remote_address, old.remote_port, old.remote_rtcp, old.rtcp_mux):
            # A new address: send there, and learn the NAT mapping again. The same address
            # (a hold, a codec change) keeps what latching learned.
            self.session.set_remote(
                (media.remote_address, media.remote_port),
                media.remote_rtcp,
                rtcp_mux=media.rtcp_mux,
            )
        self.session.payload_type = media.payload_type
        self.session.payload_types = frozenset(
            [pt for pt, _ in media.receive_codecs] + _events(media)
        )
        self.session.event_payload_types = frozenset(_events(media))
        if media.clock_rate != old.clock_rate:
            min_delay, max_delay = self._jitter_settings
            self.jitter = JitterBuffer(
                media.clock_rate, min_delay_ms=min_delay, max_delay_ms=max_delay
            )
        if (media.codec, media.ptime, media.receive_codecs, media.telephone_event) != (
            old.codec,
            old.ptime,
            old.receive_codecs,
            old.telephone_event,
        ):
            self._configure(media)
        else:
            self.media = media

    # ------------------------------------------------------------------------------- tick

    def tick(self, now_ms: float, wall_time: float, agent: Pcm | None = None) -> TickOutput:
        """One 20 ms step: the remote's frame, and what to send for ``agent`` (16 kHz, 320
        samples; ``None`` sends silence)."""
        out = TickOutput(self._remote_frame(now_ms))
        if self.media.on_hold:
            out.pcm = _SILENCE.copy()
        elif self._inband is not None:
            for digit, _ in self._inband.process(out.pcm):
                self._digits_in += 1
                out.events.append(DigitReceived(digit, "inband"))
        self._send(now_ms, agent, out.datagrams)
        report = self.session.poll_rtcp(now_ms, wall_time)
        if report is not None and self.session.remote_rtcp is not None:
            out.datagrams.append(Datagram(report, self.session.remote_rtcp, rtcp=True))
        return out

    def close(self, now_ms: float, wall_time: float, reason: str = "") -> list[Datagram]:
        """The RTCP BYE to send when the call ends."""
        if self.session.remote_rtcp is None:
            return []
        data = self.session.build_rtcp(now_ms, wall_time, bye=reason)
        return [Datagram(data, self.session.remote_rtcp, rtcp=True)]

    def _remote_frame(self, now_ms: float) -> Pcm:
        for item in self.jitter.pop(now_ms):
            if isinstance(item, Lost):
                self._concealed += 1
                pcm = self._conceal()
            else:
                pcm = self._decode(item)
            if len(pcm):
                for frame in self._reframer.push(pcm):
                    self._frames.append(frame)
        while len(self._frames) > _MAX_QUEUED_FRAMES:
            self._frames.popleft()
            self._dropped += 1
        if self._frames:
            return self._frames.popleft()
        self._silent += 1
        if not self._media_ready or not len(self._last_packet):
            return _SILENCE.copy()
        # Nothing due this tick: fade what played last, as for a lost packet.
        pcm = self._conceal()
        frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame[: min(len(pcm), FRAME_SAMPLES)] = pcm[:FRAME_SAMPLES]
        return frame

    def _decode(self, packet: RtpPacket) -> Pcm:
        decoder = self._decoders.get(packet.payload_type)
        if decoder is None:
            codec = self._codecs.get(packet.payload_type)
            if codec is None:
                return _SILENCE[:0]
            decoder = self._decoders[packet.payload_type] = _Decoder(codec)
        pcm = decoder.decode(packet.payload)
        self._last_packet = pcm
        self._loss_run = 0
        return pcm

    def _conceal(self) -> Pcm:
        self._loss_run += 1
        if self._loss_run > 2 or not len(self._last_packet):
            return np.zeros(len(self._last_packet) or FRAME_SAMPLES, dtype=np.int16)
        gain = 0.5**self._loss_run
        return (self._last_packet.astype(np.float32) * gain).astype(np.int16)

    def _send(self, now_ms: float, agent: Pcm | None, datagrams: list[Datagram]) -> None:
        session = self.session
        remote = session.remote_rtp
        sending = self.media.sends and remote is not None and not self.media.on_hold
        if self._dtmf_out is not None and self._dtmf_out.busy:
            packets = self._dtmf_out.tick(session.timestamp)
            if packets is not None:
                for p in packets:
                    data = session.send_event(
                        p.payload, self._dtmf_out.payload_type, p.timestamp, p.marker, now_ms
                    )
                    if sending and remote is not None:
                        datagrams.append(Datagram(data, remote))
                # The event holds this interval: the agent audio of it is not sent.
                self._packetiser.clear()
                session.skip(self._tick_clock)
                return
        frame = _SILENCE if agent is None else np.asarray(agent, dtype=np.int16).reshape(-1)
        for chunk in self._packetiser.push(frame):
            if sending and remote is not None:
                payload = self._encoder.encode(chunk)
                datagrams.append(
                    Datagram(session.send_audio(payload, self._encoder.clock, now_ms), remote)
                )
            else:
                session.skip(self._encoder.clock)

    # ------------------------------------------------------------------------------ stats

    def stats(self) -> MediaStats:
        """Statistics for the CDR and ``/metrics``."""
        return MediaStats(
            session=self.session.stats(),
            jitter=self.jitter.report(),
            concealed_packets=self._concealed,
            silent_frames=self._silent,
            dropped_frames=self._dropped,
            bad_datagrams=self._bad,
            digits_received=self._digits_in,
            digits_sent=self._digits_out,
        )


def _events(media: NegotiatedMedia) -> list[int]:
    return [media.receive_telephone_event] if media.receive_telephone_event is not None else []
