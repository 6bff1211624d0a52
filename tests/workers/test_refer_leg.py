"""The refer leg in a worker's place: real UDP sockets on 127.0.0.1 and two real RTP peers.

The test is the worker (ticks every 20 ms, the ``sip`` control records), the caller (an
:class:`RtpMediaPipeline` on its own socket, or a WebSocket client's binary frames) and the
party the call is transferred to (a second pipeline, answering the leg's SDP offer).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pylibsrtp
import pytest

from activecall.rtp.media import DigitReceived, RtpMediaPipeline
from activecall.rtp.packet import is_rtcp
from activecall.rtp.sdp import answer, build_offer, parse_answer
from activecall.rtp.srtp import SUITES
from activecall.workers.session import CallSession, CallState, SessionSettings
from activecall.workers.sip_session import SipCallSession
from tests.workers.test_session import Port

HOST = "127.0.0.1"
SST = "server-side-track"


class RealPort(Port):
    """The worker's side on the wall clock; ``sip`` records kept apart from events."""

    def __init__(self) -> None:
        super().__init__()
        self.worker_index = 0
        self.records: list[dict[str, Any]] = []

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def emit_text(self, data: bytes) -> None:
        obj = orjson.loads(data)
        (self.records if obj.get("op") == "sip" else self.events).append(obj)

    def leg_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("leg") == "refer"]


@pytest.fixture
def rtp_range() -> Iterator[tuple[int, int]]:
    first = 50000 + (os.getpid() % 500) * 20  # this process's own ports
    yield first, first + 19


class Party:
    """A remote party: a UDP socket, and once negotiated an RTP pipeline; keeps what it hears."""

    made: ClassVar[list[Party]] = []

    def __init__(self) -> None:
        Party.made.append(self)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.pipeline: RtpMediaPipeline | None = None
        self.heard: list[np.ndarray] = []
        self.digits: list[str] = []
        self.packets = 0

    def offer(self) -> str:
        self.sent_offer = build_offer(["pcmu", "telephone-event"], HOST, self.port, session_id=7)
        return self.sent_offer.serialize()

    def answer(self, offer: str) -> str:
        sdp, media = answer(offer, ["pcmu", "telephone-event"], HOST, self.port)
        self.pipeline = RtpMediaPipeline(media)
        return sdp.serialize()

    def step(self, now: int, frame: np.ndarray | None) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.packets += 1
            plain = self.incoming(data)
            if self.pipeline is not None and plain is not None:
                for event in self.pipeline.receive(plain, source, now):
                    if isinstance(event, DigitReceived):
                        self.digits.append(event.digit)
        if self.pipeline is None:
            return
        out = self.pipeline.tick(now, time.time(), agent=frame)
        self.heard.append(out.pcm)
        for d in out.datagrams:
            self.sock.sendto(self.outgoing(d.data, d.rtcp), d.address)

    def incoming(self, data: bytes) -> bytes | None:
        """A datagram as the pipeline takes it (``None``: dropped)."""
        return data

    def outgoing(self, data: bytes, rtcp: bool) -> bytes:
        """A datagram of the pipeline as it goes on the wire."""
        return data

    def rms(self, last: int | None = None) -> float:
        frames = self.heard[-last:] if last else self.heard
        if not frames:
            return 0.0
        pcm = np.concatenate(frames).astype(np.float64)
        return float(np.sqrt(np.mean(pcm**2)))


_P = pylibsrtp.Policy


