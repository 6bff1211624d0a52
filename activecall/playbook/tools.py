"""Native OpenAI tool calling for the playbook's actions: the ``tools`` a chat request offers,
the streamed ``tool_calls`` pieces put back together, and the messages that record them.

A core without I/O. The tools are the action tags as functions (``hangup_call``,
``transfer_call``, ``goto_scene``, ``set_var``, ``http``, ``collect``, ``message``, ``play``),
offered only where they make sense: ``goto_scene`` when the playbook has several scenes (their
ids are the only allowed values), ``collect`` when it has DTMF collectors, ``message`` on SIP
calls. A call the model makes is read by
:func:`~activecall.playbook.actions.action_from_call`, the same reader as the realtime model's
function calls, so it does exactly what the equivalent tag does.

Streamed calls come in pieces keyed by ``index``: the first piece of a call carries its ``id``
and function name, later pieces carry more of the JSON ``arguments``
(``choices[0].delta.tool_calls[{index, id, type, function: {name, arguments}}]``, then
``finish_reason: "tool_calls"``). The history records them in the API's own shape: the
assistant message with ``tool_calls``, then one ``role: "tool"`` message per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from activecall.playbook.model import Playbook
from activecall.providers.base import ToolCallDelta

__all__ = [
    "SIP_CALL_TYPES",
    "ToolCall",
    "ToolCallAssembler",
    "assistant_message",
    "tool_definitions",
    "tool_message",
]

SIP_CALL_TYPES = frozenset({"sip", "b2bua"})
"""Call types with a SIP dialog (where ``message`` can send a SIP MESSAGE)."""


def _function(
    name: str, description: str, properties: dict[str, Any], *required: str
) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": list(required),
            },
        },
    }


_TEXT = {"type": "string"}


def tool_definitions(playbook: Playbook, *, call_type: str) -> list[dict[str, Any]]:
    """The ``tools`` of a chat request for a call of ``call_type`` running ``playbook``."""
    tools = [
        _function(
            "hangup_call",
            "End the call once your reply has been heard. Say goodbye in your reply first.",
            {},
        ),
        _function(
            "transfer_call",
            "Transfer the caller to a person or number (a SIP URI) once your reply has been heard.",
            {"callee": {"type": "string", "description": "SIP URI, e.g. sip:sales@example.com"}},
            "callee",
        ),
    ]
    scenes = sorted(playbook.scenes)
    if len(scenes) > 1:
        tools.append(
            _function(
                "goto_scene",
                "Switch to another scene of the conversation (its instructions replace yours).",
                {"scene": {"type": "string", "enum": scenes}},
                "scene",
            )
        )
    tools.append(
        _function(
            "set_var",
            "Remember a value for the rest of the call.",
            {"key": _TEXT, "value": _TEXT},
            "key",
            "value",
        )
    )
    tools.append(
        _function(
            "http",
            "Call a web service; its answer is given to you and you then reply to the caller.",
            {
                "url": {"type": "string", "description": "http:// or https:// URL"},
                "method": {"type": "string", "enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                "body": {"type": "string", "description": "request body (JSON text)"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "url",
        )
    )
    collectors = sorted(playbook.collectors)
    if collectors:
        tools.append(
            _function(
                "collect",
                "Collect digits from the caller's keypad; you are told the result.",
                {
                    "type": {"type": "string", "enum": collectors},
                    "var": {"type": "string", "description": "variable to store the digits in"},
                    "prompt": {"type": "string", "description": "what to say to ask for them"},
                },
                "type",
                "var",
            )
        )
    if call_type in SIP_CALL_TYPES:
        tools.append(
            _function(
                "message",
                "Send a text message (SIP MESSAGE) to the caller's phone.",
                {"body": _TEXT, "contentType": {"type": "string", "default": "text/plain"}},
                "body",
            )
        )
    tools.append(
        _function(
            "play",
            "Play an audio file or URL to the caller once your reply has been heard.",
            {"file": _TEXT},
            "file",
        )
    )
    return tools


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One whole call the model made: its ``id``, function ``name`` and JSON ``arguments``."""

    id: str
    name: str
    arguments: str

    def wire(self) -> dict[str, Any]:
        """The call as an entry of an assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class _Slot:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Joins streamed :class:`~activecall.providers.base.ToolCallDelta` pieces into calls."""

    def __init__(self) -> None:
        self._slots: list[_Slot] = []
        self._by_index: dict[int, _Slot] = {}

    def __bool__(self) -> bool:
        return bool(self._slots)

    def push(self, pieces: Sequence[ToolCallDelta]) -> None:
        """Add the tool-call pieces of one streamed delta."""
        for piece in pieces:
            slot = self._by_index.get(piece.index)
            # Some OpenAI-compatible servers stream parallel calls all at index 0, told apart
            # only by a new id: that starts a new call.
            if slot is None or (piece.id and slot.id and piece.id != slot.id):
                slot = _Slot()
                self._slots.append(slot)
                self._by_index[piece.index] = slot
            if piece.id and slot.id is None:
                slot.id = piece.id
            if piece.name and slot.name is None:
                slot.name = piece.name
            if piece.arguments:
                slot.arguments.append(piece.arguments)

    def calls(self) -> list[ToolCall]:
        """The calls so far, in the order they started (an id is made up where none came)."""
        return [
            ToolCall(slot.id or f"call_{number}", slot.name or "", "".join(slot.arguments))
            for number, slot in enumerate(self._slots)
        ]


def assistant_message(content: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The assistant message of a reply that made ``calls`` (``content`` null when empty)."""
    return {
        "role": "assistant",
        "content": content if content.strip() else None,
        "tool_calls": [call.wire() for call in calls],
    }


def tool_message(call: ToolCall, content: str) -> dict[str, Any]:
    """The ``role: "tool"`` message answering ``call``."""
    return {"role": "tool", "tool_call_id": call.id, "content": content}
