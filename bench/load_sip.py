"""SIP load: sipp calls activecall with N concurrent G.711 speech calls, VAD on in every call.

The script starts ``activecall serve`` itself (a subprocess with a config file: SIP on a free
UDP port of 127.0.0.1, the ``webhook`` invite handler, ``[callrecord] type="local"``), once
per worker count, and the webhook application in a process of its own: it answers each
webhook and joins the call on ``/call/sip?id=<dialogId>`` with ``accept{vad:{}}``, holding one
WebSocket per call and counting the ``speaking``/``silence`` events each call gets.

sipp (Debian ``sip-tester``) is the caller (``bench/sipp/uac_speech_load.xml``): INVITE with a
PCMU offer; after the 200 it streams 60 s of speech (``tests/data/speech_60s_16k.flac`` as
8 kHz μ-law, made at start) with its ``rtp_stream`` action, looped, continuous sequence
numbers and timestamps, 20 ms packets, for ``-d`` ms, then BYE. Two tests:

* **concurrency** (per N of ``--sweep``): N calls at ``--ramp`` calls per second, each held
  until every call has been up for ``--window`` seconds (plus margins), so all N are live
  together in the *steady window*;
* **call rate** (per rate of ``--rates``): ``rate × --rate-seconds`` short calls
  (``--rate-hold`` s each) at that rate.

Measured per point:

* calls attempted / succeeded / failed: sipp's ``-trace_stat`` counters (a call succeeds when
  the scenario ends with the 200 to its BYE); calls sipp never finished count as failed;
* setup time: INVITE sent → 200 received, per call, from sipp's ``-trace_rtt`` (response time
  1 of the scenario); p50 / p99;
* RTP as activecall saw it, from each call's CDR (``extras.rtp``): packets received, RFC 3550
  packets lost (expected − received), packets the jitter buffer dropped as late, and the
  RFC 3550 interarrival jitter (mean and max over calls);
* CPU: user+sys of the server tree (supervisor + workers), of sipp and of the webhook app
  (psutil), over the steady window, per call-second (calls sampled from
  ``activecall_active_calls`` every 250 ms); for the rate test, per call over the whole run;
* worker tick lag: each worker reports the p99 of its 20 ms ticks' lateness every 500 ms
  (``activecall_tick_lag_p99_us``, about the worst of 25 ticks); sampled every 250 ms over
  the window (the whole run for the rate test), the p99 of those values is an upper bound of
  the p99 tick lag;
* worker restarts (``activecall_worker_restarts``) and the server's WARNING/ERROR log lines;
* *other CPU*: the machine's busy time minus all of the above (noise on a shared host).

A concurrency point *holds* with zero failed calls, RTP loss (lost + late) under 0.1 %, worker
tick lag p99 under 20 ms, no worker replaced and ``speaking`` events in every call; a rate
point with zero failed calls, no worker replaced and sipp reaching 90 % of the rate. Each
sweep stops after its first point with failed calls or a replaced worker. Before each point
the script waits (up to ``--quiet-wait`` s) for other processes to use under 25 % of a CPU,
and a failing point measured while they used more is measured again (``--retries``). On a
shared host, ``--nice -10`` (as root) keeps other users' processes from preempting the
server, sipp and the app; the results file records the command line.

Run: ``.venv/bin/python -m bench.load_sip [--workers 1,2] [--sweep 50,100,200,300,400]
[--rates 25,50,75,100,150] [--window 20] [--nice -10] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import importlib.util
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench._common import RESULTS, ROOT, format_table, write_results
from bench.load_ws import (
    ServerProcess,
    ServerSpec,
    busy_seconds,
    cpu_delta,
    cpu_seconds,
    drops,
    free_port,
    scrape,
    wait_idle,
)

SCENARIO = ROOT / "bench" / "sipp" / "uac_speech_load.xml"
SPEECH = ROOT / "tests" / "data" / "speech_60s_16k.flac"
SPEECH_RAW = "speech_pcmu.raw"  # the name the scenario's rtp_stream plays
PCAP_MAKER = ROOT / "tests" / "data" / "sipp" / "make_speech_pcap.py"
RTP_PORTS = (40000, 43999)  # the server's RTP range: 1000 calls per worker with two workers
SETTLE_S = 2.0  # after the last call is due, before the steady window opens
TAIL_S = 2.0  # after the window, before the first call hangs up
SAMPLE_S = 0.25  # /metrics sampling period: workers report every 500 ms
DRAIN_S = 30.0  # how long the app's WebSockets and the CDRs may take after sipp is done
CDR_QUIET_S = 5.0  # no new CDR for this long: the missing ones are not coming
LOSS_LIMIT = 0.001
TICK_LAG_LIMIT_MS = 20.0
RATE_REACHED = 0.9  # a rate point measures the server only if sipp reached this much of it
NOISE_LIMIT_PERCENT = 25.0


# ---------------------------------------------------------------------------- the speech


def write_speech(path: Path) -> Path:
    """60 s of the test speech as raw 8 kHz μ-law (the bytes sipp's ``rtp_stream`` sends)."""
    # FFmpeg's resampler and μ-law encoder, as for the test pcaps: not activecall's codec.
    spec = importlib.util.spec_from_file_location("make_speech_pcap", PCAP_MAKER)
    assert spec is not None and spec.loader is not None
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    data: bytes = maker.mulaw_8k(SPEECH, 60.0)
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------- the server


def free_udp_port(pair_gap: int = 0) -> int:
    """A UDP port of 127.0.0.1 that is free now (and ``port + pair_gap`` too, if nonzero)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
            if not pair_gap:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                try:
                    other.bind(("127.0.0.1", port + pair_gap))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP port pair")


class SipServer(ServerProcess):
    """``activecall serve`` with SIP on 127.0.0.1 and the webhook handler at ``hook_url``."""

    def __init__(self, spec: ServerSpec, workdir: Path, hook_url: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(spec, workdir)
        self.sip_port = free_udp_port()
        self.cdr_root = workdir / "cdr"
        (workdir / "activecall.toml").write_text(
            f'http_addr = "127.0.0.1:{self.port}"\n'
            f'addr = "127.0.0.1"\nudp_port = {self.sip_port}\n'
            f"rtp_start_port = {RTP_PORTS[0]}\nrtp_end_port = {RTP_PORTS[1]}\n"
            'accept_timeout = "10s"\n'
            f'[handler]\ntype = "webhook"\nurl = "{hook_url}"\n'
            '[callrecord]\ntype = "local"\nroot = "cdr"\n'
        )

    def command(self) -> list[str]:
        """The serve command line (the config file is in the working directory)."""
        exe = Path(sys.executable).parent / "activecall"
        workers = str(self.spec.workers)
        return [str(exe), "serve", "--conf", "activecall.toml", "--workers", workers]

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until ``/health`` reports every worker."""
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError, ValueError),
                urlopen(self.url("http", "/health")) as r,
            ):
                if json.loads(r.read()).get("workers") == self.spec.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.spec.label}: workers not ready: {self.log_tail()}")


