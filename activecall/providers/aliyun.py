"""Aliyun DashScope: Paraformer real-time ASR and CosyVoice TTS over the inference WebSocket.

Both speak DashScope's run-task protocol on ``wss://dashscope.aliyuncs.com/api-ws/v1/inference``
with ``Authorization: Bearer <key>`` on the handshake (a bad key fails the handshake with HTTP
401/403). The client sends JSON instructions ``{"header": {"action", "task_id", "streaming":
"duplex"}, "payload": {...}}`` (``run-task``, ``continue-task``, ``finish-task``) and binary audio;
the server answers with ``task-started``, ``result-generated``, ``task-finished`` or
``task-failed`` (``header.error_code`` / ``header.error_message``) events, and, for synthesis,
binary audio frames. Followed documents (Alibaba Cloud Model Studio):

* Paraformer real-time recognition, WebSocket API / client events / server events:
  https://help.aliyun.com/zh/model-studio/websocket-for-paraformer-real-time-service,
  https://help.aliyun.com/zh/model-studio/paraformer-client-events,
  https://help.aliyun.com/zh/model-studio/paraformer-server-events
* CosyVoice synthesis, WebSocket API / client events / server events:
  https://help.aliyun.com/zh/model-studio/cosyvoice-websocket-api,
  https://help.aliyun.com/zh/model-studio/cosyvoice-client-events,
  https://help.aliyun.com/zh/model-studio/cosyvoice-server-events

The instruction builders and :func:`parse_event` are plain functions without I/O; the stream
classes are thin asyncio adapters around one ``websockets`` connection each. Paraformer
segments sentences itself, so :meth:`AliyunAsrStream.end_utterance` only flushes buffered audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers.base import ProviderError, Transcript, TtsChunk

__all__ = [
    "API_KEY_ENV",
    "ASR_MODEL",
    "DEFAULT_ENDPOINT",
    "TTS_MODEL",
    "TTS_SAMPLE_RATES",
    "TTS_VOICE",
    "AliyunAsr",
    "AliyunAsrStream",
    "AliyunTts",
    "AliyunTtsStream",
    "TaskEvent",
    "asr_run_task",
    "continue_task",
    "finish_task",
    "parse_event",
    "sentence_transcript",
    "tts_run_task",
]

logger = logging.getLogger(__name__)

PROVIDER = "aliyun"
DEFAULT_ENDPOINT = "wss://dashscope.aliyuncs.com/api-ws/v1/inference"
API_KEY_ENV = "DASHSCOPE_API_KEY"
ASR_MODEL = "paraformer-realtime-v2"
TTS_MODEL = "cosyvoice-v2"
TTS_VOICE = "longxiaochun_v2"
TTS_SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
"""PCM rates CosyVoice produces (the ``sample_rate`` run-task parameter)."""

ASR_RATE = 16000
# The service recommends ~100 ms of audio per binary message (1-16 KB).
ASR_CHUNK_BYTES = ASR_RATE * 2 // 10
# Audio queued while the socket cannot keep up; beyond this, new audio is dropped and counted.
MAX_PENDING_BYTES = ASR_RATE * 2 * 30
REPLY_TIMEOUT_S = 10.0
CANCEL_CLOSE_S = 1.0  # cancel() is a barge-in: never wait long on the peer


# --- protocol core (no I/O) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One server event: its name, the task it belongs to, its payload and (task-failed) error."""

    event: str
    task_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


def _header(action: str, task_id: str) -> dict[str, str]:
    return {"action": action, "task_id": task_id, "streaming": "duplex"}


