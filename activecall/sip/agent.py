"""The SIP user agent of a node, without I/O: calls in and out, their dialogs and transactions.

:class:`SipAgent` is the transaction user (RFC 3261 §8, §12-§15) between the transports and
the calls' owners. Inputs are bytes with their source (:meth:`SipAgent.receive`), the clock
(:meth:`SipAgent.tick`) and the call owners' decisions (``invite``, ``ringing``, ``accept``,
``reject``, ``reanswer``, ``hangup``, ``message``); outputs are lists of :class:`Transmit`
(bytes to send), :class:`IncomingCall` (an INVITE for the handler), :class:`CallSignal`
(something for the call's session: the ``sip`` control record's fields), :class:`CallGone`
(the agent forgot the call) and :class:`RegistrationState`. Every time value is passed in
(seconds, any monotonic clock).

A call is known by its session id: the dialog id ``<Call-ID>-<from tag>-<our tag>`` for an
inbound call, the session id (which becomes the Call-ID when it is a valid one) for an
outbound call. Call states, in one place (:data:`CALL_TRANSITIONS`):

=========  ====================================================  ==========================
state      event                                                 → state, what is sent
=========  ====================================================  ==========================
INCOMING   ``ringing``                                           INCOMING, 180 / 183 + SDP
INCOMING   ``accept``                                            ANSWERED, 200 + SDP
INCOMING   ``reject`` / ``hangup`` / accept timeout / CANCEL     ENDED, 4xx-6xx (487 CANCEL)
CALLING    1xx received                                          CALLING, ``ringing`` signal
CALLING    401/407 (first time, with credentials)                CALLING, authorised INVITE
CALLING    2xx received                                          ANSWERED, ACK (+ BYE if hung
                                                                 up meanwhile)
CALLING    3xx-6xx received / timeout                            ENDED, ``reject`` signal
CALLING    ``hangup``                                            CALLING, CANCEL once a 1xx
                                                                 came; ENDED at the final
ANSWERED   BYE received                                          ENDED, 200, ``bye`` signal
ANSWERED   ``hangup`` / no ACK for our 2xx                       ENDED, BYE
=========  ====================================================  ==========================

Registrations (``register_users``): :meth:`SipAgent.register` keeps an AOR bound at a
registrar: REGISTER, answered 401/407 with the credentials, refreshed at 75 % of the Expires
granted, retried every :data:`REGISTER_RETRY_S` after a failure; :meth:`SipAgent.unregister`
removes the binding (Expires: 0). Each outcome is a :class:`RegistrationState`.

In a confirmed dialog a re-INVITE or UPDATE with SDP becomes a ``reinvite`` signal that the
session answers with :meth:`SipAgent.reanswer`; INFO, MESSAGE and REFER (answered 202) become
``info``, ``message`` and ``refer`` signals. Out of dialog, OPTIONS gets 200 (503 while
draining), REFER 400, a request for an unknown dialog 481; a new INVITE gets 503 while
draining. A datagram that does not parse is answered by :meth:`SipParseError.response` (400,
413, 505) when it is a readable request, and dropped otherwise.
"""

from __future__ import annotations

import heapq
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeAlias

from activecall.sip._grammar import GrammarError, is_token
from activecall.sip.auth import AuthError, authorize
from activecall.sip.dialog import Dialog, DialogId, request_dialog_id, response_dialog_id
from activecall.sip.headers import Via, new_tag
from activecall.sip.message import (
    Headers,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    canonical_name,
    parse,
    response_to,
)
from activecall.sip.stats import SipStats
from activecall.sip.transaction import (
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
    Deliver,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
    Terminated,
    Timeout,
    TimerValues,
    Transaction,
    TransactionError,
    Transactions,
    TransportFailure,
    cancel_for,
)
from activecall.sip.uri import Address, SipUri, parse_address, parse_uri

__all__ = [
    "ALLOW",
    "CALL_TRANSITIONS",
    "REGISTER_RETRY_S",
    "REGISTRATION_STATES",
    "CallGone",
    "CallSignal",
    "CallState",
    "IncomingCall",
    "Output",
    "Peer",
    "RegistrationState",
    "SipAgent",
    "Transmit",
    "standard_header",
]

Peer: TypeAlias = tuple[str, str, int]
"""Transport (``UDP``/``TCP``/``TLS``), host, port: where a message came from or goes to."""

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, MESSAGE, REFER, UPDATE, NOTIFY"
"""The methods this agent understands (``Allow``)."""

_STANDARD_HEADERS = frozenset(
    (
        "accept", "accept-encoding", "accept-language", "alert-info", "allow", "allow-events",
        "authentication-info", "authorization", "call-id", "call-info", "contact",
        "content-disposition", "content-encoding", "content-language", "content-length",
        "content-type", "cseq", "date", "error-info", "expires", "from", "in-reply-to",
        "max-forwards", "min-expires", "min-se", "mime-version", "organization", "priority",
        "proxy-authenticate", "proxy-authorization", "proxy-require", "record-route",
        "reply-to", "require", "retry-after", "route", "server", "session-expires", "subject",
        "supported", "timestamp", "to", "unsupported", "user-agent", "via", "warning",
        "www-authenticate",
    )
)  # fmt: skip
_CALL_ID_CHARS = re.compile(
    r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?"
)
_MAX_SESSION_ID = 256
REGISTER_RETRY_S = 60.0
"""How long after a failed REGISTER the next one is sent."""
REGISTRATION_STATES = ("pending", "registered", "failed", "unregistering")
"""Where a registration is: first REGISTER not answered yet, bound, last attempt refused or
unanswered (retrying), un-REGISTER sent."""
_NO_ANSWER_S = 32.0  # how long a BYE or CANCEL we sent may stay unanswered before we forget


