"""The runner against the OpenAI chat-completions fake, through the real ``OpenAiLlm`` client.

Each test plays the session's part: it feeds the events a session would emit (``answer``,
``asrFinal``, ``trackStart``/``trackEnd`` of the runner's own ``playId``\\ s, ``dtmf`` ...) and
checks the commands the runner sends and the requests the LLM fake and local HTTP servers got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from activecall.playbook.parser import parse_playbook
from activecall.playbook.posthook import SUMMARY_PROMPTS
from activecall.playbook.runner import FOLLOWUP_NUDGE, MAX_HTTP_ROUNDS, PlaybookRunner
from activecall.playbook.template import CallFacts
from activecall.providers.openai import OpenAiLlm
from tests.playbook.scripted import KEY, Recorder, ScriptedOpenAi
from tests.providers.fakes.openai import tool_call_deltas

BOUND = 10.0
T0 = 1_700_000_000_000
LLM = f"""\
llm:
  baseUrl: ${{LLM_URL}}
  apiKey: {KEY}
  model: test-model
"""


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)


class Call:
    """A runner on the test's loop; the test plays the session."""

    def __init__(self, fake: ScriptedOpenAi, front: str, body: str, **env: str) -> None:
        self.fake = fake
        self.now = T0
        self.commands: list[dict[str, Any]] = []
        self.errors: list[str] = []
        text = f"---\n{LLM}{front}---\n{body}"
        self.playbook = parse_playbook(text, environ={"LLM_URL": fake.url, **env})
        self.llm = OpenAiLlm()
        self.runner = PlaybookRunner(
            self.playbook,
            send=self.commands.append,
            llm=self.llm,
            facts=CallFacts(session_id="s1", caller="sip:alice@example.com"),
            clock=lambda: self.now,
            report=self.errors.append,
        )

    def event(self, event: str, /, **fields: Any) -> None:
        self.runner.on_event({"event": event, "timestamp": self.now, **fields})

    def at(self, ms: int) -> Call:
        self.now = T0 + ms
        return self

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.commands if c["command"] == name]

    def tts(self, play_id: str | None = None) -> list[dict[str, Any]]:
        return [c for c in self.named("tts") if play_id is None or c.get("playId") == play_id]

    def last_play_id(self) -> str:
        return str([c for c in self.commands if "playId" in c][-1]["playId"])

    def heard(self, play_id: str) -> None:
        """The session played ``play_id`` to its end."""
        self.event("trackStart", trackId="server-side-track", playId=play_id)
        self.event("trackEnd", trackId="server-side-track", playId=play_id, duration=900)

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not done():
                await asyncio.sleep(0.005)

    async def turn_done(self, count: int = 1) -> None:
        """Until ``count`` turns ended their speech (``endOfStream`` sent)."""
        await self.until(lambda: sum(bool(c.get("endOfStream")) for c in self.tts()) >= count)

    async def close(self) -> None:
        await self.runner.aclose()
        await self.llm.aclose()


async def play(
    scenario: Callable[[Call], Awaitable[None]],
    *replies: list[str],
    front: str = "",
    body: str = "You help callers.\n",
) -> Call:
    """Run ``scenario(call)`` with the LLM fake scripted with ``replies``."""
    async with asyncio.timeout(BOUND), ScriptedOpenAi(*replies) as fake:
        call = Call(fake, front, body)
        try:
            await scenario(call)
        finally:
            await call.close()
        return call


def run(
    scenario: Callable[[Call], Awaitable[None]],
    *replies: list[str],
    front: str = "",
    body: str = "You help callers.\n",
) -> Call:
    """:func:`play` on a fresh loop."""
    return asyncio.run(play(scenario, *replies, front=front, body=body))


# --- greeting, question, streamed answer ----------------------------------------------------------


def test_greeting_then_a_question_streams_the_answer_on_one_play_id() -> None:
    front = "greeting: Hello {{ caller }}, this is Acme.\n"
    body = "You help {{ caller }} with orders. Session {{ session_id }} ({{ call_type }}).\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        greeting = call.last_play_id()
        call.at(100).heard(greeting)
        call.at(2000).event("asrFinal", trackId="s1", index=0, text="Where is my order?")
        await call.turn_done()

    reply = ["Your order", " shipped yesterday.", " It arrives", " on Friday."]
    call = run(scenario, reply, front=front, body=body)
    greeting, *answer = call.tts()
    assert greeting == {
        "command": "tts",
        "text": "Hello sip:alice@example.com, this is Acme.",
        "playId": "s1-pb1",
    }
    assert {c["playId"] for c in answer} == {"s1-pb2"}
    assert all(c["streaming"] for c in answer)
    assert [c["text"] for c in answer] == [
        "Your order shipped yesterday. ",
        "It arrives on Friday.",
    ]
    assert [bool(c.get("endOfStream")) for c in answer] == [False, True]
    (chat,) = call.fake.chats()
    assert chat["model"] == "test-model" and chat["stream"] is True
    system, said, asked = chat["messages"]
    # rendered for a WebSocket call too (upstream sends it unrendered: reference §4.1)
    assert system["content"].startswith(
        "You help sip:alice@example.com with orders. Session s1 (websocket)."
    )
    assert "<hangup/>" in system["content"]  # the tool instructions follow the scene prompt
    assert said == {"role": "assistant", "content": "Hello sip:alice@example.com, this is Acme."}
    assert asked == {"role": "user", "content": "Where is my order?"}
    assert [c["text"] for c in call.named("history")] == [
        "Hello sip:alice@example.com, this is Acme.",
        "Your order shipped yesterday. It arrives on Friday.",
    ]
    assert call.runner.history[-1] == {
        "role": "assistant",
        "content": "Your order shipped yesterday. It arrives on Friday.",
    }
    assert call.errors == []


# --- tags ---------------------------------------------------------------------------------------


def test_tags_split_across_chunks_are_never_cut_and_hangup_rides_the_last_sentence() -> None:
    reply = [
        "Thanks for calling. I noted ",
        "your address, 12.5 Main St",
        ". <set_",
        'var key="addr" value="12.5 Main St."/>Good',
        "bye",
        "! <hang",
        "up/>",
    ]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, reply)
    texts = [c["text"] for c in call.tts()]
    assert texts == [
        "Thanks for calling. ",
        "I noted your address, 12.5 Main St. ",
        "Goodbye!",
    ]
    last = call.tts()[-1]
    assert last["endOfStream"] is True and last["autoHangup"] is True
    assert "waitInputTimeout" not in last
    assert call.runner.vars == {"addr": "12.5 Main St."}
    assert call.named("hangup") == []  # the session hangs up when the speech has been heard


