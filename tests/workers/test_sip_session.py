"""SipCallSession in a worker's place: real UDP sockets on 127.0.0.1, a real RTP peer.

The test plays both the worker (ticks every 20 ms with the VAD of the session's chunks, the
``sip`` control records) and the remote party: an :class:`RtpMediaPipeline` on its own UDP
socket that sends speech from the shared speech file, RFC 4733 digits, and listens.
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
import pytest

from activecall._native.silero import VadSession
from activecall.rtp.media import DigitReceived, RtpMediaPipeline
from activecall.rtp.sdp import answer, build_offer, parse_answer
from activecall.workers.session import CallState, SessionSettings
from activecall.workers.sip_session import SipCallSession, port_share
from tests.workers.test_session import Port

HOST = "127.0.0.1"


class RealPort(Port):
    """The worker's side, on the wall clock; ``sip`` records kept apart from events."""

    def __init__(self, worker_index: int = 0) -> None:
        super().__init__()
        self.worker_index = worker_index
        self.records: list[dict[str, Any]] = []

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def emit_text(self, data: bytes) -> None:
        obj = orjson.loads(data)
        (self.records if obj.get("op") == "sip" else self.events).append(obj)

    def actions(self) -> list[str]:
        return [r["action"] for r in self.records]


@pytest.fixture
def rtp_range() -> Iterator[tuple[int, int]]:
    # A range of this process's own (tests may run beside other ones on this machine).
    first = 40000 + (os.getpid() % 500) * 20
    yield first, first + 19


class Peer:
    """The remote party: a UDP socket and, once negotiated, an RTP pipeline."""

    made: ClassVar[list[Peer]] = []

    def __init__(self) -> None:
        Peer.made.append(self)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.pipeline: RtpMediaPipeline | None = None
        self.digits: list[str] = []
        self.packets = 0

    def offer(self, codecs: list[str] | None = None) -> str:
        sdp = build_offer(codecs or ["pcmu", "telephone-event"], HOST, self.port, session_id=7)
        self.sent_offer = sdp
        return sdp.serialize()

    def close(self) -> None:
        self.sock.close()

    def drain(self, now: int) -> None:
        while True:
            try:
                data, source = self.sock.recvfrom(2048)
            except BlockingIOError:
                return
            self.packets += 1
            if self.pipeline is not None:
                for event in self.pipeline.receive(data, source, now):
                    if isinstance(event, DigitReceived):
                        self.digits.append(event.digit)

    def send(self, now: int, frame: np.ndarray | None) -> None:
        assert self.pipeline is not None
        out = self.pipeline.tick(now, time.time(), agent=frame)
        for d in out.datagrams:
            self.sock.sendto(d.data, d.address)


@pytest.fixture(autouse=True)
def close_peers() -> Iterator[None]:
    yield
    while Peer.made:
        Peer.made.pop().close()


class Worker:
    """Ticks the session every 20 ms with the VAD of its chunks, as the worker does."""

    def __init__(self, session: SipCallSession, port: RealPort) -> None:
        self.session = session
        self.port = port
        self.vad = VadSession()

    async def run(self, peer: Peer, seconds: float, speech: np.ndarray | None = None) -> None:
        start = time.monotonic()
        ticks = int(seconds * 50)
        for n in range(ticks):
            now = self.port.now_ms()
            peer.drain(now)
            if peer.pipeline is not None:
                frame = None
                if speech is not None and (n + 1) * 320 <= len(speech):
                    frame = speech[n * 320 : (n + 1) * 320]
                peer.send(now, frame)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
            chunks = self.session.vad_chunks()
            if chunks:
                probs = np.array([self.vad.process_chunk(c) for c in chunks], np.float32)
                self.session.on_vad(probs)
            self.session.tick(self.port.now_ms())
            if self.session.state is CallState.ENDED:
                return


