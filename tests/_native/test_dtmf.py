"""In-band DTMF detector: every key at 8 and 16 kHz, through G.711, and no talk-off on speech."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from activecall._native import g711
from activecall._native.dtmf import FREQUENCIES, KEYS, DtmfDetector
from activecall._native.resample import Resampler

DBM0 = 32636 / 10 ** (3.17 / 20)  # amplitude of a 0 dBm0 sine in 16-bit G.711 scale


def tone(
    key: str,
    rate: int,
    ms: float,
    *,
    level_dbm0: float = -10.0,
    deviation: float = 0.0,
    twist_db: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Key ``key`` for ``ms``: its row and column sines at ``level_dbm0`` each (the column
    ``twist_db`` louder), both frequencies off by ``deviation`` (a fraction)."""
    i = KEYS.index(key)
    row, col = FREQUENCIES[i // 4], FREQUENCIES[4 + i % 4]
    t = np.arange(round(rate * ms / 1000)) / rate
    amp = DBM0 * 10 ** (level_dbm0 / 20)
    return amp * np.sin(2 * np.pi * row * (1 + deviation) * t + 0.3) + amp * 10 ** (
        twist_db / 20
    ) * np.sin(2 * np.pi * col * (1 + deviation) * t)


def dial(
    keys: str,
    rate: int,
    *,
    on_ms: float = 60,
    off_ms: float = 60,
    noise_dbm0: float = -45.0,
    seed: int = 0,
    **tone_args: float,
) -> npt.NDArray[np.int16]:
    """``keys`` dialled with ``on_ms`` tones and ``off_ms`` gaps, in white noise."""
    parts: list[npt.NDArray[np.float64]] = [np.zeros(rate // 10)]
    for key in keys:
        parts += [tone(key, rate, on_ms, **tone_args), np.zeros(round(rate * off_ms / 1000))]
    signal = np.concatenate(parts)
    noise = np.random.default_rng(seed).normal(0, DBM0 * 10 ** (noise_dbm0 / 20), len(signal))
    return np.clip(np.round(signal + noise), -32768, 32767).astype(np.int16)


def detect(pcm: npt.NDArray[np.int16], rate: int, **settings: float) -> str:
    return "".join(key for key, _ in DtmfDetector(rate, **settings).process(pcm))  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_every_key_once_in_noise(rate: int) -> None:
    assert detect(dial(KEYS, rate), rate) == KEYS


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.encode_ulaw, g711.decode_ulaw), (g711.encode_alaw, g711.decode_alaw)],
    ids=["ulaw", "alaw"],
)
def test_every_key_through_g711(encode, decode) -> None:  # type: ignore[no-untyped-def]
    pcm8 = decode(encode(dial(KEYS, 8000, seed=1)))
    assert detect(pcm8, 8000) == KEYS
    # And the way a call hears it: G.711 at 8 kHz, resampled to the 16 kHz of the pipeline.
    pcm16 = Resampler(8000, 16000).process(pcm8)
    assert detect(pcm16, 16000) == KEYS


def test_key_offsets_point_at_the_tone_starts() -> None:
    pcm = dial("159", 16000, on_ms=80, off_ms=120)
    starts = [offset for _, offset in DtmfDetector(16000).process(pcm)]
    expected = [1600 + i * 3200 for i in range(3)]  # 100 ms lead-in, 200 ms per key
    assert all(abs(s - e) <= 204 for s, e in zip(starts, expected, strict=True))


def test_any_chunking_gives_the_same_presses() -> None:
    pcm = dial(KEYS, 16000, seed=2)
    whole = DtmfDetector(16000).process(pcm)
    detector = DtmfDetector(16000)
    rng = np.random.default_rng(3)
    chunked = []
    i = 0
    while i < len(pcm):
        n = int(rng.integers(1, 700))
        chunked += detector.process(pcm[i : i + n].tobytes())
        i += n
    assert chunked == whole and len(whole) == 16


