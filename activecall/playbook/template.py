"""``{{ var }}`` in playbook prompts: Jinja2 in its sandbox, rendered per call.

Prompts come from playbook files that may be uploaded over HTTP, so they render in Jinja2's
:class:`~jinja2.sandbox.SandboxedEnvironment` (no attribute access to Python internals).
Undefined names, and attributes or items of them, render as empty text (``ChainableUndefined``)
so a prompt never fails a call; a syntax error is found when the playbook loads. The variables
are the call's built-ins (:class:`CallFacts`), the run's own variables, then ``set_var`` and
DTMF-collected values, later ones winning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["CallFacts", "TemplateProblem", "check_template", "render", "template_variables"]

log = logging.getLogger(__name__)

_ENV = SandboxedEnvironment(
    undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=True
)


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What a call knows about itself: the built-in template variables."""

    session_id: str
    call_type: str = "websocket"  # sip | websocket | webrtc | b2bua
    caller: str | None = None
    callee: str | None = None
    start_time: str | None = None  # RFC 3339
    sip: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """SIP headers of the INVITE (those of ``sip.extract_headers`` when it is set)."""


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template that does not parse: ``line`` counts from the template's first line."""

    line: int
    message: str


def template_variables(facts: CallFacts, *layers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The variables a prompt sees: built-ins, then each layer in turn (later wins)."""
    out: dict[str, Any] = {
        "session_id": facts.session_id,
        "call_type": facts.call_type,
        "caller": facts.caller or "",
        "callee": facts.callee or "",
        "start_time": facts.start_time or "",
        "sip": dict(facts.sip),
    }
    for layer in layers:
        if layer:
            out.update(layer)
    return out


def check_template(text: str) -> TemplateProblem | None:
    """The syntax error of ``text`` as a template, or ``None`` when it parses."""
    try:
        _ENV.parse(text)
    except TemplateSyntaxError as exc:
        return TemplateProblem(exc.lineno or 1, exc.message or str(exc))
    return None


def render(text: str, variables: Mapping[str, Any]) -> str:
    """``text`` rendered with ``variables``; a template that fails at run time (a sandbox
    refusal, a filter error) is logged and returned unrendered rather than failing the call."""
    if "{" not in text:
        return text  # nothing to render: the common case for most prompts
    try:
        return _compiled(text).render(variables)
    except TemplateError as exc:
        log.warning("a playbook template failed to render (%s): used as written", exc)
    except Exception as exc:  # a template must never end a call
        log.warning("a playbook template failed to render (%s: %s)", type(exc).__name__, exc)
    return text


@lru_cache(maxsize=256)
def _compiled(text: str) -> Template:
    return _ENV.from_string(text)
