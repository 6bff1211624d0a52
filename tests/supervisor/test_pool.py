"""The worker pool with real forked workers and real rings, on a uvloop loop.

No timing is asserted: every wait has a generous guard, only there to stop a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

import numpy as np
import orjson
import pytest
import uvloop

import activecall.supervisor.pool as pool_module
from activecall._native.ring import Ring
from activecall._native.silero import VadSession
from activecall.supervisor.pool import PoolFull, SessionRoute, WorkerPool
from activecall.workers.worker import WorkerOptions
from tests.workers import make_session

HANG_GUARD = 60.0


class Sink:
    """Records what the pool delivers for one session."""

    def __init__(self) -> None:
        self.texts: list[bytes] = []
        self.audio: list[bytes] = []
        self.ended = False
        self.lost = False

    def _check_open(self) -> None:
        # pytest.fail raises a BaseException, which the pool's guard around sinks lets through.
        if self.ended or self.lost:
            pytest.fail("a record after on_ended/on_worker_lost")

    def on_text(self, data: bytes) -> None:
        self._check_open()
        self.texts.append(data)

    def on_audio(self, data: bytes) -> None:
        self._check_open()
        self.audio.append(data)

    def on_ended(self) -> None:
        self._check_open()
        self.ended = True

    def on_worker_lost(self) -> None:
        self._check_open()
        self.lost = True


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not predicate():
            await asyncio.sleep(0.002)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a test on uvloop, as the supervisor does."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.fixture
def rings_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of every ring the pool creates; checks none is left in /dev/shm afterwards."""
    names: list[str] = []

    class RecordingRing:
        @staticmethod
        def create(capacity: int) -> Ring:
            ring = Ring.create(capacity)
            names.append(ring.spec.name)
            return ring

    monkeypatch.setattr(pool_module, "Ring", RecordingRing)
    yield names
    assert names
    assert [name for name in names if os.path.exists("/dev/shm/" + name)] == []


@contextlib.asynccontextmanager
async def running_pool(size: int = 2, **kwargs: Any) -> AsyncIterator[WorkerPool]:
    """A started, ready pool of the test sessions; after stop(), no process is left."""
    options = WorkerOptions(
        session_factory=make_session, max_sessions=kwargs.pop("max_sessions", 16)
    )
    pool = WorkerPool(size, options, ring_capacity=kwargs.pop("ring_capacity", 1 << 20), **kwargs)
    pool.start()
    pids: set[int] = set()
    try:
        await pool.wait_ready(HANG_GUARD)
        pids.update(pid for pid in pool.worker_pids() if pid)
        yield pool
        pids.update(pid for pid in pool.worker_pids() if pid)
    finally:
        await pool.stop(timeout=10)
    assert multiprocessing.active_children() == []
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []  # reaped, no zombie
    assert pool.worker_pids() == [None] * size


def open_sessions(
    pool: WorkerPool, count: int, **params: Any
) -> tuple[list[SessionRoute], list[Sink]]:
    sinks = [Sink() for _ in range(count)]
    routes = [pool.open_session(f"s{i}", "webSocket", params, sink) for i, sink in enumerate(sinks)]
    return routes, sinks


async def worker_pid(route: SessionRoute, sink: Sink) -> int:
    before = len(sink.texts)
    route.send_text(b"pid")
    await until(lambda: len(sink.texts) > before)
    return int(sink.texts[-1])


# ---------------------------------------------------------------------------------------------


def test_echo_least_loaded_and_slot_reuse(rings_made: list[str]) -> None:
    async def main() -> None:
        async with running_pool(2) as pool:
            routes, sinks = open_sessions(pool, 4)
            assert [(r.worker, r.slot) for r in routes] == [(0, 1), (1, 1), (0, 2), (1, 2)]
            for i, route in enumerate(routes):
                route.send_text(b"pid")
                assert route.send_audio(b"\x01\x02" * 160)
                route.send_text(b"hello %d" % i)
            await until(lambda: all(len(s.texts) == 2 and len(s.audio) == 1 for s in sinks))
            pids = pool.worker_pids()
            assert [int(s.texts[0]) for s in sinks] == [pids[0], pids[1], pids[0], pids[1]]
            assert [s.texts[1] for s in sinks] == [b"hello %d" % i for i in range(4)]
            assert all(s.audio == [b"\x01\x02" * 160] for s in sinks)

            routes[0].send_text(b"end")
            await until(lambda: sinks[0].ended)
            assert not routes[0].live
            routes[0].send_text(b"ignored")  # the route is over: a no-op
            assert not routes[0].send_audio(b"\0\0")
            # Worker 0 now has fewer sessions; its freed slot 1 is taken again.
            again = pool.open_session("again", "webSocket", {}, Sink())
            assert (again.worker, again.slot) == (0, 1)
            assert [w.sessions for w in pool.stats().workers] == [2, 2]
            await until(lambda: pool.stats().frames_in == 4)  # from the heartbeats
            stats = pool.stats()
            assert (stats.frames_in, stats.frames_out, stats.sessions) == (4, 4, 4)
            assert stats.ready_workers == 2 and stats.restarts == 0

    run(main)


