"""Outgoing-leg routing: rewrites, trunk rules, register_users credentials (configs parsed
from TOML as a user writes them)."""

from __future__ import annotations

import pytest

from activecall.config import Config, parse_config
from activecall.sip.routing import (
    RoutingError,
    apply_contact,
    register_credentials,
    rewrite_target,
    route_outbound,
    trunk_rule_for,
)
from activecall.sip.uri import SipUri, parse_uri

BASE = 'addr = "0.0.0.0"\nudp_port = 5060\n'


def config(text: str) -> Config:
    parsed, problems = parse_config(BASE + text, "t.toml")
    assert parsed is not None, [str(p) for p in problems]
    return parsed


def sip_uri(text: str) -> SipUri:
    uri = parse_uri(text)
    assert isinstance(uri, SipUri)
    return uri


# --------------------------------------------------------------------------------- rewrites

REWRITES = r"""
[[rewrites]]
match = "^sip:0(\\d+)@pstn$"
rewrite = "sip:+49$1@trunk.example.net:5080"

[[rewrites]]
match = "^sip:(?P<ext>\\d{3})@pbx"
rewrite = "sip:${ext}@10.0.0.5"

[[rewrites]]
match = "^sip:(\\d+)@"
rewrite = "sip:\\1@never-reached"
"""


def test_first_matching_rewrite_wins_with_dollar_groups() -> None:
    cfg = config(REWRITES)
    assert rewrite_target(cfg.rewrites, "sip:0301234@pstn") == (
        "sip:+49301234@trunk.example.net:5080",
        0,
    )


def test_named_group_replaces_only_the_matched_part() -> None:
    cfg = config(REWRITES)
    # the match stops before ".example.com;transport=tcp": the rest of the URI stays
    assert rewrite_target(cfg.rewrites, "sip:123@pbx.example.com;transport=tcp") == (
        "sip:123@10.0.0.5.example.com;transport=tcp",
        1,
    )


def test_backslash_groups_and_no_match() -> None:
    cfg = config(
        r"""
[[rewrites]]
match = "^sip:(\\d+)@(\\w+)$"
rewrite = "sip:\\2-\\1$$1@host"
"""
    )
    # $$ is a literal dollar (then "1" is text); \2 and \1 are groups
    assert rewrite_target(cfg.rewrites, "sip:42@office") == ("sip:office-42$1@host", 0)
    assert rewrite_target(cfg.rewrites, "sip:alice@office") == ("sip:alice@office", None)


def test_rewrite_naming_a_missing_group_is_an_error() -> None:
    cfg = config('[[rewrites]]\nmatch = "^sip:(\\\\d+)@x$"\nrewrite = "sip:$2@y"\n')
    with pytest.raises(RoutingError, match=r"rewrites\[0\].*group '2'"):
        rewrite_target(cfg.rewrites, "sip:5@x")


def test_rewrite_to_something_not_sip_is_an_error() -> None:
    cfg = config('[[rewrites]]\nmatch = "^sip:"\nrewrite = "http://"\n')
    with pytest.raises(RoutingError, match="not a sip: or sips: URI"):
        rewrite_target(cfg.rewrites, "sip:1@x")
    cfg = config('[[rewrites]]\nmatch = "@.*$"\nrewrite = "@bad host"\n')
    with pytest.raises(RoutingError, match="which is not a URI"):
        rewrite_target(cfg.rewrites, "sip:1@x")


# ------------------------------------------------------------------------------ trunk rules

TRUNKS = r"""
[[trunk_rules]]
rule.match.to.host = "^172\\.25\\."
rule.rewrite.contact.host = "172.25.225.2"

[[trunk_rules]]
rule.match.from.user = "^sales$"
rule.match.to.user = "^\\+1"
rule.rewrite.from.user = "+15550100"
rule.rewrite.from.host = "trunk.example.net"
rule.rewrite.to.host = "sbc.example.net:5070"

[[trunk_rules]]
rule.rewrite.contact.host = "1.2.3.4"
rule.rewrite.contact.user = "gw"
"""


def test_trunk_rules_first_match_wins_and_all_conditions_must_hold() -> None:
    rules = config(TRUNKS).trunk_rules
    assert trunk_rule_for(rules, None, "sip:100@172.25.1.9") == 0
    assert trunk_rule_for(rules, "sip:sales@me", "sip:+12125550000@carrier") == 1
    # the To condition holds, the From one does not: the catch-all takes it
    assert trunk_rule_for(rules, "sip:support@me", "sip:+12125550000@carrier") == 2
    # no caller: a from condition cannot hold
    assert trunk_rule_for(rules, None, "sip:+12125550000@carrier") == 2