def test_refer_is_sent_once_the_reply_has_been_heard() -> None:
    reply = ["Let me transfer you <ref", 'er to="sip:agent@10.0.', '0.5:5060"/> now.']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        assert call.named("refer") == []
        call.heard(call.last_play_id())

    call = run(scenario, reply)
    assert [c["text"] for c in call.tts()] == ["Let me transfer you ", "now."]
    assert call.named("refer") == [
        {"command": "refer", "caller": "", "callee": "sip:agent@10.0.0.5:5060"}
    ]


def test_goto_re_renders_the_scene_prompt_with_a_set_var_value() -> None:
    body = """\
# Scene: intro
Ask the caller's name.

# Scene: help
Help {{ name }} with their account ({{ call_type }}).
"""
    replies = (
        ["Hi! What is your name?"],
        ['<set_var key="name" value="Ada"/>Nice to meet you, Ada. <goto scene="help"/>'],
        ["Your balance is fine."],
    )

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done(1)
        call.event("asrFinal", trackId="s1", text="I'm Ada.")
        await call.turn_done(2)
        assert call.runner.scene.id == "help"
        call.event("asrFinal", trackId="s1", text="What is my balance?")
        await call.turn_done(3)

    call = run(scenario, *replies, body=body)
    systems = [chat["messages"][0]["content"] for chat in call.fake.chats()]
    assert systems[0].startswith("Ask the caller's name.")
    assert systems[1].startswith("Ask the caller's name.")
    assert systems[2].startswith("Help Ada with their account (websocket).")
    assert [c["text"] for c in call.tts()][-1] == "Your balance is fine."


def test_an_http_tag_goes_to_the_server_and_its_answer_back_to_the_llm() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    async def main() -> tuple[Call, Recorder]:
        async with Recorder({"status": "shipped", "eta": "Friday"}) as server:
            url = f"{server.url}/orders/42"
            reply = [
                'One moment. <http url="',
                url,
                '" method="POST" body=\'{"id": "42"}\'/>',
            ]
            call = await play(scenario, reply, ["It shipped and arrives Friday."])
            return call, server

    call, server = asyncio.run(main())
    ((method, path, headers, body),) = server.received
    assert (method, path, body) == ("POST", "/orders/42", {"id": "42"})
    assert headers["Content-Type"] == "application/json"
    _, second = call.fake.chats()
    note = second["messages"][-1]
    assert note["role"] == "system"
    assert note["content"].startswith(f"HTTP POST {server.url}/orders/42 answered 200:")
    assert json.loads(note["content"].split("\n", 1)[1]) == {"status": "shipped", "eta": "Friday"}
    tts = call.tts()
    assert [c["text"] for c in tts] == ["One moment. ", "It shipped and arrives Friday."]
    assert {c["playId"] for c in tts} == {"s1-pb1"}  # one turn, one playId, over both rounds
    assert [bool(c.get("endOfStream")) for c in tts] == [False, True]


def test_http_rounds_are_capped() -> None:
    tag = ['Checking. <http url="http://127.0.0.1:9/x"/>']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, *([tag] * (MAX_HTTP_ROUNDS + 2)))
    assert len(call.fake.chats()) == MAX_HTTP_ROUNDS + 1
    assert call.errors == [f"more than {MAX_HTTP_ROUNDS} <http> rounds in one turn: stopped"]
    notes = [m for m in call.runner.history if m["role"] == "system"]
    assert len(notes) == MAX_HTTP_ROUNDS
    assert notes[0]["content"].startswith("HTTP GET http://127.0.0.1:9/x failed:")


def test_a_json_tool_reply_speaks_then_transfers() -> None:
    reply = ['{"text": "Transferring you now.",', ' "tools": [{"name": "refer", "to": "sip:b@c"}]}']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.heard(call.last_play_id())

    call = run(scenario, reply)
    (spoken,) = call.tts()
    assert spoken["text"] == "Transferring you now." and spoken["endOfStream"]
    assert call.named("refer") == [{"command": "refer", "caller": "", "callee": "sip:b@c"}]


# --- DTMF ---------------------------------------------------------------------------------------


MENU = """\
# Scene: menu
<dtmf digit="1" action="goto" scene="billing"/>
<dtmf digit="2" action="transfer" target="sip:sales@example.com"/>
Offer billing or sales.

# Scene: billing
<play file="sounds/billing.wav"/>
You handle billing.
"""


def test_dtmf_menu_goto_plays_the_scene_file_then_the_llm_speaks() -> None:
    front = 'greeting: Press 1 for billing.\ndtmf:\n  "0": { action: hangup }\n'

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        greeting = call.last_play_id()
        call.event("trackStart", trackId="server-side-track", playId=greeting)
        call.at(1500).event("dtmf", trackId="s1", digit="1")  # while the greeting plays
        assert call.commands[-2] == {"command": "interrupt"}
        play = call.commands[-1]
        assert play["command"] == "play" and play["url"] == "sounds/billing.wav"
        assert call.fake.chats() == []
        call.heard(play["playId"])
        await call.turn_done()
        call.event("dtmf", trackId="s1", digit="0")  # global key, first press (upstream #50)

    call = run(scenario, ["Billing here. How can I help?"], front=front, body=MENU)
    (chat,) = call.fake.chats()
    assert chat["messages"][0]["content"].startswith("You handle billing.")
    assert [c["text"] for c in call.tts()][-2:] == ["Billing here. ", "How can I help?"]
    assert call.commands[-1] == {"command": "hangup", "reason": "caller", "initiator": "caller"}


def test_dtmf_transfer_sends_refer() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.event("dtmf", trackId="s1", digit="2")
        call.event("dtmf", trackId="s1", digit="7")  # no action: nothing

    call = run(scenario, front="greeting: Hi.\n", body=MENU)
    assert call.commands[-1] == {
        "command": "refer",
        "caller": "",
        "callee": "sip:sales@example.com",
    }


COLLECTORS = """\
dtmfCollectors:
  pin:
    description: a 4-digit PIN
    digits: 4
    finishKey: "#"
    timeout: 10
    interDigitTimeout: 3
    validation:
      pattern: "^[1-9][0-9]{3}$"
      errorMessage: That PIN is not valid.
    retryTimes: 2
"""


def test_a_collector_with_a_wrong_then_a_right_entry() -> None:
    prompt = "Please enter your PIN, then press pound."
    replies = (
        [f'Sure. <collect type="pin" var="pin" prompt="{prompt}"/>'],
        ["Thanks, your PIN is confirmed."],
    )

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.heard(call.last_play_id())
        call.event("asrFinal", trackId="s1", text="one two three four")  # keypad only: ignored
        for digit in "12#":
            call.event("dtmf", trackId="s1", digit=digit)
        error = call.tts()[-1]
        assert error["text"] == f"That PIN is not valid. {prompt}"
        call.heard(error["playId"])
        for digit in "4821#":
            call.event("dtmf", trackId="s1", digit=digit)
        await call.turn_done(2)

    call = run(scenario, *replies, front=COLLECTORS)
    assert [c["text"] for c in call.tts()[:2]] == ["Sure. ", f"{prompt} "]
    assert call.runner.vars == {"pin": "4821"}
    first, second = call.fake.chats()
    system = first["messages"][0]["content"]
    assert "- pin: a 4-digit PIN, 4 digits, ended with #" in system
    assert second["messages"][-1] == {
        "role": "system",
        "content": "The caller entered pin = 4821 on the keypad (pin).",
    }
    assert all(m.get("content") != "one two three four" for m in second["messages"])


