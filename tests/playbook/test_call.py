"""A real ``CallSession`` running a playbook: piper speaks the caller, pocketsphinx hears it, the
runner answers through the LLM fake and the agent's speech comes out as audio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from activecall._native.silero import VadSession
from activecall.playbook.call import REALTIME_TOOLS, PlaybookCall, attach_playbook, merge_option
from activecall.providers.registry import registry
from activecall.workers.session import CallSession, SessionSettings, session_factory
from tests.playbook.scripted import KEY, Recorder, ScriptedOpenAi
from tests.providers.fakes.realtime import FakeRealtime, Turn
from tests.workers.test_realtime_call import LoopPort
from tests.workers.test_voice import KEY_WORDS, piper_speech

ANSWER = "Your balance is two hundred dollars."


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)


def events(port: LoopPort, name: str) -> list[dict[str, Any]]:
    return [e for e in port.events if e["event"] == name]


async def ticking(call: Any, port: LoopPort, done: Callable[[], bool], timeout: float = 30) -> None:
    """Tick every 20 ms (no caller audio) until ``done()``."""
    async with asyncio.timeout(timeout):
        while not done():
            call.tick(port.now_ms())
            await asyncio.sleep(0.02)


def test_a_websocket_call_runs_a_playbook_end_to_end(tmp_path: Path) -> None:
    heard_at: dict[str, int] = {}

    async def main() -> tuple[LoopPort, ScriptedOpenAi]:
        async with ScriptedOpenAi([ANSWER]) as fake:
            playbook = tmp_path / "bank.md"
            playbook.write_text(
                "---\n"
                "asr: {provider: pocketsphinx}\n"
                "tts: {provider: piper}\n"
                "vad: {silencePadding: 300}\n"
                f"llm: {{baseUrl: '{fake.url}', apiKey: {KEY}}}\n"
                "greeting: Hello, this is the bank.\n"
                "---\n"
                "You are the bank's assistant on call {{ session_id }}.\n"
            )
            port = LoopPort()
            session = CallSession(port, "pb1", dump=False, settings=SessionSettings())
            call = attach_playbook(session, {"playbook": str(playbook)})
            assert isinstance(call, PlaybookCall)
            call.on_text(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            await ticking(call, port, lambda: len(events(port, "trackEnd")) == 1)  # greeting
            speech = await piper_speech("I would like to check my account balance")
            pcm = np.concatenate((np.zeros(4000, np.int16), speech, np.zeros(24000, np.int16)))
            vad = VadSession()
            for i in range(0, len(pcm), 320):  # 20 ms frames at real-time pace
                call.on_audio(pcm[i : i + 320].tobytes())
                chunks = call.vad_chunks()
                if chunks:
                    call.on_vad(np.array([vad.process_chunk(c) for c in chunks], np.float32))
                call.tick(port.now_ms())
                if events(port, "asrFinal") and "audio" not in heard_at:
                    heard_at["audio"] = len(port.audio)
                await asyncio.sleep(0.02)
            await ticking(call, port, lambda: len(events(port, "trackEnd")) == 2)
            call.on_text(json.dumps({"command": "hangup"}))
            await asyncio.sleep(0.05)
            await registry.aclose()  # providers belong to this loop
            return port, fake

    port, fake = asyncio.run(main())
    final = events(port, "asrFinal")[0]
    heard = final["text"].lower().split()
    assert sum(word in heard for word in KEY_WORDS) >= 3, final["text"]
    (chat,) = fake.chats()
    system, greeting, user = chat["messages"]
    assert system["content"].startswith("You are the bank's assistant on call pb1.")
    assert greeting == {"role": "assistant", "content": "Hello, this is the bank."}
    assert user == {"role": "user", "content": final["text"]}
    starts = [e.get("playId") for e in events(port, "trackStart")]
    assert starts == [None, "pb1-pb1", "pb1-pb2"]  # the caller's track, greeting, answer
    assert [e.get("playId") for e in events(port, "trackEnd")] == ["pb1-pb1", "pb1-pb2"]
    spoken = len(port.audio) - heard_at["audio"]
    assert spoken * 20 > 1500, spoken  # the answer was spoken after the caller was heard
    history = [(e["speaker"], e["text"]) for e in events(port, "addHistory")]
    assert history == [("assistant", "Hello, this is the bank."), ("assistant", ANSWER)]
    assert "error" not in port.names() and "interruption" not in port.names()
    assert port.names()[-1] == "hangup"


def test_a_malformed_playbook_is_an_error_event_and_the_call_goes_on(tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("---\nllm:\n  model: [unclosed\n---\nHello\n")

    class Ctx(LoopPort):
        session_id = "pb2"
        call_type = "webSocket"
        params: ClassVar[dict[str, Any]] = {"playbook": str(bad), "dump": False}

    async def main() -> tuple[LoopPort, Any]:
        port = Ctx()
        call = session_factory(SessionSettings())(port)
        call.on_text(json.dumps({"command": "invite", "option": {}}))
        call.on_text(json.dumps({"command": "hangup"}))
        return port, call

    port, call = asyncio.run(main())
    assert isinstance(call, CallSession)  # no runner
    error = port.events[0]
    assert error["event"] == "error" and error["sender"] == "playbook"
    assert f"{bad}:3: invalid YAML" in error["error"]
    assert port.names()[1:] == ["trackStart", "answer", "hangup"]


def test_the_session_factory_attaches_a_playbook_given_as_text() -> None:
    class Ctx(LoopPort):
        session_id = "pb3"
        call_type = "webSocket"
        params: ClassVar[dict[str, Any]] = {
            "playbook": "---\nllm: {}\ngreeting: Hi.\n---\nBe brief.\n",
            "playbookVars": {"who": "Ann"},
            "dump": False,
        }

    async def main() -> Any:
        return session_factory(SessionSettings())(Ctx())

    call = asyncio.run(main())
    assert isinstance(call, PlaybookCall) and call.runner.scene.prompt == "Be brief."
    assert call.id == "pb3"  # the session's own attributes show through


def test_merge_option_fills_in_what_the_client_left_out() -> None:
    playbook = {"asr": {"provider": "pocketsphinx", "language": "en"}, "denoise": True}
    client = {"asr": {"language": "de"}, "codec": "pcmu", "denoise": False}
    assert merge_option(playbook, client) == {
        "asr": {"provider": "pocketsphinx", "language": "de"},
        "denoise": False,
        "codec": "pcmu",
    }
    assert merge_option(playbook, None) == playbook


def test_a_realtime_playbook_instructs_the_model_and_runs_its_function_calls(
    tmp_path: Path,
) -> None:
    turns = (
        Turn(speech_start_ms=200, speech_end_ms=1000, user_text="bye", call=("hangup_call", "{}")),
    )

    async def main() -> tuple[LoopPort, FakeRealtime]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            text = (
                "---\n"
                f"realtime: {{provider: openai, endpoint: '{fake.url}/v1', apiKey: {KEY}}}\n"
                "---\n"
                "You are a concierge for call {{ session_id }}.\n"
            )
            port = LoopPort()
            session = CallSession(port, "pb4", dump=False, settings=SessionSettings())
            call = attach_playbook(session, {"playbook": text})
            call.on_text(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            silence = np.zeros(320, np.int16).tobytes()
            async with asyncio.timeout(20):
                while not port.ended:
                    call.on_audio(silence)
                    call.tick(port.now_ms())
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            return port, fake

    port, fake = asyncio.run(main())
    update = fake.connections[0].of_type("session.update")[0]["session"]
    assert update["instructions"] == "You are a concierge for call pb4."
    assert [t["name"] for t in update["tools"]] == [t["name"] for t in REALTIME_TOOLS]
    assert events(port, "functionCall")[0]["name"] == "hangup_call"
    hangup = events(port, "hangup")[0]
    assert (hangup["reason"], hangup["initiator"]) == ("system", "system")


def test_a_call_no_client_drives_starts_by_itself() -> None:
    class Ctx(LoopPort):
        session_id = "pb5"
        call_type = "webSocket"
        params: ClassVar[dict[str, Any]] = {
            "playbook": "---\nllm: {}\ngreeting: Hi {{ who }}.\n---\nBe brief.\n",
            "playbookVars": {"who": "Ann"},
            "playbookStart": "invite",
            "playbookOption": {"codec": "pcmu"},
            "dump": False,
        }

    async def main() -> tuple[LoopPort, Any]:
        port = Ctx()
        call = session_factory(SessionSettings())(port)
        await ticking(call, port, lambda: len(events(port, "trackStart")) == 2, timeout=10)
        call.on_text(json.dumps({"command": "hangup"}))
        await asyncio.sleep(0.05)
        await registry.aclose()
        return port, call

    port, call = asyncio.run(main())
    assert port.names()[:2] == ["trackStart", "answer"]
    assert events(port, "trackStart")[1]["playId"] == "pb5-pb1"
    assert events(port, "addHistory")[0]["text"] == "Hi Ann."
    assert call.session.option.codec == "pcmu"


def test_a_bad_start_is_an_error_event() -> None:
    class Ctx(LoopPort):
        session_id = "pb6"
        call_type = "webSocket"
        params: ClassVar[dict[str, Any]] = {
            "playbook": "---\nllm: {}\n---\nBe brief.\n",
            "playbookStart": "ring",
            "dump": False,
        }

    async def main() -> LoopPort:
        port = Ctx()
        session_factory(SessionSettings())(port)
        await asyncio.sleep(0.01)
        return port

    port = asyncio.run(main())
    assert [(e["event"], e["sender"]) for e in port.events] == [("error", "playbook")]
    assert "playbookStart must be accept or invite" in port.events[0]["error"]


BROKEN_SCENE = (
    "---\nllm: {}\ndtmf:\n  '1': { action: goto, scene: nowhere }\n---\n# Scene: menu\nHi.\n"
)


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("scene.md", BROKEN_SCENE, "{path}:4: "),  # a key to a scene that does not exist
        ("template.md", "---\nllm: {}\n---\nHello {{ name\n", "{path}:4: "),
        ("binary.md", None, "{path}: cannot read the playbook"),
        ("missing.md", "", "{path}: cannot read the playbook"),
        ("inline", BROKEN_SCENE, "<playbook>:4: "),  # the playbook's text in the params
    ],
)
@pytest.mark.parametrize("call_type", ["webSocket", "webRtc"])
def test_a_broken_playbook_named_by_the_call_is_an_error_event_with_its_line(
    tmp_path: Path, call_type: str, name: str, text: str | None, says: str
) -> None:
    path = tmp_path / name
    if text is None:
        path.write_bytes(b"---\nllm: {}\n---\n\xff\xfe\n")
    elif text and name != "inline":
        path.write_text(text)
    spec = text if name == "inline" else str(path)

    class Ctx(LoopPort):
        session_id = "pb9"
        params: ClassVar[dict[str, Any]] = {"playbook": spec, "dump": False}

    Ctx.call_type = call_type

    async def main() -> tuple[LoopPort, Any]:
        port = Ctx()
        call = session_factory(SessionSettings())(port)
        return port, call

    port, call = asyncio.run(main())
    assert isinstance(call, CallSession)  # the call goes on, without a runner
    (error,) = port.events
    assert error["event"] == "error" and error["sender"] == "playbook"
    assert says.format(path=path) in error["error"], error["error"]


def test_realtime_function_results_go_back_a_scene_switch_reinstructs_and_the_posthook_has_it(
    tmp_path: Path,
) -> None:
    turns = (
        Turn(200, 900, user_text="billing please", call=("goto_scene", '{"scene": "billing"}')),
        Turn(2600, 3200, user_text="thanks bye", call=("hangup_call", "{}")),
    )

    async def main() -> tuple[LoopPort, FakeRealtime, Recorder]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake, Recorder({}) as hook:
            fake.function_reply = "You are in billing now"
            realtime = (
                f"{{provider: openai, endpoint: '{fake.url}/v1', apiKey: {KEY},"
                " extra: {transcriptionModel: whisper-1}}"
            )
            text = (
                "---\n"
                f"realtime: {realtime}\n"
                f"posthook: {{url: '{hook.url}/done'}}\n"
                "---\n"
                "# Scene: main\nRoute the call {{ session_id }}.\n"
                "# Scene: billing\nHelp with bills on {{ call_type }}.\n"
            )
            port = LoopPort()
            session = CallSession(port, "pb7", dump=False, settings=SessionSettings())
            call = attach_playbook(session, {"playbook": text})
            call.on_text(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            silence = np.zeros(320, np.int16).tobytes()
            async with asyncio.timeout(20):
                while not port.ended:
                    call.on_audio(silence)
                    call.tick(port.now_ms())
                    await asyncio.sleep(0.02)
                while not hook.received:
                    await asyncio.sleep(0.02)
            return port, fake, hook

    port, fake, hook = asyncio.run(main())
    conn = fake.connections[0]
    first, switch = conn.of_type("session.update")
    assert first["session"]["instructions"] == "Route the call pb7."
    assert switch == {
        "type": "session.update",
        "session": {"type": "realtime", "instructions": "Help with bills on websocket."},
    }
    (call_id, *_) = (e["callId"] for e in events(port, "functionCall"))
    created = conn.of_type("conversation.item.create")[0]
    assert created["item"] == {
        "type": "function_call_output",
        "call_id": call_id,
        "output": "Now in scene 'billing'.",
    }
    kinds = [t for t in conn.types() if t != "input_audio_buffer.append"]
    assert kinds[:4] == [
        "session.update",
        "session.update",
        "conversation.item.create",
        "response.create",
    ]
    assert conn.sent_of_type("error") == []
    ((_, path, _, body),) = hook.received
    assert path == "/done"
    assert [(m["role"], m["content"]) for m in body["history"]] == [
        ("user", "billing please"),
        ("assistant", '[called goto_scene {"scene": "billing"}]'),
        ("tool", "Now in scene 'billing'."),
        ("assistant", "You are in billing now"),
        ("user", "thanks bye"),
        ("assistant", "[called hangup_call {}]"),
        ("tool", "The call is ending now."),
    ]


def test_set_var_values_are_in_the_call_record_and_llm_rounds_are_metrics(
    tmp_path: Path,
) -> None:
    async def main() -> LoopPort:
        async with ScriptedOpenAi(['<set_var key="topic" value="billing"/>Hello there.']) as fake:
            text = (
                "---\n"
                "tts: {provider: piper}\n"
                f"llm: {{baseUrl: '{fake.url}', apiKey: {KEY}}}\n"
                "extra: {source: playbook}\n"
                "---\n"
                "Greet the caller.\n"
            )
            port = LoopPort()
            settings = SessionSettings(callrecord_dir=tmp_path)
            session = CallSession(port, "pb8", dump=False, settings=settings)
            call = attach_playbook(session, {"playbook": text})
            call.on_text(json.dumps({"command": "invite", "option": {"codec": "pcm"}}))
            await ticking(call, port, lambda: bool(events(port, "addHistory")), timeout=10)
            call.on_text(json.dumps({"command": "hangup"}))
            await asyncio.sleep(0.05)
            await registry.aclose()
            return port

    port = asyncio.run(main())
    (record,) = tmp_path.glob("*/*_pb8.json")
    assert json.loads(record.read_text())["extras"] == {"source": "playbook", "topic": "billing"}
    (hangup,) = events(port, "hangup")  # the hangup event carries the same extras
    assert hangup["extra"] == {"source": "playbook", "topic": "billing"}
    metrics = {e["key"]: e for e in events(port, "metrics") if ".llm." in e["key"]}
    assert set(metrics) == {"ttfb.llm.openai", "completed.llm.openai"}
    assert metrics["ttfb.llm.openai"]["data"] == {"playId": "pb8-pb1"}
    assert metrics["ttfb.llm.openai"]["duration"] <= metrics["completed.llm.openai"]["duration"]
    assert "error" not in port.names()