class SrtpParty(Party):
    """A party answering SDES-SRTP, its SRTP done by libsrtp contexts of its own (pylibsrtp
    directly), keyed from the SDP: independent of :class:`activecall.rtp.srtp.SrtpSession`."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[str] = []
        self.sent: list[bytes] = []  # the SRTP packets it sent, for the replay and tamper cases

    def answer(self, offer: str) -> str:
        sdp, media = answer(offer, ["pcmu", "telephone-event"], HOST, self.port)
        assert media.srtp is not None, "the leg offered no crypto line"
        profile = SUITES[media.srtp.suite][0]
        self.out = pylibsrtp.Session(
            _P(key=media.srtp.local_key, ssrc_type=_P.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        )
        self.into = pylibsrtp.Session(
            _P(key=media.srtp.remote_key, ssrc_type=_P.SSRC_ANY_INBOUND, srtp_profile=profile)
        )
        self.pipeline = RtpMediaPipeline(media)
        return sdp.serialize()

    def incoming(self, data: bytes) -> bytes | None:
        try:
            return self.into.unprotect_rtcp(data) if is_rtcp(data) else self.into.unprotect(data)
        except pylibsrtp.Error as exc:
            self.failures.append(str(exc))
            return None

    def outgoing(self, data: bytes, rtcp: bool) -> bytes:
        out = self.out.protect_rtcp(data) if rtcp else self.out.protect(data)
        if not rtcp:
            self.sent.append(out)
        return out


@pytest.fixture(autouse=True)
def close_parties() -> Iterator[None]:
    yield
    while Party.made:
        Party.made.pop().sock.close()


def tone(hz: float, seconds: float, level: float = 8000.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


@pytest.fixture
def moh_file(tmp_path: Path) -> Path:
    path = tmp_path / "moh.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(tone(440, 0.5).tobytes())
    return path


def settings(tmp_path: Path) -> SessionSettings:
    return SessionSettings(
        recording_dir=tmp_path / "rec", dump_dir=tmp_path / "dump", callrecord_dir=tmp_path / "cdr"
    )


def media(rtp_range: tuple[int, int]) -> dict[str, Any]:
    return {
        "ip": HOST,
        "bindIp": HOST,
        "ports": list(rtp_range),
        "workers": 1,
        "codecs": ["pcmu", "pcma", "telephone_event"],
    }


def send(session: CallSession, command: dict[str, Any]) -> None:
    session.on_text(json.dumps(command))


def leg_says(session: CallSession, **fields: Any) -> None:
    session.on_control({"op": "sip", "leg": "refer", **fields})


def names(port: RealPort) -> list[str]:
    return [e["event"] for e in port.events]


def refer_events(port: RealPort) -> list[dict[str, Any]]:
    return [e for e in port.events if e.get("refer")]


class SipCall:
    """An inbound SIP call, answered, with the caller on its own RTP socket."""

    def __init__(self, tmp_path: Path, rtp_range: tuple[int, int]) -> None:
        self.port = RealPort()
        self.caller = Party()
        sip = {
            "direction": "inbound",
            "caller": "sip:alice@127.0.0.1",
            "callee": "sip:agent@127.0.0.1",
            "offer": self.caller.offer(),
        }
        self.session = SipCallSession(
            self.port,
            "d.refer",
            call_type="sip",
            settings=settings(tmp_path),
            params={"sip": sip, "media": media(rtp_range)},
        )
        send(self.session, {"command": "accept", "option": {}})
        (accept,) = [r for r in self.port.records if r["action"] == "accept"]
        self.caller.pipeline = RtpMediaPipeline(parse_answer(self.caller.sent_offer, accept["sdp"]))

    async def run(
        self,
        seconds: float,
        *,
        caller: np.ndarray | None = None,
        callee: np.ndarray | None = None,
        target: Party | None = None,
    ) -> None:
        start = time.monotonic()
        for n in range(int(seconds * 50)):
            now = self.port.now_ms()
            self.caller.step(now, _frame(caller, n))
            if target is not None:
                target.step(now, _frame(callee, n))
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
            self.session.tick(self.port.now_ms())
            if self.session.state is CallState.ENDED:
                return


def finish(call: SipCall) -> CallState:
    """The call's state now; then the call is hung up (its sockets and files closed)."""
    state = call.session.state
    send(call.session, {"command": "hangup"})
    return state


def _frame(pcm: np.ndarray | None, n: int) -> np.ndarray | None:
    if pcm is None or (n + 1) * 320 > len(pcm):
        return None
    return pcm[n * 320 : (n + 1) * 320]


