"""The HTTP/WebSocket front end, served on 127.0.0.1 and driven by real clients.

The sessions behind it are ``EchoDirectory``: a small in-memory implementation of our own
``SessionDirectory`` interface that answers commands with events and echoes audio.
Every test runs on the default asyncio loop and on uvloop (the supervisor's loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal

import orjson
import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import BINARY, PING, Frame
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from activecall.protocol import (
    Command,
    CommandError,
    CustomEvent,
    HangupCommand,
    HangupEvent,
    error_event_for,
    parse_command,
)
from activecall.supervisor import http as http_module
from activecall.supervisor.http import HttpFrontEnd, HttpRequest, HttpResponse
from activecall.supervisor.sessions import (
    CallConnection,
    CallParams,
    EventStream,
    Health,
    SessionConflict,
    SessionUnavailable,
)

TIMEOUT = 10.0  # only against hangs; nothing here is timed


# -- the sessions: an echo implementation of SessionDirectory ----------------------------


class EchoCall:
    """Answers each command with an event, echoes audio, records what it got."""

    def __init__(
        self, directory: EchoDirectory, call_type: str, params: CallParams, conn: CallConnection
    ) -> None:
        self.directory = directory
        self.call_type = call_type
        self.params = params
        self.conn = conn
        self.received: list[tuple[str, bytes]] = []
        self.closes = 0

    @property
    def id(self) -> str:
        return self.params.session_id

    def emit(self, data: bytes) -> None:
        self.conn.send_text(data)
        self.directory.publish(self.id, "event", data)

    def hang_up(self, reason: str) -> None:
        when = "2026-01-01T00:00:00Z"
        event = HangupEvent(
            track_id=self.id, timestamp=1, reason=reason, start_time=when, hangup_time=when
        )
        self.emit(event.to_json())
        self.conn.close(1000, reason)

    def run(self, command: Command) -> None:
        if isinstance(command, HangupCommand):
            self.hang_up("caller")
        else:
            self.emit(CustomEvent(timestamp=1, sender=self.id, data=command.to_dict()).to_json())

    def on_text(self, data: bytes) -> None:
        self.received.append(("text", data))
        try:
            command = parse_command(data)
        except CommandError as exc:
            self.emit(error_event_for(exc, self.id, 1).to_json())
            return
        self.directory.publish(self.id, "command", command.to_json())
        self.run(command)

    def on_binary(self, data: bytes) -> None:
        self.received.append(("binary", data))
        self.conn.send_binary(data)

    def on_close(self) -> None:
        self.closes += 1
        self.directory.forget(self.id)


class EchoDirectory:
    """The live EchoCalls by id, with SSE subscribers."""

    def __init__(self) -> None:
        self.calls: dict[str, EchoCall] = {}
        self.opened: list[EchoCall] = []
        self.streams: dict[str, list[EventStream]] = {}
        self.draining = False

    def open_call(self, call_type: str, params: CallParams, conn: CallConnection) -> EchoCall:
        if self.draining:
            raise SessionUnavailable("draining")
        if params.session_id in self.calls:
            raise SessionConflict(params.session_id)
        call = self.calls[params.session_id] = EchoCall(self, call_type, params, conn)
        self.opened.append(call)
        return call

    def forget(self, session_id: str) -> None:
        self.calls.pop(session_id, None)
        for stream in self.streams.pop(session_id, []):
            stream.end()

    def publish(self, session_id: str, kind: Literal["event", "command"], data: bytes) -> None:
        for stream in self.streams.get(session_id, []):
            stream.send(kind, data)

    def list_calls(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "callType": c.call_type} for c in self.calls.values()]

    def kill(self, session_id: str) -> bool:
        call = self.calls.get(session_id)
        if call is None:
            return False
        call.hang_up("system")
        return True

    def command(self, session_id: str, command: Command) -> bool:
        call = self.calls.get(session_id)
        if call is None:
            return False
        self.publish(session_id, "command", command.to_json())
        call.run(command)
        return True

    def subscribe(self, session_id: str, stream: EventStream) -> Callable[[], None] | None:
        if session_id not in self.calls:
            return None
        streams = self.streams.setdefault(session_id, [])
        streams.append(stream)
        return lambda: streams.remove(stream) if stream in streams else None

    def health(self) -> Health:
        return Health(workers=2, active_calls=len(self.calls), draining=self.draining)


# -- harness ---------------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run(main: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(main, 3 * TIMEOUT))

    return run


@contextlib.asynccontextmanager
async def serving(**kwargs: Any) -> AsyncIterator[tuple[HttpFrontEnd, EchoDirectory]]:
    directory = EchoDirectory()
    front = HttpFrontEnd(directory, **kwargs)
    await front.start("127.0.0.1", 0)
    try:
        yield front, directory
    finally:
        await front.close()


def ws_connect(front: HttpFrontEnd, target: str = "/call", **kwargs: Any) -> connect:
    uri = f"ws://127.0.0.1:{front.port}{target}"
    return connect(uri, proxy=None, open_timeout=TIMEOUT, **kwargs)


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not predicate():
            await asyncio.sleep(0.005)


async def http_exchange(
    front: HttpFrontEnd, raw: bytes, *, byte_by_byte: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request, read the response to EOF (the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
    try:
        if byte_by_byte:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(raw)):
                writer.write(raw[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
        else:
            writer.write(raw)
        async with asyncio.timeout(TIMEOUT):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def get_json(front: HttpFrontEnd, path: str, **kw: Any) -> tuple[int, Any]:
    status, headers, body = await http_exchange(front, request("GET", path, **kw))
    assert headers["content-type"] == "application/json"
    return status, orjson.loads(body)


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return orjson.loads(await ws.recv())


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; the close code and reason it sent."""
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(TIMEOUT):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


