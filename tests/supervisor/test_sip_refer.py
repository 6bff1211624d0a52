"""The ``refer`` command end to end: a sipp caller, ``activecall serve``, a sipp refer target.

sipp (UAC) calls the node; the webhook application accepts and sends ``refer`` to a second
sipp (UAS), which checks the leg's INVITE (Call-ID ``ref-<n>-<session>`` and the
``X-Referred-*`` headers; a mismatch fails its call) and answers, refuses or never answers.
The target runs with ``-rtp_echo``: what the leg sends it (the caller's speech) comes back,
and the call's recorder hears it on the agent's channel. A browser call (aiortc on
``/call/webrtc``) is referred the same way and hears its own tone come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection, connect

from tests.supervisor.sip_helpers import (
    DATA,
    SCENARIOS,
    App,
    Reaction,
    SipNode,
    event_names,
    free_port,
    require_sipp,
    run_sipp,
    webhook_app,
)
from tests.supervisor.test_webrtc_call import Browser


@pytest.fixture(scope="module")
def hook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, hook_port: int) -> Iterator[SipNode]:
    require_sipp()
    srv = SipNode(tmp_path_factory.mktemp("node"), hook_port)
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")
    return tmp_path


class Target:
    """The refer target: a sipp UAS on a port of its own, started before the caller calls."""

    def __init__(self, scenario: str, cwd: Path, *args: str) -> None:
        self.port = free_port(socket.SOCK_DGRAM)
        self.uri = f"sip:bob@127.0.0.1:{self.port}"
        self.scenario = scenario
        self.cwd = cwd / "target"
        self.cwd.mkdir()
        self.args = args

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            require_sipp(),
            "-sf",
            str(SCENARIOS / self.scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_port(socket.SOCK_DGRAM)),
            "-m",
            "1",
            "-nostdin",
            "-trace_err",
            *self.args,
            cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        await asyncio.sleep(0.3)  # listening

    async def result(self, timeout: float = 20) -> tuple[int, str]:
        try:
            out, _ = await asyncio.wait_for(self.process.communicate(), timeout)
        except BaseException:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            raise
        errors = "".join(p.read_text(errors="replace") for p in self.cwd.glob("*_errors.log"))
        return self.process.returncode or 0, out.decode(errors="replace") + errors


def refer_on_answer(
    target: Target, options: dict[str, Any], after: dict[str, list[dict[str, Any]]] | None = None
) -> Reaction:
    """The application: ``refer`` once the call is answered; ``after`` on the leg's first
    event of that name (``{"answer": [commands]}``)."""
    reactions = dict(after or {})

    def react(event: dict[str, Any]) -> list[dict[str, Any]]:
        name = event["event"]
        if name == "answer" and not event.get("refer"):
            return [
                {
                    "command": "refer",
                    "caller": "sip:agent@127.0.0.1",
                    "callee": target.uri,
                    "options": options,
                }
            ]
        if event.get("refer") and name in reactions:
            return reactions.pop(name)
        return []

    return react


async def call_with_refer(
    node: SipNode, run_dir: Path, target: Target, react: Reaction, option: dict[str, Any]
) -> tuple[int, str, int, str, App, list[dict[str, Any]]]:
    await target.start()
    async with webhook_app(node, option, react) as app:
        code, out = await run_sipp(
            "uac_refer_caller.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
        )
        events = await app.call_events(timeout=20)
    target_code, target_out = await target.result()
    return code, out, target_code, target_out, app, events


def refer_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("refer")]


def cdr_of(node: SipNode, dialog_id: str) -> dict[str, Any]:
    for path in (node.cwd / "cdr").rglob("*.json"):
        record = json.loads(path.read_text())
        if record["callId"] == dialog_id:
            return record  # type: ignore[no-any-return]
    raise AssertionError(f"no call record for {dialog_id}")


def test_answered_leg_bridges_audio_and_its_bye_hangs_up_the_call(
    node: SipNode, run_dir: Path
) -> None:
    target = Target("uas_refer_hangs_up.xml", run_dir, "-rtp_echo")
    option = {"recorder": {"recorderFile": "{id}.wav"}}
    code, out, target_code, target_out, app, events = asyncio.run(
        call_with_refer(node, run_dir, target, refer_on_answer(target, {}), option)
    )
    assert target_code == 0, target_out  # the headers and the Call-ID matched
    assert code == 0, out  # the caller got its BYE
    dialog_id = app.payloads[0]["dialogId"]
    legs = refer_events(events)
    assert [e["event"] for e in legs] == ["ringing", "answer", "hangup"]
    assert all(e["trackId"] == "server-side-track" for e in legs)
    assert legs[2]["initiator"] == "callee"
    names = event_names(events)
    assert names[-1] == "hangup" and events[-1]["reason"] == "refer" and not events[-1].get("refer")
    # The target echoed the caller's speech; the caller's track carried it (agent channel).
    with wave.open(str(node.cwd / "config" / "recorders" / f"{dialog_id}.wav")) as w:
        assert w.getnchannels() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    caller, agent = (pcm[:, i].astype(np.float64) for i in (0, 1))
    assert np.sqrt(np.mean(caller**2)) > 300
    assert np.sqrt(np.mean(agent**2)) > 100, "nothing came back from the refer leg"
    leg = cdr_of(node, dialog_id)["referCallrecord"]
    assert leg["callId"].startswith("ref-") and leg["callee"] == target.uri
    assert leg["statusCode"] == 200 and leg["extras"]["rtp"]["jitter"]["received"] > 50


def test_hangup_refer_ends_the_leg_and_the_call_goes_on(node: SipNode, run_dir: Path) -> None:
    target = Target("uas_refer_answer.xml", run_dir)
    react = refer_on_answer(
        target,
        {},
        {
            "answer": [{"command": "hangup", "refer": True}],
            "hangup": [{"command": "hangup", "reason": "done"}],
        },
    )
    code, out, target_code, target_out, _, events = asyncio.run(
        call_with_refer(node, run_dir, target, react, {})
    )
    assert target_code == 0, target_out  # it got our BYE
    assert code == 0, out
    assert [e["event"] for e in refer_events(events)] == ["ringing", "answer", "hangup"]
    assert events[-1]["event"] == "hangup" and events[-1]["reason"] == "done"
    assert "error" not in event_names(events)


def test_busy_target_is_a_refer_reject(node: SipNode, run_dir: Path) -> None:
    target = Target("uas_refer_busy.xml", run_dir)
    react = refer_on_answer(target, {}, {"reject": [{"command": "hangup", "reason": "done"}]})
    code, out, target_code, target_out, _, events = asyncio.run(
        call_with_refer(node, run_dir, target, react, {})
    )
    assert target_code == 0, target_out
    assert code == 0, out
    (reject,) = refer_events(events)
    assert reject["event"] == "reject" and reject["code"] == 486
    assert events[-1]["event"] == "hangup" and events[-1]["reason"] == "done"


def test_unanswered_leg_times_out_with_408_and_a_cancel(node: SipNode, run_dir: Path) -> None:
    target = Target("uas_cancel.xml", run_dir)
    react = refer_on_answer(
        target, {"timeout": 2}, {"reject": [{"command": "hangup", "reason": "done"}]}
    )
    code, out, target_code, target_out, _, events = asyncio.run(
        call_with_refer(node, run_dir, target, react, {})
    )
    assert target_code == 0, target_out  # it got the CANCEL
    assert code == 0, out
    legs = refer_events(events)
    assert [e["event"] for e in legs] == ["ringing", "reject"]
    assert legs[1]["code"] == 408 and legs[1]["reason"] == "Timeout when refer"
    assert events[-1]["event"] == "hangup" and events[-1]["reason"] == "done"


def test_websocket_call_refers_to_sip_and_hears_the_leg(node: SipNode, run_dir: Path) -> None:
    """A ``/call`` (WebSocket audio) call on a node with SIP: its leg is bridged the same way."""
    target = Target("uas_refer_answer.xml", run_dir, "-rtp_echo")

    async def scenario() -> tuple[int, str, list[dict[str, Any]], bytes]:
        await target.start()
        events: list[dict[str, Any]] = []
        heard = bytearray()
        tone = (8000 * np.sin(2 * np.pi * 1000 * np.arange(16000 * 2) / 16000)).astype(np.int16)
        url = f"ws://127.0.0.1:{node.http_port}/call?id=ws-refer"
        async with connect(url) as ws:
            # The X-Referred-* headers come from the call's own caller and callee.
            option = {"caller": "sip:sipp@127.0.0.1", "callee": "sip:1000@127.0.0.1:5060"}
            await ws.send(json.dumps({"command": "invite", "option": option}))
            refer = {"command": "refer", "caller": "", "callee": target.uri}
            await ws.send(json.dumps(refer))

            async def receive() -> None:
                async for message in ws:
                    if isinstance(message, bytes):
                        heard.extend(message)
                    else:
                        events.append(json.loads(message))

            reader = asyncio.create_task(receive())
            while not any(e["event"] == "answer" and e.get("refer") for e in events):
                await asyncio.sleep(0.02)
            for n in range(100):  # 2 s of a 1 kHz tone, paced in 20 ms frames
                await ws.send(tone[n * 320 : (n + 1) * 320].tobytes())
                await asyncio.sleep(0.02)
            await ws.send(json.dumps({"command": "hangup", "reason": "done"}))
            await asyncio.wait_for(reader, 10)
        code, out = await target.result()
        return code, out, events, bytes(heard)

    code, out, events, heard = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert code == 0, out  # headers matched, and the call's hangup sent the leg its BYE
    assert [e["event"] for e in refer_events(events)] == ["ringing", "answer", "hangup"]
    assert events[-1]["event"] == "hangup" and not events[-1].get("refer")
    pcm = np.frombuffer(heard, dtype=np.int16).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(pcm))
    peak = float(np.fft.rfftfreq(len(pcm), 1 / 16000)[int(np.argmax(spectrum))])
    assert np.sqrt(np.mean(pcm**2)) > 300 and peak == pytest.approx(1000, abs=20)


class ListeningBrowser(Browser):
    """The aiortc browser, keeping what it hears (mono, at the decoder's rate) to analyse."""

    def __init__(self, pcm: np.ndarray) -> None:
        super().__init__(pcm)
        self.frames: list[np.ndarray] = []
        self.rate = 48000

    def _on_track(self, track: MediaStreamTrack) -> None:
        # Browser keeps only levels; the echo check needs the samples (for their spectrum).
        self._tasks.append(asyncio.ensure_future(self._keep(track)))

    async def _keep(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):  # the track ended: the call is over
            while True:
                frame = await track.recv()
                self.frames.append(_mono(frame))
                self.rate = frame.sample_rate


def _mono(frame: av.AudioFrame) -> np.ndarray:
    x = frame.to_ndarray().astype(np.float64).reshape(-1)
    channels = len(frame.layout.channels)
    return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


def tone_level(pcm: np.ndarray, rate: int) -> tuple[float, float]:
    """RMS of ``pcm`` and the frequency of its spectral peak."""
    spectrum = np.abs(np.fft.rfft(pcm))
    peak = float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])
    return float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0, peak


