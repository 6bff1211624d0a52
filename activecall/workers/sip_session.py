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
* Inbound early media: with the 183 the RTP media starts. A ``ringtone`` (file or URL,
  decoded like ``play``) loops to the caller until ``accept`` (then the call's own audio
  takes over on the same RTP stream), ``reject`` or a hangup; without one the caller hears
  silence. A ringtone that cannot be opened is an ``error{sender:"ringing"}`` and the call
  goes on. The agent's ``play``/``tts`` start at ``accept``; the caller's early audio is not
  processed (the processors come with ``accept``'s option).
* Outbound: ``invite`` binds the RTP port, emits ``trackStart``, and asks for the INVITE with
  our offer; the SIP side reports ``ringing{earlyMedia}``, then ``answer`` (the remote SDP)
  or ``reject`` (+ ``error{sender:"invite"}``).
* Outbound early media: a 18x with SDP starts the media and the call's processors at once,
  so the remote's early audio (ringback, "the number is not available") reaches VAD, ASR and
  the recorder before the 200, whose SDP then confirms or moves the media. ``answer`` is
  still sent at the 200 (and ``answerTime`` is the 200's); ``play``/``tts``/``sendDtmf`` work
  in between and are heard as early media.

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
import functools
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from activecall.media.codec import Pcm
from activecall.media.playback import PlaybackError, PlaybackTrack, decode_audio_file
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
    PlayCommand,
    RejectCommand,
    RejectEvent,
    RingingCommand,
    RingingEvent,
    SendDtmfCommand,
    TrackEndEvent,
    TransferRequestEvent,
    TtsCommand,
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
    SrtpKeys,
    answer,
    build_offer,
    parse_answer,
)
from activecall.rtp.srtp import SrtpError, SrtpSession, SrtpStats
from activecall.workers import control
from activecall.workers.media_stats import rtp_sample, watch_media
from activecall.workers.session import CallSession, CallState

__all__ = [
    "MediaSettings",
    "SipCallSession",
    "port_share",
    "receive_media",
    "send_media",
    "srtp_for",
]

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


def srtp_for(current: SrtpSession | None, keys: SrtpKeys | None) -> SrtpSession | None:
    """The SRTP contexts for the negotiated ``keys`` (``None``: plain RTP): ``current`` if it
    runs with them, else new contexts (a re-offer's or a later answer's keys) that keep its
    counters."""
    if keys is None:
        return None
    if current is not None and current.keyed_as(keys.suite, keys.local_key, keys.remote_key):
        return current
    fresh = SrtpSession(keys.suite, keys.local_key, keys.remote_key)
    if current is not None:
        fresh.stats = current.stats
    return fresh


def receive_media(
    pipeline: RtpMediaPipeline,
    srtp: SrtpSession | None,
    data: bytes,
    source: tuple[str, int],
    rtcp: bool,
    now_ms: int,
) -> list[PipelineEvent] | None:
    """A datagram from a leg's RTP (or RTCP) port into its pipeline, unprotected first when
    ``srtp``; its events, or ``None`` when it was dropped (it failed the SRTP checks: counted
    in ``srtp.stats``; it is no RTP/RTCP packet: counted by the pipeline)."""
    if srtp is not None:
        # SRTCP on its own port; on the RTP port (rtcp-mux) the packet type tells.
        plain = srtp.unprotect(data, True if rtcp else None)
        if plain is None:
            return None
        data = plain
    try:
        if rtcp:
            return pipeline.receive_rtcp(data, source, now_ms)
        return pipeline.receive(data, source, now_ms)
    except (PacketError, ValueError):
        return None


def send_media(
    ports: _RtpPorts,
    datagrams: list[Datagram],
    rtcp_mux: bool,
    srtp: SrtpSession | None,
    who: str,
) -> None:
    """Send a pipeline's datagrams from a call's RTP ports, SRTP-protected when ``srtp``."""
    for d in datagrams:
        sock = ports.rtcp if d.rtcp and not rtcp_mux else ports.rtp
        data = d.data
        if srtp is not None:
            try:
                data = srtp.protect(data, d.rtcp)
            except SrtpError as exc:  # never plain RTP on an SRTP stream
                log.warning("%s: datagram not sent: %s", who, exc)
                continue
        # An unreachable peer (ICMP) or a full buffer: RTP is loss-tolerant.
        with contextlib.suppress(OSError):
            sock.sendto(data, d.address)


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
    srtp: bool = False
    """Offer SDES-SRTP (``enable_srtp``); a call's ``sip.enable_srtp`` overrides it."""

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
            srtp=bool(params.get("srtp", False)),
        )


