"""A browser call (``/call/webrtc``): the ``/call`` session with a WebRTC peer as its media.

``invite`` must carry the browser's ``offer``; the session answers with ``trackStart``, then
``answer{sdp}`` once ICE gathering is complete (reference §2.9). Trickled ``addIceCandidate``
commands go to the peer (buffered until it exists). Caller audio comes off the peer each tick
into the same pipeline as ``/call`` (VAD, denoise, AGC, ASR, recorder); agent audio (``play``,
``tts``) goes out on the peer's track. With ``subscribe: true`` the WebSocket also gets both
legs as PCM16LE 16 kHz frames behind a one-byte track prefix (``0x00`` agent, ``0x01`` caller).

Its frame counters go to the worker's media totals (``/metrics``: ``activecall_webrtc_*``).
An ICE/DTLS failure ends the call with ``error`` + ``hangup``; the browser closing its side
ends it with ``hangup``. The peer connection and its ports are released when the call ends.
"""

from __future__ import annotations

import logging
from typing import Any

from activecall.media.codec import Pcm
from activecall.protocol import AddIceCandidateCommand, CallOption, Command, CommandError
from activecall.webrtc import WebRtcError, WebRtcPeer, set_consent_freshness
from activecall.workers.media_stats import watch_media, webrtc_sample
from activecall.workers.session import CallSession, CallState

__all__ = ["CONSENT_FAILURES", "CONSENT_INTERVAL_S", "WebRtcSession"]

log = logging.getLogger(__name__)

CONSENT_INTERVAL_S = 2.0
CONSENT_FAILURES = 5
"""A browser that vanished is noticed within about 10 s (aioice's default is about 33 s)."""
AGENT_PREFIX = b"\x00"
CALLER_PREFIX = b"\x01"
DEFAULT_HANDSHAKE_S = 30.0

set_consent_freshness(CONSENT_INTERVAL_S, CONSENT_FAILURES)


class WebRtcSession(CallSession):
    """A ``/call/webrtc`` session: media over an aiortc peer connection in this worker."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer: WebRtcPeer | None = None
        self._early_candidates: list[AddIceCandidateCommand] = []
        self._subscribe = False

    # -- commands

    def _handle(self, command: Command) -> None:
        if isinstance(command, AddIceCandidateCommand):
            self._add_candidate(command)
            return
        super()._handle(command)

    def _add_candidate(self, command: AddIceCandidateCommand) -> None:
        if self.state is CallState.ENDED:
            return
        if self._peer is None:
            self._early_candidates.append(command)  # before invite: kept for the peer
            return
        try:
            self._peer.add_ice_candidate(
                command.candidate, command.sdp_mid, command.sdp_mline_index
            )
        except WebRtcError as exc:
            raise CommandError(f"addIceCandidate: {exc}", "addIceCandidate") from None

    # -- transport hooks

    def _start_media(self, option: CallOption) -> None:
        if not option.offer:
            raise CommandError("a WebRTC invite needs option.offer (the browser's SDP)", "invite")
        handshake = option.handshake_timeout
        try:
            peer = WebRtcPeer(
                self.settings.ice_servers,
                enable_ipv6=bool(option.enable_ipv6),
                on_state=self._on_peer_state,
                handshake_timeout=float(handshake) if handshake else DEFAULT_HANDSHAKE_S,
            )
        except WebRtcError as exc:
            raise CommandError(f"invite: {exc}", "invite") from None
        self._peer = peer
        stats = peer.stats  # outlives the peer: the last counts are taken when the call ends
        watch_media(self.port, lambda: webrtc_sample(stats))
        self._subscribe = bool(option.subscribe)
        self.track_start()
        self._spawn(self._negotiate(peer, option.offer))

    async def _negotiate(self, peer: WebRtcPeer, offer: str) -> None:
        try:
            sdp = await peer.answer(offer)
        except WebRtcError as exc:
            self._invite_failed(str(exc))
            return
        if self.state is not CallState.CREATED:
            return  # hung up while gathering
        for command in self._early_candidates:
            try:
                peer.add_ice_candidate(command.candidate, command.sdp_mid, command.sdp_mline_index)
            except WebRtcError as exc:
                self.error("command", f"addIceCandidate: {exc}")
        self._early_candidates.clear()
        self.answered(sdp)

    def _invite_failed(self, message: str) -> None:
        if self.state is CallState.ENDED:
            return
        self.error("invite", message)
        self.hangup(reason="error", initiator="system")

    def _on_peer_state(self, state: str) -> None:
        if self.state is CallState.ENDED:
            return
        if state == "failed":
            self.error("webrtc", "the WebRTC connection failed (ICE or DTLS)")
            self.hangup(reason="error", initiator="system")
        elif state == "closed":
            self.hangup(reason="caller", initiator="caller")

    def _pull_media(self, now_ms: int) -> None:
        peer = self._peer
        if peer is None:
            return
        for frame in peer.pop_frames():
            self.caller_audio(frame)
            if self._subscribe:
                self.port.emit_audio(CALLER_PREFIX + frame.tobytes())

    def _send_agent(self, frame: Pcm | None) -> None:
        if frame is None or self._peer is None:
            return
        self._peer.push_frame(frame)
        if self._subscribe:
            self.port.emit_audio(AGENT_PREFIX + frame.astype("<i2", copy=False).tobytes())

    def _stop_media(self) -> None:
        peer, self._peer = self._peer, None
        if peer is not None:
            self._spawn(peer.close())