def urlopen(url: str) -> Any:
    """``urllib.request.urlopen`` with a short timeout."""
    import urllib.request

    return urllib.request.urlopen(url, timeout=5)


# ---------------------------------------------------------------------------- the webhook app


@dataclass(slots=True)
class CallView:
    """One call as the webhook application saw it."""

    dialog_id: str
    events: Counter[str] = field(default_factory=Counter)
    initiator: str = ""
    errors: list[str] = field(default_factory=list)  # error events, and a failed WebSocket
    ended: bool = False
    hook_to_open_ms: float = math.nan  # webhook received → WebSocket open
    open_to_answer_ms: float = math.nan  # WebSocket open → ``answer`` event


class WebhookApp:
    """Answers each webhook and holds the call's ``/call/sip`` WebSocket until it closes."""

    def __init__(self, http_port: int) -> None:
        self.http_port = http_port
        self.calls: dict[str, CallView] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def invite(self, request: Any) -> Any:
        """``POST /invite`` (reference §2.10): take the call, join it in the background."""
        from aiohttp import web

        payload = await request.json()
        dialog_id = str(payload["dialogId"])
        self.calls[dialog_id] = view = CallView(dialog_id)
        task = asyncio.create_task(self.join(view, time.perf_counter()))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return web.json_response({"status": "ok"})

    async def join(self, view: CallView, hooked: float) -> None:
        """Accept the call with VAD on and count its events until the node closes it."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        url = f"ws://127.0.0.1:{self.http_port}/call/sip?id={view.dialog_id}"
        accept = json.dumps({"command": "accept", "option": {"vad": {}}})
        try:
            async with connect(url, compression=None, ping_interval=None, close_timeout=2) as ws:
                opened = time.perf_counter()
                view.hook_to_open_ms = (opened - hooked) * 1000
                await ws.send(accept)
                with contextlib.suppress(ConnectionClosed):
                    async for message in ws:
                        if isinstance(message, bytes):
                            continue
                        event = json.loads(message)
                        name = str(event.get("event"))
                        view.events[name] += 1
                        if name == "answer":
                            view.open_to_answer_ms = (time.perf_counter() - opened) * 1000
                        elif name == "hangup":
                            view.initiator = str(event.get("initiator"))
                        elif name == "error":
                            view.errors.append(str(event.get("error")))
        except Exception as exc:  # a call that could not be joined is a result
            view.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            view.ended = True

    def collect(self) -> tuple[list[CallView], int]:
        """The calls that ended since the last collect, and how many are still open."""
        done = [v for v in self.calls.values() if v.ended]
        for v in done:
            del self.calls[v.dialog_id]
        return done, len(self.calls)


def app_main(conn: Connection, hook_port: int, http_port: int) -> None:
    """Entry point of the app process: serve, report ``ready``, answer ``collect`` requests
    with ``(ended calls, open calls)`` until ``stop``."""
    with contextlib.suppress(KeyboardInterrupt):
        import uvloop
        from aiohttp import web

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

        async def main() -> None:
            app = WebhookApp(http_port)
            web_app = web.Application()
            web_app.router.add_post("/invite", app.invite)
            runner = web.AppRunner(web_app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", hook_port, backlog=1024)
            await site.start()
            conn.send("ready")
            loop = asyncio.get_running_loop()
            try:
                while (request := await loop.run_in_executor(None, conn.recv)) != "stop":
                    if request == "collect":
                        conn.send(app.collect())
            finally:
                for task in list(app.tasks):
                    task.cancel()
                await runner.cleanup()

        uvloop.run(main())


class AppProcess:
    """The webhook application's process, seen from the orchestrator."""

    def __init__(self) -> None:
        self.hook_port = free_port()
        self.url = f"http://127.0.0.1:{self.hook_port}/invite"
        self._conn: Connection | None = None
        self._proc: Any = None

    def start(self, http_port: int) -> None:
        """Start the process for a server listening on ``http_port``."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=app_main, args=(child, self.hook_port, http_port), daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(60) or parent.recv() != "ready":
            raise RuntimeError("the webhook app did not start")

    @property
    def process(self) -> list[psutil.Process]:
        """The app's process (for CPU accounting)."""
        with contextlib.suppress(psutil.Error):
            return [psutil.Process(self._proc.pid)]
        return []

    def collect(self) -> tuple[list[CallView], int]:
        """Ended calls since the last collect and the number still open."""
        assert self._conn is not None
        self._conn.send("collect")
        if not self._conn.poll(30):
            raise RuntimeError("the webhook app does not answer")
        result: tuple[list[CallView], int] = self._conn.recv()
        return result

    def drain(self, timeout: float = DRAIN_S) -> list[CallView]:
        """Every call joined since the last drain, once none is open (sipp is done by then)
        or ``timeout`` passed."""
        views: list[CallView] = []
        deadline = time.monotonic() + timeout
        while True:
            done, still_open = self.collect()
            views += done
            if not still_open or time.monotonic() > deadline:
                return views
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the process."""
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send("stop")
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(5)


# ---------------------------------------------------------------------------- sipp


@dataclass(slots=True)
class SippResult:
    """What sipp reported about one run."""

    returncode: int | None  # None: killed at the time limit
    created: int = 0
    succeeded: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # Failed*(C) counters
    retransmissions: int = 0
    setup_ms: list[float] = field(default_factory=list)  # per call, INVITE → 200
    invite_ms: list[float] = field(default_factory=list)  # when each INVITE left (sipp's clock)
    cpu_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # sipp's error log, summarised


def sipp_path() -> str:
    """The sipp binary; a clear error when Debian's ``sip-tester`` is missing."""
    path = shutil.which("sipp")
    if path is None:
        raise SystemExit("sipp is not installed: `apt-get install sip-tester`")
    return path


