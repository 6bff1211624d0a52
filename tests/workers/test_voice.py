"""A ``/call`` session's voice AI with the offline providers: piper speaks, pocketsphinx hears."""

from __future__ import annotations

import asyncio
import base64
import functools
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
        await registry.aclose()  # providers belong to this loop
        return port

    return asyncio.run(wrapper())


def send(session: CallSession, command: dict[str, Any]) -> None:
    session.on_text(json.dumps(command))


def events(port: LoopPort, name: str) -> list[dict[str, Any]]:
    return [e for e in port.events if e["event"] == name]


def ended(port: LoopPort, play_id: str) -> bool:
    return play_id in [e.get("playId") for e in events(port, "trackEnd")]


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
    # graceful: the first sentence played to its end, and nothing of the next (over a second
    # long); a few frames of the pause between sentences may or may not have arrived yet
    assert abs(frames_after["soft"] - frames_after["sentence"]) <= 5, frames_after


def test_a_track_cut_twice_has_one_interruption(tmp_path: Path) -> None:
    """A graceful interrupt, then a new reply before the sentence ends: one event."""

    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {}})
        text = "First sentence is here. Second sentence follows it."
        send(session, {"command": "tts", "text": text, "playId": "soft"})
        await run_until(session, port, lambda: len(port.audio) > 25)
        send(session, {"command": "interrupt", "graceful": True})
        send(session, {"command": "tts", "text": "Okay.", "playId": "next"})
        await run_until(session, port, lambda: ended(port, "next"))

    port = call(tmp_path, main)
    assert [e["playId"] for e in events(port, "interruption")] == ["soft"]
    assert [e.get("playId") for e in events(port, "trackEnd")] == ["soft", "next"]


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


def test_streaming_tts_speaks_before_the_end_of_stream(tmp_path: Path) -> None:
    heard_before_end: list[int] = []

    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {}})
        for piece in ("Thanks for waiting. ", "I found your ", "account and "):
            send(session, {"command": "tts", "text": piece, "playId": "s", "streaming": True})
            await asyncio.sleep(0.05)
        await run_until(session, port, lambda: len(port.audio) > 10)  # the first sentence
        heard_before_end.append(len(port.audio))
        last = {"command": "tts", "text": "it is fine.", "playId": "s", "streaming": True}
        send(session, {**last, "endOfStream": True})
        await run_until(session, port, lambda: "trackEnd" in port.names())

    port = call(tmp_path, main)
    assert heard_before_end[0] > 10
    assert [e.get("playId") for e in events(port, "trackStart")] == [None, "s"]
    assert len(events(port, "trackEnd")) == 1 and "interruption" not in port.names()
    assert len(port.audio) * 20 > 2500  # both sentences were spoken


def test_base64_tts_auto_hangup_and_wait_input_timeout(tmp_path: Path) -> None:
    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {}})
        pcm = (np.ones(8000, np.int16) * 1234).tobytes()  # half a second
        b64 = {"command": "tts", "text": base64.b64encode(pcm).decode()}
        send(session, {**b64, "base64": True, "playId": "raw", "waitInputTimeout": 300})
        await run_until(session, port, lambda: bool(events(port, "silence")))
        send(session, {"command": "tts", "text": "Goodbye.", "playId": "bye", "autoHangup": True})
        await run_until(session, port, lambda: port.ended)

    port = call(tmp_path, main)
    frames = [np.frombuffer(a, "<i2") for a in port.audio]
    assert sum(int(np.all(f == 1234)) for f in frames) == 25  # the PCM itself, 25 frames
    wait = events(port, "silence")[0]
    assert wait["trackId"] == "server-side-track" and wait["duration"] >= 300
    hangup = events(port, "hangup")[0]
    assert hangup["reason"] == "autohangup" and port.names().index("hangup") > port.names().index(
        "trackEnd"
    )


def test_whole_text_tts_is_cached_and_the_option_overrides_per_command(tmp_path: Path) -> None:
    lengths: dict[str, int] = {}

    async def main(session: CallSession, port: LoopPort) -> None:
        send(session, {"command": "invite", "option": {"tts": {"speed": 1.0}}})
        for key, extra in (("first", {}), ("again", {}), ("fast", {"option": {"speed": 2.0}})):
            start = len(port.audio)
            say = {"command": "tts", "text": "One moment please.", "playId": key, **extra}
            send(session, say)
            await run_until(session, port, functools.partial(ended, port, key))
            lengths[key] = len(port.audio) - start

    cache = tmp_path / "cache"

    async def wrapper() -> LoopPort:
        port = LoopPort()
        settings = SessionSettings(recording_dir=tmp_path, dump_dir=tmp_path, media_cache_dir=cache)
        session = CallSession(port, "v2", dump=False, settings=settings)
        await main(session, port)
        session.on_text(json.dumps({"command": "hangup"}))
        await asyncio.sleep(0.05)
        await registry.aclose()
        return port

    port = asyncio.run(wrapper())
    cached = [m["data"]["cached"] for m in events(port, "metrics")]
    assert cached == [False, True, False]  # same text and option: from the cache
    assert len(list(cache.glob("*.pcm"))) == 2
    assert abs(lengths["again"] - lengths["first"]) <= 1
    assert lengths["fast"] < 0.7 * lengths["first"]  # speed 2 speaks faster
