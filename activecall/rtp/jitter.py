"""Adaptive receive jitter buffer for one RTP stream, without I/O or clock of its own.

The caller stamps each packet with its arrival time (``put(packet, arrival_ms)``) and asks
for what is due every 20 ms (``pop(now_ms)``). A packet with (unwrapped) timestamp ``ts``
plays at ``ts / clock + offset``; ``offset`` is the smallest recent transit time (arrival
minus media time) plus the playout delay. The delay follows the RFC 3550 §6.4.1 interarrival
jitter estimate ``J``: the target is ``min_delay + 4 J`` (about 4.5 standard deviations of
Gaussian network jitter), clamped to ``[min_delay, max_delay]``.

* It grows at once: when the delay falls short of the target, or a packet arrives after its
  playout time, ``offset`` moves later (the pipeline conceals the gap that opens).
* It shrinks slowly, one frame at a time: when a talkspurt starts (marker bit) and the delay
  is more than a frame above the target, the silence before it is shortened; in continuous
  audio, once a second while it is more than two frames above, one frame is dropped.
* Packets leave in sequence-number order (16-bit wrap handled). A missing packet whose time
  has come while a later one is waiting comes out as :class:`Lost` (the decoder conceals it);
  one whose time passed while nothing was waiting was already concealed by the caller and is
  only counted. Packets older than what has played are late and dropped; duplicates are
  dropped; what was due by the previous ``pop`` and is still waiting is dropped too, so each
  call hands out about one frame's worth.
* The sender's clock may jump while its numbering goes on (a B2BUA re-bridging the call):
  a packet whose timestamp goes back, or lands seconds off schedule, continues the old clock
  where it left off.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from activecall.rtp.packet import RtpPacket

__all__ = ["JitterBuffer", "JitterReport", "Lost", "PutResult"]

_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32
_MAX_DROPOUT = 3000  # RFC 3550 A.1: a larger sequence jump is a restart, not loss
_MIN_WINDOW_MS = 2000.0  # the transit minimum is taken over this much arrival time
_SHRINK_EVERY_MS = 1000.0
_RESYNC_MS = 2000.0  # a packet this far off its schedule means the sender's clock jumped
_RECENT = 128  # released sequence numbers remembered to tell duplicates from late packets


@dataclass(frozen=True, slots=True)
class Lost:
    """A packet that did not arrive in time: the decoder conceals one packet here."""

    sequence_number: int
    timestamp: int


class PutResult(enum.Enum):
    """What :meth:`JitterBuffer.put` did with a packet."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"
    RESTARTED = "restarted"  # a sequence jump: the buffer started over with this packet


@dataclass(frozen=True, slots=True)
class JitterReport:
    """The buffer's state and counters (for the CDR and ``/metrics``)."""

    delay_ms: float
    target_delay_ms: float
    jitter_ms: float
    buffered: int
    buffered_ms: float
    received: int
    played: int
    lost: int
    late: int
    duplicates: int
    discarded: int


