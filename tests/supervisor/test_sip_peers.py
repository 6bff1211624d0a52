"""SIP calls against real peers other than sipp: baresip (a softphone) and Kamailio (a registrar
and proxy), and the voice-AI round trip over SIP.

* baresip 1.0.0 (Debian) runs headless with a config made from ``tests/data/baresip``: it sends
  a WAV file (``aufile``), dumps what it hears to a WAV (``sndfile``), and is driven over
  ``ctrl_tcp`` (netstring-framed JSON). It calls activecall, and activecall calls it; in both
  directions the speech it sends must reach activecall (VAD events, the recorder's caller
  channel) and a tone activecall ``play``s must reach it (the tone in its dump).
* Kamailio 5.6 runs in the foreground with ``tests/data/kamailio/kamailio.cfg``: activecall
  registers as an extension (digest auth against a static password), and sipp's call to that
  extension goes through Kamailio (lookup, Record-Route) to activecall's webhook application.
* Bad input from the peers: a wrong registrar password, a user the phone does not have, an
  extension the registrar does not know; each is a clear failure and the node serves on.
* piper speaks a sentence, FFmpeg makes it μ-law RTP, sipp streams it into a call whose
  application asks for ``asr``: pocketsphinx's ``asrFinal`` has the sentence's key words.

Every peer writes its log to the test's directory; failures show its tail. A missing peer is a
failure that says which Debian package to install (``make test`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import random
import shutil
import signal
import socket
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from string import Template
from types import ModuleType
from typing import Any, Self

import numpy as np
import pytest
from websockets.asyncio.client import connect

from activecall._native.resample import Resampler
from activecall.providers.pocketsphinx import en_us_decoders
from activecall.providers.registry import registry
from tests.supervisor.sip_helpers import (
    DATA,
    SIPP_PCAPS,
    App,
    Reaction,
    SipNode,
    event_names,
    free_port,
    require_sipp,
    run_sipp,
    webhook_app,
)
from tests.workers.test_voice import KEY_WORDS, piper_speech

BARESIP_TEMPLATES = DATA / "baresip"
KAMAILIO_CFG = DATA / "kamailio" / "kamailio.cfg"
TONE_HZ = 1000.0
TONE_FRAMES = (65, 80)  # the 1.5 s tone is 75 frames of 20 ms; the first and last may be partial


def require(tool: str, package: str) -> str:
    """``tool``'s path; the test fails with how to install it when it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: `apt-get install {package}` (make test does it)")
    return path


def free_sip_port() -> int:
    """A port of 127.0.0.1 free now for both UDP and TCP."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both UDP and TCP")


def free_udp_range(size: int) -> int:
    """The first port of ``size`` UDP ports of 127.0.0.1 that are all free now, above the
    nodes' RTP ranges (20000-39999); others on the machine (a load test) may hold many ports."""
    rng = random.Random()
    for _ in range(100):
        first = rng.randrange(40000, 60000 - size, 2)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + size):
                    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {size} free UDP ports in a row between 40000 and 60000")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` of a log file (for failure messages)."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> Path:
    """``pcm`` (int16, mono) as a WAV file at ``rate``."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype("<i2").tobytes())
    return path


def tone(seconds: float, rate: int = 16000, level: float = 0.3) -> np.ndarray:
    """A ``TONE_HZ`` sine, int16."""
    t = np.arange(int(seconds * rate)) / rate
    return (level * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16)


def tone_frames(pcm: np.ndarray, rate: int = 8000) -> int:
    """How many 20 ms frames of ``pcm`` are loud and carry mostly ``TONE_HZ``."""
    size = rate // 50
    count = 0
    for i in range(0, len(pcm) - size + 1, size):
        frame = pcm[i : i + size].astype(np.float64)
        if np.sqrt(np.mean(frame**2)) < 1000:
            continue
        spectrum = np.abs(np.fft.rfft(frame * np.hanning(size))) ** 2
        peak = float(np.fft.rfftfreq(size, 1 / rate)[int(np.argmax(spectrum))])
        near = spectrum[np.abs(np.fft.rfftfreq(size, 1 / rate) - TONE_HZ) <= 100].sum()
        if abs(peak - TONE_HZ) <= 60 and near >= 0.8 * spectrum.sum():
            count += 1
    return count


def rms(pcm: np.ndarray) -> float:
    """Root mean square of int16 samples."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A PCM16 WAV's samples (frames × channels) and its rate."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getsampwidth() == 2, (path, wav.getsampwidth())
        frames = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        return frames.reshape(-1, wav.getnchannels()), wav.getframerate()


