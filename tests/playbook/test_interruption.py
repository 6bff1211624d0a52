"""Barge-in rules: strategies, ignoreFirstMs, protection after asrFinal, filler words."""

from __future__ import annotations

from pathlib import Path

import pytest

from activecall.playbook.interruption import (
    FILLER_WORDS,
    FINAL_PROTECTION_MS,
    BargeIn,
    filler_words,
    is_filler,
)
from activecall.playbook.model import Interruption


@pytest.mark.parametrize(
    ("strategy", "vad", "asr"),
    [("both", True, True), ("vad", True, False), ("asr", False, True), ("none", False, False)],
)
def test_each_strategy_listens_to_its_signal(strategy: str, vad: bool, asr: bool) -> None:
    rules = Interruption(strategy=strategy)  # type: ignore[arg-type]
    by_vad, by_asr = BargeIn(rules), BargeIn(rules)
    for b in (by_vad, by_asr):
        b.agent_started("p1", 0)
    assert by_vad.check("vad", 1000) is vad
    assert by_asr.check("asr", 1000, text="wait a moment") is asr


def test_not_in_the_first_ms_not_twice_and_not_when_silent() -> None:
    barge = BargeIn(Interruption(ignore_first_ms=800))
    assert not barge.check("vad", 5000)  # the agent is not speaking
    barge.agent_started("p1", 1000)
    assert not barge.check("vad", 1799)
    assert barge.check("vad", 1800)
    assert not barge.check("vad", 2500)  # already interrupted
    barge.agent_stopped("p1")
    assert barge.agent_speaking is None


def test_protection_after_the_callers_final() -> None:
    barge = BargeIn(Interruption(ignore_first_ms=0))
    barge.agent_started("p2", 0)
    barge.caller_final(10_000)
    assert not barge.check("vad", 10_000 + FINAL_PROTECTION_MS - 1)
    assert barge.check("vad", 10_000 + FINAL_PROTECTION_MS)


def test_filler_words_only_with_the_filter() -> None:
    on = BargeIn(Interruption(ignore_first_ms=0, filler_word_filter=True))
    off = BargeIn(Interruption(ignore_first_ms=0))
    for b in (on, off):
        b.agent_started("p", 0)
    assert not on.check("asr", 100, text="Um, uh...")
    assert not on.check("vad", 100, filler=True)
    assert off.check("asr", 100, text="Um, uh...")
    assert on.check("asr", 200, text="um, actually no")


def test_is_filler() -> None:
    assert is_filler("uh") and is_filler("Um... ah!") and is_filler("嗯嗯那个")
    assert not is_filler("") and not is_filler("umbrella") and not is_filler("嗯 好的")


def test_filler_words_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "fillers.txt"
    assert filler_words(path) == FILLER_WORDS  # no file: the built-in list
    path.write_text("# our call centre's fillers\nWell  okay\n\nlike # and this\n")
    words = filler_words(path)
    assert words == {"well", "okay", "like"}
    assert is_filler("Well, like...", words) and not is_filler("um", words)
    path.write_text("# nothing but a comment\n")
    assert filler_words(path) == FILLER_WORDS
    path.write_bytes(b"\xff\xfe\x00")
    assert filler_words(path) == FILLER_WORDS  # unreadable: logged, the built-in list
    bargein = BargeIn(Interruption(ignore_first_ms=0, filler_word_filter=True), words)
    bargein.agent_started("p1", 0)
    assert not bargein.check("asr", 100, text="okay")
    assert bargein.check("asr", 200, text="um")