class SippRun:
    """One sipp process placing ``calls`` calls at ``rate`` per second, ``limit`` at once, each
    held ``hold_s`` seconds, run in ``cwd`` (which holds the speech file)."""

    def __init__(
        self, target: int, calls: int, limit: int, rate: float, hold_s: float, cwd: Path
    ) -> None:
        self.cwd = cwd
        self.budget_s = calls / rate + hold_s + 60
        self.command = [
            sipp_path(),
            "-sf",
            str(SCENARIO),
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            "-mi",
            "127.0.0.1",
            "-mp",
            str(free_udp_port(pair_gap=2)),  # sipp binds the media port and port + 2
            "-s",
            "1000",
            "-m",
            str(calls),
            "-l",
            str(limit),
            "-r",
            f"{rate:g}",
            "-d",
            str(int(hold_s * 1000)),
            "-nostdin",
            "-trace_err",
            "-trace_stat",
            "-stf",
            "stats.csv",
            "-fd",
            "1",
            "-trace_rtt",
            "-rtt_freq",
            "1",
            "-timeout",
            f"{int(self.budget_s)}s",
            f"127.0.0.1:{target}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self._rusage0 = 0.0

    def start(self) -> None:
        """Start sipp."""
        self._rusage0 = _children_cpu()
        with (self.cwd / "sipp.out").open("wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def process(self) -> list[psutil.Process]:
        """sipp's process (for CPU accounting over a window)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                return [psutil.Process(self.proc.pid)]
        return []

    def wait(self) -> SippResult:
        """Wait for sipp to end (kill it past its time budget) and read its files."""
        assert self.proc is not None
        try:
            code: int | None = self.proc.wait(self.budget_s + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            code = None
        result = SippResult(returncode=code, cpu_s=_children_cpu() - self._rusage0)
        self._read_stats(result)
        self._read_rtt(result)
        for log in self.cwd.glob("*_errors.log"):
            result.errors.update(sipp_errors(log.read_text(errors="replace")))
        return result

    def _read_stats(self, result: SippResult) -> None:
        path = self.cwd / "stats.csv"
        if not path.is_file():
            return
        with path.open(newline="", errors="replace") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
        if not rows:
            return
        last = rows[-1]

        def value(name: str) -> int:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return int(float(last[name]))
            return 0

        result.created = value("TotalCallCreated")
        result.succeeded = value("SuccessfulCall(C)")
        result.failed = value("FailedCall(C)")
        result.retransmissions = value("Retransmissions(C)")
        for name in last:
            if (
                name
                and name.startswith("Failed")
                and name.endswith("(C)")
                and name != "FailedCall(C)"
            ):
                count = value(name)
                if count:
                    result.reasons[name.removesuffix("(C)")] = count

    def _read_rtt(self, result: SippResult) -> None:
        for path in self.cwd.glob("*_rtt.csv"):
            with path.open(newline="", errors="replace") as f:
                for row in csv.DictReader(f, delimiter=";"):
                    with contextlib.suppress(KeyError, TypeError, ValueError):
                        if row["rtd_no"].strip() == "1":
                            setup = float(row["response_time_ms"])
                            result.setup_ms.append(setup)
                            result.invite_ms.append(float(row["Date_ms"]) - setup)


_SIPP_ERROR = re.compile(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ([^'\n]*)")
_STATUS_LINE = re.compile(r"'SIP/2\.0 (\d{3} [^\r\n]*)")


def sipp_errors(text: str) -> Counter[str]:
    """sipp's error log as {what happened: times}: its messages (numbers and Call-IDs
    blanked) and the status lines of the responses it quotes (retransmissions included)."""
    out: Counter[str] = Counter()
    for message in _SIPP_ERROR.findall(text):
        message = re.sub(r" for Call-I[dD].*", "", message)
        out[re.sub(r"\d+", "#", message).strip()[:120]] += 1
    for status in _STATUS_LINE.findall(text):
        out[f"quoted response {status.strip()}"] += 1
    return out


def _children_cpu() -> float:
    """user+sys of this process's waited-for children (sipp's, once it is waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------- call records


@dataclass(slots=True)
class RtpTally:
    """The RTP statistics of a set of calls, from their CDRs."""

    calls: int = 0
    received: int = 0
    expected: int = 0
    lost: int = 0
    late: int = 0
    jitter_ms: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """(lost + late) / expected; NaN without packets."""
        return (self.lost + self.late) / self.expected if self.expected else math.nan


class CdrIndex:
    """The CDRs a server wrote, read as they appear, by call id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: set[Path] = set()
        self.records: dict[str, dict[str, Any]] = {}

    def scan(self) -> None:
        """Read the files written since the last scan."""
        if not self.root.is_dir():
            return
        for path in self.root.rglob("*.json"):
            if path in self.seen:
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # still being written: read next time
            self.seen.add(path)
            self.records[str(record.get("callId"))] = record

    def tally(self, call_ids: Sequence[str], timeout: float = DRAIN_S) -> RtpTally:
        """The RTP statistics of ``call_ids`` (waiting up to ``timeout`` for their CDRs)."""
        deadline = time.monotonic() + timeout
        last_new, known = time.monotonic(), len(self.seen)
        while True:
            self.scan()
            if len(self.seen) > known:
                last_new, known = time.monotonic(), len(self.seen)
            if all(c in self.records for c in call_ids):
                break
            now = time.monotonic()
            if now > deadline or now - last_new > CDR_QUIET_S:
                break  # some calls will not get one
            time.sleep(0.5)
        t = RtpTally()
        for call_id in call_ids:
            record = self.records.pop(call_id, None)
            rtp = ((record or {}).get("extras") or {}).get("rtp")
            if not rtp:
                continue
            receive, jitter = rtp["session"]["receive"], rtp["jitter"]
            t.calls += 1
            t.received += int(receive["packets"])
            t.expected += int(receive["expected"])
            t.lost += max(0, int(receive["lost"]))
            t.late += int(jitter["late"])
            t.jitter_ms.append(float(receive["jitter_ms"]))
        return t


# ---------------------------------------------------------------------------- sampling


@dataclass(slots=True)
class Window:
    """CPU seconds and /metrics samples over one measured interval."""

    seconds: float = 0.0
    server_cpu_s: float = 0.0
    root_cpu_s: float = 0.0  # of which the supervisor
    sipp_cpu_s: float = 0.0
    app_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    active: list[float] = field(default_factory=list)  # activecall_active_calls samples
    lags_ms: list[float] = field(default_factory=list)  # sampled activecall_tick_lag_p99_us
    drops: dict[str, float] = field(default_factory=dict)

    @property
    def tick_lag_ms(self) -> float:
        """p99 over the samples of the workers' per-interval tick lag p99 (ms)."""
        return float(np.percentile(self.lags_ms, 99)) if self.lags_ms else math.nan

    @property
    def call_seconds(self) -> float:
        """Calls live in the window × its length (from the sampled gauge)."""
        return float(np.mean(self.active)) * self.seconds if self.active else 0.0


def measure(
    server: SipServer,
    others: tuple[list[psutil.Process], list[psutil.Process]],
    until: float,
    stop: Callable[[], bool] | None = None,
) -> Window:
    """Sample from now until ``until`` (epoch s) or until ``stop()`` is true: CPU of the
    server and of sipp and the app (``others``), and /metrics every SAMPLE_S."""
    cpu0 = [cpu_seconds(p) for p in (server.processes(), *others)]
    busy0, t0, me0 = busy_seconds(), time.time(), _own_cpu()
    metrics0 = scrape(server)
    w = Window()
    cpu1 = cpu0
    while time.time() < until and not (stop is not None and stop()):
        time.sleep(max(0.0, min(SAMPLE_S, until - time.time())))
        m = scrape(server)
        if "activecall_active_calls" in m:
            w.active.append(m["activecall_active_calls"])
        w.lags_ms += [v / 1000 for k, v in m.items() if k.startswith("activecall_tick_lag_p99_us")]
        # merged per sample: a process that exits (sipp at its end, a worker the watchdog
        # kills) keeps the CPU it was last seen with instead of dropping out of the sums
        now = [cpu_seconds(p) for p in (server.processes(), *others)]
        cpu1 = [{**before, **after} for before, after in zip(cpu1, now, strict=True)]
    busy1, me1 = busy_seconds(), _own_cpu()
    w.seconds = time.time() - t0
    deltas = [cpu_delta(a, b) for a, b in zip(cpu0, cpu1, strict=True)]
    w.server_cpu_s, w.sipp_cpu_s, w.app_cpu_s = deltas
    w.root_cpu_s = cpu1[0].get(server.root_pid, 0.0) - cpu0[0].get(server.root_pid, 0.0)
    w.other_cpu_s = max(0.0, busy1 - busy0 - sum(deltas) - (me1 - me0))
    w.drops = drops(metrics0, scrape(server))
    return w


def wait_quiet(server: SipServer, app: AppProcess, limit_s: float) -> float:
    """Wait (up to ``limit_s``) until processes other than ours use under NOISE_LIMIT_PERCENT
    of a CPU; the % they used in the last second looked at."""
    deadline = time.monotonic() + limit_s
    while True:
        procs = [*server.processes(), *app.process, psutil.Process()]
        cpu0, busy0 = cpu_seconds(procs), busy_seconds()
        time.sleep(1.0)
        other = (busy_seconds() - busy0 - cpu_delta(cpu0, cpu_seconds(procs))) * 100
        if other < NOISE_LIMIT_PERCENT or time.monotonic() > deadline:
            return other


def _own_cpu() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


# ---------------------------------------------------------------------------- points


@dataclass(slots=True)
class Point:
    """One measurement: ``n`` concurrent calls, or the call-rate test at ``rate``."""

    kind: str  # "concurrency" or "rate"
    workers: int
    n: int  # calls placed
    rate: float  # target calls per second
    sipp: SippResult
    views: list[CallView]
    rtp: RtpTally
    window: Window
    hold_s: float
    restarts: int = 0  # workers the supervisor replaced during the point
    server_log: Counter[str] = field(default_factory=Counter)  # its warnings and errors
    retried: str = ""

    @property
    def failed(self) -> int:
        """Calls placed that sipp did not complete."""
        return self.n - self.sipp.succeeded

    @property
    def no_speech(self) -> int:
        """Joined calls that got no ``speaking`` event."""
        return sum(1 for v in self.views if not v.events["speaking"])

    @property
    def app_anomalies(self) -> list[str]:
        """What the application saw go wrong (error events, calls not ended by the caller)."""
        out: Counter[str] = Counter()
        for v in self.views:
            for e in v.errors:
                out[e[:100]] += 1
            if not v.events["answer"]:
                out["no answer event"] += 1
            elif v.initiator != "caller":
                out[f"hangup initiator {v.initiator or 'missing'}"] += 1
        return [f"{count} × {reason}" for reason, count in out.most_common()]

    @property
    def achieved_rate(self) -> float:
        """Calls per second sipp actually placed (INVITE send times)."""
        t = sorted(self.sipp.invite_ms)
        if len(t) < 2 or t[-1] <= t[0]:
            return math.nan
        return (len(t) - 1) * 1000 / (t[-1] - t[0])

    def setup(self, q: float) -> float:
        """Percentile ``q`` of the setup time (ms)."""
        return float(np.percentile(self.sipp.setup_ms, q)) if self.sipp.setup_ms else math.nan

    @property
    def failures(self) -> list[str]:
        """Why the point does not hold; empty when it does."""
        out = []
        if self.failed:
            out.append(f"{self.failed} calls failed")
        if self.restarts:
            out.append(f"{self.restarts} worker(s) replaced")
        if not self.rtp.loss < LOSS_LIMIT:
            out.append("RTP loss ≥ 0.1 %")
        if self.kind == "concurrency":
            if not self.window.tick_lag_ms < TICK_LAG_LIMIT_MS:
                out.append("tick lag p99 ≥ 20 ms")
            if self.no_speech:
                out.append(f"{self.no_speech} calls without VAD events")
        elif not self.failed and not self.achieved_rate >= RATE_REACHED * self.rate:
            out.append("sipp behind the rate")  # the point did not measure the target rate
        return out

    @property
    def broken(self) -> bool:
        """Calls failed or a worker was replaced: a larger point would only break more."""
        return bool(self.failed or self.restarts)

    @property
    def holds(self) -> bool:
        """True when no criterion failed."""
        return not self.failures


def run_point(
    server: SipServer,
    app: AppProcess,
    cdrs: CdrIndex,
    kind: str,
    n: int,
    rate: float,
    args: argparse.Namespace,
    cwd: Path,
) -> Point:
    """Place the calls of one point with sipp and gather what every side measured."""
    cwd.mkdir(parents=True)
    (cwd / SPEECH_RAW).symlink_to(args.speech)
    log_start = server.log.stat().st_size
    restarts0 = restarts(scrape(server))
    if kind == "concurrency":
        # every call is up from n / rate + SETTLE_S until the first hangs up, TAIL_S after
        # the steady window
        hold = n / rate + SETTLE_S + args.window + TAIL_S
        sipp = SippRun(server.sip_port, n, n, rate, hold, cwd)
    else:
        hold = args.rate_hold
        sipp = SippRun(server.sip_port, n, n, rate, hold, cwd)
    sipp.start()
    t0 = time.time()
    others = (sipp.process, app.process)
    if kind == "concurrency":
        time.sleep(max(0.0, t0 + n / rate + SETTLE_S - time.time()))
        window = measure(server, others, t0 + n / rate + SETTLE_S + args.window)
    else:
        assert sipp.proc is not None
        proc = sipp.proc
        window = measure(server, others, t0 + sipp.budget_s, stop=lambda: proc.poll() is not None)
    result = sipp.wait()
    if kind == "rate":
        window.sipp_cpu_s = result.cpu_s  # psutil cannot see the last moments of sipp
    views = app.drain()
    rtp = cdrs.tally([v.dialog_id for v in views])
    return Point(
        kind,
        server.spec.workers,
        n,
        rate,
        result,
        views,
        rtp,
        window,
        hold,
        restarts=int(restarts(scrape(server)) - restarts0),
        server_log=log_problems(server.log, log_start),
    )


def restarts(metrics: dict[str, float]) -> float:
    """Worker restarts so far, summed over the workers."""
    return sum(v for k, v in metrics.items() if k.startswith("activecall_worker_restarts"))


_LOG_PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) (\S+): (.*)")


