"""SIP over TLS and SDES-SRTP against real peers: Python's ssl, and baresip.

* The TLS contexts load real PEM files made here (a CA and a certificate it signs for
  127.0.0.1, with ``cryptography``); every kind of bad file is a start-up error naming it.
* A :class:`SipService` in this process listens on TLS: peers whose handshake fails (plain
  text on the TLS port, a client that does not trust us, one that hangs up mid-handshake) lose
  their connection, and the next peer's OPTIONS over TLS is answered with ``Via: .../TLS``.
* baresip (TLS transport, ``mediaenc=srtp-mand``: ``RTP/SAVP`` with ``a=crypto``) calls the
  node over TLS; the webhook application accepts and ``play``s a tone that baresip must hear
  through SRTP, and baresip's speech must reach the node's VAD. The node then calls baresip
  over TLS (``sips:``) with ``sip.enable_srtp``, and a baresip whose certificate the node does
  not trust is refused at once (503) with nothing sent in clear.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from websockets.asyncio.client import connect

from activecall.config import Config
from activecall.sip.agent import CallSignal, IncomingCall, Output, SipAgent, Transmit
from activecall.sip.message import SipResponse, parse
from activecall.supervisor.sip import (
    SipService,
    TlsSetupError,
    call_target,
    client_tls_context,
    server_tls_context,
)
from tests.supervisor.sip_helpers import WORKERS, SipNode, event_names, free_port, webhook_app
from tests.supervisor.test_sip_peers import (
    TONE_FRAMES,
    Baresip,
    _play_tone_on_answer,
    _played,
    dial_in,
    tone,
    tone_frames,
    write_wav,
)

# --- certificates ---------------------------------------------------------------------------


class Pki:
    """A test CA and PEM files it signs: ``ca.pem``, and per name ``<name>.crt/.key/.pem``
    (the ``.pem`` holds both, as baresip's ``sip_certificate`` wants)."""

    def __init__(self, root: Path, ca_name: str = "activecall test CA") -> None:
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.ca_name = name
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca = root / "ca.pem"
        self.ca.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str) -> tuple[Path, Path, Path]:
        """A server certificate for 127.0.0.1 (and ``localhost``): cert, key, and both."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        paths = (self.root / f"{name}.crt", self.root / f"{name}.key", self.root / f"{name}.pem")
        paths[0].write_bytes(cert_pem)
        paths[1].write_bytes(key_pem)
        paths[2].write_bytes(cert_pem + key_pem)
        return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


# --- the TLS contexts -----------------------------------------------------------------------


def test_good_files_make_contexts_that_complete_a_handshake(pki: Pki, tmp_path: Path) -> None:
    cert, key, _ = pki.issue("node")
    server = server_tls_context(str(cert), str(key))
    client = client_tls_context(str(pki.ca))
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname

    async def handshake() -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            done.set_result((await reader.readline()).decode())
            writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = srv.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"
        )
        writer.write(b"hello\n")
        result = await asyncio.wait_for(done, 5)
        writer.close()
        srv.close()
        await srv.wait_closed()
        return result

    assert asyncio.run(handshake()) == "hello\n"


def test_each_bad_tls_file_is_a_start_up_error_naming_it(pki: Pki, tmp_path: Path) -> None:
    cert, key, _ = pki.issue("node")
    _, other_key, _ = pki.issue("other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    missing = tmp_path / "missing.pem"
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    bad_cert = tmp_path / "bad.crt"
    bad_cert.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    )
    cases = [
        ((cert, bad_key), f"tls_key_file {bad_key}: not a valid PEM private key"),
        ((bad_cert, key), f"tls_cert_file {bad_cert}: not a valid PEM certificate"),
        ((missing, key), f"tls_cert_file {missing}: cannot read it"),
        ((cert, missing), f"tls_key_file {missing}: cannot read it"),
        ((garbage, key), f"tls_cert_file {garbage}: no PEM certificate"),
        ((cert, garbage), f"tls_key_file {garbage}: no PEM private key"),
        ((cert, other_key), f"tls_key_file {other_key} is not the key of tls_cert_file {cert}"),
    ]
    for (cert_file, key_file), message in cases:
        with pytest.raises(TlsSetupError) as caught:
            server_tls_context(str(cert_file), str(key_file))
        assert str(caught.value).startswith(message), (str(caught.value), message)
    with pytest.raises(TlsSetupError, match=f"tls_ca_file {garbage}: cannot be loaded"):
        client_tls_context(str(garbage))
    with pytest.raises(TlsSetupError, match=f"tls_ca_file {missing}: cannot be loaded"):
        client_tls_context(str(missing))


def test_the_server_refuses_to_start_on_a_bad_key_and_says_which_file(
    pki: Pki, tmp_path: Path
) -> None:
    cert, _, _ = pki.issue("node")
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    (tmp_path / "bad.toml").write_text(
        f'http_addr = "127.0.0.1:{free_port()}"\naddr = "127.0.0.1"\n'
        f"udp_port = {free_port(socket.SOCK_DGRAM)}\ntls_port = {free_port()}\n"
        f'tls_cert_file = "{cert}"\ntls_key_file = "{bad_key}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "activecall", "serve", "--conf", "bad.toml", *WORKERS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert f"{bad_key}" in done.stderr and "tls_" in done.stderr, done.stderr[-2000:]


# --- addressing: targets, Via and Contact over TLS --------------------------------------------


@pytest.mark.parametrize(
    ("callee", "target"),
    [
        ("sips:bob@example.com", ("TLS", "example.com", 5061)),
        ("sips:bob@192.0.2.7:5081", ("TLS", "192.0.2.7", 5081)),
        ("sip:bob@192.0.2.7;transport=tls", ("TLS", "192.0.2.7", 5060)),
        ("sips:bob@192.0.2.7;transport=tcp", ("TLS", "192.0.2.7", 5061)),
        ("sip:bob@192.0.2.7;transport=TCP", ("TCP", "192.0.2.7", 5060)),
        ("sip:bob@[2001:db8::1]:5070", ("UDP", "2001:db8::1", 5070)),
    ],
)
def test_call_targets(callee: str, target: tuple[str, str, int]) -> None:
    assert call_target(callee) == target


@pytest.mark.parametrize(
    ("callee", "message"),
    [
        ("sips:bob@192.0.2.7;transport=udp", "transport=udp is not supported for sips:"),
        ("sip:bob@192.0.2.7;transport=sctp", "transport=sctp is not supported for sip:"),
        ("tel:+15551234567", "must be a sip: or sips: URI"),
    ],
)
def test_targets_we_cannot_reach_are_clear_errors(callee: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call_target(callee)


def _agent() -> SipAgent:
    agent = SipAgent(contact_host=lambda host: "192.0.2.10", port=5060)
    agent.tls_port = 5061
    return agent


def _sent(outputs: list[Output]) -> list[Any]:
    return [parse(o.data) for o in outputs if isinstance(o, Transmit)]


@pytest.mark.parametrize(
    ("callee", "contact"),
    [
        ("sips:bob@192.0.2.7", "sips:agent@192.0.2.10:5061"),
        ("sip:bob@192.0.2.7;transport=tls", "sip:agent@192.0.2.10:5061;transport=tls"),
    ],
)
def test_an_invite_over_tls_names_the_tls_port_and_scheme(callee: str, contact: str) -> None:
    agent = _agent()
    target = call_target(callee)
    outputs = agent.invite(
        "c1", target=target, callee=callee, caller="sip:agent@192.0.2.10", sdp="", now=0.0
    )
    (invite,) = _sent(outputs)
    assert [o.peer for o in outputs if isinstance(o, Transmit)] == [target]
    assert str(invite.uri) == callee
    assert (invite.top_via.transport, invite.top_via.host, invite.top_via.port) == (
        "TLS",
        "192.0.2.10",
        5061,
    )
    assert str(invite.contacts[0].uri) == contact
    # No retransmissions on a reliable transport (RFC 3261 §17.1.1.2): nothing due at 0.5 s.
    assert agent.tick(0.6) == []


SAVP_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
)


def test_an_inbound_sips_call_is_answered_with_a_sips_contact() -> None:
    agent = _agent()
    peer = ("TLS", "192.0.2.1", 40123)
    invite = (
        "INVITE sips:bob@192.0.2.10 SIP/2.0\r\n"
        "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-1;rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sips:alice@192.0.2.1>;tag=a1\r\n"
        "To: <sips:bob@192.0.2.10>\r\nCall-ID: tls-1@192.0.2.1\r\nCSeq: 1 INVITE\r\n"
        "Contact: <sips:alice@192.0.2.1:5061>\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(SAVP_OFFER)}\r\n\r\n{SAVP_OFFER}"
    )
    out = agent.receive(invite.encode(), peer, 0.0)
    (call,) = [o for o in out if isinstance(o, IncomingCall)]
    accepted = agent.accept(call.session_id, "", 0.1)
    (ok,) = _sent(accepted)
    assert ok.status == 200 and str(ok.contacts[0].uri) == "sips:activecall@192.0.2.10:5061"
    # The answer goes back on the caller's connection.
    assert [o.peer for o in accepted if isinstance(o, Transmit)] == [peer]


def test_a_connection_that_cannot_be_made_fails_the_invite_with_503() -> None:
    agent = _agent()
    target = call_target("sips:bob@192.0.2.7")
    agent.invite("c1", target=target, callee="sips:bob@192.0.2.7", caller=None, sdp="", now=0.0)
    out = agent.transport_failed(target, 0.1)
    (signal,) = [o for o in out if isinstance(o, CallSignal)]
    assert dict(signal.fields) == {"event": "reject", "code": 503, "reason": "Unreachable"}
    assert "c1" not in agent
    assert agent.transport_failed(("TLS", "192.0.2.99", 5061), 0.2) == []


# --- TLS listener in this process -----------------------------------------------------------

OPTIONS = (
    "OPTIONS sip:activecall@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-{tag};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
    "To: <sip:activecall@127.0.0.1>\r\n"
    "Call-ID: {tag}@probe\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n"
)


async def _options_over_tls(port: int, ca: Path, tag: str) -> SipResponse:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_tls_context(str(ca)), server_hostname="127.0.0.1"
    )
    writer.write(OPTIONS.format(tag=tag).encode())
    data = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in data:
            data += await reader.read(4096)
    writer.close()
    response = parse(data)
    assert isinstance(response, SipResponse)
    return response


def test_failed_handshakes_do_not_disturb_the_tls_listener(pki: Pki) -> None:
    cert, key, _ = pki.issue("node")
    config = Config(
        addr="127.0.0.1",
        udp_port=0,
        tls_port=0,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        handler=None,
    )

    async def scenario() -> tuple[list[str], SipResponse, SipResponse]:
        service = SipService(config, None)  # type: ignore[arg-type]  # no calls here
        await service.start()
        port = service.tls_port
        assert port is not None and port != service.port
        failures = []
        try:
            first = await _options_over_tls(port, pki.ca, "first")
            # 1. plain SIP on the TLS port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(OPTIONS.format(tag="plain").encode())
            async with asyncio.timeout(5):
                failures.append(f"plain: closed with {await reader.read()!r}")
            writer.close()
            # 2. a client that does not trust our certificate (the system store only)
            try:
                await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ssl.create_default_context(), server_hostname="x"
                )
            except ssl.SSLCertVerificationError as exc:
                failures.append(f"untrusted: {exc.verify_message}")
            # 3. half a ClientHello, then gone
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            failures.append("half hello")
            second = await _options_over_tls(port, pki.ca, "second")
        finally:
            await service.close(timeout=0)
        return failures, first, second

    failures, first, second = asyncio.run(scenario())
    assert failures[0] == "plain: closed with b''", failures
    assert failures[1].startswith("untrusted:"), failures
    for response in (first, second):
        assert response.status == 200, response
        assert response.top_via.transport == "TLS"


# --- baresip over TLS with SRTP ---------------------------------------------------------------


class TlsBaresip(Baresip):
    """:class:`Baresip` with SIP over TLS (``certificate``: its cert and key in one PEM; ``ca``:
    whom it trusts) and mandatory SDES-SRTP (``RTP/SAVP``)."""

    def __init__(self, cwd: Path, user: str, source: Path, certificate: Path, ca: Path) -> None:
        super().__init__(cwd, user, source)
        self.certificate = certificate
        self.ca = ca

    def _configure(self) -> None:
        super()._configure()
        config = self.conf / "config"
        config.write_text(
            config.read_text()
            + f"\nsip_certificate\t{self.certificate}\nsip_cafile\t\t{self.ca}\n"
            + "module\t\t\tsrtp.so\n"
        )
        (self.conf / "accounts").write_text(
            f"<sip:{self.user}@127.0.0.1;transport=tls>;regint=0;answermode=auto;"
            "mediaenc=srtp-mand\n"
        )

    @property
    def tls_port(self) -> int:
        """baresip's SIP-over-TLS port: its SIP port + 1."""
        return self.sip_port + 1


