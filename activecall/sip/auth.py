"""HTTP digest authentication as SIP uses it (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Client side: read a 401/407 challenge and answer it (:func:`authorize` builds the retried
request). Server side: :class:`DigestChallenger` issues challenges with stateless, signed,
expiring nonces and verifies credentials. MD5, MD5-sess, SHA-256 and SHA-256-sess are
supported, with ``qop=auth``, ``qop=auth-int`` or no qop (RFC 2069 compatibility).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from activecall.sip._grammar import GrammarError, is_token
from activecall.sip.headers import AuthHeader, new_branch, parse_auth_header, parse_cseq
from activecall.sip.message import Headers, SipRequest, SipResponse, canonical_name, response_to

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "ALGORITHMS",
    "AuthError",
    "AuthResult",
    "DigestChallenge",
    "DigestChallenger",
    "DigestCredentials",
    "answer_challenge",
    "authorize",
    "digest_response",
]

ALGORITHMS: dict[str, Callable[[bytes], _Hash]] = {
    "MD5": hashlib.md5,
    "MD5-SESS": hashlib.md5,
    "SHA-256": hashlib.sha256,
    "SHA-256-SESS": hashlib.sha256,
}
"""Digest algorithms supported, by upper-case name."""

# RFC 8760 §2.4: prefer the strongest algorithm offered.
_PREFERENCE = ("SHA-256", "SHA-256-SESS", "MD5", "MD5-SESS")


class AuthError(ValueError):
    """A challenge or credentials that cannot be used (malformed, unsupported algorithm/qop)."""


def _hex(algorithm: str, data: str | bytes) -> str:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return ALGORITHMS[algorithm](raw).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1), lower-case hex."""
    alg = algorithm.upper()
    if alg not in ALGORITHMS:
        raise AuthError(f"unsupported digest algorithm {algorithm!r}")
    if (qop is not None or alg.endswith("-SESS")) and not cnonce:
        raise AuthError("qop and -sess algorithms need a cnonce")
    ha1 = _hex(alg, f"{username}:{realm}:{password}")
    if alg.endswith("-SESS"):
        ha1 = _hex(alg, f"{ha1}:{nonce}:{cnonce}")
    a2 = f"{method}:{uri}"
    if qop == "auth-int":
        a2 += ":" + _hex(alg, body)
    elif qop not in (None, "auth"):
        raise AuthError(f"unsupported qop {qop!r}")
    ha2 = _hex(alg, a2)
    if qop is None:
        return _hex(alg, f"{ha1}:{nonce}:{ha2}")
    if nc is None:
        raise AuthError("qop needs a nonce count")
    return _hex(alg, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """A ``WWW-Authenticate`` / ``Proxy-Authenticate`` Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> DigestChallenge:
        """Parse a challenge header value; raise :class:`AuthError` when unusable."""
        header = _parse_digest(value)
        realm, nonce = header.get("realm"), header.get("nonce")
        if realm is None or nonce is None:
            raise AuthError("a digest challenge needs realm and nonce")
        qop = header.get("qop")
        return cls(
            realm=realm,
            nonce=nonce,
            algorithm=header.get("algorithm") or "MD5",
            qop=tuple(q.strip() for q in qop.split(",") if q.strip()) if qop else (),
            opaque=header.get("opaque"),
            stale=(header.get("stale") or "").lower() == "true",
        )

    def __str__(self) -> str:
        items = [("realm", self.realm, True), ("nonce", self.nonce, True)]
        if self.opaque is not None:
            items.append(("opaque", self.opaque, True))
        if self.stale:
            items.append(("stale", "true", False))
        items.append(("algorithm", self.algorithm, False))
        if self.qop:
            items.append(("qop", ",".join(self.qop), True))
        return str(AuthHeader.build("Digest", items))

    @property
    def supported(self) -> bool:
        """True when this stack can answer the challenge."""
        qop_ok = not self.qop or "auth" in self.qop or "auth-int" in self.qop
        return self.algorithm.upper() in ALGORITHMS and qop_ok


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """An ``Authorization`` / ``Proxy-Authorization`` Digest credentials value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> DigestCredentials:
        """Parse a credentials header value; raise :class:`AuthError` when incomplete."""
        header = _parse_digest(value)
        found = {k: header.get(k) for k in ("username", "realm", "nonce", "uri", "response")}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            raise AuthError(f"digest credentials lack {', '.join(missing)}")
        qop, nc, cnonce = header.get("qop"), header.get("nc"), header.get("cnonce")
        if qop is not None and (nc is None or cnonce is None):
            raise AuthError("qop needs nc and cnonce")
        return cls(
            username=found["username"] or "",
            realm=found["realm"] or "",
            nonce=found["nonce"] or "",
            uri=found["uri"] or "",
            response=found["response"] or "",
            algorithm=header.get("algorithm") or "MD5",
            qop=qop,
            nc=nc,
            cnonce=cnonce,
            opaque=header.get("opaque"),
        )

    def __str__(self) -> str:
        items = [
            ("username", self.username, True),
            ("realm", self.realm, True),
            ("nonce", self.nonce, True),
            ("uri", self.uri, True),
            ("response", self.response, True),
            ("algorithm", self.algorithm, False),
        ]
        if self.qop is not None:
            items += [("qop", self.qop, False), ("nc", self.nc or "", False)]
            items.append(("cnonce", self.cnonce or "", True))
        if self.opaque is not None:
            items.append(("opaque", self.opaque, True))
        return str(AuthHeader.build("Digest", items))


def _parse_digest(value: str) -> AuthHeader:
    try:
        header = parse_auth_header(value)
    except GrammarError as exc:
        raise AuthError(str(exc)) from exc
    if header.scheme.lower() != "digest":
        raise AuthError(f"not a Digest header: {header.scheme!r}")
    return header


def answer_challenge(
    challenge: DigestChallenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> DigestCredentials:
    """Credentials answering ``challenge`` for a request ``method`` to ``uri``.

    Uses ``qop=auth`` when offered, else ``auth-int``, else no qop (RFC 2069).
    """
    if challenge.algorithm.upper() not in ALGORITHMS:
        raise AuthError(f"unsupported digest algorithm {challenge.algorithm!r}")
    if not challenge.qop:
        qop = None
    elif "auth" in challenge.qop:
        qop = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    else:
        raise AuthError(f"unsupported qop {challenge.qop!r}")
    needs_cnonce = qop is not None or challenge.algorithm.upper().endswith("-SESS")
    if needs_cnonce and cnonce is None:
        cnonce = secrets.token_hex(8)
    nc_text = f"{nc:08x}" if qop is not None else None
    response = digest_response(
        algorithm=challenge.algorithm,
        username=username,
        realm=challenge.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=challenge.nonce,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
        body=body,
    )
    return DigestCredentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=nc_text,
        cnonce=cnonce if needs_cnonce else None,
        opaque=challenge.opaque,
    )


def authorize(
    request: SipRequest,
    challenge: SipResponse,
    *,
    username: str,
    password: str,
    cnonce: str | None = None,
) -> SipRequest:
    """The request to retry after a 401/407 (RFC 3261 §22.2, §8.1.3.5).

    A copy of ``request`` with CSeq + 1, a new Via branch and one credentials header per realm
    challenged (the strongest supported algorithm for each). Raises :class:`AuthError` when no
    challenge can be answered.
    """
    if challenge.status == 401:
        ask, answer = "www-authenticate", "Authorization"
    elif challenge.status == 407:
        ask, answer = "proxy-authenticate", "Proxy-Authorization"
    else:
        raise AuthError(f"{challenge.status} is not a challenge")
    best: dict[str, DigestChallenge] = {}
    for value in challenge.headers.get_all(ask):
        try:
            offer = DigestChallenge.parse(value)
        except AuthError:
            continue  # another scheme, or a broken challenge next to a usable one
        if not offer.supported:
            continue
        current = best.get(offer.realm)
        if current is None or _rank(offer) < _rank(current):
            best[offer.realm] = offer
    if not best:
        raise AuthError("no supported digest challenge")
    # Credentials for other realms stay (RFC 3261 §22.3: a proxy's and the UAS's may both be
    # needed); those for a realm challenged again are replaced.
    headers = Headers(
        (n, v)
        for n, v in request.headers
        if canonical_name(n) != answer.lower() or _realm_of(v) not in best
    )
    retried = SipRequest(request.method, request.uri, headers, request.body)
    cseq = parse_cseq(headers.get("cseq") or "")
    headers.set("CSeq", f"{cseq.seq + 1} {cseq.method}")
    # A new transaction: same Via except for a fresh branch (RFC 3261 §8.1.3.5).
    retried.set_top_via(request.top_via.with_param("branch", new_branch()))
    for offer in best.values():
        credentials = answer_challenge(
            offer,
            username=username,
            password=password,
            method=request.method,
            uri=str(request.uri),
            cnonce=cnonce,
            body=request.body,
        )
        headers.add(answer, str(credentials))
    return retried


def _realm_of(credentials: str) -> str | None:
    try:
        return DigestCredentials.parse(credentials).realm
    except AuthError:
        return None


def _rank(challenge: DigestChallenge) -> int:
    alg = challenge.algorithm.upper()
    return _PREFERENCE.index(alg) if alg in _PREFERENCE else len(_PREFERENCE)


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of checking a request's credentials.

    ``ok`` with the ``username``; otherwise ``stale`` (right password, expired nonce: challenge
    again with ``stale=true``) or a ``reason`` for the log.
    """

    ok: bool
    username: str | None = None
    stale: bool = False
    reason: str = ""


class DigestChallenger:
    """Server side of digest authentication for one realm.

    Nonces are ``base64(timestamp, random, HMAC)`` under a per-instance secret, so no state is
    kept per challenge; a bounded table of nonce counts rejects replayed ``nc`` values.
    ``now`` is any monotonic clock in seconds, passed in by the caller.
    """

    def __init__(
        self,
        realm: str,
        *,
        algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
        qop: str | None = "auth",
        nonce_lifetime: float = 300.0,
        secret: bytes | None = None,
        proxy: bool = False,
        max_tracked_nonces: int = 10000,
    ) -> None:
        for alg in algorithms:
            if alg.upper() not in ALGORITHMS:
                raise ValueError(f"unsupported digest algorithm {alg!r}")
        if qop not in (None, "auth", "auth-int"):
            raise ValueError(f"unsupported qop {qop!r}")
        self.realm = realm
        self.algorithms = algorithms
        self.qop = qop
        self.nonce_lifetime = nonce_lifetime
        self.proxy = proxy
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._max_tracked = max_tracked_nonces

    def new_nonce(self, now: float) -> str:
        """A fresh signed nonce stamped with ``now``."""
        body = struct.pack("!d", now) + secrets.token_bytes(8)
        mac = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(body + mac).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return None
        if len(raw) != 32:
            return None
        body, mac = raw[:16], raw[16:]
        expected = hmac.new(self._secret, body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            return None
        return float(struct.unpack("!d", body[:8])[0])

    def challenges(self, now: float, *, stale: bool = False) -> list[DigestChallenge]:
        """One challenge per algorithm, strongest first, sharing a fresh nonce."""
        nonce = self.new_nonce(now)
        qop = (self.qop,) if self.qop else ()
        return [
            DigestChallenge(self.realm, nonce, alg, qop, stale=stale) for alg in self.algorithms
        ]

    def challenge(self, request: SipRequest, now: float, *, stale: bool = False) -> SipResponse:
        """The 401 (or 407 for a proxy) answering ``request``."""
        status, header = (407, "Proxy-Authenticate") if self.proxy else (401, "WWW-Authenticate")
        return response_to(
            request,
            status,
            headers=[(header, str(c)) for c in self.challenges(now, stale=stale)],
        )

    def verify(
        self, request: SipRequest, password_for: Callable[[str], str | None], now: float
    ) -> AuthResult:
        """Check the credentials in ``request`` for this realm.

        ``password_for(username)`` returns the user's password, or ``None`` for an unknown user.
        """
        name = "proxy-authorization" if self.proxy else "authorization"
        reason = "no credentials for this realm"
        for value in request.headers.get_all(name):
            try:
                credentials = DigestCredentials.parse(value)
            except AuthError as exc:
                reason = str(exc)
                continue
            if credentials.realm != self.realm:
                continue
            if credentials.uri != str(request.uri):
                return AuthResult(False, credentials.username, reason="uri does not match")
            password = password_for(credentials.username)
            if password is None:
                return AuthResult(False, credentials.username, reason="unknown user")
            return self.check(
                credentials,
                method=request.method,
                password=password,
                now=now,
                body=request.body,
            )
        return AuthResult(False, reason=reason)

    def check(
        self,
        credentials: DigestCredentials,
        *,
        method: str,
        password: str,
        now: float,
        body: bytes = b"",
    ) -> AuthResult:
        """Check one set of credentials against ``password`` for a request ``method``."""
        user = credentials.username
        if credentials.algorithm.upper() not in {a.upper() for a in self.algorithms}:
            return AuthResult(False, user, reason="algorithm not offered")
        if self.qop is not None and credentials.qop != self.qop:
            return AuthResult(False, user, reason="qop not offered")
        issued = self._nonce_time(credentials.nonce)
        if issued is None:
            return AuthResult(False, user, reason="nonce not issued here")
        nc = credentials.nc
        if credentials.qop is not None and (nc is None or len(nc) != 8 or not is_token(nc)):
            return AuthResult(False, user, reason="bad nonce count")
        try:
            expected = digest_response(
                algorithm=credentials.algorithm,
                username=user,
                realm=credentials.realm,
                password=password,
                method=method,
                uri=credentials.uri,
                nonce=credentials.nonce,
                qop=credentials.qop,
                nc=nc,
                cnonce=credentials.cnonce,
                body=body,
            )
        except AuthError as exc:
            return AuthResult(False, user, reason=str(exc))
        if not hmac.compare_digest(expected, credentials.response.lower()):
            return AuthResult(False, user, reason="wrong response")
        if now - issued > self.nonce_lifetime or now < issued:
            return AuthResult(False, user, stale=True, reason="nonce expired")
        if nc is not None and not self._fresh_count(credentials.nonce, nc):
            return AuthResult(False, user, reason="nonce count replayed")
        return AuthResult(True, user)

    def _fresh_count(self, nonce: str, nc: str) -> bool:
        try:
            count = int(nc, 16)
        except ValueError:
            return False
        last = self._seen.get(nonce, 0)
        if count <= last:
            return False
        self._seen[nonce] = count
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._max_tracked:
            self._seen.popitem(last=False)
        return True
