"""The config file: defaults, upstream files, every kind of error with its line, .env."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from activecall.config import (
    DEFAULT_CODECS,
    DEFAULT_ICE_SERVERS,
    AmbianceOption,
    Config,
    ConfigError,
    HttpCallRecord,
    IceServer,
    LocalCallRecord,
    PlaybookHandler,
    PlaybookRule,
    RecordingPolicy,
    RegisterUser,
    S3CallRecord,
    UserCredential,
    WebhookHandler,
    check_config,
    config_to_dict,
    config_to_toml,
    load_config,
    load_dotenv,
    normalize_codec,
    parse_config,
    parse_duration,
    split_host_port,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "activecall.toml"

# Modelled on upstream's active-call.example.toml, with the keys of reference §3.2 filled in.
UPSTREAM = r"""
addr = "0.0.0.0"
http_addr = "0.0.0.0:8080"
udp_port = 13050
log_level = "debug"
media_cache_path = "./config/mediacache"
useragent = "active-call(0.3.83 miuda.ai)"
accept_timeout = "50s"
codecs = ["pcmu", "pcma", "telephone_event"]
external_ip = "203.0.113.7"
auto_learn_public_address = true
rtp_start_port = 20000
rtp_end_port = 30000
graceful_shutdown_timeout = 10
peers = ["10.0.0.2:8080", "wss://node3.example.com"]
http_access_skip_paths = ["/health", "/metrics*"]

[[ice_servers]]
urls = ["stun:stun.l.google.com:19302"]

[[ice_servers]]
urls = ["turn:restsend.com:3478"]
username = "user"
credential = "pass"

[handler]
type = "playbook"
default = "default.md"

[[handler.rules]]
caller = "^\\+1\\d{10}$"
callee = "^sip:support@.*"
playbook = "support.md"

[[handler.rules]]
caller = "^\\+86\\d+"
playbook = "chinese.md"

[[handler.rules]]
callee = "^sip:sales@.*"
playbook = "sales.md"

[recording]
enabled = true
auto_start = true

[callrecord]
type = "local"
root = "./config/cdr"

[[register_users]]
server = "127.0.0.1:5060"
username = "1002"
disabled = false

[register_users.credential]
username = "1002"
password = ""

[[rewrites]]
match = "^sip:(\\d+)@old$"
rewrite = "sip:$1@new"

[[trunk_rules]]
rule.match.to.host = "^172\\.25\\."
rule.rewrite.contact.host = "172.25.225.2"

