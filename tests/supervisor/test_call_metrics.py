"""The SIP, RTP and WebRTC families of ``/metrics``: a real SipAgent fed bytes, real worker
heartbeats, and a real pool whose worker is killed (its counts must survive)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import uvloop

from activecall.sip.agent import SipAgent
from activecall.supervisor.call_metrics import register_media_metrics, register_sip_metrics
from activecall.supervisor.metrics import Registry
from activecall.supervisor.pool import MediaTotals, WorkerPool
from activecall.workers.media_stats import MediaSample, MediaTally, rtp_sample
from activecall.workers.worker import WorkerOptions
from tests.sip.test_agent import OFFER, PEER, make_agent, request
from tests.workers.test_media_stats import RtpLegSession, lossy_call

HANG_GUARD = 60.0


def samples(registry: Registry) -> dict[str, float]:
    """Every sample line of the exposition, by series (name and labels)."""
    out: dict[str, float] = {}
    for line in registry.exposition().decode().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_sip_counters_and_gauges_from_an_agent_fed_bytes() -> None:
    agent: SipAgent = make_agent()
    registry = Registry()
    register_sip_metrics(registry, agent, lambda: {"TCP": 2, "TLS": 1})
    before = samples(registry)
    assert before["activecall_sip_messages_received_total"] == 0
    assert before['activecall_sip_calls_started_total{direction="inbound"}'] == 0
    agent.receive(request("INVITE", body=OFFER), PEER, 0.0)
    agent.receive(request("INVITE", body=OFFER), PEER, 0.1)  # retransmitted
    agent.receive(b"\x00\xff garbage", PEER, 0.2)
    broken = request("OPTIONS", branch="z9hG4bKo").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    agent.receive(broken, PEER, 0.3)
    (session_id,) = agent.session_ids
    agent.accept(session_id, OFFER, 0.4)
    got = samples(registry)
    expected = {
        "activecall_sip_messages_received_total": 4,
        'activecall_sip_requests_received_total{method="INVITE"}': 2,
        'activecall_sip_responses_sent_total{method="INVITE",code="100"}': 2,
        'activecall_sip_responses_sent_total{method="INVITE",code="200"}': 1,
        'activecall_sip_responses_sent_total{method="OPTIONS",code="400"}': 1,
        'activecall_sip_malformed_total{outcome="answered"}': 1,
        'activecall_sip_malformed_total{outcome="dropped"}': 1,
        'activecall_sip_retransmissions_total{direction="received"}': 1,
        'activecall_sip_retransmissions_total{direction="sent"}': 1,
        'activecall_sip_calls_started_total{direction="inbound"}': 1,
        'activecall_sip_calls_answered_total{direction="inbound"}': 1,
        'activecall_sip_calls_failed_total{direction="inbound"}': 0,
        'activecall_sip_calls{state="answered"}': 1,
        'activecall_sip_calls{state="incoming"}': 0,
        "activecall_sip_dialogs": 1,
        "activecall_sip_transactions": 1,
        'activecall_sip_registrations{state="registered"}': 0,
        'activecall_sip_connections{transport="tcp"}': 2,
        'activecall_sip_connections{transport="tls"}': 1,
    }
    assert {k: got.get(k) for k in expected} == expected
    text = registry.exposition().decode()
    assert "# TYPE activecall_sip_requests_received_total counter" in text
    assert "# TYPE activecall_sip_dialogs gauge" in text


def test_media_families_from_a_worker_snapshot() -> None:
    c = lossy_call(6.0)
    tally = MediaTally()
    tally.watch("b", lambda: rtp_sample(c.b.stats()))
    tally.watch("a", lambda: rtp_sample(c.a.stats()))
    tally.finish("a")
    totals = MediaTotals.from_heartbeat(tally.snapshot())
    registry = Registry()
    register_media_metrics(registry, lambda: totals)
    got = samples(registry)
    b = c.b.stats()
    assert got["activecall_rtp_packets_received_total"] == (
        b.session.packets_received_total + c.a.stats().session.packets_received_total
    )
    assert got["activecall_rtp_packets_lost_total"] == b.session.packets_lost_total > 0
    assert got['activecall_rtp_packets_dropped_total{reason="late"}'] == b.jitter.late
    assert got["activecall_rtp_concealed_frames_total"] == b.concealed_packets
    assert got["activecall_rtcp_reports_received_total"] >= 2
    assert got["activecall_rtp_calls"] == 1 and got["activecall_webrtc_calls"] == 0
    assert got["activecall_rtp_jitter_max_seconds"] == pytest.approx(
        b.session.receive.jitter_ms / 1000
    )
    # The ended leg (A) is in the histograms; +Inf holds every observation.
    assert got['activecall_rtp_jitter_seconds_bucket{le="+Inf"}'] == 1
    assert got["activecall_rtp_jitter_seconds_count"] == 1
    assert got["activecall_rtp_remote_loss_ratio_count"] == 1
    assert got["activecall_rtp_remote_loss_ratio_sum"] == pytest.approx(0.1, abs=0.01)
    assert got['activecall_rtp_remote_loss_ratio_bucket{le="0.05"}'] == 0
    assert got['activecall_rtp_remote_loss_ratio_bucket{le="0.2"}'] == 1


@pytest.mark.parametrize(
    "media",
    [None, "x", {"totals": {"rtpPacketsSent": "many", "rtpPacketsReceived": True}}, {"hist": 3}],
)
def test_malformed_heartbeat_media_reads_as_nothing(media: Any) -> None:
    totals = MediaTotals.from_heartbeat(media)
    assert not totals.counters and not totals.histograms and not totals.live


def test_totals_of_workers_add_up_and_live_maxima_do_not() -> None:
    one = MediaTotals(
        {"rtpPacketsSent": 5}, {"jitter": ((1, 0, 2), 0.5)}, {"rtpCalls": 1, "jitterMaxMs": 9}
    )
    two = MediaTotals(
        {"rtpPacketsSent": 7}, {"jitter": ((0, 3, 0), 0.25)}, {"rtpCalls": 2, "jitterMaxMs": 4}
    )
    both = MediaTotals.combine((one, two))
    assert both.counters == {"rtpPacketsSent": 12}
    assert both.histograms == {"jitter": ((1, 3, 2), 0.75)}
    assert both.live == {"rtpCalls": 3, "jitterMaxMs": 9}
    assert MediaTotals.combine((one,), live=False).live == {}


def test_a_killed_workers_media_counts_survive_in_the_pool() -> None:
    async def main() -> None:
        pool = WorkerPool(1, WorkerOptions(session_factory=RtpLegSession, max_sessions=4))
        registry = Registry()
        register_media_metrics(registry, lambda: pool.stats().media)
        pool.start()
        try:
            await pool.wait_ready(HANG_GUARD)
            sinks = [_Sink(), _Sink()]
            for i, sink in enumerate(sinks):
                pool.open_session(f"s{i}", "webSocket", {}, sink)
            await _until(lambda: pool.stats().media.live.get("rtpCalls") == 2)
            assert samples(registry)["activecall_rtp_packets_received_total"] == 100
            pid = pool.worker_pids()[0]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await _until(lambda: all(s.lost for s in sinks))
            await _until(lambda: pool.stats().workers[0].ready)
            got = samples(registry)
            assert got["activecall_rtp_packets_received_total"] == 100  # carried over
            assert got["activecall_rtp_calls"] == 0
        finally:
            await pool.stop(timeout=10)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


class _Sink:
    def __init__(self) -> None:
        self.lost = False

    def on_text(self, data: bytes) -> None:
        pass

    def on_audio(self, data: bytes) -> None:
        pass

    def on_ended(self) -> None:
        pass

    def on_worker_lost(self) -> None:
        self.lost = True


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not predicate():
            await asyncio.sleep(0.01)


def test_a_sample_without_counters_still_counts_the_call() -> None:
    tally = MediaTally()
    tally.watch("x", lambda: MediaSample("rtp", {}))
    tally.watch("y", lambda: MediaSample("rtp", {"srtpAuthFailures": 3, "srtpReplays": 1}))
    totals = MediaTotals.from_heartbeat(tally.snapshot())
    registry = Registry()
    register_media_metrics(registry, lambda: totals)
    got = samples(registry)
    assert got["activecall_rtp_calls"] == 2 and got["activecall_rtp_packets_sent_total"] == 0
    assert got['activecall_srtp_dropped_total{reason="auth"}'] == 3
    assert got['activecall_srtp_dropped_total{reason="replay"}'] == 1