class TlsNode(SipNode):
    """:class:`SipNode` with a TLS listener (``cert``/``key``) that trusts ``ca`` outbound,
    and ``enable_srtp`` on."""

    def __init__(self, cwd: Path, hook_port: int, cert: Path, key: Path, ca: Path) -> None:
        self.tls = (cert, key, ca)
        super().__init__(cwd, hook_port)

    def _start(self, call: str | None, extra: str) -> bool:
        self.http_port = free_port()
        while self.http_port == self.hook_port:
            self.http_port = free_port()
        self.sip_port = free_port(socket.SOCK_DGRAM)
        self.tls_port = free_port()
        rtp = 20000 + (self.sip_port % 200) * 100
        cert, key, ca = self.tls
        (self.cwd / "activecall.toml").write_text(
            f'http_addr = "127.0.0.1:{self.http_port}"\n'
            f'addr = "127.0.0.1"\nudp_port = {self.sip_port}\n'
            f"rtp_start_port = {rtp}\nrtp_end_port = {rtp + 99}\n"
            f'tls_port = {self.tls_port}\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
            f'tls_ca_file = "{ca}"\nenable_srtp = true\n'
            'accept_timeout = "10s"\n'
            '[handler]\ntype = "webhook"\n'
            f'url = "http://127.0.0.1:{self.hook_port}/invite"\n'
            '[callrecord]\ntype = "local"\nroot = "cdr"\n'
        )
        self.log = (self.cwd / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "activecall", "serve", "--conf", "activecall.toml", *WORKERS],
            cwd=self.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.logs():
                    return False
                raise AssertionError("server exited:\n" + self.logs())
            if "(TLS)" in self.logs() and self.health()["workers"] == 2:
                return True
            if "SIP is off" in self.logs() or "SIP over TLS is off" in self.logs():
                return False
            time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.logs())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsNode]:
    cert, key, _ = pki.issue("node")
    srv = TlsNode(tmp_path_factory.mktemp("node"), free_port(), cert, key, pki.ca)
    yield srv
    assert srv.stop() == 0, srv.logs()


