"""The WebRTC leg of a browser call (``/call/webrtc``): one aiortc peer connection.

A :class:`WebRtcPeer` lives in the worker that owns the call and runs on its event loop. The
session drives it: :meth:`WebRtcPeer.answer` turns the browser's offer into our answer (after
full ICE gathering; the server never trickles), :meth:`WebRtcPeer.add_ice_candidate` takes the
browser's trickled candidates, :meth:`WebRtcPeer.pop_frames` hands over the caller's audio and
:meth:`WebRtcPeer.push_frame` takes the agent's, both as 20 ms frames of 16 kHz mono int16.

Codecs are aiortc's audio set: Opus (48 kHz), G.722, PCMU, PCMA. When the offer lists several,
aiortc answers with the common ones in the *offer's* order and sends with the first of them, so
the browser's preference wins (reference §2.8); browsers list Opus first. (aiortc reads that
order from the ``rtpmap`` lines; :func:`~activecall.webrtc.sdp.order_codecs` first aligns them
with the ``m=`` line.) Decoding runs on aiortc's decoder thread and encoding on the loop's
default executor, so neither blocks the loop.

Connection states reach ``on_state`` once each, nothing after ``closed``: ``connected``,
``failed`` (ICE or DTLS failed, ICE consent expired, or no connection within the handshake
timeout) and ``closed`` (the browser closed DTLS, aiortc gave up after a failure, or
:meth:`WebRtcPeer.close` ran). After ``failed`` the owner should still call
:meth:`WebRtcPeer.close`. How fast a vanished browser is noticed is ICE consent freshness
(RFC 7675), a process-wide setting of aioice: see :func:`set_consent_freshness`.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice
import av
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceCandidate,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.exceptions import InternalError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcicetransport import parse_stun_turn_uri
from aiortc.sdp import candidate_from_sdp

from activecall._native.resample import SUPPORTED_RATES, Resampler
from activecall.media.codec import FRAME_SAMPLES, INTERNAL_RATE, Reframer
from activecall.webrtc.sdp import (
    audio_codecs,
    check_offer,
    order_codecs,
    parse_candidate,
    strip_ipv6_candidates,
)

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "INBOUND_LIMIT",
    "OUTBOUND_LIMIT",
    "AgentTrack",
    "CallerAudio",
    "PeerStats",
    "WebRtcError",
    "WebRtcPeer",
    "live_peers",
    "set_consent_freshness",
]

log = logging.getLogger(__name__)

Pcm = npt.NDArray[np.int16]

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
"""Seconds from our answer to ``connected`` before the peer reports ``failed``."""

INBOUND_LIMIT = 50
"""Caller frames (1 s) kept for :meth:`WebRtcPeer.pop_frames`; older ones are dropped."""

OUTBOUND_LIMIT = 10
"""Agent frames (200 ms) queued for sending; pushing more drops the oldest."""

FRAME_SECONDS = FRAME_SAMPLES / INTERNAL_RATE
_TIME_BASE = fractions.Fraction(1, INTERNAL_RATE)
# A sender that has fallen this far behind its clock (a stalled loop) restarts the clock
# instead of bursting the missed frames out.
_MAX_LAG = 0.1
_STATES = ("connected", "failed", "closed")
# What aiortc raises from a description it cannot use (its SDP parser asserts).
_DESCRIPTION_ERRORS = (
    ValueError,
    AssertionError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    InternalError,
    InvalidStateError,
    OperationError,
)

# Peer connections opened and not yet closed, by whoever closed them (us or the browser).
_open: set[RTCPeerConnection] = set()


class WebRtcError(Exception):
    """The browser's signalling cannot be used: bad SDP, bad candidate, no common codec."""


def live_peers() -> int:
    """Peer connections opened in this process and not closed yet."""
    return len(_open)


def set_consent_freshness(interval_s: float = 5.0, failures: int = 6) -> None:
    """Process-wide: check ICE consent every ``interval_s`` s; ``failures`` misses end a peer.

    aioice's defaults (5 s, 6) notice a vanished browser after about 33 s (RFC 7675's 30 s).
    """
    if interval_s <= 0 or failures < 1:
        raise ValueError("consent interval must be positive and failures at least 1")
    aioice.ice.CONSENT_INTERVAL = interval_s  # type: ignore[assignment]
    aioice.ice.CONSENT_FAILURES = failures


