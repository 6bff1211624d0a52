"""The WebRTC peer against a real aiortc "browser": audio both ways, codecs, trickle ICE,
IPv6 stripping, bad signalling, closing, and a browser that vanishes (a killed process).

Every test runs on uvloop, the worker's loop; the browser is an aiortc ``RTCPeerConnection``
in the same loop (or in a child process, for the vanishing browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import aioice.ice
import av
import numpy as np
import numpy.typing as npt
import psutil
import pytest
import uvloop
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from activecall.media.codec import FRAME_SAMPLES
from activecall.webrtc import WebRtcError, WebRtcPeer, live_peers, set_consent_freshness
from activecall.webrtc.peer import OUTBOUND_LIMIT, CallerAudio
from activecall.webrtc.sdp import audio_codecs, parse_candidate

Pcm = npt.NDArray[np.int16]
HANG_GUARD = 10.0
CALLER_HZ = 440.0
AGENT_HZ = 1000.0


# ---------------------------------------------------------------------------- helpers


class Owned:
    """Peers and browsers a test made; all closed when the test ends, passed or failed."""

    def __init__(self) -> None:
        self._things: list[WebRtcPeer | Browser] = []

    def peer(self, *args: Any, **kwargs: Any) -> WebRtcPeer:
        peer = WebRtcPeer(*args, **kwargs)
        self._things.append(peer)
        return peer

    def browser(self, *args: Any, **kwargs: Any) -> Browser:
        browser = Browser(*args, **kwargs)
        self._things.append(browser)
        return browser

    async def close(self) -> None:
        for thing in reversed(self._things):
            await thing.close()


def run(main: Callable[[Owned], Coroutine[Any, Any, None]]) -> None:
    """Run a test on uvloop, as the worker does; close what it made."""

    async def wrapper() -> None:
        owned = Owned()
        try:
            await main(owned)
        finally:
            await owned.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(wrapper())


async def until(predicate: Callable[[], bool], timeout: float = HANG_GUARD) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def tone(freq: float, start: int, n: int = FRAME_SAMPLES, rate: int = 16000) -> Pcm:
    t = (np.arange(n) + start) / rate
    return np.round(0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def peak_hz(pcm: npt.NDArray[Any], rate: int) -> float:
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    return float(np.argmax(np.abs(np.fft.rfft(x)))) * rate / len(pcm)


def rms(pcm: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def udp_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="udp")}


class ToneTrack(MediaStreamTrack):
    """The browser's microphone: a 440 Hz tone at 16 kHz, paced at 20 ms."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self.sent / 16000 - loop.time()))
        frame = av.AudioFrame.from_ndarray(
            tone(CALLER_HZ, self.sent).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 16000
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, 16000)
        self.sent += FRAME_SAMPLES
        return frame


class Browser:
    """An aiortc peer connection playing the browser: sends a tone, keeps what it hears."""

    def __init__(self, codec: str | None = None, *, send: bool = True) -> None:
        self.pc = RTCPeerConnection()
        self.heard: list[av.AudioFrame] = []
        self._tasks: list[asyncio.Task[None]] = []
        if send:
            transceiver = self.pc.addTransceiver(ToneTrack(), direction="sendrecv")
        else:
            transceiver = self.pc.addTransceiver("audio", direction="recvonly")
        if codec is not None:
            caps = RTCRtpSender.getCapabilities("audio").codecs
            transceiver.setCodecPreferences(
                [c for c in caps if c.mimeType.lower() == f"audio/{codec}".lower()]
            )
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def listen() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                assert isinstance(frame, av.AudioFrame)
                self.heard.append(frame)

        self._tasks.append(asyncio.ensure_future(listen()))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def heard_pcm(self, start: int = 0) -> tuple[Pcm, int]:
        """Mono int16 samples heard from frame ``start`` on, and their rate."""
        frames = self.heard[start:]
        rate = frames[0].sample_rate
        chunks = [f.to_ndarray().reshape(-1, len(f.layout.channels)).mean(axis=1) for f in frames]
        return np.concatenate(chunks).astype(np.int16), rate

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def without_candidates(sdp: str) -> str:
    """``sdp`` as a trickling browser sends it: no candidates, no end-of-candidates."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    kept = [ln for ln in lines if not ln.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept)


def candidates_of(sdp: str) -> list[str]:
    return [ln[2:] for ln in sdp.splitlines() if ln.startswith("a=candidate:")]


async def connected_call(
    own: Owned, browser: Browser, **kwargs: Any
) -> tuple[WebRtcPeer, list[str]]:
    states: list[str] = []
    peer = own.peer([], on_state=states.append, **kwargs)
    await browser.accept(await peer.answer(await browser.offer()))
    await until(lambda: "connected" in states and browser.pc.connectionState == "connected")
    return peer, states


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test closes every peer connection and every UDP socket it opened."""
    before_peers, before_ports = live_peers(), udp_ports()
    yield
    assert live_peers() == before_peers
    assert udp_ports() <= before_ports


