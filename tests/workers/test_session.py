"""The ``/call`` session logic, driven with real commands, real audio and real media files.

The port below is the worker's side of the interface, run synchronously: a tick is a method
call, blocking work runs at once. The VAD probabilities come from TinySilero itself.
"""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from activecall._native import g711
from activecall._native.silero import VadSession
from activecall.media.codec import CallCodec
from activecall.workers.session import CallSession, CallState, SessionSettings

T0 = 1_700_000_000_000


class Port:
    """Collects what the session sends; its clock moves only when the test says so."""

    def __init__(self) -> None:
        self.now = T0
        self.events: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        self.files: list[tuple[str, str]] = []
        self.ended = False

    def now_ms(self) -> int:
        return self.now

    def emit_text(self, data: bytes) -> None:
        self.events.append(orjson.loads(data))

    def emit_audio(self, data: bytes) -> None:
        self.audio.append(data)

    def end(self) -> None:
        self.ended = True

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def call_soon(self, fn: Callable[[], None]) -> None:
        fn()

    def note_file(self, kind: str, path: str) -> None:
        self.files.append((kind, path))

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]


class Call:
    """A session plus the worker's duties: ticks every 20 ms and the VAD of its chunks."""

    def __init__(self, tmp_path: Path, **kwargs: Any) -> None:
        self.port = Port()
        settings = SessionSettings(
            recording_dir=tmp_path / "rec",
            dump_dir=tmp_path / "dump",
            callrecord_dir=tmp_path / "cdr",
        )
        self.session = CallSession(self.port, "s.test", settings=settings, **kwargs)
        self.vad = VadSession()

    def send(self, command: dict[str, Any] | str) -> None:
        self.session.on_text(command if isinstance(command, str) else json.dumps(command))

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.port.now += 20
            chunks = self.session.vad_chunks()
            if chunks:
                probs = np.array([self.vad.process_chunk(c) for c in chunks], np.float32)
                self.session.on_vad(probs)
            self.session.tick(self.port.now)

    def stream(self, frames: list[bytes]) -> None:
        """Send one frame per tick, as a real-time client does."""
        for frame in frames:
            self.session.on_audio(frame)
            self.tick()


def pcm_frames(pcm: np.ndarray, samples: int = 320) -> list[bytes]:
    return [pcm[i : i + samples].tobytes() for i in range(0, len(pcm), samples)]


