"""Reading a playbook: YAML front matter, ``${VAR}`` from the environment, scenes and their tags.

The rules, in one place:

* the file starts with a ``---`` line; the front matter ends at the next ``---`` (or ``...``)
  line; the rest is the body;
* ``${VAR}`` in front matter values is replaced from the environment (unset: left verbatim).
  Values are substituted after YAML parsing, so a value can never break the YAML, and a plain
  scalar that is only ``${VAR}`` takes the type of what it becomes (``timeout: ${T}`` is a
  number when ``T=5000``), as with upstream's textual substitution;
* keys are upstream's camelCase (reference §4.2), plus the spellings PROTOCOL.md accepts
  (``followup: {timeout, max}`` beside ``followUp: {timeout, maxCount}``,
  ``posthook.include_history`` beside ``includeHistory``);
* an unknown key is a warning; a wrong type, a missing required value, a ``goto`` to a scene
  that does not exist, a template that does not parse, or no ``llm`` (unless ``realtime``) is
  an error; every problem of a file is reported, each with its line;
* the body's text before the first ``# Scene: id`` header is scene ``default``; the first scene
  is where a call starts; ``<dtmf/>``, ``<play/>`` and ``<followup/>`` tags are taken out of a
  scene's prompt into the scene.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from activecall.playbook.model import (
    DTMF_KEYS,
    DtmfAction,
    DtmfCollector,
    FollowUp,
    Interruption,
    LlmConfig,
    Playbook,
    Posthook,
    Scene,
    frozen_map,
)
from activecall.playbook.prompt import FEATURES
from activecall.playbook.tags import find_tags
from activecall.playbook.template import check_template
from activecall.protocol.options import (
    CallOption,
    FieldError,
    RecorderOption,
    SipOption,
    SynthesisOption,
    TranscriptionOption,
    decode,
)

__all__ = [
    "OPTION_KEYS",
    "PlaybookError",
    "PlaybookProblem",
    "check_playbook",
    "load_playbook",
    "parse_playbook",
    "read_playbook",
]

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
Path_ = tuple[str, ...]

OPTION_KEYS = (
    "asr",
    "tts",
    "vad",
    "denoise",
    "agc",
    "ambiance",
    "recorder",
    "extra",
    "eou",
    "realtime",
    "ringbackDetection",
    "sip",
)
"""Front matter keys copied into the call's option (``invite``/``accept``)."""

_TOP_KEYS = frozenset(
    {
        *OPTION_KEYS,
        "llm",
        "greeting",
        "interruption",
        "dtmf",
        "dtmfCollectors",
        "followUp",
        "followup",
        "posthook",
    }
)
_LLM_KEYS = {
    "provider": "provider",
    "model": "model",
    "baseUrl": "base_url",
    "apiKey": "api_key",
    "prompt": "prompt",
    "greeting": "greeting",
    "language": "language",
    "features": "features",
    "repairWindowMs": "repair_window_ms",
    "summaryLimit": "summary_limit",
    "toolInstructions": "tool_instructions",
    "tools": "tools",
}
_INTERRUPTION_KEYS = (
    "strategy",
    "minSpeechMs",
    "fillerWordFilter",
    "volumeFadeMs",
    "ignoreFirstMs",
)
_STRATEGIES = ("both", "vad", "asr", "none")
_COLLECTOR_KEYS = (
    "description",
    "digits",
    "minDigits",
    "maxDigits",
    "finishKey",
    "timeout",
    "interDigitTimeout",
    "validation",
    "retryTimes",
    "interruptible",
)
_POSTHOOK_KEYS = (
    "url",
    "summary",
    "method",
    "headers",
    "includeHistory",
    "include_history",
    "timeout",
)
_HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_OPTION_CLASSES: dict[str, type] = {
    "asr": TranscriptionOption,
    "tts": SynthesisOption,
    "recorder": RecorderOption,
    "sip": SipOption,
}
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SCENE_HEADER = re.compile(r"#[ \t]*Scene:[ \t]*(.*?)[ \t]*")
_SCENE_ID = re.compile(r"[A-Za-z0-9_.-]+")
_SCENE_TAGS = frozenset({"dtmf", "play", "followup"})
_PROMPT_TAGS = frozenset({"goto", "collect"})


