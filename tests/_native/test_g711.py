"""G.711 kernels: bit-exact with ``audioop`` over every input, and strict about their inputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from activecall._native.g711 import decode_alaw, decode_ulaw, encode_alaw, encode_ulaw

with warnings.catch_warnings():
    # audioop warns that it is deprecated (3.11, 3.12); 3.13+ gets it from audioop-lts.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))

Encode = Callable[..., bytes]
Decode = Callable[..., npt.NDArray[np.int16]]

ENCODERS = pytest.mark.parametrize(
    ("encode", "reference"),
    [(encode_ulaw, audioop.lin2ulaw), (encode_alaw, audioop.lin2alaw)],
    ids=["ulaw", "alaw"],
)
DECODERS = pytest.mark.parametrize(
    ("decode", "reference"),
    [(decode_ulaw, audioop.ulaw2lin), (decode_alaw, audioop.alaw2lin)],
    ids=["ulaw", "alaw"],
)
CODECS = pytest.mark.parametrize(
    ("encode", "decode"),
    [(encode_ulaw, decode_ulaw), (encode_alaw, decode_alaw)],
    ids=["ulaw", "alaw"],
)


@ENCODERS
def test_encode_matches_audioop_for_every_sample(
    encode: Encode, reference: Callable[[bytes, int], bytes]
) -> None:
    assert encode(ALL_SAMPLES) == reference(ALL_SAMPLES.tobytes(), 2)


@ENCODERS
def test_encode_matches_audioop_on_a_frame(
    encode: Encode, reference: Callable[[bytes, int], bytes]
) -> None:
    # 20 ms at 8 kHz: the size RTP sends, below the length at which the GIL is released.
    frame = np.random.default_rng(711).integers(-32768, 32768, 160, dtype=np.int16)
    assert encode(frame) == reference(frame.tobytes(), 2)


@DECODERS
def test_decode_matches_audioop_for_every_code(
    decode: Decode, reference: Callable[[bytes, int], bytes]
) -> None:
    expected = np.frombuffer(reference(ALL_CODES, 2), dtype=np.int16)
    out = decode(ALL_CODES)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, expected)
    long = ALL_CODES * 64  # long enough to run without the GIL
    np.testing.assert_array_equal(decode(long), np.tile(expected, 64))


@CODECS
def test_decoded_values_encode_back_to_their_code(encode: Encode, decode: Decode) -> None:
    codes = np.frombuffer(encode(decode(ALL_CODES)), dtype=np.uint8)
    changed = np.flatnonzero(codes != np.arange(256))
    # Only µ-law's "negative zero" (0x7F decodes to 0, which encodes as 0xFF) is not a fixpoint.
    assert changed.tolist() == ([0x7F] if encode is encode_ulaw else [])


@ENCODERS
def test_encode_accepts_bytes_like_and_strided_arrays(
    encode: Encode, reference: Callable[[bytes, int], bytes]
) -> None:
    samples = ALL_SAMPLES[::3]
    expected = reference(samples.tobytes(), 2)
    raw = samples.tobytes()
    assert encode(samples) == expected  # a strided view
    assert encode(raw) == expected
    assert encode(bytearray(raw)) == expected
    assert encode(memoryview(raw)) == expected
    assert encode(samples.astype(">i2")) == expected  # byte-swapped int16 is still int16


@DECODERS
def test_decode_accepts_bytes_like_and_uint8_arrays(
    decode: Decode, reference: Callable[[bytes, int], bytes]
) -> None:
    expected = np.frombuffer(reference(ALL_CODES, 2), dtype=np.int16)
    as_array = np.frombuffer(ALL_CODES, dtype=np.uint8)
    for data in (bytearray(ALL_CODES), memoryview(ALL_CODES), as_array):
        np.testing.assert_array_equal(decode(data), expected)
    doubled = np.repeat(as_array, 2)[::2]  # a strided view
    np.testing.assert_array_equal(decode(doubled), expected)


@CODECS
def test_empty_input(encode: Encode, decode: Decode) -> None:
    assert encode(np.zeros(0, dtype=np.int16)) == b""
    assert encode(b"") == b""
    out = decode(b"")
    assert out.dtype == np.int16
    assert out.shape == (0,)


@ENCODERS
def test_encode_extremes(encode: Encode, reference: Callable[[bytes, int], bytes]) -> None:
    extremes = np.array([-32768, 32767, -32767, 0, -1, 1], dtype=np.int16)
    assert encode(extremes) == reference(extremes.tobytes(), 2)


@ENCODERS
def test_encode_rejects_bad_input(encode: Encode, reference: object) -> None:
    with pytest.raises(ValueError, match="even length"):
        encode(b"\x00\x01\x02")
    with pytest.raises(TypeError, match="int16"):
        encode(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="int16"):
        encode(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError, match="1-D"):
        encode(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(TypeError, match="bytes-like"):
        encode([0, 1, 2])
    with pytest.raises(TypeError, match="bytes-like"):
        encode("pcm")
    with pytest.raises(ValueError, match="contiguous"):
        encode(memoryview(b"\x00" * 8)[::2])


@DECODERS
def test_decode_rejects_bad_input(decode: Decode, reference: object) -> None:
    with pytest.raises(TypeError, match="uint8"):
        decode(np.zeros(4, dtype=np.int16))
    with pytest.raises(ValueError, match="1-D"):
        decode(np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(TypeError, match="bytes-like"):
        decode([0, 1, 2])
