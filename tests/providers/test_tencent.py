"""Tencent Cloud real-time ASR and TTS clients: the signature, and each client against a fake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers import tencent
from activecall.providers.base import ProviderError, Subtitle, Transcript, TtsChunk
from activecall.providers.registry import ProviderRegistry
from activecall.providers.tencent import TencentAsr, TencentAsrStream, TencentTts, TencentTtsStream
from activecall.providers.text import Sentence as Span
from tests.providers.fakes.tencent import FakeTencent, Sentence, fake_speech

APP_ID, SECRET_ID, SECRET_KEY = "1259228442", "AKIDtest", "secret-key"
BOUND = 5.0  # seconds any failure must surface within (a hang fails the test)
FRAME = 640  # 20 ms of 16 kHz PCM16
ENV = ("TENCENT_APPID", "TENCENT_SECRET_ID", "TENCENT_SECRET_KEY")

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


@pytest.fixture(autouse=True)
def no_env_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def asr_option(fake: FakeTencent, **kw: Any) -> TranscriptionOption:
    given = {"app_id": APP_ID, "secret_id": SECRET_ID, "secret_key": SECRET_KEY}
    return TranscriptionOption(**{**given, "endpoint": fake.asr_endpoint, **kw})


def tts_option(fake: FakeTencent, **kw: Any) -> SynthesisOption:
    given = {"app_id": APP_ID, "secret_id": SECRET_ID, "secret_key": SECRET_KEY}
    return SynthesisOption(**{**given, "endpoint": fake.tts_endpoint, **kw})


async def collect(stream: TencentAsrStream) -> list[Transcript]:
    return [t async for t in stream.results()]


async def audio_of(stream: TencentTtsStream) -> tuple[bytes, list[Subtitle], list[TtsChunk]]:
    chunks = [c async for c in stream.chunks()]
    subtitles = [s for c in chunks for s in c.subtitles]
    return b"".join(c.pcm for c in chunks), subtitles, chunks


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


# --- signature ----------------------------------------------------------------------------------

# The worked example of the real-time ASR document (cloud.tencent.com/document/product/1093/48982)
DOC_PARAMS = {
    "engine_model_type": "16k_zh",
    "expired": "1592380492",
    "filter_dirty": "1",
    "filter_modal": "1",
    "filter_punc": "1",
    "needvad": "1",
    "nonce": "1592294092123",
    "secretid": "AKIDoQq1zhZMN8dv0psmvud6OUKuGPO7pu0r",
    "timestamp": "1592294092",
    "voice_format": "1",
    "voice_id": "RnKu9FODFHK5FPpsrN",
}
DOC_SOURCE = (
    "asr.cloud.tencent.com/asr/v2/1259228442?engine_model_type=16k_zh&expired=1592380492"
    "&filter_dirty=1&filter_modal=1&filter_punc=1&needvad=1&nonce=1592294092123"
    "&secretid=AKIDoQq1zhZMN8dv0psmvud6OUKuGPO7pu0r&timestamp=1592294092&voice_format=1"
    "&voice_id=RnKu9FODFHK5FPpsrN"
)
DOC_KEY = "kFpwoX5RYQ2SkqpeHgqmSzHK7h3A2fni"


def test_signature_matches_the_documented_example() -> None:
    assert tencent.sign(DOC_SOURCE, DOC_KEY) == "HepdTRX6u155qIPKNKC+3U0j1N0="
    assert tencent.canonical_query(dict(reversed(DOC_PARAMS.items()))) == DOC_SOURCE.split("?")[1]


def test_asr_url_matches_the_documented_final_url() -> None:
    url = tencent.asr_url(tencent.ASR_ENDPOINT, "1259228442", DOC_PARAMS, DOC_KEY)
    assert url == "wss://" + DOC_SOURCE + "&signature=HepdTRX6u155qIPKNKC%2B3U0j1N0%3D"


def test_tts_url_signs_get_host_path_and_raw_sorted_params() -> None:
    params = {
        "Action": "TextToStreamAudioWS",
        "AppId": "1300000000",
        "SecretId": "AKIDx",
        "Text": "你好，世界! a+b=c",
        "Timestamp": "1700000000",
    }
    url = tencent.tts_url(tencent.TTS_ENDPOINT, params, "k")
    # independently, from the document's description: GET + host + path + ? + sorted raw pairs
    source = "GETtts.cloud.tencent.com/stream_ws?" + "&".join(
        f"{k}={params[k]}" for k in sorted(params)
    )
    expected = base64.b64encode(hmac.new(b"k", source.encode(), hashlib.sha1).digest()).decode()
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["Signature"] == [expected]
    assert query["Text"] == [params["Text"]]
    assert "Text=%E4%BD%A0%E5%A5%BD%EF%BC%8C%E4%B8%96%E7%95%8C%21%20a%2Bb%3Dc" in url
    assert url.startswith("wss://tts.cloud.tencent.com/stream_ws?Action=TextToStreamAudioWS&AppId=")


def test_asr_params_choose_the_engine_and_take_extra() -> None:
    option = TranscriptionOption(language="en-US", extra={"hotword_id": "h1", "needvad": "0"})
    params = tencent.asr_params(option, secret_id="id", now=100, nonce=7, voice_id="v")
    assert params == {
        "secretid": "id",
        "timestamp": "100",
        "expired": str(100 + 86400),
        "nonce": "7",
        "engine_model_type": "16k_en",
        "voice_id": "v",
        "voice_format": "1",
        "needvad": "0",
        "hotword_id": "h1",
    }
    with pytest.raises(ProviderError, match="8 kHz"):
        tencent.asr_params(
            TranscriptionOption(model_type="8k_zh"), secret_id="i", now=1, nonce=1, voice_id="v"
        )
    with pytest.raises(ProviderError, match="extra may not set 'voice_format'"):
        tencent.asr_params(
            TranscriptionOption(extra={"voice_format": "8"}),
            secret_id="i",
            now=1,
            nonce=1,
            voice_id="v",
        )


def test_result_transcript_reads_the_documented_reply() -> None:
    reply = {
        "code": 0,
        "message": "success",
        "voice_id": "RnKu9FODFHK5FPpsrN",
        "message_id": "RnKu9FODFHK5FPpsrN_33_0",
        "result": {
            "slice_type": 2,
            "index": 0,
            "start_time": 0,
            "end_time": 2840,
            "voice_text_str": "实时语音识别",
            "word_size": 0,
            "word_list": [],
        },
    }
    assert tencent.result_transcript(reply) == Transcript("实时语音识别", True, 0, 0, 2840)
    reply["result"]["slice_type"] = 1
    assert tencent.result_transcript(reply) == Transcript("实时语音识别", False, 0, 0, 2840)
    assert tencent.result_transcript({"code": 0, "final": 1}) is None


def test_tts_requests_are_exact_slices_within_the_limit() -> None:
    text = "One two three. Four five six seven eight. Nine."
    spans = [
        Span("One two three.", 0, 14),
        Span("Four five six seven eight.", 15, 41),
        Span("Nine.", 42, 47),
    ]
    packed = tencent.tts_requests(spans, text, 30)
    assert [(r.text, r.begin) for r in packed] == [
        ("One two three.", 0),
        ("Four five six seven eight.", 15),
        ("Nine.", 42),
    ]
    assert [r.text for r in tencent.tts_requests(spans, text, 100)] == [text]
    cut = tencent.tts_requests(spans[1:2], text, 12)
    assert [r.text for r in cut] == ["Four five", "six seven", "eight."]
    assert all(text[r.begin : r.end] == r.text for r in cut)


def test_registry_builds_both_providers() -> None:
    registry = ProviderRegistry()
    assert isinstance(registry.get("asr", "tencent"), TencentAsr)
    assert isinstance(registry.get("tts", "tencent"), TencentTts)


# --- ASR ----------------------------------------------------------------------------------------


def test_asr_full_exchange(speech: bytes) -> None:
    async def scenario() -> tuple[FakeTencent, list[Transcript]]:
        async with FakeTencent(sentences=SENTENCES) as fake:
            stream = await TencentAsr().open(asr_option(fake, model_type="16k_zh_large"))
            reader = asyncio.create_task(collect(stream))
            for i in range(0, len(speech), FRAME):
                stream.push(speech[i : i + FRAME])
                await asyncio.sleep(0)
            await stream.aclose()
            return fake, await reader

    fake, transcripts = run(scenario)
    assert transcripts == [
        Transcript("hello", final=False, index=0, start_ms=0, end_ms=160),
        Transcript("hello", final=False, index=0, start_ms=0, end_ms=320),
        Transcript("hello there world", final=True, index=0, start_ms=0, end_ms=600),
        Transcript("second", final=False, index=1, start_ms=800, end_ms=1000),
        Transcript("second", final=False, index=1, start_ms=800, end_ms=1160),
        Transcript("second sentence here", final=True, index=1, start_ms=800, end_ms=1500),
    ]
    (conn,) = fake.asr
    assert conn.signature_ok and conn.app_id == APP_ID
    query = conn.query
    assert query["secretid"] == SECRET_ID
    assert query["engine_model_type"] == "16k_zh_large"
    assert (query["voice_format"], query["needvad"]) == ("1", "1")
    assert int(query["expired"]) - int(query["timestamp"]) == 86400
    assert 0 < int(query["nonce"]) < 10**10 and query["voice_id"]
    assert bytes(conn.audio) == speech  # every byte, in order
    assert set(conn.frame_sizes) == {1280}  # 40 ms messages, as the service recommends
    assert conn.texts == [{"type": "end"}]


def test_asr_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in zip(ENV, ("1300000001", "AKIDenv", "env-key"), strict=True):
        monkeypatch.setenv(name, value)

    async def scenario() -> FakeTencent:
        async with FakeTencent(
            app_id="1300000001", secret_id="AKIDenv", secret_key="env-key"
        ) as fake:
            stream = await TencentAsr().open(TranscriptionOption(endpoint=fake.asr_endpoint))
            await stream.aclose()
            return fake

    (conn,) = run(scenario).asr
    assert conn.signature_ok and conn.app_id == "1300000001"


@pytest.mark.parametrize("missing", ENV)
def test_missing_credential_fails_before_connecting(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    for name, value in zip(ENV, (APP_ID, SECRET_ID, SECRET_KEY), strict=True):
        if name != missing:
            monkeypatch.setenv(name, value)

    async def scenario() -> FakeTencent:
        async with FakeTencent() as fake:
            with pytest.raises(ProviderError, match=missing):
                await TencentAsr().open(TranscriptionOption(endpoint=fake.asr_endpoint))
            with pytest.raises(ProviderError, match=missing):
                await TencentTts().open(SynthesisOption(endpoint=fake.tts_endpoint), streaming=True)
            return fake

    fake = run(scenario)
    assert fake.asr == [] and fake.tts == []


def test_asr_refused_signature_is_a_provider_error_with_the_code() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            with pytest.raises(ProviderError, match="4002") as info:
                await TencentAsr().open(asr_option(fake, secret_key="wrong-key"))
            assert info.value.code == 4002 and "wrong-key" not in str(info.value)
            assert len(fake.asr) == 1 and not fake.asr[0].signature_ok

    run(scenario)


def test_asr_error_code_mid_stream_ends_results(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeTencent(sentences=SENTENCES) as fake:
            fake.asr_error_after_bytes = 1280 * 10
            stream = await TencentAsr().open(asr_option(fake))
            stream.push(speech)
            with pytest.raises(ProviderError, match="4008") as info:
                await collect(stream)
            assert info.value.code == 4008
            await stream.aclose()

    run(scenario)


def test_asr_dropped_connection_mid_stream_is_reported(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeTencent(sentences=SENTENCES) as fake:
            fake.asr_drop_after_bytes = 1280 * 5
            stream = await TencentAsr().open(asr_option(fake))
            stream.push(speech)
            with pytest.raises(ProviderError, match="connection lost"):
                await collect(stream)
            await stream.aclose()
            assert len(fake.asr[0].audio) == 1280 * 5

    run(scenario)


def test_asr_silent_server_fails_open_and_close() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            provider = TencentAsr()
            provider.reply_timeout = 0.2
            fake.asr_silent = True
            with pytest.raises(ProviderError, match="no handshake reply"):
                await provider.open(asr_option(fake))
            fake.asr_silent, fake.asr_silent_after_end = False, True
            stream = await provider.open(asr_option(fake))
            await stream.aclose()
            with pytest.raises(ProviderError, match="no final result"):
                await collect(stream)

    run(scenario)


def test_asr_end_utterance_flushes_and_aclose_is_idempotent(speech: bytes) -> None:
    async def scenario() -> FakeTencent:
        async with FakeTencent() as fake:
            stream = await TencentAsr().open(asr_option(fake))
            stream.push(speech[:FRAME])
            stream.end_utterance()
            await until(lambda: len(fake.asr[0].audio) == FRAME)
            await asyncio.gather(stream.aclose(), stream.aclose())
            await stream.aclose()
            stream.push(speech[:FRAME])  # after close: ignored
            return fake

    conn = run(scenario).asr[0]
    assert conn.frame_sizes == [FRAME] and conn.texts == [{"type": "end"}]


def test_bad_audio_and_options_are_refused(speech: bytes) -> None:
    async def scenario() -> bytes:
        async with FakeTencent() as fake:
            for bad, message in (
                (asr_option(fake, app_id="my-app"), "numeric AppID"),
                (asr_option(fake, endpoint="http://127.0.0.1:9/asr/v2"), "ws://"),
                (asr_option(fake, extra={"signature": "x"}), "extra may not set"),
            ):
                with pytest.raises(ProviderError, match=message):
                    await TencentAsr().open(bad)
            assert fake.asr == []
            stream = await TencentAsr().open(asr_option(fake))
            stream.push(speech[:FRAME])
            with pytest.raises(ValueError, match="whole samples"):
                stream.push(b"\x01")
            with pytest.raises(TypeError, match="PCM bytes"):
                stream.push([1, 2])  # type: ignore[arg-type]
            stream.push(speech[FRAME : 2 * FRAME])
            await stream.aclose()
            return bytes(fake.asr[0].audio)

    assert run(scenario) == speech[: 2 * FRAME]


# --- TTS ----------------------------------------------------------------------------------------


def check_subtitles(subtitles: list[Subtitle], text: str) -> None:
    """Each subtitle names its characters in ``text``, in order, 10 ms each (the fake's pace)."""
    assert [s.text for s in subtitles] == [ch for ch in text if not ch.isspace()]
    for sub in subtitles:
        assert text[sub.begin_index : sub.end_index] == sub.text
        assert sub.end_ms - sub.begin_ms == 10
    assert [s.begin_ms for s in subtitles] == sorted(s.begin_ms for s in subtitles)


def test_tts_whole_text_full_exchange() -> None:
    text = "Hello there. How are you?"

    async def scenario() -> tuple[FakeTencent, bytes, list[Subtitle], list[TtsChunk]]:
        async with FakeTencent() as fake:
            option = tts_option(
                fake, speaker="101004", speed=1.5, volume=3, extra={"EmotionCategory": "happy"}
            )
            stream = await TencentTts().open(option, streaming=False)
            stream.push_text("Hello there. ")
            stream.push_text("How are you?")
            stream.end_text()
            return fake, *await audio_of(stream)

    fake, pcm, subtitles, chunks = run(scenario)
    assert pcm == fake_speech(text, 16000)
    assert {c.sample_rate for c in chunks} == {16000}
    check_subtitles(subtitles, text)
    assert subtitles[0].begin_ms == 0 and subtitles[-1].end_ms == len(text) * 10
    (conn,) = fake.tts
    assert conn.signature_ok
    assert conn.query == {
        "Action": "TextToStreamAudioWS",
        "AppId": APP_ID,
        "SecretId": SECRET_ID,
        "Timestamp": conn.query["Timestamp"],
        "Expired": str(int(conn.query["Timestamp"]) + 86400),
        "SessionId": conn.query["SessionId"],
        "Text": text,
        "VoiceType": "101004",
        "Codec": "pcm",
        "SampleRate": "16000",
        "EnableSubtitle": "true",
        "Speed": "1.5",
        "Volume": "3",
        "EmotionCategory": "happy",
        "Signature": conn.query["Signature"],
    }


def test_tts_streaming_speaks_each_sentence_in_order() -> None:
    pieces = ["你好，", "世界。今天", "天气很好。", "Bye now"]
    text = "".join(pieces)

    async def scenario() -> tuple[FakeTencent, bytes, list[Subtitle], list[TtsChunk]]:
        async with FakeTencent() as fake:
            stream = await TencentTts().open(tts_option(fake, samplerate=24000), streaming=True)
            reader = asyncio.create_task(audio_of(stream))
            for piece in pieces:
                stream.push_text(piece)
            # two sentences requested before end_text (or the reader failed: see below)
            await until(lambda: len(fake.tts) == 2 or reader.done())
            stream.end_text()
            return fake, *await reader

    fake, pcm, subtitles, chunks = run(scenario)
    sentences = ["你好，世界。", "今天天气很好。", "Bye now"]
    assert [c.query["Text"] for c in fake.tts] == sentences
    assert all(c.signature_ok and c.query["SampleRate"] == "24000" for c in fake.tts)
    assert pcm == b"".join(fake_speech(s, 24000) for s in sentences)
    assert {c.sample_rate for c in chunks} == {24000}
    check_subtitles(subtitles, text)
    # the second request's times start where the first request's audio ended
    assert subtitles[len("你好，世界。")].begin_ms == len("你好，世界。") * 10


def test_tts_error_code_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            fake.tts_error = (10004, "VoiceType 非法")
            stream = await TencentTts().open(tts_option(fake), streaming=False)
            stream.push_text("hi")
            stream.end_text()
            with pytest.raises(ProviderError, match="10004") as info:
                await audio_of(stream)
            assert info.value.code == 10004

    run(scenario)


def test_tts_refused_signature_is_a_provider_error() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            stream = await TencentTts().open(tts_option(fake, secret_key="wrong"), streaming=True)
            stream.push_text("hi. ")
            stream.end_text()
            with pytest.raises(ProviderError, match="签名鉴权失败"):
                await audio_of(stream)
            assert not fake.tts[0].signature_ok

    run(scenario)


def test_tts_dropped_connection_mid_stream_is_reported() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            fake.tts_drop_after_frames = 1
            stream = await TencentTts().open(tts_option(fake), streaming=False)
            stream.push_text("a sentence long enough")
            stream.end_text()
            with pytest.raises(ProviderError, match="connection lost"):
                await audio_of(stream)

    run(scenario)


def test_tts_silent_server_fails_within_the_timeout() -> None:
    async def scenario() -> None:
        async with FakeTencent() as fake:
            fake.tts_silent = True
            provider = TencentTts()
            provider.reply_timeout = 0.2
            stream = await provider.open(tts_option(fake), streaming=False)
            stream.push_text("anyone there?")
            stream.end_text()
            with pytest.raises(ProviderError, match="no reply"):
                await audio_of(stream)

    run(scenario)


def test_tts_cancel_drops_the_request_in_flight() -> None:
    async def scenario() -> tuple[FakeTencent, bytes]:
        async with FakeTencent() as fake:
            fake.tts_pause_after_frames = 1
            stream = await TencentTts().open(tts_option(fake), streaming=True)
            got: list[TtsChunk] = []

            async def read() -> None:
                async for chunk in stream.chunks():
                    got.append(chunk)

            reader = asyncio.create_task(read())
            stream.push_text("First sentence here. Second one")
            await until(lambda: any(c.pcm for c in got) or reader.done())
            assert not reader.done(), reader.exception()
            await stream.cancel()
            await stream.cancel()
            await reader  # ends without an error
            stream.push_text("late tokens are ignored. ")
            await until(lambda: fake.tts[0].closed_early)
            return fake, b"".join(c.pcm for c in got)

    fake, pcm = run(scenario)
    assert len(fake.tts) == 1 and fake.tts[0].query["Text"] == "First sentence here."
    assert pcm == bytes(fake.tts[0].audio_sent)


def test_bad_text_and_options_are_refused() -> None:
    async def scenario() -> FakeTencent:
        async with FakeTencent() as fake:
            for bad, message in (
                (tts_option(fake, samplerate=44100), "samplerate 44100"),
                (tts_option(fake, speaker="zh-female"), "numeric VoiceType"),
                (tts_option(fake, extra={"Text": "x"}), "extra may not set 'Text'"),
            ):
                with pytest.raises(ProviderError, match=message):
                    await TencentTts().open(bad, streaming=False)
            stream = await TencentTts().open(tts_option(fake), streaming=False)
            with pytest.raises(TypeError, match="str"):
                stream.push_text(None)  # type: ignore[arg-type]
            stream.push_text("kept")
            stream.end_text()
            stream.end_text()
            with pytest.raises(RuntimeError, match="after end_text"):
                stream.push_text("too late")
            pcm, _, _ = await audio_of(stream)
            assert pcm == fake_speech("kept", 16000)
            return fake

    assert [c.query["Text"] for c in run(scenario).tts] == ["kept"]
