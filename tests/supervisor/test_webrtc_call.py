"""A browser call on ``/call/webrtc`` against ``activecall serve``, with aiortc as the browser.

The client plays real speech as its microphone, so the VAD events come from what crossed the
peer connection; a ``play`` must reach the client's receiving track; hangup must release the
worker's peer connection and its UDP ports.
"""

from __future__ import annotations

import asyncio
import fractions
import json
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import psutil
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import connect

from tests.supervisor.test_server import Server, events_until

FRAME = 320


class Microphone(MediaStreamTrack):
    """The browser's microphone: ``pcm`` (16 kHz) at real-time pace, then silence."""

    kind = "audio"

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__()
        self.pcm = pcm
        self.sent = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        else:
            await asyncio.sleep(max(0.0, self._t0 + self.sent / 16000 - loop.time()))
        chunk = self.pcm[self.sent : self.sent + FRAME]
        if len(chunk) < FRAME:
            chunk = np.concatenate((chunk, np.zeros(FRAME - len(chunk), np.int16)))
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, 16000)
        self.sent += FRAME
        return frame


class Browser:
    """An aiortc peer connection that speaks and keeps the level of what it hears."""

    def __init__(self, pcm: np.ndarray) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver(Microphone(pcm), direction="sendrecv")
        self.levels: list[float] = []  # RMS of each frame heard
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        async def listen() -> None:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                x = frame.to_ndarray().astype(np.float64)
                self.levels.append(float(np.sqrt(np.mean(x**2))))

        self._tasks.append(asyncio.ensure_future(listen()))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def worker_udp_ports(server: Server) -> int:
    return sum(len(psutil.Process(pid).net_connections(kind="udp")) for pid in server.worker_pids())


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    assert srv.stop() == 0, srv.logs()


def test_webrtc_call_vad_play_and_hangup(server: Server, speech_16k: np.ndarray) -> None:
    tone = server.cwd / "agent.wav"
    with wave.open(str(tone), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        t = np.arange(32000) / 16000
        w.writeframes((8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes())
    ports_before = worker_udp_ports(server)

    async def call() -> tuple[list[dict[str, Any]], Browser, int]:
        browser = Browser(speech_16k[: 8 * 16000])
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        events: list[dict[str, Any]] = []
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/call/webrtc?id=w1") as ws:
                option = {"offer": browser.pc.localDescription.sdp, "vad": {}}
                await ws.send(json.dumps({"command": "invite", "option": option}))
                events += await events_until(ws, "answer", timeout=20)
                answer = events[-1]["sdp"]
                await browser.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=answer, type="answer")
                )
                events += await events_until(ws, "silence", timeout=20)
                heard_before = len(browser.levels)
                await ws.send(json.dumps({"command": "play", "url": str(tone), "playId": "t"}))
                events += await events_until(ws, "trackEnd", timeout=20)
                await asyncio.sleep(0.3)  # the last frames cross the network
                loud = sum(level > 2000 for level in browser.levels[heard_before:])
                during_call = worker_udp_ports(server)
                await ws.send(json.dumps({"command": "hangup"}))
                events += await events_until(ws, "hangup")
        finally:
            await browser.close()
        assert during_call > ports_before  # the peer had its ports while the call was up
        return events, browser, loud

    events, _browser, loud = asyncio.run(call())
    names = [e["event"] for e in events]
    assert names[:2] == ["trackStart", "answer"] and "v=0" in events[1]["sdp"]
    assert "speaking" in names and names.index("speaking") < names.index("silence")
    assert loud >= 50  # at least a second of the 2 s tone reached the browser
    assert names[-1] == "hangup"
    deadline = time.monotonic() + 10
    while worker_udp_ports(server) > ports_before:  # the peer connection was released
        assert time.monotonic() < deadline, "the worker kept the call's UDP ports"
        time.sleep(0.1)


def test_webrtc_invite_without_offer_or_with_a_bad_one(server: Server) -> None:
    async def scenario() -> list[list[dict[str, Any]]]:
        seen = []
        async with connect(f"ws://127.0.0.1:{server.port}/call/webrtc?id=w2") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {}}))
            seen.append(await events_until(ws, "error"))
            bad = {"command": "invite", "option": {"offer": "v=0\r\nnot an offer\r\n"}}
            await ws.send(json.dumps(bad))
            seen.append(await events_until(ws, "hangup"))
        return seen

    no_offer, bad_offer = asyncio.run(scenario())
    assert no_offer[-1]["sender"] == "command" and "offer" in no_offer[-1]["error"]
    names = [e["event"] for e in bad_offer]
    assert "error" in names and names[-1] == "hangup"
    assert bad_offer[-1]["reason"] == "error"


def test_subscribe_frames_and_a_websocket_close_ends_the_call(
    server: Server, speech_16k: np.ndarray
) -> None:
    ports_before = worker_udp_ports(server)

    async def call() -> dict[int, int]:
        browser = Browser(speech_16k[: 4 * 16000])
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        prefixes: dict[int, int] = {}
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/call/webrtc?id=w3") as ws:
                option = {"offer": browser.pc.localDescription.sdp, "subscribe": True}
                await ws.send(json.dumps({"command": "invite", "option": option}))
                answer = (await events_until(ws, "answer", timeout=20))[-1]["sdp"]
                await browser.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=answer, type="answer")
                )
                say = {"command": "tts", "text": "Hello there.", "playId": "p"}
                await ws.send(json.dumps(say))
                async with asyncio.timeout(20):
                    while prefixes.get(0, 0) < 20 or prefixes.get(1, 0) < 20:
                        message = await ws.recv()
                        if isinstance(message, bytes):
                            assert len(message) == 641  # one byte + 20 ms of PCM16 16 kHz
                            prefixes[message[0]] = prefixes.get(message[0], 0) + 1
            # the client closed the WebSocket without a hangup
        finally:
            await browser.close()
        return prefixes

    prefixes = asyncio.run(call())
    assert set(prefixes) == {0, 1}  # 0x00 agent, 0x01 caller
    deadline = time.monotonic() + 10
    while server.get("/list")["active_calls"] or worker_udp_ports(server) > ports_before:
        assert time.monotonic() < deadline, "the call or its ports outlived the WebSocket"
        time.sleep(0.1)


def test_a_browser_that_never_connects_ends_with_error_and_hangup(server: Server) -> None:
    async def call() -> list[dict[str, Any]]:
        browser = Browser(np.zeros(16000, np.int16))
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        offer = browser.pc.localDescription.sdp
        await browser.close()  # gone before the answer: ICE can never connect
        async with connect(f"ws://127.0.0.1:{server.port}/call/webrtc?id=w4") as ws:
            option = {"offer": offer, "handshakeTimeout": 2}
            await ws.send(json.dumps({"command": "invite", "option": option}))
            return await events_until(ws, "hangup", timeout=30)

    events = asyncio.run(call())
    names = [e["event"] for e in events]
    assert names[:2] == ["trackStart", "answer"]
    assert names[-2:] == ["error", "hangup"] and events[-2]["sender"] == "webrtc"
    assert events[-1]["reason"] == "error"
