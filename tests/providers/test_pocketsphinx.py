"""PocketSphinx ASR: the frame codec, the recogniser core on a real decoder, and the provider
with its real recognition process (plus the piper → resampler → pocketsphinx proof test)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from activecall._native.resample import Resampler
from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers.base import ProviderError, Transcript
from activecall.providers.piper import PiperTts
from activecall.providers.pocketsphinx import (
    DecoderPool,
    Frame,
    FrameReader,
    Kind,
    PocketsphinxAsr,
    PocketsphinxStream,
    Recognizer,
    en_us_decoders,
    encode_frame,
    serve,
)

T = TypeVar("T")
LABELS = Path(__file__).resolve().parent.parent / "data" / "speech_60s_16k.json"
FRAME = 640  # 20 ms of PCM16 at 16 kHz
GUARD = 60.0  # seconds: only to turn a hang into a failure, never a timing assertion


@pytest.fixture(scope="module")
def sentences(speech_16k: np.ndarray) -> list[bytes]:
    """The speech file's sentences (labelled spans in ms) with 300 ms of context each side."""
    spans = json.loads(LABELS.read_text())["sentences"]
    return [speech_16k[(a - 300) * 16 : (b + 300) * 16].tobytes() for a, b in spans]


@pytest.fixture(scope="module")
def run() -> Iterator[Callable[[Awaitable[T]], T]]:
    """One event loop for the module, so the provider's process outlives single tests."""
    with asyncio.Runner() as runner:
        yield runner.run  # type: ignore[misc]


@pytest.fixture(scope="module")
def asr(run: Callable[[Awaitable[Any]], Any]) -> Iterator[PocketsphinxAsr]:
    provider = PocketsphinxAsr()
    yield provider
    run(provider.aclose())


@pytest.fixture(scope="module")
def pool() -> DecoderPool:
    """The decoders the recognition process uses (one language model shared)."""
    return DecoderPool(en_us_decoders())


def recognise(recognizer: Recognizer, pcm: bytes, piece: int) -> list[Transcript]:
    out: list[Transcript] = []
    for k in range(0, len(pcm), piece):
        out += recognizer.feed(pcm[k : k + piece])
    final = recognizer.end_utterance()
    return [*out, final] if final is not None else out


async def collect(stream: PocketsphinxStream) -> list[Transcript]:
    return [t async for t in stream.results()]


def push_frames(stream: PocketsphinxStream, pcm: bytes, piece: int = FRAME) -> None:
    for k in range(0, len(pcm), piece):
        stream.push(pcm[k : k + piece])


# --- frames ----------------------------------------------------------------------------------


def test_frames_survive_any_cutting() -> None:
    frames = [Frame(Kind.OPEN, 1), Frame(Kind.AUDIO, 1, bytes(range(200))), Frame(Kind.END, 7)]
    wire = b"".join(encode_frame(f.kind, f.stream, f.payload) for f in frames)
    reader = FrameReader()
    got: list[Frame] = []
    for i in range(len(wire)):
        got += reader.feed(wire[i : i + 1])
    assert got == frames
    assert FrameReader().feed(wire) == frames


def test_corrupt_frame_length_is_an_error() -> None:
    with pytest.raises(ValueError, match="corrupt frame"):
        FrameReader().feed(b"\x02\x01\x00\x00\x00\xff\xff\xff\xff")


def test_oversized_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(Kind.AUDIO, 1, bytes((1 << 24) + 1))


# --- recogniser core on a real decoder -------------------------------------------------------


