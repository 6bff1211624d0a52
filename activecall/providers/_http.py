"""What the cloud provider clients share: API keys, HTTP and WebSocket failures as
:class:`ProviderError`, server-sent events, and the two stream shapes they are built from.

* :class:`SentenceTtsStream` speaks text through one HTTP request per sentence (streaming
  mode) or per whole text, in order, yielding audio as it arrives.
* :class:`SocketAsrStream` is the plumbing of a WebSocket recogniser: ``push`` queues audio
  without blocking, one task sends, one task reads, and ``results()`` hands out transcripts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing, asynccontextmanager
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    WebSocketException,
)

from activecall.providers.base import ProviderError, Transcript, TtsChunk
from activecall.providers.text import SentenceSplitter

__all__ = [
    "HttpClient",
    "PcmAligner",
    "SentenceTtsStream",
    "SocketAsrStream",
    "SseDecoder",
    "api_key",
    "closed_error",
    "connect_websocket",
    "decode_json",
    "endpoint_url",
    "error_text",
    "post_stream",
    "split_long",
    "sse_events",
]

logger = logging.getLogger(__name__)

_ERROR_BODY_LIMIT = 300  # characters of a non-JSON error body worth showing


# --- keys and URLs --------------------------------------------------------------------------


def api_key(provider: str, given: str | None, variable: str) -> str:
    """``given`` if set, else the environment variable ``variable``; ProviderError if neither."""
    key = given or os.environ.get(variable)
    if not key:
        raise ProviderError(provider, f"no API key: set {variable} or the option's apiKey")
    return key


def endpoint_url(
    provider: str,
    base: str,
    path: str,
    *,
    websocket: bool = False,
    params: Mapping[str, str] | None = None,
) -> str:
    """``base`` with ``path`` appended (unless it already ends with it), in the right scheme,
    and ``params`` added to its query. ``base`` may be http(s) or ws(s) either way."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.netloc:
        raise ProviderError(provider, f"endpoint must be an http(s) or ws(s) URL, got {base!r}")
    secure = parts.scheme in ("https", "wss")
    scheme = ("wss" if secure else "ws") if websocket else ("https" if secure else "http")
    stem = parts.path.rstrip("/")
    if not stem.endswith(path):
        stem += path
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params or {})
    return urlunsplit((scheme, parts.netloc, stem, urlencode(query), ""))


def error_text(body: bytes) -> str:
    """The human-readable message of an API error body (OpenAI, Deepgram, or plain text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:_ERROR_BODY_LIMIT] or "no details"
    if isinstance(obj, dict):
        error = obj.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])  # OpenAI: {"error": {"message", "type", "code"}}
        for key in ("err_msg", "message", "error"):  # Deepgram: {"err_code", "err_msg"}
            if isinstance(obj.get(key), str):
                return str(obj[key])
    return text[:_ERROR_BODY_LIMIT]


# --- HTTP -----------------------------------------------------------------------------------


# A worker holds hundreds of calls; httpx's default pool (100 connections) would make the
# 101st concurrent synthesis wait for a free connection.
_LIMITS = httpx.Limits(max_connections=1000, max_keepalive_connections=100)


class HttpClient:
    """One ``httpx.AsyncClient`` per event loop, made on first use and kept for reuse.

    A provider lives as long as its worker process, which runs one loop; a new loop (tests)
    gets a new client, because pooled connections belong to the loop that opened them.
    """

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx.AsyncClient:
        """The client of the running loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            self._client = httpx.AsyncClient(limits=_LIMITS)
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the pooled connections (if the client belongs to the running loop)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


@asynccontextmanager
async def post_stream(
    client: httpx.AsyncClient,
    provider: str,
    url: str,
    *,
    headers: Mapping[str, str],
    json_body: Any,
    timeout: httpx.Timeout,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.Response]:
    """POST ``json_body`` and stream the reply; HTTP errors, timeouts and lost connections
    (also while the body is read inside the block) raise ProviderError."""
    host = urlsplit(url).netloc
    try:
        async with client.stream(
            "POST", url, headers=headers, json=json_body, params=params, timeout=timeout
        ) as response:
            if response.status_code >= 400:
                body = await response.aread()
                raise ProviderError(
                    provider,
                    f"HTTP {response.status_code} from {host}: {error_text(body)}",
                    code=response.status_code,
                )
            yield response
    except httpx.TimeoutException as exc:
        raise ProviderError(
            provider, f"{host} did not answer in time ({type(exc).__name__})"
        ) from exc
    except httpx.HTTPError as exc:
        raise ProviderError(
            provider, f"request to {host} failed: {exc or type(exc).__name__}"
        ) from exc


