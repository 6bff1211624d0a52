"""Tool definitions and streamed tool-call assembly, read through the real OpenAI delta parser
and checked against the request rules of the OpenAI fake."""

from __future__ import annotations

import json
from typing import Any

from activecall.playbook.parser import parse_playbook
from activecall.playbook.tools import (
    ToolCall,
    ToolCallAssembler,
    assistant_message,
    tool_definitions,
    tool_message,
)
from activecall.providers.base import ToolCallDelta
from activecall.providers.openai import chat_delta
from tests.providers.fakes.openai import check_chat_request, tool_call_deltas

ONE_SCENE = "---\nllm:\n  model: m\n---\nYou help callers.\n"
MANY = """\
---
llm:
  model: m
dtmfCollectors:
  pin: { digits: 4 }
  account: { minDigits: 6, maxDigits: 8 }
---
# Scene: intro
Hello.
# Scene: help
Help.
"""


def names(tools: list[dict[str, Any]]) -> list[str]:
    return [tool["function"]["name"] for tool in tools]


def request(tools: list[dict[str, Any]], *messages: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "stream": True, "tools": tools, "messages": list(messages)}


def streamed(deltas: list[dict[str, Any]]) -> list[ToolCallDelta]:
    """The deltas as the client reads them off the wire (one chunk each)."""
    out: list[ToolCallDelta] = []
    for delta in deltas:
        chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        parsed = chat_delta(json.dumps(chunk))
        assert parsed is not None
        out.extend(parsed.tool_calls)
    return out


def test_only_the_tools_that_make_sense_are_offered() -> None:
    simple = tool_definitions(parse_playbook(ONE_SCENE), call_type="websocket")
    assert names(simple) == ["hangup_call", "transfer_call", "set_var", "http", "play"]
    full = tool_definitions(parse_playbook(MANY), call_type="sip")
    assert names(full) == [
        "hangup_call",
        "transfer_call",
        "goto_scene",
        "set_var",
        "http",
        "collect",
        "message",
        "play",
    ]
    by_name = {tool["function"]["name"]: tool["function"] for tool in full}
    assert by_name["goto_scene"]["parameters"]["properties"]["scene"]["enum"] == ["help", "intro"]
    assert by_name["collect"]["parameters"]["properties"]["type"]["enum"] == ["account", "pin"]
    assert by_name["transfer_call"]["parameters"]["required"] == ["callee"]
    system = {"role": "system", "content": "x"}
    assert check_chat_request(request(full, system)) is None  # what the API accepts


def test_streamed_calls_are_joined_by_index() -> None:
    calls = [
        ("call_a", "transfer_call", '{"callee": "sip:sales@example.com"}'),
        ("call_b", "set_var", '{"key": "topic", "value": "sales"}'),
    ]
    deltas = tool_call_deltas(calls, pieces=4)
    assert len(deltas) == 10  # per call: the opening piece, then four pieces of arguments
    assembler = ToolCallAssembler()
    assert not assembler
    for piece in streamed(deltas):
        assembler.push([piece])
    assert assembler.calls() == [ToolCall(*call) for call in calls]


def test_interleaved_and_index_zero_reusing_servers() -> None:
    a = tool_call_deltas([("call_a", "play", '{"file": "a.wav"}')], pieces=2)
    b = tool_call_deltas([("call_b", "hangup_call", "{}")], pieces=1, first_index=1)
    assembler = ToolCallAssembler()
    for delta in (a[0], b[0], a[1], b[1], a[2]):  # two calls streaming at once
        assembler.push(streamed([delta]))
    assert [(c.id, c.name, c.arguments) for c in assembler.calls()] == [
        ("call_a", "play", '{"file": "a.wav"}'),
        ("call_b", "hangup_call", "{}"),
    ]
    # Ollama-style: every call at index 0, a new id starts the next one; a call without id
    reused = ToolCallAssembler()
    reused.push([ToolCallDelta(0, "x1", "play", '{"file": '), ToolCallDelta(0, None, None, '"a"}')])
    reused.push([ToolCallDelta(0, "x2", "hangup_call", "{}")])
    reused.push([ToolCallDelta(3, None, "set_var", "{}")])
    assert [(c.id, c.name, c.arguments) for c in reused.calls()] == [
        ("x1", "play", '{"file": "a"}'),
        ("x2", "hangup_call", "{}"),
        ("call_2", "set_var", "{}"),
    ]


def test_the_history_messages_have_the_api_shape() -> None:
    call = ToolCall("call_1", "hangup_call", "{}")
    said = assistant_message("Goodbye!", [call])
    assert said == {
        "role": "assistant",
        "content": "Goodbye!",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "hangup_call", "arguments": "{}"},
            }
        ],
    }
    assert assistant_message("  ", [call])["content"] is None
    answer = tool_message(call, "ok")
    assert answer == {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
    user = {"role": "user", "content": "bye"}
    tools = tool_definitions(parse_playbook(ONE_SCENE), call_type="websocket")
    assert check_chat_request(request(tools, user, said, answer)) is None
    refused = check_chat_request(request(tools, user, said, user))  # the tool answer is missing
    assert refused is not None and "call_1" in refused[0]
    stray = check_chat_request(request(tools, user, answer))
    assert stray is not None and "preceeding message with 'tool_calls'" in stray[0]
