"""Audio of ``/call`` binary frames: the ``option.codec`` codecs and 20 ms re-framing.

Inbound binary messages have any length (PROTOCOL.md); a :class:`CallDecoder` turns each into
16 kHz int16 PCM, keeping the state that straddles messages (an odd PCM16 byte, the resampler's
history, the G.722 predictor). Outbound audio uses the same codec and rate as inbound (PROTOCOL.md
fix 3): a :class:`CallEncoder` turns each 20 ms frame of 16 kHz agent audio into one frame of
codec bytes of a fixed size. Cores without I/O; one decoder and one encoder per call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

import numpy as np
import numpy.typing as npt

from activecall._native import g711, g722
from activecall._native.resample import Resampler

__all__ = [
    "CODECS",
    "FRAME_SAMPLES",
    "INTERNAL_RATE",
    "CallCodec",
    "CallDecoder",
    "CallEncoder",
    "Pcm",
    "Reframer",
]

Pcm: TypeAlias = npt.NDArray[np.int16]
BytesLike: TypeAlias = bytes | bytearray | memoryview

INTERNAL_RATE = 16000
"""Sample rate (Hz) of every PCM stream inside a call (reference §2.8)."""

FRAME_SAMPLES = 320
"""One 20 ms frame at :data:`INTERNAL_RATE`."""

CODECS = ("pcm", "pcmu", "pcma", "g722")
"""The ``/call`` ``option.codec`` values; ``pcm`` is the default."""

_EMPTY = np.zeros(0, dtype=np.int16)


class Reframer:
    """Collects int16 samples of any chunking and hands them out in frames of ``frame_size``.

    20 ms frames (320) for the media tick, 512-sample chunks for the VAD.
    """

    __slots__ = ("_pending", "frame_size")

    def __init__(self, frame_size: int = FRAME_SAMPLES) -> None:
        if frame_size <= 0:
            raise ValueError("frame_size must be positive")
        self.frame_size = frame_size
        self._pending: Pcm = _EMPTY

    @property
    def pending(self) -> int:
        """Samples held back, waiting for the rest of their frame."""
        return len(self._pending)

    def push(self, pcm: Pcm) -> npt.NDArray[np.int16]:
        """Add samples; return the frames now complete as a ``(n, frame_size)`` array."""
        data = np.concatenate((self._pending, np.asarray(pcm, dtype=np.int16).reshape(-1)))
        n = len(data) // self.frame_size
        cut = n * self.frame_size
        # Copy the tail so the returned frames do not pin (or alias) the buffer we keep.
        self._pending = data[cut:].copy()
        return data[:cut].reshape(n, self.frame_size)

    def flush(self) -> Pcm | None:
        """The held-back samples zero-padded to one frame, or ``None`` if there are none."""
        if not len(self._pending):
            return None
        frame = np.zeros(self.frame_size, dtype=np.int16)
        frame[: len(self._pending)] = self._pending
        self._pending = _EMPTY
        return frame

    def clear(self) -> None:
        """Drop the held-back samples."""
        self._pending = _EMPTY


class CallDecoder(abc.ABC):
    """Inbound binary messages in one codec to 16 kHz int16 PCM, for one call."""

    __slots__ = ()

    @abc.abstractmethod
    def decode(self, data: BytesLike) -> Pcm:
        """Decode one binary message of any length; returns the 16 kHz samples it completes."""

    def flush(self) -> Pcm:
        """End of stream: the samples still held back (resampler tail); then start afresh."""
        return _EMPTY


class _Pcm16Decoder(CallDecoder):
    __slots__ = ("_odd",)

    def __init__(self) -> None:
        self._odd = b""

    def decode(self, data: BytesLike) -> Pcm:
        raw = self._odd + bytes(data) if self._odd else bytes(data)
        # A message may split a sample: its first byte waits for the next message.
        cut = len(raw) & ~1
        self._odd = raw[cut:]
        return np.frombuffer(raw, dtype="<i2", count=cut // 2).astype(np.int16)

    def flush(self) -> Pcm:
        self._odd = b""
        return _EMPTY


class _G711Decoder(CallDecoder):
    __slots__ = ("_decode", "_resampler")

    def __init__(self, alaw: bool) -> None:
        self._decode = g711.decode_alaw if alaw else g711.decode_ulaw
        self._resampler = Resampler(8000, INTERNAL_RATE)

    def decode(self, data: BytesLike) -> Pcm:
        if not len(data):
            return _EMPTY
        return self._resampler.process(self._decode(data))

    def flush(self) -> Pcm:
        return self._resampler.flush()


class _G722Decoder(CallDecoder):
    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = g722.G722Decoder()

    def decode(self, data: BytesLike) -> Pcm:
        return self._decoder.decode(data) if len(data) else _EMPTY

    def flush(self) -> Pcm:
        self._decoder.reset()
        return _EMPTY


class CallEncoder(abc.ABC):
    """20 ms frames of 16 kHz agent audio to frames of codec bytes, for one call."""

    __slots__ = ("frame_bytes",)

    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes

    def encode_frame(self, pcm: Pcm) -> bytes:
        """Encode exactly :data:`FRAME_SAMPLES` samples to exactly ``frame_bytes`` bytes."""
        frame = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"expected a frame of {FRAME_SAMPLES} samples, got {len(frame)}")
        return self._encode(frame)

    @abc.abstractmethod
    def _encode(self, frame: Pcm) -> bytes: ...


class _Pcm16Encoder(CallEncoder):
    __slots__ = ()

    def _encode(self, frame: Pcm) -> bytes:
        return frame.astype("<i2", copy=False).tobytes()


class _G711Encoder(CallEncoder):
    __slots__ = ("_carry", "_encode_law", "_resampler")

    def __init__(self, frame_bytes: int, alaw: bool) -> None:
        super().__init__(frame_bytes)
        self._encode_law = g711.encode_alaw if alaw else g711.encode_ulaw
        self._resampler = Resampler(INTERNAL_RATE, 8000)
        # The resampler holds back ``delay`` samples; starting with that much silence makes
        # every frame, the first included, exactly 20 ms (the stream is ``delay`` samples late).
        self._carry: Pcm = np.zeros(self._resampler.delay, dtype=np.int16)

    def _encode(self, frame: Pcm) -> bytes:
        out = np.concatenate((self._carry, self._resampler.process(frame)))
        n = self.frame_bytes
        if len(out) < n:  # not expected from the resampler's contract; keep the frame size
            out = np.concatenate((out, np.zeros(n - len(out), dtype=np.int16)))
        self._carry = out[n:]
        return self._encode_law(np.ascontiguousarray(out[:n]))


class _G722Encoder(CallEncoder):
    __slots__ = ("_encoder",)

    def __init__(self, frame_bytes: int) -> None:
        super().__init__(frame_bytes)
        self._encoder = g722.G722Encoder()

    def _encode(self, frame: Pcm) -> bytes:
        return self._encoder.encode(frame)


@dataclass(frozen=True, slots=True)
class CallCodec:
    """One ``/call`` codec: its wire sample rate and 20 ms frame size; makes coders."""

    name: str
    sample_rate: int
    frame_bytes: int

    _TABLE: ClassVar[dict[str, tuple[int, int]]] = {
        # name: (audio sample rate on the wire, bytes per 20 ms)
        "pcm": (16000, 640),
        "pcmu": (8000, 160),
        "pcma": (8000, 160),
        "g722": (16000, 160),  # 16 kHz audio at 64 kbit/s (its RTP clock says 8 kHz)
    }

    @classmethod
    def create(cls, name: str | None = None) -> CallCodec:
        """The codec named ``name`` (any case; ``None`` = ``pcm``); ``ValueError`` if unknown."""
        key = "pcm" if name is None else name.strip().lower()
        try:
            rate, frame_bytes = cls._TABLE[key]
        except KeyError:
            raise ValueError(
                f"unknown codec {name!r}: expected one of {', '.join(CODECS)}"
            ) from None
        return cls(key, rate, frame_bytes)

    def decoder(self) -> CallDecoder:
        """A new streaming decoder: binary messages in, 16 kHz int16 PCM out."""
        if self.name == "pcm":
            return _Pcm16Decoder()
        if self.name == "g722":
            return _G722Decoder()
        return _G711Decoder(alaw=self.name == "pcma")

    def encoder(self) -> CallEncoder:
        """A new streaming encoder: 20 ms of 16 kHz int16 PCM in, one codec frame out."""
        if self.name == "pcm":
            return _Pcm16Encoder(self.frame_bytes)
        if self.name == "g722":
            return _G722Encoder(self.frame_bytes)
        return _G711Encoder(self.frame_bytes, alaw=self.name == "pcma")
