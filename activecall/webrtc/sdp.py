"""SDP text of a browser call: offer checks, ICE candidate lines, IPv6 candidate stripping.

Pure functions over SDP text (RFC 8866) and ICE candidate attributes (RFC 8839 §5.1); no I/O.
They raise ``ValueError`` with a reason a person can act on; :mod:`activecall.webrtc.peer`
turns that into a :class:`~activecall.webrtc.peer.WebRtcError`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "CandidateLine",
    "audio_codecs",
    "check_offer",
    "order_codecs",
    "parse_candidate",
    "strip_ipv6_candidates",
]

_CANDIDATE_PREFIXES = ("a=candidate:", "candidate:")
_TRANSPORTS = {"udp", "tcp"}
_TYPES = {"host", "srflx", "prflx", "relay"}
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?$")
# RFC 3551 static payload types an offer may list without an rtpmap line.
_STATIC_PT = {
    "0": "PCMU/8000",
    "3": "GSM/8000",
    "8": "PCMA/8000",
    "9": "G722/8000",
    "18": "G729/8000",
}
# The "no address yet" values of RFC 8839 §4.2.1.1 / JSEP, used when no IPv4 candidate is left.
_NO_ADDRESS = ("IN IP4 0.0.0.0", "9")


@dataclass(frozen=True, slots=True)
class CandidateLine:
    """The fields of one ``candidate`` attribute that ICE needs (RFC 8839 §5.1)."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str

    @property
    def is_ipv6(self) -> bool:
        """Whether the address is an IPv6 literal (an mDNS ``.local`` name is not)."""
        return _is_ipv6(self.address)


def parse_candidate(text: str) -> CandidateLine:
    """Parse ``candidate:…`` (with or without ``a=``); raise ``ValueError`` saying what is wrong."""
    line = text.strip()
    for prefix in _CANDIDATE_PREFIXES:
        if line.startswith(prefix):
            line = line[len(prefix) :]
            break
    bits = line.split()
    if len(bits) < 8 or bits[6] != "typ":
        raise ValueError(
            f"not an ICE candidate (want 'candidate:<foundation> <component> <transport> "
            f"<priority> <address> <port> typ <type>'): {text!r}"
        )
    foundation, component, transport, priority, address, port, _, kind = bits[:8]
    if transport.lower() not in _TRANSPORTS:
        raise ValueError(f"ICE candidate transport must be udp or tcp, got {transport!r}")
    if kind not in _TYPES:
        raise ValueError(f"ICE candidate type must be host, srflx, prflx or relay, got {kind!r}")
    numbers = {"component": component, "priority": priority, "port": port}
    values: dict[str, int] = {}
    for name, raw in numbers.items():
        if not raw.isdigit():
            raise ValueError(f"ICE candidate {name} must be a number, got {raw!r}")
        values[name] = int(raw)
    if not 1 <= values["component"] <= 256 or values["port"] > 65535:
        raise ValueError(f"ICE candidate component or port out of range: {text!r}")
    return CandidateLine(
        foundation,
        values["component"],
        transport.lower(),
        values["priority"],
        address,
        values["port"],
        kind,
    )


def check_offer(sdp: str) -> None:
    """Raise ``ValueError`` unless ``sdp`` looks like a WebRTC offer with an audio section."""
    if not isinstance(sdp, str) or not sdp.strip():
        raise ValueError("the offer is empty")
    lines = _lines(sdp)
    if lines[0] != "v=0":
        raise ValueError("an SDP description starts with 'v=0'")
    if not any(line.startswith("m=audio ") for line in lines):
        raise ValueError("the offer has no audio section (m=audio)")
    for attribute, meaning in (
        ("a=ice-ufrag:", "ICE username fragment"),
        ("a=ice-pwd:", "ICE password"),
        ("a=fingerprint:", "DTLS fingerprint"),
    ):
        if not any(line.startswith(attribute) for line in lines):
            raise ValueError(f"the offer has no {meaning} ({attribute[:-1]})")
    for line in lines:
        if line.startswith(_CANDIDATE_PREFIXES[0]):
            parse_candidate(line)


def audio_codecs(sdp: str) -> list[str]:
    """The codecs of the first audio section, in its ``m=`` order, as ``name/rate[/channels]``."""
    for section in _sections(_lines(sdp)):
        if section[0].startswith("m=audio "):
            names = _rtpmaps(section)
            return [names[pt] for pt in section[0].split()[3:] if pt in names]
    return []


def order_codecs(sdp: str) -> str:
    """Put each media section's ``rtpmap`` lines in its ``m=`` line order (RFC 3264 §5.1).

    aiortc ranks an offer's codecs by the order of its ``rtpmap`` lines; the ``m=`` line is the
    offerer's real preference. Static payload types listed without ``rtpmap`` get theirs.
    """
    out: list[str] = []
    for section in _sections(_lines(sdp)):
        if not section[0].startswith(("m=audio ", "m=video ")):
            out.extend(section)
            continue
        names = _rtpmaps(section)
        ordered = [f"a=rtpmap:{pt} {names[pt]}" for pt in section[0].split()[3:] if pt in names]
        rest = [line for line in section if not line.startswith("a=rtpmap:")]
        # The rtpmap lines go where the first one was, or after the m=/c=/b= lines.
        at = next((i for i, line in enumerate(section) if line.startswith("a=rtpmap:")), None)
        if at is None:
            at = 1 + sum(1 for line in section[1:] if line.startswith(("c=", "b=", "i=")))
        out.extend(rest[:at] + ordered + rest[at:])
    return "\r\n".join(out) + "\r\n"


def strip_ipv6_candidates(sdp: str) -> str:
    """Drop IPv6 ICE candidates; a section left pointing at IPv6 points at IPv4 (or nowhere)."""
    out: list[str] = []
    for section in _sections(_lines(sdp)):
        out.extend(_strip_section(section))
    return "\r\n".join(out) + "\r\n"


def _strip_section(lines: list[str]) -> list[str]:
    kept = [line for line in lines if not _is_ipv6_candidate_line(line)]
    ipv4 = next(
        (c for line in kept if (c := _candidate_of(line)) is not None and not c.is_ipv6), None
    )
    connection, port = (
        (f"IN IP4 {ipv4.address}", str(ipv4.port)) if ipv4 is not None else _NO_ADDRESS
    )
    result: list[str] = []
    for line in kept:
        if line.startswith("c=IN IP6 "):
            line = f"c={connection}"
            if result and result[0].startswith("m="):
                m = result[0].split(" ")
                m[1] = port
                result[0] = " ".join(m)
        elif line.startswith("a=rtcp:") and " IN IP6 " in line:
            line = f"a=rtcp:{port} {connection}"
        result.append(line)
    return result


def _candidate_of(line: str) -> CandidateLine | None:
    if not line.startswith(_CANDIDATE_PREFIXES[0]):
        return None
    try:
        return parse_candidate(line)
    except ValueError:
        return None


def _is_ipv6_candidate_line(line: str) -> bool:
    candidate = _candidate_of(line)
    return candidate is not None and candidate.is_ipv6


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).version == 6
    except ValueError:
        return False


def _sections(lines: list[str]) -> list[list[str]]:
    """The session part, then one list per ``m=`` section."""
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return [section for section in sections if section]


def _rtpmaps(section: list[str]) -> dict[str, str]:
    names = {pt: name for pt, name in _STATIC_PT.items()}
    for line in section:
        if match := _RTPMAP.match(line):
            pt, name, rate, channels = match.groups()
            names[pt] = f"{name}/{rate}" + (f"/{channels}" if channels else "")
    return names


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
