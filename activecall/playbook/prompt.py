"""The system prompt a scene gives the LLM (reference §4.3 item 1).

The rendered scene prompt, then the enabled features' instructions, then how to use the action
tags (``llm.toolInstructions`` replaces that part), then the DTMF collectors the LLM may start.
Only English texts ship; ``llm.language`` does not change them.
"""

from __future__ import annotations

from collections.abc import Mapping

from activecall.playbook.model import DtmfCollector, Playbook

__all__ = ["FEATURES", "TOOL_INSTRUCTIONS", "collector_instructions", "system_prompt"]

FEATURES: Mapping[str, str] = {
    "intent_clarification": (
        "If the caller's request is unclear, ask one short question to clarify it before acting."
    ),
    "emotion_resonance": (
        "Notice how the caller feels; acknowledge frustration or worry in a few words first."
    ),
    "voice_emotion": "Write as you would speak: warm, natural, no lists, no markdown.",
    "context_repair": (
        "The caller's words come from speech recognition and may be split or misheard; read"
        " them generously and ask again when something does not make sense."
    ),
    "rolling_summary": "Earlier parts of a long call may be given to you as a summary.",
    "http_tool": (
        'To fetch or send data, write <http url="https://..." method="GET|POST"'
        " body='{...}'/>; the answer is given to you and you then reply to the caller."
    ),
}
"""``llm.features`` names and the instruction each adds."""

TOOL_INSTRUCTIONS = """\
Your replies are spoken to the caller on a phone call. Keep sentences short. You can act on \
the call by writing these tags in your reply; they are not spoken:
- <hangup/> ends the call after your last sentence has been heard.
- <refer to="sip:user@host"/> transfers the caller.
- <play file="path-or-url"/> plays an audio file after your reply.
- <goto scene="scene_id"/> switches to another part of the conversation{scenes}.
- <set_var key="name" value="text"/> remembers a value for later.
- <http url="https://..." method="GET" body='{{"json": "body"}}'/> calls a web service; its \
answer is given to you and you reply again.
Instead of tags you may reply with one JSON object: {{"text": "what to say", "tools": \
[{{"name": "hangup"}}, {{"name": "refer", "to": "sip:..."}}, {{"name": "http", "url": "..."}}]}}."""
"""How the action tags are used; ``{scenes}`` lists the playbook's scenes."""


def collector_instructions(collectors: Mapping[str, DtmfCollector]) -> str:
    """What the LLM needs to start a keypad collection, one line per collector."""
    if not collectors:
        return ""
    lines = [
        "To collect digits from the caller's keypad, write"
        ' <collect type="NAME" var="VARIABLE" prompt="what to ask"/>; you are told the'
        " result. Collectors:"
    ]
    for name, spec in collectors.items():
        lines.append(f"- {name}: {_describe(spec)}")
    return "\n".join(lines)


def _describe(spec: DtmfCollector) -> str:
    parts = [spec.description] if spec.description else []
    if spec.max_digits is not None and spec.max_digits == spec.min_digits:
        parts.append(f"{spec.max_digits} digits")
    elif spec.max_digits is not None:
        parts.append(f"{spec.min_digits} to {spec.max_digits} digits")
    if spec.finish_key:
        parts.append(f"ended with {spec.finish_key}")
    return ", ".join(parts) or "digits"


def system_prompt(playbook: Playbook, scene_prompt: str) -> str:
    """The whole system prompt for a scene whose rendered prompt is ``scene_prompt``."""
    parts = [scene_prompt.strip()]
    llm = playbook.llm
    features = llm.features if llm is not None else ()
    enabled = [FEATURES[name] for name in features if name in FEATURES]
    if enabled:
        parts.append("\n".join(enabled))
    if llm is not None and llm.tool_instructions is not None:
        parts.append(llm.tool_instructions.strip())
    else:
        others = ", ".join(sorted(playbook.scenes))
        scenes = f" (scenes: {others})" if len(playbook.scenes) > 1 else ""
        parts.append(TOOL_INSTRUCTIONS.format(scenes=scenes))
    parts.append(collector_instructions(playbook.collectors))
    return "\n\n".join(p for p in parts if p)