@pytest.fixture(scope="module")
def speech_8k_wav(tmp_path_factory: pytest.TempPathFactory, speech_16k: Any) -> Path:
    """What baresip says: 20 s of the speech file at 8 kHz (longer than any call here)."""
    from activecall._native.resample import Resampler

    narrow = Resampler(16000, 8000).process(speech_16k[: 20 * 16000])
    return write_wav(tmp_path_factory.mktemp("audio") / "speech_8k.wav", narrow, 8000)


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """What activecall plays: 1.5 s of a 1 kHz tone."""
    return write_wav(tmp_path / "tone.wav", tone(1.5), 16000)


def _cdr(node: SipNode, session_id: str) -> dict[str, Any]:
    for path in (node.cwd / "cdr").rglob("*.json"):
        record = json.loads(path.read_text())
        if record.get("callId") == session_id or session_id in path.name:
            return dict(record)
    raise AssertionError(f"no CDR for {session_id}: {list((node.cwd / 'cdr').rglob('*'))}")


def test_baresip_calls_over_tls_with_srtp_and_audio_flows_both_ways(
    node: TlsNode, pki: Pki, tmp_path: Path, speech_8k_wav: Path, tone_wav: Path
) -> None:
    _, _, phone_pem = pki.issue("alice")

    def from_alice(payload: dict[str, Any]) -> bool:
        return bool(payload["caller"].startswith("sip:alice@"))

    async def scenario() -> tuple[TlsBaresip, dict[str, Any], list[dict[str, Any]]]:
        react = _play_tone_on_answer(tone_wav)
        async with (
            TlsBaresip(tmp_path, "alice", speech_8k_wav, phone_pem, pki.ca) as phone,
            webhook_app(node, {"vad": {}}, react, wants=from_alice) as app,
        ):
            established, events = await dial_in(
                phone, node, app, node.tls_port, lambda answer: _forge_srtp(answer["sdp"])
            )
        return phone, established, events

    phone, established, events = asyncio.run(scenario())
    assert established["direction"] == "outgoing", established
    names = event_names(events)
    assert names[:3] == ["incoming", "trackStart", "answer"], names
    assert "error" not in names, events
    offer, answer = events[0]["sdp"], events[2]["sdp"]
    assert "RTP/SAVP" in offer and "a=crypto:" in offer, offer
    assert "RTP/SAVP" in answer and "a=crypto:" in answer, answer
    assert names.count("speaking") >= 1 and names.count("silence") >= 1, names
    heard, rate = phone.heard()
    frames = tone_frames(heard, rate)
    assert TONE_FRAMES[0] <= frames <= TONE_FRAMES[1], (frames, rate, phone.log())
    _check_srtp_counters(node, events[0]["trackId"], forged=FORGED)
    assert "transport=tls" in phone.log_path.read_text()  # baresip's side of the TLS call


