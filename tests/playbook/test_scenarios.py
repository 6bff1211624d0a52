"""Playbook scenarios as whole calls on a live node, each over ``/call`` and over SIP.

One ``activecall serve`` (one worker, SIP on loopback, the playbook handler with one rule per
case) serves the module. A ``/call`` caller runs a playbook with ``POST /api/playbook/run``,
joins it with a WebSocket and speaks piper's lines as PCM in real time; a SIP caller is sipp,
replaying piper's lines and RFC 4733 keys as one RTP stream from a pcap made at test time; the
greeting scenario also runs from a browser (aiortc on ``/call/webrtc``), so the template
variables are checked for every call type a caller can start. The LLM is the OpenAI chat fake
(SSE ``chat.completion.chunk`` events, streamed tool calls, ``[DONE]``) scripted per case
(:class:`~tests.playbook.callers.CaseLlm`); pocketsphinx hears, piper speaks, the runner
answers. The asserts read what the caller got, the session's event dump (the commands the
runner sent and the events), what the LLM fake was asked and what the posthook server got.

DTMF scenarios run over SIP only: a ``/call`` client has no way to send a key (no DTMF command
inbound, and in-band detection runs on RTP calls only).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.playbook.callers import (
    CaseLlm,
    Heard,
    Piece,
    Step,
    WsCaller,
    browser_call,
    sip_dump,
    tool_call,
    uac_scenario,
)
from tests.playbook.scripted import KEY, Recorder
from tests.playbook.speech import Key, Part, pcap_ms, pcap_of, spoken_16k
from tests.supervisor.sip_helpers import DATA, free_port, require_sipp, run_sipp
from tests.supervisor.test_playbook_handler import PlaybookNode

CASES = (
    "greet",
    "hangup",
    "bargein",
    "followup",
    "posthook",
    "menu",
    "collect",
    "refer",
    "tools",
    "broken",
)


@dataclass
class World:
    """What the module's scenarios share."""

    node: PlaybookNode
    llm: CaseLlm
    hooks: Recorder
    folder: Path  # the node's playbook folder
    sipp: Path  # sipp's working directory (pcaps)
    loop: asyncio.AbstractEventLoop  # the fakes' loop, in a thread

    def playbook(self, case: str, front: str, body: str) -> None:
        """Write ``case``.md: the offline engines, the LLM fake, then ``front`` and ``body``."""
        (self.folder / f"{case}.md").write_text(
            "---\n"
            "asr: {provider: pocketsphinx}\n"
            "tts: {provider: piper}\n"
            f"llm: {{baseUrl: '{self.llm.url}', apiKey: {KEY}, model: test}}\n"
            f"{front}---\n{body}"
        )

    def play(self, name: str, *parts: Part) -> list[Step]:
        """sipp's steps to say the caller's lines, pauses and keys (a pcap in its folder made
        of ``parts``), and to wait until they have been sent."""
        pcap = pcap_of(parts)
        (self.sipp / name).write_bytes(pcap)
        return [("play", name), ("pause", pcap_ms(pcap))]


