"""The playbook invite handler: rule matching on real files, then ``activecall serve`` with
``[handler] type="playbook"`` against sipp (inbound, no client connected) and ``--call`` with
``--handler greeting.md`` (outbound). The LLM is the OpenAI chat fake; piper speaks, and
pocketsphinx hears the speech sipp plays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from activecall.config import PlaybookHandler, PlaybookRule
from activecall.playbook.handler import (
    PlaybookUnavailable,
    find_playbook,
    match_playbook,
    playbook_for_call,
)
from tests.playbook.scripted import KEY, ScriptedOpenAi
from tests.supervisor.sip_helpers import DATA, free_port, require_sipp, run_sipp

GREETING = "Hello, this is the test line."
ANSWER = "Thanks, I heard you."


def playbook_text(llm_url: str, greeting: str = GREETING) -> str:
    return (
        "---\n"
        "asr: {provider: pocketsphinx}\n"
        "tts: {provider: piper}\n"
        f"llm: {{baseUrl: '{llm_url}', apiKey: {KEY}, model: test}}\n"
        f"greeting: {greeting}\n"
        "---\n"
        "You answer calls to {{ callee }} in one short sentence.\n"
    )


# --- matching and loading -----------------------------------------------------------------------


RULES = (
    PlaybookRule(caller=r"^sip:\+1", callee=r"@support\.", playbook="us_support.md"),
    PlaybookRule(callee=r"^sip:sales@", playbook="sales.md"),
    PlaybookRule(caller=r"alice", playbook="alice.md"),
)


@pytest.mark.parametrize(
    ("caller", "callee", "expected"),
    [
        ("sip:+15551234@pbx", "sip:help@support.example.com", "us_support.md"),
        ("sip:+4420@pbx", "sip:help@support.example.com", "default.md"),  # caller misses
        ("sip:+15551234@pbx", "sip:sales@example.com", "sales.md"),
        ("sip:alice@example.com", "sip:sales@example.com", "sales.md"),  # first match wins
        ("sip:alice@example.com", "sip:bob@example.com", "alice.md"),  # regex anywhere
        ("sip:carol@example.com", "sip:bob@example.com", "default.md"),
    ],
)
def test_the_first_matching_rule_wins_else_the_default(
    caller: str, callee: str, expected: str
) -> None:
    assert match_playbook(RULES, "default.md", caller, callee) == expected


def test_no_rule_and_no_default_is_no_playbook() -> None:
    assert match_playbook(RULES, None, "sip:carol@x", "sip:bob@x") is None
    handler = PlaybookHandler(rules=RULES)
    with pytest.raises(PlaybookUnavailable) as caught:
        playbook_for_call(handler, "sip:carol@x", "sip:bob@x")
    assert caught.value.reason == "No Playbook Matched"
    assert "sip:carol@x" in caught.value.detail


def test_a_playbook_is_found_in_the_folder_then_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "config" / "playbook"
    folder.mkdir(parents=True)
    (folder / "a.md").write_text(playbook_text("http://127.0.0.1:9/v1"))
    (tmp_path / "b.md").write_text(playbook_text("http://127.0.0.1:9/v1"))
    monkeypatch.chdir(tmp_path)
    assert find_playbook("a.md") == (folder / "a.md").resolve()
    assert find_playbook("b.md") == (tmp_path / "b.md").resolve()
    assert find_playbook(str(tmp_path / "b.md")) == (tmp_path / "b.md").resolve()
    assert find_playbook("config/playbook/a.md") == (folder / "a.md").resolve()
    assert find_playbook("c.md") is None
    assert find_playbook("config") is None  # a folder is not a playbook
    handler = PlaybookHandler(default="a.md")
    assert playbook_for_call(handler, "", "sip:x@y") == str((folder / "a.md").resolve())


def test_a_missing_or_broken_playbook_is_unavailable_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.md"
    broken.write_text("---\nllm:\n  model: [unclosed\n---\nHello\n")
    with pytest.raises(PlaybookUnavailable) as caught:
        playbook_for_call(PlaybookHandler(default="nope.md"), "", "", tmp_path)
    assert caught.value.reason == "Playbook Not Found" and "nope.md" in caught.value.detail
    with pytest.raises(PlaybookUnavailable) as caught:
        playbook_for_call(PlaybookHandler(default="broken.md"), "", "", tmp_path)
    assert caught.value.reason == "Playbook Invalid"
    assert f"{broken.resolve()}:3: invalid YAML" in caught.value.detail


# --- the live node --------------------------------------------------------------------------------


class PlaybookNode:
    """``activecall serve`` (one worker) with SIP on loopback and the playbook handler."""

    def __init__(self, cwd: Path, handler: str, *args: str) -> None:
        self.cwd = cwd
        self.http_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        rtp = 24000 + (self.sip_port % 150) * 40
        (cwd / "activecall.toml").write_text(
            f'http_addr = "127.0.0.1:{self.http_port}"\n'
            f'addr = "127.0.0.1"\nudp_port = {self.sip_port}\n'
            f"rtp_start_port = {rtp}\nrtp_end_port = {rtp + 39}\n"
            'accept_timeout = "10s"\n'
            'dump_path = "dumps"\n' + handler + '[callrecord]\ntype = "local"\nroot = "cdr"\n'
        )
        self.log = (cwd / "server.log").open("wb")
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
                *args,
            ],
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.get("/health")["workers"] == 1:
                    return
            assert self.proc.poll() is None, self.logs()
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.logs())

    def get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def logs(self) -> str:
        return (self.cwd / "server.log").read_text(errors="replace")

    def dump(self, session_id: str) -> list[dict[str, Any]]:
        """The session's event dump (§2.13): ``(type, content)`` records in order."""
        path = self.cwd / "dumps" / f"{session_id}.events.jsonl"
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        return [{"type": r["type"], **json.loads(r["content"])} for r in lines]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


