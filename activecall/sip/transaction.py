"""SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" state), without I/O.

Four machines share one interpreter. Inputs are method calls with the current time
(``start``, ``handle`` a received message, ``respond`` from the TU, ``tick`` for timers,
``transport_failed``); outputs are actions: :class:`Send` bytes, :class:`Deliver` a message to
the TU, :class:`Timeout`, :class:`TransportFailure`, :class:`Terminated`. :class:`Transactions`
matches messages to transactions (§17.1.3, §17.2.3) and keeps their timers in one heap.

Every transition is in :data:`TRANSITIONS`, and the timers each state runs are in
:data:`STATE_TIMERS`: entering a state starts its timers that are not running and cancels the
others; a retransmission timer (A, E, G, 2xx) that fires re-arms itself with its back-off.
Over a reliable transport timers A, E and G never run and D, I, J, K are zero.

=====================  ===========================================================  =======
machine, state         event → actions → next state                                 timers
=====================  ===========================================================  =======
client INVITE
  Calling              start → send; 1xx → deliver → Proceeding;                     A, B
                       2xx → deliver → Accepted; 3xx-6xx → ACK, deliver → Completed;
                       A → resend; B → timeout → Terminated
  Proceeding           1xx → deliver; 2xx → deliver → Accepted;
                       3xx-6xx → ACK, deliver → Completed
  Completed            3xx-6xx → ACK again; D → Terminated                           D
  Accepted             2xx → deliver (the TU ACKs each); M → Terminated              M
client non-INVITE
  Trying               start → send; 1xx → deliver → Proceeding;                     E, F
                       final → deliver → Completed; E → resend (×2, ≤ T2);
                       F → timeout → Terminated
  Proceeding           1xx → deliver; final → deliver → Completed;                   E, F
                       E → resend (every T2); F → timeout → Terminated
  Completed            K → Terminated                                                K
server INVITE
  Proceeding           start → deliver, 100 Trying; request → resend last response;  —
                       TU 1xx → send; TU 2xx → send → Accepted;
                       TU 3xx-6xx → send → Completed
  Completed            request → resend; ACK → Confirmed; G → resend (×2, ≤ T2);     G, H
                       H → timeout → Terminated
  Confirmed            I → Terminated                                                I
  Accepted             TU 2xx → send; ACK → deliver, stop 2xx retransmission;       L, 2xx
                       2xx timer → resend (×2, ≤ T2); L → timeout if no ACK came
                       → Terminated
server non-INVITE
  Trying               start → deliver; TU 1xx → send → Proceeding;                  —
                       TU final → send → Completed
  Proceeding           request → resend; TU 1xx → send; TU final → send → Completed  —
  Completed            request → resend; J → Terminated                              J
=====================  ===========================================================  =======

A transport error in any live state reports :class:`TransportFailure` and terminates. The
UAS core's 2xx retransmission (RFC 3261 §13.3.1.4: T1 doubling to T2, given up after 64·T1
even over TCP) runs in the server INVITE transaction's Accepted state; the ACK for a 2xx has
its own branch, so the dialog layer hands it over (:meth:`Transactions.match_ack`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from activecall.sip.message import Headers, SipMessage, SipRequest, SipResponse, canonical_name

__all__ = [
    "STATE_TIMERS",
    "TRANSITIONS",
    "Action",
    "ClientInviteTransaction",
    "ClientNonInviteTransaction",
    "ClientTransaction",
    "Deliver",
    "Event",
    "Kind",
    "Send",
    "ServerInviteTransaction",
    "ServerNonInviteTransaction",
    "ServerTransaction",
    "State",
    "Terminated",
    "Timeout",
    "Timer",
    "TimerValues",
    "Transaction",
    "TransactionError",
    "Transactions",
    "TransportFailure",
    "ack_for",
    "cancel_for",
    "client_key",
    "server_key",
]


class TransactionError(RuntimeError):
    """The TU asked for something the transaction's state does not allow."""


