"""G.722 kernels: bit-exact with the ``g722`` package (spandsp/libg722), streaming and strict."""

from __future__ import annotations

import threading

import G722
import numpy as np
import numpy.typing as npt
import pytest

from activecall._native.g722 import G722Decoder, G722Encoder

Pcm = npt.NDArray[np.int16]


def reference_encode(pcm: Pcm) -> bytes:
    """Encode with a fresh ``g722`` codec (its state persists per object). Even lengths only:
    on an odd length it reads one sample past the end."""
    assert len(pcm) % 2 == 0
    return bytes(G722.G722(16000, 64000).encode(pcm))


def reference_decode(data: bytes) -> Pcm:
    """Decode with a fresh ``g722`` codec."""
    return np.asarray(G722.G722(16000, 64000).decode(data), dtype=np.int16)


@pytest.fixture(scope="module")
def noise() -> Pcm:
    """10 s of full-scale white noise with clipped stretches at both rails."""
    rng = np.random.default_rng(722)
    pcm = rng.integers(-32768, 32768, 160_000, dtype=np.int16)
    pcm[20_000:24_000] = 32767
    pcm[40_000:44_000] = -32768
    pcm[60_000:64_000:2] = -32768  # a full-scale square wave at the Nyquist frequency
    pcm[60_001:64_000:2] = 32767
    return pcm


@pytest.fixture(scope="module")
def speech_g722(speech_16k: Pcm) -> bytes:
    return reference_encode(speech_16k)


def test_encode_speech_matches_reference(speech_16k: Pcm, speech_g722: bytes) -> None:
    assert G722Encoder().encode(speech_16k) == speech_g722


def test_decode_speech_matches_reference(speech_g722: bytes) -> None:
    out = G722Decoder().decode(speech_g722)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, reference_decode(speech_g722))


def test_encode_noise_matches_reference(noise: Pcm) -> None:
    assert G722Encoder().encode(noise) == reference_encode(noise)


def test_decode_noise_matches_reference(noise: Pcm) -> None:
    data = reference_encode(noise)
    np.testing.assert_array_equal(G722Decoder().decode(data), reference_decode(data))


def test_decode_arbitrary_bytes_matches_reference() -> None:
    # Random codes drive the predictors into states that no encoder's output reaches.
    data = np.random.default_rng(7).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    np.testing.assert_array_equal(G722Decoder().decode(data), reference_decode(data))


def test_extremes_match_reference() -> None:
    pcm = np.tile(np.array([-32768, -32768, 32767, 32767, -32768, 32767], dtype=np.int16), 500)
    data = G722Encoder().encode(pcm)
    assert data == reference_encode(pcm)
    np.testing.assert_array_equal(G722Decoder().decode(data), reference_decode(data))


def test_frame_by_frame_equals_whole(speech_16k: Pcm, speech_g722: bytes) -> None:
    encoder, decoder = G722Encoder(), G722Decoder()
    frames = [encoder.encode(speech_16k[i : i + 320]) for i in range(0, len(speech_16k), 320)]
    assert all(len(f) == 160 for f in frames)
    assert b"".join(frames) == speech_g722
    decoded = [decoder.decode(speech_g722[i : i + 160]) for i in range(0, len(speech_g722), 160)]
    np.testing.assert_array_equal(np.concatenate(decoded), G722Decoder().decode(speech_g722))


