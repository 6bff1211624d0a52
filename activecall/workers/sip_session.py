"""One SIP call (``/call/sip``) in the worker that owns its media.

The supervisor keeps the signalling (:mod:`activecall.supervisor.sip`); this session owns the
RTP socket and runs the :class:`~activecall.rtp.media.RtpMediaPipeline`. The two talk in
``sip`` control records (:mod:`activecall.workers.control`): the session *asks* (``invite``,
``ringing``, ``accept``, ``reject``, ``reanswer``, ``bye``, ``message``) and is *told*
(``ringing``, ``answer``, ``reject``, ``bye``, ``cancelled``, ``reinvite``, ``info``,
``message``, ``refer``), and turns both into the events of reference §2.6 in the §2.9 order.

* Inbound (the open params carry the pending INVITE): the client's first ``ringing`` or
  ``accept`` emits ``incoming``; ``ringing`` sends 180 (183 with our SDP answer when
  ``earlyMedia`` or ``ringtone``), ``accept`` 200 with the answer, then ``trackStart`` and
  ``answer``; ``reject`` refuses the INVITE. ``accept`` with no pending INVITE is
  ``reject{486}``.
* Outbound: ``invite`` binds the RTP port, emits ``trackStart``, and asks for the INVITE with
  our offer; the SIP side reports ``ringing{earlyMedia}``, then ``answer`` (the remote SDP)
  or ``reject`` (+ ``error{sender:"invite"}``).

RTP: a plain UDP socket (and one for RTCP on the next port) in this worker's share of
``rtp_start_port..rtp_end_port``, read with ``loop.add_reader``; each 20 ms tick sends the
agent frame and feeds the caller's frame to the call's processors (VAD, ASR, recorder). The
call ends with ``trackEnd`` of the caller's track and ``hangup`` (``initiator`` ``caller`` or
``callee`` for a BYE from the remote, ``system`` for a timeout); the CDR gets the RTP
statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from activecall.media.codec import Pcm
from activecall.protocol import (
    AcceptCommand,
    CallOption,
    Command,
    CommandError,
    DtmfEvent,
    HangupCommand,
    HoldEvent,
    IncomingEvent,
    MediaReadyEvent,
    MessageCommand,
    MessageEvent,
    ReferCommand,
    RejectCommand,
    RejectEvent,
    RingingCommand,
    RingingEvent,
    SendDtmfCommand,
    TrackEndEvent,
    TransferRequestEvent,
)
from activecall.protocol.options import RecorderOption
from activecall.protocol.options import encode as encode_option
from activecall.rtp.dtmf import DtmfError, parse_info_dtmf
from activecall.rtp.media import (
    Datagram,
    DigitReceived,
    MediaReady,
    PipelineEvent,
    RtpMediaPipeline,
)
from activecall.rtp.packet import PacketError
from activecall.rtp.sdp import (
    NegotiatedMedia,
    SdpError,
    SessionDescription,
    answer,
    build_offer,
    parse_answer,
)
from activecall.workers import control
from activecall.workers.session import CallSession, CallState

__all__ = ["MediaSettings", "SipCallSession", "port_share"]

log = logging.getLogger(__name__)

DEFAULT_CODECS = ("pcmu", "pcma", "g722", "telephone_event")
_READ_BURST = 64  # datagrams read per wake-up at most, so one call cannot starve the loop
_cursors: dict[tuple[int, int], int] = {}  # next port to try, per share (one worker process)


def port_share(first: int, last: int, workers: int, index: int) -> tuple[int, int]:
    """Worker ``index``'s part of the port range ``first..last`` split over ``workers``."""
    workers = max(1, workers)
    span = (last - first + 1) // workers
    if span < 2:
        return first, last  # too few ports to split: every worker tries the whole range
    lo = first + (index % workers) * span
    hi = last if index % workers == workers - 1 else lo + span - 1
    return lo, hi


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """Where a call's RTP goes (the ``media`` open params)."""

    ip: str = "127.0.0.1"
    """The address in our SDP."""
    bind_ip: str = "0.0.0.0"
    ports: tuple[int, int] = (12000, 42000)
    workers: int = 1
    codecs: tuple[str, ...] = DEFAULT_CODECS
    latching: bool = True

    @classmethod
    def from_params(cls, params: Any) -> MediaSettings:
        """Read the ``media`` open params; missing or bad values keep the defaults."""
        if not isinstance(params, dict):
            return cls()
        ports = params.get("ports")
        codecs = params.get("codecs")
        default = cls()
        return cls(
            ip=str(params.get("ip") or default.ip),
            bind_ip=str(params.get("bindIp") or default.bind_ip),
            ports=(int(ports[0]), int(ports[1]))
            if isinstance(ports, list) and len(ports) == 2
            else default.ports,
            workers=int(params.get("workers") or 1),
            codecs=tuple(str(c) for c in codecs)
            if isinstance(codecs, list) and codecs
            else DEFAULT_CODECS,
            latching=bool(params.get("latching", True)),
        )


