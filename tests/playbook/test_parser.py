"""Reading playbook files: the model, ``${VAR}``, both spellings, every problem with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from activecall.playbook.model import DtmfAction, FollowUp
from activecall.playbook.parser import (
    PlaybookError,
    PlaybookProblem,
    check_playbook,
    load_playbook,
    parse_playbook,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FULL = """\
---
asr:
  provider: pocketsphinx
  language: en
tts:
  provider: piper
  speed: 1.2
vad:
  type: silero
  speechPadding: 200
denoise: true
extra:
  team: blue
sip:
  extract_headers: [X-Customer]
  hangup_headers:
    X-Reason: "{{ reason }}"
llm:
  provider: openai
  model: gpt-4o-mini
  baseUrl: http://127.0.0.1:9/v1
  apiKey: sk-abc
  greeting: Hi from the llm block.
  language: en
  features: [context_repair, http_tool]
  repairWindowMs: 2500
  summaryLimit: 12
greeting: Welcome, {{ caller }}!
interruption:
  strategy: asr
  fillerWordFilter: true
  volumeFadeMs: 150
  ignoreFirstMs: 600
  minSpeechMs: 300
dtmf:
  "0": { action: transfer, target: "sip:agent@example.com" }
  "9": { action: hangup }
dtmfCollectors:
  pin:
    description: a 4-digit PIN
    digits: 4
    finishKey: "#"
    timeout: 12
    interDigitTimeout: 3.5
    validation:
      pattern: "^[0-9]{4}$"
      errorMessage: Four digits, please.
    retryTimes: 1
    interruptible: true
followUp:
  timeout: 7000
  maxCount: 2
posthook:
  url: https://hooks.example.com/calls
  summary: intent
  headers:
    X-Token: abc
  includeHistory: false
  timeout: 5
---
You are a helpful agent for {{ callee }}.
<play file="sounds/welcome.wav"/>
<dtmf digit="1" action="goto" scene="sales"/>

# Scene: sales
<dtmf digit="*" action="goto" scene="default"/>
<followup timeout="3000" max="1"/>
Sell things.

# Scene: support
Fix things.
"""


def write(tmp_path: Path, text: str, name: str = "p.md") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(tmp_path: Path, text: str, **env: str) -> list[PlaybookProblem]:
    return list(check_playbook(write(tmp_path, text), environ=env)[1])


def lines(found: list[PlaybookProblem], severity: str = "error") -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in found if p.severity == severity]


def test_a_full_playbook_reads_into_the_model(tmp_path: Path) -> None:
    playbook, found = check_playbook(write(tmp_path, FULL), environ={})
    assert found == () and playbook is not None
    assert list(playbook.scenes) == ["default", "sales", "support"]
    assert playbook.initial_scene == "default"
    first = playbook.first_scene
    assert first.prompt == "You are a helpful agent for {{ callee }}."
    assert first.play == "sounds/welcome.wav"
    assert first.dtmf == {"1": DtmfAction("goto", scene="sales", line=63)}
    sales = playbook.scenes["sales"]
    assert sales.prompt == "Sell things." and sales.followup == FollowUp(3000, 1)
    assert sales.dtmf["*"].scene == "default"
    assert playbook.scenes["support"].prompt == "Fix things."
    llm = playbook.llm
    assert llm is not None
    assert (llm.model, llm.base_url, llm.api_key) == (
        "gpt-4o-mini",
        "http://127.0.0.1:9/v1",
        "sk-abc",
    )
    assert llm.features == ("context_repair", "http_tool")
    assert (llm.repair_window_ms, llm.summary_limit) == (2500, 12)
    assert playbook.greeting_text == "Welcome, {{ caller }}!"  # top level wins over llm's
    rules = playbook.interruption
    assert (rules.strategy, rules.filler_word_filter) == ("asr", True)
    assert (rules.volume_fade_ms, rules.ignore_first_ms, rules.min_speech_ms) == (150, 600, 300)
    assert playbook.dtmf["0"].target == "sip:agent@example.com"
    assert playbook.dtmf["9"].action == "hangup"
    pin = playbook.collectors["pin"]
    assert (pin.min_digits, pin.max_digits, pin.finish_key) == (4, 4, "#")
    assert (pin.timeout_ms, pin.inter_digit_timeout_ms, pin.retry_times) == (12000, 3500, 1)
    assert pin.pattern is not None and pin.pattern.pattern == "^[0-9]{4}$"
    assert pin.error_message == "Four digits, please." and pin.interruptible
    assert playbook.followup == FollowUp(7000, 2)
    hook = playbook.posthook
    assert hook is not None
    assert (hook.url, hook.summary, hook.include_history, hook.timeout_s) == (
        "https://hooks.example.com/calls",
        "intent",
        False,
        5.0,
    )
    assert dict(hook.headers) == {"X-Token": "abc"}
    assert playbook.extract_headers == ("X-Customer",)
    assert dict(playbook.hangup_headers) == {"X-Reason": "{{ reason }}"}
    option = playbook.option
    assert set(option) == {"asr", "tts", "vad", "denoise", "extra", "sip"}
    # the llm key serves the engines that have none (reference §4.2)
    assert option["asr"]["secretKey"] == option["tts"]["secretKey"] == "sk-abc"
    assert option["vad"] == {"type": "silero", "speechPadding": 200}


def test_env_vars_are_substituted_unset_ones_left_verbatim(tmp_path: Path) -> None:
    text = """\