class SseDecoder:
    """Server-sent events without I/O: feed lines, get each event's ``data`` when it completes."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """One line (without its end); returns the event data when a blank line ends an event."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None  # a comment (servers send them as keep-alives)
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """The pending event's data, if any (also for a stream that ends without a blank line)."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


async def sse_events(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event of a streamed response, in order."""
    decoder = SseDecoder()
    async for line in response.aiter_lines():
        data = decoder.feed(line)
        if data is not None:
            yield data
    data = decoder.flush()
    if data is not None:
        yield data


# --- PCM and text -----------------------------------------------------------------------------


class PcmAligner:
    """Cuts a byte stream into whole 16-bit samples, carrying an odd byte to the next piece."""

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        """``data`` (after the carried byte) up to its last whole sample."""
        if self._carry:
            data = self._carry + data
        cut = len(data) & ~1
        self._carry = data[cut:]
        return data[:cut]


def split_long(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut after a sentence or a space."""
    pieces: list[str] = []
    text = text.strip()
    while len(text) > limit:
        head = text[:limit]
        cut = max(head.rfind(mark) for mark in (". ", "! ", "? ", "; ", "。", "！", "？"))
        cut = cut + 1 if cut > 0 else head.rfind(" ")
        if cut <= 0:
            cut = limit  # one word longer than the limit: cut it
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


# --- TTS over HTTP ----------------------------------------------------------------------------

Synthesize = Callable[[str], AsyncGenerator[bytes, None]]
"""Speak one piece of text: the raw PCM16LE bytes of the reply as they arrive."""


class SentenceTtsStream:
    """A TTS stream over an HTTP API: one request per sentence (streaming mode) or per text.

    Requests run one after another in a task started at once, so the first sentence is on its
    way while the caller still pushes text; audio is queued as it arrives.
    """

    def __init__(
        self,
        provider: str,
        synthesize: Synthesize,
        sample_rate: int,
        *,
        streaming: bool,
        max_chars: int,
    ) -> None:
        self._provider = provider
        self._synthesize = synthesize
        self._sample_rate = sample_rate
        self._max_chars = max_chars
        self._splitter = SentenceSplitter() if streaming else None
        self._whole: list[str] = []
        self._texts: asyncio.Queue[str | None] = asyncio.Queue()
        self._out: asyncio.Queue[TtsChunk | ProviderError | None] = asyncio.Queue()
        self._ended = False
        self._cancelled = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    def push_text(self, text: str) -> None:
        """Add text; in streaming mode each sentence it completes is requested at once."""
        if not isinstance(text, str):
            raise TypeError(f"push_text takes a str, got {type(text).__name__}")
        if self._cancelled:
            return  # late tokens of a reply that was interrupted
        if self._ended:
            raise ValueError("push_text after end_text: open a new stream for more text")
        if self._splitter is None:
            self._whole.append(text)
            return
        for sentence in self._splitter.push(text):
            self._texts.put_nowait(sentence)

    def end_text(self) -> None:
        """No more text: speak what remains; idempotent."""
        if self._ended or self._cancelled:
            return
        self._ended = True
        rest = self._splitter.flush() if self._splitter is not None else "".join(self._whole)
        if rest.strip():
            self._texts.put_nowait(rest)
        self._texts.put_nowait(None)

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """Audio in order as it arrives; ends after the last chunk or at cancel()."""
        while not self._cancelled:
            item = await self._out.get()
            if item is None or self._cancelled:
                self._out.put_nowait(None)  # a later chunks() call ends too
                return
            if isinstance(item, ProviderError):
                self._out.put_nowait(None)
                raise item
            yield item

    async def cancel(self) -> None:
        """Stop now: the request in flight is closed and chunks() ends; idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._task.cancel()
        self._out.put_nowait(None)
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while (text := await self._texts.get()) is not None:
                for piece in split_long(text, self._max_chars):
                    await self._speak(piece)
        except ProviderError as exc:
            self._out.put_nowait(exc)
        except Exception as exc:  # a bug must still end chunks(), not leave it waiting
            logger.exception("%s TTS failed", self._provider)
            self._out.put_nowait(ProviderError(self._provider, f"synthesis failed: {exc!r}"))
        else:
            self._out.put_nowait(None)

    async def _speak(self, text: str) -> None:
        aligner = PcmAligner()
        async with aclosing(self._synthesize(text)) as audio:
            async for data in audio:
                pcm = aligner.feed(data)
                if pcm:
                    self._out.put_nowait(TtsChunk(pcm, self._sample_rate))


# --- WebSocket --------------------------------------------------------------------------------


async def connect_websocket(
    provider: str,
    url: str,
    headers: Mapping[str, str],
    *,
    open_timeout: float,
    ping_interval: float | None,
    ping_timeout: float | None,
    close_timeout: float,
    error_header: str | None = None,
) -> ClientConnection:
    """Open a WebSocket; a refused upgrade (its status and the API's message), a timeout or an
    unreachable host raise ProviderError. ``error_header`` names a header carrying the reason."""
    host = urlsplit(url).netloc
    try:
        return await connect(
            url,
            additional_headers=dict(headers),
            open_timeout=open_timeout,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            close_timeout=close_timeout,
            compression=None,  # PCM and short JSON: deflate costs CPU and saves little
            max_size=2**22,
        )
    except InvalidStatus as exc:
        response = exc.response
        reason = response.headers.get(error_header) if error_header else None
        message = reason or error_text(bytes(response.body))
        status = response.status_code
        raise ProviderError(provider, f"HTTP {status} from {host}: {message}", code=status) from exc
    except TimeoutError as exc:
        raise ProviderError(provider, f"{host} did not accept the WebSocket in time") from exc
    except (OSError, WebSocketException) as exc:
        raise ProviderError(provider, f"cannot connect to {host}: {exc}") from exc


def closed_error(provider: str, exc: ConnectionClosed) -> ProviderError:
    """The ProviderError of a WebSocket that closed unexpectedly (the close code and reason)."""
    frame = exc.rcvd or exc.sent
    if frame is None:
        return ProviderError(provider, "connection lost (closed without a close frame)")
    reason = f": {frame.reason}" if frame.reason else ""
    return ProviderError(
        provider, f"connection closed with code {frame.code}{reason}", code=frame.code
    )


class SocketAsrStream:
    """Plumbing of an ASR stream over a WebSocket; subclasses say what goes on the wire.

    ``push``/``end_utterance`` only queue (never block, never raise); a send task drains the
    queue, a read task turns messages into transcripts. Subclasses implement ``_audio``,
    ``_end``, ``_send`` and ``_receive``; ``_flush``, ``_keepalive`` (run after
    ``keepalive_interval`` seconds with nothing to send) and ``_goodbye`` are optional.
    """

    provider: ClassVar[str]

    def __init__(
        self,
        ws: ClientConnection,
        *,
        close_timeout: float,
        keepalive_interval: float | None = None,
    ) -> None:
        self._ws = ws
        self._close_timeout = close_timeout
        self._keepalive_interval = keepalive_interval
        self._outbox: deque[bytes | str] = deque()
        self._wake = asyncio.Event()
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
        self._aligner = PcmAligner()
        self._closing = False  # set by aclose() or a failure: pushes are dropped from then on
        self._closed = False
        loop = asyncio.get_running_loop()
        self._sender = loop.create_task(self._send_loop())
        self._reader = loop.create_task(self._read_loop())

    def push(self, pcm: bytes) -> None:
        """Queue PCM16LE 16 kHz mono audio (an odd trailing byte waits for the next push)."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise TypeError(f"push takes PCM bytes, got {type(pcm).__name__}")
        if self._closing:
            return
        data = self._aligner.feed(bytes(pcm))
        if data:
            self._queue(self._audio(data))

    def end_utterance(self) -> None:
        """The VAD saw the end of speech: ask the service for this utterance's final."""
        if not self._closing:
            self._queue(self._end())

    async def results(self) -> AsyncIterator[Transcript]:
        """Transcripts as they come; ends when the stream is closed; raises ProviderError."""
        while True:
            item = await self._results.get()
            if item is None:
                self._results.put_nowait(None)  # a later results() call ends too
                return
            if isinstance(item, ProviderError):
                self._results.put_nowait(None)
                raise item
            yield item

    async def aclose(self) -> None:
        """Say goodbye to the service (bounded by the close timeout) and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        try:
            await self._goodbye()
        finally:
            self._sender.cancel()
            await self._ws.close()
            await asyncio.gather(self._sender, self._reader, return_exceptions=True)

    # --- to implement ---

    def _audio(self, pcm: bytes) -> Iterable[bytes | str]:
        """Outbox items for a piece of 16 kHz audio (whole samples)."""
        raise NotImplementedError

    def _end(self) -> Iterable[bytes | str]:
        """Outbox items that end the current utterance."""
        raise NotImplementedError

    async def _send(self, batch: list[bytes | str]) -> None:
        """Put queued items on the wire, in order."""
        raise NotImplementedError

    def _receive(self, message: str | bytes) -> list[Transcript]:
        """Transcripts of one message; raises ProviderError for an error message."""
        raise NotImplementedError

    def _flush(self) -> list[Transcript]:
        """Transcripts still held when the connection ends (a pending final)."""
        return []

    async def _keepalive(self) -> None:
        """Runs after ``keepalive_interval`` seconds with nothing to send."""

    async def _goodbye(self) -> None:
        """Runs at aclose() before the socket closes (e.g. flush and wait for the last finals)."""

    # --- plumbing ---

    def _queue(self, items: Iterable[bytes | str]) -> None:
        self._outbox.extend(items)
        self._wake.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                if not self._outbox:
                    self._wake.clear()
                    if self._keepalive_interval is None:
                        await self._wake.wait()
                    else:
                        try:
                            async with asyncio.timeout(self._keepalive_interval):
                                await self._wake.wait()
                        except TimeoutError:
                            await self._keepalive()
                            continue
                batch = list(self._outbox)
                self._outbox.clear()
                await self._send(batch)
        except ConnectionClosed:
            return  # the read task reports why
        except Exception as exc:  # a bug: say so rather than go quiet
            logger.exception("%s ASR sender failed", self.provider)
            self._fail(ProviderError(self.provider, f"sending audio failed: {exc!r}"))

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                for transcript in self._receive(message):
                    self._results.put_nowait(transcript)
            self._put_all(self._flush())
            if not self._closing:
                code, reason = self._ws.close_code, self._ws.close_reason
                detail = f"code {code}: {reason}" if reason else f"code {code}"
                message = f"the server closed the stream ({detail})"
                self._fail(ProviderError(self.provider, message, code=code))
        except ConnectionClosed as exc:
            self._put_all(self._flush())
            if not self._closing:
                self._fail(closed_error(self.provider, exc))
        except ProviderError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must still end results(), not leave it waiting
            logger.exception("%s ASR reader failed", self.provider)
            self._fail(ProviderError(self.provider, f"reading results failed: {exc!r}"))
        finally:
            self._results.put_nowait(None)

    def _put_all(self, transcripts: list[Transcript]) -> None:
        for transcript in transcripts:
            self._results.put_nowait(transcript)

    def _fail(self, error: ProviderError) -> None:
        self._closing = True
        self._results.put_nowait(error)


def decode_json(provider: str, message: str | bytes) -> dict[str, Any]:
    """A WebSocket message as a JSON object; ProviderError if it is not one."""
    try:
        obj = json.loads(message)
    except ValueError:
        raise ProviderError(provider, f"bad reply (not JSON): {message[:80]!r}") from None
    if not isinstance(obj, dict):
        raise ProviderError(provider, f"bad reply (not a JSON object): {message[:80]!r}")
    return obj
