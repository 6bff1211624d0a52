"""Streaming resampler: quality from test tones, chunking-independent output, strict inputs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from activecall._native import resample
from activecall._native.resample import SUPPORTED_RATES, Resampler

Pcm = npt.NDArray[np.int16]
Floats = npt.NDArray[np.float32]

PAIRS = list(itertools.permutations(SUPPORTED_RATES, 2))
EVERY_PAIR = pytest.mark.parametrize(
    ("in_rate", "out_rate"), PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS]
)
AMPLITUDE = 0.5
STEADY = 4096  # output samples measured per tone, clear of the start and end transients


def _available_kernels() -> list[str]:
    default = resample.KERNEL
    found = [k for k in resample.KERNELS if resample._set_kernel(k) == k]
    resample._set_kernel(default)
    return found


@pytest.fixture(params=_available_kernels())
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with each dot-product kernel this CPU has."""
    default = resample.KERNEL
    yield resample._set_kernel(request.param)
    resample._set_kernel(default)


def whole_float(r: Resampler, x: Floats) -> npt.NDArray[np.float64]:
    return np.concatenate([r.process_float(x), r.flush_float()]).astype(np.float64)


def tone(in_rate: int, out_rate: int, freq: float) -> tuple[float, float, float]:
    """Gain, phase (rad) and level of everything else (dB re the tone) for one input tone.

    A tone below the output Nyquist is fitted at its own frequency (gain and phase against the
    ideal output); the residual is its aliases and images. Above it, the whole output is alias.
    """
    r = Resampler(in_rate, out_rate)
    skip = 2 * r.delay + 8
    n_in = math.ceil((STEADY + 2 * skip) * in_rate / out_rate)
    x = (AMPLITUDE * np.sin(2 * np.pi * freq / in_rate * np.arange(n_in))).astype(np.float32)
    y = whole_float(r, x)[skip : skip + STEADY]
    residual, gain, phase = y, 0.0, 0.0
    if freq < out_rate / 2:
        w = 2 * np.pi * freq / out_rate * np.arange(skip, skip + STEADY)
        basis = np.stack([np.sin(w), np.cos(w)], axis=1)
        (a, b), *_ = np.linalg.lstsq(basis, y, rcond=None)
        residual = y - basis @ np.array([a, b])
        gain, phase = math.hypot(a, b) / AMPLITUDE, math.atan2(b, a)
    rms = math.sqrt(float(np.mean(residual**2)))
    return gain, phase, 20 * math.log10(max(rms, 1e-12) / (AMPLITUDE / math.sqrt(2)))


@EVERY_PAIR
def test_passband_is_flat_in_phase_and_clean(in_rate: int, out_rate: int) -> None:
    nyquist = min(in_rate, out_rate) / 2
    for freq in np.linspace(20, 0.9 * nyquist, 40):
        gain, phase, others = tone(in_rate, out_rate, freq)
        assert abs(20 * math.log10(gain)) <= 0.1, freq
        assert abs(phase) <= 1e-4, freq  # output sample n is the input at n / out_rate
        assert others <= -70, freq


