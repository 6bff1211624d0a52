"""Collecting digits from the caller's keypad (``<collect/>``, reference §4.2 ``dtmfCollectors``).

A core without I/O: keys and the time go in, an outcome comes out. A collection ends when the
finish key is pressed, when ``maxDigits`` keys are in and there is no finish key, or when the
caller stops (``interDigitTimeout`` after a key, ``timeout`` after the start). Then the digits
are checked (``minDigits``..``maxDigits``, the ``validation.pattern``): a valid entry is
:class:`Collected`; an invalid one is :class:`Invalid` and the caller tries again, up to
``retryTimes`` more times; after that, or on a timeout with no key at all, it is
:class:`Failed`. The overall timeout runs only once the collection is armed (its prompt has
been heard).
"""

from __future__ import annotations

from dataclasses import dataclass

from activecall.playbook.model import DtmfCollector

__all__ = ["DEFAULT_ERROR", "Collected", "Collection", "Failed", "Invalid", "Outcome"]

DEFAULT_ERROR = "That entry is not valid. Please try again."


@dataclass(frozen=True, slots=True)
class Collected:
    """A valid entry."""

    digits: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """An entry that failed validation; the caller is asked again (``message``)."""

    digits: str
    message: str
    retries_left: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The collection gave up: ``reason`` is ``invalid`` (retries used up) or ``timeout``."""

    reason: str
    digits: str = ""


Outcome = Collected | Invalid | Failed


class Collection:
    """One collection in progress: collector ``spec`` filling variable ``var``."""

    def __init__(self, spec: DtmfCollector, var: str, *, prompt: str | None = None) -> None:
        self.spec = spec
        self.var = var
        self.prompt = prompt
        self.digits = ""
        self.attempts = 0
        self._armed_at: int | None = None
        self._last_key_at: int | None = None

    @property
    def armed(self) -> bool:
        """True once the overall timeout runs."""
        return self._armed_at is not None

    def arm(self, now_ms: int) -> None:
        """Start the overall timeout (the prompt has been heard); no-op when armed."""
        if self._armed_at is None:
            self._armed_at = now_ms

    def press(self, key: str, now_ms: int) -> Outcome | None:
        """One key; the outcome when this key ends the entry."""
        spec = self.spec
        self.arm(now_ms)  # a key pressed during the prompt starts the clock too
        if spec.finish_key is not None and key == spec.finish_key:
            return self._complete(now_ms)
        if spec.max_digits is None or len(self.digits) < spec.max_digits:
            self.digits += key
        self._last_key_at = now_ms
        full = spec.max_digits is not None and len(self.digits) >= spec.max_digits
        if full and spec.finish_key is None:
            return self._complete(now_ms)
        return None

    def check(self, now_ms: int) -> Outcome | None:
        """The timeouts: an outcome when one has passed."""
        last = self._last_key_at
        if last is not None and now_ms - last >= self.spec.inter_digit_timeout_ms:
            return self._complete(now_ms)
        start = self._armed_at
        if start is not None and now_ms - start >= self.spec.timeout_ms:
            if self.digits:
                return self._complete(now_ms)
            self._armed_at = None
            return Failed("timeout")
        return None

    def _complete(self, now_ms: int) -> Outcome:
        digits, self.digits = self.digits, ""
        self._last_key_at = None
        spec = self.spec
        valid = len(digits) >= spec.min_digits and (
            spec.max_digits is None or len(digits) <= spec.max_digits
        )
        if valid and spec.pattern is not None:
            valid = spec.pattern.search(digits) is not None
        if valid:
            return Collected(digits)
        self.attempts += 1
        if self.attempts > spec.retry_times:
            return Failed("invalid", digits)
        self._armed_at = None  # re-armed when the error message has been heard
        return Invalid(
            digits, spec.error_message or DEFAULT_ERROR, spec.retry_times - self.attempts
        )