FORGED = 5


def _forge_srtp(answer_sdp: str) -> None:
    """Send the node's media ports packets that look like SRTP/SRTCP but carry no valid tag
    (as someone on the path who does not have the key would): they must be dropped."""
    port = int(re.search(r"m=audio (\d+) ", answer_sdp).group(1))  # type: ignore[union-attr]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for seq in range(FORGED):
            header = bytes([0x80, 0x00, 0x7F, seq, 0, 0, 0, seq, 0xDE, 0xAD, 0xBE, 0xEF])
            sock.sendto(header + bytes(160) + bytes(10), ("127.0.0.1", port))
        rtcp = bytes([0x80, 0xC9, 0x00, 0x01, 0xDE, 0xAD, 0xBE, 0xEF]) + bytes(14)
        sock.sendto(rtcp, ("127.0.0.1", port + 1))


def _check_srtp_counters(node: SipNode, session_id: str, forged: int = 0) -> None:
    """The call's media went through the SRTP contexts both ways; ``forged`` packets (and
    RTCP) failed authentication and were dropped."""
    srtp = _cdr(node, session_id)["extras"]["srtp"]
    assert srtp["suite"] in ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"), srtp
    assert srtp["protected"] > 50 and srtp["unprotected"] > 50, srtp
    assert srtp["authFailures"] >= forged and srtp["authFailures"] <= forged + 1, srtp
    if forged:  # the forged SRTCP packet too (libsrtp may call it malformed, not forged)
        assert srtp["authFailures"] + srtp["otherFailures"] >= forged + 1, srtp
    assert srtp["replays"] == 0, srtp