# ---------------------------------------------------------------------------- audio


@pytest.mark.parametrize("codec", ["opus", "PCMU"])
def test_audio_flows_both_ways(codec: str) -> None:
    """The browser's tone arrives as 16 kHz frames; pushed frames reach the browser."""

    async def main(own: Owned) -> None:
        browser = own.browser(codec)
        peer, states = await connected_call(own, browser)
        assert peer.codec == {"opus": "opus/48000/2", "PCMU": "PCMU/8000"}[codec]

        # Nothing pushed yet: the browser hears our silence.
        await asyncio.sleep(0.3)
        quiet_until = len(browser.heard)
        assert quiet_until >= 5

        # Push 0.8 s of a 1 kHz tone at the media tick's pace, collecting the caller's audio.
        caller: list[Pcm] = []
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(40):
            peer.push_frame(tone(AGENT_HZ, i * FRAME_SAMPLES))
            caller += peer.pop_frames()
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
        await asyncio.sleep(0.2)
        caller += peer.pop_frames()

        assert all(f.dtype == np.int16 and f.shape == (FRAME_SAMPLES,) for f in caller)
        assert len(caller) >= 30
        assert peer.stats.frames_in >= len(caller)
        heard_in = np.concatenate(caller[-25:])
        assert abs(peak_hz(heard_in, 16000) - CALLER_HZ) < 10
        assert rms(heard_in) > 0.3 * 32767 / np.sqrt(2) * 0.5

        silence, rate = browser.heard_pcm()
        assert rms(silence[: quiet_until * rate // 50]) < 50
        heard, rate = browser.heard_pcm(quiet_until)
        assert rate == (48000 if codec == "opus" else 8000)
        assert rms(heard) > 0.3 * 32767 / np.sqrt(2) * 0.3
        assert abs(peak_hz(heard, rate) - AGENT_HZ) < 10
        assert peer.stats.frames_out + peer.queued_out + peer.stats.dropped_out == 40
        assert peer.stats.frames_out >= 30
        assert peer.stats.silence_out >= 10

        await peer.close()
        await browser.close()
        assert states == ["connected", "closed"]

    run(main)


def test_offer_order_picks_the_codec() -> None:
    """With Opus and PCMU both offered, aiortc keeps the offer's order and sends the first."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        offer = await browser.offer()
        assert audio_codecs(offer)[0] == "opus/48000/2"
        peer = own.peer([])
        answer = await peer.answer(offer)
        assert peer.codec == "opus/48000/2"
        assert audio_codecs(answer)[:1] == ["opus/48000/2"]
        await peer.close()

        # The same offer with PCMU moved first: PCMU wins.
        m_line = next(ln for ln in offer.splitlines() if ln.startswith("m=audio "))
        fields = m_line.split()
        pts = fields[3:]
        pcmu_first = " ".join([*fields[:3], "0", *[p for p in pts if p != "0"]])
        peer = own.peer([])
        answer = await peer.answer(offer.replace(m_line, pcmu_first))
        assert peer.codec == "PCMU/8000"
        assert "opus/48000/2" in audio_codecs(answer)
        await peer.close()
        await browser.close()

    run(main)


def test_recvonly_browser_hears_the_agent() -> None:
    """A browser without a microphone still gets the agent's audio; no caller frames."""

    async def main(own: Owned) -> None:
        browser = own.browser(send=False)
        peer, _ = await connected_call(own, browser)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(25):
            peer.push_frame(tone(AGENT_HZ, i * FRAME_SAMPLES))
            await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - loop.time()))
        await until(lambda: len(browser.heard) >= 25)
        heard, rate = browser.heard_pcm(len(browser.heard) // 2)
        assert abs(peak_hz(heard, rate) - AGENT_HZ) < 20
        assert peer.pop_frames() == []
        await peer.close()
        await browser.close()

    run(main)


def test_outbound_queue_is_bounded() -> None:
    """Frames pushed faster than they are sent: the oldest beyond 200 ms are dropped, counted."""

    async def main(own: Owned) -> None:
        peer = own.peer([])
        for i in range(OUTBOUND_LIMIT + 7):
            peer.push_frame(tone(AGENT_HZ, i * FRAME_SAMPLES))
        assert peer.queued_out == OUTBOUND_LIMIT
        assert peer.stats.dropped_out == 7
        await peer.close()

    run(main)


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros(FRAME_SAMPLES, dtype=np.float32),
        np.zeros(FRAME_SAMPLES - 1, dtype=np.int16),
        np.zeros((2, FRAME_SAMPLES), dtype=np.int16),
        [0] * FRAME_SAMPLES,
    ],
    ids=["float32", "short", "2-D", "list"],
)
def test_push_frame_rejects_a_bad_frame(frame: Any) -> None:
    async def main(own: Owned) -> None:
        peer = own.peer([])
        with pytest.raises(ValueError, match="320 int16 samples"):
            peer.push_frame(frame)
        assert peer.queued_out == 0
        await peer.close()

    run(main)