def test_answered_leg_is_bridged_with_moh_dtmf_and_auto_hangup(
    tmp_path: Path, rtp_range: tuple[int, int], moh_file: Path
) -> None:
    async def scenario() -> tuple[SipCall, Party, dict[str, Any]]:
        call = SipCall(tmp_path, rtp_range)
        target = Party()
        options = {"moh": str(moh_file), "sip": {"headers": {"X-Case": "r1"}}}
        send(
            call.session,
            {
                "command": "refer",
                "caller": "sip:agent@127.0.0.1",
                "callee": "sip:bob@127.0.0.1:5070",
                "options": options,
            },
        )
        (invite,) = call.port.leg_records()
        # Dialling: the caller hears the music on hold.
        await call.run(0.6)
        moh_heard = call.caller.rms(last=20)
        leg_says(call.session, event="ringing", code=180)
        leg_says(call.session, event="answer", sdp=target.answer(invite["sdp"]))
        # Bridged: a 1 kHz tone from the caller reaches the target, 500 Hz comes back.
        await call.run(1.5, caller=tone(1000, 1.5), callee=tone(500, 1.5), target=target)
        assert call.caller.pipeline is not None
        call.caller.pipeline.send_dtmf("5")  # forwardDtmf: on to the target
        await call.run(0.5, target=target)
        leg_says(call.session, event="bye")  # the target hangs up: autoHangup ends the call
        return call, target, {"invite": invite, "moh": moh_heard}

    call, target, seen = asyncio.run(scenario())
    invite = seen["invite"]
    assert invite["action"] == "invite" and invite["callee"] == "sip:bob@127.0.0.1:5070"
    assert invite["caller"] == "sip:agent@127.0.0.1"
    assert invite["callId"].startswith("ref-") and invite["callId"].endswith("-d.refer")
    assert invite["sip"]["headers"] == {
        "X-Case": "r1",
        "X-Referred-To": "sip:agent@127.0.0.1",
        "X-Referred-From": "sip:alice@127.0.0.1",
        "X-Referred-Id": "d.refer",
    }
    assert "PCMU/8000" in invite["sdp"]
    assert seen["moh"] > 1000  # the 440 Hz tone, not silence
    events = refer_events(call.port)
    assert [e["event"] for e in events] == ["ringing", "answer", "hangup"]
    assert all(e["trackId"] == SST for e in events)
    assert events[0]["earlyMedia"] is False
    # The target heard the caller's tone; the caller heard the target's.
    heard_by_target = np.concatenate(target.heard[25:70])
    heard_by_caller = np.concatenate(call.caller.heard[60:100])
    assert rms(heard_by_target) > 2000 and rms(heard_by_caller) > 2000
    assert _peak_hz(heard_by_target) == pytest.approx(1000, abs=30)
    assert _peak_hz(heard_by_caller) == pytest.approx(500, abs=30)
    assert target.digits == ["5"]
    assert [e["digit"] for e in call.port.events if e["event"] == "dtmf"] == ["5"]  # the caller's
    (leg_hangup,) = [e for e in events if e["event"] == "hangup"]
    assert leg_hangup["initiator"] == "callee"
    # The main call ended after the leg, by the refer.
    main_hangup = [e for e in call.port.events if e["event"] == "hangup" and not e.get("refer")]
    assert main_hangup[0]["reason"] == "refer" and call.port.ended
    assert call.port.records[-1]["action"] == "bye" and "leg" not in call.port.records[-1]
    assert [r["action"] for r in call.port.leg_records()] == ["invite"]  # no BYE: it was theirs
    (cdr,) = (tmp_path / "cdr").rglob("*.json")
    record = json.loads(cdr.read_text())["referCallrecord"]
    assert record["callId"] == invite["callId"] and record["statusCode"] == 200
    assert record["callee"] == "sip:bob@127.0.0.1:5070"
    assert record["extras"]["rtp"]["jitter"]["received"] > 40


