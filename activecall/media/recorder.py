"""Call recording: a stereo 16-bit WAV, caller on the left, agent on the right (reference §5.8).

The file is a valid WAV at every moment: the header is written first and its sizes are
rewritten after each second of audio, after the audio they count has reached the OS. A worker
that dies loses at most the last second; the supervisor then runs :func:`repair_wav` to count the
rest back in.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from activecall._native.resample import Resampler
from activecall.media.codec import INTERNAL_RATE, Pcm

__all__ = ["WavRecorder", "recording_path", "repair_wav", "safe_file_name"]

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")  # RIFF, WAVE, 16-byte PCM fmt chunk, data
_HEADER_SIZE = _HEADER.size  # 44
_RIFF_SIZE_AT = 4
_DATA_SIZE_AT = 40
_MAX_DATA = 0xFFFFFFFF - (_HEADER_SIZE - 8)  # RIFF sizes are 32-bit
_CHANNELS = 2
_BLOCK_ALIGN = 2 * _CHANNELS


class WavRecorder:
    """Writes aligned caller/agent frames to a stereo PCM16 WAV at ``sample_rate``.

    Frames come at ``input_rate`` (the call's 16 kHz) and are resampled when the two differ.
    Past the 4 GB a WAV can count (18 hours at 16 kHz), audio is dropped.
    """

    __slots__ = (
        "_file",
        "_frames",
        "_resamplers",
        "_since_header",
        "input_rate",
        "path",
        "sample_rate",
    )

    def __init__(
        self, path: Path | str, sample_rate: int = 16000, *, input_rate: int = INTERNAL_RATE
    ) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.input_rate = input_rate
        self._resamplers = (
            (Resampler(input_rate, sample_rate), Resampler(input_rate, sample_rate))
            if input_rate != sample_rate
            else None
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO | None = self.path.open("wb")
        self._frames = 0
        self._since_header = 0
        self._file.write(_header(sample_rate, 0))
        self._file.flush()

    @property
    def frames(self) -> int:
        """Stereo sample frames written so far."""
        return self._frames

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._file is None

    def write(self, caller: Pcm | None, agent: Pcm | None) -> None:
        """Record one tick: each side's frame, ``None`` for silence on that side.

        A shorter side is padded with silence; with both ``None`` the tick is 20 ms of silence.
        """
        left = _samples(caller)
        right = _samples(agent)
        n = max(len(left), len(right))
        if caller is None and agent is None:
            n = self.input_rate // 50
        left, right = _padded(left, n), _padded(right, n)
        if self._resamplers is not None:
            left = self._resamplers[0].process(left)
            right = self._resamplers[1].process(right)
        self._write(left, right)

    def close(self) -> None:
        """Write the resampler tails and the final header sizes; idempotent."""
        if self._file is None:
            return
        try:
            if self._resamplers is not None:
                self._write(self._resamplers[0].flush(), self._resamplers[1].flush())
            self._update_header()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> WavRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _write(self, left: Pcm, right: Pcm) -> None:
        f = self._file
        if f is None:
            raise ValueError(f"recorder {self.path} is closed")
        n = min(len(left), len(right), _MAX_DATA // _BLOCK_ALIGN - self._frames)
        if n <= 0:
            return
        stereo = np.empty((n, _CHANNELS), dtype="<i2")
        stereo[:, 0] = left[:n]
        stereo[:, 1] = right[:n]
        f.write(stereo.tobytes())
        self._frames += n
        self._since_header += n
        if self._since_header >= self.sample_rate:
            self._update_header()

    def _update_header(self) -> None:
        f = self._file
        assert f is not None
        f.flush()  # the audio first: the sizes never count bytes the OS has not got
        data = self._frames * _BLOCK_ALIGN
        f.seek(_RIFF_SIZE_AT)
        f.write(struct.pack("<I", data + _HEADER_SIZE - 8))
        f.seek(_DATA_SIZE_AT)
        f.write(struct.pack("<I", data))
        f.seek(0, os.SEEK_END)
        f.flush()
        self._since_header = 0


def repair_wav(path: Path | str) -> int:
    """Fix the RIFF and data sizes of a WAV cut short (a crashed recorder); return its frames.

    The data chunk is taken to run to the end of the file (as :class:`WavRecorder` writes it);
    a partial last sample frame is cut off. Idempotent. ``ValueError`` if ``path`` is not a WAV.
    """
    with open(path, "r+b") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
            raise ValueError(f"{path} is not a WAV file")
        size = os.fstat(f.fileno()).st_size
        block_align = 0
        pos = 12
        while True:
            f.seek(pos)
            chunk = f.read(8)
            if len(chunk) < 8:
                raise ValueError(f"{path} is not a WAV file: no data chunk")
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                break
            if chunk_id == b"fmt ":
                fmt = f.read(16)
                if len(fmt) < 16:
                    raise ValueError(f"{path} is not a WAV file: short fmt chunk")
                block_align = struct.unpack("<H", fmt[12:14])[0]
            pos += 8 + chunk_size + (chunk_size & 1)
        if block_align == 0:
            raise ValueError(f"{path} is not a WAV file: no fmt chunk before the data")
        start = pos + 8
        data = min(size - start, 0xFFFFFFFF - (start - 8)) // block_align * block_align
        f.truncate(start + data)
        f.seek(_RIFF_SIZE_AT)
        f.write(struct.pack("<I", start + data - 8))
        f.seek(pos + 4)
        f.write(struct.pack("<I", data))
    return data // block_align


def safe_file_name(text: str) -> str:
    """``text`` as one file-name component: anything but ``[A-Za-z0-9._@+=-]`` becomes ``_``.

    Session and call ids come from clients; this keeps them from naming another directory.
    """
    name = re.sub(r"[^A-Za-z0-9._@+=-]", "_", text)
    return "_" if name.strip(".") == "" else name


def recording_path(template: str, session_id: str, base_dir: Path) -> Path:
    """The WAV path of ``recorder.recorderFile`` (reference §2.5).

    ``{id}`` becomes the session id; empty means ``<id>.wav``; a relative path is under
    ``base_dir`` (``recording.path``); ``.wav`` is appended when missing (the container is
    always WAV).
    """
    session = safe_file_name(session_id)
    name = template.replace("{id}", session) if template else f"{session}.wav"
    if not name.lower().endswith(".wav"):
        name += ".wav"
    path = Path(name)
    return path if path.is_absolute() else Path(base_dir) / path


def _header(sample_rate: int, data_size: int) -> bytes:
    return _HEADER.pack(
        b"RIFF",
        data_size + _HEADER_SIZE - 8,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        _CHANNELS,
        sample_rate,
        sample_rate * _BLOCK_ALIGN,
        _BLOCK_ALIGN,
        16,
        b"data",
        data_size,
    )


def _samples(frame: Pcm | None) -> Pcm:
    if frame is None:
        return np.zeros(0, dtype=np.int16)
    return np.asarray(frame, dtype=np.int16).reshape(-1)


def _padded(samples: Pcm, n: int) -> Pcm:
    if len(samples) == n:
        return samples
    out = np.zeros(n, dtype=np.int16)
    out[: len(samples)] = samples
    return out
