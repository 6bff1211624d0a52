"""The supervisor's worker pool: forks the workers, routes sessions to them, replaces the dead.

Each worker gets a pair of rings that the pool creates before forking it (``inbound`` carries
commands, audio and control records to the worker; ``outbound`` brings events, audio,
``ended`` and heartbeats back) and one CPU, round-robin over the CPUs this process may use.
Everything runs on the supervisor's event loop: the pool reads an outbound ring when its
doorbell rings and watches each process's sentinel, so a worker that dies is noticed at once.

A session lives in one slot (1..``max_sessions``) of one worker, from :meth:`open_session`
until the worker reports it ``ended``; the slot is reused after that. When a worker dies (or
sends no heartbeat for ``hang_timeout`` seconds and is killed), the pool delivers what it had
already emitted, calls ``on_worker_lost()`` on each of its sessions' sinks, unlinks its rings
and forks a replacement on the same CPU with fresh rings. Other workers' sessions see nothing.

By default the pool loads the VAD kernels once in the supervisor before forking, so every
worker, replacements included, inherits them compiled and is ready within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import zip_longest
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

import numpy as np

from activecall._native.ring import DEFAULT_CAPACITY, KIND_AUDIO, KIND_CONTROL, KIND_TEXT, Ring
from activecall._native.silero import VadBatch
from activecall.media.recorder import repair_wav
from activecall.workers import control
from activecall.workers.worker import WorkerOptions, worker_main

__all__ = [
    "MediaTotals",
    "PoolFull",
    "PoolStats",
    "SessionRoute",
    "SessionSink",
    "WorkerPool",
    "WorkerStats",
]

log = logging.getLogger(__name__)

WATCHDOG_S = 0.5  # how often the pool looks for hung workers
TERMINATE_WAIT_S = 1.0  # after SIGTERM, before SIGKILL, when stopping
MAX_BACKOFF_S = 10.0  # longest wait before re-forking a worker that keeps dying at start

# Heartbeat counters (camelCase, since the worker started) that the pool carries over restarts.
_CARRIED = {
    "frames_in": "framesIn",
    "frames_out": "framesOut",
    "dropped_audio_out": "droppedAudio",
    "session_errors": "sessionErrors",
    "late_ticks": "lateTicks",
    "skipped_ticks": "skippedTicks",
    "vad_calls": "vadCalls",
    "vad_chunks": "vadChunks",
}


class SessionSink(Protocol):
    """Where the pool delivers one session's outbound records (on the supervisor's loop)."""

    def on_text(self, data: bytes) -> None:
        """An event the session emitted (JSON text)."""
        ...

    def on_audio(self, data: bytes) -> None:
        """An audio frame the session emitted."""
        ...

    def on_ended(self) -> None:
        """The session is over and everything it emitted was delivered."""
        ...

    def on_worker_lost(self) -> None:
        """The session's worker died: nothing more will come for it."""
        ...


class PoolFull(Exception):
    """``open_session``: no worker has a free slot, or the pool is not running."""


class SessionRoute:
    """The supervisor's way into one session on its worker. Sends after the end are ignored."""

    __slots__ = ("_live", "_worker", "files", "session_id", "sink", "slot")

    def __init__(self, worker: _Worker, slot: int, session_id: str, sink: SessionSink) -> None:
        self._worker = worker
        self._live = True
        self.files: list[tuple[str, str]] = []
        """(kind, path) of the files the session writes, as its worker announced them."""
        self.slot = slot
        self.session_id = session_id
        self.sink = sink

    @property
    def worker(self) -> int:
        """Index of the worker that runs the session."""
        return self._worker.index

    @property
    def live(self) -> bool:
        """True until the session ended or its worker was lost."""
        return self._live

    def send_text(self, data: bytes) -> None:
        """Forward a text frame (a command); never dropped."""
        if self._live:
            self._worker.inbound.send(self.slot, KIND_TEXT, data)

    def send_audio(self, data: bytes) -> bool:
        """Forward an audio frame; ``False`` when dropped (the ring is full; counted)."""
        return self._live and self._worker.inbound.send(self.slot, KIND_AUDIO, data)

    def close(self, reason: str = "caller") -> None:
        """The client went away; the session ends itself and the sink gets ``on_ended``."""
        if self._live:
            self._worker.control(self.slot, control.encode(control.OP_CLOSE, reason=reason))

    def kill(self) -> None:
        """End the call from the server side (``GET /kill/{id}``)."""
        if self._live:
            self._worker.control(self.slot, control.encode(control.OP_KILL))