class Kind(Enum):
    """The four transaction machines."""

    CLIENT_INVITE = "client INVITE"
    CLIENT_NON_INVITE = "client non-INVITE"
    SERVER_INVITE = "server INVITE"
    SERVER_NON_INVITE = "server non-INVITE"


class State(Enum):
    """Transaction states (RFC 3261 §17, RFC 6026 §7)."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Timer(Enum):
    """Transaction timers (RFC 3261 Table 4, RFC 6026 §8.11) and the UAS 2xx retransmission."""

    A = "A"
    B = "B"
    D = "D"
    E = "E"
    F = "F"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 (the RFC's name)
    J = "J"
    K = "K"
    L = "L"
    M = "M"
    RETRY_2XX = "2xx"


class Event(Enum):
    """What happens to a transaction."""

    START = "start"
    PROVISIONAL = "1xx received"
    SUCCESS = "2xx received"
    FAILURE = "3xx-6xx received"
    REQUEST = "request retransmission"
    ACK = "ACK received"
    SEND_PROVISIONAL = "TU sends 1xx"
    SEND_SUCCESS = "TU sends 2xx"
    SEND_FAILURE = "TU sends 3xx-6xx"
    TRANSPORT_ERROR = "transport error"
    TIMER_A = "timer A"
    TIMER_B = "timer B"
    TIMER_D = "timer D"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"
    TIMER_J = "timer J"
    TIMER_K = "timer K"
    TIMER_L = "timer L"
    TIMER_M = "timer M"
    TIMER_2XX = "timer 2xx"


class _Op(Enum):
    SEND_REQUEST = "send the request"
    SEND_ACK = "send ACK for the final response"
    SEND_TRYING = "send 100 Trying"
    SEND_RESPONSE = "send the TU's response"
    RESEND_RESPONSE = "resend the last response"
    DELIVER = "deliver to the TU"
    TIMEOUT = "report timeout"
    TIMEOUT_IF_UNACKED = "report timeout unless the 2xx was ACKed"
    STOP_2XX = "stop 2xx retransmission"
    TRANSPORT_FAILURE = "report transport failure"


_TIMER_EVENT = {timer: Event[f"TIMER_{timer.value.upper()}"] for timer in Timer}
_TU_EVENTS = frozenset((Event.SEND_PROVISIONAL, Event.SEND_SUCCESS, Event.SEND_FAILURE))
_RETRANSMIT = frozenset((Timer.A, Timer.E, Timer.G, Timer.RETRY_2XX))

_CI, _CN, _SI, _SN = (
    Kind.CLIENT_INVITE,
    Kind.CLIENT_NON_INVITE,
    Kind.SERVER_INVITE,
    Kind.SERVER_NON_INVITE,
)
_S = State
_E = Event
_O = _Op

TRANSITIONS: dict[tuple[Kind, State, Event], tuple[State, tuple[_Op, ...]]] = {
    # client INVITE (RFC 3261 §17.1.1, RFC 6026 §8.4)
    (_CI, _S.CALLING, _E.START): (_S.CALLING, (_O.SEND_REQUEST,)),
    (_CI, _S.CALLING, _E.TIMER_A): (_S.CALLING, (_O.SEND_REQUEST,)),
    (_CI, _S.CALLING, _E.TIMER_B): (_S.TERMINATED, (_O.TIMEOUT,)),
    (_CI, _S.CALLING, _E.PROVISIONAL): (_S.PROCEEDING, (_O.DELIVER,)),
    (_CI, _S.CALLING, _E.SUCCESS): (_S.ACCEPTED, (_O.DELIVER,)),
    (_CI, _S.CALLING, _E.FAILURE): (_S.COMPLETED, (_O.SEND_ACK, _O.DELIVER)),
    (_CI, _S.PROCEEDING, _E.PROVISIONAL): (_S.PROCEEDING, (_O.DELIVER,)),
    (_CI, _S.PROCEEDING, _E.SUCCESS): (_S.ACCEPTED, (_O.DELIVER,)),
    (_CI, _S.PROCEEDING, _E.FAILURE): (_S.COMPLETED, (_O.SEND_ACK, _O.DELIVER)),
    (_CI, _S.COMPLETED, _E.FAILURE): (_S.COMPLETED, (_O.SEND_ACK,)),
    (_CI, _S.COMPLETED, _E.TIMER_D): (_S.TERMINATED, ()),
    (_CI, _S.ACCEPTED, _E.SUCCESS): (_S.ACCEPTED, (_O.DELIVER,)),
    (_CI, _S.ACCEPTED, _E.TIMER_M): (_S.TERMINATED, ()),
    # client non-INVITE (§17.1.2)
    (_CN, _S.TRYING, _E.START): (_S.TRYING, (_O.SEND_REQUEST,)),
    (_CN, _S.TRYING, _E.TIMER_E): (_S.TRYING, (_O.SEND_REQUEST,)),
    (_CN, _S.TRYING, _E.TIMER_F): (_S.TERMINATED, (_O.TIMEOUT,)),
    (_CN, _S.TRYING, _E.PROVISIONAL): (_S.PROCEEDING, (_O.DELIVER,)),
    (_CN, _S.TRYING, _E.SUCCESS): (_S.COMPLETED, (_O.DELIVER,)),
    (_CN, _S.TRYING, _E.FAILURE): (_S.COMPLETED, (_O.DELIVER,)),
    (_CN, _S.PROCEEDING, _E.TIMER_E): (_S.PROCEEDING, (_O.SEND_REQUEST,)),
    (_CN, _S.PROCEEDING, _E.TIMER_F): (_S.TERMINATED, (_O.TIMEOUT,)),
    (_CN, _S.PROCEEDING, _E.PROVISIONAL): (_S.PROCEEDING, (_O.DELIVER,)),
    (_CN, _S.PROCEEDING, _E.SUCCESS): (_S.COMPLETED, (_O.DELIVER,)),
    (_CN, _S.PROCEEDING, _E.FAILURE): (_S.COMPLETED, (_O.DELIVER,)),
    (_CN, _S.COMPLETED, _E.TIMER_K): (_S.TERMINATED, ()),
    # server INVITE (§17.2.1, RFC 6026 §7.1)
    (_SI, _S.PROCEEDING, _E.START): (_S.PROCEEDING, (_O.DELIVER, _O.SEND_TRYING)),
    (_SI, _S.PROCEEDING, _E.REQUEST): (_S.PROCEEDING, (_O.RESEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, _E.SEND_PROVISIONAL): (_S.PROCEEDING, (_O.SEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, _E.SEND_SUCCESS): (_S.ACCEPTED, (_O.SEND_RESPONSE,)),
    (_SI, _S.PROCEEDING, _E.SEND_FAILURE): (_S.COMPLETED, (_O.SEND_RESPONSE,)),
    (_SI, _S.COMPLETED, _E.REQUEST): (_S.COMPLETED, (_O.RESEND_RESPONSE,)),
    (_SI, _S.COMPLETED, _E.TIMER_G): (_S.COMPLETED, (_O.RESEND_RESPONSE,)),
    (_SI, _S.COMPLETED, _E.TIMER_H): (_S.TERMINATED, (_O.TIMEOUT,)),
    (_SI, _S.COMPLETED, _E.ACK): (_S.CONFIRMED, ()),
    (_SI, _S.CONFIRMED, _E.TIMER_I): (_S.TERMINATED, ()),
    (_SI, _S.ACCEPTED, _E.SEND_SUCCESS): (_S.ACCEPTED, (_O.SEND_RESPONSE,)),
    (_SI, _S.ACCEPTED, _E.ACK): (_S.ACCEPTED, (_O.DELIVER, _O.STOP_2XX)),
    (_SI, _S.ACCEPTED, _E.TIMER_2XX): (_S.ACCEPTED, (_O.RESEND_RESPONSE,)),
    (_SI, _S.ACCEPTED, _E.TIMER_L): (_S.TERMINATED, (_O.TIMEOUT_IF_UNACKED,)),
    # server non-INVITE (§17.2.2)
    (_SN, _S.TRYING, _E.START): (_S.TRYING, (_O.DELIVER,)),
    (_SN, _S.TRYING, _E.SEND_PROVISIONAL): (_S.PROCEEDING, (_O.SEND_RESPONSE,)),
    (_SN, _S.TRYING, _E.SEND_SUCCESS): (_S.COMPLETED, (_O.SEND_RESPONSE,)),
    (_SN, _S.TRYING, _E.SEND_FAILURE): (_S.COMPLETED, (_O.SEND_RESPONSE,)),
    (_SN, _S.PROCEEDING, _E.REQUEST): (_S.PROCEEDING, (_O.RESEND_RESPONSE,)),
    (_SN, _S.PROCEEDING, _E.SEND_PROVISIONAL): (_S.PROCEEDING, (_O.SEND_RESPONSE,)),
    (_SN, _S.PROCEEDING, _E.SEND_SUCCESS): (_S.COMPLETED, (_O.SEND_RESPONSE,)),
    (_SN, _S.PROCEEDING, _E.SEND_FAILURE): (_S.COMPLETED, (_O.SEND_RESPONSE,)),
    (_SN, _S.COMPLETED, _E.REQUEST): (_S.COMPLETED, (_O.RESEND_RESPONSE,)),
    (_SN, _S.COMPLETED, _E.TIMER_J): (_S.TERMINATED, ()),
}
"""Every transition: (machine, state, event) → (next state, actions). Absent pairs are ignored
(a stray message) or, for TU events, refused with :class:`TransactionError`."""

for _kind, _state in {(k, s) for k, s, _ in TRANSITIONS}:
    if _state is not State.TERMINATED:
        TRANSITIONS[(_kind, _state, Event.TRANSPORT_ERROR)] = (
            State.TERMINATED,
            (_Op.TRANSPORT_FAILURE,),
        )

STATE_TIMERS: dict[tuple[Kind, State], tuple[Timer, ...]] = {
    (_CI, _S.CALLING): (Timer.A, Timer.B),
    (_CI, _S.COMPLETED): (Timer.D,),
    (_CI, _S.ACCEPTED): (Timer.M,),
    (_CN, _S.TRYING): (Timer.E, Timer.F),
    (_CN, _S.PROCEEDING): (Timer.E, Timer.F),
    (_CN, _S.COMPLETED): (Timer.K,),
    (_SI, _S.COMPLETED): (Timer.G, Timer.H),
    (_SI, _S.CONFIRMED): (Timer.I,),
    (_SI, _S.ACCEPTED): (Timer.L, Timer.RETRY_2XX),
    (_SN, _S.COMPLETED): (Timer.J,),
}
"""The timers that run in each state (absent: none)."""


@dataclass(frozen=True, slots=True)
class TimerValues:
    """T1, T2, T4 in seconds (RFC 3261 §17.1.1.1, Table 4)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``data`` (the serialised ``message``) to the transaction's peer."""

    message: SipMessage
    data: bytes


