"""The voice-AI side of a call: the caller's speech to text, the agent's text to speech.

Both run as tasks on the worker's event loop next to the session that owns them; providers
come from :mod:`activecall.providers.registry` (made once per worker process). The session
stays in charge of the server-side track: a :class:`SpeechTrack` only feeds audio into the
:class:`~activecall.media.playback.PlaybackTrack` it was given and remembers which text each
stretch of audio speaks, so an interruption can say where it cut.

A provider that fails (unknown name, refused key, dropped connection) is an ``error`` event
with sender ``asr`` or ``tts``; the call goes on without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from activecall._native.resample import Resampler
from activecall.media.codec import INTERNAL_RATE, Pcm
from activecall.media.playback import MediaCache, PlaybackTrack
from activecall.protocol import AsrDeltaEvent, AsrFinalEvent, Event, MetricsEvent, TtsCommand
from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers.base import (
    AsrProvider,
    AsrStream,
    ProviderError,
    TtsProvider,
    TtsStream,
)
from activecall.providers.registry import ProviderRegistry, UnknownProvider, registry

__all__ = [
    "DEFAULT_ASR",
    "DEFAULT_TTS",
    "Recognizer",
    "SpeechTrack",
    "VoiceHost",
    "tts_cache_key",
]

log = logging.getLogger(__name__)

DEFAULT_ASR = "pocketsphinx"
"""The ASR provider of an ``asr`` option that names none (offline, no account)."""
DEFAULT_TTS = "piper"
"""The TTS provider when neither the call nor the command names one (offline)."""
MAX_EARLY_AUDIO_MS = 10_000  # audio kept for an ASR stream still connecting
_SAMPLES_PER_MS = INTERNAL_RATE // 1000


class VoiceHost(Protocol):
    """What the voice side needs from its session."""

    id: str
    server_side_track: str

    def now_ms(self) -> int:
        """The session's clock (epoch ms)."""
        ...

    def emit(self, event: Event) -> None:
        """Send an event to the client."""
        ...

    def error(self, sender: str, message: str) -> None:
        """Send an ``error`` event; the call goes on."""
        ...

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` on the worker's loop; the session cancels what is left at its end."""
        ...


def _monotonic_ms() -> float:
    return time.monotonic() * 1000


# --- ASR ------------------------------------------------------------------------------------


class Recognizer:
    """The call's speech recognition: caller audio in, ``asrDelta``/``asrFinal`` out.

    Audio pushed while the provider still connects is kept (up to 10 s). ``startTime`` and
    ``endTime`` of the events are epoch ms, on the clock of the VAD events.
    """

    def __init__(
        self,
        host: VoiceHost,
        option: TranscriptionOption,
        providers: ProviderRegistry = registry,
    ) -> None:
        self.host = host
        self.option = option
        self.name = option.provider or DEFAULT_ASR
        self._providers = providers
        self._stream: AsrStream | None = None
        self._early: deque[bytes] = deque()
        self._early_ms = 0
        self._early_end = False
        self._closed = False
        self._epoch_ms: int | None = None  # call time of the first sample pushed
        self._utterance_started: float | None = None  # monotonic ms of its first audio
        self._first_result: set[int] = set()
        self._end_asked: float | None = None
        self._task = host.start_task(self._run())

    def push(self, pcm: Pcm) -> None:
        """Queue 20 ms (or any length) of 16 kHz caller audio."""
        if self._closed:
            return
        if self._epoch_ms is None:
            self._epoch_ms = self.host.now_ms() - len(pcm) // _SAMPLES_PER_MS
        if self._utterance_started is None:
            self._utterance_started = _monotonic_ms()
        data = pcm.astype("<i2", copy=False).tobytes()
        if self._stream is not None:
            self._stream.push(data)
        elif self._early_ms < MAX_EARLY_AUDIO_MS:
            self._early.append(data)
            self._early_ms += len(pcm) // _SAMPLES_PER_MS

    def end_utterance(self) -> None:
        """The VAD heard the end of speech: the provider finishes the utterance."""
        if self._closed:
            return
        self._end_asked = _monotonic_ms()
        if self._stream is not None:
            self._stream.end_utterance()
        else:
            self._early_end = True

    async def aclose(self) -> None:
        """Stop recognising (the call ended); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _run(self) -> None:
        try:
            provider: AsrProvider = self._providers.get("asr", self.name)
            stream = await provider.open(self.option)
        except UnknownProvider as exc:
            self.host.error("asr", str(exc))
            return
        except ProviderError as exc:
            self.host.error("asr", f"cannot start ASR: {exc}")
            return
        except Exception as exc:
            log.exception("ASR provider %s failed to open", self.name)
            self.host.error("asr", f"cannot start ASR ({self.name}): {exc}")
            return
        if self._closed:
            await stream.aclose()
            return
        self._stream = stream
        while self._early:
            stream.push(self._early.popleft())
        if self._early_end:
            stream.end_utterance()
        try:
            async for transcript in stream.results():
                self._deliver(transcript.text, transcript)
        except ProviderError as exc:
            self.host.error("asr", str(exc))
        except Exception as exc:
            log.exception("ASR provider %s failed", self.name)
            self.host.error("asr", f"ASR ({self.name}) failed: {exc}")

    def _deliver(self, text: str, t: Any) -> None:
        now = self.host.now_ms()
        epoch = self._epoch_ms or now
        start = epoch + t.start_ms if t.start_ms is not None else None
        end = epoch + t.end_ms if t.end_ms is not None else None
        if t.index not in self._first_result and self._utterance_started is not None:
            self._first_result.add(t.index)
            self._metric(f"ttfb.asr.{self.name}", _monotonic_ms() - self._utterance_started, t)
        cls = AsrFinalEvent if t.final else AsrDeltaEvent
        self.host.emit(
            cls(
                track_id=self.host.id,
                index=t.index,
                timestamp=now,
                start_time=start,
                end_time=end,
                text=text,
                confidence=t.confidence,
            )
        )
        if t.final:
            if self._end_asked is not None:
                self._metric(f"completed.asr.{self.name}", _monotonic_ms() - self._end_asked, t)
            self._end_asked = None
            self._utterance_started = None

    def _metric(self, key: str, duration_ms: float, t: Any) -> None:
        self.host.emit(
            MetricsEvent(
                timestamp=self.host.now_ms(),
                key=key,
                duration=max(0, round(duration_ms)),
                data={"index": t.index, "final": t.final},
            )
        )


# --- TTS ------------------------------------------------------------------------------------


def tts_cache_key(provider: str, text: str, option: SynthesisOption) -> str:
    """Reference §5.7: hex(sha256("tts:" + provider + text)) + ``_<rate>_<speaker>_<speed>``."""
    digest = hashlib.sha256(f"tts:{provider}{text}".encode()).hexdigest()
    parts = [digest, str(INTERNAL_RATE)]
    if option.speaker:
        parts.append(option.speaker)
    parts.append(f"{option.speed if option.speed is not None else 1.0:g}")
    return "_".join(parts)


@dataclass(slots=True)
class _Spoken:
    """A stretch of the track's audio and the text it speaks."""

    start: int  # samples from the track's start
    end: int
    text: str
    position: int  # character offset of ``text`` in its command's text


@dataclass(slots=True)
class _Job:
    command: TtsCommand
    option: SynthesisOption
    seq: int
    received: float  # monotonic ms


class SpeechTrack:
    """Feeds one ``playId``'s synthesised speech into its playback track, command by command.

    Commands run in order. A non-streaming command is one synthesis (cached on disk when a
    cache is configured); streaming commands share one provider stream until ``endOfStream``.
    When no command is left the track's input is closed, so the track ends when played out;
    :meth:`add` reopens it.
    """

    def __init__(
        self,
        host: VoiceHost,
        track: PlaybackTrack,
        default: SynthesisOption | None,
        *,
        cache: MediaCache | None = None,
        providers: ProviderRegistry = registry,
    ) -> None:
        self.host = host
        self.track = track
        self.default = default or SynthesisOption()
        self.cache = cache
        self._providers = providers
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._spoken: list[_Spoken] = []
        self._appended = 0  # samples appended to the track
        self._seq = 0
        self._pending = 0
        self._stream: TtsStream | None = None  # the open streaming-text stream
        self._stream_feed: asyncio.Future[Pcm | None] | None = None
        self._stream_job: _Job | None = None
        self._stream_base = 0
        self._closed = False
        self._task = host.start_task(self._run())

    def add(self, command: TtsCommand) -> None:
        """Queue a ``tts`` command for this track."""
        if self._closed:
            return
        self.track.reopen_input()
        self._seq += 1
        self._pending += 1
        option = self.default.merge(command.option)
        if command.speaker is not None:
            option = option.merge(SynthesisOption(speaker=command.speaker))
        self._jobs.put_nowait(_Job(command, option, self._seq, _monotonic_ms()))

    def spoken_at(self, sample: int) -> tuple[str, int] | None:
        """The text being spoken at ``sample`` of the track and its character offset."""
        for s in self._spoken:
            if s.start <= sample < s.end:
                return s.text, s.position
        return None

    def sentence_end_after(self, sample: int) -> int | None:
        """Where the sentence playing at ``sample`` ends (for a graceful interrupt)."""
        for s in self._spoken:
            if s.start <= sample < s.end:
                return s.end
        return None

    async def aclose(self) -> None:
        """Stop synthesising (interrupted, replaced, or the call ended); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._close_stream(cancel=True)

    # -- the job loop

    async def _run(self) -> None:
        while True:
            job = await self._jobs.get()
            try:
                await self._one(job)
            except asyncio.CancelledError:
                raise
            except ProviderError as exc:
                self.host.error("tts", str(exc))
                await self._close_stream(cancel=True)
            except UnknownProvider as exc:
                self.host.error("tts", str(exc))
            except Exception as exc:
                log.exception("TTS failed")
                self.host.error("tts", f"TTS failed: {exc}")
                await self._close_stream(cancel=True)
            self._pending -= 1
            if self._pending == 0 and self._stream is None:
                self.track.end_input()

    async def _one(self, job: _Job) -> None:
        command = job.command
        if command.base64:
            try:
                raw = base64.b64decode(command.text, validate=True)
            except (binascii.Error, ValueError):
                self.host.error("tts", "tts: 'text' is not valid base64 PCM")
                return
            pcm = np.frombuffer(raw[: len(raw) // 2 * 2], "<i2").astype(np.int16)
            self._append(pcm)
            return
        if command.streaming:
            await self._stream_text(job)
            return
        await self._close_stream(cancel=False)  # a whole-text command ends a streaming one
        name = job.option.provider or DEFAULT_TTS
        key = command.cache_key or tts_cache_key(name, command.text, job.option)
        if self.cache is not None:
            cached = await asyncio.get_running_loop().run_in_executor(None, self.cache.load, key)
            if cached is not None:
                base = self._appended
                self._append(cached)
                self._spoken.append(_Spoken(base, self._appended, command.text, 0))
                self._metric(name, job, cached=True, ttfb=_monotonic_ms() - job.received)
                return
        provider: TtsProvider = self._providers.get("tts", name)
        stream = await provider.open(job.option, streaming=False)
        try:
            stream.push_text(command.text)
            stream.end_text()
            audio = await self._feed(stream, job, name, keep=self.cache is not None)
        finally:
            await stream.cancel()
        if self.cache is not None and audio is not None and len(audio):
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                await loop.run_in_executor(None, self.cache.store, key, audio)

    async def _stream_text(self, job: _Job) -> None:
        command = job.command
        if self._stream is None:
            name = job.option.provider or DEFAULT_TTS
            provider: TtsProvider = self._providers.get("tts", name)
            self._stream = await provider.open(job.option, streaming=True)
            self._stream_job = job
            self._stream_base = 0
            stream = self._stream
            feed = asyncio.ensure_future(self._feed(stream, job, name, keep=False))
            feed.add_done_callback(self._feed_done)
            self._stream_feed = feed
        if command.text:
            self._stream.push_text(command.text)
        if command.end_of_stream:
            await self._close_stream(cancel=False)

    async def _close_stream(self, *, cancel: bool) -> None:
        """End the streaming-text stream: flush and wait for its audio, or drop it."""
        stream, feed = self._stream, self._stream_feed
        self._stream = self._stream_feed = self._stream_job = None
        if stream is None or feed is None:
            return
        if cancel:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed
            with contextlib.suppress(Exception):
                await stream.cancel()
            return
        stream.end_text()
        try:
            with contextlib.suppress(Exception):  # reported by _feed_done
                await feed
        finally:
            with contextlib.suppress(Exception):
                await stream.cancel()

    def _feed_done(self, feed: asyncio.Future[Pcm | None]) -> None:
        if feed.cancelled() or self._closed:
            return
        exc = feed.exception()
        if exc is not None:
            self.host.error(
                "tts", str(exc) if isinstance(exc, ProviderError) else f"TTS failed: {exc}"
            )

    async def _feed(self, stream: TtsStream, job: _Job, name: str, *, keep: bool) -> Pcm | None:
        """Append a stream's audio to the track as it comes; the audio if ``keep``."""
        resampler: Resampler | None = None
        rate = 0
        base = self._appended
        kept: list[Pcm] = []
        first: float | None = None
        subtitled = False
        async for chunk in stream.chunks():
            if first is None:
                first = _monotonic_ms() - job.received
            if resampler is None or chunk.sample_rate != rate:
                rate = chunk.sample_rate
                resampler = Resampler(rate, INTERNAL_RATE) if rate != INTERNAL_RATE else None
            pcm = np.frombuffer(chunk.pcm[: len(chunk.pcm) // 2 * 2], "<i2").astype(np.int16)
            if resampler is not None:
                pcm = resampler.process(pcm)
            for sub in chunk.subtitles:
                subtitled = True
                self._spoken.append(
                    _Spoken(
                        base + sub.begin_ms * _SAMPLES_PER_MS,
                        base + sub.end_ms * _SAMPLES_PER_MS,
                        sub.text,
                        sub.begin_index,
                    )
                )
            self._append(pcm)
            if keep:
                kept.append(pcm)
        if resampler is not None:
            tail = resampler.flush()
            self._append(tail)
            if keep:
                kept.append(tail)
        if not subtitled and not job.command.streaming:
            self._spoken.append(_Spoken(base, self._appended, job.command.text, 0))
        self._metric(name, job, cached=False, ttfb=first)
        return np.concatenate(kept) if kept else None

    def _append(self, pcm: Pcm) -> None:
        if len(pcm) and self.track.append(pcm):
            self._appended += len(pcm)

    def _metric(self, name: str, job: _Job, *, cached: bool, ttfb: float | None) -> None:
        data: dict[str, Any] = {
            "playId": job.command.play_id,
            "cmdSeq": job.seq,
            "length": len(job.command.text),
            "cached": cached,
        }
        if ttfb is not None:
            data["ttfb"] = round(ttfb)
        self.host.emit(
            MetricsEvent(
                timestamp=self.host.now_ms(),
                key=f"completed.tts.{name}",
                duration=max(0, round(_monotonic_ms() - job.received)),
                data={k: v for k, v in data.items() if v is not None},
            )
        )
