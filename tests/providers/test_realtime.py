"""The Realtime API bridge (``realtime`` option) against a local fake of OpenAI / Azure."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import numpy as np
import pytest

from activecall._native.resample import Resampler
from activecall.providers.base import ProviderError
from activecall.providers.realtime import (
    AgentAudio,
    ApiError,
    FunctionCall,
    RealtimeBridge,
    RealtimeEvent,
    RealtimeOption,
    RealtimeProtocol,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptDone,
    UserTranscript,
    instructions_update,
    realtime_headers,
    realtime_url,
)
from tests.providers.fakes.realtime import FakeRealtime, RealtimeConnection, Turn, fake_voice

KEY = "sk-test"
BOUND = 5.0  # seconds any scenario must finish within (a hang fails the test)
FRAME = 640  # 20 ms of 16 kHz PCM16
MS = 32  # bytes per ms of 16 kHz PCM16
BATCH = 4800  # 100 ms of 24 kHz PCM16: the least an append carries

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
SERVER_VAD = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
}


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        async with asyncio.timeout(BOUND):
            return await scenario()

    return asyncio.run(bounded())


@pytest.fixture(autouse=True)
def no_openai_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def speech(speech_16k: np.ndarray) -> bytes:
    """Three seconds of real speech, PCM16LE 16 kHz."""
    return speech_16k[16000 : 16000 + 48000].astype("<i2").tobytes()


def option(fake: FakeRealtime, **fields: Any) -> RealtimeOption:
    return RealtimeOption.from_json(
        {"provider": "openai", "endpoint": f"{fake.url}/v1", "apiKey": KEY, **fields}
    )


def push(bridge: RealtimeBridge, pcm: bytes) -> None:
    for i in range(0, len(pcm), FRAME):
        bridge.push_audio(pcm[i : i + FRAME])


async def until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.005)


async def take_until(
    events: AsyncIterator[RealtimeEvent], done: Callable[[RealtimeEvent], bool]
) -> list[RealtimeEvent]:
    """Events up to and including the first for which ``done`` holds."""
    out: list[RealtimeEvent] = []
    while not out or not done(out[-1]):
        out.append(await anext(events))
    return out


def is_done(event: RealtimeEvent) -> bool:
    return isinstance(event, ResponseDone)


def audio_of(events: list[RealtimeEvent]) -> bytes:
    return b"".join(e.pcm16k for e in events if isinstance(e, AgentAudio))


def downsampled(pcm24k: bytes, *, tail: bool = True) -> bytes:
    """What our resampler makes of a whole 24 kHz reply (with its tail, when it ended)."""
    resampler = Resampler(24000, 16000)
    out = resampler.process(pcm24k).tobytes()
    return out + resampler.flush().tobytes() if tail else out


def kinds(events: list[RealtimeEvent]) -> list[str]:
    """Event class names, runs of audio and transcript deltas folded into one."""
    out: list[str] = []
    for event in events:
        name = type(event).__name__
        if name in ("AgentAudio", "TranscriptDelta") and out and out[-1] == "Reply":
            continue
        out.append("Reply" if name in ("AgentAudio", "TranscriptDelta") else name)
    return out


# --- the option ---------------------------------------------------------------------------------


def test_option_defaults_aliases_and_unknown_keys() -> None:
    parsed = RealtimeOption.from_json({"secretKey": "a", "apiKey": "b", "colour": "blue"})
    assert parsed.provider == "openai" and parsed.secret_key == "a"  # canonical name wins
    assert parsed.dialect == "ga" and parsed.tools == () and parsed.turn_detection is None
    assert parsed.instructions is None and parsed.voice is None
    assert RealtimeOption.from_json({"apiKey": "b"}).secret_key == "b"
    full = RealtimeOption.from_json(
        {
            "provider": "azure",
            "model": "my-deployment",
            "endpoint": "https://res.openai.azure.com",
            "turnDetection": {"type": "semantic_vad", "eagerness": "low"},
            "tools": [TOOL],
            "extra": {"instructions": "Be brief.", "voice": "marin", "protocol": "beta"},
        }
    )
    assert full.dialect == "beta" and full.voice == "marin" and full.instructions == "Be brief."
    assert full.turn_detection == {"type": "semantic_vad", "eagerness": "low"}
    assert full.tools == (TOOL,)
    assert RealtimeOption.from_json({"provider": "OpenAI"}).provider == "openai"
    assert "sk" not in repr(RealtimeOption.from_json({"apiKey": "sk-secret"}))


def test_option_chat_completions_tools_are_flattened() -> None:
    nested = {"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}
    assert RealtimeOption.from_json({"tools": [nested]}).tools == (TOOL,)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "realtime must be an object, got an array"),
        ({"provider": 1}, "realtime.provider must be a string, got an integer"),
        ({"provider": "google"}, "realtime.provider must be openai, azure or a ws"),
        ({"model": ["m"]}, "realtime.model must be a string, got an array"),
        ({"apiKey": 7}, "realtime.apiKey must be a string, got an integer"),
        ({"endpoint": "api.openai.com"}, "realtime.endpoint must be an http(s) or ws(s) URL"),
        ({"endpoint": "https://[::1"}, "realtime.endpoint must be an http(s) or ws(s) URL"),
        ({"provider": "azure"}, "realtime.endpoint is required when provider is azure"),
        ({"turnDetection": "server_vad"}, "realtime.turnDetection must be an object, got a str"),
        ({"tools": {"name": "f"}}, "realtime.tools must be an array of objects, got an object"),
        ({"tools": [TOOL, "f"]}, r"realtime.tools\[1\] must be an object, got a string"),
        ({"tools": [{"type": "function"}]}, r"realtime.tools\[0\].name is required"),
        ({"extra": {"voice": 3}}, "realtime.extra.voice must be a string, got an integer"),
        ({"extra": {"protocol": "v2"}}, "realtime.extra.protocol must be ga or beta, got 'v2'"),
    ],
)
def test_option_bad_values_are_value_errors_naming_the_key(obj: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RealtimeOption.from_json(obj)


def test_default_urls_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    openai = RealtimeOption.from_json({"apiKey": KEY})
    assert realtime_url(openai) == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert realtime_headers(openai) == {"Authorization": f"Bearer {KEY}"}
    beta = RealtimeOption.from_json({"apiKey": KEY, "extra": {"protocol": "beta"}})
    assert realtime_headers(beta) == {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Beta": "realtime=v1",
    }
    azure = RealtimeOption.from_json(
        {"provider": "azure", "endpoint": "https://res.openai.azure.com/", "model": "dep"}
    )
    assert realtime_url(azure) == "wss://res.openai.azure.com/openai/v1/realtime?model=dep"
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-env")
    assert realtime_headers(azure) == {"api-key": "az-env"}
    custom = RealtimeOption.from_json({"provider": "wss://gw.example/rt", "model": "m"})
    assert realtime_url(custom) == "wss://gw.example/rt?model=m"
    assert realtime_headers(custom) == {}  # a self-hosted server may take no key
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example/v1")
    assert realtime_url(openai) == "wss://proxy.example/v1/realtime?model=gpt-realtime"


# --- the full exchange --------------------------------------------------------------------------

EXPECTED_UPDATE = {
    "ga": {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": SERVER_VAD,
                    "transcription": {"model": "gpt-4o-transcribe"},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
            "instructions": "Be brief.",
            "tools": [TOOL],
            "tool_choice": "auto",
        },
    },
    "beta": {
        "type": "session.update",
        "session": {
            "modalities": ["text", "audio"],
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": SERVER_VAD,
            "voice": "marin",
            "input_audio_transcription": {"model": "gpt-4o-transcribe"},
            "instructions": "Be brief.",
            "tools": [TOOL],
            "tool_choice": "auto",
        },
    },
}


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_full_exchange(dialect: str, speech: bytes) -> None:
    reply = "It is sunny in Paris today"
    turns = (Turn(300, 1200, user_text="what is the weather", reply=reply),)
    pushed = speech[: 1500 * MS]

    async def scenario() -> tuple[list[RealtimeEvent], RealtimeConnection]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            extra = {
                "instructions": "Be brief.",
                "voice": "marin",
                "transcriptionModel": "gpt-4o-transcribe",
                "protocol": dialect,
            }
            bridge = await RealtimeBridge.connect(option(fake, tools=[TOOL], extra=extra))
            conn = fake.connections[0]
            async with aclosing(bridge.events()) as events:
                push(bridge, pushed)
                got = await take_until(events, is_done)
                await until(lambda: len(conn.audio) >= 1500 * 48 - 2 * BATCH)
            await bridge.aclose()
            return got, conn

    got, conn = run(scenario)
    assert conn.path == "/v1/realtime" and conn.query == {"model": "gpt-realtime"}
    assert conn.headers["Authorization"] == f"Bearer {KEY}"
    assert conn.headers.get("OpenAI-Beta") == ("realtime=v1" if dialect == "beta" else None)
    assert conn.dialect == dialect
    assert conn.events[0] == EXPECTED_UPDATE[dialect]
    assert conn.sent_of_type("error") == []
    # up: base64 24 kHz PCM equal to our resampler's output, at least 100 ms per message
    appends = [base64.b64decode(e["audio"]) for e in conn.of_type("input_audio_buffer.append")]
    assert all(len(a) >= BATCH for a in appends)
    expected_up = Resampler(16000, 24000).process(pushed).tobytes()
    received = bytes(conn.audio)
    assert len(received) >= len(expected_up) - BATCH
    assert received == expected_up[: len(received)]
    # down: the events, the reply's 24 kHz audio as 16 kHz from our resampler
    assert kinds(got) == [
        "SpeechStarted",
        "SpeechStopped",
        "UserTranscript",
        "Reply",
        "TranscriptDone",
        "ResponseDone",
    ]
    assert got[0] == SpeechStarted(300, "item_user_0")
    assert got[1] == SpeechStopped(1200, "item_user_0")
    assert got[2] == UserTranscript("what is the weather", "item_user_0")
    deltas = [e for e in got if isinstance(e, TranscriptDelta)]
    item_id = deltas[0].item_id
    assert "".join(d.text for d in deltas) == reply and {d.item_id for d in deltas} == {item_id}
    assert got[-2] == TranscriptDone(reply, item_id) and got[-1] == ResponseDone("completed")
    assert {e.item_id for e in got if isinstance(e, AgentAudio)} == {item_id}
    assert audio_of(got) == downsampled(fake_voice(reply))
    assert len(audio_of(got)) == len(fake_voice(reply)) * 2 // 3


@pytest.mark.parametrize(
    ("fields", "path", "query", "auth"),
    [
        (
            {"provider": "azure", "model": "dep", "extra": {"protocol": "ga"}},
            "/openai/v1/realtime",
            {"model": "dep"},
            ("api-key", KEY),
        ),
        (
            {"provider": "azure", "model": "dep", "extra": {"protocol": "beta"}},
            "/openai/realtime",
            {"api-version": "2025-04-01-preview", "deployment": "dep"},
            ("api-key", KEY),
        ),
        (
            {
                "provider": "azure",
                "extra": {"protocol": "beta", "apiVersion": "2024-10-01-preview"},
            },
            "/openai/realtime",
            {"api-version": "2024-10-01-preview", "deployment": "gpt-realtime"},
            ("api-key", KEY),
        ),
        (
            {"model": "gpt-realtime-mini"},
            "/v1/realtime",
            {"model": "gpt-realtime-mini"},
            ("Authorization", f"Bearer {KEY}"),
        ),
    ],
)
def test_connect_urls_and_headers(
    fields: dict[str, Any], path: str, query: dict[str, str], auth: tuple[str, str]
) -> None:
    async def scenario() -> RealtimeConnection:
        async with FakeRealtime(api_key=KEY) as fake:
            endpoint = fake.url if fields.get("provider") == "azure" else f"{fake.url}/v1"
            opt = RealtimeOption.from_json({"apiKey": KEY, "endpoint": endpoint, **fields})
            bridge = await RealtimeBridge.connect(opt)
            await bridge.aclose()
            return fake.connections[0]

    conn = run(scenario)
    assert (conn.path, conn.query) == (path, query)
    assert conn.headers[auth[0]] == auth[1]
    assert "OpenAI-Beta" not in conn.headers and conn.sent_of_type("error") == []
    assert conn.sent_of_type("session.updated")  # the dialect's session.update was accepted


def test_connect_to_a_custom_url_with_the_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")

    async def scenario() -> RealtimeConnection:
        async with FakeRealtime(api_key="sk-env") as fake:
            url = f"{fake.url.replace('http', 'ws')}/v1/realtime?model=custom-model"
            bridge = await RealtimeBridge.connect(RealtimeOption.from_json({"provider": url}))
            await bridge.aclose()
            return fake.connections[0]

    conn = run(scenario)
    assert conn.query == {"model": "custom-model"}
    assert conn.headers["Authorization"] == "Bearer sk-env"


# --- function calls -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_function_call_and_result(dialect: str, speech: bytes) -> None:
    turns = (Turn(100, 600, call=("get_weather", '{"city": "Paris"}')),)

    async def scenario() -> tuple[list[RealtimeEvent], list[RealtimeEvent], RealtimeConnection]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            fake.function_reply = "It is twenty one degrees"
            bridge = await RealtimeBridge.connect(
                option(fake, tools=[TOOL], extra={"protocol": dialect})
            )
            async with aclosing(bridge.events()) as events:
                push(bridge, speech[: 700 * MS])
                first = await take_until(events, is_done)
                call = next(e for e in first if isinstance(e, FunctionCall))
                bridge.send_function_result(call.call_id, '{"temperature": 21}')
                second = await take_until(events, is_done)
            await bridge.aclose()
            return first, second, fake.connections[0]

    first, second, conn = run(scenario)
    calls = [e for e in first if isinstance(e, FunctionCall)]
    call_id = conn.sent_of_type("response.output_item.added")[0]["item"]["call_id"]
    assert calls == [FunctionCall(call_id, "get_weather", '{"city": "Paris"}')]
    assert first[-1] == ResponseDone("completed")
    created = conn.of_type("conversation.item.create")
    assert created == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": call_id,
                "output": '{"temperature": 21}',
            },
        }
    ]
    non_audio = [t for t in conn.types() if t != "input_audio_buffer.append"]
    assert non_audio == ["session.update", "conversation.item.create", "response.create"]
    assert audio_of(second) == downsampled(fake_voice("It is twenty one degrees"))
    assert second[-1] == ResponseDone("completed")
    assert conn.sent_of_type("error") == []


# --- interruptions ------------------------------------------------------------------------------


@pytest.mark.parametrize("service_interrupts", [True, False])
def test_caller_speech_cuts_the_reply(service_interrupts: bool, speech: bytes) -> None:
    """Speech start mid-reply: the bridge cancels it, truncates the item to what was played
    (the audio pushed since its first delta: 300 ms) and drops the deltas still in flight."""
    long_reply = "this answer goes on and on for a good while, longer than anyone will listen"
    turns = (
        Turn(100, 600, reply=long_reply, hold_after=2),
        Turn(900, 1500, reply="okay"),
    )
    turn_detection = {**SERVER_VAD, "interrupt_response": service_interrupts}

    async def scenario() -> tuple[list[RealtimeEvent], list[RealtimeEvent], FakeRealtime]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            fake.delta_ms = 500
            fake.in_flight = 1
            bridge = await RealtimeBridge.connect(option(fake, turnDetection=turn_detection))
            async with aclosing(bridge.events()) as events:
                push(bridge, speech[: 700 * MS])
                playing = await take_until(events, lambda e: isinstance(e, AgentAudio))
                playing += await take_until(events, lambda e: isinstance(e, AgentAudio))
                push(bridge, speech[700 * MS : 1000 * MS])  # 300 ms later the caller speaks
                cut = await take_until(events, is_done)
                push(bridge, speech[1000 * MS : 1600 * MS])
                cut += await take_until(events, is_done)
            await bridge.aclose()
            return playing, cut, fake

    playing, cut, fake = run(scenario)
    conn = fake.connections[0]
    first_item = conn.sent_of_type("response.output_item.added")[0]["item"]["id"]
    assert {e.item_id for e in playing if isinstance(e, AgentAudio)} == {first_item}
    chunks = [
        base64.b64decode(e["delta"]) for e in conn.sent_of_type("response.output_audio.delta")
    ]
    assert len(chunks) == 4  # 2 played, 1 in flight (dropped), then the second reply's one
    assert audio_of(playing) == downsampled(chunks[0] + chunks[1], tail=False)
    assert kinds(cut) == [
        "SpeechStarted",
        "TranscriptDone",
        "ResponseDone",
        "SpeechStopped",
        "Reply",
        "TranscriptDone",
        "ResponseDone",
    ]
    assert cut[0] == SpeechStarted(900, "item_user_1")
    assert cut[2] == ResponseDone("cancelled")
    assert audio_of(cut) == downsampled(fake_voice("okay"))  # a clean start after the cut
    assert conn.of_type("response.cancel") == [{"type": "response.cancel"}]
    assert conn.of_type("conversation.item.truncate") == [
        {
            "type": "conversation.item.truncate",
            "item_id": first_item,
            "content_index": 0,
            "audio_end_ms": 300,
        }
    ]
    assert [e["audio_end_ms"] for e in conn.sent_of_type("conversation.item.truncated")] == [300]
    errors = [e["error"]["code"] for e in conn.sent_of_type("error")]
    # when the service cut the reply itself, our cancel came too late: a benign error, not shown
    assert errors == (["response_cancel_not_active"] if service_interrupts else [])
    assert not any(isinstance(e, ApiError) for e in cut)
    done = conn.sent_of_type("response.done")[0]["response"]["status_details"]
    assert done["reason"] == ("turn_detected" if service_interrupts else "client_cancelled")


def test_cancel_response_truncates_to_what_the_session_played(speech: bytes) -> None:
    turns = (Turn(100, 600, reply="a long answer that is cut", hold_after=2),)

    async def scenario() -> tuple[list[RealtimeEvent], RealtimeConnection]:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            async with aclosing(bridge.events()) as events:
                push(bridge, speech[: 700 * MS])
                await take_until(events, lambda e: isinstance(e, AgentAudio))
                await take_until(events, lambda e: isinstance(e, AgentAudio))
                bridge.cancel_response(played_ms=150)
                got = await take_until(events, is_done)
                bridge.cancel_response()  # nothing in progress, nothing unplayed: nothing sent
                bridge.cancel_response(played_ms=10)
                push(bridge, speech[700 * MS : 1000 * MS])
                conn = fake.connections[0]
                await until(lambda: len(conn.audio) >= 900 * 48)
            await bridge.aclose()
            return got, conn

    got, conn = run(scenario)
    assert got[-1] == ResponseDone("cancelled")
    assert conn.of_type("response.cancel") == [{"type": "response.cancel"}]
    assert [e["audio_end_ms"] for e in conn.of_type("conversation.item.truncate")] == [150]
    assert conn.sent_of_type("error") == []


# --- failures -----------------------------------------------------------------------------------


def test_refused_key_in_an_error_event_fails_connect() -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            await RealtimeBridge.connect(option(fake, apiKey="sk-wrong"))

    with pytest.raises(ProviderError, match="Incorrect API key provided") as info:
        run(scenario)
    assert info.value.code == 401


@pytest.mark.parametrize(
    ("provider", "message"),
    [("openai", "HTTP 401 .*Incorrect API key"), ("azure", "HTTP 401 .*Access denied")],
)
def test_refused_key_on_the_upgrade_fails_connect(provider: str, message: str) -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            fake.refuse_upgrade = True
            endpoint = fake.url if provider == "azure" else f"{fake.url}/v1"
            opt = RealtimeOption.from_json(
                {"provider": provider, "endpoint": endpoint, "apiKey": "sk-wrong"}
            )
            await RealtimeBridge.connect(opt)

    with pytest.raises(ProviderError, match=message) as info:
        run(scenario)
    assert info.value.code == 401


def test_refused_session_update_fails_connect() -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            await RealtimeBridge.connect(option(fake, turnDetection={"type": "magic"}))

    with pytest.raises(ProviderError, match=r"session\.update refused: Invalid value: 'magic'"):
        run(scenario)


def test_missing_key_fails_before_connecting() -> None:
    async def scenario() -> FakeRealtime:
        async with FakeRealtime(api_key=KEY) as fake:
            for fields in ({}, {"provider": "azure", "endpoint": fake.url}):
                opt = RealtimeOption.from_json({"endpoint": f"{fake.url}/v1", **fields})
                with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
                    await RealtimeBridge.connect(opt)
            return fake

    assert run(scenario).connections == []


def test_unreachable_service_fails_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there

    async def scenario() -> None:
        opt = RealtimeOption.from_json({"endpoint": f"http://127.0.0.1:{port}/v1", "apiKey": KEY})
        await RealtimeBridge.connect(opt)

    with pytest.raises(ProviderError, match="cannot connect"):
        run(scenario)


def test_connection_dropped_mid_stream_fails_events(speech: bytes) -> None:
    turns = (Turn(100, 400, reply="hi"),)

    async def scenario() -> list[RealtimeEvent]:
        got: list[RealtimeEvent] = []
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            fake.drop_after_ms = 600
            bridge = await RealtimeBridge.connect(option(fake))
            push(bridge, speech[: 1000 * MS])
            try:
                async with asyncio.timeout(2.0):
                    async for event in bridge.events():
                        got.append(event)
            except ProviderError as exc:
                assert "connection lost" in str(exc)
            else:
                pytest.fail("events() ended without an error")
            finally:
                await bridge.aclose()
        return got

    got = run(scenario)
    assert got[-1] == ResponseDone("completed")  # what came before the drop is all there


def test_service_that_stops_answering_fails_events(speech: bytes) -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            fake.stall_after_ms = 200
            bridge = await RealtimeBridge.connect(
                option(fake), ping_interval=0.1, ping_timeout=0.2, close_timeout=0.2
            )
            push(bridge, speech[: 500 * MS])
            try:
                async with asyncio.timeout(2.0):
                    async for _ in bridge.events():
                        pass
            finally:
                await bridge.aclose()

    with pytest.raises(ProviderError, match="ping timeout"):
        run(scenario)


def test_error_events_are_reported_and_bad_replies_fail(speech: bytes) -> None:
    async def scenario() -> list[RealtimeEvent]:
        got: list[RealtimeEvent] = []
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            error = {"type": "invalid_request_error", "code": "invalid_value", "message": "Nope."}
            await fake.send({"type": "error", "error": error})
            await fake.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": 5})
            await fake.send({"type": "response.output_audio.delta", "delta": "AAAA"})  # no item
            with pytest.raises(ProviderError, match=r"bad reply: response\.output_audio\.delta"):
                async for event in bridge.events():
                    got.append(event)
            await bridge.aclose()
        return got

    assert run(scenario) == [ApiError("Nope.", "invalid_value"), SpeechStarted(5, None)]


def test_fatal_error_event_mid_session_fails_events() -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            error = {"type": "invalid_request_error", "code": "session_expired", "message": "Gone."}
            await fake.send({"type": "error", "error": error})
            try:
                async for _ in bridge.events():
                    pass
            finally:
                await bridge.aclose()

    with pytest.raises(ProviderError, match=r"Gone\. \(session_expired\)"):
        run(scenario)


def test_bad_input_is_refused_and_loses_nothing(speech: bytes) -> None:
    async def scenario() -> tuple[RealtimeConnection, list[RealtimeEvent]]:
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            with pytest.raises(TypeError, match="PCM bytes"):
                bridge.push_audio([1, 2])  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="output must be a string"):
                bridge.send_function_result("call_1", {"ok": True})  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="call_id"):
                bridge.send_function_result("", "{}")
            bridge.push_audio(b"")
            bridge.push_audio(speech[:3])  # a sample and a half: the half waits
            push(bridge, speech[3 : 400 * MS])
            conn = fake.connections[0]
            await until(lambda: len(conn.audio) >= 300 * 48)
            await bridge.aclose()
            await bridge.aclose()  # idempotent
            bridge.push_audio(speech)  # after close: dropped quietly
            bridge.cancel_response()
            got = [event async for event in bridge.events()]  # ends, no error
            return conn, got

    conn, got = run(scenario)
    assert got == []
    expected = Resampler(16000, 24000).process(speech[: 400 * MS]).tobytes()
    assert bytes(conn.audio) == expected[: len(conn.audio)]
    assert conn.types() == ["session.update", "input_audio_buffer.append"]


def test_service_closing_the_session_fails_events_with_its_last_error() -> None:
    async def scenario() -> list[RealtimeEvent]:
        got: list[RealtimeEvent] = []
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            error = {"type": "server_error", "code": None, "message": "The server had an error."}
            await fake.send({"type": "error", "error": error})
            await fake.close(1000)
            with pytest.raises(
                ProviderError, match=r"closed \(code 1000\) after error: The server"
            ):
                async for event in bridge.events():
                    got.append(event)
            await bridge.aclose()
        return got

    assert run(scenario) == [ApiError("The server had an error.", None)]


def test_failed_reply_is_reported_and_the_session_goes_on() -> None:
    async def scenario() -> list[RealtimeEvent]:
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            await fake.send({"type": "response.created", "response": {"id": "resp_1"}})
            error = {"type": "server_error", "code": "overloaded", "message": "Try again."}
            details = {"type": "failed", "error": error}
            response = {"id": "resp_1", "status": "failed", "status_details": details}
            await fake.send({"type": "response.done", "response": response})
            await fake.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 9})
            async with aclosing(bridge.events()) as events:
                got = await take_until(events, lambda e: isinstance(e, SpeechStopped))
            bridge.cancel_response()  # the reply is over: nothing to cancel
            await bridge.aclose()
            assert fake.connections[0].types() == ["session.update"]
            return got

    assert run(scenario) == [
        ApiError("Try again.", "overloaded"),
        ResponseDone("failed"),
        SpeechStopped(9, None),
    ]


def test_session_not_set_up_in_time_fails_connect() -> None:
    async def scenario() -> None:
        async with FakeRealtime(api_key=KEY) as fake:
            fake.silent = True
            await RealtimeBridge.connect(option(fake), open_timeout=0.3, close_timeout=0.1)

    with pytest.raises(ProviderError, match="not set up in time"):
        run(scenario)


def test_audio_backlog_beyond_two_seconds_is_dropped_not_queued(speech: bytes) -> None:
    async def scenario() -> tuple[RealtimeBridge, RealtimeConnection]:
        async with FakeRealtime(api_key=KEY) as fake:
            bridge = await RealtimeBridge.connect(option(fake))
            push(bridge, speech[: 3000 * MS])  # 3 s at once: the sender never ran meanwhile
            conn = fake.connections[0]
            await until(lambda: len(conn.of_type("input_audio_buffer.append")) >= 20)
            await asyncio.sleep(0.05)
            await bridge.aclose()
            return bridge, conn

    bridge, conn = run(scenario)
    appends = conn.of_type("input_audio_buffer.append")
    # 150 frames make 29 appends of 100 ms (the resampler holds the first few samples back)
    assert len(appends) == 20 and bridge.dropped_audio == 9
    expected = Resampler(16000, 24000).process(speech[: 3000 * MS]).tobytes()
    assert bytes(conn.audio) == expected[: len(conn.audio)]  # the first two seconds, in order


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("<html>502 Bad Gateway</html>", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type": "response.output_audio.delta", "item_id": "i", "delta": "%%"}', "not base64"),
        ('{"type": "input_audio_buffer.speech_started", "audio_start_ms": "5"}', "audio_start_ms"),
        ('{"type": "response.done"}', "without a dict 'response'"),
        (
            '{"type": "response.function_call_arguments.done", "call_id": "c", "arguments": "{}"}',
            "function call 'c' without a name",
        ),
        (
            '{"type": "error", "error": {"code": "invalid_api_key", "message": "Bad key."}}',
            r"Bad key\. \(invalid_api_key\)",
        ),
    ],
)
def test_protocol_bad_replies_are_provider_errors(message: str, error: str) -> None:
    with pytest.raises(ProviderError, match=error):
        RealtimeProtocol().receive(message)


def test_protocol_batch_size_must_be_sane() -> None:
    with pytest.raises(ValueError, match="batch_ms must be between 10 and 1000"):
        RealtimeProtocol(batch_ms=5)
    protocol = RealtimeProtocol(batch_ms=20)
    assert protocol.push_audio(b"\0" * 640) == []  # the resampler holds a few samples back
    (append,) = protocol.push_audio(b"\0" * 640)
    assert len(base64.b64decode(json.loads(append)["audio"])) >= 960  # 20 ms at 24 kHz
    assert protocol.pushed_ms == 40


# --- what a playbook sends: new instructions, results without a reply, system messages ----------


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_new_instructions_and_a_result_that_asks_no_reply(dialect: str, speech: bytes) -> None:
    turns = (Turn(100, 600, call=("goto_scene", '{"scene": "b"}')),)

    async def scenario() -> RealtimeConnection:
        async with FakeRealtime(api_key=KEY, turns=turns) as fake:
            bridge = await RealtimeBridge.connect(
                option(fake, extra={"protocol": dialect, "instructions": "Scene a."})
            )
            async with aclosing(bridge.events()) as events:
                push(bridge, speech[: 700 * MS])
                first = await take_until(events, is_done)
                call = next(e for e in first if isinstance(e, FunctionCall))
                bridge.update_instructions("Scene b.")
                bridge.send_function_result(call.call_id, "Now in b.", respond=False)
                conn = fake.connections[0]
                await until(lambda: len(conn.of_type("conversation.item.create")) == 1)
                await asyncio.sleep(0.1)  # a response.create would have been answered by now
            await bridge.aclose()
            return conn

    conn = run(scenario)
    updates = conn.of_type("session.update")
    assert updates[0]["session"]["instructions"] == "Scene a."
    session = (
        {"type": "realtime", "instructions": "Scene b."}
        if dialect == "ga"
        else {"instructions": "Scene b."}
    )
    assert updates[1] == {"type": "session.update", "session": session}
    assert len(conn.sent_of_type("session.updated")) == 2  # the service took it
    non_audio = [t for t in conn.types() if t != "input_audio_buffer.append"]
    assert non_audio == ["session.update", "session.update", "conversation.item.create"]
    assert conn.sent_of_type("error") == []


def test_protocol_system_message_and_instructions_update_shapes_and_bad_input() -> None:
    protocol = RealtimeProtocol()
    item, respond = (json.loads(m) for m in protocol.system_message("The transfer failed."))
    assert item == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "The transfer failed."}],
        },
    }
    assert respond == {"type": "response.create"}
    (result,) = protocol.function_result("call_1", "ok", respond=False)
    assert json.loads(result)["item"]["type"] == "function_call_output"
    assert instructions_update("beta", "x") == {
        "type": "session.update",
        "session": {"instructions": "x"},
    }
    with pytest.raises(TypeError, match="non-empty string"):
        protocol.system_message("  ")
    with pytest.raises(TypeError, match="non-empty string"):
        protocol.system_message(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="instructions must be a string"):
        instructions_update("ga", 3)  # type: ignore[arg-type]
