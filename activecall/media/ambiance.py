"""Ambiance: a background file looped under the agent's audio, ducked while the agent speaks.

:func:`ambiance_option` merges a call's ``ambiance`` object (camelCase keys, reference §2.5)
over the server's ``[ambiance]`` table, field by field as upstream does, and checks it.
:class:`BackgroundCache` decodes each file once per worker (the same decoding as ``play``) and
keeps that one read-only copy while any call plays it, so N calls with the same background
hold it once. :class:`Ambiance` is the per-call mixer, a core without I/O or clock: one call
of :meth:`Ambiance.mix` per 20 ms frame.

The level moves towards ``duckLevel`` while the agent is active and back to ``normalLevel``
when it is silent, by at most ``transitionSpeed`` per 20 ms frame (upstream's unit), ramped
sample by sample inside the frame so a level change never steps (no click).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from activecall.config import AmbianceOption
from activecall.media.codec import FRAME_SAMPLES, Pcm
from activecall.media.playback import PlaybackError, decode_audio_file

__all__ = ["BACKGROUNDS", "Ambiance", "BackgroundCache", "ambiance_option"]

# wire name (camelCase first, then the snake_case spelling PROTOCOL.md rule 2 accepts) → attr
_KEYS: dict[str, str] = {
    "path": "path",
    "duckLevel": "duck_level",
    "duck_level": "duck_level",
    "normalLevel": "normal_level",
    "normal_level": "normal_level",
    "transitionSpeed": "transition_speed",
    "transition_speed": "transition_speed",
    "enabled": "enabled",
}
_LEVELS = {"duck_level": "duckLevel", "normal_level": "normalLevel"}


def ambiance_option(
    call: Mapping[str, Any] | None, default: AmbianceOption | None = None
) -> AmbianceOption | None:
    """The call's ambiance: its ``ambiance`` object over the server's ``default``.

    ``None`` when there is none, it is disabled, or it names no ``path``. Raises
    :class:`ValueError` (a message for the ``error`` event) on a bad value; unknown keys are
    ignored (PROTOCOL.md rule 3).
    """
    option = default or AmbianceOption()
    if call is not None:
        if not isinstance(call, Mapping):
            raise ValueError(f"ambiance must be an object, got {_kind(call)}")
        changes: dict[str, Any] = {}
        for key, value in call.items():
            attr = _KEYS.get(str(key))
            if attr is not None and value is not None:
                changes[attr] = _checked(attr, str(key), value)
        option = replace(option, **changes)
    if not option.enabled or not option.path:
        return None
    for attr, name in _LEVELS.items():
        level = getattr(option, attr)
        if not (math.isfinite(level) and level >= 0):
            raise ValueError(f"ambiance.{name} must be a finite number >= 0, got {level}")
    speed = option.transition_speed
    if not (math.isfinite(speed) and speed > 0):
        raise ValueError(f"ambiance.transitionSpeed must be a finite number > 0, got {speed}")
    return option


def _checked(attr: str, key: str, value: Any) -> Any:
    if attr == "path":
        if not isinstance(value, str):
            raise ValueError(f"ambiance.{key} must be a string, got {_kind(value)}")
        return value
    if attr == "enabled":
        if not isinstance(value, bool):
            raise ValueError(f"ambiance.{key} must be a boolean, got {_kind(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"ambiance.{key} must be a number, got {_kind(value)}")
    return float(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class BackgroundCache:
    """Decoded backgrounds shared by the calls of a worker: one copy per file, kept while any
    call holds it (weak references), decoded once even when calls ask at the same time."""

    __slots__ = ("_guard", "_locks", "_pcm")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._pcm: weakref.WeakValueDictionary[tuple[Any, ...], npt.NDArray[np.int16]] = (
            weakref.WeakValueDictionary()
        )

    def load(self, source: str, *, cache_dir: Path | None = None) -> Pcm:
        """The 16 kHz mono PCM of a file or http(s) URL, read-only and shared (blocking).

        Raises :class:`~activecall.media.playback.PlaybackError` if it cannot be played.
        """
        key = _key(source)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # a second call asking for the same file waits for the first decode
            pcm = self._pcm.get(key)
            if pcm is not None:
                return pcm
            pcm = decode_audio_file(source, cache_dir=cache_dir)
            if len(pcm) == 0:
                raise PlaybackError(f"{source} holds no audio")
            pcm.setflags(write=False)  # shared by every call that plays it
            self._pcm[key] = pcm
            return pcm

    def __len__(self) -> int:
        """How many decoded files are held now."""
        return len(self._pcm)


def _key(source: str) -> tuple[Any, ...]:
    # A local file edited in place is a new background; a URL is taken as it is.
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return ("source", source)
    return ("file", os.path.abspath(source), st.st_mtime_ns, st.st_size)


BACKGROUNDS = BackgroundCache()
"""The worker's shared background cache."""

_RAMP = np.arange(1, FRAME_SAMPLES + 1, dtype=np.float32) / np.float32(FRAME_SAMPLES)


class Ambiance:
    """One call's background loop mixed under its agent frames (20 ms each)."""

    __slots__ = ("_bg", "_level", "_pos", "duck_level", "normal_level", "transition_speed")

    def __init__(
        self,
        background: Pcm,
        *,
        duck_level: float = 0.1,
        normal_level: float = 0.3,
        transition_speed: float = 0.01,
    ) -> None:
        if len(background) == 0:
            raise ValueError("the background holds no audio")
        self._bg = background
        self._pos = 0
        self.duck_level = duck_level
        self.normal_level = normal_level
        self.transition_speed = transition_speed
        self._level = normal_level

    @classmethod
    def from_option(cls, option: AmbianceOption, background: Pcm) -> Ambiance:
        """The mixer of ``option`` (see :func:`ambiance_option`) over decoded ``background``."""
        return cls(
            background,
            duck_level=option.duck_level,
            normal_level=option.normal_level,
            transition_speed=option.transition_speed,
        )

    @property
    def level(self) -> float:
        """The background's gain at the end of the last frame."""
        return self._level

    @property
    def position(self) -> int:
        """The sample of the background the next frame starts at."""
        return self._pos

    def mix(self, agent: Pcm | None, agent_active: bool) -> Pcm:
        """This frame: ``agent`` (``None``: silence) plus the background, saturated to int16.

        ``agent_active`` ducks the background (the agent speaks, or waits for its next chunk).
        """
        n = FRAME_SAMPLES if agent is None else len(agent)
        bg = self._take(n).astype(np.float32)
        start = self._level
        target = self.duck_level if agent_active else self.normal_level
        if start == target:
            bg *= np.float32(start)
        else:
            step = self.transition_speed
            end = min(start + step, target) if start < target else max(start - step, target)
            self._level = end
            ramp = _RAMP if n == FRAME_SAMPLES else np.arange(1, n + 1, dtype=np.float32) / n
            bg *= np.float32(start) + np.float32(end - start) * ramp
        if agent is not None:
            bg += agent
        np.rint(bg, out=bg)
        np.clip(bg, -32768, 32767, out=bg)
        return bg.astype(np.int16)

    def _take(self, n: int) -> Pcm:
        bg, pos = self._bg, self._pos
        size = len(bg)
        self._pos = (pos + n) % size
        if pos + n <= size:
            return bg[pos : pos + n]
        # the loop's end: wrap straight to its start, no gap (np.take wraps any number of times)
        return np.take(bg, np.arange(pos, pos + n), mode="wrap")