async def until(
    ws: ClientConnection, events: list[dict[str, Any]], name: str, refer: bool, timeout: float = 20
) -> None:
    """Read text events into ``events`` until one named ``name`` (of the leg or not)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                events.append(json.loads(message))
                if events[-1]["event"] == name and bool(events[-1].get("refer")) is refer:
                    return


def test_webrtc_call_refers_hears_its_echo_and_goes_on(node: SipNode, run_dir: Path) -> None:
    """A browser call (aiortc) refers to a sipp target that echoes: its own 1 kHz tone comes
    back through the leg; ``hangup{refer}`` ends the leg only and a play is heard after."""
    target = Target("uas_refer_answer.xml", run_dir, "-rtp_echo")
    rate = 16000
    t = np.arange(rate * 20) / rate
    mic = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    after = run_dir / "after.wav"
    with wave.open(str(after), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((8000 * np.sin(2 * np.pi * 600 * t[: rate * 2])).astype("<i2").tobytes())

    async def scenario() -> tuple[ListeningBrowser, list[dict[str, Any]], dict[str, int]]:
        await target.start()
        browser = ListeningBrowser(mic)
        await browser.pc.setLocalDescription(await browser.pc.createOffer())
        events: list[dict[str, Any]] = []
        marks: dict[str, int] = {}
        try:
            async with connect(f"ws://127.0.0.1:{node.http_port}/call/webrtc?id=wr-refer") as ws:
                # The X-Referred-* headers the target checks come from the call's own parties.
                option = {
                    "offer": browser.pc.localDescription.sdp,
                    "caller": "sip:sipp@127.0.0.1",
                    "callee": "sip:1000@127.0.0.1:5060",
                }
                await ws.send(json.dumps({"command": "invite", "option": option}))
                await until(ws, events, "answer", refer=False)
                remote = RTCSessionDescription(sdp=events[-1]["sdp"], type="answer")
                await browser.pc.setRemoteDescription(remote)
                await asyncio.sleep(1.0)  # the peer connection is up, the tone flows
                marks["before"] = len(browser.frames)
                await ws.send(json.dumps({"command": "refer", "caller": "", "callee": target.uri}))
                await until(ws, events, "answer", refer=True)
                marks["answered"] = len(browser.frames)
                await asyncio.sleep(2.0)  # the echo of the tone comes back through the leg
                marks["echo"] = len(browser.frames)
                await ws.send(json.dumps({"command": "hangup", "refer": True}))
                await until(ws, events, "hangup", refer=True)
                play = {"command": "play", "url": str(after), "playId": "after"}
                await ws.send(json.dumps(play))
                await until(ws, events, "trackEnd", refer=False)
                await asyncio.sleep(0.3)  # the last frames cross the network
                marks["played"] = len(browser.frames)
                await ws.send(json.dumps({"command": "hangup", "reason": "done"}))
                await until(ws, events, "hangup", refer=False)
        finally:
            await browser.close()
        return browser, events, marks

    browser, events, marks = asyncio.run(asyncio.wait_for(scenario(), 60))
    code, out = asyncio.run(target.result())
    assert code == 0, out  # the headers and the Call-ID matched; it got the leg's BYE
    assert [e["event"] for e in refer_events(events)] == ["ringing", "answer", "hangup"]
    assert "error" not in event_names(events)
    assert events[-1]["event"] == "hangup" and events[-1]["reason"] == "done"
    frames = browser.frames
    # Before the refer the agent side is silent; through the leg, the browser's own tone.
    level, _ = tone_level(np.concatenate(frames[: marks["before"]]), browser.rate)
    assert level < 100
    echo = np.concatenate(frames[marks["echo"] - 50 : marks["echo"]])  # the last second
    level, peak = tone_level(echo, browser.rate)
    assert level > 1000 and peak == pytest.approx(1000, abs=20)
    # After hangup{refer} the call went on: the play reached the browser.
    played = np.concatenate(frames[marks["played"] - 75 : marks["played"] - 25])
    level, peak = tone_level(played, browser.rate)
    assert level > 1000 and peak == pytest.approx(600, abs=20)


def test_leg_early_media_reaches_a_websocket_caller_before_the_answer(
    node: SipNode, run_dir: Path
) -> None:
    """The target answers 183 with SDP and plays speech before its 200 (as an announcement
    does): the caller hears that speech while the leg rings, not silence."""
    target = Target("uas_early_media.xml", run_dir)
    (target.cwd / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")

    async def scenario() -> tuple[int, str, list[dict[str, Any]], bytes, dict[str, int]]:
        await target.start()
        events: list[dict[str, Any]] = []
        heard = bytearray()
        marks: dict[str, int] = {}
        async with connect(f"ws://127.0.0.1:{node.http_port}/call?id=ws-early") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {}}))
            await ws.send(json.dumps({"command": "refer", "caller": "", "callee": target.uri}))

            async def receive() -> None:
                async for message in ws:
                    if isinstance(message, bytes):
                        heard.extend(message)
                        continue
                    events.append(json.loads(message))
                    if events[-1].get("refer"):
                        marks.setdefault(events[-1]["event"], len(heard))

            reader = asyncio.create_task(receive())
            async with asyncio.timeout(20):
                while "answer" not in marks:
                    await asyncio.sleep(0.02)
            await ws.send(json.dumps({"command": "hangup", "reason": "done"}))
            await asyncio.wait_for(reader, 10)
        code, out = await target.result()
        return code, out, events, bytes(heard), marks

    code, out, events, heard, marks = asyncio.run(asyncio.wait_for(scenario(), 40))
    assert code == 0, out  # the call's hangup sent the leg its BYE
    legs = refer_events(events)
    assert [e["event"] for e in legs] == ["ringing", "answer", "hangup"]
    assert legs[0]["earlyMedia"] is True
    early = np.frombuffer(heard[marks["ringing"] : marks["answer"]], dtype=np.int16)
    assert len(early) > 3 * 16000  # the 4 s between the 183 and the 200
    assert np.sqrt(np.mean(early.astype(np.float64) ** 2)) > 300, "no early media heard"
