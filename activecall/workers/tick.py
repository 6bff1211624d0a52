"""The worker's 20 ms tick: absolute deadlines with bounded catch-up, and per-interval stats.

Plain objects with no clock of their own: the worker passes ``time.monotonic_ns()`` in.
Deadlines are ``start + n * period``, never "last run + period", so the tick does not drift
however late the loop wakes. When the loop falls behind, :meth:`TickSchedule.due` returns at
most ``max_burst`` overdue ticks per wake-up (the worker polls I/O between bursts) and forgets
ticks more than ``max_backlog`` periods old, counting them as skipped.
"""

from __future__ import annotations

import math

__all__ = [
    "TICK_MS",
    "TICK_NS",
    "IntervalStats",
    "TickSchedule",
]

TICK_MS = 20
TICK_NS = TICK_MS * 1_000_000
EARLY_NS = 2_000_000
"""A timer that fires this much before a deadline counts as on time: uvloop's timers have
millisecond resolution and fire up to a millisecond early."""


class TickSchedule:
    """Which ticks are due at a given monotonic time (ns)."""

    __slots__ = ("late", "max_backlog", "max_burst", "next_ns", "period_ns", "skipped", "ticks")

    def __init__(
        self,
        start_ns: int,
        period_ns: int = TICK_NS,
        *,
        max_burst: int = 3,
        max_backlog: int = 10,
    ) -> None:
        if period_ns <= 0 or max_burst < 1 or max_backlog < max_burst:
            raise ValueError("need period_ns > 0 and 1 <= max_burst <= max_backlog")
        self.period_ns = period_ns
        self.max_burst = max_burst
        self.max_backlog = max_backlog
        self.next_ns = start_ns
        self.ticks = 0  # ticks handed out
        self.late = 0  # of those, ticks handed out a full period or more after their deadline
        self.skipped = 0  # ticks never handed out: more than max_backlog periods overdue

    def due(self, now_ns: int) -> list[int]:
        """The deadlines to run now, oldest first (empty when the next one is in the future)."""
        if now_ns + EARLY_NS < self.next_ns:
            return []
        overdue = max(0, now_ns - self.next_ns) // self.period_ns + 1
        if overdue > self.max_backlog:
            skip = overdue - self.max_backlog
            self.skipped += skip
            self.next_ns += skip * self.period_ns
            overdue = self.max_backlog
        count = min(overdue, self.max_burst)
        deadlines = [self.next_ns + i * self.period_ns for i in range(count)]
        self.next_ns += count * self.period_ns
        self.ticks += count
        self.late += sum(1 for d in deadlines if now_ns - d >= self.period_ns)
        return deadlines


class IntervalStats:
    """Tick lag and VAD time over one heartbeat interval, plus the last VAD time."""

    __slots__ = ("_lags_us", "_ticks", "_vad_us_sum", "vad_us_last", "vad_us_max")

    def __init__(self) -> None:
        self._lags_us: list[int] = []
        self._ticks = 0
        self._vad_us_sum = 0
        self.vad_us_last = 0
        self.vad_us_max = 0

    def add_tick(self, lag_ns: int, vad_ns: int | None) -> None:
        """One tick ran ``lag_ns`` after its deadline; ``vad_ns`` is its batch call (if any)."""
        self._ticks += 1
        self._lags_us.append(max(0, lag_ns) // 1000)
        if vad_ns is not None:
            vad_us = vad_ns // 1000
            self.vad_us_last = vad_us
            self._vad_us_sum += vad_us
            self.vad_us_max = max(self.vad_us_max, vad_us)

    def take(self) -> dict[str, dict[str, int]]:
        """``vadUs`` (last, avg per tick, max) and ``lagUs`` (p99, max) of the interval; resets."""
        lags = sorted(self._lags_us)
        p99 = lags[max(0, math.ceil(0.99 * len(lags)) - 1)] if lags else 0
        snapshot = {
            "vadUs": {
                "last": self.vad_us_last,
                "avg": self._vad_us_sum // self._ticks if self._ticks else 0,
                "max": self.vad_us_max,
            },
            "lagUs": {"p99": p99, "max": lags[-1] if lags else 0},
        }
        self._lags_us.clear()
        self._ticks = 0
        self._vad_us_sum = 0
        self.vad_us_max = 0
        return snapshot
