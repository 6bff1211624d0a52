"""Barge-in: when the caller's voice may cut the agent off (reference §4.3 item 7).

A core without I/O; times are the events' epoch milliseconds. The agent can be interrupted
while its own audio plays, by the caller's ``speaking`` (strategy ``vad``), ``asrDelta``
(``asr``) or either (``both``), but not during the first ``ignoreFirstMs`` of its speech, not
within 500 ms of the caller's last ``asrFinal`` (the tail of the utterance the agent is
answering), not by filler words when the filter is on, and only once per stretch of speech.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from activecall.playbook.model import Interruption

__all__ = [
    "FILLERS_FILE",
    "FILLER_WORDS",
    "FINAL_PROTECTION_MS",
    "BargeIn",
    "filler_words",
    "is_filler",
]

FILLER_WORDS = frozenset(
    {
        "嗯",
        "啊",
        "哦",
        "呃",
        "那个",
        "uh",
        "um",
        "umm",
        "uhm",
        "ah",
        "er",
        "erm",
        "hmm",
        "mm",
        "mhm",
    }
)
"""Words that are not a request to speak (upstream's built-in list, plus English variants)."""
FINAL_PROTECTION_MS = 500
FILLERS_FILE = Path("config/fillers.txt")
"""Upstream's place for a call centre's own filler words (relative to the working directory)."""

log = logging.getLogger(__name__)

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def filler_words(path: Path = FILLERS_FILE) -> frozenset[str]:
    """The filler words: those of ``path`` (one or more per line, ``#`` starts a comment) when
    it exists and names any, else :data:`FILLER_WORDS`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return FILLER_WORDS
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("filler words: cannot read %s (%s): the built-in list is used", path, exc)
        return FILLER_WORDS
    words = {w.lower() for line in text.splitlines() for w in line.split("#", 1)[0].split()}
    return frozenset(words) or FILLER_WORDS


def is_filler(text: str, words: frozenset[str] = FILLER_WORDS) -> bool:
    """True when ``text`` has words and all of them are fillers (``"Um, uh..."``, ``"嗯嗯"``)."""
    tokens = _WORD.findall(text.lower())
    return bool(tokens) and all(_fillers_only(token, words) for token in tokens)


def _fillers_only(token: str, words: frozenset[str]) -> bool:
    # CJK text has no spaces: "嗯嗯那个" is three fillers run together.
    if token in words:
        return True
    return any(
        token.startswith(w) and _fillers_only(token[len(w) :], words)
        for w in words
        if len(w) < len(token)
    )


@dataclass(slots=True)
class _Speaking:
    play_id: str
    since_ms: int
    interrupted: bool = False


class BargeIn:
    """Decides whether a caller signal interrupts the agent."""

    def __init__(self, rules: Interruption, fillers: frozenset[str] = FILLER_WORDS) -> None:
        self.rules = rules
        self.fillers = fillers
        self._speaking: _Speaking | None = None
        self._last_final_ms: int | None = None

    @property
    def agent_speaking(self) -> str | None:
        """The playId of the agent audio playing now, if any."""
        return self._speaking.play_id if self._speaking is not None else None

    def agent_started(self, play_id: str, now_ms: int) -> None:
        """The agent's audio ``play_id`` started (``trackStart``)."""
        self._speaking = _Speaking(play_id, now_ms)

    def agent_stopped(self, play_id: str | None) -> None:
        """The agent's audio ended (``trackEnd``); ``None``: whatever was playing."""
        if self._speaking is not None and play_id in (None, self._speaking.play_id):
            self._speaking = None

    def caller_final(self, now_ms: int) -> None:
        """The caller finished an utterance (``asrFinal``)."""
        self._last_final_ms = now_ms

    def check(
        self,
        signal: Literal["vad", "asr"],
        now_ms: int,
        *,
        text: str | None = None,
        filler: bool = False,
    ) -> bool:
        """Whether this signal interrupts the agent now; True marks the speech interrupted."""
        speaking = self._speaking
        rules = self.rules
        if speaking is None or speaking.interrupted or rules.strategy == "none":
            return False
        if rules.strategy not in ("both", signal):
            return False
        if now_ms - speaking.since_ms < rules.ignore_first_ms:
            return False
        last = self._last_final_ms
        if last is not None and 0 <= now_ms - last < FINAL_PROTECTION_MS:
            return False
        if rules.filler_word_filter and (
            filler or (text is not None and is_filler(text, self.fillers))
        ):
            return False
        if signal == "asr" and not (text or "").strip():
            return False
        speaking.interrupted = True
        return True
