"""SRTP and SRTCP (RFC 3711) for a SIP call keyed by SDES (RFC 4568), on libsrtp.

:class:`SrtpSession` holds one libsrtp context per direction: the outbound one with our
master key, the inbound one with the remote's. It turns plain RTP/RTCP into SRTP/SRTCP and
back, so the media pipeline only ever sees plain RTP. A datagram that fails authentication,
the replay check or decryption is counted (:class:`SrtpStats`) and ``None`` is returned: the
caller drops it and nothing else changes.

Suites are named as in SDES (:data:`SUITES`); the key given is the master key followed by the
master salt, as the ``inline:`` key-params carry it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pylibsrtp

from activecall.rtp.packet import is_rtcp

__all__ = ["SUITES", "SrtpError", "SrtpSession", "SrtpStats", "key_length"]

_Policy = pylibsrtp.Policy

SUITES: dict[str, tuple[int, int]] = {
    "AES_CM_128_HMAC_SHA1_80": (_Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (_Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (_Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (_Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}
"""SDES crypto-suite name to (libsrtp profile, master key + salt length in bytes)."""


class SrtpError(ValueError):
    """A suite we do not implement, or a key of the wrong length for its suite."""


def key_length(suite: str) -> int:
    """Bytes of master key + master salt of ``suite``; :class:`SrtpError` if unknown."""
    try:
        return SUITES[suite][1]
    except KeyError:
        raise SrtpError(
            f"crypto suite {suite!r} is not supported (expected one of {', '.join(SUITES)})"
        ) from None


@dataclass(slots=True)
class SrtpStats:
    """What the contexts did: datagrams protected and unprotected, and those dropped."""

    protected: int = 0
    unprotected: int = 0
    auth_failures: int = 0
    replays: int = 0
    other_failures: int = 0

    @property
    def dropped(self) -> int:
        """Incoming datagrams dropped, for any reason."""
        return self.auth_failures + self.replays + self.other_failures

    def to_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for the CDR)."""
        return {
            "protected": self.protected,
            "unprotected": self.unprotected,
            "authFailures": self.auth_failures,
            "replays": self.replays,
            "otherFailures": self.other_failures,
        }


def _context(suite: str, key: bytes, ssrc_type: int) -> pylibsrtp.Session:
    expected = key_length(suite)
    if len(key) != expected:
        raise SrtpError(f"{suite} needs a {expected}-byte key and salt, got {len(key)} bytes")
    policy = _Policy(key=key, ssrc_type=ssrc_type, srtp_profile=SUITES[suite][0])
    # A new SSRC from the remote (re-INVITE, transfer) must not need a new context.
    return pylibsrtp.Session(policy=policy)


class SrtpSession:
    """Both directions of one SRTP stream: ``local_key`` protects, ``remote_key`` checks."""

    def __init__(self, suite: str, local_key: bytes, remote_key: bytes) -> None:
        self.suite = suite
        self.local_key = local_key
        self.remote_key = remote_key
        self._out = _context(suite, local_key, _Policy.SSRC_ANY_OUTBOUND)
        self._in = _context(suite, remote_key, _Policy.SSRC_ANY_INBOUND)
        self.stats = SrtpStats()

    def keyed_as(self, suite: str, local_key: bytes, remote_key: bytes) -> bool:
        """Whether this session already runs with these keys (a re-offer that kept them)."""
        return (suite, local_key, remote_key) == (self.suite, self.local_key, self.remote_key)

    def protect(self, data: bytes, rtcp: bool = False) -> bytes:
        """SRTP (or, with ``rtcp``, SRTCP) of a plain packet we send; :class:`SrtpError` if
        libsrtp refuses it (not a packet)."""
        try:
            out = self._out.protect_rtcp(data) if rtcp else self._out.protect(data)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"cannot protect a {len(data)}-byte packet: {exc}") from None
        self.stats.protected += 1
        return out

    def unprotect(self, data: bytes, rtcp: bool | None = None) -> bytes | None:
        """The plain packet of an incoming one, or ``None`` (counted) if it fails the checks.

        ``rtcp=None`` tells RTP from RTCP by the packet type (a multiplexed port, RFC 5761).
        """
        if rtcp is None:
            rtcp = is_rtcp(data)
        try:
            plain = self._in.unprotect_rtcp(data) if rtcp else self._in.unprotect(data)
        except pylibsrtp.Error as exc:
            text = str(exc)
            if "authentication" in text:
                self.stats.auth_failures += 1
            elif "replay" in text:
                self.stats.replays += 1
            else:
                self.stats.other_failures += 1
            return None
        self.stats.unprotected += 1
        return plain
