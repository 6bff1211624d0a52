"""One WebSocket-audio call (``/call``) inside the worker that owns it.

The session is driven from outside and owns no sockets, no timers and no clock: the worker
hands it the client's text and binary frames, one :meth:`CallSession.tick` every 20 ms with
the time, and the VAD probabilities of the chunks it asked for (the worker evaluates every
session's chunks in one batched call per tick). It answers through its :class:`SessionPort`:
events as JSON text, agent audio as frames in the call's codec.

Call states, in one place:

==========  ==================  ==================  ==========================================
state       invite              other command        audio in
==========  ==================  ==================  ==========================================
CREATED     → ANSWERED          ``error``            ``error`` (once), dropped
ANSWERED    ``error``           handled              decoded → recorder, VAD
ENDED       ignored             ignored              ignored
==========  ==================  ==================  ==========================================

``hangup`` (command, ``autoHangup``, inactivity, client gone, kill) sends the ``hangup``
event from any live state, closes the recorder and the dump, writes the call record, and
tells the port the session is over.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import importlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from activecall._native.dtmf import DtmfDetector
from activecall.config import AmbianceOption
from activecall.media.ambiance import BACKGROUNDS, Ambiance, ambiance_option
from activecall.media.codec import FRAME_SAMPLES, INTERNAL_RATE, CallCodec, Pcm, Reframer
from activecall.media.dump import (
    CallRecord,
    EventDump,
    RecorderMedia,
    rfc3339,
    write_call_record,
)
from activecall.media.enhance import (
    AGC_KEYS,
    Denoiser,
    GainControl,
    make_denoiser,
    make_gain_control,
)
from activecall.media.playback import (
    MediaCache,
    PlaybackError,
    PlaybackTrack,
    TrackState,
    decode_audio_file,
)
from activecall.media.recorder import WavRecorder, recording_path, safe_file_name
from activecall.media.vad import Silence, Speaking, VadOption, VadProcessor
from activecall.protocol import (
    AddHistoryEvent,
    AnswerEvent,
    CallOption,
    Command,
    CommandError,
    CustomCommand,
    CustomEvent,
    DtmfEvent,
    ErrorEvent,
    Event,
    HangupCommand,
    HangupEvent,
    HistoryCommand,
    InactivityEvent,
    InterruptCommand,
    InterruptionEvent,
    InviteCommand,
    MuteCommand,
    PauseCommand,
    PlayCommand,
    ReferCommand,
    ResumeCommand,
    SilenceEvent,
    SpeakingEvent,
    TrackEndEvent,
    TrackStartEvent,
    TtsCommand,
    UnmuteCommand,
    error_event_for,
    parse_command,
)
from activecall.protocol.options import encode as encode_option
from activecall.workers import control
from activecall.workers.realtime_call import RealtimeAgent
from activecall.workers.voice import Recognizer, SpeechTrack

if TYPE_CHECKING:
    from activecall.workers.refer_leg import ReferLeg, ReferParties

__all__ = ["CallSession", "CallState", "SessionPort", "SessionSettings", "session_factory"]

log = logging.getLogger(__name__)

VAD_CHUNK = 512
CHUNK_MS = VAD_CHUNK * 1000 // INTERNAL_RATE
DEFAULT_INACTIVITY_S = 50
# Commands of SIP and WebRTC calls, and those that need a second call (bridge).
_NOT_ON_WEBSOCKET = {
    "accept",
    "reject",
    "ringing",
    "message",
    "addIceCandidate",
    "sendDtmf",
    "bridge",
    "unbridge",
}


class CallState(enum.Enum):
    """Where a call is in its life (the table in the module docstring)."""

    CREATED = "created"
    ANSWERED = "answered"
    ENDED = "ended"


class SessionPort(Protocol):
    """What the worker gives a session: its way out and its means of blocking work."""

    def now_ms(self) -> int:
        """Wall clock, epoch milliseconds."""
        ...

    def emit_text(self, data: bytes) -> None:
        """Send one event (JSON) to the client."""
        ...

    def emit_audio(self, data: bytes) -> None:
        """Send one frame of agent audio, in the call's codec, to the client."""
        ...

    def end(self) -> None:
        """The session is over; everything it emitted has been handed over."""
        ...

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` off the event loop (thread pool)."""
        ...

    def note_file(self, kind: str, path: str) -> None:
        """A file this call writes (``recorder``): repaired by the supervisor if we crash."""
        ...

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` on the worker's loop (providers)."""
        ...

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker's loop (used to come back from ``run_blocking``)."""
        ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Server-wide settings a session needs (from :class:`activecall.config.Config`)."""

    recording_dir: Path = Path("./config/recorders")
    dump_dir: Path = Path("./config/recorders")
    media_cache_dir: Path | None = None
    callrecord_dir: Path | None = None
    ice_servers: tuple[Mapping[str, Any], ...] = ()
    """ICE servers of WebRTC calls' peers (``[[ice_servers]]``; none: host candidates)."""
    ambiance: AmbianceOption | None = None
    """``[ambiance]``: the background of calls whose option has none (merged field by field)."""


