"""Keypad collections: finish key, full entry, timeouts, validation and retries."""

from __future__ import annotations

import re

from activecall.playbook.collector import DEFAULT_ERROR, Collected, Collection, Failed, Invalid
from activecall.playbook.model import DtmfCollector

PIN = DtmfCollector(
    "pin",
    min_digits=4,
    max_digits=4,
    finish_key="#",
    timeout_ms=10_000,
    inter_digit_timeout_ms=3_000,
    pattern=re.compile(r"^[1-9]"),
    error_message="Four digits, not starting with zero.",
    retry_times=1,
)


def press(collection: Collection, keys: str, start: int, step: int = 100) -> list[object]:
    return [collection.press(key, start + i * step) for i, key in enumerate(keys)]


def test_finish_key_validation_and_retry() -> None:
    collection = Collection(PIN, "pin")
    outcomes = press(collection, "12#", 0)
    assert outcomes[-1] == Invalid("12", "Four digits, not starting with zero.", 0)
    assert not collection.armed  # the error message plays before the clock runs again
    assert press(collection, "0123#", 1000)[-1] == Failed("invalid", "0123")


def test_a_right_entry_after_a_wrong_one() -> None:
    collection = Collection(PIN, "pin")
    assert press(collection, "99#", 0)[-1] == Invalid("99", PIN.error_message or "", 0)
    assert press(collection, "4821#", 500) == [None, None, None, None, Collected("4821")]


def test_full_entry_without_a_finish_key_and_extra_keys_ignored() -> None:
    spec = DtmfCollector("code", min_digits=3, max_digits=3)
    assert press(Collection(spec, "c"), "123", 0)[-1] == Collected("123")
    with_key = Collection(PIN, "pin")
    assert press(with_key, "123456#", 0)[-1] == Collected("1234")  # keys beyond max dropped


def test_timeouts() -> None:
    collection = Collection(PIN, "pin")
    collection.arm(0)
    assert collection.check(9_999) is None
    assert collection.check(10_000) == Failed("timeout")
    gap = Collection(PIN, "pin")
    press(gap, "57", 0)
    assert gap.check(3_099) is None
    assert gap.check(3_100) == Invalid("57", PIN.error_message or "", 0)  # inter-digit timeout
    unarmed = Collection(PIN, "pin")
    assert unarmed.check(1_000_000) is None  # the prompt is still playing


def test_the_default_error_message() -> None:
    spec = DtmfCollector("any", min_digits=2, max_digits=2, retry_times=3)
    collection = Collection(spec, "v")
    assert press(collection, "1", 0) == [None]
    assert collection.check(5_000) == Invalid("1", DEFAULT_ERROR, 2)
