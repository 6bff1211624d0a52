"""Server-side playback: audio files and URLs decoded to 16 kHz PCM, and the track that plays it.

:func:`decode_audio_file` is a plain blocking function (the worker runs it in a thread pool):
it reads a local file or fetches an http(s) URL, decodes anything PyAV reads, downmixes and
resamples to 16 kHz with our resampler, and caches the decoded PCM (reference §5.7).

:class:`PlaybackTrack` is a core without I/O or clock: the worker asks it for one 20 ms frame
per tick. Its states, in one place (``_TRANSITIONS`` is this table):

=========  =========  =========  ==============  ==============  ================================
state      pause      resume     interrupt(0)    interrupt(>0)   drained
=========  =========  =========  ==============  ==============  ================================
PLAYING    PAUSED     PLAYING    FINISHED        FADING          FINISHED
PAUSED     PAUSED     PLAYING    FINISHED        FINISHED        PAUSED (finishes after resume)
FADING     FADING     FADING     FINISHED        FADING          FINISHED
FINISHED   FINISHED   FINISHED   FINISHED        FINISHED        FINISHED
=========  =========  =========  ==============  ==============  ================================

``drained`` = every buffered sample handed out and no more input expected (a ``streaming``
track waits for :meth:`PlaybackTrack.end_input`). A paused track is silent, so an interrupt
with a fade stops it at once; a running fade is neither paused nor restarted.
"""

from __future__ import annotations

import enum
import hashlib
import io
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from activecall._native.resample import SUPPORTED_RATES, Resampler
from activecall.media.codec import FRAME_SAMPLES, INTERNAL_RATE, Pcm

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "MAX_DURATION_S",
    "MediaCache",
    "PlaybackError",
    "PlaybackTrack",
    "TrackState",
    "decode_audio_file",
]

MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024
"""Largest http(s) response :func:`decode_audio_file` accepts."""

MAX_DURATION_S = 2 * 3600
"""Longest audio :func:`decode_audio_file` decodes (bounds memory: 230 MB of 16 kHz PCM)."""

logger = logging.getLogger(__name__)

_SAMPLES_PER_MS = INTERNAL_RATE // 1000
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_EMPTY = np.zeros(0, dtype=np.int16)


class PlaybackError(Exception):
    """A ``play`` source that cannot be played; the message says why, for the ``error`` event."""


# --------------------------------------------------------------------------- decoded PCM cache


