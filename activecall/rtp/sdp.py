"""SDP (RFC 4566) and the offer/answer model (RFC 3264) for one audio stream of a SIP call.

:class:`SessionDescription` parses and serialises a whole description: the ``v o s c t m a``
lines become fields, every other line (``i u e p b r z k`` and unknown types, every ``a=``) is
kept in order and written back. The negotiation functions are pure:

* :func:`build_offer` writes our offer from a codec list (reference §2.8 names and order);
* :func:`answer` answers a remote offer: the first audio stream with a codec we support is
  accepted and every other stream rejected (port 0); the codec is the first in the *offer's*
  m-line order that we support (offerer's preference, reference §2.8);
* :func:`parse_answer` reads the answer to an offer we sent: the codec is the first of *our*
  order present in the answer.

Payload types come from ``a=rtpmap`` (dynamic types are learned, never assumed: reference
fixes #67/#93); without an rtpmap only the static types 0 (PCMU), 8 (PCMA) and 9 (G.722) are
known. No common codec, no audio stream or an unsupported transport raises
:class:`NotAcceptable`, which a SIP adapter answers with 488.

SDES-SRTP (RFC 4568): an ``RTP/SAVP`` stream carries ``a=crypto`` lines (:class:`Crypto`);
the answerer picks the first one it can run (the offerer's preference) and answers it with
the same tag and its own key; no usable line is :class:`NotAcceptable`. With ``srtp=True``
we offer ``RTP/SAVP`` ourselves, and answer the crypto lines of a plain ``RTP/AVP`` offer
(best-effort SRTP, as baresip's ``mediaenc srtp`` offers). The keys agreed on are
:attr:`NegotiatedMedia.srtp`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from activecall.rtp.srtp import SUITES as SRTP_SUITES

__all__ = [
    "AUDIO_CODECS",
    "DIRECTIONS",
    "CodecSpec",
    "Connection",
    "Crypto",
    "Direction",
    "MediaDescription",
    "NegotiatedMedia",
    "NotAcceptable",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "SrtpKeys",
    "answer",
    "build_offer",
    "parse_answer",
    "supported_codecs",
]

Direction: TypeAlias = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")
"""The four direction attributes (RFC 3264 §5.1); ``sendrecv`` when none is given."""

_DEFAULT_PTIME = 20
# Profiles of plain RTP a SIP call can use; SRTP (SAVP) and WebRTC (UDP/TLS/...) need keys.
_PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")
_SDES_RTP = ("RTP/SAVP", "RTP/SAVPF")  # SRTP keyed in the SDP itself (RFC 4568)
_OFFERED_SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")


class SdpError(ValueError):
    """Text that is not a valid session description; the message names the bad line."""


class NotAcceptable(SdpError):
    """An offer or answer we cannot take part in (no common codec, no audio, ...): SIP 488."""

    status_code: ClassVar[int] = 488


# ----------------------------------------------------------------------------- description


@dataclass(slots=True)
class Origin:
    """The ``o=`` line: who made the description, and its id and version."""

    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    address: str = "0.0.0.0"
    net_type: str = "IN"
    addr_type: str = "IP4"

    @classmethod
    def parse(cls, value: str) -> Origin:
        """Parse the value of an ``o=`` line."""
        parts = value.split()
        if len(parts) != 6:
            raise SdpError(f"o= line needs 6 fields, got {len(parts)}: {value!r}")
        try:
            sess_id, version = int(parts[1]), int(parts[2])
        except ValueError:
            raise SdpError(f"o= session id and version must be numbers: {value!r}") from None
        return cls(parts[0], sess_id, version, parts[5], parts[3], parts[4])

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.net_type} {self.addr_type} {self.address}"
        )


@dataclass(slots=True)
class Connection:
    """A ``c=`` line: where media goes. ``suffix`` keeps a multicast ``/ttl/count``."""

    address: str
    addr_type: str = "IP4"
    net_type: str = "IN"
    suffix: str = ""

    @classmethod
    def parse(cls, value: str) -> Connection:
        """Parse the value of a ``c=`` line."""
        parts = value.split()
        if len(parts) != 3:
            raise SdpError(f"c= line needs 3 fields, got {len(parts)}: {value!r}")
        address, _, suffix = parts[2].partition("/")
        return cls(address, parts[1], parts[0], f"/{suffix}" if suffix else "")

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """The connection line of a unicast address (IP6 if it has a colon)."""
        return cls(address, "IP6" if ":" in address else "IP4")

    @property
    def unspecified(self) -> bool:
        """``0.0.0.0`` (or ``::``): the old way to say "do not send to me" (hold)."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}{self.suffix}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One payload format: ``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]``."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int = 1

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        """Parse the value of an ``rtpmap`` attribute (after ``rtpmap:``)."""
        pt_text, _, spec = value.strip().partition(" ")
        fields = spec.strip().split("/")
        try:
            pt = int(pt_text)
            clock = int(fields[1])
            channels = int(fields[2]) if len(fields) > 2 and fields[2] else 1
        except (ValueError, IndexError):
            raise SdpError(f"malformed a=rtpmap:{value}") from None
        if not 0 <= pt <= 127 or clock <= 0 or channels <= 0 or not fields[0]:
            raise SdpError(f"malformed a=rtpmap:{value}")
        return cls(pt, fields[0], clock, channels)

    def __str__(self) -> str:
        channels = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.encoding}/{self.clock_rate}{channels}"


