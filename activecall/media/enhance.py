"""Per-call noise suppression and automatic gain control of the inbound 16 kHz audio.

The inbound chain is decode → resample → :class:`Denoiser` → VAD → :class:`GainControl` → ASR
(reference §5.1). Both wrap WebRTC's own DSP through ``pywebrtc-audio``: its noise suppressor
and AGC2 (speech level estimator, saturation protector, noise estimator, adaptive digital gain,
limiter — what upstream gets from ``sonora-agc2``). ``bench/enhance.py`` chose them over
RNNoise, speexdsp and webrtc-noise-gain by measurement (``bench/results/enhance.md``).

Each instance is one call's state; frames are 20 ms of 16 kHz int16 (320 samples). The native
library is imported when the first instance is built, so a call without ``denoise`` or ``agc``
pays nothing, not even the import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from activecall.media.codec import FRAME_SAMPLES, INTERNAL_RATE, Pcm

if TYPE_CHECKING:
    from pywebrtc_audio import GainController, NoiseSuppressor

__all__ = [
    "AGC_KEYS",
    "DEFAULT_NS_LEVEL",
    "NS_LEVELS",
    "AgcOption",
    "Denoiser",
    "GainControl",
    "make_denoiser",
    "make_gain_control",
]

NS_LEVELS = (0, 1, 2, 3)
"""WebRTC suppression levels: at most 6, 12, 18 and 21 dB of noise removed."""

DEFAULT_NS_LEVEL = 1
"""12 dB: of the WebRTC levels, the least speech loss and best SI-SDR in the benchmark."""


def _check_frame(frame: Pcm) -> Pcm:
    """``frame`` as a C-contiguous array, or ``ValueError`` unless 320 int16 samples in 1-D."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy int16 array, not {type(frame).__name__}")
    if frame.dtype != np.int16:
        raise ValueError(f"frame must be int16, not {frame.dtype}")
    if frame.shape != (FRAME_SAMPLES,):
        raise ValueError(f"frame must have shape ({FRAME_SAMPLES},), not {frame.shape}")
    # The binding reads the buffer as contiguous; a strided view would be read wrongly.
    return np.ascontiguousarray(frame)


class Denoiser:
    """WebRTC noise suppression for one call: 20 ms frames of 16 kHz int16 in and out."""

    __slots__ = ("_ns", "level")

    def __init__(self, level: int = DEFAULT_NS_LEVEL) -> None:
        """Build the suppressor at ``level`` (one of :data:`NS_LEVELS`), else ``ValueError``."""
        if type(level) is not int or level not in NS_LEVELS:  # not bool, float, numpy
            raise ValueError(f"denoise level must be one of {NS_LEVELS}, not {level!r}")
        from pywebrtc_audio import NoiseSuppressor

        self.level = level
        self._ns: NoiseSuppressor = NoiseSuppressor(sample_rate=INTERNAL_RATE, level=level)

    def process(self, frame: Pcm) -> Pcm:
        """The denoised frame (a new array; ``frame`` is not modified). 6 ms of delay."""
        return self._ns.process(_check_frame(frame))

    def reset(self) -> None:
        """Forget the noise estimate: the next frame is treated as the first of a call."""
        self._ns.reset()


