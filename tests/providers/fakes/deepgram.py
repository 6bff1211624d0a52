"""A local Deepgram API (aiohttp) speaking the documented wire formats of /v1/listen and /v1/speak.

* ``GET /v1/listen`` (WebSocket): options in the query (``model``, ``encoding``,
  ``sample_rate``, ``channels``, ``interim_results``, ``language`` ...); audio in binary frames;
  control messages ``KeepAlive``, ``Finalize`` and ``CloseStream`` in text frames; transcripts
  as ``Results`` messages (``channel.alternatives[0].transcript``, ``is_final``,
  ``speech_final``, ``from_finalize``, ``start``/``duration`` in seconds). ``Finalize`` is
  answered with a ``from_finalize`` result; ``CloseStream`` with the pending results, a
  ``Metadata`` message and a normal close. A stream idle for :attr:`FakeDeepgram.idle_timeout`
  seconds is closed with code 1011 and ``NET-0001``, as the service does after 10 s.
* ``POST /v1/speak?model=&encoding=linear16&sample_rate=&container=none`` with
  ``{"text": ...}``: raw PCM16LE (:func:`fake_speech` of the text), streamed in
  :attr:`FakeDeepgram.chunk_size` pieces.

Auth is ``Authorization: Token <key>``; a wrong key gets HTTP 401 with a ``dg-error`` header and
the ``{"err_code", "err_msg", "request_id"}`` body (on the WebSocket upgrade as well). What the
recogniser "hears" is scripted as :class:`Segment` s: once the audio received passes a segment's
midpoint it sends an interim with the first half of its words, at its end the final piece
(``speech_final`` if the segment ends the speech). Everything a client sends is recorded.
``UtteranceEnd`` follows a segment marked so when the query asks for ``utterance_end_ms``.
Failure switches: ``drop_after_bytes`` / ``drop_after`` (TCP reset), ``stall`` (stops reading:
pings go unanswered), ``garbage`` (answers with a frame that is not JSON).
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["FakeDeepgram", "ListenConnection", "Recorded", "Segment", "fake_speech"]

REQUEST_ID = "8c8ebea9-dbec-45fa-a035-e4632cb05b5f"
SPEAK_RATES = (8000, 16000, 24000, 32000, 48000)  # linear16 rates /v1/speak offers


def fake_speech(text: str, sample_rate: int) -> bytes:
    """Deterministic PCM16LE 'speech' for ``text``: 4 ms per character at ``sample_rate``."""
    per_char = sample_rate // 250
    samples = [(ord(ch) * 41 + i * 3) % 24000 - 12000 for ch in text for i in range(per_char)]
    return struct.pack(f"<{len(samples)}h", *samples)


@dataclass(frozen=True)
class Segment:
    """A stretch of speech the fake recogniser finalizes as one piece."""

    text: str
    begin_ms: int
    end_ms: int
    speech_final: bool = False  # the speaker paused after it (Deepgram's endpointing)
    utterance_end: bool = False  # a word gap follows: UtteranceEnd, if utterance_end_ms is set


@dataclass
class Recorded:
    """One /v1/speak request as the fake received it."""

    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class ListenConnection:
    """What one /v1/listen client sent (audio, control messages in order) and received."""

    query: dict[str, str]
    headers: dict[str, str]
    audio: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    def control_types(self) -> list[str]:
        """The ``type`` of each control message, in order."""
        return [c.get("type", "?") for c in self.controls]


class FakeDeepgram:
    """The fake service on 127.0.0.1 with an ephemeral port; use ``async with``."""

    def __init__(self, *, api_key: str = "dg-test", segments: tuple[Segment, ...] = ()) -> None:
        self.api_key = api_key
        self.segments = segments
        self.listens: list[ListenConnection] = []
        self.speaks: list[Recorded] = []
        self.refused = 0
        self.idle_timeout: float | None = None
        self.chunk_size = 1001  # odd on purpose: clients must keep samples whole
        self.drop_after_bytes: int | None = None  # listen: reset once this much audio came
        self.drop_after: int | None = None  # speak: reset after this many body pieces
        self.stall = False
        self.garbage = False  # answer audio with a frame that is not JSON
        self.url = ""  # the base URL, ``http://127.0.0.1:<port>``
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> FakeDeepgram:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_post("/v1/speak", self._speak)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Token {self.api_key}":
            return None
        self.refused += 1
        return _error(401, "INVALID_AUTH", "Invalid credentials.")

    # --- /v1/speak ---

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.speaks.append(Recorded(dict(request.query), dict(request.headers), body))
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        query = request.query
        if query.get("encoding") != "linear16" or query.get("container") != "none":
            return _error(400, "UNSUPPORTED_FORMAT", "this fake answers raw linear16 only")
        rate = int(query.get("sample_rate", "24000"))
        if rate not in SPEAK_RATES:
            return _error(400, "INVALID_QUERY_PARAMETER", f"Unsupported sample_rate: {rate}")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"]:
            return _error(400, "INVALID_INPUT", "Request body must contain a non-empty 'text'")
        if len(body["text"]) > 2000:
            return _error(413, "PAYLOAD_TOO_LARGE", "Text exceeds 2000 characters")
        pcm = fake_speech(body["text"], rate)
        response = web.StreamResponse(
            headers={"Content-Type": "audio/l16", "dg-request-id": REQUEST_ID}
        )
        await response.prepare(request)
        for number, start in enumerate(range(0, len(pcm), self.chunk_size)):
            if number == self.drop_after:
                _reset(request)
                return response
            await response.write(pcm[start : start + self.chunk_size])
        await response.write_eof()
        return response

    # --- /v1/listen ---

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = ListenConnection(dict(request.query), dict(request.headers))
        self.listens.append(conn)
        if self.stall:
            await self._stop.wait()
            return ws
        stream = _ListenStream(self, conn, ws)
        while True:
            try:
                message = await ws.receive(timeout=self.idle_timeout)
            except TimeoutError:
                conn.close_code = 1011
                await ws.close(code=1011, message=b"NET-0001")
                break
            if message.type == WSMsgType.BINARY:
                if not message.data:
                    break  # an empty frame ends the stream (the documented pitfall)
                conn.audio += message.data
                if self.drop_after_bytes is not None and len(conn.audio) >= self.drop_after_bytes:
                    _reset(request)
                    break
                if self.garbage:
                    await ws.send_str("<html>502 Bad Gateway</html>")
                    continue
                await stream.hear()
            elif message.type == WSMsgType.TEXT:
                control = json.loads(message.data)
                conn.controls.append(control)
                if not await stream.control(control):
                    conn.close_code = 1000
                    await ws.close()
                    break
            else:
                break
        return ws


class _ListenStream:
    """One /v1/listen connection's recognition state."""

    def __init__(
        self, fake: FakeDeepgram, conn: ListenConnection, ws: web.WebSocketResponse
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        self.reported: dict[int, str] = {}  # segment number -> "interim" | "final"

    @property
    def heard_ms(self) -> int:
        return len(self.conn.audio) // 32  # 16 kHz linear16 mono

    async def send(self, message: dict[str, Any]) -> None:
        self.conn.sent.append(message)
        await self.ws.send_str(json.dumps(message))

    async def results(
        self,
        text: str,
        start_ms: int,
        end_ms: int,
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> None:
        words = text.split()
        step = (end_ms - start_ms) / max(1, len(words)) / 1000
        await self.send(
            {
                "type": "Results",
                "channel_index": [0, 1],
                "duration": (end_ms - start_ms) / 1000,
                "start": start_ms / 1000,
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": text,
                            "confidence": 0.9 if words else 0.0,
                            "words": [
                                {
                                    "word": w,
                                    "start": start_ms / 1000 + i * step,
                                    "end": start_ms / 1000 + (i + 1) * step,
                                    "confidence": 0.9,
                                    "punctuated_word": w,
                                }
                                for i, w in enumerate(words)
                            ],
                        }
                    ]
                },
                "metadata": {
                    "request_id": REQUEST_ID,
                    "model_info": {"name": "general-nova-3", "version": "fake", "arch": "nova-3"},
                    "model_uuid": "00000000-0000-0000-0000-000000000000",
                },
            }
        )

    async def hear(self) -> None:
        for number, segment in enumerate(self.fake.segments):
            state = self.reported.get(number)
            if state == "final":
                continue
            if self.heard_ms >= segment.end_ms:
                await self.final(number, speech_final=segment.speech_final)
                if segment.utterance_end and "utterance_end_ms" in self.conn.query:
                    last_word_end = segment.end_ms / 1000
                    await self.send(
                        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end}
                    )
            elif state is None and self.heard_ms >= (segment.begin_ms + segment.end_ms) // 2:
                words = segment.text.split()
                half = " ".join(words[: max(1, len(words) // 2)])
                middle = (segment.begin_ms + segment.end_ms) // 2
                await self.results(half, segment.begin_ms, middle, is_final=False)
                self.reported[number] = "interim"

    async def final(
        self, number: int, *, speech_final: bool = False, finalize: bool = False
    ) -> None:
        segment = self.fake.segments[number]
        end = min(segment.end_ms, self.heard_ms)
        await self.results(
            segment.text,
            segment.begin_ms,
            end,
            is_final=True,
            speech_final=speech_final,
            from_finalize=finalize,
        )
        self.reported[number] = "final"

    def pending(self) -> list[int]:
        """Segments begun in the audio heard but not finalized yet."""
        return [
            n
            for n, s in enumerate(self.fake.segments)
            if self.reported.get(n) != "final" and s.begin_ms < self.heard_ms
        ]

    async def control(self, control: dict[str, Any]) -> bool:
        kind = control.get("type")
        if kind == "Finalize":
            pending = self.pending()
            for number in pending[:-1]:
                await self.final(number)
            if pending:
                await self.final(pending[-1], finalize=True)
            else:  # nothing buffered: an empty result still says the flush is done
                await self.results(
                    "", self.heard_ms, self.heard_ms, is_final=True, from_finalize=True
                )
        elif kind == "CloseStream":
            for number in self.pending():
                await self.final(number)
            await self.send(
                {
                    "type": "Metadata",
                    "transaction_key": "deprecated",
                    "request_id": REQUEST_ID,
                    "sha256": "0" * 64,
                    "created": "2024-08-29T22:37:55.202Z",
                    "duration": self.heard_ms / 1000,
                    "channels": 1,
                }
            )
            return False
        return True  # KeepAlive: no reply


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"err_code": code, "err_msg": message, "request_id": REQUEST_ID}
    headers = {"dg-request-id": REQUEST_ID, "dg-error": message}
    return web.json_response(body, status=status, headers=headers)


def _reset(request: web.Request) -> None:
    """A TCP reset mid-stream: no end of body, no close frame."""
    transport = request.transport
    assert transport is not None
    transport.abort()