def test_recognizer_gives_partials_then_the_final(
    pool: DecoderPool, sentences: list[bytes]
) -> None:
    decoder = pool.acquire()
    try:
        out = recognise(Recognizer(decoder), sentences[1], FRAME)
    finally:
        pool.release(decoder)
    partials, final = out[:-1], out[-1]
    assert final.final and final.index == 0
    assert {"would", "like", "check", "account", "balance"} <= set(final.text.split())
    assert len(partials) >= 3 and not any(t.final for t in partials)
    assert all(t.index == 0 for t in partials)
    texts = [t.text for t in partials]
    assert all(a != b for a, b in itertools.pairwise(texts))  # only on change
    # the sentence starts 300 ms into this clip and lasts 2.5 s
    assert final.start_ms is not None and final.end_ms is not None
    assert 100 <= final.start_ms <= 600 and 2300 <= final.end_ms - final.start_ms <= 3000


def test_final_text_does_not_depend_on_push_size(pool: DecoderPool, sentences: list[bytes]) -> None:
    decoder = pool.acquire()
    try:
        by_frame = recognise(Recognizer(decoder), sentences[2], FRAME)
        decoder.reinit_feat()  # what the pool does between streams
        whole = recognise(Recognizer(decoder), sentences[2], len(sentences[2]))
    finally:
        pool.release(decoder)
    assert by_frame[-1].text == whole[-1].text
    assert len(by_frame) >= 3 and len(whole) >= 3  # partials even from one big push


def test_times_and_indexes_count_from_the_stream_start(
    pool: DecoderPool, sentences: list[bytes]
) -> None:
    decoder = pool.acquire()
    recognizer = Recognizer(decoder)
    try:
        first = recognise(recognizer, sentences[0], FRAME)
        assert recognizer.end_utterance() is None  # nothing pushed since: no utterance
        second = recognise(recognizer, sentences[1], FRAME)
    finally:
        pool.release(decoder)
    assert first[-1].index == 0 and second[-1].index == 1
    first_ms = len(sentences[0]) // 32
    assert second[-1].start_ms is not None and second[-1].start_ms >= first_ms


def test_silence_is_an_empty_utterance_and_uses_no_index(pool: DecoderPool) -> None:
    decoder = pool.acquire()
    recognizer = Recognizer(decoder)
    try:
        assert recognizer.feed(bytes(2 * 16000)) == []
        assert recognizer.end_utterance() is None
    finally:
        pool.release(decoder)


def test_long_utterance_is_finalised_at_the_maximum(
    pool: DecoderPool, sentences: list[bytes]
) -> None:
    decoder = pool.acquire()
    recognizer = Recognizer(decoder, max_utterance=16000 * 2)
    try:
        out = recognizer.feed(sentences[1])  # 3.1 s > 2 s
        tail = recognizer.end_utterance()
    finally:
        pool.release(decoder)
    finals = [t for t in out if t.final]
    assert len(finals) == 1 and finals[0].index == 0
    assert tail is not None and tail.final and tail.index == 1
    assert tail.start_ms is not None and tail.start_ms >= 2000  # ms from the stream start


def test_reused_decoder_forgets_the_previous_call(
    pool: DecoderPool, speech_16k: np.ndarray, sentences: list[bytes]
) -> None:
    decoder = pool.acquire()
    fresh = recognise(Recognizer(decoder), sentences[2], FRAME)
    loud = (speech_16k[: 16000 * 2].astype(np.int32) * 4).clip(-32768, 32767).astype(np.int16)
    recognise(Recognizer(decoder), loud.tobytes(), FRAME)  # another caller, another level
    pool.release(decoder)
    again = pool.acquire()
    try:
        assert again is decoder
        assert recognise(Recognizer(again), sentences[2], FRAME) == fresh
    finally:
        pool.release(again)


def test_shared_language_model_decodes_like_a_default_decoder(
    pool: DecoderPool, sentences: list[bytes]
) -> None:
    from pocketsphinx import Decoder

    shared = pool.acquire()
    try:
        ours = recognise(Recognizer(shared), sentences[8], FRAME)
    finally:
        pool.release(shared)
    default = recognise(Recognizer(Decoder(loglevel="FATAL")), sentences[8], FRAME)
    assert ours == default and ours[-1].text


