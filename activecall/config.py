"""The server configuration: the TOML file of upstream ``active-call`` (reference §3.2) plus
activecall's own keys, as frozen dataclasses.

Every table is a dataclass whose attributes are the snake_case TOML keys (``toml`` metadata
names the few that differ: ``from``, the camelCase keys of ``[ambiance]``); the decoder derives
the schema from the type hints, so each key is declared once. The rules, in one place:

* a file that does not parse, a value of the wrong type, a bad duration or an unknown enum value
  is an error naming the file, the line and the key path; every error of a file is reported, and
  nothing falls back to defaults silently (upstream does);
* an unknown key is a warning (logger ``activecall.config``), then ignored;
* durations are humantime strings (``"50s"``, ``"1m30s"``, ``"500ms"``) or numbers of seconds;
* ``${VAR}`` is not expanded (upstream does not); ``.env`` only fills the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

from activecall import __version__

__all__ = [
    "CODECS",
    "DEFAULT_CDR_ROOT",
    "DEFAULT_CODECS",
    "DEFAULT_ICE_SERVERS",
    "DEFAULT_MEDIA_CACHE_PATH",
    "DEFAULT_RECORDER_PATH",
    "AmbianceOption",
    "CallRecord",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "HttpCallRecord",
    "IceServer",
    "InviteHandler",
    "LocalCallRecord",
    "PlaybookHandler",
    "PlaybookRule",
    "RecordingPolicy",
    "RegisterUser",
    "RewriteRule",
    "S3CallRecord",
    "TrunkMatch",
    "TrunkRewrite",
    "TrunkRule",
    "TrunkRuleDef",
    "UriMatch",
    "UriRewrite",
    "UserCredential",
    "WebhookHandler",
    "check_config",
    "config_to_dict",
    "config_to_toml",
    "load_config",
    "load_dotenv",
    "normalize_codec",
    "parse_config",
    "parse_duration",
    "split_host_port",
]

logger = logging.getLogger("activecall.config")

DEFAULT_RECORDER_PATH = "./config/recorders"
DEFAULT_MEDIA_CACHE_PATH = "./config/mediacache"
DEFAULT_CDR_ROOT = "./config/cdr"
CODECS = ("pcmu", "pcma", "g722", "g729", "opus", "telephone_event")
"""Codec names ``codecs`` accepts (any case; ``telephone-event`` too)."""
DEFAULT_CODECS = ("pcmu", "pcma", "g722", "g729", "telephone_event", "opus")


# --- type markers read from the annotations -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Range:
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class _Choice:
    """A string from ``values`` (any case); ``aliases`` map other spellings to one of them."""

    values: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Duration:
    """Seconds from a humantime string or a number; ``text``: shown as a string, as upstream."""

    text: bool = False


@dataclass(frozen=True, slots=True)
class _Convert:
    """Checks/normalises a decoded value; raises ``ValueError("must ...")`` to reject it."""

    func: Callable[[Any], Any]


_ONE_OR_MANY = "one-or-many"  # an array that also accepts one bare value
_PAIRS = "pairs"  # an array of [name, value] that also accepts a table


def _key(
    toml: str | None = None, *aliases: str, secret: bool = False, cli_only: bool = False
) -> dict[str, Any]:
    """Field metadata: TOML name, other accepted spellings, masked in output, not a file key."""
    return {"toml": toml, "aliases": aliases, "secret": secret, "cli_only": cli_only}


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc}): {value!r}") from None
    return value


def _host_port(value: str) -> str:
    split_host_port(value)
    return value


def _peer(value: str) -> str:
    scheme, sep, _ = value.partition("://")
    if sep:
        if scheme.lower() not in ("ws", "wss", "http", "https"):
            raise ValueError(f"must be ip:port or a ws/wss/http/https URL, got {value!r}")
        return value
    return _host_port(value)


def _http_method(value: str) -> str:
    method = value.upper()
    if not re.fullmatch(r"[A-Z]+", method):
        raise ValueError(f"must be an HTTP method such as POST, got {value!r}")
    return method


def _non_empty(value: tuple[Any, ...]) -> tuple[Any, ...]:
    if not value:
        raise ValueError("must not be empty")
    return value


def _recorder_path(value: str) -> str:
    return value.strip() or DEFAULT_RECORDER_PATH  # upstream: blank = default


def _optional_token(value: str) -> str | None:
    return value or None  # "" = no authentication


Port = Annotated[int, _Range(0, 65535)]
Seconds = Annotated[float, _Duration()]
Regex = Annotated[str, _Convert(_regex)]
HostPort = Annotated[str, _Convert(_host_port)]
Codec = Annotated[str, _Choice(CODECS, {"telephone-event": "telephone_event"})]
LogLevel = Annotated[
    str, _Choice(("trace", "debug", "info", "warn", "warning", "error", "critical", "off"))
]
RecorderFormat = Annotated[str, _Choice(("wav", "pcm", "pcmu", "pcma", "g722"))]
S3Vendor = Annotated[
    str,
    _Choice(
        ("aliyun", "tencent", "minio", "aws", "gcp", "azure", "digitalocean"),
        # serde's snake_case of upstream's variant names AWS, GCP, DigitalOcean.
        {"a_w_s": "aws", "g_c_p": "gcp", "digital_ocean": "digitalocean"},
    ),
]
StrMap = Mapping[str, str]
Headers = Annotated[tuple[tuple[str, str], ...], _PAIRS]


# --- the tables -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UserCredential:
    """``register_users[].credential``: digest credentials (empty password: IP-based auth)."""

    username: str
    password: str = field(default="", repr=False, metadata=_key(secret=True))
    realm: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterUser:
    """``[[register_users]]``: an account the server REGISTERs as (an extension of a PBX)."""

    server: str
    username: str
    display_name: str | None = None
    disabled: bool = False
    credential: UserCredential | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookHandler:
    """``[handler] type="webhook"``: inbound INVITEs are POSTed to ``url`` / ``urls``."""

    tag: ClassVar[str] = "webhook"

    url: str | None = None
    urls: tuple[str, ...] = ()
    method: Annotated[str, _Convert(_http_method)] = "POST"
    headers: Headers = ()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The URLs to call, in round-robin order (``urls`` wins over ``url``)."""
        return self.urls or ((self.url,) if self.url else ())

    def _check(self) -> list[tuple[str, str]]:
        return [] if self.endpoints else [("url", "is required (or urls) for a webhook handler")]


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybookRule:
    """``[[handler.rules]]``: caller/callee regexes (both must match) choose ``playbook``."""

    caller: Regex | None = None
    callee: Regex | None = None
    playbook: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlaybookHandler:
    """``[handler] type="playbook"``: the first matching rule's playbook, else ``default``."""

    tag: ClassVar[str] = "playbook"

    default: str | None = None
    rules: tuple[PlaybookRule, ...] = ()