@EVERY_PAIR
def test_stopband_rejects_aliases_and_images(in_rate: int, out_rate: int) -> None:
    nyquist = min(in_rate, out_rate) / 2
    if in_rate > out_rate:
        # Every tone above the output Nyquist aliases into the output; the worst are near it.
        top = 0.99 * in_rate / 2
        near = np.linspace(nyquist, min(1.2 * nyquist, top), 81)
        freqs = np.concatenate([near, np.linspace(min(1.2 * nyquist, top), top, 20)])
    else:
        # Tones in the transition band have their first image just above the input Nyquist.
        freqs = np.linspace(0.9 * nyquist, 0.998 * nyquist, 40)
    for freq in freqs:
        assert tone(in_rate, out_rate, freq)[2] <= -70, freq


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (16000, 24000)])
def test_int16_tone_keeps_its_phase(in_rate: int, out_rate: int) -> None:
    r = Resampler(in_rate, out_rate)
    t = np.arange(in_rate) / in_rate
    x = np.round(16000 * np.cos(2 * np.pi * 300 * t + 0.5)).astype(np.int16)
    y = np.concatenate([r.process(x), r.flush()]).astype(np.float64)
    assert len(y) == out_rate
    n = np.arange(2 * r.delay, out_rate - 2 * r.delay)
    w = 2 * np.pi * 300 / out_rate * n
    basis = np.stack([np.cos(w), -np.sin(w)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, y[n], rcond=None)
    assert math.atan2(b, a) == pytest.approx(0.5, abs=1e-3)
    assert math.hypot(a, b) == pytest.approx(16000, rel=0.012)  # within the 0.1 dB ripple


def chunked(r: Resampler, x: Pcm, cuts: list[int]) -> Pcm:
    parts = [r.process(part) for part in np.split(x, cuts)]
    return np.concatenate([*parts, r.flush()])


@EVERY_PAIR
def test_any_chunking_gives_the_same_output(in_rate: int, out_rate: int, kernel: str) -> None:
    rng = np.random.default_rng(in_rate * 7 + out_rate)
    x = rng.integers(-30000, 30000, in_rate // 2, dtype=np.int16)  # 0.5 s of loud noise
    r = Resampler(in_rate, out_rate)
    whole = np.concatenate([r.process(x), r.flush()])
    frame = in_rate // 50
    assert np.array_equal(chunked(r, x, list(range(frame, len(x), frame))), whole)
    for _ in range(3):
        cuts = sorted(rng.integers(0, len(x), rng.integers(1, 60)).tolist())
        assert np.array_equal(chunked(r, x, cuts), whole)
    short = x[:700]
    one_by_one = chunked(r, short, list(range(1, len(short))))
    assert np.array_equal(one_by_one, np.concatenate([r.process(short), r.flush()]))


@EVERY_PAIR
def test_float_path_is_the_int16_path_unrounded(in_rate: int, out_rate: int) -> None:
    x = np.random.default_rng(3).integers(-32768, 32768, 5000, dtype=np.int16)
    r = Resampler(in_rate, out_rate)
    y16 = np.concatenate([r.process(x), r.flush()])
    yf = np.concatenate([r.process_float((x / 32768).astype(np.float32)), r.flush_float()])
    assert yf.dtype == np.float32
    expected = np.clip(np.rint(yf.astype(np.float64) * 32768), -32768, 32767)
    assert np.array_equal(y16, expected)


def test_kernels_agree_to_one_lsb() -> None:
    kernels = _available_kernels()
    x = np.random.default_rng(5).integers(-32768, 32768, 8000, dtype=np.int16)
    default = resample.KERNEL
    outs = []
    for name in kernels:
        resample._set_kernel(name)
        r = Resampler(8000, 22050)
        outs.append(np.concatenate([r.process(x), r.flush()]).astype(np.int32))
    resample._set_kernel(default)
    for out in outs[1:]:
        assert np.max(np.abs(out - outs[0])) <= 1


@EVERY_PAIR
def test_output_length_and_held_back_samples(in_rate: int, out_rate: int) -> None:
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    rng = np.random.default_rng(11)
    r = Resampler(in_rate, out_rate)
    fed = emitted = 0
    for n in rng.integers(0, 300, 60):
        emitted += len(r.process(np.zeros(n, dtype=np.int16)))
        fed += int(n)
        total = (2 * fed * up + down) // (2 * down)  # fed * out / in, halves rounded up
        assert 0 <= total - emitted <= r.delay
    tail = r.flush()
    assert emitted + len(tail) == (2 * fed * up + down) // (2 * down)
    for n in [0, 1, 2, 3, 147, 160, 441, 1000, 4410, 48000]:
        out = np.concatenate([r.process(np.zeros(n, dtype=np.int16)), r.flush()])
        assert len(out) == (2 * n * up + down) // (2 * down), n


def test_delay_is_the_look_ahead() -> None:
    r = Resampler(8000, 16000)
    assert r.delay == 88  # 44 input samples (5.5 ms) at 16 kHz
    r.process(np.zeros(8000, dtype=np.int16))
    assert len(r.flush()) == 88
    assert Resampler(16000, 8000).delay == 44
    assert Resampler(16000, 16000).delay == 0


def test_empty_input() -> None:
    r = Resampler(16000, 8000)
    for empty in (np.zeros(0, dtype=np.int16), b"", bytearray()):
        out = r.process(empty)
        assert out.dtype == np.int16
        assert out.shape == (0,)
    assert r.process_float(np.zeros(0, dtype=np.float32)).shape == (0,)
    assert r.flush().shape == (0,)
    assert r.flush_float().dtype == np.float32


def test_a_short_stream_still_comes_out() -> None:
    r = Resampler(8000, 48000)
    assert len(r.process(np.full(3, 1000, dtype=np.int16))) == 0  # all within the look-ahead
    assert len(r.flush()) == 18


def test_full_scale_saturates_without_wrapping() -> None:
    # A full-scale square wave overshoots (Gibbs) after filtering: the int16 output must stick
    # at the rails, never wrap around to the other sign.
    square = np.where(np.arange(16000) // 20 % 2 == 0, 32767, -32768).astype(np.int16)
    r = Resampler(16000, 48000)
    y = np.concatenate([r.process(square), r.flush()])
    yf = np.concatenate([r.process_float((square / 32768).astype(np.float32)), r.flush_float()])
    assert yf.max() > 1.05 and yf.min() < -1.05
    assert y.max() == 32767 and y.min() == -32768
    assert np.all(y[yf >= 1.0] == 32767)
    assert np.all(y[yf <= -1.0] == -32768)


def test_float_path_does_not_clip() -> None:
    r = Resampler(8000, 16000)
    y = np.concatenate([r.process_float(np.full(4000, 3.0, dtype=np.float32)), r.flush_float()])
    assert y[200:7800] == pytest.approx(3.0, abs=1e-5)  # unit DC gain in every phase


def test_accepts_bytes_like_and_strided_arrays() -> None:
    x = np.random.default_rng(2).integers(-32768, 32768, 3200, dtype=np.int16)
    expected = Resampler(16000, 8000).process(x)
    for pcm in (x.tobytes(), bytearray(x.tobytes()), memoryview(x.tobytes()), x.astype(">i2")):
        assert np.array_equal(Resampler(16000, 8000).process(pcm), expected)
    doubled = np.repeat(x, 2)[::2]
    assert np.array_equal(Resampler(16000, 8000).process(doubled), expected)
    xf = (x / 32768).astype(np.float32)
    expected_f = Resampler(16000, 8000).process_float(xf)
    assert np.array_equal(Resampler(16000, 8000).process_float(np.repeat(xf, 2)[::2]), expected_f)


def test_rejects_bad_input() -> None:
    r = Resampler(8000, 16000)
    with pytest.raises(TypeError, match="int16"):
        r.process(np.zeros(4, dtype=np.float32))
    with pytest.raises(TypeError, match="int16"):
        r.process(np.zeros(4, dtype=np.int32))
    with pytest.raises(ValueError, match="1-D"):
        r.process(np.zeros((2, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="even length"):
        r.process(b"\x00\x01\x02")
    with pytest.raises(TypeError):
        r.process([0, 1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float32"):
        r.process_float(np.zeros(4, dtype=np.float64))
    with pytest.raises(TypeError, match="float32"):
        r.process_float(np.zeros(4, dtype=np.int16))
    with pytest.raises(TypeError, match="float32"):
        r.process_float(b"\x00\x00\x00\x00")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="1-D"):
        r.process_float(np.zeros((2, 2), dtype=np.float32))


@pytest.mark.parametrize("rates", [(11025, 16000), (16000, 32000), (0, 8000), (-8000, 8000)])
def test_rejects_unsupported_rates(rates: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="unsupported sample rate"):
        Resampler(*rates)


def test_equal_rates_copy() -> None:
    x = np.arange(-100, 100, dtype=np.int16)
    r = Resampler(16000, 16000)
    y = r.process(x)
    assert np.array_equal(y, x)
    assert not np.shares_memory(y, x)
    xf = (x / 32768).astype(np.float32)
    assert np.array_equal(r.process_float(xf), xf)
    assert r.flush().shape == (0,)
    assert r.delay == 0


def test_reset_and_flush_start_a_new_stream() -> None:
    rng = np.random.default_rng(9)
    x = rng.integers(-32768, 32768, 2000, dtype=np.int16)
    fresh = Resampler(22050, 16000)
    expected = np.concatenate([fresh.process(x), fresh.flush()])
    r = Resampler(22050, 16000)
    r.process(rng.integers(-32768, 32768, 777, dtype=np.int16))
    r.reset()
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), expected)
    r.process(rng.integers(-32768, 32768, 555, dtype=np.int16))
    r.flush()
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), expected)


def test_properties() -> None:
    r = Resampler(24000, 16000)
    assert (r.in_rate, r.out_rate) == (24000, 16000)
    assert repr(r) == "Resampler(24000, 16000)"
    with pytest.raises(AttributeError):
        r.in_rate = 8000  # type: ignore[misc]
