"""Playbook turn latency: end of caller speech -> first agent audio, the gateway's own share.

The script starts ``activecall serve --workers 1`` (a subprocess on 127.0.0.1, stopped at the
end) and a local chat-completions server that answers every request at once (the OpenAI
streaming format: one ``chat.completion.chunk`` with the whole reply, then ``data: [DONE]``),
so no model time is in the figures. A playbook (pocketsphinx ASR, piper TTS, VAD
``silencePadding`` 300 ms, that LLM) is started with ``POST /api/playbook/run``; one ``/call``
client joins it (``invite{codec:"pcm"}``), waits for the greeting to end, then for each turn
streams a caller line spoken by piper (16 kHz, 20 ms frames at real-time pace, 0.3 s of
silence before and 1.5 s after) and measures, on its own clock:

    latency = arrival of the first binary frame after the answer's ``trackStart``
              - the send time of the frame carrying the line's last speech sample

So it includes the VAD's silence padding (300 ms, the end-of-utterance decision), the final
decode of pocketsphinx, the runner's turn (history, the chat request and its instant reply,
sentence split), piper's first audio and the 20 ms pacing. The next line starts after the
answer's ``trackEnd``. A turn with no answer within 10 s (an empty ``asrFinal``) is counted as
missed.

Run: ``.venv/bin/python -m bench.playbook [--turns 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect

from bench._common import format_table, write_results

FRAME = 320  # 20 ms at 16 kHz
LINES = (
    "I would like to check my account balance.",
    "Can you tell me when my next payment is due?",
    "Please send me a copy of my last statement.",
    "I want to change the address on my account.",
    "Is there a branch open near me on Saturday?",
)
REPLY = "Sure, let me check that for you."
TURN_TIMEOUT_S = 10.0


async def piper_lines() -> list[np.ndarray]:
    """Each caller line spoken by piper, 16 kHz int16."""
    from activecall._native.resample import Resampler
    from activecall.protocol.options import SynthesisOption
    from activecall.providers.registry import registry

    out = []
    for text in LINES:
        stream = await registry.get("tts", "piper").open(SynthesisOption(), streaming=False)
        stream.push_text(text)
        stream.end_text()
        parts: list[np.ndarray] = []
        resampler: Resampler | None = None
        async for chunk in stream.chunks():
            resampler = resampler or Resampler(chunk.sample_rate, 16000)
            parts.append(resampler.process(np.frombuffer(chunk.pcm, "<i2").astype(np.int16)))
        await stream.cancel()
        assert resampler is not None
        parts.append(resampler.flush())
        out.append(np.concatenate(parts))
    await registry.aclose()
    return out


class InstantLlm:
    """``POST /v1/chat/completions`` answering :data:`REPLY` at once (streaming format)."""

    def __init__(self) -> None:
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "bench"),
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": REPLY},
                    "finish_reason": "stop",
                }
            ],
        }
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response


class Server:
    """``activecall serve --workers 1`` on a free port, in a scratch directory."""

    def __init__(self, workdir: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        (workdir / "activecall.toml").write_text(
            f'http_addr = "127.0.0.1:{self.port}"\naddr = "127.0.0.1"\nudp_port = 0\n'
        )
        self.log = (workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "activecall",
                "serve",
                "--conf",
                "activecall.toml",
                "--workers",
                "1",
            ],
            cwd=workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.port}/health"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if json.loads(r.read())["workers"] == 1:
                        return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"server did not start; see {workdir / 'server.log'}")

    def run_playbook(self, text: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/playbook/run",
            data=json.dumps({"content": text}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            return str(json.loads(r.read())["session_id"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Caller:
    """The ``/call`` client: events and audio in order, with arrival times."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.plays: dict[str, dict[str, float]] = {}  # playId -> {start, audio, end}
        self.current: str | None = None
        self.asr_finals = 0
        self.errors: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    async def read(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                play = self.plays.get(self.current or "")
                if play is not None and "audio" not in play:
                    play["audio"] = now
                    self.changed.set()
                continue
            event = json.loads(message)
            kind, play_id = event.get("event"), event.get("playId")
            if kind == "trackStart" and play_id:
                self.current = play_id
                self.plays[play_id] = {"start": now}
            elif kind == "trackEnd" and play_id in self.plays:
                self.plays[play_id]["end"] = now
                self.current = None
            elif kind == "asrFinal" and event.get("text"):
                self.asr_finals += 1
            elif kind == "error":
                self.errors.append(event)
            self.changed.set()

    async def wait(self, predicate: Any, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return False


async def stream(ws: ClientConnection, pcm: np.ndarray) -> float:
    """Send ``pcm`` in 20 ms frames at real-time pace; the send time of its last frame."""
    start = time.perf_counter()
    sent_at = start
    for i, offset in enumerate(range(0, len(pcm), FRAME)):
        await ws.send(pcm[offset : offset + FRAME].tobytes())
        sent_at = time.perf_counter()
        delay = start + (i + 1) * 0.02 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    return sent_at


async def measure(turns: int, *, early: bool) -> tuple[list[float], int, int]:
    lines = await piper_lines()
    llm = InstantLlm()
    await llm.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench-playbook-"))
    server = await asyncio.to_thread(Server, workdir)
    latencies: list[float] = []
    missed = 0
    try:
        playbook = (
            "---\nasr: {provider: pocketsphinx}\ntts: {provider: piper}\n"
            "vad: {silencePadding: 300}\n"
            + ("eou: {type: vad}\n" if early else "")
            + f"llm: {{baseUrl: '{llm.url}', apiKey: bench, model: bench}}\n"
            "greeting: Hello.\n---\nYou are a bank's assistant.\n"
        )
        session_id = await asyncio.to_thread(server.run_playbook, playbook)
        url = f"ws://127.0.0.1:{server.port}/call?id={session_id}&dump=false"
        async with connect(url, max_size=None) as ws:
            caller = Caller(ws)
            reader = asyncio.create_task(caller.read())
            await ws.send(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            assert await caller.wait(lambda: any("end" in p for p in caller.plays.values()), 30)
            before = np.zeros(4800, np.int16)
            after = np.zeros(24000, np.int16)
            for turn in range(turns):
                speech = lines[turn % len(lines)]
                known = set(caller.plays)
                await stream(ws, before)
                ended = await stream(ws, speech)
                sending = asyncio.create_task(stream(ws, after))

                def answered(known: set[str] = known) -> bool:
                    new = [p for k, p in caller.plays.items() if k not in known]
                    return any("audio" in p for p in new)

                if await caller.wait(answered, TURN_TIMEOUT_S):
                    (play,) = [p for k, p in caller.plays.items() if k not in known]
                    latencies.append((play["audio"] - ended) * 1000)
                    await caller.wait(lambda play=play: "end" in play, 30)
                else:
                    missed += 1
                await sending
            await ws.send(json.dumps({"command": "hangup"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, 10)
            if caller.errors:
                print("errors:", caller.errors, file=sys.stderr)
    finally:
        await asyncio.to_thread(server.stop)
        await llm.stop()
    return latencies, missed, llm.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for early in (False, True):
        latencies, missed, requests = asyncio.run(measure(args.turns, early=early))
        ms = np.array(latencies)
        rows.append(
            [
                "on (`eou: {type: vad}`)" if early else "off (default)",
                args.turns,
                len(latencies),
                missed,
                requests,
                f"{np.percentile(ms, 50):.0f}" if len(ms) else "-",
                f"{np.percentile(ms, 99):.0f}" if len(ms) else "-",
                f"{ms.min():.0f}" if len(ms) else "-",
                f"{ms.max():.0f}" if len(ms) else "-",
            ]
        )
    table = format_table(
        [
            "early LLM start at end of speech",
            "turns",
            "answered",
            "missed",
            "chat requests",
            "p50 ms",
            "p99 ms",
            "min ms",
            "max ms",
        ],
        rows,
    )
    notes = (
        "End of caller speech (send time of the frame with the line's last speech sample) to "
        "the first agent audio frame of the answer, on one `/call` session running a playbook "
        "(`POST /api/playbook/run`), `activecall serve --workers 1`. Offline providers: piper "
        "speaks the caller's lines, pocketsphinx hears them, piper speaks the answer; the LLM "
        "is a local server answering at once. VAD silencePadding 300 ms is part of every "
        "figure (the end-of-utterance decision). With early start, the runner starts the LLM "
        "turn at the caller's end of speech with the last interim transcript and holds the "
        "reply until the final transcript confirms it; when they differ the early request is "
        "wasted (the extra chat requests) and the turn starts again. The instant LLM hides "
        "most of its gain, which is the LLM's own time to first token.\n\n"
        "Run: `.venv/bin/python -m bench.playbook --turns 50`."
    )
    write_results("playbook", "Playbook turn latency (gateway share)", table, notes)


if __name__ == "__main__":
    main()
