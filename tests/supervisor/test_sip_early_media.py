"""Outgoing SIP legs end to end against sipp: early media (183 with SDP and an announcement
before the 200) and routing (``rewrites`` to the peer, digest credentials from
``register_users``), with ``activecall serve`` in its own process."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.supervisor.sip_helpers import (
    DATA,
    SipNode,
    event_names,
    free_port,
    require_sipp,
    run_sipp,
)


@pytest.fixture(scope="module")
def sipp_port() -> int:
    """The port the rewritten callee points at (known before the node starts)."""
    return free_port(socket.SOCK_DGRAM)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, sipp_port: int) -> Iterator[SipNode]:
    require_sipp()
    # The registrar is a port where nobody answers: the registration just retries, and its
    # credentials serve calls to 127.0.0.1 (the host of the server entry).
    registrar = free_port(socket.SOCK_DGRAM)
    extra = (
        "[[rewrites]]\n"
        'match = "^sip:(\\\\w+)@pstn\\\\.invalid$"\n'
        f'rewrite = "sip:$1@127.0.0.1:{sipp_port}"\n'
        "[[register_users]]\n"
        f'server = "127.0.0.1:{registrar}"\n'
        'username = "alice"\n'
        "[register_users.credential]\n"
        'username = "alice"\npassword = "s3cret"\n'
    )
    srv = SipNode(tmp_path_factory.mktemp("node"), free_port(), extra=extra)
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """sipp's working directory, with the pcap the scenarios play."""
    (tmp_path / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")
    return tmp_path


async def call_out(
    node: SipNode, session_id: str, option: dict[str, Any], scenario: str, run_dir: Path, port: int
) -> tuple[int, str, list[dict[str, Any]]]:
    """sipp runs ``scenario`` on ``port``; a client places the call and hangs up at the
    answer; sipp's exit code and output, and the call's events."""
    sipp = asyncio.create_task(run_sipp(scenario, run_dir, "-p", str(port), timeout=30))
    await asyncio.sleep(0.5)  # sipp binds its port
    events: list[dict[str, Any]] = []
    async with connect(f"ws://127.0.0.1:{node.http_port}/call/sip?id={session_id}") as ws:
        await ws.send(json.dumps({"command": "invite", "option": option}))
        async for message in ws:
            if not isinstance(message, str):
                continue
            events.append(json.loads(message))
            if events[-1]["event"] == "answer":
                await ws.send(json.dumps({"command": "hangup"}))
    code, out = await sipp
    return code, out, events


def test_early_media_speech_is_heard_before_the_answer(node: SipNode, run_dir: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    option = {"callee": f"sip:announce@127.0.0.1:{port}", "vad": {}}
    code, out, events = asyncio.run(
        call_out(node, "early-1", option, "uas_early_media.xml", run_dir, port)
    )
    assert code == 0, out + node.logs()[-3000:]
    names = event_names(events)
    assert names[:2] == ["trackStart", "ringing"] and events[1]["earlyMedia"] is True
    # The announcement played in the 183's media reached the VAD before the 200.
    assert names.index("mediaReady") < names.index("speaking") < names.index("answer")
    assert names.count("answer") == 1 and "m=audio" in events[names.index("answer")]["sdp"]
    assert "error" not in names
    assert names[-2:] == ["trackEnd", "hangup"] and events[-1]["answerTime"]


def test_rewritten_callee_authenticated_with_register_users_credentials(
    node: SipNode, run_dir: Path, sipp_port: int
) -> None:
    # No sip.username/password: the rewrite leads to 127.0.0.1, whose register_users entry
    # answers sipp's 401 (sipp checks the digest with verifyauth, and the custom header).
    option = {"callee": "sip:bob@pstn.invalid", "sip": {"headers": {"X-Trace-Id": "t-42"}}}
    code, out, events = asyncio.run(
        call_out(node, "routed-1", option, "uas_auth.xml", run_dir, sipp_port)
    )
    assert code == 0, out + node.logs()[-3000:]
    names = event_names(events)
    assert names[:3] == ["trackStart", "ringing", "answer"]
    assert names[-2:] == ["trackEnd", "hangup"]
    assert "routed to sip:bob@127.0.0.1" in node.logs()


def test_a_callee_no_rule_can_route_is_rejected(node: SipNode) -> None:
    async def scenario() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        # .invalid never resolves (RFC 2606) and no rewrite matches this user part
        option = {"callee": "sip:bob.smith@pstn.invalid"}
        async with connect(f"ws://127.0.0.1:{node.http_port}/call/sip?id=unrouted-1") as ws:
            await ws.send(json.dumps({"command": "invite", "option": option}))
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
        return events

    events = asyncio.run(scenario())
    assert event_names(events) == ["trackStart", "reject", "error", "hangup"]
    assert events[1]["code"] == 404
