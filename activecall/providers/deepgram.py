"""Deepgram clients: streaming recognition (``/v1/listen`` WebSocket) and speech (``/v1/speak``).

Both take their base URL from the option's ``endpoint`` (default ``https://api.deepgram.com``)
and the key from the option, else ``DEEPGRAM_API_KEY``, sent as ``Authorization: Token``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers._http import (
    HttpClient,
    SentenceTtsStream,
    SocketAsrStream,
    api_key,
    connect_websocket,
    decode_json,
    endpoint_url,
    post_stream,
)
from activecall.providers.base import AsrStream, ProviderError, Transcript, TtsStream

__all__ = [
    "DEFAULT_ASR_MODEL",
    "DEFAULT_BASE_URL",
    "DEFAULT_TTS_MODEL",
    "DEFAULT_TTS_RATE",
    "DeepgramAsr",
    "DeepgramTts",
    "ListenStream",
]

PROVIDER = "deepgram"
DEFAULT_BASE_URL = "https://api.deepgram.com"
DEFAULT_ASR_MODEL = "nova-3"
DEFAULT_TTS_MODEL = "aura-2-thalia-en"
DEFAULT_TTS_RATE = 16000
"""Speech sample rate unless the option's ``samplerate`` asks for another (the gateway's rate)."""
MAX_SPEAK_CHARS = 2000  # longest text /v1/speak accepts

_INPUT_RATE = 16000
_MAX_FRAME_BYTES = 32_000  # 1 s of audio per binary frame at most
_FINALIZE = json.dumps({"type": "Finalize"})
_CLOSE_STREAM = json.dumps({"type": "CloseStream"})
_KEEPALIVE = json.dumps({"type": "KeepAlive"})


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


# --- ASR --------------------------------------------------------------------------------------


class DeepgramAsr:
    """Live transcription over the ``/v1/listen`` WebSocket: linear16 16 kHz mono, interim results.

    ``model`` defaults to nova-3; ``language`` is passed when set; ``extra`` entries become
    query parameters (``smart_format``, ``endpointing``, ``keyterm`` ...), except the audio
    format, which is ours.
    """

    name = "deepgram"

    def __init__(self) -> None:
        self.open_timeout = 10.0
        self.ping_interval: float | None = 10.0
        self.ping_timeout: float | None = 10.0
        self.close_timeout = 2.0
        self.keepalive_interval = 4.0  # Deepgram closes a stream idle for 10 s (NET-0001)

    async def open(self, option: TranscriptionOption) -> AsrStream:
        """Connect (a refused key fails here, with Deepgram's message)."""
        key = api_key(PROVIDER, option.secret_key, "DEEPGRAM_API_KEY")
        params: dict[str, str] = {"model": option.model_type or DEFAULT_ASR_MODEL}
        params["interim_results"] = "true"
        params.update(option.extra or {})
        if option.language:
            params["language"] = option.language
        params.update(encoding="linear16", sample_rate=str(_INPUT_RATE), channels="1")
        url = endpoint_url(
            PROVIDER,
            option.endpoint or DEFAULT_BASE_URL,
            "/v1/listen",
            websocket=True,
            params=params,
        )
        ws = await connect_websocket(
            PROVIDER,
            url,
            _auth(key),
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            error_header="dg-error",
        )
        return ListenStream(
            ws, close_timeout=self.close_timeout, keepalive_interval=self.keepalive_interval
        )


@dataclass(slots=True)
class _Utterance:
    """The finalized pieces of the utterance being recognised."""

    pieces: list[str] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    start_ms: int | None = None
    end_ms: int | None = None


class ListenStream(SocketAsrStream):
    """One call's ``/v1/listen`` stream (made by :meth:`DeepgramAsr.open`).

    Deepgram finalizes an utterance in pieces (``is_final``) and marks its end with
    ``speech_final`` (its endpointing), a ``from_finalize`` reply (our ``Finalize``) or an
    ``UtteranceEnd``; the pieces joined are the utterance's final transcript.
    """

    provider = PROVIDER

    def __init__(
        self, ws: ClientConnection, *, close_timeout: float, keepalive_interval: float | None
    ) -> None:
        self._utterance = _Utterance()
        self._index = 0
        super().__init__(ws, close_timeout=close_timeout, keepalive_interval=keepalive_interval)

    def _audio(self, pcm: bytes) -> Iterable[bytes | str]:
        return [pcm]

    def _end(self) -> Iterable[bytes | str]:
        return [_FINALIZE]

    async def _send(self, batch: list[bytes | str]) -> None:
        audio = bytearray()
        for item in batch:
            if isinstance(item, bytes):
                audio += item
                if len(audio) >= _MAX_FRAME_BYTES:
                    await self._ws.send(bytes(audio))
                    audio = bytearray()
                continue
            if audio:
                await self._ws.send(bytes(audio))
                audio = bytearray()
            await self._ws.send(item)
        if audio:  # never an empty frame: Deepgram takes one as the end of the stream
            await self._ws.send(bytes(audio))

    async def _keepalive(self) -> None:
        await self._ws.send(_KEEPALIVE)

    async def _goodbye(self) -> None:
        # CloseStream makes Deepgram send what it still holds, then close; wait for that
        self._queue([_CLOSE_STREAM])
        await asyncio.wait({self._reader}, timeout=self._close_timeout)

    def _receive(self, message: str | bytes) -> list[Transcript]:
        msg = decode_json(PROVIDER, message)
        kind = msg.get("type")
        if kind == "Results":
            return self._results_message(msg)
        if kind == "UtteranceEnd":
            return self._finish()
        return []  # Metadata, SpeechStarted

    def _flush(self) -> list[Transcript]:
        return self._finish()

    def _results_message(self, msg: dict[str, Any]) -> list[Transcript]:
        text, confidence = _best_alternative(msg)
        start, duration = msg.get("start"), msg.get("duration")
        utterance = self._utterance
        if text and isinstance(start, int | float) and isinstance(duration, int | float):
            if utterance.start_ms is None:
                utterance.start_ms = round(start * 1000)
            utterance.end_ms = round((start + duration) * 1000)
        if not msg.get("is_final"):
            if not text:
                return []
            so_far = " ".join([*utterance.pieces, text])
            return [Transcript(so_far, False, self._index, utterance.start_ms, utterance.end_ms)]
        if text:
            utterance.pieces.append(text)
            if confidence is not None:
                utterance.confidences.append(confidence)
        if msg.get("speech_final") or msg.get("from_finalize"):
            return self._finish()
        if not text:
            return []
        so_far = " ".join(utterance.pieces)  # a finalized piece; the utterance goes on
        return [Transcript(so_far, False, self._index, utterance.start_ms, utterance.end_ms)]

    def _finish(self) -> list[Transcript]:
        utterance, self._utterance = self._utterance, _Utterance()
        if not utterance.pieces:
            return []
        confidences = utterance.confidences
        confidence = sum(confidences) / len(confidences) if confidences else None
        final = Transcript(
            " ".join(utterance.pieces),
            True,
            self._index,
            utterance.start_ms,
            utterance.end_ms,
            confidence,
        )
        self._index += 1
        return [final]


def _best_alternative(msg: dict[str, Any]) -> tuple[str, float | None]:
    """Transcript and confidence of a Results message's first alternative."""
    channel = msg.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    if not isinstance(alternatives, list):
        raise ProviderError(PROVIDER, f"bad reply: Results without alternatives: {msg!r:.120}")
    if not alternatives or not isinstance(alternatives[0], dict):
        return "", None
    text = alternatives[0].get("transcript")
    confidence = alternatives[0].get("confidence")
    return (
        text.strip() if isinstance(text, str) else "",
        float(confidence) if isinstance(confidence, int | float) else None,
    )


# --- TTS --------------------------------------------------------------------------------------


class DeepgramTts:
    """Speech from ``POST /v1/speak`` as raw linear16 PCM (no WAV header), streamed.

    The voice model is the option's ``model`` (alias ``voice``), else ``speaker``, else
    aura-2-thalia-en; the rate is ``samplerate`` (default 16 kHz); ``extra`` entries become
    query parameters.
    """

    name = "deepgram"

    def __init__(self) -> None:
        self.timeout = httpx.Timeout(30.0, connect=10.0)
        self._http = HttpClient()

    async def aclose(self) -> None:
        """Close pooled HTTP connections."""
        await self._http.aclose()

    async def open(self, option: SynthesisOption, *, streaming: bool) -> TtsStream:
        """A stream that requests each sentence (streaming) or the whole text (not)."""
        key = api_key(PROVIDER, option.secret_key, "DEEPGRAM_API_KEY")
        rate = option.samplerate or DEFAULT_TTS_RATE
        if rate <= 0:
            raise ProviderError(PROVIDER, f"samplerate must be positive, got {rate}")
        params: dict[str, str] = dict(option.extra or {})
        params["model"] = option.model or option.speaker or DEFAULT_TTS_MODEL
        # container=none: raw samples; the REST default wraps linear16 in a WAV header
        params.update(encoding="linear16", sample_rate=str(rate), container="none")
        url = endpoint_url(
            PROVIDER, option.endpoint or DEFAULT_BASE_URL, "/v1/speak", params=params
        )

        async def synthesize(text: str) -> AsyncGenerator[bytes, None]:
            async with post_stream(
                self._http.get(),
                PROVIDER,
                url,
                headers=_auth(key),
                json_body={"text": text},
                timeout=self.timeout,
            ) as response:
                async for data in response.aiter_bytes():
                    yield data

        return SentenceTtsStream(
            PROVIDER, synthesize, rate, streaming=streaming, max_chars=MAX_SPEAK_CHARS
        )