def test_a_collection_that_times_out_tells_the_llm() -> None:
    replies = (['<collect type="pin" var="pin" prompt="Your PIN?"/>'], ["No problem."])

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.runner.tick(T0 + 60_000)  # not armed before the prompt has been heard
        assert len(call.fake.chats()) == 1
        call.at(1000).heard(call.last_play_id())
        call.runner.tick(T0 + 10_999)
        assert len(call.fake.chats()) == 1
        call.runner.tick(T0 + 11_000)
        await call.turn_done(2)

    call = run(scenario, *replies, front=COLLECTORS)
    assert call.fake.chats()[1]["messages"][-1]["content"] == (
        "Collecting pin (pin) failed: no keys were pressed."
    )


# --- barge-in -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["vad", "asr", "both", "none"])
def test_barge_in_per_strategy(strategy: str) -> None:
    front = (
        "greeting: Welcome to the long greeting of this line.\n"
        f"interruption:\n  strategy: {strategy}\n  ignoreFirstMs: 800\n"
        "  fillerWordFilter: true\n  volumeFadeMs: 120\n"
    )
    cut: dict[str, int] = {}

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        greeting = call.last_play_id()
        call.at(0).event("trackStart", trackId="server-side-track", playId=greeting)
        steps: list[tuple[int, str, dict[str, Any]]] = [
            (300, "speaking", {"trackId": "s1", "startTime": T0 + 300}),  # within ignoreFirstMs
            (500, "asrDelta", {"trackId": "s1", "text": "hold on"}),
            (900, "asrDelta", {"trackId": "s1", "text": "um, uh"}),  # fillers
            (950, "speaking", {"trackId": "s1", "isFiller": True}),
            (1000, "speaking", {"trackId": "s1", "startTime": T0 + 1000}),
            (1100, "asrDelta", {"trackId": "s1", "text": "hold on"}),
            (1200, "asrDelta", {"trackId": "s1", "text": "hold on please"}),
        ]
        for ms, name, fields in steps:
            call.at(ms).event(name, **fields)
            if call.named("interrupt") and "at" not in cut:
                cut["at"] = ms

    call = run(scenario, front=front)
    expected = {"vad": 1000, "both": 1000, "asr": 1100}.get(strategy)
    assert cut.get("at") == expected
    if expected is not None:
        assert call.named("interrupt") == [
            {"command": "interrupt", "graceful": True, "fadeOutMs": 120}
        ]


def test_no_barge_in_right_after_the_callers_final_and_none_queues_the_turn() -> None:
    front = "greeting: Hello there.\ninterruption:\n  strategy: none\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        greeting = call.last_play_id()
        call.at(0).event("trackStart", trackId="server-side-track", playId=greeting)
        call.at(1500).event("speaking", trackId="s1")
        call.at(2500).event("asrFinal", trackId="s1", text="Can I ask something?")
        assert call.fake.chats() == [] and call.named("interrupt") == []
        call.at(3000).event("trackEnd", trackId="server-side-track", playId=greeting)
        await call.turn_done()

    call = run(scenario, ["Of course."], front=front)
    assert call.fake.chats()[0]["messages"][-1] == {
        "role": "user",
        "content": "Can I ask something?",
    }


# --- follow-up ------------------------------------------------------------------------------------


def test_follow_up_after_silence_then_hangup() -> None:
    front = "greeting: Hello?\nfollowUp:\n  timeout: 4000\n  maxCount: 1\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        assert call.tts()[0]["waitInputTimeout"] == 4000
        call.heard(call.last_play_id())
        call.at(3000).event("silence", trackId="s1", startTime=T0, duration=3000)  # the VAD's
        assert call.fake.chats() == []
        call.at(4500).event("silence", trackId="server-side-track", startTime=T0, duration=4000)
        await call.turn_done()
        assert call.named("hangup") == []
        call.at(6000).heard(call.last_play_id())
        call.at(10_000).event("silence", trackId="server-side-track", duration=4000)

    call = run(scenario, ["Are you still there?"], front=front)
    (chat,) = call.fake.chats()
    assert chat["messages"][-1] == {"role": "system", "content": FOLLOWUP_NUDGE}
    final = call.tts()[-1]
    assert final["text"] == "Are you still there?" and final["waitInputTimeout"] == 4000
    assert call.commands[-1] == {"command": "hangup", "reason": "system", "initiator": "system"}


# --- posthook -------------------------------------------------------------------------------------


def test_the_posthook_gets_the_summary_and_the_history() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.event("asrFinal", trackId="s1", text="Where is my order?")
        await call.turn_done()
        call.at(9000).event("hangup", trackId="s1", reason="caller", initiator="caller")
        await call.runner.aclose()

    async def main() -> tuple[Call, Recorder]:
        async with Recorder({"ok": True}) as server:
            front = (
                "greeting: Hi, Acme here.\n"
                f"posthook:\n  url: {server.url}/calls\n  summary: short\n"
                "  headers:\n    X-Token: t0k\n"
            )
            replies = (["It shipped yesterday."], ["The caller asked where their order is."])
            call = await play(scenario, *replies, front=front)
            return call, server

    call, server = asyncio.run(main())
    ((method, path, headers, body),) = server.received
    assert (method, path, headers["X-Token"]) == ("POST", "/calls", "t0k")
    assert body == {
        "sessionId": "s1",
        "summary": "The caller asked where their order is.",
        "history": [
            {"role": "assistant", "content": "Hi, Acme here."},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "It shipped yesterday."},
        ],
        "timestamp": T0 + 9000,
    }
    summary = call.fake.chats()[1]["messages"]
    assert summary[0] == {"role": "system", "content": SUMMARY_PROMPTS["short"]}
    assert summary[1]["content"] == (
        "assistant: Hi, Acme here.\nuser: Where is my order?\nassistant: It shipped yesterday."
    )


# --- realtime -------------------------------------------------------------------------------------


