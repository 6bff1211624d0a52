"""What the SIP end-to-end tests share: an ``activecall serve`` node with SIP on loopback, the
webhook application that joins its inbound calls over ``/call/sip``, and a sipp runner.

The node runs in its own process with the ``webhook`` invite handler pointing at a small aiohttp
application in the test, which joins each call it is told about by connecting
``/call/sip?id=<dialogId>`` with the websockets client, exactly as an application would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

DATA = Path(__file__).resolve().parents[1] / "data"
SCENARIOS = DATA / "sipp"
SIPP_PCAPS = Path("/usr/share/sip-tester")
WORKERS = ("--workers", "2")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of 127.0.0.1 that is free now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_sipp() -> str:
    """sipp's path; the test fails (with how to install it) when sipp or its pcaps are missing."""
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (make test does it)")
    if not (SIPP_PCAPS / "dtmf_2833_1.pcap").is_file():
        pytest.fail(f"sipp's DTMF pcaps are missing from {SIPP_PCAPS} (Debian sip-tester)")
    return path


class SipNode:
    """``activecall serve`` with SIP on 127.0.0.1 and a webhook handler on ``hook_port``."""

    def __init__(self, cwd: Path, hook_port: int, call: str | None = None, extra: str = "") -> None:
        self.cwd = cwd
        self.hook_port = hook_port
        # The ports are free when picked, but anything on the machine may take one before the
        # node binds it (an outgoing connection's ephemeral port): then start again on others.
        for _ in range(3):
            if self._start(call, extra):
                return
            self.stop()
        raise AssertionError("server could not bind its ports:\n" + self.logs())

    def _start(self, call: str | None, extra: str) -> bool:
        """Start the node on fresh ports; False when one of them was taken meanwhile."""
        self.http_port = free_port()
        while self.http_port == self.hook_port:
            self.http_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        rtp = 20000 + (self.sip_port % 200) * 100  # a range of its own, even when run twice
        (self.cwd / "activecall.toml").write_text(
            f'http_addr = "127.0.0.1:{self.http_port}"\n'
            f'addr = "127.0.0.1"\nudp_port = {self.sip_port}\n'
            f"rtp_start_port = {rtp}\nrtp_end_port = {rtp + 99}\n"
            'accept_timeout = "10s"\n'
            '[handler]\ntype = "webhook"\n'
            f'url = "http://127.0.0.1:{self.hook_port}/invite"\n'
            '[callrecord]\ntype = "local"\nroot = "cdr"\n' + extra
        )
        self.log = (self.cwd / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activecall", "serve", "--conf", "activecall.toml", *WORKERS]
            + (["--call", call] if call else []),
            cwd=self.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.health()["workers"] == 2:
                    # SIP that cannot bind is logged, and the node serves HTTP without it.
                    return "SIP is off" not in self.logs()
            if self.proc.poll() is not None:
                if "address already in use" in self.logs():
                    return False
                raise AssertionError("server exited:\n" + self.logs())
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.logs())

    def health(self) -> Any:
        """``GET /health``, parsed."""
        url = f"http://127.0.0.1:{self.http_port}/health"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def logs(self) -> str:
        """The node's output so far."""
        return (self.cwd / "server.log").read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (SIGKILL after 30 s); the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


Reaction = Callable[[dict[str, Any]], list[dict[str, Any]]]
"""What the application sends in answer to an event."""

Wanted = Callable[[dict[str, Any]], bool]
"""Whether the application takes the call of a webhook payload."""


def tagged(payload: dict[str, Any]) -> bool:
    """An INVITE sent by a test scenario: it carries an ``X-Test-Case`` header."""
    return any(line.startswith("X-Test-Case:") for line in payload["headers"])


class App:
    """The webhook application: joins the INVITEs it ``wants`` (by default those that carry
    ``X-Test-Case``) and accepts them with ``option``; any other INVITE is refused (404, so
    the node answers 503). ``events`` holds each joined call's events as they arrive."""

    def __init__(
        self,
        node: SipNode,
        option: dict[str, Any],
        react: Reaction | None = None,
        wants: Wanted = tagged,
    ) -> None:
        self.node = node
        self.option = option
        self.react = react
        self.wants = wants
        self.payloads: list[dict[str, Any]] = []
        self.calls: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.refused = 0

    async def invite(self, request: web.Request) -> web.Response:
        payload = await request.json()
        if not self.wants(payload):
            self.refused += 1
            return web.json_response({"status": "not for me"}, status=404)
        self.payloads.append(payload)
        self.calls[payload["dialogId"]] = asyncio.create_task(self.join(payload["dialogId"]))
        return web.json_response({"status": "ok"})

    async def join(self, dialog_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.events.setdefault(dialog_id, [])
        url = f"ws://127.0.0.1:{self.node.http_port}/call/sip?id={dialog_id}"
        async with connect(url) as ws:
            await ws.send(json.dumps({"command": "accept", "option": self.option}))
            with contextlib.suppress(ConnectionClosed):  # 1011 when the worker died
                async for message in ws:  # until the node closes the WebSocket
                    if isinstance(message, str):
                        events.append(json.loads(message))
                        for command in self.react(events[-1]) if self.react else ():
                            await ws.send(json.dumps(command))
        return events

    async def call_events(self, timeout: float = 15) -> list[dict[str, Any]]:
        """All events of the one call joined, once the node closed its WebSocket."""
        assert len(self.calls) == 1, self.payloads
        return await asyncio.wait_for(next(iter(self.calls.values())), timeout)


@contextlib.asynccontextmanager
async def webhook_app(
    node: SipNode, option: dict[str, Any], react: Reaction | None = None, wants: Wanted = tagged
) -> AsyncIterator[App]:
    """The application :class:`App`, served on ``node.hook_port`` for the block's duration."""
    app = App(node, option, react, wants)
    web_app = web.Application()
    web_app.router.add_post("/invite", app.invite)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", node.hook_port, reuse_address=True)
    await site.start()
    try:
        yield app
    finally:
        for task in app.calls.values():
            task.cancel()
        await runner.cleanup()


async def run_sipp(scenario: str, cwd: Path, *args: str, timeout: float = 40) -> tuple[int, str]:
    """Run one sipp call of ``scenario``; its exit code (0: the call succeeded) and output."""
    process = await asyncio.create_subprocess_exec(
        require_sipp(),
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-mi",
        "127.0.0.1",
        "-mp",
        str(free_port(socket.SOCK_DGRAM)),
        "-m",
        "1",
        "-nostdin",
        "-trace_err",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except BaseException:  # a timeout, or the test failed meanwhile: sipp must not stay
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    errors = "".join(p.read_text(errors="replace") for p in cwd.glob("*_errors.log"))
    return process.returncode or 0, out.decode(errors="replace") + errors


def event_names(events: list[dict[str, Any]]) -> list[str]:
    """The ``event`` names, in order."""
    return [e["event"] for e in events]
