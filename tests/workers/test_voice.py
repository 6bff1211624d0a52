"""A ``/call`` session's voice AI with the offline providers: piper speaks, pocketsphinx hears."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from activecall._native import g711
from activecall._native.resample import Resampler
from activecall.protocol.options import SynthesisOption
from activecall.providers.registry import registry
from activecall.workers.session import CallSession, SessionSettings
from tests.workers.test_realtime_call import LoopPort

KEY_WORDS = ("would", "like", "check", "account", "balance")


async def piper_speech(text: str) -> np.ndarray:
    """``text`` spoken by piper, at 16 kHz."""
    stream = await registry.get("tts", "piper").open(SynthesisOption(), streaming=False)
    stream.push_text(text)
    stream.end_text()
    parts = []
    resampler: Resampler | None = None
    async for chunk in stream.chunks():
        resampler = resampler or Resampler(chunk.sample_rate, 16000)
        parts.append(resampler.process(np.frombuffer(chunk.pcm, "<i2").astype(np.int16)))
    await stream.cancel()
    assert resampler is not None
    parts.append(resampler.flush())
    return np.concatenate(parts)


async def run_until(
    session: CallSession, port: LoopPort, done: Callable[[], bool], timeout: float = 30
) -> None:
    """Tick every 20 ms (no caller audio) until ``done()``."""
    async with asyncio.timeout(timeout):
        while not done():
            session.tick(port.now_ms())
            await asyncio.sleep(0.02)


def call(tmp_path: Path, main: Callable[[CallSession, LoopPort], Awaitable[None]]) -> LoopPort:
    async def wrapper() -> LoopPort:
        port = LoopPort()
        settings = SessionSettings(recording_dir=tmp_path, dump_dir=tmp_path)
        session = CallSession(port, "v1", dump=False, settings=settings)
        await main(session, port)
        session.on_text(json.dumps({"command": "hangup"}))
        await asyncio.sleep(0.05)
        return port

    return asyncio.run(wrapper())


def send(session: CallSession, command: dict[str, Any]) -> None:
    session.on_text(json.dumps(command))


def events(port: LoopPort, name: str) -> list[dict[str, Any]]:
    return [e for e in port.events if e["event"] == name]


def test_tts_with_the_same_play_id_appends_and_a_new_one_interrupts(tmp_path: Path) -> None:
    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {}})
        send(session, {"command": "tts", "text": "Good morning.", "playId": "a"})
        send(session, {"command": "tts", "text": "Thanks for calling us.", "playId": "a"})
        await run_until(session, port, lambda: len(events(port, "metrics")) == 2)
        await run_until(session, port, lambda: port.names().count("trackEnd") == 1)
        send(session, {"command": "tts", "text": "This is a long sentence to cut.", "playId": "b"})
        await run_until(session, port, lambda: len(port.audio) > 160)  # half a second of b
        send(session, {"command": "tts", "text": "Sorry.", "playId": "c"})
        await run_until(session, port, lambda: port.names().count("trackEnd") == 3)

    port = call(tmp_path, main)
    starts = [e.get("playId") for e in events(port, "trackStart")]
    ends = [e.get("playId") for e in events(port, "trackEnd")]
    assert starts == [None, "a", "b", "c"] and ends == ["a", "b", "c"]
    cut = events(port, "interruption")
    assert len(cut) == 1 and cut[0]["playId"] == "b"
    assert cut[0]["subtitle"] == "This is a long sentence to cut."
    assert 300 <= cut[0]["current"] < cut[0]["totalDuration"]
    metrics = events(port, "metrics")
    assert {m["key"] for m in metrics} == {"completed.tts.piper"}
    assert [m["data"]["cmdSeq"] for m in metrics[:2]] == [1, 2]


def test_interrupt_stops_within_a_frame_and_graceful_finishes_the_sentence(
    tmp_path: Path,
) -> None:
    frames_after: dict[str, int] = {}

    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {}})
        text = "First sentence is here. Second sentence follows it. Third one ends it."
        send(session, {"command": "tts", "text": text, "playId": "hard"})
        await run_until(session, port, lambda: len(port.audio) > 25)
        send(session, {"command": "interrupt"})
        before = len(port.audio)
        await run_until(session, port, lambda: port.names().count("trackEnd") == 1)
        for _ in range(10):
            session.tick(port.now_ms())
        frames_after["hard"] = len(port.audio) - before
        first = await piper_speech("First sentence is here.")
        frames_after["sentence"] = -(-len(first) // 320)
        start = len(port.audio)
        send(session, {"command": "tts", "text": text, "playId": "soft"})
        await run_until(session, port, lambda: len(port.audio) > start + 25)
        send(session, {"command": "interrupt", "graceful": True})
        await run_until(session, port, lambda: port.names().count("trackEnd") == 2)
        frames_after["soft"] = len(port.audio) - start

    port = call(tmp_path, main)
    hard, soft = events(port, "interruption")
    assert frames_after["hard"] <= 1  # audio stops within one frame
    assert hard["subtitle"] == soft["subtitle"] == "First sentence is here."
    assert hard["position"] == soft["position"] == 0
    # graceful: the first sentence played to its end, and nothing after it
    assert abs(frames_after["soft"] - frames_after["sentence"]) <= 2, frames_after


def test_speech_round_trip_piper_to_pocketsphinx_over_pcmu(tmp_path: Path) -> None:
    async def main(session: CallSession, port: LoopPort) -> None:
        speech = await piper_speech("I would like to check my account balance")
        pcm = np.concatenate((np.zeros(8000, np.int16), speech, np.zeros(16000, np.int16)))
        narrow = Resampler(16000, 8000).process(pcm)
        payload = g711.encode_ulaw(narrow)
        send(session, {"command": "invite", "option": {"codec": "pcmu", "vad": {}, "asr": {}}})
        for i in range(0, len(payload), 160):  # 20 ms of PCMU per frame, at real-time pace
            session.on_audio(bytes(payload[i : i + 160]))
            chunks = session.vad_chunks()
            if chunks:
                session.on_vad(np.array([vad.process_chunk(c) for c in chunks], np.float32))
            session.tick(port.now_ms())
            await asyncio.sleep(0.02)
        await run_until(session, port, lambda: bool(events(port, "asrFinal")))

    from activecall._native.silero import VadSession

    vad = VadSession()
    port = call(tmp_path, main)
    final = events(port, "asrFinal")[0]
    heard = final["text"].lower().split()
    assert sum(word in heard for word in KEY_WORDS) >= 3, final["text"]
    silence = events(port, "silence")[0]
    assert final["startTime"] >= silence["startTime"] - 1000
    keys = {m["key"] for m in events(port, "metrics")}
    assert "completed.asr.pocketsphinx" in keys


def test_unknown_providers_are_errors_naming_them_and_the_call_goes_on(tmp_path: Path) -> None:
    async def main(session: CallSession, port: LoopPort) -> None:
        option = {"asr": {"provider": "nosuchasr"}, "tts": {"provider": "nosuchtts"}}
        send(session, {"command": "invite", "option": option})
        send(session, {"command": "tts", "text": "Hello.", "playId": "x"})
        await run_until(session, port, lambda: len(events(port, "error")) == 2)
        await run_until(session, port, lambda: "trackEnd" in port.names())
        send(session, {"command": "history", "speaker": "user", "text": "still here"})

    port = call(tmp_path, main)
    errors = {e["sender"]: e["error"] for e in events(port, "error")}
    assert "nosuchasr" in errors["asr"] and "nosuchtts" in errors["tts"]
    assert port.names()[-2:] == ["addHistory", "hangup"]
