"""Option objects of the command API (reference §2.5) and the JSON schema they share with
commands and events.

Every command, event and option is a frozen dataclass whose attributes are the snake_case of
its wire names; :func:`decode` and :func:`encode` derive the wire form from the type hints, so
each shape is declared once. The rules, in one place:

* wire name = camelCase of the attribute (``wire_case = "snake"`` keeps it: ``SipOption``), or
  the ``wire`` metadata of the field (``from_`` → ``from``; ``vad_type`` → ``vad.type``, a key
  of the nested ``vad`` object);
* a field without a default is required; a field defaulting to ``None`` is omitted from the
  output when ``None`` (never ``null``); ``null`` in the input counts as absent;
* ``aliases`` metadata lists other accepted spellings; the canonical name wins;
* unknown keys are ignored; values are checked for their JSON type and integer range only
  (what a value means is the call's business).
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from activecall.media.vad import VadOption

__all__ = [
    "I32",
    "MAX_DEPTH",
    "U32",
    "U64",
    "CallOption",
    "FieldError",
    "JsonObject",
    "LenientBool",
    "LenientU64",
    "RecorderOption",
    "ReferOption",
    "SipOption",
    "StrMap",
    "SynthesisOption",
    "TranscriptionOption",
    "VadOption",
    "decode",
    "encode",
    "json_kind",
    "wire",
]


class FieldError(ValueError):
    """A JSON value that does not fit its field; ``path`` names it (``option.sip.realm``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path} {problem}")
        self.path = path
        self.problem = problem


# Type markers read from the annotations.
@dataclass(frozen=True, slots=True)
class _Range:
    low: int
    high: int


_LENIENT = "lenient"  # also accept the value spelled as a JSON string

U32 = Annotated[int, _Range(0, 2**32 - 1)]
U64 = Annotated[int, _Range(0, 2**64 - 1)]
I32 = Annotated[int, _Range(-(2**31), 2**31 - 1)]
LenientU64 = Annotated[int, _Range(0, 2**64 - 1), _LENIENT]
"""Integer seconds; also ``"30"``/``"30s"`` (the Go SDK types ``handshakeTimeout`` a string)."""
LenientBool = Annotated[bool, _LENIENT]
"""Boolean; also ``"true"``/``"false"`` (upstream docs show ``interrupt.graceful`` a string)."""
StrMap = Mapping[str, str]
JsonObject = Mapping[str, Any]


def wire(name: str | None = None, *aliases: str) -> dict[str, Any]:
    """Field metadata: an explicit wire ``name`` and/or extra accepted spellings."""
    return {"wire": name, "aliases": aliases}


