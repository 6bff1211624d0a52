"""Counters of a SIP user agent, without I/O: what it received and sent, and its calls' fates.

:class:`SipStats` is fed by :class:`~activecall.sip.agent.SipAgent` as messages go in and out
and read by the supervisor's ``/metrics``. Label values are bounded for Prometheus: methods
outside :data:`METHODS` count as ``other``; status codes outside :data:`CODES` count as their
class (``4xx``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from activecall.sip.message import SipMessage, SipRequest

__all__ = ["CODES", "DIRECTIONS", "METHODS", "SipStats", "code_label", "method_label"]

METHODS = frozenset(
    (
        "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS", "PRACK",
        "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
    )
)  # fmt: skip
"""Methods counted by name; any other is ``other``."""

CODES = frozenset(
    (100, 180, 181, 183, 200, 202, 400, 401, 403, 404, 405, 407, 408, 413, 415, 480, 481, 486,
     487, 488, 491, 500, 501, 503, 505, 603)
)  # fmt: skip
"""Status codes counted by number; any other counts as its class (``4xx``)."""

DIRECTIONS = ("inbound", "outbound")
"""The ``direction`` label of call counters."""

_CSEQ = re.compile(rb"\r\n(?:CSeq)[ \t]*:[ \t]*\d+[ \t]+([!-~]+)", re.IGNORECASE)


def method_label(method: str) -> str:
    """``method`` when it is one of :data:`METHODS`, else ``other``."""
    return method if method in METHODS else "other"


def code_label(status: int) -> str:
    """The status code when it is one of :data:`CODES`, else its class (``4xx``)."""
    if status in CODES:
        return str(status)
    return f"{status // 100}xx" if 100 <= status <= 699 else "other"


@dataclass(slots=True)
class SipStats:
    """What one agent received and sent, and how its calls went; see the module docstring.

    Counters keyed by label values: ``requests_*`` by method, ``responses_*`` by (CSeq method,
    code label), ``calls_*`` by direction. A call ``failed`` when it ended without an answer
    (refused, cancelled, timed out, unreachable).
    """

    messages_received: int = 0
    """Datagrams and framed stream messages handed to the agent, parsed or not."""
    malformed_dropped: int = 0
    """Messages that did not parse and could not be answered (dropped)."""
    malformed_answered: int = 0
    """Messages that did not parse and were answered (400, 413, 505)."""
    retransmissions_sent: int = 0
    """Requests and responses we sent again: timers A, E, G, the 2xx timer, a retransmitted
    request answered again, a 2xx acknowledged again."""
    retransmissions_received: int = 0
    """Requests that matched a live server transaction, final responses a client transaction
    had already seen, 2xx responses to an INVITE already acknowledged."""
    requests_received: Counter[str] = field(default_factory=Counter)
    requests_sent: Counter[str] = field(default_factory=Counter)
    responses_received: Counter[tuple[str, str]] = field(default_factory=Counter)
    responses_sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    calls_started: Counter[str] = field(default_factory=Counter)
    calls_answered: Counter[str] = field(default_factory=Counter)
    calls_failed: Counter[str] = field(default_factory=Counter)

    def received(self, message: SipMessage) -> None:
        """A parsed message came in."""
        if isinstance(message, SipRequest):
            self.requests_received[method_label(message.method)] += 1
        else:
            key = (method_label(message.cseq.method), code_label(message.status))
            self.responses_received[key] += 1

    def sent(self, data: bytes, *, retransmission: bool = False) -> None:
        """Serialised message ``data`` goes out (its start line and CSeq are read)."""
        if retransmission:
            self.retransmissions_sent += 1
        if data.startswith(b"SIP/2.0 "):
            try:
                status = int(data[8:11])
            except ValueError:
                status = 0
            found = _CSEQ.search(data)
            method = found.group(1).decode("ascii") if found is not None else ""
            self.responses_sent[(method_label(method), code_label(status))] += 1
        else:
            method = data[: data.find(b" ")].decode("ascii", "replace")
            self.requests_sent[method_label(method)] += 1

    def call_started(self, inbound: bool) -> None:
        """A call began: an INVITE came in, or we sent one."""
        self.calls_started[_direction(inbound)] += 1

    def call_answered(self, inbound: bool) -> None:
        """A call was answered (we sent a 2xx, or received one)."""
        self.calls_answered[_direction(inbound)] += 1

    def call_failed(self, inbound: bool) -> None:
        """A call ended without being answered."""
        self.calls_failed[_direction(inbound)] += 1


def _direction(inbound: bool) -> str:
    return "inbound" if inbound else "outbound"