class JitterBuffer:
    """Reorders one RTP stream and releases it on time; see the module docstring."""

    __slots__ = (
        "_clock_per_ms",
        "_discarded",
        "_duplicates",
        "_frame_ms",
        "_initial_jitter",
        "_jitter",
        "_last_pop",
        "_last_shrink_ms",
        "_last_ts",
        "_late",
        "_lost",
        "_max_delay",
        "_max_seq",
        "_min_delay",
        "_next",
        "_offset",
        "_packets",
        "_played",
        "_prev_transit",
        "_received",
        "_recent",
        "_recent_set",
        "_step",
        "_transits",
        "_ts_shift",
        "capacity",
        "clock_rate",
    )

    def __init__(
        self,
        clock_rate: int,
        *,
        frame_ms: int = 20,
        min_delay_ms: float = 20.0,
        initial_delay_ms: float = 60.0,
        max_delay_ms: float = 500.0,
        capacity: int = 256,
    ) -> None:
        if clock_rate <= 0 or frame_ms <= 0 or capacity <= 0:
            raise ValueError("clock_rate, frame_ms and capacity must be positive")
        if not 0 <= min_delay_ms <= initial_delay_ms <= max_delay_ms:
            raise ValueError("expected 0 <= min_delay_ms <= initial_delay_ms <= max_delay_ms")
        self.clock_rate = clock_rate
        self.capacity = capacity
        self._clock_per_ms = clock_rate / 1000.0
        self._frame_ms = float(frame_ms)
        self._min_delay = float(min_delay_ms)
        self._max_delay = float(max_delay_ms)
        # Before any jitter is measured, assume enough for the initial delay; the estimate
        # decays to the network's in about a second of clean packets.
        self._initial_jitter = (initial_delay_ms - min_delay_ms) / 4.0
        self._received = self._played = self._lost = 0
        self._late = self._duplicates = self._discarded = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stream (new SSRC): packets, timing and jitter; counters are kept."""
        # Extended sequence number -> (packet, extended timestamp); ``None`` marks a number
        # that carries no audio (an RFC 4733 event): it is passed over without a loss.
        self._packets: dict[int, tuple[RtpPacket | None, int]] = {}
        self._max_seq: int | None = None  # highest extended sequence number seen
        self._next: int | None = None  # extended sequence number to release next
        self._last_ts = 0  # extended timestamp of the last released (or lost) packet
        self._ts_shift = 0  # added to the sender's timestamps since its clock last jumped
        self._step: float = self._frame_ms * self._clock_per_ms  # timestamp units per packet
        self._offset: float | None = None
        self._prev_transit: float | None = None
        self._jitter = self._initial_jitter
        self._transits: deque[tuple[float, float]] = deque()  # (arrival, transit), min first
        self._last_shrink_ms = float("-inf")
        self._last_pop = float("-inf")
        self._recent: deque[int] = deque()
        self._recent_set: set[int] = set()

    # ------------------------------------------------------------------------------- input

    def put(self, packet: RtpPacket, arrival_ms: float) -> PutResult:
        """Add a packet that arrived at ``arrival_ms`` (any monotonic ms clock)."""
        self._received += 1
        result = PutResult.ACCEPTED
        seq = self._extend_seq(packet.sequence_number)
        if self._max_seq is not None and abs(seq - self._max_seq) > _MAX_DROPOUT:
            self._discarded += len(self._packets)
            self.reset()
            seq = self._extend_seq(packet.sequence_number)
            result = PutResult.RESTARTED
        if seq in self._packets or seq in self._recent_set:
            self._duplicates += 1
            return PutResult.DUPLICATE
        if self._next is not None and seq < self._next:
            self._late += 1  # its slot is gone: played around, or concealed as lost
            return PutResult.LATE
        ts = self._extend_ts(packet.timestamp, seq)
        transit = arrival_ms - ts / self._clock_per_ms
        if self._clock_jumped(seq, ts, transit):
            # The sender's clock jumped (a new source behind a B2BUA, a restart) while the
            # numbering went on: carry on its clock from where the old one was.
            contiguous = self._reference_ts() + round((seq - self._reference_seq()) * self._step)
            self._ts_shift += contiguous - ts
            ts = contiguous
            transit = arrival_ms - ts / self._clock_per_ms
            if self._offset is not None and abs(transit - self._offset) > self._max_delay:
                # And it was silent for a while before: anchor the timing afresh.
                self._offset = None
                self._prev_transit = None
                self._transits.clear()
        if self._max_seq is None or seq > self._max_seq:
            self._max_seq = seq
        self._packets[seq] = (packet, ts)
        self._learn_step(seq, ts)
        self._update_timing(arrival_ms, transit)
        if len(self._packets) > self.capacity:
            del self._packets[min(self._packets)]
            self._discarded += 1
        return result

    def _clock_jumped(self, seq: int, ts: int, transit: float) -> bool:
        """Whether this packet is seconds off its schedule, or a later one went back in time."""
        if self._offset is None or self._max_seq is None:
            return False
        if abs(transit - self._offset) > self._max_delay + _RESYNC_MS:
            return True
        return seq > self._max_seq and ts < self._reference_ts()

    def _reference_seq(self) -> int:
        assert self._max_seq is not None
        return self._max_seq

    def _reference_ts(self) -> int:
        """Timestamp of the highest sequence number seen (or of the last one played)."""
        ref = self._packets.get(self._max_seq) if self._max_seq is not None else None
        return ref[1] if ref is not None else self._last_ts

    def skip(self, packet: RtpPacket) -> None:
        """Note a packet of the stream that carries no audio (an RFC 4733 event).

        Its sequence number is passed over without a :class:`Lost`, and it does not count
        towards the timing: events repeat their start timestamp.
        """
        seq = self._extend_seq(packet.sequence_number)
        if self._max_seq is not None and abs(seq - self._max_seq) > _MAX_DROPOUT:
            return  # a restart shows with the next audio packet
        if seq in self._packets or (self._next is not None and seq < self._next):
            return
        self._packets[seq] = (None, self._extend_ts(packet.timestamp, seq))
        if self._max_seq is None or seq > self._max_seq:
            self._max_seq = seq

    def _extend_seq(self, seq: int) -> int:
        if self._max_seq is None:
            return seq + _SEQ_MOD  # room below for packets reordered before the first
        delta = (seq - self._max_seq + _SEQ_MOD // 2) % _SEQ_MOD - _SEQ_MOD // 2
        return self._max_seq + delta

    def _extend_ts(self, ts: int, seq: int) -> int:
        """Unwrap a 32-bit timestamp near the reference, on our (possibly shifted) clock."""
        if not self._packets and self._next is None:
            return ts + self._ts_shift
        ref = self._reference_ts() - self._ts_shift
        return ref + (ts - ref + _TS_MOD // 2) % _TS_MOD - _TS_MOD // 2 + self._ts_shift

    def _learn_step(self, seq: int, ts: int) -> None:
        """Timestamp units per packet, from neighbours in sequence (estimates lost packets)."""
        before = self._packets.get(seq - 1)
        if before is not None and before[0] is not None and 0 < ts - before[1] <= 10 * self._step:
            self._step = ts - before[1]

    def _update_timing(self, arrival: float, transit: float) -> None:
        if self._prev_transit is not None:
            d = abs(transit - self._prev_transit)
            self._jitter += (d - self._jitter) / 16.0  # RFC 3550 §6.4.1 / A.8
        self._prev_transit = transit
        window = self._transits
        while window and window[-1][1] >= transit:
            window.pop()
        window.append((arrival, transit))
        while window[0][0] < arrival - _MIN_WINDOW_MS:
            window.popleft()
        base = window[0][1]
        target = self.target_delay_ms
        if self._offset is None:
            self._offset = base + target
            return
        # Grow at once: to the target, and far enough that this packet is not late.
        wanted = max(base + target, min(transit, base + self._max_delay))
        if wanted > self._offset:
            self._offset = wanted

    # ------------------------------------------------------------------------------ output

    def pop(self, now_ms: float) -> list[RtpPacket | Lost]:
        """The packets due by ``now_ms`` in order, with :class:`Lost` for the missing ones.

        Call it every frame; what was due by the previous call and is still here (its slot
        has passed: the caller filled it) is dropped rather than handed out twice.
        """
        out: list[RtpPacket | Lost] = []
        previous, self._last_pop = self._last_pop, now_ms
        if self._offset is None or not self._packets:
            return out
        self._maybe_shrink(now_ms, previous)
        offset = self._offset
        per_ms = self._clock_per_ms
        while self._packets:
            seq = self._next if self._next is not None else min(self._packets)
            entry = self._packets.get(seq)
            if entry is not None:
                packet, ts = entry
                if packet is None:  # no audio here: pass over it
                    del self._packets[seq]
                    self._next = seq + 1
                    continue
                due = ts / per_ms + offset
                if due > now_ms:
                    break
                del self._packets[seq]
                if due <= previous:
                    self._release(seq, ts, played=False)
                    self._discarded += 1
                else:
                    self._release(seq, ts, played=True)
                    self._played += 1
                    out.append(packet)
                continue
            # ``seq`` is missing and a later packet waits: give it up when its slot comes
            # (or the later one is due, if packets got longer than the step we learned).
            expected = self._last_ts + self._step
            later = self._packets[min(self._packets)][1]
            expected_due = min(expected, later) / per_ms + offset
            if expected_due > now_ms:
                break
            self._lost += 1
            self._release(seq, round(expected), played=False)
            if expected_due > previous:
                out.append(Lost(seq % _SEQ_MOD, round(expected) % _TS_MOD))
        return out

    def _release(self, seq: int, ts: int, *, played: bool) -> None:
        self._next = seq + 1
        self._last_ts = ts
        if played:
            self._recent.append(seq)
            self._recent_set.add(seq)
            if len(self._recent) > _RECENT:
                self._recent_set.discard(self._recent.popleft())

    def _maybe_shrink(self, now_ms: float, previous: float) -> None:
        """Give back one frame of delay at a talkspurt start (more than a frame too much), or
        once a second in continuous audio (more than two frames too much: it drops one)."""
        if self._offset is None:
            return
        excess = self.delay_ms - self.target_delay_ms
        if excess <= self._frame_ms:
            return
        head = self._packets.get(self._next) if self._next is not None else None
        if head is not None and head[0] is not None and head[0].marker:
            # Shorten the silence before the talkspurt, but never so far that its first
            # packet's slot is already gone.
            due = head[1] / self._clock_per_ms + self._offset - self._frame_ms
            if due > previous:
                self._offset -= self._frame_ms
                self._last_shrink_ms = now_ms
        elif excess > 2 * self._frame_ms and now_ms - self._last_shrink_ms >= _SHRINK_EVERY_MS:
            self._offset -= self._frame_ms
            self._last_shrink_ms = now_ms

    # ----------------------------------------------------------------------------- report

    @property
    def jitter_ms(self) -> float:
        """The RFC 3550 interarrival jitter estimate, in ms."""
        return self._jitter

    @property
    def target_delay_ms(self) -> float:
        """The playout delay the buffer steers to: ``min_delay + 4 J``, clamped."""
        return min(self._max_delay, self._min_delay + 4.0 * self._jitter)

    @property
    def delay_ms(self) -> float:
        """The current playout delay: how long the fastest recent packet waits to play."""
        if self._offset is None or not self._transits:
            return 0.0
        return self._offset - self._transits[0][1]

    def report(self) -> JitterReport:
        """A snapshot of the delay, jitter, occupancy and counters."""
        audio = [ts for packet, ts in self._packets.values() if packet is not None]
        if audio:
            stamps = audio
            span = (max(stamps) - min(stamps) + self._step) / self._clock_per_ms
        else:
            span = 0.0
        return JitterReport(
            delay_ms=self.delay_ms,
            target_delay_ms=self.target_delay_ms,
            jitter_ms=self._jitter,
            buffered=len(audio),
            buffered_ms=span,
            received=self._received,
            played=self._played,
            lost=self._lost,
            late=self._late,
            duplicates=self._duplicates,
            discarded=self._discarded,
        )
