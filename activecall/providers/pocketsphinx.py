"""Offline speech recognition with PocketSphinx (its wheel carries the en-US model).

PocketSphinx keeps the GIL while it decodes (``bench/providers_offline.py`` measures it), so
decoding on a thread would stall the worker's 20 ms media tick. Each worker process therefore
runs one *recognition process* (this module run with ``-m``), started on the first ``open``,
and talks to it over a socket pair: audio and commands go in, transcripts come out, framed by
:func:`encode_frame` / :class:`FrameReader`. The process builds PocketSphinx decoders (0.3 to
0.8 s and about 70 MB each, sharing one language model) into a :class:`DecoderPool`: a stream
takes one, with a fresh front end, and gives it back when it closes, so a worker pays for as
many decoders as it has concurrent calls, once. Each stream's :class:`Recognizer` turns its
audio into partial and final :class:`Transcript`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from activecall.protocol.options import TranscriptionOption
from activecall.providers.base import ProviderError, Transcript

__all__ = [
    "DecoderPool",
    "Frame",
    "FrameReader",
    "Kind",
    "PocketsphinxAsr",
    "PocketsphinxStream",
    "Recognizer",
    "en_us_decoders",
    "encode_frame",
    "serve",
]

NAME: Final = "pocketsphinx"
RATE: Final = 16_000
PARTIAL_EVERY: Final = RATE // 4  # samples between partial hypotheses (250 ms of audio)
MAX_UTTERANCE: Final = 30 * RATE  # an utterance this long is finalised: bounds decoder memory
START_TIMEOUT: Final = 60.0  # seconds for the recognition process to load its first decoder
CLOSE_TIMEOUT: Final = 5.0  # seconds the recognition process has to exit once told to
_MODULE: Final = "activecall.providers.pocketsphinx"
_SEARCH: Final = "en-us"


# --- framing between a worker and its recognition process (no I/O) --------------------------


class Kind:
    """Frame kinds: worker to recognition process, then back."""

    OPEN: Final = 1
    AUDIO: Final = 2
    END: Final = 3
    CLOSE: Final = 4
    READY: Final = 16
    TRANSCRIPT: Final = 17
    FAILED: Final = 18
    CLOSED: Final = 19


_HEADER = struct.Struct("<BII")  # kind, stream id, payload length
MAX_PAYLOAD: Final = 1 << 24


@dataclass(frozen=True, slots=True)
class Frame:
    """One message: its kind, the stream it concerns (0: the process) and its payload."""

    kind: int
    stream: int
    payload: bytes = b""


def encode_frame(kind: int, stream: int, payload: bytes = b"") -> bytes:
    """The bytes of one frame."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return _HEADER.pack(kind, stream, len(payload)) + payload


class FrameReader:
    """Bytes in, whole frames out, however the bytes were cut."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they completed (ValueError if corrupt)."""
        self._buf += data
        frames: list[Frame] = []
        pos = 0
        while len(self._buf) - pos >= _HEADER.size:
            kind, stream, length = _HEADER.unpack_from(self._buf, pos)
            if length > MAX_PAYLOAD:
                raise ValueError(f"corrupt frame: payload length {length}")
            end = pos + _HEADER.size + length
            if end > len(self._buf):
                break
            frames.append(Frame(kind, stream, bytes(self._buf[pos + _HEADER.size : end])))
            pos = end
        del self._buf[:pos]
        return frames


def _transcript_payload(t: Transcript) -> bytes:
    return orjson.dumps(asdict(t))


def _transcript_from(payload: bytes) -> Transcript:
    return Transcript(**orjson.loads(payload))


# --- recognition (inside the recognition process) --------------------------------------------