def test_close_kill_and_full(rings_made: list[str]) -> None:
    async def main() -> None:
        async with running_pool(1, max_sessions=2) as pool:
            routes, sinks = open_sessions(pool, 2)
            with pytest.raises(PoolFull):
                pool.open_session("third", "webSocket", {}, Sink())
            routes[0].close()
            routes[1].kill()
            await until(lambda: sinks[0].ended and sinks[1].ended)
            assert sinks[0].texts == [b"closed caller"]
            assert sinks[1].texts == [b"killed"]
            pool.open_session("third", "webSocket", {}, Sink())  # the slots are free again
        with pytest.raises(PoolFull):
            pool.open_session("after stop", "webSocket", {}, Sink())

    run(main)


def test_vad_is_batched_across_sessions(rings_made: list[str], speech_16k: np.ndarray) -> None:
    """Ten sessions, five per worker, each with 6 s of the speech fixture: the probabilities
    equal single-stream VadSession's, and each worker evaluated them in shared batches."""
    segments = [speech_16k[16000 * 6 * i : 16000 * 6 * (i + 1)] for i in range(10)]
    chunks = len(segments[0]) // 512

    async def main() -> None:
        async with running_pool(2, ring_capacity=1 << 22) as pool:
            sinks = [Sink() for _ in segments]
            for i, sink in enumerate(sinks):
                params = {"kind": "vad", "dtype": "float32" if i % 3 else "int16"}
                route = pool.open_session(f"vad{i}", "webSocket", params, sink)
                data = segments[i].tobytes()
                for at in range(0, len(data), 640):  # 20 ms frames
                    assert route.send_audio(data[at : at + 640])
                route.send_text(b"report")
            await until(lambda: all(s.ended for s in sinks))
            for sink, pcm in zip(sinks, segments, strict=True):
                (report,) = sink.texts
                got = orjson.loads(report)
                assert got["chunks"] == chunks
                expected = VadSession().process(pcm)
                np.testing.assert_allclose(got["probs"], expected, rtol=0, atol=1e-5)
            await until(lambda: all(w.vad_chunks == 5 * chunks for w in pool.stats().workers))
            for w in pool.stats().workers:
                assert w.vad_calls < w.vad_chunks  # chunks of several sessions per call

    run(main)


def test_kill_9_loses_only_that_workers_sessions(rings_made: list[str]) -> None:
    async def main() -> None:
        async with running_pool(2) as pool:
            routes, sinks = open_sessions(pool, 4)
            first_rings = list(rings_made)
            victim_pid = pool.worker_pids()[0]
            assert victim_pid is not None
            doomed = [(r, s) for r, s in zip(routes, sinks, strict=True) if r.worker == 0]
            spared = [(r, s) for r, s in zip(routes, sinks, strict=True) if r.worker == 1]
            reopened: list[SessionRoute] = []

            def reopen() -> None:  # a sink that reacts to the loss by opening a session
                Sink.on_worker_lost(doomed[0][1])
                reopened.append(pool.open_session("reopened", "webSocket", {}, Sink()))

            doomed[0][1].on_worker_lost = reopen  # type: ignore[method-assign]
            count = 2000
            killed_at = 0.0
            for n in range(count):
                for route, _ in doomed + spared:
                    route.send_text(b"%d" % n)
                if n == count // 2:
                    os.kill(victim_pid, signal.SIGKILL)
                    killed_at = time.perf_counter()
                if n % 20 == 0:
                    await asyncio.sleep(0.001)  # let the loop deliver meanwhile
            await until(lambda: all(s.lost for _, s in doomed))
            assert [r.worker for r in reopened] == [
                1
            ]  # opened from a sink while worker 0 was being buried
            await until(lambda: all(len(s.texts) == count for _, s in spared))
            for _, sink in spared:
                assert sink.texts == [b"%d" % n for n in range(count)]
                assert not (sink.lost or sink.ended)
            for route, sink in doomed:
                assert not route.live
                assert sink.texts == [b"%d" % n for n in range(len(sink.texts))]  # a prefix
            # The dead worker's rings are gone already; its replacement has fresh ones.
            still = [name for name in first_rings if os.path.exists("/dev/shm/" + name)]
            assert still == first_rings[2:]  # worker 1's pair only

            await until(lambda: pool.stats().workers[0].ready)
            route = pool.open_session("new", "webSocket", {}, sink := Sink())
            assert route.worker == 0  # the least loaded: it has no session
            new_pid = await worker_pid(route, sink)
            took = time.perf_counter() - killed_at
            assert new_pid == pool.worker_pids()[0] != victim_pid
            stats = pool.stats()
            assert [w.restarts for w in stats.workers] == [1, 0]
            print(f"\nkill -9 -> replacement took a new session in {took * 1000:.0f} ms")
            # The survivor saw nothing: same process, still echoing.
            assert await worker_pid(*spared[0]) == pool.worker_pids()[1]

    run(main)


