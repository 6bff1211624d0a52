"""RtpSession: RFC 3550 receive statistics, SSRC changes, latching, sending, RTCP."""

from __future__ import annotations

import itertools
import random

import pytest

from activecall.rtp.packet import (
    Bye,
    PacketError,
    ReceiverReport,
    RtpPacket,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    serialize_rtcp,
)
from activecall.rtp.session import RtpSession, ntp_middle

REMOTE = ("203.0.113.5", 40000)
BYE_DATAGRAM = serialize_rtcp([Bye((0xAAAA,))])
NAT = ("198.51.100.9", 61000)


def session(**kwargs: object) -> RtpSession:
    args: dict[str, object] = {
        "clock_rate": 8000,
        "payload_type": 0,
        "event_payload_types": [101],
        "remote": REMOTE,
        "ssrc": 0x11111111,
        "rng": random.Random(1),
    }
    args.update(kwargs)
    return RtpSession(**args)  # type: ignore[arg-type]


def rtp(seq: int, ts: int | None = None, *, ssrc: int = 0xAAAA, pt: int = 0) -> bytes:
    return RtpPacket(
        pt, seq % 65536, (seq * 160 if ts is None else ts) % (1 << 32), ssrc, b"\xff" * 160
    ).serialize()


def test_receive_statistics_count_loss_per_rfc3550() -> None:
    s = session()
    lost = {5, 6, 20}
    for seq in range(1000, 1050):
        if seq - 1000 not in lost:
            assert s.receive_rtp(rtp(seq), REMOTE, (seq - 1000) * 20.0) is not None
    stats = s.stats().receive
    assert (stats.packets, stats.expected, stats.lost) == (47, 50, 3)
    assert stats.fraction_lost == pytest.approx(3 / 50)
    assert stats.highest_sequence == 1049 and stats.ssrc == 0xAAAA
    assert stats.jitter_ms == pytest.approx(0.0)
    # The RR's fraction is over the interval since the last report (RFC 3550 A.3).
    (rr, _) = parse_rtcp(s.build_rtcp(1000.0, 1e9))
    assert isinstance(rr, ReceiverReport)
    (block,) = rr.reports
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (0xAAAA, 3 * 256 // 50, 3)
    assert block.highest_sequence == 1049
    for seq in range(1050, 1100):
        s.receive_rtp(rtp(seq), REMOTE, (seq - 1000) * 20.0)
    (rr, _) = parse_rtcp(s.build_rtcp(2000.0, 1e9 + 1))
    assert rr.reports[0].fraction_lost == 0 and rr.reports[0].cumulative_lost == 3  # type: ignore[union-attr]


def test_sequence_wrap_counts_cycles() -> None:
    s = session()
    for i, seq in enumerate(range(65530, 65550)):
        s.receive_rtp(rtp(seq), REMOTE, i * 20.0)
    stats = s.stats().receive
    assert stats.highest_sequence == 65536 + 13 and stats.expected == 20 and stats.lost == 0


def test_duplicates_make_loss_negative() -> None:
    s = session()
    for seq in [1, 2, 3, 3, 3, 4]:
        s.receive_rtp(rtp(seq), REMOTE, seq * 20.0)
    assert s.stats().receive.lost == -2


def test_interarrival_jitter_per_rfc3550_a8() -> None:
    s = session()
    # Every other packet 10 ms late: |D| alternates 10 ms and 10 ms, so J tends to 10 ms.
    for i in range(400):
        s.receive_rtp(rtp(i), REMOTE, i * 20.0 + (10 if i % 2 else 0))
    assert s.stats().receive.jitter_ms == pytest.approx(10.0, rel=0.01)
    (rr, _) = parse_rtcp(s.build_rtcp(0.0, 1e9))
    assert rr.reports[0].jitter == 79  # type: ignore[union-attr]  # 10 ms at 8 kHz, truncated


def test_events_do_not_count_as_jitter() -> None:
    s = session()
    for i in range(50):  # RFC 4733 updates: one timestamp, packets every 20 ms
        s.receive_rtp(rtp(i, 8000, pt=101), REMOTE, i * 20.0)
    assert s.stats().receive.jitter_ms == 0.0 and s.stats().receive.packets == 50


def test_a_new_ssrc_takes_over_after_two_packets_in_sequence() -> None:
    s = session()
    for seq in range(10):
        s.receive_rtp(rtp(seq), REMOTE, seq * 20.0)
    assert s.receive_rtp(rtp(5000, ssrc=0xBBBB), REMOTE, 200.0) is None
    assert s.receive_rtp(rtp(10), REMOTE, 201.0) is not None  # the old source still plays
    packet = s.receive_rtp(rtp(5001, ssrc=0xBBBB), REMOTE, 220.0)
    assert packet is not None and packet.ssrc == 0xBBBB
    assert s.receive_rtp(rtp(11), REMOTE, 221.0) is None  # now the old one is the stranger
    stats = s.stats().receive
    assert (stats.ssrc, stats.ssrc_changes, stats.packets, stats.expected) == (0xBBBB, 1, 1, 1)


def test_a_sequence_jump_needs_a_second_packet() -> None:
    s = session()
    for seq in range(10):
        s.receive_rtp(rtp(seq), REMOTE, seq * 20.0)
    assert s.receive_rtp(rtp(20000), REMOTE, 200.0) is None
    assert s.receive_rtp(rtp(20001), REMOTE, 220.0) is not None
    assert s.stats().receive.expected == 1  # restarted at 20001


def test_symmetric_latching_learns_the_nat_address() -> None:
    s = session()
    assert not s.latched and s.remote_rtp == REMOTE and s.remote_rtcp == (REMOTE[0], 40001)
    assert s.receive_rtp(rtp(1, pt=96), NAT, 0.0) is None  # not a negotiated payload type
    assert not s.latched
    assert s.receive_rtp(rtp(2), NAT, 20.0) is not None
    assert s.latched and s.remote_rtp == NAT and s.remote_rtcp == (NAT[0], NAT[1] + 1)
    # Packets from anywhere else are dropped once latched.
    assert s.receive_rtp(rtp(3), ("192.0.2.66", 5000), 40.0) is None
    assert s.receive_rtp(rtp(3), NAT, 40.0) is not None
    assert s.stats().receive.dropped == 2
    # Symmetric RTCP: reports go where the remote's RTCP comes from.
    s.receive_rtcp(BYE_DATAGRAM, (NAT[0], 61007), 50.0)
    assert s.remote_rtcp == (NAT[0], 61007)
    # A new SDP (re-INVITE) starts learning again.
    s.set_remote(("203.0.113.6", 42000))
    assert not s.latched
    assert s.receive_rtp(rtp(4), ("203.0.113.6", 42002), 60.0) is not None
    assert s.remote_rtp == ("203.0.113.6", 42002)


def test_rtcp_mux_latches_rtcp_to_the_same_port() -> None:
    s = session(rtcp_mux=True)
    assert s.remote_rtcp == REMOTE
    s.receive_rtp(rtp(1), NAT, 0.0)
    assert s.remote_rtcp == NAT


def test_allowed_sources_and_no_latching() -> None:
    s = session(latching=False, allowed=lambda addr: addr[0].startswith("203.0.113."))
    assert s.receive_rtp(rtp(1), NAT, 0.0) is None
    assert s.receive_rtp(rtp(2), ("203.0.113.99", 1), 20.0) is not None
    assert s.remote_rtp == REMOTE and not s.latched  # we keep sending where the SDP says
    latching = session(allowed=lambda addr: addr[0] != NAT[0])
    assert latching.receive_rtp(rtp(1), NAT, 0.0) is None and not latching.latched


def test_sending_numbers_packets_and_marks_talkspurts() -> None:
    s = session()
    packets = [RtpPacket.parse(s.send_audio(b"x" * 160, 160, i * 20.0)) for i in range(3)]
    s.skip(1600)  # 200 ms of silence not sent
    packets.append(RtpPacket.parse(s.send_audio(b"x" * 160, 160, 260.0)))
    assert [p.marker for p in packets] == [True, False, False, True]
    seqs = [p.sequence_number for p in packets]
    assert [(b - a) % 65536 for a, b in itertools.pairwise(seqs)] == [1, 1, 1]
    stamps = [p.timestamp for p in packets]
    assert [(b - a) % (1 << 32) for a, b in itertools.pairwise(stamps)] == [160, 160, 1760]
    assert {p.ssrc for p in packets} == {0x11111111} and {p.payload_type for p in packets} == {0}
    assert s.stats().send.packets == 4 and s.stats().send.octets == 640


def test_two_sessions_exchange_reports_and_measure_the_rtt() -> None:
    a, b = session(ssrc=1), session(ssrc=2, remote=("192.0.2.1", 5000))
    wall = 1_700_000_000.0
    for i in range(100):  # a sends, b receives; every 10th packet lost
        data = a.send_audio(b"\xff" * 160, 160, i * 20.0)
        if i % 10 != 3:
            b.receive_rtp(data, REMOTE, i * 20.0 + 15)
    sr_bytes = a.build_rtcp(2000.0, wall + 2.0)
    sr, sdes = parse_rtcp(sr_bytes)
    assert isinstance(sr, SenderReport) and isinstance(sdes, SourceDescription)
    assert (sr.ssrc, sr.packet_count, sr.octet_count) == (1, 100, 16000)
    assert sdes.chunks[0].cname == "activecall-00000001"
    b.receive_rtcp(sr_bytes, REMOTE, 2040.0)  # 40 ms one way
    rr_bytes = b.build_rtcp(2100.0, wall + 2.1)  # sent 60 ms after the SR arrived
    rr, _ = parse_rtcp(rr_bytes)
    assert isinstance(rr, ReceiverReport)
    (block,) = rr.reports
    assert block.lsr == ntp_middle(wall + 2.0)
    assert block.dlsr == round(0.060 * 65536)
    a.receive_rtcp(rr_bytes, ("192.0.2.1", 5001), 2140.0)  # 40 ms back
    remote = a.stats().remote
    assert remote is not None
    assert remote.rtt_ms == pytest.approx(80.0, abs=0.1)
    assert (
        remote.cumulative_lost == 10 and remote.fraction_lost == 25 / 256
    )  # floor(10 * 256 / 100)


def test_reports_come_at_a_randomised_interval() -> None:
    s = session()
    times = [t * 20.0 for t in range(3000) if s.poll_rtcp(t * 20.0, 1e9 + t * 0.02) is not None]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] <= 3760 and len(set(gaps)) > 1
    assert all(2480 <= g <= 7520 for g in gaps)  # 0.5-1.5 x 5 s, on 20 ms ticks


