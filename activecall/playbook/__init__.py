"""Playbooks: markdown-defined voice agents (reference §4) and the runner that plays them.

:mod:`~activecall.playbook.parser` reads a playbook file into the frozen model of
:mod:`~activecall.playbook.model`; :class:`PlaybookRunner` runs a call's dialogue through the
command/event API with an LLM; :func:`activecall.playbook.call.attach_playbook` puts a runner on
a session (imported from there: it brings in the worker's session).
"""

from activecall.playbook.model import (
    DtmfAction,
    DtmfCollector,
    FollowUp,
    Interruption,
    LlmConfig,
    Playbook,
    Posthook,
    Scene,
)
from activecall.playbook.parser import (
    PlaybookError,
    PlaybookProblem,
    check_playbook,
    load_playbook,
    parse_playbook,
    read_playbook,
)
from activecall.playbook.runner import PlaybookRunner
from activecall.playbook.template import CallFacts

__all__ = [
    "CallFacts",
    "DtmfAction",
    "DtmfCollector",
    "FollowUp",
    "Interruption",
    "LlmConfig",
    "Playbook",
    "PlaybookError",
    "PlaybookProblem",
    "PlaybookRunner",
    "Posthook",
    "Scene",
    "check_playbook",
    "load_playbook",
    "parse_playbook",
    "read_playbook",
]