def test_a_failing_session_does_not_kill_its_worker(rings_made: list[str]) -> None:
    async def main() -> None:
        async with running_pool(1) as pool:
            routes, sinks = open_sessions(pool, 2)
            pid = await worker_pid(routes[1], sinks[1])
            routes[0].send_text(b"boom")
            await until(lambda: sinks[0].ended)
            assert sinks[0].texts == []
            assert await worker_pid(routes[1], sinks[1]) == pid
            await until(lambda: pool.stats().workers[0].session_errors == 1)
            assert pool.stats().restarts == 0

    run(main)


def test_a_hung_worker_is_killed_and_replaced(rings_made: list[str]) -> None:
    async def main() -> None:
        async with running_pool(2, hang_timeout=1.0) as pool:
            routes, sinks = open_sessions(pool, 2)
            old = pool.worker_pids()
            routes[0].send_text(b"hang")  # blocks worker 0's loop: no more heartbeats
            await until(lambda: sinks[0].lost)
            await until(lambda: pool.stats().workers[0].ready)
            assert pool.stats().workers[0].restarts == 1
            assert pool.worker_pids()[0] != old[0]
            assert await worker_pid(routes[1], sinks[1]) == old[1]

    run(main)


def test_stop_ends_sessions_and_leaves_nothing(rings_made: list[str]) -> None:
    sinks: list[Sink] = []

    async def main() -> None:
        async with running_pool(2) as pool:
            _, opened = open_sessions(pool, 4)
            sinks.extend(opened)
            await until(lambda: pool.stats().sessions == 4)
        # running_pool checked: no child process, no zombie; rings_made: no /dev/shm entry

    run(main)
    assert all(s.texts == [b"closed system"] and s.ended and not s.lost for s in sinks)


def test_stop_terminates_a_stuck_worker(rings_made: list[str]) -> None:
    sinks: list[Sink] = []

    async def main() -> None:
        pool = WorkerPool(
            1, WorkerOptions(session_factory=make_session), ring_capacity=1 << 16, hang_timeout=60
        )
        pool.start()
        await pool.wait_ready(HANG_GUARD)
        routes, opened = open_sessions(pool, 1)
        sinks.extend(opened)
        await worker_pid(routes[0], opened[0])
        routes[0].send_text(b"hang")
        await asyncio.gather(pool.stop(timeout=0.5), pool.stop(timeout=0.5))  # both wait
        assert multiprocessing.active_children() == []

    run(main)
    assert sinks[0].lost


def test_workers_are_pinned_round_robin(rings_made: list[str]) -> None:
    allowed = sorted(os.sched_getaffinity(0))

    async def main() -> None:
        async with running_pool(3) as pool:
            pids = pool.worker_pids()
            for i, pid in enumerate(pids):
                assert pid is not None
                cpu = allowed[i % len(allowed)]
                assert os.sched_getaffinity(pid) == {cpu}
                assert pool.stats().workers[i].cpu == cpu
        async with running_pool(2, cpus=[allowed[-1]]) as pool:
            for pid in pool.worker_pids():
                assert pid is not None
                assert os.sched_getaffinity(pid) == {allowed[-1]}

    run(main)


def test_workers_shed_the_supervisors_signals_and_sockets(rings_made: list[str]) -> None:
    """A signal to a worker never reaches the supervisor's handlers (fork copied its wake-up
    fd); SIGINT is ignored; the supervisor's sockets are not held open by workers."""
    heard: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, heard.append, 1)
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            async with running_pool(1) as pool:
                routes, sinks = open_sessions(pool, 1)
                pid = await worker_pid(routes[0], sinks[0])
                links = [
                    os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
                ]
                assert f"socket:[{os.fstat(listener.fileno()).st_ino}]" not in links
                os.kill(pid, signal.SIGINT)
                assert await worker_pid(routes[0], sinks[0]) == pid  # still the same worker
                os.kill(pid, signal.SIGUSR1)  # default action: the worker dies
                await until(lambda: sinks[0].lost)
                await asyncio.sleep(0.1)  # the supervisor's handler would have run by now
                await until(lambda: pool.stats().workers[0].ready)
        finally:
            listener.close()
            loop.remove_signal_handler(signal.SIGUSR1)

    run(main)
    assert heard == []


ORPHAN_SCRIPT = """
import asyncio, os, signal, sys
sys.path.insert(0, {root!r})
from activecall.supervisor.pool import WorkerPool
from activecall.workers.worker import WorkerOptions
from tests.workers import make_session

async def main():
    pool = WorkerPool(2, WorkerOptions(session_factory=make_session), ring_capacity=1 << 16)
    pool.start()
    await pool.wait_ready(60)
    print(*pool.worker_pids(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_workers_exit_when_the_supervisor_dies() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN_SCRIPT.format(root=root)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pids = [int(pid) for pid in done.stdout.split()]
    assert len(pids) == 2

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not reaped yet
        except FileNotFoundError:
            return True

    async def main() -> None:
        await until(lambda: all(gone(pid) for pid in pids))

    run(main)