def standard_header(name: str) -> bool:
    """Whether ``name`` is an RFC 3261 header (the ``incoming`` event lists the others)."""
    return canonical_name(name) in _STANDARD_HEADERS


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``data`` to ``peer``."""

    data: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new INVITE for the handler: answer it with ``ringing``/``accept``/``reject``.

    ``headers`` are the INVITE's header lines as received (``Name: value``); ``extra`` the
    non-standard ones by name (the ``incoming`` event's ``headers``).
    """

    session_id: str
    caller: str
    callee: str
    offer: str
    headers: tuple[str, ...]
    extra: Mapping[str, str]
    source: Peer


@dataclass(frozen=True, slots=True)
class CallSignal:
    """For the session of ``session_id``: the fields of a ``sip`` control record."""

    session_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CallGone:
    """The agent forgot the call: its SIP side is over."""

    session_id: str


@dataclass(frozen=True, slots=True)
class RegistrationState:
    """A REGISTER's outcome: ``registered`` for ``expires`` seconds, or not (``code``)."""

    key: str
    registered: bool
    code: int
    expires: int = 0


Output: TypeAlias = Transmit | IncomingCall | CallSignal | CallGone | RegistrationState


class CallState(Enum):
    """Where a call is (the table in the module docstring)."""

    INCOMING = "incoming"
    CALLING = "calling"
    ANSWERED = "answered"
    ENDED = "ended"


CALL_TRANSITIONS: dict[tuple[CallState, str], CallState] = {
    (CallState.INCOMING, "ringing"): CallState.INCOMING,
    (CallState.INCOMING, "accept"): CallState.ANSWERED,
    (CallState.INCOMING, "reject"): CallState.ENDED,
    (CallState.INCOMING, "hangup"): CallState.ENDED,
    (CallState.INCOMING, "timeout"): CallState.ENDED,
    (CallState.INCOMING, "cancel"): CallState.ENDED,
    (CallState.CALLING, "1xx"): CallState.CALLING,
    (CallState.CALLING, "challenge"): CallState.CALLING,
    (CallState.CALLING, "2xx"): CallState.ANSWERED,
    (CallState.CALLING, "failure"): CallState.ENDED,
    (CallState.CALLING, "hangup"): CallState.CALLING,
    (CallState.ANSWERED, "bye"): CallState.ENDED,
    (CallState.ANSWERED, "hangup"): CallState.ENDED,
    (CallState.ANSWERED, "timeout"): CallState.ENDED,
}
"""Every call transition: (state, event) → next state. Other events are refused."""


@dataclass(slots=True)
class _Call:
    session_id: str
    inbound: bool
    peer: Peer
    invite: SipRequest
    state: CallState
    local_tag: str
    invite_tx: Transaction | None = None
    dialog: Dialog | None = None
    local_sdp: str = ""
    credentials: tuple[str, str] | None = None
    challenged: bool = False
    provisional: bool = False  # a 1xx arrived: a CANCEL may be sent
    hung_up: bool = False  # the session is gone: no more signals, end the leg
    ack: bytes = b""  # the ACK for the 2xx, resent on a 2xx retransmission
    update_tx: ServerTransaction | None = None  # a re-INVITE/UPDATE the session answers
    deadline: float | None = None  # accept timeout (inbound), or when to give up waiting
    answered: bool = False  # reached ANSWERED once (for the call counters)
    contact: str | None = None  # our Contact when a trunk rule rewrote it


@dataclass(slots=True)
class _TxInfo:
    peer: Peer
    session_id: str | None
    purpose: str = ""  # "invite", "bye", "cancel", "message", or the server request's method


@dataclass(slots=True)
class _Registration:
    key: str
    registrar: Peer
    aor: Address
    credentials: tuple[str, str] | None
    expires: int
    call_id: str
    tag: str
    cseq: int = 0
    challenged: bool = False
    active: bool = True  # False once un-registering
    deadline: float | None = None  # refresh or retry
    in_flight: bool = False
    status: str = "pending"  # REGISTRATION_STATES: for the registration gauges


@dataclass(slots=True)
class _Timers:
    heap: list[tuple[float, int, str, str]] = field(default_factory=list)
    seq: int = 0

    def add(self, deadline: float, key: str, kind: str = "call") -> None:
        self.seq += 1
        heapq.heappush(self.heap, (deadline, self.seq, kind, key))