@dataclass(frozen=True, slots=True)
class AgcOption:
    """``option.agc`` (reference §2.5 AGCOption); the defaults are upstream's."""

    headroom_db: float = 5.0
    max_gain_db: float = 50.0
    initial_gain_db: float = 15.0
    max_gain_change_db_per_second: float = 6.0
    max_output_noise_level_dbfs: float = -50.0
    adjacent_speech_frames_threshold: int = 12
    enable_limiter: bool = True

    def __post_init__(self) -> None:
        for name, test, need in _NUMBER_RULES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"agc.{_camel(name)} must be a number, not {value!r}")
            if not math.isfinite(value) or not test(value):
                raise ValueError(f"agc.{_camel(name)} must be {need}, not {value!r}")
        frames = self.adjacent_speech_frames_threshold
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(
                f"agc.adjacentSpeechFramesThreshold must be an integer >= 1, not {frames!r}"
            )
        if not isinstance(self.enable_limiter, bool):
            raise ValueError(
                f"agc.enableLimiter must be true or false, not {self.enable_limiter!r}"
            )
        # The binding builds AGC2 with these three fixed; refuse rather than silently differ.
        for name, fixed in _FIXED.items():
            if getattr(self, name) != fixed:
                raise ValueError(
                    f"agc.{_camel(name)} = {getattr(self, name)!r} is not supported: "
                    f"the WebRTC AGC2 in use has it fixed at {_json(fixed)}"
                )

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AgcOption:
        """Read the camelCase JSON object (``{}`` = defaults); unknown keys: ``ValueError``."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"agc must be a JSON object, not {type(obj).__name__}")
        known = {_camel(f.name): f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in obj.items():
            if key not in known:
                raise ValueError(f"agc.{key} is not an AGC option (known: {', '.join(known)})")
            if value is not None:  # null counts as absent, as everywhere on the wire
                kwargs[known[key]] = value
        return cls(**kwargs)


_NUMBER_RULES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("headroom_db", lambda v: v >= 0, ">= 0"),
    ("max_gain_db", lambda v: v > 0, "> 0"),
    ("initial_gain_db", lambda v: v >= 0, ">= 0"),
    ("max_gain_change_db_per_second", lambda v: v > 0, "> 0"),
    ("max_output_noise_level_dbfs", lambda v: v <= 0, "<= 0"),
)
"""WebRTC's ``GainController2::Validate`` ranges (also sonora-agc2's)."""

_FIXED: dict[str, Any] = {
    "initial_gain_db": 15.0,
    "adjacent_speech_frames_threshold": 12,
    "enable_limiter": True,
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _json(value: Any) -> str:
    return "true" if value is True else str(value)


class GainControl:
    """WebRTC AGC2 for one call: 20 ms frames of 16 kHz int16 in and out, speech brought to a
    steady level, peaks held below full scale by the limiter."""

    __slots__ = ("_agc", "option")

    def __init__(self, option: AgcOption | None = None) -> None:
        """Build the controller from ``option`` (defaults when ``None``)."""
        from pywebrtc_audio import GainController

        self.option = option or AgcOption()
        self._agc: GainController = GainController(
            sample_rate=INTERNAL_RATE,
            adaptive_digital=True,
            max_gain_db=self.option.max_gain_db,
            headroom_db=self.option.headroom_db,
            max_gain_change_db_per_second=self.option.max_gain_change_db_per_second,
            max_output_noise_level_dbfs=self.option.max_output_noise_level_dbfs,
        )

    def process(self, frame: Pcm, speech_probability: float | None = None) -> Pcm:
        """The frame with gain applied (a new array). ``speech_probability`` is the VAD's for
        this frame; without it AGC2 runs its own RNN VAD (about 10x the cost)."""
        frame = _check_frame(frame)
        if speech_probability is None:
            return self._agc.process(frame)
        p = speech_probability
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"speech_probability must be a number in [0, 1], not {p!r}")
        return self._agc.process(frame, float(p))

    def reset(self) -> None:
        """Back to the initial gain and level estimates, keeping the option."""
        self._agc.reset()


AGC_KEYS: frozenset[str] = frozenset(_camel(f.name) for f in fields(AgcOption))
"""The camelCase keys of ``option.agc``."""


def make_denoiser() -> Denoiser:
    """The denoiser of a call with ``option.denoise: true``."""
    return Denoiser()


def make_gain_control(option: Mapping[str, Any]) -> GainControl:
    """The AGC of a call with ``option.agc`` (``{}`` = defaults); bad options: ``ValueError``."""
    return GainControl(AgcOption.from_json(option))