def test_any_chunking_equals_whole(speech_16k: Pcm, speech_g722: bytes) -> None:
    pcm = speech_16k[: 16000 * 5]
    whole = speech_g722[: len(pcm) // 2]
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(pcm)), 400, replace=False))
    cuts = np.concatenate([cuts, [cuts[7]] * 3])  # some empty chunks too
    encoder = G722Encoder()
    chunks = [encoder.encode(part) for part in np.split(pcm, np.sort(cuts))]
    assert b"".join(chunks) == whole
    decoder = G722Decoder()
    parts = np.split(np.frombuffer(whole, dtype=np.uint8), np.sort(cuts // 2))
    np.testing.assert_array_equal(
        np.concatenate([decoder.decode(p) for p in parts]), G722Decoder().decode(whole)
    )


def test_odd_sample_waits_for_the_next_call(speech_16k: Pcm, speech_g722: bytes) -> None:
    encoder = G722Encoder()
    assert encoder.encode(speech_16k[:1]) == b""
    assert encoder.encode(speech_16k[1:2]) == speech_g722[:1]
    assert encoder.encode(speech_16k[2:5]) == speech_g722[1:2]
    assert encoder.encode(b"") == b""
    assert encoder.encode(speech_16k[5:6]) == speech_g722[2:3]


def test_empty_input() -> None:
    assert G722Encoder().encode(np.zeros(0, dtype=np.int16)) == b""
    assert G722Encoder().encode(b"") == b""
    out = G722Decoder().decode(b"")
    assert out.dtype == np.int16
    assert out.shape == (0,)


def test_reset_restores_the_initial_state(speech_16k: Pcm, speech_g722: bytes) -> None:
    encoder, decoder = G722Encoder(), G722Decoder()
    encoder.encode(speech_16k[1000:4001])  # odd: leaves a pending sample, which reset drops
    decoder.decode(speech_g722[5000:6000])
    encoder.reset()
    decoder.reset()
    assert encoder.encode(speech_16k[:3200]) == speech_g722[:1600]
    np.testing.assert_array_equal(
        decoder.decode(speech_g722[:1600]), G722Decoder().decode(speech_g722[:1600])
    )


def test_instances_do_not_share_state(speech_16k: Pcm, speech_g722: bytes) -> None:
    first, second = G722Encoder(), G722Encoder()
    first.encode(speech_16k[:999])
    assert second.encode(speech_16k[:3200]) == speech_g722[:1600]


def test_accepts_bytes_like_and_strided_input(speech_16k: Pcm, speech_g722: bytes) -> None:
    pcm = speech_16k[:3200]
    raw = pcm.tobytes()
    for source in (raw, bytearray(raw), memoryview(raw), pcm.astype(">i2")):
        assert G722Encoder().encode(source) == speech_g722[:1600]
    strided = np.repeat(pcm, 2)[::2]
    assert G722Encoder().encode(strided) == speech_g722[:1600]
    expected = G722Decoder().decode(speech_g722[:1600])
    codes = np.frombuffer(speech_g722[:1600], dtype=np.uint8)
    for data in (bytearray(speech_g722[:1600]), codes, np.repeat(codes, 2)[::2]):
        np.testing.assert_array_equal(G722Decoder().decode(data), expected)


def test_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        G722Encoder(16000)  # type: ignore[call-arg]  # 64 kbit/s at 16 kHz is the only mode
    with pytest.raises(TypeError):
        G722Decoder(16000)  # type: ignore[call-arg]
    encoder, decoder = G722Encoder(), G722Decoder()
    with pytest.raises(TypeError, match="int16"):
        encoder.encode(np.zeros(4, dtype=np.float64))
    with pytest.raises(ValueError, match="1-D"):
        encoder.encode(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="even length"):
        encoder.encode(b"\x00\x00\x00")
    with pytest.raises(TypeError, match="bytes-like"):
        encoder.encode([0, 0])
    with pytest.raises(TypeError, match="uint8"):
        decoder.decode(np.zeros(4, dtype=np.int16))
    with pytest.raises(TypeError, match="bytes-like"):
        decoder.decode("g722")
    # A rejected call leaves the stream untouched.
    assert encoder.encode(np.zeros(4, dtype=np.int16)) == G722Encoder().encode(
        np.zeros(4, dtype=np.int16)
    )


def test_use_from_another_thread_during_a_long_call_is_refused(speech_16k: Pcm) -> None:
    # Long calls release the GIL; a second caller must not touch the state meanwhile.
    pcm = np.tile(speech_16k, 4)
    encoder = G722Encoder()
    result: list[bytes] = []
    worker = threading.Thread(target=lambda: result.append(encoder.encode(pcm)))
    refused = False
    worker.start()
    while worker.is_alive() and not refused:
        try:
            encoder.reset()
        except RuntimeError:
            refused = True
    worker.join()
    assert refused
    assert result == [G722Encoder().encode(pcm)]