_CRYPTO_TAG = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|mki] [params]`` (RFC 4568).

    ``key`` is the decoded master key and salt (empty for a suite we do not know: its
    key-params are kept as ``key_params`` and written back unchanged).
    """

    tag: int
    suite: str
    key: bytes = field(default=b"", repr=False)
    lifetime: str | None = None
    mki: str | None = None
    session_params: tuple[str, ...] = ()
    key_params: str = field(default="", repr=False)

    @classmethod
    def new(cls, tag: int, suite: str) -> Crypto:
        """Our own crypto line for ``suite`` with a fresh random key."""
        return cls.with_key(tag, suite, secrets.token_bytes(SRTP_SUITES[suite][1]))

    @classmethod
    def with_key(cls, tag: int, suite: str, key: bytes) -> Crypto:
        """A crypto line of ``suite`` carrying ``key`` (master key and salt)."""
        inline = "inline:" + base64.b64encode(key).decode("ascii")
        return cls(tag, suite, key, key_params=inline)

    @classmethod
    def parse(cls, value: str) -> Crypto:
        """Parse the value of a ``crypto`` attribute; :class:`SdpError` naming what is wrong."""
        parts = value.split()
        if len(parts) < 3 or not _CRYPTO_TAG.fullmatch(parts[0]):
            raise SdpError(f"a=crypto:{value} is not '<tag> <suite> <key-params>'")
        tag, suite, key_params = int(parts[0]), parts[1], parts[2]
        if suite not in SRTP_SUITES:
            return cls(tag, suite, session_params=tuple(parts[3:]), key_params=key_params)
        if ";" in key_params:  # several master keys, told apart by MKI: not supported
            return cls(tag, suite, session_params=tuple(parts[3:]), key_params=key_params)
        method, _, info = key_params.partition(":")
        if method != "inline" or not info:
            raise SdpError(
                f"a=crypto:{tag} {suite}: key-params must be inline:<key>, got {key_params!r}"
            )
        key_text, *rest = info.split("|")
        lifetime = mki = None
        for item in rest:
            if ":" in item:
                mki = item
            else:
                lifetime = item
        key = _inline_key(tag, suite, key_text)
        return cls(tag, suite, key, lifetime, mki, tuple(parts[3:]), key_params)

    @property
    def usable(self) -> bool:
        """Whether we can run this line: a known suite, one key, no MKI, no session params."""
        return bool(self.key) and self.mki is None and not self.session_params

    def __str__(self) -> str:
        return " ".join([str(self.tag), self.suite, self.key_params, *self.session_params])


def _inline_key(tag: int, suite: str, text: str) -> bytes:
    """The master key and salt of an ``inline:`` key (base64; missing padding tolerated)."""
    expected = SRTP_SUITES[suite][1]
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SdpError(f"a=crypto:{tag} {suite}: inline key {text!r} is not base64") from None
    if len(key) != expected:
        raise SdpError(
            f"a=crypto:{tag} {suite}: inline key is {len(key)} bytes, the suite needs {expected}"
        )
    return key


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """What SDES agreed on: the suite, the key we send with, the key the remote sends with."""

    suite: str
    local_key: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    tag: int = 1


# Formats known without an rtpmap (RFC 3551 table 4): those we decode, and G.729 to name it.
_STATIC = {
    0: RtpMap(0, "PCMU", 8000),
    8: RtpMap(8, "PCMA", 8000),
    9: RtpMap(9, "G722", 8000),
    18: RtpMap(18, "G729", 8000),
}


def _lines_attr(lines: Iterable[tuple[str, str]], name: str) -> list[str]:
    """Values of the ``a=<name>`` / ``a=<name>:<value>`` lines (``""`` for a flag)."""
    out = []
    for key, value in lines:
        if key != "a":
            continue
        attr, sep, rest = value.partition(":")
        if attr == name:
            out.append(rest if sep else "")
    return out


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section: media type, port, transport, formats, and its own lines."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: Connection | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)
    port_count: int | None = None

    @classmethod
    def parse_m_line(cls, value: str) -> MediaDescription:
        """A section from the value of its ``m=`` line."""
        parts = value.split()
        if len(parts) < 4:
            raise SdpError(f"m= line needs media, port, proto and formats: {value!r}")
        port_text, _, count_text = parts[1].partition("/")
        try:
            port = int(port_text)
            count = int(count_text) if count_text else None
        except ValueError:
            raise SdpError(f"m= port is not a number: {value!r}") from None
        if not 0 <= port <= 0xFFFF:
            raise SdpError(f"m= port {port} is out of range")
        return cls(parts[0], port, parts[2], parts[3:], port_count=count)

    def attributes(self, name: str) -> list[str]:
        """Values of this section's ``a=<name>`` lines, in order."""
        return _lines_attr(self.lines, name)

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=<name>`` line, or ``None``."""
        values = self.attributes(name)
        return values[0] if values else None

    def rtpmaps(self) -> dict[int, RtpMap]:
        """Payload type to format, from ``a=rtpmap`` and the static table for the rest."""
        maps = {}
        for value in self.attributes("rtpmap"):
            rtpmap = RtpMap.parse(value)
            maps[rtpmap.payload_type] = rtpmap
        for fmt in self.formats:
            if fmt.isdigit() and int(fmt) not in maps and int(fmt) in _STATIC:
                maps[int(fmt)] = _STATIC[int(fmt)]
        return maps

    def payload_types(self) -> list[int]:
        """The m-line formats as payload type numbers (RTP profiles only)."""
        try:
            pts = [int(f) for f in self.formats]
        except ValueError:
            raise SdpError(
                f"m={self.media} formats are not payload types: {self.formats}"
            ) from None
        if any(not 0 <= pt <= 127 for pt in pts):
            raise SdpError(f"m={self.media} payload types must be 0-127: {self.formats}")
        return pts

    def fmtp(self, payload_type: int) -> str | None:
        """The ``a=fmtp`` parameters of ``payload_type``, or ``None``."""
        prefix = f"{payload_type} "
        for value in self.attributes("fmtp"):
            if value.startswith(prefix):
                return value[len(prefix) :].strip()
        return None

    def serialize_lines(self) -> list[str]:
        """The section as SDP lines (``m=`` first, then ``i=``, ``c=``, the rest)."""
        port = f"{self.port}/{self.port_count}" if self.port_count is not None else str(self.port)
        out = [f"m={self.media} {port} {self.proto} {' '.join(self.formats)}"]
        out += [f"{k}={v}" for k, v in self.lines if k == "i"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{k}={v}" for k, v in self.lines if k != "i"]
        return out


@dataclass(slots=True)
class SessionDescription:
    """A whole SDP: origin, name, session connection, media sections, every other line kept."""

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    connection: Connection | None = None
    media: list[MediaDescription] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=lambda: [("t", "0 0")])
    version: int = 0

    @classmethod
    def parse(cls, text: str | bytes) -> SessionDescription:
        """Parse SDP text (CRLF or LF line ends); :class:`SdpError` naming the bad line."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpError(f"SDP is not UTF-8 text: {exc}") from None
        raw_lines = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
        if not raw_lines:
            raise SdpError("empty session description")
        sd = cls(lines=[])
        section: MediaDescription | None = None
        seen_origin = False
        for number, line in enumerate(raw_lines, 1):
            key, sep, value = line.partition("=")
            if not sep or len(key) != 1 or not key.isalpha():
                raise SdpError(f"line {number} is not <type>=<value>: {line!r}")
            if number == 1:
                if key != "v" or value.strip() != "0":
                    raise SdpError(f"SDP must start with v=0, got {line!r}")
                continue
            if key == "v":
                raise SdpError(f"line {number}: a second v= line")
            if key == "m":
                section = MediaDescription.parse_m_line(value)
                sd.media.append(section)
            elif key == "c":
                conn = Connection.parse(value)
                if section is None:
                    sd.connection = conn
                else:
                    section.connection = conn
            elif section is not None:
                section.lines.append((key, value))
            elif key == "o":
                sd.origin = Origin.parse(value)
                seen_origin = True
            elif key == "s":
                sd.name = value
            else:
                sd.lines.append((key, value))
        if not seen_origin:
            raise SdpError("SDP has no o= line")
        return sd

    def serialize(self) -> str:
        """The description as SDP text with CRLF line ends (RFC 4566 line order)."""
        out = [f"v={self.version}", f"o={self.origin}", f"s={self.name}"]
        out += [f"{k}={v}" for k, v in self.lines if k in "iuep"]
        if self.connection is not None:
            out.append(f"c={self.connection}")
        out += [f"{k}={v}" for k, v in self.lines if k not in "iuep"]
        for section in self.media:
            out += section.serialize_lines()
        return "\r\n".join(out) + "\r\n"

    def __str__(self) -> str:
        return self.serialize()

    def attributes(self, name: str) -> list[str]:
        """Values of the session-level ``a=<name>`` lines, in order."""
        return _lines_attr(self.lines, name)

    def connection_of(self, section: MediaDescription) -> Connection | None:
        """The connection that applies to ``section`` (its own, else the session's)."""
        return section.connection or self.connection

    def direction_of(self, section: MediaDescription) -> Direction:
        """The direction attribute of ``section`` (its own, else the session's, else sendrecv)."""
        for lines in (section.lines, self.lines):
            for key, value in lines:
                if key == "a" and value in DIRECTIONS:
                    return value
        return "sendrecv"

    def ptime_of(self, section: MediaDescription) -> int | None:
        """The ``a=ptime`` (ms) of ``section`` or of the session, or ``None``."""
        value = section.attribute("ptime")
        if value is None:
            session = self.attributes("ptime")
            value = session[0] if session else None
        if value is None:
            return None
        try:
            ptime = round(float(value))
        except ValueError:
            raise SdpError(f"a=ptime:{value} is not a number") from None
        if ptime <= 0:
            raise SdpError(f"a=ptime:{value} must be positive")
        return ptime

    def cryptos(self, section: MediaDescription) -> list[Crypto]:
        """The ``a=crypto`` lines of ``section``, parsed; :class:`SdpError` for a bad one."""
        return [Crypto.parse(value) for value in section.attributes("crypto")]

    def uses_ice(self, section: MediaDescription) -> bool:
        """Whether ``section`` negotiates ICE (its addresses then come from candidates)."""
        return bool(section.attributes("ice-ufrag") or self.attributes("ice-ufrag"))


