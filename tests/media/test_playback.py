"""Playback: files and URLs decoded to 16 kHz, the PCM cache, and the track's frames and states."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from activecall._native.resample import Resampler
from activecall.media import playback
from activecall.media.codec import FRAME_SAMPLES
from activecall.media.playback import (
    MediaCache,
    PlaybackError,
    PlaybackTrack,
    TrackState,
    decode_audio_file,
)
from bench._common import SPEECH_FILE

Pcm = npt.NDArray[np.int16]


def sine(n: int, rate: int, freq: float = 440.0, amplitude: float = 10000.0) -> Pcm:
    return np.round(amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.int16)


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


def peak_hz(pcm: Pcm, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


# --------------------------------------------------------------------------- decoding files


def test_wav_at_16k_decodes_exactly(tmp_path: Path) -> None:
    signal = sine(16000, 16000)
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 16000, [signal])
    np.testing.assert_array_equal(decode_audio_file(str(path)), signal)


def test_stereo_is_the_mean_of_the_channels(tmp_path: Path) -> None:
    left, right = sine(8000, 16000), sine(8000, 16000, freq=1000.0, amplitude=5001.0)
    path = write_audio(tmp_path / "s.wav", "pcm_s16le", 16000, [left, right])
    want = np.rint((left.astype(np.float64) + right) / 2).astype(np.int16)
    np.testing.assert_array_equal(decode_audio_file(str(path)), want)


def test_other_rates_go_through_our_resampler(tmp_path: Path) -> None:
    signal = sine(44100, 44100)
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 44100, [signal, signal])
    r = Resampler(44100, 16000)
    want = np.concatenate([r.process(signal), r.flush()])
    got = decode_audio_file(str(path))
    assert len(got) == 16000
    assert np.max(np.abs(got.astype(np.int32) - want)) <= 1  # float path vs int16 path


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [("mp3", "libmp3lame"), ("ogg", "libopus"), ("opus", "libopus"), ("flac", "flac")],
)
def test_compressed_formats(tmp_path: Path, suffix: str, codec: str) -> None:
    signal = sine(48000, 48000)
    path = write_audio(tmp_path / f"a.{suffix}", codec, 48000, [signal, signal])
    got = decode_audio_file(str(path))
    assert abs(len(got) - 16000) <= 400  # encoder padding, at most 25 ms
    assert peak_hz(got[2000:14000]) == pytest.approx(440, abs=3)
    assert 8000 < np.max(np.abs(got)) < 12000


def test_a_rate_our_resampler_lacks_is_bridged(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 32000, [sine(32000, 32000)])
    got = decode_audio_file(str(path))
    assert abs(len(got) - 16000) <= 16
    assert peak_hz(got[1000:15000]) == pytest.approx(440, abs=3)


def test_the_speech_fixture_decodes_to_its_samples(speech_16k: Pcm) -> None:
    np.testing.assert_array_equal(decode_audio_file(str(SPEECH_FILE)), speech_16k)


@pytest.mark.parametrize("codec", ["pcm_s32le", "pcm_f32le", "pcm_u8"])
def test_sample_formats(tmp_path: Path, codec: str) -> None:
    signal = sine(4000, 16000)
    path = write_audio(tmp_path / "a.wav", codec, 16000, [signal])
    # Writing 8-bit drops the low byte (FFmpeg: x >> 8); reading must give exactly that back.
    want = (signal >> 8) << 8 if codec == "pcm_u8" else signal
    np.testing.assert_array_equal(decode_audio_file(str(path)), want)


def test_duration_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(playback, "MAX_DURATION_S", 0.5)
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 16000, [sine(16000, 16000)])
    with pytest.raises(PlaybackError, match=r"longer than 0\.5 s"):
        decode_audio_file(str(path))


def test_offset_ms(tmp_path: Path) -> None:
    signal = sine(16000, 16000)
    path = str(write_audio(tmp_path / "a.flac", "flac", 16000, [signal]))
    np.testing.assert_array_equal(decode_audio_file(path, offset_ms=250), signal[4000:])
    assert len(decode_audio_file(path, offset_ms=5000)) == 0
    with pytest.raises(ValueError):
        decode_audio_file(path, offset_ms=-1)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybackError, match="no such file"):
        decode_audio_file(str(tmp_path / "nope.wav"))


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(PlaybackError, match="not a file"):
        decode_audio_file(str(tmp_path))


@pytest.mark.parametrize("content", [b"hello, this is not audio\n" * 40, b"", b"RIFF\x00\x00"])
def test_non_audio_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(content)
    with pytest.raises(PlaybackError, match=r"not audio|no audio"):
        decode_audio_file(str(path))


def test_a_file_without_an_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"  # FFmpeg's tty demuxer reads it as video
    path.write_text("just some text\n" * 100)
    with pytest.raises(PlaybackError, match=r"not audio|no audio"):
        decode_audio_file(str(path))


@pytest.mark.parametrize("source", ["ftp://example.com/a.wav", "file:///tmp/a.wav", "s3://b/k"])
def test_unsupported_scheme(source: str) -> None:
    with pytest.raises(PlaybackError, match="unsupported URL scheme"):
        decode_audio_file(source)


# --------------------------------------------------------------------------- URLs


class _Server:
    """A local HTTP server: ``routes`` maps a path to (status, body, send Content-Length)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, bool]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                status, body, with_length = server.routes.get(self.path, (404, b"missing", True))
                self.send_response(status)
                if with_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def wav_bytes(tmp_path: Path) -> bytes:
    return write_audio(tmp_path / "u.wav", "pcm_s16le", 16000, [sine(8000, 16000)]).read_bytes()