# -- query parameters --------------------------------------------------------------------


def test_call_params_canonical_names() -> None:
    params = CallParams.from_query("id=abc&dump=false&ping=5&serverSideTrack=tts")
    assert params == CallParams(
        session_id="abc", dump=False, ping_interval=5, server_side_track="tts"
    )


def test_call_params_aliases_and_canonical_wins() -> None:
    aliases = CallParams.from_query("dump_events=false&ping_interval=0&server_side_track=x&id=a")
    assert (aliases.dump, aliases.ping_interval, aliases.server_side_track) == (False, 0, "x")
    both = CallParams.from_query("ping_interval=7&ping=3&dump_events=0&dump=true")
    assert (both.ping_interval, both.dump) == (3, True)


def test_call_params_defaults() -> None:
    params = CallParams.from_query("id=&forward=true&visited=x")
    assert re.fullmatch(r"s\.[0-9a-f-]{36}", params.session_id)
    assert uuid.UUID(params.session_id[2:]).version == 4
    assert (params.dump, params.ping_interval, params.server_side_track) == (
        True,
        20,
        "server-side-track",
    )


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("dump=maybe", "dump must be true or false"),
        ("ping=-1", "ping must be a whole number"),
        ("ping_interval=1.5", "ping_interval must be a whole number"),
        ("ping=4294967296", "ping must be a whole number"),
        ("id=" + "x" * 257, "id must be at most 256"),
        ("id=a%0Ab", "id must be at most 256 printable"),
    ],
)
def test_call_params_rejects(query: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        CallParams.from_query(query)


# -- WebSocket calls ---------------------------------------------------------------------


def test_ws_call_with_params_and_aliases(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            target = "/call?id=c1&dump=false&ping=0&serverSideTrack=tts"
            async with ws_connect(front, target):
                await until(lambda: "c1" in directory.calls)
            target = "/call?id=c2&dump_events=false&ping_interval=0&server_side_track=x"
            async with ws_connect(front, target):
                await until(lambda: "c2" in directory.calls)
            first, second = directory.opened
            assert first.call_type == "webSocket"
            assert first.params == CallParams(
                session_id="c1", dump=False, ping_interval=0, server_side_track="tts"
            )
            assert second.params == CallParams(
                session_id="c2", dump=False, ping_interval=0, server_side_track="x"
            )

    run(main())


def test_ws_default_id(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            async with ws_connect(front):
                await until(lambda: len(directory.opened) == 1)
            (call,) = directory.opened
            assert re.fullmatch(r"s\.[0-9a-f-]{36}", call.id)
            assert (call.params.dump, call.params.ping_interval) == (True, 20)

    run(main())


def test_ws_messages_in_order_both_ways(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            async with ws_connect(front, "/call?id=o") as ws:
                history = b'{"command":"history","speaker":"u","text":"hi"}'
                await ws.send(history.decode())
                await ws.send(b"\x01\x02" * 320)
                await ws.send('{"command":"pause"}')
                await ws.send(b"\x03")
                replies = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(4)]
                call = directory.calls["o"]
                assert call.received == [
                    ("text", history),
                    ("binary", b"\x01\x02" * 320),
                    ("text", b'{"command":"pause"}'),
                    ("binary", b"\x03"),
                ]
                assert isinstance(call.received[1][1], bytes)
            assert isinstance(replies[0], str)
            assert orjson.loads(replies[0])["data"]["command"] == "history"
            assert replies[1] == b"\x01\x02" * 320
            assert orjson.loads(replies[2])["data"] == {"command": "pause"}
            assert replies[3] == b"\x03"

    run(main())


def test_ws_fragmented_messages_are_reassembled(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory), ws_connect(front, "/call?id=f") as ws:
            await ws.send([b"ab", b"cd", b"ef"])
            await ws.send(['{"command":', '"resume"}'])
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"abcdef"
            assert (await recv_json(ws))["data"] == {"command": "resume"}
            assert directory.calls["f"].received == [
                ("binary", b"abcdef"),
                ("text", b'{"command":"resume"}'),
            ]

    run(main())


def test_ws_malformed_text_reaches_the_session(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory), ws_connect(front, "/call?id=m") as ws:
            await ws.send('{"command":"tts"}')
            error = await recv_json(ws)
            assert error["event"] == "error"
            assert error["error"] == "tts: text is required"
            await ws.send('{"command":"pause"}')  # the call goes on
            assert (await recv_json(ws))["event"] == "custom"

    run(main())


def test_ws_server_pings_at_the_interval(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{front.port}/call?ping=1"))
            client.send_request(client.connect())
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            pings: list[Frame] = []
            try:
                writer.writelines(client.data_to_send())
                async with asyncio.timeout(TIMEOUT):
                    while len(pings) < 2:
                        client.receive_data(await reader.read(65536))
                        for event in client.events_received():
                            if isinstance(event, Response):
                                assert event.status_code == 101
                            elif isinstance(event, Frame) and event.opcode is PING:
                                pings.append(event)
                        writer.writelines(client.data_to_send())  # the pongs
            finally:
                writer.close()
                await writer.wait_closed()
            for ping in pings:
                stamp = bytes(ping.data).decode()
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", stamp)

    run(main())


def test_ws_ping_zero_disables_pings(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory), ws_connect(front, "/call?id=p&ping=0"):
            await until(lambda: "p" in directory.calls)
            call = next(iter(front._calls))
            assert call._ping_timer is None

    run(main())


def test_ws_client_close_calls_on_close_once(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            async with ws_connect(front, "/call?id=cc") as ws:
                await until(lambda: "cc" in directory.calls)
                await ws.close(1000, "done")
            (call,) = directory.opened
            await until(lambda: call.closes == 1 and not front._calls)
            await asyncio.sleep(0.05)
            assert call.closes == 1
            assert "cc" not in directory.calls

    run(main())


def test_ws_client_drops_tcp_calls_on_close_once(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            ws = await ws_connect(front, "/call?id=drop")
            await until(lambda: "drop" in directory.calls)
            ws.transport.abort()
            await until(lambda: not front._calls)
            call = directory.opened[0]
            assert call.closes == 1
            call.conn.send_text(b"{}")  # late sends and closes are dropped
            call.conn.send_binary(b"late")
            call.conn.close(1000, "late")
            assert call.closes == 1

    run(main())


def test_ws_server_close_code_and_reason(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            async with ws_connect(front, "/call?id=h") as ws:
                await ws.send('{"command":"hangup"}')
                hangup = await recv_json(ws)
                assert (hangup["event"], hangup["reason"]) == ("hangup", "caller")
                assert await closed_with(ws) == (1000, "caller")
            await until(lambda: directory.opened[0].closes == 1)

    run(main())


def test_ws_message_over_max_size_closes_1009(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(max_size=1024) as (front, directory):
            async with ws_connect(front, "/call?id=big") as ws:
                await ws.send(b"x" * 1024)  # at the limit: fine
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"x" * 1024
                await ws.send([b"x" * 600, b"x" * 600])  # over it in fragments
                code, _reason = await closed_with(ws)
                assert code == 1009
            await until(lambda: directory.opened[0].closes == 1)
            assert directory.opened[0].received == [("binary", b"x" * 1024)]

    run(main())


def test_ws_duplicate_live_id_is_409(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            async with ws_connect(front, "/call?id=dup"):
                await until(lambda: "dup" in directory.calls)
                with pytest.raises(InvalidStatus) as info:
                    async with ws_connect(front, "/call?id=dup"):
                        pass
                response = info.value.response
                assert response.status_code == 409
                assert orjson.loads(response.body) == {
                    "status": "conflict",
                    "error": "session dup is live",
                    "id": "dup",
                }
            await until(lambda: "dup" not in directory.calls)
            async with ws_connect(front, "/call?id=dup"):  # free again once closed
                await until(lambda: "dup" in directory.calls)

    run(main())


def test_ws_refused_while_draining_is_503(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            directory.draining = True
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(front):
                    pass
            assert info.value.response.status_code == 503

    run(main())


def test_ws_bad_query_is_400(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(front, "/call?ping=soon"):
                    pass
            assert info.value.response.status_code == 400
            body = orjson.loads(info.value.response.body)
            assert body == {
                "status": "invalid",
                "error": "ping must be a whole number of seconds, got 'soon'",
            }
            assert not directory.opened

    run(main())


def test_ws_unknown_route_is_404(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            for target in ("/nope", "/call/sip", "/call/"):
                with pytest.raises(InvalidStatus) as info:
                    async with ws_connect(front, target):
                        pass
                assert info.value.response.status_code == 404

    run(main())


def test_added_call_route(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            front.add_call_route("/call/sip", "sip")
            async with ws_connect(front, "/call/sip?id=sip1"):
                await until(lambda: "sip1" in directory.calls)
            assert directory.opened[0].call_type == "sip"

    run(main())


def test_call_route_without_upgrade(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            status, headers, _ = await http_exchange(front, request("GET", "/call"))
            assert status == 426
            assert headers["upgrade"] == "websocket"
            status, headers, _ = await http_exchange(front, request("POST", "/call"))
            assert (status, headers["allow"]) == (405, "GET")
            assert not directory.opened

    run(main())


def test_front_end_close_closes_calls_1001(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            ws = await ws_connect(front, "/call?id=z")
            await until(lambda: "z" in directory.calls)
            closing = asyncio.ensure_future(front.close())
            assert (await closed_with(ws))[0] == 1001
            await closing
            assert directory.opened[0].closes == 1

    run(main())


# -- REST --------------------------------------------------------------------------------


def test_list_kill_and_command(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            assert await get_json(front, "/list") == (200, {"active_calls": []})
            async with ws_connect(front, "/call?id=r1") as ws:
                await until(lambda: bool(_directory.calls))
                assert await get_json(front, "/list") == (
                    200,
                    {"active_calls": [{"id": "r1", "callType": "webSocket"}]},
                )
                body = b'{"command":"history","speaker":"a","text":"b"}'
                status, _, reply = await http_exchange(front, request("POST", "/command/r1", body))
                assert (status, orjson.loads(reply)) == (200, {"status": "sent", "id": "r1"})
                assert (await recv_json(ws))["data"]["command"] == "history"
                assert await get_json(front, "/kill/r1") == (200, {"status": "killed", "id": "r1"})
                assert (await recv_json(ws))["event"] == "hangup"
                assert await closed_with(ws) == (1000, "system")
            assert await get_json(front, "/kill/r1") == (404, {"status": "not_found", "id": "r1"})
            status, _, reply = await http_exchange(
                front, request("POST", "/command/r1", b'{"command":"pause"}')
            )
            assert (status, orjson.loads(reply)) == (404, {"status": "not_found", "id": "r1"})

    run(main())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"command":', "invalid JSON"),
        (b'{"command":"dial"}', "unknown command 'dial'"),
        (b'{"command":"tts"}', "tts: text is required"),
        (b"", "invalid JSON"),
    ],
)
def test_command_that_does_not_parse_is_400(
    run: Callable[..., None], body: bytes, error: str
) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            status, _, reply = await http_exchange(front, request("POST", "/command/x", body))
            assert status == 400
            answer = orjson.loads(reply)
            assert answer["status"] == "invalid"
            assert answer["error"].startswith(error)

    run(main())


def test_percent_encoded_id(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory), ws_connect(front, "/call?id=a%20b%2Fc"):
            await until(lambda: "a b/c" in directory.calls)
            assert await get_json(front, "/kill/a%20b%2Fc") == (
                200,
                {"status": "killed", "id": "a b/c"},
            )

    run(main())


def test_iceservers_default_and_configured(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            assert await get_json(front, "/iceservers") == (
                200,
                [{"urls": ["stun:stun.l.google.com:19302"]}],
            )
        turn = {
            "urls": ["turn:turn.example.com:3478"],
            "username": "u",
            "credential": "p",
            "credential_type": "password",
        }
        async with serving(ice_servers=[turn]) as (front, _directory):
            assert await get_json(front, "/iceservers") == (200, [turn])

    run(main())


def test_health(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            assert await get_json(front, "/health") == (
                200,
                {"status": "ok", "workers": 2, "active_calls": 0},
            )
            directory.draining = True
            assert await get_json(front, "/health") == (
                503,
                {"status": "draining", "workers": 2, "active_calls": 0},
            )

    run(main())


def test_metrics(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            await get_json(front, "/health")
            async with ws_connect(front, "/call?id=mx") as ws:
                await ws.send(b"\x00" * 640)
                await ws.recv()
                status, headers, body = await http_exchange(front, request("GET", "/metrics"))
            assert status == 200
            assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = body.decode()
            assert "# TYPE activecall_http_requests_total counter\n" in text
            assert 'activecall_http_requests_total{route="health",code="200"} 1\n' in text
            assert 'activecall_http_requests_total{route="call",code="101"} 1\n' in text
            assert "activecall_ws_calls 1\n" in text
            assert 'activecall_ws_messages_received_total{kind="binary"} 1\n' in text
            assert 'activecall_ws_messages_sent_total{kind="binary"} 1\n' in text
            await until(lambda: not front._calls)
            _, _, body = await http_exchange(front, request("GET", "/metrics"))
            assert 'activecall_ws_messages_received_total{kind="binary"} 1\n' in body.decode()
            assert "activecall_ws_calls 0\n" in body.decode()

    run(main())


def test_events_stream(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            status, _, body = await http_exchange(front, request("GET", "/events/none"))
            assert (status, orjson.loads(body)) == (404, {"status": "not_found", "id": "none"})
            async with ws_connect(front, "/call?id=sse") as ws:
                await until(lambda: "sse" in directory.calls)
                reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
                try:
                    writer.write(request("GET", "/events/sse"))
                    async with asyncio.timeout(TIMEOUT):
                        head = await reader.readuntil(b"\r\n\r\n")
                        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                        assert b"Content-Type: text/event-stream\r\n" in head
                        await until(lambda: bool(directory.streams.get("sse")))
                        await ws.send('{"command":"pause"}')
                        command = await reader.readuntil(b"\n\n")
                        event = await reader.readuntil(b"\n\n")
                        assert command == b'event: command\ndata: {"command":"pause"}\n\n'
                        assert event.startswith(b'event: event\ndata: {"event":"custom"')
                        await ws.send('{"command":"hangup"}')
                        rest = await reader.read()  # to EOF: the stream ends with the call
                finally:
                    writer.close()
                    await writer.wait_closed()
            records = rest.split(b"\n\n")
            assert records[0] == b'event: command\ndata: {"command":"hangup"}'
            assert records[1].startswith(b'event: event\ndata: {"event":"hangup"')
            assert records[2:] == [b""]
            assert not front._streams

    run(main())


def test_events_stream_client_leaves(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory), ws_connect(front, "/call?id=bye"):
            await until(lambda: "bye" in directory.calls)
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.write(request("GET", "/events/bye"))
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
            writer.close()
            await writer.wait_closed()
            await until(lambda: not directory.streams["bye"] and not front._streams)

    run(main())


def test_unknown_route_and_wrong_method(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            for path in ("/nope", "/list/x", "/kill", "/kill/", "/kill/a/b", "/"):
                status, body = await get_json(front, path)
                assert status == 404, path
                assert body == {"status": "not_found", "error": f"no such endpoint: {path}"}
            status, headers, body = await http_exchange(front, request("POST", "/list"))
            assert (status, headers["allow"]) == (405, "GET")
            assert orjson.loads(body) == {
                "status": "method_not_allowed",
                "error": "/list accepts GET only",
            }
            status, headers, _ = await http_exchange(front, request("GET", "/command/x"))
            assert (status, headers["allow"]) == (405, "POST")

    run(main())


def test_added_route(run: Callable[..., None]) -> None:
    async def main() -> None:
        def echo(req: HttpRequest) -> HttpResponse:
            return HttpResponse.json(200, {"arg": req.arg, "query": req.query})

        async with serving() as (front, _directory):
            front.add_route("GET", "echo", echo, takes_id=True)
            assert await get_json(front, "/echo/a%2Fb?x=1") == (200, {"arg": "a/b", "query": "x=1"})

    run(main())


def test_added_async_route_answers_when_its_work_is_done(run: Callable[..., None]) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: HttpRequest) -> HttpResponse:
            await release.wait()
            return HttpResponse.json(200, {"body": req.body.decode()})

        async def broken(req: HttpRequest) -> HttpResponse:
            raise RuntimeError("boom")

        async with serving() as (front, _directory):
            front.add_route("POST", "slow", slow)
            front.add_route("GET", "broken", broken)
            pending = asyncio.ensure_future(http_exchange(front, request("POST", "/slow", b"hi")))
            await asyncio.sleep(0.05)
            assert not pending.done()  # waits for the handler
            release.set()
            status, _, body = await pending
            assert (status, orjson.loads(body)) == (200, {"body": "hi"})
            status, _, body = await http_exchange(front, request("GET", "/broken"))
            assert status == 500 and orjson.loads(body)["status"] == "error"

    run(main())


def test_pages_are_served_without_the_token(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(token="s3cret") as (front, _directory):
            front.add_page("/", b"<html>console</html>", "text/html; charset=utf-8")
            status, headers, body = await http_exchange(front, request("GET", "/"))
            assert (status, headers["content-type"], body) == (
                200,
                "text/html; charset=utf-8",
                b"<html>console</html>",
            )
            status, _, _ = await http_exchange(front, request("POST", "/"))
            assert status == 401  # only GET serves a page; the rest still needs the token
            status, _, _ = await http_exchange(front, request("GET", "/list"))
            assert status == 401

    run(main())


# -- bearer token ------------------------------------------------------------------------


def test_token_on_http_routes(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(token="s3cret") as (front, _directory):
            for headers in (None, {"Authorization": "Bearer s3cre"}, {"Authorization": "s3cret"}):
                status, hdrs, body = await http_exchange(
                    front, request("GET", "/health", headers=headers)
                )
                assert status == 401
                assert hdrs["www-authenticate"] == 'Bearer realm="activecall"'
                assert orjson.loads(body)["status"] == "unauthorized"
            status, _ = await get_json(front, "/nope")
            assert status == 401  # the route table is not disclosed
            status, _ = await get_json(front, "/health?token=s3cret")
            assert status == 401  # the query token is for WebSocket upgrades only
            ok = {"Authorization": "bearer s3cret"}
            assert (await get_json(front, "/health", headers=ok))[0] == 200

    run(main())


def test_token_on_ws_upgrade(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(token="s3cret") as (front, directory):
            for target, headers in (
                ("/call", None),
                ("/call?token=nope", None),
                ("/call", {"Authorization": "Bearer s3cret-and-more"}),
            ):
                with pytest.raises(InvalidStatus) as info:
                    async with ws_connect(front, target, additional_headers=headers):
                        pass
                assert info.value.response.status_code == 401
            assert not directory.opened
            async with ws_connect(front, "/call?id=t1&token=s3cret"):
                await until(lambda: "t1" in directory.calls)
            auth = {"Authorization": "Bearer s3cret"}
            async with ws_connect(front, "/call?id=t2", additional_headers=auth):
                await until(lambda: "t2" in directory.calls)

    run(main())


def test_token_is_compared_in_constant_time(
    run: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(f"{http_module.__name__}.hmac.compare_digest", spy)

    async def main() -> None:
        async with serving(token="s3cret") as (front, _directory):
            await get_json(front, "/health", headers={"Authorization": "Bearer x"})
            await get_json(front, "/health")

    run(main())
    # Every check goes through compare_digest, on digests of equal length.
    assert len(compared) == 2
    assert all(len(a) == len(b) == 32 for a, b in compared)


# -- robustness --------------------------------------------------------------------------


def test_partial_reads_http(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            status, _, body = await http_exchange(
                front,
                request("POST", "/command/none", b'{"command":"pause"}'),
                byte_by_byte=True,
            )
            assert (status, orjson.loads(body)) == (404, {"status": "not_found", "id": "none"})

    run(main())


def test_partial_reads_ws(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, directory):
            uri = parse_uri(f"ws://127.0.0.1:{front.port}/call?id=slow&ping=0")
            client = ClientProtocol(uri)
            client.send_request(client.connect())
            frames = ClientProtocol(uri, state=OPEN)  # masks frames like the client would
            frames.send_binary(b"audio")  # pipelined right behind the handshake
            frames.send_text(b'{"command":"pause"}')
            raw = b"".join(client.data_to_send() + frames.data_to_send())
            _reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for i in range(len(raw)):
                    writer.write(raw[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(0.001)
                await until(lambda: "slow" in directory.calls)
                await until(lambda: len(directory.calls["slow"].received) == 2)
                assert directory.calls["slow"].received == [
                    ("binary", b"audio"),
                    ("text", b'{"command":"pause"}'),
                ]
            finally:
                writer.close()
                await writer.wait_closed()

    run(main())


def test_garbage_is_400_and_serving_goes_on(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n"):
                status, _, body = await http_exchange(front, garbage)
                assert status == 400
                assert orjson.loads(body)["status"] == "invalid"
            assert (await get_json(front, "/health"))[0] == 200

    run(main())


def test_pipelined_requests_get_one_answer(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            raw = request("GET", "/health") + request("GET", "/list")
            status, headers, body = await http_exchange(front, raw)
            assert (status, headers["connection"]) == (200, "close")
            assert orjson.loads(body)["status"] == "ok"  # and nothing after it

    run(main())


def test_size_limits(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(max_size=1024) as (front, _directory):
            big_head = request("GET", "/health", headers={"X-Big": "x" * 70_000})
            assert (await http_exchange(front, big_head))[0] == 431
            big_body = request("POST", "/command/x", b"{" + b" " * 2000 + b"}")
            assert (await http_exchange(front, big_body))[0] == 413

    run(main())


def test_expect_100_continue(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving() as (front, _directory):
            body = b'{"command":"pause"}'
            head = request("POST", "/command/x", headers={"Expect": "100-continue"})
            head = head.replace(b"Content-Length: 0", f"Content-Length: {len(body)}".encode())
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            try:
                writer.write(head)
                interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
                assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
                writer.write(body)
                status, _, _ = parse_response(await asyncio.wait_for(reader.read(), TIMEOUT))
                assert status == 404
            finally:
                writer.close()
                await writer.wait_closed()

    run(main())


def test_request_timeout_is_408(run: Callable[..., None]) -> None:
    async def main() -> None:
        async with serving(request_timeout=0.05) as (front, _directory):
            reader, writer = await asyncio.open_connection("127.0.0.1", front.port)
            try:
                writer.write(b"GET /hea")
                status, _, _ = parse_response(await asyncio.wait_for(reader.read(), TIMEOUT))
                assert status == 408
            finally:
                writer.close()
                await writer.wait_closed()

    run(main())


# -- frames, without sockets: the same bytes cut at every point --------------------------


class RecordingTransport:
    """Records what the server writes; the protocol driving it is swapped like a real one."""

    def __init__(self) -> None:
        self.protocol: Any = None
        self.written = bytearray()
        self.closed = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.written += data

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


URI = parse_uri("ws://test/call?id=frames&ping=0")


def client_stream(build: Callable[[ClientProtocol], None]) -> tuple[ClientProtocol, bytes]:
    """A client's handshake followed by the frames ``build`` sends (masked, as a client's)."""
    client = ClientProtocol(URI)
    client.send_request(client.connect())
    frames = ClientProtocol(URI, state=OPEN)
    build(frames)
    return client, b"".join(client.data_to_send() + frames.data_to_send())


def feed(stream: bytes, cuts: list[int], **kwargs: Any) -> tuple[EchoDirectory, RecordingTransport]:
    """Drive a connection with ``stream`` cut at ``cuts``; the server's bytes are recorded."""
    directory = EchoDirectory()
    transport = RecordingTransport()

    async def main() -> None:
        front = HttpFrontEnd(directory, **kwargs)
        connection = front()
        transport.protocol = connection
        connection.connection_made(transport)  # type: ignore[arg-type]
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            if not transport.closed:
                transport.protocol.data_received(stream[start:end])
        transport.protocol.connection_lost(None)

    asyncio.run(main())
    return directory, transport


def server_frames(client: ClientProtocol, transport: RecordingTransport) -> list[Frame]:
    client.receive_data(bytes(transport.written))
    response, *frames = client.events_received()
    assert isinstance(response, Response) and response.status_code == 101
    return [frame for frame in frames if isinstance(frame, Frame)]


def mixed_frames(frames: ClientProtocol) -> None:
    frames.send_binary(b"\x01" * 640)
    frames.send_text(b'{"command":"pause"}')
    frames.send_binary(b"")
    for size in (125, 126, 65535, 65536):
        frames.send_binary(bytes([size % 251]) * size)
    frames.send_ping(b"p1")
    frames.send_binary(b"ab", fin=False)
    frames.send_continuation(b"", fin=False)
    frames.send_continuation(b"cd", fin=True)
    frames.send_text(b"x", fin=False)
    frames.send_ping(b"p2")  # control frames may come between fragments
    frames.send_continuation(b"y", fin=True)
    frames.send_binary(b"last")
    frames.send_close(1000, "bye")
    frames.writes.append(Frame(BINARY, b"after close").serialize(mask=True))  # discarded


MIXED_MESSAGES = [
    ("binary", b"\x01" * 640),
    ("text", b'{"command":"pause"}'),
    ("binary", b""),
    *[("binary", bytes([size % 251]) * size) for size in (125, 126, 65535, 65536)],
    ("binary", b"abcd"),
    ("text", b"xy"),
    ("binary", b"last"),
]


def check_mixed(client: ClientProtocol, directory: EchoDirectory, t: RecordingTransport) -> None:
    (call,) = directory.opened
    assert call.received == MIXED_MESSAGES
    assert call.closes == 1
    frames = server_frames(client, t)
    pongs = [bytes(f.data) for f in frames if f.opcode.name == "PONG"]
    assert pongs == [b"p1", b"p2"]
    assert frames[-1].opcode.name == "CLOSE"
    assert bytes(frames[-1].data) == b"\x03\xe8bye"
    assert t.closed


def test_frames_in_one_read() -> None:
    client, stream = client_stream(mixed_frames)
    check_mixed(client, *feed(stream, []))


def test_frames_byte_by_byte() -> None:
    client, stream = client_stream(mixed_frames)
    check_mixed(client, *feed(stream, list(range(1, len(stream)))))


@pytest.mark.parametrize("seed", range(20))
def test_frames_cut_at_random_points(seed: int) -> None:
    client, stream = client_stream(mixed_frames)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 200)))
    check_mixed(client, *feed(stream, cuts))


def test_frames_behind_the_handshake_in_one_read() -> None:
    def build(frames: ClientProtocol) -> None:
        frames.send_binary(b"a" * 300)
        frames.send_text(b"t")

    _, stream = client_stream(build)
    head = stream.index(b"\r\n\r\n") + 4
    directory, _ = feed(stream, [head + 5])  # the head and a cut frame arrive together
    assert directory.opened[0].received == [("binary", b"a" * 300), ("text", b"t")]


def _unmasked(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\x82\x02no")


def _reserved_bit(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\xc2\x80\x00\x00\x00\x00")  # RSV1 + binary, masked, empty


def _data_inside_fragments(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.send_text(b"a", fin=False)
    frames.writes.append(Frame(BINARY, b"no").serialize(mask=True))


def _lone_continuation(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\x80\x80\x00\x00\x00\x00")  # FIN continuation, no message open


def _bad_opcode(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\x83\x80\x00\x00\x00\x00")


def _long_ping(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\x89\xfe\x00\x7e\x00\x00\x00\x00" + b"\x00" * 126)


def _too_big(frames: ClientProtocol) -> None:
    frames.send_binary(b"ok")
    frames.writes.append(b"\x82\xfe\x04\x01")  # 1025 bytes announced, none sent


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (_unmasked, 1002),
        (_reserved_bit, 1002),
        (_data_inside_fragments, 1002),
        (_lone_continuation, 1002),
        (_bad_opcode, 1002),
        (_long_ping, 1002),
        (_too_big, 1009),
    ],
)
def test_invalid_frames_fail_the_connection(
    build: Callable[[ClientProtocol], None], code: int
) -> None:
    def build_then_more(frames: ClientProtocol) -> None:
        build(frames)
        frames.writes.append(Frame(BINARY, b"never").serialize(mask=True))

    for byte_by_byte in (False, True):
        client, stream = client_stream(build_then_more)
        cuts = list(range(1, len(stream))) if byte_by_byte else []
        directory, transport = feed(stream, cuts, max_size=1024)
        (call,) = directory.opened
        assert call.received == [("binary", b"ok")]
        assert call.closes == 1
        assert transport.closed
        close = server_frames(client, transport)[-1]
        assert close.opcode.name == "CLOSE"
        assert int.from_bytes(bytes(close.data)[:2], "big") == code