class MediaCache:
    """Decoded 16 kHz PCM16LE files ``<root>/<key>.pcm``, shared by the workers of a host."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key_for(source: str) -> str:
        """The cache key of a played file or URL: hex SHA-256 of its text (reference §5.7)."""
        return hashlib.sha256(source.encode()).hexdigest()

    def path(self, key: str) -> Path:
        """Where the PCM of ``key`` is (or would be) stored."""
        return self.root / f"{key}.pcm"

    def load(
        self, key: str, *, offset_samples: int = 0, newer_than: float | None = None
    ) -> Pcm | None:
        """The cached PCM from ``offset_samples`` on, or ``None`` on a miss.

        ``newer_than`` (a file modification time) turns an older entry into a miss.
        """
        path = self.path(key)
        try:
            with path.open("rb") as f:
                if newer_than is not None and os.fstat(f.fileno()).st_mtime < newer_than:
                    return None
                f.seek(2 * offset_samples)
                data = f.read()
        except OSError:  # absent, or unreadable: decode again
            return None
        return np.frombuffer(data, dtype="<i2", count=len(data) // 2).astype(np.int16)

    def store(self, key: str, pcm: Pcm) -> Path:
        """Write the PCM of ``key`` atomically (readers never see a partial file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(np.asarray(pcm, dtype="<i2").tobytes())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


# --------------------------------------------------------------------------- file decoding


def decode_audio_file(
    source: str,
    *,
    offset_ms: int = 0,
    cache_dir: Path | None = None,
    timeout: float = 10.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Pcm:
    """Decode a local file or an http(s) URL to 16 kHz mono int16 PCM, from ``offset_ms`` on.

    Blocking. ``timeout`` bounds each network operation (the whole download gets six times
    that). With ``cache_dir`` the decoded PCM is cached under the SHA-256 of ``source``; a
    local file newer than its entry is decoded again. Raises :class:`PlaybackError`.
    """
    if offset_ms < 0:
        raise ValueError("offset_ms must be >= 0")
    offset = offset_ms * _SAMPLES_PER_MS
    is_url = _URL_RE.match(source) is not None
    mtime: float | None = None
    if is_url:
        scheme = source.split(":", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise PlaybackError(
                f"unsupported URL scheme {scheme!r} in {_shown(source)}: "
                "use a local path or an http(s) URL"
            )
    else:
        mtime = _local_mtime(source)
    cache = MediaCache(cache_dir) if cache_dir is not None else None
    key = MediaCache.key_for(source)
    if cache is not None:
        cached = cache.load(key, offset_samples=offset, newer_than=mtime)
        if cached is not None:
            return cached
    # ``file:`` keeps FFmpeg from reading a local name as one of its protocols (``concat:``).
    data: str | io.BytesIO = (
        io.BytesIO(_fetch(source, timeout, max_bytes))
        if is_url
        else "file:" + os.path.abspath(source)
    )
    pcm = _decode(data, _shown(source))
    if cache is not None:
        try:
            cache.store(key, pcm)
        except OSError as exc:  # a full or read-only cache must not stop the playback
            logger.warning("cannot cache %s: %s", _shown(source), exc)
    return pcm[offset:].copy() if offset else pcm


def _local_mtime(path: str) -> float:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise PlaybackError(f"no such file: {path}") from None
    except OSError as exc:
        raise PlaybackError(f"cannot read {path}: {exc.strerror}") from None
    if not Path(path).is_file():
        raise PlaybackError(f"not a file: {path}")
    return st.st_mtime


def _shown(source: str) -> str:
    """``source`` for messages: a URL without its query (it may carry a signature)."""
    if _URL_RE.match(source) is None:
        return source
    parts = urllib.parse.urlsplit(source)
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")
    )


def _fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    shown = _shown(url)
    deadline = time.monotonic() + 6 * timeout
    request = urllib.request.Request(url, headers={"User-Agent": "activecall"})
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise PlaybackError(f"{shown} is larger than {max_bytes} bytes")
            while chunk := response.read(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise PlaybackError(f"{shown} is larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise PlaybackError(f"timed out fetching {shown}")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket
        raise PlaybackError(f"HTTP {exc.code} {exc.reason} fetching {shown}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise PlaybackError(f"timed out fetching {shown}") from None
        raise PlaybackError(f"cannot fetch {shown}: {exc.reason}") from None
    except TimeoutError:
        raise PlaybackError(f"timed out fetching {shown}") from None
    except (OSError, ValueError) as exc:  # connection reset, http.client protocol errors
        raise PlaybackError(f"cannot fetch {shown}: {exc}") from None
    return b"".join(chunks)


def _decode(data: str | io.BytesIO, shown: str) -> Pcm:
    try:
        with av.open(data, "r") as container:
            if not container.streams.audio:
                raise PlaybackError(f"{shown} has no audio stream")
            return _decode_stream(container, shown)
    except av.error.FFmpegError as exc:
        raise PlaybackError(f"{shown} is not audio PyAV can decode: {exc.strerror}") from None


def _decode_stream(container: av.container.InputContainer, shown: str) -> Pcm:
    limit = MAX_DURATION_S * INTERNAL_RATE
    out: list[npt.NDArray[np.float32]] = []
    total = 0
    resampler: Resampler | None = None
    bridge: av.AudioResampler | None = None  # libswresample, for rates ours lacks
    for frame in container.decode(audio=0):
        frames = [frame]
        if frame.sample_rate not in SUPPORTED_RATES:
            if bridge is None:
                bridge = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=48000)
            frames = bridge.resample(frame)
        for f in frames:
            if resampler is None or resampler.in_rate != f.sample_rate:
                if resampler is not None:  # the rate changed mid-stream (chained Ogg)
                    out.append(resampler.flush_float())
                resampler = Resampler(f.sample_rate, INTERNAL_RATE)
            chunk = resampler.process_float(_mono_float(f))
            total += len(chunk)
            if total > limit:
                raise PlaybackError(f"{shown} is longer than {MAX_DURATION_S} s")
            out.append(chunk)
    if bridge is not None and resampler is not None:
        for f in bridge.resample(None):
            out.append(resampler.process_float(_mono_float(f)))
    if resampler is not None:
        out.append(resampler.flush_float())
    if not out:
        return _EMPTY.copy()
    scaled = np.rint(np.concatenate(out) * 32768.0)
    pcm: Pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
    return pcm


def _mono_float(frame: av.AudioFrame) -> npt.NDArray[np.float32]:
    """One decoded frame as mono float32 in [-1, 1]: the mean of its channels."""
    arr = frame.to_ndarray()
    if not frame.format.is_planar:
        arr = arr.reshape(-1, len(frame.layout.channels)).T
    if arr.dtype.kind == "f":
        x = arr.astype(np.float32)
    elif arr.dtype == np.uint8:
        x = (arr.astype(np.float32) - 128.0) / 128.0
    else:
        x = arr.astype(np.float32) / float(2 ** (8 * arr.dtype.itemsize - 1))
    return np.ascontiguousarray(x.mean(axis=0, dtype=np.float32))


# --------------------------------------------------------------------------- the track


class TrackState(enum.Enum):
    """Where a :class:`PlaybackTrack` is (module docstring: the transition table)."""

    PLAYING = "playing"
    PAUSED = "paused"
    FADING = "fading"
    FINISHED = "finished"


class _Input(enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"
    STOP = "interrupt(0)"
    FADE = "interrupt(>0)"
    DRAINED = "drained"


_P, _Z, _F, _X = TrackState.PLAYING, TrackState.PAUSED, TrackState.FADING, TrackState.FINISHED
_TRANSITIONS: dict[TrackState, dict[_Input, TrackState]] = {
    _P: {_Input.PAUSE: _Z, _Input.RESUME: _P, _Input.STOP: _X, _Input.FADE: _F, _Input.DRAINED: _X},
    _Z: {_Input.PAUSE: _Z, _Input.RESUME: _P, _Input.STOP: _X, _Input.FADE: _X, _Input.DRAINED: _Z},
    _F: {_Input.PAUSE: _F, _Input.RESUME: _F, _Input.STOP: _X, _Input.FADE: _F, _Input.DRAINED: _X},
    _X: dict.fromkeys(_Input, _X),
}


class PlaybackTrack:
    """The audio of one ``playId`` on the server-side track, handed out in 20 ms frames.

    A ``streaming`` track (streaming TTS) waits for more audio when it runs dry until
    :meth:`end_input`; any other track finishes when it runs dry.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_fade_done",
        "_fade_len",
        "_head",
        "_input_open",
        "_interrupted",
        "_played",
        "_state",
        "_total",
        "play_id",
    )

    def __init__(
        self, pcm: Pcm | None = None, *, play_id: str | None = None, streaming: bool = False
    ) -> None:
        self.play_id = play_id
        self._state = TrackState.PLAYING
        self._chunks: deque[Pcm] = deque()
        self._head = 0  # samples of _chunks[0] already handed out
        self._buffered = 0
        self._total = 0
        self._played = 0
        self._input_open = streaming
        self._interrupted = False
        self._fade_len = 0
        self._fade_done = 0
        if pcm is not None:
            self.append(pcm)

    @property
    def state(self) -> TrackState:
        """The current state."""
        return self._state

    @property
    def finished(self) -> bool:
        """True once the track has ended (played out or interrupted): time for ``trackEnd``."""
        return self._state is TrackState.FINISHED

    @property
    def interrupted(self) -> bool:
        """True if :meth:`interrupt` ended the track."""
        return self._interrupted

    @property
    def position_ms(self) -> int:
        """Audio handed out so far (the ``interruption`` event's ``current``)."""
        return self._played // _SAMPLES_PER_MS

    @property
    def duration_ms(self) -> int:
        """All audio received so far (the ``interruption`` event's ``totalDuration``)."""
        return self._total // _SAMPLES_PER_MS

    def append(self, pcm: Pcm) -> bool:
        """Queue more 16 kHz audio (same ``playId``); ``False`` if the track is ending or over."""
        if self._state in (TrackState.FADING, TrackState.FINISHED):
            return False
        samples = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if len(samples):
            self._chunks.append(samples)
            self._buffered += len(samples)
            self._total += len(samples)
        return True

    def end_input(self) -> None:
        """No more audio will be appended (``endOfStream`` of streaming TTS)."""
        self._input_open = False
        self._check_drained()

    def reopen_input(self) -> bool:
        """Wait for more audio again (another ``tts`` for this ``playId``); ``False`` if over."""
        if self._state in (TrackState.FADING, TrackState.FINISHED):
            return False
        self._input_open = True
        return True

    @property
    def played_samples(self) -> int:
        """Samples handed out so far."""
        return self._played

    def end_at(self, sample: int) -> None:
        """Graceful interrupt: play on to ``sample`` (counted from the start), then finish."""
        if self._state in (TrackState.FADING, TrackState.FINISHED):
            return
        self._interrupted = True
        self._input_open = False
        excess = self._buffered - max(0, sample - self._played)
        while excess > 0 and self._chunks:
            tail = self._chunks[-1]
            available = len(tail) - (self._head if len(self._chunks) == 1 else 0)
            cut = min(excess, available)
            if cut == available:
                self._chunks.pop()
                if not self._chunks:
                    self._head = 0
            else:
                self._chunks[-1] = tail[: len(tail) - cut]
            self._buffered -= cut
            excess -= cut
        self._check_drained()

    def pause(self) -> None:
        """Freeze playback: :meth:`next_frame` returns ``None`` and the track does not end."""
        self._fire(_Input.PAUSE)

    def resume(self) -> None:
        """Continue after :meth:`pause`."""
        self._fire(_Input.RESUME)
        self._check_drained()

    def interrupt(self, fade_out_ms: int = 0) -> None:
        """Stop now, or after a linear fade of ``fade_out_ms`` (PROTOCOL.md fix 4)."""
        if self._state is TrackState.FINISHED or (
            self._state is TrackState.FADING and fade_out_ms > 0
        ):
            return
        self._interrupted = True
        self._input_open = False
        if fade_out_ms > 0:
            self._fade_len = fade_out_ms * _SAMPLES_PER_MS
            self._fade_done = 0
            self._fire(_Input.FADE)
        else:
            self._fire(_Input.STOP)
        self._check_drained()

    def next_frame(self) -> Pcm | None:
        """The next 20 ms frame (the last one zero-padded), or ``None``: see :attr:`state`.

        ``None`` while paused, while a streaming track waits for audio, and once finished.
        """
        self._check_drained()
        state = self._state
        if state is TrackState.PLAYING:
            if self._buffered < FRAME_SAMPLES and self._input_open:
                return None  # a streaming track waiting for its next chunk
            frame = self._take(FRAME_SAMPLES)
        elif state is TrackState.FADING:
            frame = self._faded(self._take(min(FRAME_SAMPLES, self._fade_len - self._fade_done)))
        else:
            return None
        self._check_drained()
        if len(frame) < FRAME_SAMPLES:
            frame = np.concatenate((frame, np.zeros(FRAME_SAMPLES - len(frame), dtype=np.int16)))
        return frame

    def _faded(self, samples: Pcm) -> Pcm:
        # Gain falls by 1/N a sample and reaches 0 on the fade's last sample.
        n = np.arange(self._fade_done + 1, self._fade_done + 1 + len(samples))
        gain = 1.0 - n / self._fade_len
        self._fade_done += len(samples)
        if self._fade_done >= self._fade_len:
            self._discard()  # what follows the fade is never played
        return np.rint(samples * gain).astype(np.int16)

    def _take(self, n: int) -> Pcm:
        parts: list[Pcm] = []
        while n > 0 and self._chunks:
            head = self._chunks[0]
            part = head[self._head : self._head + n]
            parts.append(part)
            n -= len(part)
            self._head += len(part)
            if self._head == len(head):
                self._chunks.popleft()
                self._head = 0
        if not parts:
            return _EMPTY
        frame = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        self._buffered -= len(frame)
        self._played += len(frame)
        return frame

    def _discard(self) -> None:
        self._chunks.clear()
        self._head = 0
        self._buffered = 0

    def _check_drained(self) -> None:
        if self._buffered == 0 and not self._input_open:
            self._fire(_Input.DRAINED)

    def _fire(self, event: _Input) -> None:
        self._state = _TRANSITIONS[self._state][event]
        if self._state is TrackState.FINISHED:
            self._discard()
