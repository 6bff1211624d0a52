"""The worker: tick schedule, and a Worker driven through real rings on a loop in this process.

The pool tests (tests/supervisor/test_pool.py) run the same worker in forked processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest

from activecall._native.ring import KIND_AUDIO, KIND_CONTROL, KIND_TEXT, Ring
from activecall._native.silero import VadSession
from activecall.workers import control
from activecall.workers.tick import TICK_NS, IntervalStats, TickSchedule
from activecall.workers.worker import (
    MAX_VAD_ROUNDS,
    SessionContext,
    Worker,
    WorkerOptions,
    WorkerSession,
)
from tests.workers import CHUNK_BYTES, EchoSession, make_session

HANG_GUARD = 60.0  # seconds before a test that waits for the worker gives up
MS = 1_000_000

# ---------------------------------------------------------------------------------------------
# Tick schedule


def test_schedule_is_drift_free() -> None:
    schedule = TickSchedule(1000 * MS)
    ran = []
    now = 1000 * MS
    for jitter in [0, 3, 1, 7, 0, 12, 2] * 10:  # wake-ups late by a few ms, never by a period
        now = schedule.next_ns + jitter * MS
        ran += schedule.due(now)
    assert ran == [1000 * MS + i * TICK_NS for i in range(70)]
    assert schedule.ticks == 70 and schedule.late == 0 and schedule.skipped == 0


def test_schedule_early_wake_up() -> None:
    schedule = TickSchedule(1000 * MS)
    assert schedule.due(990 * MS) == []  # 10 ms early: not yet
    assert schedule.due(999 * MS) == [1000 * MS]  # a millisecond early (uvloop): on time
    assert schedule.next_ns == 1020 * MS


def test_schedule_catches_up_in_bounded_bursts() -> None:
    schedule = TickSchedule(0, max_burst=3, max_backlog=10)
    now = 5 * TICK_NS + 1  # ticks 0..5 are due
    assert schedule.due(now) == [0, TICK_NS, 2 * TICK_NS]
    assert schedule.due(now) == [3 * TICK_NS, 4 * TICK_NS, 5 * TICK_NS]
    assert schedule.due(now) == []
    assert schedule.late == 5  # all but tick 5 ran a full period or more after their deadline
    assert schedule.skipped == 0


def test_schedule_skips_what_is_too_old() -> None:
    schedule = TickSchedule(0, max_burst=3, max_backlog=10)
    now = 49 * TICK_NS  # a 1 s stall: 50 ticks due, only the last 10 are kept
    got = schedule.due(now) + schedule.due(now) + schedule.due(now) + schedule.due(now)
    assert got == [i * TICK_NS for i in range(40, 50)]
    assert schedule.skipped == 40
    assert schedule.next_ns == 50 * TICK_NS


def test_schedule_arguments() -> None:
    with pytest.raises(ValueError):
        TickSchedule(0, 0)
    with pytest.raises(ValueError):
        TickSchedule(0, max_burst=5, max_backlog=4)


def test_interval_stats() -> None:
    stats = IntervalStats()
    for i in range(100):
        stats.add_tick(lag_ns=i * 1000, vad_ns=(i + 1) * 1000 if i % 2 else None)
    stats.add_tick(lag_ns=-5000, vad_ns=None)  # an early tick has no lag
    got = stats.take()
    assert got["lagUs"] == {"p99": 98, "max": 99}  # nearest rank: the 100th of 101
    assert got["vadUs"] == {"last": 100, "avg": sum(range(2, 101, 2)) // 101, "max": 100}
    assert stats.take() == {
        "vadUs": {"last": 100, "avg": 0, "max": 0},
        "lagUs": {"p99": 0, "max": 0},
    }


# ---------------------------------------------------------------------------------------------
# A worker in this process


class Supervisor:
    """The supervisor's ends of a worker's rings, on the same loop as the worker."""

    def __init__(self, options: WorkerOptions, capacity: int = 1 << 20) -> None:
        self.loop = asyncio.get_running_loop()
        self.to_worker = Ring.create(capacity)
        self.from_worker = Ring.create(capacity)
        self.worker_in = Ring.attach(self.to_worker.spec)
        self.worker_out = Ring.attach(self.from_worker.spec)
        self.executor = ThreadPoolExecutor(1)
        self.worker = Worker(
            0, self.worker_in, self.worker_out, options, loop=self.loop, executor=self.executor
        )
        self.records: list[tuple[int, int, bytes]] = []
        self.changed = asyncio.Event()
        self.loop.add_reader(self.from_worker.fileno(), self._read)
        self.run = asyncio.ensure_future(self.worker.run())

    def _read(self) -> None:
        self.records += self.from_worker.pop_all()
        self.changed.set()

    def control(self, slot: int, op: str, **fields: Any) -> None:
        self.to_worker.send(slot, KIND_CONTROL, control.encode(op, **fields))

    def open(self, slot: int, session_id: str, **params: Any) -> None:
        self.control(slot, control.OP_OPEN, id=session_id, callType="webSocket", params=params)

    def session(self, slot: int) -> list[tuple[int, bytes]]:
        """(kind, payload) of what the worker sent for ``slot``, control records decoded."""
        return [(kind, payload) for s, kind, payload in self.records if s == slot]

    def ended(self, slot: int) -> list[dict[str, Any]]:
        return [
            record
            for kind, payload in self.session(slot)
            if kind == KIND_CONTROL and (record := control.decode(payload))["op"] == "ended"
        ]

    def heartbeats(self) -> list[dict[str, Any]]:
        return [control.decode(p) for s, k, p in self.records if s == 0 and k == KIND_CONTROL]

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(HANG_GUARD):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def close(self) -> None:
        if not self.run.done():
            self.control(0, control.OP_STOP, graceMs=0)
        await asyncio.wait_for(self.run, HANG_GUARD)
        self.loop.remove_reader(self.from_worker.fileno())
        self.executor.shutdown()
        for ring in (self.to_worker, self.from_worker, self.worker_in, self.worker_out):
            ring.close()
        for ring in (self.to_worker, self.from_worker):
            ring.unlink()


def run_worker(scenario: Callable[[Supervisor], Awaitable[None]], **options: Any) -> None:
    """Run ``scenario(sup)`` against a Worker (default factory: the test sessions)."""

    async def main() -> None:
        options.setdefault("session_factory", make_session)
        sup = Supervisor(WorkerOptions(**options))
        try:
            await scenario(sup)
        finally:
            await sup.close()

    asyncio.run(main())


def test_sessions_echo_and_end() -> None:
    async def scenario(sup: Supervisor) -> None:
        await sup.until(lambda: len(sup.heartbeats()) >= 1)  # the first heartbeat: ready
        first = sup.heartbeats()[0]
        assert first["pid"] == os.getpid() and first["sessions"] == 0
        sup.open(1, "a")
        sup.open(2, "b")
        sup.to_worker.send(1, KIND_TEXT, b"hello")
        sup.to_worker.send(2, KIND_AUDIO, b"\x01\x02" * 160)
        sup.to_worker.send(7, KIND_TEXT, b"nobody here")  # no session in slot 7: ignored
        sup.control(1, control.OP_CLOSE, reason="caller")
        sup.control(2, control.OP_KILL)
        sup.to_worker.send(1, KIND_TEXT, b"too late")  # after the session ended: ignored
        await sup.until(lambda: bool(sup.ended(1) and sup.ended(2)))
        assert sup.session(1) == [
            (KIND_TEXT, b"hello"),
            (KIND_TEXT, b"closed caller"),
            (KIND_CONTROL, b'{"op":"ended","id":"a"}'),
        ]
        assert sup.session(2) == [
            (KIND_AUDIO, b"\x01\x02" * 160),
            (KIND_TEXT, b"killed"),
            (KIND_CONTROL, b'{"op":"ended","id":"b"}'),
        ]
        assert sup.session(7) == []
        assert sup.worker.sessions == 0
        assert (sup.worker.frames_in, sup.worker.frames_out) == (1, 1)

    run_worker(scenario)


def test_heartbeat_fields() -> None:
    async def scenario(sup: Supervisor) -> None:
        sup.open(1, "a")
        for _ in range(3):
            sup.to_worker.send(1, KIND_AUDIO, b"\0" * 320)
        await sup.until(lambda: any(hb["framesOut"] == 3 for hb in sup.heartbeats()))
        hb = sup.heartbeats()[-1]
        assert hb["op"] == "heartbeat"
        assert hb["sessions"] == 1 and hb["framesIn"] == 3 and hb["droppedAudio"] == 0
        assert hb["ticks"] > 0
        assert set(hb["vadUs"]) == {"last", "avg", "max"}
        assert set(hb["lagUs"]) == {"p99", "max"}
        assert {"lateTicks", "skippedTicks", "vadCalls", "vadChunks", "textIn", "textOut"} <= set(
            hb
        )

    run_worker(scenario)


def test_a_failing_session_ends_alone(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(sup: Supervisor) -> None:
        sup.open(1, "raises-on-text")
        sup.open(2, "raises-on-tick", tickRaises=True)
        sup.open(3, "refused", kind="refuse")
        sup.open(4, "bad-vad-chunk", kind="vad", badChunk="shape")
        sup.open(6, "vad-chunk-not-an-array", kind="vad", badChunk="list")
        sup.open(5, "fine")
        sup.to_worker.send(1, KIND_TEXT, b"boom")
        sup.to_worker.send(1, KIND_TEXT, b"after the failure")
        sup.to_worker.send(4, KIND_AUDIO, b"\0" * CHUNK_BYTES)
        sup.to_worker.send(6, KIND_AUDIO, b"\0" * CHUNK_BYTES)
        await sup.until(lambda: all(sup.ended(slot) for slot in (1, 2, 3, 4, 6)))
        assert sup.ended(1) == [
            {"op": "ended", "id": "raises-on-text", "error": "RuntimeError: boom"}
        ]
        assert sup.ended(2)[0]["error"] == "ValueError: tick"
        assert sup.ended(3)[0]["error"] == "RuntimeError: the factory refuses"
        assert sup.ended(4)[0]["error"].startswith("ValueError: VAD chunk must have shape")
        assert sup.ended(6)[0]["error"].startswith("AttributeError")
        for slot in (1, 2, 3, 4, 6):  # nothing but the `ended`
            assert [kind for kind, _ in sup.session(slot)] == [KIND_CONTROL]
        sup.to_worker.send(5, KIND_TEXT, b"still here")
        await sup.until(lambda: (KIND_TEXT, b"still here") in sup.session(5))
        assert sup.worker.session_errors == 5 and sup.worker.sessions == 1

    with caplog.at_level(logging.ERROR, "activecall.workers.worker"):
        run_worker(scenario)
    assert sum("failed, ending it" in r.message for r in caplog.records) == 5


def test_bad_control_records_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(sup: Supervisor) -> None:
        sup.to_worker.send(0, KIND_CONTROL, b"not json")
        sup.to_worker.send(0, KIND_CONTROL, b'{"no":"op"}')
        sup.control(0, "reboot")
        sup.open(0, "slot zero is the worker's")
        sup.open(9, "beyond max_sessions")
        sup.open(1, "a")
        sup.open(1, "a twice")
        sup.to_worker.send(1, KIND_TEXT, b"ping")
        await sup.until(lambda: (KIND_TEXT, b"ping") in sup.session(1))
        assert sup.ended(9) == [
            {"op": "ended", "id": "beyond max_sessions", "error": "slot 9 unavailable"}
        ]
        assert sup.ended(1) == [{"op": "ended", "id": "a twice", "error": "slot 1 unavailable"}]
        assert sup.worker.sessions == 1

    with caplog.at_level(logging.WARNING, "activecall.workers.worker"):
        run_worker(scenario, max_sessions=8)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("bad control record" in m for m in messages) == 2
    assert any("unknown control op 'reboot'" in m for m in messages)


def test_context() -> None:
    contexts: list[SessionContext] = []

    def factory(ctx: SessionContext) -> WorkerSession:
        contexts.append(ctx)
        return EchoSession(ctx)

    async def scenario(sup: Supervisor) -> None:
        sup.control(3, control.OP_OPEN, id="x", callType="sip", params={"a": 1})
        await sup.until(lambda: bool(contexts))
        ctx = contexts[0]
        assert (ctx.session_id, ctx.slot, ctx.call_type, ctx.params) == ("x", 3, "sip", {"a": 1})
        assert ctx.loop is sup.loop
        assert abs(ctx.now_ms() - time.time() * 1000) < 1000  # epoch milliseconds
        assert await asyncio.wrap_future(ctx.run_blocking(sum, [1, 2])) == 3
        called = asyncio.Event()
        ctx.call_soon(called.set)
        await called.wait()
        ctx.emit_text(b"t")
        ctx.emit_audio(b"a")
        ctx.end()
        ctx.end()
        ctx.emit_text(b"after end")
        ctx.emit_audio(b"after end")
        assert ctx.ended
        await sup.until(lambda: bool(sup.ended(3)))
        assert sup.session(3) == [
            (KIND_TEXT, b"t"),
            (KIND_AUDIO, b"a"),
            (KIND_CONTROL, b'{"op":"ended","id":"x"}'),
        ]

    run_worker(scenario, session_factory=factory)


def test_stop_closes_sessions_then_exits() -> None:
    async def scenario(sup: Supervisor) -> None:
        sup.open(1, "polite")
        sup.open(2, "lingers", lingers=True)  # says goodbye but never ends itself
        sup.control(0, control.OP_STOP, graceMs=50)
        sup.open(3, "too late")
        await asyncio.wait_for(sup.run, HANG_GUARD)
        sup._read()
        assert sup.session(1) == [
            (KIND_TEXT, b"closed system"),
            (KIND_CONTROL, b'{"op":"ended","id":"polite"}'),
        ]
        assert sup.session(2) == [
            (KIND_TEXT, b"closed system"),
            (KIND_CONTROL, b'{"op":"ended","id":"lingers","error":"worker stopped"}'),
        ]
        assert sup.ended(3) == [{"op": "ended", "id": "too late", "error": "worker stopping"}]

    run_worker(scenario)


def tiny_probs(pcm: np.ndarray) -> list[float]:
    return VadSession().process(pcm).tolist()


def test_vad_is_batched_over_sessions(speech_16k: np.ndarray) -> None:
    """Three sessions' chunks go through one batch per round; each gets its stream's
    probabilities, equal to a single-stream VadSession's."""
    segments = [speech_16k[16000 * s : 16000 * (s + 2)] for s in (3, 20, 41)]

    async def scenario(sup: Supervisor) -> None:
        for slot, dtype in zip((1, 2, 3), ("int16", "float32", "int16"), strict=True):
            sup.open(slot, f"vad{slot}", kind="vad", dtype=dtype)
        for slot, pcm in zip((1, 2, 3), segments, strict=True):
            data = pcm.tobytes()
            for i in range(0, len(data), 640):  # 20 ms frames
                assert sup.to_worker.send(slot, KIND_AUDIO, data[i : i + 640])
            sup.to_worker.send(slot, KIND_TEXT, b"report")
        await sup.until(lambda: all(sup.ended(slot) for slot in (1, 2, 3)))
        for slot, pcm in zip((1, 2, 3), segments, strict=True):
            (kind, payload), (_, ended) = sup.session(slot)
            assert kind == KIND_TEXT and b"error" not in ended
            report = orjson.loads(payload)
            expected = tiny_probs(pcm)
            assert report["chunks"] == len(expected) == len(pcm) // 512
            np.testing.assert_allclose(report["probs"], expected, rtol=0, atol=1e-5)
        worker = sup.worker
        assert worker.vad_chunks == 3 * (len(segments[0]) // 512)
        # A burst of 62 chunks per session: rounds of three chunks, at most 4 rounds a tick.
        assert worker.vad_calls < worker.vad_chunks
        assert worker.vad_calls <= MAX_VAD_ROUNDS * worker._schedule.ticks

    run_worker(scenario)