@dataclass(slots=True)
class PeerStats:
    """Frame counters of one peer (20 ms frames of 16 kHz audio)."""

    frames_in: int = 0
    """Caller frames decoded from the browser's audio."""
    dropped_in: int = 0
    """Caller frames dropped because nobody popped them in time."""
    frames_out: int = 0
    """Agent frames handed to the encoder (pushed ones; silence is not counted)."""
    silence_out: int = 0
    """Frames of silence sent because no agent frame was queued."""
    dropped_out: int = 0
    """Agent frames dropped because the send queue was full."""
    candidates_ignored: int = 0
    """Remote candidates dropped: IPv6 while IPv6 is off."""


class CallerAudio:
    """Decoded browser audio (any rate aiortc decodes to, mono or interleaved stereo) in,
    16 kHz mono int16 frames of 320 samples out. A core without I/O."""

    __slots__ = ("_rate", "_reframer", "_resampler")

    def __init__(self) -> None:
        self._rate = 0
        self._resampler: Resampler | None = None
        self._reframer = Reframer(FRAME_SAMPLES)

    def push(self, samples: Pcm, channels: int, rate: int) -> npt.NDArray[np.int16]:
        """Add interleaved int16 samples; return the 20 ms frames now complete, ``(n, 320)``."""
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {rate} Hz")
        if channels < 1:
            raise ValueError("channels must be at least 1")
        pcm = np.asarray(samples, dtype=np.int16).reshape(-1)
        if channels > 1:
            usable = len(pcm) - len(pcm) % channels
            mixed = pcm[:usable].reshape(-1, channels).astype(np.int32).sum(axis=1)
            pcm = (mixed // channels).astype(np.int16)
        if rate != self._rate:
            # A codec switch mid-call: start a new resampler for the new rate.
            self._rate = rate
            self._resampler = Resampler(rate, INTERNAL_RATE) if rate != INTERNAL_RATE else None
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        return self._reframer.push(pcm)


class AgentTrack(MediaStreamTrack):
    """The agent's audio to the browser: pushed 16 kHz frames, paced at 20 ms, else silence.

    aiortc's encoder resamples each frame to the negotiated codec's rate (48 kHz Opus, 8 kHz
    G.711, 16 kHz G.722).
    """

    kind = "audio"

    def __init__(self, stats: PeerStats, limit: int = OUTBOUND_LIMIT) -> None:
        super().__init__()
        self._stats = stats
        self._queue: deque[Pcm] = deque()
        self._limit = limit
        self._silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._pts = 0
        self._start: float | None = None

    def push(self, frame: Pcm) -> None:
        """Queue one frame; drop (and count) the oldest when more than ``limit`` wait."""
        self._queue.append(frame)
        while len(self._queue) > self._limit:
            self._queue.popleft()
            self._stats.dropped_out += 1

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._queue)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame, at its time (aiortc's sender calls this in a loop)."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / INTERNAL_RATE - loop.time()
            if wait < -_MAX_LAG:
                self._start = loop.time() - self._pts / INTERNAL_RATE
            elif wait > 0:
                await asyncio.sleep(wait)
        if self._queue:
            pcm = self._queue.popleft()
            self._stats.frames_out += 1
        else:
            pcm = self._silence
            self._stats.silence_out += 1
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = INTERNAL_RATE
        frame.pts = self._pts
        frame.time_base = _TIME_BASE
        return frame


class WebRtcPeer:
    """One browser call's peer connection: offer in, answer out, 20 ms frames both ways.

    ``ice_servers`` are ``GET /iceservers`` entries (``urls``, ``username``, ``credential``);
    aiortc uses the first STUN and the first TURN server. ``on_state`` gets ``connected``,
    ``failed`` and ``closed``, each at most once.
    """

    def __init__(
        self,
        ice_servers: Sequence[Mapping[str, Any]] = (),
        *,
        enable_ipv6: bool = False,
        on_state: Callable[[str], None] | None = None,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        inbound_limit: int = INBOUND_LIMIT,
        outbound_limit: int = OUTBOUND_LIMIT,
    ) -> None:
        self._ice_servers = _ice_servers(ice_servers)
        self.enable_ipv6 = enable_ipv6
        self._on_state = on_state
        self._handshake_timeout = handshake_timeout
        self.stats = PeerStats()
        self._track = AgentTrack(self.stats, outbound_limit)
        self._inbound: deque[Pcm] = deque()
        self._inbound_limit = inbound_limit
        self._pc: RTCPeerConnection | None = None
        self._answered = False
        self._remote_set = False
        # Every accepted candidate, so an offer that failed half-way can be answered again.
        self._received: list[RTCIceCandidate | None] = []
        self._candidates: asyncio.Queue[RTCIceCandidate | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._receiving: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reported: set[str] = set()
        self._close_task: asyncio.Task[None] | None = None
        self.codec: str | None = None
        """The codec we send with (``opus/48000/2``, ``PCMU/8000``, …), once answered."""

    # ------------------------------------------------------------------ signalling

    @property
    def state(self) -> str:
        """aiortc's connection state: new, connecting, connected, failed or closed."""
        if self._close_task is not None:
            return "closed"
        return self._pc.connectionState if self._pc is not None else "new"

    async def answer(self, offer_sdp: str) -> str:
        """Take the browser's offer; return our answer SDP once ICE gathering is complete.

        Without ``enable_ipv6``, IPv6 candidates are left out of both the offer and the answer.

        Raise :class:`WebRtcError` for an offer we cannot answer; the peer is then as before
        and may answer a corrected offer.
        """
        if self._close_task is not None:
            raise WebRtcError("the peer connection is closed")
        if self._answered:
            raise WebRtcError("the offer was already answered (renegotiation is not supported)")
        try:
            check_offer(offer_sdp)
        except ValueError as exc:
            raise WebRtcError(f"invalid offer SDP: {exc}") from None
        offer_sdp = order_codecs(offer_sdp)
        if not self.enable_ipv6:
            offer_sdp = strip_ipv6_candidates(offer_sdp)
        pc = self._open()
        feeder: asyncio.Task[None] | None = None
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self._attach(pc)
            # From here on candidates go straight to ICE, in arrival order.
            self._remote_set = True
            for candidate in self._received:
                self._candidates.put_nowait(candidate)
            feeder = self._spawn(self._feed_candidates(pc))
            await pc.setLocalDescription(await pc.createAnswer())
        except _DESCRIPTION_ERRORS as exc:
            await self._undo(pc, feeder)
            if self._close_task is not None:
                raise WebRtcError("the peer connection was closed while answering") from None
            offered = ", ".join(audio_codecs(offer_sdp)) or "none"
            if isinstance(exc, OperationError):
                raise WebRtcError(
                    f"no common audio codec: the offer has {offered}; "
                    "we support opus/48000/2, G722/8000, PCMU/8000, PCMA/8000"
                ) from None
            raise WebRtcError(f"cannot answer the offer: {exc or type(exc).__name__}") from None
        if self._close_task is not None:  # closed while we were gathering
            raise WebRtcError("the peer connection was closed while answering")
        self._answered = True
        answer = pc.localDescription.sdp
        if not self.enable_ipv6:
            answer = strip_ipv6_candidates(answer)
        codecs = audio_codecs(answer)
        self.codec = codecs[0] if codecs else None
        if self._handshake_timeout is not None and self.state != "connected":
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._handshake_timeout, self._handshake_expired)
        return answer

    def add_ice_candidate(
        self, candidate: str, sdp_mid: str | None = None, sdp_mline_index: int | None = None
    ) -> None:
        """A trickled browser candidate; ``""`` means end of candidates.

        Candidates that come before the offer are kept and applied after it. ``sdp_mid`` (or
        else ``sdp_mline_index``) picks the media section; when neither names one of the offer's
        sections, the first section gets it (upstream ignores both). Raise
        :class:`WebRtcError` for a malformed candidate (nothing else changes).
        """
        if self._close_task is not None:
            return
        if not isinstance(candidate, str):
            raise WebRtcError("candidate must be a string")
        parsed: RTCIceCandidate | None = None
        if candidate.strip():
            try:
                line = parse_candidate(candidate)
                text = candidate.strip().removeprefix("a=").removeprefix("candidate:")
                parsed = candidate_from_sdp(text)
            except (ValueError, AssertionError) as exc:
                raise WebRtcError(f"invalid ICE candidate: {exc}") from None
            if line.is_ipv6 and not self.enable_ipv6:
                self.stats.candidates_ignored += 1
                return
            parsed.sdpMid = sdp_mid
            parsed.sdpMLineIndex = sdp_mline_index
        if not self._answered:
            self._received.append(parsed)
        if self._remote_set:
            self._candidates.put_nowait(parsed)

    def remote_candidates(self) -> list[str]:
        """The remote candidates ICE knows of (from the offer, trickled or learned), as SDP."""
        pc = self._pc
        if pc is None:
            return []
        seen: list[str] = []
        for transceiver in pc.getTransceivers():
            ice = transceiver.receiver.transport.transport
            for c in ice.getRemoteCandidates():
                text = f"candidate:{c.foundation} {c.component} {c.protocol} {c.priority} "
                text += f"{c.ip} {c.port} typ {c.type}"
                if text not in seen:
                    seen.append(text)
        return seen

    # ------------------------------------------------------------------ media

    def pop_frames(self) -> list[Pcm]:
        """Take the caller's frames decoded since the last call (20 ms, 16 kHz, int16)."""
        frames = list(self._inbound)
        self._inbound.clear()
        return frames

    def push_frame(self, frame: Pcm) -> None:
        """Queue one agent frame (320 samples of 16 kHz int16) for the browser.

        Raise ``ValueError`` for anything else. Frames pushed after :meth:`close` are ignored.
        """
        pcm = np.asarray(frame)
        if pcm.dtype != np.int16 or pcm.shape != (FRAME_SAMPLES,):
            raise ValueError(
                f"push_frame wants {FRAME_SAMPLES} int16 samples, got {pcm.dtype} {pcm.shape}"
            )
        if self._close_task is None:
            self._track.push(pcm.copy())

    @property
    def queued_out(self) -> int:
        """Agent frames waiting to be sent."""
        return self._track.queued

    # ------------------------------------------------------------------ the end

    async def close(self) -> None:
        """Close the peer connection and its sockets; report ``closed``. Idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._track.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        pc, self._pc = self._pc, None
        if pc is not None:
            await self._discard(pc)
        self._report("closed")

    # ------------------------------------------------------------------ internals

    def _open(self) -> RTCPeerConnection:
        if self._pc is None:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self._ice_servers)))
            _open.add(pc)
            pc.on("connectionstatechange", lambda: self._on_connection_state(pc))
            pc.on("track", self._on_track)
            self._pc = pc
        return self._pc

    async def _discard(self, pc: RTCPeerConnection) -> None:
        if self._pc is pc:
            self._pc = None
        await pc.close()
        _open.discard(pc)
        # Datagram transports close their sockets one loop iteration after close().
        await asyncio.sleep(0)

    async def _undo(self, pc: RTCPeerConnection, feeder: asyncio.Task[None] | None) -> None:
        """Forget a failed answer: the next offer starts from a fresh peer connection."""
        self._remote_set = False
        for task in (feeder, self._receiving):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._receiving = None
        self._candidates = asyncio.Queue()
        await self._discard(pc)

    def _attach(self, pc: RTCPeerConnection) -> None:
        """Our track on the first audio section; every other media section inactive."""
        audio = None
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio" and audio is None:
                audio = transceiver
            else:
                transceiver.direction = "inactive"
        if audio is None:
            return
        if audio.sender.track is None:
            pc.addTrack(self._track)
        # A vanished browser: consent expiry closes ICE, and aiortc closes DTLS and then the
        # whole connection with it, so the connection goes straight to "closed". The ICE
        # transport still passes through "failed", which tells it apart from a hang-up.
        ice = audio.receiver.transport.transport
        ice.on("statechange", lambda: self._report("failed") if ice.state == "failed" else None)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._receiving is None:
            self._receiving = self._spawn(self._receive(track))

    async def _receive(self, track: MediaStreamTrack) -> None:
        audio = CallerAudio()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            try:
                frames = audio.push(_interleaved(frame), len(frame.layout.channels), frame.rate)
            except ValueError as exc:
                log.warning("dropping browser audio: %s", exc)
                continue
            for pcm in frames:
                self._inbound.append(pcm)
                self.stats.frames_in += 1
            while len(self._inbound) > self._inbound_limit:
                self._inbound.popleft()
                self.stats.dropped_in += 1

    async def _feed_candidates(self, pc: RTCPeerConnection) -> None:
        # One consumer keeps trickled candidates (and end-of-candidates) in arrival order.
        while True:
            candidate = await self._candidates.get()
            if candidate is not None:
                _aim(pc, candidate)
            try:
                await pc.addIceCandidate(candidate)
            except (ValueError, InvalidStateError) as exc:
                log.warning("ICE candidate not applied: %s", exc)

    def _on_connection_state(self, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        if state == "closed":
            _open.discard(pc)
            if self._close_task is None:
                # aiortc closed itself (browser hung up, or consent expired). When ICE failed,
                # its "failed" reaches our listener after this one: let it be reported first.
                asyncio.get_running_loop().call_soon(self._report, "closed")
                return
        if state == "connected" and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if state in _STATES:
            self._report(state)

    def _handshake_expired(self) -> None:
        self._timer = None
        if self.state not in ("connected", "closed"):
            self._report("failed")

    def _report(self, state: str) -> None:
        if state in self._reported or "closed" in self._reported:
            return  # each state once, nothing after "closed"
        self._reported.add(state)
        if self._on_state is None:
            return
        try:
            self._on_state(state)
        except Exception:
            log.exception("on_state(%r) failed", state)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _aim(pc: RTCPeerConnection, candidate: RTCIceCandidate) -> None:
    """Point ``candidate`` at a media section the offer has: its own, or else the first."""
    mids = [t.mid for t in pc.getTransceivers()]
    if pc.sctp is not None:
        mids.append(pc.sctp.mid)
    if candidate.sdpMid is not None and candidate.sdpMid in mids:
        candidate.sdpMLineIndex = None
        return
    index = candidate.sdpMLineIndex
    if candidate.sdpMid is None and index is not None and 0 <= index < len(mids):
        return
    # With BUNDLE (every browser) the first section's transport carries everything.
    candidate.sdpMid, candidate.sdpMLineIndex = None, 0


def _interleaved(frame: av.AudioFrame) -> Pcm:
    """The int16 samples of a decoded frame, channels interleaved (aiortc decodes to s16)."""
    if frame.format.name not in ("s16", "s16p"):
        raise ValueError(f"unexpected decoded sample format {frame.format.name}")
    samples = np.asarray(frame.to_ndarray(), dtype=np.int16)
    # Planar frames are (channels, samples); packed ones are already interleaved.
    return samples.T.reshape(-1) if frame.format.is_planar else samples.reshape(-1)


def _ice_servers(servers: Sequence[Mapping[str, Any]]) -> list[RTCIceServer]:
    """``GET /iceservers`` entries as aiortc servers; ``WebRtcError`` for a malformed one."""
    result = []
    for i, server in enumerate(servers):
        if not isinstance(server, Mapping):
            raise WebRtcError(f"ice server {i}: want an object with 'urls', got {server!r}")
        urls = server.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list:
            raise WebRtcError(f"ice server {i}: 'urls' must be a URL or a non-empty list")
        for url in url_list:
            try:
                parse_stun_turn_uri(url) if isinstance(url, str) else None
            except ValueError as exc:
                raise WebRtcError(f"ice server {i}: {url!r}: {exc}") from None
            if not isinstance(url, str):
                raise WebRtcError(f"ice server {i}: URL {url!r} is not a string")
        kind = server.get("credential_type", server.get("credentialType", "password"))
        result.append(
            RTCIceServer(
                urls=list(url_list),
                username=server.get("username"),
                credential=server.get("credential"),
                credentialType=kind,
            )
        )
    return result
