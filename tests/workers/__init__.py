"""Worker tests, and the sessions that the worker and pool tests run inside real workers."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import orjson

from activecall.workers.worker import VAD_CHUNK, SessionContext, VadChunk, WorkerSession

CHUNK_BYTES = VAD_CHUNK * 2


class EchoSession:
    """Text in → text out, audio in → audio out. A few texts are instructions:

    ``boom`` raises, ``end`` ends the session, ``pid`` answers the worker's pid, ``hang``
    blocks the worker's loop for good.
    """

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.tick_raises = bool(ctx.params.get("tickRaises"))

    def on_text(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("boom")
        if data == b"end":
            self.ctx.end()
        elif data == b"pid":
            self.ctx.emit_text(b"%d" % os.getpid())
        elif data == b"hang":
            time.sleep(3600)
        else:
            self.ctx.emit_text(data)

    def on_audio(self, data: bytes) -> None:
        self.ctx.emit_audio(data)

    def on_close(self, reason: str) -> None:
        self.ctx.emit_text(b"closed " + reason.encode())
        if not self.ctx.params.get("lingers"):
            self.ctx.end()

    def on_kill(self) -> None:
        self.ctx.emit_text(b"killed")
        self.ctx.end()

    def vad_chunks(self) -> Sequence[VadChunk]:
        return ()

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        raise AssertionError("no chunks, no probabilities")

    def tick(self, now_ms: int) -> None:
        if self.tick_raises:
            raise ValueError("tick")


class VadProbeSession:
    """Buffers 16 kHz int16 audio, hands out every complete 512-sample chunk (int16, or float32
    when ``params["dtype"] == "float32"``) and, after the text ``report``, once every chunk
    was evaluated, emits ``{"chunks": n, "probs": [...]}`` and ends."""

    def __init__(self, ctx: SessionContext) -> None:
        self.ctx = ctx
        self.as_float = ctx.params.get("dtype") == "float32"
        self.bad_chunk = ctx.params.get("badChunk")  # "shape" or "list": hand out garbage
        self.buffer = bytearray()
        self.handed = 0
        self.probs: list[float] = []
        self.reporting = False

    def on_text(self, data: bytes) -> None:
        assert data == b"report"
        self.reporting = True

    def on_audio(self, data: bytes) -> None:
        self.buffer += data

    def on_close(self, reason: str) -> None:
        self.ctx.end()

    def on_kill(self) -> None:
        self.ctx.end()

    def vad_chunks(self) -> Sequence[VadChunk]:
        if self.bad_chunk and self.buffer:
            return [[0] * VAD_CHUNK] if self.bad_chunk == "list" else [np.zeros(100, np.int16)]  # type: ignore[list-item]
        count = len(self.buffer) // CHUNK_BYTES
        pcm = np.frombuffer(bytes(self.buffer[: count * CHUNK_BYTES]), np.int16)
        del self.buffer[: count * CHUNK_BYTES]
        self.handed += count
        chunks = pcm.reshape(count, VAD_CHUNK)
        if self.as_float:
            return list(chunks.astype(np.float32) / np.float32(32768))
        return list(chunks)

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        assert probabilities.dtype == np.float32
        self.probs.extend(probabilities.tolist())

    def tick(self, now_ms: int) -> None:
        if self.reporting and len(self.probs) == self.handed and len(self.buffer) < CHUNK_BYTES:
            self.ctx.emit_text(orjson.dumps({"chunks": self.handed, "probs": self.probs}))
            self.ctx.end()


def make_session(ctx: SessionContext) -> WorkerSession:
    """The test factory: ``params["kind"]`` picks ``echo`` (default), ``vad`` or ``refuse``."""
    kind = ctx.params.get("kind", "echo")
    if kind == "vad":
        return VadProbeSession(ctx)
    if kind == "refuse":
        raise RuntimeError("the factory refuses")
    return EchoSession(ctx)