InviteHandler = WebhookHandler | PlaybookHandler


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalCallRecord:
    """``[callrecord] type="local"``: CDR JSON files under ``root/<YYYYMMDD>/``."""

    tag: ClassVar[str] = "local"

    root: str = DEFAULT_CDR_ROOT


@dataclass(frozen=True, slots=True, kw_only=True)
class S3CallRecord:
    """``[callrecord] type="s3"``: CDRs (and media) uploaded to S3-compatible storage."""

    tag: ClassVar[str] = "s3"

    vendor: S3Vendor
    bucket: str
    region: str
    access_key: str = field(repr=False, metadata=_key(secret=True))
    secret_key: str = field(repr=False, metadata=_key(secret=True))
    endpoint: str
    root: str
    with_media: bool = False
    keep_media_copy: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpCallRecord:
    """``[callrecord] type="http"``: CDRs (and media) POSTed as multipart to ``url``."""

    tag: ClassVar[str] = "http"

    url: str
    headers: StrMap | None = None
    with_media: bool = False
    keep_media_copy: bool = False


CallRecord = LocalCallRecord | S3CallRecord | HttpCallRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingPolicy:
    """``[recording]``: where recordings go (``path``) and their ``format``.

    A call is recorded only when its ``recorder`` option asks; the other keys are parsed for
    upstream compatibility (upstream does not use them either).
    """

    enabled: bool = False
    auto_start: bool | None = None
    filename_pattern: str | None = None
    samplerate: Annotated[int, _Range(1, 384000)] | None = None
    ptime: Annotated[int, _Range(1, 60000)] | None = None
    path: Annotated[str, _Convert(_recorder_path)] = DEFAULT_RECORDER_PATH
    format: RecorderFormat = "wav"
    native_samplerate: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IceServer:
    """``[[ice_servers]]``: a STUN/TURN server offered to WebRTC clients (``GET /iceservers``)."""

    urls: Annotated[tuple[str, ...], _ONE_OR_MANY]
    username: str | None = None
    credential: str | None = field(default=None, repr=False, metadata=_key(secret=True))
    credential_type: Annotated[str, _Choice(("password", "oauth"))] = "password"

    def to_json(self) -> dict[str, Any]:
        """The ``GET /iceservers`` entry: snake_case, absent fields left out (§2.11)."""
        out: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None or self.credential is not None:
            out.update(username=self.username or "", credential=self.credential or "")
            out["credential_type"] = self.credential_type
        return out