def test_caller_audio_downmixes_and_resamples() -> None:
    """48 kHz stereo (Opus) and 8 kHz mono (G.711) both become 320-sample 16 kHz frames."""
    stereo = np.zeros((4800, 2), dtype=np.int16)
    t = np.arange(4800) / 48000
    stereo[:, 0] = np.round(0.5 * 32767 * np.sin(2 * np.pi * CALLER_HZ * t))  # left only
    audio = CallerAudio()
    frames = np.concatenate([audio.push(chunk, 2, 48000) for chunk in np.split(stereo, 5)])
    assert frames.shape[1] == FRAME_SAMPLES
    assert 4 <= len(frames) <= 5
    mono = frames.reshape(-1)[200:]
    assert abs(peak_hz(mono, 16000) - CALLER_HZ) < 10
    # Left at half scale, right silent: the downmix is a quarter-scale sine.
    assert 0.2 < rms(mono) / (32767 / np.sqrt(2)) < 0.3

    narrow = CallerAudio()
    frames = narrow.push(tone(CALLER_HZ, 0, 1600, rate=8000), 1, 8000)
    assert frames.shape == (10, FRAME_SAMPLES) or frames.shape == (9, FRAME_SAMPLES)
    assert abs(peak_hz(frames.reshape(-1)[200:], 16000) - CALLER_HZ) < 10

    with pytest.raises(ValueError, match="unsupported sample rate"):
        CallerAudio().push(tone(CALLER_HZ, 0), 1, 11025)


# ---------------------------------------------------------------------------- ICE