@dataclass(slots=True)
class _Playing:
    """The server-side track's current item."""

    track: PlaybackTrack
    play_id: str | None
    auto_hangup: bool
    wait_input_ms: int | None
    started_ms: int
    speech: SpeechTrack | None = None  # what feeds a TTS track
    interrupted: bool = False  # its ``interruption`` was sent (a graceful end may follow)


@dataclass(slots=True)
class _Timers:
    last_audio_ms: int
    wait_input_since: int | None = None
    wait_input_ms: int = 0


@dataclass(slots=True)
class _Vad:
    processor: VadProcessor
    reframer: Reframer = field(default_factory=lambda: Reframer(VAD_CHUNK))
    first_audio_ms: int | None = None
    chunks_done: int = 0
    pending: list[Pcm] = field(default_factory=list)
    events: bool = True  # False: it runs only to end ASR utterances (``asr`` without ``vad``)


class CallSession:
    """A ``/call`` session: commands, audio in and out, VAD, playback, recording."""

    INBAND_DTMF = True
    """Detect keypad tones in the caller's audio (``dtmf`` events); RTP calls do it in their
    media pipeline instead."""

    def __init__(
        self,
        port: SessionPort,
        session_id: str,
        *,
        call_type: str = "webSocket",
        server_side_track: str = "server-side-track",
        dump: bool = True,
        settings: SessionSettings | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.port = port
        self.params: Mapping[str, Any] = params or {}
        """The open record's params (query params; a SIP call's signalling details)."""
        self.id = session_id
        self.call_type = call_type
        self.server_side_track = server_side_track
        self.settings = settings or SessionSettings()
        self.state = CallState.CREATED
        self.option: CallOption | None = None
        now = port.now_ms()
        self._start = _utc(now)
        self._answer: datetime | None = None
        self._timers = _Timers(last_audio_ms=now)
        self._inactivity_ms = DEFAULT_INACTIVITY_S * 1000
        self._decoder: Any = None
        self._encoder: Any = None
        self._caller_frames = Reframer(FRAME_SAMPLES)
        self._caller_pending: list[Pcm] = []  # 20 ms caller frames not yet recorded
        self._vad: _Vad | None = None
        self._recorder: WavRecorder | None = None
        self._playing: _Playing | None = None
        self._recognizer: Recognizer | None = None
        self._realtime: RealtimeAgent | None = None
        self._inviting = False
        self._invite_option: CallOption | None = None
        self._denoiser: Denoiser | None = None
        self._agc: GainControl | None = None
        self._speech_probability: float | None = None
        self._track_started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loading = 0  # generation of the newest play request, to drop stale decodes
        self._caller_muted = False
        self._agent_muted = False
        self._refer: ReferLeg | None = None  # the transfer leg (kept once over, for the CDR)
        self._refer_moh = 0  # generation of the newest refer, to drop a stale MOH decode
        self._warned_early_audio = False
        self._ambiance: Ambiance | None = None
        # Keypad tones in the caller's audio (RTP calls detect them in their media pipeline).
        self._inband_dtmf = DtmfDetector(INTERNAL_RATE) if self.INBAND_DTMF else None
        self._dump = (
            EventDump(self.settings.dump_dir / f"{safe_file_name(session_id)}.events.jsonl")
            if dump
            else None
        )

    # ------------------------------------------------------------------ input from the client

    def on_text(self, data: bytes | str) -> None:
        """One text frame from the client: a JSON command."""
        if self.state is CallState.ENDED:
            return
        if self._dump is not None:
            self._dump.command(data, self.port.now_ms())
        try:
            command = parse_command(data)
        except CommandError as exc:
            self._emit(error_event_for(exc, self.id, self.port.now_ms()))
            return
        try:
            self._handle(command)
        except CommandError as exc:
            self._emit(error_event_for(exc, self.id, self.port.now_ms()))

    def on_audio(self, data: bytes) -> None:
        """One binary frame from the client: caller audio in the call's codec."""
        if self.state is not CallState.ANSWERED:
            if self.state is CallState.CREATED and not self._warned_early_audio:
                self._warned_early_audio = True
                self._error("audio", "audio received before invite: dropped until the call starts")
            return
        self.caller_audio(self._decoder.decode(data))

    def caller_audio(self, pcm: Pcm) -> None:
        """Caller audio at 16 kHz, from whichever transport the call has.

        In order: mute → recorder (what the caller said) → denoise → VAD → AGC → ASR.
        """
        if self.state is not CallState.ANSWERED:
            return
        now = self.port.now_ms()
        self._timers.last_audio_ms = now
        if self._caller_muted:
            pcm = np.zeros_like(pcm)
        elif self._inband_dtmf is not None:
            for digit, _ in self._inband_dtmf.process(pcm):
                self._emit(DtmfEvent(track_id=self.id, timestamp=now, digit=digit))
        if self._refer is not None and self._refer.answered:
            self._refer.caller_audio(pcm)
        vad = self._vad
        if vad is not None and vad.first_audio_ms is None:
            vad.first_audio_ms = now
        if self._recorder is None and self._denoiser is None and self._agc is None:
            # the common path: no 20 ms framing needed
            if vad is not None:
                vad.pending.extend(vad.reframer.push(pcm))
            if self._recognizer is not None:
                self._recognizer.push(pcm)
            if self._realtime is not None:
                self._realtime.push(pcm)
            return
        for frame in self._caller_frames.push(pcm):
            if self._recorder is not None:
                self._caller_pending.append(frame)
            if self._denoiser is not None:
                frame = self._denoiser.process(frame)
            if vad is not None:
                vad.pending.extend(vad.reframer.push(frame))
            if self._agc is not None:
                frame = self._agc.process(frame, self._speech_probability)
            if self._recognizer is not None:
                self._recognizer.push(frame)
            if self._realtime is not None:
                self._realtime.push(frame)

    def on_close(self, reason: str = "caller") -> None:
        """The call's connection is gone: ``caller`` (the client left) or ``system`` (shutdown)."""
        self.hangup(reason=reason, initiator="caller" if reason == "caller" else "system")

    def on_kill(self) -> None:
        """``GET /kill/{id}``: the server ends the call."""
        self.hangup(reason="killed", initiator="system")

    # ------------------------------------------------------------------ the worker's tick

    def vad_chunks(self) -> list[Pcm]:
        """Take the 512-sample chunks waiting for the batched VAD call of this tick."""
        vad = self._vad
        if vad is None or not vad.pending:
            return []
        chunks, vad.pending = vad.pending, []
        return chunks

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        """The speech probabilities of the chunks :meth:`vad_chunks` handed out, in order."""
        vad = self._vad
        if vad is None or vad.first_audio_ms is None or self.state is not CallState.ANSWERED:
            return
        if len(probabilities):
            self._speech_probability = float(probabilities[-1])
        for p in probabilities:
            ts = vad.first_audio_ms + vad.chunks_done * CHUNK_MS
            vad.chunks_done += 1
            for ev in vad.processor.process(float(p), ts):
                now = self.port.now_ms()
                if isinstance(ev, Speaking):
                    self._timers.wait_input_since = None
                    if not vad.events:
                        continue
                    self._emit(
                        SpeakingEvent(
                            track_id=self.id,
                            timestamp=now,
                            start_time=ev.start_time,
                            confidence=1.0,
                        )
                    )
                elif isinstance(ev, Silence):
                    if self._recognizer is not None:
                        self._recognizer.end_utterance()
                    if not vad.events:
                        continue
                    self._emit(
                        SilenceEvent(
                            track_id=self.id,
                            timestamp=now,
                            start_time=ev.start_time,
                            duration=ev.duration,
                        )
                    )

    def tick(self, now_ms: int) -> None:
        """Every 20 ms: one frame of agent audio out, the recorder, the timers."""
        if self.state is not CallState.ANSWERED:
            return
        self._pull_media(now_ms)
        if self.state is not CallState.ANSWERED:
            return
        agent = self._next_agent_frame(now_ms)
        if self._agent_muted:
            agent = None
        elif self._ambiance is not None and not self._transferring():
            # part of the server-side track: the caller, the recorder and subscribers hear it
            agent = self._ambiance.mix(agent, self._agent_active(agent))
        self._send_agent(agent)
        if self._recorder is not None:
            self._record(agent)
        if self._dump is not None:
            self._dump.tick(now_ms)
        self._check_timers(now_ms)

    # ------------------------------------------------------------------ commands

    def _handle(self, command: Command) -> None:
        name = command.command
        if isinstance(command, InviteCommand):
            self._invite(command)
            return
        if self.state is CallState.CREATED and not isinstance(command, HangupCommand):
            raise CommandError(f"'{name}' before 'invite': start the call first", name)
        if isinstance(command, PlayCommand):
            self._play(command)
        elif isinstance(command, InterruptCommand):
            self._interrupt(command.fade_out_ms or 0, graceful=bool(command.graceful))
        elif isinstance(command, TtsCommand):
            self._tts(command)
        elif isinstance(command, PauseCommand):
            if self._playing is not None:
                self._playing.track.pause()
        elif isinstance(command, ResumeCommand):
            if self._playing is not None:
                self._playing.track.resume()
        elif isinstance(command, MuteCommand | UnmuteCommand):
            self._mute(command.track_id, isinstance(command, MuteCommand))
        elif isinstance(command, HistoryCommand):
            self._emit(
                AddHistoryEvent(
                    sender=self.id,
                    timestamp=self.port.now_ms(),
                    speaker=command.speaker,
                    text=command.text,
                )
            )
        elif isinstance(command, CustomCommand):
            self._emit(
                CustomEvent(timestamp=self.port.now_ms(), sender=command.sender, data=command.data)
            )
        elif isinstance(command, HangupCommand):
            if command.refer:
                self._hangup_refer(command.headers)
            else:
                self.hangup(
                    reason=command.reason or "caller", initiator=command.initiator or "caller"
                )
        elif isinstance(command, ReferCommand):
            self._start_refer(command)
        elif name in _NOT_ON_WEBSOCKET:
            raise CommandError(f"'{name}' is not available on a {self.call_type} call", name)
        else:  # pragma: no cover - every command is listed above
            raise CommandError(f"'{name}' is not supported", name)

    # ------------------------------------------------------------------ transport hooks

    def _start_media(self, option: CallOption) -> None:
        """Set up the call's media for ``invite`` and answer (or raise CommandError).

        A WebSocket call's media is its binary frames in ``option.codec``: it answers at once.
        """
        try:
            codec = CallCodec.create(option.codec)
        except ValueError as exc:
            raise CommandError(f"option.codec: {exc}", "invite") from None
        self._decoder, self._encoder = codec.decoder(), codec.encoder()
        self.answered("")

    def _pull_media(self, now_ms: int) -> None:
        """Each tick, before agent audio: take the caller audio a transport has buffered."""

    def _send_agent(self, frame: Pcm | None) -> None:
        """This tick's agent frame (``None``: nothing playing) to the caller."""
        if frame is not None:
            self.port.emit_audio(self._encoder.encode_frame(frame))

    def _stop_media(self) -> None:
        """The call ended: release the transport's media resources."""

    def _call_record_fields(self) -> dict[str, Any]:
        """Fields of the call record the transport knows (caller, callee, media stats)."""
        return {}

    # ------------------------------------------------------------------ call setup

    def _invite(self, command: InviteCommand) -> None:
        if self.state is not CallState.CREATED:
            raise CommandError("the call has already been started by an earlier invite", "invite")
        if self._inviting:
            raise CommandError("the call is already being set up by an earlier invite", "invite")
        self._inviting = True
        self._invite_option = command.option
        try:
            self._start_media(command.option)
        except CommandError:
            self._inviting = False
            raise

    def track_start(self) -> None:
        """``trackStart`` of the caller's track (a SIP call sends it before dialling)."""
        if not self._track_started:
            self._track_started = True
            self._emit(TrackStartEvent(track_id=self.id, timestamp=self.port.now_ms()))

    def answered(self, sdp: str, *, announce: bool = True) -> None:
        """The media is up: start the call's processors, ``trackStart`` then ``answer``
        (``announce=False``: not yet, see :meth:`announce_answer`; outbound early media runs
        the processors before the 200)."""
        if self.state is not CallState.CREATED or self._invite_option is None:
            return
        option = self._invite_option
        self.option = option
        if option.inactivity_timeout is not None:
            self._inactivity_ms = option.inactivity_timeout * 1000
        if option.denoise:
            self._denoiser = make_denoiser()
        if option.vad is not None or option.vad_type is not None:
            self._start_vad(option)
        if option.agc is not None:
            self._start_agc(option.agc)
        if option.asr is not None:
            if self._vad is None:  # the VAD ends utterances; its events stay off
                self._vad = _Vad(VadProcessor(VadOption()), events=False)
            self._recognizer = Recognizer(self, option.asr)
        if option.recorder is not None:
            self._start_recorder(option)
        if option.realtime is not None:
            try:
                self._realtime = RealtimeAgent(self, option.realtime, self.port.start_task)
            except ValueError as exc:
                self._error("realtime", str(exc))
        now = self.port.now_ms()
        self.state = CallState.ANSWERED
        self._timers.last_audio_ms = now
        self.track_start()
        if announce:
            self.announce_answer(sdp)
        self._start_ambiance(option)

    def announce_answer(self, sdp: str) -> None:
        """``answer``, and the call's answer time: now."""
        now = self.port.now_ms()
        self._answer = _utc(now)
        self._emit(AnswerEvent(track_id=self.id, timestamp=now, sdp=sdp))

    def _start_agc(self, agc: Mapping[str, Any]) -> None:
        known = {k: v for k, v in agc.items() if k in AGC_KEYS}  # unknown keys: PROTOCOL rule 3
        try:
            self._agc = make_gain_control(known)
        except ValueError as exc:
            self._error("agc", f"{exc}: AGC is off for this call")

    def _start_vad(self, option: CallOption) -> None:
        if option.vad_type not in (None, "silero"):
            # PROTOCOL.md fix 6: name the unknown provider; the rest of the call goes on.
            self._error("vad", f"unknown VAD type '{option.vad_type}': VAD is off for this call")
            return
        self._vad = _Vad(VadProcessor(option.vad or VadOption()))

    def _start_recorder(self, option: CallOption) -> None:
        assert option.recorder is not None
        path = recording_path(option.recorder.recorder_file, self.id, self.settings.recording_dir)
        try:
            self._recorder = WavRecorder(path, option.recorder.samplerate or INTERNAL_RATE)
        except (OSError, ValueError) as exc:
            self._error("recorder", f"cannot record to {path}: {exc}")
            return
        self.port.note_file("recorder", str(self._recorder.path))

    def _start_ambiance(self, option: CallOption) -> None:
        try:
            ambiance = ambiance_option(option.ambiance, self.settings.ambiance)
        except ValueError as exc:
            self._error("ambiance", f"{exc}: no ambiance for this call")
            return
        if ambiance is None or ambiance.path is None:
            return
        future = self.port.run_blocking(
            functools.partial(
                BACKGROUNDS.load, ambiance.path, cache_dir=self.settings.media_cache_dir
            )
        )

        def done(fut: Future[Any]) -> None:
            self.port.call_soon(lambda: self._ambiance_ready(ambiance, fut))

        future.add_done_callback(done)

    def _ambiance_ready(self, option: AmbianceOption, fut: Future[Any]) -> None:
        if self.state is not CallState.ANSWERED:
            return
        try:
            self._ambiance = Ambiance.from_option(option, fut.result())
        except PlaybackError as exc:
            self._error("ambiance", f"{exc}: no ambiance for this call")
        except Exception as exc:  # a bad background must never end the call
            log.exception("decoding the ambiance %s failed", option.path)
            self._error("ambiance", f"cannot play {option.path}: {exc}: no ambiance for this call")

    def _transferring(self) -> bool:
        """A ``refer`` leg is live: its party or its music on hold has the line, unmixed."""
        return self._refer is not None and not self._refer.ended

    def _agent_active(self, frame: Pcm | None) -> bool:
        """The agent speaks, or a streaming track waits for its next chunk (between two
        sentences the background stays ducked)."""
        playing = self._playing
        return frame is not None or (
            playing is not None and playing.track.state is TrackState.PLAYING
        )

    def _play(self, command: PlayCommand) -> None:
        self._loading += 1
        generation = self._loading
        play_id = command.play_id if command.play_id is not None else command.url
        future = self.port.run_blocking(
            functools.partial(
                decode_audio_file,
                command.url,
                offset_ms=command.offset_ms or 0,
                cache_dir=self.settings.media_cache_dir,
            )
        )

        def done(fut: Future[Any]) -> None:
            self.port.call_soon(lambda: self._play_ready(generation, command, play_id, fut))

        future.add_done_callback(done)

    def _play_ready(
        self, generation: int, command: PlayCommand, play_id: str, fut: Future[Any]
    ) -> None:
        if self.state is not CallState.ANSWERED or generation != self._loading:
            return  # the call ended or a newer play/interrupt superseded this one
        try:
            pcm = fut.result()
        except PlaybackError as exc:
            self._error("play", str(exc))
            return
        except Exception as exc:  # a bad file must never end the call
            log.exception("decoding %s failed", command.url)
            self._error("play", f"cannot play {command.url}: {exc}")
            return
        self._interrupt(0)
        now = self.port.now_ms()
        self._playing = _Playing(
            PlaybackTrack(pcm, play_id=play_id),
            play_id,
            bool(command.auto_hangup),
            command.wait_input_timeout,
            now,
        )
        self._timers.wait_input_since = None
        self._emit(TrackStartEvent(track_id=self.server_side_track, timestamp=now, play_id=play_id))

    def _interrupt(self, fade_out_ms: int, *, graceful: bool = False) -> None:
        self._loading += 1  # a play still decoding will not start
        playing = self._playing
        if playing is None:
            return
        track = playing.track
        speech = playing.speech
        if not track.finished and not playing.interrupted:
            playing.interrupted = True  # one event per track, however often it is cut
            spoken = speech.spoken_at(track.played_samples) if speech is not None else None
            self._emit(
                InterruptionEvent(
                    track_id=self.server_side_track,
                    timestamp=self.port.now_ms(),
                    play_id=playing.play_id,
                    subtitle=spoken[0] if spoken else None,
                    position=spoken[1] if spoken else None,
                    total_duration=track.duration_ms,
                    current=track.position_ms,
                )
            )
        playing.auto_hangup = False
        playing.wait_input_ms = None
        if speech is not None:
            playing.speech = None
            self._spawn(speech.aclose())
            # graceful (non-streaming TTS): finish the sentence being spoken, then stop
            end = speech.sentence_end_after(track.played_samples) if graceful else None
            if end is not None:
                track.end_at(end)
                return
        track.interrupt(fade_out_ms)
        if track.finished:
            self._track_end(self.port.now_ms())

    def _tts(self, command: TtsCommand) -> None:
        assert self.option is not None
        playing = self._playing
        same = (
            playing is not None
            and playing.speech is not None
            and not playing.track.interrupted
            and (command.play_id is None or command.play_id == playing.play_id)
        )
        if not same:
            self._interrupt(0)
            now = self.port.now_ms()
            cache_dir = self.settings.media_cache_dir
            track = PlaybackTrack(play_id=command.play_id, streaming=True)
            speech = SpeechTrack(
                self,
                track,
                self.option.tts,
                cache=MediaCache(cache_dir) if cache_dir is not None else None,
            )
            playing = _Playing(track, command.play_id, False, None, now, speech)
            self._playing = playing
            self._timers.wait_input_since = None
            self._emit(
                TrackStartEvent(
                    track_id=self.server_side_track, timestamp=now, play_id=command.play_id
                )
            )
        assert playing is not None and playing.speech is not None
        if command.auto_hangup is not None:
            playing.auto_hangup = command.auto_hangup
        if command.wait_input_timeout is not None:
            playing.wait_input_ms = command.wait_input_timeout
        playing.speech.add(command)

    def _mute(self, track_id: str | None, mute: bool) -> None:
        if track_id is None or track_id == self.id:
            self._caller_muted = mute
        if track_id is None or track_id == self.server_side_track:
            self._agent_muted = mute

    # ------------------------------------------------------------------ the refer leg

    def _start_refer(self, command: ReferCommand) -> None:
        """``refer``: dial the callee as a second SIP leg, music on hold meanwhile
        (:mod:`activecall.workers.refer_leg`)."""
        from activecall.workers.media_stats import watch_media
        from activecall.workers.refer_leg import ReferLeg
        from activecall.workers.sip_session import MediaSettings

        if self._refer is not None and not self._refer.ended:
            raise CommandError("a refer leg is already up: hang it up first (refer:true)", "refer")
        media = self.params.get("media")
        if not isinstance(media, Mapping):
            raise CommandError("refer needs SIP, which is not configured on this server", "refer")
        self._interrupt(0)  # as upstream: the leg takes over the server-side track
        now = self.port.now_ms()
        self._refer = ReferLeg(
            command,
            self._refer_parties(),
            track_id=self.server_side_track,
            media=MediaSettings.from_params(dict(media)),
            worker_index=int(getattr(self.port, "worker_index", 0)),
            now_ms=now,
            emit=self._emit,
            signal=lambda action, **fields: self.port.emit_text(
                control.encode(control.OP_SIP, action=action, **fields)
            ),
        )
        watch_media(self.port, self._refer.media_sample)  # its RTP counts in /metrics
        moh = command.options.moh if command.options is not None else None
        if moh:
            self._load_moh(self._refer, moh)

    def _refer_parties(self) -> ReferParties:
        from activecall.workers.refer_leg import ReferParties

        sip = self.params.get("sip")
        sip = sip if isinstance(sip, Mapping) else {}
        option = self.option
        return ReferParties(
            session_id=self.id,
            caller=str(sip.get("caller") or (option.caller if option else "") or ""),
            callee=str(sip.get("callee") or (option.callee if option else "") or ""),
        )

    def _load_moh(self, leg: ReferLeg, moh: str) -> None:
        # As upstream: a missing local file falls back to the stock music on hold.
        if not moh.lower().startswith(("http:", "https:")) and not Path(moh).exists():
            fallback = Path("./config/sounds/refer_moh.wav")
            moh = str(fallback) if fallback.exists() else moh
        self._refer_moh += 1
        generation = self._refer_moh
        future = self.port.run_blocking(
            functools.partial(decode_audio_file, moh, cache_dir=self.settings.media_cache_dir)
        )

        def done(fut: Future[Any]) -> None:
            self.port.call_soon(lambda: self._moh_ready(leg, generation, moh, fut))

        future.add_done_callback(done)

    def _moh_ready(self, leg: ReferLeg, generation: int, moh: str, fut: Future[Any]) -> None:
        if generation != self._refer_moh or leg.ended or self.state is not CallState.ANSWERED:
            return
        try:
            leg.set_moh(fut.result())
        except PlaybackError as exc:
            self._error("refer", f"music on hold: {exc}")
        except Exception as exc:  # a bad file must never end the call or the leg
            log.exception("decoding the music on hold %s failed", moh)
            self._error("refer", f"music on hold: cannot play {moh}: {exc}")

    def _hangup_refer(self, headers: Mapping[str, str] | None) -> None:
        """``hangup{refer:true}``: end the leg only (its BYE gets ``headers``); the call goes
        on with the agent."""
        leg = self._refer
        if leg is None or leg.ended:
            raise CommandError("there is no refer leg to hang up", "hangup")
        leg.hangup(self.port.now_ms(), reason="caller", initiator="caller", headers=headers)

    def on_control(self, record: dict[str, Any]) -> None:
        """A ``sip`` control record of the refer leg (``leg: "refer"``) from the supervisor."""
        leg = self._refer
        if record.get("leg") != "refer" or leg is None or self.state is CallState.ENDED:
            return
        was_up = not leg.ended
        leg.on_control(record, self.port.now_ms())
        ended_by_remote = was_up and leg.ended and record.get("event") in ("bye", "cancelled")
        if ended_by_remote and leg.auto_hangup:  # the transfer is over, so is the call
            self.hangup(reason="refer", initiator="system")

    # ------------------------------------------------------------------ per tick

    def _next_agent_frame(self, now_ms: int) -> Pcm | None:
        leg = self._refer
        if leg is not None and not leg.ended:
            frame = leg.tick(now_ms)
            # Answered, the leg is the server-side track; dialling, its music on hold is,
            # else whatever the agent plays goes on.
            if leg.answered or frame is not None:
                return frame
        playing = self._playing
        if playing is None:
            return None
        frame = playing.track.next_frame()
        if playing.track.finished:
            self._track_end(now_ms)
        return frame

    def _track_end(self, now_ms: int) -> None:
        playing = self._playing
        if playing is None:
            return
        self._playing = None
        if playing.speech is not None:
            self._spawn(playing.speech.aclose())
        self._emit(
            TrackEndEvent(
                track_id=self.server_side_track,
                timestamp=now_ms,
                duration=max(0, now_ms - playing.started_ms),
                ssrc=0,
                play_id=playing.play_id,
            )
        )
        if playing.auto_hangup:
            self.hangup(reason="autohangup", initiator="system")
        elif playing.wait_input_ms:
            self._timers.wait_input_since = now_ms
            self._timers.wait_input_ms = playing.wait_input_ms

    def _record(self, agent: Pcm | None) -> None:
        assert self._recorder is not None
        # One caller frame pairs with this tick's agent frame; a burst of caller audio (the
        # client sent faster than real time) is recorded against agent silence.
        frames, self._caller_pending = self._caller_pending, []
        self._recorder.write(frames[0] if frames else None, agent)
        for frame in frames[1:]:
            self._recorder.write(frame, None)

    def _check_timers(self, now_ms: int) -> None:
        timers = self._timers
        if self._inactivity_ms > 0 and now_ms - timers.last_audio_ms >= self._inactivity_ms:
            self._emit(InactivityEvent(track_id=self.id, timestamp=now_ms))
            self.hangup(reason="inactivityTimeout", initiator="system")
            return
        since = timers.wait_input_since
        if since is not None and now_ms - since >= timers.wait_input_ms:
            timers.wait_input_since = None
            self._emit(
                SilenceEvent(
                    track_id=self.server_side_track,
                    timestamp=now_ms,
                    start_time=since,
                    duration=now_ms - since,
                )
            )

    # ------------------------------------------------------------------ the end

    def hangup(self, *, reason: str, initiator: str) -> None:
        """End the call: ``hangup`` event, recorder and dump closed, call record written."""
        if self.state is CallState.ENDED:
            return
        now = self.port.now_ms()
        if self._playing is not None:
            self._playing.auto_hangup = False
            self._track_end(now)
        if self._recognizer is not None:
            self._spawn(self._recognizer.aclose())
            self._recognizer = None
        if self._realtime is not None:
            self._spawn(self._realtime.aclose())
            self._realtime = None
        if self._refer is not None:
            self._refer.hangup(now, reason=reason, initiator=initiator)
        self.state = CallState.ENDED
        try:
            self._stop_media()
        except Exception:  # releasing must not keep the call from ending
            log.exception("releasing the media of %s failed", self.id)
        end = _utc(now)
        self._emit(
            HangupEvent(
                track_id=self.id,
                timestamp=now,
                reason=reason,
                initiator=initiator,
                start_time=rfc3339(self._start),
                hangup_time=rfc3339(end),
                answer_time=rfc3339(self._answer) if self._answer else None,
                # the call's extras (option.extra, set_var values of a playbook), as upstream
                extra=dict(self.option.extra) if self.option and self.option.extra else None,
            )
        )
        media = self._close_recorder()
        dump, self._dump = self._dump, None
        if dump is not None:
            dump.close()
        self._write_call_record(end, reason, media, dump)
        self.port.end()

    def _close_recorder(self) -> tuple[RecorderMedia, ...]:
        recorder = self._recorder
        if recorder is None:
            return ()
        self._recorder = None
        try:
            recorder.close()
            size = recorder.path.stat().st_size
        except OSError as exc:
            log.warning("closing the recording of %s failed: %s", self.id, exc)
            return ()
        return (RecorderMedia(track_id=self.id, path=str(recorder.path), size=size),)

    def _write_call_record(
        self,
        end: datetime,
        reason: str,
        media: tuple[RecorderMedia, ...],
        dump: EventDump | None,
    ) -> None:
        root = self.settings.callrecord_dir
        if root is None:
            return
        record = CallRecord(
            call_type=self.call_type,
            option=encode_option(self.option) if self.option is not None else None,
            call_id=self.id,
            start_time=self._start,
            answer_time=self._answer,
            end_time=end,
            hangup_reason=reason,
            recorder=media,
            extras=dict(self.option.extra) if self.option and self.option.extra else None,
            dump_event_file=str(dump.path) if dump is not None else None,
        )
        record = replace(record, **self._call_record_fields())
        if self._refer is not None:
            record = replace(record, refer_callrecord=self._refer.call_record())
        try:
            write_call_record(root, record)
        except OSError as exc:
            log.warning("writing the call record of %s failed: %s", self.id, exc)

    # ------------------------------------------------------------------ the voice side's host

    @property
    def realtime(self) -> RealtimeAgent | None:
        """The call's realtime model bridge (``option.realtime``), while the call is up."""
        return self._realtime

    def now_ms(self) -> int:
        """The call's clock (epoch ms)."""
        return self.port.now_ms()

    def emit(self, event: Event) -> None:
        """Send an event (for the voice side)."""
        if self.state is not CallState.ENDED:
            self._emit(event)

    def error(self, sender: str, message: str) -> None:
        """Send an ``error`` event (for the voice side); the call goes on."""
        if self.state is not CallState.ENDED:
            self._error(sender, message)

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` on the worker's loop."""
        return self.port.start_task(coro)

    def agent_track(self, play_id: str, *, create: bool) -> PlaybackTrack | None:
        """The streaming agent track ``play_id`` if it is playing; else a new one if ``create``
        (``trackStart``; whatever played is interrupted)."""
        playing = self._playing
        if (
            playing is not None
            and playing.play_id == play_id
            and playing.speech is None
            and playing.track.reopen_input()
        ):
            return playing.track
        if not create or self.state is not CallState.ANSWERED:
            return None
        self._interrupt(0)
        now = self.port.now_ms()
        track = PlaybackTrack(play_id=play_id, streaming=True)
        self._playing = _Playing(track, play_id, False, None, now)
        self._emit(TrackStartEvent(track_id=self.server_side_track, timestamp=now, play_id=play_id))
        return track

    def stop_agent(self) -> int | None:
        """Barge-in: interrupt the agent track; the ms of it already played (``None``: none)."""
        playing = self._playing
        if playing is None:
            return None
        heard = playing.track.position_ms
        self._interrupt(0)
        return heard

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.port.start_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ output

    def _emit(self, event: Event) -> None:
        leg = self._refer
        if isinstance(event, DtmfEvent) and not event.refer and leg is not None:
            leg.caller_digit(event.digit)  # forwardDtmf: the caller's keys reach the leg
        data = event.to_json()
        if self._dump is not None:
            self._dump.event(data, self.port.now_ms())
        self.port.emit_text(data)

    def _error(self, sender: str, message: str) -> None:
        self._emit(
            ErrorEvent(track_id=self.id, timestamp=self.port.now_ms(), sender=sender, error=message)
        )


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


SESSION_CLASSES: dict[str, str] = {
    "webrtc": "activecall.workers.webrtc_session:WebRtcSession",
    "sip": "activecall.workers.sip_session:SipCallSession",
}
"""The session class of each call type other than ``webSocket`` (imported when first used)."""


def session_factory(settings: SessionSettings) -> Callable[[Any], Any]:
    """The worker's factory of ``/call`` sessions (``ctx`` is the worker's SessionContext)."""

    def make(ctx: Any) -> Any:
        if ctx.call_type == "precache":
            from activecall.workers.precache import PrecacheJob

            return PrecacheJob(ctx, settings.media_cache_dir)
        params = ctx.params
        cls: type[CallSession] = CallSession
        spec = SESSION_CLASSES.get(ctx.call_type)
        if spec is not None:
            module, _, name = spec.partition(":")
            cls = getattr(importlib.import_module(module), name)
        session = cls(
            ctx,
            ctx.session_id,
            call_type=ctx.call_type,
            server_side_track=str(params.get("serverSideTrack") or "server-side-track"),
            dump=bool(params.get("dump", True)),
            settings=settings,
            params=params,
        )
        if params.get("playbook"):  # a playbook runs the dialogue (activecall.playbook.call)
            from activecall.playbook.call import attach_playbook

            return attach_playbook(session, params)
        return session

    return make
