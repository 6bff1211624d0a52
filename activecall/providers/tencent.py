"""Tencent Cloud: real-time ASR and real-time (streaming) TTS WebSockets, signed with HMAC-SHA1.

Both services authenticate the WebSocket URL itself: every parameter is in the query, and a
``signature`` is the Base64 of HMAC-SHA1 (keyed by the SecretKey) over the URL without its
scheme, parameters sorted by name with raw values; the signature is then URL-encoded. Followed
documents (API 2.0, Tencent Cloud):

* 实时语音识别（websocket）https://cloud.tencent.com/document/product/1093/48982 — ``wss://
  asr.cloud.tencent.com/asr/v2/<appid>?secretid&timestamp&expired&nonce&engine_model_type&
  voice_id&voice_format&needvad...&signature``. The server answers the handshake with
  ``{"code": 0}`` (non-zero and a close when the signature is refused), takes binary audio
  (40 ms per message recommended) and ``{"type": "end"}``, and sends results whose
  ``result.slice_type`` is 0 (sentence begins), 1 (unstable) or 2 (sentence final), then
  ``{"final": 1}``; any ``code`` other than 0 is an error.
* 实时语音合成（websocket）https://cloud.tencent.com/document/product/1073/94308 — ``wss://
  tts.cloud.tencent.com/stream_ws?Action=TextToStreamAudioWS&AppId&SecretId&Timestamp&Expired&
  SessionId&Text&VoiceType&Codec&SampleRate&EnableSubtitle...&Signature``, signed over
  ``GET`` + host + path + ``?`` + sorted parameters (as the official Python SDK's
  ``tts/speech_synthesizer_ws.py`` does). Audio comes in binary frames, ``result.subtitles``
  (``Text``, ``BeginTime``, ``EndTime``, ``BeginIndex``, ``EndIndex``) in JSON frames, and
  ``{"final": 1}`` ends it. One connection speaks one text, so a streaming stream opens one
  request per sentence (:class:`~activecall.providers.text.SentenceSplitter`), in order.

:func:`sign` and the URL builders are pure functions (the clock and random values are
arguments); the stream classes are thin asyncio adapters. Tencent segments sentences itself
(``needvad=1``), so :meth:`TencentAsrStream.end_utterance` only flushes buffered audio.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers.base import ProviderError, Subtitle, Transcript, TtsChunk
from activecall.providers.text import Sentence, SentenceSplitter

__all__ = [
    "APPID_ENV",
    "ASR_ENDPOINT",
    "SECRET_ID_ENV",
    "SECRET_KEY_ENV",
    "TTS_ENDPOINT",
    "TTS_SAMPLE_RATES",
    "Credentials",
    "TencentAsr",
    "TencentAsrStream",
    "TencentTts",
    "TencentTtsStream",
    "asr_params",
    "asr_url",
    "canonical_query",
    "result_transcript",
    "sign",
    "signed_url",
    "subtitle",
    "tts_params",
    "tts_requests",
    "tts_url",
]

logger = logging.getLogger(__name__)

PROVIDER = "tencent"
ASR_ENDPOINT = "wss://asr.cloud.tencent.com/asr/v2"
"""Base of the ASR URL; the AppID is appended as the last path segment."""
TTS_ENDPOINT = "wss://tts.cloud.tencent.com/stream_ws"
APPID_ENV = "TENCENT_APPID"
SECRET_ID_ENV = "TENCENT_SECRET_ID"
SECRET_KEY_ENV = "TENCENT_SECRET_KEY"
ASR_ENGINE = "16k_zh"
TTS_VOICE = "101001"
TTS_SAMPLE_RATES = (8000, 16000, 24000)
SIGNATURE_TTL_S = 24 * 3600  # as the official SDKs sign

ASR_RATE = 16000
# The service wants ~40 ms per binary message at a 1:1 real-time rate.
ASR_CHUNK_BYTES = ASR_RATE * 2 * 40 // 1000
MAX_PENDING_BYTES = ASR_RATE * 2 * 30
# Characters per synthesis request. The service limits the Text of one request; this cap is
# our own, well inside it, so a long reply is spoken in several requests cut at sentence ends.
TTS_MAX_CHARS = 300
REPLY_TIMEOUT_S = 10.0

_LANGUAGE_ENGINES = {"zh": "16k_zh", "en": "16k_en", "ja": "16k_ja", "ko": "16k_ko"}
_ASR_RESERVED = {"secretid", "timestamp", "expired", "nonce", "voice_id", "voice_format"}
_TTS_RESERVED = {"Action", "AppId", "SecretId", "Timestamp", "Expired", "SessionId", "Text"}
_TTS_RESERVED |= {"Codec", "SampleRate"}


# --- signing (no I/O) -------------------------------------------------------------------------


def sign(source: str, secret_key: str) -> str:
    """Base64 of HMAC-SHA1 over ``source`` keyed by ``secret_key`` (both services)."""
    digest = hmac.new(secret_key.encode(), source.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def canonical_query(params: Mapping[str, str]) -> str:
    """``name=value`` pairs sorted by name, values raw, joined by ``&``: what gets signed."""
    return "&".join(f"{name}={params[name]}" for name in sorted(params))


def signed_url(
    base: str, params: Mapping[str, str], secret_key: str, *, signature: str, prefix: str = ""
) -> str:
    """``base`` with ``params`` and their signature (named ``signature``) in the query.

    The signed text is ``prefix`` + host + path + ``?`` + :func:`canonical_query`; names and
    values in the URL are percent-encoded, the signature included (its ``+``, ``/``, ``=``).
    """
    parts = urllib.parse.urlsplit(base)
    source = f"{prefix}{parts.netloc}{parts.path}?{canonical_query(params)}"
    pairs = [(name, params[name]) for name in sorted(params)]
    pairs.append((signature, sign(source, secret_key)))
    query = "&".join(f"{_quote(name)}={_quote(value)}" for name, value in pairs)
    return f"{base}?{query}"


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def asr_url(endpoint: str, app_id: str, params: Mapping[str, str], secret_key: str) -> str:
    """The signed recognition URL: ``<endpoint>/<appid>?<params>&signature=...``."""
    return signed_url(f"{endpoint.rstrip('/')}/{app_id}", params, secret_key, signature="signature")


def tts_url(endpoint: str, params: Mapping[str, str], secret_key: str) -> str:
    """The signed synthesis URL: ``<endpoint>?<params>&Signature=...`` (signed with ``GET``)."""
    return signed_url(endpoint, params, secret_key, signature="Signature", prefix="GET")


@dataclass(frozen=True, slots=True)
class Credentials:
    """AppID, SecretId and SecretKey of a Tencent Cloud account."""

    app_id: str
    secret_id: str
    secret_key: str


def _credentials(app_id: str | None, secret_id: str | None, secret_key: str | None) -> Credentials:
    """The option's values, else the environment's; ProviderError naming what is missing."""
    values = []
    for given, variable, field in (
        (app_id, APPID_ENV, "appId"),
        (secret_id, SECRET_ID_ENV, "secretId"),
        (secret_key, SECRET_KEY_ENV, "secretKey"),
    ):
        value = given or os.environ.get(variable)
        if not value:
            raise ProviderError(PROVIDER, f"no {field}: set {field} or {variable}")
        values.append(value)
    if not values[0].isdigit():
        raise ProviderError(PROVIDER, f"appId must be the numeric AppID, got {values[0]!r}")
    return Credentials(*values)


def _merge_extra(
    params: dict[str, str], extra: Mapping[str, str] | None, reserved: set[str]
) -> dict[str, str]:
    for name, value in (extra or {}).items():
        if name in reserved or name.lower() == "signature":
            raise ProviderError(PROVIDER, f"extra may not set {name!r} (the client sets it)")
        params[name] = value
    return params


def asr_params(
    option: TranscriptionOption, *, secret_id: str, now: int, nonce: int, voice_id: str
) -> dict[str, str]:
    """The query parameters of a recognition of 16 kHz PCM (``extra`` adds or overrides)."""
    engine = option.model_type
    if engine is None and option.language:
        engine = _LANGUAGE_ENGINES.get(option.language.split("-")[0].lower())
    engine = engine or ASR_ENGINE
    if engine.startswith("8k"):
        raise ProviderError(PROVIDER, f"engine {engine} wants 8 kHz audio; the stream is 16 kHz")
    params = {
        "secretid": secret_id,
        "timestamp": str(now),
        "expired": str(now + SIGNATURE_TTL_S),
        "nonce": str(nonce),
        "engine_model_type": engine,
        "voice_id": voice_id,
        "voice_format": "1",  # pcm
        "needvad": "1",  # the service cuts sentences
    }
    return _merge_extra(params, option.extra, _ASR_RESERVED)


def tts_params(
    option: SynthesisOption,
    *,
    app_id: str,
    secret_id: str,
    now: int,
    session_id: str,
    text: str,
    sample_rate: int,
) -> dict[str, str]:
    """The query parameters of one synthesis of ``text`` to PCM with subtitles."""
    voice = option.speaker or (option.model if option.model and option.model.isdigit() else None)
    params = {
        "Action": "TextToStreamAudioWS",
        "AppId": app_id,
        "SecretId": secret_id,
        "Timestamp": str(now),
        "Expired": str(now + SIGNATURE_TTL_S),
        "SessionId": session_id,
        "Text": text,
        "VoiceType": voice or TTS_VOICE,
        "Codec": "pcm",
        "SampleRate": str(sample_rate),
        "EnableSubtitle": "true",
    }
    if option.speed is not None:
        params["Speed"] = format(option.speed, "g")  # the service's scale: -2 .. 6
    if option.volume is not None:
        params["Volume"] = str(option.volume)  # the service's scale: -10 .. 10
    return _merge_extra(params, option.extra, _TTS_RESERVED)


# --- replies (no I/O) -------------------------------------------------------------------------


def _decode(message: str) -> dict[str, Any]:
    try:
        reply = json.loads(message)
    except json.JSONDecodeError:
        raise ProviderError(PROVIDER, f"bad reply (not JSON): {message[:80]!r}") from None
    if not isinstance(reply, dict):
        raise ProviderError(PROVIDER, f"bad reply (not an object): {message[:80]!r}")
    code = reply.get("code", 0)
    if code != 0:
        detail = reply.get("message") or "no message"
        raise ProviderError(
            PROVIDER, f"error {code}: {detail}", code=code if isinstance(code, int) else None
        )
    return reply


def result_transcript(reply: Mapping[str, Any]) -> Transcript | None:
    """The transcript of a recognition reply; None when it carries no text."""
    result = reply.get("result")
    if not isinstance(result, dict):
        return None
    text = result.get("voice_text_str")
    index = result.get("index")
    if not isinstance(text, str) or not text or not isinstance(index, int):
        return None
    start, end = result.get("start_time"), result.get("end_time")
    return Transcript(
        text=text,
        final=result.get("slice_type") == 2,
        index=index,
        start_ms=start if isinstance(start, int) else None,
        end_ms=end if isinstance(end, int) else None,
    )


def subtitle(item: Mapping[str, Any], *, offset_ms: int, offset_chars: int) -> Subtitle | None:
    """A synthesis subtitle moved from its request's time and text into the stream's."""
    try:
        return Subtitle(
            text=str(item["Text"]),
            begin_ms=offset_ms + int(item["BeginTime"]),
            end_ms=offset_ms + int(item["EndTime"]),
            begin_index=offset_chars + int(item["BeginIndex"]),
            end_index=offset_chars + int(item["EndIndex"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def tts_requests(sentences: list[Sentence], text: str, limit: int) -> list[Sentence]:
    """Sentences of ``text`` packed into requests of at most ``limit`` characters.

    Each request is an exact slice of ``text`` (so subtitle indexes map back); a sentence
    longer than ``limit`` is cut at its last space before the limit, or at the limit.
    """
    pieces: list[Sentence] = []
    for sentence in sentences:
        begin = sentence.begin
        while sentence.end - begin > limit:
            cut = text.rfind(" ", begin + 1, begin + limit)
            cut = cut if cut > begin else begin + limit
            pieces.append(Sentence(text[begin:cut], begin, cut))
            begin = cut
            while begin < sentence.end and text[begin].isspace():
                begin += 1
        pieces.append(Sentence(text[begin : sentence.end], begin, sentence.end))
    packed: list[Sentence] = []
    for piece in pieces:
        if packed and piece.end - packed[-1].begin <= limit:
            last = packed[-1]
            packed[-1] = Sentence(text[last.begin : piece.end], last.begin, piece.end)
        else:
            packed.append(piece)
    return packed


# --- connection helpers ---------------------------------------------------------------------


def _endpoint(endpoint: str | None, default: str) -> str:
    url = endpoint or default
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc or parts.query:
        raise ProviderError(PROVIDER, f"endpoint must be a ws:// or wss:// URL, got {url!r}")
    return url


async def _open_socket(url: str, timeout: float) -> ClientConnection:
    """Connect to a signed URL; failures become ProviderError (the query is never shown)."""
    host = urllib.parse.urlsplit(url).netloc
    try:
        return await connect(
            url,
            open_timeout=timeout,
            close_timeout=timeout,
            compression=None,  # PCM barely compresses; deflate would only cost CPU
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise ProviderError(
            PROVIDER, f"{host} refused the handshake: HTTP {status}", code=status
        ) from None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ProviderError(
            PROVIDER, f"cannot connect to {host}: {exc or type(exc).__name__}"
        ) from None


async def _abandon(ws: ClientConnection) -> None:
    """Close without waiting on a peer that may be gone or silent."""
    ws.transport.abort()
    await ws.wait_closed()


async def _finish_socket(ws: ClientConnection, *, clean: bool) -> None:
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


class TencentAsr:
    """Tencent real-time recognition (engine ``16k_zh`` unless ``model``/``language`` says)."""

    name = "tencent"

    def __init__(self) -> None:
        self.reply_timeout = REPLY_TIMEOUT_S
        """Seconds to wait for the connection, the handshake reply, and final after aclose."""

    async def open(self, option: TranscriptionOption) -> TencentAsrStream:
        """Connect with a signed URL and return the stream (ProviderError if refused)."""
        credentials = _credentials(option.app_id, option.secret_id, option.secret_key)
        endpoint = _endpoint(option.endpoint, ASR_ENDPOINT)
        params = asr_params(
            option,
            secret_id=credentials.secret_id,
            now=int(time.time()),
            nonce=secrets.randbelow(9_999_999_999) + 1,  # "a positive integer, up to 10 digits"
            voice_id=str(uuid.uuid4()),
        )
        url = asr_url(endpoint, credentials.app_id, params, credentials.secret_key)
        ws = await _open_socket(url, self.reply_timeout)
        try:
            async with asyncio.timeout(self.reply_timeout):
                message = await ws.recv()
            if isinstance(message, bytes):
                raise ProviderError(PROVIDER, "bad handshake reply (binary)")
            _decode(message)
        except BaseException as exc:
            await _abandon(ws)
            if isinstance(exc, TimeoutError):
                raise ProviderError(
                    PROVIDER, f"no handshake reply within {self.reply_timeout:g} s"
                ) from None
            if isinstance(exc, ConnectionClosed):
                raise _closed_error(exc, "the handshake reply") from None
            raise
        return TencentAsrStream(ws, reply_timeout=self.reply_timeout)


class TencentAsrStream:
    """One recognition: audio goes out in 40 ms binary messages, sentence results come back."""

    def __init__(self, ws: ClientConnection, *, reply_timeout: float) -> None:
        self._ws = ws
        self._timeout = reply_timeout
        self._pending = bytearray()
        self._flush = False
        self._closing = False
        self._expecting = False  # {"type": "end"} sent: silence now means trouble
        self._wakeup = asyncio.Event()
        self._results: asyncio.Queue[Transcript | ProviderError | None] = asyncio.Queue()
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
        """Send the buffered audio now; Tencent ends sentences itself (no per-utterance cut)."""
        self._flush = True
        self._wakeup.set()

    async def results(self) -> AsyncIterator[Transcript]:
        """Interim and final transcripts; ends after ``final``, raises ProviderError."""
        while True:
            item = await self._results.get()
            if item is None or isinstance(item, ProviderError):
                self._results.put_nowait(item)  # later callers see the same end
                if item is not None:
                    raise item
                return
            yield item

    async def aclose(self) -> None:
        """Send the rest of the audio and ``{"type": "end"}``, wait for ``final``; idempotent."""
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
                        await ws.send(json.dumps({"type": "end"}))
                    return
                self._flush = False
        except ConnectionClosed:
            return  # the receiver reports the loss

    async def _receive(self) -> None:
        outcome = await self._read_replies()
        self._results.put_nowait(outcome)
        await _finish_socket(self._ws, clean=outcome is None)

    async def _read_replies(self) -> ProviderError | None:
        """Read replies until ``final``; None when the recognition ended normally."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self._ws.recv(), self._timeout)
                except TimeoutError:
                    if self._expecting and loop.time() - self._heard >= self._timeout:
                        return ProviderError(
                            PROVIDER, f"no final result within {self._timeout:g} s"
                        )
                    continue
                self._heard = loop.time()
                if isinstance(message, bytes):
                    continue
                reply = _decode(message)
                transcript = result_transcript(reply)
                if transcript is not None:
                    self._results.put_nowait(transcript)
                if reply.get("final") == 1:
                    return None
        except ProviderError as exc:
            return exc
        except ConnectionClosed as exc:
            return _closed_error(exc, "the final result")
        except Exception as exc:  # a bug must still end the stream, not leave it waiting
            logger.exception("tencent ASR reader failed")
            return ProviderError(PROVIDER, f"reading results failed: {exc!r}")


