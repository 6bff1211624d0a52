"""A local Tencent Cloud real-time ASR and real-time TTS (aiohttp), as their documents describe.

Only the wire formats are the services' (see ``activecall.providers.tencent`` for the
documents): the ASR URL is ``/asr/v2/<appid>?...&signature=``, the TTS URL
``/stream_ws?...&Signature=``, and both signatures are checked here with an independent
HMAC-SHA1 over host + path + ``?`` + the sorted raw parameters (``GET`` first for TTS). A bad
signature gets a non-zero ``code`` and a close. Replies are JSON text frames with ``code``,
``message``, ``voice_id``/``session_id``, ``result`` and ``final``; audio is binary.

What it recognises and says is scripted: each :class:`Sentence` is reported with slice_type 0
a quarter in, 1 at its midpoint and 2 at its end (or at ``{"type": "end"}``); each synthesis
returns :func:`fake_speech` of its Text in two binary frames, each after a JSON frame with the
subtitles of its characters (10 ms each). Every connection is recorded for the tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["AsrConnection", "FakeTencent", "Sentence", "TtsConnection", "fake_speech"]

AUTH_FAILED = 4002  # "鉴权失败" in the ASR document's error table
# the TTS document has its own table; the fake only needs some non-zero code
TTS_AUTH_FAILED = 10001
UNKNOWN_TEXT = 4010  # "客户端上传未知文本消息"


@dataclass(frozen=True)
class Sentence:
    """A sentence the fake recogniser reports, at ``[begin_ms, end_ms)`` of the audio."""

    text: str
    begin_ms: int
    end_ms: int


@dataclass
class AsrConnection:
    """What one recognition connection carried."""

    app_id: str
    query: dict[str, str]
    signature_ok: bool
    audio: bytearray = field(default_factory=bytearray)
    frame_sizes: list[int] = field(default_factory=list)
    texts: list[Any] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TtsConnection:
    """What one synthesis connection carried."""

    query: dict[str, str]
    signature_ok: bool
    audio_sent: bytearray = field(default_factory=bytearray)
    replies: list[dict[str, Any]] = field(default_factory=list)
    closed_early: bool = False


def fake_speech(text: str, sample_rate: int) -> bytes:
    """Deterministic PCM16LE 'speech' for ``text``: 10 ms per character."""
    per_char = sample_rate // 100
    samples = [(ord(ch) * 53 + i) % 20000 - 10000 for ch in text for i in range(per_char)]
    return struct.pack(f"<{len(samples)}h", *samples)


def signature_of(request: web.Request, secret_key: str, prefix: str) -> str:
    """The signature a request should carry, computed from what arrived."""
    params = {k: v for k, v in request.query.items() if k.lower() != "signature"}
    canonical = "&".join(f"{k}={params[k]}" for k in sorted(params))
    source = f"{prefix}{request.host}{request.path}?{canonical}"
    digest = hmac.new(secret_key.encode(), source.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class FakeTencent:
    """Both services on 127.0.0.1 with an ephemeral port; use ``async with``."""

    def __init__(
        self,
        *,
        app_id: str = "1259228442",
        secret_id: str = "AKIDtest",
        secret_key: str = "secret-key",
        sentences: tuple[Sentence, ...] = (),
    ) -> None:
        self.app_id = app_id
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.sentences = sentences
        self.asr: list[AsrConnection] = []
        self.tts: list[TtsConnection] = []
        self.asr_error_after_bytes: int | None = None
        self.asr_error = (4008, "客户端数据上传超时")
        self.asr_drop_after_bytes: int | None = None
        self.asr_silent = False
        self.asr_silent_after_end = False
        self.tts_error: tuple[int, str] | None = None
        self.tts_drop_after_frames: int | None = None
        self.tts_pause_after_frames: int | None = None  # then wait for the client to leave
        self.tts_silent = False
        self.asr_endpoint = ""
        self.tts_endpoint = ""
        self._runner: web.AppRunner | None = None
        self._live: dict[int, web.Request] = {}  # requests whose socket is open

    async def __aenter__(self) -> FakeTencent:
        app = web.Application()
        app.router.add_get("/asr/v2/{appid}", self._tracked(self._asr))
        app.router.add_get("/stream_ws", self._tracked(self._tts))
        # a test that failed mid-call leaves sockets open: do not wait on them
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.asr_endpoint = f"ws://{host}:{port}/asr/v2"
        self.tts_endpoint = f"ws://{host}:{port}/stream_ws"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        for request in self._live.values():
            if request.transport is not None:
                request.transport.abort()
        await self._runner.cleanup()

    def _tracked(self, handler: Handler) -> Handler:
        """``handler``, with its request kept in ``_live`` while it runs."""

        async def run(request: web.Request) -> web.StreamResponse:
            self._live[id(request)] = request
            try:
                return await handler(request)
            finally:
                del self._live[id(request)]

        return run

    # --- ASR ---

    async def _asr(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        app_id = request.match_info["appid"]
        signature_ok = (
            app_id == self.app_id
            and query.get("secretid") == self.secret_id
            and query.get("signature") == signature_of(request, self.secret_key, "")
        )
        conn = AsrConnection(app_id, query, signature_ok)
        self.asr.append(conn)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.asr_silent:
            async for _ in ws:
                pass
            return ws
        session = _AsrSession(self, conn, ws, request)
        if not signature_ok:
            await session.reply(code=AUTH_FAILED, message="鉴权失败")
            await ws.close()
            return ws
        await session.reply()
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                conn.audio += message.data
                conn.frame_sizes.append(len(message.data))
                if not await session.audio():
                    break
            elif message.type == WSMsgType.TEXT:
                conn.texts.append(json.loads(message.data))
                if not await session.text(conn.texts[-1]):
                    break
        return ws

    # --- TTS ---

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        signature_ok = (
            query.get("AppId") == self.app_id
            and query.get("SecretId") == self.secret_id
            and query.get("Signature") == signature_of(request, self.secret_key, "GET")
        )
        conn = TtsConnection(query, signature_ok)
        self.tts.append(conn)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session_id = query.get("SessionId", "")

        async def reply(**fields: Any) -> None:
            message = {
                "code": 0,
                "message": "success",
                "session_id": session_id,
                "request_id": f"req-{len(self.tts)}",
                "message_id": f"msg-{len(conn.replies)}",
                "final": 0,
                "result": {"subtitles": None},
                **fields,
            }
            conn.replies.append(message)
            await ws.send_str(json.dumps(message, ensure_ascii=False))

        if self.tts_silent:
            async for _ in ws:
                pass
            conn.closed_early = True
            return ws
        if not signature_ok:
            await reply(code=TTS_AUTH_FAILED, message="签名鉴权失败")
            await ws.close()
            return ws
        if self.tts_error is not None:
            code, text = self.tts_error
            await reply(code=code, message=text)
            await ws.close()
            return ws
        try:
            await self._speak(request, ws, conn, reply)
        except ConnectionResetError:
            conn.closed_early = True  # the client went away mid-synthesis
        return ws

    async def _speak(
        self, request: web.Request, ws: web.WebSocketResponse, conn: TtsConnection, reply: Any
    ) -> None:
        text = request.query["Text"]
        rate = int(request.query["SampleRate"])
        per_char = rate // 100 * 2
        pcm = fake_speech(text, rate)
        half = len(text) // 2
        for frames, (first, last) in enumerate(((0, half), (half, len(text)))):
            if self.tts_drop_after_frames is not None and frames >= self.tts_drop_after_frames:
                transport = request.transport
                assert transport is not None
                transport.abort()
                return
            if self.tts_pause_after_frames is not None and frames >= self.tts_pause_after_frames:
                await ws.receive()  # nothing comes on stream_ws but the client's leaving
                conn.closed_early = True
                return
            subtitles = [
                {
                    "Text": text[i],
                    "BeginTime": i * 10,
                    "EndTime": (i + 1) * 10,
                    "BeginIndex": i,
                    "EndIndex": i + 1,
                    "Phoneme": "",
                }
                for i in range(first, last)
                if not text[i].isspace()
            ]
            await reply(result={"subtitles": subtitles})
            frame = pcm[first * per_char : last * per_char]
            await ws.send_bytes(frame)
            conn.audio_sent += frame
        await reply(final=1)
        await ws.close()


class _AsrSession:
    """One recognition's script state."""

    def __init__(
        self,
        fake: FakeTencent,
        conn: AsrConnection,
        ws: web.WebSocketResponse,
        request: web.Request,
    ) -> None:
        self.fake = fake
        self.conn = conn
        self.ws = ws
        self.request = request
        self.reported: dict[int, int] = {}  # sentence number -> last slice_type sent

    async def reply(self, **fields: Any) -> None:
        voice_id = self.conn.query.get("voice_id", "")
        message = {
            "code": 0,
            "message": "success",
            "voice_id": voice_id,
            "message_id": f"{voice_id}_{len(self.conn.replies)}",
            **fields,
        }
        self.conn.replies.append(message)
        await self.ws.send_str(json.dumps(message, ensure_ascii=False))

    async def audio(self) -> bool:
        fake, heard = self.fake, len(self.conn.audio)
        if fake.asr_drop_after_bytes is not None and heard >= fake.asr_drop_after_bytes:
            transport = self.request.transport
            assert transport is not None
            transport.abort()
            return False
        if fake.asr_error_after_bytes is not None and heard >= fake.asr_error_after_bytes:
            code, message = fake.asr_error
            await self.reply(code=code, message=message)
            await self.ws.close()
            return False
        await self.recognise(finishing=False)
        return True

    async def text(self, message: Any) -> bool:
        if message != {"type": "end"}:
            await self.reply(code=UNKNOWN_TEXT, message="客户端上传未知文本消息")
            await self.ws.close()
            return False
        if self.fake.asr_silent_after_end:
            return True
        await self.recognise(finishing=True)
        await self.reply(final=1)
        await self.ws.close()
        return False

    async def recognise(self, *, finishing: bool) -> None:
        heard_ms = len(self.conn.audio) // 32  # 16 kHz PCM16
        for number, sentence in enumerate(self.fake.sentences):
            last = self.reported.get(number, -1)
            if last == 2:
                continue
            words = sentence.text.split()
            span = sentence.end_ms - sentence.begin_ms
            if finishing or heard_ms >= sentence.end_ms:
                await self.result(number, sentence, 2, sentence.text, sentence.end_ms)
            elif last < 1 and heard_ms >= sentence.begin_ms + span // 2:
                text = " ".join(words[: max(1, len(words) // 2)])
                await self.result(number, sentence, 1, text, heard_ms)
            elif last < 0 and heard_ms >= sentence.begin_ms + span // 4:
                await self.result(number, sentence, 0, words[0], heard_ms)

    async def result(
        self, number: int, sentence: Sentence, slice_type: int, text: str, end: int
    ) -> None:
        self.reported[number] = slice_type
        result = {
            "slice_type": slice_type,
            "index": number,
            "start_time": sentence.begin_ms,
            "end_time": end,
            "voice_text_str": text,
            "word_size": 0,
            "word_list": [],
        }
        await self.reply(result=result)