---
llm:
  apiKey: ${LLM_KEY}
  baseUrl: "http://${LLM_HOST}/v1"
  model: ${UNSET_MODEL}
followUp:
  timeout: ${FOLLOW_MS}
  maxCount: 1
tts:
  speed: ${SPEED}
greeting: "Hi # not a comment ${NAME}"
---
Hello.
"""
    env = {"LLM_KEY": "sk-x#y", "LLM_HOST": "10.0.0.2:8080", "FOLLOW_MS": "5000", "SPEED": "1.5"}
    env["NAME"] = "there"
    playbook = parse_playbook(text, environ=env)
    assert playbook.llm is not None
    assert playbook.llm.api_key == "sk-x#y"  # a '#' in a value never becomes a YAML comment
    assert playbook.llm.base_url == "http://10.0.0.2:8080/v1"
    assert playbook.llm.model == "${UNSET_MODEL}"
    assert playbook.followup == FollowUp(5000, 1)  # a plain ${VAR} takes the value's type
    assert playbook.option["tts"]["speed"] == 1.5
    assert playbook.greeting == "Hi # not a comment there"


def test_both_followup_spellings(tmp_path: Path) -> None:
    upstream = "---\nllm: {}\nfollowUp:\n  timeout: 4000\n  maxCount: 5\n---\nx\n"
    documented = "---\nllm: {}\nfollowup:\n  timeout: 6000\n  max: 2\n---\nx\n"
    assert parse_playbook(upstream).followup == FollowUp(4000, 5)
    assert parse_playbook(documented).followup == FollowUp(6000, 2)
    both = "---\nllm: {}\nfollowUp: {timeout: 1000}\nfollowup: {timeout: 2000}\n---\nx\n"
    playbook, found = check_playbook(write(tmp_path, both))
    assert playbook is not None and playbook.followup == FollowUp(1000)
    assert lines(list(found), "warning") == [
        (4, "followup: both followUp and followup are set: followUp is used")
    ]


def test_malformed_yaml_is_an_error_with_its_line(tmp_path: Path) -> None:
    text = "---\nllm:\n  model: gpt\n greeting: [unclosed\ntts: {}\n---\nHello\n"
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].severity == "error"
    assert found[0].line == 4 and found[0].message.startswith("invalid YAML")
    assert str(found[0]).startswith(f"{tmp_path / 'p.md'}:4: invalid YAML")
    with pytest.raises(PlaybookError) as caught:
        load_playbook(tmp_path / "p.md")
    assert caught.value.problems == tuple(found)


def test_front_matter_must_open_and_close(tmp_path: Path) -> None:
    assert lines(problems(tmp_path, "# Scene: a\nHello\n")) == [
        (1, "a playbook starts with a '---' line opening its YAML front matter")
    ]
    assert lines(problems(tmp_path, "---\nllm: {}\nHello\n")) == [
        (1, "the front matter opened on line 1 is never closed with '---'")
    ]
    assert lines(problems(tmp_path, "---\n- a list\n---\nHello\n")) == [
        (2, "the front matter must be a mapping of keys, got a list")
    ]


def test_unknown_keys_warn_and_wrong_types_error_each_with_its_line(tmp_path: Path) -> None:
    text = """\
