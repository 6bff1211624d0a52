"""The supervisor's SIP service: UDP, TCP and TLS listeners around the :class:`SipAgent` core.

Signalling stays here; media runs in the worker that owns the call. This module only moves
bytes between the sockets and the agent (:mod:`activecall.sip.agent`, where the decisions
are), keeps the agent's one timer, and joins the agent to the rest of the node:

* an inbound INVITE goes to the configured handler: the ``webhook`` gets the §2.10 payload
  and the application connects ``/call/sip?id=<dialogId>``; the directory opens that session
  with the pending INVITE in its params (:meth:`SipService.open_params`). No handler (or a
  handler that cannot run) answers 503, a failed webhook 503;
* what the agent has for a session (:class:`~activecall.sip.agent.CallSignal`) becomes a
  ``sip`` control record to its worker; the worker's ``sip`` records
  (:meth:`SipService.on_action`: ``invite``, ``ringing``, ``accept``, ``reject``,
  ``reanswer``, ``bye``, ``message``) become the agent's decisions;
* a session that ends while its SIP leg is up (its worker died, or it failed) gets its leg
  ended (BYE, CANCEL or 480) in :meth:`SipService.session_ended`.
* a session's ``refer`` leg (:mod:`activecall.workers.refer_leg`, any call type) is a second
  agent call keyed by its Call-ID (``ref-<n>-<session>``): the worker's records for it and the
  signals sent back carry ``leg: "refer"``; :meth:`SipService.session_ended` ends it too.

* each ``register_users`` entry that is not ``disabled`` is registered at start and kept
  registered by the agent (refresh at 75 % of Expires, retry after a failure).

Shutdown: :meth:`SipService.drain` answers new INVITEs and OPTIONS with 503, refuses the
INVITEs still waiting for their application and un-REGISTERs; live calls end with their
sessions (BYE), and :meth:`SipService.close` waits a little for those BYEs (and the
un-REGISTERs) to be answered.

With the ``playbook`` handler an inbound call needs no application: the directory opens its
session with the matched playbook (:mod:`activecall.playbook.handler`), which accepts it; a
missing or broken playbook is a 503.

TLS (RFC 3261 §26, RFC 5630): with ``tls_port`` a TLS listener runs the same stream
protocol as TCP, with ``tls_cert_file``/``tls_key_file`` (a file that cannot be used stops the
start with :class:`TlsSetupError` naming it). Outbound, a ``sips:`` URI or ``transport=tls``
goes over TLS, checking the peer's certificate and name against ``tls_ca_file`` (the system
store when unset) unless ``tls_verify_server = false``. A peer whose handshake fails loses
its connection and nothing else; a connection we cannot make fails its transactions at once
(an INVITE gets 503).

Not here yet: DNS SRV/NAPTR (the URI's host is resolved with getaddrinfo), outbound
connection reuse beyond the connection a peer opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from activecall.config import Config, PlaybookHandler, RegisterUser, WebhookHandler
from activecall.sip.agent import (
    CallGone,
    CallSignal,
    IncomingCall,
    Output,
    Peer,
    RegistrationState,
    SipAgent,
    Transmit,
)
from activecall.sip.message import KeepAlive, SipParseError, SipStreamParser
from activecall.sip.routing import OutboundRoute, apply_contact, route_outbound
from activecall.sip.uri import SipUri, UriError, parse_uri
from activecall.supervisor.directory import CallDirectory
from activecall.supervisor.sessions import CallParams
from activecall.supervisor.webhook import Webhook, WebhookError, invite_payload

__all__ = ["SipService", "TlsSetupError", "call_target", "client_tls_context", "server_tls_context"]

log = logging.getLogger(__name__)

_CLOSE_WAIT_S = 2.0  # at shutdown, how long BYEs may take to be answered
_FINISH_WAIT_S = 5.0  # how long a TCP peer may take to close after we gave up on its stream
_TLS_HANDSHAKE_S = 10.0  # a peer that has not finished its TLS handshake by then is dropped


class TlsSetupError(OSError):
    """A TLS certificate, key or CA file that cannot be used; the message names the file."""


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The TLS listener's context: our certificate chain and key (PEM files)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    for key, path in (("tls_cert_file", cert_file), ("tls_key_file", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise TlsSetupError(f"{key} {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise TlsSetupError(_tls_load_problem(cert_file, key_file, exc)) from None
    return context


def _tls_load_problem(cert_file: str, key_file: str, exc: ssl.SSLError) -> str:
    """Which of the two files ``load_cert_chain`` refused, and why, in words."""
    with open(cert_file, "rb") as cert, open(key_file, "rb") as key:
        cert_pem, key_pem = cert.read(), key.read()
    if b"-----BEGIN CERTIFICATE-----" not in cert_pem:
        return f"tls_cert_file {cert_file}: no PEM certificate in it ({_why(exc)})"
    if b"PRIVATE KEY-----" not in key_pem:
        return f"tls_key_file {key_file}: no PEM private key in it ({_why(exc)})"
    try:  # the certificates alone, to tell a bad certificate from a bad key
        ssl.create_default_context().load_verify_locations(cafile=cert_file)
    except ssl.SSLError as cert_exc:
        return f"tls_cert_file {cert_file}: not a valid PEM certificate ({_why(cert_exc)})"
    if "MISMATCH" in str(exc).upper():
        return f"tls_key_file {key_file} is not the key of tls_cert_file {cert_file}"
    return f"tls_key_file {key_file}: not a valid PEM private key ({_why(exc)})"


def _why(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def client_tls_context(
    ca_file: str | None = None,
    verify: bool = True,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> ssl.SSLContext:
    """The context of outbound TLS connections: the peer's certificate and name are checked
    against ``ca_file`` (else the system store) unless ``verify`` is false; our certificate,
    when given, is offered to peers that ask for one."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"tls_ca_file {ca_file}: cannot be loaded: {exc}") from None
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file and key_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def _specific(host: str | None) -> str | None:
    """``host`` unless it is empty or a wildcard address."""
    if not host:
        return None
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_unspecified:
            return None
    return host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def local_ip_towards(host: str) -> str:
    """The local address the kernel would send from to reach ``host`` (no packet is sent)."""
    target = host if _is_ip(host) else "192.0.2.1"  # TEST-NET: follows the default route
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target.strip("[]"), 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def call_target(callee: str) -> tuple[str, str, int]:
    """Transport, host and port an INVITE to ``callee`` goes to (no DNS SRV/NAPTR: the URI's
    host, its port or 5060/5061, ``transport=tcp``/``tls`` honoured; ``sips:`` is always TLS,
    RFC 3261 §26.2). ``ValueError`` if not SIP."""
    uri = parse_uri(callee)
    if not isinstance(uri, SipUri):
        raise ValueError(f"callee must be a sip: or sips: URI, not {callee!r}")
    transport = (uri.param("transport") or ("tls" if uri.secure else "udp")).upper()
    if uri.secure and transport == "TCP":
        transport = "TLS"  # sips: with transport=tcp means TCP under TLS (RFC 5630 §3.1.3)
    if transport not in ("UDP", "TCP", "TLS") or (uri.secure and transport == "UDP"):
        raise ValueError(f"transport={transport.lower()} is not supported for {uri.scheme}:")
    host = uri.param("maddr") or uri.host
    port = uri.port or (5061 if uri.secure else 5060)
    return transport, host.strip("[]"), port


