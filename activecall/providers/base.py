"""The three provider interfaces: speech-to-text, text-to-speech and chat completion.

A provider is a factory registered by name (:mod:`activecall.providers.registry`). It is created
once per worker process (models load once and are shared by the worker's calls) and opens one
stream per call or per utterance. Everything here runs on the worker's event loop: a provider
whose work is CPU-heavy runs it off the loop (a thread whose native code releases the GIL, or
a process) so the 20 ms media tick never waits for it.

Audio crossing these interfaces is PCM16LE mono bytes; ASR input is always 16 kHz, TTS output
carries its own ``sample_rate`` and the caller resamples.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from activecall.protocol.options import SynthesisOption, TranscriptionOption

__all__ = [
    "AsrProvider",
    "AsrStream",
    "ChatDelta",
    "ChatMessage",
    "LlmOption",
    "LlmProvider",
    "ProviderError",
    "Subtitle",
    "ToolCallDelta",
    "Transcript",
    "TtsChunk",
    "TtsProvider",
    "TtsStream",
]


class ProviderError(RuntimeError):
    """A provider failed (auth refused, connection lost, bad reply): the call reports it."""

    def __init__(self, provider: str, message: str, *, code: int | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.code = code


# --- ASR ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    """Recognised text of one utterance; ``final`` False is an interim (``asrDelta``).

    ``index`` numbers the utterances of a stream from 0; ``start_ms``/``end_ms`` are offsets
    in the audio pushed to the stream (the session maps them to call time).
    """

    text: str
    final: bool
    index: int
    start_ms: int | None = None
    end_ms: int | None = None
    confidence: float | None = None


class AsrStream(Protocol):
    """One call's recognition: push audio, read transcripts."""

    def push(self, pcm: bytes) -> None:
        """Queue PCM16LE 16 kHz mono audio; never blocks, never raises for provider trouble."""

    def end_utterance(self) -> None:
        """The VAD saw the end of speech: finish the current utterance (emit its final)."""

    def results(self) -> AsyncIterator[Transcript]:
        """Transcripts as they come; ends when the stream is closed; raises ProviderError."""

    async def aclose(self) -> None:
        """Stop recognising and release the stream; idempotent."""


class AsrProvider(Protocol):
    """A speech-to-text engine or service."""

    name: str

    async def open(self, option: TranscriptionOption) -> AsrStream:
        """Open a stream for one call (raises ProviderError when it cannot start)."""


# --- TTS ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subtitle:
    """The span of text spoken in ``[begin_ms, end_ms)`` of the synthesised audio."""

    text: str
    begin_ms: int
    end_ms: int
    begin_index: int  # character offset of ``text`` in the synthesised text
    end_index: int


@dataclass(frozen=True, slots=True)
class TtsChunk:
    """A piece of synthesised audio (PCM16LE mono at ``sample_rate``), maybe with timings."""

    pcm: bytes
    sample_rate: int
    subtitles: Sequence[Subtitle] = ()


class TtsStream(Protocol):
    """One utterance (whole-text mode) or one turn fed incrementally (streaming-text mode)."""

    def push_text(self, text: str) -> None:
        """Add text; in streaming mode the provider speaks each sentence as it completes."""

    def end_text(self) -> None:
        """No more text: flush what remains."""

    def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio as it is synthesised, in order; ends after the last chunk; ProviderError."""

    async def cancel(self) -> None:
        """Stop synthesising now and release the stream; idempotent."""


class TtsProvider(Protocol):
    """A text-to-speech engine or service."""

    name: str

    async def open(self, option: SynthesisOption, *, streaming: bool) -> TtsStream:
        """Open a synthesis stream (``streaming``: text arrives in pieces)."""


# --- LLM ------------------------------------------------------------------------------------


ChatMessage = Mapping[str, Any]
"""An OpenAI-style chat message: ``{"role": ..., "content": ..., ...}``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmOption:
    """Where and how to ask: OpenAI-compatible ``base_url``, key, model and sampling."""

    provider: str = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    temperature: float | None = None
    max_tokens: int | None = None
    extra: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call, as streamed: join ``arguments`` of the same ``index``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A streamed piece of the reply: text, tool-call pieces, or the finish reason."""

    content: str = ""
    tool_calls: Sequence[ToolCallDelta] = ()
    finish_reason: str | None = None


class LlmProvider(Protocol):
    """A chat-completion model."""

    name: str

    def chat(
        self,
        messages: Sequence[ChatMessage],
        option: LlmOption,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """Stream the reply to ``messages``; raises ProviderError on failure."""
