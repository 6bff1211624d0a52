"""``/metrics`` after a real SIP call: sipp calls ``activecall serve`` (webhook handler), streams
G.711 speech and an RFC 4733 digit from pcaps, hangs up; the SIP and RTP counters must have
moved by what sipp sent, and the call record must carry the RTP/RTCP statistics."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.supervisor.sip_helpers import (
    DATA,
    SIPP_PCAPS,
    SipNode,
    free_port,
    require_sipp,
    run_sipp,
    webhook_app,
)

SPEECH_PCAP = DATA / "speech_8s_pcmu.pcap"
DTMF_PCAP = SIPP_PCAPS / "dtmf_2833_1.pcap"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipNode]:
    require_sipp()
    srv = SipNode(tmp_path_factory.mktemp("node"), free_port())
    yield srv
    assert srv.stop() == 0, srv.logs()


def scrape(node: SipNode) -> dict[str, float]:
    """``GET /metrics``: every sample by series (name and labels)."""
    url = f"http://127.0.0.1:{node.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def pcap_packets(path: Path) -> int:
    """Records in a pcap file (sipp sends each as one RTP packet)."""
    data = path.read_bytes()
    endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    offset, count = 24, 0
    while offset + 16 <= len(data):
        (length,) = struct.unpack_from(endian + "I", data, offset + 8)
        offset += 16 + length
        count += 1
    return count


def moved(after: dict[str, float], before: dict[str, float], series: str) -> float:
    return after.get(series, 0.0) - before.get(series, 0.0)


def test_a_sipp_call_moves_the_sip_and_rtp_counters(node: SipNode, tmp_path: Path) -> None:
    (tmp_path / SPEECH_PCAP.name).symlink_to(SPEECH_PCAP)
    (tmp_path / DTMF_PCAP.name).symlink_to(DTMF_PCAP)
    before = scrape(node)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # one unparsable datagram
        s.sendto(b"\x00\xff not SIP at all", ("127.0.0.1", node.sip_port))

    async def scenario() -> tuple[int, str, str]:
        async with webhook_app(node, {"vad": {}}) as app:
            code, out = await run_sipp(
                "uac_speech_dtmf.xml", tmp_path, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
            await app.call_events()
        return code, out, app.payloads[0]["dialogId"]

    code, out, dialog_id = asyncio.run(scenario())
    assert code == 0, out
    # The worker reports the ended call in its next heartbeat (every 0.5 s).
    deadline = time.monotonic() + 10
    after = scrape(node)
    while moved(after, before, "activecall_rtp_jitter_seconds_count") < 1:
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
        after = scrape(node)

    sip = {
        'activecall_sip_requests_received_total{method="INVITE"}': 1,
        'activecall_sip_requests_received_total{method="ACK"}': 1,
        'activecall_sip_requests_received_total{method="BYE"}': 1,
        'activecall_sip_responses_sent_total{method="INVITE",code="100"}': 1,
        'activecall_sip_responses_sent_total{method="BYE",code="200"}': 1,
        'activecall_sip_calls_started_total{direction="inbound"}': 1,
        'activecall_sip_calls_answered_total{direction="inbound"}': 1,
        'activecall_sip_calls_failed_total{direction="inbound"}': 0,
        'activecall_sip_calls_started_total{direction="outbound"}': 0,
        'activecall_sip_malformed_total{outcome="dropped"}': 1,
    }
    assert {k: moved(after, before, k) for k in sip} == sip
    # The 200 may be resent until sipp's ACK arrives; every resend is a retransmission.
    ok = moved(after, before, 'activecall_sip_responses_sent_total{method="INVITE",code="200"}')
    assert ok - 1 == moved(after, before, 'activecall_sip_retransmissions_total{direction="sent"}')
    assert after["activecall_sip_dialogs"] == 0
    assert after['activecall_sip_calls{state="answered"}'] == 0

    # RTP: all of the speech pcap; of the digit's pcap (another SSRC) all but the first packet,
    # which only announces the new source (RFC 3550 A.1: two in sequence take over).
    speech, digit = pcap_packets(SPEECH_PCAP), pcap_packets(DTMF_PCAP)
    received = moved(after, before, "activecall_rtp_packets_received_total")
    assert speech + digit - 3 <= received <= speech + digit, (speech, digit, received)
    assert moved(after, before, 'activecall_rtp_packets_dropped_total{reason="rejected"}') >= 1
    assert moved(after, before, "activecall_rtp_packets_lost_total") == 0
    assert moved(after, before, "activecall_rtp_packets_sent_total") > speech  # 20 ms ticks
    assert moved(after, before, "activecall_rtcp_reports_sent_total") >= 1  # at least the BYE
    assert moved(after, before, 'activecall_rtp_jitter_seconds_bucket{le="+Inf"}') == 1
    assert after["activecall_rtp_calls"] == 0 and after["activecall_webrtc_calls"] == 0

    # The call record: the same numbers, ours and (no RTCP from sipp) no remote report.
    (cdr,) = [
        record
        for p in (node.cwd / "cdr").rglob("*.json")
        if (record := json.loads(p.read_text()))["callId"] == dialog_id
    ]
    session = cdr["extras"]["rtp"]["session"]
    assert session["packets_received_total"] == received
    assert session["packets_lost_total"] == 0 and session["remote"] is None
    assert session["rtcp_sent"] >= 1 and session["rtcp_received"] == 0
    assert session["receive"]["fraction_lost"] == 0 and session["jitter_max_ms"] > 0
    jitter_sum = moved(after, before, "activecall_rtp_jitter_seconds_sum")
    assert jitter_sum == pytest.approx(session["jitter_max_ms"] / 1000)
