"""The runner against the OpenAI chat-completions fake, through the real ``OpenAiLlm`` client.

Each test plays the session's part: it feeds the events a session would emit (``answer``,
``asrFinal``, ``trackStart``/``trackEnd`` of the runner's own ``playId``\\ s, ``dtmf`` ...) and
checks the commands the runner sends and the requests the LLM fake and local HTTP servers got.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from activecall.playbook.parser import parse_playbook
from activecall.playbook.posthook import SUMMARY_PROMPTS
from activecall.playbook.runner import FOLLOWUP_NUDGE, MAX_HTTP_ROUNDS, PlaybookRunner
from activecall.playbook.template import CallFacts
from activecall.providers.openai import OpenAiLlm
from tests.playbook.scripted import KEY, Recorder, ScriptedOpenAi

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
        call.event("functionCall", trackId="s1", callId="c3", name="teleport", arguments="{}")
        call.event("functionCall", trackId="s1", callId="c4", name="hangup_call", arguments="")

    front = "realtime:\n  provider: openai\n"
    call = run(scenario, front=front, body="# Scene: a\nA.\n# Scene: b\nB.\n")
    assert call.runner.scene.id == "b"
    assert call.commands == [
        {"command": "refer", "caller": "", "callee": "sip:x@y"},
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
