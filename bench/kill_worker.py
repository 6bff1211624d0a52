"""``kill -9`` of one worker in the middle of a 100-call run.

An ``activecall serve --workers 2`` node carries N real-time ``/call`` clients (the load
generator of :mod:`bench.load_ws`, in its own process, speech with pauses, VAD on). In the
middle of the run one worker gets SIGKILL. Measured:

* the dead worker's calls: time from the kill to their ``error`` and to their ``hangup``
  (target: both within 1 s);
* the other worker's calls: VAD segments expected / received, ``silence`` events equal to the
  reference VAD's, frames the client sent that the surviving worker did not count, ring drops
  (target: nothing lost);
* the replacement: time from the kill until ``GET /health`` counts two workers again, and until
  a new call is answered by the new worker (target: within 2 s). The probe call is the only
  session of the replacement worker, which takes it because assignment is least-loaded; the
  per-worker session gauge confirms it.

Run: ``.venv/bin/python -m bench.kill_worker [--calls 100] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import psutil

from bench._common import format_table, load_speech, write_results
from bench.load_ws import (
    FRAME_MS,
    Generator,
    Plan,
    ServerProcess,
    ServerSpec,
    Tally,
    analyse_client,
    load_sentences,
    reference_segments,
    scrape,
    wire_frames,
)

RAMP = 50.0  # clients per second
SETTLE_S = 2.0
KILL_AFTER_S = 6.0  # into the steady part
AFTER_KILL_S = 8.0  # streaming goes on this long after the kill


@dataclass(slots=True)
class ClientResult:
    """What one client saw: its end (if it was on the dead worker) and its VAD tally."""

    index: int
    sent: int
    error_at: float | None  # epoch s of the `error` event
    hangup_at: float | None
    hangup_reason: str | None
    tally: Tally


def _first(events: list[tuple[float, dict[str, object]]], name: str) -> tuple[float, dict] | None:
    return next(((t, e) for t, e in events if e.get("event") == name), None)


def generator_main(conn: Connection) -> None:
    """The load generator: like :func:`bench.load_ws.generator_main`, results per client."""
    with contextlib.suppress(KeyboardInterrupt):
        import uvloop

        pcm = load_speech()
        payloads, wire = wire_frames(pcm)
        conn.send("ready")
        plan: Plan = conn.recv()

        async def main() -> list[ClientResult]:
            gen = Generator(plan, payloads, wire)
            gc.collect()
            gc.freeze()
            gc.disable()
            try:
                await gen.run()
            finally:
                gc.enable()
            sentences = load_sentences()
            out = []
            for c in gen.clients:
                tally = Tally(clients=1)
                reference = reference_segments(pcm, c.offset, c.sent)
                analyse_client(c, (plan.t_begin, plan.stop), sentences, reference, tally)
                error = _first(c.events, "error")
                hangup = _first(c.events, "hangup")
                out.append(
                    ClientResult(
                        c.index,
                        c.sent,
                        error[0] if error else None,
                        hangup[0] if hangup else None,
                        str(hangup[1].get("reason")) if hangup else None,
                        tally,
                    )
                )
            return out

        conn.send(uvloop.run(main()))


async def probe_replacement(
    server: ServerProcess, killed_at: float
) -> tuple[float, float, dict[str, float]]:
    """Seconds from the kill until /health counts 2 workers and until a new call is answered,
    and the per-worker session gauges while that call is up."""
    from websockets.asyncio.client import connect

    while True:  # the supervisor saw the death (restart counted) and the new worker is up
        metrics = await asyncio.to_thread(scrape, server)
        restarted = sum(v for k, v in metrics.items() if k.startswith("activecall_worker_restarts"))
        if restarted >= 1 and (await asyncio.to_thread(scrape_health, server)).get("workers") == 2:
            ready = time.time() - killed_at
            break
        await asyncio.sleep(0.01)
    async with connect(server.url("ws", "/call?id=probe"), close_timeout=1) as ws:
        await ws.send('{"command":"invite","option":{}}')
        async for message in ws:
            if isinstance(message, str) and json.loads(message)["event"] == "answer":
                answered = time.time() - killed_at
                break
        sessions = await asyncio.to_thread(scrape, server)
        await ws.send('{"command":"hangup"}')
    return ready, answered, sessions


def scrape_health(server: ServerProcess) -> dict[str, object]:
    import urllib.request

    try:
        with urllib.request.urlopen(server.url("http", "/health"), timeout=1) as r:
            health: dict[str, object] = json.loads(r.read())
            return health
    except OSError:
        return {}


@dataclass(slots=True)
class Run:
    """One run: the kill, what the two groups of calls saw, the replacement."""

    calls: int
    lost: list[ClientResult]
    kept: list[ClientResult]
    ready_s: float
    answered_s: float
    killed_at: float
    kept_frames_lost: float
    drops: float
    probe_on_new_worker: bool


def one_run(calls: int, workdir: Path) -> Run:
    """Start a node, load it, kill a worker mid-run, collect everything."""
    server = ServerProcess(ServerSpec("activecall", 2), workdir)
    server.start()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    gen = ctx.Process(target=generator_main, args=(child,), daemon=True)
    gen.start()
    child.close()
    try:
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("generator did not start")
        t_begin = time.time() + 0.5
        steady = t_begin + calls / RAMP + SETTLE_S
        kill_at = steady + KILL_AFTER_S
        stop = kill_at + AFTER_KILL_S
        parent.send(
            Plan(
                url=server.url("ws", "/call?dump=false"),
                clients=tuple(range(calls)),
                ramp=RAMP,
                t_begin=t_begin,
                steady_start=steady,
                steady_end=stop,
                stop=stop,
                phases=10,
                sender="raw",
            )
        )
        time.sleep(max(0.0, kill_at - 0.5 - time.time()))
        root = psutil.Process(server.root_pid)
        workers = sorted(
            (c for c in root.children() if c.cmdline() == root.cmdline()),
            key=lambda c: c.create_time(),
        )
        victim = workers[0].pid
        time.sleep(max(0.0, kill_at - time.time()))
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        ready, answered, during_probe = asyncio.run(probe_replacement(server, killed_at))
        if not parent.poll(stop - time.time() + 60):
            raise RuntimeError("generator said nothing")
        results: list[ClientResult] = parent.recv()
        time.sleep(1.0)
        after = scrape(server)
    finally:
        gen.join(5)
        if gen.is_alive():
            gen.terminate()
        server.stop()
    restarts = {k: v for k, v in after.items() if k.startswith("activecall_worker_restarts")}
    dead = next(k for k, v in restarts.items() if v >= 1)
    dead_label = dead[dead.index("{") :]
    alive_label = next(k[k.index("{") :] for k in restarts if k != dead)
    lost = [r for r in results if r.error_at is not None]
    kept = [r for r in results if r.error_at is None]
    # the surviving worker ran only the kept calls, from the start: its counter is their total
    kept_sent = sum(r.sent for r in kept)
    drops = sum(
        after.get(f"{name}{alive_label}", 0.0)
        for name in ("activecall_ring_dropped_in", "activecall_ring_dropped_out")
    )
    probe_new = during_probe.get(f"activecall_worker_sessions{dead_label}", 0.0) == 1
    return Run(
        calls=calls,
        lost=lost,
        kept=kept,
        ready_s=ready,
        answered_s=answered,
        killed_at=killed_at,
        kept_frames_lost=max(0.0, kept_sent - after[f"activecall_frames_in{alive_label}"]),
        drops=drops,
        probe_on_new_worker=probe_new,
    )


def row(n: int, run: Run) -> list[object]:
    """One table row."""
    err = np.array([r.error_at - run.killed_at for r in run.lost if r.error_at is not None])
    hup = np.array([r.hangup_at - run.killed_at for r in run.lost if r.hangup_at is not None])
    kept = Tally()
    for r in run.kept:
        kept.merge(r.tally)
    bad_reason = sum(r.hangup_reason != "error" for r in run.lost)
    return [
        n,
        run.calls,
        f"{len(run.lost)} / {len(run.kept)}",
        f"{1000 * err.max():.0f}" if err.size else "-",
        f"{1000 * np.median(hup):.0f} / {1000 * hup.max():.0f}" if hup.size else "-",
        f"{len(hup)} of {len(run.lost)}" + (f" ({bad_reason} wrong reason)" if bad_reason else ""),
        f"{kept.expected} / {kept.received}",
        f"{kept.reference_matches} / {kept.silences}",
        f"{run.kept_frames_lost:.0f}",
        f"{run.drops:.0f}",
        f"{1000 * run.ready_s:.0f}",
        f"{1000 * run.answered_s:.0f}" + ("" if run.probe_on_new_worker else " (old worker)"),
    ]


HEADERS = (
    "run",
    "calls",
    "dead worker's / other worker's calls",
    "error after kill, max ms",
    "hangup after kill p50 / max ms",
    "hangups received",
    "other calls: segments expected / received",
    "other calls: silences equal to reference",
    "other calls: frames lost",
    "ring drops",
    "replacement up (ms)",
    "new call answered (ms)",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kill-worker-") as tmp:
        for i in range(args.runs):
            run = one_run(args.calls, Path(tmp))
            rows.append(row(i + 1, run))
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    table = format_table(HEADERS, rows)
    notes = "\n".join(
        [
            f"Each run: `activecall serve --workers 2`, {args.calls} real-time `/call` clients "
            f"(`invite{{codec:pcm, vad:{{}}}}`, speech with pauses, {FRAME_MS} ms frames) from "
            f"a separate process, ramped at {RAMP:.0f}/s; SIGKILL of the older worker "
            f"{SETTLE_S + KILL_AFTER_S:.0f} s after the last client joined; streaming goes on "
            f"{AFTER_KILL_S:.0f} s after the kill.",
            "- error / hangup after kill: arrival at the client minus the moment of the kill.",
            "- other calls: every call of the surviving worker over the whole run; segments "
            "expected are the labelled sentences that ended while it streamed; frames lost = "
            "frames those clients sent minus the surviving worker's frame counter.",
            "- replacement up: `/metrics` and `GET /health` polled every 10 ms until a restart is "
            "counted and 2 workers are ready; new "
            "call answered: a fresh `/call` invite then, until its `answer` (it lands on the "
            "new worker, checked with the per-worker session gauge).",
        ]
    )
    print(table)
    write_results("kill_worker", "kill -9 of a worker during a 100-call run", table, notes)


if __name__ == "__main__":
    main()