def _typed(value: str) -> Any:
    """An ``extra`` value (always a string on our wire) as the JSON type DashScope expects."""
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _extra_parameters(extra: Mapping[str, str] | None, reserved: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if key in reserved:
            raise ProviderError(PROVIDER, f"extra may not set {key!r} (the client sets it)")
        out[key] = _typed(value)
    return out


_ASR_RESERVED = {"format", "sample_rate"}
_TTS_RESERVED = {"format", "sample_rate", "text_type"}


def asr_run_task(task_id: str, option: TranscriptionOption) -> dict[str, Any]:
    """The ``run-task`` instruction of a Paraformer recognition task over 16 kHz PCM."""
    parameters: dict[str, Any] = {"format": "pcm", "sample_rate": ASR_RATE}
    if option.language:
        # language_hints takes bare codes ("zh", "en", "ja", ...), not regions
        parameters["language_hints"] = [option.language.split("-")[0].lower()]
    parameters.update(_extra_parameters(option.extra, _ASR_RESERVED))
    return {
        "header": _header("run-task", task_id),
        "payload": {
            "task_group": "audio",
            "task": "asr",
            "function": "recognition",
            "model": option.model_type or ASR_MODEL,
            "parameters": parameters,
            "input": {},
        },
    }


def tts_run_task(task_id: str, option: SynthesisOption, sample_rate: int) -> dict[str, Any]:
    """The ``run-task`` instruction of a CosyVoice synthesis task producing PCM."""
    parameters: dict[str, Any] = {
        "text_type": "PlainText",
        "voice": option.speaker or TTS_VOICE,
        "format": "pcm",
        "sample_rate": sample_rate,
    }
    if option.volume is not None:
        parameters["volume"] = option.volume  # 0-100, service default 50
    if option.speed is not None:
        parameters["rate"] = option.speed  # 0.5-2.0, service default 1.0
    parameters.update(_extra_parameters(option.extra, _TTS_RESERVED))
    return {
        "header": _header("run-task", task_id),
        "payload": {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": option.model or TTS_MODEL,
            "parameters": parameters,
            "input": {},
        },
    }


def continue_task(task_id: str, text: str) -> dict[str, Any]:
    """The ``continue-task`` instruction carrying text to synthesise."""
    return {"header": _header("continue-task", task_id), "payload": {"input": {"text": text}}}


def finish_task(task_id: str, *, cancel: bool = False) -> dict[str, Any]:
    """The ``finish-task`` instruction; ``cancel`` asks synthesis to stop without more audio."""
    payload_input: dict[str, Any] = {"directive": "cancel"} if cancel else {}
    return {"header": _header("finish-task", task_id), "payload": {"input": payload_input}}


def parse_event(text: str) -> TaskEvent:
    """Decode a server text frame; ValueError when it is not a DashScope event."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON: {exc}") from None
    header = message.get("header") if isinstance(message, dict) else None
    if not isinstance(header, dict) or not isinstance(header.get("event"), str):
        raise ValueError("reply has no header.event")
    payload = message.get("payload")
    code, error = header.get("error_code"), header.get("error_message")
    return TaskEvent(
        event=header["event"],
        task_id=str(header.get("task_id", "")),
        payload=payload if isinstance(payload, dict) else {},
        error_code=None if code is None else str(code),
        error_message=None if error is None else str(error),
    )


def sentence_transcript(payload: Mapping[str, Any], index: int) -> Transcript | None:
    """The transcript in a recognition ``result-generated`` payload; None for heartbeats/empty."""
    output = payload.get("output")
    sentence = output.get("sentence") if isinstance(output, dict) else None
    if not isinstance(sentence, dict) or sentence.get("heartbeat"):
        return None
    text = sentence.get("text")
    if not isinstance(text, str) or not text:
        return None
    begin, end = sentence.get("begin_time"), sentence.get("end_time")
    return Transcript(
        text=text,
        final=bool(sentence.get("sentence_end")),
        index=index,
        start_ms=begin if isinstance(begin, int) else None,
        end_ms=end if isinstance(end, int) else None,
    )


def task_failed_error(event: TaskEvent) -> ProviderError:
    """The ProviderError of a ``task-failed`` event (DashScope codes are words, kept in text)."""
    code = event.error_code or "unknown error"
    detail = f": {event.error_message}" if event.error_message else ""
    return ProviderError(PROVIDER, f"task failed with {code}{detail}")


# --- connection helpers ---------------------------------------------------------------------


def _api_key(secret_key: str | None) -> str:
    key = secret_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise ProviderError(PROVIDER, f"no API key: set secretKey/apiKey or {API_KEY_ENV}")
    return key


def _endpoint(endpoint: str | None) -> str:
    url = endpoint or DEFAULT_ENDPOINT
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ProviderError(PROVIDER, f"endpoint must be a ws:// or wss:// URL, got {url!r}")
    return url


async def _open_socket(url: str, key: str, timeout: float) -> ClientConnection:
    """Connect with the bearer key; every failure becomes a ProviderError (key never shown)."""
    host = urllib.parse.urlsplit(url).netloc
    try:
        return await connect(
            url,
            additional_headers={"Authorization": f"Bearer {key}"},
            open_timeout=timeout,
            close_timeout=timeout,
            # PCM barely compresses; deflate would only cost the worker's CPU
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        why = " (API key rejected)" if status in (401, 403) else ""
        raise ProviderError(
            PROVIDER, f"{host} refused the handshake: HTTP {status}{why}", code=status
        ) from None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ProviderError(
            PROVIDER, f"cannot connect to {host}: {exc or type(exc).__name__}"
        ) from None


async def _start_task(ws: ClientConnection, run_task: dict[str, Any], timeout: float) -> None:
    """Send run-task and wait for task-started; closes the socket and raises on failure."""
    try:
        await ws.send(json.dumps(run_task, ensure_ascii=False))
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    continue
                event = parse_event(message)
                if event.event == "task-started":
                    return
                if event.event == "task-failed":
                    raise task_failed_error(event)
    except BaseException as exc:
        await _abandon(ws)
        if isinstance(exc, TimeoutError):
            raise ProviderError(PROVIDER, f"no task-started within {timeout:g} s") from None
        if isinstance(exc, ConnectionClosed):
            raise ProviderError(
                PROVIDER, f"connection closed before task-started ({exc})"
            ) from None
        if isinstance(exc, ValueError):
            raise ProviderError(PROVIDER, f"bad reply to run-task: {exc}") from None
        raise


async def _abandon(ws: ClientConnection) -> None:
    """Close without waiting on a peer that may be gone or silent."""
    ws.transport.abort()
    await ws.wait_closed()


async def _finish_socket(ws: ClientConnection, *, clean: bool) -> None:
    """After the task ended: a closing handshake if it ended well, else just drop the socket."""
    if clean:
        await ws.close()  # bounded by close_timeout
    else:
        await _abandon(ws)


def _closed_error(exc: ConnectionClosed, waiting_for: str) -> ProviderError:
    frame = exc.rcvd
    if frame is None:
        how = "no close frame"
    else:
        how = f"close code {frame.code}{f' {frame.reason}' if frame.reason else ''}"
    return ProviderError(PROVIDER, f"connection lost before {waiting_for} ({how})")


# --- ASR ------------------------------------------------------------------------------------


class AliyunAsr:
    """Paraformer real-time recognition (``paraformer-realtime-v2`` unless ``model`` says)."""

    name = "aliyun"

    def __init__(self) -> None:
        self.reply_timeout = REPLY_TIMEOUT_S
        """Seconds to wait for the connection, task-started, and task-finished after aclose."""

    async def open(self, option: TranscriptionOption) -> AliyunAsrStream:
        """Connect, start a recognition task and return its stream (ProviderError if not)."""
        key = _api_key(option.secret_key)
        url = _endpoint(option.endpoint)
        task_id = str(uuid.uuid4())
        run_task = asr_run_task(task_id, option)
        ws = await _open_socket(url, key, self.reply_timeout)
        await _start_task(ws, run_task, self.reply_timeout)
        return AliyunAsrStream(ws, task_id, reply_timeout=self.reply_timeout)


class AliyunAsrStream:
    """One recognition task: audio goes out in ~100 ms binary frames, sentences come back."""

    def __init__(self, ws: ClientConnection, task_id: str, *, reply_timeout: float) -> None:
        self._ws = ws
        self._task_id = task_id
        self._timeout = reply_timeout
        self._pending = bytearray()
        self._flush = False
        self._closing = False
        self._wakeup = asyncio.Event()
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
        self._finals = 0
        self._expecting = False  # finish-task sent: silence now means trouble
        self._heard = asyncio.get_running_loop().time()
        self._close_task: asyncio.Task[None] | None = None
        self.dropped_bytes = 0
        """Audio dropped because more than 30 s was waiting for the socket."""
        self._receiver = asyncio.create_task(self._receive())
        self._sender = asyncio.create_task(self._send())

    def push(self, pcm: bytes) -> None:
        """Queue PCM16LE 16 kHz mono audio (whole samples); ignored once the stream closes."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise TypeError(f"push takes PCM bytes, got {type(pcm).__name__}")
        if len(pcm) % 2:
            raise ValueError(f"PCM16 audio must be whole samples, got {len(pcm)} bytes")
        if self._closing or self._receiver.done():
            return
        if len(self._pending) + len(pcm) > MAX_PENDING_BYTES:
            self.dropped_bytes += len(pcm)
            return
        self._pending += pcm
        if len(self._pending) >= ASR_CHUNK_BYTES:
            self._wakeup.set()

    def end_utterance(self) -> None:
        """Send the buffered audio now; Paraformer ends sentences itself (no per-utterance cut)."""
        self._flush = True
        self._wakeup.set()

    async def results(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts; ends after task-finished, raises ProviderError."""
        while True:
            item = await self._results.get()
            if item is None or isinstance(item, ProviderError):
                self._results.put_nowait(item)  # later callers see the same end
                if item is not None:
                    raise item
                return
            yield item

    async def aclose(self) -> None:
        """Send the rest of the audio and finish-task, wait for task-finished; idempotent."""
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closing = True
        self._flush = True
        self._wakeup.set()
        try:
            async with asyncio.timeout(self._timeout):
                await asyncio.shield(self._sender)
        except TimeoutError:
            self._sender.cancel()
        self._heard = asyncio.get_running_loop().time()
        self._expecting = True
        # the receiver ends by itself: task-finished, task-failed, lost socket or silence
        await asyncio.wait({self._receiver})

    async def _send(self) -> None:
        ws = self._ws
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while len(self._pending) >= ASR_CHUNK_BYTES or (self._flush and self._pending):
                    size = min(len(self._pending), ASR_CHUNK_BYTES)
                    chunk = bytes(self._pending[:size])
                    del self._pending[:size]
                    await ws.send(chunk)
                if self._closing:
                    if not self._receiver.done():
                        await ws.send(json.dumps(finish_task(self._task_id)))
                    return
                self._flush = False
        except ConnectionClosed:
            return  # the receiver reports the loss

    async def _receive(self) -> None:
        outcome = await self._read_events()
        self._results.put_nowait(outcome)
        await _finish_socket(self._ws, clean=outcome is None)

    async def _read_events(self) -> ProviderError | None:
        """Read events until the task ends; None when it ended with task-finished."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self._ws.recv(), self._timeout)
                except TimeoutError:
                    # silence is normal while the caller is quiet; not after finish-task
                    if self._expecting and loop.time() - self._heard >= self._timeout:
                        return ProviderError(
                            PROVIDER, f"no task-finished within {self._timeout:g} s"
                        )
                    continue
                self._heard = loop.time()
                if isinstance(message, bytes):
                    continue
                event = parse_event(message)
                if event.event == "task-finished":
                    return None
                if event.event == "task-failed":
                    return task_failed_error(event)
                if event.event == "result-generated":
                    transcript = sentence_transcript(event.payload, self._finals)
                    if transcript is not None:
                        self._finals += transcript.final
                        self._results.put_nowait(transcript)
        except ConnectionClosed as exc:
            return _closed_error(exc, "task-finished")
        except ValueError as exc:
            return ProviderError(PROVIDER, f"bad event: {exc}")
        except Exception as exc:  # a bug must still end the stream, not leave it waiting
            logger.exception("aliyun reader failed")
            return ProviderError(PROVIDER, f"reading events failed: {exc!r}")


# --- TTS ------------------------------------------------------------------------------------


class AliyunTts:
    """CosyVoice synthesis (``cosyvoice-v2`` unless ``model`` says; voice from ``speaker``)."""

    name = "aliyun"

    def __init__(self) -> None:
        self.reply_timeout = REPLY_TIMEOUT_S
        """Seconds to wait for the connection, task-started, and each reply once text ended."""

    async def open(self, option: SynthesisOption, *, streaming: bool) -> AliyunTtsStream:
        """Connect and start a synthesis task; ``streaming`` sends each pushed piece at once."""
        key = _api_key(option.secret_key)
        url = _endpoint(option.endpoint)
        rate = option.samplerate or 16000
        if rate not in TTS_SAMPLE_RATES:
            listed = ", ".join(map(str, TTS_SAMPLE_RATES))
            raise ProviderError(PROVIDER, f"samplerate {rate} not supported ({listed})")
        task_id = str(uuid.uuid4())
        run_task = tts_run_task(task_id, option, rate)
        ws = await _open_socket(url, key, self.reply_timeout)
        await _start_task(ws, run_task, self.reply_timeout)
        return AliyunTtsStream(
            ws, task_id, streaming=streaming, sample_rate=rate, reply_timeout=self.reply_timeout
        )


class AliyunTtsStream:
    """One synthesis task: text goes out as continue-task, PCM frames come back."""

    def __init__(
        self,
        ws: ClientConnection,
        task_id: str,
        *,
        streaming: bool,
        sample_rate: int,
        reply_timeout: float,
    ) -> None:
        self._ws = ws
        self._task_id = task_id
        self._streaming = streaming
        self._rate = sample_rate
        self._timeout = reply_timeout
        self._text: list[str] = []
        self._ended = False
        self._cancelled = False
        self._odd = b""  # a byte of a sample split across frames
        self._heard = asyncio.get_running_loop().time()
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self._events: asyncio.Queue[TtsChunk | ProviderError | None] = asyncio.Queue()
        self._receiver = asyncio.create_task(self._receive())
        self._sender = asyncio.create_task(self._send())

    @property
    def sample_rate(self) -> int:
        """The rate of the PCM this stream yields."""
        return self._rate

    def push_text(self, text: str) -> None:
        """Add text: sent at once when streaming (the service splits sentences), else kept."""
        if not isinstance(text, str):
            raise TypeError(f"push_text takes str, got {type(text).__name__}")
        if self._ended:
            raise RuntimeError("push_text after end_text: open a new stream for more text")
        if self._cancelled or not text:
            return
        if self._streaming:
            self._outgoing.put_nowait(json.dumps(continue_task(self._task_id, text)))
        else:
            self._text.append(text)

    def end_text(self) -> None:
        """No more text: send what is kept and finish-task; idempotent."""
        if self._ended or self._cancelled:
            return
        self._ended = True
        whole = "".join(self._text)
        if whole:
            self._outgoing.put_nowait(json.dumps(continue_task(self._task_id, whole)))
        self._outgoing.put_nowait(json.dumps(finish_task(self._task_id)))
        self._outgoing.put_nowait(None)
        self._heard = asyncio.get_running_loop().time()

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """PCM as it arrives; ends after task-finished (or cancel); raises ProviderError."""
        while True:
            item = await self._events.get()
            if item is None or isinstance(item, ProviderError):
                self._events.put_nowait(item)
                if item is not None:
                    raise item
                return
            yield item

    async def cancel(self) -> None:
        """Stop now: finish-task with the cancel directive, then close; idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._sender.cancel()
        if not self._receiver.done():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._ws.send(json.dumps(finish_task(self._task_id, cancel=True)))
            except (ConnectionClosed, TimeoutError):
                pass
            self._receiver.cancel()
        await asyncio.wait({self._receiver, self._sender})
        self._events.put_nowait(None)
        try:
            # a close frame after the directive, so it is not lost in a reset; brief
            async with asyncio.timeout(CANCEL_CLOSE_S):
                await self._ws.close()
        except TimeoutError:
            await _abandon(self._ws)

    async def _send(self) -> None:
        try:
            while (message := await self._outgoing.get()) is not None:
                await self._ws.send(message)
        except ConnectionClosed:
            return  # the receiver reports the loss

    async def _receive(self) -> None:
        outcome = await self._read_events()
        self._events.put_nowait(outcome)
        await _finish_socket(self._ws, clean=outcome is None)

    async def _read_events(self) -> ProviderError | None:
        """Read frames until the task ends; None when it ended with task-finished."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self._ws.recv(), self._timeout)
                except TimeoutError:
                    # before end_text the caller may still be producing text
                    if self._ended and loop.time() - self._heard >= self._timeout:
                        return ProviderError(
                            PROVIDER, f"no audio or task-finished for {self._timeout:g} s"
                        )
                    continue
                self._heard = loop.time()
                if isinstance(message, bytes):
                    pcm = self._odd + message
                    cut = len(pcm) - len(pcm) % 2
                    self._odd = pcm[cut:]
                    if cut:
                        self._events.put_nowait(TtsChunk(pcm[:cut], self._rate))
                    continue
                event = parse_event(message)
                if event.event == "task-finished":
                    return None
                if event.event == "task-failed":
                    return task_failed_error(event)
        except ConnectionClosed as exc:
            return _closed_error(exc, "task-finished")
        except ValueError as exc:
            return ProviderError(PROVIDER, f"bad event: {exc}")
        except Exception as exc:  # a bug must still end the stream, not leave it waiting
            logger.exception("aliyun reader failed")
            return ProviderError(PROVIDER, f"reading events failed: {exc!r}")
