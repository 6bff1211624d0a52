"""Routing of outgoing INVITEs: ``rewrites``, ``trunk_rules`` and ``register_users`` credentials.

Plain functions over the configuration (reference §3.2, §6), no I/O. :func:`route_outbound`
is what an outgoing leg (``/call/sip`` ``invite``, ``--call``, a ``refer`` leg) asks before
the INVITE is built:

1. ``rewrites``: the first rule whose ``match`` regex is found in the target URI replaces that
   match with ``rewrite`` (upstream uses Rust's ``Regex::replace``: ``$1``, ``${1}``,
   ``$name``, ``${name}``, ``$$`` for a dollar; ``\\1`` and ``\\g<name>`` are accepted too).
   A rewrite naming a group the pattern lacks is an error, where upstream silently inserts
   nothing.
2. ``trunk_rules``: the first rule whose ``match.{from,to}.{user,host}`` regexes are all found
   (none: a catch-all) rewrites the From, the To / Request-URI and the Contact with
   ``rewrite.{from,to,contact}.{user,host}``; a host without a port keeps the old port.
3. Credentials: the ``sip`` option's ``username``/``password`` when both are given, else those
   of the first enabled ``register_users`` entry whose server host (or credential realm) is
   the target's host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from activecall.config import Config, RegisterUser, RewriteRule, TrunkRule, UriMatch, UriRewrite
from activecall.sip.uri import Address, SipUri, UriError, parse_address, parse_hostport, parse_uri

__all__ = [
    "OutboundRoute",
    "RoutingError",
    "apply_contact",
    "apply_trunk_rule",
    "expand_rewrite",
    "register_credentials",
    "rewrite_target",
    "route_outbound",
    "trunk_rule_for",
]

DEFAULT_CALLER_USER = "activecall"

# One reference in a rewrite template: $$, ${name}, $name, \N, \g<name> (name: [A-Za-z0-9_]+).
_REFERENCE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)|\\g<(\w+)>|\\(\d+)")


class RoutingError(ValueError):
    """A routing rule that cannot be applied (a bad rewrite or a result that is not a SIP URI)."""


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """An outgoing leg after the routing rules: what the INVITE carries."""

    callee: str
    """Request-URI and To (a ``sip:``/``sips:`` URI)."""
    caller: str | None
    """From (``None``: the agent's default)."""
    contact: UriRewrite | None = None
    """The matched trunk rule's Contact rewrite (apply it with :func:`apply_contact`)."""
    credentials: tuple[str, str] | None = None
    """Digest ``(username, password)`` for a 401/407."""
    rewrite: int | None = None
    """Index of the ``rewrites`` rule applied, if any."""
    trunk_rule: int | None = None
    """Index of the ``trunk_rules`` rule applied, if any."""


def route_outbound(
    config: Config,
    *,
    callee: str,
    caller: str | None = None,
    sip: Mapping[str, object] | None = None,
    default_caller_host: str = "127.0.0.1",
) -> OutboundRoute:
    """Apply ``rewrites``, ``trunk_rules`` and the credential lookup to an outgoing leg.

    ``sip`` is the call's ``SipOption`` (snake_case keys). ``default_caller_host`` is only
    used when a trunk rule rewrites the From of a call that names no caller. Raises
    :class:`RoutingError`.
    """
    target, rewrite = rewrite_target(config.rewrites, callee)
    index = trunk_rule_for(config.trunk_rules, caller, target)
    contact: UriRewrite | None = None
    if index is not None:
        rule = config.trunk_rules[index].rule.rewrite
        if rule.from_ is not None and caller is None:
            caller = f"sip:{DEFAULT_CALLER_USER}@{default_caller_host}"
        caller, target = apply_trunk_rule(config.trunk_rules[index], caller, target)
        contact = rule.contact
    credentials = _option_credentials(sip) or register_credentials(config.register_users, target)
    return OutboundRoute(
        callee=target,
        caller=caller,
        contact=contact,
        credentials=credentials,
        rewrite=rewrite,
        trunk_rule=index,
    )


# --------------------------------------------------------------------------------- rewrites


def rewrite_target(rules: Sequence[RewriteRule], uri: str) -> tuple[str, int | None]:
    """``uri`` after the first matching ``rewrites`` rule, and that rule's index."""
    for index, rule in enumerate(rules):
        found = re.search(rule.match, uri)
        if found is None:
            continue
        try:
            replacement = expand_rewrite(rule.rewrite, found)
        except RoutingError as exc:
            raise RoutingError(f"rewrites[{index}]: {exc}") from None
        result = uri[: found.start()] + replacement + uri[found.end() :]
        _sip_uri(result, f"rewrites[{index}] turned {uri!r} into")
        return result, index
    return uri, None


def expand_rewrite(template: str, found: re.Match[str]) -> str:
    """``template`` with its group references replaced by what ``found`` captured."""

    def group(ref: re.Match[str]) -> str:
        if ref.group(0) == "$$":
            return "$"
        name = next(g for g in ref.groups() if g is not None)
        key: int | str = int(name) if name.isdigit() else name
        try:
            value = found.group(key)
        except IndexError:  # what Match.group raises for a group the pattern lacks
            raise RoutingError(
                f"the rewrite {template!r} refers to group {name!r}, which the pattern "
                f"{found.re.pattern!r} does not have"
            ) from None
        return value or ""

    return _REFERENCE.sub(group, template)


# ------------------------------------------------------------------------------ trunk rules


def trunk_rule_for(rules: Sequence[TrunkRule], caller: str | None, callee: str) -> int | None:
    """Index of the first trunk rule whose conditions all hold for this From and To."""
    from_uri = _uri_of(caller) if caller else None
    to_uri = _uri_of(callee)
    for index, trunk in enumerate(rules):
        match = trunk.rule.match
        if _holds(match.from_, from_uri) and _holds(match.to, to_uri):
            return index
    return None


def apply_trunk_rule(rule: TrunkRule, caller: str | None, callee: str) -> tuple[str | None, str]:
    """From and To after ``rule.rewrite.from`` and ``rule.rewrite.to`` (a ``None`` caller
    stays ``None``)."""
    rewrite = rule.rule.rewrite
    if rewrite.to is not None:
        callee = str(_rewritten(_uri_of(callee), rewrite.to))
    if caller is not None and rewrite.from_ is not None:
        address = parse_address(caller)
        if isinstance(address.uri, SipUri):
            address = Address(
                _rewritten(address.uri, rewrite.from_), address.display_name, address.params
            )
            caller = str(address)
    return caller, callee


def apply_contact(contact: SipUri, rewrite: UriRewrite | None) -> SipUri:
    """The Contact URI ``contact`` after a trunk rule's ``rewrite.contact``."""
    return contact if rewrite is None else _rewritten(contact, rewrite)


def _holds(match: UriMatch | None, uri: SipUri | None) -> bool:
    if match is None:
        return True
    user = uri.user or "" if uri is not None else ""
    host = uri.host if uri is not None else ""
    if match.user is not None and re.search(match.user, user) is None:
        return False
    return match.host is None or re.search(match.host, host) is not None


def _rewritten(uri: SipUri, rewrite: UriRewrite) -> SipUri:
    if rewrite.user is not None:
        uri = replace(uri, user=rewrite.user or None)
    if rewrite.host is not None:
        try:
            host, port = parse_hostport(rewrite.host)
        except UriError as exc:
            raise RoutingError(f"trunk rule host {rewrite.host!r}: {exc}") from None
        uri = replace(uri, host=host, port=port if port is not None else uri.port)
    return uri


# ------------------------------------------------------------------------------ credentials


def register_credentials(users: Sequence[RegisterUser], callee: str) -> tuple[str, str] | None:
    """``(username, password)`` of the first enabled ``register_users`` entry with a password
    whose server host, or credential realm, is ``callee``'s host (case-insensitive)."""
    try:
        host = _uri_of(callee).host.strip("[]").lower()
    except RoutingError:
        return None
    for user in users:
        credential = user.credential
        if user.disabled or credential is None or not credential.password:
            continue
        names = {_server_host(user.server)}
        if credential.realm:
            names.add(credential.realm.lower())
        if host in names:
            return credential.username or user.username, credential.password
    return None


def _server_host(server: str) -> str:
    """The host of a ``register_users.server`` (``host``, ``host:port`` or a SIP URI)."""
    text = server.strip()
    if text.lower().startswith(("sip:", "sips:")):
        try:
            uri = parse_uri(text)
        except UriError:
            return ""
        return uri.host.strip("[]").lower() if isinstance(uri, SipUri) else ""
    try:
        host, _ = parse_hostport(text)
    except UriError:
        return ""
    return host.strip("[]").lower()


def _option_credentials(sip: Mapping[str, object] | None) -> tuple[str, str] | None:
    if sip is None:
        return None
    username, password = sip.get("username"), sip.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return username, password
    return None


# -------------------------------------------------------------------------------- URIs


def _uri_of(text: str) -> SipUri:
    """The URI of a bare URI or of a name-addr (a bare URI keeps its ``;params``, which an
    addr-spec would give to the header)."""
    try:
        uri = parse_address(text).uri if "<" in text else parse_uri(text.strip())
    except UriError as exc:
        raise RoutingError(f"{text!r} is not a SIP URI: {exc}") from None
    if not isinstance(uri, SipUri):
        raise RoutingError(f"{text!r} is not a sip: or sips: URI")
    return uri


def _sip_uri(text: str, what: str) -> None:
    try:
        uri = parse_uri(text)
    except UriError as exc:
        raise RoutingError(f"{what} {text!r}, which is not a URI: {exc}") from None
    if not isinstance(uri, SipUri):
        raise RoutingError(f"{what} {text!r}, which is not a sip: or sips: URI")