class SipAgent:
    """The node's SIP user agent; see the module docstring.

    ``contact_host(peer_host)`` gives the address to put in Via and Contact for a peer (the
    public or interface address); ``port`` is the SIP port. ``accept_timeout`` is how long an
    inbound INVITE waits for ``accept``/``reject`` before 408.
    """

    def __init__(
        self,
        *,
        contact_host: Callable[[str], str],
        port: int,
        user_agent: str = "activecall",
        accept_timeout: float = 60.0,
        timers: TimerValues | None = None,
    ) -> None:
        self.contact_host = contact_host
        self.port = port
        self.tls_port: int | None = None
        """The SIP-over-TLS port, when there is a TLS listener (Via and Contact over TLS)."""
        self.user_agent = user_agent
        self.accept_timeout = accept_timeout
        self.timer_values = timers or TimerValues()
        self.draining = False
        self.transactions = Transactions()
        self._calls: dict[str, _Call] = {}
        self._dialogs: dict[DialogId, _Call] = {}
        self._tx: dict[Transaction, _TxInfo] = {}
        self._registrations: dict[str, _Registration] = {}
        self._timers = _Timers()
        self.stats = SipStats()
        """Counters for ``/metrics`` (see :mod:`activecall.sip.stats`)."""

    # --- queries ---------------------------------------------------------------------------

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def state(self, session_id: str) -> CallState | None:
        """The state of a call, or ``None`` when the agent does not know it."""
        call = self._calls.get(session_id)
        return call.state if call is not None else None

    @property
    def session_ids(self) -> list[str]:
        """The calls the agent knows."""
        return list(self._calls)

    def call_counts(self) -> dict[str, int]:
        """Calls the agent knows, by state (``incoming``, ``calling``, ``answered``)."""
        counts = dict.fromkeys((s.value for s in CallState if s is not CallState.ENDED), 0)
        for call in self._calls.values():
            counts[call.state.value] = counts.get(call.state.value, 0) + 1
        return counts

    @property
    def dialog_count(self) -> int:
        """Confirmed dialogs (calls answered and not yet over)."""
        return len(self._dialogs)

    def registration_counts(self) -> dict[str, int]:
        """``register_users`` bindings by :data:`REGISTRATION_STATES`."""
        counts = dict.fromkeys(REGISTRATION_STATES, 0)
        for reg in self._registrations.values():
            counts[reg.status] += 1
        return counts

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work."""
        heap = self._timers.heap
        while heap and not self._timer_live(heap[0]):
            heapq.heappop(heap)
        found = [self.transactions.next_deadline(), heap[0][0] if heap else None]
        return min((d for d in found if d is not None), default=None)

    def _timer_live(self, entry: tuple[float, int, str, str]) -> bool:
        deadline, _, kind, key = entry
        owner = (self._registrations if kind == "reg" else self._calls).get(key)
        return owner is not None and owner.deadline == deadline

    # --- input from transports -------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Output]:
        """One datagram (or one framed stream message) from ``peer``."""
        try:
            message = parse(data)
        except SipParseError as exc:
            return self.malformed(exc, peer)
        return self.receive_message(message, peer, now)

    def malformed(self, error: SipParseError, peer: Peer) -> list[Output]:
        """Answer a message that did not parse, when it is a request that can be answered."""
        self.stats.messages_received += 1
        response = error.response()
        try:
            data = response.serialize() if response is not None else b""
        except GrammarError:
            data = b""
        if not data:
            self.stats.malformed_dropped += 1
            return []
        self.stats.malformed_answered += 1
        self.stats.sent(data)
        # To the source, not the Via: a message this broken may lie about where it came from.
        return [Transmit(data, peer)]

    def receive_message(self, message: SipMessage, peer: Peer, now: float) -> list[Output]:
        """A parsed message from ``peer``."""
        self.stats.messages_received += 1
        self.stats.received(message)
        try:
            if isinstance(message, SipResponse):
                return self._receive_response(message, now)
            return self._receive_request(message, peer, now)
        except (GrammarError, ValueError) as exc:
            # Parsed but unusable (a URI we cannot answer to, ...): refuse a request, drop
            # anything else; never let one message break the agent.
            if isinstance(message, SipRequest) and message.method != "ACK":
                return self._stateless(message, peer, 400, f"Bad Request ({exc})"[:100])
            return []

    def transport_failed(self, peer: Peer, now: float) -> list[Output]:
        """No connection to ``peer`` could be made (refused, TLS handshake or certificate
        failed): the client transactions sending there fail (an INVITE is rejected 503)."""
        failed = [
            tx
            for tx, info in self._tx.items()
            if info.peer == peer and isinstance(tx, ClientTransaction)
        ]
        out: list[Output] = []
        for tx in failed:
            out += self._actions(tx, self.transactions.transport_failed(tx, now), now)
        return out

    def tick(self, now: float) -> list[Output]:
        """Fire the transaction timers and call deadlines due at ``now``."""
        out: list[Output] = []
        for tx, action in self.transactions.tick(now):
            # What a timer sends is always a retransmission (timers A, E, G, the 2xx timer).
            out += self._actions(tx, [action], now, retransmission=True)
        heap = self._timers.heap
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if not self._timer_live(entry):
                continue
            if entry[2] == "reg":
                out += self._send_register(self._registrations[entry[3]], now)
            else:
                out += self._deadline(self._calls[entry[3]], now)
        return out

    # --- decisions of the calls' owners ----------------------------------------------------

    def invite(
        self,
        session_id: str,
        *,
        target: Peer,
        callee: str,
        caller: str | None,
        sdp: str,
        now: float,
        credentials: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        contact: Callable[[SipUri], SipUri] | None = None,
    ) -> list[Output]:
        """Place an outbound call to ``callee`` (a SIP URI) through ``target``; ``contact``
        rewrites our Contact URI for the whole dialog (a trunk rule's ``rewrite.contact``).

        Raises ``ValueError`` for a bad URI or header, or a session id already in use.
        """
        if session_id in self._calls:
            raise ValueError(f"call {session_id!r} exists")
        uri = parse_uri(callee)
        if not isinstance(uri, SipUri):
            raise ValueError(f"callee must be a sip: or sips: URI, not {callee!r}")
        host = self.contact_host(target[1])
        from_text = caller or f"sip:activecall@{host}"
        local = parse_address(from_text)
        if local.tag is not None:
            raise ValueError("caller must not carry a tag")
        tag = new_tag()
        call_id = session_id if _valid_call_id(session_id) else f"{uuid.uuid4()}@activecall"
        request_headers = Headers()
        request_headers.add("Via", str(self._via(target)))
        request_headers.add("Max-Forwards", "70")
        request_headers.add("From", str(local.with_tag(tag)))
        request_headers.add("To", str(Address(uri)))
        request_headers.add("Call-ID", call_id)
        request_headers.add("CSeq", "1 INVITE")
        our_contact = self._contact_uri(target, local, secure=uri.secure)
        rewritten = contact(our_contact) if contact is not None else None
        contact_text = f"<{rewritten or our_contact}>"
        request_headers.add("Contact", contact_text)
        request_headers.add("Allow", ALLOW)
        request_headers.add("User-Agent", self.user_agent)
        for name, value in (headers or {}).items():
            request_headers.add(name, value)
        request_headers.add("Content-Type", "application/sdp")
        request = SipRequest("INVITE", uri, request_headers, sdp.encode())
        request.serialize()  # refuses a header that cannot be sent before anything changes
        call = _Call(
            session_id,
            inbound=False,
            peer=target,
            invite=request,
            state=CallState.CALLING,
            local_tag=tag,
            local_sdp=sdp,
            credentials=credentials,
            contact=contact_text if rewritten is not None else None,
        )
        self._calls[session_id] = call
        self.stats.call_started(inbound=False)
        return self._start_client(call, request, "invite", now)

    def ringing(self, session_id: str, sdp: str | None, now: float) -> list[Output]:
        """180 Ringing, or 183 Session Progress carrying ``sdp`` (early media)."""
        call = self._pending_inbound(session_id)
        if call is None:
            return []
        if sdp:
            call.local_sdp = sdp
            response = self._answer(call, 183, body=sdp)
        else:
            response = self._answer(call, 180)
        return self._respond(call.invite_tx, response, now)

    def accept(self, session_id: str, sdp: str, now: float) -> list[Output]:
        """200 OK with our SDP answer: the dialog is confirmed (the ACK is awaited)."""
        call = self._pending_inbound(session_id)
        if call is None:
            return []
        call.local_sdp = sdp
        response = self._answer(call, 200, body=sdp)
        call.dialog = Dialog.from_uas(call.invite, response)
        self._dialogs[call.dialog.id] = call
        self._move(call, "accept")
        call.deadline = None
        return self._respond(call.invite_tx, response, now)

    def reject(self, session_id: str, code: int, reason: str | None, now: float) -> list[Output]:
        """Refuse a pending inbound INVITE with ``code`` (3xx-6xx)."""
        call = self._pending_inbound(session_id)
        if call is None:
            return []
        if not 300 <= code <= 699:
            code = 603
        response = self._answer(call, code, reason=reason)
        self._move(call, "reject")
        return self._respond(call.invite_tx, response, now) + self._forget(call)

    def reanswer(self, session_id: str, sdp: str, now: float, code: int = 200) -> list[Output]:
        """Answer the re-INVITE or UPDATE the session got as ``reinvite``: 200 with ``sdp``,
        or ``code`` (488: the new offer is not acceptable; the old media stays)."""
        call = self._calls.get(session_id)
        if call is None or call.update_tx is None or call.dialog is None:
            return []
        tx, call.update_tx = call.update_tx, None
        if code != 200:
            return self._reply(tx, code if 400 <= code <= 699 else 488, now)
        call.local_sdp = sdp
        response = response_to(
            tx.request,
            200,
            headers=[
                ("Contact", call.contact or self._contact(call.peer, secure=_secure(call))),
                ("Content-Type", "application/sdp"),
            ],
            body=sdp.encode(),
        )
        return self._respond(tx, response, now)

    def hangup(
        self, session_id: str, now: float, headers: Mapping[str, str] | None = None
    ) -> list[Output]:
        """End the call's SIP leg: BYE when confirmed, CANCEL when our INVITE is pending,
        480 when an inbound INVITE is pending. The session hears nothing more of it."""
        call = self._calls.get(session_id)
        if call is None or call.hung_up:
            return []
        call.hung_up = True
        if call.state is CallState.INCOMING:
            self._move(call, "hangup")
            response = self._answer(call, 480)
            return self._respond(call.invite_tx, response, now) + self._forget(call)
        if call.state is CallState.CALLING:
            self._move(call, "hangup")
            return self._cancel(call, now) if call.provisional else []
        if call.state is CallState.ANSWERED:
            self._move(call, "hangup")
            return self._bye(call, now, headers)
        return []

    def message(
        self,
        session_id: str,
        body: str,
        now: float,
        *,
        content_type: str = "text/plain;charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> list[Output]:
        """An in-dialog MESSAGE; ``ValueError`` when the call has no confirmed dialog."""
        call = self._calls.get(session_id)
        if call is None or call.dialog is None or call.state is not CallState.ANSWERED:
            raise ValueError("the call has no established SIP dialog")
        extra = [("User-Agent", self.user_agent), *(headers or {}).items()]
        request = call.dialog.create_request(
            "MESSAGE",
            via=self._via(call.peer),
            body=body.encode(),
            content_type=content_type,
            headers=extra,
        )
        request.serialize()
        return self._start_client(call, request, "message", now)

    def drain(self) -> None:
        """Refuse new calls (503) and answer OPTIONS with 503 from now on."""
        self.draining = True

    # --- registrations (``register_users``) ------------------------------------------------

    def register(
        self,
        key: str,
        *,
        registrar: Peer,
        aor: str,
        now: float,
        credentials: tuple[str, str] | None = None,
        expires: int = 3600,
        display_name: str | None = None,
    ) -> list[Output]:
        """REGISTER ``aor`` (``sip:user@server``) with ``registrar``, and keep it registered:
        refreshed at 75 % of the granted Expires, retried every 60 s after a failure.
        ``ValueError`` for a bad AOR."""
        uri = parse_uri(aor)
        if not isinstance(uri, SipUri) or uri.user is None:
            raise ValueError(f"an AOR must be a sip: URI with a user, not {aor!r}")
        if key in self._registrations:
            raise ValueError(f"registration {key!r} exists")
        reg = _Registration(
            key,
            registrar,
            Address(uri, display_name),
            credentials,
            expires,
            f"{uuid.uuid4()}@activecall",
            new_tag(),
        )
        self._registrations[key] = reg
        return self._send_register(reg, now)

    def unregister(self, key: str, now: float) -> list[Output]:
        """Remove the binding (REGISTER with Expires: 0); forget the registration after."""
        reg = self._registrations.get(key)
        if reg is None or not reg.active:
            return []
        reg.active = False
        reg.challenged = False
        reg.status = "unregistering"
        return self._send_register(reg, now)

    @property
    def unregistering(self) -> bool:
        """Whether an un-REGISTER is still waiting for its answer."""
        return any(not reg.active for reg in self._registrations.values())

    def registered(self, key: str) -> bool:
        """Whether ``key`` is known (registered, being refreshed or retried)."""
        return key in self._registrations

    def _send_register(self, reg: _Registration, now: float) -> list[Output]:
        reg.deadline = None
        reg.cseq += 1
        uri = reg.aor.uri
        assert isinstance(uri, SipUri)
        registrar = SipUri(uri.host, None, uri.port, scheme=uri.scheme)
        expires = reg.expires if reg.active else 0
        headers = Headers()
        headers.add("Via", str(self._via(reg.registrar)))
        headers.add("Max-Forwards", "70")
        headers.add("From", str(reg.aor.with_tag(reg.tag)))
        headers.add("To", str(reg.aor))
        headers.add("Call-ID", reg.call_id)
        headers.add("CSeq", f"{reg.cseq} REGISTER")
        headers.add("Contact", self._contact(reg.registrar, reg.aor))
        headers.add("Expires", str(expires))
        headers.add("Allow", ALLOW)
        headers.add("User-Agent", self.user_agent)
        return self._start_register(reg, SipRequest("REGISTER", registrar, headers), now)

    def _start_register(self, reg: _Registration, request: SipRequest, now: float) -> list[Output]:
        tx = ClientNonInviteTransaction(
            request, reliable=reg.registrar[0] != "UDP", timers=self.timer_values
        )
        reg.in_flight = True
        self._tx[tx] = _TxInfo(reg.registrar, reg.key, "register")
        return self._actions(tx, self.transactions.start(tx, now), now)

    def _register_response(
        self, reg: _Registration, tx: ClientTransaction, response: SipResponse, now: float
    ) -> list[Output]:
        status = response.status
        if status < 200:
            return []
        reg.in_flight = False
        if status in (401, 407) and not reg.challenged and reg.credentials is not None:
            reg.challenged = True
            username, password = reg.credentials
            try:
                retry = authorize(tx.request, response, username=username, password=password)
            except AuthError:
                pass
            else:
                reg.cseq = retry.cseq.seq
                return self._start_register(reg, retry, now)
        reg.challenged = False
        if not reg.active:  # the un-REGISTER was answered (or refused): done either way
            del self._registrations[reg.key]
            return [RegistrationState(reg.key, False, status)]
        if status >= 300:
            return self._retry_register(reg, status, now)
        granted = _granted_expires(response, reg.expires)
        reg.status = "registered"
        reg.deadline = now + 0.75 * granted
        self._timers.add(reg.deadline, reg.key, "reg")
        return [RegistrationState(reg.key, True, status, granted)]

    def _retry_register(self, reg: _Registration, status: int, now: float) -> list[Output]:
        reg.in_flight = False
        if not reg.active:
            del self._registrations[reg.key]
            return [RegistrationState(reg.key, False, status)]
        reg.status = "failed"
        reg.deadline = now + REGISTER_RETRY_S
        self._timers.add(reg.deadline, reg.key, "reg")
        return [RegistrationState(reg.key, False, status)]

    # --- requests --------------------------------------------------------------------------

    def _receive_request(self, request: SipRequest, peer: Peer, now: float) -> list[Output]:
        if peer[0] == "UDP":
            request.stamp_source(peer[1], peer[2])
        tx, actions = self.transactions.receive(request, now)
        if tx is not None:  # a retransmission, or a non-2xx's ACK
            again = request.method != "ACK"
            if again:
                self.stats.retransmissions_received += 1
            return self._actions(tx, actions, now, retransmission=again)
        if request.method == "ACK":
            return self._ack(request, now)
        if request.method == "CANCEL":
            return self._cancel_received(request, peer, now)
        server: ServerTransaction
        if request.method == "INVITE":
            server = ServerInviteTransaction(
                request, reliable=peer[0] != "UDP", timers=self.timer_values
            )
        else:
            server = ServerNonInviteTransaction(
                request, reliable=peer[0] != "UDP", timers=self.timer_values
            )
        self._tx[server] = _TxInfo(self._response_peer(request, peer), None, request.method)
        return self._actions(server, self.transactions.start(server, now), now)

    def _on_request(self, tx: ServerTransaction, request: SipRequest, now: float) -> list[Output]:
        """A new request, delivered by its server transaction."""
        if request.to_tag is None:
            return self._out_of_dialog(tx, request, now)
        call = self._dialogs.get(request_dialog_id(request))
        if call is None or call.dialog is None:
            return self._reply(tx, 481, now)
        status = call.dialog.receive_request(request)
        if status is not None:
            return self._reply(tx, status, now)
        info = self._tx.get(tx)
        if info is not None:
            info.session_id = call.session_id
        method = request.method
        if method == "BYE":
            out = self._reply(tx, 200, now)
            if call.state is CallState.ANSWERED:
                self._move(call, "bye")
                out += self._signal(call, event="bye")
            return out + self._forget(call)
        if method in ("INVITE", "UPDATE"):
            return self._update(call, tx, request, now)
        if method == "INFO":
            out = self._reply(tx, 200, now)
            return out + self._signal(
                call, event="info", body=_text(request.body), contentType=_ctype(request)
            )
        if method == "MESSAGE":
            out = self._reply(tx, 200, now)
            return out + self._signal(
                call, event="message", body=_text(request.body), contentType=_ctype(request)
            )
        if method == "REFER":
            refer_to = request.headers.get("refer-to")
            if refer_to is None:
                return self._reply(tx, 400, now, reason="Missing Refer-To")
            out = self._reply(tx, 202, now)
            fields: dict[str, Any] = {"event": "refer", "referTo": _uri_text(refer_to)}
            referred_by = request.headers.get("referred-by")
            if referred_by is not None:
                fields["referredBy"] = _uri_text(referred_by)
            return out + self._signal(call, **fields)
        if method in ("OPTIONS", "NOTIFY"):
            return self._reply(tx, 200, now)
        return self._reply(tx, 501, now, headers=[("Allow", ALLOW)])

    def _out_of_dialog(
        self, tx: ServerTransaction, request: SipRequest, now: float
    ) -> list[Output]:
        method = request.method
        if method == "INVITE":
            return self._incoming(tx, request, now)
        if method == "OPTIONS":
            status = 503 if self.draining else 200
            headers = [("Allow", ALLOW), ("Accept", "application/sdp")]
            return self._reply(tx, status, now, headers=headers)
        if method == "REFER":
            return self._reply(tx, 400, now, reason="REFER outside a dialog")
        if method in ("BYE", "INFO", "UPDATE", "PRACK"):
            return self._reply(tx, 481, now)
        if method in ("REGISTER", "SUBSCRIBE", "PUBLISH"):
            return self._reply(tx, 405, now, headers=[("Allow", ALLOW)])
        return self._reply(tx, 200, now)

    def _incoming(self, tx: ServerTransaction, request: SipRequest, now: float) -> list[Output]:
        assert isinstance(tx, ServerInviteTransaction)
        if self.draining:
            return self._reply(tx, 503, now, reason="Server shutting down")
        if not request.contacts:
            return self._reply(tx, 400, now, reason="Missing Contact")
        if request.content_type != "application/sdp" or not request.body:
            if request.body:
                return self._reply(tx, 415, now, headers=[("Accept", "application/sdp")])
            return self._reply(tx, 488, now, reason="An SDP offer is required")
        tag = new_tag()
        session_id = f"{request.call_id}-{request.from_tag or ''}-{tag}"
        if len(session_id) > _MAX_SESSION_ID or not session_id.isprintable():
            session_id = f"d.{uuid.uuid4()}"
        info = self._tx[tx]
        info.session_id = session_id
        call = _Call(
            session_id,
            inbound=True,
            peer=info.peer,
            invite=request,
            state=CallState.INCOMING,
            local_tag=tag,
            invite_tx=tx,
            deadline=now + self.accept_timeout,
        )
        self._calls[session_id] = call
        self.stats.call_started(inbound=True)
        self._timers.add(now + self.accept_timeout, session_id)
        extra = {name: value for name, value in request.headers if not standard_header(name)}
        return [
            IncomingCall(
                session_id=session_id,
                caller=str(request.from_addr.uri),
                callee=str(request.to_addr.uri),
                offer=_text(request.body),
                headers=tuple(f"{name}: {value}" for name, value in request.headers),
                extra=extra,
                source=info.peer,
            )
        ]

    def _update(
        self, call: _Call, tx: ServerTransaction, request: SipRequest, now: float
    ) -> list[Output]:
        """A re-INVITE or UPDATE: the session answers an offer; without one, our last SDP."""
        if call.state is not CallState.ANSWERED:
            return self._reply(tx, 491 if request.method == "INVITE" else 500, now)
        if call.update_tx is not None:
            return self._reply(tx, 491, now)  # RFC 3261 §14.2: one offer at a time
        if not request.body:
            response = response_to(
                request,
                200,
                headers=[
                    ("Contact", call.contact or self._contact(call.peer, secure=_secure(call))),
                    ("Content-Type", "application/sdp"),
                ],
                body=call.local_sdp.encode(),
            )
            return self._respond(tx, response, now)
        if request.content_type != "application/sdp":
            return self._reply(tx, 415, now, headers=[("Accept", "application/sdp")])
        if call.hung_up:
            return self._reply(tx, 481, now)
        call.update_tx = tx
        return self._signal(call, event="reinvite", sdp=_text(request.body), method=request.method)

    def _ack(self, ack: SipRequest, now: float) -> list[Output]:
        tx = self.transactions.match_ack(ack)
        if tx is None:
            return []
        return self._actions(tx, self.transactions.ack_received(tx, ack, now), now)

    def _cancel_received(self, cancel: SipRequest, peer: Peer, now: float) -> list[Output]:
        invite_tx = self.transactions.match_cancel(cancel)
        server = ServerNonInviteTransaction(
            cancel, reliable=peer[0] != "UDP", timers=self.timer_values
        )
        self._tx[server] = _TxInfo(self._response_peer(cancel, peer), None, "CANCEL")
        out = self._actions(server, self.transactions.start(server, now), now, deliver=False)
        if invite_tx is None:
            return out + self._reply(server, 481, now)
        out += self._reply(server, 200, now)
        info = self._tx.get(invite_tx)
        call = self._calls.get(info.session_id or "") if info is not None else None
        if call is None or call.state is not CallState.INCOMING:
            return out  # already answered (or refused): the CANCEL changes nothing
        self._move(call, "cancel")
        out += self._respond(invite_tx, self._answer(call, 487), now)
        out += self._signal(call, event="cancelled", reason="caller")
        return out + self._forget(call)

    # --- responses -------------------------------------------------------------------------

    def _receive_response(self, response: SipResponse, now: float) -> list[Output]:
        tx, actions = self.transactions.receive(response, now)
        if tx is not None:
            if response.status >= 200 and not any(isinstance(a, Deliver) for a in actions):
                # A final response the transaction already had: it only re-ACKs a failure.
                self.stats.retransmissions_received += 1
                return self._actions(tx, actions, now, retransmission=True)
            return self._actions(tx, actions, now)
        # No transaction: a 2xx retransmission after the INVITE transaction ended.
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            call = self._dialogs.get(response_dialog_id(response))
            if call is not None and call.ack:
                self.stats.retransmissions_received += 1
                self.stats.sent(call.ack, retransmission=True)
                return [Transmit(call.ack, call.peer)]
        return []

    def _on_response(
        self, tx: ClientTransaction, response: SipResponse, now: float
    ) -> list[Output]:
        info = self._tx.get(tx)
        if info is not None and info.purpose == "register":
            reg = self._registrations.get(info.session_id or "")
            return self._register_response(reg, tx, response, now) if reg is not None else []
        call = self._calls.get(info.session_id or "") if info is not None else None
        if call is None or info is None:
            return []
        if info.purpose == "invite":
            return self._invite_response(call, tx, response, now)
        if info.purpose == "bye" and response.status >= 200:
            return self._forget(call)
        return []

    def _invite_response(
        self, call: _Call, tx: ClientTransaction, response: SipResponse, now: float
    ) -> list[Output]:
        status = response.status
        if status < 200:
            if status == 100:
                return []
            call.provisional = True
            if call.hung_up:
                return self._cancel(call, now)
            if response.to_tag is not None and call.dialog is None:
                call.dialog = Dialog.from_uac(tx.request, response)
            self._move(call, "1xx")
            fields: dict[str, Any] = {"event": "ringing", "code": status}
            if response.body and response.content_type == "application/sdp":
                fields["sdp"] = _text(response.body)
            return self._signal(call, **fields)
        if status < 300:
            return self._answered(call, tx, response, now)
        if status in (401, 407) and not call.challenged and call.credentials and not call.hung_up:
            call.challenged = True
            username, password = call.credentials
            try:
                retry = authorize(tx.request, response, username=username, password=password)
            except AuthError:
                pass
            else:
                self._move(call, "challenge")
                call.invite = retry
                return self._start_client(call, retry, "invite", now)
        self._move(call, "failure")
        return self._signal(
            call, event="reject", code=status, reason=response.reason or str(status)
        ) + self._forget(call)

    def _answered(
        self, call: _Call, tx: ClientTransaction, response: SipResponse, now: float
    ) -> list[Output]:
        if call.ack:  # a retransmission (or another fork's 2xx): ACK again, nothing more
            self.stats.retransmissions_received += 1
            self.stats.sent(call.ack, retransmission=True)
            return [Transmit(call.ack, call.peer)]
        if call.dialog is not None and call.dialog.id == response_dialog_id(response):
            call.dialog.receive_response(response)
        else:
            call.dialog = Dialog.from_uac(tx.request, response)
        dialog = call.dialog
        self._dialogs[dialog.id] = call
        credentials = [
            (n, v)
            for n, v in tx.request.headers
            if canonical_name(n) in ("authorization", "proxy-authorization")
        ]
        ack = dialog.create_ack(tx.request.cseq.seq, via=self._via(call.peer), headers=credentials)
        call.ack = ack.serialize()
        self.stats.sent(call.ack)
        out: list[Output] = [Transmit(call.ack, call.peer)]
        if call.hung_up:  # the session ended while we were calling: end the leg at once
            self._move(call, "2xx")
            self._move(call, "hangup")
            return out + self._bye(call, now, None)
        self._move(call, "2xx")
        return out + self._signal(call, event="answer", sdp=_text(response.body))

    # --- transaction plumbing --------------------------------------------------------------

    def _actions(
        self,
        tx: Transaction,
        actions: Iterable[Action],
        now: float,
        *,
        deliver: bool = True,
        retransmission: bool = False,
    ) -> list[Output]:
        out: list[Output] = []
        info = self._tx.get(tx)
        # What the transaction sends goes first: the 100 Trying before the TU's answer to
        # the request it delivers with it.
        actions = sorted(actions, key=lambda a: not isinstance(a, Send))
        for action in actions:
            if isinstance(action, Send):
                if info is not None:
                    self.stats.sent(action.data, retransmission=retransmission)
                    out.append(Transmit(action.data, info.peer))
            elif isinstance(action, Deliver):
                if not deliver:
                    continue
                message = action.message
                if isinstance(message, SipRequest):
                    if message.method == "ACK":
                        continue  # the 2xx was acknowledged: nothing for the session
                    assert isinstance(tx, ServerTransaction)
                    out += self._on_request(tx, message, now)
                else:
                    assert isinstance(tx, ClientTransaction)
                    out += self._on_response(tx, message, now)
            elif isinstance(action, Timeout | TransportFailure):
                out += self._failed(tx, info, action, now)
            elif isinstance(action, Terminated):
                self._tx.pop(tx, None)
        return out

    def _failed(
        self, tx: Transaction, info: _TxInfo | None, action: Timeout | TransportFailure, now: float
    ) -> list[Output]:
        if info is not None and info.purpose == "register":
            reg = self._registrations.get(info.session_id or "")
            code = 408 if isinstance(action, Timeout) else 503
            return self._retry_register(reg, code, now) if reg is not None else []
        call = self._calls.get(info.session_id or "") if info is not None else None
        if call is None or info is None:
            return []
        if info.purpose == "invite" and call.state is CallState.CALLING:
            self._move(call, "failure")
            code, reason = (
                (408, "Request Timeout") if isinstance(action, Timeout) else (503, "Unreachable")
            )
            return self._signal(call, event="reject", code=code, reason=reason) + self._forget(call)
        if info.purpose == "INVITE" and isinstance(tx, ServerInviteTransaction):
            if call.state is CallState.ANSWERED and not call.hung_up:
                # Timer L: our 2xx was never acknowledged (RFC 3261 §13.3.1.4): end the call.
                self._move(call, "timeout")
                out = self._signal(call, event="bye", reason="no ACK")
                return out + self._bye(call, now, None)
            return []
        if info.purpose in ("bye", "cancel"):
            return self._forget(call)
        return []

    def _start_client(
        self, call: _Call, request: SipRequest, purpose: str, now: float
    ) -> list[Output]:
        tx: ClientTransaction
        reliable = call.peer[0] != "UDP"
        if request.method == "INVITE":
            tx = ClientInviteTransaction(request, reliable=reliable, timers=self.timer_values)
            call.invite_tx = tx
        else:
            tx = ClientNonInviteTransaction(request, reliable=reliable, timers=self.timer_values)
        self._tx[tx] = _TxInfo(call.peer, call.session_id, purpose)
        return self._actions(tx, self.transactions.start(tx, now), now)

    def _respond(self, tx: Transaction | None, response: SipResponse, now: float) -> list[Output]:
        if not isinstance(tx, ServerTransaction):
            return []
        try:
            actions = self.transactions.respond(tx, response, now)
        except TransactionError:
            return []  # the transaction already answered (a race with CANCEL or a timeout)
        return self._actions(tx, actions, now)

    def _reply(
        self,
        tx: ServerTransaction,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> list[Output]:
        return self._respond(tx, response_to(tx.request, status, reason, headers=headers), now)

    def _stateless(self, request: SipRequest, peer: Peer, status: int, reason: str) -> list[Output]:
        try:
            data = response_to(request, status, reason).serialize()
        except (GrammarError, ValueError):
            return []
        self.stats.sent(data)
        return [Transmit(data, peer)]

    # --- helpers ---------------------------------------------------------------------------

    def _pending_inbound(self, session_id: str) -> _Call | None:
        call = self._calls.get(session_id)
        if call is None or not call.inbound or call.state is not CallState.INCOMING:
            return None
        return call

    def _answer(
        self, call: _Call, status: int, *, reason: str | None = None, body: str = ""
    ) -> SipResponse:
        headers: list[tuple[str, str]] = []
        if 100 < status < 300:
            headers += [
                ("Contact", call.contact or self._contact(call.peer, secure=_secure(call))),
                ("Allow", ALLOW),
            ]
        headers.append(("Server", self.user_agent))
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return response_to(
            call.invite,
            status,
            reason,
            to_tag=call.local_tag,
            headers=headers,
            body=body.encode(),
        )

    def _bye(self, call: _Call, now: float, headers: Mapping[str, str] | None) -> list[Output]:
        if call.dialog is None:
            return self._forget(call)
        # A header that cannot be sent (not a token, CR/LF in the value) is left off: the
        # call must end anyway.
        extra = [("User-Agent", self.user_agent)]
        extra += [(n, v) for n, v in (headers or {}).items() if _sendable(n, v)]
        request = call.dialog.create_request("BYE", via=self._via(call.peer), headers=extra)
        self._give_up_at(call, now)
        return self._start_client(call, request, "bye", now)

    def _cancel(self, call: _Call, now: float) -> list[Output]:
        tx = call.invite_tx
        if tx is None or tx.terminated:
            return []
        cancel = cancel_for(tx.request)
        client = ClientNonInviteTransaction(
            cancel, reliable=call.peer[0] != "UDP", timers=self.timer_values
        )
        self._tx[client] = _TxInfo(call.peer, call.session_id, "cancel")
        self._give_up_at(call, now)
        return self._actions(client, self.transactions.start(client, now), now)

    def _give_up_at(self, call: _Call, now: float) -> None:
        # The peer may never answer our BYE/CANCEL (or the INVITE's final response): forget
        # the call after a while rather than keep it forever.
        call.deadline = now + _NO_ANSWER_S
        self._timers.add(call.deadline, call.session_id)

    def _deadline(self, call: _Call, now: float) -> list[Output]:
        call.deadline = None
        if call.state is CallState.INCOMING:
            self._move(call, "timeout")
            out = self._respond(call.invite_tx, self._answer(call, 408), now)
            out += self._signal(call, event="cancelled", reason="timeout")
            return out + self._forget(call)
        return self._forget(call)

    def _signal(self, call: _Call, **fields: Any) -> list[Output]:
        if call.hung_up:
            return []
        return [CallSignal(call.session_id, fields)]

    def _move(self, call: _Call, event: str) -> None:
        next_state = CALL_TRANSITIONS.get((call.state, event))
        if next_state is None:
            raise ValueError(f"call {call.session_id}: {event!r} in state {call.state.value}")
        if next_state is CallState.ANSWERED and not call.answered:
            call.answered = True
            self.stats.call_answered(call.inbound)
        call.state = next_state

    def _forget(self, call: _Call) -> list[Output]:
        if self._calls.get(call.session_id) is not call:
            return []
        del self._calls[call.session_id]
        if not call.answered:
            self.stats.call_failed(call.inbound)
        if call.dialog is not None and self._dialogs.get(call.dialog.id) is call:
            del self._dialogs[call.dialog.id]
        call.state = CallState.ENDED
        call.deadline = None
        return [CallGone(call.session_id)]

    def _port_for(self, transport: str) -> int:
        return self.tls_port if transport == "TLS" and self.tls_port else self.port

    def _via(self, peer: Peer) -> Via:
        return Via.new(peer[0], self.contact_host(peer[1]), self._port_for(peer[0]))

    def _contact(self, peer: Peer, local: Address | None = None, *, secure: bool = False) -> str:
        """Our Contact header value for ``peer`` (see :meth:`_contact_uri`)."""
        return f"<{self._contact_uri(peer, local, secure=secure)}>"

    def _contact_uri(
        self, peer: Peer, local: Address | None = None, *, secure: bool = False
    ) -> SipUri:
        """Our Contact URI for ``peer``: ``sips:`` when the dialog's Request-URI is (RFC 3261
        §8.1.1.8), else ``sip:`` with the transport named unless it is UDP."""
        user = None
        if local is not None and isinstance(local.uri, SipUri):
            user = local.uri.user
        params: tuple[tuple[str, str | None], ...] = ()
        scheme = "sips" if secure and peer[0] == "TLS" else "sip"
        if peer[0] != "UDP" and scheme == "sip":
            params = (("transport", peer[0].lower()),)
        host, port = self.contact_host(peer[1]), self._port_for(peer[0])
        return SipUri(host, user or "activecall", port, params, scheme=scheme)

    def _response_peer(self, request: SipRequest, source: Peer) -> Peer:
        if source[0] != "UDP":
            return source  # the same connection
        host, port = request.top_via.response_target()
        return (source[0], host, port)


def _secure(call: _Call) -> bool:
    """Whether the call's INVITE went to a ``sips:`` URI (its Contacts must be ``sips:``)."""
    return isinstance(call.invite.uri, SipUri) and call.invite.uri.secure


def _granted_expires(response: SipResponse, asked: int) -> int:
    """The binding time a registrar granted: our Contact's ``expires``, else ``Expires``."""
    for contact in response.contacts:
        value = contact.param("expires")
        if value is not None and value.isdigit():
            return max(1, int(value))
    header = response.headers.get("expires")
    if header is not None and header.strip().isdigit():
        return max(1, int(header.strip()))
    return asked


def _sendable(name: str, value: str) -> bool:
    return is_token(name) and "\r" not in value and "\n" not in value


def _valid_call_id(value: str) -> bool:
    return len(value) <= 200 and _CALL_ID_CHARS.fullmatch(value) is not None


def _text(body: bytes) -> str:
    return body.decode("utf-8", "replace")


def _ctype(request: SipRequest) -> str:
    return request.headers.get("content-type") or ""


def _uri_text(value: str) -> str:
    """The URI of a Refer-To/Referred-By value (the raw text when it does not parse)."""
    try:
        return str(parse_address(value).uri)
    except GrammarError:
        return value.strip()
