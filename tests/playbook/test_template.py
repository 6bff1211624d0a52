"""Prompt templates: the sandbox, undefined names, the call's variables, syntax errors."""

from __future__ import annotations

from activecall.playbook.template import CallFacts, check_template, render, template_variables

FACTS = CallFacts(
    session_id="s.1",
    call_type="sip",
    caller="sip:alice@example.com",
    callee="sip:support@example.com",
    start_time="2026-01-02T03:04:05Z",
    sip={"X-Customer": "C-42"},
)


def test_built_ins_and_layers_later_winning() -> None:
    variables = template_variables(FACTS, {"name": "Run", "plan": "basic"}, {"plan": "gold"})
    text = (
        "{{ session_id }} {{ call_type }} {{ caller }} {{ callee }} {{ start_time }}"
        ' {{ sip["X-Customer"] }} {{ name }} {{ plan }}'
    )
    assert render(text, variables) == (
        "s.1 sip sip:alice@example.com sip:support@example.com 2026-01-02T03:04:05Z C-42 Run gold"
    )


def test_undefined_names_render_empty_and_never_crash() -> None:
    variables = template_variables(CallFacts(session_id="s.2"))
    text = "[{{ missing }}][{{ missing.deeper.still }}][{{ sip['X-None'] }}][{{ caller }}]"
    assert render(text, variables) == "[][][][]"
    assert render("{% if missing %}yes{% else %}no{% endif %}", variables) == "no"


def test_the_sandbox_refuses_python_internals() -> None:
    text = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    out = render(text, template_variables(FACTS))
    assert "subprocess" not in out and "<class" not in out


def test_a_failing_template_is_used_as_written() -> None:
    text = "Total {{ 1 / 0 }} items"
    assert render(text, {}) == text
    assert render("no braces at all", {}) == "no braces at all"


def test_syntax_errors_carry_their_line() -> None:
    assert check_template("fine {{ x }}\n{% if y %}ok{% endif %}") is None
    problem = check_template("one\ntwo\n{{ broken }\nfour")
    assert problem is not None and problem.line == 3
    problem = check_template("{% for x in y %}\nnever closed")
    assert problem is not None and "endfor" in problem.message