@dataclass(frozen=True, slots=True)
class MediaTotals:
    """RTP and WebRTC counters of workers' calls (:mod:`activecall.workers.media_stats`).

    ``counters`` and ``histograms`` (name → per-bucket counts, +Inf last, and the sum) only
    grow: they are carried over worker restarts. ``live`` is about the calls up now.
    """

    counters: Mapping[str, int] = field(default_factory=dict)
    histograms: Mapping[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)
    live: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_heartbeat(cls, media: Any) -> MediaTotals:
        """The ``media`` field of a worker heartbeat (anything malformed reads as nothing)."""
        if not isinstance(media, dict):
            return cls()
        counters = _numbers(media.get("totals"), int)
        live = _numbers(media.get("live"), float)
        histograms: dict[str, tuple[tuple[int, ...], float]] = {}
        hist = media.get("hist")
        for name, value in hist.items() if isinstance(hist, dict) else ():
            counts = value.get("counts") if isinstance(value, dict) else None
            total = value.get("sum") if isinstance(value, dict) else None
            if isinstance(counts, list) and all(isinstance(c, int) for c in counts):
                sum_ = float(total) if isinstance(total, int | float) else 0.0
                histograms[str(name)] = (tuple(counts), sum_)
        return cls(counters, histograms, live)

    @classmethod
    def combine(cls, parts: Iterable[MediaTotals], *, live: bool = True) -> MediaTotals:
        """Sums of ``parts`` (live call counts summed, live maxima the largest)."""
        counters: dict[str, int] = {}
        histograms: dict[str, tuple[tuple[int, ...], float]] = {}
        gauges: dict[str, float] = {}
        for part in parts:
            for name, value in part.counters.items():
                counters[name] = counters.get(name, 0) + value
            for name, (counts, sum_) in part.histograms.items():
                old_counts, old_sum = histograms.get(name, ((), 0.0))
                merged = tuple(a + b for a, b in zip_longest(old_counts, counts, fillvalue=0))
                histograms[name] = (merged, old_sum + sum_)
            for name, gauge in part.live.items() if live else ():
                if name in _LIVE_MAXIMA:
                    gauges[name] = max(gauges.get(name, 0.0), gauge)
                else:
                    gauges[name] = gauges.get(name, 0.0) + gauge
        return cls(counters, histograms, gauges)


_LIVE_MAXIMA = frozenset(("jitterMaxMs", "remoteLossMax"))  # the other live gauges add up


def _numbers(value: Any, kind: type[int] | type[float]) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): kind(v)
        for k, v in value.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerStats:
    """One worker index (its current process, counters carried over its restarts)."""

    index: int
    cpu: int | None
    pid: int | None
    ready: bool
    sessions: int
    restarts: int
    frames_in: int
    frames_out: int
    dropped_audio_in: int
    """Audio the supervisor dropped because the worker's inbound ring was full."""
    dropped_audio_out: int
    """Audio the worker dropped because its outbound ring was full."""
    session_errors: int
    late_ticks: int
    skipped_ticks: int
    vad_calls: int
    """Batched VAD calls (at most one per tick, more only while a session catches up)."""
    vad_chunks: int
    """Chunks those calls evaluated."""
    vad_us_last: int
    vad_us_avg: int
    """VAD time per tick over the last heartbeat interval (all ticks, with a batch or not)."""
    lag_us_p99: int
    lag_us_max: int
    heartbeat_age_s: float | None
    media: MediaTotals = field(default_factory=MediaTotals)
    """RTP/WebRTC counters of the worker's calls, carried over its restarts."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Every worker's stats, and totals."""

    workers: tuple[WorkerStats, ...]

    @property
    def ready_workers(self) -> int:
        """Workers that are up and heartbeating."""
        return sum(w.ready for w in self.workers)

    @property
    def sessions(self) -> int:
        """Live sessions on all workers."""
        return sum(w.sessions for w in self.workers)

    @property
    def restarts(self) -> int:
        """Workers replaced since the pool started."""
        return sum(w.restarts for w in self.workers)

    @property
    def frames_in(self) -> int:
        """Audio frames the workers received."""
        return sum(w.frames_in for w in self.workers)

    @property
    def frames_out(self) -> int:
        """Audio frames the workers emitted."""
        return sum(w.frames_out for w in self.workers)

    @property
    def dropped_audio_in(self) -> int:
        """Audio frames dropped on the way to the workers."""
        return sum(w.dropped_audio_in for w in self.workers)

    @property
    def dropped_audio_out(self) -> int:
        """Audio frames dropped on the way back."""
        return sum(w.dropped_audio_out for w in self.workers)

    @property
    def media(self) -> MediaTotals:
        """RTP/WebRTC counters over every worker."""
        return MediaTotals.combine(w.media for w in self.workers)


