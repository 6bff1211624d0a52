"""The common Python design, as a baseline for ``bench/load_ws.py``.

ONE asyncio process (uvloop) with the ``websockets`` server on ``/call``. Each session runs the
official Silero VAD through onnxruntime inside the event loop (one ``InferenceSession`` shared by
all sessions, one thread, per-session LSTM state and 64-sample context as silero's
``OnnxWrapper`` keeps them) and activecall's ``VadProcessor`` for the events. This is what a
typical Python voice-agent framework does. PCM16LE 16 kHz (``codec: pcm``) only.

Commands: ``invite`` (``trackStart`` + ``answer{sdp:""}``) and ``hangup`` (``hangup`` event,
then close); other commands are ignored. Events carry the fields our server's do. ``GET
/health`` answers ``ok``; ``GET /metrics`` exposes two counters in Prometheus text.

Run: ``.venv/bin/python -m bench.baseline_server --port 8080``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import onnxruntime as ort
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from activecall.media.dump import rfc3339
from activecall.media.vad import Silence, Speaking, VadOption, VadProcessor

RATE = 16_000
CHUNK = 512  # samples per Silero decision (32 ms)
CHUNK_BYTES = CHUNK * 2
CHUNK_MS = CHUNK * 1000 // RATE
CONTEXT = 64

COUNTERS = {"baseline_audio_bytes_received_total": 0, "baseline_vad_chunks_total": 0}


def silero_onnx_path() -> Path:
    """The official ``silero_vad.onnx`` shipped in the silero-vad wheel (not imported: torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("silero-vad is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


def load_model() -> ort.InferenceSession:
    """One single-threaded CPU session, shared by every call."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(silero_onnx_path()), options, providers=["CPUExecutionProvider"]
    )


def now_ms() -> int:
    """Wall clock, epoch milliseconds."""
    return int(time.time() * 1000)


def rfc3339_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, as our server writes ``hangup`` times."""
    return rfc3339(datetime.fromtimestamp(ms / 1000, UTC))


class SileroStream:
    """One call's Silero state: LSTM state, the last 64 samples, unconsumed PCM."""

    __slots__ = ("_buffer", "_context", "_model", "_sr", "_state")

    def __init__(self, model: ort.InferenceSession) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._sr = np.array(RATE, np.int64)
        self._buffer = bytearray()

    def push(self, pcm: bytes) -> list[float]:
        """Add PCM16LE bytes; the speech probability of every 512-sample chunk completed."""
        self._buffer += pcm
        out: list[float] = []
        while len(self._buffer) >= CHUNK_BYTES:
            chunk = np.frombuffer(self._buffer, np.int16, CHUNK).astype(np.float32) / 32768.0
            del self._buffer[:CHUNK_BYTES]
            x = np.concatenate([self._context, chunk])[np.newaxis]
            prob, self._state = self._model.run(
                None, {"input": x, "state": self._state, "sr": self._sr}
            )
            self._context = chunk[-CONTEXT:]
            out.append(float(prob.reshape(-1)[0]))
        return out


class Call:
    """One ``/call`` WebSocket: commands in, VAD events out."""

    def __init__(self, ws: ServerConnection, model: ort.InferenceSession, call_id: str) -> None:
        self.ws = ws
        self.model = model
        self.id = call_id
        self.start_ms = now_ms()
        self.answer_ms: int | None = None
        self.vad: VadProcessor | None = None
        self.stream: SileroStream | None = None
        self.first_audio_ms: int | None = None
        self.chunks_done = 0

    async def emit(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event, separators=(",", ":")))

    async def on_text(self, text: str) -> bool:
        """Handle one command; False when the call is over."""
        try:
            command = json.loads(text)
            name = command["command"]
        except (ValueError, KeyError, TypeError):
            await self.error("invalid command")
            return True
        if name == "invite":
            option = command.get("option") or {}
            if option.get("codec", "pcm") != "pcm":
                await self.error("only codec 'pcm' is supported")
                return True
            vad = option.get("vad")
            if vad is not None:
                self.vad = VadProcessor(VadOption.from_json(vad))
                self.stream = SileroStream(self.model)
            self.answer_ms = ts = now_ms()
            await self.emit({"event": "trackStart", "trackId": self.id, "timestamp": ts})
            await self.emit({"event": "answer", "trackId": self.id, "timestamp": ts, "sdp": ""})
        elif name == "hangup":
            await self.hangup(command.get("reason") or "caller", "caller")
            return False
        return True

    async def on_audio(self, pcm: bytes) -> None:
        COUNTERS["baseline_audio_bytes_received_total"] += len(pcm)
        if self.stream is None or self.vad is None:
            return
        if self.first_audio_ms is None:
            self.first_audio_ms = now_ms()
        for p in self.stream.push(pcm):
            ts = self.first_audio_ms + self.chunks_done * CHUNK_MS
            self.chunks_done += 1
            COUNTERS["baseline_vad_chunks_total"] += 1
            for ev in self.vad.process(p, ts):
                if isinstance(ev, Speaking):
                    await self.emit(
                        {
                            "event": "speaking",
                            "trackId": self.id,
                            "timestamp": now_ms(),
                            "startTime": ev.start_time,
                            "confidence": 1.0,
                        }
                    )
                elif isinstance(ev, Silence):
                    await self.emit(
                        {
                            "event": "silence",
                            "trackId": self.id,
                            "timestamp": now_ms(),
                            "startTime": ev.start_time,
                            "duration": ev.duration,
                        }
                    )

    async def error(self, message: str) -> None:
        await self.emit(
            {
                "event": "error",
                "trackId": self.id,
                "timestamp": now_ms(),
                "sender": "command",
                "error": message,
            }
        )

    async def hangup(self, reason: str, initiator: str) -> None:
        ts = now_ms()
        event: dict[str, Any] = {
            "event": "hangup",
            "trackId": self.id,
            "timestamp": ts,
            "reason": reason,
            "initiator": initiator,
            "startTime": rfc3339_ms(self.start_ms),
            "hangupTime": rfc3339_ms(ts),
        }
        if self.answer_ms is not None:
            event["answerTime"] = rfc3339_ms(self.answer_ms)
        await self.emit(event)


def make_handler(model: ort.InferenceSession) -> Any:
    """The per-connection coroutine of the server."""

    async def handler(ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path if ws.request else "/")
        if url.path != "/call":
            await ws.close(1008, "only /call")
            return
        call_id = parse_qs(url.query).get("id", [f"s.{uuid.uuid4()}"])[0]
        call = Call(ws, model, call_id)
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    await call.on_audio(message)
                elif not await call.on_text(message):
                    break
        except ConnectionClosed:
            pass

    return handler


def process_request(ws: ServerConnection, request: Request) -> Response | None:
    """Plain HTTP for ``/health`` and ``/metrics``; everything else goes to the WebSocket."""
    path = urlsplit(request.path).path
    if path == "/health":
        return ws.respond(HTTPStatus.OK, "ok\n")
    if path == "/metrics":
        body = "".join(f"# TYPE {k} counter\n{k} {v}\n" for k, v in COUNTERS.items())
        return ws.respond(HTTPStatus.OK, body)
    return None


async def serve_forever(host: str, port: int) -> None:
    """Listen until cancelled."""
    handler = make_handler(load_model())
    async with serve(handler, host, port, process_request=process_request) as server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