def make_session(
    tmp_path: Path,
    port: RealPort,
    rtp_range: tuple[int, int],
    sip: dict[str, Any],
    **media: Any,
) -> SipCallSession:
    settings = SessionSettings(
        recording_dir=tmp_path / "rec", dump_dir=tmp_path / "dump", callrecord_dir=tmp_path / "cdr"
    )
    params = {
        "sip": sip,
        "media": {
            "ip": HOST,
            "bindIp": HOST,
            "ports": list(rtp_range),
            "workers": 2,
            "codecs": ["pcmu", "pcma", "telephone_event"],
            **media,
        },
    }
    return SipCallSession(port, "d.test", call_type="sip", settings=settings, params=params)


def names(port: RealPort) -> list[str]:
    return [e["event"] for e in port.events]


def send(session: SipCallSession, command: dict[str, Any]) -> None:
    session.on_text(json.dumps(command))


def sip(session: SipCallSession, **fields: Any) -> None:
    session.on_control({"op": "sip", **fields})


def audio_port(sdp: str) -> int:
    line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
    return int(line.split()[1])


def test_port_share_splits_the_range_by_worker() -> None:
    assert port_share(12000, 41999, 2, 0) == (12000, 26999)
    assert port_share(12000, 41999, 2, 1) == (27000, 41999)
    assert port_share(12000, 12001, 4, 3) == (12000, 12001)  # too small to split
    assert port_share(100, 110, 3, 5) == port_share(100, 110, 3, 2)


def test_inbound_call_media_vad_dtmf_hold_and_the_callers_bye(
    tmp_path: Path, rtp_range: tuple[int, int], speech_16k: np.ndarray
) -> None:
    async def scenario() -> tuple[RealPort, Peer, int]:
        port = RealPort(worker_index=1)
        peer = Peer()
        offer = peer.offer()
        sip_params = {
            "direction": "inbound",
            "caller": "sip:alice@127.0.0.1",
            "callee": "sip:bob@127.0.0.1",
            "offer": offer,
            "headers": {"X-Case": "w1"},
        }
        session = make_session(tmp_path, port, rtp_range, sip_params)
        worker = Worker(session, port)
        send(session, {"command": "ringing"})
        assert port.records == [{"op": "sip", "action": "ringing"}]
        send(session, {"command": "accept", "option": {"vad": {}}})
        (accept,) = [r for r in port.records if r["action"] == "accept"]
        ours = accept["sdp"]
        peer.pipeline = RtpMediaPipeline(parse_answer(peer.sent_offer, ours))
        # 4 s of speech, then a digit from the peer and one by SIP INFO.
        await worker.run(peer, 4.0, speech_16k[: 4 * 16000])
        peer.pipeline.send_dtmf("7")
        await worker.run(peer, 0.4)
        sip(
            session,
            event="info",
            body="Signal=9\r\nDuration=100",
            contentType="application/dtmf-relay",
        )
        # We send a digit the other way.
        send(session, {"command": "sendDtmf", "digits": "4"})
        await worker.run(peer, 0.4)
        # The caller puts us on hold and takes us back.
        sip(session, event="reinvite", sdp=offer.replace("sendrecv", "sendonly"))
        sip(session, event="reinvite", sdp=offer)
        sip(session, event="message", body="hello", contentType="text/plain")
        sip(session, event="refer", referTo="sip:carol@127.0.0.1", referredBy="sip:alice@127.0.0.1")
        send(session, {"command": "message", "body": "hi back"})
        bound = audio_port(ours)
        sip(session, event="bye")
        return port, peer, bound

    port, peer, bound = asyncio.run(scenario())
    assert names(port)[:3] == ["incoming", "trackStart", "answer"]
    incoming = port.events[0]
    assert incoming["caller"] == "sip:alice@127.0.0.1" and incoming["headers"] == {"X-Case": "w1"}
    # The RTP port is in worker 1's half of the range.
    assert port_share(*rtp_range, 2, 1)[0] <= bound <= rtp_range[1] and bound % 2 == 0
    got = names(port)
    assert got.index("mediaReady") < got.index("speaking")
    assert got.count("speaking") >= 1 and got.count("silence") >= 1
    assert [e["digit"] for e in port.events if e["event"] == "dtmf"] == ["7", "9"]
    assert peer.digits == ["4"] and peer.packets > 150  # our RTP reached the peer
    holds = [e["onHold"] for e in port.events if e["event"] == "hold"]
    assert holds == [True, False]
    reanswers = [r for r in port.records if r["action"] == "reanswer"]
    assert "a=recvonly" in reanswers[0]["sdp"] and "a=sendrecv" in reanswers[1]["sdp"]
    assert audio_port(reanswers[0]["sdp"]) == bound  # same port, new SDP version
    (message,) = [e for e in port.events if e["event"] == "message"]
    assert message["body"] == "hello" and message["contentType"] == "text/plain"
    (transfer,) = [e for e in port.events if e["event"] == "transferRequest"]
    assert transfer["referTo"] == "sip:carol@127.0.0.1"
    assert transfer["referredBy"] == "sip:alice@127.0.0.1"
    assert [r for r in port.records if r["action"] == "message"] == [
        {
            "op": "sip",
            "action": "message",
            "body": "hi back",
            "contentType": "text/plain;charset=utf-8",
        }
    ]
    assert got[-2:] == ["trackEnd", "hangup"]
    assert port.events[-1]["initiator"] == "caller" and port.ended
    assert "bye" not in port.actions()  # the caller's BYE ended the leg already
    # The socket is closed: the port can be bound again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((HOST, bound))
    (cdr,) = (tmp_path / "cdr").rglob("*.json")
    record = json.loads(cdr.read_text())
    assert record["caller"] == "sip:alice@127.0.0.1" and record["statusCode"] == 200
    assert record["extras"]["rtp"]["jitter"]["received"] > 150
    assert record["extras"]["rtp"]["digits_received"] == 1  # the RTP one; INFO is signalling