def handler_rules() -> str:
    rules = "".join(
        f'[[handler.rules]]\ncallee = "^sip:{case}@"\nplaybook = "{case}.md"\n' for case in CASES
    )
    return '[handler]\ntype = "playbook"\n' + rules


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_sipp()
    root = tmp_path_factory.mktemp("scenarios")
    folder = root / "config" / "playbook"
    folder.mkdir(parents=True)
    sipp = root / "sipp"
    sipp.mkdir()
    (sipp / "speech_8s_pcmu.pcap").symlink_to(DATA / "speech_8s_pcmu.pcap")  # the refer peer's
    loop = asyncio.new_event_loop()
    llm, hooks = CaseLlm(), Recorder({"ok": True})
    loop.run_until_complete(llm.__aenter__())
    loop.run_until_complete(hooks.__aenter__())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    node = PlaybookNode(root, handler_rules())
    try:
        warm_up(node)
        yield World(node, llm, hooks, folder, sipp, loop)
    finally:
        code = node.stop()
        for fake in (hooks, llm):
            asyncio.run_coroutine_threadsafe(fake.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        assert code == 0, node.logs()[-3000:]
        assert not llm.unmatched, llm.unmatched  # every request found its case's script


def warm_up(node: PlaybookNode) -> None:
    """Load piper's voice in the worker (``POST /precache``), so the first call's greeting
    starts as soon as any other's and the callers' timing holds for any test run alone."""
    command = {"command": "tts", "text": "Warm up.", "option": {"provider": "piper"}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/precache", data=json.dumps(command).encode()
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["status"] in ("cached", "exists")


# --- the callers' own tools -----------------------------------------------------------------------


def test_the_sipp_caller_pcap_is_one_rtp_stream_of_speech_and_keys() -> None:
    pcap = pcap_of([40, Key("1", ms=60), 20])
    offset, packets = 24, []
    while offset < len(pcap):
        length = struct.unpack_from("<I", pcap, offset + 8)[0]
        rtp = pcap[offset + 16 + 42 : offset + 16 + length]  # after Ethernet/IPv4/UDP
        version, second, seq, stamp, ssrc = struct.unpack_from("!BBHII", rtp)
        assert version == 0x80  # RTP 2, no padding, extension or CSRC
        packets.append((second & 0x7F, second >> 7, seq, stamp, ssrc, rtp[12:]))
        offset += 16 + length
    assert [p[0] for p in packets] == [0, 0, 101, 101, 101, 101, 101, 0]
    assert [p[1] for p in packets] == [1, 0, 1, 0, 0, 0, 0, 1]  # marker: each talkspurt's start
    # the end packet goes three times with one sequence number; the stream never goes back
    assert [p[2] for p in packets] == [1001, 1002, 1003, 1004, 1005, 1005, 1005, 1006]
    assert [p[3] for p in packets] == [0, 160, 320, 320, 320, 320, 320, 800]
    assert len({p[4] for p in packets}) == 1
    assert packets[2][5] == bytes([1, 10, 0, 160]) and packets[4][5] == bytes([1, 0x8A, 1, 224])
    assert pcap_ms(pcap) == 8 * 20
    assert len(packets[0][5]) == 160


def test_the_callers_tools_refuse_what_they_cannot_make() -> None:
    with pytest.raises(ValueError, match="'x' is not a DTMF key"):
        Key("x")
    with pytest.raises(ValueError, match="nothing to put in the pcap"):
        pcap_of([])
    with pytest.raises(ValueError, match="unknown step 'dial'"):
        uac_scenario([("dial", 1)], end="bye")
    with pytest.raises(ValueError, match="unknown end 'wait'"):
        uac_scenario([], end="wait")


# --- running calls --------------------------------------------------------------------------------


async def start_run(world: World, case: str) -> str:
    """``POST /api/playbook/run`` for ``case``.md; the session id to join."""
    url = f"http://127.0.0.1:{world.node.http_port}/api/playbook/run"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json={"playbook": f"{case}.md"}) as response,
    ):
        body = await response.json()
        assert response.status == 200, body
        return str(body["session_id"])


async def sip_call(world: World, case: str, steps: list[Step], end: str) -> tuple[int, str]:
    """sipp calls ``case``@ the node with the ``steps``; its exit code and output."""
    scenario = world.sipp / f"{case}.xml"
    scenario.write_text(uac_scenario(steps, end=end, customer=f"{case}-42"))
    target = f"127.0.0.1:{world.node.sip_port}"
    return await run_sipp(str(scenario), world.sipp, "-s", case, target, timeout=60)


def dump_of(world: World, session_id: str) -> list[dict[str, Any]]:
    return world.node.dump(session_id)


