"""``/call`` codecs: inbound decoding independent of message boundaries, 20 ms outbound frames."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from activecall._native import g711, g722
from activecall._native.resample import Resampler
from activecall.media.codec import CODECS, FRAME_SAMPLES, CallCodec, Reframer

Pcm = npt.NDArray[np.int16]


def tone(n: int, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.4) -> Pcm:
    t = np.arange(n) / rate
    x = amplitude * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 1234.5 * t)
    return np.round(x * 32767).astype(np.int16)


def wire_bytes(codec: str, seconds: float = 1.0) -> bytes:
    """A signal as a client would send it in ``codec``."""
    if codec == "pcm":
        return tone(int(16000 * seconds)).astype("<i2").tobytes()
    if codec == "g722":
        return g722.G722Encoder().encode(tone(int(16000 * seconds)))
    pcm8k = tone(int(8000 * seconds), rate=8000)
    return g711.encode_ulaw(pcm8k) if codec == "pcmu" else g711.encode_alaw(pcm8k)


def split(data: bytes, sizes: Callable[[], int]) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        n = sizes()
        out.append(data[i : i + n])
        i += n
    return out


def chunkings(codec: str) -> dict[str, Callable[[], int]]:
    rng = random.Random(7)
    odd = iter([3, 7, 161, 1, 999] * 10000)
    frame = CallCodec.create(codec).frame_bytes
    return {
        "1 byte": lambda: 1,
        "odd lengths": lambda: next(odd),
        "20 ms": lambda: frame,
        "random": lambda: rng.randint(0, 700),
    }


def decode_all(codec: str, messages: list[bytes]) -> Pcm:
    decoder = CallCodec.create(codec).decoder()
    parts = [decoder.decode(m) for m in messages]
    parts.append(decoder.flush())
    return np.concatenate(parts)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("chunking", ["1 byte", "odd lengths", "20 ms", "random"])
def test_any_chunking_decodes_like_the_whole_signal(codec: str, chunking: str) -> None:
    data = wire_bytes(codec)
    whole = decode_all(codec, [data])
    pieces = decode_all(codec, split(data, chunkings(codec)[chunking]))
    assert pieces.dtype == np.int16
    np.testing.assert_array_equal(pieces, whole)


@pytest.mark.parametrize("codec", CODECS)
def test_decoding_agrees_with_the_kernels(codec: str) -> None:
    data = wire_bytes(codec)
    got = decode_all(codec, [data])
    if codec == "pcm":
        want = np.frombuffer(data, dtype="<i2").astype(np.int16)
    elif codec == "g722":
        want = g722.G722Decoder().decode(data)
    else:
        law = g711.decode_ulaw(data) if codec == "pcmu" else g711.decode_alaw(data)
        r = Resampler(8000, 16000)
        want = np.concatenate([r.process(law), r.flush()])
    np.testing.assert_array_equal(got, want)
    assert len(got) == 16000  # one second at 16 kHz, whatever the wire rate


def test_pcm_keeps_an_odd_byte_for_the_next_message() -> None:
    decoder = CallCodec.create("pcm").decoder()
    assert len(decoder.decode(b"\x01")) == 0
    np.testing.assert_array_equal(decoder.decode(b"\x02\x03"), [0x0201])
    assert len(decoder.decode(b"")) == 0
    np.testing.assert_array_equal(decoder.decode(bytearray(b"\x04\x05")), [0x0403])
    np.testing.assert_array_equal(decoder.decode(memoryview(b"\x06")), [0x0605])
    decoder.decode(b"\x07")
    assert len(decoder.flush()) == 0  # a dangling half sample is dropped at the end
    np.testing.assert_array_equal(decoder.decode(b"\x08\x00"), [8])


def test_pcm_decodes_negative_little_endian_samples() -> None:
    decoder = CallCodec.create("pcm").decoder()
    np.testing.assert_array_equal(decoder.decode(b"\xff\xff\x00\x80"), [-1, -32768])


@pytest.mark.parametrize("codec", CODECS)
def test_every_outbound_frame_has_the_codec_frame_size(codec: str) -> None:
    c = CallCodec.create(codec)
    encoder = c.encoder()
    signal = tone(FRAME_SAMPLES * 50)
    sizes = {len(encoder.encode_frame(f)) for f in signal.reshape(-1, FRAME_SAMPLES)}
    assert sizes == {c.frame_bytes}
    assert c.frame_bytes == {"pcm": 640, "pcmu": 160, "pcma": 160, "g722": 160}[codec]


@pytest.mark.parametrize("codec", CODECS)
def test_encode_frame_rejects_other_lengths(codec: str) -> None:
    encoder = CallCodec.create(codec).encoder()
    with pytest.raises(ValueError, match="320 samples"):
        encoder.encode_frame(np.zeros(160, dtype=np.int16))


@pytest.mark.parametrize(("codec", "min_snr_db"), [("pcmu", 30), ("pcma", 30), ("g722", 20)])
def test_outbound_then_inbound_gives_the_signal_back(codec: str, min_snr_db: float) -> None:
    c = CallCodec.create(codec)
    encoder, decoder = c.encoder(), c.decoder()
    signal = tone(FRAME_SAMPLES * 100)
    wire = b"".join(encoder.encode_frame(f) for f in signal.reshape(-1, FRAME_SAMPLES))
    back = np.concatenate([decoder.decode(wire), decoder.flush()]).astype(np.float64)
    # Codec and resampler delays shift the signal by a few samples: compare at the best lag.
    ref = signal[2000:-2000].astype(np.float64)
    snr = max(
        10 * np.log10(np.sum(ref**2) / np.sum((back[2000 + lag : -2000 + lag] - ref) ** 2))
        for lag in range(200)
    )
    assert snr > min_snr_db


def test_pcm_outbound_is_little_endian_and_lossless() -> None:
    c = CallCodec.create("pcm")
    signal = tone(FRAME_SAMPLES)
    wire = c.encoder().encode_frame(signal)
    assert wire == signal.astype("<i2").tobytes()
    np.testing.assert_array_equal(c.decoder().decode(wire), signal)


def test_codec_names() -> None:
    assert CallCodec.create(None).name == "pcm"
    assert CallCodec.create("PCMU") == CallCodec.create("pcmu")
    assert CallCodec.create("pcma").sample_rate == 8000
    assert CallCodec.create("g722").sample_rate == 16000
    with pytest.raises(
        ValueError, match="unknown codec 'opus': expected one of pcm, pcmu, pcma, g722"
    ):
        CallCodec.create("opus")


def test_reframer_frames_any_chunking_the_same() -> None:
    signal = tone(10000)
    rng = random.Random(3)
    for size in (FRAME_SAMPLES, 512):
        reframer = Reframer(size)
        frames, i = [], 0
        while i < len(signal):
            n = rng.randint(0, 1500)
            frames.append(reframer.push(signal[i : i + n]))
            i += n
        got = np.concatenate(frames)
        full = len(signal) // size
        assert got.shape == (full, size)
        np.testing.assert_array_equal(got.reshape(-1), signal[: full * size])
        rest = signal[full * size :]
        assert reframer.pending == len(rest)
        tail = reframer.flush()
        assert tail is not None
        np.testing.assert_array_equal(tail, np.pad(rest, (0, size - len(rest))))
        assert reframer.pending == 0
        assert reframer.flush() is None


def test_reframer_returned_frames_are_independent_of_later_pushes() -> None:
    reframer = Reframer(4)
    first = reframer.push(np.arange(6, dtype=np.int16))
    reframer.push(np.arange(100, 110, dtype=np.int16))
    np.testing.assert_array_equal(first, [[0, 1, 2, 3]])
    reframer.clear()
    assert reframer.pending == 0
    with pytest.raises(ValueError):
        Reframer(0)