class _RtpPorts:
    """The call's RTP socket and the RTCP one beside it (even port, port + 1)."""

    def __init__(self, bind_ip: str, share: tuple[int, int]) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None  # reading on it (watch)
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

    def watch(self, on_datagram: OnDatagram) -> None:
        """Read both sockets on the running loop: ``on_datagram(data, source, rtcp)``."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.rtp.fileno(), _drain, self.rtp, False, on_datagram)
        self._loop.add_reader(self.rtcp.fileno(), _drain, self.rtcp, True, on_datagram)

    def close(self) -> None:
        """Stop reading and close both sockets."""
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.rtp.fileno())
            loop.remove_reader(self.rtcp.fileno())
        self.rtp.close()
        self.rtcp.close()


OnDatagram = Callable[[bytes, tuple[str, int], bool], None]
"""What reads a leg's sockets calls: ``(data, source, rtcp)``."""


def _drain(sock: socket.socket, rtcp: bool, on_datagram: OnDatagram) -> None:
    for _ in range(_READ_BURST):
        try:
            data, source = sock.recvfrom(2048)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # an ICMP error of an earlier send; nothing to read
        on_datagram(data, (str(source[0]), int(source[1])), rtcp)


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

    INBAND_DTMF = False  # the RTP pipeline detects tones when no telephone-event is negotiated

    def __init__(self, port: Any, session_id: str, **kwargs: Any) -> None:
        super().__init__(port, session_id, **kwargs)
        sip = self.params.get("sip")
        self.sip: dict[str, Any] = sip if isinstance(sip, dict) else {"direction": "outbound"}
        self.inbound = self.sip.get("direction") == "inbound"
        self.media_settings = MediaSettings.from_params(self.params.get("media"))
        self._worker_index = int(getattr(port, "worker_index", 0))
        self._ports: _RtpPorts | None = None
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
        self._srtp: SrtpSession | None = None  # keyed from self._negotiated.srtp
        self._srtp_choice: bool | None = None  # the call's sip.enable_srtp, if given
        self._early = False  # media before the answer (a 183 with SDP, either way)
        self._answered_leg = False  # the 200 went out / came in
        self._ringtone: PlaybackTrack | None = None
        self._ringtone_pcm: Pcm | None = None
        self._ringtone_loading = 0  # generation of the newest ringtone decode

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
        elif isinstance(command, HangupCommand):
            if command.headers and not command.refer:
                self._bye_headers = dict(command.headers)
            super()._handle(command)
        elif command.command == "invite" and self.inbound:
            raise CommandError("an inbound SIP call is answered with 'accept'", "invite")
        elif (
            isinstance(command, PlayCommand | TtsCommand)
            and self.inbound
            and self.state is CallState.CREATED
        ):
            raise CommandError(
                f"'{command.command}' before 'accept': before the answer an inbound call "
                "plays only a 'ringing' ringtone",
                command.command,
            )
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
        if option.sip is not None and option.sip.enable_srtp is not None:
            self._srtp_choice = option.sip.enable_srtp
        sdp = self._answer_offer()
        if sdp is None:
            return
        self._pending = False
        self._invite_option = option
        self._signal("accept", sdp=sdp)
        self._status = 200
        self._stop_early()
        self._answered_leg = True
        self._start_pipeline()  # already running when there was early media
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
            sdp = self._answer_offer()  # the 183 carries our answer: early media
            if sdp is None:
                return
            self._signal("ringing", sdp=sdp)
            self._start_pipeline()
            self._early = True
            self._answered_ms = self.port.now_ms()  # inactivity counts from here
            if command.ringtone:
                self._load_ringtone(command.ringtone)
        else:
            self._signal("ringing")

    def _load_ringtone(self, source: str) -> None:
        """Decode ``source`` off the loop; it loops from the next tick on (a newer ringtone
        replaces it)."""
        self._ringtone_loading += 1
        generation = self._ringtone_loading
        future = self.port.run_blocking(
            functools.partial(decode_audio_file, source, cache_dir=self.settings.media_cache_dir)
        )

        def done(fut: Future[Any]) -> None:
            self.port.call_soon(lambda: self._ringtone_ready(generation, source, fut))

        future.add_done_callback(done)

    def _ringtone_ready(self, generation: int, source: str, fut: Future[Any]) -> None:
        if generation != self._ringtone_loading or not self._early or not self._pending:
            return  # answered, refused or ended meanwhile, or a newer ringtone was asked for
        try:
            pcm = fut.result()
        except PlaybackError as exc:
            self._error("ringing", f"the ringtone cannot be played: {exc}")
            return
        except Exception as exc:  # a bad file must never end the call
            log.exception("decoding the ringtone %s failed", source)
            self._error("ringing", f"the ringtone {source} cannot be played: {exc}")
            return
        self._ringtone_pcm = pcm
        self._ringtone = PlaybackTrack(pcm, play_id=source)

    def _stop_early(self) -> None:
        """The answer (or the end): the ringtone stops, a late decode is dropped."""
        self._early = False
        self._ringtone_loading += 1
        self._ringtone = self._ringtone_pcm = None

    def _send_dtmf(self, digits: str) -> None:
        if self._pipeline is None or self.state is not CallState.ANSWERED:
            raise CommandError("the call is not answered yet", "sendDtmf")
        try:
            self._pipeline.send_dtmf(digits)
        except DtmfError as exc:
            raise CommandError(str(exc), "sendDtmf") from None

    def _message(self, command: MessageCommand) -> None:
        if self.state is not CallState.ANSWERED or self._leg_over or self._early:
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
        if option.sip is not None and option.sip.enable_srtp is not None:
            self._srtp_choice = option.sip.enable_srtp
        try:
            offer = build_offer(
                settings.codecs,
                settings.ip,
                self._ports.port,
                session_id=self._sdp_session,
                srtp=self._wants_srtp(),
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

    def tick(self, now_ms: int) -> None:
        """Every 20 ms; an inbound call's early media before ``accept``: the ringtone (or
        silence) out, the caller's audio dropped (the processors come with ``accept``)."""
        if self.state is CallState.CREATED and self._early:
            self._early_tick(now_ms)
            return
        super().tick(now_ms)

    def _early_tick(self, now_ms: int) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        frame = None
        track = self._ringtone
        if track is not None:
            frame = track.next_frame()
            if track.finished and self._ringtone_pcm is not None:  # a ringtone loops
                self._ringtone = PlaybackTrack(self._ringtone_pcm, play_id=track.play_id)
        out = pipeline.tick(now_ms, time.time(), agent=frame)
        self._send(out.datagrams)
        self._events(out.events)

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
        self._stop_early()
        pipeline = self._pipeline
        if pipeline is not None:
            self._send(pipeline.close(now, time.time(), "call ended"))
        if pipeline is not None and self._answered_leg:
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
        if self._srtp is not None:
            extras["srtp"] = {"suite": self._srtp.suite, **self._srtp.stats.to_dict()}
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
        if record.get("leg") == "refer":  # the transfer leg's (CallSession.on_control)
            super().on_control(record)
            return
        event = record.get("event")
        now = self.port.now_ms()
        if event == "ringing":
            if self._ring_ms is None:
                self._ring_ms = now
            sdp = str(record.get("sdp") or "")
            self._emit(RingingEvent(track_id=self.id, timestamp=now, early_media=bool(sdp)))
            if sdp:
                self._early_answer(sdp)
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

    def _early_answer(self, sdp: str) -> None:
        """Outbound 18x with SDP: media and processors start now; ``answer`` waits for the
        200. An SDP we cannot use is an ``error``; the call waits for the 200 then."""
        if self._offer is None or self._answered_leg:
            return
        if self.state is not CallState.CREATED and not self._early:
            return
        try:
            media = parse_answer(self._offer, sdp)
        except SdpError as exc:
            self._error("invite", f"the early media answer cannot be used: {exc}")
            return
        self._use_answer(media)
        if self._early:
            return  # another 18x: the media moved, the processors run already
        self._early = True
        self._answered_ms = self.port.now_ms()
        # The call's processors (VAD, ASR, recorder, ...) start as at a 200; ``answer`` and
        # the answer time wait for the 200.
        self.answered(sdp, announce=False)

    def _remote_answer(self, sdp: str) -> None:
        if self._offer is None or self._answered_leg:
            return
        if self.state is not CallState.CREATED and not self._early:
            return
        try:
            media = parse_answer(self._offer, sdp)
        except SdpError as exc:  # NotAcceptable included
            self._error("invite", f"the answer cannot be used: {exc}")
            self.hangup(reason="failed", initiator="system")
            return
        self._use_answer(media)
        self._status = 200
        self._answered_leg = True
        now = self.port.now_ms()
        self._answered_ms = now
        if not self._early:
            self.answered(sdp)
            return
        # After early media the processors run already: only the answer is left to say.
        self._early = False
        self.announce_answer(sdp)

    def _use_answer(self, media: NegotiatedMedia) -> None:
        """Run the media as ``media`` says (starting it, or moving it: a new 18x/200 SDP)."""
        self._negotiated = media
        if self._pipeline is None:
            self._start_pipeline()
        else:
            self._pipeline.update(media)

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
                srtp=self._wants_srtp(),
                srtp_key=self._negotiated.srtp if self._negotiated is not None else None,
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
                srtp=self._wants_srtp(),
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
        self._ports.watch(self._datagram)

    def _release(self) -> None:
        ports, self._ports = self._ports, None
        if ports is not None:
            ports.close()

    def _start_pipeline(self) -> None:
        media = self._negotiated
        if media is None or self._pipeline is not None:
            return
        pipeline = self._pipeline = RtpMediaPipeline(
            media, latching=self.media_settings.latching, cname=f"activecall-{self.id}"[:255]
        )
        watch_media(self.port, lambda: rtp_sample(pipeline.stats(), self._srtp_stats()))

    def _datagram(self, data: bytes, source: tuple[str, int], rtcp: bool) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return  # no media negotiated yet (before the answer or early media)
        now = self.port.now_ms()
        events = receive_media(pipeline, self._srtp_session(), data, source, rtcp, now)
        if events is None:
            return  # failed SRTP, or not a packet: counted
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
        if self._ports is not None:
            send_media(
                self._ports, datagrams, self._rtcp_mux(), self._srtp_session(), f"session {self.id}"
            )

    def _rtcp_mux(self) -> bool:
        return self._negotiated is not None and self._negotiated.rtcp_mux

    def _wants_srtp(self) -> bool:
        """Whether we offer SRTP (and answer a plain offer's crypto lines): the call's
        ``sip.enable_srtp``, else ``enable_srtp``."""
        return self.media_settings.srtp if self._srtp_choice is None else self._srtp_choice

    def _srtp_stats(self) -> SrtpStats | None:
        """The SRTP counters for ``/metrics`` (``None`` while the call has no SRTP)."""
        return self._srtp.stats if self._srtp is not None else None

    def _srtp_session(self) -> SrtpSession | None:
        """The SRTP contexts of the negotiated keys (new keys from a re-offer or a later
        answer get new contexts; the counters carry on)."""
        srtp = srtp_for(self._srtp, self._negotiated.srtp if self._negotiated else None)
        if srtp is not None:
            self._srtp = srtp
        return srtp

    # ------------------------------------------------------------------ output

    def _signal(self, action: str, **fields: Any) -> None:
        """A ``sip`` record to the supervisor (a text record: see workers.control)."""
        self.port.emit_text(control.encode(control.OP_SIP, action=action, **fields))