# ---------------------------------------------------------------------------------- codecs


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """A codec we can run: its rtpmap, the payload type we offer it on, and its fmtp."""

    name: str
    encoding: str
    clock_rate: int
    channels: int
    payload_type: int
    fmtp: str | None = None

    def matches(self, rtpmap: RtpMap) -> bool:
        """Whether a remote format is this codec (name case-insensitive, same clock)."""
        if rtpmap.encoding.lower() != self.encoding.lower() or rtpmap.clock_rate != self.clock_rate:
            return False
        # RFC 7587: Opus is always opus/48000/2; mono codecs have one channel.
        return rtpmap.channels == self.channels


AUDIO_CODECS: dict[str, CodecSpec] = {
    "pcmu": CodecSpec("pcmu", "PCMU", 8000, 1, 0),
    "pcma": CodecSpec("pcma", "PCMA", 8000, 1, 8),
    "g722": CodecSpec("g722", "G722", 8000, 1, 9),  # 16 kHz audio, 8 kHz RTP clock (RFC 3551)
    "opus": CodecSpec("opus", "opus", 48000, 2, 111, "minptime=10;useinbandfec=1"),
}
"""The audio codecs we encode and decode, by their configuration name."""

_TELEPHONE_EVENT = {
    8000: CodecSpec("telephone-event", "telephone-event", 8000, 1, 101, "0-16"),
    48000: CodecSpec("telephone-event", "telephone-event", 48000, 1, 110, "0-16"),
}
_EVENT_NAMES = ("telephone-event", "telephone_event", "dtmf", "2833")
_KNOWN_UNSUPPORTED = ("g729",)