# --- option objects -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SipOption:
    """``option.sip``: credentials and headers of a SIP leg (snake_case on the wire)."""

    wire_case: ClassVar[str] = "snake"

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    realm: str | None = None
    contact: str | None = None
    headers: StrMap | None = None
    hangup_headers: StrMap | None = field(default=None, metadata=wire(None, "hangupHeaders"))
    extract_headers: tuple[str, ...] | None = field(
        default=None, metadata=wire(None, "extractHeaders")
    )
    enable_srtp: bool | None = field(default=None, metadata=wire(None, "enableSrtp"))


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderOption:
    """``recorder``: WAV recording of the call (``{id}`` in the file name is the session id)."""

    recorder_file: str = ""
    samplerate: U32 = 16000
    ptime: U32 = 200
    format: str = "wav"


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptionOption:
    """``asr``: the speech-to-text provider and its settings; ``None`` = provider default."""

    provider: str | None = None
    language: str | None = None
    app_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False, metadata=wire(None, "apiKey"))
    model_type: str | None = field(default=None, metadata=wire(None, "model"))
    buffer_size: U32 | None = None
    samplerate: U32 | None = None
    endpoint: str | None = None
    extra: StrMap | None = None
    start_when_answer: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SynthesisOption:
    """``tts``: the text-to-speech provider and its settings; ``None`` = provider default."""

    samplerate: I32 | None = None
    provider: str | None = None
    speed: float | None = None
    app_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False, metadata=wire(None, "apiKey"))
    volume: I32 | None = None
    speaker: str | None = None
    codec: str | None = None
    subtitle: bool | None = None
    model: str | None = field(default=None, metadata=wire(None, "voice"))
    language: str | None = None
    emotion: str | None = None
    endpoint: str | None = None
    extra: StrMap | None = None
    max_concurrent_tasks: U32 | None = None
    session_id: str | None = None

    def merge(self, override: SynthesisOption | None) -> SynthesisOption:
        """This option with every field that ``override`` sets replaced (``tts.option``)."""
        if override is None:
            return self
        changes = {
            f.name: getattr(override, f.name)
            for f in dataclasses.fields(override)
            if getattr(override, f.name) is not None
        }
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOption:
    """``invite.option`` / ``accept.option``; ``None`` = not given (the call applies defaults).

    ``vad_type`` is the ``type`` key of the ``vad`` object (``silero``, ``nop``, ...); the
    other VAD settings are :class:`~activecall.media.vad.VadOption`. Objects the codec does not
    model (``agc``, ``mediaPass``, ``ambiance``, ``eou``, ``realtime``, ``ringbackDetection``)
    are kept as JSON objects.
    """

    denoise: bool | None = None
    agc: JsonObject | None = None
    offer: str | None = None
    callee: str | None = None
    caller: str | None = None
    recorder: RecorderOption | None = None
    vad: VadOption | None = None
    vad_type: str | None = field(default=None, metadata=wire("vad.type"))
    asr: TranscriptionOption | None = None
    tts: SynthesisOption | None = None
    media_pass: JsonObject | None = None
    handshake_timeout: LenientU64 | None = None
    enable_ipv6: bool | None = None
    inactivity_timeout: U64 | None = None
    sip: SipOption | None = None
    extra: StrMap | None = None
    codec: str | None = None
    ambiance: JsonObject | None = None
    eou: JsonObject | None = None
    realtime: JsonObject | None = None
    subscribe: bool | None = None
    enable_ice_lite: bool | None = None
    ringback_detection: JsonObject | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferOption:
    """``refer.options``: the transfer leg (defaults: 30 s timeout, autoHangup, forwardDtmf)."""

    denoise: bool | None = None
    agc: JsonObject | None = None
    timeout: U32 | None = None
    moh: str | None = None
    vad: VadOption | None = None
    vad_type: str | None = field(default=None, metadata=wire("vad.type"))
    asr: TranscriptionOption | None = None
    auto_hangup: bool | None = None
    sip: SipOption | None = None
    call_id: str | None = None
    pause_parent_asr: bool | None = None
    forward_dtmf: bool | None = None


# --- the schema machinery -----------------------------------------------------------------

Decoder = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Field:
    attr: str
    names: tuple[str, ...]  # canonical wire name first, then the aliases
    decode: Decoder
    encode: Encoder
    required: bool
    nullable: bool  # a required JSON value that may be null (``data: any``)


def json_kind(value: Any) -> str:
    """The JSON type of a decoded value, with its article, for messages (``an integer``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _camel(name: str) -> str:
    head, *rest = name.rstrip("_").split("_")
    return head + "".join(part.capitalize() for part in rest)


def _decode_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise FieldError(path, f"must be a string, got {json_kind(value)}")
    return value


def _decode_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(path, f"must be a boolean, got {json_kind(value)}")
    return value


def _decode_lenient_bool(value: Any, path: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return _decode_bool(value, path)


_SECONDS = re.compile(r"[0-9]{1,20}s?")


def _int_decoder(bounds: _Range | None, lenient: bool) -> Decoder:
    def decode_int(value: Any, path: str) -> int:
        if lenient and isinstance(value, str) and _SECONDS.fullmatch(value):
            value = int(value.rstrip("s"))
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(path, f"must be an integer, got {json_kind(value)}")
        if bounds is not None and not bounds.low <= value <= bounds.high:
            raise FieldError(path, f"must be between {bounds.low} and {bounds.high}")
        return value

    return decode_int


def _decode_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(path, f"must be a number, got {json_kind(value)}")
    return float(value)


def _decode_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FieldError(path, f"must be an object, got {json_kind(value)}")
    return value


# orjson reads 1024 levels but writes 254: a deeper free-form value (``custom.data``) would
# parse and then fail to echo.
MAX_DEPTH = 64


def _check_depth(value: Any, path: str) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FieldError(path, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _decode_json_object(value: Any, path: str) -> dict[str, Any]:
    obj = _decode_object(value, path)
    _check_depth(obj, path)
    return obj


def _decode_str_map(value: Any, path: str) -> dict[str, str]:
    obj = _decode_object(value, path)
    for key, item in obj.items():
        _decode_str(item, _join(path, key))
    return obj


def _decode_str_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise FieldError(path, f"must be an array of strings, got {json_kind(value)}")
    return tuple(_decode_str(item, f"{path}[{i}]") for i, item in enumerate(value))


def _decode_any(value: Any, path: str) -> Any:
    _check_depth(value, path)
    return value


def _decode_vad(value: Any, path: str) -> VadOption:
    obj = _decode_object(value, path)
    try:
        return VadOption.from_json(obj)
    except (TypeError, ValueError) as exc:
        # VadOption says "vad.speechPadding must be ..."; re-root it at this path.
        text = str(exc)
        name, _, problem = text.removeprefix("vad.").partition(" ")
        if text.startswith("vad.") and problem:
            raise FieldError(_join(path, name), problem) from None
        raise FieldError(path, text) from None


def _encode_vad(value: VadOption) -> dict[str, Any]:
    out: dict[str, Any] = {
        "speechPadding": value.speech_padding,
        "silencePadding": value.silence_padding,
        "voiceThreshold": value.voice_threshold,
    }
    if value.silence_timeout is not None:
        out["silenceTimeout"] = value.silence_timeout
    return out


def _same(value: Any) -> Any:
    return value


def _codec(tp: Any) -> tuple[Decoder, Encoder]:
    """The decoder and encoder of one (non-optional) annotation."""
    meta: tuple[Any, ...] = ()
    if get_origin(tp) is Annotated:
        tp, *rest = get_args(tp)
        meta = tuple(rest)
    origin = get_origin(tp)
    if tp is str:
        return _decode_str, _same
    if tp is bool:
        return (_decode_lenient_bool if _LENIENT in meta else _decode_bool), _same
    if tp is int:
        bounds = next((m for m in meta if isinstance(m, _Range)), None)
        return _int_decoder(bounds, _LENIENT in meta), _same
    if tp is float:
        return _decode_float, _same
    if tp is Any:
        return _decode_any, _same
    if tp is VadOption:
        return _decode_vad, _encode_vad
    if origin is Mapping:
        value_type = get_args(tp)[1]
        return (_decode_str_map if value_type is str else _decode_json_object), dict
    if origin is tuple:
        return _decode_str_list, list
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        cls = tp

        def decode_nested(value: Any, path: str) -> Any:
            return decode(cls, _decode_object(value, path), path)

        return decode_nested, encode
    raise TypeError(f"no JSON codec for {tp!r}")  # a bug in a declaration, not bad input


_SCHEMAS: dict[type, tuple[_Field, ...]] = {}


def _schema(cls: type) -> tuple[_Field, ...]:
    """The wire fields of a dataclass (computed once per class)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _build_schema(cls)
    return schema


