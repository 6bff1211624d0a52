"""A playbook as data (reference §4): frozen values the parser builds and the runner reads.

A playbook is markdown with YAML front matter. The front matter holds the call's engine options
(copied into the call's ``invite``/``accept`` option), the LLM settings and the dialogue
behaviour; the body holds scenes (``# Scene: id``), each a system prompt with its DTMF keys, an
optional file to play and an optional follow-up rule. Prompts are Jinja2 templates rendered per
call (:mod:`activecall.playbook.template`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "DEFAULT_FOLLOWUP_MAX",
    "DEFAULT_IGNORE_FIRST_MS",
    "DTMF_KEYS",
    "SUMMARY_KINDS",
    "DtmfAction",
    "DtmfCollector",
    "FollowUp",
    "Interruption",
    "InterruptionStrategy",
    "LlmConfig",
    "Playbook",
    "Posthook",
    "Scene",
    "frozen_map",
]

DTMF_KEYS = frozenset("0123456789*#ABCD")
"""The keys a DTMF event can carry."""
DEFAULT_IGNORE_FIRST_MS = 800
DEFAULT_FOLLOWUP_MAX = 3
SUMMARY_KINDS = ("short", "detailed", "intent", "json")
"""Built-in posthook summaries; any other ``summary`` string is a custom prompt."""

InterruptionStrategy = Literal["both", "vad", "asr", "none"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_map(items: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only copy of ``items`` (the model's mappings cannot be changed by a call)."""
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, slots=True)
class DtmfAction:
    """What a key does: ``goto`` a scene, ``transfer`` to a SIP target, or ``hangup``."""

    action: Literal["goto", "transfer", "hangup"]
    scene: str | None = None
    target: str | None = None
    line: int | None = None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """Re-prompt the LLM after ``timeout_ms`` of caller silence, at most ``max_count`` times,
    then hang up."""

    timeout_ms: int
    max_count: int = DEFAULT_FOLLOWUP_MAX


@dataclass(frozen=True, slots=True)
class Interruption:
    """Barge-in rules: which caller signal interrupts the agent, and when it may not."""

    strategy: InterruptionStrategy = "both"
    min_speech_ms: int | None = None  # accepted for compatibility; the VAD's speechPadding rules
    filler_word_filter: bool = False
    volume_fade_ms: int | None = None
    ignore_first_ms: int = DEFAULT_IGNORE_FIRST_MS


@dataclass(frozen=True, slots=True)
class DtmfCollector:
    """A template for collecting digits (``dtmfCollectors.<name>``); times in milliseconds."""

    name: str
    description: str | None = None
    min_digits: int = 1
    max_digits: int | None = None
    finish_key: str | None = None
    timeout_ms: int = 15_000
    inter_digit_timeout_ms: int = 5_000
    pattern: re.Pattern[str] | None = None
    error_message: str | None = None
    retry_times: int = 3
    interruptible: bool = False


@dataclass(frozen=True, slots=True)
class Posthook:
    """After the call: POST ``{sessionId, summary, history, timestamp}`` to ``url``."""

    url: str
    summary: str | None = None  # short | detailed | intent | json | a custom prompt
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    include_history: bool = True
    timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """``llm``: the OpenAI-compatible chat model and the prompt assembly settings."""

    provider: str = "openai"
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    prompt: str | None = None
    greeting: str | None = None
    language: str = "en"
    features: tuple[str, ...] = ()
    repair_window_ms: int = 3000
    summary_limit: int = 20
    tool_instructions: str | None = None
    tools: bool = True
    """``llm.tools``: offer the actions as native OpenAI tools (function calling); ``false`` for
    models that do not support them (the tag instructions of the prompt apply either way)."""


@dataclass(frozen=True, slots=True)
class Scene:
    """One ``# Scene: id`` section: its prompt template (tags removed) and its scene tags."""

    id: str
    prompt: str
    dtmf: Mapping[str, DtmfAction] = field(default_factory=lambda: _EMPTY)
    play: str | None = None
    followup: FollowUp | None = None
    line: int = 1
    """Line of the file where the prompt text starts (template errors count from here)."""


@dataclass(frozen=True, slots=True)
class Playbook:
    """A loaded playbook; ``option`` is the JSON object merged into the call's option."""

    scenes: Mapping[str, Scene]
    initial_scene: str
    option: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    llm: LlmConfig | None = None
    greeting: str | None = None
    interruption: Interruption = field(default_factory=Interruption)
    dtmf: Mapping[str, DtmfAction] = field(default_factory=lambda: _EMPTY)
    collectors: Mapping[str, DtmfCollector] = field(default_factory=lambda: _EMPTY)
    followup: FollowUp | None = None
    posthook: Posthook | None = None
    realtime: Mapping[str, Any] | None = None
    hangup_headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    extract_headers: tuple[str, ...] | None = None
    source: str = "<playbook>"

    @property
    def first_scene(self) -> Scene:
        """The scene a call starts in."""
        return self.scenes[self.initial_scene]

    @property
    def greeting_text(self) -> str | None:
        """The greeting template: top-level ``greeting`` wins over ``llm.greeting``."""
        if self.greeting is not None:
            return self.greeting
        return self.llm.greeting if self.llm is not None else None