@pytest.mark.parametrize(
    ("when", "sdp_mid", "sdp_mline_index"),
    [
        ("before the offer", "0", 0),
        ("after the offer", "0", None),
        ("after the offer", None, 0),
        ("after the offer", None, None),
        ("after the offer", "no-such-mid", 7),
    ],
)
def test_trickled_candidates_connect_the_call(
    when: str, sdp_mid: str | None, sdp_mline_index: int | None
) -> None:
    """Candidates that are only trickled are enough to connect, however the section is named."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        offer = await browser.offer()
        ipv4 = [c for c in candidates_of(offer) if not parse_candidate(c).is_ipv6]
        assert ipv4
        states: list[str] = []
        peer = own.peer([], on_state=states.append)
        if when == "before the offer":  # kept, applied once the offer is set
            for candidate in ipv4:
                peer.add_ice_candidate(candidate, sdp_mid, sdp_mline_index)
        answer = await peer.answer(without_candidates(offer))
        if when == "after the offer":
            for candidate in ipv4:
                peer.add_ice_candidate(candidate, sdp_mid, sdp_mline_index)
        peer.add_ice_candidate("", None, None)
        # The browser gets no candidate of ours: only our checks to its trickled ones connect.
        await browser.accept(without_candidates(answer))
        await until(lambda: "connected" in states)
        await until(lambda: len(peer.pop_frames()) > 0)
        known = {(c.address, c.port) for c in map(parse_candidate, peer.remote_candidates())}
        assert {(c.address, c.port) for c in map(parse_candidate, ipv4)} <= known

    run(main)


def test_no_candidates_fails_after_the_handshake_timeout() -> None:
    """The control case of the test above: nothing trickled, the peer reports ``failed``."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        states: list[str] = []
        peer = own.peer([], on_state=states.append, handshake_timeout=1.0)
        answer = await peer.answer(without_candidates(await browser.offer()))
        await browser.accept(without_candidates(answer))
        await until(lambda: "failed" in states, timeout=5.0)
        assert states == ["failed"]
        await peer.close()
        assert states == ["failed", "closed"]
        await browser.close()

    run(main)