def test_trunk_rule_rewrites_from_to_and_contact() -> None:
    cfg = config(TRUNKS)
    route = route_outbound(
        cfg, callee="sip:+12125550000@carrier:5062;transport=tcp", caller='"Sales" <sip:sales@me>'
    )
    assert route.trunk_rule == 1
    assert route.callee == "sip:+12125550000@sbc.example.net:5070;transport=tcp"
    assert route.caller == '"Sales" <sip:+15550100@trunk.example.net>'
    assert route.contact is None
    internal = route_outbound(cfg, callee="sip:100@172.25.1.9:5066")
    assert internal.trunk_rule == 0 and internal.callee == "sip:100@172.25.1.9:5066"
    contact = apply_contact(sip_uri("sip:activecall@10.1.1.1:5060"), internal.contact)
    # a host without a port keeps the old port
    assert str(contact) == "sip:activecall@172.25.225.2:5060"
    other = route_outbound(cfg, callee="sip:bob@example.org")
    assert str(apply_contact(sip_uri("sip:activecall@10.1.1.1:5060"), other.contact)) == (
        "sip:gw@1.2.3.4:5060"
    )


def test_from_rewrite_without_a_caller_uses_the_default_caller() -> None:
    cfg = config(
        '[[trunk_rules]]\nrule.rewrite.from.user = "+15550100"\nrule.rewrite.to.host = "10.9.9.9"\n'
    )
    route = route_outbound(cfg, callee="sip:1@x", default_caller_host="192.0.2.7")
    assert route.caller == "<sip:+15550100@192.0.2.7>"
    assert route.callee == "sip:1@10.9.9.9"


def test_rewrites_run_before_trunk_rules() -> None:
    cfg = config(
        '[[rewrites]]\nmatch = "@pstn$"\nrewrite = "@172.25.0.1"\n'
        + '[[trunk_rules]]\nrule.match.to.host = "^172\\\\.25\\\\."\n'
        + 'rule.rewrite.to.user = "routed"\n'
    )
    route = route_outbound(cfg, callee="sip:5@pstn")
    assert (route.rewrite, route.trunk_rule, route.callee) == (0, 0, "sip:routed@172.25.0.1")


def test_no_rules_leave_the_leg_alone() -> None:
    route = route_outbound(Config(), callee="sip:1@h", caller="sip:me@here")
    assert (route.callee, route.caller, route.contact, route.credentials) == (
        "sip:1@h",
        "sip:me@here",
        None,
        None,
    )
    assert (route.rewrite, route.trunk_rule) == (None, None)


def test_bad_callee_is_an_error() -> None:
    with pytest.raises(RoutingError, match="not a sip: or sips: URI"):
        route_outbound(Config(), callee="tel:+1555")
    with pytest.raises(RoutingError, match="is not a SIP URI"):
        route_outbound(Config(), callee="not a uri")


def test_bad_trunk_host_is_an_error() -> None:
    cfg = config('[[trunk_rules]]\nrule.rewrite.to.host = "bad host"\n')
    with pytest.raises(RoutingError, match="trunk rule host"):
        route_outbound(cfg, callee="sip:1@x")


# ------------------------------------------------------------------------------ credentials

USERS = """
[[register_users]]
server = "pbx.example.com:5080"
username = "1001"
disabled = true
[register_users.credential]
username = "1001"
password = "off"

[[register_users]]
server = "sip:PBX.example.com"
username = "1002"
[register_users.credential]
username = "auth1002"
password = "s3cret"

[[register_users]]
server = "10.0.0.9"
username = "1003"
[register_users.credential]
username = "1003"
password = "p"
realm = "voip.example.org"

[[register_users]]
server = "127.0.0.1:5060"
username = "1004"
[register_users.credential]
username = "1004"
password = ""
"""


def test_credentials_of_the_first_enabled_user_on_the_callee_host() -> None:
    users = config(USERS).register_users
    assert register_credentials(users, "sip:200@pbx.example.com") == ("auth1002", "s3cret")
    # the realm names the domain too
    assert register_credentials(users, "sip:200@voip.example.org:5070") == ("1003", "p")
    assert register_credentials(users, "sip:200@10.0.0.9") == ("1003", "p")
    # an empty password is IP-based auth: nothing to answer a challenge with
    assert register_credentials(users, "sip:200@127.0.0.1") is None
    assert register_credentials(users, "sip:200@elsewhere") is None
    assert register_credentials(users, "tel:+1") is None


def test_sip_option_credentials_win_over_register_users() -> None:
    cfg = config(USERS)
    route = route_outbound(
        cfg, callee="sip:1@pbx.example.com", sip={"username": "u", "password": "pw"}
    )
    assert route.credentials == ("u", "pw")
    # a username without a password does not count as credentials
    route = route_outbound(cfg, callee="sip:1@pbx.example.com", sip={"username": "u"})
    assert route.credentials == ("auth1002", "s3cret")


def test_credentials_follow_the_rewritten_target() -> None:
    cfg = config(USERS + '[[rewrites]]\nmatch = "@pstn$"\nrewrite = "@pbx.example.com"\n')
    route = route_outbound(cfg, callee="sip:5@pstn")
    assert route.callee == "sip:5@pbx.example.com"
    assert route.credentials == ("auth1002", "s3cret")