def test_outbound_call_answer_media_and_hangup_with_headers(
    tmp_path: Path, rtp_range: tuple[int, int], speech_16k: np.ndarray
) -> None:
    async def scenario() -> tuple[RealPort, Peer]:
        port = RealPort()
        peer = Peer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        worker = Worker(session, port)
        option = {
            "callee": "sip:bob@127.0.0.1:5062",
            "caller": "sip:alice@127.0.0.1",
            "sip": {"username": "alice", "password": "pw", "headers": {"X-T": "1"}},
            "vad": {},
        }
        send(session, {"command": "invite", "option": option})
        (invite,) = port.records
        remote_sdp, media = answer(invite["sdp"], ["pcmu", "telephone-event"], HOST, peer.port)
        sip(session, event="ringing", code=180)
        sip(session, event="answer", sdp=remote_sdp.serialize())
        peer.pipeline = RtpMediaPipeline(media)
        await worker.run(peer, 3.0, speech_16k[: 3 * 16000])
        send(session, {"command": "hangup", "headers": {"X-Reason": "done"}})
        return port, peer

    port, peer = asyncio.run(scenario())
    invite = port.records[0]
    assert invite["action"] == "invite" and invite["callee"] == "sip:bob@127.0.0.1:5062"
    assert invite["caller"] == "sip:alice@127.0.0.1"
    assert invite["sip"] == {"username": "alice", "password": "pw", "headers": {"X-T": "1"}}
    assert (
        "PCMU/8000" in invite["sdp"] and audio_port(invite["sdp"]) < port_share(*rtp_range, 2, 1)[0]
    )
    got = names(port)
    assert got[:4] == ["trackStart", "ringing", "answer", "mediaReady"]
    assert port.events[1]["earlyMedia"] is False
    assert "speaking" in got and peer.packets > 100
    assert got[-2:] == ["trackEnd", "hangup"]
    assert port.records[-1] == {"op": "sip", "action": "bye", "headers": {"X-Reason": "done"}}


