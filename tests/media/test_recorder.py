"""Call recording: stereo WAV content, header updates while recording, crash repair, paths."""

from __future__ import annotations

import shutil
import struct
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from activecall._native.resample import Resampler
from activecall.media import recorder as recorder_module
from activecall.media.recorder import WavRecorder, recording_path, repair_wav, safe_file_name

Pcm = npt.NDArray[np.int16]
FRAME = 320


def sine(n: int, freq: float, amplitude: float = 8000.0, rate: int = 16000) -> Pcm:
    return np.round(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


def read_wav(path: Path) -> tuple[wave._wave_params, Pcm]:
    with wave.open(str(path), "rb") as w:
        params = w.getparams()
        data = np.frombuffer(w.readframes(params.nframes), dtype="<i2").astype(np.int16)
    return params, data.reshape(-1, params.nchannels)


def header_sizes(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:44]
    return struct.unpack("<I", head[4:8])[0], struct.unpack("<I", head[40:44])[0]


def record(path: Path, caller: Pcm, agent: Pcm) -> WavRecorder:
    rec = WavRecorder(path)
    for i in range(0, len(caller), FRAME):
        rec.write(caller[i : i + FRAME], agent[i : i + FRAME])
    return rec


def test_stereo_caller_left_agent_right(tmp_path: Path) -> None:
    caller, agent = sine(32000, 440), sine(32000, 1000, 3000)
    path = tmp_path / "rec" / "call.wav"
    record(path, caller, agent).close()
    params, data = read_wav(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 16000)
    assert params.nframes == 32000
    np.testing.assert_array_equal(data[:, 0], caller)
    np.testing.assert_array_equal(data[:, 1], agent)
    assert header_sizes(path) == (36 + 32000 * 4, 32000 * 4)


def test_pyav_reads_the_recording(tmp_path: Path) -> None:
    caller, agent = sine(16000, 440), sine(16000, 1000)
    path = tmp_path / "call.wav"
    record(path, caller, agent).close()
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels) == (16000, 2)
        frames = [f.to_ndarray() for f in container.decode(stream)]
    samples = np.concatenate([f.reshape(-1, 2) for f in frames])  # packed s16
    np.testing.assert_array_equal(samples[:, 0], caller)
    np.testing.assert_array_equal(samples[:, 1], agent)


