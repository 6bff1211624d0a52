"""RFC 3261 §17 transactions (RFC 6026 Accepted state): timers, retransmissions, matching."""

from __future__ import annotations

import pytest

from activecall.sip.message import SipRequest, SipResponse, parse, response_to
from activecall.sip.transaction import (
    STATE_TIMERS,
    TRANSITIONS,
    Action,
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Deliver,
    Event,
    Kind,
    Send,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
    Terminated,
    Timeout,
    Timer,
    TimerValues,
    Transaction,
    TransactionError,
    Transactions,
    TransportFailure,
    ack_for,
    cancel_for,
    client_key,
    server_key,
)
from tests.sip import rfc4475


def request(
    method: str = "INVITE", branch: str = "z9hG4bK776asdhds", host: str = "pc33.atlanta.example.com"
) -> SipRequest:
    data = (
        f"{method} sip:bob@biloxi.example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host};branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:p1.example.com;lr>\r\n"
        "To: Bob <sip:bob@biloxi.example.com>\r\n"
        "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
        "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
        f"CSeq: 314159 {method}\r\n"
        "Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    message = parse(data)
    assert isinstance(message, SipRequest)
    return message


def reply(req: SipRequest, status: int, tag: str = "a6c85cf") -> SipResponse:
    """The response as it arrives from the network (serialised and parsed again)."""
    message = parse(response_to(req, status, to_tag=tag).serialize())
    assert isinstance(message, SipResponse)
    return message


def sends(actions: list[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def run(tx: Transaction, until: float) -> list[tuple[float, Action]]:
    """Fire the transaction's timers in order up to ``until``."""
    out: list[tuple[float, Action]] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= until:
        out += [(deadline, a) for a in tx.tick(deadline)]
    return out


# --- client INVITE ---------------------------------------------------------------------------


def test_client_invite_retransmits_with_timer_a_then_times_out_with_timer_b() -> None:
    tx = ClientInviteTransaction(request())
    [first] = tx.start(0.0)
    assert isinstance(first, Send) and first.data == tx.request.serialize()
    events = run(tx, 100.0)
    times = [t for t, a in events if isinstance(a, Send)]
    # T1 doubling without a cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5; Timer B = 64*T1 = 32.
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert [(t, a) for t, a in events if not isinstance(a, Send)] == [
        (32.0, Timeout(Timer.B)),
        (32.0, Terminated()),
    ]
    assert tx.terminated and tx.next_deadline() is None


def test_client_invite_failure_is_acked_and_absorbed() -> None:
    tx = ClientInviteTransaction(request())
    tx.start(0.0)
    ringing = reply(tx.request, 180)
    assert tx.handle(ringing, 0.2) == [Deliver(ringing)]
    assert tx.state is State.PROCEEDING
    assert run(tx, 10.0) == []  # no retransmission, no Timer B in Proceeding
    busy = reply(tx.request, 486)
    ack_send, deliver = tx.handle(busy, 10.0)
    assert deliver == Deliver(busy) and tx.state is State.COMPLETED
    assert isinstance(ack_send, Send)
    ack = parse(ack_send.data)
    assert isinstance(ack, SipRequest) and ack.method == "ACK"
    assert ack.uri == tx.request.uri and ack.top_via == tx.request.top_via
    assert ack.to_tag == "a6c85cf" and ack.from_tag == "1928301774"
    assert (ack.cseq.seq, ack.cseq.method) == (314159, "ACK")
    assert ack.headers.get_all("route") == ["<sip:p1.example.com;lr>"]
    # A retransmitted 486 is answered with the same ACK and not delivered again.
    assert tx.handle(busy, 11.0) == [ack_send]
    assert run(tx, 100.0) == [(42.0, Terminated())]  # Timer D: 32 s on UDP


def test_client_invite_2xx_goes_to_accepted_and_passes_retransmissions_up() -> None:
    tx = ClientInviteTransaction(request())
    tx.start(0.0)
    ok = reply(tx.request, 200)
    assert tx.handle(ok, 1.0) == [Deliver(ok)]
    assert tx.state is State.ACCEPTED
    assert tx.handle(ok, 2.0) == [Deliver(ok)]  # the TU ACKs each 2xx itself
    assert tx.handle(reply(tx.request, 180), 2.5) == []
    assert run(tx, 100.0) == [(33.0, Terminated())]  # Timer M


def test_client_invite_over_tcp_neither_retransmits_nor_waits() -> None:
    tx = ClientInviteTransaction(request(), reliable=True)
    tx.start(0.0)
    assert tx.next_deadline() == 32.0  # only Timer B
    actions = tx.handle(reply(tx.request, 503), 1.0)
    assert [type(a) for a in actions] == [Send, Deliver, Terminated]  # Timer D is zero


# --- client non-INVITE -----------------------------------------------------------------------


def test_client_non_invite_timer_e_backs_off_to_t2_and_timer_f_times_out() -> None:
    tx = ClientNonInviteTransaction(request("OPTIONS"))
    tx.start(0.0)
    events = run(tx, 100.0)
    times = [t for t, a in events if isinstance(a, Send)]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert events[-2:] == [(32.0, Timeout(Timer.F)), (32.0, Terminated())]


def test_client_non_invite_proceeding_retransmits_every_t2() -> None:
    tx = ClientNonInviteTransaction(request("BYE"))
    tx.start(0.0)
    run(tx, 0.6)  # one retransmission at 0.5; E now 1.0 s
    tx.handle(reply(tx.request, 100), 0.7)
    assert tx.state is State.PROCEEDING
    times = [t for t, a in run(tx, 20.0) if isinstance(a, Send)]
    assert times == [1.5, 5.5, 9.5, 13.5, 17.5]
    ok = reply(tx.request, 200)
    assert tx.handle(ok, 20.0) == [Deliver(ok)]
    assert tx.handle(ok, 21.0) == []  # absorbed in Completed
    assert run(tx, 100.0) == [(25.0, Terminated())]  # Timer K = T4


def test_client_non_invite_over_tcp() -> None:
    tx = ClientNonInviteTransaction(request("OPTIONS"), reliable=True)
    tx.start(0.0)
    assert tx.next_deadline() == 32.0
    actions = tx.handle(reply(tx.request, 200), 0.1)
    assert [type(a) for a in actions] == [Deliver, Terminated]


def test_custom_timer_values() -> None:
    tx = ClientNonInviteTransaction(request("OPTIONS"), timers=TimerValues(t1=0.1, t2=0.4, t4=1))
    tx.start(0.0)
    times = [round(t, 3) for t, a in run(tx, 1.0) if isinstance(a, Send)]
    assert times == [0.1, 0.3, 0.7]
    assert tx.next_deadline() == pytest.approx(1.1)


# --- server INVITE ---------------------------------------------------------------------------


def test_server_invite_trying_and_provisional_retransmission() -> None:
    tx = ServerInviteTransaction(request())
    deliver, trying = tx.start(0.0)
    assert deliver == Deliver(tx.request)
    assert isinstance(trying, Send)
    hundred = parse(trying.data)
    assert isinstance(hundred, SipResponse) and hundred.status == 100 and hundred.to_tag is None
    assert hundred.top_via == tx.request.top_via
    assert tx.handle(tx.request, 0.1) == [trying]
    ringing = response_to(tx.request, 180, to_tag="t")
    [sent] = tx.respond(ringing, 0.2)
    assert isinstance(sent, Send) and sent.data == ringing.serialize()
    assert tx.handle(tx.request, 0.3) == [sent]
    assert run(tx, 100.0) == []


def test_server_invite_failure_retransmits_until_ack() -> None:
    tx = ServerInviteTransaction(request())
    tx.start(0.0)
    busy = response_to(tx.request, 486, to_tag="t")
    [sent] = tx.respond(busy, 1.0)
    assert tx.state is State.COMPLETED
    # Timer G: T1 doubling, capped at T2.
    times = [t for t, a in run(tx, 15.0) if isinstance(a, Send)]
    assert times == [1.5, 2.5, 4.5, 8.5, 12.5]
    assert tx.handle(tx.request, 15.0) == [sent]  # INVITE retransmission answered again
    ack = ack_for(tx.request, busy)
    assert tx.handle(ack, 16.0) == [] and tx.state is State.CONFIRMED
    assert tx.handle(ack, 17.0) == []
    assert run(tx, 100.0) == [(21.0, Terminated())]  # Timer I = T4


def test_server_invite_failure_without_ack_times_out_with_timer_h() -> None:
    tx = ServerInviteTransaction(request())
    tx.start(0.0)
    tx.respond(response_to(tx.request, 404, to_tag="t"), 0.0)
    events = run(tx, 100.0)
    assert events[-2:] == [(32.0, Timeout(Timer.H)), (32.0, Terminated())]
    assert len([a for _, a in events if isinstance(a, Send)]) == 10


def test_server_invite_2xx_is_retransmitted_until_its_ack() -> None:
    tx = ServerInviteTransaction(request(), reliable=True)
    tx.start(0.0)
    ok = response_to(tx.request, 200, to_tag="t")
    tx.respond(ok, 0.0)
    assert tx.state is State.ACCEPTED
    # RFC 3261 §13.3.1.4: even over TCP, T1 doubling to T2.
    times = [t for t, a in run(tx, 8.0) if isinstance(a, Send)]
    assert times == [0.5, 1.5, 3.5, 7.5]
    assert tx.handle(tx.request, 8.0) == []  # INVITE retransmissions absorbed in Accepted
    ack = request("ACK", branch="z9hG4bKnewbranch")
    assert tx.handle(ack, 8.2) == [Deliver(ack)]
    assert run(tx, 100.0) == [(32.0, Terminated())]  # Timer L, no more 2xx, no timeout


def test_server_invite_2xx_never_acked_times_out() -> None:
    tx = ServerInviteTransaction(request())
    tx.start(0.0)
    tx.respond(response_to(tx.request, 200, to_tag="t"), 0.0)
    events = run(tx, 100.0)
    assert events[-2:] == [(32.0, Timeout(Timer.L)), (32.0, Terminated())]


def test_server_invite_refuses_responses_out_of_state() -> None:
    tx = ServerInviteTransaction(request())
    tx.start(0.0)
    tx.respond(response_to(tx.request, 486, to_tag="t"), 0.0)
    with pytest.raises(TransactionError):
        tx.respond(response_to(tx.request, 200, to_tag="t"), 0.1)
    with pytest.raises(TransactionError):
        tx.start(0.2)
    client = ClientInviteTransaction(request())
    client.start(0.0)
    with pytest.raises(TransactionError):
        client.start(0.1)


# --- server non-INVITE -----------------------------------------------------------------------


def test_server_non_invite() -> None:
    tx = ServerNonInviteTransaction(request("OPTIONS"))
    assert tx.start(0.0) == [Deliver(tx.request)]
    assert tx.handle(tx.request, 0.1) == []  # absorbed in Trying
    trying = response_to(tx.request, 100)
    [sent_100] = tx.respond(trying, 0.2)
    assert tx.handle(tx.request, 0.3) == [sent_100]
    ok = response_to(tx.request, 200, to_tag="t")
    [sent_200] = tx.respond(ok, 0.4)
    assert tx.handle(tx.request, 0.5) == [sent_200]
    assert run(tx, 100.0) == [(32.4, Terminated())]  # Timer J = 64*T1


def test_server_non_invite_over_tcp_terminates_at_once() -> None:
    tx = ServerNonInviteTransaction(request("OPTIONS"), reliable=True)
    tx.start(0.0)
    actions = tx.respond(response_to(tx.request, 200, to_tag="t"), 0.0)
    assert [type(a) for a in actions] == [Send, Terminated]
    with pytest.raises(TransactionError):
        tx.respond(response_to(tx.request, 200, to_tag="t"), 0.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ClientInviteTransaction(request()),
        lambda: ClientNonInviteTransaction(request("OPTIONS")),
        lambda: ServerInviteTransaction(request()),
        lambda: ServerNonInviteTransaction(request("OPTIONS")),
    ],
)
def test_transport_error_ends_every_transaction(make: object) -> None:
    tx = make()  # type: ignore[operator]
    tx.start(0.0)
    assert tx.transport_failed(0.1) == [TransportFailure(), Terminated()]
    assert tx.terminated and tx.next_deadline() is None
    assert tx.transport_failed(0.2) == []


# --- the tables ------------------------------------------------------------------------------


def test_every_timer_a_state_runs_has_a_transition() -> None:
    for (kind, state), timers in STATE_TIMERS.items():
        for timer in timers:
            assert (kind, state, Event[f"TIMER_{timer.value.upper()}"]) in TRANSITIONS


def test_every_live_state_handles_a_transport_error() -> None:
    states = {(k, s) for k, s, _ in TRANSITIONS}
    for kind, state in states:
        if state is not State.TERMINATED:
            assert TRANSITIONS[(kind, state, Event.TRANSPORT_ERROR)][0] is State.TERMINATED
    assert {k for k, _ in states} == set(Kind)


# --- building ACK and CANCEL, matching -------------------------------------------------------


def test_cancel_for_an_invite() -> None:
    invite = request()
    cancel = parse(cancel_for(invite).serialize())
    assert isinstance(cancel, SipRequest) and cancel.method == "CANCEL"
    assert cancel.uri == invite.uri and cancel.top_via == invite.top_via
    assert (cancel.cseq.seq, cancel.cseq.method) == (314159, "CANCEL")
    assert cancel.to_tag is None and cancel.call_id == invite.call_id
    assert cancel.headers.get_all("route") == invite.headers.get_all("route")


def test_keys_follow_rfc3261_matching_rules() -> None:
    invite = request()
    assert client_key(reply(invite, 180)) == ("z9hG4bK776asdhds", "INVITE")
    assert server_key(request("ACK")) == server_key(invite)
    assert server_key(cancel_for(invite)) != server_key(invite)
    assert server_key(cancel_for(invite), method="INVITE") == server_key(invite)
    assert server_key(request(host="other.example.com")) != server_key(invite)
    # RFC 4475 §3.2.1 and §3.4.1: no usable branch, RFC 2543 matching.
    for data in (rfc4475.BADBRANCH, rfc4475.INV2543):
        old = parse(data)
        assert isinstance(old, SipRequest) and server_key(old)[0] == "2543"


def test_transactions_route_messages_and_timers() -> None:
    table = Transactions()
    now = 0.0
    client = ClientInviteTransaction(request(branch="z9hG4bKc1"))
    options = ClientNonInviteTransaction(request("OPTIONS", branch="z9hG4bKc2"))
    server = ServerInviteTransaction(request(branch="z9hG4bKs1", host="ua.example.net"))
    table.start(client, now)
    table.start(options, now)
    table.start(server, now)
    assert len(table) == 3 and table.next_deadline() == 0.5
    # A response with the INVITE's branch but another method belongs to no transaction.
    cancel_ok = reply(cancel_for(client.request), 200)
    assert table.receive(cancel_ok, 0.1) == (None, [])
    ringing = reply(client.request, 180)
    assert table.receive(ringing, 0.1) == (client, [Deliver(ringing)])
    # A retransmitted INVITE finds its server transaction; a new request finds none.
    matched, actions = table.receive(server.request, 0.2)
    assert matched is server and len(sends(actions)) == 1
    assert table.receive(request("BYE", branch="z9hG4bKnew"), 0.2) == (None, [])
    # CANCEL of the server INVITE, and the ACK of its 2xx.
    cancel = cancel_for(server.request)
    assert table.match_cancel(cancel) is server
    table.respond(server, response_to(server.request, 200, to_tag="t"), 0.3)
    ack = request("ACK", branch="z9hG4bKack", host="ua.example.net")
    assert table.receive(ack, 0.4) == (None, [])  # another branch: not the transaction's
    assert table.match_ack(ack) is server
    assert table.ack_received(server, ack, 0.4) == [Deliver(ack)]
    # Timers of all three in deadline order; the OPTIONS times out at 32 s.
    fired = table.tick(32.0)
    assert (options, Timeout(Timer.F)) in fired
    assert options.terminated and len(table) == 2
    assert table.tick(32.3) == [(server, Terminated())]
    assert table.match_ack(ack) is None
    assert table.transport_failed(client, 33.0) == [TransportFailure(), Terminated()]
    assert len(table) == 0 and table.next_deadline() is None


def test_transactions_rejects_non_transactions() -> None:
    with pytest.raises(TypeError):
        Transactions().start(object(), 0.0)  # type: ignore[arg-type]


def test_responses_with_more_than_one_via_are_dropped() -> None:
    # RFC 4475 §3.3.10: a 200 carrying a second (broadcast) Via is discarded by a UA.
    bcast = parse(rfc4475.BCAST)
    assert isinstance(bcast, SipResponse)
    invite = request(branch="z9hG4bK1324923")
    table = Transactions()
    tx = ClientInviteTransaction(invite)
    table.start(tx, 0.0)
    assert client_key(bcast) == client_key(invite)
    assert table.receive(bcast, 0.1) == (None, [])
    assert tx.state is State.CALLING