class Recognizer:
    """One stream's utterances on one PocketSphinx ``Decoder``: PCM in, transcripts out.

    Partials come every ``partial_every`` samples when the hypothesis text changed; times are
    ms from the stream's first sample; ``index`` counts utterances that produced text.

    The final of the stream's first utterance is a second, whole-utterance decode of its
    audio: the live pass starts from PocketSphinx's default cepstral mean, which fits wideband
    speech, and mishears telephone audio (8 kHz, upsampled) until the mean has adapted, i.e.
    most of a first utterance. The whole-utterance pass normalises with the utterance's own
    mean (measured: telephone speech recognised in 8 of 8 renditions, against 1 of 8 for the
    live pass). Later utterances keep the adapted mean, so their live final is kept (the second
    pass costs about 0.15 s of CPU per second of speech and adds that much latency).
    """

    def __init__(
        self,
        decoder: Any,
        *,
        partial_every: int = PARTIAL_EVERY,
        max_utterance: int = MAX_UTTERANCE,
    ) -> None:
        self.decoder = decoder
        self._partial_every = partial_every
        self._max_utterance = max_utterance
        self._index = 0
        self._samples = 0  # pushed to this stream so far
        self._utt_start: int | None = None  # sample where the open utterance began
        self._unchecked = 0  # samples since the last partial hypothesis
        self._last_text = ""
        self._audio = bytearray()  # the open utterance, for its whole-utterance final
        self._redecode = True  # until the first utterance with text: see the class docstring

    def feed(self, pcm: bytes) -> list[Transcript]:
        """Decode PCM16LE 16 kHz (an even number of bytes); return the partials (and a final
        when an utterance reaches its maximum length).

        Hypotheses are taken every ``partial_every`` samples of the utterance, however the
        audio is cut, so partials come at the same audio positions for any push size.
        """
        out: list[Transcript] = []
        pos = 0
        while pos < len(pcm):
            if self._utt_start is None:
                self.decoder.start_utt()
                self._utt_start = self._samples
                self._unchecked = 0
                self._last_text = ""
            used = self._samples - self._utt_start
            room = min(self._partial_every - self._unchecked, self._max_utterance - used)
            piece = pcm[pos : pos + 2 * room]
            pos += len(piece)
            self.decoder.process_raw(piece, False, False)
            if self._redecode:
                self._audio += piece
            n = len(piece) // 2
            self._samples += n
            self._unchecked += n
            if used + n >= self._max_utterance:
                final = self.end_utterance()
                if final is not None:
                    out.append(final)
            elif self._unchecked >= self._partial_every:
                self._unchecked = 0
                text = _hyp_text(self.decoder)
                if text and text != self._last_text:
                    self._last_text = text
                    out.append(self._transcript(text, final=False))
        return out

    def end_utterance(self) -> Transcript | None:
        """Finish the open utterance: its final, or None if it had no audio and no text."""
        if self._utt_start is None:
            return None
        self.decoder.end_utt()
        if self._audio:
            self.decoder.start_utt()
            self.decoder.process_raw(bytes(self._audio), False, True)
            self.decoder.end_utt()
            self._audio = bytearray()
        text = _hyp_text(self.decoder)
        if text:
            self._redecode = False
        # Once a partial went out the utterance must be closed by a final, even an empty one.
        final = self._transcript(text, final=True) if text or self._last_text else None
        if final is not None:
            self._index += 1
        self._utt_start = None
        self._last_text = ""
        return final

    def close(self) -> None:
        """Drop the open utterance, if any, leaving the decoder ready for another stream."""
        if self._utt_start is not None:
            self.decoder.end_utt()
            self._utt_start = None
            self._audio = bytearray()

    def _transcript(self, text: str, *, final: bool) -> Transcript:
        assert self._utt_start is not None
        offset = self._utt_start * 1000 // RATE
        words = [s for s in self.decoder.seg() if not _is_filler(s.word)]
        if words:
            # PocketSphinx frames are 10 ms, counted from the utterance start
            start, end = offset + words[0].start_frame * 10, offset + words[-1].end_frame * 10 + 10
        else:
            start, end = offset, self._samples * 1000 // RATE
        return Transcript(text, final, self._index, start_ms=start, end_ms=end)