def read_recording(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The caller (left) and agent (right) channels of an activecall recording."""
    data, rate = read_wav(path)
    assert data.shape[1] == 2 and rate == 16000, (data.shape, rate)
    return data[:, 0], data[:, 1]


# --- baresip ------------------------------------------------------------------------------------


class Baresip:
    """A headless baresip with one account, ``user``, sending ``source`` (an 8 kHz WAV); see
    ``tests/data/baresip/config``. Use ``async with``."""

    def __init__(self, cwd: Path, user: str, source: Path, codec: str = "g711") -> None:
        self.cwd = cwd
        self.user = user
        self.source = source
        self.codec = codec  # baresip's codec module: the only codecs it offers
        self.record_dir = cwd / "heard"
        self.record_dir.mkdir()
        self.conf = cwd / "conf"
        self.conf.mkdir()
        self.log_path = cwd / "baresip.log"
        self.sip_port = self.ctrl_port = 0
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._responses: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._token = 0

    def _configure(self) -> None:
        """Pick free ports and write ``config`` and ``accounts`` from the templates."""
        self.sip_port = free_sip_port()  # baresip listens on UDP and TCP
        self.ctrl_port = free_port()
        rtp = free_udp_range(100)
        fields = {
            "sip_addr": f"127.0.0.1:{self.sip_port}",
            "ctrl_addr": f"127.0.0.1:{self.ctrl_port}",
            "source_wav": str(self.source),
            "record_dir": str(self.record_dir),
            "rtp_ports": f"{rtp}-{rtp + 99}",
            "user": self.user,
            "codec_module": f"{self.codec}.so",
        }
        for name in ("config", "accounts"):
            text = (BARESIP_TEMPLATES / name).read_text()
            (self.conf / name).write_text(Template(text).substitute(fields))

    @property
    def uri(self) -> str:
        """Where to call this phone."""
        return f"sip:{self.user}@127.0.0.1:{self.sip_port}"

    def log(self) -> str:
        """The tail of baresip's output."""
        return "baresip log:\n" + tail(self.log_path)

    async def __aenter__(self) -> Self:
        binary = require("baresip", "baresip")
        # A port free when picked may be taken before baresip binds it: then try new ones.
        for _ in range(3):
            self._configure()
            if await self._start(binary):
                self._pump = asyncio.create_task(self._read())
                return self
        raise AssertionError("baresip could not bind its ports\n" + self.log())

    async def _start(self, binary: str) -> bool:
        """Start baresip and connect to ctrl_tcp; False when a port was taken meanwhile."""
        with self.log_path.open("wb") as log:
            proc = self.proc = await asyncio.create_subprocess_exec(
                binary,
                "-f",
                str(self.conf),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            async with asyncio.timeout(10):
                while proc.returncode is None:
                    with contextlib.suppress(OSError):
                        self._reader, self._writer = await asyncio.open_connection(
                            "127.0.0.1", self.ctrl_port
                        )
                        return True
                    await asyncio.sleep(0.1)
        except TimeoutError:
            await self.stop()
            raise AssertionError("baresip's ctrl_tcp did not open\n" + self.log()) from None
        if "Address already in use" in self.log_path.read_text(errors="replace"):
            return False
        raise AssertionError("baresip exited\n" + self.log())

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Quit baresip (SIGTERM, then SIGKILL) and close the control connection."""
        if self._pump is not None:
            self._pump.cancel()
        if self._writer is not None:
            self._writer.close()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def _read(self) -> None:
        """Netstrings (``<length>:<json>,``) from ctrl_tcp: responses and events."""
        assert self._reader is not None
        while True:
            try:
                length = await self._reader.readuntil(b":")
                body = await self._reader.readexactly(int(length[:-1]) + 1)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            message = json.loads(body[:-1])
            if message.get("response"):
                future = self._responses.pop(str(message.get("token")), None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("event"):
                self.events.append(message)
                self._new_event.set()

    async def command(self, command: str, params: str = "", timeout: float = 5) -> dict[str, Any]:
        """Run a baresip command (``dial``, ``hangup``, ...); its response."""
        assert self._writer is not None
        self._token += 1
        token = str(self._token)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._responses[token] = future
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(b"%d:%s," % (len(data), data))
        await self._writer.drain()
        try:
            response = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise AssertionError(f"baresip did not answer {command!r}\n" + self.log()) from None
        assert response.get("ok"), f"baresip refused {command} {params}: {response}\n{self.log()}"
        return response

    async def event(self, kind: str, timeout: float = 10) -> dict[str, Any]:
        """The first event of type ``kind`` (``CALL_ESTABLISHED``, ``CALL_CLOSED``, ...)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events:
                        if event.get("type") == kind:
                            return event
                    self._new_event.clear()
                    await self._new_event.wait()
        except TimeoutError:
            got = [e.get("type") for e in self.events]
            raise AssertionError(f"no {kind} from baresip (got {got})\n" + self.log()) from None

    def heard(self) -> tuple[np.ndarray, int]:
        """What baresip received in its call (its sndfile ``dec`` dump, at the codec's rate:
        8 kHz for G.711, 16 kHz for G.722, 48 kHz stereo for Opus): its first channel and
        rate."""
        dumps = sorted(self.record_dir.glob("dump-*-dec.wav"))
        assert len(dumps) == 1, (list(self.record_dir.iterdir()), self.log())
        data, rate = read_wav(dumps[0])
        return data[:, 0], rate


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipNode]:
    srv = SipNode(tmp_path_factory.mktemp("node"), free_port())
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture(scope="module")
def speech_8k_wav(tmp_path_factory: pytest.TempPathFactory, speech_16k: np.ndarray) -> Path:
    """What baresip says: 20 s of the speech file at 8 kHz (longer than any call here)."""
    narrow = Resampler(16000, 8000).process(speech_16k[: 20 * 16000])
    return write_wav(tmp_path_factory.mktemp("audio") / "speech_8k.wav", narrow, 8000)


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """What activecall plays: 1.5 s of a 1 kHz tone."""
    return write_wav(tmp_path / "tone.wav", tone(1.5), 16000)


def _check_speech_reached_activecall(events: list[dict[str, Any]], recording: Path) -> None:
    names = event_names(events)
    assert names.count("speaking") >= 1 and names.count("silence") >= 1, names
    caller, agent = read_recording(recording)
    # baresip's speech is on the caller channel, our tone on the agent channel (16 kHz).
    assert rms(caller) > 300, rms(caller)
    assert tone_frames(caller, 16000) < 5  # the tone did not leak into what the caller said
    assert TONE_FRAMES[0] <= tone_frames(agent, 16000) <= TONE_FRAMES[1]


async def dial_in(
    phone: Baresip,
    node: SipNode,
    app: App,
    port: int,
    answered: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``phone`` calls the node's ``port``; once the tone has played and a speech segment of
    the phone's was heard, it hangs up. ``answered`` runs on our ``answer`` event first. The
    phone's ``CALL_ESTABLISHED`` and the call's events."""

    def logs() -> str:
        return f"{phone.log()}\nnode log:\n{node.logs()[-3000:]}\nevents: {app.events}"

    def answers() -> list[dict[str, Any]]:
        return [e for events in app.events.values() for e in events if e["event"] == "answer"]

    await phone.command("dial", f"sip:1000@127.0.0.1:{port}")
    established = await phone.event("CALL_ESTABLISHED")
    if answered is not None:
        await _until(lambda: bool(answers()), "the answer event", 5, logs)
        answered(answers()[0])
    # the tone was played, and the phone's speech was heard (a VAD segment ended)
    await _until(
        lambda: any(_played(e) and "silence" in event_names(e) for e in app.events.values()),
        "the tone to play and a speech segment",
        20,
        logs,
    )
    await phone.command("hangup")
    await phone.event("CALL_CLOSED")
    return established, await app.call_events()


def _play_tone_on_answer(url: Path) -> Reaction:
    def react(event: dict[str, Any]) -> list[dict[str, Any]]:
        if event["event"] == "answer":
            return [{"command": "play", "url": str(url), "playId": "tone"}]
        return []

    return react


def _played(events: list[dict[str, Any]]) -> bool:
    return any(e["event"] == "trackEnd" and e.get("playId") == "tone" for e in events)


async def _until(
    check: Callable[[], bool], what: str, timeout: float, logs: Callable[[], str]
) -> None:
    """Poll ``check`` until it holds; after ``timeout`` s fail, saying ``what`` and the logs."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}\n{logs()}") from None


@pytest.mark.parametrize(
    ("codec", "rtpmap"),
    [("g711", "PCMU/8000"), ("g722", "G722/8000"), ("opus", "opus/48000/2")],
)
def test_baresip_calls_in_and_audio_flows_both_ways(
    node: SipNode, tmp_path: Path, speech_8k_wav: Path, tone_wav: Path, codec: str, rtpmap: str
) -> None:
    recording = tmp_path / "inbound.wav"
    option = {"vad": {}, "recorder": {"recorderFile": str(recording)}}

    def from_alice(payload: dict[str, Any]) -> bool:
        return bool(payload["caller"].startswith("sip:alice@"))

    async def scenario() -> tuple[Baresip, dict[str, Any], list[dict[str, Any]]]:
        react = _play_tone_on_answer(tone_wav)
        async with (
            Baresip(tmp_path, "alice", speech_8k_wav, codec) as phone,
            webhook_app(node, option, react, wants=from_alice) as app,
        ):
            established, events = await dial_in(phone, node, app, node.sip_port)
        return phone, established, events

    phone, established, events = asyncio.run(scenario())
    assert established["direction"] == "outgoing", established
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"], names
    assert events[0]["caller"].startswith("sip:alice@127.0.0.1")
    assert rtpmap in events[2]["sdp"], events[2]["sdp"]  # our answer took baresip's codec
    assert names[-1] == "hangup" and events[-1]["initiator"] == "caller", events[-1]
    assert "error" not in names, events
    _check_speech_reached_activecall(events, recording)
    heard, rate = phone.heard()
    frames = tone_frames(heard, rate)
    assert TONE_FRAMES[0] <= frames <= TONE_FRAMES[1], (frames, rate, phone.log())


def test_activecall_calls_baresip_which_answers_and_hears_the_play(
    node: SipNode, tmp_path: Path, speech_8k_wav: Path, tone_wav: Path
) -> None:
    recording = tmp_path / "outbound.wav"

    async def scenario() -> tuple[Baresip, dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with Baresip(tmp_path, "bob", speech_8k_wav) as phone:
            events: list[dict[str, Any]] = []
            option = {
                "callee": phone.uri,
                "caller": "sip:agent@127.0.0.1",
                "vad": {},
                "recorder": {"recorderFile": str(recording)},
            }
            url = f"ws://127.0.0.1:{node.http_port}/call/sip"
            hung_up = False
            try:
                async with asyncio.timeout(25), connect(url) as ws:
                    await ws.send(json.dumps({"command": "invite", "option": option}))
                    async for message in ws:
                        if not isinstance(message, str):
                            continue
                        events.append(json.loads(message))
                        event = events[-1]["event"]
                        if event == "answer":
                            play = {"command": "play", "url": str(tone_wav), "playId": "tone"}
                            await ws.send(json.dumps(play))
                        # Hang up once the tone played and a speech segment was heard.
                        heard_speech = "silence" in event_names(events)
                        if not hung_up and _played(events) and heard_speech:
                            hung_up = True
                            await ws.send(json.dumps({"command": "hangup"}))
            except TimeoutError:
                raise AssertionError(f"the call did not end: {events}\n{phone.log()}") from None
            established = await phone.event("CALL_ESTABLISHED")
            closed = await phone.event("CALL_CLOSED")
        return phone, established, closed, events

    phone, established, closed, events = asyncio.run(scenario())
    assert closed["param"] == "Connection reset by peer", closed  # our BYE ended it
    assert established["direction"] == "incoming", established
    assert established["peeruri"] == "sip:agent@127.0.0.1", established
    names = event_names(events)
    assert names[0] == "trackStart" and "answer" in names, names
    assert names.index("answer") < names.index("mediaReady") < names.index("speaking"), names
    assert "error" not in names and "reject" not in names, events
    assert names[-1] == "hangup" and events[-1]["initiator"] == "caller", events[-1]
    _check_speech_reached_activecall(events, recording)
    heard, rate = phone.heard()
    frames = tone_frames(heard, rate)
    assert TONE_FRAMES[0] <= frames <= TONE_FRAMES[1], (frames, rate, phone.log())


async def _call_out(node: SipNode, callee: str) -> list[dict[str, Any]]:
    """An outbound call on ``/call/sip`` that is hung up once answered; all its events."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(20), connect(f"ws://127.0.0.1:{node.http_port}/call/sip") as ws:
        await ws.send(json.dumps({"command": "invite", "option": {"callee": callee}}))
        async for message in ws:
            if isinstance(message, str):
                events.append(json.loads(message))
                if events[-1]["event"] == "answer":
                    await ws.send(json.dumps({"command": "hangup"}))
    return events


def _check_refused(events: list[dict[str, Any]], code: int, node: SipNode) -> None:
    """The call failed cleanly: ``reject{code}``, an ``error`` naming the invite, ``hangup``."""
    assert event_names(events) == ["trackStart", "reject", "error", "hangup"], events
    assert events[1]["code"] == code, events[1]
    assert events[2]["sender"] == "invite" and str(code) in events[2]["error"], events[2]
    assert events[3]["initiator"] == "callee", events[3]
    assert node.health()["status"] == "ok"


def test_calling_a_user_baresip_does_not_have_is_a_clean_404(
    node: SipNode, tmp_path: Path, speech_8k_wav: Path
) -> None:
    async def scenario() -> tuple[Baresip, list[dict[str, Any]]]:
        async with Baresip(tmp_path, "bob", speech_8k_wav) as phone:
            events = await _call_out(node, f"sip:nobody@127.0.0.1:{phone.sip_port}")
        return phone, events

    phone, events = asyncio.run(scenario())
    _check_refused(events, 404, node)
    assert phone.events == [], phone.events  # no call was ever set up on the phone


# --- Kamailio -----------------------------------------------------------------------------------


class Kamailio:
    """Kamailio in the foreground with ``tests/data/kamailio/kamailio.cfg`` on a port of its own;
    its location table is read through the binrpc control socket (``kamcmd``)."""

    PASSWORD = "kam-Pass-42"  # not the config's default: proves the test's define is used

    def __init__(self, cwd: Path) -> None:
        binary = require("kamailio", "kamailio")
        self.kamcmd = require("kamcmd", "kamailio")
        self.cwd = cwd
        self.port = free_port(socket.SOCK_DGRAM)
        self.ctl = f"unix:{cwd / 'ctl.sock'}"
        self.log_path = cwd / "kamailio.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "-DD",
                    "-E",
                    "-f",
                    str(KAMAILIO_CFG),
                    "-l",
                    f"udp:127.0.0.1:{self.port}",
                    "-Y",
                    str(cwd),
                    "-P",
                    str(cwd / "kamailio.pid"),
                    "-w",
                    str(cwd),
                    "-m",
                    "32",
                    "-M",
                    "4",
                    "-A",
                    f'CTL_SOCKET="{self.ctl}"',
                    "-A",
                    f'AUTH_PASSWORD="{self.PASSWORD}"',
                ],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        for _ in range(100):
            if self.proc.poll() is not None:
                raise AssertionError("kamailio exited\n" + self.log())
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                if "kamailio" in self.rpc("core.version"):
                    return
            time.sleep(0.1)
        self.stop()
        raise AssertionError("kamailio's control socket did not answer\n" + self.log())

    def log(self) -> str:
        """The tail of Kamailio's log."""
        return "kamailio log:\n" + tail(self.log_path)

    def text(self) -> str:
        """All of Kamailio's log."""
        return self.log_path.read_text(errors="replace")

    def rpc(self, *command: str) -> str:
        """A Kamailio RPC command's output (``kamcmd`` exits 0 even for an error reply)."""
        done = subprocess.run(
            [self.kamcmd, "-s", self.ctl, *command],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return done.stdout + done.stderr

    def contacts(self, user: str) -> str:
        """The location table's entry for ``user`` (empty when it is not registered)."""
        out = self.rpc("ul.lookup", "location", user)
        return "" if "AOR not found" in out else out

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    proxy = Kamailio(tmp_path_factory.mktemp("kamailio"))
    yield proxy
    proxy.stop()


def _registering_node(cwd: Path, proxy: Kamailio, user: str, password: str) -> SipNode:
    extra = (
        f'[[register_users]]\nserver = "127.0.0.1:{proxy.port}"\nusername = "{user}"\n'
        f'[register_users.credential]\nusername = "{user}"\npassword = "{password}"\n'
    )
    cwd.mkdir()
    return SipNode(cwd, free_port(), None, extra)


async def _wait_log(node: SipNode, text: str, proxy: Kamailio, timeout: float = 10) -> None:
    await _until(
        lambda: text in node.logs(),
        repr(text),
        timeout,
        lambda: f"node log:\n{node.logs()[-3000:]}\n{proxy.log()}",
    )


@pytest.fixture
def sipp_dir(tmp_path: Path) -> Path:
    """sipp's working directory: the speech and DTMF pcaps uac_speech_dtmf.xml plays."""
    require_sipp()
    run = tmp_path / "sipp"
    run.mkdir()
    (run / "dtmf_2833_1.pcap").symlink_to(SIPP_PCAPS / "dtmf_2833_1.pcap")
    return run


def test_kamailio_registers_activecall_and_routes_a_call_to_it(
    kamailio: Kamailio, tmp_path: Path, sipp_dir: Path
) -> None:
    (sipp_dir / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")
    node = _registering_node(tmp_path / "node", kamailio, "alice", Kamailio.PASSWORD)

    async def scenario() -> tuple[str, int, str, list[dict[str, Any]], list[dict[str, Any]]]:
        await _wait_log(node, f"registered alice@127.0.0.1:{kamailio.port}", kamailio)
        registered = await asyncio.to_thread(kamailio.contacts, "alice")
        async with webhook_app(node, {"vad": {}}) as app:
            # sipp calls the extension at the proxy; Kamailio finds activecall's binding.
            code, out = await run_sipp(
                "uac_speech_dtmf.xml", sipp_dir, "-s", "alice", f"127.0.0.1:{kamailio.port}"
            )
            events = await app.call_events()
        return registered, code, out, app.payloads, events

    try:
        registered, code, out, payloads, events = asyncio.run(scenario())
    finally:
        exit_code = node.stop()
    logs = f"node log:\n{node.logs()[-3000:]}\n{kamailio.log()}"
    assert exit_code == 0, logs
    # The REGISTER went through Kamailio's digest check and bound our contact.
    assert f"sip:alice@127.0.0.1:{node.sip_port}" in registered, registered + logs
    aor = f"sip:alice@127.0.0.1:{kamailio.port}"
    assert f"REGISTER {aor} from 127.0.0.1:{node.sip_port}: challenged" in kamailio.text()
    assert f"REGISTER {aor} saved (Expires 3600)" in kamailio.text(), logs
    # The call: sipp → Kamailio (lookup, Record-Route) → activecall → the webhook app.
    assert code == 0, out + logs
    (payload,) = payloads
    assert payload["callee"] == f"sip:alice@127.0.0.1:{kamailio.port}"
    record_route = [h for h in payload["headers"] if h.lower().startswith("record-route:")]
    assert record_route and f"127.0.0.1:{kamailio.port}" in record_route[0], payload["headers"]
    vias = [h for h in payload["headers"] if h.lower().startswith(("via:", "v:"))]
    assert len(vias) == 2 and f"127.0.0.1:{kamailio.port}" in vias[0], vias
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"], names
    assert names.count("speaking") >= 2 and "error" not in names, names
    assert [e["digit"] for e in events if e["event"] == "dtmf"] == ["1"]
    assert events[-1]["event"] == "hangup" and events[-1]["initiator"] == "caller"
    # sipp's BYE followed the route set through Kamailio.
    assert f"in-dialog BYE relayed to sip:activecall@127.0.0.1:{node.sip_port}" in kamailio.text()
    # The node un-REGISTERed when it stopped.
    assert kamailio.contacts("alice") == "", logs


def test_kamailio_refuses_a_wrong_password_and_the_node_says_so(
    kamailio: Kamailio, tmp_path: Path
) -> None:
    node = _registering_node(tmp_path / "node", kamailio, "mallory", "not-the-password")
    try:
        asyncio.run(
            _wait_log(
                node, f"mallory@127.0.0.1:{kamailio.port}: registration failed (401)", kamailio
            )
        )
        assert kamailio.contacts("mallory") == "", kamailio.log()
        assert node.health()["status"] == "ok"  # the node serves on; it retries later
    finally:
        assert node.stop() == 0, node.logs()
    assert "registered mallory@" not in node.logs()


def test_calling_an_extension_kamailio_does_not_know_is_a_clean_404(
    node: SipNode, kamailio: Kamailio
) -> None:
    events = asyncio.run(_call_out(node, f"sip:nobody@127.0.0.1:{kamailio.port}"))
    _check_refused(events, 404, node)
    assert f"INVITE to sip:nobody@127.0.0.1:{kamailio.port}: not registered" in kamailio.text()


# --- the voice-AI round trip over SIP -------------------------------------------------------------


def _speech_pcap_module() -> ModuleType:
    path = DATA / "sipp" / "make_speech_pcap.py"
    spec = importlib.util.spec_from_file_location("make_speech_pcap", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key_words(text: str) -> int:
    words = text.lower().split()
    return sum(word in words for word in KEY_WORDS)


def _decode_whole(pcm: np.ndarray) -> str:
    """PocketSphinx on 16 kHz ``pcm`` as one utterance (batch, not streamed)."""
    decoder = en_us_decoders()()
    decoder.start_utt()
    decoder.process_raw(pcm.astype("<i2").tobytes(), False, True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return str(hyp.hypstr) if hyp is not None else ""


async def _spoken(text: str) -> np.ndarray:
    try:
        return await piper_speech(text)
    finally:
        await registry.aclose()  # the providers belong to this event loop


def test_sip_speech_round_trip_piper_to_pocketsphinx(
    node: SipNode, tmp_path: Path, sipp_dir: Path
) -> None:
    """The voice-AI proof over SIP (issue 7): at least 3 of the 5 key words come back."""
    speech = asyncio.run(_spoken("I would like to check my account balance"))
    pcm = np.concatenate((np.zeros(8000, np.int16), speech, np.zeros(24000, np.int16)))
    wav = write_wav(tmp_path / "sentence.wav", pcm, 16000)
    maker = _speech_pcap_module()
    # FFmpeg resamples and encodes μ-law (not our codec), as for the committed speech pcap.
    pcap = maker.rtp_pcap(maker.mulaw_8k(wav, len(pcm) / 16000))
    (sipp_dir / "speech_8s_pcmu.pcap").write_bytes(pcap)

    recording = tmp_path / "call.wav"
    option = {"asr": {}, "vad": {}, "recorder": {"recorderFile": str(recording)}}

    async def scenario() -> tuple[int, str, list[dict[str, Any]]]:
        async with webhook_app(node, option) as app:
            code, out = await run_sipp(
                "uac_speech_dtmf.xml", sipp_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
            events = await app.call_events()
        return code, out, events

    code, out, events = asyncio.run(scenario())
    assert code == 0, out
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"], names
    assert "error" not in names, events
    finals = [e for e in events if e["event"] == "asrFinal"]
    assert finals, (names, node.logs()[-3000:])
    heard = " ".join(e["text"] for e in finals)
    if _key_words(heard) < 3:
        # Say whether the media path or the recognition lost the words: what the call's
        # processors got (the recorder's caller channel), decoded as one batch utterance.
        whole = _decode_whole(read_recording(recording)[0])
        pytest.fail(f"asrFinal {heard!r}; the call's caller audio decoded whole: {whole!r}")
    assert names.index("speaking") < names.index("asrFinal")