DEFAULT_ICE_SERVERS = (IceServer(urls=("stun:stun.l.google.com:19302",)),)


@dataclass(frozen=True, slots=True, kw_only=True)
class AmbianceOption:
    """``[ambiance]``: background loop mixed under the agent's audio (camelCase keys)."""

    path: str | None = None
    duck_level: float = field(default=0.1, metadata=_key("duckLevel", "duck_level"))
    normal_level: float = field(default=0.3, metadata=_key("normalLevel", "normal_level"))
    transition_speed: float = field(
        default=0.01, metadata=_key("transitionSpeed", "transition_speed")
    )
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RewriteRule:
    """``[[rewrites]]``: regex rewrite of a SIP target URI."""

    match: Regex
    rewrite: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UriMatch:
    """Regexes on the user and host parts of a SIP URI (both must match)."""

    user: Regex | None = None
    host: Regex | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UriRewrite:
    """New user and/or host of a SIP URI (a host without port keeps the old port)."""

    user: str | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkMatch:
    """``rule.match``: conditions on the From (``from_``) and To/Request-URI (``to``)."""

    from_: UriMatch | None = field(default=None, metadata=_key("from"))
    to: UriMatch | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkRewrite:
    """``rule.rewrite``: what a matching rule changes in an outgoing INVITE/REFER."""

    from_: UriRewrite | None = field(default=None, metadata=_key("from"))
    to: UriRewrite | None = None
    contact: UriRewrite | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkRuleDef:
    """The ``rule`` table of a trunk rule; an empty ``match`` matches everything."""

    match: TrunkMatch = field(default_factory=TrunkMatch)
    rewrite: TrunkRewrite = field(default_factory=TrunkRewrite)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkRule:
    """``[[trunk_rules]]``: first matching rule rewrites outgoing INVITE/REFER legs."""

    rule: TrunkRuleDef


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - platforms without sched_getaffinity


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration: upstream's keys (reference §3.2), then activecall's own."""

    http_addr: HostPort = "0.0.0.0:8080"
    addr: str = "0.0.0.0"
    udp_port: Port = 25060
    auto_learn_public_address: bool = False
    log_level: LogLevel = "info"
    log_file: str | None = None
    http_access_skip_paths: tuple[str, ...] = ()
    peers: tuple[Annotated[str, _Convert(_peer)], ...] = ()
    useragent: str = f"activecall({__version__})"
    register_users: tuple[RegisterUser, ...] = ()
    sip_register_proxy: bool | None = None
    graceful_shutdown: bool = True
    graceful_shutdown_timeout: Seconds = 30.0
    handler: InviteHandler | None = None
    accept_timeout: Annotated[float, _Duration(text=True)] = 60.0
    codecs: Annotated[tuple[Codec, ...], _Convert(_non_empty)] = DEFAULT_CODECS
    external_ip: str | None = None
    rtp_start_port: Port = 12000
    rtp_end_port: Port = 42000
    enable_rtp_latching: bool = True
    enable_ice_lite: bool = False
    rtp_bind_ip: str | None = None
    tls_port: Port | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    enable_srtp: bool = False
    callrecord: CallRecord | None = None
    media_cache_path: str = DEFAULT_MEDIA_CACHE_PATH
    ambiance: AmbianceOption | None = None
    ice_servers: tuple[IceServer, ...] = DEFAULT_ICE_SERVERS
    recording: RecordingPolicy = field(default_factory=RecordingPolicy)
    rewrites: tuple[RewriteRule, ...] = ()
    trunk_rules: tuple[TrunkRule, ...] = ()
    enable_options_response: bool = True
    http_gzip: bool = False
    # activecall's own keys
    workers: Annotated[int, _Range(1, 4096)] = field(default_factory=_cpu_count)
    http_token: Annotated[str, _Convert(_optional_token)] | None = field(
        default=None, repr=False, metadata=_key(secret=True)
    )
    max_frame_size: Annotated[int, _Range(1, 2**31 - 1)] = 1 << 20
    dump_path: str | None = None
    # outbound SIP over TLS: the CA bundle that signs peers' certificates (the system store
    # when unset), and whether to check the peer's certificate at all (off: tests only)
    tls_ca_file: str | None = None
    tls_verify_server: bool = True
    # command line only (``--call``)
    call: str | None = field(default=None, metadata=_key(cli_only=True))

    @property
    def http_bind(self) -> tuple[str, int]:
        """``http_addr`` as ``(host, port)`` for binding."""
        return split_host_port(self.http_addr)

    @property
    def dump_dir(self) -> str:
        """Where event dumps go: ``dump_path``, else ``recording.path``."""
        return self.dump_path or self.recording.path

    def _check(self) -> list[tuple[str, str]]:
        problems = []
        if self.rtp_start_port > self.rtp_end_port:
            problems.append(("rtp_start_port", "must not be greater than rtp_end_port"))
        if self.tls_port is not None and not (self.tls_cert_file and self.tls_key_file):
            problems.append(("tls_port", "needs tls_cert_file and tls_key_file"))
        return problems


# --- small parsers --------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` as ``(host, port)``; ``ValueError`` says what is wrong."""
    example = "e.g. 0.0.0.0:8080 or [::]:8080"
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            raise ValueError(f"must be [ipv6]:port ({example}), got {addr!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"has an invalid IPv6 address {host!r}") from None
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError(f"must be host:port ({example}), got {addr!r}")
        if ":" in host:
            raise ValueError(f"must put an IPv6 address in brackets ({example}), got {addr!r}")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"has an invalid host {host!r} ({example})")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must have a port from 0 to 65535, got {port!r}")
    return host, int(port)


