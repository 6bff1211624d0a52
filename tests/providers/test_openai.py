"""OpenAI chat (LLM), audio/speech (TTS) and Realtime transcription (ASR) against a local fake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest

from activecall._native.resample import Resampler
from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers._http import SseDecoder, endpoint_url, error_text, split_long
from activecall.providers.base import (
    AsrStream,
    ChatDelta,
    LlmOption,
    ProviderError,
    Transcript,
    TtsStream,
)
from activecall.providers.openai import OpenAiAsr, OpenAiLlm, OpenAiTts, chat_delta
from activecall.providers.registry import ProviderRegistry
from tests.providers.fakes.openai import FakeOpenAi, fake_speech

KEY = "sk-test"
BOUND = 5.0  # seconds any failure must surface within (a hang fails the test)
FRAME = 640  # 20 ms of 16 kHz PCM16
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await scenario()

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def speech(speech_16k: np.ndarray) -> bytes:
    """Two seconds of real speech, PCM16LE 16 kHz."""
    return speech_16k[16000 : 16000 + 32000].astype("<i2").tobytes()


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


def resampled(pcm: bytes) -> bytes:
    """What one utterance becomes at 24 kHz (our resampler, flushed at the commit)."""
    resampler = Resampler(16000, 24000)
    return resampler.process(pcm).tobytes() + resampler.flush().tobytes()


# --- pure pieces ------------------------------------------------------------------------------


def test_sse_decoder_joins_data_lines_and_skips_comments() -> None:
    decoder = SseDecoder()
    lines = [": keep-alive", 'data: {"a":', "data: 1}", "", "event: x", "data:[DONE]", ""]
    assert [d for d in map(decoder.feed, lines) if d is not None] == ['{"a":\n1}', "[DONE]"]
    decoder.feed("data: tail")
    assert decoder.flush() == "tail"
    assert decoder.flush() is None


def test_chat_delta_reads_content_tool_calls_and_finish() -> None:
    chunk = {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "content": "Hi",
                    "tool_calls": [{"index": 1, "id": "c", "function": {"name": "f"}}],
                },
                "finish_reason": None,
            }
        ]
    }
    delta = chat_delta(json.dumps(chunk))
    assert delta is not None
    assert delta.content == "Hi"
    assert [(c.index, c.id, c.name, c.arguments) for c in delta.tool_calls] == [(1, "c", "f", "")]
    assert chat_delta('{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}') is None
    assert chat_delta('{"choices": [], "usage": {"total_tokens": 3}}') is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"id": "x"}', "without choices"),
        ('{"choices": [{"index": 0, "delta": {"content": 5}}]}', "malformed delta"),
        ('{"choices": [{"index": 0, "delta": {"tool_calls": [7]}}]}', "malformed tool call"),
        ('{"error": {"message": "overloaded", "type": "server_error"}}', "overloaded"),
    ],
)
def test_a_bad_chunk_is_a_clear_error(data: str, message: str) -> None:
    with pytest.raises(ProviderError, match=message):
        chat_delta(data)


def test_error_bodies_give_the_api_message() -> None:
    assert error_text(b'{"error": {"message": "Bad key", "type": "x"}}') == "Bad key"
    assert error_text(b'{"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}') == (
        "Invalid credentials."
    )
    assert error_text(b"<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"
    assert error_text(b"") == "no details"


def test_endpoint_urls() -> None:
    assert endpoint_url("p", "https://api.openai.com/v1/", "/audio/speech") == (
        "https://api.openai.com/v1/audio/speech"
    )
    assert endpoint_url("p", "https://h/v1", "/realtime", websocket=True, params={"a": "b"}) == (
        "wss://h/v1/realtime?a=b"
    )
    assert endpoint_url("p", "ws://h/v1/realtime?x=1", "/realtime", websocket=True) == (
        "ws://h/v1/realtime?x=1"
    )
    with pytest.raises(ProviderError, match="http"):
        endpoint_url("p", "ftp://h", "/x")
    with pytest.raises(ProviderError, match="URL"):
        endpoint_url("p", "api.openai.com", "/x")


def test_split_long_cuts_after_sentences_then_spaces_then_anywhere() -> None:
    assert split_long("One two. Three four.", 12) == ["One two.", "Three four."]
    assert split_long("aaa bbb ccc", 8) == ["aaa bbb", "ccc"]
    assert split_long("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_long("你好。再见。", 4) == ["你好。", "再见。"]
    assert split_long("   ", 4) == []


def test_registry_builds_the_three_providers() -> None:
    registry = ProviderRegistry()
    assert isinstance(registry.get("llm", "openai"), OpenAiLlm)
    assert isinstance(registry.get("tts", "openai"), OpenAiTts)
    assert isinstance(registry.get("asr", "openai"), OpenAiAsr)


# --- LLM --------------------------------------------------------------------------------------

TOOL_DELTAS: list[tuple[dict[str, Any], str | None]] = [
    ({"role": "assistant", "content": ""}, None),
    ({"content": "Let me "}, None),
    ({"content": "check."}, None),
    (
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        None,
    ),
    ({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}, None),
    ({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}, None),
    ({}, "tool_calls"),
]


async def chat_all(llm: OpenAiLlm, option: LlmOption, **kw: Any) -> list[ChatDelta]:
    try:
        return [d async for d in llm.chat(MESSAGES, option, **kw)]
    finally:
        await llm.aclose()


def test_chat_streams_content_and_a_tool_call_from_fragments() -> None:
    async def scenario() -> tuple[FakeOpenAi, list[ChatDelta]]:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.chat_deltas = TOOL_DELTAS
            option = LlmOption(
                model="gpt-test",
                base_url=fake.url,
                api_key=KEY,
                temperature=0.2,
                max_tokens=64,
                extra={"tool_choice": "auto"},
            )
            return fake, await chat_all(OpenAiLlm(), option, tools=TOOLS)

    fake, deltas = run(scenario)
    assert "".join(d.content for d in deltas) == "Let me check."
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for piece in delta.tool_calls:
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += piece.id or ""
            call["name"] += piece.name or ""
            call["arguments"] += piece.arguments
    assert calls == {0: {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert [d.finish_reason for d in deltas] == [None] * (len(deltas) - 1) + ["tool_calls"]
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "tool_choice": "auto",
        "model": "gpt-test",
        "messages": MESSAGES,
        "stream": True,
        "temperature": 0.2,
        "max_tokens": 64,
        "tools": TOOLS,
    }


def test_chat_takes_key_url_and_model_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[FakeOpenAi, list[ChatDelta]]:
        async with FakeOpenAi(api_key="sk-env") as fake:
            monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
            monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
            monkeypatch.setenv("OPENAI_MODEL", "env-model")
            fake.chat_deltas = [({"content": "ok"}, "stop")]
            return fake, await chat_all(OpenAiLlm(), LlmOption())

    fake, deltas = run(scenario)
    assert deltas == [ChatDelta(content="ok", finish_reason="stop")]
    assert fake.requests[0].body["model"] == "env-model"
    assert fake.requests[0].headers["Authorization"] == "Bearer sk-env"


def test_chat_refused_key_is_a_provider_error_with_status_and_message() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            await chat_all(OpenAiLlm(), LlmOption(base_url=fake.url, api_key="sk-wrong"))

    with pytest.raises(ProviderError, match=r"HTTP 401.*Incorrect API key provided") as caught:
        run(scenario)
    assert caught.value.code == 401
    assert caught.value.provider == "openai"


def test_chat_connection_dropped_mid_stream_is_a_provider_error() -> None:
    got: list[ChatDelta] = []

    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.chat_deltas = TOOL_DELTAS
            fake.drop_after = 3
            llm = OpenAiLlm()
            try:
                async for delta in llm.chat(MESSAGES, LlmOption(base_url=fake.url, api_key=KEY)):
                    got.append(delta)
            finally:
                await llm.aclose()

    with pytest.raises(ProviderError, match="failed") as caught:
        run(scenario)
    assert caught.value.code is None
    assert "".join(d.content for d in got) == "Let me check."  # what came before the cut


def test_chat_server_that_stops_answering_times_out() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.chat_deltas = TOOL_DELTAS
            fake.stall_after = 2
            llm = OpenAiLlm()
            llm.timeout = httpx.Timeout(0.3, connect=2.0)
            await chat_all(llm, LlmOption(base_url=fake.url, api_key=KEY))

    with pytest.raises(ProviderError, match="did not answer in time"):
        run(scenario)


def test_chat_without_a_key_fails_before_connecting() -> None:
    async def scenario() -> FakeOpenAi:
        async with FakeOpenAi() as fake:
            with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
                await chat_all(OpenAiLlm(), LlmOption(base_url=fake.url))
            return fake

    assert run(scenario).requests == []


def test_chat_without_messages_is_refused() -> None:
    async def scenario() -> None:
        llm = OpenAiLlm()
        with pytest.raises(ValueError, match="at least one message"):
            await anext(llm.chat([], LlmOption(api_key=KEY)))

    run(scenario)


# --- TTS --------------------------------------------------------------------------------------


async def speak(tts: OpenAiTts, stream: TtsStream) -> bytes:
    try:
        chunks = [c async for c in stream.chunks()]
    finally:
        await tts.aclose()
    assert all(c.sample_rate == 24000 and len(c.pcm) % 2 == 0 for c in chunks)
    return b"".join(c.pcm for c in chunks)


def tts_option(url: str, **kw: Any) -> SynthesisOption:
    return SynthesisOption(provider="openai", secret_key=KEY, endpoint=url, **kw)


def test_tts_whole_text_is_one_request_and_streams_every_byte() -> None:
    async def scenario() -> tuple[FakeOpenAi, bytes]:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            option = tts_option(
                fake.url, speaker="nova", speed=1.25, extra={"instructions": "calm"}
            )
            stream = await tts.open(option, streaming=False)
            stream.push_text("Hello there. ")
            stream.push_text("How are you?")
            stream.end_text()
            return fake, await speak(tts, stream)

    fake, audio = run(scenario)
    text = "Hello there. How are you?"
    assert audio == fake_speech(text)
    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/audio/speech")
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "instructions": "calm",
        "model": "gpt-4o-mini-tts",
        "voice": "nova",
        "response_format": "pcm",
        "speed": 1.25,
        "input": text,
    }


def test_tts_streaming_requests_each_sentence_as_it_completes() -> None:
    async def scenario() -> tuple[FakeOpenAi, list[str], bytes]:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url, model="tts-1"), streaming=True)
            stream.push_text("Hello there. How")
            await until(lambda: len(fake.requests) == 1)  # before the rest of the text exists
            first = [r.body["input"] for r in fake.requests]
            stream.push_text(" are you? Fine")
            stream.end_text()
            return fake, first, await speak(tts, stream)

    fake, first, audio = run(scenario)
    sentences = ["Hello there.", "How are you?", "Fine"]
    assert first == sentences[:1]
    assert [r.body["input"] for r in fake.requests] == sentences
    assert {r.body["model"] for r in fake.requests} == {"tts-1"}
    assert {r.body["voice"] for r in fake.requests} == {"alloy"}
    assert audio == b"".join(fake_speech(s) for s in sentences)


def test_tts_text_over_the_api_limit_is_split_and_loses_nothing() -> None:
    words = [f"word{i}" for i in range(1200)]  # ~8.5k characters, no sentence end

    async def scenario() -> tuple[FakeOpenAi, bytes]:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url), streaming=False)
            stream.push_text(" ".join(words))
            stream.end_text()
            return fake, await speak(tts, stream)

    fake, audio = run(scenario)
    inputs = [r.body["input"] for r in fake.requests]
    assert len(inputs) == 3 and all(len(i) <= 4096 for i in inputs)
    assert " ".join(inputs).split() == words
    assert audio == b"".join(fake_speech(i) for i in inputs)


def test_tts_refused_option_is_a_provider_error_with_the_api_message() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url, speed=9.0), streaming=False)
            stream.push_text("Hi.")
            stream.end_text()
            await speak(tts, stream)

    with pytest.raises(ProviderError, match=r"HTTP 400.*not a valid speed") as caught:
        run(scenario)
    assert caught.value.code == 400


def test_tts_refused_key_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            option = SynthesisOption(secret_key="sk-nope", endpoint=fake.url)
            stream = await tts.open(option, streaming=True)
            stream.push_text("Hi there.")
            stream.end_text()
            await speak(tts, stream)

    with pytest.raises(ProviderError, match=r"401.*Incorrect API key") as caught:
        run(scenario)
    assert caught.value.code == 401


def test_tts_connection_dropped_mid_stream_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.drop_after = 2
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url), streaming=False)
            stream.push_text("A sentence long enough to need several chunks of audio.")
            stream.end_text()
            await speak(tts, stream)

    with pytest.raises(ProviderError, match="failed"):
        run(scenario)


def test_tts_server_that_stops_answering_times_out() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.stall_after = 1
            tts = OpenAiTts()
            tts.timeout = httpx.Timeout(0.3, connect=2.0)
            stream = await tts.open(tts_option(fake.url), streaming=False)
            stream.push_text("A sentence long enough to need several chunks of audio.")
            stream.end_text()
            await speak(tts, stream)

    with pytest.raises(ProviderError, match="did not answer in time"):
        run(scenario)


def test_tts_cancel_stops_at_once_and_is_idempotent() -> None:
    async def scenario() -> tuple[int, bytes]:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.stall_after = 1  # one piece of audio, then the server holds the request open
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url), streaming=True)
            stream.push_text("First sentence here. Second")
            chunks = stream.chunks()
            first = await anext(chunks)
            await stream.cancel()
            await stream.cancel()
            stream.push_text(" sentence. Third.")  # late LLM tokens are ignored
            stream.end_text()
            rest = [c async for c in chunks]
            await tts.aclose()
            return len(fake.requests), first.pcm + b"".join(c.pcm for c in rest)

    requests, audio = run(scenario)
    assert requests == 1
    assert audio == fake_speech("First sentence here.")[:998]  # 999-byte piece, whole samples


def test_tts_bad_text_is_refused() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            tts = OpenAiTts()
            stream = await tts.open(tts_option(fake.url), streaming=True)
            with pytest.raises(TypeError, match="str"):
                stream.push_text(b"bytes")  # type: ignore[arg-type]
            stream.end_text()
            stream.end_text()  # idempotent
            with pytest.raises(ValueError, match="after end_text"):
                stream.push_text("more")
            assert [c async for c in stream.chunks()] == []
            await tts.aclose()

    run(scenario)


def test_tts_without_a_key_fails_at_open() -> None:
    async def scenario() -> None:
        with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
            await OpenAiTts().open(SynthesisOption(), streaming=False)

    run(scenario)


# --- ASR --------------------------------------------------------------------------------------


def asr_option(url: str, **kw: Any) -> TranscriptionOption:
    return TranscriptionOption(provider="openai", secret_key=KEY, endpoint=url, **kw)


def push_frames(stream: AsrStream, pcm: bytes, size: int = FRAME) -> None:
    for i in range(0, len(pcm), size):
        stream.push(pcm[i : i + size])


async def finals(stream: AsrStream, count: int) -> list[Transcript]:
    out: list[Transcript] = []
    async for transcript in stream.results():
        out.append(transcript)
        if sum(t.final for t in out) == count:
            break
    return out


def test_asr_full_exchange(speech: bytes) -> None:
    first, second = speech[:16000], speech[16000:28800]  # 500 ms and 400 ms

    async def scenario() -> tuple[FakeOpenAi, list[Transcript]]:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.transcripts = ["hello world", "good bye now"]
            option = asr_option(fake.url, language="en-US", model_type="gpt-4o-mini-transcribe")
            stream = await OpenAiAsr().open(option)
            push_frames(stream, first, 641)  # odd pieces: samples must stay whole
            stream.end_utterance()
            push_frames(stream, second)
            stream.end_utterance()
            got = await finals(stream, 2)
            await stream.aclose()
            return fake, got

    fake, transcripts = run(scenario)
    assert transcripts == [
        Transcript("hello", False, 0, 0, 500),
        Transcript("hello world", False, 0, 0, 500),
        Transcript("hello world", True, 0, 0, 500),
        Transcript("good", False, 1, 500, 900),
        Transcript("good bye", False, 1, 500, 900),
        Transcript("good bye now", False, 1, 500, 900),
        Transcript("good bye now", True, 1, 500, 900),
    ]
    (conn,) = fake.realtime
    assert conn.query == {"intent": "transcription"}
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert "OpenAI-Beta" not in conn.headers  # the GA protocol
    assert conn.events[0] == {
        "type": "session.update",
        "session": {
            "type": "transcription",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                    "turn_detection": None,
                }
            },
        },
    }
    assert conn.types() == [
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]
    assert conn.commits == [resampled(first), resampled(second)]  # 24 kHz, every sample


def test_asr_too_short_utterance_is_cleared_not_committed(speech: bytes) -> None:
    async def scenario() -> tuple[FakeOpenAi, list[Transcript]]:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.transcripts = ["only this"]
            stream = await OpenAiAsr().open(asr_option(fake.url))
            push_frames(stream, speech[:1600])  # 50 ms: a click, not speech
            stream.end_utterance()
            stream.end_utterance()  # nothing since: nothing to send
            push_frames(stream, speech[1600:17600])
            stream.end_utterance()
            got = await finals(stream, 1)
            await stream.aclose()
            return fake, got

    fake, transcripts = run(scenario)
    assert transcripts[-1] == Transcript("only this", True, 0, 50, 550)
    assert fake.realtime[0].types() == [
        "session.update",
        "input_audio_buffer.append",
        "input_audio_buffer.clear",
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
    ]


def test_asr_refused_key_fails_open_with_the_error_event() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            await OpenAiAsr().open(TranscriptionOption(secret_key="sk-bad", endpoint=fake.url))

    with pytest.raises(ProviderError, match=r"Incorrect API key.*invalid_api_key") as caught:
        run(scenario)
    assert caught.value.code == 401


def test_asr_refused_upgrade_is_a_provider_error_with_the_status() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.refuse_upgrade = True
            await OpenAiAsr().open(TranscriptionOption(secret_key="sk-bad", endpoint=fake.url))

    with pytest.raises(ProviderError, match=r"HTTP 401.*Incorrect API key") as caught:
        run(scenario)
    assert caught.value.code == 401


def test_asr_connection_dropped_mid_stream_is_reported(speech: bytes) -> None:
    got: list[Transcript] = []

    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.transcripts = ["first one", "never heard"]
            fake.drop_after = 1
            stream = await OpenAiAsr().open(asr_option(fake.url))
            push_frames(stream, speech[:16000])
            stream.end_utterance()
            push_frames(stream, speech[16000:32000])
            stream.end_utterance()
            try:
                async for transcript in stream.results():
                    got.append(transcript)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match="connection lost"):
        run(scenario)
    assert got[-1] == Transcript("first one", True, 0, 0, 500)


def test_asr_failed_transcription_is_a_provider_error(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.fail_transcription = True
            stream = await OpenAiAsr().open(asr_option(fake.url))
            push_frames(stream, speech[:16000])
            stream.end_utterance()
            try:
                await finals(stream, 1)
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match=r"could not be transcribed.*audio_unintelligible"):
        run(scenario)


def test_asr_server_that_stops_answering_fails_results() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            fake.stall_after = 0
            asr = OpenAiAsr()
            asr.ping_interval, asr.ping_timeout, asr.close_timeout = 0.1, 0.2, 0.2
            stream = await asr.open(asr_option(fake.url))
            try:
                async for _ in stream.results():
                    pass
            finally:
                await stream.aclose()

    with pytest.raises(ProviderError, match=r"1011.*ping timeout") as caught:
        run(scenario)
    assert caught.value.code == 1011


def test_asr_aclose_ends_results_and_is_idempotent(speech: bytes) -> None:
    async def scenario() -> tuple[FakeOpenAi, list[Transcript]]:
        async with FakeOpenAi(api_key=KEY) as fake:
            stream = await OpenAiAsr().open(asr_option(fake.url))
            reader = asyncio.create_task(finals(stream, 1))
            push_frames(stream, speech[:3200])
            await until(lambda: len(fake.realtime[0].events) > 1)
            await stream.aclose()
            await stream.aclose()
            stream.push(speech[:3200])  # after close: dropped, no error
            stream.end_utterance()
            return fake, await reader

    fake, transcripts = run(scenario)
    assert transcripts == []
    assert fake.realtime[0].types() == ["session.update", "input_audio_buffer.append"]


def test_asr_bad_input_is_refused() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            stream = await OpenAiAsr().open(asr_option(fake.url))
            with pytest.raises(TypeError, match="PCM bytes"):
                stream.push("audio")  # type: ignore[arg-type]
            await stream.aclose()
        with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
            await OpenAiAsr().open(TranscriptionOption(endpoint=fake.url))
        with pytest.raises(ProviderError, match="endpoint must be"):
            await OpenAiAsr().open(TranscriptionOption(secret_key=KEY, endpoint="ftp://x"))

    run(scenario)


def test_asr_unreachable_endpoint_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeOpenAi(api_key=KEY) as fake:
            url = fake.url
        await OpenAiAsr().open(asr_option(url))  # the fake is gone: connection refused

    with pytest.raises(ProviderError, match="cannot connect"):
        run(scenario)