def test_service_failure_ends_only_that_stream(sentences: list[bytes]) -> None:
    """The recognition service's loop, on a real socket pair, run on a thread."""
    ours, theirs = socket.socketpair()
    service = threading.Thread(target=serve, args=(theirs.detach(),))
    service.start()
    try:
        frames = FrameReader()

        def receive(count: int) -> list[Frame]:
            got: list[Frame] = []
            while len(got) < count:
                data = ours.recv(1 << 16)
                assert data, "the service closed the connection"
                got += frames.feed(data)
            return got

        assert receive(1) == [Frame(Kind.READY, 0)]
        ours.sendall(encode_frame(Kind.OPEN, 1) + encode_frame(Kind.OPEN, 2))
        ours.sendall(encode_frame(99, 1))  # a kind the service does not know
        (failed,) = receive(1)
        assert failed.kind == Kind.FAILED and failed.stream == 1
        assert b"unknown frame kind 99" in failed.payload
        ours.sendall(encode_frame(Kind.AUDIO, 1, sentences[1]))  # dropped: stream 1 failed
        ours.sendall(encode_frame(Kind.AUDIO, 2, sentences[1]) + encode_frame(Kind.END, 2))
        ours.sendall(encode_frame(Kind.CLOSE, 2))
        replies = receive(1)
        while replies[-1].kind != Kind.CLOSED:
            replies += receive(1)
        assert {f.stream for f in replies} == {2}
        final = Transcript(**json.loads(replies[-2].payload))
        assert final.final and "balance" in final.text
    finally:
        ours.close()  # the service's normal end
        service.join(GUARD)
    assert not service.is_alive()


# --- the provider and its recognition process --------------------------------------------


def test_stream_transcribes_utterances_in_order(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr, sentences: list[bytes]
) -> None:
    async def scenario() -> list[Transcript]:
        stream = await asr.open(TranscriptionOption(language="en-US"))
        for pcm in sentences[:3]:
            push_frames(stream, pcm)
            stream.end_utterance()
        stream.end_utterance()  # nothing since: no transcript
        reader = asyncio.create_task(collect(stream))
        await stream.aclose()  # finals already asked for still arrive
        return await asyncio.wait_for(reader, GUARD)

    out = run(scenario())
    finals = [t for t in out if t.final]
    assert [t.index for t in finals] == [0, 1, 2]
    assert "account balance" in finals[1].text and "account number" in finals[2].text
    starts = [t.start_ms or 0 for t in finals]
    assert starts == sorted(starts) and starts[2] >= (len(sentences[0]) + len(sentences[1])) // 32
    # each utterance's partials come before its final
    for t in out:
        if not t.final:
            assert t.index in (0, 1, 2) and out.index(t) < out.index(finals[t.index])


def test_concurrent_streams_are_independent(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr, sentences: list[bytes]
) -> None:
    async def scenario() -> tuple[list[Transcript], list[Transcript]]:
        a = await asr.open(TranscriptionOption())
        b = await asr.open(TranscriptionOption())
        pa, pb = sentences[1], sentences[3]
        for k in range(0, max(len(pa), len(pb)), FRAME):  # interleaved, as on a worker tick
            a.push(pa[k : k + FRAME])
            b.push(pb[k : k + FRAME])
        a.end_utterance()
        b.end_utterance()
        ra, rb = asyncio.create_task(collect(a)), asyncio.create_task(collect(b))
        await asyncio.gather(a.aclose(), b.aclose())
        return await asyncio.wait_for(ra, GUARD), await asyncio.wait_for(rb, GUARD)

    out_a, out_b = run(scenario())
    assert out_a[-1].final and "balance" in out_a[-1].text and out_a[-1].index == 0
    assert out_b[-1].final and "five six" in out_b[-1].text and out_b[-1].index == 0