def test_ipv6_candidates_are_stripped() -> None:
    """IPv6 candidates leave the offer, the answer and the trickle unless IPv6 is enabled."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        offer = await browser.offer()
        ipv6 = [c for c in candidates_of(offer) if parse_candidate(c).is_ipv6]
        if not ipv6:
            pytest.skip("this host has no global IPv6 address for ICE to gather")
        peer = own.peer([])
        answer = await peer.answer(offer)
        assert candidates_of(answer)
        assert not [c for c in candidates_of(answer) if parse_candidate(c).is_ipv6]
        assert not [c for c in peer.remote_candidates() if parse_candidate(c).is_ipv6]
        peer.add_ice_candidate(ipv6[0], "0", 0)
        assert peer.stats.candidates_ignored == 1
        await peer.close()

        both = own.peer([], enable_ipv6=True)
        answer = await both.answer(offer)
        assert [c for c in candidates_of(answer) if parse_candidate(c).is_ipv6]
        assert [c for c in both.remote_candidates() if parse_candidate(c).is_ipv6]
        await both.close()
        await browser.close()

    run(main)


@pytest.mark.parametrize(
    "candidate",
    [
        "candidate:garbage",
        "candidate:1 1 udp notanumber 192.0.2.9 5000 typ host",
        "candidate:1 1 udp 100 192.0.2.9 99999 typ host",
        "candidate:1 1 sctp 100 192.0.2.9 5000 typ host",
        "candidate:1 1 udp 100 192.0.2.9 5000 kind host",
        "candidate:1 1 udp 100 192.0.2.9 5000 typ nearby",
        "candidate:1 1 udp 100 192.0.2.9 5000 typ srflx raddr 0.0.0.0 rport x",
        7,
    ],
)
def test_bad_candidate_is_an_error_and_changes_nothing(candidate: Any) -> None:
    async def main(own: Owned) -> None:
        peer = own.peer([])
        with pytest.raises(WebRtcError, match="candidate"):
            peer.add_ice_candidate(candidate, "0", 0)
        browser = own.browser()
        await peer.answer(await browser.offer())
        known = peer.remote_candidates()
        with pytest.raises(WebRtcError, match="candidate"):
            peer.add_ice_candidate(candidate, "0", 0)
        await asyncio.sleep(0.05)
        assert peer.remote_candidates() == known
        await peer.close()
        await browser.close()

    run(main)


# ---------------------------------------------------------------------------- bad offers


BAD_OFFERS = {
    "empty": ("", "empty"),
    "not SDP": ("hello", "v=0"),
    "no audio": ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no audio"),
}


@pytest.mark.parametrize("name", list(BAD_OFFERS))
def test_bad_offer_is_an_error(name: str) -> None:
    sdp, message = BAD_OFFERS[name]

    async def main(own: Owned) -> None:
        peer = own.peer([])
        with pytest.raises(WebRtcError, match=message):
            await peer.answer(sdp)
        assert live_peers() == 0
        await peer.close()

    run(main)


def _edit(offer: str, drop: str = "", replace: tuple[str, str] | None = None) -> str:
    lines = offer.replace("\r\n", "\n").split("\n")
    if drop:
        lines = [ln for ln in lines if not ln.startswith(drop)]
    text = "\r\n".join(lines)
    if replace is not None:
        text = text.replace(*replace)
    return text


def test_broken_offers_are_errors_and_the_peer_can_answer_again() -> None:
    """Each broken variant of a real offer is a clear error; then the real offer works."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        offer = await browser.offer()
        m_line = next(ln for ln in offer.splitlines() if ln.startswith("m=audio "))
        broken = {
            "no ufrag": (_edit(offer, drop="a=ice-ufrag:"), "ICE username fragment"),
            "no pwd": (_edit(offer, drop="a=ice-pwd:"), "ICE password"),
            "no fingerprint": (_edit(offer, drop="a=fingerprint:"), "fingerprint"),
            "bad candidate": (
                _edit(offer, replace=("typ host", "typ nowhere")),
                "ICE candidate type",
            ),
            "no rtcp-mux": (_edit(offer, drop="a=rtcp-mux"), "RTCP mux"),
            "G.729 only": (
                _edit(
                    offer,
                    drop="a=rtpmap:",
                    replace=(m_line, " ".join([*m_line.split()[:3], "18"])),
                ),
                "no common audio codec",
            ),
        }
        peer = own.peer([])
        for name, (sdp, message) in broken.items():
            with pytest.raises(WebRtcError) as caught:
                await peer.answer(sdp)
            assert message in str(caught.value), name
            assert live_peers() == 0, name
        answer = await peer.answer(offer)
        assert audio_codecs(answer)
        await browser.accept(answer)
        await until(lambda: len(peer.pop_frames()) > 0)
        await peer.close()
        await browser.close()

    run(main)