def test_realtime_function_calls_control_the_call() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        assert call.commands == []  # the realtime model speaks, not the runner
        call.event(
            "functionCall", trackId="s1", callId="c1", name="goto_scene", arguments='{"scene": "b"}'
        )
        call.event(
            "functionCall",
            trackId="s1",
            callId="c2",
            name="transfer_call",
            arguments='{"callee": "sip:x@y"}',
        )
        call.event(
            "functionCall",
            trackId="s1",
            callId="c2b",
            name="refer_call",
            arguments='{"callee_uri": "sip:z@y"}',
        )
        call.event("functionCall", trackId="s1", callId="c3", name="teleport", arguments="{}")
        call.event("functionCall", trackId="s1", callId="c4", name="hangup_call", arguments="")

    front = "realtime:\n  provider: openai\n"
    call = run(scenario, front=front, body="# Scene: a\nA.\n# Scene: b\nB.\n")
    assert call.runner.scene.id == "b"
    assert call.commands == [
        {"command": "refer", "caller": "", "callee": "sip:x@y"},
        {"command": "refer", "caller": "", "callee": "sip:z@y"},
        {"command": "hangup", "reason": "system", "initiator": "system"},
    ]
    assert call.errors == ["unknown action function 'teleport'"]


# --- bad input ------------------------------------------------------------------------------------


def test_bad_tags_and_an_unknown_scene_are_reported_not_spoken() -> None:
    reply = ['Okay. <refer/><goto scene="nowhere"/><http url="ftp://x"/>Done.']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, reply)
    assert [c["text"] for c in call.tts()] == ["Okay. ", "Done."]
    assert call.errors == [
        "<refer> needs to",
        "goto: no scene 'nowhere'",
        "<http>: url must be http(s), got 'ftp://x'",
    ]
    assert {"role": "system", "content": "There is no scene 'nowhere'."} in call.runner.history


def test_an_llm_failure_is_reported_and_the_call_goes_on() -> None:
    async def scenario(call: Call) -> None:
        call.fake.api_key = "sk-other"  # the service refuses our key
        call.event("answer", trackId="s1", sdp="")
        await call.until(lambda: bool(call.errors))
        call.fake.api_key = KEY
        call.event("asrFinal", trackId="s1", text="Hello?")
        await call.turn_done()

    call = run(scenario, ["Hi, sorry about that."])
    assert call.errors[0].startswith("LLM: openai:")
    assert "Incorrect API key" in call.errors[0]
    assert call.tts()[-1]["text"] == "Hi, sorry about that."


def test_events_of_the_wrong_shape_are_ignored() -> None:
    async def scenario(call: Call) -> None:
        call.runner.on_event({"no": "event"})
        call.runner.on_event({"event": 5})
        call.event("asrFinal", text="too early: not answered")
        call.event("dtmf", trackId="s1")
        call.event("answer", trackId="s1", sdp="")
        call.event("dtmf", trackId="s1", digit="")
        call.event("asrFinal", trackId="s1", text="   ")
        call.event("trackEnd", trackId="server-side-track", playId="not-ours")
        call.event("answer", trackId="s1", sdp="", refer=True)
        call.event("hangup", refer=True)
        assert not call.runner.ended

    call = run(scenario, front="greeting: Hi.\n")
    assert [c["command"] for c in call.commands] == ["tts", "history"]
    assert call.errors == []


# --- what follows the speech ----------------------------------------------------------------------


def test_a_barge_in_drops_the_transfer_that_was_to_follow() -> None:
    front = "interruption:\n  ignoreFirstMs: 500\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        play_id = call.last_play_id()
        call.at(0).event("trackStart", trackId="server-side-track", playId=play_id)
        call.at(900).event("speaking", trackId="s1")
        call.event("interruption", trackId="server-side-track", playId=play_id, current=900)
        call.event("trackEnd", trackId="server-side-track", playId=play_id, duration=900)

    call = run(scenario, ['Let me transfer you. <refer to="sip:agent@x"/>'], front=front)
    assert call.named("interrupt") == [{"command": "interrupt", "graceful": True}]
    assert call.named("refer") == []


def test_a_file_then_hangup_plays_after_the_speech_and_hangs_up_after_the_file() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        assert "autoHangup" not in call.tts()[-1]
        call.heard(call.last_play_id())

    call = run(scenario, ['Here is our jingle. <play file="jingle.wav"/><hangup/>'])
    play = call.commands[-1]
    assert play == {"command": "play", "url": "jingle.wav", "playId": "s1-pb2", "autoHangup": True}


def test_context_repair_joins_an_utterance_split_in_two() -> None:
    front = "  features: [context_repair]\n  repairWindowMs: 3000\n"  # more llm keys
    replies = (["Hi there, how can I help you?"], ["Sure?"], ["Which flight is it?"])

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done(1)
        call.at(1000).event("asrFinal", trackId="s1", text="I want to")
        await call.turn_done(2)
        call.at(2500).event("asrFinal", trackId="s1", text="change my flight")
        await call.turn_done(3)

    call = run(scenario, *replies, front=front)
    last = call.fake.chats()[2]["messages"]
    assert [m["content"] for m in last[1:]] == [
        "Hi there, how can I help you?",
        "I want to change my flight",
    ]


def test_a_rolling_summary_replaces_the_older_turns() -> None:
    front = "  features: [rolling_summary]\n  summaryLimit: 4\n"  # more llm keys
    replies = [[f"Answer {n}."] for n in range(4)]
    replies.insert(4, ["They asked three questions."])  # the summary, asked before turn 4
    replies.append(["Answer 4."])

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done(1)
        for n in range(1, 5):
            call.event("asrFinal", trackId="s1", text=f"Question {n}?")
            await call.turn_done(n + 1)

    call = run(scenario, *replies, front=front)
    chats = call.fake.chats()
    assert chats[4]["messages"][0]["content"] == SUMMARY_PROMPTS["detailed"]
    system, *rest = chats[5]["messages"]
    assert system["content"].endswith(
        "The conversation so far, summarized:\nThey asked three questions."
    )
    assert len(rest) == 6 and rest[-1] == {"role": "user", "content": "Question 4?"}


def test_message_tags_bad_json_tools_and_an_unknown_collector() -> None:
    replies = (
        ['Sent. <message body="Your code is 1234" contentType="text/plain"/>'],
        ['{"text": "Okay.", "tools": [{"name": "fly"}, "hangup", {"name": "accept"}]}'],
        ['<collect type="nope" var="x" prompt="Type it."/>'],
    )

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done(1)
        call.event("asrFinal", trackId="s1", text="Again?")
        await call.turn_done(2)
        call.event("asrFinal", trackId="s1", text="And now?")
        await call.until(lambda: len(call.errors) == 3)

    call = run(scenario, *replies)
    assert call.named("message") == [
        {"command": "message", "body": "Your code is 1234", "contentType": "text/plain"}
    ]
    assert call.named("accept") == [{"command": "accept", "option": {}}]
    assert call.errors == [
        "unknown action tool 'fly'",
        "a tool must be an object with a 'name'",
        "<collect>: no collector 'nope'",
    ]
    assert call.runner.history[-1] == {
        "role": "system",
        "content": "There is no collector 'nope' (collectors: none).",
    }