def test_none_is_silence_on_that_side(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    voice = sine(FRAME, 440)
    with WavRecorder(path) as rec:
        rec.write(voice, None)
        rec.write(None, voice)
        rec.write(None, None)  # a tick with nobody talking still takes 20 ms
        rec.write(voice[:100], voice)  # a short side is padded with silence
    _, data = read_wav(path)
    assert len(data) == 4 * FRAME
    np.testing.assert_array_equal(data[:FRAME, 0], voice)
    assert not data[:FRAME, 1].any() and not data[FRAME : 3 * FRAME, 0].any()
    np.testing.assert_array_equal(data[FRAME : 2 * FRAME, 1], voice)
    assert not data[2 * FRAME : 3 * FRAME].any()
    np.testing.assert_array_equal(data[3 * FRAME : 3 * FRAME + 100, 0], voice[:100])
    assert not data[3 * FRAME + 100 :, 0].any()


def test_header_counts_the_audio_at_least_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = WavRecorder(path)
    assert header_sizes(path) == (36, 0)  # valid (empty) from the start
    for tick in range(1, 200):
        rec.write(sine(FRAME, 440), sine(FRAME, 880))
        riff, data = header_sizes(path)
        assert riff == data + 36
        assert data % 4 == 0
        assert data >= (tick * FRAME - 16000) * 4  # at most one second behind
        assert 44 + data <= path.stat().st_size  # never counts bytes the file lacks
    rec.close()
    assert header_sizes(path)[1] == 199 * FRAME * 4


def test_repair_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    caller, agent = sine(60 * FRAME, 440), sine(60 * FRAME, 700)
    rec = record(path, caller, agent)  # 1.2 s written, never closed
    crashed = tmp_path / "crashed.wav"
    shutil.copyfile(path, crashed)
    params, data = read_wav(crashed)  # valid as it is, up to the last header update
    assert params.nframes == 16000
    np.testing.assert_array_equal(data[:, 0], caller[:16000])
    with crashed.open("ab") as f:
        f.write(b"\x01\x02\x03")  # the crash cut a sample frame in half
    frames = repair_wav(crashed)
    assert frames == (crashed.stat().st_size - 44) // 4
    assert frames >= 16000
    params, data = read_wav(crashed)
    assert params.nframes == frames
    np.testing.assert_array_equal(data[:, 0], caller[:frames])
    np.testing.assert_array_equal(data[:, 1], agent[:frames])
    content = crashed.read_bytes()
    assert repair_wav(crashed) == frames  # idempotent
    assert crashed.read_bytes() == content
    rec.close()


def test_repair_of_a_recording_that_never_updated_its_header(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    rec = record(path, sine(10 * FRAME, 440), sine(10 * FRAME, 700))
    rec._file.flush()  # type: ignore[union-attr]  # the OS has the audio, the header says 0
    crashed = tmp_path / "crashed.wav"
    shutil.copyfile(path, crashed)
    assert header_sizes(crashed) == (36, 0)
    assert repair_wav(crashed) == 10 * FRAME
    assert read_wav(crashed)[0].nframes == 10 * FRAME
    rec.close()


def test_repair_leaves_a_good_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    record(path, sine(3 * FRAME, 440), sine(3 * FRAME, 700)).close()
    content = path.read_bytes()
    assert repair_wav(path) == 3 * FRAME
    assert path.read_bytes() == content


def test_repair_reads_other_wav_layouts(tmp_path: Path) -> None:
    path = tmp_path / "mono8.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(sine(1000, 440, rate=8000).tobytes())
    assert repair_wav(path) == 1000


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world, not a wav file at all", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"RIFF....AVI "],
)
def test_repair_rejects_a_non_wav_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a WAV file"):
        repair_wav(path)
    assert path.read_bytes() == content


def test_recording_at_another_rate_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "call8k.wav"
    caller = sine(50 * FRAME, 440)
    with WavRecorder(path, sample_rate=8000) as rec:
        for i in range(0, len(caller), FRAME):
            rec.write(caller[i : i + FRAME], None)
    params, data = read_wav(path)
    assert (params.framerate, params.nframes) == (8000, 8000)
    r = Resampler(16000, 8000)
    np.testing.assert_array_equal(data[:, 0], np.concatenate([r.process(caller), r.flush()]))
    assert not data[:, 1].any()


def test_closed_recorder(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "a.wav")
    rec.close()
    rec.close()
    assert rec.closed
    with pytest.raises(ValueError, match="closed"):
        rec.write(None, None)


def test_audio_past_the_wav_size_limit_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "_MAX_DATA", 1000 * 4)
    path = tmp_path / "a.wav"
    with WavRecorder(path) as rec:
        for _ in range(5):
            rec.write(sine(FRAME, 440), None)
        assert rec.frames == 1000
    assert read_wav(path)[0].nframes == 1000


def test_recording_path(tmp_path: Path) -> None:
    base = tmp_path / "recordings"
    assert recording_path("", "s.abc", base) == base / "s.abc.wav"
    assert recording_path("{id}.wav", "s.abc", base) == base / "s.abc.wav"
    assert recording_path("calls/{id}-in", "s.abc", base) == base / "calls" / "s.abc-in.wav"
    assert recording_path("/var/rec/{id}.WAV", "x", base) == Path("/var/rec/x.WAV")
    assert recording_path("{id}.wav", "../../etc/passwd", base) == base / ".._.._etc_passwd.wav"


def test_safe_file_name() -> None:
    assert safe_file_name("abc-DEF_1.2@host") == "abc-DEF_1.2@host"
    assert safe_file_name("a/b\\c d") == "a_b_c_d"
    assert safe_file_name("..") == "_"
    assert safe_file_name("") == "_"
