"""The ``activecall`` command line: ``serve`` (upstream's flags), ``config check``/``show``.

Precedence of a setting: built-in default < config file (``--conf``) < command-line flag.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import click

from activecall import __version__
from activecall.config import (
    Config,
    ConfigError,
    PlaybookHandler,
    WebhookHandler,
    check_config,
    config_to_dict,
    config_to_toml,
    load_config,
    load_dotenv,
    normalize_codec,
    split_host_port,
)

logger = logging.getLogger("activecall.cli")

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical", "off")
_PY_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOT_BUILT = 2  # exit status of `serve` when the server is not in this build


@click.group()
@click.version_option(__version__, prog_name="activecall")
def main() -> None:
    """activecall: a voice-AI media gateway."""


# --- logging ----------------------------------------------------------------------------------


def configure_logging(level: str = "info", log_file: str | None = None) -> None:
    """Log to stderr, or to ``log_file`` (appended), at ``level`` (a ``log_level`` name).

    Replaces the handler a previous call installed, so it can run again once the config is read.
    """
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    handler = (
        logging.FileHandler(log_file, encoding="utf-8") if log_file else logging.StreamHandler()
    )
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(_PY_LEVELS[level.lower()])


_installed: list[logging.Handler] = []


# --- flag parsing ------------------------------------------------------------------------------


def _http_addr(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            split_host_port(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _sip_addr(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str | None, int | None] | None:
    """``--sip``: a port, ``ip:port`` or an ip, as (addr, udp_port); ``None`` = unchanged."""
    if value is None:
        return None
    if value.isdigit():
        if int(value) > 65535:
            raise click.BadParameter(f"port must be from 0 to 65535, got {value}")
        return None, int(value)
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value.strip("[]"), None
    except ValueError:
        pass
    try:
        host, port = split_host_port(value)
    except ValueError as exc:
        raise click.BadParameter(f"must be PORT, IP:PORT or IP; {value!r} {exc}") from None
    return host, port


def _handler(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> WebhookHandler | PlaybookHandler | None:
    """``--handler``: an http(s) URL is a webhook, a ``.md`` file the default playbook."""
    if value is None:
        return None
    if value.startswith(("http://", "https://")):
        return WebhookHandler(url=value)
    if value.endswith(".md"):
        return PlaybookHandler(default=value)
    raise click.BadParameter(f"must be an http(s):// URL or a .md playbook, got {value!r}")


def _codecs(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    try:
        names = tuple(normalize_codec(name.strip()) for name in value.split(",") if name.strip())
    except ValueError as exc:
        raise click.BadParameter(f"each codec {exc}") from None
    if not names:
        raise click.BadParameter("must name at least one codec")
    return names


def _sip_uri(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.lower().startswith(("sip:", "sips:")):
        raise click.BadParameter(f"must be a SIP URI such as sip:1001@127.0.0.1, got {value!r}")
    return value


def _apply_flags(config: Config, flags: dict[str, Any]) -> Config:
    """``config`` with the (parsed) ``serve`` flags that were given."""
    changes = {
        key: flags[name]
        for name, key in _FLAG_KEYS.items()
        if flags.get(name) is not None and flags.get(name) != ()
    }
    if flags.get("token") is not None:
        changes["http_token"] = flags["token"] or None  # --token "" turns auth off
    if flags.get("sip") is not None:
        addr, port = flags["sip"]
        changes.update({"addr": addr} if addr is not None else {})
        changes.update({"udp_port": port} if port is not None else {})
    return dataclasses.replace(config, **changes)


_FLAG_KEYS = {
    "http": "http_addr",
    "workers": "workers",
    "log_level": "log_level",
    "handler": "handler",
    "call": "call",
    "external_ip": "external_ip",
    "codecs": "codecs",
}


# --- serve --------------------------------------------------------------------------------------


def _server_entry() -> Callable[[Config], object] | None:
    """``activecall.supervisor.run``, or ``None`` when this build has no server yet."""
    try:
        module = importlib.import_module("activecall.supervisor")
    except ModuleNotFoundError as exc:
        if exc.name in ("activecall.supervisor", None):
            return None
        raise
    run = getattr(module, "run", None)
    return run if callable(run) else None


@main.command()
@click.option("--conf", metavar="FILE", help="TOML config file (default: built-in defaults).")
@click.option("--http", metavar="ADDR:PORT", callback=_http_addr, help="HTTP/WebSocket address.")
@click.option("--workers", type=click.IntRange(1, 4096), help="Worker processes (default: CPUs).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False))
@click.option("--token", metavar="T", help="Bearer token required on every HTTP/WS request.")
@click.option(
    "--sip", metavar="PORT|IP:PORT|IP", callback=_sip_addr, help="SIP UDP port and/or address."
)
@click.option(
    "--handler",
    metavar="URL|FILE.md",
    callback=_handler,
    help="Inbound calls: webhook URL or playbook.",
)
@click.option("--call", metavar="SIP_URI", callback=_sip_uri, help="Call this URI at start.")
@click.option("--external-ip", metavar="IP", help="Public IP for SIP and SDP.")
@click.option("--codecs", metavar="a,b,c", callback=_codecs, help="Codecs, preferred first.")
@click.pass_context
def serve(ctx: click.Context, /, conf: str | None, **flags: Any) -> None:
    """Run the gateway. Flags override the config file, which overrides the defaults."""
    configure_logging(flags.get("log_level") or "info")
    load_dotenv()
    try:
        config = _apply_flags(load_config(conf), flags)
    except ConfigError as exc:
        raise click.ClickException(f"invalid config:\n{exc}") from None
    try:
        configure_logging(config.log_level, config.log_file)
    except OSError as exc:
        raise click.ClickException(f"cannot open log_file {config.log_file}: {exc}") from None
    run = _server_entry()
    if run is None:
        click.echo(
            "activecall: the server is not built yet (activecall.supervisor.run is missing)",
            err=True,
        )
        ctx.exit(_NOT_BUILT)
    try:
        status = run(config)
    except OSError as exc:  # e.g. the HTTP port is taken
        raise click.ClickException(f"cannot start the server: {exc}") from None
    if isinstance(status, int) and status:
        ctx.exit(status)


# --- config ---------------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check or show a config file."""


