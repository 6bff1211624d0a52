"""The worker process: one event loop that owns whole sessions and ticks them every 20 ms.

:func:`worker_main` runs in a child the supervisor forked (:mod:`activecall.supervisor.pool`):
it pins itself to its CPU, attaches its two rings and runs a :class:`Worker` on a uvloop loop
until the supervisor sends ``stop``. The worker hands each inbound record to the session in the
record's slot (see :mod:`activecall.workers.control`) and writes what sessions emit to the
outbound ring. Sessions come from ``WorkerOptions.session_factory``.

Tick contract, every 20 ms (:mod:`activecall.workers.tick`):

1. ``session.vad_chunks()`` on every session: the 512-sample 16 kHz chunks (int16, or float32
   in [-1, 1]) that became ready since the last tick, oldest first.
2. One ``VadBatch.process(slots, chunks)`` call for all of them (a session's stream state lives
   in the batch at its slot). A chunk every 32 ms against a tick every 20 ms means at most one
   chunk per session per tick in the steady state. A session that hands over several (a
   burst) has them evaluated in further rounds, one call per round, each round taking the next
   chunk of every session that has one, at most ``MAX_VAD_ROUNDS`` rounds per tick; the worker
   keeps the rest for the next tick.
3. ``session.on_vad(probabilities)`` on each session that had chunks evaluated: their
   probabilities, in the order the chunks were handed over.

Steps 1-3 run after ``session.tick(now_ms)`` on every session (agent audio out, timers, and
for RTP and WebRTC calls the caller's frame of this tick), so the chunks a tick produced are
evaluated in the same tick; a timer sees speech one tick (20 ms) after it was evaluated.

Failures stay local: a session whose handler raises is logged and forgotten, and the worker
reports it ``ended`` (with ``error``) in its place; no other session notices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from activecall._native.ring import KIND_AUDIO, KIND_CONTROL, KIND_TEXT, Ring, RingSpec
from activecall._native.silero import INT16_SCALE, VadBatch
from activecall.workers import control
from activecall.workers.media_stats import MediaSampler, MediaTally
from activecall.workers.tick import TICK_NS, IntervalStats, TickSchedule

__all__ = [
    "HEARTBEAT_MS",
    "MAX_VAD_ROUNDS",
    "MEDIA_SAMPLES_PER_HEARTBEAT",
    "VAD_CHUNK",
    "SessionContext",
    "VadChunk",
    "Worker",
    "WorkerOptions",
    "WorkerSession",
    "worker_main",
]

log = logging.getLogger(__name__)

VAD_CHUNK = 512
"""Samples per VAD chunk: 32 ms at 16 kHz."""
MAX_VAD_ROUNDS = 4
"""Batched VAD calls per tick at most: a bursting session catches up at 4 chunks per tick."""
HEARTBEAT_MS = 500
MEDIA_SAMPLES_PER_HEARTBEAT = 64
"""Call legs whose media counters a heartbeat refreshes at most (about 1 ms of the loop): with
more calls each is refreshed every few heartbeats, and always when it ends."""
FLUSH_TIMEOUT_S = 2.0  # how long a stopping worker waits for the supervisor to take its records

VadChunk: TypeAlias = npt.NDArray[np.float32] | npt.NDArray[np.int16]


class WorkerSession(Protocol):
    """One call inside a worker. Handlers run on the worker's loop and must not block."""

    def on_text(self, data: bytes) -> None:
        """A text record: a command, as the client sent it."""
        ...

    def on_audio(self, data: bytes) -> None:
        """An audio record: one binary frame in the call's codec."""
        ...

    def on_close(self, reason: str) -> None:
        """The client went away (``caller``) or the worker stops (``system``): wrap up and
        call ``ctx.end()``."""
        ...

    def on_kill(self) -> None:
        """The server ends the call (``GET /kill/{id}``): hang up and call ``ctx.end()``."""
        ...

    def vad_chunks(self) -> Sequence[VadChunk]:
        """Take the 512-sample chunks ready for this tick's batched VAD call, oldest first.

        The worker may keep a chunk for a later tick: do not modify it once handed over.
        """
        ...

    def on_vad(self, probabilities: npt.NDArray[np.float32]) -> None:
        """The speech probabilities of chunks :meth:`vad_chunks` handed out, in order."""
        ...

    def tick(self, now_ms: int) -> None:
        """The 20 ms tick; ``now_ms`` is its deadline on :meth:`SessionContext.now_ms`'s clock."""
        ...


