"""A ``/call`` session in realtime mode against the fake Realtime API (the published schema)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from activecall.workers.session import CallSession, SessionSettings
from tests.providers.fakes.realtime import FakeRealtime, Turn

KEY = "sk-test"


class LoopPort:
    """The worker's side of a session, on a running loop; the clock is the loop's."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        self.ended = False
        self.t0 = 1_700_000_000_000

    def now_ms(self) -> int:
        return self.t0 + int(asyncio.get_running_loop().time() * 1000)

    def emit_text(self, data: bytes) -> None:
        self.events.append(orjson.loads(data))

    def emit_audio(self, data: bytes) -> None:
        self.audio.append(data)

    def end(self) -> None:
        self.ended = True

    def run_blocking(self, fn: Any, *args: Any) -> Any:
        raise AssertionError("not used")

    def call_soon(self, fn: Any) -> None:
        asyncio.get_running_loop().call_soon(fn)

    def note_file(self, kind: str, path: str) -> None:
        pass

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]


async def stream(session: CallSession, pcm: np.ndarray, port: LoopPort) -> None:
    """Real-time pace: a 20 ms frame and a tick every 20 ms."""
    for i in range(0, len(pcm), 320):
        session.on_audio(pcm[i : i + 320].tobytes())
        session.tick(port.now_ms())
        await asyncio.sleep(0.02)


def test_realtime_call_speaks_the_models_reply_and_reports_it(tmp_path: Path) -> None:
    turns = (Turn(speech_start_ms=200, speech_end_ms=1200, user_text="hi", reply="Hello there"),)

    async def main() -> LoopPort:
        port = LoopPort()
        settings = SessionSettings(recording_dir=tmp_path, dump_dir=tmp_path)
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            session = CallSession(port, "rt1", dump=False, settings=settings)
            realtime = {"provider": "openai", "endpoint": f"{fake.url}/v1", "apiKey": KEY}
            option = {"codec": "pcm", "realtime": {**realtime, "extra": {"voice": "alloy"}}}
            session.on_text(json.dumps({"command": "invite", "option": option}))
            silence = np.zeros(16000 * 4, np.int16)  # the fake's script decides what it hears
            await stream(session, silence, port)
            session.on_text(json.dumps({"command": "hangup"}))
            await asyncio.sleep(0.1)
            sent = fake.connections[0]
            assert sent.types()[0] == "session.update"
            assert len(sent.audio) >= 24000 * 2 * 3  # seconds of caller audio at 24 kHz
        return port

    port = asyncio.run(main())
    names = port.names()
    assert names[:2] == ["trackStart", "answer"]
    assert "speaking" in names  # the API's speech start
    starts = [e for e in port.events if e["event"] == "trackStart"][1:]
    assert starts and starts[0]["playId"] == "realtime"
    assert "asrDelta" in names
    history = [e for e in port.events if e["event"] == "addHistory"]
    assert {"speaker": "assistant", "text": "Hello there"}.items() <= history[-1].items()
    assert any(np.abs(np.frombuffer(a, "<i2")).max() > 1000 for a in port.audio)  # it spoke
    assert "trackEnd" in names and names[-1] == "hangup"
    assert "error" not in names


def test_a_refused_key_is_an_error_and_the_call_goes_on(tmp_path: Path) -> None:
    async def main() -> LoopPort:
        port = LoopPort()
        settings = SessionSettings(recording_dir=tmp_path, dump_dir=tmp_path)
        async with FakeRealtime(api_key=KEY) as fake:
            session = CallSession(port, "rt2", dump=False, settings=settings)
            realtime = {"provider": "openai", "endpoint": f"{fake.url}/v1", "apiKey": "sk-bad"}
            session.on_text(json.dumps({"command": "invite", "option": {"realtime": realtime}}))
            await stream(session, np.zeros(16000, np.int16), port)
            session.on_text(json.dumps({"command": "history", "speaker": "u", "text": "still"}))
            session.on_text(json.dumps({"command": "hangup"}))
        return port

    port = asyncio.run(main())
    errors = [e for e in port.events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["sender"] == "realtime"
    assert port.names()[-2:] == ["addHistory", "hangup"]


def test_a_bad_realtime_option_is_an_error(tmp_path: Path) -> None:
    async def main() -> LoopPort:
        port = LoopPort()
        session = CallSession(port, "rt3", dump=False, settings=SessionSettings())
        bad = {"realtime": {"provider": "azure"}}  # azure needs an endpoint
        session.on_text(json.dumps({"command": "invite", "option": bad}))
        session.on_text(json.dumps({"command": "hangup"}))
        return port

    port = asyncio.run(main())
    assert port.names() == ["error", "trackStart", "answer", "hangup"]
    assert "endpoint" in port.events[0]["error"]


def test_instructions_changed_before_the_bridge_is_up_are_sent_once_it_is(tmp_path: Path) -> None:
    async def main() -> tuple[LoopPort, list[dict[str, Any]]]:
        port = LoopPort()
        async with FakeRealtime(api_key=KEY) as fake:
            session = CallSession(port, "rt4", dump=False, settings=SessionSettings())
            realtime = {
                "provider": "openai",
                "endpoint": f"{fake.url}/v1",
                "apiKey": KEY,
                "extra": {"instructions": "Scene one."},
            }
            session.on_text(json.dumps({"command": "invite", "option": {"realtime": realtime}}))
            agent = session.realtime
            assert agent is not None
            agent.update_instructions("Scene two.")  # still connecting
            with pytest.raises(TypeError, match="instructions must be a string"):
                agent.update_instructions(None)  # type: ignore[arg-type]
            await stream(session, np.zeros(16000, np.int16), port)
            session.on_text(json.dumps({"command": "hangup"}))
            assert session.realtime is None  # gone with the call
            await asyncio.sleep(0.05)
            updates = fake.connections[0].of_type("session.update")
        return port, updates

    port, updates = asyncio.run(main())
    assert [u["session"]["instructions"] for u in updates] == ["Scene one.", "Scene two."]
    assert updates[1] == {
        "type": "session.update",
        "session": {"type": "realtime", "instructions": "Scene two."},
    }
    assert "error" not in port.names()
