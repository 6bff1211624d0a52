"""VAD event logic: per-chunk speech decisions in, ``speaking`` / ``silence`` events out.

A core without I/O (reference §5.4). It receives each VAD decision with the chunk's media
timestamp (ms) and returns the events that decision causes; the caller stamps the wall-clock
``timestamp`` and the ``trackId`` when it puts them on the wire.

The transitions, in one place:

=============================  ==========================================================
decision                       effect
=============================  ==========================================================
voice, idle                    triggered; ``speech_start = ts``; ``speaking`` if the speech
                               padding is 0
voice, triggered               ``temp_end`` cleared; ``speaking`` once, when
                               ``ts - speech_start >= speechPadding``
silence                        ``temp_end`` set to the first silent ``ts`` of the run
silence, triggered, run has    if ``temp_end - speech_start >= speechPadding``: ``silence``
lasted ``>= silencePadding``   (``startTime`` = speech start, ``duration`` = speech
                               length); back to idle, ``temp_end = ts``
silence, ``silenceTimeout``    every ``silenceTimeout`` ms of silence: ``silence``
                               (``startTime`` = silence start, ``duration`` = silence so far)
=============================  ==========================================================

One deliberate addition to upstream: a segment long enough to end with ``silence`` always
gets its ``speaking`` first. Upstream measures the ``speaking`` condition on the start time
of a voiced chunk but the ``silence`` condition on the start time of the first silent one, so
a segment whose last voiced chunk starts within one chunk of the padding ends with a
``silence`` that no ``speaking`` announced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Silence", "Speaking", "VadEvent", "VadOption", "VadProcessor"]


@dataclass(frozen=True, slots=True)
class VadOption:
    """The VAD timing options of ``invite.option.vad`` (reference §2.5), in milliseconds."""

    speech_padding: int = 250
    silence_padding: int = 100
    voice_threshold: float = 0.5
    silence_timeout: int | None = None

    def __post_init__(self) -> None:
        for name in ("speech_padding", "silence_padding"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"vad.{_camel(name)} must be a non-negative integer (ms)")
        if isinstance(self.voice_threshold, bool) or not isinstance(
            self.voice_threshold, int | float
        ):
            raise ValueError("vad.voiceThreshold must be a number")
        if not 0.0 <= self.voice_threshold <= 1.0:
            raise ValueError("vad.voiceThreshold must be between 0 and 1")
        timeout = self.silence_timeout
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0
        ):
            raise ValueError("vad.silenceTimeout must be a positive integer (ms)")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> VadOption:
        """Read the camelCase JSON object; unknown keys are ignored (PROTOCOL.md rule 3)."""
        kwargs: dict[str, Any] = {}
        for name in ("speech_padding", "silence_padding", "voice_threshold", "silence_timeout"):
            value = obj.get(_camel(name))
            if value is not None:
                kwargs[name] = value
        return cls(**kwargs)


@dataclass(frozen=True, slots=True)
class Speaking:
    """Speech has lasted ``speechPadding`` ms; ``start_time`` is when it began (media ms)."""

    start_time: int


@dataclass(frozen=True, slots=True)
class Silence:
    """End of a speech segment (``timeout=False``) or a ``silenceTimeout`` tick (``True``)."""

    start_time: int
    duration: int
    timeout: bool = False


VadEvent = Speaking | Silence


class VadProcessor:
    """Turns per-chunk speech decisions into ``speaking`` and ``silence`` events."""

    __slots__ = ("_announced", "_speech_start", "_temp_end", "option")

    def __init__(self, option: VadOption | None = None) -> None:
        self.option = option or VadOption()
        self._speech_start: int | None = None
        self._announced = False
        self._temp_end: int | None = None

    @property
    def triggered(self) -> bool:
        """True while inside a speech segment."""
        return self._speech_start is not None

    def process(self, probability: float, timestamp: int) -> list[VadEvent]:
        """Feed one chunk's speech probability; ``timestamp`` is the chunk's start in ms."""
        return self.decide(probability > self.option.voice_threshold, timestamp)

    def decide(self, voice: bool, timestamp: int) -> list[VadEvent]:
        """Feed one chunk's speech decision; returns the events it causes, in order."""
        if voice:
            return self._voice(timestamp)
        return self._silence(timestamp)

    def _voice(self, ts: int) -> list[VadEvent]:
        self._temp_end = None
        if self._speech_start is None:
            self._speech_start = ts
            self._announced = False
        if not self._announced and ts - self._speech_start >= self.option.speech_padding:
            self._announced = True
            return [Speaking(self._speech_start)]
        return []

    def _silence(self, ts: int) -> list[VadEvent]:
        events: list[VadEvent] = []
        if self._temp_end is None:
            self._temp_end = ts
        start = self._speech_start
        if start is not None and ts - self._temp_end >= self.option.silence_padding:
            length = self._temp_end - start
            if length >= self.option.speech_padding:
                if not self._announced:
                    events.append(Speaking(start))
                events.append(Silence(start, length))
            self._speech_start = None
            self._announced = False
            self._temp_end = ts
        timeout = self.option.silence_timeout
        if timeout is not None and ts - self._temp_end >= timeout:
            events.append(Silence(self._temp_end, ts - self._temp_end, timeout=True))
            self._temp_end = ts
        return events

    def reset(self) -> None:
        """Forget the current segment (e.g. after the call's audio restarts)."""
        self._speech_start = None
        self._announced = False
        self._temp_end = None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