# --- native tool calling --------------------------------------------------------------------------


def tool_names(chat: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in chat.get("tools", [])]


def test_a_tool_call_transfers_after_the_speech_and_is_answered_in_the_history() -> None:
    arguments = '{"callee": "sip:sales@example.com"}'
    reply = [
        "Let me transfer you.",
        *tool_call_deltas([("call_t1", "transfer_call", arguments)], pieces=3),
    ]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        assert call.named("refer") == []
        call.heard(call.last_play_id())
        call.event("asrFinal", trackId="s1", text="Thanks.")
        await call.turn_done(2)

    call = run(scenario, reply, ["You're welcome."])
    first, second = call.fake.chats()
    assert tool_names(first) == ["hangup_call", "transfer_call", "set_var", "http", "play"]
    assert "<hangup/>" in first["messages"][0]["content"]  # the tag instructions stay
    (spoken, *_) = call.tts()
    assert spoken["text"] == "Let me transfer you." and spoken["endOfStream"] is True
    assert call.named("refer") == [
        {"command": "refer", "caller": "", "callee": "sip:sales@example.com"}
    ]
    # the next request carries the call and its result in the API's own shape
    assert second["messages"][1:4] == [
        {
            "role": "assistant",
            "content": "Let me transfer you.",
            "tool_calls": [
                {
                    "id": "call_t1",
                    "type": "function",
                    "function": {"name": "transfer_call", "arguments": arguments},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_t1",
            "content": "The caller will be transferred to sip:sales@example.com once your reply"
            " has been heard.",
        },
        {"role": "user", "content": "Thanks."},
    ]
    assert call.errors == []


def test_an_http_tool_call_goes_to_the_server_and_its_answer_back_as_the_tool_result() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    async def main() -> tuple[Call, Recorder]:
        async with Recorder({"status": "shipped"}) as server:
            arguments = json.dumps(
                {"url": f"{server.url}/orders/42", "method": "POST", "body": '{"id": "42"}'}
            )
            first = tool_call_deltas([("call_h", "http", arguments)], pieces=5)
            call = await play(scenario, first, ["It shipped."])
            return call, server

    call, server = asyncio.run(main())
    ((method, path, headers, body),) = server.received
    assert (method, path, body) == ("POST", "/orders/42", {"id": "42"})
    assert headers["Content-Type"] == "application/json"
    _, second = call.fake.chats()
    said, answer = second["messages"][-2:]
    assert said["role"] == "assistant" and said["content"] is None
    assert said["tool_calls"][0]["function"]["name"] == "http"
    assert answer["role"] == "tool" and answer["tool_call_id"] == "call_h"
    assert answer["content"].startswith(f"HTTP POST {server.url}/orders/42 answered 200:")
    assert [c["text"] for c in call.tts()] == ["It shipped."]  # nothing else was said
    assert call.errors == []


def test_scene_and_variable_tool_calls_then_the_model_speaks_in_the_new_scene() -> None:
    body = "# Scene: intro\nAsk the caller's name.\n\n# Scene: help\nHelp {{ name }}.\n"
    calls = [
        ("c1", "set_var", '{"key": "name", "value": "Ada"}'),
        ("c2", "goto_scene", '{"scene": "help"}'),
    ]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, tool_call_deltas(calls), ["How can I help, Ada?"], body=body)
    first, second = call.fake.chats()
    scene_tool = next(t for t in first["tools"] if t["function"]["name"] == "goto_scene")
    assert scene_tool["function"]["parameters"]["properties"]["scene"]["enum"] == ["help", "intro"]
    assert second["messages"][0]["content"].startswith("Help Ada.")
    assert [m["content"] for m in second["messages"][-2:]] == [
        "name = Ada",
        "Now in scene 'help'.",
    ]
    assert call.runner.scene.id == "help" and call.runner.vars == {"name": "Ada"}
    assert [c["text"] for c in call.tts()] == ["How can I help, Ada?"]


def test_bad_tool_calls_get_error_results_and_the_model_is_asked_again() -> None:
    calls = [
        ("b1", "teleport", "{}"),
        ("b2", "set_var", '{"key": '),
        ("b3", "transfer_call", "{}"),
        ("b4", "goto_scene", '{"scene": "nowhere"}'),
        ("b5", "http", '{"url": "ftp://x"}'),
    ]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    body = "# Scene: a\nA.\n# Scene: b\nB.\n"
    call = run(scenario, tool_call_deltas(calls), ["Sorry, I cannot do that."], body=body)
    _, second = call.fake.chats()
    answers = [m for m in second["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in answers] == ["b1", "b2", "b3", "b4", "b5"]
    assert [m["content"] for m in answers] == [
        "Error: unknown action function 'teleport'. Nothing was done.",
        "Error: function 'set_var': arguments are not JSON. Nothing was done.",
        "Error: function 'transfer_call' needs to. Nothing was done.",
        "Error: there is no scene 'nowhere' (scenes: a, b).",
        "Error: function 'http': url must be http(s), got 'ftp://x'. Nothing was done.",
    ]
    assert call.errors == [
        "tool call: unknown action function 'teleport'",
        "tool call: function 'set_var': arguments are not JSON",
        "tool call: function 'transfer_call' needs to",
        "goto: no scene 'nowhere'",
        "tool call: function 'http': url must be http(s), got 'ftp://x'",
    ]
    assert call.named("refer") == [] and call.runner.scene.id == "a"
    assert [c["text"] for c in call.tts()] == ["Sorry, I cannot do that."]


def test_a_hangup_tool_call_rides_the_last_sentence() -> None:
    reply = ["Goodbye!", *tool_call_deltas([("h1", "hangup_call", "")])]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, reply)
    (last,) = call.tts()
    assert last["text"] == "Goodbye!" and last["autoHangup"] is True
    assert len(call.fake.chats()) == 1  # said and done: no second round


def test_http_tool_rounds_are_capped() -> None:
    arguments = '{"url": "http://127.0.0.1:9/x"}'
    replies = [tool_call_deltas([(f"h{n}", "http", arguments)]) for n in range(6)]

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.until(lambda: bool(call.errors))

    call = run(scenario, *replies)
    assert len(call.fake.chats()) == MAX_HTTP_ROUNDS + 1
    assert call.errors == [f"more than {MAX_HTTP_ROUNDS} <http> rounds in one turn: stopped"]
    answers = [m["content"] for m in call.runner.history if m["role"] == "tool"]
    assert answers[0].startswith("HTTP GET http://127.0.0.1:9/x failed:")
    assert answers[-1] == f"Not done: at most {MAX_HTTP_ROUNDS} requests in one reply."


def test_tools_off_in_the_front_matter_and_a_server_that_refuses_them() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    off = run(scenario, ["Hello."], front="  tools: false\n")  # an llm key
    assert "tools" not in off.fake.chats()[0]

    async def refused(call: Call) -> None:
        call.fake.refuse_tools = True
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.event("asrFinal", trackId="s1", text="Hi.")
        await call.turn_done(2)

    call = run(refused, ["Hello."], ["Hi again."])
    asked, again, later = call.fake.chats()
    assert "tools" in asked and "tools" not in again and "tools" not in later
    assert [c["text"] for c in call.tts()] == ["Hello.", "Hi again."]
    assert call.errors == []


# --- early start on end of utterance --------------------------------------------------------------


async def reply_ready(call: Call, count: int) -> None:
    """Until the LLM fake has answered ``count`` chat requests (their replies are on the way)."""
    await call.until(lambda: len(call.fake.chats()) >= count)
    await asyncio.sleep(0.1)  # the reply streams in: an early turn must still say nothing


def test_an_early_turn_on_end_of_utterance_speaks_once_the_final_confirms_it() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.event("asrDelta", trackId="s1", index=0, text="where is")
        call.event("asrDelta", trackId="s1", index=0, text="where is my order")
        call.event("eou", trackId="s1", completed=False)  # not the end yet
        assert call.fake.chats() == []
        call.event("eou", trackId="s1", completed=True)
        await reply_ready(call, 1)
        assert len(call.tts()) == 1  # only the greeting so far
        call.event("asrFinal", trackId="s1", index=0, text="Where is my order?")
        await call.turn_done()

    call = run(scenario, ["It shipped.", " It arrives Friday."], front="greeting: Hi.\n")
    (chat,) = call.fake.chats()  # the early request was the turn's request
    assert chat["messages"][-1] == {"role": "user", "content": "where is my order"}
    assert [c["text"] for c in call.tts()] == ["Hi.", "It shipped. ", "It arrives Friday."]
    assert {"role": "user", "content": "Where is my order?"} in call.runner.history


def test_a_final_that_differs_cancels_the_early_turn_and_nothing_of_it_is_heard() -> None:
    early = ['Closing time is six. <set_var key="topic" value="hours"/><hangup/>']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.event("eou", trackId="s1", completed=True, text="what time")
        await reply_ready(call, 1)
        call.event("asrFinal", trackId="s1", index=0, text="What time do you open on Sunday?")
        await call.turn_done()

    call = run(scenario, early, ["We open at ten on Sundays."], front="greeting: Hi.\n")
    _, second = call.fake.chats()
    assert [m["content"] for m in second["messages"][1:]] == [
        "Hi.",
        "What time do you open on Sunday?",
    ]
    assert [c["text"] for c in call.tts()] == ["Hi.", "We open at ten on Sundays."]
    assert not any(c.get("autoHangup") for c in call.tts())
    assert call.runner.vars == {}  # the cancelled reply's tags were never acted on
    assert [m["content"] for m in call.runner.history] == [
        "Hi.",
        "What time do you open on Sunday?",
        "We open at ten on Sundays.",
    ]


def test_more_words_after_the_end_of_utterance_drop_the_early_turn() -> None:
    front = "  features: [context_repair]\ngreeting: Hi.\n"  # an llm key first

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.event("asrDelta", trackId="s1", index=0, text="I want")
        call.event("eou", trackId="s1", completed=True)
        await reply_ready(call, 1)
        call.event("asrDelta", trackId="s1", index=0, text="I want to change my flight")
        call.event("eou", trackId="s1", completed=True)  # a new early turn, with every word
        await reply_ready(call, 2)
        call.event("asrFinal", trackId="s1", index=0, text="I want to change my flight.")
        await call.turn_done()

    call = run(scenario, ["Sure?"], ["Which flight is it?"], front=front)
    first, second = call.fake.chats()
    assert first["messages"][-1]["content"] == "I want"
    assert [m["content"] for m in second["messages"][1:]] == ["Hi.", "I want to change my flight"]
    assert [c["text"] for c in call.tts()] == ["Hi.", "Which flight is it?"]


def test_end_of_utterance_is_ignored_while_the_agent_speaks_or_with_nothing_heard() -> None:
    front = "greeting: Hello there.\ninterruption:\n  fillerWordFilter: true\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        greeting = call.last_play_id()
        call.event("trackStart", trackId="server-side-track", playId=greeting)
        call.event("eou", trackId="s1", completed=True, text="hello")  # the agent speaks
        call.event("trackEnd", trackId="server-side-track", playId=greeting, duration=900)
        call.event("eou", trackId="s1", completed=True)  # nothing heard yet
        call.event("eou", trackId="s1", completed=True, text="um")  # a filler
        call.event("eou", trackId="s1", completed="yes", text="hello")  # wrong type
        await asyncio.sleep(0.1)
        assert call.fake.chats() == []
        call.event("asrFinal", trackId="s1", index=0, text="Hello?")
        await call.turn_done()
        call.heard(call.last_play_id())
        call.event("eou", trackId="s1", completed=True, text="hello")  # late: answered already
        await asyncio.sleep(0.1)

    call = run(scenario, ["Yes, I can hear you."], front=front)
    (chat,) = call.fake.chats()
    assert chat["messages"][-1] == {"role": "user", "content": "Hello?"}
    assert [c["text"] for c in call.tts()] == ["Hello there.", "Yes, I can hear you."]


def test_a_rolling_summary_never_parts_a_tool_result_from_its_call() -> None:
    front = "  features: [rolling_summary]\n  summaryLimit: 4\n"  # more llm keys
    called = {
        "role": "assistant",
        "content": "Noted.",
        "tool_calls": [
            {
                "id": "v1",
                "type": "function",
                "function": {"name": "set_var", "arguments": '{"key": "k", "value": "1"}'},
            }
        ],
    }
    seeded = [
        {"role": "user", "content": "Q0"},
        {"role": "assistant", "content": "A0"},
        {"role": "user", "content": "Q1"},
        called,
        {"role": "tool", "tool_call_id": "v1", "content": "k = 1"},  # where the cut would fall
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
        {"role": "user", "content": "Q3"},
        {"role": "assistant", "content": "A3"},
    ]

    async def scenario(call: Call) -> None:
        call.runner.history.extend(seeded)
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    call = run(scenario, ["They asked three things."], ["Answer 4."], front=front)
    summary, turn = call.fake.chats()
    assert summary["messages"][1]["content"] == "user: Q0\nassistant: A0\nuser: Q1"
    assert turn["messages"][1] == called and turn["messages"][2]["role"] == "tool"
    assert call.tts()[-1]["text"] == "Answer 4."
    assert call.errors == []


def test_filler_finals_are_not_turns_and_the_config_file_names_the_fillers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    front = "greeting: Hi.\ninterruption:\n  fillerWordFilter: true\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        for text in fillers:
            call.event("asrFinal", trackId="s1", index=0, text=text)
        await asyncio.sleep(0.1)
        assert call.fake.chats() == []
        call.event("asrFinal", trackId="s1", index=1, text=question)
        await call.turn_done()

    fillers, question = ["Um...", "uh, ah"], "um, where is my order?"
    built_in = run(scenario, ["On its way."], front=front)
    assert built_in.fake.chats()[0]["messages"][-1]["content"] == question
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fillers.txt").write_text("well\nso\n")
    monkeypatch.chdir(tmp_path)
    fillers, question = ["Well...", "so, well"], "Um"  # "um" is no filler on this list
    own = run(scenario, ["Yes?"], front=front)
    assert own.fake.chats()[0]["messages"][-1]["content"] == "Um"


@pytest.mark.parametrize("final", ["Change my flight.", "change my flight to Monday"])
def test_an_early_turn_with_context_repair_confirmed_or_dropped(final: str) -> None:
    front = "  features: [context_repair]\n"  # an llm key
    replies = (["Hi there, how can I help you?"], ["Sure?"], ["Early answer."], ["Which one?"])

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done(1)
        call.at(1000).event("asrFinal", trackId="s1", text="I want to")
        await call.turn_done(2)
        call.at(2500).event("asrDelta", trackId="s1", text="change my flight")
        call.event("eou", trackId="s1", completed=True)
        await reply_ready(call, 3)
        assert len(call.tts()) == 2  # the early answer waits
        call.event("asrFinal", trackId="s1", text=final)
        await call.turn_done(3)

    call = run(scenario, *replies, front=front)
    chats = call.fake.chats()
    early = chats[2]["messages"]
    assert early[-1] == {"role": "user", "content": "I want to change my flight"}  # repaired
    user = [m["content"] for m in call.runner.history if m["role"] == "user"]
    if final.startswith("Change"):  # the same words: the early answer is the answer
        assert len(chats) == 3
        assert user == ["I want to Change my flight."]
        assert call.tts()[-1]["text"] == "Early answer."
    else:  # more words: dropped, and the final repaired the same way from the same history
        assert len(chats) == 4
        assert chats[3]["messages"][-1]["content"] == f"I want to {final}"
        assert user == [f"I want to {final}"]
        assert "Early answer." not in [c["text"] for c in call.tts()]
        assert call.tts()[-1]["text"] == "Which one?"


# --- sip.hangup_headers on every hangup the playbook causes ---------------------------------------

HANGUP_HEADERS = """\
sip:
  hangup_headers:
    X-Outcome: '{{ outcome }}'
    X-Call: '{{ session_id }}'
"""


def test_a_hangup_tag_with_hangup_headers_hangs_up_after_the_speech_with_them() -> None:
    reply = ['<set_var key="outcome" value="booked"/>You are booked. Goodbye! <hangup/>']

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        final = call.tts()[-1]
        assert final["text"] == "Goodbye!" and final["endOfStream"] is True
        assert "autoHangup" not in final  # a session's autoHangup would send no headers
        play_id = call.last_play_id()
        call.event("trackStart", trackId="server-side-track", playId=play_id)
        assert call.named("hangup") == []  # not before the last sentence has been heard
        call.at(4000).event("trackEnd", trackId="server-side-track", playId=play_id)

    call = run(scenario, reply, front=HANGUP_HEADERS)
    assert call.commands[-1] == {
        "command": "hangup",
        "reason": "autohangup",
        "initiator": "system",
        "headers": {"X-Outcome": "booked", "X-Call": "s1"},
    }


def test_hangup_headers_after_a_file_and_none_when_the_caller_cuts_the_goodbye_off() -> None:
    async def file_then_hangup(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.heard(call.last_play_id())  # the speech; then the file plays
        play = call.commands[-1]
        assert play["command"] == "play" and "autoHangup" not in play
        assert call.named("hangup") == []
        call.heard(play["playId"])

    reply = ['<set_var key="outcome" value="done"/>Our jingle. <play file="j.wav"/><hangup/>']
    call = run(file_then_hangup, reply, front=HANGUP_HEADERS)
    assert call.named("hangup") == [
        {
            "command": "hangup",
            "reason": "autohangup",
            "initiator": "system",
            "headers": {"X-Outcome": "done", "X-Call": "s1"},
        }
    ]

    async def cut_off(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        play_id = call.last_play_id()
        call.event("trackStart", trackId="server-side-track", playId=play_id)
        call.at(2000).event("speaking", trackId="s1", startTime=T0 + 1800)
        call.event("interruption", trackId="server-side-track", playId=play_id, current=2000)
        call.event("trackEnd", trackId="server-side-track", playId=play_id, duration=2000)

    call = run(cut_off, ["Goodbye then! <hangup/>"], front=HANGUP_HEADERS)
    assert call.named("interrupt") != [] and call.named("hangup") == []  # as autoHangup


# --- the caller's end of speech starts the turn early ---------------------------------------------


EARLY = "greeting: Hi.\neou:\n  type: vad\n"  # the end-of-speech trigger on


def speech_ends(call: Call, words: str, *, start: int = 1000, length: int = 1500) -> None:
    """The VAD's speaking, the ASR's interim ``words``, then the segment's ending silence."""
    call.at(start + 300).event("speaking", trackId="s1", startTime=T0 + start)
    call.at(start + length).event("asrDelta", trackId="s1", index=0, text=words)
    call.at(start + length + 300).event(
        "silence", trackId="s1", startTime=T0 + start, duration=length
    )


def test_the_end_of_the_callers_speech_starts_the_turn_held_until_the_final() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        speech_ends(call, "where is my order")
        await reply_ready(call, 1)
        assert len(call.tts()) == 1  # only the greeting: nothing is said before the final
        call.event("asrFinal", trackId="s1", index=0, text="Where is my order?")
        await call.turn_done()

    call = run(scenario, ["It shipped.", " It arrives Friday."], front=EARLY)
    (chat,) = call.fake.chats()  # the early request was the turn's request
    assert chat["messages"][-1] == {"role": "user", "content": "where is my order"}
    assert [c["text"] for c in call.tts()] == ["Hi.", "It shipped. ", "It arrives Friday."]
    assert {"role": "user", "content": "Where is my order?"} in call.runner.history


def test_an_early_turn_whose_final_differs_is_dropped_and_the_final_answered() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        speech_ends(call, "what time")
        await reply_ready(call, 1)
        call.event("asrFinal", trackId="s1", index=0, text="What time do you open?")
        await call.turn_done()

    call = run(scenario, ["Six."], ["We open at nine."], front=EARLY)
    first, second = call.fake.chats()  # one LLM call wasted
    assert first["messages"][-1]["content"] == "what time"
    assert second["messages"][-1]["content"] == "What time do you open?"
    assert [c["text"] for c in call.tts()] == ["Hi.", "We open at nine."]


def test_only_the_silence_that_ends_a_speech_segment_with_words_heard_starts_a_turn() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.at(500).event("speaking", trackId="s1", startTime=T0 + 200)
        call.event("asrDelta", trackId="s1", index=0, text="hello")
        # a silenceTimeout tick (startTime = the silence's start), the server-side track's
        # waitInputTimeout silence: neither ends the caller's speech
        call.at(3000).event("silence", trackId="s1", startTime=T0 + 1000, duration=2000)
        call.event("silence", trackId="server-side-track", startTime=T0, duration=2000)
        # a segment with no words heard since the last final
        call.at(4000).event("speaking", trackId="s1", startTime=T0 + 3500)
        call.event("asrFinal", trackId="s1", index=0, text="")
        call.at(4500).event("silence", trackId="s1", startTime=T0 + 3500, duration=700)
        await asyncio.sleep(0.1)

    call = run(scenario, front=EARLY)
    assert call.fake.chats() == []


@pytest.mark.parametrize("front", ["greeting: Hi.\n", "greeting: Hi.\neou:\n  type: none\n"])
def test_the_end_of_speech_trigger_is_off_unless_eou_type_is_vad(front: str) -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        speech_ends(call, "where is my order")
        await asyncio.sleep(0.1)
        assert call.fake.chats() == []
        call.event("asrFinal", trackId="s1", index=0, text="Where is my order?")
        await call.turn_done()

    call = run(scenario, ["It shipped."], front=front)
    (chat,) = call.fake.chats()
    assert chat["messages"][-1] == {"role": "user", "content": "Where is my order?"}
    if "eou" in front:
        assert call.playbook.option["eou"]["type"] == "none"  # still carried into the option


# --- transfers ------------------------------------------------------------------------------------


def test_a_failed_transfer_is_told_to_the_model_which_tells_the_caller() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.heard(call.last_play_id())
        assert call.named("refer") != []
        call.event("ringing", trackId="server-side-track", earlyMedia=False, refer=True)
        call.event("reject", trackId="server-side-track", code=486, reason="Busy Here", refer=True)
        await call.turn_done(2)

    replies = (
        ['One moment. <refer to="sip:sales@example.com"/>'],
        ["Sorry, sales is busy. Can I help instead?"],
    )
    call = run(scenario, *replies)
    _, second = call.fake.chats()
    assert second["messages"][-1] == {
        "role": "system",
        "content": "The transfer to sip:sales@example.com failed: 486 Busy Here.",
    }
    assert call.named("history")[-1]["text"] == "Sorry, sales is busy. Can I help instead?"


def test_while_transferred_the_caller_is_left_alone_and_afterwards_follow_ups_resume() -> None:
    front = "greeting: Hi.\nfollowUp:\n  timeout: 5000\n  maxCount: 2\n"

    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        call.heard(call.last_play_id())
        call.at(1000).event("dtmf", trackId="s1", digit="0")  # the transfer key
        assert call.named("refer")[-1]["callee"] == "sip:desk@pbx"
        call.at(1100).event("ringing", trackId="server-side-track", earlyMedia=False, refer=True)
        call.at(3000).event("answer", trackId="server-side-track", sdp="", refer=True)
        # the caller talks to the desk: no turn, no barge-in, no follow-up, keys go on
        speech_ends(call, "hi is this the desk", start=4000)
        call.at(6000).event("asrFinal", trackId="s1", index=0, text="Hi, is this the desk?")
        call.at(9000).event("silence", trackId="server-side-track", startTime=T0, duration=5000)
        call.event("dtmf", trackId="s1", digit="0")
        call.event("dtmf", trackId="server-side-track", digit="5", refer=True)
        call.runner.tick(T0 + 20_000)
        await asyncio.sleep(0.1)
        assert call.fake.chats() == [] and len(call.named("refer")) == 1
        assert call.named("interrupt") == []
        # the desk hangs up and the call goes on (autoHangup false): follow-ups restart
        call.at(30_000).event("hangup", trackId="server-side-track", refer=True)
        call.runner.tick(T0 + 34_000)
        await asyncio.sleep(0.05)
        assert call.fake.chats() == []
        call.runner.tick(T0 + 35_000)
        await call.turn_done()

    body = '<dtmf digit="0" action="transfer" target="sip:desk@pbx"/>\nYou help callers.\n'
    call = run(scenario, ["Are you still there?"], front=front, body=body)
    (chat,) = call.fake.chats()
    assert chat["messages"][-2:] == [
        {"role": "system", "content": "The transfer to sip:desk@pbx ended."},
        {"role": "system", "content": FOLLOWUP_NUDGE},
    ]
    assert call.tts()[-1]["text"] == "Are you still there?"


def test_a_refer_the_session_refuses_is_a_failed_transfer() -> None:
    async def scenario(call: Call) -> None:
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()
        call.heard(call.last_play_id())
        call.event(
            "error",
            trackId="s1",
            sender="command",
            command="refer",
            error="refer needs SIP, which is not configured on this server",
        )
        await call.turn_done(2)

    replies = (['<refer to="sip:x@y"/>Transferring.'], ["I cannot transfer you, sorry."])
    call = run(scenario, *replies)
    _, second = call.fake.chats()
    assert second["messages"][-1]["content"] == (
        "The transfer to sip:x@y failed: refer needs SIP, which is not configured on this server."
    )


# --- set_var in the call's extras, LLM metrics ----------------------------------------------------


def test_set_var_values_reach_the_extras_and_each_llm_round_is_measured() -> None:
    extras: dict[str, str] = {}
    metrics: list[tuple[str, int, dict[str, Any]]] = []

    async def scenario(call: Call) -> None:
        call.runner = PlaybookRunner(
            call.playbook,
            send=call.commands.append,
            llm=call.llm,
            facts=CallFacts(session_id="s1"),
            clock=lambda: call.now,
            set_extra=extras.__setitem__,
            metric=lambda key, ms, data: metrics.append((key, ms, dict(data))),
        )
        call.event("answer", trackId="s1", sdp="")
        await call.turn_done()

    run(scenario, ['<set_var key="topic" value="billing"/>Hello.'])
    assert extras == {"topic": "billing"}
    assert [(key, data) for key, _, data in metrics] == [
        ("ttfb.llm.openai", {"playId": "s1-pb1"}),
        ("completed.llm.openai", {"playId": "s1-pb1"}),
    ]
    assert all(ms >= 0 for _, ms, _ in metrics)