def test_odd_sized_pushes_lose_no_byte(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr, sentences: list[bytes]
) -> None:
    """A lost or doubled byte would swap every sample's bytes after it: nothing recognisable."""

    async def scenario() -> str:
        stream = await asr.open(TranscriptionOption())
        push_frames(stream, sentences[1], 321)
        stream.end_utterance()
        reader = asyncio.create_task(collect(stream))
        await stream.aclose()
        out = await asyncio.wait_for(reader, GUARD)
        return out[-1].text

    assert {"check", "account", "balance"} <= set(run(scenario()).split())


def test_push_after_close_is_a_no_op_and_close_is_idempotent(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr, sentences: list[bytes]
) -> None:
    async def scenario() -> list[Transcript]:
        stream = await asr.open(TranscriptionOption())
        await stream.aclose()
        stream.push(sentences[0])
        stream.end_utterance()
        await stream.aclose()
        return await asyncio.wait_for(collect(stream), GUARD)

    assert run(scenario()) == []


def test_non_bytes_audio_is_a_type_error(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr
) -> None:
    async def scenario() -> None:
        stream = await asr.open(TranscriptionOption())
        try:
            with pytest.raises(TypeError, match="pcm must be bytes"):
                stream.push("audio")  # type: ignore[arg-type]
        finally:
            await stream.aclose()

    run(scenario())


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (TranscriptionOption(language="zh-CN"), "language 'zh-CN' unavailable"),
        (TranscriptionOption(model_type="large-v3"), "model 'large-v3' unavailable"),
    ],
)
def test_unavailable_language_or_model_is_a_provider_error(
    run: Callable[[Awaitable[Any]], Any],
    asr: PocketsphinxAsr,
    option: TranscriptionOption,
    message: str,
) -> None:
    with pytest.raises(ProviderError, match=message):
        run(asr.open(option))


def test_lost_recognition_process_fails_streams_and_restarts(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr, sentences: list[bytes]
) -> None:
    async def scenario() -> str:
        stream = await asr.open(TranscriptionOption())
        pid = asr.process_id
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ProviderError, match="recognition process"):
            await asyncio.wait_for(collect(stream), GUARD)
        stream.push(sentences[0])  # the call goes on pushing: no error, no hang
        await stream.aclose()
        again = await asr.open(TranscriptionOption())
        assert asr.process_id not in (None, pid)
        push_frames(again, sentences[1])
        again.end_utterance()
        reader = asyncio.create_task(collect(again))
        await again.aclose()
        out = await asyncio.wait_for(reader, GUARD)
        return out[-1].text

    assert "balance" in run(scenario())


def test_piper_speech_is_recognised(
    run: Callable[[Awaitable[Any]], Any], asr: PocketsphinxAsr
) -> None:
    """Proof test: piper says a sentence, our resampler takes it to 16 kHz, pocketsphinx
    hears at least 3 of its 5 key words."""
    tts = PiperTts()

    async def scenario() -> Transcript:
        speech = await tts.open(SynthesisOption(), streaming=False)
        speech.push_text("I would like to check my account balance")
        speech.end_text()
        chunks = [c async for c in speech.chunks()]
        assert chunks and all(c.sample_rate == 22050 for c in chunks)
        resampler = Resampler(22050, 16000)
        pcm16k = b"".join(resampler.process(c.pcm).tobytes() for c in chunks)
        pcm16k += resampler.flush().tobytes()
        silence = bytes(16000)  # 0.5 s each side, as a caller's utterance would have
        stream = await asr.open(TranscriptionOption())
        push_frames(stream, silence + pcm16k + silence)
        stream.end_utterance()
        reader = asyncio.create_task(collect(stream))
        await stream.aclose()
        out = await asyncio.wait_for(reader, GUARD)
        finals = [t for t in out if t.final]
        assert len(finals) == 1
        return finals[0]

    try:
        final = run(scenario())
    finally:
        tts.close()
    heard = {"would", "like", "check", "account", "balance"} & set(final.text.split())
    assert len(heard) >= 3, final.text