def commands(dump: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [r for r in dump if r["type"] == "command" and (name is None or r["command"] == name)]


def events(dump: list[dict[str, Any]], name: str | None = None) -> list[dict[str, Any]]:
    return [r for r in dump if r["type"] == "event" and (name is None or r["event"] == name)]


def tts_texts(dump: list[dict[str, Any]]) -> list[str]:
    return [c["text"].strip() for c in commands(dump, "tts") if c["text"].strip()]


def no_errors(dump: list[dict[str, Any]], heard: Heard | None = None) -> None:
    errors = events(dump, "error") + [
        e for e in (heard.events if heard else []) if e["event"] == "error"
    ]
    assert not errors, errors


async def over_webrtc(world: World, case: str, line: str) -> tuple[str, Heard]:
    """A browser joins a run of ``case`` on ``/call/webrtc``, says ``line`` once the greeting
    has been played, and hangs up once the agent's answer has been played."""
    session_id = await start_run(world, case)
    heard = Heard()
    async with asyncio.timeout(40), browser_call(world.node.http_port, session_id) as browser:
        async for message in browser.ws:
            event = json.loads(message)
            heard.events.append(event)
            if event["event"] == "answer":
                await browser.answered(event["sdp"])
            if ended_play(event):
                if sum(map(ended_play, heard.events)) == 1:
                    browser.microphone.say(line)
                else:
                    await browser.ws.send(json.dumps({"command": "hangup"}))
    return session_id, heard


def ended_play(event: dict[str, Any]) -> bool:
    """A ``trackEnd`` of the runner's speech or file."""
    return event["event"] == "trackEnd" and bool(event.get("playId"))


# --- greeting → question → answer, with the template variables ------------------------------------

GREETING = "Hello, this is the test line."
QUESTION = "What time do you open tomorrow?"
ANSWER = "We open at nine in the morning."
TEMPLATE = (
    "[case:greet/{{ call_type }}] You answer calls to {{ callee }} from {{ caller }}."
    " Session {{ session_id }} started {{ start_time }}. Customer {{ sip['X-Customer'] }}.\n"
)


@pytest.mark.parametrize("transport", ["websocket", "webrtc", "sip"])
def test_greeting_then_a_question_is_answered(world: World, transport: str) -> None:
    world.playbook(
        "greet", f"greeting: {GREETING}\nsip: {{extract_headers: [X-Customer]}}\n", TEMPLATE
    )
    script = world.llm.script("greet", [f"[case:greet/{transport}]"], [ANSWER])

    async def over_websocket() -> tuple[str, Heard]:
        session_id = await start_run(world, "greet")
        async with WsCaller.joined(world.node.http_port, session_id) as caller:
            greeting = await caller.until(ended_play)
            await caller.say(QUESTION, then_ms=300)
            await caller.until(lambda e: ended_play(e) and e["playId"] != greeting["playId"])
            await caller.send({"command": "hangup"})
            heard = await caller.ended()
        return session_id, heard

    heard: Heard | None = None
    if transport == "websocket":
        session_id, heard = asyncio.run(over_websocket())
        dump = dump_of(world, session_id)
    elif transport == "webrtc":
        session_id, heard = asyncio.run(over_webrtc(world, "greet", QUESTION))
        dump = dump_of(world, session_id)
    else:
        steps = [*world.play("greet.pcap", 3500, QUESTION, 500), ("pause", 6000)]
        code, out = asyncio.run(sip_call(world, "greet", steps, "bye"))
        assert code == 0, out
        session_id, dump = sip_dump(world.node.cwd / "dumps", "greet")
    no_errors(dump, heard)
    texts = tts_texts(dump)
    assert texts[0] == GREETING and ANSWER in texts, texts
    finals = [e["text"] for e in events(dump, "asrFinal") if e["text"].strip()]
    assert finals, events(dump)
    (chat,) = script.chats
    system = chat["messages"][0]["content"]
    assert system.startswith(f"[case:greet/{transport}] You answer calls to ")
    assert chat["messages"][1] == {"role": "assistant", "content": GREETING}
    assert chat["messages"][2]["role"] == "user" and chat["messages"][2]["content"] == finals[0]
    assert f"Session {session_id} started 20" in system
    if transport == "sip":
        assert f"to sip:greet@127.0.0.1:{world.node.sip_port}" in system
        assert "from sip:sipp@127.0.0.1" in system
        assert "Customer greet-42." in system
    else:
        assert "Customer ." in system  # no SIP headers: empty, never a failed render
    # the answer was spoken in full: its track started and ended, not cut
    answer_id = next(c["playId"] for c in commands(dump, "tts") if c["text"].strip() == ANSWER)
    assert any(e.get("playId") == answer_id for e in events(dump, "trackEnd"))
    assert not events(dump, "interruption")


# --- <hangup/> after the last sentence is heard in full -------------------------------------------

BYE_LINES = ("Thanks for calling us today.", "Goodbye now.")


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_hangup_comes_after_the_last_sentence_is_heard(world: World, transport: str) -> None:
    world.playbook("hangup", "greeting: Hi there.\n", "[case:hangup/{{ call_type }}] Be brief.\n")
    # the tag arrives cut in two chunks: it must still be one tag, and never spoken
    reply = [f"{BYE_LINES[0]} ", f"{BYE_LINES[1]} <hang", "up/>"]
    script = world.llm.script("hangup", [f"[case:hangup/{transport}]"], reply)
    line = "That is all thank you."  # no comma: one utterance, not two
    heard: Heard | None = None
    if transport == "websocket":

        async def over_websocket() -> tuple[str, Heard]:
            session_id = await start_run(world, "hangup")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                await caller.until(ended_play)
                await caller.say(line, then_ms=300)
                return session_id, await caller.ended(timeout=40)  # the node hangs up

        session_id, heard = asyncio.run(over_websocket())
        dump = dump_of(world, session_id)
    else:
        steps = world.play("hangup.pcap", 2500, line, 300)
        code, out = asyncio.run(sip_call(world, "hangup", steps, "await-bye"))
        assert code == 0, out  # the node sent the BYE
        session_id, dump = sip_dump(world.node.cwd / "dumps", "hangup")
    no_errors(dump, heard)
    assert len(script.chats) == 1
    tts = [c for c in commands(dump, "tts") if c.get("streaming")]
    assert [c["text"].strip() for c in tts] == list(BYE_LINES)
    assert tts[-1]["endOfStream"] is True and tts[-1]["autoHangup"] is True
    play_id = tts[-1]["playId"]
    assert not [e for e in events(dump, "interruption") if e.get("playId") == play_id]
    names = [(r["type"], r.get("event") or r.get("command"), r.get("playId")) for r in dump]
    end = names.index(("event", "trackEnd", play_id))
    hangup = next(i for i, n in enumerate(names) if n[:2] == ("event", "hangup"))
    assert end < hangup
    assert events(dump, "hangup")[0]["initiator"] == "system"
    # both sentences were played out: the track lasted as long as piper's two sentences
    spoken_ms = sum(len(spoken_16k(text)) for text in BYE_LINES) // 16
    (track_end,) = [e for e in events(dump, "trackEnd") if e.get("playId") == play_id]
    assert track_end["duration"] >= 0.8 * spoken_ms, (track_end, spoken_ms)
    if heard is not None:  # and the caller got that audio before the hangup event
        start = heard.index(lambda e: e["event"] == "trackStart" and e.get("playId") == play_id)
        last = heard.index(lambda e: e["event"] == "hangup")
        assert heard.audio_between(start, last) >= 0.8 * spoken_ms * 32
        assert heard.names()[-1] == "hangup"


# --- barge-in while the agent speaks --------------------------------------------------------------

LONG_GREETING = (
    "Welcome to the barge in line. We have many options for you today."
    " Please listen carefully to all of them. Our menu has recently changed."
    " You can also visit our web site at any time."
)


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_the_caller_barges_in_and_the_agent_stops(world: World, transport: str) -> None:
    world.playbook(
        "bargein",
        f"greeting: {LONG_GREETING}\ninterruption: {{strategy: both, ignoreFirstMs: 800}}\n",
        "[case:bargein/{{ call_type }}] Answer in one sentence.\n",
    )
    script = world.llm.script("bargein", [f"[case:bargein/{transport}]"], ["Sure, how can I help?"])
    line = "I need to talk to a person."
    heard: Heard | None = None
    if transport == "websocket":

        async def over_websocket() -> tuple[str, Heard]:
            session_id = await start_run(world, "bargein")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                start = await caller.until(
                    lambda e: e["event"] == "trackStart" and bool(e.get("playId"))
                )
                await asyncio.sleep(1.5)
                await caller.say(line, then_ms=300)
                await caller.until(  # the answer to what the caller said was played
                    lambda e: ended_play(e) and e["playId"] != start["playId"], timeout=30
                )
                await caller.send({"command": "hangup"})
                return session_id, await caller.ended()

        session_id, heard = asyncio.run(over_websocket())
        dump = dump_of(world, session_id)
    else:
        steps = [*world.play("bargein.pcap", 3500, line, 300), ("pause", 6000)]
        code, out = asyncio.run(sip_call(world, "bargein", steps, "bye"))
        assert code == 0, out
        session_id, dump = sip_dump(world.node.cwd / "dumps", "bargein")
    no_errors(dump, heard)
    greeting = commands(dump, "tts")[0]
    assert greeting["text"] == LONG_GREETING
    cut = events(dump, "interruption")[0]
    assert cut["playId"] == greeting["playId"]
    # the runner cut the agent while the caller was still speaking: before the final text
    order = [r.get("event") or r.get("command") for r in dump]
    assert order.index("interrupt") < order.index("interruption") < order.index("asrFinal")
    assert commands(dump, "interrupt")[0]["graceful"] is True
    (greeting_end,) = [e for e in events(dump, "trackEnd") if e.get("playId") == greeting["playId"]]
    assert greeting_end["duration"] < len(spoken_16k(LONG_GREETING)) // 16
    # what the caller said was heard and answered after the cut
    (chat,) = script.chats
    assert chat["messages"][-1]["role"] == "user" and chat["messages"][-1]["content"]
    assert "Sure, how can I help?" in tts_texts(dump)
    if heard is not None:
        assert "interruption" in heard.names()


# --- follow-up after silence, then hangup ---------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_silence_gets_a_follow_up_then_the_call_ends(world: World, transport: str) -> None:
    world.playbook(
        "followup",
        "greeting: Hello, is anyone there?\nfollowUp: {timeout: 1500, maxCount: 1}\n",
        "[case:followup/{{ call_type }}] Check the caller is there.\n",
    )
    script = world.llm.script(
        "followup", [f"[case:followup/{transport}]"], ["Are you still on the line?"]
    )
    heard: Heard | None = None
    if transport == "websocket":

        async def over_websocket() -> tuple[str, Heard]:
            session_id = await start_run(world, "followup")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                return session_id, await caller.ended(timeout=40)  # silent until the node ends

        session_id, heard = asyncio.run(over_websocket())
        dump = dump_of(world, session_id)
    else:
        code, out = asyncio.run(sip_call(world, "followup", [], "await-bye"))
        assert code == 0, out
        session_id, dump = sip_dump(world.node.cwd / "dumps", "followup")
    no_errors(dump, heard)
    tts = commands(dump, "tts")
    assert tts[0]["text"] == "Hello, is anyone there?" and tts[0]["waitInputTimeout"] == 1500
    assert tts[-1]["text"].strip() == "Are you still on the line?"
    assert tts[-1]["waitInputTimeout"] == 1500
    waited = [e for e in events(dump, "silence") if e["trackId"] == "server-side-track"]
    assert len(waited) >= 2  # one per waitInputTimeout: after the greeting, after the follow-up
    (chat,) = script.chats
    nudge = chat["messages"][-1]
    assert nudge["role"] == "system" and "said nothing" in nudge["content"]
    (hangup,) = commands(dump, "hangup")
    assert hangup["initiator"] == "system"
    assert events(dump, "hangup")[-1]["initiator"] == "system"


# --- posthook: the summary and the history reach a local HTTP server ------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_the_posthook_gets_the_summary_and_the_history(world: World, transport: str) -> None:
    world.playbook(
        "posthook",
        "greeting: This is the {{ call_type }} survey line.\n"
        f"posthook: {{url: '{world.hooks.url}/hook', summary: short}}\n",
        "[case:posthook/{{ call_type }}] Thank the caller for the feedback.\n",
    )
    answer = "Thank you for the feedback."
    summary = f"The {transport} caller liked the service."
    # the summary request carries the dialogue, not the prompt: the rendered greeting finds it
    markers = [f"[case:posthook/{transport}]", f"the {transport} survey line"]
    script = world.llm.script("posthook", markers, [answer], [summary])
    line = "I really like your service."
    heard: Heard | None = None
    if transport == "websocket":

        async def over_websocket() -> tuple[str, Heard]:
            session_id = await start_run(world, "posthook")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                greeting = await caller.until(ended_play)
                await caller.say(line, then_ms=300)
                await caller.until(lambda e: ended_play(e) and e["playId"] != greeting["playId"])
                await caller.send({"command": "hangup"})
                return session_id, await caller.ended()

        session_id, heard = asyncio.run(over_websocket())
    else:
        steps = [*world.play("posthook.pcap", 3000, line, 300), ("pause", 6000)]
        code, out = asyncio.run(sip_call(world, "posthook", steps, "bye"))
        assert code == 0, out
        session_id, _ = sip_dump(world.node.cwd / "dumps", "posthook")
    dump = dump_of(world, session_id)
    no_errors(dump, heard)
    received = wait_for(
        lambda: [r for r in world.hooks.received if (r[3] or {}).get("sessionId") == session_id]
    )
    ((method, path, headers, body),) = received
    assert path == "/hook"
    assert method == "POST" and headers["Content-Type"] == "application/json"
    assert body["sessionId"] == session_id
    assert body["summary"] == summary
    assert isinstance(body["timestamp"], int) and body["timestamp"] > 1_700_000_000_000
    final = next(e["text"] for e in events(dump, "asrFinal") if e["text"].strip())
    assert body["history"] == [
        {"role": "assistant", "content": f"This is the {transport} survey line."},
        {"role": "user", "content": final},
        {"role": "assistant", "content": answer},
    ]
    _, summarized = script.chats
    assert "Summarize this phone call" in summarized["messages"][0]["content"]
    assert final in summarized["messages"][1]["content"]


def wait_for(found: Any, timeout: float = 15) -> Any:
    """``found()`` once it is truthy (polled)."""
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


# --- DTMF: RFC 4733 events from sipp, in-band tones in a /call client's audio ---------------------

MENU = """[case:menu/{{ call_type }}] Main menu: offer sales.
<dtmf digit="1" action="goto" scene="sales"/>

# Scene: sales
[case:menu/{{ call_type }}] Sales scene: sell to {{ sip['X-Customer'] }}.
"""


async def keys_over_websocket(world: World, case: str, *presses: tuple[str, str]) -> str:
    """A ``/call`` client joins a run of ``case``; for each ``(after, keys)`` it waits until
    the agent's line ``after`` has played, then presses ``keys`` (tones in its audio); hangs
    up once the agent's last line has played. The session id."""
    session_id = await start_run(world, case)
    async with WsCaller.joined(world.node.http_port, session_id) as caller:
        played = 0
        for after, keys in presses:
            await until_played(caller, played + 1)
            played = sum(map(ended_play, caller.heard.events))
            said = texts_heard(world, session_id)
            assert any(after in text for text in said), (after, said)
            await caller.press(keys)
        await until_played(caller, played + 1, timeout=30)
        await caller.send({"command": "hangup"})
        await caller.ended()
    return session_id


async def until_played(caller: WsCaller, n: int, timeout: float = 20) -> None:
    """Wait until ``n`` of the agent's lines have played to their end."""
    async with asyncio.timeout(timeout):
        while sum(map(ended_play, caller.heard.events)) < n:
            assert not caller.closed.is_set(), caller.heard.names()
            await asyncio.sleep(0.02)


def texts_heard(world: World, session_id: str) -> list[str]:
    return tts_texts(dump_of(world, session_id))


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_a_dtmf_key_moves_the_call_to_another_scene(world: World, transport: str) -> None:
    world.playbook("menu", "greeting: Press one for sales.\n", MENU)
    script = world.llm.script("menu", [f"[case:menu/{transport}]"], ["Welcome to sales."])
    if transport == "websocket":
        session_id = asyncio.run(keys_over_websocket(world, "menu", ("Press one", "1")))
        dump, customer = dump_of(world, session_id), ""
    else:
        steps = [*world.play("menu.pcap", 2500, Key("1"), 200), ("pause", 6000)]
        code, out = asyncio.run(sip_call(world, "menu", steps, "bye"))
        assert code == 0, out
        _, dump = sip_dump(world.node.cwd / "dumps", "menu")
        customer = "menu-42"
    no_errors(dump)
    assert [e["digit"] for e in events(dump, "dtmf")] == ["1"]
    (chat,) = script.chats  # the key made the new scene's first turn
    system = chat["messages"][0]["content"]
    assert f"Sales scene: sell to {customer}." in system and "Main menu" not in system
    assert tts_texts(dump) == ["Press one for sales.", "Welcome to sales."]


COLLECT_FRONT = """dtmfCollectors:
  pin:
    description: a four digit code
    minDigits: 4
    maxDigits: 4
    interDigitTimeout: 3
    timeout: 20
    retryTimes: 2
    validation: {pattern: '^12', errorMessage: That code is not valid.}
"""


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_a_collector_refuses_a_wrong_entry_then_takes_the_right_one(
    world: World, transport: str
) -> None:
    world.playbook("collect", COLLECT_FRONT, "[case:collect/{{ call_type }}] Ask for the code.\n")
    first = [
        'Please enter your code. <collect type="pin" var="code"',
        ' prompt="Use the keypad."/>',
    ]
    script = world.llm.script(
        "collect", [f"[case:collect/{transport}]"], first, ["Your code is accepted."]
    )
    if transport == "websocket":
        session_id = asyncio.run(
            keys_over_websocket(
                world, "collect", ("Use the keypad.", "3456"), ("not valid", "1234")
            )
        )
        dump = dump_of(world, session_id)
    else:
        wrong = [Key(d) for d in "3456"]
        right = [Key(d) for d in "1234"]
        keys = [*_spaced(wrong), 5000, *_spaced(right)]
        steps = [*world.play("collect.pcap", 5000, *keys, 200), ("pause", 6000)]
        code, out = asyncio.run(sip_call(world, "collect", steps, "bye"))
        assert code == 0, out
        _, dump = sip_dump(world.node.cwd / "dumps", "collect")
    no_errors(dump)
    assert "".join(e["digit"] for e in events(dump, "dtmf")) == "34561234"
    texts = tts_texts(dump)
    assert texts[:2] == ["Please enter your code.", "Use the keypad."], texts
    assert "That code is not valid. Use the keypad." in texts
    assert texts[-1] == "Your code is accepted."
    _, second_chat = script.chats
    notes = [m["content"] for m in second_chat["messages"] if m["role"] == "system"]
    assert any("entered code = 1234" in note for note in notes), notes
    assert not any("3456" in note for note in notes)


def _spaced(keys: list[Key]) -> list[Part]:
    out: list[Part] = []
    for key in keys:
        out += [key, 300]
    return out


# --- <refer> to a second SIP peer -----------------------------------------------------------------


async def sipp_target(world: World, port: int) -> tuple[int, str]:
    """The second SIP peer: answers the transfer leg, speaks 2 s, then hangs up."""
    return await run_sipp("uas_answer_bye.xml", world.sipp, "-p", str(port), timeout=40)


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_refer_bridges_a_second_sip_peer_then_the_call_ends(world: World, transport: str) -> None:
    port = free_port(socket.SOCK_DGRAM)
    target = f"sip:agent@127.0.0.1:{port}"
    world.playbook("refer", "", "[case:refer/{{ call_type }}] Transfer every call.\n")
    reply = ["Let me transfer you now. ", f'<refer to="{target}"/>']
    script = world.llm.script("refer", [f"[case:refer/{transport}]"], reply)

    async def scenario() -> tuple[str, tuple[int, str], Heard | None]:
        peer = asyncio.create_task(sipp_target(world, port))
        await asyncio.sleep(0.3)  # listening
        heard: Heard | None = None
        if transport == "websocket":
            session_id = await start_run(world, "refer")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                heard = await caller.ended(timeout=40)  # the leg's BYE ends the call
        else:
            code, out = await sip_call(world, "refer", [], "await-bye")
            assert code == 0, out  # the node hung up the caller once the leg ended
            session_id = ""
        return session_id, await peer, heard

    session_id, (peer_code, peer_out), heard = asyncio.run(scenario())
    assert peer_code == 0, peer_out  # the leg's INVITE was answered, its BYE got a 200
    if transport == "sip":
        session_id, _ = sip_dump(world.node.cwd / "dumps", "refer")
    dump = dump_of(world, session_id)
    no_errors(dump, heard)
    assert len(script.chats) == 1
    assert tts_texts(dump) == ["Let me transfer you now."]
    (refer,) = commands(dump, "refer")
    assert refer["callee"] == target
    # after the reply was heard in full
    order = [(r.get("event") or r.get("command"), r.get("playId")) for r in dump]
    play_id = commands(dump, "tts")[0]["playId"]
    assert order.index(("trackEnd", play_id)) < order.index(("refer", None))
    legs = [e for e in events(dump) if e.get("refer")]
    assert [e["event"] for e in legs if e["event"] in ("answer", "hangup")] == ["answer", "hangup"]
    last = events(dump)[-1]
    assert last["event"] == "hangup" and not last.get("refer") and last["reason"] == "refer"
    if heard is not None:
        assert heard.names()[-1] == "hangup"


# --- a malformed playbook -------------------------------------------------------------------------

BROKEN = "---\nllm:\n  model: [unclosed\n---\nHello\n"


def test_a_malformed_playbook_is_a_clear_error_never_a_crash(world: World) -> None:
    broken = world.folder / "broken.md"
    broken.write_text(BROKEN)
    check = subprocess.run(
        [sys.executable, "-m", "activecall", "playbook", "check", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode != 0
    said = check.stdout + check.stderr
    assert f"{broken}:3" in said and "invalid YAML" in said, said
    # SIP: a call routed to it is refused with 503
    code, out = asyncio.run(
        run_sipp("uac_refused.xml", world.sipp, "-s", "broken", f"127.0.0.1:{world.node.sip_port}")
    )
    assert code == 0, out  # sipp expects exactly 503
    assert "broken.md:3: invalid YAML" in world.node.logs()

    # WebSocket: a run whose playbook broke before the call joined gets an error event
    world.playbook("late", "greeting: Still here.\n", "Say hello.\n")

    async def over_websocket() -> Heard:
        session_id = await start_run(world, "late")
        (world.folder / "late.md").write_text(BROKEN)
        async with WsCaller.joined(world.node.http_port, session_id) as caller:
            await caller.until(lambda e: e["event"] == "error")
            await caller.send({"command": "hangup"})
            return await caller.ended()

    heard = asyncio.run(over_websocket())
    (error,) = [e for e in heard.events if e["event"] == "error"]
    assert error["sender"] == "playbook"
    assert "late.md:3: invalid YAML" in error["error"]
    assert heard.names()[-1] == "hangup"  # the call went on, and ended cleanly
    assert world.node.get("/health")["workers"] == 1  # nothing crashed


# --- OpenAI tool calls: set_var, goto_scene, hangup_call ------------------------------------------

TOOLS = """[case:tools/{{ call_type }}] Intro: find the caller's plan.

# Scene: billing
[case:tools/{{ call_type }}] Billing for the {{ plan }} plan of {{ call_type }} call
{{ session_id }}.
"""


@pytest.mark.parametrize("transport", ["websocket", "sip"])
def test_native_tool_calls_set_a_variable_switch_scene_and_hang_up(
    world: World, transport: str
) -> None:
    world.playbook("tools", "", TOOLS)
    first = [
        *tool_call("call_1", "set_var", '{"key": "plan", "value": "gold"}', index=0),
        *tool_call("call_2", "goto_scene", '{"scene": "billing"}', index=1),
    ]
    second: list[Piece] = [
        "Your gold plan is ready. Goodbye.",
        *tool_call("call_3", "hangup_call", "{}"),
    ]
    script = world.llm.script("tools", [f"[case:tools/{transport}]"], first, second)
    heard: Heard | None = None
    if transport == "websocket":

        async def over_websocket() -> tuple[str, Heard]:
            session_id = await start_run(world, "tools")
            async with WsCaller.joined(world.node.http_port, session_id) as caller:
                return session_id, await caller.ended(timeout=30)  # hung up by the tool call

        session_id, heard = asyncio.run(over_websocket())
    else:
        code, out = asyncio.run(sip_call(world, "tools", [], "await-bye"))
        assert code == 0, out
        session_id, _ = sip_dump(world.node.cwd / "dumps", "tools")
    dump = dump_of(world, session_id)
    no_errors(dump, heard)
    asked, answered = script.chats
    names = {t["function"]["name"] for t in asked["tools"]}
    assert {"set_var", "goto_scene", "hangup_call"} <= names
    # the model got its calls' results, and the new scene's prompt with the variable in it
    system = answered["messages"][0]["content"]
    assert f"Billing for the gold plan of {transport} call\n{session_id}." in system
    calls = [m for m in answered["messages"] if m.get("tool_calls")]
    assert [c["id"] for c in calls[0]["tool_calls"]] == ["call_1", "call_2"]
    results = [m["tool_call_id"] for m in answered["messages"] if m["role"] == "tool"]
    assert results == ["call_1", "call_2"]
    (last,) = [c for c in commands(dump, "tts") if c.get("endOfStream")]
    assert last["autoHangup"] is True
    assert tts_texts(dump) == ["Your gold plan is ready.", "Goodbye."]
    assert events(dump, "hangup")[-1]["initiator"] == "system"