@config_group.command("check")
@click.argument("file")
def config_check(file: str) -> None:
    """Print every problem of FILE with its line; exit 1 if any is an error."""
    _, problems = check_config(file)
    _report(file, problems)


def _report(file: str, problems: Sequence[Any]) -> None:
    """Print each problem (``location``, ``severity``, ``message``) and a summary line; exit 1
    when any is an error."""
    for problem in problems:
        click.echo(f"{problem.location}: {problem.severity}: {problem.message}")
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    if errors:
        click.echo(f"{file}: {_count(errors, 'error')}, {_count(warnings, 'warning')}")
        raise SystemExit(1)
    click.echo(f"{file}: OK" + (f" ({_count(warnings, 'warning')})" if warnings else ""))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@config_group.command("show")
@click.option("--conf", metavar="FILE", help="TOML config file (default: built-in defaults).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.option("--show-secrets", is_flag=True, help="Do not mask passwords and tokens.")
def config_show(conf: str | None, as_json: bool, show_secrets: bool) -> None:
    """Print the effective config (defaults filled in)."""
    try:
        config = load_config(conf)
    except ConfigError as exc:
        raise click.ClickException(f"invalid config:\n{exc}") from None
    if as_json:
        click.echo(json.dumps(config_to_dict(config, secrets=show_secrets), indent=2))
    else:
        click.echo(config_to_toml(config, secrets=show_secrets), nl=False)


# --- playbook -------------------------------------------------------------------------------------


@main.group("playbook")
def playbook_group() -> None:
    """Check playbooks."""


@playbook_group.command("check")
@click.argument("file")
def playbook_check(file: str) -> None:
    """Print every problem of playbook FILE with its line; exit 1 if any is an error."""
    from activecall.playbook.parser import check_playbook

    _, problems = check_playbook(file)
    _report(file, problems)