# --- problems ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlaybookProblem:
    """One error or warning of a playbook; ``str()`` is ``file:line: message``."""

    source: str
    message: str
    line: int | None = None
    severity: Severity = "error"
    key: str | None = None

    @property
    def location(self) -> str:
        """``file`` or ``file:line``."""
        return self.source if self.line is None else f"{self.source}:{self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class PlaybookError(Exception):
    """A playbook that cannot be used; ``problems`` holds every error found."""

    def __init__(self, problems: tuple[PlaybookProblem, ...]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


# --- entry points -----------------------------------------------------------------------------


def check_playbook(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> tuple[Playbook | None, tuple[PlaybookProblem, ...]]:
    """Read ``path``: the playbook (``None`` if it has errors) and every problem found."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, (PlaybookProblem(source, f"cannot read the playbook: {exc}"),)
    return read_playbook(text, source=source, environ=environ)


def read_playbook(
    text: str, *, source: str = "<playbook>", environ: Mapping[str, str] | None = None
) -> tuple[Playbook | None, tuple[PlaybookProblem, ...]]:
    """Parse playbook ``text``: the playbook (``None`` if it has errors) and every problem."""
    reader = _Reader(source, os.environ if environ is None else environ)
    playbook = reader.playbook(text)
    problems = tuple(sorted(reader.problems, key=lambda p: (p.line or 0, p.severity != "error")))
    if any(p.severity == "error" for p in problems):
        return None, problems
    return playbook, problems


def parse_playbook(
    text: str, *, source: str = "<playbook>", environ: Mapping[str, str] | None = None
) -> Playbook:
    """Parse playbook ``text``; warnings are logged, errors raise :class:`PlaybookError`."""
    playbook, problems = read_playbook(text, source=source, environ=environ)
    for problem in problems:
        if problem.severity == "warning":
            log.warning("%s", problem)
    if playbook is None:
        raise PlaybookError(tuple(p for p in problems if p.severity == "error"))
    return playbook


def load_playbook(
    path_or_text: str | Path, *, environ: Mapping[str, str] | None = None
) -> Playbook:
    """A playbook from a file path, or from its text when the string starts with ``---``."""
    if isinstance(path_or_text, str) and path_or_text.lstrip("\ufeff").startswith("---"):
        return parse_playbook(path_or_text, environ=environ)
    playbook, problems = check_playbook(path_or_text, environ=environ)
    for problem in problems:
        if problem.severity == "warning":
            log.warning("%s", problem)
    if playbook is None:
        raise PlaybookError(tuple(p for p in problems if p.severity == "error"))
    return playbook


# --- the YAML with its line numbers -----------------------------------------------------------


@dataclass(slots=True)
class _Yaml:
    data: Any
    lines: dict[Path_, int]  # key path -> line in the file
    typed_env: set[Path_]  # plain scalars that are exactly ``${VAR}``


def _compose(text: str, first_line: int) -> _Yaml:
    """Parse YAML, keeping the file line of every key (raises ``yaml.YAMLError``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    out = _Yaml(data, {}, set())
    if node is not None:
        _walk(node, (), first_line, out)
    return out


def _walk(node: yaml.Node, path: Path_, first_line: int, out: _Yaml) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            here = (*path, name)
            out.lines.setdefault(here, key.start_mark.line + first_line)
            _walk(value, here, first_line, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            here = (*path, str(index))
            out.lines.setdefault(here, item.start_mark.line + first_line)
            _walk(item, here, first_line, out)
    elif (
        isinstance(node, yaml.ScalarNode) and node.style is None and _ENV_VAR.fullmatch(node.value)
    ):
        out.typed_env.add(path)


def _expand(value: Any, path: Path_, env: Mapping[str, str], typed: set[Path_]) -> Any:
    """``value`` with ``${VAR}`` replaced in every string."""
    if isinstance(value, dict):
        return {k: _expand(v, (*path, str(k)), env, typed) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*path, str(i)), env, typed) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    expanded = _ENV_VAR.sub(lambda m: env.get(m[1], m[0]), value)
    if path in typed and expanded != value:
        try:
            typed_value = yaml.safe_load(expanded)
        except yaml.YAMLError:
            return expanded
        if isinstance(typed_value, bool | int | float):
            return typed_value
    return expanded


# --- the reader ---------------------------------------------------------------------------------


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        # "scene 'a' <followup> timeout", "interruption.strategy"
        out += part if not out else (" " if out.endswith(">") else ".") + part
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) < 40 else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class _Reader:
    """Builds a :class:`Playbook`, collecting every problem on the way."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env
        self.problems: list[PlaybookProblem] = []
        self.lines: dict[Path_, int] = {}
        self.base_line = 1  # where problems without a known line are reported
        self.body_line = 1  # the file line of the body's first line

    # -- reporting

    def line(self, path: Path_) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.base_line

    def error(self, path: Path_, message: str, line: int | None = None) -> None:
        self._add("error", path, message, line)

    def warn(self, path: Path_, message: str, line: int | None = None) -> None:
        self._add("warning", path, message, line)

    def _add(self, severity: Severity, path: Path_, message: str, line: int | None) -> None:
        text = f"{_dotted(path)}: {message}" if path else message
        where = line if line is not None else self.line(path)
        self.problems.append(PlaybookProblem(self.source, text, where, severity, _dotted(path)))

    # -- typed reading

    def mapping(self, value: Any, path: Path_, known: Iterable[str] | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {_kind(value)}")
            return {}
        if known is not None:
            names = set(known)
            for key in value:
                if str(key) not in names:
                    self.warn((*path, str(key)), "unknown key, ignored")
        return {str(k): v for k, v in value.items()}

    def text(self, obj: Mapping[str, Any], path: Path_, key: str) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error((*path, key), f"must be a string, got {_kind(value)}")
            return None
        return str(value)

    def integer(
        self, obj: Mapping[str, Any], path: Path_, key: str, *, minimum: int = 0
    ) -> int | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.error((*path, key), f"must be an integer ≥ {minimum}, got {_kind(value)}")
            return None
        return value

    def seconds(self, obj: Mapping[str, Any], path: Path_, key: str) -> float | None:
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            self.error((*path, key), f"must be a positive number of seconds, got {_kind(value)}")
            return None
        return float(value)

    def flag(self, obj: Mapping[str, Any], path: Path_, key: str) -> bool | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.error((*path, key), f"must be true or false, got {_kind(value)}")
            return None
        return value

    def texts(self, obj: Mapping[str, Any], path: Path_, key: str) -> tuple[str, ...]:
        value = obj.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error((*path, key), f"must be a list of strings, got {_kind(value)}")
            return ()
        return tuple(value)

    def text_map(self, obj: Mapping[str, Any], path: Path_, key: str) -> dict[str, str]:
        value = obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error((*path, key), f"must be a mapping of strings, got {_kind(value)}")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                self.error((*path, key, str(k)), f"must be a string, got {_kind(v)}")
            else:
                out[str(k)] = str(v)
        return out

    # -- the file

    def playbook(self, text: str) -> Playbook | None:
        lines = text.removeprefix("\ufeff").split("\n")
        if not lines or lines[0].rstrip() != "---":
            self.error((), "a playbook starts with a '---' line opening its YAML front matter", 1)
            return None
        end = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), None)
        if end is None:
            self.error((), "the front matter opened on line 1 is never closed with '---'", 1)
            return None
        front = "\n".join(lines[1:end])
        try:
            parsed = _compose(front, 2)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 2 if mark is not None else 1
            problem = exc.problem or exc.context or "not valid YAML"
            self.error((), f"invalid YAML: {problem}", line)
            return None
        except yaml.YAMLError as exc:
            self.error((), f"invalid YAML: {exc}", 1)
            return None
        self.lines = parsed.lines
        data = _expand(parsed.data, (), self.env, parsed.typed_env)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error((), f"the front matter must be a mapping of keys, got {_kind(data)}", 2)
            return None
        front_matter = self.mapping(data, (), _TOP_KEYS)
        scenes = self.scenes(lines[end + 1 :], end + 2)
        return self.build(front_matter, scenes)

    def build(self, fm: dict[str, Any], scenes: list[Scene]) -> Playbook | None:
        llm = self.llm(fm["llm"]) if fm.get("llm") is not None else None
        realtime = None
        if fm.get("realtime") is not None:
            realtime = self.mapping(fm["realtime"], ("realtime",), None)
        if llm is None and realtime is None and "llm" not in fm:
            self.error((), "'llm' is required (the dialogue model), unless 'realtime' is set", 1)
        option = self.option(fm, llm)
        sip: dict[str, Any] = option["sip"] if isinstance(option.get("sip"), dict) else {}
        followup = self.followup(fm)
        if not scenes:
            prompt = llm.prompt if llm is not None and llm.prompt else ""
            scenes = [Scene("default", prompt, line=self.body_line)]
        by_id: dict[str, Scene] = {}
        for scene in scenes:
            by_id.setdefault(scene.id, scene)
        playbook = Playbook(
            scenes=frozen_map(by_id),
            initial_scene=scenes[0].id,
            option=frozen_map(option),
            llm=llm,
            greeting=self.text(fm, (), "greeting"),
            interruption=self.interruption(fm.get("interruption")),
            dtmf=frozen_map(self.dtmf_map(fm.get("dtmf"), ("dtmf",))),
            collectors=frozen_map(self.collectors(fm.get("dtmfCollectors"))),
            followup=followup,
            posthook=self.posthook(fm.get("posthook")),
            realtime=frozen_map(realtime) if realtime is not None else None,
            hangup_headers=frozen_map(
                _str_map(sip.get("hangup_headers") or sip.get("hangupHeaders"))
            ),
            extract_headers=_str_tuple(sip.get("extract_headers", sip.get("extractHeaders"))),
            source=self.source,
        )
        self.cross_check(playbook)
        return playbook

    # -- sections

    def llm(self, value: Any) -> LlmConfig | None:
        path = ("llm",)
        obj = self.mapping(value, path, _LLM_KEYS)
        if not isinstance(value, dict):
            return None
        kwargs: dict[str, Any] = {}
        for key in ("provider", "model", "baseUrl", "apiKey", "prompt", "greeting", "language"):
            text = self.text(obj, path, key)
            if text is not None:
                kwargs[_LLM_KEYS[key]] = text
        for key in ("toolInstructions",):
            text = self.text(obj, path, key)
            if text is not None:
                kwargs[_LLM_KEYS[key]] = text
        kwargs["features"] = self.texts(obj, path, "features")
        for index, name in enumerate(kwargs["features"]):
            if name not in FEATURES:
                known = ", ".join(sorted(FEATURES))
                self.warn((*path, "features", str(index)), f"unknown feature '{name}' ({known})")
        for key in ("repairWindowMs", "summaryLimit"):
            number = self.integer(obj, path, key, minimum=1)
            if number is not None:
                kwargs[_LLM_KEYS[key]] = number
        tools = self.flag(obj, path, "tools")
        if tools is not None:
            kwargs["tools"] = tools
        return LlmConfig(**kwargs)

    def option(self, fm: Mapping[str, Any], llm: LlmConfig | None) -> dict[str, Any]:
        """The call option keys, each checked with the command API's own codec."""
        option: dict[str, Any] = {}
        for key in OPTION_KEYS:
            value = fm.get(key)
            if value is None:
                continue
            cls = _OPTION_CLASSES.get(key)
            if cls is not None and isinstance(value, dict):
                names = _wire_names(cls)
                for name in value:
                    if str(name) not in names:
                        self.warn((key, str(name)), "unknown key, ignored")
            try:
                decode(CallOption, {key: value})
            except FieldError as exc:
                path = tuple(re.split(r"[.\[\]]+", exc.path.strip("]")))
                self.error(path, exc.problem)
                continue
            option[key] = value
        if llm is not None and llm.api_key:
            # reference §4.2: the llm key serves the other engines that have none
            for key in ("asr", "tts", "realtime", "eou"):
                part = option.get(key)
                if isinstance(part, dict) and not (part.get("secretKey") or part.get("apiKey")):
                    option[key] = {**part, "secretKey": llm.api_key}
        return option

    def interruption(self, value: Any) -> Interruption:
        if value is None:
            return Interruption()
        path = ("interruption",)
        obj = self.mapping(value, path, _INTERRUPTION_KEYS)
        kwargs: dict[str, Any] = {}
        strategy = self.text(obj, path, "strategy")
        if strategy is not None:
            if strategy.lower() in _STRATEGIES:
                kwargs["strategy"] = strategy.lower()
            else:
                self.error((*path, "strategy"), f"must be one of {', '.join(_STRATEGIES)}")
        for key, attr in (
            ("minSpeechMs", "min_speech_ms"),
            ("volumeFadeMs", "volume_fade_ms"),
            ("ignoreFirstMs", "ignore_first_ms"),
        ):
            number = self.integer(obj, path, key)
            if number is not None:
                kwargs[attr] = number
        flag = self.flag(obj, path, "fillerWordFilter")
        if flag is not None:
            kwargs["filler_word_filter"] = flag
        return Interruption(**kwargs)

    def dtmf_map(self, value: Any, path: Path_) -> dict[str, DtmfAction]:
        if value is None:
            return {}
        obj = self.mapping(value, path, None)
        out: dict[str, DtmfAction] = {}
        for digit, spec in obj.items():
            here = (*path, digit)
            entry = self.mapping(spec, here, ("action", "scene", "target"))
            action = self.dtmf_action(
                digit, entry.get("action"), entry.get("scene"), entry.get("target"), here, None
            )
            if action is not None:
                out[digit] = action
        return out

    def dtmf_action(
        self,
        digit: str,
        action: Any,
        scene: Any,
        target: Any,
        path: Path_,
        line: int | None,
    ) -> DtmfAction | None:
        where = line if line is not None else self.line(path)
        if digit not in DTMF_KEYS:
            self.error(path, f"'{digit}' is not a DTMF key (0-9, *, #, A-D)", line)
            return None
        if action == "goto":
            if not isinstance(scene, str) or not scene:
                self.error(path, "a 'goto' key needs a scene", line)
                return None
            return DtmfAction("goto", scene=scene, line=where)
        if action == "transfer":
            if not isinstance(target, str) or not target:
                self.error(path, "a 'transfer' key needs a target (a SIP URI)", line)
                return None
            return DtmfAction("transfer", target=target, line=where)
        if action == "hangup":
            return DtmfAction("hangup", line=where)
        self.error(path, f"action must be goto, transfer or hangup, got {_kind(action)}", line)
        return None

    def collectors(self, value: Any) -> dict[str, DtmfCollector]:
        if value is None:
            return {}
        path = ("dtmfCollectors",)
        out: dict[str, DtmfCollector] = {}
        for name, spec in self.mapping(value, path, None).items():
            collector = self.collector(name, spec, (*path, name))
            if collector is not None:
                out[name] = collector
        return out

    def collector(self, name: str, spec: Any, path: Path_) -> DtmfCollector | None:
        obj = self.mapping(spec, path, _COLLECTOR_KEYS)
        if not isinstance(spec, dict):
            return None
        errors = len(self.problems)
        digits = self.integer(obj, path, "digits", minimum=1)
        low = self.integer(obj, path, "minDigits", minimum=1)
        high = self.integer(obj, path, "maxDigits", minimum=1)
        if digits is not None:
            low = digits if low is None else low
            high = digits if high is None else high
        if low is not None and high is not None and low > high:
            self.error(path, f"minDigits ({low}) is more than maxDigits ({high})")
        finish = self.text(obj, path, "finishKey")
        if finish is not None and finish not in DTMF_KEYS:
            self.error((*path, "finishKey"), f"'{finish}' is not a DTMF key")
        if finish is None and high is None:
            self.error(path, "needs maxDigits (or digits) or a finishKey to know when it is done")
        pattern = None
        error_message = None
        validation = obj.get("validation")
        if validation is not None:
            vpath = (*path, "validation")
            vobj = self.mapping(validation, vpath, ("pattern", "errorMessage"))
            source = self.text(vobj, vpath, "pattern")
            if source is not None:
                try:
                    pattern = re.compile(source)
                except re.error as exc:
                    self.error((*vpath, "pattern"), f"is not a valid regular expression: {exc}")
            error_message = self.text(vobj, vpath, "errorMessage")
        timeout = self.seconds(obj, path, "timeout")
        gap = self.seconds(obj, path, "interDigitTimeout")
        retries = self.integer(obj, path, "retryTimes")
        interruptible = self.flag(obj, path, "interruptible")
        if len(self.problems) != errors and any(
            p.severity == "error" for p in self.problems[errors:]
        ):
            return None
        return DtmfCollector(
            name=name,
            description=self.text(obj, path, "description"),
            min_digits=low or 1,
            max_digits=high,
            finish_key=finish,
            timeout_ms=int((timeout or 15) * 1000),
            inter_digit_timeout_ms=int((gap or 5) * 1000),
            pattern=pattern,
            error_message=error_message,
            retry_times=3 if retries is None else retries,
            interruptible=bool(interruptible),
        )

    def followup(self, fm: Mapping[str, Any]) -> FollowUp | None:
        if fm.get("followUp") is not None:
            if fm.get("followup") is not None:
                self.warn(("followup",), "both followUp and followup are set: followUp is used")
            path: Path_ = ("followUp",)
            obj = self.mapping(fm["followUp"], path, ("timeout", "maxCount"))
            count_key = "maxCount"
        elif fm.get("followup") is not None:
            path = ("followup",)
            obj = self.mapping(fm["followup"], path, ("timeout", "max"))
            count_key = "max"
        else:
            return None
        return self.followup_values(obj.get("timeout"), obj.get(count_key), path, count_key, None)

    def followup_values(
        self, timeout: Any, count: Any, path: Path_, count_key: str, line: int | None
    ) -> FollowUp | None:
        ok = True
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            self.error(
                (*path, "timeout"), f"must be a positive integer (ms), got {_kind(timeout)}", line
            )
            ok = False
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            self.error((*path, count_key), f"must be an integer ≥ 0, got {_kind(count)}", line)
            ok = False
        if not ok:
            return None
        return FollowUp(timeout, count) if count is not None else FollowUp(timeout)

    def posthook(self, value: Any) -> Posthook | None:
        if value is None:
            return None
        path = ("posthook",)
        obj = self.mapping(value, path, _POSTHOOK_KEYS)
        if not isinstance(value, dict):
            return None
        url = self.text(obj, path, "url")
        if not url or not url.startswith(("http://", "https://")):
            self.error((*path, "url"), "an http(s) URL is required")
        method = (self.text(obj, path, "method") or "POST").upper()
        if method not in _HTTP_METHODS:
            self.error((*path, "method"), f"must be one of {', '.join(_HTTP_METHODS)}")
        summary = self.text(obj, path, "summary")
        include = self.flag(obj, path, "includeHistory")
        if include is None:
            include = self.flag(obj, path, "include_history")
        timeout = self.seconds(obj, path, "timeout")
        return Posthook(
            url=url or "",
            summary=summary or None,
            method=method,
            headers=frozen_map(self.text_map(obj, path, "headers")),
            include_history=True if include is None else include,
            timeout_s=timeout or 30.0,
        )

    # -- the body

    def scenes(self, lines: list[str], first_line: int) -> list[Scene]:
        """Split the body at ``# Scene:`` headers (``first_line``: file line of ``lines[0]``)."""
        self.body_line = first_line
        sections: list[tuple[str, int, list[str]]] = []  # (id, header line, text lines)
        seen: set[str] = set()
        current: tuple[str, int, list[str]] = ("default", first_line - 1, [])
        in_fence = False
        for offset, text in enumerate(lines):
            if text.lstrip().startswith("```"):
                in_fence = not in_fence
            header = None if in_fence else _SCENE_HEADER.fullmatch(text.rstrip())
            if header is None:
                current[2].append(text)
                continue
            sections.append(current)
            number = first_line + offset
            scene_id = header[1]
            if not _SCENE_ID.fullmatch(scene_id):
                self.error(
                    (), f"scene id {scene_id!r} must be letters, digits, '_', '-' or '.'", number
                )
            if scene_id in seen:
                self.error((), f"scene '{scene_id}' is defined twice", number)
            seen.add(scene_id)
            current = (scene_id, number, [])
        sections.append(current)
        out = []
        for index, (scene_id, header_line, body) in enumerate(sections):
            if index == 0 and not "\n".join(body).strip():
                continue  # no text before the first header: no 'default' scene
            if index == 0:
                seen.add(scene_id)
            out.append(self.scene(scene_id, header_line + 1, "\n".join(body)))
        return out

    def scene(self, scene_id: str, first_line: int, text: str) -> Scene:
        dtmf: dict[str, DtmfAction] = {}
        play = None
        followup = None
        for tag in find_tags(text, _SCENE_TAGS):
            line = first_line + text.count("\n", 0, tag.start)
            path = (f"scene '{scene_id}' <{tag.name}>",)
            if tag.name == "dtmf":
                digit = tag.attrs.get("digit", "")
                action = self.dtmf_action(
                    digit,
                    tag.attrs.get("action"),
                    tag.attrs.get("scene"),
                    tag.attrs.get("target"),
                    path,
                    line,
                )
                if action is not None:
                    dtmf[digit] = action
            elif tag.name == "play":
                if not tag.attrs.get("file"):
                    self.error(path, "needs a file", line)
                play = tag.attrs.get("file") or play
            else:
                followup = self.followup_values(
                    _number(tag.attrs.get("timeout")),
                    _number(tag.attrs.get("max", tag.attrs.get("maxcount"))),
                    path,
                    "max",
                    line,
                )
        # A tag leaves its newlines behind, so template line numbers stay true.
        for tag in reversed(find_tags(text, _SCENE_TAGS)):
            text = text[: tag.start] + "\n" * text.count("\n", tag.start, tag.end) + text[tag.end :]
        leading = len(text) - len(text.lstrip())
        prompt_line = first_line + text.count("\n", 0, leading)
        prompt = text.strip()
        problem = check_template(prompt)
        if problem is not None:
            self.error(
                (),
                f"scene '{scene_id}': template error: {problem.message}",
                prompt_line + problem.line - 1,
            )
        return Scene(scene_id, prompt, frozen_map(dtmf), play, followup, prompt_line)

    def cross_check(self, playbook: Playbook) -> None:
        """References between parts: scenes named by ``goto``, collectors by ``<collect>``."""
        scenes = playbook.scenes
        for digit, action in playbook.dtmf.items():
            if action.scene is not None and action.scene not in scenes:
                self.error(("dtmf", digit), f"goto to unknown scene '{action.scene}'")
        for scene in scenes.values():
            for digit, action in scene.dtmf.items():
                if action.scene is not None and action.scene not in scenes:
                    self.error(
                        (f"scene '{scene.id}' <dtmf>",),
                        f"key {digit}: goto to unknown scene '{action.scene}'",
                        action.line,
                    )
            for tag in find_tags(scene.prompt, _PROMPT_TAGS):
                line = scene.line + scene.prompt.count("\n", 0, tag.start)
                if tag.name == "goto" and tag.attrs.get("scene") not in scenes:
                    self.error(
                        (f"scene '{scene.id}' <goto>",),
                        f"unknown scene '{tag.attrs.get('scene')}'",
                        line,
                    )
                if tag.name == "collect" and tag.attrs.get("type") not in playbook.collectors:
                    self.error(
                        (f"scene '{scene.id}' <collect>",),
                        f"unknown collector '{tag.attrs.get('type')}' (see dtmfCollectors)",
                        line,
                    )
        greeting = playbook.greeting_text
        if greeting is not None:
            problem = check_template(greeting)
            if problem is not None:
                key: Path_ = ("greeting",) if playbook.greeting is not None else ("llm", "greeting")
                self.error(key, f"template error: {problem.message}")


def _number(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _str_tuple(value: Any) -> tuple[str, ...] | None:
    if not isinstance(value, list):
        return None
    return tuple(str(v) for v in value)


def _wire_names(cls: type) -> set[str]:
    """The keys an option class reads (its wire names and their accepted aliases)."""
    snake = getattr(cls, "wire_case", "camel") == "snake"
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        wire = f.metadata.get("wire") or (f.name if snake else _camel(f.name))
        names.add(wire.split(".")[0])
        names.update(f.metadata.get("aliases", ()))
    return names


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)