def _hyp_text(decoder: Any) -> str:
    hyp = decoder.hyp()
    return str(hyp.hypstr).strip() if hyp is not None else ""


def _is_filler(word: str) -> bool:
    return word.startswith(("<", "[", "++"))


class DecoderPool:
    """Decoders built on demand and reused: a stream takes one, and gives it back on close."""

    def __init__(self, factory: Callable[[], Any], *, max_idle: int = 4) -> None:
        self._factory = factory
        self._max_idle = max_idle
        self._idle: list[Any] = []
        self.built = 0

    def acquire(self) -> Any:
        """An idle decoder, or a new one; a reused one gets a new front end so no call inherits
        another's cepstral mean or noise estimate."""
        if self._idle:
            decoder = self._idle.pop()
            decoder.reinit_feat()  # ~0.1 ms: fresh feature extraction, model and search kept
            return decoder
        self.built += 1
        return self._factory()

    def release(self, decoder: Any) -> None:
        """Keep ``decoder`` for the next stream (beyond ``max_idle`` idle ones, free it)."""
        if len(self._idle) < self._max_idle:
            self._idle.append(decoder)

    @property
    def idle(self) -> int:
        """Decoders waiting for a stream."""
        return len(self._idle)


def en_us_decoders() -> Callable[[], Any]:
    """A factory of decoders for the wheel's en-US model that share one language model.

    Each decoder still has its own acoustic model, dictionary and search: about 70 MB once it
    has decoded a minute of speech, against 100 MB for a default ``Decoder()`` (measured by
    ``bench/providers_offline.py``), with identical transcripts.
    """
    shared: list[Any] = []  # the language model and the log table it was read with

    def build() -> Any:
        from pocketsphinx import Decoder, NGramModel, get_model_path

        decoder = Decoder(loglevel="FATAL", lm=None)
        if not shared:
            path = get_model_path("en-us/en-us.lm.bin")
            shared[:] = [NGramModel(decoder.config, decoder.logmath, path), decoder.logmath]
        decoder.add_lm(_SEARCH, shared[0])
        decoder.activate_search(_SEARCH)
        return decoder

    return build


class _Service:
    """The recognition process's state: one Recognizer per open stream, one decoder pool."""

    def __init__(self, pool: DecoderPool) -> None:
        self.pool = pool
        self.streams: dict[int, Recognizer] = {}

    def handle(self, frame: Frame) -> bytes:
        try:
            return self._handle(frame)
        except Exception as exc:  # a failure ends that stream only, never the process
            bad = self.streams.pop(frame.stream, None)
            if bad is not None:
                with contextlib.suppress(Exception):
                    bad.close()
            message = f"{type(exc).__name__}: {exc}".encode()
            return encode_frame(Kind.FAILED, frame.stream, message)

    def _handle(self, frame: Frame) -> bytes:
        sid = frame.stream
        if frame.kind == Kind.OPEN:
            self.streams[sid] = Recognizer(self.pool.acquire())
            return b""
        recognizer = self.streams.get(sid)
        if frame.kind == Kind.CLOSE:
            if recognizer is not None:
                del self.streams[sid]
                recognizer.close()
                self.pool.release(recognizer.decoder)
            return encode_frame(Kind.CLOSED, sid)
        if recognizer is None:
            return b""  # a stream that failed: its late audio is dropped
        if frame.kind == Kind.AUDIO:
            found = recognizer.feed(frame.payload)
        elif frame.kind == Kind.END:
            final = recognizer.end_utterance()
            found = [final] if final is not None else []
        else:
            raise ValueError(f"unknown frame kind {frame.kind}")
        return b"".join(encode_frame(Kind.TRANSCRIPT, sid, _transcript_payload(t)) for t in found)


