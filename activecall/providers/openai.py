"""OpenAI clients: chat completions (LLM), ``audio/speech`` (TTS) and Realtime transcription (ASR).

Each takes its base URL from the option (``base_url`` / ``endpoint``), else ``OPENAI_BASE_URL``,
else ``https://api.openai.com/v1``, so any server speaking the OpenAI API works; the key comes
from the option, else ``OPENAI_API_KEY``. The ASR speaks the GA Realtime protocol
(``session.update`` with a ``transcription`` session; no ``OpenAI-Beta`` header).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from activecall._native.resample import Resampler
from activecall.protocol.options import SynthesisOption, TranscriptionOption
from activecall.providers._http import (
    HttpClient,
    SentenceTtsStream,
    SocketAsrStream,
    api_key,
    closed_error,
    connect_websocket,
    decode_json,
    endpoint_url,
    post_stream,
    sse_events,
)
from activecall.providers.base import (
    AsrStream,
    ChatDelta,
    ChatMessage,
    LlmOption,
    ProviderError,
    ToolCallDelta,
    Transcript,
    TtsStream,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CHAT_MODEL",
    "DEFAULT_TRANSCRIBE_MODEL",
    "DEFAULT_TTS_MODEL",
    "DEFAULT_VOICE",
    "REALTIME_RATE",
    "SPEECH_RATE",
    "OpenAiAsr",
    "OpenAiLlm",
    "OpenAiTts",
    "RealtimeTranscription",
    "chat_delta",
]

PROVIDER = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_CHAT_MODEL = "gpt-4o-mini"
DEFAULT_TTS_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICE = "alloy"
DEFAULT_TRANSCRIBE_MODEL = "gpt-4o-transcribe"
SPEECH_RATE = 24000
"""Sample rate of ``response_format: "pcm"`` speech (16-bit mono, little-endian)."""
REALTIME_RATE = 24000
"""The only PCM rate the Realtime API takes."""
MAX_SPEECH_CHARS = 4096  # longest ``input`` audio/speech accepts

_INPUT_RATE = 16000
_MIN_COMMIT_BYTES = REALTIME_RATE * 2 // 10  # the API refuses to commit under 100 ms of audio
_MAX_APPEND_BYTES = 96_000  # 2 s per append message: well under the 15 MiB event limit
_COMMIT = "commit"  # outbox marker: end of an utterance

# The Realtime API reports these in ``error`` events where the REST API answers an HTTP status:
# give callers the same code for the same cause.
_ERROR_STATUS = {"invalid_api_key": 401, "insufficient_quota": 429, "rate_limit_exceeded": 429}


def _base_url(given: str | None) -> str:
    return given or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- LLM --------------------------------------------------------------------------------------


class OpenAiLlm:
    """Streaming chat completions (``POST {base_url}/chat/completions``, ``stream: true``)."""

    name = "openai"

    def __init__(self) -> None:
        # read: a reasoning model may think for a while before its first token
        self.timeout = httpx.Timeout(60.0, connect=10.0)
        self._http = HttpClient()

    async def aclose(self) -> None:
        """Close pooled HTTP connections."""
        await self._http.aclose()

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        option: LlmOption,
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """Stream the reply to ``messages``: content, tool-call pieces, the finish reason."""
        if not messages:
            raise ValueError("chat needs at least one message")
        key = api_key(PROVIDER, option.api_key, "OPENAI_API_KEY")
        url = endpoint_url(PROVIDER, _base_url(option.base_url), "/chat/completions")
        done = False
        async with (
            post_stream(
                self._http.get(),
                PROVIDER,
                url,
                headers=_auth(key),
                json_body=_chat_body(messages, option, tools),
                timeout=self.timeout,
            ) as response,
            aclosing(sse_events(response)) as events,
        ):
            async for data in events:
                if data == "[DONE]":
                    done = True
                    break
                delta = chat_delta(data)
                if delta is not None:
                    yield delta
        if not done:
            raise ProviderError(PROVIDER, "the reply stream ended before [DONE] (connection cut?)")


def _chat_body(
    messages: Sequence[ChatMessage],
    option: LlmOption,
    tools: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = dict(option.extra or {})
    body["model"] = option.model or os.environ.get("OPENAI_MODEL") or DEFAULT_CHAT_MODEL
    body["messages"] = [dict(m) for m in messages]
    body["stream"] = True
    if option.temperature is not None:
        body["temperature"] = option.temperature
    if option.max_tokens is not None:
        body["max_tokens"] = option.max_tokens
    if tools:
        body["tools"] = [dict(t) for t in tools]
    return body


def chat_delta(data: str) -> ChatDelta | None:
    """The delta of one ``chat.completion.chunk`` (choice 0); None when it carries nothing."""
    chunk = decode_json(PROVIDER, data)
    if "error" in chunk:
        raise _error_event(chunk, "error in the reply stream")
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        raise _bad_reply("a chunk without choices", data)
    choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
    if choice is None:
        return None  # the usage chunk (stream_options.include_usage) has no choices
    delta = choice.get("delta") or {}
    content = delta.get("content") or ""
    finish = choice.get("finish_reason")
    calls = delta.get("tool_calls") or []
    if not (
        isinstance(content, str) and isinstance(calls, list) and isinstance(finish, str | None)
    ):
        raise _bad_reply("a malformed delta", data)
    tool_calls = tuple(_tool_call(call, data) for call in calls)
    if not content and not tool_calls and finish is None:
        return None  # the opening ``role`` chunk
    return ChatDelta(content=content, tool_calls=tool_calls, finish_reason=finish)


def _tool_call(call: Any, data: str) -> ToolCallDelta:
    if not isinstance(call, dict) or not isinstance(call.get("function") or {}, dict):
        raise _bad_reply("a malformed tool call", data)
    function = call.get("function") or {}
    index, call_id = call.get("index", 0), call.get("id")
    name, arguments = function.get("name"), function.get("arguments") or ""
    if not (
        isinstance(index, int)
        and isinstance(call_id, str | None)
        and isinstance(name, str | None)
        and isinstance(arguments, str)
    ):
        raise _bad_reply("a malformed tool call", data)
    return ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments)


def _bad_reply(what: str, data: str) -> ProviderError:
    return ProviderError(PROVIDER, f"bad reply: {what}: {data[:120]!r}")


def _error_event(event: Mapping[str, Any], context: str) -> ProviderError:
    """ProviderError of an ``{"error": {"message", "type", "code"}}`` event or chunk."""
    error = event.get("error")
    if not isinstance(error, dict):
        return ProviderError(PROVIDER, f"{context}: {error!r}")
    message = error.get("message") or "no message"
    kinds = [str(v) for v in (error.get("type"), error.get("code")) if v]
    detail = f" ({', '.join(kinds)})" if kinds else ""
    status = _ERROR_STATUS.get(str(error.get("code")))
    return ProviderError(PROVIDER, f"{context}: {message}{detail}", code=status)


# --- TTS --------------------------------------------------------------------------------------


class OpenAiTts:
    """Speech from ``POST {base}/audio/speech`` as raw 24 kHz PCM, streamed as it arrives.

    ``model`` defaults to gpt-4o-mini-tts, the voice is the option's ``speaker`` (default
    alloy), ``speed`` is passed on; ``extra`` entries (e.g. ``instructions``) join the body.
    """

    name = "openai"

    def __init__(self) -> None:
        self.timeout = httpx.Timeout(30.0, connect=10.0)
        self._http = HttpClient()

    async def aclose(self) -> None:
        """Close pooled HTTP connections."""
        await self._http.aclose()

    async def open(self, option: SynthesisOption, *, streaming: bool) -> TtsStream:
        """A stream that requests each sentence (streaming) or the whole text (not)."""
        key = api_key(PROVIDER, option.secret_key, "OPENAI_API_KEY")
        url = endpoint_url(PROVIDER, _base_url(option.endpoint), "/audio/speech")
        body: dict[str, Any] = dict(option.extra or {})
        body["model"] = option.model or DEFAULT_TTS_MODEL
        body["voice"] = option.speaker or DEFAULT_VOICE
        body["response_format"] = "pcm"
        if option.speed is not None:
            body["speed"] = option.speed

        async def synthesize(text: str) -> AsyncGenerator[bytes, None]:
            async with post_stream(
                self._http.get(),
                PROVIDER,
                url,
                headers=_auth(key),
                json_body={**body, "input": text},
                timeout=self.timeout,
            ) as response:
                async for data in response.aiter_bytes():
                    yield data

        return SentenceTtsStream(
            PROVIDER, synthesize, SPEECH_RATE, streaming=streaming, max_chars=MAX_SPEECH_CHARS
        )


# --- ASR --------------------------------------------------------------------------------------


class OpenAiAsr:
    """Realtime API transcription over a WebSocket, committed by the gateway's VAD.

    The session has server turn detection off; ``end_utterance()`` commits the audio buffer.
    Our 16 kHz audio is resampled to the API's 24 kHz. ``model`` defaults to
    gpt-4o-transcribe; ``extra`` may set ``prompt`` and ``noise_reduction``
    (``near_field``/``far_field``).
    """

    name = "openai"

    def __init__(self) -> None:
        self.open_timeout = 10.0
        self.ping_interval: float | None = 10.0
        self.ping_timeout: float | None = 10.0
        self.close_timeout = 2.0

    async def open(self, option: TranscriptionOption) -> AsrStream:
        """Connect, configure the transcription session and wait until it is accepted."""
        key = api_key(PROVIDER, option.secret_key, "OPENAI_API_KEY")
        url = endpoint_url(
            PROVIDER,
            _base_url(option.endpoint),
            "/realtime",
            websocket=True,
            params={"intent": "transcription"},
        )
        ws = await connect_websocket(
            PROVIDER,
            url,
            _auth(key),
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
        )
        try:
            async with asyncio.timeout(self.open_timeout):
                await _start_session(ws, session_update(option))
        except TimeoutError:
            await ws.close()
            raise ProviderError(
                PROVIDER, "the transcription session was not set up in time"
            ) from None
        except BaseException:
            await ws.close()
            raise
        return RealtimeTranscription(ws, close_timeout=self.close_timeout)


def session_update(option: TranscriptionOption) -> dict[str, Any]:
    """The ``session.update`` event of a transcription session for ``option``."""
    transcription: dict[str, Any] = {"model": option.model_type or DEFAULT_TRANSCRIBE_MODEL}
    if option.language:
        # the API wants ISO-639-1 ("en"); call options often carry a locale ("en-US")
        transcription["language"] = option.language.split("-")[0].lower()
    extra = option.extra or {}
    if "prompt" in extra:
        transcription["prompt"] = extra["prompt"]
    audio_input: dict[str, Any] = {
        "format": {"type": "audio/pcm", "rate": REALTIME_RATE},
        "transcription": transcription,
        "turn_detection": None,  # the gateway's VAD decides when an utterance ends
    }
    if "noise_reduction" in extra:
        audio_input["noise_reduction"] = {"type": extra["noise_reduction"]}
    return {
        "type": "session.update",
        "session": {"type": "transcription", "audio": {"input": audio_input}},
    }


async def _start_session(ws: ClientConnection, update: Mapping[str, Any]) -> None:
    """Wait for ``session.created``, send ``update``, wait for ``session.updated``."""
    try:
        created = decode_json(PROVIDER, await ws.recv())
        if created.get("type") == "error":
            raise _error_event(created, "session refused")
        if created.get("type") != "session.created":
            raise ProviderError(PROVIDER, f"expected session.created, got {created.get('type')!r}")
        await ws.send(json.dumps(update))
        while True:
            event = decode_json(PROVIDER, await ws.recv())
            if event.get("type") == "error":
                raise _error_event(event, "session update refused")
            if event.get("type") == "session.updated":
                return
    except ConnectionClosed as exc:
        raise closed_error(PROVIDER, exc) from exc


@dataclass(slots=True)
class _Item:
    """A committed utterance awaiting its transcription."""

    start_ms: int | None
    end_ms: int | None
    index: int | None = None
    text: str = ""


class RealtimeTranscription(SocketAsrStream):
    """One call's Realtime transcription session (made by :meth:`OpenAiAsr.open`)."""

    provider = PROVIDER

    def __init__(self, ws: ClientConnection, *, close_timeout: float) -> None:
        self._resampler = Resampler(_INPUT_RATE, REALTIME_RATE)
        self._pushed = 0  # 16 kHz samples pushed so far
        self._utterance_start = 0  # sample where the current utterance began
        self._ended: deque[tuple[int, int]] = deque()  # spans ended, commit not yet sent
        self._committed: deque[tuple[int, int]] = deque()  # spans committed, item not yet seen
        self._appended = 0  # bytes appended since the last commit
        self._items: dict[str, _Item] = {}
        self._next_index = 0
        super().__init__(ws, close_timeout=close_timeout)

    def _audio(self, pcm: bytes) -> Iterable[bytes | str]:
        self._pushed += len(pcm) // 2
        out = self._resampler.process(pcm)
        return [out.tobytes()] if out.size else []

    def _end(self) -> Iterable[bytes | str]:
        tail = self._resampler.flush()  # the utterance's last samples belong to this commit
        ms = 1000 / _INPUT_RATE
        self._ended.append((round(self._utterance_start * ms), round(self._pushed * ms)))
        self._utterance_start = self._pushed
        return [tail.tobytes(), _COMMIT] if tail.size else [_COMMIT]

    async def _send(self, batch: list[bytes | str]) -> None:
        audio = bytearray()
        for item in batch:
            if isinstance(item, bytes):
                audio += item
                if len(audio) >= _MAX_APPEND_BYTES:
                    await self._append(audio)
                    audio = bytearray()
                continue
            if audio:
                await self._append(audio)
                audio = bytearray()
            await self._commit()
        if audio:
            await self._append(audio)

    async def _append(self, audio: bytearray) -> None:
        payload = base64.b64encode(audio).decode("ascii")
        await self._ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
        self._appended += len(audio)

    async def _commit(self) -> None:
        span = self._ended.popleft()
        appended, self._appended = self._appended, 0
        if appended >= _MIN_COMMIT_BYTES:
            self._committed.append(span)
            await self._ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        elif appended:
            # under 100 ms is no utterance, and committing it is an error that would end the
            # stream: drop it so it does not lead the next one
            await self._ws.send(json.dumps({"type": "input_audio_buffer.clear"}))

    def _receive(self, message: str | bytes) -> list[Transcript]:
        event = decode_json(PROVIDER, message)
        kind = event.get("type")
        if kind == "error":
            raise _error_event(event, "error")
        if kind == "conversation.item.input_audio_transcription.failed":
            raise _error_event(event, "transcription failed")
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            return []
        if kind == "input_audio_buffer.committed":
            self._item(item_id)
        elif kind == "conversation.item.input_audio_transcription.delta":
            item = self._item(item_id)
            delta = event.get("delta")
            if isinstance(delta, str):
                item.text += delta
                if item.text.strip():
                    return [self._transcript(item, item.text.strip(), final=False)]
        elif kind == "conversation.item.input_audio_transcription.completed":
            item = self._item(item_id)
            del self._items[item_id]
            text = event.get("transcript")
            if isinstance(text, str) and text.strip():
                return [self._transcript(item, text.strip(), final=True)]
        return []

    def _item(self, item_id: str) -> _Item:
        item = self._items.get(item_id)
        if item is None:
            start, end = self._committed.popleft() if self._committed else (None, None)
            item = self._items[item_id] = _Item(start, end)
        return item

    def _transcript(self, item: _Item, text: str, *, final: bool) -> Transcript:
        if item.index is None:  # numbered when it first says something: no gaps for silence
            item.index = self._next_index
            self._next_index += 1
        return Transcript(text, final, item.index, item.start_ms, item.end_ms)