def log_problems(log: Path, start: int) -> Counter[str]:
    """The server's WARNING/ERROR lines from byte ``start`` on, as {message: times} with
    numbers and ids blanked."""
    out: Counter[str] = Counter()
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    for level, name, message in _LOG_PROBLEM.findall(text):
        message = re.sub(r"[0-9a-f-]{8,}\S*|\d+", "#", message)
        out[f"{level} {name}: {message[:100]}"] += 1
    return out


# ---------------------------------------------------------------------------- output

CONCURRENCY_HEADERS = (
    "workers",
    "N",
    "calls attempted / ok / failed",
    "setup p50 / p99 ms",
    "RTP rx / lost / late",
    "loss %",
    "jitter mean / max ms",
    "CPU ms per call-s",
    "server CPU % (supervisor + workers)",
    "sipp CPU %",
    "app CPU %",
    "other CPU %",
    "tick lag p99 ms",
    "speaking / silence per call",
    "holds",
)

RATE_HEADERS = (
    "workers",
    "target cps",
    "achieved cps",
    "calls attempted / ok / failed",
    "setup p50 / p99 ms",
    "peak live calls",
    "server CPU ms per call",
    "server CPU % (supervisor + workers)",
    "sipp CPU %",
    "other CPU %",
    "loss %",
    "tick lag p99 ms",
    "holds",
)