class _Worker:
    """One worker index: its CPU, the process currently serving it and that process's rings."""

    __slots__ = (
        "carried", "carried_media", "cpu", "exited", "free", "heartbeat", "inbound", "index",
        "killed", "last_heard_ns", "outbound", "process", "quick_deaths", "ready", "ready_future",
        "respawn", "restarts", "routes",
    )  # fmt: skip

    def __init__(self, index: int, cpu: int | None) -> None:
        self.index = index
        self.cpu = cpu
        self.process: BaseProcess | None = None
        self.inbound: Ring
        self.outbound: Ring
        self.routes: dict[int, SessionRoute] = {}
        self.free: list[int] = []
        self.ready = False
        self.ready_future: asyncio.Future[None] | None = None
        self.exited: asyncio.Future[None] | None = None
        self.killed = False
        self.heartbeat: dict[str, Any] = {}
        self.last_heard_ns = 0
        self.restarts = 0
        self.quick_deaths = 0
        self.respawn: asyncio.TimerHandle | None = None
        self.carried = dict.fromkeys((*_CARRIED, "dropped_audio_in"), 0)
        self.carried_media = MediaTotals()

    def control(self, slot: int, payload: bytes) -> None:
        self.inbound.send(slot, KIND_CONTROL, payload)

    def counter(self, name: str) -> int:
        """A counter over every process this index had."""
        if name == "dropped_audio_in":
            live = self.inbound.dropped_audio if self.process is not None else 0
        else:
            live = int(self.heartbeat.get(_CARRIED[name], 0))
        return self.carried[name] + live

    def media(self) -> MediaTotals:
        """Media counters over every process this index had, live gauges of the current one."""
        live = MediaTotals.from_heartbeat(self.heartbeat.get("media"))
        return MediaTotals.combine((self.carried_media, live))


