"""The command line: ``serve`` flags and precedence, ``config check`` and ``config show``."""

from __future__ import annotations

import json
import logging
import os
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from activecall import __version__, cli
from activecall.config import Config, PlaybookHandler, WebhookHandler, parse_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "activecall.toml"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in an empty directory (no stray .env) and undo what ``serve`` does to logging."""
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    level = root.level
    yield
    while cli._installed:
        handler = cli._installed.pop()
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """A stand-in ``activecall.supervisor`` whose ``run`` records the config it gets."""
    calls: list[Config] = []
    module = types.ModuleType("activecall.supervisor")
    module.run = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "activecall.supervisor", module)
    return calls


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


def write(path: str, text: str) -> str:
    Path(path).write_text(text)
    return path


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


# --- serve ----------------------------------------------------------------------------------------


def test_serve_without_a_server_module_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "activecall.supervisor", types.ModuleType("stub"))
    result = invoke("serve")
    assert result.exit_code == 2
    assert "the server is not built yet" in result.stderr


def test_serve_without_the_supervisor_package_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "activecall.supervisor", None)
    result = invoke("serve")
    assert result.exit_code == 2
    assert "the server is not built yet" in result.stderr


def test_serve_defaults_without_a_file(server: list[Config]) -> None:
    result = invoke("serve")
    assert result.exit_code == 0, result.output
    assert server == [Config()]


def test_precedence_defaults_file_flags(server: list[Config]) -> None:
    conf = write(
        "c.toml",
        'http_addr = "127.0.0.1:9000"\nworkers = 3\nlog_level = "warn"\nudp_port = 5070\n'
        'http_token = "from-file"\n',
    )
    result = invoke("serve", "--conf", conf, "--http", "0.0.0.0:7000", "--workers", "5")
    assert result.exit_code == 0, result.output
    (config,) = server
    assert config.http_addr == "0.0.0.0:7000" and config.workers == 5  # flags win
    assert config.log_level == "warn" and config.udp_port == 5070  # file beats defaults
    assert config.http_token == "from-file"
    assert config.rtp_start_port == 12000  # default
    assert logging.getLogger().level == logging.WARNING


def test_serve_passes_every_flag_to_the_server(server: list[Config]) -> None:
    result = invoke(
        "serve",
        "--log-level",
        "INFO",
        "--token",
        "t",
        "--sip",
        "10.0.0.1:5070",
        "--handler",
        "greeting.md",
        "--call",
        "sip:1001@127.0.0.1",
        "--external-ip",
        "203.0.113.7",
        "--codecs",
        "PCMU, g722",
    )
    assert result.exit_code == 0, result.output
    (config,) = server
    assert config.log_level == "info" and config.http_token == "t"
    assert (config.addr, config.udp_port) == ("10.0.0.1", 5070)
    assert config.handler == PlaybookHandler(default="greeting.md")
    assert config.call == "sip:1001@127.0.0.1"
    assert config.external_ip == "203.0.113.7"
    assert config.codecs == ("pcmu", "g722")
    for flag in ("handler", "sip", "call", "external_ip", "codecs"):  # all of them work now
        assert f"--{flag} is stored" not in result.stderr


@pytest.mark.parametrize(
    ("sip", "addr", "port"),
    [
        ("5070", "0.0.0.0", 5070),
        ("10.0.0.1:5070", "10.0.0.1", 5070),
        ("10.0.0.1", "10.0.0.1", 25060),
        ("[::1]:5070", "::1", 5070),
        ("::1", "::1", 25060),
    ],
)
def test_sip_flag(server: list[Config], sip: str, addr: str, port: int) -> None:
    result = invoke("serve", "--sip", sip)
    assert result.exit_code == 0, result.output
    assert (server[0].addr, server[0].udp_port) == (addr, port)


def test_webhook_handler_flag(server: list[Config]) -> None:
    conf = write("c.toml", '[handler]\ntype = "playbook"\ndefault = "a.md"\n')
    result = invoke("serve", "--conf", conf, "--handler", "https://example.com/hook")
    assert result.exit_code == 0, result.output
    assert server[0].handler == WebhookHandler(url="https://example.com/hook")


def test_empty_token_flag_turns_auth_off(server: list[Config]) -> None:
    conf = write("c.toml", 'http_token = "secret"\n')
    assert invoke("serve", "--conf", conf, "--token", "").exit_code == 0
    assert server[0].http_token is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "8080"], "Invalid value for '--http': must be host:port"),
        (["--http", "0.0.0.0:70000"], "Invalid value for '--http': must have a port from 0 to"),
        (["--http", "::1:80"], "Invalid value for '--http': must put an IPv6 address in brackets"),
        (["--workers", "0"], "Invalid value for '--workers'"),
        (["--log-level", "loud"], "Invalid value for '--log-level'"),
        (["--sip", "70000"], "Invalid value for '--sip': port must be from 0 to 65535"),
        (["--sip", "a b:1"], "Invalid value for '--sip': must be PORT, IP:PORT or IP"),
        (["--handler", "hook"], "Invalid value for '--handler': must be an http(s):// URL or"),
        (["--codecs", "pcmu,gsm"], "Invalid value for '--codecs': each codec must be one of"),
        (["--codecs", ","], "Invalid value for '--codecs': must name at least one codec"),
        (["--call", "1001@host"], "Invalid value for '--call': must be a SIP URI"),
    ],
)
def test_bad_flags_are_usage_errors(server: list[Config], args: list[str], message: str) -> None:
    result = invoke("serve", *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert server == []


def test_bad_config_file_stops_serve_with_its_lines(server: list[Config]) -> None:
    conf = write("c.toml", 'udp_port = 5070\nudp_port_x = 1\naccept_timeout = "soon"\n')
    result = invoke("serve", "--conf", conf)
    assert result.exit_code == 1
    assert "c.toml:3: accept_timeout is not a duration: 'soon'" in result.stderr
    assert "c.toml:2: unknown key 'udp_port_x' ignored" in result.stderr
    assert server == []


def test_missing_config_file_is_an_error(server: list[Config]) -> None:
    result = invoke("serve", "--conf", "nope.toml")
    assert result.exit_code == 1
    assert "nope.toml: cannot read the config file" in result.stderr
    assert server == []


def test_serve_logs_to_log_file(server: list[Config], monkeypatch: pytest.MonkeyPatch) -> None:
    def run(config: Config) -> None:
        logging.getLogger("activecall.supervisor").info("serving %s", config.http_addr)

    monkeypatch.setattr(sys.modules["activecall.supervisor"], "run", run)
    conf = write("c.toml", 'log_file = "serve.log"\n')
    assert invoke("serve", "--conf", conf).exit_code == 0
    assert "serving 0.0.0.0:8080" in Path("serve.log").read_text()


def test_serve_loads_dotenv_without_overriding(
    server: list[Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTIVECALL_TEST_NEW", "")
    monkeypatch.delenv("ACTIVECALL_TEST_NEW")  # restored (unset) after the test
    monkeypatch.setenv("ACTIVECALL_TEST_SET", "from-env")
    write(".env", "ACTIVECALL_TEST_NEW=from-dotenv\nACTIVECALL_TEST_SET=from-dotenv\n")
    assert invoke("serve").exit_code == 0
    assert os.environ["ACTIVECALL_TEST_NEW"] == "from-dotenv"
    assert os.environ["ACTIVECALL_TEST_SET"] == "from-env"


def test_run_exit_status_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("activecall.supervisor")
    module.run = lambda config: 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "activecall.supervisor", module)
    assert invoke("serve").exit_code == 3


# --- config check / show --------------------------------------------------------------------------


def test_config_check_ok() -> None:
    result = invoke("config", "check", str(EXAMPLE))
    assert result.exit_code == 0
    assert result.output == f"{EXAMPLE}: OK\n"


def test_config_check_warnings_only_exits_0() -> None:
    conf = write("c.toml", "udp_port = 5070\n\n[recording]\nformat = 'wav'\npaht = '/x'\n")
    result = invoke("config", "check", conf)
    assert result.exit_code == 0
    assert result.output == (
        "c.toml:5: warning: unknown key 'recording.paht' ignored\nc.toml: OK (1 warning)\n"
    )


def test_config_check_prints_every_problem_and_exits_1() -> None:
    conf = write(
        "c.toml",
        'udp_port = "x"\nfoo = 1\n[handler]\ntype = "sms"\n[[ice_servers]]\nusername = "u"\n',
    )
    result = invoke("config", "check", conf)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        'c.toml:1: error: udp_port must be an integer, got a string "x"',
        "c.toml:2: warning: unknown key 'foo' ignored",
        'c.toml:4: error: handler.type must be one of webhook, playbook, got a string "sms"',
        "c.toml:5: error: ice_servers[0].urls is required",
        "c.toml: 3 errors, 1 warning",
    ]


def test_config_check_syntax_error() -> None:
    conf = write("c.toml", "udp_port = 5070\nhttp_addr = 0.0.0.0:8080\n")
    result = invoke("config", "check", conf)
    assert result.exit_code == 1
    assert result.output.startswith("c.toml:2:")
    assert "error: invalid TOML" in result.output


def test_config_show_toml_reads_back() -> None:
    result = invoke("config", "show", "--conf", str(EXAMPLE), "--show-secrets")
    assert result.exit_code == 0, result.output
    assert parse_config(result.output) == parse_config(EXAMPLE.read_text())


def test_config_show_json_masks_secrets() -> None:
    conf = write("c.toml", 'http_token = "s3cret"\nworkers = 2\n')
    result = invoke("config", "show", "--conf", conf, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["http_token"] == "***" and data["workers"] == 2
    assert data["recording"]["path"] == "./config/recorders"
    assert "s3cret" not in result.output


def test_config_show_defaults_is_valid_toml() -> None:
    result = invoke("config", "show")
    assert result.exit_code == 0
    assert tomllib.loads(result.output)["http_addr"] == "0.0.0.0:8080"


def test_config_show_bad_file() -> None:
    conf = write("c.toml", "workers = -1\n")
    result = invoke("config", "show", "--conf", conf)
    assert result.exit_code == 1
    assert "c.toml:1: workers must be from 1 to 4096, got -1" in result.stderr


# --- playbook check -------------------------------------------------------------------------------

EXAMPLES = EXAMPLE.parent


@pytest.mark.parametrize("name", ["customer_support.md", "appointment_booking.md"])
def test_playbook_check_passes_the_examples(name: str) -> None:
    result = invoke("playbook", "check", str(EXAMPLES / name))
    assert result.exit_code == 0, result.output
    assert result.output == f"{EXAMPLES / name}: OK\n"


def test_playbook_check_prints_every_problem_with_its_line() -> None:
    book = write(
        "p.md",
        "---\nllm:\n  model: gpt\n  temperature: 1\ndtmf:\n  '1': {action: goto, scene: nope}\n"
        "---\nHello {{ caller\n",
    )
    result = invoke("playbook", "check", book)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "p.md:4: warning: llm.temperature: unknown key, ignored"
    assert lines[1] == "p.md:6: error: dtmf.1: goto to unknown scene 'nope'"
    assert lines[2].startswith("p.md:8: error: scene 'default': template error:")
    assert lines[3] == "p.md: 2 errors, 1 warning"


def test_playbook_check_warnings_only_and_unreadable_files() -> None:
    book = write("w.md", "---\nllm: {}\ncolour: red\n---\nHi.\n")
    result = invoke("playbook", "check", book)
    assert result.exit_code == 0
    assert result.output == "w.md:3: warning: colour: unknown key, ignored\nw.md: OK (1 warning)\n"
    missing = invoke("playbook", "check", "nowhere.md")
    assert missing.exit_code == 1
    assert missing.output.startswith("nowhere.md: error: cannot read the playbook:")
