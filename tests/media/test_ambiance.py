"""Ambiance: the option, the shared decoded backgrounds and the mixer, on real encoded files."""

from __future__ import annotations

import gc
import os
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from activecall.config import AmbianceOption
from activecall.media.ambiance import Ambiance, BackgroundCache, ambiance_option
from activecall.media.codec import FRAME_SAMPLES
from activecall.media.playback import PlaybackError

Pcm = npt.NDArray[np.int16]


def write_audio(path: Path, codec: str, rate: int, channels: list[Pcm]) -> Path:
    """Encode planar int16 channels with PyAV into ``path`` (container from the suffix)."""
    layout = "stereo" if len(channels) == 2 else "mono"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.audio.stream.AudioStream)
        frame = av.AudioFrame.from_ndarray(np.stack(channels), format="s16p", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def room_tone(seconds: float, rate: int, seed: int = 1) -> Pcm:
    """Office-like background: low-passed noise plus a 120 Hz hum, about -20 dBFS."""
    n = int(seconds * rate)
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.normal(0, 6000, n), np.ones(8) / 8, mode="same")
    hum = 1500 * np.sin(2 * np.pi * 120 * np.arange(n) / rate)
    tone: Pcm = np.clip(np.rint(noise + hum), -32768, 32767).astype(np.int16)
    return tone