# --- TTS ------------------------------------------------------------------------------------


class TencentTts:
    """Tencent real-time synthesis (voice from ``speaker``, or a numeric ``voice``)."""

    name = "tencent"

    def __init__(self) -> None:
        self.reply_timeout = REPLY_TIMEOUT_S
        """Seconds to wait for the connection and for each reply of a synthesis request."""

    async def open(self, option: SynthesisOption, *, streaming: bool) -> TencentTtsStream:
        """Check the keys and options; each text (streaming: each sentence) is one request."""
        credentials = _credentials(option.app_id, option.secret_id, option.secret_key)
        endpoint = _endpoint(option.endpoint, TTS_ENDPOINT)
        rate = option.samplerate or 16000
        if rate not in TTS_SAMPLE_RATES:
            listed = ", ".join(map(str, TTS_SAMPLE_RATES))
            raise ProviderError(PROVIDER, f"samplerate {rate} not supported ({listed})")

        def url_for(text: str) -> str:
            params = tts_params(
                option,
                app_id=credentials.app_id,
                secret_id=credentials.secret_id,
                now=int(time.time()),
                session_id=str(uuid.uuid4()),
                text=text,
                sample_rate=rate,
            )
            return tts_url(endpoint, params, credentials.secret_key)

        voice = option.speaker
        if voice is not None and not voice.isdigit():
            raise ProviderError(PROVIDER, f"speaker must be a numeric VoiceType, got {voice!r}")
        url_for("")  # a bad extra fails here, at open, rather than at the first sentence
        return TencentTtsStream(
            url_for, streaming=streaming, sample_rate=rate, reply_timeout=self.reply_timeout
        )