def _pct(seconds: float, window: float) -> str:
    return f"{seconds * 100 / window:.0f}" if window > 0 else "n/a"


def _server_pct(w: Window) -> str:
    server, root = _pct(w.server_cpu_s, w.seconds), _pct(w.root_cpu_s, w.seconds)
    return f"{server} ({root} + {_pct(w.server_cpu_s - w.root_cpu_s, w.seconds)})"


def _calls(p: Point) -> str:
    return f"{p.n} / {p.sipp.succeeded} / {p.failed}"


def _setup(p: Point) -> str:
    return f"{p.setup(50):.0f} / {p.setup(99):.0f}"


def _loss(p: Point) -> str:
    return f"{p.rtp.loss * 100:.3f}" if p.rtp.expected else "n/a"


def _holds(p: Point) -> str:
    return "no: " + ", ".join(p.failures) if p.failures else "yes"


def concurrency_row(p: Point) -> list[object]:
    """One row of the concurrency table."""
    w, r = p.window, p.rtp
    speaking = sum(v.events["speaking"] for v in p.views) / max(1, len(p.views))
    silence = sum(v.events["silence"] for v in p.views) / max(1, len(p.views))
    jitter = f"{np.mean(r.jitter_ms):.2f} / {max(r.jitter_ms):.2f}" if r.jitter_ms else "n/a"
    cpu_per_call_s = w.server_cpu_s * 1000 / w.call_seconds if w.call_seconds else math.nan
    return [
        p.workers,
        p.n,
        _calls(p),
        _setup(p),
        f"{r.received} / {r.lost} / {r.late}",
        _loss(p),
        jitter,
        f"{cpu_per_call_s:.2f}",
        _server_pct(w),
        _pct(w.sipp_cpu_s, w.seconds),
        _pct(w.app_cpu_s, w.seconds),
        _pct(w.other_cpu_s, w.seconds),
        f"{w.tick_lag_ms:.1f}",
        f"{speaking:.1f} / {silence:.1f}",
        _holds(p),
    ]