[[trunk_rules]]
rule.rewrite.contact.host = "1.2.3.4"
"""


def problems_of(text: str) -> list[str]:
    """Every problem of ``text`` as ``file:line: message`` strings."""
    return [str(p) for p in parse_config(text, "c.toml")[1]]


def only_error(text: str) -> str:
    config, problems = parse_config(text, "c.toml")
    assert config is None
    errors = [str(p) for p in problems if p.severity == "error"]
    assert len(errors) == 1, errors
    return errors[0]


# --- defaults -------------------------------------------------------------------------------------


def test_defaults_match_upstream_and_ours() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.http_addr == "0.0.0.0:8080"
    assert config.http_bind == ("0.0.0.0", 8080)
    assert (config.addr, config.udp_port) == ("0.0.0.0", 25060)
    assert (
        config.codecs
        == DEFAULT_CODECS
        == (
            "pcmu",
            "pcma",
            "g722",
            "g729",
            "telephone_event",
            "opus",
        )
    )
    assert (config.rtp_start_port, config.rtp_end_port) == (12000, 42000)
    assert config.enable_rtp_latching and config.graceful_shutdown
    assert config.enable_options_response
    assert config.graceful_shutdown_timeout == 30.0
    assert config.accept_timeout == 60.0
    assert config.media_cache_path == "./config/mediacache"
    assert config.recording == RecordingPolicy(path="./config/recorders", format="wav")
    assert config.dump_dir == "./config/recorders"
    assert config.callrecord is None and config.handler is None
    assert config.ice_servers == DEFAULT_ICE_SERVERS
    assert config.ice_servers[0].urls == ("stun:stun.l.google.com:19302",)
    assert config.workers == len(os.sched_getaffinity(0)) >= 1
    assert config.max_frame_size == 1 << 20
    assert config.http_token is None
    assert config.log_level == "info"


def test_empty_file_is_the_defaults() -> None:
    assert parse_config("", "c.toml") == (Config(), ())


# --- a full upstream file -------------------------------------------------------------------------


def test_upstream_example_loads_with_its_values(tmp_path: Path) -> None:
    path = tmp_path / "active-call.toml"
    path.write_text(UPSTREAM)
    config = load_config(path)
    assert config.udp_port == 13050 and config.log_level == "debug"
    assert config.accept_timeout == 50.0
    assert config.graceful_shutdown_timeout == 10.0
    assert config.codecs == ("pcmu", "pcma", "telephone_event")
    assert config.external_ip == "203.0.113.7" and config.auto_learn_public_address
    assert (config.rtp_start_port, config.rtp_end_port) == (20000, 30000)
    assert config.peers == ("10.0.0.2:8080", "wss://node3.example.com")
    assert config.ice_servers == (
        IceServer(urls=("stun:stun.l.google.com:19302",)),
        IceServer(urls=("turn:restsend.com:3478",), username="user", credential="pass"),
    )
    assert config.handler == PlaybookHandler(
        default="default.md",
        rules=(
            PlaybookRule(caller=r"^\+1\d{10}$", callee="^sip:support@.*", playbook="support.md"),
            PlaybookRule(caller=r"^\+86\d+", playbook="chinese.md"),
            PlaybookRule(callee="^sip:sales@.*", playbook="sales.md"),
        ),
    )
    assert config.recording.enabled and config.recording.auto_start
    assert config.recording.path == "./config/recorders"
    assert config.callrecord == LocalCallRecord(root="./config/cdr")
    assert config.register_users == (
        RegisterUser(
            server="127.0.0.1:5060",
            username="1002",
            credential=UserCredential(username="1002", password=""),
        ),
    )
    assert config.rewrites[0].match == r"^sip:(\d+)@old$"
    rule = config.trunk_rules[0].rule
    assert rule.match.to is not None and rule.match.to.host == r"^172\.25\."
    assert rule.rewrite.contact is not None and rule.rewrite.contact.host == "172.25.225.2"
    catch_all = config.trunk_rules[1].rule
    assert catch_all.match.from_ is None and catch_all.match.to is None


def test_example_config_loads_without_problems(caplog: pytest.LogCaptureFixture) -> None:
    config, problems = check_config(EXAMPLE)
    assert problems == ()
    assert config is not None and config.udp_port == 13050
    with caplog.at_level(logging.WARNING):
        load_config(EXAMPLE)
    assert caplog.records == []


def _example_variants() -> list[str]:
    """The example with its commented-out blocks switched on, one per alternative."""
    blocks = EXAMPLE.read_text().split("\n\n")
    uncomment = re.compile(r"^# (?=\[|[A-Za-z_][\w.]* = )", re.M)
    alternatives = {
        name: [i for i, b in enumerate(blocks) if re.search(rf"^(# )?\[{name}\]$", b, re.M)]
        for name in ("callrecord", "handler")
    }
    variants = []
    for callrecord in alternatives["callrecord"]:
        for handler in alternatives["handler"]:
            skip = set(alternatives["callrecord"] + alternatives["handler"]) - {callrecord, handler}
            kept = [uncomment.sub("", b) for i, b in enumerate(blocks) if i not in skip]
            variants.append("\n\n".join(kept))
    return variants


def test_every_commented_example_block_loads() -> None:
    variants = _example_variants()
    assert len(variants) == 6  # 3 callrecord types x 2 handler types
    for text in variants:
        config, problems = parse_config(text, "example")
        assert problems == () and config is not None
        assert config.ambiance == AmbianceOption(path="./config/office.wav")
        assert config.tls_port == 5061 and len(config.ice_servers) == 2
        assert config.trunk_rules and config.rewrites and config.register_users


# --- unknown keys ---------------------------------------------------------------------------------


def test_unknown_keys_warn_with_their_line_and_are_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'udp_port = 5070\nhttp_gzipped = true\n\n[recording]\npath = "/rec"\nfmt = "wav"\n'
        '\n[handler]\ntype = "playbook"\nurl = "http://x"\n'
        '[[handler.rules]]\nplaybook = "a.md"\n[[handler.rules]]\nplaybook = "b.md"\nwho = 1\n'
    )
    with caplog.at_level(logging.WARNING, logger="activecall.config"):
        config = load_config(path)
    assert config.udp_port == 5070 and config.recording.path == "/rec"
    assert isinstance(config.handler, PlaybookHandler) and len(config.handler.rules) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:2: unknown key 'http_gzipped' ignored",
        f"{path}:6: unknown key 'recording.fmt' ignored",
        f"{path}:10: unknown key 'handler.url' ignored",
        f"{path}:15: unknown key 'handler.rules[1].who' ignored",
    ]
    assert all(r.name == "activecall.config" for r in caplog.records)


def test_cli_only_keys_are_unknown_in_a_file() -> None:
    config, problems = parse_config('call = "sip:1@x"\n', "c.toml")
    assert config == Config()
    assert [str(p) for p in problems] == ["c.toml:1: unknown key 'call' ignored"]


def test_env_vars_are_not_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTIVECALL_TEST_ROOT", "/srv")
    config, _ = parse_config('media_cache_path = "${ACTIVECALL_TEST_ROOT}/cache"\n')
    assert config is not None and config.media_cache_path == "${ACTIVECALL_TEST_ROOT}/cache"


# --- errors, with their lines ---------------------------------------------------------------------


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('udp_port = 13050\n[recording\npath = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (2, 11)
    assert (
        str(info.value)
        == f"{path}:2:11: invalid TOML: Expected ']' at the end of a table declaration"
    )


def test_syntax_error_at_end_of_file_names_the_last_line() -> None:
    assert only_error("udp_port = 1\nhttp_addr = ") == (
        "c.toml:2: invalid TOML at end of file: Invalid value"
    )


def test_duplicate_key_is_a_syntax_error() -> None:
    assert only_error("[recording]\npath = 'a'\n[recording]\n").startswith("c.toml:3:")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('udp_port = "13050"', 'c.toml:1: udp_port must be an integer, got a string "13050"'),
        ("udp_port = 70000", "c.toml:1: udp_port must be from 0 to 65535, got 70000"),
        ("workers = 0", "c.toml:1: workers must be from 1 to 4096, got 0"),
        (
            "graceful_shutdown = 1",
            "c.toml:1: graceful_shutdown must be a boolean, got an integer 1",
        ),
        ("udp_port = true", "c.toml:1: udp_port must be an integer, got a boolean true"),
        ("codecs = 'pcmu'", 'c.toml:1: codecs must be an array, got a string "pcmu"'),
        ("codecs = []", "c.toml:1: codecs must not be empty"),
        (
            "codecs = ['pcmu', 'gsm']",
            "c.toml:1: codecs[1] must be one of pcmu, pcma, g722, g729, opus, telephone_event, "
            "got 'gsm'",
        ),
        (
            "log_level = 'loud'",
            "c.toml:1: log_level must be one of trace, debug, info, warn, warning, error, "
            "critical, off, got 'loud'",
        ),
        (
            "http_addr = '8080'",
            "c.toml:1: http_addr must be host:port (e.g. 0.0.0.0:8080 or [::]:8080), got '8080'",
        ),
        (
            "peers = ['ftp://x']",
            "c.toml:1: peers[0] must be ip:port or a ws/wss/http/https URL, got 'ftp://x'",
        ),
        ("recording = 1", "c.toml:1: recording must be a table, got an integer 1"),
        ("ice_servers = [{ username = 'u' }]", "c.toml:1: ice_servers[0].urls is required"),
        (
            "rtp_start_port = 5000\nrtp_end_port = 4000",
            "c.toml:1: rtp_start_port must not be greater than rtp_end_port",
        ),
        ("tls_port = 5061", "c.toml:1: tls_port needs tls_cert_file and tls_key_file"),
        (
            "[recording]\nformat = 'mp3'",
            "c.toml:2: recording.format must be one of wav, pcm, pcmu, pcma, g722, got 'mp3'",
        ),
        (
            "[ambiance]\nduckLevel = 'low'",
            'c.toml:2: ambiance.duckLevel must be a number, got a string "low"',
        ),
    ],
)
def test_wrong_value_names_key_and_line(text: str, error: str) -> None:
    assert only_error(text + "\n") == error


@pytest.mark.parametrize("value", ['"50 parsecs"', '"abc"', '""', '"-5s"', "-1", "true", "[50]"])
def test_bad_duration_is_an_error_with_its_line(value: str) -> None:
    error = only_error(f"udp_port = 5060\n\naccept_timeout = {value}\n")
    assert error.startswith("c.toml:3: accept_timeout ")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[handler]\ntype = "grpc"\n',
            'c.toml:2: handler.type must be one of webhook, playbook, got a string "grpc"',
        ),
        (
            '[handler]\nurl = "http://x"\n',
            "c.toml:1: handler.type is required (one of webhook, playbook)",
        ),
        (
            '[handler]\ntype = "webhook"\n',
            "c.toml:1: handler.url is required (or urls) for a webhook handler",
        ),
        (
            '[handler]\ntype = "webhook"\nurl = "x"\nmethod = "P O"\n',
            "c.toml:4: handler.method must be an HTTP method such as POST, got 'P O'",
        ),
        (
            '[handler]\ntype = "playbook"\n[[handler.rules]]\ncaller = "x"\n',
            "c.toml:3: handler.rules[0].playbook is required",
        ),
        (
            '[callrecord]\ntype = "ftp"\n',
            'c.toml:2: callrecord.type must be one of local, s3, http, got a string "ftp"',
        ),
        ('[callrecord]\ntype = "http"\n', "c.toml:1: callrecord.url is required"),
    ],
)
def test_bad_table_names_key_and_line(text: str, error: str) -> None:
    assert only_error(text) == error


def test_bad_regex_is_an_error_at_its_line() -> None:
    text = '[handler]\ntype = "playbook"\n\n[[handler.rules]]\ncallee = "(("\nplaybook = "a.md"\n'
    assert only_error(text).startswith(
        "c.toml:5: handler.rules[0].callee is not a valid regular expression"
    )


def test_every_error_of_a_file_is_reported_in_line_order() -> None:
    text = (
        'udp_port = "x"\nlog_level = "loud"\n\n[[register_users]]\nserver = "pbx"\n'
        "[register_users.credential]\npassword = 5\n"
    )
    assert problems_of(text) == [
        'c.toml:1: udp_port must be an integer, got a string "x"',
        "c.toml:2: log_level must be one of trace, debug, info, warn, warning, error, critical, "
        "off, got 'loud'",
        "c.toml:4: register_users[0].username is required",
        "c.toml:6: register_users[0].credential.username is required",
        "c.toml:7: register_users[0].credential.password must be a string, got an integer 5",
    ]


def test_lines_are_found_past_multiline_values_and_inline_tables() -> None:
    text = (
        'useragent = """\nudp_port = "not this line"\n"""\n'
        'peers = [\n  "10.0.0.2:8080",\n  "bad peer",\n]\n'
        "register_users = [{ server = 's', username = 'u', credential = { password = 'p' } }]\n"
        '"udp_port" = "13050"\n'
        '[[trunk_rules]]\nrule.match.to.host = "(("\n'
    )
    assert problems_of(text) == [
        "c.toml:4: peers[1] must be host:port (e.g. 0.0.0.0:8080 or [::]:8080), got 'bad peer'",
        "c.toml:8: register_users[0].credential.username is required",
        'c.toml:9: udp_port must be an integer, got a string "13050"',
        "c.toml:11: trunk_rules[0].rule.match.to.host is not a valid regular expression "
        "(missing ), unterminated subpattern at position 1): '(('",
    ]


def test_unreadable_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: cannot read the config file"):
        load_config(path)


# --- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("50s", 50.0),
        ("1m30s", 90.0),
        ("1m 30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("2min", 120.0),
        ("1.5s", 1.5),
        ("30", 30.0),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_durations(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds
    config, _ = parse_config(f"accept_timeout = {json.dumps(value)}\n")
    assert config is not None and config.accept_timeout == seconds


def test_codec_names_are_normalised() -> None:
    config, _ = parse_config('codecs = ["PCMU", "telephone-event", "Opus"]\n')
    assert config is not None and config.codecs == ("pcmu", "telephone_event", "opus")
    assert normalize_codec("G722") == "g722"
    with pytest.raises(ValueError, match="must be one of"):
        normalize_codec("gsm")


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::]:8080", ("::", 8080)),
        ("[::1]:65535", ("::1", 65535)),
    ],
)
def test_split_host_port(addr: str, expected: tuple[str, int]) -> None:
    assert split_host_port(addr) == expected


@pytest.mark.parametrize(
    ("addr", "problem"),
    [
        ("8080", "must be host:port"),
        (":8080", "invalid host"),
        ("::1:8080", "IPv6 address in brackets"),
        ("[::1]8080", "must be [ipv6]:port"),
        ("[nope]:80", "invalid IPv6 address"),
        ("host:99999", "port from 0 to 65535"),
        ("host:http", "port from 0 to 65535"),
    ],
)
def test_split_host_port_errors(addr: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        split_host_port(addr)


def test_liberal_spellings() -> None:
    text = (
        'http_token = ""\n'
        "[recording]\npath = '  '\n"
        "[ambiance]\nduck_level = 0.2\nnormalLevel = 1\n"
        "[[ice_servers]]\nurls = 'stun:one'\n"
        '[handler]\ntype = "WebHook"\nurls = ["http://a", "http://b"]\nmethod = "put"\n'
        'headers = { X-Key = "k" }\n'
        '[callrecord]\ntype = "s3"\nvendor = "a_w_s"\nbucket = "b"\nregion = "r"\n'
        'access_key = "ak"\nsecret_key = "sk"\nendpoint = "e"\nroot = "/"\n'
    )
    config, problems = parse_config(text)
    assert problems == () and config is not None
    assert config.http_token is None
    assert config.recording.path == "./config/recorders"
    assert config.ambiance == AmbianceOption(duck_level=0.2, normal_level=1.0)
    assert config.ice_servers == (IceServer(urls=("stun:one",)),)
    assert config.handler == WebhookHandler(
        urls=("http://a", "http://b"), method="PUT", headers=(("X-Key", "k"),)
    )
    assert config.handler.endpoints == ("http://a", "http://b")
    assert isinstance(config.callrecord, S3CallRecord) and config.callrecord.vendor == "aws"


def test_webhook_headers_as_upstream_pairs() -> None:
    config, _ = parse_config(
        '[handler]\ntype = "webhook"\nurl = "http://x"\nheaders = [["A", "1"], ["B", "2"]]\n'
    )
    assert config is not None and config.handler == WebhookHandler(
        url="http://x", headers=(("A", "1"), ("B", "2"))
    )
    assert config.handler.endpoints == ("http://x",)
    error = only_error('[handler]\ntype = "webhook"\nurl = "x"\nheaders = [["A"]]\n')
    assert error == "c.toml:4: handler.headers[0] must be an array of 2 items, got 1"


def test_ice_servers_as_served_by_iceservers() -> None:
    assert [s.to_json() for s in DEFAULT_ICE_SERVERS] == [
        {"urls": ["stun:stun.l.google.com:19302"]}
    ]
    turn = IceServer(urls=("turn:t:3478",), username="u", credential="p")
    assert turn.to_json() == {
        "urls": ["turn:t:3478"],
        "username": "u",
        "credential": "p",
        "credential_type": "password",
    }


def test_dump_dir_follows_recording_path_unless_set() -> None:
    config, _ = parse_config('[recording]\npath = "/rec"\n')
    assert config is not None and config.dump_dir == "/rec"
    config, _ = parse_config('dump_path = "/dumps"\n[recording]\npath = "/rec"\n')
    assert config is not None and config.dump_dir == "/dumps"


# --- output ---------------------------------------------------------------------------------------


def test_toml_output_reads_back_to_the_same_config() -> None:
    config, _ = parse_config(UPSTREAM)
    assert config is not None
    config = dataclasses.replace(
        config,
        http_token="t0ken",
        ambiance=AmbianceOption(path="a.wav"),
        callrecord=HttpCallRecord(url="http://cdr", headers={"A": "1"}, with_media=True),
        handler=WebhookHandler(url="http://h", headers=(("k", "v"),)),
        accept_timeout=0.5,
    )
    text = config_to_toml(config, secrets=True)
    assert parse_config(text, "shown") == (config, ())
    assert parse_config(config_to_toml(Config()), "shown") == (Config(), ())


def test_output_masks_secrets_and_keeps_toml_names() -> None:
    config, _ = parse_config(UPSTREAM)
    assert config is not None
    config = dataclasses.replace(config, http_token="t0ken", ambiance=AmbianceOption())
    data = config_to_dict(config)
    assert data["http_token"] == "***"
    assert data["ice_servers"][1]["credential"] == "***"
    assert data["register_users"][0]["credential"]["password"] == "***"
    assert data["ambiance"]["duckLevel"] == 0.1
    assert data["trunk_rules"][0]["rule"]["match"]["to"] == {"host": r"^172\.25\."}
    assert data["handler"]["type"] == "playbook" and data["callrecord"]["type"] == "local"
    assert data["accept_timeout"] == "50s" and data["graceful_shutdown_timeout"] == 10
    assert "call" not in data and "external_ip" in data
    assert "t0ken" not in config_to_toml(config)
    tomllib.loads(config_to_toml(config))  # masked output is still valid TOML
    assert "t0ken" not in repr(config)


# --- .env -----------------------------------------------------------------------------------------


def test_load_dotenv_parses_and_never_overrides(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        "# comment\n\n"
        "OPENAI_API_KEY=sk-1 # trailing comment\n"
        "export OPENAI_MODEL = gpt-4o-mini\n"
        "SINGLE='literal $HOME # kept'\n"
        'DOUBLE="line\\nnext \\"q\\" ${OPENAI_MODEL}"\n'
        "EXISTING=from-file\n"
        "REF=$EXISTING-x\n"
        "EMPTY=\n"
        "this is not a line\n"
    )
    env = {"EXISTING": "from-env", "HOME": "/home/u"}
    set_now = load_dotenv(path, env)
    assert set_now == {
        "OPENAI_API_KEY": "sk-1",
        "OPENAI_MODEL": "gpt-4o-mini",
        "SINGLE": "literal $HOME # kept",
        "DOUBLE": 'line\nnext "q" gpt-4o-mini',
        "REF": "from-file-x",
        "EMPTY": "",
    }
    assert env["EXISTING"] == "from-env"
    assert env["OPENAI_API_KEY"] == "sk-1"


def test_load_dotenv_reports_a_bad_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / ".env"
    path.write_text('A=1\nB=\'unterminated\nC="x" y\n')
    env: dict[str, str] = {}
    with caplog.at_level(logging.WARNING, logger="activecall.config"):
        assert load_dotenv(path, env) == {"A": "1"}
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:2: not a KEY=value line, skipped",
        f"{path}:3: not a KEY=value line, skipped",
    ]


def test_load_dotenv_without_a_file(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    assert load_dotenv(tmp_path / ".env", env) == {} and env == {}