def test_sender_report_only_after_sending() -> None:
    s = session()
    assert isinstance(parse_rtcp(s.build_rtcp(0.0, 1e9))[0], ReceiverReport)
    s.send_audio(b"x", 160, 10.0)
    first = parse_rtcp(s.build_rtcp(20.0, 1e9 + 1))[0]
    assert isinstance(first, SenderReport)
    assert isinstance(parse_rtcp(s.build_rtcp(40.0, 1e9 + 2))[0], ReceiverReport)


def test_bye_in_both_directions() -> None:
    a, b = session(ssrc=1), session(ssrc=2)
    b.receive_rtp(a.send_audio(b"x", 160, 0.0), REMOTE, 1.0)
    packets = parse_rtcp(a.build_rtcp(10.0, 1e9, bye="hangup"))
    assert packets[-1] == Bye((1,), "hangup")
    b.receive_rtcp(a.build_rtcp(10.0, 1e9, bye=""), REMOTE, 11.0)
    assert b.remote_bye


def test_rtcp_from_a_stranger_is_ignored() -> None:
    a, b = session(ssrc=1), session(ssrc=2)
    b.receive_rtp(a.send_audio(b"x", 160, 0.0), REMOTE, 1.0)
    b.receive_rtcp(a.build_rtcp(10.0, 1e9, bye=""), ("192.0.2.66", 1), 11.0)
    assert not b.remote_bye


