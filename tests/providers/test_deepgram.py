"""Deepgram live transcription (ASR) and /v1/speak (TTS) against a local fake of the service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
import pytest

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers.base import AsrStream, ProviderError, Transcript, TtsStream
from activecall.providers.deepgram import DeepgramAsr, DeepgramTts
from activecall.providers.registry import ProviderRegistry
from tests.providers.fakes.deepgram import FakeDeepgram, ListenConnection, Segment, fake_speech

KEY = "dg-test"
BOUND = 5.0  # seconds any failure must surface within (a hang fails the test)
FRAME = 640  # 20 ms of 16 kHz PCM16

SEGMENTS = (
    Segment("hello there", 0, 600),
    Segment("how are you", 600, 1000, speech_final=True),
    Segment("fine thanks", 1200, 1600),
    Segment("last words", 1800, 2000),
)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await scenario()

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def no_deepgram_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)


@pytest.fixture
def speech(speech_16k: np.ndarray) -> bytes:
    """Two seconds of real speech, PCM16LE 16 kHz."""
    return speech_16k[16000 : 16000 + 32000].astype("<i2").tobytes()


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


def asr_option(url: str, **kw: Any) -> TranscriptionOption:
    return TranscriptionOption(provider="deepgram", secret_key=KEY, endpoint=url, **kw)


def push_frames(stream: AsrStream, pcm: bytes, size: int = FRAME) -> None:
    for i in range(0, len(pcm), size):
        stream.push(pcm[i : i + size])


async def push_paced(stream: AsrStream, fake: FakeDeepgram, pcm: bytes, size: int = FRAME) -> None:
    """Push like a live call: each piece reaches the service before the next is pushed."""
    conn = fake.listens[-1]
    base = len(conn.audio)
    for i in range(0, len(pcm), size):
        stream.push(pcm[i : i + size])
        await until(partial(_received, conn, base + (min(i + size, len(pcm)) & ~1)))


def _received(conn: ListenConnection, size: int) -> bool:
    return len(conn.audio) >= size


async def collect(stream: AsrStream) -> list[Transcript]:
    return [t async for t in stream.results()]


def test_registry_builds_both_providers() -> None:
    registry = ProviderRegistry()
    assert isinstance(registry.get("asr", "deepgram"), DeepgramAsr)
    assert isinstance(registry.get("tts", "deepgram"), DeepgramTts)


# --- ASR --------------------------------------------------------------------------------------


def test_asr_full_exchange(speech: bytes) -> None:
    async def scenario() -> tuple[FakeDeepgram, list[Transcript]]:
        async with FakeDeepgram(api_key=KEY, segments=SEGMENTS) as fake:
            option = asr_option(
                fake.url,
                language="en-US",
                extra={"smart_format": "true", "encoding": "mulaw"},  # the audio format is ours
            )
            stream = await DeepgramAsr().open(option)
            reader = asyncio.create_task(collect(stream))
            await push_paced(stream, fake, speech[:54400], 641)  # 1.7 s in odd pieces
            stream.end_utterance()
            await push_paced(stream, fake, speech[54400:])
            await stream.aclose()
            return fake, await reader

    fake, transcripts = run(scenario)
    assert transcripts == [
        Transcript("hello", False, 0, 0, 300),
        Transcript("hello there", False, 0, 0, 600),
        Transcript("hello there how", False, 0, 0, 800),
        Transcript("hello there how are you", True, 0, 0, 1000, 0.9),
        Transcript("fine", False, 1, 1200, 1400),
        Transcript("fine thanks", False, 1, 1200, 1600),
        Transcript("fine thanks", True, 1, 1200, 1600, 0.9),  # from_finalize ends it
        Transcript("last", False, 2, 1800, 1900),
        Transcript("last words", False, 2, 1800, 2000),
        Transcript("last words", True, 2, 1800, 2000, 0.9),  # flushed at the close
    ]
    (conn,) = fake.listens
    assert conn.headers["Authorization"] == f"Token {KEY}"
    assert conn.query == {
        "model": "nova-3",
        "interim_results": "true",
        "smart_format": "true",
        "language": "en-US",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
    }
    assert bytes(conn.audio) == speech  # every byte, in order
    assert conn.control_types() == ["Finalize", "CloseStream"]
    assert conn.close_code == 1000


def test_asr_utterance_end_finishes_the_utterance(speech: bytes) -> None:
    segments = (Segment("one two", 0, 500, utterance_end=True), Segment("three", 600, 900))

    async def scenario() -> tuple[FakeDeepgram, list[Transcript]]:
        async with FakeDeepgram(api_key=KEY, segments=segments) as fake:
            option = asr_option(fake.url, extra={"utterance_end_ms": "1000"})
            stream = await DeepgramAsr().open(option)
            reader = asyncio.create_task(collect(stream))
            await push_paced(stream, fake, speech[:32000])
            await stream.aclose()
            return fake, await reader

    fake, transcripts = run(scenario)
    assert fake.listens[0].query["utterance_end_ms"] == "1000"
    assert [t for t in transcripts if t.final] == [
        Transcript("one two", True, 0, 0, 500, 0.9),
        Transcript("three", True, 1, 600, 900, 0.9),
    ]


def test_asr_reply_that_is_not_json_is_a_clear_error(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            fake.garbage = True
            stream = await DeepgramAsr().open(asr_option(fake.url))
            stream.push(speech[:640])
            try:
                await collect(stream)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match=r"bad reply.*502 Bad Gateway"):
        run(scenario)


def test_asr_keepalive_holds_an_idle_stream_open() -> None:
    async def scenario() -> ListenConnection:
        async with FakeDeepgram(api_key=KEY) as fake:
            fake.idle_timeout = 0.5
            asr = DeepgramAsr()
            asr.keepalive_interval = 0.05
            stream = await asr.open(asr_option(fake.url, model_type="nova-2"))
            await until(lambda: fake.listens[0].control_types().count("KeepAlive") >= 3)
            await stream.aclose()
            return fake.listens[0]

    conn = run(scenario)
    assert conn.query["model"] == "nova-2"
    assert set(conn.control_types()[:-1]) == {"KeepAlive"}
    assert conn.control_types()[-1] == "CloseStream"
    assert conn.close_code == 1000  # closed by CloseStream, not by the idle timeout


def test_asr_idle_timeout_close_frame_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            fake.idle_timeout = 0.1
            asr = DeepgramAsr()
            asr.keepalive_interval = 10.0
            stream = await asr.open(asr_option(fake.url))
            try:
                await collect(stream)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match="code 1011: NET-0001") as caught:
        run(scenario)
    assert caught.value.code == 1011
    assert caught.value.provider == "deepgram"


def test_asr_refused_key_fails_open_with_deepgram_message() -> None:
    async def scenario() -> FakeDeepgram:
        async with FakeDeepgram(api_key=KEY) as fake:
            with pytest.raises(ProviderError, match=r"HTTP 401.*Invalid credentials") as caught:
                await DeepgramAsr().open(TranscriptionOption(secret_key="bad", endpoint=fake.url))
            assert caught.value.code == 401
            return fake

    assert run(scenario).refused == 1


def test_asr_connection_dropped_mid_stream_is_reported(speech: bytes) -> None:
    got: list[Transcript] = []

    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY, segments=SEGMENTS) as fake:
            fake.drop_after_bytes = 40000  # 1.25 s
            stream = await DeepgramAsr().open(asr_option(fake.url))
            await push_paced(stream, fake, speech[:38400])
            push_frames(stream, speech[38400:])
            try:
                async for transcript in stream.results():
                    got.append(transcript)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match="connection lost"):
        run(scenario)
    assert got == [
        Transcript("hello", False, 0, 0, 300),
        Transcript("hello there", False, 0, 0, 600),
        Transcript("hello there how", False, 0, 0, 800),
        Transcript("hello there how are you", True, 0, 0, 1000, 0.9),
    ]


def test_asr_server_that_stops_answering_fails_results() -> None:
    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            fake.stall = True
            asr = DeepgramAsr()
            asr.ping_interval, asr.ping_timeout, asr.close_timeout = 0.1, 0.2, 0.2
            stream = await asr.open(asr_option(fake.url))
            try:
                await collect(stream)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match="ping timeout"):
        run(scenario)


def test_asr_bad_input_is_refused_and_loses_nothing(speech: bytes) -> None:
    async def scenario() -> FakeDeepgram:
        async with FakeDeepgram(api_key=KEY) as fake:
            stream = await DeepgramAsr().open(asr_option(fake.url))
            with pytest.raises(TypeError, match="PCM bytes"):
                stream.push([1, 2])  # type: ignore[arg-type]
            stream.push(b"")  # nothing: no frame (an empty one would end the stream)
            stream.push(speech[:3])  # a byte and a half: the half waits
            stream.push(speech[3:6400])
            await until(lambda: len(fake.listens[0].audio) == 6400)
            await stream.aclose()
            await stream.aclose()  # idempotent
            stream.push(speech)  # after close: dropped quietly
            return fake

    fake = run(scenario)
    assert bytes(fake.listens[0].audio) == speech[:6400]


def test_asr_without_a_key_or_with_a_bad_endpoint_fails_before_connecting() -> None:
    async def scenario() -> None:
        async with FakeDeepgram() as fake:
            with pytest.raises(ProviderError, match="DEEPGRAM_API_KEY"):
                await DeepgramAsr().open(TranscriptionOption(endpoint=fake.url))
            assert fake.listens == [] and fake.refused == 0
        with pytest.raises(ProviderError, match="endpoint must be"):
            await DeepgramAsr().open(TranscriptionOption(secret_key=KEY, endpoint="api.deepgram"))

    run(scenario)


def test_asr_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> FakeDeepgram:
        async with FakeDeepgram(api_key="dg-env") as fake:
            monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-env")
            stream = await DeepgramAsr().open(TranscriptionOption(endpoint=fake.url))
            await stream.aclose()
            return fake

    assert run(scenario).listens[0].headers["Authorization"] == "Token dg-env"


# --- TTS --------------------------------------------------------------------------------------


def tts_option(url: str, **kw: Any) -> SynthesisOption:
    return SynthesisOption(provider="deepgram", secret_key=KEY, endpoint=url, **kw)


async def speak(tts: DeepgramTts, stream: TtsStream, rate: int) -> bytes:
    try:
        chunks = [c async for c in stream.chunks()]
    finally:
        await tts.aclose()
    assert all(c.sample_rate == rate and len(c.pcm) % 2 == 0 for c in chunks)
    return b"".join(c.pcm for c in chunks)


def test_tts_whole_text_full_exchange() -> None:
    async def scenario() -> tuple[FakeDeepgram, bytes]:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            stream = await tts.open(tts_option(fake.url, model="aura-2-luna-en"), streaming=False)
            stream.push_text("Good morning. ")
            stream.push_text("How can I help?")
            stream.end_text()
            return fake, await speak(tts, stream, 16000)

    fake, audio = run(scenario)
    text = "Good morning. How can I help?"
    assert audio == fake_speech(text, 16000)
    (request,) = fake.speaks
    assert request.headers["Authorization"] == f"Token {KEY}"
    assert request.query == {
        "model": "aura-2-luna-en",
        "encoding": "linear16",
        "sample_rate": "16000",
        "container": "none",
    }
    assert request.body == {"text": text}


def test_tts_streaming_requests_each_sentence_at_the_asked_rate() -> None:
    async def scenario() -> tuple[FakeDeepgram, list[str], bytes]:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            option = tts_option(fake.url, speaker="aura-2-orion-en", samplerate=24000)
            stream = await tts.open(option, streaming=True)
            stream.push_text("One. Two")
            await until(lambda: len(fake.speaks) == 1)
            first = [r.body["text"] for r in fake.speaks]
            stream.push_text(" more. Three")
            stream.end_text()
            return fake, first, await speak(tts, stream, 24000)

    fake, first, audio = run(scenario)
    sentences = ["One.", "Two more.", "Three"]
    assert first == sentences[:1]
    assert [r.body["text"] for r in fake.speaks] == sentences
    assert {r.query["model"] for r in fake.speaks} == {"aura-2-orion-en"}
    assert audio == b"".join(fake_speech(s, 24000) for s in sentences)


def test_tts_text_over_the_limit_is_split_and_loses_nothing() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(120))  # ~3.4k characters

    async def scenario() -> tuple[FakeDeepgram, bytes]:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            stream = await tts.open(tts_option(fake.url), streaming=False)
            stream.push_text(text)
            stream.end_text()
            return fake, await speak(tts, stream, 16000)

    fake, audio = run(scenario)
    texts = [r.body["text"] for r in fake.speaks]
    assert len(texts) == 2 and all(len(t) <= 2000 and t.endswith(".") for t in texts)
    assert " ".join(texts) == text
    assert audio == b"".join(fake_speech(t, 16000) for t in texts)


def test_tts_refused_key_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            stream = await tts.open(
                SynthesisOption(secret_key="bad", endpoint=fake.url), streaming=False
            )
            stream.push_text("Hello.")
            stream.end_text()
            await speak(tts, stream, 16000)

    with pytest.raises(ProviderError, match=r"HTTP 401.*Invalid credentials") as caught:
        run(scenario)
    assert caught.value.code == 401


def test_tts_refused_option_gives_the_api_message() -> None:
    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            stream = await tts.open(tts_option(fake.url, samplerate=44100), streaming=False)
            stream.push_text("Hello.")
            stream.end_text()
            await speak(tts, stream, 44100)

    with pytest.raises(ProviderError, match=r"HTTP 400.*Unsupported sample_rate: 44100") as caught:
        run(scenario)
    assert caught.value.code == 400


def test_tts_connection_dropped_mid_stream_is_a_provider_error() -> None:
    got: list[bytes] = []

    async def scenario() -> None:
        async with FakeDeepgram(api_key=KEY) as fake:
            fake.drop_after = 2
            tts = DeepgramTts()
            stream = await tts.open(tts_option(fake.url), streaming=False)
            stream.push_text("A sentence long enough to need several pieces of audio.")
            stream.end_text()
            try:
                async for chunk in stream.chunks():
                    got.append(chunk.pcm)
            finally:
                await tts.aclose()

    with pytest.raises(ProviderError, match="failed"):
        run(scenario)
    assert (
        b"".join(got)
        == fake_speech("A sentence long enough to need several pieces of audio.", 16000)[:2002]
    )


def test_tts_cancel_ends_chunks_and_is_idempotent() -> None:
    async def scenario() -> list[bytes]:
        async with FakeDeepgram(api_key=KEY) as fake:
            tts = DeepgramTts()
            stream = await tts.open(tts_option(fake.url), streaming=True)
            await stream.cancel()
            await stream.cancel()
            stream.push_text("Too late. ")
            stream.end_text()
            chunks = [c.pcm async for c in stream.chunks()]
            await tts.aclose()
            assert fake.speaks == []
            return chunks

    assert run(scenario) == []


def test_tts_bad_options_fail_at_open() -> None:
    async def scenario() -> None:
        with pytest.raises(ProviderError, match="DEEPGRAM_API_KEY"):
            await DeepgramTts().open(SynthesisOption(), streaming=False)
        with pytest.raises(ProviderError, match="samplerate must be positive"):
            await DeepgramTts().open(
                SynthesisOption(secret_key=KEY, samplerate=-8000), streaming=False
            )

    run(scenario)