class SessionContext:
    """What a session gets from its worker: identity, output, the loop, a thread pool, a clock."""

    __slots__ = (
        "_ended", "_session", "_vad_backlog", "_worker", "call_type", "executor", "loop",
        "params", "session_id", "slot", "worker_index",
    )  # fmt: skip

    _session: WorkerSession  # set right after the factory returns

    def __init__(
        self, worker: Worker, session_id: str, slot: int, call_type: str, params: dict[str, Any]
    ) -> None:
        self.session_id = session_id
        self.slot = slot
        self.call_type = call_type
        self.params = params
        self.worker_index = worker.index
        """Which worker runs the session (a SIP call binds RTP ports in this worker's share)."""
        self.loop: asyncio.AbstractEventLoop = worker.loop
        self.executor: Executor = worker.executor
        """For blocking work (file decoding): ``loop.run_in_executor(ctx.executor, ...)``."""
        self._worker = worker
        self._ended = False
        self._vad_backlog: list[VadChunk] = []  # handed over, not evaluated yet (a burst)

    @property
    def ended(self) -> bool:
        """True once the session ended; what it emits after that is dropped."""
        return self._ended

    def emit_text(self, data: bytes) -> None:
        """Send an event (JSON) to the client; never dropped."""
        if not self._ended:
            self._worker.emit_text(self.slot, data)

    def emit_audio(self, data: bytes) -> None:
        """Send an audio frame; dropped (and counted) when the ring is full."""
        if not self._ended:
            self._worker.emit_audio(self.slot, data)

    def end(self) -> None:
        """The session is over: the supervisor gets ``ended`` after everything emitted so far,
        and the worker forgets the session. Idempotent."""
        self._worker.end(self)

    def note_file(self, kind: str, path: str) -> None:
        """Tell the supervisor about a file the session writes (it repairs it if we die)."""
        if not self._ended:
            self._worker.control_out(
                self.slot, control.encode(control.OP_FILE, kind=kind, path=path)
            )

    def now_ms(self) -> int:
        """Epoch milliseconds that never jump (the monotonic clock, anchored when the worker
        started): the clock of ``tick(now_ms)``."""
        return self._worker.now_ms()

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``fn(*args)`` on the worker's thread pool (file decoding, ...)."""
        return self.executor.submit(fn, *args)

    def watch_media(self, sampler: MediaSampler) -> None:
        """Count this call's media in the worker's totals (``/metrics``) until it ends;
        ``sampler`` returns the leg's cumulative counters (one call per leg)."""
        if not self._ended:
            self._worker.media.watch(self, sampler)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker's loop; safe from a pool thread."""
        self.loop.call_soon_threadsafe(fn)

    def start_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task on the worker's loop (provider streams)."""
        return self.loop.create_task(coro)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerOptions:
    """How every worker of a pool runs. Workers are forked, so any callable will do."""

    session_factory: Callable[[SessionContext], WorkerSession]
    max_sessions: int = 1024
    """Sessions per worker: slots 1..max_sessions (slot 0 is the worker's own)."""
    executor_threads: int = 2
    stop_grace_s: float = 2.0
    """After ``stop``, how long sessions get to end themselves before the worker ends them."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 65535:
            raise ValueError(f"max_sessions must be in [1, 65535], not {self.max_sessions}")
        if self.executor_threads < 1:
            raise ValueError("executor_threads must be at least 1")
        if self.stop_grace_s < 0:
            raise ValueError("stop_grace_s must not be negative")


class Worker:
    """The sessions of one worker process and the loop work that drives them."""

    def __init__(
        self,
        index: int,
        inbound: Ring,
        outbound: Ring,
        options: WorkerOptions,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
    ) -> None:
        self.index = index
        self.loop = loop
        self.executor = executor
        self._inbound = inbound
        self._outbound = outbound
        self._options = options
        self._sessions: dict[int, SessionContext] = {}
        capacity = options.max_sessions + 1  # the batch is indexed by slot; slot 0 stays idle
        self._vad = VadBatch(capacity)
        self._vad_slots = np.zeros(capacity, np.int64)
        self._vad_chunks = np.zeros((capacity, VAD_CHUNK), np.float32)
        # The first call loads the compiled kernel (from the parent, or Numba's disk cache):
        # pay it now, before the first heartbeat says the worker is ready.
        self._vad.process(self._vad_slots[:1], self._vad_chunks[:1])
        self._vad.reset_slot(0)
        self._schedule = TickSchedule(time.monotonic_ns())
        self._epoch_offset_ns = time.time_ns() - time.monotonic_ns()
        self._interval = IntervalStats()
        self._next_heartbeat_ns = 0
        self._timer: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._parent_pid = os.getppid()
        self._stopping = False
        self._drain = True
        self._done: asyncio.Future[None] = loop.create_future()
        self.frames_in = 0
        self.frames_out = 0
        self.text_in = 0
        self.text_out = 0
        self.vad_calls = 0
        self.vad_chunks = 0
        self.session_errors = 0
        self.media = MediaTally()
        """RTP and WebRTC counters over this worker's calls (the heartbeat's ``media``)."""

    @property
    def sessions(self) -> int:
        """Live sessions."""
        return len(self._sessions)

    async def run(self) -> None:
        """Serve until ``stop`` (or the supervisor's death), then flush and detach."""
        self.start()
        try:
            await self._done
            deadline = time.monotonic() + FLUSH_TIMEOUT_S
            while self._drain and self._outbound.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # space_fileno's reader flushes meanwhile
        finally:
            self.close()

    def start(self) -> None:
        """Listen on the rings, send the first heartbeat (ready) and start ticking."""
        self.loop.add_reader(self._inbound.fileno(), self._on_inbound)
        self.loop.add_reader(self._outbound.space_fileno(), self._outbound.flush_pending)
        now = time.monotonic_ns()
        self._schedule = TickSchedule(now + TICK_NS)
        self._heartbeat(now)
        self._arm(now)

    def close(self) -> None:
        """Stop the tick and the readers (the rings stay open)."""
        for handle in (self._timer, self._grace):
            if handle is not None:
                handle.cancel()
        self._timer = self._grace = None
        if not self._inbound.closed:
            self.loop.remove_reader(self._inbound.fileno())
        if not self._outbound.closed:
            self.loop.remove_reader(self._outbound.space_fileno())

    # --- output (through SessionContext) ------------------------------------------------------

    def emit_text(self, slot: int, data: bytes) -> None:
        """Text record to the supervisor."""
        self.text_out += 1
        self._outbound.send(slot, KIND_TEXT, data)

    def emit_audio(self, slot: int, data: bytes) -> None:
        """Audio record to the supervisor; dropped (the ring counts it) when the ring is full."""
        if self._outbound.send(slot, KIND_AUDIO, data):
            self.frames_out += 1

    def control_out(self, slot: int, payload: bytes) -> None:
        """Control record to the supervisor; never dropped."""
        self._outbound.send(slot, KIND_CONTROL, payload)

    def now_ms(self) -> int:
        """The sessions' clock: see :meth:`SessionContext.now_ms`."""
        return (time.monotonic_ns() + self._epoch_offset_ns) // 1_000_000

    def end(self, ctx: SessionContext, error: str | None = None) -> None:
        """Forget the session and report it ``ended``."""
        if ctx._ended:
            return
        ctx._ended = True
        if self._sessions.get(ctx.slot) is ctx:
            del self._sessions[ctx.slot]
        self.media.finish(ctx)  # before "ended": the next heartbeat has the call's last counts
        self._send_ended(ctx.slot, ctx.session_id, error)
        if self._stopping and not self._sessions:
            self.loop.call_soon(self._finish)

    def _send_ended(self, slot: int, session_id: str, error: str | None) -> None:
        fields: dict[str, Any] = {"id": session_id}
        if error is not None:
            fields["error"] = error
        self._outbound.send(slot, KIND_CONTROL, control.encode(control.OP_ENDED, **fields))

    def _fail(self, ctx: SessionContext, exc: Exception) -> None:
        log.error(
            "worker %d: session %s failed, ending it", self.index, ctx.session_id, exc_info=exc
        )
        self.session_errors += 1
        self.end(ctx, f"{type(exc).__name__}: {exc}"[:500])

    # --- input -----------------------------------------------------------------------------

    def _on_inbound(self) -> None:
        for slot, kind, payload in self._inbound.pop_all():
            if kind == KIND_CONTROL:
                self._on_control(slot, payload)
                continue
            ctx = self._sessions.get(slot)
            if kind == KIND_AUDIO:
                self.frames_in += 1
            else:
                self.text_in += 1
            if ctx is None:
                continue  # its session already ended; the supervisor learns from `ended`
            try:
                if kind == KIND_AUDIO:
                    ctx._session.on_audio(payload)
                else:
                    ctx._session.on_text(payload)
            except Exception as exc:
                self._fail(ctx, exc)

    def _on_control(self, slot: int, payload: bytes) -> None:
        try:
            record = control.decode(payload)
        except ValueError:
            log.error("worker %d: bad control record %r", self.index, payload[:200])
            return
        op = record["op"]
        if op == control.OP_OPEN:
            self._open(slot, record)
        elif op in (control.OP_CLOSE, control.OP_KILL):
            ctx = self._sessions.get(slot)
            if ctx is None:
                return
            try:
                if op == control.OP_CLOSE:
                    ctx._session.on_close(str(record.get("reason", "caller")))
                else:
                    ctx._session.on_kill()
            except Exception as exc:
                self._fail(ctx, exc)
        elif op == control.OP_SIP:
            # The SIP side of a call (supervisor's signalling) for a session that takes it.
            ctx = self._sessions.get(slot)
            handler = getattr(ctx._session, "on_control", None) if ctx is not None else None
            if ctx is None or handler is None:
                return
            try:
                handler(record)
            except Exception as exc:
                self._fail(ctx, exc)
        elif op == control.OP_STOP:
            grace_ms = record.get("graceMs")
            grace = grace_ms / 1000 if isinstance(grace_ms, int | float) else None
            self.stop(self._options.stop_grace_s if grace is None else grace)
        else:
            log.warning("worker %d: ignoring unknown control op %r", self.index, op)

    def _open(self, slot: int, record: dict[str, Any]) -> None:
        session_id = str(record.get("id", ""))
        if self._stopping or not 1 <= slot <= self._options.max_sessions or slot in self._sessions:
            why = "worker stopping" if self._stopping else f"slot {slot} unavailable"
            log.error("worker %d: cannot open %s: %s", self.index, session_id, why)
            self._send_ended(slot, session_id, why)
            return
        params = record.get("params")
        ctx = SessionContext(
            self,
            session_id,
            slot,
            str(record.get("callType", "")),
            params if isinstance(params, dict) else {},
        )
        self._vad.reset_slot(slot)
        try:
            ctx._session = self._options.session_factory(ctx)
        except Exception as exc:
            self._fail(ctx, exc)
            return
        if not ctx._ended:  # the factory may have ended it already
            self._sessions[slot] = ctx

    # --- tick ------------------------------------------------------------------------------

    def _arm(self, now_ns: int) -> None:
        # Deadlines are absolute (TickSchedule); the loop's clock only sets the wake-up.
        delay = max(0, self._schedule.next_ns - now_ns) / 1e9
        self._timer = self.loop.call_at(self.loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        try:
            for deadline in self._schedule.due(time.monotonic_ns()):
                self._tick(deadline, time.monotonic_ns() - deadline)
            now = time.monotonic_ns()
            if now >= self._next_heartbeat_ns:
                self._heartbeat(now)
        finally:
            self._arm(time.monotonic_ns())

    def _tick(self, deadline_ns: int, lag_ns: int) -> None:
        live = list(self._sessions.values())
        now_ms = (deadline_ns + self._epoch_offset_ns) // 1_000_000
        for ctx in live:
            if ctx._ended:
                continue
            try:
                ctx._session.tick(now_ms)
            except Exception as exc:
                self._fail(ctx, exc)
        # After the ticks: an RTP or WebRTC call decodes its caller's frame in its tick, and
        # its chunk is evaluated in this tick's batch instead of waiting 20 ms for the next.
        vad_ns = self._run_vad(live)
        self._interval.add_tick(lag_ns, vad_ns)

    def _run_vad(self, live: list[SessionContext]) -> int | None:
        """Evaluate the sessions' ready chunks in batched rounds; the time it took, if any."""
        waiting: list[SessionContext] = []
        for ctx in live:
            if ctx._ended:
                continue
            try:
                ctx._vad_backlog.extend(ctx._session.vad_chunks())
            except Exception as exc:
                self._fail(ctx, exc)
                continue
            if ctx._vad_backlog:
                waiting.append(ctx)
        if not waiting:
            return None
        start = time.perf_counter_ns()
        probs: dict[int, list[float]] = {ctx.slot: [] for ctx in waiting}
        for turn in range(MAX_VAD_ROUNDS):
            members: list[SessionContext] = []
            for ctx in waiting:
                if len(ctx._vad_backlog) > turn and not ctx._ended:
                    try:
                        self._stage(len(members), ctx.slot, ctx._vad_backlog[turn])
                    except Exception as exc:  # not a 512-sample int16/float32 array
                        self._fail(ctx, exc)
                        continue
                    members.append(ctx)
            if not members:
                break
            n = len(members)
            out = self._vad.process(self._vad_slots[:n], self._vad_chunks[:n]).tolist()
            self.vad_calls += 1
            self.vad_chunks += n
            for ctx, p in zip(members, out, strict=True):
                probs[ctx.slot].append(p)
        elapsed = time.perf_counter_ns() - start
        for ctx in waiting:
            if ctx._ended:
                continue
            done = probs[ctx.slot]
            del ctx._vad_backlog[: len(done)]
            try:
                ctx._session.on_vad(np.array(done, np.float32))
            except Exception as exc:
                self._fail(ctx, exc)
        return elapsed

    def _stage(self, row: int, slot: int, chunk: VadChunk) -> None:
        """Copy one chunk into the batch, as float32 scaled the way the kernel scales int16."""
        if chunk.shape != (VAD_CHUNK,):
            raise ValueError(f"VAD chunk must have shape ({VAD_CHUNK},), not {chunk.shape}")
        if chunk.dtype == np.int16:
            np.multiply(chunk, INT16_SCALE, out=self._vad_chunks[row])  # exact: 2**-15
        elif chunk.dtype == np.float32:
            self._vad_chunks[row] = chunk
        else:
            raise TypeError(f"VAD chunk must be int16 or float32, not {chunk.dtype}")
        self._vad_slots[row] = slot

    def _heartbeat(self, now_ns: int) -> None:
        if os.getppid() != self._parent_pid:
            self._abandon()
            return
        self._next_heartbeat_ns += HEARTBEAT_MS * 1_000_000
        if self._next_heartbeat_ns <= now_ns:
            self._next_heartbeat_ns = now_ns + HEARTBEAT_MS * 1_000_000
        schedule = self._schedule
        record = control.encode(
            control.OP_HEARTBEAT,
            pid=os.getpid(),
            sessions=len(self._sessions),
            ticks=schedule.ticks,
            lateTicks=schedule.late,
            skippedTicks=schedule.skipped,
            vadCalls=self.vad_calls,
            vadChunks=self.vad_chunks,
            framesIn=self.frames_in,
            framesOut=self.frames_out,
            droppedAudio=self._outbound.dropped_audio,
            textIn=self.text_in,
            textOut=self.text_out,
            sessionErrors=self.session_errors,
            media=self.media.snapshot(MEDIA_SAMPLES_PER_HEARTBEAT),
            **self._interval.take(),
        )
        self._outbound.send(control.WORKER_SLOT, KIND_CONTROL, record)

    # --- shutdown --------------------------------------------------------------------------

    def stop(self, grace_s: float) -> None:
        """Close every session (``system``); end what is left after ``grace_s``, then exit."""
        if self._stopping:
            return
        self._stopping = True
        for ctx in list(self._sessions.values()):
            try:
                ctx._session.on_close("system")
            except Exception as exc:
                self._fail(ctx, exc)
        if self._sessions:
            self._grace = self.loop.call_later(grace_s, self._finish)
        else:
            self._finish()

    def _abandon(self) -> None:
        """The supervisor is gone: nobody reads our records, so end everything and exit."""
        log.error("worker %d: the supervisor died, exiting", self.index)
        self._stopping = True
        self._drain = False
        self._finish()

    def _finish(self) -> None:
        if self._done.done():
            return
        for ctx in list(self._sessions.values()):
            self.end(ctx, "worker stopped")
        self._done.set_result(None)


# --- process -----------------------------------------------------------------------------------


def worker_main(
    index: int, cpu: int | None, inbound: RingSpec, outbound: RingSpec, options: WorkerOptions
) -> None:
    """Run worker ``index`` in this (forked) process until the supervisor sends ``stop``."""
    _reset_signals()
    # For libraries loaded from here on (ours run one thread per worker, pinned to one CPU).
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["NUMBA_NUM_THREADS"] = "1"
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    _release_inherited_sockets()
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)
    executor = ThreadPoolExecutor(options.executor_threads, thread_name_prefix=f"worker{index}")
    rx = Ring.attach(inbound)
    tx = Ring.attach(outbound)
    try:
        worker = Worker(index, rx, tx, options, loop=loop, executor=executor)
        loop.run_until_complete(worker.run())
    finally:
        _cancel_tasks(loop)
        executor.shutdown(wait=False, cancel_futures=True)
        asyncio.set_event_loop(None)
        loop.close()
        rx.close()
        tx.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _reset_signals() -> None:
    """Undo the supervisor's signal setup, which fork copied.

    Its wake-up fd is the supervisor loop's socket: a signal to this process would otherwise
    wake the supervisor as if it had been signalled. SIGINT (a Ctrl-C reaches the whole process
    group) and SIGHUP are ignored: the supervisor drives shutdown.
    """
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if callable(signal.getsignal(sig)):
            signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _release_inherited_sockets() -> None:
    """Drop this process's copies of the supervisor's network sockets (listeners, clients).

    While a worker holds a copy, closing a client connection in the supervisor sends no FIN
    and a listening port outlives the supervisor. Each fd is pointed at /dev/null instead of
    closed, so a stale socket object that Python later frees closes /dev/null, not a new fd.
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd <= 2 or fd == devnull:
                continue
            try:
                if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                    continue
                probe = socket.socket(fileno=fd)
                family = probe.family
                probe.detach()
            except OSError:
                continue  # the listing's own fd, already closed
            if family in (socket.AF_INET, socket.AF_INET6):
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