@pytest.fixture(scope="module")
def office_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of stereo room tone as a 44.1 kHz MP3 (decoded and resampled like ``play``)."""
    folder = tmp_path_factory.mktemp("ambiance")
    left, right = room_tone(3, 44100, 1), room_tone(3, 44100, 2)
    return write_audio(folder / "office.mp3", "mp3", 44100, [left, right])


@pytest.fixture(scope="module")
def office(office_mp3: Path) -> Pcm:
    return BackgroundCache().load(str(office_mp3)).copy()


def rms(x: npt.NDArray[Any]) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def frames(amb: Ambiance, n: int, agent: Pcm | None = None, *, active: bool = False) -> Pcm:
    """``n`` mixed frames; ``agent`` (a multiple of 320 samples) is cut into the frames."""
    out = []
    for i in range(n):
        part = None if agent is None else agent[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        out.append(amb.mix(part, active))
    return np.concatenate(out)


def background_at(bg: Pcm, start: int, n: int) -> npt.NDArray[np.float64]:
    return np.take(bg, np.arange(start, start + n), mode="wrap").astype(np.float64)


# --------------------------------------------------------------------------- levels


def test_idle_background_plays_at_normal_level(office: Pcm) -> None:
    amb = Ambiance(office)  # upstream defaults: normal 0.3, duck 0.1, 0.01 a frame
    out = frames(amb, 100)  # 2 s
    want = background_at(office, 0, len(out))
    assert rms(out) == pytest.approx(0.3 * rms(want), rel=0.01)
    assert np.max(np.abs(out - 0.3 * want)) <= 1  # rounding only
    assert amb.level == 0.3


def test_background_under_speech_is_at_duck_level(office: Pcm, speech_16k: Pcm) -> None:
    amb = Ambiance(office)
    frames(amb, 10)
    speech = speech_16k[16000 : 16000 + 150 * FRAME_SAMPLES]  # 3 s of piper speech
    start = amb.position
    out = frames(amb, 150, speech, active=True)
    under = out.astype(np.float64) - speech  # what the mixer added under the agent
    want = background_at(office, start, len(out))
    ramp = 20 * FRAME_SAMPLES  # 0.3 → 0.1 at 0.01 a frame: 20 frames, 400 ms
    assert amb.level == pytest.approx(0.1)
    assert rms(under[ramp:]) == pytest.approx(0.1 * rms(want[ramp:]), rel=0.01)
    assert rms(under[:FRAME_SAMPLES]) > 0.28 * rms(want[:FRAME_SAMPLES])  # ramps, no drop
    # back to normal when the agent stops, at the same speed
    back = frames(amb, 25)
    assert amb.level == pytest.approx(0.3)
    tail = background_at(office, amb.position - 5 * FRAME_SAMPLES, 5 * FRAME_SAMPLES)
    assert rms(back[-5 * FRAME_SAMPLES :]) == pytest.approx(0.3 * rms(tail), rel=0.01)


@pytest.mark.parametrize("speed", [0.01, 0.05, 0.2])
def test_no_sample_jump_at_a_duck_transition(speed: float) -> None:
    # A constant background shows any gain step as a jump: the ramp is sample by sample.
    level = 20000
    amb = Ambiance(np.full(4000, level, np.int16), transition_speed=speed)
    idle = frames(amb, 3)
    ducked = frames(amb, 40, active=True)
    out = np.concatenate([idle, ducked, frames(amb, 40)]).astype(np.int32)
    largest = level * speed / FRAME_SAMPLES + 1  # one ramp step plus rounding
    assert np.max(np.abs(np.diff(out))) <= largest
    assert np.all(np.diff(ducked.astype(np.int32)) <= 0)  # only falls while ducking
    assert ducked[-1] == round(level * 0.1)
    assert out[-1] == round(level * 0.3)


def test_no_click_on_real_audio_at_a_transition(office: Pcm) -> None:
    amb = Ambiance(office, transition_speed=0.1)
    frames(amb, 5)
    start = amb.position
    out = frames(amb, 10, active=True).astype(np.float64)
    bg = background_at(office, start, len(out))
    # each sample is the background times a gain between the two levels, never outside
    assert np.all(np.abs(out) <= np.abs(bg) * 0.3 + 1)
    assert np.max(np.abs(np.diff(out))) <= 0.3 * np.max(np.abs(np.diff(bg))) + 2


def test_agent_and_background_saturate_instead_of_wrapping() -> None:
    amb = Ambiance(np.full(640, 30000, np.int16), normal_level=1.0, duck_level=1.0)
    loud = np.full(FRAME_SAMPLES, 30000, np.int16)
    assert np.all(amb.mix(loud, True) == 32767)
    assert np.all(amb.mix(-loud, True) == 0)
    amb = Ambiance(np.full(640, -30000, np.int16), normal_level=1.0, duck_level=1.0)
    assert np.all(amb.mix(-loud, True) == -32768)


def test_other_frame_lengths_are_mixed_whole() -> None:
    amb = Ambiance(np.full(1000, 1000, np.int16), transition_speed=0.2)
    out = amb.mix(np.zeros(160, np.int16), True)  # 10 ms (an 8 kHz frame's length)
    assert len(out) == 160 and out[0] < 300 and out[-1] == 100
    assert amb.position == 160


# --------------------------------------------------------------------------- the loop


def test_loops_at_the_file_end_without_a_gap(tmp_path: Path) -> None:
    # 0.23 s: the file's end falls inside a frame
    path = write_audio(tmp_path / "loop.flac", "flac", 16000, [room_tone(0.23, 16000)])
    bg = BackgroundCache().load(str(path))
    assert len(bg) == 3680
    amb = Ambiance(bg, normal_level=1.0)
    out = frames(amb, 50)  # 1 s: four and a bit loops
    np.testing.assert_array_equal(out, np.resize(bg, len(out)))
    assert amb.position == len(out) % len(bg)


def test_a_background_shorter_than_a_frame_wraps_within_it() -> None:
    bg = np.arange(1, 101, dtype=np.int16) * 100
    amb = Ambiance(bg, normal_level=1.0)
    out = frames(amb, 3)
    np.testing.assert_array_equal(out, np.resize(bg, 960))


# --------------------------------------------------------------------------- the shared cache


def test_calls_with_the_same_file_share_one_copy(office_mp3: Path) -> None:
    cache = BackgroundCache()
    first = cache.load(str(office_mp3))
    second = cache.load(str(office_mp3))
    assert second is first and len(cache) == 1
    assert not first.flags.writeable  # no call can change another call's background
    a, b = Ambiance(first), Ambiance(second)
    a.mix(None, False)
    assert b.position == 0  # each call has its own position in the shared loop
    del first, second, a, b
    gc.collect()
    assert len(cache) == 0  # freed with the last call that played it


def test_concurrent_loads_decode_once(office_mp3: Path) -> None:
    cache = BackgroundCache()
    barrier = threading.Barrier(4)

    def load(_: int) -> Pcm:
        barrier.wait()
        return cache.load(str(office_mp3))

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(load, range(4)))
    assert all(pcm is got[0] for pcm in got)


def test_a_changed_file_is_decoded_again(tmp_path: Path) -> None:
    cache = BackgroundCache()
    path = write_audio(tmp_path / "bg.wav", "pcm_s16le", 16000, [np.full(800, 5, np.int16)])
    old = cache.load(str(path))
    write_audio(path, "pcm_s16le", 16000, [np.full(1600, 7, np.int16)])
    os.utime(path, ns=(0, 10**18))  # a later mtime even on a coarse clock
    new = cache.load(str(path))
    assert len(old) == 800 and len(new) == 1600 and new[0] == 7


def test_the_media_cache_keeps_the_decoded_pcm(office_mp3: Path, tmp_path: Path) -> None:
    BackgroundCache().load(str(office_mp3), cache_dir=tmp_path / "mc")
    assert len(list((tmp_path / "mc").glob("*.pcm"))) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no such file"),
        (b"not audio at all" * 64, "not audio PyAV can decode"),
    ],
)
def test_a_file_that_cannot_be_played_is_a_clear_error(
    tmp_path: Path, content: bytes | None, words: str
) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    cache = BackgroundCache()
    with pytest.raises(PlaybackError, match=words):
        cache.load(str(path))
    assert len(cache) == 0


def test_an_empty_audio_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as w:  # a valid WAV header, no samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(PlaybackError, match="no audio"):
        BackgroundCache().load(str(path))
    with pytest.raises(ValueError, match="no audio"):
        Ambiance(np.zeros(0, np.int16))


def test_option_merges_the_call_over_the_server_default() -> None:
    default = AmbianceOption(path="office.wav", duck_level=0.2)
    assert ambiance_option(None, None) is None
    assert ambiance_option({}, None) is None  # no path: nothing to play
    assert ambiance_option(None, default) == default
    merged = ambiance_option({"normalLevel": 0.5, "transition_speed": 1}, default)
    assert merged == AmbianceOption(
        path="office.wav", duck_level=0.2, normal_level=0.5, transition_speed=1.0
    )
    assert ambiance_option({"path": "cafe.mp3", "someFutureKey": 1}, default) == AmbianceOption(
        path="cafe.mp3", duck_level=0.2
    )
    assert ambiance_option({"enabled": False}, default) is None
    assert ambiance_option({"path": "a.wav", "enabled": None}, None) == AmbianceOption(path="a.wav")


@pytest.mark.parametrize(
    ("call", "words"),
    [
        ("office.wav", "ambiance must be an object, got a string"),
        ({"path": 3}, "ambiance.path must be a string, got a number"),
        (
            {"path": "a.wav", "duckLevel": "low"},
            "ambiance.duckLevel must be a number, got a string",
        ),
        ({"path": "a.wav", "normalLevel": True}, "normalLevel must be a number, got a boolean"),
        ({"path": "a.wav", "enabled": "yes"}, "ambiance.enabled must be a boolean, got a string"),
        ({"path": "a.wav", "duckLevel": -0.1}, "duckLevel must be a finite number >= 0"),
        ({"path": "a.wav", "normalLevel": float("nan")}, "normalLevel must be a finite number"),
        ({"path": "a.wav", "transitionSpeed": 0}, "transitionSpeed must be a finite number > 0"),
    ],
)
def test_bad_option_values_are_clear_errors(call: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ambiance_option(call, None)
