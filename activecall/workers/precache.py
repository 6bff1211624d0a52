"""``POST /precache``: a short job in a worker that synthesises a ``tts`` command into the cache.

The supervisor opens it like a session (call type ``precache``), sends the command as its one
text record and waits for its one reply, a JSON object: ``{"status": "cached" | "exists",
"cacheKey", "bytes"}`` or ``{"status": "error", "error"}``. Then the job ends.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from activecall._native.resample import Resampler
from activecall.media.codec import INTERNAL_RATE, Pcm
from activecall.media.playback import MediaCache
from activecall.protocol import CommandError, TtsCommand, parse_command
from activecall.protocol.options import SynthesisOption
from activecall.providers.base import ProviderError
from activecall.providers.registry import UnknownProvider, registry
from activecall.workers.voice import DEFAULT_TTS, tts_cache_key

__all__ = ["PrecacheJob", "synthesize"]

log = logging.getLogger(__name__)

TIMEOUT_S = 120.0


async def synthesize(text: str, option: SynthesisOption) -> Pcm:
    """The whole text as 16 kHz PCM from the option's provider (default piper)."""
    provider = registry.get("tts", option.provider or DEFAULT_TTS)
    stream = await provider.open(option, streaming=False)
    parts: list[Pcm] = []
    resampler: Resampler | None = None
    rate = 0
    try:
        stream.push_text(text)
        stream.end_text()
        async for chunk in stream.chunks():
            if resampler is None or chunk.sample_rate != rate:
                if resampler is not None:
                    parts.append(resampler.flush())
                rate = chunk.sample_rate
                resampler = Resampler(rate, INTERNAL_RATE) if rate != INTERNAL_RATE else None
            pcm = np.frombuffer(chunk.pcm[: len(chunk.pcm) // 2 * 2], "<i2").astype(np.int16)
            parts.append(resampler.process(pcm) if resampler is not None else pcm)
        if resampler is not None:
            parts.append(resampler.flush())
    finally:
        await stream.cancel()
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class PrecacheJob:
    """The worker side of one ``/precache`` request (a session with no media)."""

    def __init__(self, ctx: Any, cache_dir: Path | None) -> None:
        self.ctx = ctx
        self.cache = MediaCache(cache_dir) if cache_dir is not None else None
        self._task: asyncio.Task[None] | None = None

    def on_text(self, data: bytes) -> None:
        """The ``tts`` command to cache (only the first is taken)."""
        if self._task is None:
            self._task = self.ctx.start_task(self._run(data))

    def on_audio(self, data: bytes) -> None:
        """No audio here."""

    def on_close(self, reason: str) -> None:
        """The request went away."""
        self._stop()

    def on_kill(self) -> None:
        """Killed from outside."""
        self._stop()

    def vad_chunks(self) -> list[npt.NDArray[np.int16]]:
        """Nothing for the VAD."""
        return []

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        """Never called: no chunks."""

    def tick(self, now_ms: int) -> None:
        """Nothing per tick."""

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.ctx.end()

    def _reply(self, obj: dict[str, Any]) -> None:
        self.ctx.emit_text(orjson.dumps(obj))
        self.ctx.end()

    async def _run(self, data: bytes) -> None:
        try:
            command = parse_command(data)
        except CommandError as exc:
            self._reply({"status": "error", "error": exc.message})
            return
        if not isinstance(command, TtsCommand):
            self._reply({"status": "error", "error": "the body must be a tts command"})
            return
        if self.cache is None:
            self._reply({"status": "error", "error": "no media_cache_path is configured"})
            return
        option = (command.option or SynthesisOption()).merge(
            SynthesisOption(speaker=command.speaker) if command.speaker else None
        )
        key = command.cache_key or tts_cache_key(
            option.provider or DEFAULT_TTS, command.text, option
        )
        path = self.cache.path(key)
        if path.exists():
            self._reply({"status": "exists", "cacheKey": key, "bytes": path.stat().st_size})
            return
        try:
            async with asyncio.timeout(TIMEOUT_S):
                pcm = await synthesize(command.text, option)
            loop = asyncio.get_running_loop()
            stored = await loop.run_in_executor(None, self.cache.store, key, pcm)
        except (ProviderError, UnknownProvider, TimeoutError, OSError) as exc:
            self._reply({"status": "error", "error": str(exc) or type(exc).__name__})
            return
        except Exception as exc:
            log.exception("precache failed")
            self._reply({"status": "error", "error": f"synthesis failed: {exc}"})
            return
        self._reply({"status": "cached", "cacheKey": key, "bytes": stored.stat().st_size})