async def _call(
    node: SipNode, option: dict[str, Any], tone_wav: Path, logs: Callable[[], str]
) -> list[dict[str, Any]]:
    """An outbound call from a ``/call/sip`` client: ``play`` the tone on ``answer``, hang up
    once it played and a speech segment was heard (or at once on ``reject``)."""
    events: list[dict[str, Any]] = []
    url = f"ws://127.0.0.1:{node.http_port}/call/sip"
    hung_up = False
    try:
        async with asyncio.timeout(25), connect(url) as ws:
            await ws.send(json.dumps({"command": "invite", "option": option}))
            async for message in ws:
                if not isinstance(message, str):
                    continue
                events.append(json.loads(message))
                if events[-1]["event"] == "answer":
                    play = {"command": "play", "url": str(tone_wav), "playId": "tone"}
                    await ws.send(json.dumps(play))
                if not hung_up and _played(events) and "silence" in event_names(events):
                    hung_up = True
                    await ws.send(json.dumps({"command": "hangup"}))
    except TimeoutError:
        raise AssertionError(f"the call did not end: {events}\n{logs()}") from None
    return events


def test_activecall_calls_baresip_over_tls_with_srtp(
    node: TlsNode, pki: Pki, tmp_path: Path, speech_8k_wav: Path, tone_wav: Path
) -> None:
    _, _, phone_pem = pki.issue("bob")

    async def scenario() -> tuple[TlsBaresip, dict[str, Any], list[dict[str, Any]]]:
        async with TlsBaresip(tmp_path, "bob", speech_8k_wav, phone_pem, pki.ca) as phone:
            callee = f"sips:bob@127.0.0.1:{phone.tls_port}"
            # The call's own sip.enable_srtp=false beats the node's enable_srtp: a plain
            # RTP/AVP offer, which this phone (srtp-mand) refuses.
            plain = {"callee": callee, "sip": {"enable_srtp": False}}
            refused = await _call(node, plain, tone_wav, lambda: phone.log() + node.logs())
            option = {"callee": callee, "caller": "sip:agent@127.0.0.1", "vad": {}}
            events = await _call(node, option, tone_wav, lambda: phone.log() + node.logs())
            established = await phone.event("CALL_ESTABLISHED")
            await phone.event("CALL_CLOSED")
        return phone, established, refused + events

    phone, established, both = asyncio.run(scenario())
    first_end = [e["event"] for e in both].index("hangup") + 1
    refused, events = both[:first_end], both[first_end:]
    assert "answer" not in event_names(refused), refused
    (reject,) = [e for e in refused if e["event"] == "reject"]
    assert reject["code"] == 488, reject  # baresip: "no common audio codecs"
    assert events[0]["event"] == "trackStart", events
    assert established["direction"] == "incoming", established
    names = event_names(events)
    assert names[0] == "trackStart" and "answer" in names, (names, phone.log())
    assert "error" not in names and "reject" not in names, events
    answer = events[names.index("answer")]["sdp"]
    assert "RTP/SAVP" in answer and "a=crypto:" in answer, answer
    assert names.count("speaking") >= 1, names
    heard, rate = phone.heard()
    frames = tone_frames(heard, rate)
    assert TONE_FRAMES[0] <= frames <= TONE_FRAMES[1], (frames, rate, phone.log())
    _check_srtp_counters(node, events[0]["trackId"])


def test_a_peer_whose_certificate_is_not_trusted_is_refused_at_once(
    node: TlsNode, tmp_path: Path, speech_8k_wav: Path, tone_wav: Path
) -> None:
    stranger = Pki(tmp_path, "a CA the node does not know")
    _, _, phone_pem = stranger.issue("mallory")

    async def scenario() -> list[dict[str, Any]]:
        async with TlsBaresip(tmp_path, "mallory", speech_8k_wav, phone_pem, stranger.ca) as phone:
            option = {"callee": f"sips:mallory@127.0.0.1:{phone.tls_port}"}
            # A 503 from the failed connection, not a 408 after 32 s of Timer B (the call's
            # 25 s limit would fail first).
            events = await _call(node, option, tone_wav, lambda: phone.log() + node.logs())
            assert not any(e.get("type") == "CALL_INCOMING" for e in phone.events), phone.events
        return events

    events = asyncio.run(scenario())
    names = event_names(events)
    assert "reject" in names and names[-1] == "hangup", events
    reject = events[names.index("reject")]
    assert reject["code"] == 503, reject
    assert "certificate verify failed" in node.logs(), node.logs()[-2000:]
