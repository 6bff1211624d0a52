"""DashScope Paraformer ASR and CosyVoice TTS clients against a local fake of the service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers import aliyun
from activecall.providers.aliyun import AliyunAsr, AliyunAsrStream, AliyunTts, AliyunTtsStream
from activecall.providers.base import ProviderError, Transcript, TtsChunk
from activecall.providers.registry import ProviderRegistry
from tests.providers.fakes.aliyun import FakeDashScope, Sentence, fake_speech

KEY = "sk-test"
BOUND = 5.0  # seconds any failure must surface within (a hang fails the test)
FRAME = 640  # 20 ms of 16 kHz PCM16

SENTENCES = (
    Sentence("hello there world", 0, 600),
    Sentence("second sentence here", 800, 1500),
)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await scenario()

    return asyncio.run(bounded())


@pytest.fixture
def speech(speech_16k: np.ndarray) -> bytes:
    """Two seconds of real speech, PCM16LE 16 kHz."""
    return speech_16k[16000 : 16000 + 32000].astype("<i2").tobytes()


def asr_option(url: str, **kw: Any) -> TranscriptionOption:
    return TranscriptionOption(**{"provider": "aliyun", "secret_key": KEY, "endpoint": url, **kw})


def tts_option(url: str, **kw: Any) -> SynthesisOption:
    return SynthesisOption(**{"provider": "aliyun", "secret_key": KEY, "endpoint": url, **kw})


async def collect(stream: AliyunAsrStream) -> list[Transcript]:
    return [t async for t in stream.results()]


async def audio_of(stream: AliyunTtsStream) -> tuple[bytes, list[TtsChunk]]:
    chunks = [c async for c in stream.chunks()]
    return b"".join(c.pcm for c in chunks), chunks


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


# --- protocol core ----------------------------------------------------------------------------


def test_run_task_has_the_documented_shape() -> None:
    option = TranscriptionOption(
        language="en-US", extra={"heartbeat": "true", "vocabulary_id": "v1"}
    )
    message = aliyun.asr_run_task("task-1", option)
    assert message == {
        "header": {"action": "run-task", "task_id": "task-1", "streaming": "duplex"},
        "payload": {
            "task_group": "audio",
            "task": "asr",
            "function": "recognition",
            "model": "paraformer-realtime-v2",
            "parameters": {
                "format": "pcm",
                "sample_rate": 16000,
                "language_hints": ["en"],
                "heartbeat": True,
                "vocabulary_id": "v1",
            },
            "input": {},
        },
    }
    assert aliyun.finish_task("task-1") == {
        "header": {"action": "finish-task", "task_id": "task-1", "streaming": "duplex"},
        "payload": {"input": {}},
    }
    assert aliyun.continue_task("t", "床前明月光")["payload"] == {"input": {"text": "床前明月光"}}
    assert aliyun.finish_task("t", cancel=True)["payload"] == {"input": {"directive": "cancel"}}


def test_tts_run_task_takes_voice_rate_volume_and_speed() -> None:
    option = SynthesisOption(speaker="longwan_v2", volume=70, speed=1.2, model="cosyvoice-v3-flash")
    payload = aliyun.tts_run_task("t", option, 24000)["payload"]
    assert payload["task"] == "tts"
    assert payload["function"] == "SpeechSynthesizer"
    assert payload["model"] == "cosyvoice-v3-flash"
    assert payload["input"] == {}
    assert payload["parameters"] == {
        "text_type": "PlainText",
        "voice": "longwan_v2",
        "format": "pcm",
        "sample_rate": 24000,
        "volume": 70,
        "rate": 1.2,
    }


def test_events_parse_as_documented() -> None:
    failed = aliyun.parse_event(
        '{"header":{"task_id":"2bf8","event":"task-failed","error_code":"CLIENT_ERROR",'
        '"error_message":"request timeout after 23 seconds.","attributes":{}},"payload":{}}'
    )
    assert (failed.event, failed.task_id, failed.error_code) == (
        "task-failed",
        "2bf8",
        "CLIENT_ERROR",
    )
    error = aliyun.task_failed_error(failed)
    assert "CLIENT_ERROR" in str(error) and "23 seconds" in str(error)
    result = aliyun.parse_event(
        json.dumps(
            {
                "header": {"task_id": "2bf8", "event": "result-generated", "attributes": {}},
                "payload": {
                    "output": {
                        "sentence": {
                            "begin_time": 170,
                            "end_time": 920,
                            "text": "好，我知道了",
                            "heartbeat": False,
                            "sentence_end": True,
                        }
                    },
                    "usage": {"duration": 3},
                },
            }
        )
    )
    assert aliyun.sentence_transcript(result.payload, 4) == Transcript(
        "好，我知道了", final=True, index=4, start_ms=170, end_ms=920
    )
    heartbeat = {"output": {"sentence": {"begin_time": 0, "text": "", "heartbeat": True}}}
    assert aliyun.sentence_transcript(heartbeat, 0) is None


@pytest.mark.parametrize("text", ["not json", "[]", '{"payload": {}}', '{"header": {"event": 3}}'])
def test_a_reply_that_is_not_an_event_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"JSON|header\.event"):
        aliyun.parse_event(text)


def test_registry_builds_both_providers() -> None:
    registry = ProviderRegistry()
    assert isinstance(registry.get("asr", "aliyun"), AliyunAsr)
    assert isinstance(registry.get("tts", "aliyun"), AliyunTts)


# --- ASR ----------------------------------------------------------------------------------------


def test_asr_full_exchange(speech: bytes) -> None:
    async def scenario() -> tuple[FakeDashScope, list[Transcript]]:
        async with FakeDashScope(api_key=KEY, sentences=SENTENCES) as fake:
            stream = await AliyunAsr().open(asr_option(fake.url, extra={"heartbeat": "true"}))
            reader = asyncio.create_task(collect(stream))
            for i in range(0, len(speech), FRAME):
                stream.push(speech[i : i + FRAME])
                await asyncio.sleep(0)
            await stream.aclose()
            return fake, await reader

    fake, transcripts = run(scenario)
    assert transcripts == [
        Transcript("hello", final=False, index=0, start_ms=0),
        Transcript("hello there world", final=True, index=0, start_ms=0, end_ms=600),
        Transcript("second", final=False, index=1, start_ms=800),
        Transcript("second sentence here", final=True, index=1, start_ms=800, end_ms=1500),
    ]
    (conn,) = fake.connections
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert conn.actions() == ["run-task", "finish-task"]
    run_task, finish = conn.instructions
    assert run_task["payload"]["model"] == "paraformer-realtime-v2"
    assert run_task["payload"]["parameters"]["heartbeat"] is True
    assert finish["header"]["task_id"] == run_task["header"]["task_id"]
    assert bytes(conn.audio) == speech  # every byte, in order
    assert set(conn.frame_sizes[:-1]) == {3200}  # ~100 ms frames, as the service recommends
    assert any(
        e["payload"].get("output", {}).get("sentence", {}).get("heartbeat") for e in conn.events
    )


def test_asr_sends_the_remaining_finals_after_finish_task(speech: bytes) -> None:
    async def scenario() -> list[Transcript]:
        async with FakeDashScope(api_key=KEY, sentences=SENTENCES) as fake:
            stream = await AliyunAsr().open(asr_option(fake.url))
            stream.push(speech[:6400])  # 200 ms: no sentence complete yet
            await stream.aclose()
            return await collect(stream)

    transcripts = run(scenario)
    assert [(t.text, t.final, t.index) for t in transcripts] == [
        ("hello there world", True, 0),
        ("second sentence here", True, 1),
    ]


def test_end_utterance_flushes_buffered_audio(speech: bytes) -> None:
    async def scenario() -> list[int]:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunAsr().open(asr_option(fake.url))
            stream.push(speech[:FRAME])
            stream.end_utterance()
            await until(lambda: len(fake.connections[0].audio) == FRAME)
            await stream.aclose()
            return fake.connections[0].frame_sizes

    assert run(scenario) == [FRAME]


def test_asr_aclose_is_idempotent() -> None:
    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunAsr().open(asr_option(fake.url))
            await asyncio.gather(stream.aclose(), stream.aclose())
            await stream.aclose()
            assert await collect(stream) == []
            stream.push(b"\0\0")  # after close: ignored, not an error
            return fake

    assert run(scenario).connections[0].actions() == ["run-task", "finish-task"]


def test_asr_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-env")

    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key="sk-env") as fake:
            stream = await AliyunAsr().open(TranscriptionOption(endpoint=fake.url))
            await stream.aclose()
            return fake

    assert run(scenario).connections[0].headers["Authorization"] == "Bearer sk-env"


def test_missing_key_fails_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)

    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key=KEY) as fake:
            with pytest.raises(ProviderError, match="DASHSCOPE_API_KEY"):
                await AliyunAsr().open(TranscriptionOption(endpoint=fake.url))
            with pytest.raises(ProviderError, match="DASHSCOPE_API_KEY"):
                await AliyunTts().open(SynthesisOption(endpoint=fake.url), streaming=True)
            return fake

    fake = run(scenario)
    assert fake.connections == [] and fake.refused == 0


def test_rejected_key_is_a_provider_error_with_the_http_status() -> None:
    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key=KEY) as fake:
            with pytest.raises(ProviderError, match="401") as info:
                await AliyunAsr().open(asr_option(fake.url, secret_key="sk-wrong"))
            assert info.value.code == 401 and "sk-wrong" not in str(info.value)
            with pytest.raises(ProviderError, match="API key rejected"):
                await AliyunTts().open(tts_option(fake.url, secret_key="sk-wrong"), streaming=False)
            return fake

    fake = run(scenario)
    assert fake.refused == 2 and fake.connections == []


def test_task_failed_mid_stream_ends_results_with_its_code(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY, sentences=SENTENCES) as fake:
            fake.fail_after_bytes = 3200 * 4
            stream = await AliyunAsr().open(asr_option(fake.url))
            stream.push(speech)
            with pytest.raises(ProviderError, match="CLIENT_ERROR: request timeout"):
                await collect(stream)
            await stream.aclose()

    run(scenario)


def test_dropped_connection_mid_stream_is_reported(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY, sentences=SENTENCES) as fake:
            fake.drop_after_bytes = 3200 * 4
            stream = await AliyunAsr().open(asr_option(fake.url))
            stream.push(speech)
            with pytest.raises(ProviderError, match="connection lost"):
                await collect(stream)
            await stream.aclose()
            assert len(fake.connections[0].audio) == 3200 * 4

    run(scenario)


def test_silent_server_fails_open_within_the_timeout() -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY) as fake:
            fake.silent = True
            provider = AliyunAsr()
            provider.reply_timeout = 0.3
            with pytest.raises(ProviderError, match="no task-started"):
                await provider.open(asr_option(fake.url))

    run(scenario)


def test_silent_server_after_finish_task_fails_results() -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY) as fake:
            fake.silent_after_finish = True
            provider = AliyunAsr()
            provider.reply_timeout = 0.2
            stream = await provider.open(asr_option(fake.url))
            await stream.aclose()
            with pytest.raises(ProviderError, match="no task-finished"):
                await collect(stream)

    run(scenario)


def test_unreachable_endpoint_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY) as fake:
            closed_port = fake.url
        with pytest.raises(ProviderError, match="cannot connect"):
            await AliyunAsr().open(asr_option(closed_port))

    run(scenario)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (TranscriptionOption(secret_key=KEY, endpoint="https://example.com/x"), "ws://"),
        (TranscriptionOption(secret_key=KEY, endpoint="not a url"), "ws://"),
        (
            TranscriptionOption(
                secret_key=KEY, endpoint="ws://127.0.0.1:9", extra={"format": "wav"}
            ),
            "extra may not set 'format'",
        ),
    ],
)
def test_bad_asr_options_fail_before_connecting(option: TranscriptionOption, message: str) -> None:
    async def scenario() -> None:
        with pytest.raises(ProviderError, match=message):
            await AliyunAsr().open(option)

    run(scenario)


def test_bad_audio_is_refused_and_loses_nothing(speech: bytes) -> None:
    async def scenario() -> bytes:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunAsr().open(asr_option(fake.url))
            stream.push(speech[:FRAME])
            with pytest.raises(ValueError, match="whole samples"):
                stream.push(b"\x01\x02\x03")
            with pytest.raises(TypeError, match="PCM bytes"):
                stream.push("audio")  # type: ignore[arg-type]
            stream.push(speech[FRAME : 2 * FRAME])
            await stream.aclose()
            return bytes(fake.connections[0].audio)

    assert run(scenario) == speech[: 2 * FRAME]


# --- TTS ----------------------------------------------------------------------------------------


def test_tts_whole_text_full_exchange() -> None:
    async def scenario() -> tuple[FakeDashScope, bytes, list[TtsChunk]]:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunTts().open(
                tts_option(fake.url, speaker="longwan_v2"), streaming=False
            )
            stream.push_text("Hello there. ")
            stream.push_text("How are you?")
            stream.end_text()
            pcm, chunks = await audio_of(stream)
            return fake, pcm, chunks

    fake, pcm, chunks = run(scenario)
    assert pcm == fake_speech("Hello there. How are you?", 16000)
    assert {c.sample_rate for c in chunks} == {16000}
    (conn,) = fake.connections
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert conn.actions() == ["run-task", "continue-task", "finish-task"]
    run_task, text, _ = conn.instructions
    assert run_task["payload"]["model"] == "cosyvoice-v2"
    assert run_task["payload"]["parameters"]["voice"] == "longwan_v2"
    assert run_task["payload"]["parameters"]["format"] == "pcm"
    assert text["payload"] == {"input": {"text": "Hello there. How are you?"}}
    assert {i["header"]["task_id"] for i in conn.instructions} == {run_task["header"]["task_id"]}


def test_tts_streaming_sends_each_piece_as_it_comes() -> None:
    pieces = ["床前明月光，", "疑是地上霜。", "举头望明月。"]

    async def scenario() -> tuple[FakeDashScope, bytes, list[TtsChunk]]:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunTts().open(tts_option(fake.url, samplerate=24000), streaming=True)
            reader = asyncio.create_task(audio_of(stream))
            for sent, piece in enumerate(pieces, start=2):
                stream.push_text(piece)
                # the next piece only after the fake got this one: each goes out on its own
                await until(lambda n=sent: len(fake.connections[0].instructions) == n)
            stream.end_text()
            pcm, chunks = await reader
            return fake, pcm, chunks

    fake, pcm, chunks = run(scenario)
    assert pcm == b"".join(fake_speech(p, 24000) for p in pieces)
    assert {c.sample_rate for c in chunks} == {24000}
    conn = fake.connections[0]
    assert conn.actions() == [
        "run-task",
        "continue-task",
        "continue-task",
        "continue-task",
        "finish-task",
    ]
    assert [i["payload"]["input"]["text"] for i in conn.instructions[1:4]] == pieces
    assert conn.instructions[0]["payload"]["parameters"]["sample_rate"] == 24000


def test_tts_run_task_failure_is_raised_by_open() -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY) as fake:
            fake.fail_run_task = ("InvalidParameter", "[tts:]Engine return error code: 418")
            with pytest.raises(ProviderError, match=r"InvalidParameter.*418"):
                await AliyunTts().open(tts_option(fake.url, speaker="nobody"), streaming=True)

    run(scenario)


def test_tts_dropped_connection_mid_stream_is_reported() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        async with FakeDashScope(api_key=KEY) as fake:
            fake.drop_after_frames = 1
            stream = await AliyunTts().open(tts_option(fake.url), streaming=False)
            stream.push_text("a sentence long enough")
            stream.end_text()
            got: list[bytes] = []
            with pytest.raises(ProviderError, match="connection lost"):
                async for chunk in stream.chunks():
                    got.append(chunk.pcm)
            await stream.cancel()
            return b"".join(got), bytes(fake.connections[0].audio_sent)

    got, sent = run(scenario)
    assert sent and sent.startswith(got)  # what arrived is the start of what was sent


def test_tts_silent_server_after_end_text_fails() -> None:
    async def scenario() -> None:
        async with FakeDashScope(api_key=KEY) as fake:
            fake.silent_after_finish = True
            provider = AliyunTts()
            provider.reply_timeout = 0.2
            stream = await provider.open(tts_option(fake.url), streaming=True)
            stream.end_text()
            with pytest.raises(ProviderError, match="no audio or task-finished"):
                await audio_of(stream)

    run(scenario)


def test_tts_cancel_sends_the_cancel_directive_and_ends_chunks() -> None:
    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key=KEY) as fake:
            stream = await AliyunTts().open(tts_option(fake.url), streaming=True)
            reader = asyncio.create_task(audio_of(stream))
            stream.push_text("Some words.")
            await until(lambda: bool(fake.connections[0].audio_sent))
            await stream.cancel()
            await stream.cancel()
            await reader  # ends, no error
            stream.push_text("late tokens are ignored")
            await until(lambda: fake.connections[0].actions()[-1] == "finish-task")
            return fake

    conn = run(scenario).connections[0]
    assert conn.actions() == ["run-task", "continue-task", "finish-task"]
    assert conn.instructions[-1]["payload"] == {"input": {"directive": "cancel"}}


def test_bad_text_and_options_are_refused() -> None:
    async def scenario() -> FakeDashScope:
        async with FakeDashScope(api_key=KEY) as fake:
            with pytest.raises(ProviderError, match="samplerate 12345 not supported"):
                await AliyunTts().open(tts_option(fake.url, samplerate=12345), streaming=False)
            stream = await AliyunTts().open(tts_option(fake.url), streaming=False)
            with pytest.raises(TypeError, match="str"):
                stream.push_text(b"bytes")  # type: ignore[arg-type]
            stream.push_text("kept")
            stream.end_text()
            with pytest.raises(RuntimeError, match="after end_text"):
                stream.push_text("too late")
            pcm, _ = await audio_of(stream)
            assert pcm == fake_speech("kept", 16000)
            return fake

    assert len(run(scenario).connections) == 1
