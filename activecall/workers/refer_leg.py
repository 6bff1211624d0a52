"""The ``refer`` transfer leg: a second outbound SIP call bridged to the caller (reference §2.4).

Upstream's ``refer`` is not a SIP REFER: the server dials ``callee`` itself (a B2BUA leg) and
bridges it to the caller through the server-side track. :class:`ReferLeg` is that leg in the
worker that owns the call: its RTP ports (from the worker's share, as a SIP call's), its SDP
offer, its :class:`~activecall.rtp.media.RtpMediaPipeline` and the music on hold. The
signalling stays in the supervisor: the leg's ``sip`` records carry ``leg: "refer"``
(``invite``, ``bye``, ``reanswer``) and so do the records the SIP side sends back.

Leg states, in one place:

=========  ============================  =================================================
state      input                         → state, what happens
=========  ============================  =================================================
DIALLING   ``ringing``                   DIALLING, ``ringing{refer}``
DIALLING   ``ringing`` with SDP          DIALLING, ``ringing{refer, earlyMedia}``, the
                                         leg's early media replaces the MOH once it arrives
DIALLING   ``answer`` (usable SDP)       ANSWERED, ``answer{refer}``, media bridged
DIALLING   ``reject``                    ENDED, ``reject{refer}``
DIALLING   timeout                       ENDED, CANCEL, ``reject{408, refer}``
DIALLING   :meth:`ReferLeg.hangup`       ENDED, CANCEL, ``hangup{refer}``
ANSWERED   ``bye``                       ENDED, ``hangup{refer, initiator: callee}``
ANSWERED   :meth:`ReferLeg.hangup`       ENDED, BYE, ``hangup{refer}``
=========  ============================  =================================================

Every 20 ms the call asks :meth:`ReferLeg.tick` for the caller's agent frame: the music on
hold (looped) while dialling, or the leg's early media (a 18x with SDP: ringback, an
announcement) once its first packet arrives; the leg's decoded audio once answered (the 200's
SDP may move the media). The caller's own audio (:meth:`ReferLeg.caller_audio`, 16 kHz) is
what the leg sends once answered; before, the leg gets silence. The leg offers SDES-SRTP
(``RTP/SAVP``) when its ``options.sip.enable_srtp`` says so, else when the node's
``enable_srtp`` is on; SRTP is applied at the socket edge, as for a SIP call.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from activecall.media.codec import FRAME_SAMPLES, Pcm, Reframer
from activecall.media.dump import CallRecord, rfc3339
from activecall.media.playback import PlaybackTrack
from activecall.protocol import (
    AnswerEvent,
    CommandError,
    DtmfEvent,
    Event,
    HangupEvent,
    ReferCommand,
    RejectEvent,
    RingingEvent,
)
from activecall.protocol.options import encode as encode_option
from activecall.rtp.dtmf import DtmfError, parse_info_dtmf
from activecall.rtp.media import (
    Datagram,
    DigitReceived,
    MediaReady,
    PipelineEvent,
    RtpMediaPipeline,
)
from activecall.rtp.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    answer,
    build_offer,
    parse_answer,
)
from activecall.rtp.srtp import SrtpSession
from activecall.workers.media_stats import MediaSample, rtp_sample
from activecall.workers.sip_session import (
    MediaSettings,
    _RtpPorts,
    port_share,
    receive_media,
    send_media,
    srtp_for,
)

__all__ = ["DEFAULT_TIMEOUT_S", "LEG", "LegState", "ReferLeg", "ReferParties"]

log = logging.getLogger(__name__)

LEG = "refer"
"""The ``leg`` field of the leg's ``sip`` records."""
DEFAULT_TIMEOUT_S = 30
_MAX_CALLER_FRAMES = 5  # caller frames waiting for the leg beyond this are dropped (latency)


class LegState(enum.Enum):
    """Where the leg is (the table in the module docstring)."""

    DIALLING = "dialling"
    ANSWERED = "answered"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class ReferParties:
    """Who the original call is between, and its id: the ``X-Referred-*`` headers."""

    session_id: str
    caller: str = ""
    callee: str = ""