---
llm:
  model: 4
  temperature: 0.2
  features: context_repair
greeting: [not, text]
denoise: sometimes
tts:
  speed: fast
  pitch: 3
interruption:
  ignoreFirstMs: -5
  fillerWordFilter: "yes"
dtmf:
  "1": { action: dance }
  "2": { action: transfer }
followUp:
  timeout: soon
posthook:
  summary: short
colour: blue
---
Hi.
"""
    found = problems(tmp_path, text)
    assert lines(found, "warning") == [
        (4, "llm.temperature: unknown key, ignored"),
        (10, "tts.pitch: unknown key, ignored"),
        (21, "colour: unknown key, ignored"),
    ]
    assert lines(found) == [
        (5, "llm.features: must be a list of strings, got the string 'context_repair'"),
        (6, "greeting: must be a string, got a list"),
        (7, "denoise: must be a boolean, got a string"),
        (9, "tts.speed: must be a number, got a string"),
        (12, "interruption.ignoreFirstMs: must be an integer ≥ 0, got the number -5"),
        (13, "interruption.fillerWordFilter: must be true or false, got the string 'yes'"),
        (15, "dtmf.1: action must be goto, transfer or hangup, got the string 'dance'"),
        (16, "dtmf.2: a 'transfer' key needs a target (a SIP URI)"),
        (18, "followUp.timeout: must be a positive integer (ms), got the string 'soon'"),
        (19, "posthook.url: an http(s) URL is required"),
    ]


def test_a_goto_to_an_unknown_scene_is_an_error(tmp_path: Path) -> None:
    text = """\
---
llm: {}
dtmf:
  "5": { action: goto, scene: nowhere }
---
# Scene: main
<dtmf digit="1" action="goto" scene="sales"/>
<dtmf digit="2" action="goto" scene="lost"/>
Switch with <goto scene="sales"/> or <goto scene='ghost'/>.

# Scene: sales
Sell.
"""
    assert lines(problems(tmp_path, text)) == [
        (4, "dtmf.5: goto to unknown scene 'nowhere'"),
        (8, "scene 'main' <dtmf>: key 2: goto to unknown scene 'lost'"),
        (9, "scene 'main' <goto>: unknown scene 'ghost'"),
    ]


def test_a_template_syntax_error_is_a_load_error_with_its_line(tmp_path: Path) -> None:
    text = """\
---
llm: {}
greeting: "Hi {{ caller"
---
# Scene: a
<dtmf digit="1" action="goto" scene="b"/>
First line.
Second {% if x %} never closed.

# Scene: b
Fine {{ name }}.
"""
    found = lines(problems(tmp_path, text))
    assert any(
        line == 3 and message.startswith("greeting: template error") for line, message in found
    )
    assert any(
        line == 8 and message.startswith("scene 'a': template error") for line, message in found
    ), found
    assert len(found) == 2


def test_llm_is_required_unless_realtime_is_set(tmp_path: Path) -> None:
    assert lines(problems(tmp_path, "---\ngreeting: hi\n---\nHello\n")) == [
        (1, "'llm' is required (the dialogue model), unless 'realtime' is set")
    ]
    realtime = "---\nrealtime:\n  provider: openai\n  model: gpt-realtime\n---\nHello\n"
    playbook = parse_playbook(realtime)
    assert playbook.llm is None and playbook.realtime == {
        "provider": "openai",
        "model": "gpt-realtime",
    }
    assert playbook.option["realtime"] == {"provider": "openai", "model": "gpt-realtime"}


def test_scenes_default_duplicates_and_bad_scene_tags(tmp_path: Path) -> None:
    text = """\