def _coalesce(frames: list[Frame]) -> list[Frame]:
    """Join consecutive audio frames of one stream: one decoder call instead of many."""
    out: list[Frame] = []
    for key, group in itertools.groupby(frames, key=lambda f: (f.kind, f.stream)):
        if key[0] == Kind.AUDIO:
            out.append(Frame(Kind.AUDIO, key[1], b"".join(f.payload for f in group)))
        else:
            out.extend(group)
    return out


def serve(fd: int, factory: Callable[[], Any] | None = None) -> None:
    """Run the recognition service on the connected socket ``fd`` until its peer closes it."""
    sock = socket.socket(fileno=fd)
    service = _Service(DecoderPool(factory or en_us_decoders()))
    service.pool.release(service.pool.acquire())  # load the model before the first call
    sock.sendall(encode_frame(Kind.READY, 0))
    reader = FrameReader()
    # The worker closing its end (or dying) is this process's normal end.
    with sock, contextlib.suppress(ConnectionError):
        while data := sock.recv(1 << 16):
            out = b"".join(service.handle(f) for f in _coalesce(reader.feed(data)))
            if out:
                sock.sendall(out)


# --- the worker side ---------------------------------------------------------------------


_END: Final = object()


class PocketsphinxStream:
    """One call's recognition, decoded in the worker's recognition process."""

    def __init__(self, engine: _Engine, sid: int) -> None:
        self._engine = engine
        self._sid = sid
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._carry = b""  # an odd trailing byte, completed by the next push
        self._closed = False  # no more audio or commands from the caller
        self._finished = False  # the end (or the error) is queued for ``results()``

    def push(self, pcm: bytes) -> None:
        """Queue PCM16LE 16 kHz mono audio; never blocks; a no-op once the stream is closed."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise TypeError(f"pcm must be bytes, not {type(pcm).__name__}")
        if self._closed or not pcm:
            return
        data = self._carry + bytes(pcm)
        cut = len(data) & ~1
        self._carry = data[cut:]
        if cut:
            self._engine.send(Kind.AUDIO, self._sid, data[:cut])

    def end_utterance(self) -> None:
        """The VAD saw the end of speech: the utterance's final follows (none if it was empty)."""
        if not self._closed:
            self._carry = b""
            self._engine.send(Kind.END, self._sid)

    async def results(self) -> AsyncIterator[Transcript]:
        """Transcripts in order; ends after ``aclose()`` (once the finals asked for before it
        are out); ProviderError if recognition fails."""
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # a second reader ends too
                return
            if isinstance(item, ProviderError):
                self._queue.put_nowait(_END)
                raise item
            assert isinstance(item, Transcript)
            yield item

    async def aclose(self) -> None:
        """Stop recognising (push becomes a no-op) without waiting: ``results()`` still
        delivers the finals already asked for, then ends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._engine.send(Kind.CLOSE, self._sid):
            self._finish(_END)

    def _deliver(self, frame: Frame) -> None:
        if frame.kind == Kind.TRANSCRIPT:
            self._queue.put_nowait(_transcript_from(frame.payload))
        elif frame.kind == Kind.FAILED:
            self._closed = True
            self._finish(ProviderError(NAME, frame.payload.decode(errors="replace")))
        elif frame.kind == Kind.CLOSED:
            self._finish(_END)

    def _lost(self, reason: str) -> None:
        """The recognition process is gone: an error, unless the caller had closed already."""
        self._finish(_END if self._closed else ProviderError(NAME, reason))

    def _finish(self, item: object) -> None:
        """End the results with ``item`` (once) and forget the stream."""
        self._engine.streams.pop(self._sid, None)
        if not self._finished:
            self._finished = True
            self._queue.put_nowait(item)


class _Engine:
    """The worker's connection to its recognition process."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proc = proc
        self.streams: dict[int, PocketsphinxStream] = {}
        self.alive = True
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._frames = FrameReader()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls) -> _Engine:
        parent, child = socket.socketpair()
        # -P: the worker's working directory must not shadow the ``pocketsphinx`` package;
        # activecall is found where this worker found it.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                "-m",
                _MODULE,
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        except OSError as exc:
            parent.close()
            raise ProviderError(NAME, f"cannot start the recognition process: {exc}") from exc
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        engine = cls(proc, reader, writer)
        try:
            ready = await asyncio.wait_for(engine._read_frames(), START_TIMEOUT)
        except (TimeoutError, OSError, ValueError) as exc:
            await engine.aclose()
            raise ProviderError(NAME, f"recognition process did not start ({exc!r})") from exc
        if not ready or ready[0].kind != Kind.READY:
            await engine.aclose()
            raise ProviderError(NAME, f"recognition process exited (code {proc.returncode})")
        engine._task = asyncio.get_running_loop().create_task(engine._read_loop())
        return engine

    def open_stream(self) -> PocketsphinxStream:
        stream = PocketsphinxStream(self, next(self._ids))
        self.streams[stream._sid] = stream
        self.send(Kind.OPEN, stream._sid)
        return stream

    def send(self, kind: int, sid: int, payload: bytes = b"") -> bool:
        """Write one frame (buffered, never blocks); False when the process is gone."""
        if not self.alive:
            return False
        self._writer.write(encode_frame(kind, sid, payload))
        return True

    async def _read_frames(self) -> list[Frame]:
        """The next frames from the process; empty at end of file."""
        while True:
            data = await self._reader.read(1 << 16)
            if not data:
                return []
            frames = self._frames.feed(data)
            if frames:
                return frames

    async def _read_loop(self) -> None:
        reason = "the recognition process exited"
        try:
            while frames := await self._read_frames():
                for frame in frames:
                    stream = self.streams.get(frame.stream)
                    if stream is not None:
                        stream._deliver(frame)
        except (OSError, ValueError) as exc:
            reason = f"lost the recognition process ({exc!r})"
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.alive = False
        for stream in list(self.streams.values()):
            stream._lost(reason)

    async def aclose(self) -> None:
        """Close the connection (the process exits on end of file) and reap the process."""
        self.alive = False
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        try:
            await asyncio.wait_for(self.proc.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            await self._task
        self._fail("the recognizer was closed")


class PocketsphinxAsr:
    """ASR provider ``pocketsphinx``: the en-US model of the pocketsphinx wheel, offline."""

    name = NAME

    def __init__(self) -> None:
        self._engine: _Engine | None = None
        self._starting: asyncio.Lock | None = None

    async def open(self, option: TranscriptionOption) -> PocketsphinxStream:
        """Open a stream for one call (ProviderError for a language or model it lacks)."""
        _check(option)
        engine = await self._running_engine()
        return engine.open_stream()

    @property
    def process_id(self) -> int | None:
        """The worker's recognition process id (None before the first ``open``)."""
        engine = self._engine
        return engine.proc.pid if engine is not None and engine.alive else None

    async def aclose(self) -> None:
        """Stop the recognition process; open streams end with ProviderError. Idempotent."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.aclose()

    async def _running_engine(self) -> _Engine:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            engine = self._engine
            if engine is None or not engine.alive:
                if engine is not None:
                    await engine.aclose()  # reap the dead one
                self._engine = None
                engine = self._engine = await _Engine.start()
            return engine


def _check(option: TranscriptionOption) -> None:
    language = (option.language or "en").lower().replace("_", "-")
    if language.split("-")[0] != "en":
        raise ProviderError(NAME, f"language {option.language!r} unavailable: the model is en-US")
    if option.model_type not in (None, "", "en-us", "en-US"):
        raise ProviderError(NAME, f"model {option.model_type!r} unavailable (only 'en-us')")


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group; the worker decides when this process ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(int(sys.argv[1]))
    os._exit(0)  # skip interpreter teardown of the decoders: the process is done