def test_outbound_rejected(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    async def scenario() -> RealPort:
        port = RealPort()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        send(session, {"command": "invite", "option": {"callee": "sip:bob@127.0.0.1"}})
        sip(session, event="reject", code=486, reason="Busy Here")
        return port

    port = asyncio.run(scenario())
    assert names(port) == ["trackStart", "reject", "error", "hangup"]
    assert port.events[1]["code"] == 486 and port.events[1]["reason"] == "Busy Here"
    assert port.events[2]["sender"] == "invite"
    assert port.actions() == ["invite"]  # no BYE for a call that never was


def test_cancelled_and_timed_out_inbound_calls(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    async def scenario(reason: str) -> RealPort:
        port = RealPort()
        offer = Peer().offer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "inbound", "offer": offer})
        send(session, {"command": "ringing", "earlyMedia": True})
        sip(session, event="cancelled", reason=reason)
        return port

    caller = asyncio.run(scenario("caller"))
    assert caller.records[0]["action"] == "ringing" and "m=audio" in caller.records[0]["sdp"]
    assert names(caller) == ["incoming", "hangup"]
    assert caller.events[-1]["reason"] == "canceled" and caller.actions() == ["ringing"]
    timeout = asyncio.run(scenario("timeout"))
    assert timeout.events[-1]["initiator"] == "system" and timeout.events[-1]["reason"] == "timeout"


def test_bad_commands_and_offers_get_clear_errors(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> list[RealPort]:
        ports = []
        # accept with no pending call (an outbound session): reject 486 and the end.
        port = RealPort()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        send(session, {"command": "accept", "option": {}})
        ports.append(port)
        # invite without a callee, with a tel: callee, then sendDtmf before any answer.
        port = RealPort()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        send(session, {"command": "invite", "option": {}})
        send(session, {"command": "invite", "option": {"callee": "tel:+4420"}})
        send(session, {"command": "sendDtmf", "digits": "1"})
        send(session, {"command": "refer", "caller": "", "callee": "sip:x@127.0.0.1"})
        sip(session, event="no-such-event")
        assert not port.ended  # the call is still there
        session.on_close()
        ports.append(port)
        # an offer with no codec we run: 488, an error, the end.
        port = RealPort()
        offer = Peer().offer(["g722"])
        session = make_session(
            tmp_path, port, rtp_range, {"direction": "inbound", "offer": offer}, codecs=["pcmu"]
        )
        send(session, {"command": "accept", "option": {}})
        ports.append(port)
        # an inbound call answered with 'invite', and rejected with a bad code.
        port = RealPort()
        session = make_session(
            tmp_path, port, rtp_range, {"direction": "inbound", "offer": Peer().offer()}
        )
        send(session, {"command": "invite", "option": {"callee": "sip:a@b"}})
        send(session, {"command": "reject", "reason": "no", "code": 42})
        send(session, {"command": "ringing"})
        ports.append(port)
        return ports

    no_pending, outbound, no_codec, inbound = asyncio.run(scenario())
    assert names(no_pending) == ["reject", "hangup"] and no_pending.events[0]["code"] == 486
    assert no_pending.records == []
    errors = [e["error"] for e in outbound.events if e["event"] == "error"]
    assert len(errors) == 4 and "option.callee" in errors[0] and "tel:+4420" in errors[1]
    assert "not answered" in errors[2] and "refer" in errors[3]
    assert outbound.records == []
    assert names(no_codec) == ["incoming", "error", "hangup"]
    assert no_codec.records[0]["action"] == "reject" and no_codec.records[0]["code"] == 488
    assert "g722" in no_codec.events[1]["error"].lower() or "codec" in no_codec.events[1]["error"]
    assert "accept" in inbound.events[0]["error"]
    # An out-of-range code is said to be one, and the call is refused with 603 Decline.
    assert "42" in inbound.events[1]["error"] and inbound.events[1]["sender"] == "reject"
    assert inbound.records == [{"op": "sip", "action": "reject", "code": 603, "reason": "no"}]
    assert inbound.events[-1]["event"] == "hangup" and inbound.ended
    assert "ringing" not in inbound.actions()  # nothing is pending any more


def test_no_free_rtp_port_refuses_the_call(tmp_path: Path, rtp_range: tuple[int, int]) -> None:
    first = rtp_range[0] + (rtp_range[0] % 2)
    held = []
    for p in range(first, first + 2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, p))
        held.append(s)

    async def scenario() -> RealPort:
        port = RealPort()
        session = make_session(
            tmp_path,
            port,
            (first, first + 1),
            {"direction": "inbound", "offer": Peer().offer()},
            workers=1,
        )
        send(session, {"command": "accept", "option": {}})
        return port

    try:
        port = asyncio.run(scenario())
    finally:
        for s in held:
            s.close()
    assert port.records[0]["action"] == "reject" and port.records[0]["code"] == 503
    assert "no free RTP port" in port.events[1]["error"] and port.ended