def test_http_url(server: _Server, wav_bytes: bytes) -> None:
    server.routes["/a.wav?sig=1"] = (200, wav_bytes, True)
    got = decode_audio_file(server.base + "/a.wav?sig=1")
    np.testing.assert_array_equal(got, sine(8000, 16000))


def test_http_404(server: _Server) -> None:
    with pytest.raises(PlaybackError, match="HTTP 404") as info:
        decode_audio_file(server.base + "/missing.wav?token=secret")
    assert "secret" not in str(info.value)  # query strings can carry credentials


def test_http_body_that_is_not_audio(server: _Server) -> None:
    server.routes["/page"] = (200, b"<html>not audio</html>" * 20, True)
    with pytest.raises(PlaybackError, match=r"not audio|no audio"):
        decode_audio_file(server.base + "/page")


@pytest.mark.parametrize("with_length", [True, False])
def test_http_size_limit(server: _Server, wav_bytes: bytes, with_length: bool) -> None:
    server.routes["/big.wav"] = (200, wav_bytes, with_length)
    with pytest.raises(PlaybackError, match="larger than 1000 bytes"):
        decode_audio_file(server.base + "/big.wav", max_bytes=1000)


def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PlaybackError, match="cannot fetch"):
        decode_audio_file(f"http://127.0.0.1:{port}/a.wav", timeout=2)


def test_http_timeout() -> None:
    with socket.socket() as s:  # accepts connections (backlog) and never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(PlaybackError, match="timed out"):
            decode_audio_file(f"http://127.0.0.1:{s.getsockname()[1]}/a.wav", timeout=0.2)


# --------------------------------------------------------------------------- the cache


