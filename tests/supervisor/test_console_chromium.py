"""The web console in a real headless Chromium (Debian's), driven over the DevTools protocol.

Chromium's fake microphone plays the speech file; the page places a WebRTC call to
``activecall serve``. The test asserts what a person would see: ``speaking`` and ``silence`` in
the page's event log caused by that speech, a ``play`` whose audio reaches the browser
(``getStats()`` inbound RTP bytes and audio level rise), and a hangup that ends the call on both
sides. A screenshot of the console mid-call is saved under ``tests/artifacts/``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.supervisor.test_server import Server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    async def eval(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def until(self, expression: str, timeout: float = 30) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = await self.eval(expression)
                if value:
                    return value
                await asyncio.sleep(0.2)


@pytest.fixture
def chromium(tmp_path: Path, speech_16k: np.ndarray) -> Iterator[int]:
    """Headless Chromium with a fake microphone playing 8 s of speech; yields its CDP port."""
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed (make test installs it)"
    mic = tmp_path / "mic.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        pause = np.zeros(16000 * 2, np.int16)
        w.writeframes(np.concatenate((speech_16k[: 8 * 16000], pause)).tobytes())
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}",
            "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    assert srv.stop() == 0, srv.logs()


def test_console_places_a_webrtc_call_in_chromium(server: Server, chromium: int) -> None:
    tone = server.cwd / "tone.wav"
    with wave.open(str(tone), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        t = np.arange(16000 * 3) / 16000
        w.writeframes((9000 * np.sin(2 * np.pi * 700 * t)).astype("<i2").tobytes())

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{chromium}/json/list") as r:
            page = next(t for t in json.loads(r.read()) if t["type"] == "page")
        async with connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
            cdp = DevTools(ws)
            await cdp.call("Page.enable")
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=1200,
                deviceScaleFactor=1,
                mobile=False,
            )
            await cdp.call("Page.navigate", url=f"http://127.0.0.1:{server.port}/")
            await cdp.until(
                "document.readyState === 'complete' && !!document.getElementById('call')"
            )
            assert await cdp.eval("window.isSecureContext") is True
            await cdp.eval("document.getElementById('mode-webrtc').checked = true")
            await cdp.eval("document.getElementById('call').click()")
            names = "window.activecallEvents.map(e => e.event)"
            await cdp.until(f"{names}.includes('answer')")
            await cdp.until(f"{names}.includes('silence')", timeout=40)
            stats = """(async () => {
                const s = await window.activecallPc.getStats();
                for (const r of s.values()) if (r.type === 'inbound-rtp' && r.kind === 'audio')
                    return {bytes: r.bytesReceived, energy: r.totalAudioEnergy || 0};
                return {bytes: 0, energy: 0};
            })()"""
            before = await cdp.eval(stats)
            await cdp.eval(f"document.getElementById('play-url').value = {json.dumps(str(tone))}")
            await cdp.eval("document.querySelector('#form-play button').click()")
            await cdp.until(f"{names}.includes('trackEnd')", timeout=20)
            after = await cdp.eval(stats)
            shot = await cdp.call("Page.captureScreenshot", format="png")
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "console-webrtc-call.png").write_bytes(base64.b64decode(shot["data"]))
            await cdp.eval("document.getElementById('send-hangup').click()")
            await cdp.until(f"{names}.includes('hangup')")
            await cdp.until(
                "!window.activecallPc || window.activecallPc.connectionState !== 'connected'"
            )
            events: list[dict[str, Any]] = await cdp.eval("window.activecallEvents")
            log_text = await cdp.eval("document.getElementById('log').innerText")
            assert "speaking" in log_text and "silence" in log_text  # shown to the person
        return events, before, after

    events, before, after = asyncio.run(scenario())
    names = [e["event"] for e in events]
    assert names[:2] == ["trackStart", "answer"]
    assert names.index("speaking") < names.index("silence")  # the fake microphone's speech
    assert after["bytes"] > before["bytes"] + 10_000  # the play's RTP reached the browser
    assert after["energy"] > before["energy"]  # with sound in it
    assert names[-1] == "hangup"
    deadline = time.monotonic() + 10
    while server.get("/list")["active_calls"]:  # the server side ended too
        assert time.monotonic() < deadline
        time.sleep(0.1)
