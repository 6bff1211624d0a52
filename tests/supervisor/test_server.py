"""The whole node as a user runs it: ``activecall serve`` in its own process, real clients.

Each test starts the server (supervisor + 2 workers) on a free loopback port in a temporary
directory and talks to it with the ``websockets`` client and plain HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from activecall.protocol.events import parse_event


class Server:
    """``activecall serve`` in a subprocess."""

    def __init__(self, cwd: Path, workers: int = 2) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.cwd = cwd
        (cwd / "activecall.toml").write_text('[callrecord]\ntype = "local"\nroot = "cdr"\n')
        self.log = (cwd / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "activecall",
                "serve",
                "--conf",
                "activecall.toml",
                "--workers",
                str(workers),
                "--http",
                f"127.0.0.1:{self.port}",
            ],
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.get("/health")["workers"] == workers:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, self.logs()
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.logs())

    def logs(self) -> str:
        return (self.cwd / "server.log").read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=5) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url(path), data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def worker_pids(self) -> list[int]:
        """The forked workers (not multiprocessing's resource tracker), oldest first."""
        supervisor = psutil.Process(self.proc.pid)
        workers = [c for c in supervisor.children() if c.cmdline() == supervisor.cmdline()]
        return [c.pid for c in sorted(workers, key=lambda c: c.create_time())]

    def stop(self, *, signalled: bool = False) -> int:
        """SIGTERM (unless the test sent it already), then the exit code."""
        if self.proc.poll() is None:
            if not signalled:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    yield srv
    assert srv.stop() == 0, srv.logs()
    assert not list(Path("/dev/shm").glob(f"*{srv.proc.pid}*"))


async def events_until(
    ws: ClientConnection, name: str, timeout: float = 10, frames: list[str] | None = None
) -> list[dict[str, Any]]:
    """Text events received until (and including) the first named ``name`` (raw text frames
    also appended to ``frames``)."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                if frames is not None:
                    frames.append(message)
                seen.append(json.loads(message))
                if seen[-1]["event"] == name:
                    return seen


async def stream(ws: ClientConnection, pcm: np.ndarray) -> None:
    """Send ``pcm`` in 20 ms frames at real-time pace."""
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), 320)):
        await ws.send(pcm[i : i + 320].tobytes())
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))


def test_speech_call_with_recorder_dump_and_call_record(
    server: Server, speech_16k: np.ndarray
) -> None:
    async def call() -> tuple[list[dict[str, Any]], int | None]:
        async with connect(f"ws://127.0.0.1:{server.port}/call?id=c1") as ws:
            option = {"vad": {}, "recorder": {"recorderFile": "{id}.wav"}}
            await ws.send(json.dumps({"command": "invite", "option": option}))
            events = await events_until(ws, "answer")
            listed = server.get("/list")["active_calls"]
            assert [(c["id"], c["callType"]) for c in listed] == [("c1", "webSocket")]
            assert listed[0]["cs.option"] == option
            await stream(ws, speech_16k[: 4 * 16000])
            await ws.send(json.dumps({"command": "hangup"}))
            events += await events_until(ws, "hangup")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return events, ws.close_code

    events, code = asyncio.run(call())
    names = [e["event"] for e in events]
    assert names[:2] == ["trackStart", "answer"]
    assert names.count("speaking") == names.count("silence") >= 1
    assert names[-1] == "hangup" and code == 1000
    with wave.open(str(server.cwd / "config" / "recorders" / "c1.wav")) as w:
        assert w.getnchannels() == 2 and w.getnframes() >= 3 * 16000
    dump = (server.cwd / "config" / "recorders" / "c1.events.jsonl").read_text().splitlines()
    assert json.loads(dump[0])["type"] == "command"
    assert len(list((server.cwd / "cdr").rglob("*_c1.json"))) == 1
    assert server.get("/list") == {"active_calls": []}


def test_worker_killed_mid_call_other_calls_go_on(server: Server, speech_16k: np.ndarray) -> None:
    async def scenario() -> None:
        clients = [await connect(f"ws://127.0.0.1:{server.port}/call?id=k{i}") for i in range(4)]
        option = {"recorder": {"recorderFile": "{id}.wav"}}
        for ws in clients:
            await ws.send(json.dumps({"command": "invite", "option": option}))
            await events_until(ws, "answer")
        sent = 3 * 16000 + 5000  # past 3 whole seconds: the header was last rewritten at 3 s
        await asyncio.gather(*(stream(ws, speech_16k[:sent]) for ws in clients))
        await asyncio.sleep(0.3)  # the workers have it all
        # Calls are spread over both workers (least loaded first); kill the first one.
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        lost: list[ClientConnection] = []
        alive: list[ClientConnection] = []
        for i, ws in enumerate(clients):
            try:
                events = await events_until(ws, "hangup", timeout=3)
            except TimeoutError:
                alive.append(ws)
                continue
            assert [e["event"] for e in events[-2:]] == ["error", "hangup"]
            assert events[-1]["reason"] == "error"
            lost.append(ws)
            # The supervisor repaired the dead worker's recording before the hangup: the header
            # counts what reached the file, and at most the last second is missing.
            wav = server.cwd / "config" / "recorders" / f"k{i}.wav"
            with wave.open(str(wav)) as w:
                frames = w.getnframes()
            assert 44 + 4 * frames == wav.stat().st_size
            # The recorder writes a frame per 20 ms tick (silence when no audio came), so the
            # file runs on past what was sent, to the kill.
            assert frames >= sent - 16000
        assert len(lost) == 2 and len(alive) == 2
        for ws in alive:
            await ws.send(json.dumps({"command": "history", "speaker": "u", "text": "ok"}))
            assert (await events_until(ws, "addHistory"))[-1]["text"] == "ok"
            await ws.close()
        for ws in lost:
            await ws.close()
        # The replacement worker takes calls.
        deadline = time.monotonic() + 10
        while server.get("/health")["workers"] < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert victim not in server.worker_pids()
        for i in range(4):
            async with connect(f"ws://127.0.0.1:{server.port}/call?id=n{i}") as ws:
                await ws.send(json.dumps({"command": "invite", "option": {}}))
                assert (await events_until(ws, "answer"))[-1]["event"] == "answer"

    asyncio.run(scenario())


def test_rest_kill_command_and_event_stream(server: Server) -> None:
    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{server.port}/call?id=r1") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {}}))
            await events_until(ws, "answer")
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /events/r1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert b"200" in await reader.readline()
            sent = await asyncio.to_thread(
                server.post, "/command/r1", {"command": "custom", "data": {"n": 1}}
            )
            assert sent == {"status": "sent", "id": "r1"}
            assert (await events_until(ws, "custom"))[-1]["data"] == {"n": 1}
            assert await asyncio.to_thread(server.get, "/kill/r1") == {
                "status": "killed",
                "id": "r1",
            }
            assert (await events_until(ws, "hangup"))[-1]["reason"] == "killed"
            stream = (await asyncio.wait_for(reader.read(), 10)).decode()
            writer.close()
            await writer.wait_closed()
            assert "event: command" in stream and '"command":"custom"' in stream
            assert "event: event" in stream and '"event":"hangup"' in stream

    asyncio.run(scenario())
    with pytest.raises(urllib.error.HTTPError) as missing:
        server.get("/kill/r1")
    assert missing.value.code == 404
    missing.value.close()


def test_sigterm_ends_live_calls_with_hangup(tmp_path: Path) -> None:
    srv = Server(tmp_path)

    async def scenario() -> None:
        async with connect(f"ws://127.0.0.1:{srv.port}/call?id=t1") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {}}))
            await events_until(ws, "answer")
            srv.proc.send_signal(signal.SIGTERM)
            hangup = (await events_until(ws, "hangup"))[-1]
            assert hangup["initiator"] == "system"

    asyncio.run(scenario())
    assert srv.stop(signalled=True) == 0, srv.logs()


def test_websocket_call_follows_the_reference_event_order(
    server: Server, speech_16k: np.ndarray
) -> None:
    """§2.9 on the wire, minus ASR/TTS: every event is well-formed and in the typical order."""
    agent = server.cwd / "agent.wav"
    with wave.open(str(agent), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.full(8000, 3000, np.int16).tobytes())

    async def call() -> list[str]:
        frames: list[str] = []
        async with connect(f"ws://127.0.0.1:{server.port}/call?id=o1") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {"vad": {}}}))
            await events_until(ws, "answer", frames=frames)
            await stream(ws, speech_16k[16000 : 5 * 16000])
            await asyncio.sleep(0.5)  # the last silence is out
            await ws.send(json.dumps({"command": "play", "url": str(agent), "playId": "p1"}))
            await events_until(ws, "trackEnd", frames=frames)
            await ws.send("{not json")
            await events_until(ws, "error", frames=frames)
            await ws.send(json.dumps({"command": "hangup"}))
            await events_until(ws, "hangup", frames=frames)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        return frames

    frames = asyncio.run(call())
    events = [json.loads(f) for f in frames]
    for frame, event in zip(frames, events, strict=True):
        assert parse_event(frame).to_json() == orjson.dumps(event)  # no extra or misnamed field
        assert isinstance(event["timestamp"], int)
    names = [e["event"] for e in events]
    speech = [n for n in names if n in ("speaking", "silence")]
    assert speech[:2] == ["speaking", "silence"] and speech.count("speaking") == speech.count(
        "silence"
    )
    rest = [n for n in names if n not in ("speaking", "silence")]
    assert rest == ["trackStart", "answer", "trackStart", "trackEnd", "error", "hangup"]
    assert names.index("answer") < names.index("speaking")
    tracks = [e for e in events if e["event"] in ("trackStart", "trackEnd")]
    assert tracks[0]["trackId"] == "o1" and "playId" not in tracks[0]
    assert [(t["trackId"], t["playId"]) for t in tracks[1:]] == [("server-side-track", "p1")] * 2
    assert events[names.index("answer")]["sdp"] == ""
    assert events[names.index("error")]["sender"] == "command"
    assert events[-1]["initiator"] == "caller"


def test_precache_fills_the_cache_with_piper(server: Server) -> None:
    body = {"command": "tts", "text": "Your balance is ready.", "cacheKey": "balance"}
    assert server.post("/precache", body) == {
        "status": "cached",
        "cacheKey": "balance",
        "bytes": (server.cwd / "config" / "mediacache" / "balance.pcm").stat().st_size,
    }
    pcm = np.fromfile(server.cwd / "config" / "mediacache" / "balance.pcm", "<i2")
    assert len(pcm) > 16000 * 0.8 and np.abs(pcm).max() > 3000  # about a second of speech
    assert server.post("/precache", body)["status"] == "exists"
    for bad in ({"command": "play", "url": "x"}, {"command": "tts"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.post("/precache", bad)
        assert refused.value.code == 400
        refused.value.close()
    unknown = {"command": "tts", "text": "hi", "option": {"provider": "nope"}}
    with pytest.raises(urllib.error.HTTPError) as failed:
        server.post("/precache", unknown)
    assert failed.value.code == 502 and "nope" in json.loads(failed.value.read())["error"]
    failed.value.close()


def test_tts_on_a_websocket_call_streams_agent_audio(server: Server) -> None:
    async def call() -> tuple[list[dict[str, Any]], int]:
        frames: list[str] = []
        audio = 0
        async with connect(f"ws://127.0.0.1:{server.port}/call?id=t1") as ws:
            await ws.send(json.dumps({"command": "invite", "option": {"codec": "pcmu"}}))
            await events_until(ws, "answer")
            say = {"command": "tts", "text": "Hello. How can I help?", "playId": "g1"}
            await ws.send(json.dumps(say))
            async with asyncio.timeout(30):
                while True:
                    message = await ws.recv()
                    if isinstance(message, bytes):
                        audio += len(message)
                        continue
                    frames.append(message)
                    if json.loads(message)["event"] == "trackEnd":
                        break
            await ws.send(json.dumps({"command": "hangup"}))
            await events_until(ws, "hangup")
        return [json.loads(f) for f in frames], audio

    events, audio = asyncio.run(call())
    names = [e["event"] for e in events]  # after the answer
    assert names[0] == "trackStart" and events[0]["playId"] == "g1"
    assert events[0]["trackId"] == "server-side-track"
    assert "metrics" in names and names[-1] == "trackEnd" and events[-1]["playId"] == "g1"
    metric = next(e for e in events if e["event"] == "metrics")
    assert metric["key"] == "completed.tts.piper" and metric["data"]["playId"] == "g1"
    assert audio > 8000  # over a second of PCMU (8000 bytes a second) reached the client


def test_a_taken_port_is_a_clear_error_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "activecall", "serve", "--workers", "1", "--http",
             f"127.0.0.1:{port}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    assert done.returncode == 1
    assert "cannot start the server" in done.stderr and "address already in use" in done.stderr
    assert "leaked shared_memory" not in done.stderr  # the workers' rings were freed
