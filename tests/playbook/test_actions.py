"""Actions from tags, JSON tools and function calls; each bad one is a clear ActionError."""

from __future__ import annotations

import pytest

from activecall.playbook.actions import (
    Accept,
    ActionError,
    Collect,
    Goto,
    Hangup,
    Http,
    Message,
    Play,
    Rag,
    Refer,
    Reject,
    SetVar,
    action_from_call,
    action_from_tag,
    action_from_tool,
)


def test_tags() -> None:
    assert action_from_tag("hangup", {}) == Hangup()
    assert action_from_tag("refer", {"to": "sip:a@b"}) == Refer("sip:a@b")
    assert action_from_tag("play", {"file": "x.wav"}) == Play("x.wav")
    assert action_from_tag("goto", {"scene": "s"}) == Goto("s")
    assert action_from_tag("set_var", {"key": "k", "value": ""}) == SetVar("k", "")
    assert action_from_tag("collect", {"type": "pin", "var": "p"}) == Collect("pin", "p")
    assert action_from_tag(
        "message", {"body": "hi", "contenttype": "text/plain", "refer": "true"}
    ) == (Message("hi", "text/plain", True))
    http = action_from_tag("http", {"url": "https://x/y", "body": '{"a": 1}'})
    assert http == Http("https://x/y", "POST", '{"a": 1}', {})


def test_json_tools_and_function_calls() -> None:
    assert action_from_tool({"name": "refer", "callee": "sip:c@d"}) == Refer("sip:c@d")
    tool = {
        "name": "http",
        "url": "http://x",
        "method": "put",
        "body": {"id": 7},
        "headers": {"A": 1},
    }
    assert action_from_tool(tool) == Http("http://x", "PUT", '{"id": 7}', {"A": "1"})
    assert action_from_tool({"name": "reject", "reason": "busy", "code": "486"}) == Reject(
        "busy", 486
    )
    assert action_from_tool({"name": "accept"}) == Accept()
    assert action_from_tool({"name": "rag", "arguments": {"query": "hours"}}) == Rag("hours")
    assert action_from_call("transfer_call", '{"callee_uri": "sip:e@f"}') == Refer("sip:e@f")
    assert action_from_call("goto_scene", {"scene": "b"}) == Goto("b")
    assert action_from_call("hangup_call", "") == Hangup()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: action_from_tag("refer", {}), "<refer> needs to"),
        (lambda: action_from_tag("set_var", {"key": "k"}), "<set_var>: value must be text"),
        (
            lambda: action_from_tag("http", {"url": "file:///etc/passwd"}),
            "<http>: url must be http(s)",
        ),
        (
            lambda: action_from_tag("http", {"url": "http://x", "method": "TRACE"}),
            "unsupported method",
        ),
        (
            lambda: action_from_tag("http", {"url": "http://x", "headers": "{"}),
            "headers must be a JSON object",
        ),
        (lambda: action_from_tag("dance", {}), "unknown action <dance>"),
        (lambda: action_from_tool(["hangup"]), "a tool must be an object with a 'name'"),
        (lambda: action_from_tool({"name": "reject", "code": "x"}), "code must be a number"),
        (lambda: action_from_call("goto_scene", "{not json"), "arguments are not JSON"),
        (lambda: action_from_call("goto_scene", "[1]"), "arguments must be a JSON object"),
    ],
)
def test_bad_actions_are_clear_errors(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ActionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_json_tools_also_take_the_native_function_names() -> None:
    assert action_from_tool({"name": "transfer_call", "callee": "sip:a@b"}) == Refer("sip:a@b")
    assert action_from_tool({"name": "hangup_call"}) == Hangup()
    assert action_from_tool({"name": "goto_scene", "arguments": {"scene": "s"}}) == Goto("s")
    with pytest.raises(ActionError, match="tool 'goto_scene' needs scene"):
        action_from_tool({"name": "goto_scene"})