def rate_row(p: Point) -> list[object]:
    """One row of the call-rate table."""
    w = p.window
    peak = f"{max(w.active):.0f}" if w.active else "n/a"
    return [
        p.workers,
        f"{p.rate:g}",
        f"{p.achieved_rate:.1f}",
        _calls(p),
        _setup(p),
        peak,
        f"{w.server_cpu_s * 1000 / max(1, p.sipp.succeeded):.1f}",
        _server_pct(w),
        _pct(w.sipp_cpu_s, w.seconds),
        _pct(w.other_cpu_s, w.seconds),
        _loss(p),
        f"{w.tick_lag_ms:.1f}",
        _holds(p),
    ]


def chart(name: str, points: Sequence[Point]) -> Path:
    """CPU per call-second and tick lag against N; setup time against the call rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cpu, ax_lag, ax_setup) = plt.subplots(1, 3, figsize=(15, 4.2))
    for workers in sorted({p.workers for p in points}):
        run = [p for p in points if p.workers == workers and p.kind == "concurrency"]
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        if run:
            ns = [p.n for p in run]
            per_call = [
                p.window.server_cpu_s * 1000 / p.window.call_seconds
                if p.window.call_seconds
                else math.nan
                for p in run
            ]
            ax_cpu.plot(ns, per_call, marker="o", label=label)
            ax_lag.plot(ns, [p.window.tick_lag_ms for p in run], marker="o", label=label)
        rates = [p for p in points if p.workers == workers and p.kind == "rate"]
        if rates:
            xs = [p.rate for p in rates]
            ax_setup.plot(xs, [p.setup(50) for p in rates], marker="o", label=f"{label} p50")
            ax_setup.plot(
                xs, [p.setup(99) for p in rates], marker="s", linestyle="--", label=f"{label} p99"
            )
    ax_lag.axhline(TICK_LAG_LIMIT_MS, color="grey", linestyle="--", linewidth=1)
    ax_cpu.set(xlabel="concurrent calls N", ylabel="server CPU ms per call-second")
    ax_cpu.set_title("Server CPU per call (G.711 + VAD)")
    ax_lag.set(xlabel="concurrent calls N", ylabel="worker tick lag p99 (ms)", yscale="log")
    ax_lag.set_title("Worker tick lag")
    ax_setup.set(xlabel="target call rate (calls/s)", ylabel="INVITE → 200 (ms)", yscale="log")
    ax_setup.set_title("Call setup time")
    for ax in (ax_cpu, ax_lag, ax_setup):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def notes(points: Sequence[Point], args: argparse.Namespace) -> str:
    """The settings, the definitions, the best points, and everything that went wrong."""
    lines = ["Largest N that held, and highest call rate with zero failures:", ""]
    for workers in sorted({p.workers for p in points}):
        mine = [p for p in points if p.workers == workers]
        held = [p.n for p in mine if p.kind == "concurrency" and p.holds]
        # the issue's own criteria (no failed call, loss < 0.1 %), tick lag aside: every N up
        # to this one met them
        clean = 0
        for p in sorted((p for p in mine if p.kind == "concurrency"), key=lambda p: p.n):
            if p.failed or not p.rtp.loss < LOSS_LIMIT:
                break
            clean = p.n
        rates = [p.achieved_rate for p in mine if p.kind == "rate" and p.holds]
        lines.append(
            f"- {workers} worker(s): {max(held) if held else 'none'} concurrent calls "
            f"(zero failed calls and loss < 0.1 % at every N up to {clean or 'none'}, "
            "tick lag aside); " + (f"{max(rates):.0f} calls/s" if rates else "no rate held")
        )
    lines += [
        "",
        f"Command: `.venv/bin/python -m bench.load_sip {' '.join(args.argv)}`.",
        "",
        f"Settings: sipp {args.sipp_version} as UAC over UDP on 127.0.0.1, PCMU 20 ms, "
        f"60 s of speech looped (rtp_stream); concurrency: ramp {args.ramp:g} calls/s, steady "
        f"window {args.window:g} s with all N calls live; call rate: {args.rate_seconds:g} s "
        f"of arrivals per point, calls held {args.rate_hold:g} s. The app accepts every call "
        "with `vad:{}` (TinySilero in the worker); event dumps at their default (on); "
        "CDRs local.",
        "",
        "- setup = INVITE sent → 200 received (sipp response time 1, every call): webhook POST, "
        "the app's WebSocket connect and `accept`, the worker's answer.",
        "- RTP rx / lost / late: packets received, RFC 3550 lost (expected − received) and "
        "packets the jitter buffer dropped as late, summed over the calls' CDRs; loss % = "
        "(lost + late) / expected; jitter = RFC 3550 interarrival jitter per call.",
        "- CPU ms per call-s = server tree (supervisor + workers) user+sys over the steady "
        "window / (mean `activecall_active_calls` × window); CPU % are of one CPU (the host "
        "has 2); other CPU = the host's busy time minus server, sipp, app and this script.",
        "- tick lag p99 = p99 of the workers' `activecall_tick_lag_p99_us` (each the p99 of "
        "the 25 ticks of a 500 ms interval) sampled every 250 ms over the window: an upper "
        "bound of the p99 tick lateness.",
        "- achieved cps = calls answered / the span of their INVITEs (sipp's -trace_rtt).",
        "- a worker near 100 % of its CPU falls behind and skips ticks (the tick schedule's "
        "backlog limit), so its CPU per call-s drops: such a point measures a saturated worker.",
        "- sipp's rtp_stream sends every call's packets on the same 1 ms-grained clock, so the "
        "calls' packets arrive in bursts of N every 20 ms (harsher than independent phones).",
    ]
    for p in points:
        where = f"{p.workers} worker(s), {p.kind} {p.n if p.kind == 'concurrency' else p.rate}"
        if p.retried:
            lines.append(f"- {where}: {p.retried}; the table has the last attempt.")
        if p.sipp.reasons:
            reasons = ", ".join(f"{k} {v}" for k, v in p.sipp.reasons.items())
            lines.append(f"- {where}: sipp failures: {reasons}.")
        if p.sipp.returncode is None:
            lines.append(f"- {where}: sipp did not finish in time and was killed.")
        if p.sipp.retransmissions:
            lines.append(f"- {where}: {p.sipp.retransmissions} SIP retransmissions by sipp.")
        if p.app_anomalies:
            lines.append(f"- {where}: the app saw {'; '.join(p.app_anomalies[:5])}.")
        hook = [v.hook_to_open_ms for v in p.views if not math.isnan(v.hook_to_open_ms)]
        answer = [v.open_to_answer_ms for v in p.views if not math.isnan(v.open_to_answer_ms)]
        if hook and answer:
            lines.append(
                f"- {where}: in the app, webhook → WebSocket open p50 / p99 "
                f"{np.percentile(hook, 50):.0f} / {np.percentile(hook, 99):.0f} ms, "
                f"open → `answer` {np.percentile(answer, 50):.0f} / "
                f"{np.percentile(answer, 99):.0f} ms."
            )
        if p.rtp.calls < len(p.views):
            lines.append(f"- {where}: {len(p.views) - p.rtp.calls} calls without an RTP CDR.")
        if p.server_log:
            logged = "; ".join(f"{n} × {m}" for m, n in p.server_log.most_common(4))
            lines.append(f"- {where}: the server logged {logged}.")
        if p.window.drops:
            lines.append(f"- {where}: drop counters grew: {p.window.drops}.")
        if p.sipp.errors:
            errors = "; ".join(f"{n} × {e}" for e, n in p.sipp.errors.most_common(6))
            lines.append(f"- {where}: sipp's error log: {errors}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def sweep(workers: int, args: argparse.Namespace, workdir: Path) -> Generator[Point, None, None]:
    """Start a server with ``workers`` workers and its app; the concurrency sweep, then the
    call-rate sweep, each until a point breaks (failed calls, a replaced worker)."""
    app = AppProcess()
    server = SipServer(ServerSpec("activecall", workers), workdir / f"w{workers}", app.url)
    try:
        server.start()
        app.start(server.port)
        cdrs = CdrIndex(server.cdr_root)
        plan = [("concurrency", n, args.ramp) for n in args.sweep]
        plan += [("rate", int(r * args.rate_seconds), r) for r in args.rates]
        stopped: set[str] = set()
        for i, (kind, n, rate) in enumerate(plan):
            if kind in stopped:
                continue
            discarded: list[str] = []
            for attempt in range(args.retries + 1):
                wait_idle(server)
                wait_quiet(server, app, args.quiet_wait)
                cwd = workdir / f"w{workers}" / f"{i:02d}-{kind}-{attempt}"
                pt = run_point(server, app, cdrs, kind, n, rate, args, cwd)
                row = concurrency_row(pt) if kind == "concurrency" else rate_row(pt)
                print(" | ".join(str(c) for c in row), flush=True)
                other = pt.window.other_cpu_s * 100 / max(pt.window.seconds, 1e-9)
                if pt.holds or other <= NOISE_LIMIT_PERCENT or attempt == args.retries:
                    break
                discarded.append(f"other CPU {other:.0f} %: {', '.join(pt.failures)}")
                print(f"  other processes used {other:.0f} % of a CPU: measuring again")
            if discarded:
                pt.retried = "earlier attempt(s) discarded: " + "; ".join(discarded)
            yield pt
            if pt.broken:
                stopped.add(kind)  # more load would only fail more calls
    except RuntimeError as exc:
        print(f"workers={workers}: {exc}", file=sys.stderr)
    finally:
        app.stop()
        server.stop()


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise KeyboardInterrupt


def main() -> None:
    """Run the sweeps and write ``bench/results/<name>.md`` and ``.png``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=_ints, default=[1, 2], help="worker counts")
    parser.add_argument(
        "--sweep", type=_ints, default=[50, 100, 200, 300, 400], help="concurrent calls N"
    )
    parser.add_argument("--ramp", type=float, default=50.0, help="calls/s while ramping up")
    parser.add_argument("--window", type=float, default=15.0, help="steady window (s)")
    parser.add_argument(
        "--rates", type=_floats, default=[25, 50, 75, 100, 150], help="call rates (calls/s)"
    )
    parser.add_argument("--rate-seconds", type=float, default=10.0, help="arrivals per rate")
    parser.add_argument("--rate-hold", type=float, default=2.0, help="rate-test call length")
    parser.add_argument("--retries", type=int, default=1, help="re-measure under other load")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before a point, wait up to this long (s) for other processes to go quiet",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of this script and what it starts (server, sipp, app); negative values "
        "keep other users of a shared host from preempting them (needs root)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--name", default="load_sip", help="results file name")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
    sipp = sipp_path()
    version = subprocess.run([sipp, "-v"], capture_output=True, text=True, check=False).stdout
    args.sipp_version = next((w for w in version.split() if w.startswith("v")), "?").rstrip(".")
    signal.signal(signal.SIGTERM, _terminate)
    points: list[Point] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="load_sip.")
            print(f"logs, sipp files and CDRs are kept in {tmp}", flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="load_sip."))
        args.speech = write_speech(Path(tmp) / SPEECH_RAW)
        try:
            for workers in args.workers:
                print(" | ".join(CONCURRENCY_HEADERS), flush=True)
                # closed explicitly: its finally stops the server and the app at once
                with contextlib.closing(sweep(workers, args, Path(tmp))) as run:
                    for point in run:
                        points.append(point)
        except KeyboardInterrupt:
            print("interrupted: writing what was measured", file=sys.stderr)
    if not points:
        return
    sections = (
        (
            "Concurrent calls",
            CONCURRENCY_HEADERS,
            [concurrency_row(p) for p in points if p.kind == "concurrency"],
        ),
        ("Call rate", RATE_HEADERS, [rate_row(p) for p in points if p.kind == "rate"]),
    )
    tables = [f"## {title}\n\n" + format_table(h, rows) for title, h, rows in sections if rows]
    write_results(
        args.name,
        "SIP load: sipp calls with G.711 speech RTP, VAD on",
        "\n\n".join(tables),
        notes(points, args),
    )
    print(f"wrote {chart(args.name, points)}")


if __name__ == "__main__":
    main()