@dataclass(frozen=True, slots=True)
class Deliver:
    """Pass ``message`` up to the transaction user."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class Timeout:
    """The transaction timed out (``timer`` B, F, H or L fired)."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """The transport reported an error; the transaction is over."""


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached Terminated; forget it."""


Action = Send | Deliver | Timeout | TransportFailure | Terminated


def _status_event(status: int, *, sending: bool) -> Event:
    if status < 200:
        return Event.SEND_PROVISIONAL if sending else Event.PROVISIONAL
    if status < 300:
        return Event.SEND_SUCCESS if sending else Event.SUCCESS
    return Event.SEND_FAILURE if sending else Event.FAILURE


class Transaction:
    """The shared interpreter of :data:`TRANSITIONS`; use one of the four subclasses."""

    kind: ClassVar[Kind]
    initial: ClassVar[State]

    def __init__(
        self,
        request: SipRequest,
        *,
        reliable: bool = False,
        timers: TimerValues | None = None,
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timer_values = timers or TimerValues()
        self.state = self.initial
        self._timers: dict[Timer, tuple[float, float]] = {}  # timer -> (deadline, interval)
        self._request_bytes = request.serialize()
        self._last_response: SipResponse | None = None
        self._last_response_bytes = b""
        self._pending_response: SipResponse | None = None
        self._ack: SipRequest | None = None
        self._ack_bytes = b""
        self._acked = False
        self._started = False

    @property
    def terminated(self) -> bool:
        """True once the transaction reached Terminated."""
        return self.state is State.TERMINATED

    @property
    def last_response(self) -> SipResponse | None:
        """The last response sent (server) or received (client)."""
        return self._last_response

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work, or ``None`` when no timer runs."""
        return min((d for d, _ in self._timers.values()), default=None)

    def tick(self, now: float) -> list[Action]:
        """Fire every timer due at ``now``, earliest first."""
        out: list[Action] = []
        while self._timers:
            timer, (deadline, interval) = min(self._timers.items(), key=lambda kv: kv[1][0])
            if deadline > now:
                break
            del self._timers[timer]
            out += self._apply(_TIMER_EVENT[timer], now, fired=(timer, interval))
        return out

    def transport_failed(self, now: float) -> list[Action]:
        """The transport could not deliver a message of this transaction."""
        return self._apply(Event.TRANSPORT_ERROR, now)

    def _apply(
        self,
        event: Event,
        now: float,
        message: SipMessage | None = None,
        fired: tuple[Timer, float] | None = None,
    ) -> list[Action]:
        entry = TRANSITIONS.get((self.kind, self.state, event))
        if entry is None:
            if event in _TU_EVENTS:
                raise TransactionError(f"{self.kind.value}: cannot send that in {self.state.value}")
            return []
        next_state, ops = entry
        out: list[Action] = []
        for op in ops:
            out += self._do(op, message)
        if next_state is self.state:
            if fired is not None and fired[0] in _RETRANSMIT:
                timer, interval = fired
                interval = self._backoff(timer, interval)
                self._timers[timer] = (now + interval, interval)
            return out
        return out + self._enter(next_state, now)

    def _enter(self, state: State, now: float) -> list[Action]:
        self.state = state
        if state is State.TERMINATED:
            self._timers.clear()
            return [Terminated()]
        wanted = STATE_TIMERS.get((self.kind, state), ())
        for timer in list(self._timers):
            if timer not in wanted:
                del self._timers[timer]
        due: list[Timer] = []
        for timer in wanted:
            if timer in self._timers:
                continue
            duration = self._duration(timer)
            if duration is None:
                continue
            if duration == 0:
                due.append(timer)
            else:
                self._timers[timer] = (now + duration, duration)
        out: list[Action] = []
        for timer in due:  # zero-length timers (reliable transports) fire at once
            out += self._apply(_TIMER_EVENT[timer], now, fired=(timer, 0.0))
        return out

    def _duration(self, timer: Timer) -> float | None:
        t = self.timer_values
        if timer in (Timer.A, Timer.E, Timer.G):
            return None if self.reliable else t.t1
        if timer is Timer.D:
            return 0.0 if self.reliable else max(32.0, 64 * t.t1)
        if timer in (Timer.I, Timer.K):
            return 0.0 if self.reliable else t.t4
        if timer is Timer.J:
            return 0.0 if self.reliable else 64 * t.t1
        if timer is Timer.RETRY_2XX:
            return t.t1
        return 64 * t.t1  # B, F, H, L, M

    def _backoff(self, timer: Timer, interval: float) -> float:
        if timer is Timer.A:
            return 2 * interval  # INVITE retransmissions double without a cap
        if timer is Timer.E and self.state is State.PROCEEDING:
            return self.timer_values.t2
        return min(2 * interval, self.timer_values.t2)

    def _do(self, op: _Op, message: SipMessage | None) -> list[Action]:
        if op is _Op.SEND_REQUEST:
            return [Send(self.request, self._request_bytes)]
        if op is _Op.DELIVER:
            assert message is not None
            if isinstance(message, SipResponse):
                self._last_response = message
            return [Deliver(message)]
        if op is _Op.SEND_ACK:
            assert isinstance(message, SipResponse)
            self._last_response = message
            if self._ack is None:
                ack = ack_for(self.request, message)
                self._ack = ack
                self._ack_bytes = ack.serialize()
            return [Send(self._ack, self._ack_bytes)]
        if op is _Op.SEND_TRYING:
            return self._send(_trying(self.request))
        if op is _Op.SEND_RESPONSE:
            assert isinstance(message, SipResponse)
            return self._send(message)
        if op is _Op.RESEND_RESPONSE:
            if self._last_response is None:
                return []
            return [Send(self._last_response, self._last_response_bytes)]
        if op is _Op.STOP_2XX:
            self._acked = True
            self._timers.pop(Timer.RETRY_2XX, None)
            return []
        if op is _Op.TIMEOUT_IF_UNACKED:
            return [] if self._acked else [Timeout(Timer.L)]
        if op is _Op.TIMEOUT:
            return [Timeout(_TIMEOUT_TIMER[(self.kind, self.state)])]
        return [TransportFailure()]

    def _send(self, response: SipResponse) -> list[Action]:
        self._last_response = response
        self._last_response_bytes = response.serialize()
        return [Send(response, self._last_response_bytes)]


_TIMEOUT_TIMER = {
    (_CI, _S.CALLING): Timer.B,
    (_CN, _S.TRYING): Timer.F,
    (_CN, _S.PROCEEDING): Timer.F,
    (_SI, _S.COMPLETED): Timer.H,
}


def _trying(request: SipRequest) -> SipResponse:
    headers = Headers()
    for name, value in request.headers:
        if canonical_name(name) in ("via", "from", "to", "call-id", "cseq", "timestamp"):
            headers.add(name, value)
    return SipResponse(100, "Trying", headers)


class ClientTransaction(Transaction):
    """A client transaction: sends a request and follows its responses."""

    def start(self, now: float) -> list[Action]:
        """Send the request and start the timers."""
        if self._started:
            raise TransactionError("already started")
        self._started = True
        out = self._apply(Event.START, now)
        return out + self._enter(self.state, now)

    def handle(self, response: SipResponse, now: float) -> list[Action]:
        """A response matched to this transaction arrived."""
        return self._apply(_status_event(response.status, sending=False), now, response)


class ClientInviteTransaction(ClientTransaction):
    """Client INVITE transaction (RFC 3261 §17.1.1, RFC 6026)."""

    kind = Kind.CLIENT_INVITE
    initial = State.CALLING


class ClientNonInviteTransaction(ClientTransaction):
    """Client non-INVITE transaction (RFC 3261 §17.1.2)."""

    kind = Kind.CLIENT_NON_INVITE
    initial = State.TRYING


class ServerTransaction(Transaction):
    """A server transaction: receives a request, sends the TU's responses."""

    def start(self, now: float) -> list[Action]:
        """Deliver the request to the TU (and, for INVITE, answer 100 Trying)."""
        if self._started:
            raise TransactionError("already started")
        self._started = True
        return self._apply(Event.START, now, self.request)

    def handle(self, request: SipRequest, now: float) -> list[Action]:
        """A request matched to this transaction arrived (a retransmission, or the ACK)."""
        event = Event.ACK if request.method == "ACK" else Event.REQUEST
        return self._apply(event, now, request)

    def respond(self, response: SipResponse, now: float) -> list[Action]:
        """The TU sends ``response``."""
        return self._apply(_status_event(response.status, sending=True), now, response)


class ServerInviteTransaction(ServerTransaction):
    """Server INVITE transaction (RFC 3261 §17.2.1, RFC 6026)."""

    kind = Kind.SERVER_INVITE
    initial = State.PROCEEDING


class ServerNonInviteTransaction(ServerTransaction):
    """Server non-INVITE transaction (RFC 3261 §17.2.2)."""

    kind = Kind.SERVER_NON_INVITE
    initial = State.TRYING


def ack_for(request: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client INVITE transaction sends for a 3xx-6xx response (RFC 3261 §17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and top Via as the INVITE, To from the
    response (with its tag), the INVITE's Route headers.
    """
    headers = Headers()
    headers.add("Via", str(request.top_via))
    for name, value in request.headers:
        canon = canonical_name(name)
        if canon in ("from", "call-id", "route"):
            headers.add(name, value)
    headers.add("To", response.headers.get("to") or "")
    headers.add("CSeq", f"{request.cseq.seq} ACK")
    headers.add("Max-Forwards", "70")
    return SipRequest("ACK", request.uri, headers)


def cancel_for(request: SipRequest) -> SipRequest:
    """The CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, To, From,
    CSeq number and top Via (so the same branch), the INVITE's Route headers."""
    headers = Headers()
    headers.add("Via", str(request.top_via))
    for name, value in request.headers:
        if canonical_name(name) in ("from", "to", "call-id", "route"):
            headers.add(name, value)
    headers.add("CSeq", f"{request.cseq.seq} CANCEL")
    headers.add("Max-Forwards", "70")
    return SipRequest("CANCEL", request.uri, headers)


ClientKey = tuple[str, str]
ServerKey = tuple[str, ...]


def client_key(message: SipMessage) -> ClientKey:
    """Top-Via branch and CSeq method: how a response finds its client transaction (§17.1.3)."""
    return (message.top_via.branch or "", message.cseq.method)


def server_key(request: SipRequest, *, method: str | None = None) -> ServerKey:
    """How a request finds its server transaction (§17.2.3).

    With an RFC 3261 branch: branch, sent-by and method (ACK counts as INVITE). Without one
    (RFC 2543 peers, and RFC 4475 §3.2.1's bare ``z9hG4bK``): Request-URI, From tag, Call-ID,
    CSeq number, top Via and method. ``method`` overrides the method (CANCEL → its INVITE).
    """
    via = request.top_via
    name = method or ("INVITE" if request.method == "ACK" else request.method)
    if via.rfc3261_branch:
        port = "" if via.port is None else str(via.port)
        return ("3261", via.branch or "", via.host.lower(), port, name)
    return (
        "2543",
        str(request.uri),
        request.from_tag or "",
        request.call_id,
        str(request.cseq.seq),
        str(via),
        name,
    )


def _dialog_key(message: SipMessage) -> tuple[str, str, int]:
    return (message.call_id, message.from_tag or "", message.cseq.seq)


class Transactions:
    """The live transactions of one SIP endpoint: matching, dispatch and one timer heap.

    ``receive`` returns ``(None, [])`` for a message no transaction claims: a new request (the
    caller makes a server transaction and calls :meth:`start`), the ACK for a 2xx, or a stray
    response (a 2xx retransmission after the client transaction ended goes to the dialog).
    Responses with more than one Via are dropped (RFC 3261 §18.1.2).
    """

    def __init__(self) -> None:
        self._clients: dict[ClientKey, ClientTransaction] = {}
        self._servers: dict[ServerKey, ServerTransaction] = {}
        self._invites: dict[tuple[str, str, int], ServerInviteTransaction] = {}
        self._heap: list[tuple[float, int, Transaction]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def start(self, tx: Transaction, now: float) -> list[Action]:
        """Register ``tx`` and start it (send its request, or deliver it to the TU)."""
        if isinstance(tx, ClientTransaction):
            self._clients[client_key(tx.request)] = tx
            out = tx.start(now)
        elif isinstance(tx, ServerTransaction):
            self._servers[server_key(tx.request)] = tx
            if isinstance(tx, ServerInviteTransaction):
                self._invites[_dialog_key(tx.request)] = tx
            out = tx.start(now)
        else:
            raise TypeError("not a transaction")
        return self._after(tx, out)

    def receive(self, message: SipMessage, now: float) -> tuple[Transaction | None, list[Action]]:
        """Dispatch a received message to the transaction it belongs to, if any."""
        if isinstance(message, SipResponse):
            if len(message.headers.values("via")) != 1:
                # RFC 3261 §18.1.2: a response carrying other hops' Vias is not for a UA
                # (RFC 4475 §3.3.10); it is dropped.
                return None, []
            client = self._clients.get(client_key(message))
            if client is None:
                return None, []
            return client, self._after(client, client.handle(message, now))
        server = self._servers.get(server_key(message))
        if server is None:
            return None, []
        if message.method == "ACK" and not isinstance(server, ServerInviteTransaction):
            return None, []
        return server, self._after(server, server.handle(message, now))

    def respond(self, tx: ServerTransaction, response: SipResponse, now: float) -> list[Action]:
        """Send the TU's ``response`` through ``tx``."""
        return self._after(tx, tx.respond(response, now))

    def match_cancel(self, cancel: SipRequest) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2), if still known."""
        tx = self._servers.get(server_key(cancel, method="INVITE"))
        return tx if isinstance(tx, ServerInviteTransaction) else None

    def match_ack(self, ack: SipRequest) -> ServerInviteTransaction | None:
        """The INVITE server transaction whose 2xx this ACK acknowledges, if any."""
        tx = self._invites.get(_dialog_key(ack))
        return tx if tx is not None and tx.state is State.ACCEPTED else None

    def ack_received(
        self, tx: ServerInviteTransaction, ack: SipRequest, now: float
    ) -> list[Action]:
        """Hand a 2xx's ACK (found by :meth:`match_ack`) to its transaction."""
        return self._after(tx, tx.handle(ack, now))

    def transport_failed(self, tx: Transaction, now: float) -> list[Action]:
        """Report a transport error for ``tx``."""
        return self._after(tx, tx.transport_failed(now))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work."""
        heap = self._heap
        while heap:
            deadline, _, tx = heap[0]
            if tx.next_deadline() == deadline and self._registered(tx):
                return deadline
            heapq.heappop(heap)
        return None

    def tick(self, now: float) -> list[tuple[Transaction, Action]]:
        """Fire every timer due at ``now``; each action comes with its transaction."""
        out: list[tuple[Transaction, Action]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, tx = heapq.heappop(heap)
            if tx.next_deadline() != deadline or not self._registered(tx):
                continue  # superseded by a later schedule of the same transaction
            out += [(tx, action) for action in self._after(tx, tx.tick(now))]
        return out

    def _registered(self, tx: Transaction) -> bool:
        if isinstance(tx, ClientTransaction):
            return self._clients.get(client_key(tx.request)) is tx
        return self._servers.get(server_key(tx.request)) is tx

    def _after(self, tx: Transaction, actions: list[Action]) -> list[Action]:
        if tx.terminated:
            self._forget(tx)
        else:
            deadline = tx.next_deadline()
            if deadline is not None:
                self._seq += 1
                heapq.heappush(self._heap, (deadline, self._seq, tx))
        return actions

    def _forget(self, tx: Transaction) -> None:
        if isinstance(tx, ClientTransaction):
            ckey = client_key(tx.request)
            if self._clients.get(ckey) is tx:
                del self._clients[ckey]
            return
        skey = server_key(tx.request)
        if self._servers.get(skey) is tx:
            del self._servers[skey]
        dkey = _dialog_key(tx.request)
        if self._invites.get(dkey) is tx:
            del self._invites[dkey]
