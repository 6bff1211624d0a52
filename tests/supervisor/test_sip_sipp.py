"""SIP calls end to end: ``activecall serve`` in its own process against sipp, a real SIP peer.

The node runs with SIP on loopback and the ``webhook`` invite handler pointing at a small
aiohttp application in the test, which joins each call it is told about by connecting
``/call/sip?id=<dialogId>`` with the websockets client, exactly as an application would.
sipp plays G.711 speech RTP from ``tests/data/speech_8s_pcmu.pcap`` (made by
``tests/data/sipp/make_speech_pcap.py``) and RFC 4733 digits from the pcaps Debian's
``sip-tester`` ships.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.asyncio.client import connect

from activecall.sip.message import SipParseError, SipResponse, SipStreamParser, parse
from tests.sip import malformed
from tests.supervisor.sip_helpers import (
    DATA,
    SIPP_PCAPS,
    App,
    SipNode,
    event_names,
    free_port,
    require_sipp,
    run_sipp,
    webhook_app,
)


@pytest.fixture(scope="module")
def hook_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, hook_port: int) -> Iterator[SipNode]:
    require_sipp()
    srv = SipNode(tmp_path_factory.mktemp("node"), hook_port)
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """sipp's working directory, with the pcaps the scenarios play."""
    (tmp_path / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")
    (tmp_path / "dtmf_2833_1.pcap").symlink_to(SIPP_PCAPS / "dtmf_2833_1.pcap")
    return tmp_path


def test_sipp_calls_in_through_the_webhook_speech_dtmf_and_bye(
    node: SipNode, run_dir: Path
) -> None:
    async def scenario() -> tuple[int, str, App, list[dict[str, Any]]]:
        async with webhook_app(node, {"vad": {}}) as app:
            code, out = await run_sipp(
                "uac_speech_dtmf.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
            events = await app.call_events()
        return code, out, app, events

    code, out, app, events = asyncio.run(scenario())
    assert code == 0, out
    # The webhook got the §2.10 payload.
    (payload,) = app.payloads
    assert payload["event"] == "invite"
    assert payload["caller"].startswith("sip:sipp@127.0.0.1")
    assert payload["callee"] == f"sip:1000@127.0.0.1:{node.sip_port}"
    assert "m=audio" in payload["offer"] and "X-Test-Case: speech-dtmf" in payload["headers"]
    dialog_id = payload["dialogId"]
    # The §2.9 order: incoming, the answer, media, VAD, the digit, the caller's BYE.
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"]
    assert events[0]["headers"] == {"X-Test-Case": "speech-dtmf"}
    assert events[0]["sdp"] == payload["offer"]
    assert "m=audio" in events[2]["sdp"] and "PCMU/8000" in events[2]["sdp"]
    assert names.index("mediaReady") < names.index("speaking")
    assert names.count("speaking") == names.count("silence") >= 2
    assert [e["digit"] for e in events if e["event"] == "dtmf"] == ["1"]
    assert names[-2:] == ["trackEnd", "hangup"]
    assert events[-2]["trackId"] == dialog_id and events[-2]["duration"] > 8000
    assert events[-1]["initiator"] == "caller" and events[-1]["reason"] == "caller"
    # The call record has the RTP statistics: the 400 speech packets all reached the jitter
    # buffer; the digit came from another source (sipp keeps each pcap's SSRC).
    (cdr,) = [
        json.loads(p.read_text())
        for p in (node.cwd / "cdr").rglob("*.json")
        if json.loads(p.read_text())["callId"] == dialog_id
    ]
    assert cdr["callType"] == "sip" and cdr["statusCode"] == 200
    rtp = cdr["extras"]["rtp"]
    assert rtp["jitter"]["received"] == 400 and rtp["jitter"]["lost"] == 0
    assert rtp["session"]["receive"]["ssrc_changes"] == 1 and rtp["digits_received"] == 1
    assert rtp["session"]["send"]["packets"] > 400  # 20 ms of agent audio (silence) a tick


def _reply_to_messages(event: dict[str, Any]) -> list[dict[str, Any]]:
    if event["event"] == "message":
        return [{"command": "message", "body": "hi sipp", "contentType": "text/plain"}]
    return []


def test_sipp_drives_the_dialog_options_info_hold_message_refer(
    node: SipNode, run_dir: Path
) -> None:
    async def scenario() -> tuple[int, str, list[dict[str, Any]]]:
        async with webhook_app(node, {}, _reply_to_messages) as app:
            code, out = await run_sipp(
                "uac_in_dialog.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
            events = await app.call_events()
        return code, out, events

    code, out, events = asyncio.run(scenario())
    # sipp checked the OPTIONS Allow list, the recvonly/sendrecv answers and our MESSAGE.
    assert code == 0, out
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"]
    assert [e["digit"] for e in events if e["event"] == "dtmf"] == ["5"]  # SIP INFO
    assert [e["onHold"] for e in events if e["event"] == "hold"] == [True, False]
    (message,) = [e for e in events if e["event"] == "message"]
    assert message["body"].strip() == "hello from sipp" and message["contentType"] == "text/plain"
    (transfer,) = [e for e in events if e["event"] == "transferRequest"]
    assert transfer["referTo"] == "sip:carol@127.0.0.1"
    assert transfer["referredBy"].startswith("sip:sipp@127.0.0.1:")
    assert "error" not in names
    assert names[-1] == "hangup" and events[-1]["initiator"] == "caller"


@pytest.mark.parametrize("password", ["s3cret", "wrong"])
def test_calls_out_to_sipp_through_a_401_challenge(
    node: SipNode, run_dir: Path, password: str
) -> None:
    async def scenario() -> tuple[int, str, list[dict[str, Any]]]:
        sipp_port = free_port(socket.SOCK_DGRAM)
        sipp = asyncio.create_task(
            run_sipp("uas_auth.xml", run_dir, "-p", str(sipp_port), timeout=30)
        )
        await asyncio.sleep(0.5)  # sipp binds its port
        events: list[dict[str, Any]] = []
        option = {
            "callee": f"sip:bob@127.0.0.1:{sipp_port}",
            "caller": "sip:alice@127.0.0.1",
            "sip": {"username": "alice", "password": password, "headers": {"X-Trace-Id": "t-42"}},
        }
        async with connect(f"ws://127.0.0.1:{node.http_port}/call/sip?id=out-{password}") as ws:
            await ws.send(json.dumps({"command": "invite", "option": option}))
            async for message in ws:
                if not isinstance(message, str):
                    continue
                events.append(json.loads(message))
                if events[-1]["event"] == "mediaReady":
                    hangup = {"command": "hangup", "headers": {"X-Reason": "done"}}
                    await ws.send(json.dumps(hangup))
        code, out = await sipp
        return code, out, events

    code, out, events = asyncio.run(scenario())
    names = event_names(events)
    if password == "wrong":
        # sipp's verifyauth refused the credentials: 403, and the call fails on both sides.
        assert code != 0
        assert names == ["trackStart", "reject", "error", "hangup"]
        assert events[1]["code"] == 403 and events[2]["sender"] == "invite"
        return
    # sipp checked the digest (verifyauth) and the custom header, answered, got our BYE.
    assert code == 0, out
    assert names[:4] == ["trackStart", "ringing", "answer", "mediaReady"]
    assert events[1]["earlyMedia"] is False
    assert "m=audio" in events[2]["sdp"]
    assert names[-2:] == ["trackEnd", "hangup"]
    assert events[-1]["initiator"] == "caller"


def _classify() -> tuple[list[bytes], list[int], list[bytes], list[bytes]]:
    """The corpus split: (rejected by the parser, their answers' statuses when they get one),
    accepted by the parser, and those too large for a datagram (sent over TCP)."""
    rejected: list[bytes] = []
    statuses: list[int] = []
    accepted: list[bytes] = []
    huge: list[bytes] = []
    for _, data in malformed.corpus():
        if len(data) > 65000:
            huge.append(data)
            continue
        try:
            parse(data)
        except SipParseError as exc:
            rejected.append(data)
            if exc.response() is not None:
                statuses.append(exc.status)
            continue
        accepted.append(data)
    return rejected, statuses, accepted, huge


class _Collector(asyncio.DatagramProtocol):
    """The datagrams from the node's SIP port (our ephemeral port may be some call's old RTCP
    port: the node's RTP and RTCP to it are not replies)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.replies: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if addr[1] == self.port:
            self.replies.append(data)


async def _blast(port: int, messages: list[bytes]) -> list[bytes]:
    """Send ``messages`` from one socket, paced; the datagrams that came back."""
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_datagram_endpoint(
        lambda: _Collector(port), local_addr=("127.0.0.1", 0)
    )
    try:
        for i, data in enumerate(messages):
            transport.sendto(data, ("127.0.0.1", port))
            if i % 20 == 19:
                # The node's socket buffer is not a benchmark here: ~2,000 datagrams/s, so a
                # node on a busy 2-CPU machine reads them before its buffer overflows.
                await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)
    finally:
        transport.close()
    return collector.replies


async def _over_tcp(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionError:
        pass  # the node closed the connection while we were still writing: a fine answer
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_malformed_corpus_is_refused_while_a_call_goes_on(node: SipNode, run_dir: Path) -> None:
    rejected, statuses, accepted, huge = _classify()
    assert len(rejected) + len(accepted) + len(huge) >= 5000

    async def scenario() -> tuple[
        int, str, list[dict[str, Any]], list[bytes], list[bytes], list[bytes]
    ]:
        async with webhook_app(node, {}, _reply_to_messages) as app:
            call = asyncio.create_task(
                run_sipp("uac_in_dialog.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}")
            )
            await asyncio.sleep(0.2)  # the call is being set up
            bad = await _blast(node.sip_port, rejected)
            odd = await _blast(node.sip_port, accepted)
            tcp = [await _over_tcp(node.sip_port, data) for data in huge]
            code, out = await call
            events = await app.call_events()
        return code, out, events, bad, odd, tcp

    code, out, events, bad, odd, tcp = asyncio.run(scenario())
    # Every answer to a message the parser refused is 400, 413 or 505, and (UDP on loopback,
    # paced) nearly all that can be answered were.
    got = [int(reply.split(b" ", 2)[1]) for reply in bad]
    assert set(got) <= {400, 413, 505}
    assert len(got) >= 0.95 * len(statuses) and len(got) <= len(statuses)
    assert sorted(set(got)) == sorted(set(statuses))
    # Messages the parser accepted (mutations that stayed valid) get ordinary answers.
    assert all(isinstance(parse(reply), SipResponse) for reply in odd)
    # Too large for a datagram, they went over TCP: answered as the stream parser says
    # (413 when the answer can be routed), then the connection is closed.
    for data, reply in zip(huge, tcp, strict=True):
        (error,) = SipStreamParser().feed(data)
        assert isinstance(error, SipParseError) and error.fatal
        expected = error.response()
        if expected is None:
            assert reply == b""
            continue
        answer = parse(reply)
        assert isinstance(answer, SipResponse) and answer.status == expected.status
        assert (answer.call_id, answer.cseq) == (expected.call_id, expected.cseq)
    # The call that ran meanwhile (every in-dialog request of the test above) went through
    # as usual, and the node is fine.
    assert code == 0, out
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"]
    assert [e["digit"] for e in events if e["event"] == "dtmf"] == ["5"]
    assert "transferRequest" in names and "error" not in names
    assert events[-1]["event"] == "hangup" and events[-1]["initiator"] == "caller"
    assert node.proc.poll() is None
    health = node.health()
    assert health["status"] == "ok" and health["workers"] == 2


def _worker_pids(node: SipNode) -> list[int]:
    supervisor = psutil.Process(node.proc.pid)
    workers = [c for c in supervisor.children() if c.cmdline() == supervisor.cmdline()]
    return [c.pid for c in sorted(workers, key=lambda c: c.create_time())]


@pytest.mark.parametrize("ending", ["shutdown", "worker killed"])
def test_live_calls_get_a_bye_when_the_node_stops_or_their_worker_dies(
    tmp_path: Path, run_dir: Path, ending: str
) -> None:
    require_sipp()
    hook = free_port()
    (tmp_path / "node").mkdir()
    node = SipNode(tmp_path / "node", hook)

    async def scenario() -> tuple[int, str, list[dict[str, Any]]]:
        async with webhook_app(node, {}) as app:
            call = asyncio.create_task(
                run_sipp("uac_wait_bye.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}")
            )
            async with asyncio.timeout(10):
                while not app.calls:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # answered and acknowledged
            if ending == "shutdown":
                node.proc.send_signal(signal.SIGTERM)
            else:
                os.kill(_worker_pids(node)[0], signal.SIGKILL)  # the first call goes to worker 0
            code, out = await call
            events = await app.call_events()
        return code, out, events

    try:
        code, out, events = asyncio.run(scenario())
        if ending == "shutdown":
            node.proc.wait(30)  # it stops by itself; a second SIGTERM would kill it
    finally:
        exit_code = node.stop()
    assert code == 0, out  # sipp got its BYE and answered it
    assert exit_code == 0, node.logs()
    assert event_names(events)[:3] == ["incoming", "trackStart", "answer"]
    assert events[-1]["event"] == "hangup" and events[-1]["initiator"] == "system"
    if ending == "worker killed":
        assert events[-2]["event"] == "error" and events[-1]["reason"] == "error"


def test_hanging_up_while_ringing_cancels_the_invite(node: SipNode, run_dir: Path) -> None:
    async def scenario() -> tuple[int, str, list[dict[str, Any]]]:
        sipp_port = free_port(socket.SOCK_DGRAM)
        sipp = asyncio.create_task(run_sipp("uas_cancel.xml", run_dir, "-p", str(sipp_port)))
        await asyncio.sleep(0.5)
        events: list[dict[str, Any]] = []
        option = {"callee": f"sip:bob@127.0.0.1:{sipp_port}"}
        async with connect(f"ws://127.0.0.1:{node.http_port}/call/sip") as ws:
            await ws.send(json.dumps({"command": "invite", "option": option}))
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
                    if events[-1]["event"] == "ringing":
                        await ws.send(json.dumps({"command": "hangup"}))
        code, out = await sipp
        return code, out, events

    code, out, events = asyncio.run(scenario())
    assert code == 0, out  # sipp got the CANCEL and our ACK for its 487
    assert event_names(events) == ["trackStart", "ringing", "hangup"]


def test_a_call_the_application_refuses_gets_503(node: SipNode, run_dir: Path) -> None:
    async def scenario() -> tuple[int, str, App]:
        async with webhook_app(node, {}) as app:
            code, out = await run_sipp(
                "uac_refused.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
        return code, out, app

    code, out, app = asyncio.run(scenario())
    assert code == 0, out  # sipp expects exactly 503
    assert app.refused == 1 and app.calls == {}


def test_serve_call_places_a_call_at_start(tmp_path: Path, run_dir: Path) -> None:
    sipp_port = free_port(socket.SOCK_DGRAM)

    async def answer() -> tuple[int, str]:
        return await run_sipp("uas_answer_bye.xml", run_dir, "-p", str(sipp_port), timeout=30)

    async def scenario() -> tuple[int, str]:
        sipp = asyncio.create_task(answer())
        await asyncio.sleep(0.3)
        (tmp_path / "node").mkdir()
        node = await asyncio.to_thread(
            SipNode, tmp_path / "node", free_port(), f"sip:bob@127.0.0.1:{sipp_port}"
        )
        try:
            return await sipp
        finally:
            assert node.stop() == 0, node.logs()
            cdrs = list((node.cwd / "cdr").rglob("*.json"))
            assert len(cdrs) == 1 and json.loads(cdrs[0].read_text())["callType"] == "sip"

    code, out = asyncio.run(scenario())
    assert code == 0, out  # the INVITE came, our ACK, and the 200 for sipp's BYE


def test_register_users_registers_refreshes_and_unregisters(tmp_path: Path, run_dir: Path) -> None:
    registrar = free_port(socket.SOCK_DGRAM)
    extra = (
        f'[[register_users]]\nserver = "127.0.0.1:{registrar}"\nusername = "alice"\n'
        '[register_users.credential]\nusername = "alice"\npassword = "s3cret"\n'
        f'[[register_users]]\nserver = "127.0.0.1:{registrar}"\nusername = "bob"\n'
        "disabled = true\n"
    )

    async def scenario() -> tuple[int, str, SipNode]:
        sipp = asyncio.create_task(
            run_sipp("uas_registrar.xml", run_dir, "-p", str(registrar), timeout=30)
        )
        await asyncio.sleep(0.3)
        (tmp_path / "node").mkdir()
        node = await asyncio.to_thread(SipNode, tmp_path / "node", free_port(), None, extra)
        try:
            async with asyncio.timeout(10):  # registered, then refreshed at 75 % of 2 s
                while node.logs().count("registered alice@") < 2:
                    await asyncio.sleep(0.1)
            node.proc.send_signal(signal.SIGTERM)
            return (*await sipp, node)
        finally:
            await asyncio.to_thread(node.proc.wait, 30)
            node.stop()

    code, out, node = asyncio.run(scenario())
    assert code == 0, out  # two challenged REGISTERs, then the un-REGISTER
    assert node.proc.returncode == 0
    assert "unregistered" in node.logs() and "bob@" not in node.logs()  # disabled