def test_garbage_on_the_rtp_port_and_a_bad_reoffer_change_nothing(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[RealPort, dict[str, Any]]:
        port = RealPort()
        peer = Peer()
        offer = peer.offer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "inbound", "offer": offer})
        worker = Worker(session, port)
        send(session, {"command": "accept", "option": {}})
        ours = port.records[-1]["sdp"]
        peer.pipeline = RtpMediaPipeline(parse_answer(peer.sent_offer, ours))
        for junk in (b"", b"\x00" * 3, b"\x80" + b"\xff" * 40, b"not rtp at all"):
            peer.sock.sendto(junk, (HOST, audio_port(ours)))
        await worker.run(peer, 0.5)
        sip(session, event="reinvite", sdp="v=0\r\nthis is not sdp")
        await worker.run(peer, 0.3)
        assert session._pipeline is not None
        stats = session._pipeline.stats().to_dict()
        send(session, {"command": "hangup"})
        return port, stats

    port, stats = asyncio.run(scenario())
    assert stats["bad_datagrams"] >= 3 and stats["session"]["receive"]["packets"] > 10
    assert [r.get("code") for r in port.records if r["action"] == "reanswer"] == [488]
    assert "hold" not in names(port) and names(port)[-1] == "hangup"
    assert port.records[-1]["action"] == "bye"


# ------------------------------------------------------------------ early media (ringtone, 183)