async def sse_events(node: PlaybookNode, session_id: str) -> list[dict[str, Any]]:
    """``GET /events/{id}`` until the call ends: the ``event`` records."""
    out: list[dict[str, Any]] = []
    url = f"http://127.0.0.1:{node.http_port}/events/{session_id}"
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        kind = ""
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "event":
                out.append(json.loads(line.split(":", 1)[1]))
    return out


async def first_call(node: PlaybookNode, timeout: float = 10) -> str:
    async with asyncio.timeout(timeout):
        while True:
            calls = await asyncio.to_thread(node.get, "/list")
            if calls["active_calls"]:
                return str(calls["active_calls"][0]["id"])
            await asyncio.sleep(0.05)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """sipp's working directory, with the speech pcap its scenarios play."""
    sipp = tmp_path / "sipp"
    sipp.mkdir()
    (sipp / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")
    (sipp / "dtmf_2833_1.pcap").symlink_to(Path("/usr/share/sip-tester/dtmf_2833_1.pcap"))
    return sipp


@pytest.fixture
def llm() -> Iterator[ScriptedOpenAi]:
    """The chat fake on its own loop in a thread: it serves the node's worker meanwhile."""
    loop = asyncio.new_event_loop()
    fake = ScriptedOpenAi([ANSWER], [ANSWER], [ANSWER])
    loop.run_until_complete(fake.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield fake
    asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


HANDLER = """[handler]
type = "playbook"
default = "greeting.md"
[[handler.rules]]
callee = "^sip:404@"
playbook = "missing.md"
[[handler.rules]]
callee = "^sip:500@"
playbook = "broken.md"
"""


def test_inbound_sip_calls_run_the_matched_playbook_with_no_client(
    tmp_path: Path, run_dir: Path, llm: ScriptedOpenAi
) -> None:
    require_sipp()
    folder = tmp_path / "config" / "playbook"
    folder.mkdir(parents=True)
    (folder / "greeting.md").write_text(playbook_text(llm.url))
    (folder / "broken.md").write_text("---\nllm:\n  model: [unclosed\n---\nHello\n")
    node = PlaybookNode(tmp_path, HANDLER)

    async def refused(service: str) -> tuple[int, str]:
        target = f"127.0.0.1:{node.sip_port}"
        return await run_sipp("uac_refused.xml", run_dir, "-s", service, target, timeout=20)

    async def scenario() -> tuple[int, str, str, list[dict[str, Any]]]:
        sipp = asyncio.create_task(
            run_sipp(
                "uac_speech_then_wait.xml", run_dir, "-s", "1000", f"127.0.0.1:{node.sip_port}"
            )
        )
        session_id = await first_call(node)
        events = await sse_events(node, session_id)
        code, out = await sipp
        return code, out, session_id, events

    try:
        for service in ("404", "500"):  # sipp expects exactly 503
            code, out = asyncio.run(refused(service))
            assert code == 0, out
        code, out, session_id, events = asyncio.run(scenario())
        assert code == 0, out  # answered, and sipp's BYE got its 200
    finally:
        assert node.stop() == 0, node.logs()
    logs = node.logs()
    assert "Playbook Not Found" in logs and "'missing.md'" in logs
    assert "Playbook Invalid" in logs and "broken.md:3: invalid YAML" in logs
    # /events showed the dialogue as it happened; the dump has it from the first event.
    names = [e["event"] for e in events]
    assert "asrFinal" in names and names[-1] == "hangup"
    assert events[-1]["initiator"] == "caller"
    dump = node.dump(session_id)
    commands = [r for r in dump if r["type"] == "command"]
    assert commands[0]["command"] == "accept"
    assert commands[0]["option"]["asr"]["provider"] == "pocketsphinx"  # from the playbook
    (greeting,) = [c for c in commands if c["command"] == "tts" and c["text"] == GREETING]
    starts = [r for r in dump if r.get("event") == "trackStart" and r.get("playId")]
    ends = [r for r in dump if r.get("event") == "trackEnd" and r.get("playId")]
    assert starts[0]["playId"] == ends[0]["playId"] == greeting["playId"]
    # the caller's speech was heard and answered through the LLM fake
    (chat, *_) = llm.chats()
    assert chat["messages"][0]["content"].startswith("You answer calls to sip:1000@127.0.0.1")
    assert chat["messages"][1] == {"role": "assistant", "content": GREETING}
    assert any(e.get("event") == "addHistory" and e["text"] == ANSWER for e in events)
    assert "error" not in names


def test_call_places_an_outbound_call_running_the_handler_playbook(
    tmp_path: Path, run_dir: Path, llm: ScriptedOpenAi
) -> None:
    require_sipp()
    (tmp_path / "greeting.md").write_text(playbook_text(llm.url, "Hi, this is a robot calling."))
    sipp_port = free_port(socket.SOCK_DGRAM)

    async def scenario() -> tuple[int, str, PlaybookNode]:
        sipp = asyncio.create_task(
            run_sipp("uas_answer_bye.xml", run_dir, "-p", str(sipp_port), timeout=40)
        )
        await asyncio.sleep(0.3)  # sipp binds its port
        node = await asyncio.to_thread(
            PlaybookNode,
            tmp_path,
            "",
            "--handler",
            "greeting.md",
            "--call",
            f"sip:bob@127.0.0.1:{sipp_port}",
        )
        code, out = await sipp
        return code, out, node

    code, out, node = asyncio.run(scenario())
    assert node.stop() == 0, node.logs()
    assert code == 0, out  # our INVITE, sipp's 200 and BYE
    (dump_file,) = (tmp_path / "dumps").glob("c.*.events.jsonl")
    dump = node.dump(dump_file.name.removesuffix(".events.jsonl"))
    commands = [r for r in dump if r["type"] == "command"]
    assert commands[0]["command"] == "invite"
    assert commands[0]["option"]["callee"] == f"sip:bob@127.0.0.1:{sipp_port}"
    (tts,) = [c for c in commands if c["command"] == "tts"]
    assert tts["text"] == "Hi, this is a robot calling."
    names = [r["event"] for r in dump if r["type"] == "event"]
    assert names.index("answer") < names.index("trackEnd")
    (start,) = [r for r in dump if r.get("event") == "trackStart" and r.get("playId")]
    assert start["playId"] == tts["playId"]
    assert names[-1] == "hangup"