class _RtpPorts:
    """The call's RTP socket and the RTCP one beside it (even port, port + 1)."""

    def __init__(self, bind_ip: str, share: tuple[int, int]) -> None:
        lo, hi = share
        first = lo + (lo % 2)
        count = max(1, (hi - first + 1) // 2)
        start = _cursors.get(share, 0)
        for step in range(count):
            port = first + 2 * ((start + step) % count)
            rtp = _bind(bind_ip, port)
            if rtp is None:
                continue
            rtcp = _bind(bind_ip, port + 1)
            if rtcp is None:
                rtp.close()
                continue
            # Rotate: a port just freed is not reused at once (late packets of its old call).
            _cursors[share] = (start + step + 1) % count
            self.rtp, self.rtcp, self.port = rtp, rtcp, port
            return
        raise OSError(errno.EADDRINUSE, f"no free RTP port pair in {lo}-{hi}")

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()


def _bind(ip: str, port: int) -> socket.socket | None:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((ip, port))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


class SipCallSession(CallSession):
    """A ``/call/sip`` session: see the module docstring."""

    def __init__(self, port: Any, session_id: str, **kwargs: Any) -> None:
        super().__init__(port, session_id, **kwargs)
        sip = self.params.get("sip")
        self.sip: dict[str, Any] = sip if isinstance(sip, dict) else {"direction": "outbound"}
        self.inbound = self.sip.get("direction") == "inbound"
        self.media_settings = MediaSettings.from_params(self.params.get("media"))
        self._worker_index = int(getattr(port, "worker_index", 0))
        self._ports: _RtpPorts | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pipeline: RtpMediaPipeline | None = None
        self._offer: SessionDescription | None = None  # ours (outbound)
        self._negotiated: NegotiatedMedia | None = None
        self._local_sdp = ""
        self._sdp_session = int(time.time() * 1000)
        self._sdp_version = 0
        self._pending = self.inbound  # an inbound INVITE waits for accept/reject
        self._incoming_sent = False
        self._ringing_recorder: RecorderOption | None = None
        self._leg = self.inbound  # a SIP leg exists: the pending INVITE, or once we invite
        self._leg_over = False  # the SIP side already ended (BYE, CANCEL, reject)
        self._bye_headers: dict[str, str] | None = None
        self._now_ms = port.now_ms()
        self._last_packet_ms = 0
        self._answered_ms = 0
        self._ring_ms: int | None = None
        self._status = 0
        self._on_hold = False

    # ------------------------------------------------------------------ commands

    def _handle(self, command: Command) -> None:
        if isinstance(command, AcceptCommand):
            self._accept(command)
        elif isinstance(command, RejectCommand):
            self._reject(command)
        elif isinstance(command, RingingCommand):
            self._ringing(command)
        elif isinstance(command, SendDtmfCommand):
            self._send_dtmf(command.digits)
        elif isinstance(command, MessageCommand):
            self._message(command)
        elif isinstance(command, ReferCommand):
            raise CommandError(
                "'refer' (a transfer leg) is not available on SIP calls yet", "refer"
            )
        elif isinstance(command, HangupCommand):
            if command.headers:
                self._bye_headers = dict(command.headers)
            super()._handle(command)
        elif command.command == "invite" and self.inbound:
            raise CommandError("an inbound SIP call is answered with 'accept'", "invite")
        else:
            super()._handle(command)

    def _accept(self, command: AcceptCommand) -> None:
        if not self._pending or self.state is not CallState.CREATED:
            self._emit(
                RejectEvent(
                    track_id=self.id,
                    timestamp=self.port.now_ms(),
                    reason="no pending call",
                    code=486,
                )
            )
            if self.state is CallState.CREATED:
                self.hangup(reason="rejected", initiator="system")
            return
        self._announce()
        option = command.option
        if option.recorder is None and self._ringing_recorder is not None:
            option = replace(option, recorder=self._ringing_recorder)
        sdp = self._answer_offer()
        if sdp is None:
            return
        self._pending = False
        self._invite_option = option
        self._signal("accept", sdp=sdp)
        self._status = 200
        self._start_pipeline()
        self._answered_ms = self.port.now_ms()
        self.answered(sdp)

    def _reject(self, command: RejectCommand) -> None:
        if not self._pending or self.state is not CallState.CREATED:
            raise CommandError("there is no pending inbound call to reject", "reject")
        self._pending = False
        self._leg_over = True
        code = 603 if command.code is None else command.code
        if not 300 <= code <= 699:
            self._error("reject", f"code {code} is not a SIP failure status (300-699): 603 sent")
            code = 603
        self._status = code
        self._signal("reject", code=code, reason=command.reason)
        self.hangup(reason="rejected", initiator="callee")

    def _ringing(self, command: RingingCommand) -> None:
        if not self._pending or self.state is not CallState.CREATED:
            raise CommandError("there is no pending inbound call to ring", "ringing")
        self._announce()
        if command.recorder is not None:
            self._ringing_recorder = command.recorder
        if self._ring_ms is None:
            self._ring_ms = self.port.now_ms()
        if command.early_media or command.ringtone:
            # The ringtone itself is not played yet: the 183 carries our answer (early media).
            sdp = self._answer_offer()
            if sdp is not None:
                self._signal("ringing", sdp=sdp)
        else:
            self._signal("ringing")

    def _send_dtmf(self, digits: str) -> None:
        if self._pipeline is None or self.state is not CallState.ANSWERED:
            raise CommandError("the call is not answered yet", "sendDtmf")
        try:
            self._pipeline.send_dtmf(digits)
        except DtmfError as exc:
            raise CommandError(str(exc), "sendDtmf") from None

    def _message(self, command: MessageCommand) -> None:
        if self.state is not CallState.ANSWERED or self._leg_over:
            raise CommandError("MESSAGE needs an established SIP call", "message")
        fields: dict[str, Any] = {"body": command.body}
        fields["contentType"] = command.content_type or "text/plain;charset=utf-8"
        if command.headers:
            fields["headers"] = dict(command.headers)
        self._signal("message", **fields)

    # ------------------------------------------------------------------ transport hooks

    def _start_media(self, option: CallOption) -> None:
        """Outbound ``invite``: bind the RTP port, ``trackStart``, ask for the INVITE."""
        if not option.callee:
            raise CommandError("option.callee (a sip: URI) is required", "invite")
        if not option.callee.lower().startswith(("sip:", "sips:")):
            raise CommandError(f"option.callee must be a sip: URI, not {option.callee!r}", "invite")
        self._bind()
        assert self._ports is not None
        settings = self.media_settings
        try:
            offer = build_offer(
                settings.codecs, settings.ip, self._ports.port, session_id=self._sdp_session
            )
        except ValueError as exc:
            self._release()
            raise CommandError(f"cannot make an SDP offer: {exc}", "invite") from None
        self._offer = offer
        self._local_sdp = offer.serialize()
        self.track_start()
        fields: dict[str, Any] = {"callee": option.callee, "sdp": self._local_sdp}
        if option.caller:
            fields["caller"] = option.caller
        if option.sip is not None:
            fields["sip"] = encode_option(option.sip)
        self._leg = True
        self._signal("invite", **fields)

    def _pull_media(self, now_ms: int) -> None:
        self._now_ms = now_ms

    def _send_agent(self, frame: Pcm | None) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        out = pipeline.tick(self._now_ms, time.time(), agent=frame)
        self._send(out.datagrams)
        self._events(out.events)
        self.caller_audio(out.pcm)
        # caller_audio counts any frame as audio; inactivity is about RTP actually arriving.
        self._timers.last_audio_ms = max(self._last_packet_ms, self._answered_ms)

    def _stop_media(self) -> None:
        now = self.port.now_ms()
        pipeline = self._pipeline
        if pipeline is not None:
            self._send(pipeline.close(now, time.time(), "call ended"))
            self._emit(
                TrackEndEvent(
                    track_id=self.id,
                    timestamp=now,
                    duration=max(0, now - self._answered_ms),
                    ssrc=pipeline.stats().session.receive.ssrc or 0,
                )
            )
        self._release()
        if self._leg and not self._leg_over:
            self._leg_over = True
            fields: dict[str, Any] = {}
            if self._bye_headers:
                fields["headers"] = self._bye_headers
            self._signal("bye", **fields)

    def _call_record_fields(self) -> dict[str, Any]:
        extras: dict[str, Any] = (
            dict(self.option.extra) if self.option and self.option.extra else {}
        )
        if self._pipeline is not None:
            extras["rtp"] = self._pipeline.stats().to_dict()
        fields: dict[str, Any] = {
            "caller": str(
                self.sip.get("caller") or (self.option.caller if self.option else "") or ""
            ),
            "callee": str(
                self.sip.get("callee") or (self.option.callee if self.option else "") or ""
            ),
            "status_code": self._status,
            "extras": extras or None,
        }
        if self._ring_ms is not None:
            fields["ring_time"] = datetime.fromtimestamp(self._ring_ms / 1000, UTC)
        return fields

    # ------------------------------------------------------------------ the SIP side

    def on_control(self, record: dict[str, Any]) -> None:
        """A ``sip`` control record from the supervisor (``event``: what the SIP side did)."""
        if record.get("op") != control.OP_SIP or self.state is CallState.ENDED:
            return
        event = record.get("event")
        now = self.port.now_ms()
        if event == "ringing":
            if self._ring_ms is None:
                self._ring_ms = now
            self._emit(
                RingingEvent(track_id=self.id, timestamp=now, early_media=bool(record.get("sdp")))
            )
        elif event == "answer":
            self._remote_answer(str(record.get("sdp") or ""))
        elif event == "reject":
            self._leg_over = True
            code = record.get("code")
            self._status = code if isinstance(code, int) else 0
            reason = str(record.get("reason") or "rejected")
            self._emit(RejectEvent(track_id=self.id, timestamp=now, reason=reason, code=code))
            self._error("invite", f"the call was rejected: {code} {reason}")
            self.hangup(reason="rejected", initiator="callee")
        elif event == "bye":
            self._leg_over = True
            side = "caller" if self.inbound else "callee"
            self.hangup(reason=side, initiator=side)
        elif event == "cancelled":
            self._leg_over = True
            self._pending = False
            if record.get("reason") == "timeout":
                self.hangup(reason="timeout", initiator="system")
            else:
                self.hangup(reason="canceled", initiator="caller")
        elif event == "reinvite":
            self._reoffer(str(record.get("sdp") or ""))
        elif event == "info":
            self._info(str(record.get("body") or ""), str(record.get("contentType") or ""))
        elif event == "message":
            content_type = record.get("contentType")
            self._emit(
                MessageEvent(
                    track_id=self.id,
                    timestamp=now,
                    body=str(record.get("body") or ""),
                    content_type=str(content_type) if content_type else None,
                )
            )
        elif event == "refer":
            referred_by = record.get("referredBy")
            self._emit(
                TransferRequestEvent(
                    track_id=self.id,
                    timestamp=now,
                    refer_to=str(record.get("referTo") or ""),
                    referred_by=str(referred_by) if referred_by else None,
                )
            )
        else:
            log.warning("session %s: unknown sip event %r", self.id, event)

    def _remote_answer(self, sdp: str) -> None:
        if self.state is not CallState.CREATED or self._offer is None:
            return
        try:
            media = parse_answer(self._offer, sdp)
        except SdpError as exc:  # NotAcceptable included
            self._error("invite", f"the answer cannot be used: {exc}")
            self.hangup(reason="failed", initiator="system")
            return
        self._negotiated = media
        self._status = 200
        self._start_pipeline()
        self._answered_ms = self.port.now_ms()
        self.answered(sdp)

    def _reoffer(self, sdp: str) -> None:
        """A re-INVITE/UPDATE: answer it, move the media, report a hold change."""
        if self._ports is None:
            self._signal("reanswer", code=488)
            return
        self._sdp_version += 1
        settings = self.media_settings
        try:
            local, media = answer(
                sdp,
                settings.codecs,
                settings.ip,
                self._ports.port,
                session_id=self._sdp_session,
                session_version=self._sdp_version,
            )
        except SdpError as exc:
            log.info("session %s: re-offer refused: %s", self.id, exc)
            self._signal("reanswer", code=488)
            return
        self._negotiated = media
        if self._pipeline is not None:
            self._pipeline.update(media)
        self._local_sdp = local.serialize()
        self._signal("reanswer", sdp=self._local_sdp)
        if media.on_hold != self._on_hold:
            self._on_hold = media.on_hold
            self._emit(
                HoldEvent(track_id=self.id, timestamp=self.port.now_ms(), on_hold=media.on_hold)
            )

    def _info(self, body: str, content_type: str) -> None:
        try:
            digit = parse_info_dtmf(body, content_type)
        except DtmfError as exc:
            log.info("session %s: INFO ignored: %s", self.id, exc)
            return
        self._emit(DtmfEvent(track_id=self.id, timestamp=self.port.now_ms(), digit=digit.digit))

    # ------------------------------------------------------------------ media

    def _announce(self) -> None:
        """``incoming``, once: the first ``ringing`` or ``accept`` of an inbound call."""
        if self._incoming_sent:
            return
        self._incoming_sent = True
        headers = self.sip.get("headers")
        self._emit(
            IncomingEvent(
                track_id=self.id,
                timestamp=self.port.now_ms(),
                caller=str(self.sip.get("caller") or ""),
                callee=str(self.sip.get("callee") or ""),
                sdp=str(self.sip.get("offer") or ""),
                headers={str(k): str(v) for k, v in headers.items()}
                if isinstance(headers, dict) and headers
                else None,
            )
        )

    def _answer_offer(self) -> str | None:
        """Our answer to the pending INVITE's offer (made once); on failure the INVITE gets
        488 and the call ends."""
        if self._negotiated is not None:
            return self._local_sdp
        try:
            self._bind()
        except CommandError as exc:
            self._refuse(503, exc.message)
            return None
        assert self._ports is not None
        settings = self.media_settings
        try:
            local, media = answer(
                str(self.sip.get("offer") or ""),
                settings.codecs,
                settings.ip,
                self._ports.port,
                session_id=self._sdp_session,
            )
        except SdpError as exc:
            self._refuse(488, f"the offer cannot be answered: {exc}")
            return None
        self._negotiated = media
        self._on_hold = media.on_hold
        self._local_sdp = local.serialize()
        return self._local_sdp

    def _refuse(self, code: int, message: str) -> None:
        self._pending = False
        self._leg_over = True
        self._status = code
        self._signal("reject", code=code, reason=message[:120])
        self._error("accept", message)
        self.hangup(reason="failed", initiator="system")

    def _bind(self) -> None:
        if self._ports is not None:
            return
        settings = self.media_settings
        share = port_share(*settings.ports, settings.workers, self._worker_index)
        try:
            self._ports = _RtpPorts(settings.bind_ip, share)
        except OSError as exc:
            raise CommandError(f"no RTP port: {exc}", "invite") from None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._ports.rtp.fileno(), self._readable, self._ports.rtp, False)
        self._loop.add_reader(self._ports.rtcp.fileno(), self._readable, self._ports.rtcp, True)

    def _release(self) -> None:
        ports, self._ports = self._ports, None
        if ports is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(ports.rtp.fileno())
            self._loop.remove_reader(ports.rtcp.fileno())
        ports.close()

    def _start_pipeline(self) -> None:
        media = self._negotiated
        if media is None or self._pipeline is not None:
            return
        self._pipeline = RtpMediaPipeline(
            media, latching=self.media_settings.latching, cname=f"activecall-{self.id}"[:255]
        )

    def _readable(self, sock: socket.socket, rtcp: bool) -> None:
        for _ in range(_READ_BURST):
            try:
                data, source = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error of an earlier send; nothing to read
            pipeline = self._pipeline
            if pipeline is None or self.state is not CallState.ANSWERED:
                continue  # before the answer (or early media we do not play): dropped
            now = self.port.now_ms()
            address = (str(source[0]), int(source[1]))
            try:
                if rtcp:
                    events = pipeline.receive_rtcp(data, address, now)
                else:
                    events = pipeline.receive(data, address, now)
            except (PacketError, ValueError):
                continue  # counted by the pipeline (bad_datagrams)
            if not rtcp:
                self._last_packet_ms = now
            self._events(events)

    def _events(self, events: list[PipelineEvent]) -> None:
        for event in events:
            now = self.port.now_ms()
            if isinstance(event, MediaReady):
                self._emit(MediaReadyEvent(track_id=self.id, timestamp=now))
            elif isinstance(event, DigitReceived):
                self._emit(DtmfEvent(track_id=self.id, timestamp=now, digit=event.digit))

    def _send(self, datagrams: list[Datagram]) -> None:
        ports = self._ports
        if ports is None:
            return
        for d in datagrams:
            sock = ports.rtcp if d.rtcp and not self._rtcp_mux() else ports.rtp
            # An unreachable peer (ICMP) or a full buffer: RTP is loss-tolerant.
            with contextlib.suppress(OSError):
                sock.sendto(d.data, d.address)

    def _rtcp_mux(self) -> bool:
        return self._negotiated is not None and self._negotiated.rtcp_mux

    # ------------------------------------------------------------------ output

    def _signal(self, action: str, **fields: Any) -> None:
        """A ``sip`` record to the supervisor (a text record: see workers.control)."""
        self.port.emit_text(control.encode(control.OP_SIP, action=action, **fields))