class WorkerPool:
    """``size`` worker processes, each pinned to one CPU, and the sessions routed to them."""

    def __init__(
        self,
        size: int,
        options: WorkerOptions,
        *,
        ring_capacity: int = DEFAULT_CAPACITY,
        cpus: list[int] | None = None,
        hang_timeout: float = 3.0,
        start_timeout: float = 60.0,
        preload: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, not {size}")
        allowed = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        if not allowed:
            raise ValueError("no CPU to run workers on")
        self.size = size
        self.options = options
        self.ring_capacity = ring_capacity
        self.hang_timeout = hang_timeout
        self.start_timeout = start_timeout
        self.preload = preload
        self._workers = [_Worker(i, allowed[i % len(allowed)]) for i in range(size)]
        self._context = multiprocessing.get_context("fork")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._state = "new"  # -> running -> stopping -> stopped

    # --- lifetime --------------------------------------------------------------------------

    def start(self) -> None:
        """Fork the workers; call on the supervisor's running loop."""
        if self._state != "new":
            raise RuntimeError(f"pool is {self._state}")
        self._loop = asyncio.get_running_loop()
        if self.preload:
            _preload_kernels()
        self._state = "running"
        for worker in self._workers:
            self._fork(worker)
        self._watchdog = self._loop.call_later(WATCHDOG_S, self._check_hung)

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every worker sent its first heartbeat; ``TimeoutError`` after ``timeout``."""
        if self._state != "running":
            raise RuntimeError(f"pool is {self._state}")
        async with asyncio.timeout(timeout):
            while not all(w.ready for w in self._workers):
                pending = [w.ready_future for w in self._workers if not w.ready and w.ready_future]
                if pending:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                else:  # a worker waits for its re-fork (back-off)
                    await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 5.0) -> None:
        """Send ``stop``, wait up to ``timeout`` s, then terminate stragglers; unlink all rings.

        Sessions still live when a worker exits get ``on_worker_lost``.
        """
        if self._state == "stopping":  # a second caller waits for the first
            assert self._stopped is not None
            await asyncio.shield(self._stopped)
            return
        if self._state != "running":
            self._state = "stopped"
            return
        self._state = "stopping"
        assert self._loop is not None
        self._stopped = self._loop.create_future()
        try:
            await self._stop_workers(timeout)
        finally:
            self._state = "stopped"
            self._stopped.set_result(None)

    async def _stop_workers(self, timeout: float) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        grace_ms = int(min(self.options.stop_grace_s, timeout / 2) * 1000)
        for worker in self._workers:
            if worker.respawn is not None:
                worker.respawn.cancel()
                worker.respawn = None
            if worker.process is not None:
                worker.control(
                    control.WORKER_SLOT, control.encode(control.OP_STOP, graceMs=grace_ms)
                )
        exits = [w.exited for w in self._workers if w.process is not None and w.exited]
        if not exits:
            return
        _, late = await asyncio.wait(exits, timeout=timeout)
        if late:
            self._signal_all(signal.SIGTERM)
            _, late = await asyncio.wait(late, timeout=TERMINATE_WAIT_S)
        if late:
            self._signal_all(signal.SIGKILL)
            await asyncio.wait(late)

    def _signal_all(self, sig: signal.Signals) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.pid is not None:
                log.warning("worker %d did not stop in time: %s", worker.index, sig.name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, sig)

    # --- sessions --------------------------------------------------------------------------

    def open_session(
        self, session_id: str, call_type: str, params: Mapping[str, Any], sink: SessionSink
    ) -> SessionRoute:
        """Start a session on the least-loaded worker; raises :class:`PoolFull`."""
        record = control.encode(
            control.OP_OPEN,
            id=session_id,
            callType=call_type,
            params=dict(params),
            ts=int(time.time() * 1000),
        )
        if self._state != "running":
            raise PoolFull(f"pool is {self._state}")
        open_ = [w for w in self._workers if w.process is not None and not w.killed and w.free]
        # A worker still starting queues the session in its ring; prefer ones already up.
        candidates = [w for w in open_ if w.ready] or open_
        if not candidates:
            raise PoolFull("every worker is full")
        worker = min(candidates, key=lambda w: (len(w.routes), w.index))
        slot = heapq.heappop(worker.free)
        route = SessionRoute(worker, slot, session_id, sink)
        worker.routes[slot] = route
        worker.control(slot, record)
        return route

    # --- stats -----------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot for /metrics and /health."""
        now = time.monotonic_ns()
        out = []
        for w in self._workers:
            hb = w.heartbeat
            vad = hb.get("vadUs", {})
            lag = hb.get("lagUs", {})
            counters = {name: w.counter(name) for name in w.carried}
            out.append(
                WorkerStats(
                    index=w.index,
                    cpu=w.cpu,
                    pid=w.process.pid if w.process is not None else None,
                    ready=w.ready,
                    sessions=len(w.routes),
                    restarts=w.restarts,
                    vad_us_last=int(vad.get("last", 0)),
                    vad_us_avg=int(vad.get("avg", 0)),
                    lag_us_p99=int(lag.get("p99", 0)),
                    lag_us_max=int(lag.get("max", 0)),
                    heartbeat_age_s=(now - w.last_heard_ns) / 1e9 if w.ready else None,
                    media=w.media(),
                    **counters,
                )
            )
        return PoolStats(tuple(out))

    def worker_pids(self) -> list[int | None]:
        """The pid serving each worker index (``None`` while it is being re-forked)."""
        return [w.process.pid if w.process is not None else None for w in self._workers]

    # --- processes -------------------------------------------------------------------------

    def _fork(self, worker: _Worker) -> None:
        assert self._loop is not None
        loop = self._loop
        inbound = Ring.create(self.ring_capacity)
        try:
            outbound = Ring.create(self.ring_capacity)
        except BaseException:
            inbound.close()
            inbound.unlink()
            raise
        # The child closes its copies of the other workers' rings: it must not keep their
        # memory mapped after they die.
        others = [
            ring
            for w in self._workers
            if w is not worker and w.process is not None
            for ring in (w.inbound, w.outbound)
        ]
        process = self._context.Process(
            target=_run_worker,
            args=(worker.index, worker.cpu, inbound, outbound, self.options, others),
            name=f"activecall-worker-{worker.index}",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            for ring in (inbound, outbound):
                ring.close()
                ring.unlink()
            raise
        worker.process = process
        worker.inbound = inbound
        worker.outbound = outbound
        worker.free = list(range(1, self.options.max_sessions + 1))
        worker.ready = False
        worker.killed = False
        worker.heartbeat = {}
        worker.last_heard_ns = time.monotonic_ns()
        worker.ready_future = loop.create_future()
        worker.exited = loop.create_future()
        loop.add_reader(outbound.fileno(), self._on_outbound, worker)
        loop.add_reader(inbound.space_fileno(), inbound.flush_pending)
        loop.add_reader(process.sentinel, self._on_exit, worker, process)
        log.info("worker %d started: pid %s on cpu %s", worker.index, process.pid, worker.cpu)

    def _on_outbound(self, worker: _Worker) -> None:
        try:
            records = worker.outbound.pop_all()
        except RuntimeError:  # a corrupt record: the worker is broken
            log.exception("worker %d wrote a corrupt record; killing it", worker.index)
            self._kill(worker)
            return
        for slot, kind, payload in records:
            if kind == KIND_CONTROL:
                self._on_control(worker, slot, payload)
                continue
            route = worker.routes.get(slot)
            if route is None:
                continue
            try:
                if kind == KIND_AUDIO:
                    route.sink.on_audio(payload)
                else:
                    route.sink.on_text(payload)
            except Exception:
                log.exception("sink of session %s failed", route.session_id)

    def _on_control(self, worker: _Worker, slot: int, payload: bytes) -> None:
        try:
            record = control.decode(payload)
        except ValueError:
            log.error("worker %d: bad control record %r", worker.index, payload[:200])
            return
        op = record["op"]
        if op == control.OP_HEARTBEAT:
            worker.heartbeat = record
            worker.last_heard_ns = time.monotonic_ns()
            if not worker.ready:
                worker.ready = True
                worker.quick_deaths = 0
                if worker.ready_future is not None and not worker.ready_future.done():
                    worker.ready_future.set_result(None)
        elif op == control.OP_ENDED:
            route = worker.routes.get(slot)
            if route is None or route.session_id != record.get("id"):
                log.error("worker %d: ended for unknown slot %d (%r)", worker.index, slot, record)
                return
            if "error" in record:
                log.warning("session %s ended by its worker: %s", route.session_id, record["error"])
            del worker.routes[slot]
            heapq.heappush(worker.free, slot)
            route._live = False
            try:
                route.sink.on_ended()
            except Exception:
                log.exception("sink of session %s failed", route.session_id)
        elif op == control.OP_FILE:
            route = worker.routes.get(slot)
            if route is not None and isinstance(record.get("path"), str):
                route.files.append((str(record.get("kind")), record["path"]))
        else:
            log.warning("worker %d: ignoring unknown control op %r", worker.index, op)

    def _on_exit(self, worker: _Worker, process: BaseProcess) -> None:
        """The worker's process is gone (sentinel readable): deliver, detach, report, replace."""
        assert self._loop is not None
        loop = self._loop
        worker.killed = True  # no new session goes there, even from a sink called below
        loop.remove_reader(process.sentinel)
        loop.remove_reader(worker.outbound.fileno())
        loop.remove_reader(worker.inbound.space_fileno())
        self._on_outbound(worker)  # what it emitted before it died is still delivered
        process.join()  # reaps it; only now, so that until here its pid could not be reused
        clean = self._state != "running" and process.exitcode == 0
        log.log(
            logging.INFO if clean else logging.ERROR,
            "worker %d (pid %s) exited with %s",
            worker.index,
            process.pid,
            process.exitcode,
        )
        for name in worker.carried:
            worker.carried[name] = worker.counter(name)
        # Only what only grows is carried; the dead process's live gauges are gone with it.
        worker.carried_media = MediaTotals.combine((worker.media(),), live=False)
        for ring in (worker.inbound, worker.outbound):
            ring.close()
            ring.unlink()
        process.close()
        was_ready = worker.ready
        worker.process = None
        worker.heartbeat = {}
        worker.ready = False
        if worker.ready_future is not None:
            worker.ready_future.cancel()
        if worker.exited is not None:
            worker.exited.set_result(None)
        lost = list(worker.routes.values())
        worker.routes.clear()
        for route in lost:
            route._live = False
            _repair_files(route)  # before the client hears of the end, so the WAV is valid then
        if self._state == "running":
            self._schedule_respawn(worker, was_ready)
        for route in lost:
            try:
                route.sink.on_worker_lost()
            except Exception:
                log.exception("sink of session %s failed", route.session_id)

    def _schedule_respawn(self, worker: _Worker, was_ready: bool) -> None:
        assert self._loop is not None
        if was_ready:
            worker.quick_deaths = 0
            delay = 0.0
        else:  # died before it was ever up: back off instead of fork-looping
            worker.quick_deaths += 1
            delay = min(0.1 * 2 ** (worker.quick_deaths - 1), MAX_BACKOFF_S)
        worker.respawn = self._loop.call_later(delay, self._respawn, worker)

    def _respawn(self, worker: _Worker) -> None:
        worker.respawn = None
        if self._state != "running":
            return
        worker.restarts += 1
        try:
            self._fork(worker)
        except Exception:
            log.exception("cannot fork worker %d", worker.index)
            self._schedule_respawn(worker, was_ready=False)

    def _kill(self, worker: _Worker) -> None:
        if worker.process is None or worker.killed or worker.process.pid is None:
            return
        worker.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGKILL)

    def _check_hung(self) -> None:
        assert self._loop is not None
        now = time.monotonic_ns()
        for worker in self._workers:
            if worker.process is None or worker.killed:
                continue
            # Heartbeats may be waiting in the ring if this loop itself was busy: count them.
            self._on_outbound(worker)
            limit = self.hang_timeout if worker.ready else self.start_timeout
            if now - worker.last_heard_ns > limit * 1e9:
                log.error("worker %d silent for %.1f s: killing it", worker.index, limit)
                self._kill(worker)
        self._watchdog = self._loop.call_later(WATCHDOG_S, self._check_hung)


def _run_worker(
    index: int,
    cpu: int | None,
    inbound: Ring,
    outbound: Ring,
    options: WorkerOptions,
    others: list[Ring],
) -> None:
    """The forked child's entry: drop the parent's handles on other workers, then serve."""
    for ring in others:
        ring.close()
    worker_main(index, cpu, inbound.spec, outbound.spec, options)


def _preload_kernels() -> None:
    """Load the VAD kernels (Numba's disk cache, or a compile) in this process, once."""
    VadBatch(1).process(np.zeros(1, np.int64), np.zeros((1, 512), np.float32))


def _repair_files(route: SessionRoute) -> None:
    """Make a dead worker's recordings valid WAVs again (at most the last second is lost)."""
    for kind, path in route.files:
        if kind != "recorder":
            continue
        try:
            frames = repair_wav(path)
        except (OSError, ValueError) as exc:
            log.error("session %s: cannot repair recording %s: %s", route.session_id, path, exc)
        else:
            log.warning(
                "session %s: repaired recording %s (%d frames)", route.session_id, path, frames
            )
