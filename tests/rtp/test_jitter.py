"""The adaptive jitter buffer: order, duplicates, loss, wrap-around, and the playout delay."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import pytest

from activecall.rtp.jitter import JitterBuffer, Lost, PutResult
from activecall.rtp.packet import RtpPacket

PTIME = 20
STEP = 160  # 20 ms at 8 kHz


def packet(seq: int, *, marker: bool = False, ts: int | None = None) -> RtpPacket:
    """Packet ``seq`` of a 20 ms PCMU stream starting at sequence 0 / timestamp 0."""
    stamp = seq * STEP if ts is None else ts
    return RtpPacket(0, seq % 65536, stamp % (1 << 32), 0x1234, bytes([seq % 256]) * 160, marker)


def play(
    jb: JitterBuffer,
    arrivals: Iterable[tuple[float, RtpPacket]],
    until_ms: float,
    *,
    delays: list[float] | None = None,
) -> list[RtpPacket | Lost]:
    """Put each packet at its arrival time and pop every 20 ms, as a worker tick does."""
    pending = sorted(arrivals, key=lambda a: a[0])
    out: list[RtpPacket | Lost] = []
    i = 0
    for tick in range(0, int(until_ms) + PTIME, PTIME):
        while i < len(pending) and pending[i][0] <= tick:
            jb.put(pending[i][1], pending[i][0])
            i += 1
        out += jb.pop(tick)
        if delays is not None:
            delays.append(jb.delay_ms)
    return out


def seqs(items: Sequence[RtpPacket | Lost]) -> list[int | str]:
    return [
        i.sequence_number if isinstance(i, RtpPacket) else f"lost {i.sequence_number}"
        for i in items
    ]


def steady(
    n: int, *, first: int = 0, jitter_ms: float = 0.0, seed: int = 1
) -> list[tuple[float, RtpPacket]]:
    rng = random.Random(seed)
    return [(i * PTIME + 5 + rng.uniform(0, jitter_ms), packet(first + i)) for i in range(n)]


def test_in_order_stream_plays_each_packet_once_after_the_delay() -> None:
    jb = JitterBuffer(8000, min_delay_ms=20, initial_delay_ms=40)
    out = play(jb, steady(50), 2000)
    assert seqs(out) == list(range(50))
    report = jb.report()
    assert (report.received, report.played, report.lost, report.late) == (50, 50, 0, 0)
    assert report.buffered == 0 and report.jitter_ms < 10


def test_first_packet_waits_for_the_initial_delay() -> None:
    jb = JitterBuffer(8000, initial_delay_ms=60)
    jb.put(packet(0), 0.0)
    assert jb.pop(0.0) == [] and jb.pop(40.0) == []
    assert seqs(jb.pop(60.0)) == [0]


def test_reordered_packets_come_out_in_sequence() -> None:
    arrivals = steady(40)
    for i in range(0, 40, 4):  # a packet arrives after the next one; another 30 ms late
        arrivals[i] = (arrivals[i + 1][0] + 1, arrivals[i][1])
        arrivals[i + 2] = (arrivals[i + 2][0] + 30, arrivals[i + 2][1])
    jb = JitterBuffer(8000, initial_delay_ms=60)
    out = play(jb, arrivals, 2000)
    assert seqs(out) == list(range(40))
    assert jb.report().lost == 0


def test_duplicates_are_dropped_while_buffered_and_after_playing() -> None:
    jb = JitterBuffer(8000, initial_delay_ms=40)
    assert jb.put(packet(0), 0.0) is PutResult.ACCEPTED
    assert jb.put(packet(0), 1.0) is PutResult.DUPLICATE
    assert seqs(jb.pop(40.0)) == [0]
    assert jb.put(packet(0), 41.0) is PutResult.DUPLICATE
    assert jb.put(packet(1), 20.0) is PutResult.ACCEPTED
    assert seqs(jb.pop(60.0)) == [1]
    assert jb.report().duplicates == 2


def test_a_lost_packet_is_signalled_in_its_place() -> None:
    arrivals = [a for a in steady(30) if a[1].sequence_number not in (10, 20, 21)]
    jb = JitterBuffer(8000, initial_delay_ms=40)
    out = play(jb, arrivals, 2000)
    expected: list[int | str] = list(range(30))
    for s in (10, 20, 21):
        expected[s] = f"lost {s}"
    assert seqs(out) == expected
    lost = [i for i in out if isinstance(i, Lost)]
    assert [i.timestamp for i in lost] == [10 * STEP, 20 * STEP, 21 * STEP]
    assert jb.report().lost == 3


def test_a_late_packet_is_dropped_once_its_slot_is_gone() -> None:
    arrivals = steady(20)
    arrivals[5] = (arrivals[5][0] + 200, arrivals[5][1])  # arrives 200 ms after its turn
    jb = JitterBuffer(8000, initial_delay_ms=40, max_delay_ms=60)
    out = play(jb, arrivals, 2000)
    assert "lost 5" in seqs(out) and 5 not in seqs(out)
    assert jb.report().late == 1


@pytest.mark.parametrize("first", [65500, 65530])
def test_sequence_and_timestamp_wrap(first: int) -> None:
    arrivals = [
        (i * PTIME + 5.0, packet(first + i, ts=(1 << 32) - 50 * STEP + i * STEP)) for i in range(80)
    ]
    # The packet before the wrap arrives just after the one across it.
    k = 65536 - first
    arrivals[k - 1] = (arrivals[k][0] + 1, arrivals[k - 1][1])
    jb = JitterBuffer(8000, initial_delay_ms=60)
    out = play(jb, arrivals, 3000)
    assert seqs(out) == [(first + i) % 65536 for i in range(80)]
    assert jb.report().lost == 0


def test_delay_grows_with_jitter_and_shrinks_back() -> None:
    jb = JitterBuffer(8000, min_delay_ms=20, initial_delay_ms=40)
    calm1 = steady(250)  # 5 s
    rough = [(t + 5000, p) for t, p in steady(500, first=250, jitter_ms=80, seed=7)]  # 10 s
    calm2 = [(t + 15000, p) for t, p in steady(750, first=750)]  # 15 s
    delays: list[float] = []
    out = play(jb, calm1 + rough + calm2, 30_500, delays=delays)
    per_s = 1000 // PTIME
    calm_before = max(delays[4 * per_s : 5 * per_s])
    rough_end = min(delays[13 * per_s : 15 * per_s])
    calm_after = max(delays[29 * per_s : 30 * per_s])
    assert calm_before <= 60
    assert rough_end >= 80  # uniform 0-80 ms jitter: RFC 3550 J about 27 ms, target 4 J + 20
    # Back to the target (about 20 ms) plus at most the two frames of hysteresis.
    assert calm_after <= 60 and jb.target_delay_ms < 25
    report = jb.report()
    assert report.played + report.lost + report.late + report.discarded == 1500
    # Once adapted, the rough stretch plays almost everything.
    rough_seqs = [s for s in seqs(out) if isinstance(s, int) and 300 <= s < 750]
    assert len(rough_seqs) >= 0.97 * 450


def test_report_counts_what_waits() -> None:
    jb = JitterBuffer(8000, initial_delay_ms=100)
    for i in range(4):
        jb.put(packet(i), i * 20.0)
    report = jb.report()
    assert report.buffered == 4 and report.buffered_ms == pytest.approx(80.0)
    assert report.target_delay_ms == pytest.approx(20.0 + 4 * report.jitter_ms)
    assert report.delay_ms == pytest.approx(100.0)


def test_sequence_jump_restarts_the_buffer() -> None:
    jb = JitterBuffer(8000, initial_delay_ms=40)
    play(jb, steady(10), 400)
    assert jb.put(packet(30000), 420.0) is PutResult.RESTARTED
    assert jb.put(packet(30001), 440.0) is PutResult.ACCEPTED
    assert seqs(jb.pop(460.0)) == [30000]


@pytest.mark.parametrize("new_clock", [0, 123_456_789, 3_000_000_000])
def test_sender_clock_jump_reanchors_the_playout(new_clock: int) -> None:
    # The numbering goes on, but the timestamps restart elsewhere (back by 200 ms, or to
    # an unrelated value), as when a B2BUA re-bridges the call to another source.
    jb = JitterBuffer(8000, initial_delay_ms=40)
    first = steady(10)
    jump = [(200 + i * PTIME + 5.0, packet(10 + i, ts=new_clock + i * STEP)) for i in range(30)]
    out = play(jb, first + jump, 1500)
    assert seqs(out) == list(range(40))
    assert jb.report().lost == jb.report().late == 0


def test_event_packets_are_passed_over_without_loss() -> None:
    arrivals = steady(30)
    jb = JitterBuffer(8000, initial_delay_ms=40)
    events = [p for _, p in arrivals if 10 <= p.sequence_number < 15]
    audio = [a for a in arrivals if not 10 <= a[1].sequence_number < 15]
    for p in events:
        jb.skip(p)
    out = play(jb, audio, 2000)
    assert seqs(out) == [s for s in range(30) if not 10 <= s < 15]
    assert jb.report().lost == 0


def test_marker_packet_starts_a_talkspurt_with_less_delay() -> None:
    jb = JitterBuffer(8000, min_delay_ms=20, initial_delay_ms=200)
    # A talkspurt, 1 s of silence (no packets), then one with the marker bit: the silence is
    # where the excess delay goes.
    first = steady(10)
    second = [
        (1200 + i * PTIME + 5.0, packet(10 + i, ts=(60 + i) * STEP, marker=i == 0))
        for i in range(10)
    ]
    delays: list[float] = []
    out = play(jb, first + second, 2000, delays=delays)
    assert seqs(out) == list(range(20))
    assert delays[-1] < delays[10]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clock_rate": 0},
        {"clock_rate": 8000, "frame_ms": 0},
        {"clock_rate": 8000, "capacity": 0},
        {"clock_rate": 8000, "min_delay_ms": 50, "initial_delay_ms": 40},
        {"clock_rate": 8000, "initial_delay_ms": 600, "max_delay_ms": 500},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        JitterBuffer(**kwargs)  # type: ignore[arg-type]


def test_capacity_bounds_memory() -> None:
    jb = JitterBuffer(8000, capacity=8)
    for i in range(20):
        jb.put(packet(i), 0.0)
    report = jb.report()
    assert report.buffered == 8 and report.discarded == 12