class ReferLeg:
    """One transfer leg; see the module docstring.

    ``emit`` sends an event to the client; ``signal(action, **fields)`` a ``sip`` record to
    the supervisor (``leg`` is added here). ``track_id`` is the server-side track's id.
    """

    def __init__(
        self,
        command: ReferCommand,
        parties: ReferParties,
        *,
        track_id: str,
        media: MediaSettings,
        worker_index: int,
        now_ms: int,
        emit: Callable[[Event], None],
        signal: Callable[..., None],
        rng: random.Random | None = None,
    ) -> None:
        callee = command.callee.strip()
        if not callee:
            raise CommandError("refer needs a callee (a sip: URI)", "refer")
        if not callee.lower().startswith(("sip:", "sips:")):
            raise CommandError(f"the refer callee must be a sip: URI, not {callee!r}", "refer")
        options = command.options
        timeout = options.timeout if options is not None else None
        self.callee = callee
        self.caller = command.caller
        self.track_id = track_id
        self.auto_hangup = options is None or options.auto_hangup is not False
        self.forward_dtmf = options is None or options.forward_dtmf is not False
        self.timeout_ms = (DEFAULT_TIMEOUT_S if timeout is None else timeout) * 1000
        self.state = LegState.DIALLING
        rand = (rng or random.SystemRandom()).getrandbits(32)
        self.call_id = (
            options.call_id
            if options is not None and options.call_id
            else f"ref-{rand}-{parties.session_id}"
        )
        self._media = media
        self._emit = emit
        self._signal = signal
        self._started_ms = now_ms
        self._ring_ms: int | None = None
        self._answered_ms: int | None = None
        self._ended_ms: int | None = None
        self._status = 0
        self._reason = ""
        self._moh: Pcm | None = None
        self._moh_track: PlaybackTrack | None = None
        self._caller = Reframer(FRAME_SAMPLES)
        self._caller_frames: deque[Pcm] = deque()
        self._pipeline: RtpMediaPipeline | None = None
        self._negotiated: NegotiatedMedia | None = None
        self._srtp: SrtpSession | None = None  # keyed from self._negotiated.srtp
        self._early_heard = False  # the leg's early media arrived: it replaces the MOH
        sip_option = options.sip if options is not None else None
        # The leg's own sip.enable_srtp, else the node's enable_srtp.
        self._wants_srtp = (
            sip_option.enable_srtp
            if sip_option is not None and sip_option.enable_srtp is not None
            else media.srtp
        )
        self._now_ms = now_ms
        self._sdp_session = int(time.time() * 1000)
        self._sdp_version = 0
        share = port_share(*media.ports, media.workers, worker_index)
        try:
            self._ports: _RtpPorts | None = _RtpPorts(media.bind_ip, share)
        except OSError as exc:
            raise CommandError(f"refer: no RTP port: {exc}", "refer") from None
        try:
            self._offer: SessionDescription = build_offer(
                media.codecs,
                media.ip,
                self._ports.port,
                session_id=self._sdp_session,
                srtp=self._wants_srtp,
            )
        except ValueError as exc:
            self._release()
            raise CommandError(f"refer: cannot make an SDP offer: {exc}", "refer") from None
        self._ports.watch(self._datagram)
        self._invite(command, parties)

    def _invite(self, command: ReferCommand, parties: ReferParties) -> None:
        options = command.options
        sip = encode_option(options.sip) if options is not None and options.sip else {}
        headers: dict[str, str] = {}
        if isinstance(sip.get("headers"), Mapping):
            headers.update({str(k): str(v) for k, v in sip["headers"].items()})
        # As upstream: who the caller originally called, who called, and which call it was.
        if parties.callee:
            headers["X-Referred-To"] = parties.callee
        if parties.caller:
            headers["X-Referred-From"] = parties.caller
        headers["X-Referred-Id"] = parties.session_id
        sip["headers"] = headers
        fields: dict[str, Any] = {
            "callee": self.callee,
            "sdp": self._offer.serialize(),
            "callId": self.call_id,
            "sip": sip,
        }
        if self.caller:
            fields["caller"] = self.caller
        self._send_signal("invite", **fields)

    # ------------------------------------------------------------------ the call's side

    @property
    def ended(self) -> bool:
        """True once the leg is over (whatever ended it)."""
        return self.state is LegState.ENDED

    @property
    def answered(self) -> bool:
        """True while the leg is up and bridged."""
        return self.state is LegState.ANSWERED

    def media_sample(self) -> MediaSample:
        """The leg's RTP (and SRTP) counters for ``/metrics`` (empty until it has media)."""
        pipeline = self._pipeline
        if pipeline is None:
            return MediaSample("rtp", {})
        return rtp_sample(pipeline.stats(), self._srtp.stats if self._srtp is not None else None)

    def set_moh(self, pcm: Pcm) -> None:
        """The music on hold (16 kHz), played in a loop to the caller while dialling."""
        self._moh = pcm if len(pcm) else None
        self._moh_track = None

    def caller_audio(self, pcm: Pcm) -> None:
        """The caller's audio (16 kHz, any length): what the leg hears once answered."""
        if self.state is not LegState.ANSWERED:
            return
        self._caller_frames.extend(self._caller.push(pcm))
        while len(self._caller_frames) > _MAX_CALLER_FRAMES:
            self._caller_frames.popleft()

    def caller_digit(self, digit: str) -> None:
        """A DTMF digit of the caller: sent on to the leg (RFC 4733) when ``forwardDtmf``."""
        if not self.forward_dtmf or self._pipeline is None or self.state is not LegState.ANSWERED:
            return
        with contextlib.suppress(DtmfError):  # the leg did not negotiate telephone-event
            self._pipeline.send_dtmf(digit)

    def tick(self, now_ms: int) -> Pcm | None:
        """Every 20 ms: the caller's agent frame (music on hold, or the leg's audio)."""
        self._now_ms = now_ms
        if self.state is LegState.DIALLING:
            if now_ms - self._started_ms >= self.timeout_ms:
                self._end(now_ms, status=408, reason="timeout")
                self._send_signal("bye")  # CANCEL (or BYE if the 200 crosses it)
                self._emit(
                    RejectEvent(
                        track_id=self.track_id,
                        timestamp=now_ms,
                        reason="Timeout when refer",
                        code=408,
                        refer=True,
                    )
                )
                return None
            early = self._early_tick(now_ms)
            return early if early is not None else self._moh_frame()
        pipeline = self._pipeline
        if self.state is not LegState.ANSWERED or pipeline is None:
            return None
        frame = self._caller_frames.popleft() if self._caller_frames else None
        out = pipeline.tick(now_ms, time.time(), agent=frame)
        self._send(out.datagrams)
        self._events(out.events)
        return out.pcm

    def hangup(
        self,
        now_ms: int,
        *,
        reason: str = "caller",
        initiator: str = "caller",
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """End the leg from our side (``hangup{refer}``, or the call ended): CANCEL or BYE
        (with ``headers``), then ``hangup{refer}``. ``False`` if it was already over."""
        if self.state is LegState.ENDED:
            return False
        self._end(now_ms, status=self._status or 487, reason=reason)
        if headers:
            self._send_signal("bye", headers=dict(headers))
        else:
            self._send_signal("bye")
        self._hangup_event(now_ms, reason, initiator)
        return True

    def on_control(self, record: Mapping[str, Any], now_ms: int) -> None:
        """A ``sip`` record of the leg from the supervisor (``event``: what the SIP side did)."""
        if self.state is LegState.ENDED:
            return
        event = record.get("event")
        if event == "ringing":
            if self._ring_ms is None:
                self._ring_ms = now_ms
            sdp = str(record.get("sdp") or "")
            self._emit(
                RingingEvent(
                    track_id=self.track_id,
                    timestamp=now_ms,
                    early_media=bool(sdp),
                    refer=True,
                )
            )
            if sdp and self.state is LegState.DIALLING:
                self._early_media(sdp)
        elif event == "answer":
            self._remote_answer(str(record.get("sdp") or ""), now_ms)
        elif event == "reject":
            code = record.get("code")
            reason = str(record.get("reason") or "rejected")
            self._end(now_ms, status=code if isinstance(code, int) else 0, reason="rejected")
            self._emit(
                RejectEvent(
                    track_id=self.track_id,
                    timestamp=now_ms,
                    reason=reason,
                    code=code if isinstance(code, int) else None,
                    refer=True,
                )
            )
        elif event in ("bye", "cancelled"):
            self._end(now_ms, status=self._status, reason="callee")
            self._hangup_event(now_ms, "callee", "callee")
        elif event == "reinvite":
            self._reoffer(str(record.get("sdp") or ""))
        elif event == "info":
            try:
                digit = parse_info_dtmf(
                    str(record.get("body") or ""), str(record.get("contentType") or "")
                )
            except DtmfError:
                return
            self._emit(
                DtmfEvent(track_id=self.track_id, timestamp=now_ms, digit=digit.digit, refer=True)
            )
        else:
            log.info("refer leg %s: sip event %r ignored", self.call_id, event)

    def call_record(self, call_type: str = "sip") -> CallRecord:
        """The leg's own call record (the call's ``referCallrecord``), with its RTP stats."""
        extras: dict[str, Any] = {"state": self.state.value}
        if self._pipeline is not None:
            extras["rtp"] = self._pipeline.stats().to_dict()
        if self._srtp is not None:
            extras["srtp"] = {"suite": self._srtp.suite, **self._srtp.stats.to_dict()}
        end = self._ended_ms if self._ended_ms is not None else self._now_ms
        return CallRecord(
            call_type=call_type,
            call_id=self.call_id,
            start_time=_utc(self._started_ms),
            ring_time=_utc(self._ring_ms) if self._ring_ms is not None else None,
            answer_time=_utc(self._answered_ms) if self._answered_ms is not None else None,
            end_time=_utc(end),
            caller=self.caller,
            callee=self.callee,
            status_code=self._status,
            hangup_reason=self._reason or None,
            extras=extras,
        )

    # ------------------------------------------------------------------ internals

    def _moh_frame(self) -> Pcm | None:
        if self._moh is None:
            return None
        track = self._moh_track
        if track is None or track.finished:
            track = self._moh_track = PlaybackTrack(self._moh)
        return track.next_frame()

    def _early_media(self, sdp: str) -> None:
        """A 18x with SDP: the leg's media starts (one-way, to the caller) before the 200."""
        try:
            media = parse_answer(self._offer, sdp)
        except SdpError as exc:
            # The 200 may still bring a usable answer; until then the caller hears the MOH.
            log.info("refer leg %s: early media ignored: %s", self.call_id, exc)
            return
        self._use(media)

    def _early_tick(self, now_ms: int) -> Pcm | None:
        """The leg's early media for the caller, ``None`` while there is none (the MOH)."""
        pipeline = self._pipeline
        if pipeline is None:
            return None
        out = pipeline.tick(now_ms, time.time())  # silence to the leg: keeps its NAT open
        self._send(out.datagrams)
        self._events(out.events)
        return out.pcm if self._early_heard else None

    def _use(self, media: NegotiatedMedia) -> None:
        """Media of an answer (early or final): a new pipeline, or the early one moved."""
        if self._pipeline is None:
            self._pipeline = RtpMediaPipeline(
                media, latching=self._media.latching, cname=f"activecall-{self.call_id}"[:255]
            )
        else:
            self._pipeline.update(media)
        self._negotiated = media

    def _remote_answer(self, sdp: str, now_ms: int) -> None:
        if self.state is not LegState.DIALLING:
            return
        if not sdp.strip() and self._negotiated is not None:
            self._answered(sdp, now_ms)  # the 200 keeps the early media's answer
            return
        try:
            media = parse_answer(self._offer, sdp)
        except SdpError as exc:  # NotAcceptable included
            self._emit(
                RejectEvent(
                    track_id=self.track_id,
                    timestamp=now_ms,
                    reason=f"the answer cannot be used: {exc}",
                    code=488,
                    refer=True,
                )
            )
            self._end(now_ms, status=488, reason="failed")
            self._send_signal("bye")
            return
        self._use(media)
        self._answered(sdp, now_ms)

    def _answered(self, sdp: str, now_ms: int) -> None:
        self._status = 200
        self._answered_ms = now_ms
        self.state = LegState.ANSWERED
        self._moh_track = None
        self._emit(AnswerEvent(track_id=self.track_id, timestamp=now_ms, sdp=sdp, refer=True))

    def _reoffer(self, sdp: str) -> None:
        ports = self._ports
        if ports is None:
            self._send_signal("reanswer", code=488)
            return
        self._sdp_version += 1
        try:
            local, media = answer(
                sdp,
                self._media.codecs,
                self._media.ip,
                ports.port,
                session_id=self._sdp_session,
                session_version=self._sdp_version,
                srtp=self._wants_srtp,
                srtp_key=self._negotiated.srtp if self._negotiated is not None else None,
            )
        except SdpError:
            self._send_signal("reanswer", code=488)
            return
        if self._pipeline is not None:
            self._pipeline.update(media)
            self._negotiated = media
        self._send_signal("reanswer", sdp=local.serialize())

    def _end(self, now_ms: int, *, status: int, reason: str) -> None:
        pipeline = self._pipeline
        if pipeline is not None and self.state is not LegState.ENDED:
            self._send(pipeline.close(now_ms, time.time(), "leg ended"))
        self.state = LegState.ENDED
        self._status = status
        self._reason = reason
        self._ended_ms = now_ms
        self._caller_frames.clear()
        self._release()

    def _hangup_event(self, now_ms: int, reason: str, initiator: str) -> None:
        self._emit(
            HangupEvent(
                track_id=self.track_id,
                timestamp=now_ms,
                reason=reason,
                initiator=initiator,
                start_time=rfc3339(_utc(self._started_ms)),
                hangup_time=rfc3339(_utc(now_ms)),
                answer_time=rfc3339(_utc(self._answered_ms))
                if self._answered_ms is not None
                else None,
                ringing_time=rfc3339(_utc(self._ring_ms)) if self._ring_ms is not None else None,
                refer=True,
            )
        )

    def _release(self) -> None:
        ports, self._ports = self._ports, None
        if ports is not None:
            ports.close()

    def _datagram(self, data: bytes, source: tuple[str, int], rtcp: bool) -> None:
        pipeline = self._pipeline
        if pipeline is None or self.state is LegState.ENDED:
            return  # no media negotiated yet (no 18x with SDP, no 200)
        events = receive_media(pipeline, self._srtp_session(), data, source, rtcp, self._now_ms)
        if events is None:
            return  # failed SRTP, or not a packet: counted
        if any(isinstance(e, MediaReady) for e in events):
            self._early_heard = True
        self._events(events)

    def _events(self, events: list[PipelineEvent]) -> None:
        for event in events:
            if isinstance(event, DigitReceived):
                self._emit(
                    DtmfEvent(
                        track_id=self.track_id,
                        timestamp=self._now_ms,
                        digit=event.digit,
                        refer=True,
                    )
                )

    def _send(self, datagrams: list[Datagram]) -> None:
        if self._ports is not None:
            rtcp_mux = self._negotiated is not None and self._negotiated.rtcp_mux
            send_media(
                self._ports, datagrams, rtcp_mux, self._srtp_session(), f"refer leg {self.call_id}"
            )

    def _srtp_session(self) -> SrtpSession | None:
        srtp = srtp_for(self._srtp, self._negotiated.srtp if self._negotiated else None)
        if srtp is not None:
            self._srtp = srtp
        return srtp

    def _send_signal(self, action: str, **fields: Any) -> None:
        self._signal(action, leg=LEG, **fields)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