def test_every_truncated_offer_is_answered_or_refused_clearly() -> None:
    """Cut a real offer after each line: answer() either works or raises WebRtcError."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        lines = (await browser.offer()).splitlines()
        for n in range(1, len(lines)):
            peer = own.peer([])
            with contextlib.suppress(WebRtcError):
                await peer.answer("\r\n".join(lines[:n]) + "\r\n")
            await peer.close()
        await browser.close()

    run(main)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ([{"urls": "http://stun.example.org"}], "invalid scheme"),
        ([{"urls": []}], "non-empty"),
        ([{"username": "x"}], "urls"),
        (["stun:stun.example.org"], "want an object"),
        ([{"urls": ["stun:stun.example.org?transport=udp"]}], "transport"),
        ([{"urls": [3478]}], "not a string"),
    ],
)
def test_bad_ice_servers_are_refused(servers: Any, message: str) -> None:
    with pytest.raises(WebRtcError, match=message):
        WebRtcPeer(servers)


def test_ice_servers_in_the_iceservers_shape_are_accepted() -> None:
    peer = WebRtcPeer(
        [
            {"urls": ["stun:stun.l.google.com:19302"]},
            {
                "urls": "turn:turn.example.org:3478?transport=udp",
                "username": "u",
                "credential": "p",
                "credential_type": "password",
            },
        ]
    )
    assert peer.state == "new"


# ---------------------------------------------------------------------------- the end


def test_close_releases_the_sockets_and_is_idempotent() -> None:
    async def main(own: Owned) -> None:
        before = udp_ports()
        browser = own.browser()
        peer, states = await connected_call(own, browser)
        ours = udp_ports() - before
        assert ours  # the peer's and the browser's ICE sockets
        assert live_peers() == 1
        await asyncio.gather(peer.close(), peer.close())
        await peer.close()
        assert live_peers() == 0
        assert states == ["connected", "closed"]
        await browser.close()
        assert not udp_ports() & ours
        peer.push_frame(tone(AGENT_HZ, 0))  # ignored once closed
        peer.add_ice_candidate("candidate:1 1 udp 1 192.0.2.9 5000 typ host")
        assert peer.queued_out == 0
        with pytest.raises(WebRtcError, match="closed"):
            await peer.answer(browser.pc.localDescription.sdp)

    run(main)


def test_second_offer_is_refused() -> None:
    """Renegotiation is not supported: a second offer is an error, the call goes on."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        peer, states = await connected_call(own, browser)
        with pytest.raises(WebRtcError, match="already answered"):
            await peer.answer(browser.pc.localDescription.sdp)
        await until(lambda: len(peer.pop_frames()) > 0)
        assert states == ["connected"]

    run(main)


def test_consent_freshness_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        set_consent_freshness(0, 3)
    with pytest.raises(ValueError, match="at least 1"):
        set_consent_freshness(1.0, 0)


def test_close_before_answer() -> None:
    async def main(own: Owned) -> None:
        states: list[str] = []
        peer = own.peer([], on_state=states.append)
        await peer.close()
        assert states == ["closed"]
        assert peer.state == "closed"

    run(main)


def test_browser_hanging_up_closes_the_peer() -> None:
    """The browser closes its connection (DTLS close_notify): the peer reports ``closed``."""

    async def main(own: Owned) -> None:
        browser = own.browser()
        peer, states = await connected_call(own, browser)
        await browser.close()
        await until(lambda: "closed" in states, timeout=5.0)
        assert live_peers() == 0
        await peer.close()
        assert states == ["connected", "closed"]

    run(main)


VANISHING_BROWSER = textwrap.dedent(
    """
    import asyncio, json, sys
    from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription

    async def main():
        pc = RTCPeerConnection()
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createOffer())
        print(json.dumps(pc.localDescription.sdp), flush=True)
        answer = json.loads(await asyncio.to_thread(sys.stdin.readline))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.fixture
def fast_consent() -> Iterator[None]:
    """ICE consent checked every 0.3 s, 3 misses expire it (process-wide; restored after)."""
    saved = aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES
    set_consent_freshness(0.3, 3)
    yield
    aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES = saved


def test_vanished_browser_fails_the_peer(fast_consent: None) -> None:
    """The browser's process is killed mid-call: consent expires and the peer reports it."""

    async def main(own: Owned) -> None:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            VANISHING_BROWSER,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdin is not None and child.stdout is not None
            offer = json.loads(await asyncio.wait_for(child.stdout.readline(), HANG_GUARD))
            states: list[str] = []
            peer = own.peer([], on_state=states.append)
            answer = await peer.answer(offer)
            child.stdin.write(json.dumps(answer).encode() + b"\n")
            await child.stdin.drain()
            await until(lambda: "connected" in states)
            await until(lambda: peer.stats.frames_in > 0)
            os.kill(child.pid, signal.SIGKILL)
            await child.wait()
            # 3 consent checks 0.24-0.36 s apart, each waiting 0.5 s for its answer: ~2.6 s.
            await until(lambda: "closed" in states, timeout=6.0)
            assert states == ["connected", "failed", "closed"]
            assert live_peers() == 0
            await peer.close()
            assert states == ["connected", "failed", "closed"]
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    run(main)