def normalize_codec(name: str) -> str:
    """The canonical spelling of codec ``name`` (one of :data:`CODECS`), else ``ValueError``."""
    return _choose(_get_choice(Codec), name)


_UNITS = {
    **dict.fromkeys(("nsec", "ns"), 1e-9),
    **dict.fromkeys(("usec", "us", "µs"), 1e-6),
    **dict.fromkeys(("msec", "ms"), 1e-3),
    **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1.0),
    **dict.fromkeys(("minutes", "minute", "mins", "min", "m"), 60.0),
    **dict.fromkeys(("hours", "hour", "hrs", "hr", "h"), 3600.0),
    **dict.fromkeys(("days", "day", "d"), 86400.0),
    **dict.fromkeys(("weeks", "week", "w"), 604800.0),
    **dict.fromkeys(("months", "month", "M"), 2630016.0),  # humantime: 30.44 days
    **dict.fromkeys(("years", "year", "y"), 31557600.0),  # humantime: 365.25 days
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-zµ]+)")


def parse_duration(value: str | float) -> float:
    """Seconds from a humantime string (``"1m30s"``, ``"500ms"``) or a number of seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('must be a duration such as "50s" or a number of seconds')
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        total, pos = 0.0, 0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos or m[2] not in _UNITS:
                break
            total += float(m[1]) * _UNITS[m[2]]
            pos = m.end()
        if text and pos == len(text):
            return total
        raise ValueError(
            f'is not a duration: {value!r} (use e.g. "50s", "1m30s", "500ms" or seconds)'
        )
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return float(value)


def _format_duration(seconds: float) -> str:
    if seconds.is_integer():
        return f"{int(seconds)}s"
    if (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:.9f}".rstrip("0") + "s"


# --- problems -------------------------------------------------------------------------------------

_Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One error or warning of a config file; ``str()`` is ``file:line: message``."""

    source: str
    message: str
    line: int | None = None
    column: int | None = None
    key: str | None = None
    severity: _Severity = "error"

    @property
    def location(self) -> str:
        """``file``, ``file:line`` or ``file:line:column``."""
        loc = self.source
        if self.line is not None:
            loc += f":{self.line}"
            if self.column is not None:
                loc += f":{self.column}"
        return loc

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be used; ``problems`` holds every error found."""

    def __init__(self, problems: tuple[ConfigProblem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# --- where keys are in the text -------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_PART = rf"(?:{_BARE}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_DOTTED = rf"{_PART}(?:\s*\.\s*{_PART})*"
_AOT_RE = re.compile(rf"\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_RE = re.compile(rf"\s*\[\s*({_DOTTED})\s*\]")
_KV_RE = re.compile(rf"\s*({_DOTTED})\s*=(.*)")
_PART_RE = re.compile(_PART)


def _key_parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in _PART_RE.findall(dotted)]


def _join(prefix: str, parts: list[str]) -> str:
    return ".".join([prefix, *parts]) if prefix else ".".join(parts)


def _bracket_depth(text: str) -> int:
    """Open ``[``/``{`` minus closed ones in ``text``, outside strings and comments."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth


def _key_lines(text: str) -> dict[str, int]:
    """Line of every key path (``handler.rules[1].playbook``) of a TOML text that parses."""
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}  # array-of-tables path -> index of its last element
    table, depth, multiline = "", 0, ""

    def concrete(parts: list[str]) -> str:
        path = ""
        for part in parts:
            path = _join(path, [part])
            if path in arrays:
                path = f"{path}[{arrays[path]}]"
        return path

    for number, line in enumerate(text.splitlines(), 1):
        if multiline:
            if multiline in line:
                multiline = ""
            continue
        if depth > 0:
            depth += _bracket_depth(line)
            continue
        if m := _AOT_RE.match(line):
            parts = _key_parts(m[1])
            array = _join(concrete(parts[:-1]), parts[-1:])
            arrays[array] = arrays.get(array, -1) + 1
            table = f"{array}[{arrays[array]}]"
            lines.setdefault(array, number)
            lines[table] = number
        elif m := _TABLE_RE.match(line):
            table = concrete(_key_parts(m[1]))
            lines.setdefault(table, number)
        elif m := _KV_RE.match(line):
            parts = _key_parts(m[1])
            for i in range(1, len(parts) + 1):
                lines.setdefault(_join(table, parts[:i]), number)
            value = m[2].lstrip()
            for quotes in ('"""', "'''"):
                if value.startswith(quotes) and quotes not in value[3:]:
                    multiline = quotes
            if not multiline:
                depth = max(_bracket_depth(value), 0)
    return lines


def _parent_path(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    return path.rpartition(".")[0]


# --- the decoder ----------------------------------------------------------------------------------

_BAD: Any = object()  # a value that failed to decode (its problem is recorded)
_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _hints_cache:
        _hints_cache[cls] = get_type_hints(cls, include_extras=True)
    return _hints_cache[cls]


def _get_choice(tp: Any) -> _Choice:
    return next(m for m in get_args(tp)[1:] if isinstance(m, _Choice))


def _choose(choice: _Choice, value: str) -> str:
    low = value.lower()
    if low in choice.values:
        return low
    if low in choice.aliases:
        return choice.aliases[low]
    raise ValueError(f"must be one of {', '.join(choice.values)}, got {value!r}")


def _kind(value: Any) -> str:
    for tp, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
    ):
        if isinstance(value, tp):
            return name
    return "a date/time"


def _got(value: Any) -> str:
    shown = json.dumps(value, default=str) if not isinstance(value, dict | list) else ""
    return f"{_kind(value)} {shown}".rstrip() if shown else _kind(value)


class _Decoder:
    """Decodes the parsed TOML into dataclasses, recording every problem by key path."""

    def __init__(self) -> None:
        self.problems: list[tuple[_Severity, str, str]] = []  # (severity, path, message)

    def error(self, path: str, message: str) -> Any:
        self.problems.append(("error", path, f"{path} {message}"))
        return _BAD

    def decode(self, tp: Any, value: Any, path: str) -> Any:
        origin = get_origin(tp)
        if origin is Annotated:
            return self.annotated(tp, value, path)
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) > 1:
                return self.tagged(members, value, path)
            return self.decode(members[0], value, path)
        if origin is tuple:
            return self.array(tp, value, path)
        if origin is Mapping:
            if not isinstance(value, dict):
                return self.error(path, f"must be a table, got {_got(value)}")
            item_type = get_args(tp)[1]
            items = {k: self.decode(item_type, v, _join(path, [k])) for k, v in value.items()}
            return _BAD if _BAD in items.values() else items
        if dataclasses.is_dataclass(tp):
            return self.table(cast(type, tp), value, path)
        return self.scalar(tp, value, path)

    def annotated(self, tp: Any, value: Any, path: str) -> Any:
        base, *marks = get_args(tp)
        if _PAIRS in marks and isinstance(value, dict):
            value = [[k, v] for k, v in value.items()]
        if _ONE_OR_MANY in marks and not isinstance(value, list):
            value = [value]
        duration = next((m for m in marks if isinstance(m, _Duration)), None)
        if duration is not None:
            try:
                return parse_duration(value)
            except ValueError as exc:
                return self.error(path, str(exc))
        decoded = self.decode(base, value, path)
        if decoded is _BAD:
            return _BAD
        try:
            for mark in marks:
                if isinstance(mark, _Range) and not mark.low <= decoded <= mark.high:
                    raise ValueError(f"must be from {mark.low} to {mark.high}, got {decoded}")
                if isinstance(mark, _Choice):
                    decoded = _choose(mark, decoded)
                if isinstance(mark, _Convert):
                    decoded = mark.func(decoded)
        except ValueError as exc:
            return self.error(path, str(exc))
        return decoded

    def array(self, tp: Any, value: Any, path: str) -> Any:
        args = get_args(tp)
        if not isinstance(value, list):
            return self.error(path, f"must be an array, got {_got(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = [self.decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        elif len(value) != len(args):
            return self.error(path, f"must be an array of {len(args)} items, got {len(value)}")
        else:
            items = [
                self.decode(a, v, f"{path}[{i}]")
                for i, (a, v) in enumerate(zip(args, value, strict=True))
            ]
        return _BAD if _BAD in items else tuple(items)

    def scalar(self, tp: Any, value: Any, path: str) -> Any:
        kinds = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            return self.error(path, f"must be {kinds[tp]}, got {_got(value)}")
        return value

    def tagged(self, members: list[type], value: Any, path: str) -> Any:
        tags = {m.tag: m for m in members}  # type: ignore[attr-defined]
        names = ", ".join(tags)
        if not isinstance(value, dict):
            return self.error(path, f"must be a table, got {_got(value)}")
        if "type" not in value:
            return self.error(_join(path, ["type"]), f"is required (one of {names})")
        tag = value["type"]
        cls = tags.get(tag.lower()) if isinstance(tag, str) else None
        if cls is None:
            return self.error(_join(path, ["type"]), f"must be one of {names}, got {_got(tag)}")
        return self.table(cls, value, path, skip=("type",))

    def table(self, cls: type, value: Any, path: str, skip: tuple[str, ...] = ()) -> Any:
        if not isinstance(value, dict):
            return self.error(path, f"must be a table, got {_got(value)}")
        hints, kwargs, seen, bad = _hints(cls), {}, set(skip), False
        for f in dataclasses.fields(cls):
            if f.metadata.get("cli_only"):
                continue
            names = (f.metadata.get("toml") or f.name, *f.metadata.get("aliases", ()))
            seen.update(names)
            name = next((n for n in names if n in value), None)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name is None:
                if required:
                    bad = True
                    self.error(_join(path, [names[0]]), "is required")
                continue
            decoded = self.decode(hints[f.name], value[name], _join(path, [name]))
            if decoded is _BAD:
                bad = bad or required
            else:
                kwargs[f.name] = decoded
        for key in value:
            if key not in seen:
                key_path = _join(path, [key])
                self.problems.append(("warning", key_path, f"unknown key {key_path!r} ignored"))
        if bad:
            return _BAD
        obj = cls(**kwargs)
        check = getattr(obj, "_check", None)
        for sub, message in check() if check else ():
            self.error(_join(path, [sub]), message)
        return obj


# --- loading --------------------------------------------------------------------------------------

_TOML_POS = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$")


def parse_config(
    text: str, source: str = "<config>"
) -> tuple[Config | None, tuple[ConfigProblem, ...]]:
    """Decode TOML ``text``: the config (``None`` if any error) and every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        if m := _TOML_POS.match(message):
            problem = ConfigProblem(source, f"invalid TOML: {m[1]}", int(m[2]), int(m[3]))
        else:
            message = message.replace(" (at end of document)", "")
            last = max(text.count("\n") + (not text.endswith("\n")), 1)
            problem = ConfigProblem(source, f"invalid TOML at end of file: {message}", last)
        return None, (problem,)
    decoder = _Decoder()
    config = decoder.table(Config, data, "")
    lines = _key_lines(text)
    problems = []
    for severity, path, message in decoder.problems:
        probe = path
        while probe and probe not in lines:
            probe = _parent_path(probe)
        line = lines.get(probe)
        problems.append(ConfigProblem(source, message, line, None, path, severity))
    problems.sort(key=lambda p: (p.line or 0, p.severity))
    if any(p.severity == "error" for p in problems) or config is _BAD:
        return None, tuple(problems)
    return config, tuple(problems)


def check_config(path: str | Path) -> tuple[Config | None, tuple[ConfigProblem, ...]]:
    """Read and decode the config file at ``path``: the config (or ``None``) and its problems."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return None, (ConfigProblem(source, f"cannot read the config file: {reason}"),)
    return parse_config(text, source)


def load_config(path: str | Path | None) -> Config:
    """The config of the file at ``path`` (``None``: the built-in defaults).

    Unknown keys are logged as warnings; any error raises :class:`ConfigError`.
    """
    if path is None:
        return Config()
    config, problems = check_config(path)
    for problem in problems:
        if problem.severity == "warning":
            logger.warning("%s", problem)
    if config is None:
        raise ConfigError(tuple(p for p in problems if p.severity == "error"))
    return config


# --- output ---------------------------------------------------------------------------------------


def config_to_dict(config: Config, *, secrets: bool = False) -> dict[str, Any]:
    """The config as TOML-shaped data (TOML key names, ``None`` left out, secrets masked)."""

    def convert(value: Any, tp: Any, secret: bool) -> Any:
        if secret and value is not None and not secrets:
            return "***"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return table(value)
        if isinstance(value, tuple):
            return [convert(v, None, False) for v in value]
        if isinstance(value, Mapping):
            return {k: convert(v, None, False) for k, v in value.items()}
        if isinstance(value, float) and get_origin(tp) is Annotated:
            mark = next((m for m in get_args(tp) if isinstance(m, _Duration)), None)
            if mark is not None:
                return _format_duration(value) if mark.text else _plain_number(value)
        return value

    def table(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        tag = getattr(type(obj), "tag", None)
        if tag is not None:
            out["type"] = tag
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None or f.metadata.get("cli_only"):
                continue
            name = f.metadata.get("toml") or f.name
            out[name] = convert(value, hints[f.name], f.metadata.get("secret", False))
        return out

    return table(config)


def _plain_number(value: float) -> int | float:
    return int(value) if value.is_integer() else value


def _toml_key(key: str) -> str:
    return key if re.fullmatch(_BARE, key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return repr(value)


def _is_array_of_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_lines(table: Mapping[str, Any], prefix: list[str]) -> Iterator[str]:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_array_of_tables(value):
            yield f"{_toml_key(key)} = {_toml_value(value)}"
    for key, value in table.items():
        header = ".".join(_toml_key(k) for k in [*prefix, key])
        if isinstance(value, dict):
            yield ""
            yield f"[{header}]"
            yield from _toml_lines(value, [*prefix, key])
        elif _is_array_of_tables(value):
            for item in value:
                yield ""
                yield f"[[{header}]]"
                yield from _toml_lines(item, [*prefix, key])


def config_to_toml(config: Config, *, secrets: bool = False) -> str:
    """The config as a TOML file that :func:`load_config` reads back (secrets masked)."""
    return "\n".join(_toml_lines(config_to_dict(config, secrets=secrets), [])) + "\n"


# --- .env -----------------------------------------------------------------------------------------

_DOTENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*")
_DOTENV_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_DOTENV_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


def load_dotenv(
    path: str | Path = ".env", environ: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Set the variables of a ``.env`` file that are not set yet; return those it set.

    ``KEY=value`` lines, optional ``export``, ``#`` comments, single quotes (literal) and double
    quotes (``\\n`` escapes); ``$VAR``/``${VAR}`` expand outside single quotes, as dotenvy does.
    A missing file is not an error; a malformed line is logged and skipped.
    """
    env = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    values: dict[str, str] = {}

    def lookup(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        return values.get(name, env.get(name, ""))

    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _DOTENV_LINE.fullmatch(line)
        parsed = _dotenv_value(m[2]) if m else None
        if m is None or parsed is None:
            logger.warning("%s:%d: not a KEY=value line, skipped", path, number)
            continue
        value, literal = parsed
        values[m[1]] = value if literal else _DOTENV_VAR.sub(lookup, value)
    set_now = {}
    for name, value in values.items():
        if name not in env:
            env[name] = set_now[name] = value
    return set_now


def _dotenv_value(raw: str) -> tuple[str, bool] | None:
    """The value of a ``.env`` line and whether it is literal (single-quoted); ``None``: bad."""
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0 or not _only_comment(raw[end + 1 :]):
            return None
        return raw[1:end], True
    if raw.startswith('"'):
        out, i = [], 1
        while i < len(raw) and raw[i] != '"':
            if raw[i] == "\\" and i + 1 < len(raw):
                i += 1
                out.append(_DOTENV_ESCAPES.get(raw[i], "\\" + raw[i]))
            else:
                out.append(raw[i])
            i += 1
        if i >= len(raw) or not _only_comment(raw[i + 1 :]):
            return None
        return "".join(out), False
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip(), False


def _only_comment(rest: str) -> bool:
    rest = rest.strip()
    return not rest or rest.startswith("#")