class _NoClient:
    """The connection of a call no WebSocket watches (``--call``): output is dropped."""

    def send_text(self, data: bytes) -> None:
        pass

    def send_binary(self, data: bytes) -> None:
        pass

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


class SipService:
    """The node's SIP endpoint; see the module docstring."""

    def __init__(self, config: Config, directory: CallDirectory) -> None:
        self.config = config
        self.directory = directory
        self._loop = asyncio.get_running_loop()
        self.agent = SipAgent(
            contact_host=self._contact_host,
            port=config.udp_port,
            user_agent=config.useragent,
            accept_timeout=config.accept_timeout,
        )
        handler = config.handler
        self.webhook = Webhook(handler) if isinstance(handler, WebhookHandler) else None
        self._pending: dict[str, IncomingCall] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._tcp: dict[Peer, _TcpConnection] = {}  # TCP and TLS connections, by peer
        self._connecting: dict[Peer, list[bytes]] = {}  # what waits for a connection
        self._tls_names: dict[tuple[str, int], str] = {}  # name to check, by address
        self._client_tls: ssl.SSLContext | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._near: dict[str, str] = {}
        self._closed = False
        # Refer legs (the ``refer`` command's second INVITE) are agent calls of their own,
        # keyed by their Call-ID: the session each belongs to, and each session's live leg.
        self._leg_owner: dict[str, str] = {}
        self._refer_legs: dict[str, str] = {}

    # --- lifetime --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP and TCP on ``addr:udp_port`` (a port of 0 picks one, the same for both)
        and TLS on ``tls_port``. :class:`TlsSetupError` when a TLS file cannot be used."""
        host = self.config.addr or "0.0.0.0"
        config = self.config
        server_tls = None
        if config.tls_port is not None and config.tls_cert_file and config.tls_key_file:
            server_tls = server_tls_context(config.tls_cert_file, config.tls_key_file)
        self._client_tls = client_tls_context(
            config.tls_ca_file,
            config.tls_verify_server,
            config.tls_cert_file if server_tls is not None else None,
            config.tls_key_file if server_tls is not None else None,
        )
        try:
            # SO_REUSEPORT, as upstream: a restarted node can bind while the old one drains.
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self),
                local_addr=(host, self.config.udp_port),
                reuse_port=True,
            )
            self._udp = transport
            port = int(transport.get_extra_info("sockname")[1])
            self.agent.port = port
            self._tcp_server = await self._loop.create_server(
                lambda: _TcpConnection(self), host, port, reuse_address=True, reuse_port=True
            )
        except OSError as exc:
            # The HTTP side still serves (WebSocket and WebRTC calls); SIP calls cannot.
            log.error("SIP is off: cannot bind %s:%s: %s", host, self.config.udp_port, exc)
            return
        log.info("SIP listening on %s:%d (UDP, TCP)", host, port)
        if server_tls is not None:
            await self._listen_tls(host, config.tls_port or 0, server_tls)
        for user in self.config.register_users:
            if not user.disabled:
                self._spawn(self._register(user))

    async def _listen_tls(self, host: str, port: int, context: ssl.SSLContext) -> None:
        try:
            self._tls_server = await self._loop.create_server(
                lambda: _TcpConnection(self, "TLS"),
                host,
                port,
                ssl=context,
                ssl_handshake_timeout=_TLS_HANDSHAKE_S,
                reuse_address=True,
                reuse_port=True,
            )
        except OSError as exc:
            log.error("SIP over TLS is off: cannot bind %s:%s: %s", host, port, exc)
            return
        self.agent.tls_port = int(self._tls_server.sockets[0].getsockname()[1])
        log.info("SIP listening on %s:%d (TLS)", host, self.agent.tls_port)

    @property
    def port(self) -> int:
        """The SIP port (UDP and TCP)."""
        return self.agent.port

    def _remember_name(self, address: str, port: int, name: str) -> None:
        """The host name a TLS connection to ``address:port`` checks the certificate for."""
        if len(self._tls_names) >= 1024:
            self._tls_names.clear()  # a cache: names are remembered again before their use
        self._tls_names[(address, port)] = name

    @property
    def tls_port(self) -> int | None:
        """The SIP-over-TLS port, when the TLS listener runs."""
        return self.agent.tls_port

    def connection_counts(self) -> dict[str, int]:
        """Open stream connections by transport (``TCP``, ``TLS``), for ``/metrics``."""
        counts = dict.fromkeys(("TCP", "TLS"), 0)
        for transport, _host, _port in self._tcp:
            counts[transport] = counts.get(transport, 0) + 1
        return counts

    def drain(self) -> None:
        """No new calls: 503 for new INVITEs and OPTIONS, and for INVITEs not yet joined."""
        self.agent.drain()
        now = self._loop.time()
        for session_id in list(self._pending):
            self._run(self.agent.reject(session_id, 503, "Server shutting down", now))
        for user in self.config.register_users:
            self._run(self.agent.unregister(_registration_key(user), now))

    async def close(self, timeout: float = _CLOSE_WAIT_S) -> None:
        """Wait (up to ``timeout``) for the calls' last transactions, then close the sockets."""
        deadline = self._loop.time() + timeout
        while (len(self.agent) or self.agent.unregistering) and self._loop.time() < deadline:
            await asyncio.sleep(0.02)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        for conn in list(self._tcp.values()):
            conn.close()
        for server in (self._tcp_server, self._tls_server):
            if server is not None:
                server.close()
                await server.wait_closed()
        if self.webhook is not None:
            await self.webhook.aclose()

    # --- the directory's side (SipSignalling) ----------------------------------------------

    def open_params(self, session_id: str, call_type: str = "sip") -> dict[str, Any]:
        """The open params of a ``/call/sip`` session: the pending INVITE it joins, if any.
        Other calls get only ``media``: where a ``refer`` leg binds its RTP."""
        if call_type != "sip":
            return {"media": self._media(None)}
        pending = self._pending.pop(session_id, None)
        if pending is None:
            return {"sip": {"direction": "outbound"}, "media": self._media(None)}
        return {
            "sip": {
                "direction": "inbound",
                "caller": pending.caller,
                "callee": pending.callee,
                "offer": pending.offer,
                "headers": dict(pending.extra),
            },
            "media": self._media(pending.source[1]),
        }

    def on_action(self, session_id: str, record: dict[str, Any]) -> None:
        """A ``sip`` record from the session's worker."""
        if record.get("leg") == "refer":
            self._refer_action(session_id, record)
            return
        action = record.get("action")
        now = self._loop.time()
        if action == "invite":
            self._spawn(self._invite(session_id, record))
        elif action == "ringing":
            self._run(self.agent.ringing(session_id, _str(record.get("sdp")) or None, now))
        elif action == "accept":
            self._run(self.agent.accept(session_id, _str(record.get("sdp")), now))
        elif action == "reject":
            code = record.get("code")
            self._run(
                self.agent.reject(
                    session_id,
                    code if isinstance(code, int) else 603,
                    _str(record.get("reason")) or None,
                    now,
                )
            )
        elif action == "reanswer":
            code = record.get("code")
            self._run(
                self.agent.reanswer(
                    session_id,
                    _str(record.get("sdp")),
                    now,
                    code if isinstance(code, int) else 200,
                )
            )
        elif action == "bye":
            self._run(self.agent.hangup(session_id, now, _headers(record.get("headers"))))
        elif action == "message":
            try:
                outputs = self.agent.message(
                    session_id,
                    _str(record.get("body")),
                    now,
                    content_type=_str(record.get("contentType")) or "text/plain;charset=utf-8",
                    headers=_headers(record.get("headers")),
                )
            except ValueError as exc:
                log.warning("session %s: MESSAGE not sent: %s", session_id, exc)
                return
            self._run(outputs)
        else:
            log.warning("session %s: unknown sip action %r", session_id, action)

    def session_ended(self, session_id: str) -> None:
        """End the legs of a session that is gone (no-op when the worker already did)."""
        now = self._loop.time()
        self._run(self.agent.hangup(session_id, now))
        key = self._refer_legs.pop(session_id, None)
        if key is not None:
            self._leg_owner.pop(key, None)
            self._run(self.agent.hangup(key, now))

    # --- refer legs ------------------------------------------------------------------------

    def _refer_action(self, session_id: str, record: dict[str, Any]) -> None:
        """A ``sip`` record of a session's refer leg: ``invite``, ``bye`` (BYE or CANCEL),
        ``reanswer``."""
        action = record.get("action")
        now = self._loop.time()
        key = self._refer_legs.get(session_id)
        if action == "invite":
            if key is not None:  # a leg the session gave up on: it is over for the SIP side
                self._leg_owner.pop(key, None)
                self._run(self.agent.hangup(key, now))
            key = _str(record.get("callId"))
            if not key or key in self._leg_owner or key in self.agent:
                key = f"ref-{uuid.uuid4().hex[:8]}-{session_id}"
            self._refer_legs[session_id] = key
            self._leg_owner[key] = session_id
            self._spawn(self._invite_leg(key, record))
        elif key is None:
            return  # the leg is over already
        elif action == "bye":
            self._refer_legs.pop(session_id, None)
            self._leg_owner.pop(key, None)
            self._run(self.agent.hangup(key, now, _headers(record.get("headers"))))
        elif action == "reanswer":
            code = record.get("code")
            self._run(
                self.agent.reanswer(
                    key, _str(record.get("sdp")), now, code if isinstance(code, int) else 200
                )
            )
        else:
            log.warning("session %s: unknown refer leg action %r", session_id, action)

    async def _invite_leg(self, key: str, record: dict[str, Any]) -> None:
        await self._invite(key, record)
        if key not in self._leg_owner:
            # The session hung the leg up (or ended) while its callee was being resolved.
            self._run(self.agent.hangup(key, self._loop.time()))

    def _deliver(self, key: str, fields: dict[str, Any]) -> bool:
        """A signal for the session of agent call ``key``: its own, or its refer leg's."""
        owner = self._leg_owner.get(key)
        if owner is not None:
            return self.directory.signal(owner, {**fields, "leg": "refer"})
        return self.directory.signal(key, fields)

    # --- input from the transports ---------------------------------------------------------

    def datagram(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """One UDP datagram."""
        if self._closed:
            return
        self._run(self.agent.receive(data, ("UDP", str(addr[0]), int(addr[1])), self._loop.time()))

    def stream_items(self, conn: _TcpConnection, items: list[Any]) -> None:
        """Messages framed on a TCP connection."""
        now = self._loop.time()
        for item in items:
            if isinstance(item, KeepAlive):
                conn.write(b"\r\n")
            elif isinstance(item, SipParseError):
                self._run(self.agent.malformed(item, conn.peer))
                if item.fatal:
                    conn.finish()
            else:
                self._run(self.agent.receive_message(item, conn.peer, now))

    # --- agent outputs ---------------------------------------------------------------------

    def _run(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Transmit):
                self._send(out)
            elif isinstance(out, IncomingCall):
                self._incoming(out)
            elif isinstance(out, CallSignal):
                delivered = self._deliver(out.session_id, dict(out.fields))
                if not delivered and out.session_id not in self._pending:
                    log.debug("session %s gone: dropped %r", out.session_id, out.fields)
            elif isinstance(out, CallGone):
                self._pending.pop(out.session_id, None)
                owner = self._leg_owner.pop(out.session_id, None)
                if owner is not None and self._refer_legs.get(owner) == out.session_id:
                    del self._refer_legs[owner]
            elif isinstance(out, RegistrationState):
                if out.registered:
                    log.info("registered %s for %d s", out.key, out.expires)
                else:
                    log.log(
                        logging.INFO if out.code < 300 else logging.WARNING,
                        "%s: %s (%d)",
                        out.key,
                        "unregistered" if out.code < 300 else "registration failed",
                        out.code,
                    )
        self._arm()

    def _send(self, out: Transmit) -> None:
        transport, host, port = out.peer
        if transport == "UDP":
            if self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(out.data, (host, port))
            return
        conn = self._tcp.get(out.peer)
        if conn is not None:
            conn.write(out.data)
            return
        waiting = self._connecting.get(out.peer)
        if waiting is not None:  # a connection is being made: it sends this too
            waiting.append(out.data)
            return
        self._connecting[out.peer] = [out.data]
        self._spawn(self._connect_and_send(out.peer))

    async def _connect_and_send(self, peer: Peer) -> None:
        """Connect to ``peer`` (TCP, or TLS checking its certificate) and send what waits."""
        transport, host, port = peer
        try:
            if transport == "TLS":
                _, protocol = await self._loop.create_connection(
                    lambda: _TcpConnection(self, "TLS"),
                    host,
                    port,
                    ssl=self._client_tls or client_tls_context(),
                    server_hostname=self._tls_names.get((host, port), host),
                    ssl_handshake_timeout=_TLS_HANDSHAKE_S,
                )
            else:
                _, protocol = await self._loop.create_connection(
                    lambda: _TcpConnection(self), host, port
                )
        except (OSError, ValueError) as exc:  # refused, unreachable, certificate not trusted
            self._connecting.pop(peer, None)
            log.warning("SIP over %s to %s:%d failed: %s", transport, host, port, exc)
            if not self._closed:
                self._run(self.agent.transport_failed(peer, self._loop.time()))
            return
        for data in self._connecting.pop(peer, []):
            protocol.write(data)

    def _arm(self) -> None:
        deadline = self.agent.next_deadline()
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run(self.agent.tick(self._loop.time()))

    # --- inbound calls ---------------------------------------------------------------------

    def _incoming(self, call: IncomingCall) -> None:
        now = self._loop.time()
        handler = self.config.handler
        if handler is None:
            self._run(self.agent.reject(call.session_id, 503, "No invite handler configured", now))
            return
        if isinstance(handler, PlaybookHandler):
            self._pending[call.session_id] = call
            self._spawn(self._start_playbook(call, handler))
            return
        if self.webhook is None:
            self._run(self.agent.reject(call.session_id, 503, "No invite handler configured", now))
            return
        self._pending[call.session_id] = call
        self._spawn(self._notify(call))

    async def _start_playbook(self, call: IncomingCall, handler: PlaybookHandler) -> None:
        """Run the call's playbook with no client: its session accepts the call by itself."""
        from activecall.playbook.handler import PlaybookUnavailable, playbook_for_call

        try:  # reading and checking the file is off the loop
            path = await asyncio.to_thread(playbook_for_call, handler, call.caller, call.callee)
        except PlaybookUnavailable as exc:
            log.warning("call %s refused: %s", call.session_id, exc)
            self._pending.pop(call.session_id, None)
            self._run(self.agent.reject(call.session_id, 503, exc.reason, self._loop.time()))
            return
        if call.session_id not in self._pending:
            return  # cancelled, timed out or refused (draining) meanwhile
        extra = {"playbook": path, "playbookStart": "accept"}
        try:
            self.directory.open_call(
                "sip", CallParams(session_id=call.session_id), _NoClient(), extra
            )
        except Exception as exc:  # draining, no free worker
            log.warning("call %s refused: cannot start its session: %s", call.session_id, exc)
            self._pending.pop(call.session_id, None)
            self._run(
                self.agent.reject(call.session_id, 503, "Service Unavailable", self._loop.time())
            )

    async def _notify(self, call: IncomingCall) -> None:
        assert self.webhook is not None
        payload = invite_payload(
            dialog_id=call.session_id,
            created_at=datetime.now(UTC),
            caller=call.caller,
            callee=call.callee,
            headers=call.headers,
            offer=call.offer,
        )
        try:
            await self.webhook.notify(payload)
        except WebhookError as exc:
            log.warning("webhook for %s failed: %s", call.session_id, exc)
            now = self._loop.time()
            self._run(self.agent.reject(call.session_id, 503, "Webhook Failed", now))

    # --- outbound calls --------------------------------------------------------------------

    async def _invite(self, session_id: str, record: dict[str, Any]) -> None:
        option = record.get("sip") if isinstance(record.get("sip"), dict) else {}
        assert isinstance(option, dict)
        try:
            route = self.route(
                _str(record.get("callee")), _str(record.get("caller")) or None, option
            )
            transport, host, port = call_target(route.callee)
            if not _is_ip(host):
                infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                self._remember_name(str(infos[0][4][0]), port, host)
                host = str(infos[0][4][0])
        except (ValueError, UriError, OSError) as exc:  # RoutingError is a ValueError
            self._reject(session_id, 404 if isinstance(exc, OSError) else 400, str(exc))
            return
        try:
            outputs = self.agent.invite(
                session_id,
                target=(transport, host, port),
                callee=route.callee,
                caller=route.caller,
                sdp=_str(record.get("sdp")),
                now=self._loop.time(),
                credentials=route.credentials,
                headers=_headers(option.get("headers")),
                contact=None
                if route.contact is None
                else functools.partial(apply_contact, rewrite=route.contact),
            )
        except ValueError as exc:  # RoutingError from the Contact rewrite included
            self._reject(session_id, 400, str(exc))
            return
        self._run(outputs)

    def route(
        self, callee: str, caller: str | None, sip: Mapping[str, Any] | None = None
    ) -> OutboundRoute:
        """An outgoing leg after ``rewrites``, ``trunk_rules`` and the ``register_users``
        credentials (:func:`activecall.sip.routing.route_outbound`); ``sip`` is the leg's
        ``SipOption``. Raises ``RoutingError`` (a ``ValueError``)."""
        route = route_outbound(
            self.config,
            callee=callee,
            caller=caller,
            sip=sip,
            default_caller_host=self._contact_host(_uri_host(callee)),
        )
        if route.rewrite is not None or route.trunk_rule is not None:
            log.info(
                "outgoing leg to %s routed to %s (rewrites[%s], trunk_rules[%s])",
                callee,
                route.callee,
                route.rewrite,
                route.trunk_rule,
            )
        return route

    async def _register(self, user: RegisterUser) -> None:
        """Keep ``user`` registered (``register_users``): the agent refreshes and retries."""
        key = _registration_key(user)
        try:
            transport, host, port = call_target(
                user.server
                if user.server.lower().startswith(("sip:", "sips:"))
                else f"sip:{user.server}"
            )
            target = host
            if not _is_ip(host):
                infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
                target = str(infos[0][4][0])
                self._remember_name(target, port, host)
            aor = f"sip:{user.username}@{host}" + (f":{port}" if port != 5060 else "")
            credential = user.credential
            credentials = (
                (credential.username or user.username, credential.password)
                if credential is not None and credential.password
                else None
            )
            outputs = self.agent.register(
                key,
                registrar=(transport, target, port),
                aor=aor,
                now=self._loop.time(),
                credentials=credentials,
                display_name=user.display_name,
            )
        except (ValueError, UriError, OSError) as exc:
            log.error("register_users %s: cannot register: %s", key, exc)
            return
        self._run(outputs)

    def _reject(self, session_id: str, code: int, reason: str) -> None:
        self._deliver(session_id, {"event": "reject", "code": code, "reason": reason})

    def place_call(self, callee: str) -> None:
        """``--call``: an outbound call with no client; with a playbook handler it runs the
        playbook (``--handler file.md``), else it is answered and then waits."""
        from activecall.playbook.handler import PlaybookUnavailable, playbook_for_call
        from activecall.protocol import CallOption, InviteCommand

        handler = self.config.handler
        extra: dict[str, Any] = {}
        if isinstance(handler, PlaybookHandler):
            try:
                path = playbook_for_call(handler, "", callee)
            except PlaybookUnavailable as exc:
                log.error("--call %s: not placed: %s", callee, exc)
                return
            extra = {
                "playbook": path,
                "playbookStart": "invite",
                "playbookOption": {"callee": callee},
            }
        params = CallParams(session_id=f"c.{uuid.uuid4()}", dump=bool(extra))
        try:
            handle = self.directory.open_call("sip", params, _NoClient(), extra)
        except Exception as exc:
            log.error("--call %s: cannot start the call: %s", callee, exc)
            return
        log.info("--call %s: session %s", callee, params.session_id)
        if not extra:  # a playbook call sends its own invite
            handle.on_text(InviteCommand(option=CallOption(callee=callee)).to_json())

    # --- addresses -------------------------------------------------------------------------

    def _contact_host(self, peer_host: str) -> str:
        """The address peers reach us at: external_ip, the bound address, or the interface
        that routes to them."""
        chosen = _specific(self.config.external_ip) or _specific(self.config.addr)
        return chosen or self._towards(peer_host)

    def _towards(self, host: str) -> str:
        found = self._near.get(host)
        if found is None:
            found = local_ip_towards(host)
            if len(self._near) < 1024:
                self._near[host] = found
        return found

    def _media(self, peer_host: str | None) -> dict[str, Any]:
        """The ``media`` open params: where the worker binds RTP and what it advertises."""
        config = self.config
        bind = _specific(config.rtp_bind_ip)
        ip = (
            _specific(config.external_ip)
            or bind
            or _specific(config.addr)
            or self._towards(peer_host or "")
        )
        return {
            "ip": ip,
            "bindIp": bind or "0.0.0.0",
            "ports": [config.rtp_start_port, config.rtp_end_port],
            "workers": config.workers,
            "codecs": list(config.codecs),
            "latching": config.enable_rtp_latching,
            "srtp": config.enable_srtp,
        }

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: SipService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.service.datagram(data, addr)
        except Exception:  # one datagram must never take the listener down
            log.exception("SIP datagram from %s failed", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)  # ICMP unreachable for an earlier send


class _TcpConnection(asyncio.Protocol):
    """One SIP stream connection, over TCP or (``kind="TLS"``, after the handshake) TLS."""

    def __init__(self, service: SipService, kind: str = "TCP") -> None:
        self.service = service
        self.parser = SipStreamParser()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer = (kind, "", 0)
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not asyncio.Transport instances, only alike.
        self.transport = cast(asyncio.Transport, transport)
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = (self.peer[0], str(host), int(port))
        self.service._tcp[self.peer] = self

    def data_received(self, data: bytes) -> None:
        if self.finished:
            return  # the framing was lost: what follows is read and dropped
        try:
            self.service.stream_items(self, self.parser.feed(data))
        except Exception:
            log.exception("SIP over TCP from %s failed", self.peer)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.service._tcp.get(self.peer) is self:
            del self.service._tcp[self.peer]

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def finish(self) -> None:
        """End a connection whose framing is lost, after the answer already written.

        Closing at once would reset it (the peer's unread bytes are still queued here) and a
        reset may discard that answer; instead send FIN, drop what still comes, and close when
        the peer does (or after a few seconds).
        """
        if self.finished or self.transport is None:
            return
        self.finished = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(_FINISH_WAIT_S, self.close)


def _registration_key(user: RegisterUser) -> str:
    return f"{user.username}@{user.server}"


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _uri_host(uri: str) -> str:
    """The host of a SIP URI, ``""`` when it has none we can read."""
    try:
        parsed = parse_uri(uri)
    except UriError:
        return ""
    return parsed.host.strip("[]") if isinstance(parsed, SipUri) else ""


def _headers(value: Any) -> Mapping[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}
