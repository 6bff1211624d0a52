"""The playbook invite handler: which playbook a call runs, and whether it can run at all.

``[handler] type="playbook"`` (or ``--handler file.md``) routes inbound SIP calls to a playbook
(reference §3.2): the first ``[[handler.rules]]`` entry whose ``caller`` and ``callee`` regexes
both match (a regex matches anywhere in the URI, as upstream's ``Regex::is_match``; an absent
one matches everything) names it, else ``default``; with neither the call is refused.

A playbook name is looked up in the playbook folder (``config/playbook/``, as upstream) and,
when not there, as a path of its own (so ``--handler ./greeting.md`` works as typed). A call
whose playbook is missing is refused with 503 "Playbook Not Found"; one whose playbook does not
load with 503 "Playbook Invalid", the problems going to the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from activecall.config import PlaybookHandler, PlaybookRule
from activecall.playbook.parser import PlaybookError, load_playbook

__all__ = [
    "PLAYBOOK_DIR",
    "PlaybookUnavailable",
    "find_playbook",
    "match_playbook",
    "playbook_for_call",
]

PLAYBOOK_DIR = Path("config/playbook")
"""Where playbooks are looked up first (relative to the working directory, as upstream)."""


class PlaybookUnavailable(Exception):
    """The call cannot run a playbook: ``reason`` is the SIP reason phrase (code 503),
    ``detail`` what goes to the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _matches(pattern: str | None, value: str) -> bool:
    return pattern is None or re.search(pattern, value) is not None


def match_playbook(
    rules: Iterable[PlaybookRule], default: str | None, caller: str, callee: str
) -> str | None:
    """The playbook of the first rule matching ``caller`` and ``callee``, else ``default``."""
    for rule in rules:
        if _matches(rule.caller, caller) and _matches(rule.callee, callee):
            return rule.playbook
    return default


def find_playbook(name: str, folder: Path = PLAYBOOK_DIR) -> Path | None:
    """The file playbook ``name`` refers to (in ``folder``, else as a path); ``None`` if none."""
    for candidate in (folder / name, Path(name)):
        if candidate.is_file():
            return candidate.resolve()
    return None


def playbook_for_call(
    handler: PlaybookHandler, caller: str, callee: str, folder: Path = PLAYBOOK_DIR
) -> str:
    """The path of the playbook the call runs, checked to load (reads the file: call it off
    the event loop). Raises :class:`PlaybookUnavailable` when there is none or it is broken."""
    name = match_playbook(handler.rules, handler.default, caller, callee)
    if name is None:
        raise PlaybookUnavailable(
            "No Playbook Matched", f"no rule matches caller {caller!r}, callee {callee!r}"
        )
    path = find_playbook(name, folder)
    if path is None:
        raise PlaybookUnavailable(
            "Playbook Not Found", f"{name!r} is neither in {folder}/ nor a file"
        )
    try:
        load_playbook(path)
    except PlaybookError as exc:
        raise PlaybookUnavailable("Playbook Invalid", str(exc)) from None
    return str(path)
