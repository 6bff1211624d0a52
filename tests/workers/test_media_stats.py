"""MediaTally: RTP and WebRTC totals of a worker's calls, from real pipelines and peers' counters,
and through a Worker's heartbeat."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from activecall.rtp.media import RtpMediaPipeline
from activecall.rtp.srtp import SrtpSession
from activecall.webrtc.peer import PeerStats
from activecall.workers.media_stats import (
    COUNTERS,
    JITTER_BUCKETS_S,
    MediaSample,
    MediaSampler,
    MediaTally,
    rtp_sample,
    watch_media,
    webrtc_sample,
)
from activecall.workers.worker import SessionContext
from tests.rtp.test_media import A_ADDR, Call, call, negotiate
from tests.workers import EchoSession
from tests.workers.test_worker import Supervisor, run_worker


def lossy_call(seconds: float = 12.0) -> Call:
    """A sends B speech-like PCMU for ``seconds``; every 10th packet from A is lost."""
    sent = {"n": 0}

    def drop(datagram: Any) -> bool:
        if datagram.rtcp:
            return False
        sent["n"] += 1
        return sent["n"] % 10 == 5

    c = call(["pcmu", "telephone-event"], drop=drop)
    c.run(ticks=int(seconds * 50))
    return c


def test_an_rtp_leg_is_counted_while_live_and_after_it_ends() -> None:
    c = lossy_call()
    stats = c.b.stats()
    tally = MediaTally()
    tally.watch("call-b", lambda: rtp_sample(c.b.stats()))
    tally.watch("call-a", lambda: rtp_sample(c.a.stats()))
    live = tally.snapshot()
    totals = live["totals"]
    assert set(totals) == set(COUNTERS)
    a, b = c.a.stats().session, stats.session
    assert totals["rtpPacketsSent"] == a.send.packets + b.send.packets
    assert totals["rtpPacketsReceived"] == a.packets_received_total + b.packets_received_total
    # B lost every 10th of A's packets, and told A so in its receiver reports.
    assert b.packets_lost_total == a.send.packets // 10 == totals["rtpPacketsLost"]
    assert totals["rtcpSent"] >= 2 and totals["rtcpReceived"] >= 2
    assert a.remote is not None and 0 < totals["rtpRemoteLost"] == a.remote.cumulative_lost
    assert totals["rtpConcealed"] == stats.concealed_packets > 0
    assert live["live"]["rtpCalls"] == 2 and live["live"]["webrtcCalls"] == 0
    assert live["live"]["remoteLossMax"] == pytest.approx(a.remote.fraction_lost)
    assert live["hist"]["jitter"]["counts"] == [0] * (len(JITTER_BUCKETS_S) + 1)
    # Both calls end: their last counts stay, each is observed once in the histograms.
    tally.finish("call-a")
    tally.finish("call-b")
    tally.finish("never-watched")
    ended = tally.snapshot()
    assert ended["totals"] == totals and tally.calls == 0
    assert ended["live"] == {
        "rtpCalls": 0,
        "webrtcCalls": 0,
        "jitterMaxMs": 0.0,
        "remoteLossMax": 0.0,
    }
    assert sum(ended["hist"]["jitter"]["counts"]) == 2
    assert ended["hist"]["jitter"]["sum"] == pytest.approx(
        (a.jitter_max_ms + b.jitter_max_ms) / 1000
    )
    assert b.jitter_max_ms >= b.receive.jitter_ms  # a constant delay: no jitter here
    # A's remote (B) reported about 10 % lost; B's remote (A) nothing lost (the "le 0" bucket).
    remote_loss = ended["hist"]["remoteLoss"]
    assert remote_loss["counts"][0] == 1 and sum(remote_loss["counts"]) == 2
    assert remote_loss["sum"] == pytest.approx(a.remote.cumulative_lost / a.remote.sent_packets)
    assert remote_loss["sum"] == pytest.approx(0.1, abs=0.01)


def test_a_new_call_adds_to_the_totals_of_ended_ones() -> None:
    tally = MediaTally()
    first, second = lossy_call(2.0), lossy_call(2.0)
    tally.watch(1, lambda: rtp_sample(first.b.stats()))
    tally.finish(1)
    tally.watch(2, lambda: rtp_sample(second.b.stats()))
    received = tally.snapshot()["totals"]["rtpPacketsReceived"]
    assert received == (
        first.b.stats().session.packets_received_total
        + second.b.stats().session.packets_received_total
    )


def test_counters_never_go_down_when_a_leg_starts_afresh() -> None:
    values = iter([10, 25, 3, 7])  # the leg's statistics restart after 25
    tally = MediaTally()
    tally.watch(
        "c", lambda: MediaSample("rtp", {"rtpPacketsReceived": next(values)}, jitter_ms=4.0)
    )  # sampled once at once
    seen = [tally.snapshot(budget=0)["totals"]["rtpPacketsReceived"]]
    seen += [tally.snapshot()["totals"]["rtpPacketsReceived"] for _ in range(2)]
    tally.finish("c")
    assert [*seen, tally.snapshot()["totals"]["rtpPacketsReceived"]] == [10, 25, 28, 32]


def test_a_budget_samples_the_live_legs_in_turn() -> None:
    counts = {"a": 0, "b": 0, "c": 0}

    def sampler(name: str) -> MediaSampler:
        def sample() -> MediaSample:
            counts[name] += 1
            return MediaSample("rtp", {"rtpPacketsSent": 100 * counts[name]})

        return sample

    tally = MediaTally()
    for name in counts:
        tally.watch(name, sampler(name))
    assert tally.snapshot(budget=0)["totals"]["rtpPacketsSent"] == 300
    assert tally.snapshot(budget=2)["totals"]["rtpPacketsSent"] == 500  # two legs sampled
    tally.finish("a")  # a last sample, whether or not it was due
    assert counts["a"] == 2  # at the start, and at its end (the budget went to b and c)
    ended_a = 100 * counts["a"]
    for _ in range(4):  # every remaining leg gets its turn; the ended one never again
        tally.snapshot(budget=1)
    totals = tally.snapshot(budget=0)["totals"]["rtpPacketsSent"]
    assert totals == ended_a + 100 * counts["b"] + 100 * counts["c"]
    assert counts["b"] >= 3 and counts["c"] >= 3 and 100 * counts["a"] == ended_a
    assert tally.snapshot(budget=0)["live"]["rtpCalls"] == 2


def test_a_failing_sampler_keeps_its_last_counts(caplog: pytest.LogCaptureFixture) -> None:
    calls = {"n": 0}

    def sampler() -> MediaSample:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("pipeline gone")
        return MediaSample("rtp", {"rtpPacketsSent": 5})

    tally = MediaTally()
    tally.watch("c", sampler)
    assert tally.snapshot()["totals"]["rtpPacketsSent"] == 5
    with caplog.at_level(logging.ERROR):
        assert tally.snapshot()["totals"]["rtpPacketsSent"] == 5
        tally.finish("c")
    assert "media sampler failed" in caplog.text
    assert tally.snapshot()["totals"]["rtpPacketsSent"] == 5


def test_webrtc_legs_count_frames() -> None:
    stats = PeerStats()
    tally = MediaTally()
    tally.watch("w", lambda: webrtc_sample(stats))
    stats.frames_in, stats.frames_out, stats.dropped_out = 50, 48, 2
    snap = tally.snapshot()
    assert snap["live"]["webrtcCalls"] == 1 and snap["live"]["rtpCalls"] == 0
    assert {k: v for k, v in snap["totals"].items() if v} == {
        "webrtcFramesIn": 50,
        "webrtcFramesOut": 48,
        "webrtcDroppedOut": 2,
    }
    stats.frames_in = 60  # counted until the call ends
    tally.finish("w")
    stats.frames_in = 99  # not after
    assert tally.snapshot()["totals"]["webrtcFramesIn"] == 60
    assert sum(tally.snapshot()["hist"]["jitter"]["counts"]) == 0  # WebRTC has no RTP jitter


def test_srtp_drops_are_counted_with_the_leg() -> None:
    c = lossy_call(1.0)
    ours, theirs, forged = (bytes([n]) * 30 for n in (1, 2, 3))
    receiver = SrtpSession("AES_CM_128_HMAC_SHA1_80", ours, theirs)
    good = SrtpSession("AES_CM_128_HMAC_SHA1_80", theirs, ours)
    bad = SrtpSession("AES_CM_128_HMAC_SHA1_80", forged, ours)
    packet, later = (
        d.data for t in (5000.0, 5020.0) for d in c.a.tick(t, 1e9, None).datagrams if not d.rtcp
    )
    protected = good.protect(packet)
    assert receiver.unprotect(protected) == packet
    assert receiver.unprotect(protected) is None  # a replay
    assert receiver.unprotect(bad.protect(later)) is None  # wrong key: authentication fails
    totals = rtp_sample(c.b.stats(), receiver.stats).counters
    assert (totals["srtpAuthFailures"], totals["srtpReplays"]) == (1, 1)
    assert "srtpAuthFailures" not in rtp_sample(c.b.stats()).counters  # a plain RTP leg


def test_watch_media_ignores_ports_without_a_worker() -> None:
    watch_media(object(), lambda: MediaSample("rtp", {}))  # a test port: nothing happens


class RtpLegSession(EchoSession):
    """A worker session with a real RTP leg that receives one second of A's packets."""

    def __init__(self, ctx: SessionContext) -> None:
        super().__init__(ctx)
        a_media, b_media = negotiate(["pcmu"])
        a = RtpMediaPipeline(a_media, rng=random.Random(1))
        b = RtpMediaPipeline(b_media, rng=random.Random(2))
        for i in range(50):
            for d in a.tick(i * 20.0, 1e9, None).datagrams:
                if not d.rtcp:
                    b.receive(d.data, (A_ADDR[0], A_ADDR[1]), i * 20.0 + 5)
        self.leg = b
        watch_media(ctx, lambda: rtp_sample(b.stats()))


def test_a_worker_heartbeat_carries_its_calls_media() -> None:
    async def scenario(sup: Supervisor) -> None:
        sup.open(1, "a")
        sup.open(2, "b")

        def media() -> dict[str, Any]:
            return sup.heartbeats()[-1].get("media", {}) if sup.heartbeats() else {}

        await sup.until(lambda: media().get("live", {}).get("rtpCalls") == 2)
        assert media()["totals"]["rtpPacketsReceived"] == 100
        sup.control(1, "close", reason="caller")
        await sup.until(lambda: media().get("live", {}).get("rtpCalls") == 1)
        assert media()["totals"]["rtpPacketsReceived"] == 100  # the ended call still counts
        assert sum(media()["hist"]["jitter"]["counts"]) == 1

    run_worker(scenario, session_factory=RtpLegSession)