class ListeningPeer(Peer):
    """A peer that keeps what it hears: one 16 kHz frame per tick."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[np.ndarray] = []

    def send(self, now: int, frame: np.ndarray | None) -> None:
        assert self.pipeline is not None
        out = self.pipeline.tick(now, time.time(), agent=frame)
        self.heard.append(out.pcm)
        for d in out.datagrams:
            self.sock.sendto(d.data, d.address)


def loud_frames(frames: list[np.ndarray]) -> int:
    """How many frames carry sound (RMS over ~-30 dBFS)."""
    return sum(1 for f in frames if np.sqrt(np.mean(f.astype(np.float64) ** 2)) > 1000)


def write_ringtone(path: Path) -> Path:
    """0.3 s of a 440 Hz tone then 0.3 s of silence, as a 16 kHz WAV file."""
    t = np.arange(int(0.3 * 16000)) / 16000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    pcm = np.concatenate([tone, np.zeros(int(0.3 * 16000), np.int16)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def test_inbound_ringtone_loops_as_early_media_until_accept(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    ringtone = write_ringtone(tmp_path / "ring.wav")

    async def scenario() -> tuple[RealPort, ListeningPeer, int, dict[str, Any]]:
        port = RealPort()
        peer = ListeningPeer()
        offer = peer.offer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "inbound", "offer": offer})
        worker = Worker(session, port)
        send(session, {"command": "ringing", "ringtone": str(ringtone)})
        (ringing,) = port.records
        peer.pipeline = RtpMediaPipeline(parse_answer(peer.sent_offer, ringing["sdp"]))
        await worker.run(peer, 2.0)  # 3+ rounds of the 0.6 s ringtone
        early = len(peer.heard)
        send(session, {"command": "accept", "option": {}})
        await worker.run(peer, 1.0)
        stats = peer.pipeline.stats().to_dict()
        send(session, {"command": "hangup"})
        return port, peer, early, stats

    port, peer, early, stats = asyncio.run(scenario())
    assert port.records[0]["action"] == "ringing" and "m=audio" in port.records[0]["sdp"]
    (accept,) = [r for r in port.records if r["action"] == "accept"]
    assert accept["sdp"] == port.records[0]["sdp"]  # the 200 confirms the 183's answer
    got = names(port)
    assert got[0] == "incoming" and "error" not in got
    assert got.index("mediaReady") < got.index("answer")  # the caller's RTP came early
    # The tone is heard in every 0.6 s round, not only the first: it loops.
    rounds = [peer.heard[i : i + 30] for i in range(0, early - 30, 30)]
    assert len(rounds) >= 3 and all(5 <= loud_frames(r) <= 25 for r in rounds[:3])
    # After accept the ringtone stops (nothing plays: silence), on the same RTP stream.
    assert loud_frames(peer.heard[early + 10 :]) == 0
    assert stats["session"]["receive"]["ssrc_changes"] == 0
    assert got[-2:] == ["trackEnd", "hangup"]


def test_ringtone_that_cannot_be_opened_is_an_error_and_the_call_goes_on(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> RealPort:
        port = RealPort()
        peer = ListeningPeer()
        offer = peer.offer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "inbound", "offer": offer})
        worker = Worker(session, port)
        (tmp_path / "not-audio.wav").write_bytes(b"RIFF....not a wave file at all")
        send(session, {"command": "ringing", "ringtone": str(tmp_path / "missing.wav")})
        send(session, {"command": "ringing", "ringtone": str(tmp_path / "not-audio.wav")})
        # before accept, an inbound call plays nothing but its ringtone
        send(session, {"command": "play", "url": str(tmp_path / "missing.wav")})
        peer.pipeline = RtpMediaPipeline(parse_answer(peer.sent_offer, port.records[0]["sdp"]))
        await worker.run(peer, 0.5)
        send(session, {"command": "accept", "option": {}})
        await worker.run(peer, 0.3)
        send(session, {"command": "hangup"})
        return port

    port = asyncio.run(scenario())
    # both 183s went out, with our answer
    assert [r["action"] for r in port.records[:2]] == ["ringing", "ringing"]
    assert all("m=audio" in r["sdp"] for r in port.records[:2])
    errors = [e for e in port.events if e["event"] == "error"]
    assert [e["sender"] for e in errors] == ["ringing", "ringing", "command"]
    assert "missing.wav" in errors[0]["error"] and "not-audio.wav" in errors[1]["error"]
    assert "before 'accept'" in errors[2]["error"]
    got = names(port)
    assert "answer" in got and got[-1] == "hangup" and port.events[-1]["initiator"] == "caller"


def test_inbound_early_media_then_reject_ends_without_a_track(
    tmp_path: Path, rtp_range: tuple[int, int]
) -> None:
    async def scenario() -> tuple[RealPort, ListeningPeer]:
        port = RealPort()
        peer = ListeningPeer()
        session = make_session(
            tmp_path, port, rtp_range, {"direction": "inbound", "offer": peer.offer()}
        )
        worker = Worker(session, port)
        send(session, {"command": "ringing", "earlyMedia": True})
        peer.pipeline = RtpMediaPipeline(parse_answer(peer.sent_offer, port.records[0]["sdp"]))
        await worker.run(peer, 0.5)
        send(session, {"command": "reject", "reason": "busy", "code": 486})
        return port, peer

    port, peer = asyncio.run(scenario())
    # early media without a ringtone: RTP (silence) reached the caller before the refusal
    assert peer.packets > 10 and loud_frames(peer.heard) == 0
    assert port.actions() == ["ringing", "reject"]
    assert names(port) == ["incoming", "mediaReady", "hangup"]


def test_outbound_early_media_reaches_vad_and_recorder_before_the_answer(
    tmp_path: Path, rtp_range: tuple[int, int], speech_16k: np.ndarray
) -> None:
    async def scenario() -> tuple[RealPort, Peer]:
        port = RealPort()
        peer = Peer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        worker = Worker(session, port)
        option = {"callee": "sip:bob@127.0.0.1:5062", "vad": {}, "recorder": {}}
        send(session, {"command": "invite", "option": option})
        (invite,) = port.records
        # The remote answers 183 with an SDP we cannot use first, then a good one.
        sip(session, event="ringing", code=183, sdp="v=0\r\nnot sdp")
        remote, media = answer(invite["sdp"], ["pcmu", "telephone-event"], HOST, peer.port)
        sip(session, event="ringing", code=183, sdp=remote.serialize())
        peer.pipeline = RtpMediaPipeline(media)
        # An announcement before the 200: the VAD hears it, and sendDtmf works.
        await worker.run(peer, 3.0, speech_16k[: 3 * 16000])
        send(session, {"command": "sendDtmf", "digits": "1"})
        send(session, {"command": "message", "body": "too early"})
        await worker.run(peer, 0.3)
        sip(session, event="answer", sdp=remote.serialize())
        await worker.run(peer, 0.5)
        send(session, {"command": "hangup"})
        return port, peer

    port, peer = asyncio.run(scenario())
    got = names(port)
    assert got[:2] == ["trackStart", "ringing"] and port.events[1]["earlyMedia"] is True
    (bad,) = [e for e in port.events if e["event"] == "error" and e["sender"] == "invite"]
    assert "early media" in bad["error"]
    assert [e["earlyMedia"] for e in port.events if e["event"] == "ringing"] == [True, True]
    # Speech in the early media: speaking (and mediaReady) before the answer.
    assert got.index("mediaReady") < got.index("speaking") < got.index("answer")
    assert got.count("answer") == 1 and peer.digits == ["1"]
    (refused,) = [e for e in port.events if e["event"] == "error" and e["sender"] == "command"]
    assert "MESSAGE" in refused["error"]
    hangup = port.events[-1]
    assert got[-2:] == ["trackEnd", "hangup"]
    # The answer time is the 200's, after the early media.
    answer_event = port.events[got.index("answer")]
    speaking = port.events[got.index("speaking")]
    assert hangup["answerTime"] and answer_event["timestamp"] > speaking["timestamp"]
    # The recorder took the early audio too: 3.8 s of the call in all, most of it early.
    (wav,) = (tmp_path / "rec").glob("*.wav")
    with wave.open(str(wav)) as w:
        assert w.getnframes() / w.getframerate() > 3.3


def test_outbound_early_media_then_rejected(
    tmp_path: Path, rtp_range: tuple[int, int], speech_16k: np.ndarray
) -> None:
    async def scenario() -> RealPort:
        port = RealPort()
        peer = Peer()
        session = make_session(tmp_path, port, rtp_range, {"direction": "outbound"})
        worker = Worker(session, port)
        send(session, {"command": "invite", "option": {"callee": "sip:bob@127.0.0.1"}})
        remote, media = answer(port.records[0]["sdp"], ["pcmu"], HOST, peer.port)
        sip(session, event="ringing", code=183, sdp=remote.serialize())
        peer.pipeline = RtpMediaPipeline(media)
        await worker.run(peer, 0.5, speech_16k[:16000])
        sip(session, event="reject", code=404, reason="Not Found")
        return port

    port = asyncio.run(scenario())
    got = names(port)
    assert got[:3] == ["trackStart", "ringing", "mediaReady"]
    assert got[-3:] == ["reject", "error", "hangup"] and "answer" not in got
    assert "answerTime" not in port.events[-1]
    assert port.actions() == ["invite"]  # no BYE for a call that was never answered