def test_url_is_fetched_once_then_served_from_the_cache(
    server: _Server, wav_bytes: bytes, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    url = server.base + "/a.wav"
    server.routes["/a.wav"] = (200, wav_bytes, True)
    first = decode_audio_file(url, cache_dir=cache_dir)
    assert (cache_dir / f"{MediaCache.key_for(url)}.pcm").is_file()
    again = decode_audio_file(url, cache_dir=cache_dir)
    later = decode_audio_file(url, cache_dir=cache_dir, offset_ms=100)
    assert server.requests == ["/a.wav"]
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(later, first[1600:])
    assert list(cache_dir.glob(".*")) == []  # no temporary file left behind


def test_a_local_file_newer_than_its_cache_entry_is_decoded_again(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 16000, [sine(1600, 16000)])
    np.testing.assert_array_equal(
        decode_audio_file(str(path), cache_dir=cache_dir), sine(1600, 16000)
    )
    write_audio(path, "pcm_s16le", 16000, [sine(3200, 16000, freq=1000.0)])
    entry = MediaCache(cache_dir).path(MediaCache.key_for(str(path)))
    os.utime(path, (entry.stat().st_mtime + 10, entry.stat().st_mtime + 10))
    got = decode_audio_file(str(path), cache_dir=cache_dir)
    np.testing.assert_array_equal(got, sine(3200, 16000, freq=1000.0))


def test_an_unusable_cache_does_not_stop_playback(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_bytes(b"")
    path = write_audio(tmp_path / "a.wav", "pcm_s16le", 16000, [sine(1600, 16000)])
    got = decode_audio_file(str(path), cache_dir=not_a_dir)
    np.testing.assert_array_equal(got, sine(1600, 16000))


def test_media_cache_round_trip(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path)
    pcm = np.arange(-500, 500, dtype=np.int16)
    assert cache.load("k") is None
    cache.store("k", pcm)
    np.testing.assert_array_equal(cache.load("k"), pcm)
    np.testing.assert_array_equal(cache.load("k", offset_samples=900), pcm[900:])
    assert cache.path("k").read_bytes() == pcm.astype("<i2").tobytes()


# --------------------------------------------------------------------------- the track


def ramp(n: int) -> Pcm:
    return (np.arange(n) % 30000).astype(np.int16)


def drain(track: PlaybackTrack) -> list[Pcm]:
    frames = []
    while (frame := track.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_frames_then_finished() -> None:
    pcm = ramp(1000)
    track = PlaybackTrack(pcm, play_id="p1")
    assert (track.state, track.duration_ms, track.position_ms) == (TrackState.PLAYING, 62, 0)
    frames = drain(track)
    assert [len(f) for f in frames] == [FRAME_SAMPLES] * 4
    np.testing.assert_array_equal(np.concatenate(frames)[:1000], pcm)
    assert not frames[-1][40:].any()  # the last frame is zero-padded
    assert track.finished and not track.interrupted
    assert track.position_ms == 62
    assert track.next_frame() is None


def test_finished_as_soon_as_the_last_frame_is_handed_out() -> None:
    track = PlaybackTrack(ramp(2 * FRAME_SAMPLES))
    assert track.next_frame() is not None and not track.finished
    assert track.next_frame() is not None and track.finished


def test_an_empty_track_finishes_on_the_first_tick() -> None:
    track = PlaybackTrack()
    assert track.next_frame() is None
    assert track.finished


def test_pause_and_resume() -> None:
    pcm = ramp(5 * FRAME_SAMPLES)
    track = PlaybackTrack(pcm)
    first = track.next_frame()
    track.pause()
    assert track.state is TrackState.PAUSED
    assert [track.next_frame() for _ in range(3)] == [None] * 3
    assert track.position_ms == 20 and not track.finished
    track.resume()
    rest = drain(track)
    assert first is not None
    np.testing.assert_array_equal(np.concatenate([first, *rest]), pcm)
    assert track.finished


def test_append_extends_the_running_track() -> None:
    track = PlaybackTrack(ramp(FRAME_SAMPLES + 100))
    track.next_frame()
    assert track.append(np.full(300, 7, dtype=np.int16))
    assert track.duration_ms == (FRAME_SAMPLES + 400) // 16
    frame = track.next_frame()
    assert frame is not None
    np.testing.assert_array_equal(frame[:100], ramp(FRAME_SAMPLES + 100)[FRAME_SAMPLES:])
    assert (frame[100:] == 7).all()
    assert track.next_frame() is not None and track.finished
    assert not track.append(ramp(10))  # too late: trackEnd is due


def test_streaming_track_waits_for_audio_until_end_input() -> None:
    track = PlaybackTrack(ramp(100), streaming=True)
    assert track.next_frame() is None
    assert track.state is TrackState.PLAYING and not track.finished
    track.append(ramp(300))
    frame = track.next_frame()
    assert frame is not None
    np.testing.assert_array_equal(frame[:100], ramp(100))
    assert track.next_frame() is None and not track.finished
    track.end_input()
    last = track.next_frame()
    assert last is not None and last[:80].tolist() == ramp(300)[220:].tolist()
    assert track.finished


def test_streaming_track_ended_while_dry_finishes_at_once() -> None:
    track = PlaybackTrack(streaming=True)
    assert track.next_frame() is None and not track.finished
    track.end_input()
    assert track.finished


def test_no_track_end_while_paused() -> None:
    track = PlaybackTrack(ramp(FRAME_SAMPLES), streaming=True)
    track.next_frame()
    track.pause()
    track.end_input()
    assert track.state is TrackState.PAUSED and not track.finished
    track.resume()
    assert track.finished


def test_interrupt_immediately() -> None:
    track = PlaybackTrack(ramp(10 * FRAME_SAMPLES), play_id="p")
    track.next_frame()
    track.interrupt()
    assert track.finished and track.interrupted
    assert track.position_ms == 20 and track.duration_ms == 200
    assert track.next_frame() is None
    assert not track.append(ramp(10))


def test_interrupt_with_a_linear_fade() -> None:
    track = PlaybackTrack(np.full(10 * FRAME_SAMPLES, 10000, dtype=np.int16))
    track.next_frame()
    track.interrupt(fade_out_ms=30)  # 480 samples
    assert track.state is TrackState.FADING and track.interrupted
    assert not track.append(ramp(10))
    frames = drain(track)
    assert len(frames) == 2
    faded = np.concatenate(frames)
    n = np.arange(1, 481)
    np.testing.assert_array_equal(faded[:480], np.rint(10000 * (1 - n / 480)).astype(np.int16))
    assert faded[0] == 9979 and faded[479] == 0
    assert not faded[480:].any()
    assert track.finished and track.position_ms == 20 + 30


def test_a_fade_longer_than_the_audio_ends_with_the_audio() -> None:
    track = PlaybackTrack(np.full(400, 1000, dtype=np.int16))
    track.interrupt(fade_out_ms=1000)
    frames = drain(track)
    assert len(frames) == 2 and track.finished
    assert frames[1][79] == np.rint(1000 * (1 - 400 / 16000)) and not frames[1][80:].any()


def test_interrupt_during_a_fade() -> None:
    track = PlaybackTrack(np.full(10 * FRAME_SAMPLES, 10000, dtype=np.int16))
    track.interrupt(fade_out_ms=100)
    first = track.next_frame()
    track.interrupt(fade_out_ms=20)  # the running fade goes on, not restarted
    second = track.next_frame()
    assert first is not None and second is not None
    assert second[0] == np.rint(10000 * (1 - 321 / 1600))
    track.pause()
    assert track.state is TrackState.FADING
    track.interrupt()
    assert track.finished and track.next_frame() is None


def test_interrupt_with_fade_while_paused_stops_at_once() -> None:
    track = PlaybackTrack(ramp(10 * FRAME_SAMPLES))
    track.pause()
    track.interrupt(fade_out_ms=200)
    assert track.finished and track.interrupted


def test_finished_is_final() -> None:
    track = PlaybackTrack(ramp(10))
    drain(track)
    for action in (track.pause, track.resume, track.interrupt, track.end_input):
        action()
        assert track.state is TrackState.FINISHED
    assert not track.interrupted


def test_the_documented_table_is_the_transition_table() -> None:
    doc = playback.__doc__ or ""
    rows = [
        line.split()
        for line in doc.splitlines()
        if line.split()[:1] and line.split()[0] in TrackState.__members__
    ]
    columns = ["pause", "resume", "interrupt(0)", "interrupt(>0)", "drained"]
    documented = {
        (TrackState[row[0]], column): TrackState[cell]
        for row in rows
        for column, cell in zip(columns, row[1:6], strict=True)
    }
    actual = {
        (state, event.value): target
        for state, moves in playback._TRANSITIONS.items()
        for event, target in moves.items()
    }
    assert documented == actual


def test_end_at_plays_on_to_the_sentence_end_then_finishes() -> None:
    pcm = np.arange(5 * FRAME_SAMPLES, dtype=np.int16)
    track = PlaybackTrack(pcm[: 2 * FRAME_SAMPLES], streaming=True)
    track.append(pcm[2 * FRAME_SAMPLES :])
    first = track.next_frame()
    assert first is not None and track.played_samples == FRAME_SAMPLES
    track.end_at(2 * FRAME_SAMPLES + 100)  # inside the third frame
    assert track.interrupted and not track.finished
    second, third = track.next_frame(), track.next_frame()
    assert second is not None and np.array_equal(second, pcm[FRAME_SAMPLES : 2 * FRAME_SAMPLES])
    assert third is not None and np.array_equal(third[:100], pcm[2 * FRAME_SAMPLES :][:100])
    assert not third[100:].any() and track.finished
    assert not track.append(pcm)  # over: nothing more is taken


def test_end_at_a_point_already_played_stops_now() -> None:
    track = PlaybackTrack(np.ones(3 * FRAME_SAMPLES, np.int16))
    track.next_frame()
    track.end_at(10)
    assert track.finished and track.next_frame() is None


def test_reopen_input_keeps_a_streaming_track_waiting() -> None:
    track = PlaybackTrack(np.ones(FRAME_SAMPLES, np.int16), streaming=True)
    track.end_input()
    assert track.reopen_input()
    assert track.next_frame() is not None
    assert track.next_frame() is None and not track.finished  # waiting for more
    track.append(np.ones(FRAME_SAMPLES, np.int16))
    track.end_input()
    assert track.next_frame() is not None and track.finished
    assert not track.reopen_input()