def _peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(len(pcm), 1 / 16000)[int(np.argmax(spectrum))])


def test_hangup_refer_ends_only_the_leg(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    async def scenario() -> tuple[SipCall, CallState]:
        call = SipCall(tmp_path, rtp_range)
        target = Party()
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        (invite,) = call.port.leg_records()
        leg_says(call.session, event="answer", sdp=target.answer(invite["sdp"]))
        await call.run(0.4, target=target)
        # The target moves its media (a re-INVITE), sends a digit by INFO, offers nonsense.
        assert target.pipeline is not None
        moved = Party()
        leg_says(call.session, event="reinvite", sdp=moved.offer())
        leg_says(call.session, event="reinvite", sdp="v=0 nonsense")
        leg_says(call.session, event="info", body="Signal=3", contentType="application/dtmf-relay")
        send(call.session, {"command": "hangup", "refer": True, "headers": {"X-Why": "done"}})
        await call.run(0.4)
        # The call goes on with the agent: a play is heard again, a second refer may dial.
        send(call.session, {"command": "hangup", "refer": True})
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:carol@127.0.0.1"})
        return call, finish(call)

    call, state = asyncio.run(scenario())
    assert state is CallState.ANSWERED
    legs = call.port.leg_records()
    assert [r["action"] for r in legs] == [
        "invite",
        "reanswer",
        "reanswer",
        "bye",
        "invite",
        "bye",
    ]
    assert "m=audio" in legs[1]["sdp"] and legs[2]["code"] == 488
    assert legs[3]["headers"] == {"X-Why": "done"}
    assert legs[4]["callee"] == "sip:carol@127.0.0.1" and "caller" not in legs[4]
    events = refer_events(call.port)
    # The leg's hangup, then (the call's own hangup) the second leg's: its CANCEL.
    assert [e["event"] for e in events] == ["answer", "dtmf", "hangup", "hangup"]
    assert events[1]["digit"] == "3" and events[2]["initiator"] == "caller"
    errors = [e for e in call.port.events if e["event"] == "error"]
    assert len(errors) == 1 and "no refer leg" in errors[0]["error"]
    assert errors[0]["command"] == "hangup"
    main = [e["event"] for e in call.port.events if not e.get("refer")]
    assert main.count("hangup") == 1 and main[-1] == "hangup"  # only the final one


def test_busy_target_is_a_refer_reject_and_the_call_goes_on(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[SipCall, CallState]:
        call = SipCall(tmp_path, rtp_range)
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        leg_says(call.session, event="ringing", code=183, sdp="v=0")
        leg_says(call.session, event="reject", code=486, reason="Busy Here")
        await call.run(0.2)
        return call, finish(call)

    call, state = asyncio.run(scenario())
    events = refer_events(call.port)
    assert [e["event"] for e in events] == ["ringing", "reject"]
    assert events[0]["earlyMedia"] is True
    assert events[1]["code"] == 486 and events[1]["reason"] == "Busy Here"
    assert state is CallState.ANSWERED
    assert [r["action"] for r in call.port.leg_records()] == ["invite"]  # nothing to end


def test_unanswered_leg_times_out_with_408(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    async def scenario() -> tuple[SipCall, CallState]:
        call = SipCall(tmp_path, rtp_range)
        options = {"timeout": 1, "autoHangup": False}
        command = {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"}
        send(call.session, {**command, "options": options})
        await call.run(1.3)
        leg_says(call.session, event="answer", sdp="v=0")  # too late: ignored
        return call, finish(call)

    call, state = asyncio.run(scenario())
    (reject,) = refer_events(call.port)
    assert reject["event"] == "reject" and reject["code"] == 408
    assert reject["reason"] == "Timeout when refer"
    assert [r["action"] for r in call.port.leg_records()] == ["invite", "bye"]
    assert state is CallState.ANSWERED


def test_bad_refers_are_errors_and_the_call_goes_on(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[SipCall, CallState, RealPort, CallState]:
        call = SipCall(tmp_path, rtp_range)
        send(call.session, {"command": "refer", "caller": "", "callee": ""})
        send(call.session, {"command": "refer", "caller": "", "callee": "tel:+15550100"})
        send(call.session, {"command": "refer", "caller": ""})  # no callee at all
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:eve@127.0.0.1"})
        leg_says(call.session, event="answer", sdp="not sdp")  # an unusable answer
        # A WebSocket call on a node without SIP, and a refer before the call starts.
        port = RealPort()
        ws = CallSession(port, "s.nosip", settings=settings(tmp_path / "ws"))
        send(ws, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        send(ws, {"command": "invite", "option": {}})
        send(ws, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        send(ws, {"command": "hangup", "refer": True})
        ws_state = ws.state
        send(ws, {"command": "hangup"})
        return call, finish(call), port, ws_state

    call, state, port, ws_state = asyncio.run(scenario())
    errors = [e["error"] for e in call.port.events if e["event"] == "error"]
    assert "needs a callee" in errors[0] and "must be a sip: URI" in errors[1]
    assert "callee" in errors[2]  # the parser names the missing field
    assert "already up" in errors[3]
    assert [r["callee"] for r in call.port.leg_records() if r["action"] == "invite"] == [
        "sip:bob@127.0.0.1"
    ]
    (reject,) = refer_events(call.port)
    assert reject["event"] == "reject" and reject["code"] == 488
    assert call.port.leg_records()[-1]["action"] == "bye"
    assert state is CallState.ANSWERED and ws_state is CallState.ANSWERED
    ws_errors = [e["error"] for e in port.events if e["event"] == "error"]
    assert "before 'invite'" in ws_errors[0]
    assert "SIP" in ws_errors[1] and "not configured" in ws_errors[1]
    assert "no refer leg" in ws_errors[2]
    assert names(port).count("hangup") == 1  # the final one


def test_websocket_call_bridges_a_refer_leg(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    async def scenario() -> tuple[RealPort, Party, CallSession]:
        port = RealPort()
        session = CallSession(
            port,
            "s.ws",
            settings=settings(tmp_path),
            params={"media": media(rtp_range)},
        )
        send(session, {"command": "invite", "option": {"codec": "pcm"}})
        send(session, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        (invite,) = port.leg_records()
        target = Party()
        leg_says(session, event="answer", sdp=target.answer(invite["sdp"]))
        caller = tone(1000, 1.5)
        callee = tone(500, 1.5)
        start = time.monotonic()
        for n in range(75):
            now = port.now_ms()
            session.on_audio(caller[n * 320 : (n + 1) * 320].tobytes())
            target.step(now, callee[n * 320 : (n + 1) * 320])
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
            session.tick(port.now_ms())
        send(session, {"command": "hangup"})  # the call ends: so does its leg
        return port, target, session

    port, target, session = asyncio.run(scenario())
    back = np.frombuffer(b"".join(port.audio[40:70]), dtype=np.int16)
    assert rms(back) > 2000 and _peak_hz(back) == pytest.approx(500, abs=30)
    heard = np.concatenate(target.heard[30:70])
    assert rms(heard) > 2000 and _peak_hz(heard) == pytest.approx(1000, abs=30)
    assert [r["action"] for r in port.leg_records()] == ["invite", "bye"]
    assert [e["event"] for e in refer_events(port)] == ["answer", "hangup"]
    assert names(port)[-1] == "hangup" and session.state is CallState.ENDED


def srtp_call(tmp_path: Path, rtp_range: tuple[int, int]) -> SipCall:
    """A SIP call on a node with ``enable_srtp`` on (the caller's own leg stays plain RTP)."""
    call = SipCall.__new__(SipCall)
    call.port = RealPort()
    call.caller = Party()
    sip = {"direction": "inbound", "caller": "sip:alice@127.0.0.1", "offer": call.caller.offer()}
    call.session = SipCallSession(
        call.port,
        "d.srtp",
        call_type="sip",
        settings=settings(tmp_path),
        params={"sip": sip, "media": {**media(rtp_range), "srtp": True}},
    )
    send(call.session, {"command": "accept", "option": {}})
    (accept,) = [r for r in call.port.records if r["action"] == "accept"]
    assert "RTP/AVP" in accept["sdp"] and "a=crypto" not in accept["sdp"]
    call.caller.pipeline = RtpMediaPipeline(parse_answer(call.caller.sent_offer, accept["sdp"]))
    return call


def test_srtp_leg_is_bridged_and_drops_tampered_and_replayed_packets(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[SipCall, SrtpParty, dict[str, Any]]:
        call = srtp_call(tmp_path, rtp_range)
        target = SrtpParty()
        send(call.session, {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"})
        (invite,) = call.port.leg_records()
        leg_says(call.session, event="answer", sdp=target.answer(invite["sdp"]))
        await call.run(1.5, caller=tone(1000, 1.5), callee=tone(500, 1.5), target=target)
        leg = call.session._refer
        assert leg is not None
        before = leg.call_record().extras
        # A new packet with one payload byte flipped, then a copy of one already delivered.
        assert target.pipeline is not None
        destination = target.pipeline.session.remote_rtp
        assert destination is not None
        out = target.pipeline.tick(call.port.now_ms(), time.time(), agent=tone(500, 0.02))
        assert not out.datagrams[0].rtcp
        tampered = bytearray(target.outgoing(out.datagrams[0].data, False))
        tampered[20] ^= 0x01
        target.sock.sendto(bytes(tampered), destination)
        target.sock.sendto(target.sent[-2], destination)
        await call.run(0.2)
        after = leg.call_record().extras
        send(call.session, {"command": "hangup", "refer": True})
        return call, target, {"invite": invite, "before": before, "after": after}

    call, target, seen = asyncio.run(scenario())
    offer = seen["invite"]["sdp"]
    assert "RTP/SAVP" in offer and "a=crypto:" in offer
    # The target decrypted the caller's tone; the caller heard the target's, decrypted.
    heard_by_target = np.concatenate(target.heard[25:70])
    assert rms(heard_by_target) > 2000
    assert _peak_hz(heard_by_target) == pytest.approx(1000, abs=30)
    heard_by_caller = np.concatenate(call.caller.heard[30:70])
    assert rms(heard_by_caller) > 2000
    assert _peak_hz(heard_by_caller) == pytest.approx(500, abs=30)
    assert target.failures == []
    before, after = seen["before"], seen["after"]
    assert before["srtp"]["suite"] in SUITES and before["srtp"]["protected"] > 50
    assert before["srtp"]["authFailures"] == 0 and before["srtp"]["replays"] == 0
    # Both bad packets were dropped before the pipeline: counted, not received as RTP.
    assert after["srtp"]["authFailures"] == 1 and after["srtp"]["replays"] == 1
    assert after["srtp"]["unprotected"] == before["srtp"]["unprotected"]
    received = after["rtp"]["session"]["receive"]["packets"]
    assert received == before["rtp"]["session"]["receive"]["packets"]
    state = finish(call)
    assert state is CallState.ANSWERED
    (cdr,) = (tmp_path / "cdr").rglob("*.json")
    record = json.loads(cdr.read_text())["referCallrecord"]
    assert record["extras"]["srtp"]["authFailures"] == 1


def test_srtp_choice_of_the_leg_and_an_answer_without_crypto(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[SipCall, SipCall]:
        on = srtp_call(tmp_path / "on", rtp_range)
        # The leg's own sip.enable_srtp overrides the node's: plain RTP on an SRTP node.
        plain = {"sip": {"enable_srtp": False}}
        command = {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"}
        send(on.session, {**command, "options": plain})
        send(on.session, {"command": "hangup", "refer": True})
        # ... and SRTP on a plain node; the answer comes back without crypto: unusable.
        off = SipCall(tmp_path / "off", (rtp_range[0] + 10, rtp_range[1]))
        send(off.session, {**command, "options": {"sip": {"enable_srtp": True}}})
        (invite,) = [r for r in off.port.leg_records() if r["action"] == "invite"]
        target = Party()
        target.answer(build_offer(["pcmu"], HOST, 4000, session_id=1).serialize())
        their = answer(invite["sdp"].replace("RTP/SAVP", "RTP/AVP"), ["pcmu"], HOST, target.port)[
            0
        ].serialize()
        leg_says(off.session, event="answer", sdp=their)
        await off.run(0.2)
        return on, off

    on, off = asyncio.run(scenario())
    (first, _) = on.port.leg_records()
    assert "RTP/AVP" in first["sdp"] and "a=crypto" not in first["sdp"]
    invite = off.port.leg_records()[0]
    assert "RTP/SAVP" in invite["sdp"] and "a=crypto:" in invite["sdp"]
    (reject,) = refer_events(off.port)
    assert reject["event"] == "reject" and reject["code"] == 488
    assert "crypto" in reject["reason"] or "SRTP" in reject["reason"]
    assert off.port.leg_records()[-1]["action"] == "bye"
    assert finish(on) is CallState.ANSWERED and finish(off) is CallState.ANSWERED


def test_early_media_of_the_leg_replaces_the_moh_until_the_200(
    tmp_path: Path, rtp_range: tuple[int, int], moh_file: Path
) -> None:
    async def scenario() -> tuple[SipCall, Party, Party, dict[str, Any]]:
        call = SipCall(tmp_path, rtp_range)
        ringback, target = Party(), Party()
        command = {"command": "refer", "caller": "", "callee": "sip:bob@127.0.0.1"}
        send(call.session, {**command, "options": {"moh": str(moh_file)}})
        (invite,) = call.port.leg_records()
        await call.run(0.4)
        leg_says(call.session, event="ringing", code=183, sdp="v=0 not an answer")
        await call.run(0.4)  # an unusable early SDP: the MOH goes on
        leg_says(call.session, event="ringing", code=183, sdp=ringback.answer(invite["sdp"]))
        await call.run(0.4)  # early SDP, but no packet yet: still the MOH
        marks = {"moh": len(call.caller.heard)}
        await call.run(1.0, callee=tone(700, 1.0), target=ringback)
        marks["early"] = len(call.caller.heard)
        # The 200 moves the media to another address.
        leg_says(call.session, event="answer", sdp=target.answer(invite["sdp"]))
        await call.run(1.0, caller=tone(1000, 1.0), callee=tone(500, 1.0), target=target)
        marks["answered"] = len(call.caller.heard)
        return call, ringback, target, marks

    call, ringback, target, marks = asyncio.run(scenario())
    heard = call.caller.heard
    events = refer_events(call.port)
    assert [e["event"] for e in events] == ["ringing", "ringing", "answer"]
    assert all(e["earlyMedia"] for e in events[:2])
    # The MOH (440 Hz) until the first early packet, the 700 Hz ringback, then the target.
    moh = np.concatenate(heard[marks["moh"] - 30 : marks["moh"]])
    assert rms(moh) > 1000 and _peak_hz(moh) == pytest.approx(440, abs=30)
    early = np.concatenate(heard[marks["early"] - 30 : marks["early"]])
    assert rms(early) > 2000 and _peak_hz(early) == pytest.approx(700, abs=30)
    bridged = np.concatenate(heard[marks["answered"] - 30 : marks["answered"]])
    assert rms(bridged) > 2000 and _peak_hz(bridged) == pytest.approx(500, abs=30)
    # Before the 200 the leg got silence, not the caller; after it, the caller's tone.
    assert rms(np.concatenate(ringback.heard[10:])) < 100
    heard_by_target = np.concatenate(target.heard[20:45])
    assert _peak_hz(heard_by_target) == pytest.approx(1000, abs=30)
    assert finish(call) is CallState.ANSWERED