def write_wav(path: Path, pcm: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@pytest.fixture
def make_call(tmp_path: Path) -> Iterator[Callable[[], Call]]:
    """Calls that are hung up at the end of the test, so their files are closed."""
    made: list[Call] = []

    def make() -> Call:
        made.append(Call(tmp_path))
        return made[-1]

    yield make
    for c in made:
        c.session.on_close()


@pytest.fixture
def call(make_call: Callable[[], Call]) -> Call:
    return make_call()


def test_invite_answers_with_track_start_then_answer(call: Call) -> None:
    call.send({"command": "invite", "option": {}})
    assert call.port.names() == ["trackStart", "answer"]
    assert call.port.events[0]["trackId"] == "s.test"
    assert call.port.events[1] == {
        "event": "answer",
        "trackId": "s.test",
        "timestamp": T0,
        "sdp": "",
    }
    assert call.session.state is CallState.ANSWERED


@pytest.mark.parametrize(
    ("frame", "command", "words"),
    [
        ("{not json", None, "JSON"),
        ('{"command":"dance"}', "dance", "dance"),
        ('{"command":"play"}', "play", "url"),
        ('{"command":"play","url":7}', "play", "url"),
    ],
)
def test_malformed_command_gets_error_and_call_goes_on(
    call: Call, frame: str, command: str | None, words: str
) -> None:
    call.send({"command": "invite", "option": {}})
    call.send(frame)
    error = call.port.events[-1]
    assert error["event"] == "error"
    assert error["sender"] == "command"
    assert words in error["error"]
    assert error.get("command") == command
    call.send({"command": "history", "speaker": "user", "text": "still here"})
    assert call.port.events[-1]["event"] == "addHistory"


def test_second_invite_and_commands_before_invite_are_errors(call: Call) -> None:
    call.send({"command": "play", "url": "x.wav"})
    assert call.port.of("error")[-1]["command"] == "play"
    call.send({"command": "invite", "option": {}})
    call.send({"command": "invite", "option": {}})
    assert call.port.names()[-1] == "error"
    assert call.port.events[-1]["command"] == "invite"
    assert call.session.state is CallState.ANSWERED


def test_audio_before_invite_is_one_error(call: Call) -> None:
    for _ in range(5):
        call.session.on_audio(b"\x00" * 640)
    assert call.port.names() == ["error"]
    assert call.port.events[0]["sender"] == "audio"


def test_unknown_codec_and_vad_type(call: Call) -> None:
    call.send({"command": "invite", "option": {"codec": "opus"}})
    assert call.port.events[-1]["event"] == "error"
    assert "opus" in call.port.events[-1]["error"]
    call.send({"command": "invite", "option": {"vad": {"type": "ten"}}})
    names = call.port.names()
    assert names[-3:] == ["error", "trackStart", "answer"]
    assert "ten" in call.port.of("error")[-1]["error"]


def vad_segments(port: Port) -> list[tuple[int, int]]:
    return [(e["startTime"], e["duration"]) for e in port.of("silence")]


@pytest.mark.parametrize("codec", ["pcm", "pcmu", "pcma", "g722"])
def test_speech_gives_speaking_and_silence_in_every_codec(
    make_call: Callable[[], Call], speech_16k: np.ndarray, codec: str
) -> None:
    call = make_call()
    call.send({"command": "invite", "option": {"codec": codec, "vad": {}}})
    # The first 8 s: two sentences (0.5-3.4 s and 5.0-7.5 s) and the pauses around them.
    pcm = speech_16k[: 8 * 16000]
    encoder = CallCodec.create(codec).encoder()
    frames = [encoder.encode_frame(f) for f in pcm.reshape(-1, 320)]
    call.stream(frames)
    speaking = call.port.of("speaking")
    segments = vad_segments(call.port)
    assert len(speaking) == len(segments) >= 2
    assert all(s["trackId"] == "s.test" for s in speaking)
    # Start times are epoch ms of the media: within 200 ms of where piper's speech starts.
    starts = [start - T0 for start, _ in segments]
    assert any(abs(s - 500) < 200 for s in starts), starts
    assert any(abs(s - 5044) < 200 for s in starts), starts


def test_play_streams_paced_frames_then_track_end(call: Call, tmp_path: Path) -> None:
    tone = (8000 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.int16)
    wav = write_wav(tmp_path / "tone.wav", tone)
    call.send({"command": "invite", "option": {"codec": "pcmu"}})
    call.send({"command": "play", "url": str(wav), "playId": "p1"})
    start = call.port.of("trackStart")[-1]
    assert start["trackId"] == "server-side-track"
    assert start["playId"] == "p1"
    call.tick(60)
    assert len(call.port.audio) == 50  # 1 s of audio = 50 frames of 20 ms, one per tick
    assert {len(f) for f in call.port.audio} == {160}
    end = call.port.of("trackEnd")
    assert len(end) == 1
    assert end[0]["playId"] == "p1"
    decoded = np.concatenate([g711.decode_ulaw(f) for f in call.port.audio])
    assert np.abs(decoded.astype(float)).mean() > 2000  # the tone, not silence


def test_play_of_missing_or_non_audio_file_is_an_error(call: Call, tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio" * 100)
    call.send({"command": "invite", "option": {}})
    call.send({"command": "play", "url": str(tmp_path / "missing.wav")})
    call.send({"command": "play", "url": str(junk)})
    errors = call.port.of("error")
    assert [e["sender"] for e in errors] == ["play", "play"]
    assert "missing.wav" in errors[0]["error"]
    assert call.session.state is CallState.ANSWERED
    assert call.port.of("trackStart")[-1]["trackId"] == "s.test"  # no playback started


def test_interrupt_with_fade_out(call: Call, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "loud.wav", np.full(32000, 10000, np.int16))
    call.send({"command": "invite", "option": {}})
    call.send({"command": "play", "url": str(wav), "playId": "p"})
    call.tick(10)
    call.send({"command": "interrupt", "fadeOutMs": 100})
    interruption = call.port.of("interruption")[-1]
    assert interruption["playId"] == "p"
    assert interruption["current"] == 200
    assert interruption["totalDuration"] == 2000
    assert not call.port.of("trackEnd")  # still fading
    call.tick(10)
    assert len(call.port.of("trackEnd")) == 1
    fade = np.concatenate([np.frombuffer(f, "<i2") for f in call.port.audio[10:15]])
    assert fade[0] > 9000 and fade[-1] == 0
    assert np.all(np.diff(fade.astype(int)) <= 0)  # a falling ramp
    assert len(call.port.audio) == 15


def test_auto_hangup_after_play(call: Call, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "short.wav", np.zeros(3200, np.int16))
    call.send({"command": "invite", "option": {}})
    call.send({"command": "play", "url": str(wav), "autoHangup": True})
    call.tick(20)
    assert call.port.names()[-2:] == ["trackEnd", "hangup"]
    assert call.port.events[-1]["reason"] == "autohangup"
    assert call.port.ended


def test_wait_input_timeout_gives_silence_on_server_side_track(call: Call, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "short.wav", np.zeros(3200, np.int16))
    call.send({"command": "invite", "option": {}})
    call.send({"command": "play", "url": str(wav), "waitInputTimeout": 300})
    call.tick(30)
    silence = call.port.of("silence")
    assert len(silence) == 1
    assert silence[0]["trackId"] == "server-side-track"
    assert silence[0]["duration"] >= 300


def test_pause_and_resume(call: Call, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "a.wav", np.full(3200, 100, np.int16))
    call.send({"command": "invite", "option": {}})
    call.send({"command": "play", "url": str(wav)})
    call.tick(2)
    call.send({"command": "pause"})
    call.tick(20)
    assert len(call.port.audio) == 2 and not call.port.of("trackEnd")
    call.send({"command": "resume"})
    call.tick(20)
    assert len(call.port.audio) == 10 and len(call.port.of("trackEnd")) == 1


def test_inactivity_timeout(call: Call) -> None:
    call.send({"command": "invite", "option": {"inactivityTimeout": 1}})
    call.tick(49)
    assert "inactivity" not in call.port.names()
    call.tick(2)
    assert call.port.names()[-2:] == ["inactivity", "hangup"]
    assert call.port.events[-1]["reason"] == "inactivityTimeout"


def test_mute_zeroes_caller_audio(call: Call, speech_16k: np.ndarray) -> None:
    call.send({"command": "invite", "option": {"vad": {}}})
    call.send({"command": "mute"})
    call.stream(pcm_frames(speech_16k[: 4 * 16000]))
    assert not call.port.of("speaking")
    call.send({"command": "unmute", "trackId": "s.test"})
    call.stream(pcm_frames(speech_16k[4 * 16000 : 8 * 16000]))
    assert call.port.of("speaking")


def test_history_custom_and_hangup(call: Call) -> None:
    call.send({"command": "invite", "option": {}})
    call.send({"command": "history", "speaker": "user", "text": "hi"})
    call.send({"command": "custom", "sender": "crm", "data": {"k": [1, 2]}})
    call.send({"command": "hangup", "reason": "done"})
    history, custom, hangup = call.port.events[-3:]
    assert history == {
        "event": "addHistory",
        "sender": "s.test",
        "timestamp": T0,
        "speaker": "user",
        "text": "hi",
    }
    assert custom["data"] == {"k": [1, 2]} and custom["sender"] == "crm"
    assert hangup["event"] == "hangup" and hangup["reason"] == "done"
    assert hangup["startTime"].endswith("Z") and "answerTime" in hangup
    assert call.port.ended
    call.send({"command": "history", "speaker": "user", "text": "too late"})
    assert call.port.events[-1] is hangup


def test_client_close_ends_the_call_once(call: Call) -> None:
    call.send({"command": "invite", "option": {}})
    call.session.on_close()
    call.session.on_close()
    assert call.port.names().count("hangup") == 1
    assert call.port.events[-1]["initiator"] == "caller"


def test_recorder_dump_and_call_record(
    make_call: Callable[[], Call], tmp_path: Path, speech_16k: np.ndarray
) -> None:
    call = make_call()
    wav = write_wav(tmp_path / "agent.wav", np.full(8000, 5000, np.int16))
    call.send(
        {
            "command": "invite",
            "option": {"recorder": {"recorderFile": "{id}.wav"}, "extra": {"crm": "42"}},
        }
    )
    assert call.port.files == [("recorder", str(tmp_path / "rec" / "s.test.wav"))]
    call.send({"command": "play", "url": str(wav)})
    call.stream(pcm_frames(speech_16k[16000 : 2 * 16000]))
    call.send({"command": "hangup"})

    with wave.open(str(tmp_path / "rec" / "s.test.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert len(stereo) == 16000
    assert np.array_equal(stereo[:, 0], speech_16k[16000 : 2 * 16000])  # caller left
    assert np.all(stereo[:8000, 1] == 5000) and np.all(stereo[8000:, 1] == 0)  # agent right

    lines = (tmp_path / "dump" / "s.test.events.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds[0] == "command" and "event" in kinds
    assert json.loads(json.loads(lines[-1])["content"])["event"] == "hangup"

    records = list((tmp_path / "cdr").rglob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["callId"] == "s.test" and record["callType"] == "webSocket"
    assert record["extras"] == {"crm": "42"}
    assert record["recorder"][0]["path"].endswith("s.test.wav")
    assert record["hangupReason"] == "caller"


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ({"command": "accept", "option": {}}, "not available on a webSocket call"),
        ({"command": "addIceCandidate", "candidate": "c"}, "not available on a webSocket call"),
    ],
)
def test_commands_this_call_cannot_run_are_errors(
    call: Call, command: dict[str, Any], words: str
) -> None:
    call.send({"command": "invite", "option": {}})
    call.send(command)
    error = call.port.events[-1]
    assert error["event"] == "error" and words in error["error"]
    assert error["command"] == command["command"]
    assert call.session.state is CallState.ANSWERED


def test_denoise_and_agc_on_the_inbound_path(call: Call, speech_16k: np.ndarray) -> None:
    # Speech at -26 dBFS under steady noise: the denoised VAD still finds both sentences.
    rng = np.random.default_rng(7)
    speech = speech_16k[: 8 * 16000].astype(np.float64) * 0.25
    noisy = np.clip(speech + rng.normal(0, 300, len(speech)), -32768, 32767).astype(np.int16)
    option = {"vad": {}, "denoise": True, "agc": {"maxGainDb": 20, "someFutureKey": 1}}
    call.send({"command": "invite", "option": option})
    assert call.session._denoiser is not None and call.session._agc is not None
    call.stream(pcm_frames(noisy))
    assert "error" not in call.port.names()  # the unknown AGC key is ignored (PROTOCOL rule 3)
    assert len(call.port.of("speaking")) == len(call.port.of("silence")) >= 2


def test_a_bad_agc_option_is_an_error_and_the_call_goes_on(
    call: Call, speech_16k: np.ndarray
) -> None:
    call.send({"command": "invite", "option": {"vad": {}, "agc": {"maxGainDb": -3}}})
    errors = call.port.of("error")
    assert len(errors) == 1 and errors[0]["sender"] == "agc" and "maxGainDb" in errors[0]["error"]
    call.stream(pcm_frames(speech_16k[: 4 * 16000]))
    assert call.port.names().count("silence") >= 1


# --------------------------------------------------------------------------- ambiance


def room_tone(seconds: float, seed: int = 3) -> np.ndarray:
    """Office-like background at 16 kHz: low-passed noise plus a 120 Hz hum."""
    n = int(seconds * 16000)
    noise = np.convolve(np.random.default_rng(seed).normal(0, 6000, n), np.ones(8) / 8, "same")
    hum = 1500 * np.sin(2 * np.pi * 120 * np.arange(n) / 16000)
    tone: np.ndarray = np.clip(np.rint(noise + hum), -32768, 32767).astype(np.int16)
    return tone


def pcm_out(audio: list[bytes]) -> np.ndarray:
    return np.concatenate([np.frombuffer(f, "<i2") for f in audio]).astype(np.float64)


def rms_of(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))


def test_ambiance_plays_while_idle_and_ducks_under_play(call: Call, tmp_path: Path) -> None:
    bg = room_tone(1.5)
    office = write_wav(tmp_path / "office.wav", bg)  # a 16 kHz WAV decodes exactly
    tone = (8000 * np.sin(np.arange(32000) * 2 * np.pi * 440 / 16000)).astype(np.int16)
    prompt = write_wav(tmp_path / "prompt.wav", tone)
    option = {"ambiance": {"path": str(office), "duckLevel": 0.1, "normalLevel": 0.3}}
    call.send({"command": "invite", "option": option})
    assert "error" not in call.port.names()
    call.tick(50)  # 1 s, nothing playing: the background alone, at normalLevel
    idle = pcm_out(call.port.audio)
    assert len(idle) == 16000
    assert rms_of(idle) == pytest.approx(0.3 * rms_of(bg[:16000]), rel=0.01)

    call.send({"command": "play", "url": str(prompt), "playId": "p"})
    call.tick(100)  # the 2 s prompt
    assert len(call.port.of("trackEnd")) == 1
    during = pcm_out(call.port.audio[50:150])
    under = during - tone  # what was mixed under the agent
    loop = np.resize(bg, 16000 + len(tone))[16000:].astype(np.float64)
    settled = 20 * 320  # 0.3 → 0.1 at the default 0.01 a frame takes 20 frames
    assert rms_of(under[settled:]) == pytest.approx(0.1 * rms_of(loop[settled:]), rel=0.01)
    assert np.max(np.abs(under[settled:] - 0.1 * loop[settled:])) <= 1
    call.tick(50)  # after the prompt: back up to normalLevel
    after = pcm_out(call.port.audio[175:200])
    assert rms_of(after) > 0.25 * rms_of(bg)


def test_ambiance_stops_at_hangup_and_is_in_the_recording(
    make_call: Callable[[], Call], tmp_path: Path
) -> None:
    call = make_call()
    bg = room_tone(0.5)
    office = write_wav(tmp_path / "office.wav", bg)
    option = {
        "ambiance": {"path": str(office), "normalLevel": 1.0},
        "recorder": {"recorderFile": "{id}.wav"},
    }
    call.send({"command": "invite", "option": option})
    call.tick(25)
    call.send({"command": "hangup"})
    sent = len(call.port.audio)
    call.tick(10)
    assert sent == 25 and len(call.port.audio) == sent  # nothing after the hangup
    with wave.open(str(tmp_path / "rec" / "s.test.wav")) as w:
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    # the agent channel holds what the caller heard: the background, looped
    np.testing.assert_array_equal(stereo[:, 1], np.resize(bg, len(stereo)))


def test_server_ambiance_applies_unless_the_call_turns_it_off(tmp_path: Path) -> None:
    from activecall.config import AmbianceOption

    office = write_wav(tmp_path / "office.wav", room_tone(0.5))
    settings = SessionSettings(
        dump_dir=tmp_path, ambiance=AmbianceOption(path=str(office), normal_level=0.5)
    )
    sent = {}
    for name, option in [("server", {}), ("off", {"ambiance": {"enabled": False}})]:
        port = Port()
        session = CallSession(port, name, dump=False, settings=settings)
        session.on_text(json.dumps({"command": "invite", "option": option}))
        for _ in range(10):
            port.now += 20
            session.tick(port.now)
        sent[name] = port.audio
        session.on_close()
    assert len(sent["server"]) == 10 and rms_of(pcm_out(sent["server"])) > 500
    assert sent["off"] == []


@pytest.mark.parametrize(
    ("ambiance", "words"),
    [
        ({"path": "missing.wav"}, "missing.wav: no ambiance for this call"),
        ({"path": "junk"}, "not audio PyAV can decode"),
        ({"path": "x.wav", "duckLevel": "low"}, "ambiance.duckLevel must be a number"),
        ({"path": "x.wav", "transitionSpeed": -1}, "ambiance.transitionSpeed must be"),
    ],
)
def test_a_bad_ambiance_is_an_error_and_the_call_goes_on(
    call: Call, tmp_path: Path, ambiance: dict[str, Any], words: str
) -> None:
    (tmp_path / "junk").write_bytes(b"not audio" * 100)
    if ambiance["path"] != "x.wav":
        ambiance = {**ambiance, "path": str(tmp_path / ambiance["path"])}
    call.send({"command": "invite", "option": {"ambiance": ambiance}})
    assert call.port.names() == ["trackStart", "answer", "error"]
    error = call.port.events[-1]
    assert error["sender"] == "ambiance" and words in error["error"]
    call.tick(5)
    assert call.port.audio == []  # no background, and the call is up
    prompt = write_wav(tmp_path / "p.wav", np.full(1600, 3000, np.int16))
    call.send({"command": "play", "url": str(prompt)})
    call.tick(10)
    assert len(call.port.audio) == 5 and call.session.state is CallState.ANSWERED


def test_a_streaming_agent_track_keeps_the_background_ducked_between_chunks(
    call: Call, tmp_path: Path
) -> None:
    office = write_wav(tmp_path / "office.wav", np.full(8000, 10000, np.int16))
    call.send({"command": "invite", "option": {"ambiance": {"path": str(office)}}})
    call.tick(5)
    track = call.session.agent_track("turn", create=True)  # as streaming TTS and realtime do
    assert track is not None
    track.append(np.zeros(3200, np.int16))  # a 200 ms sentence, then the next is late
    call.tick(40)
    out = pcm_out(call.port.audio)
    assert out[5 * 320 - 1] == 3000  # normalLevel 0.3 before the agent
    assert np.all(out[25 * 320 :] == 1000)  # still at duckLevel 0.1 while the track waits
    call.send({"command": "pause"})  # paused: the agent is silent, the background comes back
    call.tick(30)
    assert pcm_out(call.port.audio)[-1] == 3000


def test_playbook_front_matter_ambiance_reaches_the_call(call: Call, tmp_path: Path) -> None:
    from activecall.playbook.call import merge_option
    from activecall.playbook.parser import parse_playbook

    office = write_wav(tmp_path / "office.wav", np.full(8000, 10000, np.int16))
    playbook = parse_playbook(
        "---\n"
        f"ambiance: {{path: '{office}', normalLevel: 0.5, duckLevel: 0.2}}\n"
        "llm: {model: m}\n"
        "---\n"
        "You are a receptionist.\n"
    )
    # what a playbook call sends: the client's option over the playbook's, key by key
    option = merge_option(playbook.option, {"ambiance": {"normalLevel": 0.4}})
    call.send({"command": "invite", "option": option})
    call.tick(3)
    assert pcm_out(call.port.audio)[-1] == 4000


def test_muting_the_server_side_track_silences_the_ambiance(call: Call, tmp_path: Path) -> None:
    office = write_wav(tmp_path / "office.wav", np.full(8000, 10000, np.int16))
    call.send({"command": "invite", "option": {"ambiance": {"path": str(office)}}})
    call.tick(3)
    call.send({"command": "mute", "trackId": "server-side-track"})
    call.tick(5)
    assert len(call.port.audio) == 3  # the background is part of the muted track
    call.send({"command": "unmute", "trackId": "server-side-track"})
    call.tick(2)
    assert len(call.port.audio) == 5 and pcm_out(call.port.audio)[-1] == 3000


def keypad(keys: str, on_ms: int = 80, off_ms: int = 80) -> np.ndarray:
    """The keys as in-band DTMF tones (-10 dBm0 a tone) at 16 kHz, a gap after each."""
    from activecall._native.dtmf import FREQUENCIES, KEYS

    amp = 32636 / 10 ** (3.17 / 20) * 10 ** (-10 / 20)
    parts = [np.zeros(16000 * off_ms // 1000)]
    for key in keys:
        i = KEYS.index(key)
        t = np.arange(16000 * on_ms // 1000) / 16000
        row, col = FREQUENCIES[i // 4], FREQUENCIES[4 + i % 4]
        parts += [amp * (np.sin(2 * np.pi * row * t) + np.sin(2 * np.pi * col * t))]
        parts += [np.zeros(16000 * off_ms // 1000)]
    return np.concatenate(parts).astype(np.int16)


def test_keypad_tones_in_the_caller_audio_are_dtmf_events(
    call: Call, speech_16k: np.ndarray
) -> None:
    """In-band DTMF on /call: each press once (a repeated key too), none from speech or
    while the caller is muted."""
    call.send({"command": "invite", "option": {}})
    call.stream(pcm_frames(speech_16k[: 3 * 16000]))
    assert not call.port.of("dtmf")
    call.stream(pcm_frames(keypad("1#33*")))
    assert [e["digit"] for e in call.port.of("dtmf")] == ["1", "#", "3", "3", "*"]
    assert {e["trackId"] for e in call.port.of("dtmf")} == {"s.test"}
    call.send({"command": "mute"})
    call.stream(pcm_frames(keypad("9")))
    assert len(call.port.of("dtmf")) == 5