def supported_codecs(names: Iterable[str]) -> list[str]:
    """Configuration codec names (reference §2.8) normalised, in order, without duplicates.

    ``dtmf``, ``2833`` and ``telephone_event`` become ``telephone-event``; ``g729`` is known
    but not implemented here, so it is left out. Any other unknown name is a ``ValueError``.
    """
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name in _EVENT_NAMES:
            name = "telephone-event"
        elif name in _KNOWN_UNSUPPORTED:
            continue
        elif name not in AUDIO_CODECS:
            known = ", ".join([*AUDIO_CODECS, *_EVENT_NAMES, *_KNOWN_UNSUPPORTED])
            raise ValueError(f"unknown codec {raw!r}: expected one of {known}")
        if name not in out:
            out.append(name)
    return out


# ------------------------------------------------------------------------------ negotiation


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """The outcome of one offer/answer for the audio stream of a call.

    ``payload_type`` and ``telephone_event`` are what we send with; ``receive_codecs``
    (payload type, codec name) and ``receive_telephone_event`` are what the remote may send
    us. ``direction`` is ours; ``on_hold`` is true when the remote put the stream on hold
    (``sendonly``, ``inactive`` or a ``0.0.0.0`` address).
    """

    codec: str
    payload_type: int
    clock_rate: int
    channels: int
    telephone_event: int | None
    ptime: int
    remote_address: str
    remote_port: int
    direction: Direction
    remote_direction: Direction
    on_hold: bool
    receive_codecs: tuple[tuple[int, str], ...]
    receive_telephone_event: int | None
    media_index: int = 0
    fmtp: str | None = None
    rtcp_mux: bool = False
    remote_rtcp_port: int | None = None
    srtp: SrtpKeys | None = None
    """The SDES keys when the stream is SRTP, else ``None`` (plain RTP)."""

    @property
    def sample_rate(self) -> int:
        """Audio sample rate of the codec (G.722 carries 16 kHz audio on an 8 kHz clock)."""
        return 16000 if self.codec == "g722" else self.clock_rate

    @property
    def sends(self) -> bool:
        """Whether we send media (our direction allows it and the remote has an address)."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receives(self) -> bool:
        """Whether the remote may send us media."""
        return self.direction in ("sendrecv", "recvonly")

    @property
    def remote_rtcp(self) -> tuple[str, int]:
        """Where RTCP goes: the RTP address with rtcp-mux, else ``a=rtcp`` or port + 1."""
        if self.rtcp_mux:
            return self.remote_address, self.remote_port
        port = self.remote_rtcp_port if self.remote_rtcp_port else self.remote_port + 1
        return self.remote_address, port


def build_offer(
    codecs: Sequence[str],
    address: str,
    port: int,
    *,
    session_id: int | None = None,
    session_version: int = 0,
    username: str = "-",
    session_name: str = "activecall",
    ptime: int = _DEFAULT_PTIME,
    direction: Direction = "sendrecv",
    rtcp_mux: bool = False,
    srtp: bool = False,
) -> SessionDescription:
    """Our SDP offer: one ``RTP/AVP`` audio stream with ``codecs`` in preference order.

    ``codecs`` are configuration names (:func:`supported_codecs`); ``telephone-event`` is
    offered at 8 kHz, and also at 48 kHz when Opus is offered (its clock must match the
    codec's). With ``srtp`` the stream is ``RTP/SAVP`` with a fresh key per offered crypto
    suite. ``ValueError`` if no audio codec is left.
    """
    names = supported_codecs(codecs)
    specs = [AUDIO_CODECS[n] for n in names if n in AUDIO_CODECS]
    if not specs:
        raise ValueError(f"no audio codec to offer in {list(codecs)!r}")
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    offered: list[CodecSpec] = []
    for name in names:
        if name in AUDIO_CODECS:
            offered.append(AUDIO_CODECS[name])
        else:
            offered.append(_TELEPHONE_EVENT[8000])
            if "opus" in names:
                offered.append(_TELEPHONE_EVENT[48000])
    section = MediaDescription(
        "audio", port, "RTP/SAVP" if srtp else "RTP/AVP", [str(s.payload_type) for s in offered]
    )
    section.lines = _codec_lines(offered)
    section.lines += [("a", f"ptime:{ptime}"), ("a", direction)]
    if rtcp_mux:
        section.lines.append(("a", "rtcp-mux"))
    if srtp:
        for tag, suite in enumerate(_OFFERED_SUITES, 1):
            section.lines.append(("a", f"crypto:{Crypto.new(tag, suite)}"))
    sid = secrets.randbelow(1 << 62) if session_id is None else session_id
    return SessionDescription(
        origin=Origin(username, sid, session_version, address, "IN", _addr_type(address)),
        name=session_name,
        connection=Connection.for_address(address),
        media=[section],
    )


def answer(
    offer: SessionDescription | str | bytes,
    supported: Sequence[str],
    address: str,
    port: int,
    *,
    session_id: int | None = None,
    session_version: int = 0,
    username: str = "-",
    session_name: str = "activecall",
    direction: Direction = "sendrecv",
    profiles: Sequence[str] = _PLAIN_RTP + _SDES_RTP,
    srtp: bool = False,
    srtp_key: SrtpKeys | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer``: accept its first audio stream we can run, reject the others.

    The codec is the first of the offer's m-line order in ``supported`` (configuration
    names), with the offer's payload type numbers. ``direction`` limits ours (e.g.
    ``recvonly``); the answer's is the offer's reversed, within that limit. An ``RTP/SAVP``
    stream is answered with our own key for its first usable crypto line (``srtp_key``'s
    local key when its suite is the one chosen: a re-offer keeps our key); ``srtp`` also
    answers the crypto lines of a plain ``RTP/AVP`` offer. Raises :class:`NotAcceptable`
    (488) when no stream is acceptable, :class:`SdpError` when the offer is malformed.
    """
    sd = offer if isinstance(offer, SessionDescription) else SessionDescription.parse(offer)
    ours = supported_codecs(supported)
    if not any(n in AUDIO_CODECS for n in ours):
        raise ValueError(f"no audio codec in {list(supported)!r}")
    chosen: tuple[int, CodecSpec, RtpMap, RtpMap | None] | None = None
    crypto: Crypto | None = None
    reasons = []
    for index, section in enumerate(sd.media):
        if section.media != "audio" or section.port == 0:
            continue
        if section.proto not in profiles:
            reasons.append(f"m-line {index}: transport {section.proto} is not supported")
            continue
        crypto = None
        if section.proto in _SDES_RTP or (srtp and section.proto in _PLAIN_RTP):
            crypto = next((c for c in sd.cryptos(section) if c.usable), None)
            if crypto is None and section.proto in _SDES_RTP:
                offered = ", ".join(section.attributes("crypto")) or "none"
                reasons.append(f"m-line {index}: no usable SRTP crypto suite (offered {offered})")
                continue
        pick = _pick_as_answerer(section, ours)
        if pick is None:
            offered = ", ".join(str(m) for m in section.rtpmaps().values()) or "none"
            reasons.append(f"m-line {index}: no common codec (offered {offered})")
            continue
        chosen = (index, *pick)
        break
    if chosen is None:
        if not reasons:
            raise NotAcceptable("the offer has no audio stream")
        raise NotAcceptable("; ".join(reasons))
    index, spec, rtpmap, event_map = chosen
    section = sd.media[index]
    remote_dir = sd.direction_of(section)
    conn = sd.connection_of(section)
    if conn is None:
        raise SdpError(f"m-line {index} has no c= line, at media or session level")
    black_hole = conn.unspecified and not sd.uses_ice(section)
    ours_dir = _our_direction(remote_dir, black_hole, direction)
    ptime = sd.ptime_of(section) or _DEFAULT_PTIME

    formats = [rtpmap] + ([event_map] if event_map is not None else [])
    pts = [str(f.payload_type) for f in formats]
    accepted = MediaDescription("audio", port, section.proto, pts)
    accepted.lines = [("a", f"rtpmap:{f}") for f in formats]
    codec_fmtp = section.fmtp(rtpmap.payload_type) or spec.fmtp
    if codec_fmtp:
        accepted.lines.append(("a", f"fmtp:{rtpmap.payload_type} {codec_fmtp}"))
    if event_map is not None:
        event_fmtp = section.fmtp(event_map.payload_type) or "0-16"
        accepted.lines.append(("a", f"fmtp:{event_map.payload_type} {event_fmtp}"))
    accepted.lines.append(("a", f"ptime:{ptime}"))
    rtcp_mux = bool(section.attributes("rtcp-mux"))
    if rtcp_mux:
        accepted.lines.append(("a", "rtcp-mux"))
    accepted.lines.append(("a", ours_dir))
    keys = None
    if crypto is not None:
        mine = _answer_crypto(crypto, srtp_key)
        accepted.lines.append(("a", f"crypto:{mine}"))
        keys = SrtpKeys(crypto.suite, mine.key, crypto.key, crypto.tag)

    media_out = []
    for i, other in enumerate(sd.media):
        if i == index:
            media_out.append(accepted)
        else:  # RFC 3264 §6: a rejected stream keeps its place with port 0
            media_out.append(MediaDescription(other.media, 0, other.proto, list(other.formats)))
    timing = [(k, v) for k, v in sd.lines if k == "t"] or [("t", "0 0")]
    sid = secrets.randbelow(1 << 62) if session_id is None else session_id
    answer_sd = SessionDescription(
        origin=Origin(username, sid, session_version, address, "IN", _addr_type(address)),
        name=session_name,
        connection=Connection.for_address(address),
        media=media_out,
        lines=timing,
    )
    negotiated = NegotiatedMedia(
        codec=spec.name,
        payload_type=rtpmap.payload_type,
        clock_rate=rtpmap.clock_rate,
        channels=rtpmap.channels,
        telephone_event=event_map.payload_type if event_map else None,
        ptime=_send_ptime(spec, ptime),
        remote_address=conn.address,
        remote_port=section.port,
        direction=ours_dir,
        remote_direction=remote_dir,
        on_hold=remote_dir in ("sendonly", "inactive") or black_hole,
        receive_codecs=((rtpmap.payload_type, spec.name),),
        receive_telephone_event=event_map.payload_type if event_map else None,
        media_index=index,
        fmtp=section.fmtp(rtpmap.payload_type),
        rtcp_mux=rtcp_mux,
        remote_rtcp_port=_rtcp_port(section),
        srtp=keys,
    )
    return answer_sd, negotiated


def _answer_crypto(offered: Crypto, previous: SrtpKeys | None) -> Crypto:
    """Our crypto line answering ``offered``: same tag and suite, our key (kept from
    ``previous`` when the suite is unchanged, so a re-offer does not rekey our side)."""
    if previous is not None and previous.suite == offered.suite:
        return Crypto.with_key(offered.tag, offered.suite, previous.local_key)
    return Crypto.new(offered.tag, offered.suite)


def parse_answer(
    offer_we_sent: SessionDescription | str | bytes, answer_sdp: SessionDescription | str | bytes
) -> NegotiatedMedia:
    """The media an answer to our offer agrees on: the first codec of *our* order it accepted.

    Raises :class:`NotAcceptable` if the answer rejects our audio stream or accepts none of
    our codecs, :class:`SdpError` if either side is malformed or the m-lines do not pair up.
    """
    ours = (
        offer_we_sent
        if isinstance(offer_we_sent, SessionDescription)
        else SessionDescription.parse(offer_we_sent)
    )
    theirs = (
        answer_sdp
        if isinstance(answer_sdp, SessionDescription)
        else SessionDescription.parse(answer_sdp)
    )
    if len(theirs.media) != len(ours.media):
        raise SdpError(
            f"the answer has {len(theirs.media)} m-lines for the offer's {len(ours.media)}"
        )
    for index, (mine, section) in enumerate(zip(ours.media, theirs.media, strict=True)):
        if mine.media != "audio" or mine.port == 0:
            continue
        if section.port == 0:
            raise NotAcceptable(f"the answer rejected audio stream {index} (port 0)")
        return _negotiated_from_answer(index, mine, ours, section, theirs)
    raise NotAcceptable("our offer has no audio stream")


def _negotiated_from_answer(
    index: int,
    mine: MediaDescription,
    ours: SessionDescription,
    section: MediaDescription,
    theirs: SessionDescription,
) -> NegotiatedMedia:
    offered = mine.rtpmaps()
    answered = section.rtpmaps()
    their_pts = section.payload_types()
    # Our codecs in our m-line order: our preference.
    preference = []
    for pt in mine.payload_types():
        spec = _spec_for(offered.get(pt))
        if spec is not None:
            preference.append((pt, spec))
    common: list[tuple[int, int, CodecSpec, RtpMap]] = []
    for our_pt, spec in preference:
        for pt in their_pts:
            rtpmap = answered.get(pt)
            if rtpmap is not None and spec.matches(rtpmap):
                common.append((our_pt, pt, spec, rtpmap))
                break
    if not common:
        got = ", ".join(str(m) for m in answered.values()) or "none"
        raise NotAcceptable(f"the answer accepts none of our codecs (it has {got})")
    our_pt, pt, spec, rtpmap = common[0]
    send_event = _event_for(section, answered, rtpmap.clock_rate)
    recv_event = _event_for(mine, offered, rtpmap.clock_rate)
    conn = theirs.connection_of(section)
    if conn is None:
        raise SdpError(f"answer m-line {index} has no c= line, at media or session level")
    remote_dir = theirs.direction_of(section)
    black_hole = conn.unspecified and not theirs.uses_ice(section)
    ours_dir = _our_direction(remote_dir, black_hole, ours.direction_of(mine))
    ptime = theirs.ptime_of(section) or _DEFAULT_PTIME
    keys = _keys_from_answer(index, mine, ours, section, theirs)
    return NegotiatedMedia(
        codec=spec.name,
        payload_type=pt,
        clock_rate=rtpmap.clock_rate,
        channels=rtpmap.channels,
        telephone_event=send_event.payload_type if send_event else None,
        ptime=_send_ptime(spec, ptime),
        remote_address=conn.address,
        remote_port=section.port,
        direction=ours_dir,
        remote_direction=remote_dir,
        on_hold=remote_dir in ("sendonly", "inactive") or black_hole,
        receive_codecs=tuple(
            (o_pt, s.name) for o_pt, _, s, m in common if m.clock_rate == rtpmap.clock_rate
        ),
        receive_telephone_event=recv_event.payload_type if recv_event else None,
        media_index=index,
        fmtp=section.fmtp(pt),
        rtcp_mux=bool(section.attributes("rtcp-mux")) and bool(mine.attributes("rtcp-mux")),
        remote_rtcp_port=_rtcp_port(section),
        srtp=keys,
    )


def _keys_from_answer(
    index: int,
    mine: MediaDescription,
    ours: SessionDescription,
    section: MediaDescription,
    theirs: SessionDescription,
) -> SrtpKeys | None:
    """The SDES keys an answer agrees on: its crypto line must echo a tag and suite of ours."""
    offered = {c.tag: c for c in ours.cryptos(mine)}
    secure = mine.proto in _SDES_RTP
    if section.proto in _SDES_RTP and not secure:
        raise NotAcceptable(f"answer m-line {index} is {section.proto} to our {mine.proto}")
    if secure and section.proto not in _SDES_RTP:
        raise NotAcceptable(f"answer m-line {index} is {section.proto} to our SRTP offer")
    for crypto in theirs.cryptos(section):
        our = offered.get(crypto.tag)
        if our is not None and our.suite == crypto.suite and crypto.usable:
            return SrtpKeys(crypto.suite, our.key, crypto.key, crypto.tag)
    if secure:
        raise NotAcceptable(f"answer m-line {index} has no crypto line matching our offer")
    return None


def _pick_as_answerer(
    section: MediaDescription, ours: list[str]
) -> tuple[CodecSpec, RtpMap, RtpMap | None] | None:
    """The first offered format we support (offer order), and the matching telephone-event."""
    maps = section.rtpmaps()
    for pt in section.payload_types():
        rtpmap = maps.get(pt)
        spec = _spec_for(rtpmap)
        if spec is None or spec.name not in ours or rtpmap is None:
            continue
        event = _event_for(section, maps, rtpmap.clock_rate) if "telephone-event" in ours else None
        return spec, rtpmap, event
    return None


def _spec_for(rtpmap: RtpMap | None) -> CodecSpec | None:
    if rtpmap is None:
        return None
    for spec in AUDIO_CODECS.values():
        if spec.matches(rtpmap):
            return spec
    return None


def _event_for(section: MediaDescription, maps: dict[int, RtpMap], clock: int) -> RtpMap | None:
    """The section's first telephone-event at the codec's clock (RFC 4733 §2.1: they share it)."""
    for pt in section.payload_types():
        rtpmap = maps.get(pt)
        if (
            rtpmap is not None
            and rtpmap.encoding.lower() == "telephone-event"
            and rtpmap.clock_rate == clock
        ):
            return rtpmap
    return None


def _codec_lines(specs: Sequence[CodecSpec]) -> list[tuple[str, str]]:
    lines = []
    for spec in specs:
        rtpmap = RtpMap(spec.payload_type, spec.encoding, spec.clock_rate, spec.channels)
        lines.append(("a", f"rtpmap:{rtpmap}"))
        if spec.fmtp:
            lines.append(("a", f"fmtp:{spec.payload_type} {spec.fmtp}"))
    return lines


def _our_direction(remote: Direction, black_hole: bool, limit: Direction) -> Direction:
    """Our direction: the remote's reversed, without sending to a 0.0.0.0 address, within
    ``limit``."""
    send = remote in ("sendrecv", "recvonly") and not black_hole
    send = send and limit in ("sendrecv", "sendonly")
    recv = remote in ("sendrecv", "sendonly") and limit in ("sendrecv", "recvonly")
    if send and recv:
        return "sendrecv"
    if send:
        return "sendonly"
    if recv:
        return "recvonly"
    return "inactive"


def _send_ptime(spec: CodecSpec, ptime: int) -> int:
    """The packet time we send: the remote's, where our packetiser can make it.

    Our frames are 20 ms: sample codecs send 1-6 of them a packet; Opus frames of 20, 40 or
    60 ms. Any other ``ptime`` is a preference we cannot meet; we send 20 ms.
    """
    if ptime % 20 or not 20 <= ptime <= (60 if spec.name == "opus" else 120):
        return _DEFAULT_PTIME
    return ptime


def _rtcp_port(section: MediaDescription) -> int | None:
    """The port of an ``a=rtcp:<port> [IN IP4 addr]`` attribute (RFC 3605), if any."""
    value = section.attribute("rtcp")
    if value is None:
        return None
    try:
        port = int(value.split()[0])
    except (ValueError, IndexError):
        raise SdpError(f"malformed a=rtcp:{value}") from None
    return port if 0 < port <= 0xFFFF else None


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"