def test_bad_datagrams_raise_packet_errors() -> None:
    s = session()
    with pytest.raises(PacketError):
        s.receive_rtp(b"\x80\x00", REMOTE, 0.0)
    with pytest.raises(PacketError):
        s.receive_rtcp(b"\x81\xc9\x00\x07", REMOTE, 0.0)
    assert s.stats().receive.packets == 0
    with pytest.raises(ValueError):
        RtpSession(clock_rate=8000, payload_type=200)


def test_rtcp_reports_sent_and_received_are_counted() -> None:
    a, b = session(ssrc=1), session(ssrc=2, remote=("192.0.2.1", 5000))
    b.receive_rtp(a.send_audio(b"x", 160, 0.0), REMOTE, 1.0)
    for i in range(3):
        b.receive_rtcp(a.build_rtcp(10.0 + i, 1e9 + i), REMOTE, 11.0 + i)
    a.receive_rtcp(b.build_rtcp(20.0, 1e9 + 5), ("192.0.2.1", 5001), 21.0)
    b.receive_rtcp(a.build_rtcp(30.0, 1e9 + 6), ("192.0.2.66", 1), 31.0)  # a stranger's
    assert (a.stats().rtcp_sent, a.stats().rtcp_received) == (4, 1)
    assert (b.stats().rtcp_sent, b.stats().rtcp_received) == (1, 3)
    assert b.stats().to_dict()["rtcp_received"] == 3


def test_call_totals_span_ssrc_changes() -> None:
    s = session()
    for seq in (1, 2, 4, 5):  # 3 is lost
        assert s.receive_rtp(rtp(seq), REMOTE, seq * 20.0) is not None
    assert s.receive_rtp(rtp(900, ssrc=0xBBBB), REMOTE, 120.0) is None  # a candidate
    for seq in (901, 902, 904):  # the new source takes over; 903 lost
        assert s.receive_rtp(rtp(seq, ssrc=0xBBBB), REMOTE, seq * 20.0) is not None
    stats = s.stats()
    assert stats.receive.packets == 3 and stats.receive.lost == 1  # the current source only
    assert (stats.packets_received_total, stats.packets_lost_total) == (7, 2)
    assert stats.octets_received_total == 7 * 160


def test_the_peak_jitter_outlives_a_source_of_events_only() -> None:
    s = session()
    for seq in range(1, 30):  # audio arriving 0-15 ms late, alternately
        s.receive_rtp(rtp(seq), REMOTE, seq * 20.0 + (15 if seq % 2 else 0))
    audio_jitter = s.stats().receive.jitter_ms
    assert audio_jitter > 5
    for seq in range(500, 505):  # a new source sending RFC 4733 events only
        s.receive_rtp(rtp(seq, ts=1000, ssrc=0xBBBB, pt=101), REMOTE, 700.0 + seq)
    stats = s.stats()
    assert stats.receive.ssrc == 0xBBBB and stats.receive.jitter_ms == 0
    assert stats.jitter_max_ms >= audio_jitter