def _build_schema(cls: type) -> tuple[_Field, ...]:
    """The wire fields of a dataclass, from its type hints and field metadata."""
    hints = get_type_hints(cls, include_extras=True)
    snake = getattr(cls, "wire_case", "camel") == "snake"
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = get_args(tp)
        optional = get_origin(tp) in (Union, types.UnionType) and type(None) in args
        if optional:
            (tp,) = (a for a in args if a is not type(None))
        dec, enc = _codec(tp)
        name = f.metadata.get("wire") or (f.name if snake else _camel(f.name))
        required = f.default is dataclasses.MISSING
        names = (name, *f.metadata.get("aliases", ()))
        out.append(_Field(f.name, names, dec, enc, required, required and tp is Any))
    return tuple(out)


def _lookup(obj: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """(present, value) of a wire name; ``a.b`` reads key ``b`` of the object at ``a``."""
    head, dot, tail = name.partition(".")
    if dot:
        parent = obj.get(head)
        return _lookup(parent, tail) if isinstance(parent, dict) else (False, None)
    return name in obj, obj.get(name)


T = TypeVar("T")


def decode(cls: type[T], obj: Mapping[str, Any], path: str = "") -> T:
    """Build ``cls`` from a decoded JSON object; raises :class:`FieldError`."""
    kwargs: dict[str, Any] = {}
    for f in _schema(cls):
        for name in f.names:
            present, value = _lookup(obj, name)
            if present and (value is not None or f.nullable):
                kwargs[f.attr] = f.decode(value, _join(path, name))
                break
        else:
            if f.required:
                raise FieldError(_join(path, f.names[0]), "is required")
    try:
        return cls(**kwargs)
    except FieldError as exc:  # a check in __post_init__
        raise FieldError(_join(path, exc.path), exc.problem) from None


def encode(value: Any) -> dict[str, Any]:
    """The JSON object of a dataclass instance; ``None`` fields are left out."""
    out: dict[str, Any] = {}
    nested: list[tuple[str, Any]] = []
    for f in _schema(type(value)):
        item = getattr(value, f.attr)
        if item is None and not f.nullable:
            continue
        name = f.names[0]
        if "." in name:
            nested.append((name, item))
        else:
            out[name] = f.encode(item)
    for name, item in nested:
        head, _, tail = name.partition(".")
        parent = out.get(head)
        if isinstance(parent, dict):  # vad_type needs a vad object to live in
            parent[tail] = item
    return out