def test_minimum_duration() -> None:
    assert detect(dial("1234", 16000, on_ms=40, off_ms=40), 16000) == "1234"
    assert detect(dial("1234", 16000, on_ms=15, off_ms=40), 16000) == ""


def test_a_held_key_is_one_press_and_a_gap_makes_two() -> None:
    assert detect(dial("5", 16000, on_ms=1500), 16000) == "5"
    assert detect(dial("55", 16000, on_ms=60, off_ms=50), 16000) == "55"


def test_frequency_deviation() -> None:
    # ITU-T Q.24: accept within 1.5 %, reject beyond 3.5 %.
    for dev in (-0.015, 0.015):
        assert detect(dial(KEYS, 8000, deviation=dev), 8000) == KEYS
    for dev in (-0.035, 0.035):
        assert detect(dial(KEYS, 8000, deviation=dev), 8000) == ""


def test_level_and_twist_limits() -> None:
    assert detect(dial(KEYS, 16000, level_dbm0=-25), 16000) == KEYS
    assert detect(dial(KEYS, 16000, level_dbm0=-36, noise_dbm0=-60), 16000) == ""
    assert detect(dial(KEYS, 16000, twist_db=3), 16000) == KEYS  # column louder
    assert detect(dial(KEYS, 16000, twist_db=-7), 16000) == KEYS  # row louder
    assert detect(dial(KEYS, 16000, twist_db=6), 16000) == ""
    assert detect(dial(KEYS, 16000, twist_db=-10), 16000) == ""


def test_no_key_in_a_minute_of_speech(speech_16k: npt.NDArray[np.int16]) -> None:
    # Talk-off: speech must not be taken for keys, wideband or through a G.711 call.
    assert DtmfDetector(16000).process(speech_16k) == []
    pcm8 = g711.decode_ulaw(g711.encode_ulaw(Resampler(16000, 8000).process(speech_16k)))
    assert DtmfDetector(8000).process(pcm8) == []
    assert DtmfDetector(16000).process(Resampler(8000, 16000).process(pcm8)) == []


def test_the_energy_check_is_what_keeps_speech_out(speech_16k: npt.NDArray[np.int16]) -> None:
    # With the two-tone energy share and the duration check relaxed, the same speech does
    # trip the detector: the default thresholds are doing the work.
    loose = DtmfDetector(16000, energy_ratio=0.1, min_blocks=1, min_level_dbm0=-40)
    assert len(loose.process(speech_16k)) > 0


def test_keys_in_speech_are_found() -> None:
    rng = np.random.default_rng(4)
    pcm = dial("2580", 16000, on_ms=70, off_ms=100).astype(np.float64)
    pcm += rng.normal(0, 600, len(pcm))
    assert detect(np.clip(pcm, -32768, 32767).astype(np.int16), 16000) == "2580"


def test_reset_starts_over() -> None:
    detector = DtmfDetector(8000)
    pcm = dial("7", 8000, on_ms=400)  # 100 ms lead-in, then the key
    assert [k for k, _ in detector.process(pcm[:2400])] == ["7"]
    assert detector.process(pcm[2400:2800]) == []  # still the same press
    detector.reset()  # forgets it: the rest of the tone is a press of its own, at offset 0
    assert detector.process(pcm[2800:]) == [("7", 0)]
    assert detector.block_size == 102 and detector.sample_rate == 8000


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: DtmfDetector(44100), ValueError, "8000 or 16000"),
        (lambda: DtmfDetector(16000, energy_ratio=0), ValueError, "energy_ratio"),
        (lambda: DtmfDetector(16000, min_blocks=0), ValueError, "min_blocks"),
        (lambda: DtmfDetector().process(np.zeros(10, np.float32)), TypeError, "int16"),
        (lambda: DtmfDetector().process(np.zeros((2, 5), np.int16)), ValueError, "1-D"),
        (lambda: DtmfDetector().process(b"\x00\x01\x02"), ValueError, "even length"),
        (lambda: DtmfDetector().process("text"), TypeError, "bytes-like"),
    ],
)
def test_bad_input(make, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        make()