class TencentTtsStream:
    """Text to PCM through one request per text (whole mode) or per sentence (streaming)."""

    def __init__(
        self,
        url_for: Callable[[str], str],
        *,
        streaming: bool,
        sample_rate: int,
        reply_timeout: float,
    ) -> None:
        self._url_for = url_for
        self._rate = sample_rate
        self._timeout = reply_timeout
        self._splitter = SentenceSplitter() if streaming else None
        self._pushed = ""  # all text so far: requests are exact slices of it
        self._ended = False
        self._cancelled = False
        self._samples = 0  # audio handed out so far: where the next request's times start
        self._texts: asyncio.Queue[Sentence | None] = asyncio.Queue()
        self._events: asyncio.Queue[TtsChunk | ProviderError | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    @property
    def sample_rate(self) -> int:
        """The rate of the PCM this stream yields."""
        return self._rate

    def push_text(self, text: str) -> None:
        """Add text; when streaming, each sentence it completes is requested at once."""
        if not isinstance(text, str):
            raise TypeError(f"push_text takes str, got {type(text).__name__}")
        if self._ended:
            raise RuntimeError("push_text after end_text: open a new stream for more text")
        if self._cancelled:
            return
        self._pushed += text
        if self._splitter is not None:
            self._request(self._splitter.push_spans(text))

    def end_text(self) -> None:
        """No more text: request what remains; idempotent."""
        if self._ended or self._cancelled:
            return
        self._ended = True
        splitter = self._splitter
        spans: list[Sentence] = []
        if splitter is None:  # whole mode: the text is complete only now
            splitter = SentenceSplitter()
            spans = splitter.push_spans(self._pushed)
        rest = splitter.flush_span()
        self._request([*spans, *([rest] if rest is not None else [])])
        self._texts.put_nowait(None)

    async def chunks(self) -> AsyncIterator[TtsChunk]:
        """PCM in order as it arrives, with subtitles in stream time; ProviderError."""
        while True:
            item = await self._events.get()
            if item is None or isinstance(item, ProviderError):
                self._events.put_nowait(item)
                if item is not None:
                    raise item
                return
            yield item

    async def cancel(self) -> None:
        """Stop now: the request in flight is dropped and chunks() ends; idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._events.put_nowait(None)

    def _request(self, sentences: list[Sentence]) -> None:
        for request in tts_requests(sentences, self._pushed, TTS_MAX_CHARS):
            if any(ch.isalnum() for ch in request.text):  # nothing to say in bare punctuation
                self._texts.put_nowait(request)

    async def _run(self) -> None:
        outcome: ProviderError | None = None
        try:
            while (request := await self._texts.get()) is not None:
                await self._speak(request)
        except ProviderError as exc:
            outcome = exc
        except Exception as exc:  # a bug must still end chunks(), not leave it waiting
            logger.exception("tencent TTS failed")
            outcome = ProviderError(PROVIDER, f"synthesis failed: {exc!r}")
        self._events.put_nowait(outcome)

    async def _speak(self, request: Sentence) -> None:
        ws = await _open_socket(self._url_for(request.text), self._timeout)
        clean = False
        try:
            await self._read_request(ws, request)
            clean = True
        except ConnectionClosed as exc:
            raise _closed_error(exc, "the final frame") from None
        finally:
            if clean and not self._cancelled:
                await _finish_socket(ws, clean=True)
            else:
                await _abandon(ws)

    async def _read_request(self, ws: ClientConnection, request: Sentence) -> None:
        offset_ms = self._samples * 1000 // self._rate
        seen: set[tuple[int, int, int]] = set()
        subtitles: list[Subtitle] = []
        odd = b""
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self._timeout)
            except TimeoutError:
                raise ProviderError(PROVIDER, f"no reply for {self._timeout:g} s") from None
            if isinstance(message, bytes):
                pcm = odd + message
                cut = len(pcm) - len(pcm) % 2
                odd = pcm[cut:]
                if cut:
                    self._samples += cut // 2
                    self._events.put_nowait(TtsChunk(pcm[:cut], self._rate, tuple(subtitles)))
                    subtitles = []
                continue
            reply = _decode(message)
            result = reply.get("result")
            items = result.get("subtitles") if isinstance(result, dict) else None
            for item in items or ():
                sub = subtitle(item, offset_ms=offset_ms, offset_chars=request.begin)
                if sub is None:
                    continue
                key = (sub.begin_index, sub.end_index, sub.begin_ms)
                if key not in seen:  # in case a reply repeats earlier subtitles
                    seen.add(key)
                    subtitles.append(sub)
            if reply.get("final") == 1:
                break
        if subtitles:  # timings that came after the last audio of this request
            self._events.put_nowait(TtsChunk(b"", self._rate, tuple(subtitles)))
