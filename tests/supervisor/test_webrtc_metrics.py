"""``/metrics`` of a browser call: aiortc as the browser on ``/call/webrtc`` against
``activecall serve``; the WebRTC frame counters and the live-call gauge must follow the call."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCSessionDescription
from websockets.asyncio.client import connect

from tests.supervisor.test_server import Server, events_until
from tests.supervisor.test_webrtc_call import FRAME, Browser


def scrape(server: Server) -> dict[str, float]:
    """``GET /metrics``: every sample by series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        series: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for series, _, value in [line.rpartition(" ")]
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    assert srv.stop() == 0, srv.logs()


def test_webrtc_frames_and_calls_in_metrics(server: Server, speech_16k: np.ndarray) -> None:
    tone = server.cwd / "agent.wav"
    with wave.open(str(tone), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        t = np.arange(16000) / 16000  # one second: 50 frames
        w.writeframes((8000 * np.sin(2 * np.pi * 1000 * t)).astype("<i2").tobytes())
    before = scrape(server)

    async def call() -> tuple[dict[str, float], int]:
        browser = Browser(speech_16k[: 3 * 16000])
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/call/webrtc?id=m1") as ws:
                option = {"offer": browser.pc.localDescription.sdp}
                await ws.send(json.dumps({"command": "invite", "option": option}))
                answer = (await events_until(ws, "answer", timeout=20))[-1]["sdp"]
                await browser.pc.setRemoteDescription(
                    RTCSessionDescription(sdp=answer, type="answer")
                )
                await ws.send(json.dumps({"command": "play", "url": str(tone), "playId": "t"}))
                await events_until(ws, "trackEnd", timeout=20)
                await asyncio.sleep(1.0)  # a heartbeat with the call live
                during = await asyncio.to_thread(scrape, server)
                await ws.send(json.dumps({"command": "hangup"}))
                await events_until(ws, "hangup")
                sent = browser.pc.getSenders()[0].track.sent // FRAME
        finally:
            await browser.close()
        return during, sent

    during, sent = asyncio.run(call())
    assert during["activecall_webrtc_calls"] == 1 and during["activecall_rtp_calls"] == 0
    deadline = time.monotonic() + 10
    after = scrape(server)
    while after["activecall_webrtc_calls"] != 0:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
        after = scrape(server)
    received = after["activecall_webrtc_frames_received_total"]
    received -= before["activecall_webrtc_frames_received_total"]
    # What the browser's microphone produced, but for what crossed before DTLS was up.
    assert 0.7 * sent <= received <= sent, (received, sent)
    out = after["activecall_webrtc_frames_sent_total"]
    assert out - before["activecall_webrtc_frames_sent_total"] == 50  # the tone, frame by frame
    assert (
        after["activecall_webrtc_frames_received_total"]
        >= during["activecall_webrtc_frames_received_total"]
    )
