"""The supervisor: the HTTP/WebSocket front end, the call directory and the worker pool.

:func:`run` is what ``activecall serve`` calls: it starts the workers, serves HTTP and
WebSocket calls until SIGINT or SIGTERM, then stops taking calls, ends the live ones and stops
the workers.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from activecall.config import Config

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Serve until told to stop; returns the process exit code."""
    import uvloop

    return uvloop.run(serve(config))


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> int:
    """Run the node on the current loop until SIGINT/SIGTERM (or ``stop`` is set)."""
    from activecall.config import LocalCallRecord
    from activecall.supervisor.call_metrics import register_media_metrics, register_sip_metrics
    from activecall.supervisor.directory import CallDirectory
    from activecall.supervisor.http import HttpRequest, HttpResponse, serve_http
    from activecall.supervisor.metrics import LATENCY_BUCKETS, Registry, watch_loop_lag
    from activecall.supervisor.playbooks import PlaybookApi
    from activecall.supervisor.pool import WorkerPool
    from activecall.supervisor.sip import SipService
    from activecall.web import CONSOLE_FILES, console_file
    from activecall.workers.session import SessionSettings, session_factory
    from activecall.workers.worker import WorkerOptions

    callrecord = config.callrecord
    settings = SessionSettings(
        recording_dir=Path(config.recording.path),
        dump_dir=Path(config.dump_dir),
        media_cache_dir=Path(config.media_cache_path),
        callrecord_dir=Path(callrecord.root) if isinstance(callrecord, LocalCallRecord) else None,
        ice_servers=tuple(server.to_json() for server in config.ice_servers),
        ambiance=config.ambiance,
    )
    registry = Registry()
    lag = registry.histogram(
        "activecall_supervisor_loop_lag_seconds",
        "How late the supervisor's event loop runs.",
        buckets=LATENCY_BUCKETS,
    )
    pool = WorkerPool(config.workers, WorkerOptions(session_factory=session_factory(settings)))
    pool.start()
    directory = CallDirectory(pool, registry)
    register_media_metrics(registry, lambda: pool.stats().media)
    host, port = config.http_bind
    try:
        front = await serve_http(
            directory,
            host,
            port,
            token=config.http_token,
            max_size=config.max_frame_size,
            ice_servers=[server.to_json() for server in config.ice_servers],
            registry=registry,
        )
    except OSError:  # the port is taken: stop the workers (and free their rings) first
        await pool.stop(timeout=1.0)
        raise

    async def precache(request: HttpRequest) -> HttpResponse:
        status, body = await directory.precache(request.body)
        return HttpResponse.json(status, body)

    front.add_route("POST", "precache", precache)
    playbooks = PlaybookApi()
    directory.playbook_runs = playbooks.runs
    front.add_tree("api", playbooks.handle)
    front.add_call_route("/call/webrtc", "webrtc")
    for name in CONSOLE_FILES:
        body, content_type = console_file(name)
        front.add_page(f"/{name}", body, content_type)
        if name == "console.html":
            front.add_page("/", body, content_type)
    sip = SipService(config, directory)
    register_sip_metrics(registry, sip.agent, sip.connection_counts)
    try:
        await sip.start()
    except OSError:  # a taken SIP port, an unusable TLS file: free the workers' rings first
        await front.close()
        await pool.stop(timeout=1.0)
        raise
    directory.sip = sip
    front.add_call_route("/call/sip", "sip")
    lag_watch = watch_loop_lag(lag)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await pool.wait_ready(timeout=120)
        log.info(
            "activecall listening on http://%s:%d with %d workers", host, front.port, config.workers
        )
        if config.call:
            sip.place_call(config.call)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: no new calls, ending %d live calls", len(directory.calls))
    finally:
        directory.draining = True
        sip.drain()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        lag_watch.cancel()
        await pool.stop(timeout=config.graceful_shutdown_timeout)
        await sip.close()  # after the sessions sent their BYEs, before the sockets go
        await front.close()
    return 0