---
llm: {}
---
# Scene: a
<dtmf digit="x" action="hangup"/>
<play/>
<followup timeout="later"/>
A.
# Scene: a
Again.
# Scene: b c
"""
    assert lines(problems(tmp_path, text)) == [
        (5, "scene 'a' <dtmf>: 'x' is not a DTMF key (0-9, *, #, A-D)"),
        (6, "scene 'a' <play>: needs a file"),
        (
            7,
            "scene 'a' <followup> timeout: must be a positive integer (ms), got the string 'later'",
        ),
        (9, "scene 'a' is defined twice"),
        (11, "scene id 'b c' must be letters, digits, '_', '-' or '.'"),
    ]
    only_text = parse_playbook("---\nllm: {prompt: Be kind.}\n---\n")
    assert list(only_text.scenes) == ["default"] and only_text.first_scene.prompt == "Be kind."
    fenced = parse_playbook("---\nllm: {}\n---\nIntro.\n```\n# Scene: not-a-scene\n```\n")
    assert list(fenced.scenes) == ["default"]


def test_collector_problems(tmp_path: Path) -> None:
    text = """\
---
llm: {}
dtmfCollectors:
  a:
    minDigits: 6
    maxDigits: 4
  b:
    description: no end
  c:
    digits: 4
    finishKey: "!"
    validation:
      pattern: "([0-9"
    timeout: 0
---
# Scene: s
Use <collect type="a" var="x"/> or <collect type="zzz" var="y"/>.
"""
    found = lines(problems(tmp_path, text))
    assert found == [
        (4, "dtmfCollectors.a: minDigits (6) is more than maxDigits (4)"),
        (7, "dtmfCollectors.b: needs maxDigits (or digits) or a finishKey to know when it is done"),
        (11, "dtmfCollectors.c.finishKey: '!' is not a DTMF key"),
        (
            13,
            "dtmfCollectors.c.validation.pattern: is not a valid regular expression:"
            " unterminated character set at position 1",
        ),
        (14, "dtmfCollectors.c.timeout: must be a positive number of seconds, got the number 0"),
        (17, "scene 's' <collect>: unknown collector 'a' (see dtmfCollectors)"),
        (17, "scene 's' <collect>: unknown collector 'zzz' (see dtmfCollectors)"),
    ]


def test_load_playbook_reads_a_path_or_the_text(tmp_path: Path) -> None:
    path = write(tmp_path, "---\nllm: {}\n---\nFrom a file.\n")
    assert load_playbook(path).first_scene.prompt == "From a file."
    assert load_playbook(str(path)).source == str(path)
    assert load_playbook("---\nllm: {}\n---\nInline.\n").first_scene.prompt == "Inline."
    with pytest.raises(PlaybookError) as caught:
        load_playbook(tmp_path / "missing.md")
    assert "cannot read the playbook" in str(caught.value)
    (tmp_path / "bad.md").write_bytes(b"---\nllm: {}\n---\n\xff\xfe")
    assert "cannot read the playbook" in str(check_playbook(tmp_path / "bad.md")[1][0])


@pytest.mark.parametrize("name", ["customer_support.md", "appointment_booking.md"])
def test_the_examples_pass_the_check(name: str) -> None:
    playbook, found = check_playbook(EXAMPLES / name, environ={})
    assert found == () and playbook is not None
    assert playbook.llm is not None and len(playbook.scenes) >= 2


def test_the_native_tools_switch() -> None:
    on = parse_playbook("---\nllm:\n  model: m\n---\nx\n")
    assert on.llm is not None and on.llm.tools is True  # default: offered to the model
    off = parse_playbook("---\nllm:\n  model: m\n  tools: false\n---\nx\n")
    assert off.llm is not None and off.llm.tools is False
    with pytest.raises(PlaybookError) as caught:
        parse_playbook("---\nllm:\n  model: m\n  tools: 'no'\n---\nx\n")
    assert "<playbook>:4: llm.tools: must be true or false, got the string 'no'" in str(
        caught.value
    )
