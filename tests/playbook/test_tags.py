"""Tags in text that may still be arriving: whole, incomplete, or not a tag at all."""

from __future__ import annotations

import pytest

from activecall.playbook.tags import INCOMPLETE, MAX_TAG_CHARS, ScannedTag, find_tags, scan_tag


def attrs(text: str) -> dict[str, str]:
    tag = scan_tag(text, text.index("<"), final=True)
    assert isinstance(tag, ScannedTag), tag
    return dict(tag.attrs)


def test_quotes_json_bodies_and_entities() -> None:
    assert attrs('<refer to="sip:1001@10.0.0.5:5060"/>') == {"to": "sip:1001@10.0.0.5:5060"}
    assert attrs("<play file='a b.wav' />") == {"file": "a b.wav"}
    assert attrs('<http url="http://x/y" body=\'{"id": "123"}\'/>')["body"] == '{"id": "123"}'
    # inner double quotes inside double quotes: read as balanced JSON (upstream drops the tag)
    assert attrs('<http url="http://x" body="{"id": "1", "q": "a>b"}"/>')["body"] == (
        '{"id": "1", "q": "a>b"}'
    )
    assert attrs('<set_var key="k" value="A &amp; B &quot;C&quot;"/>')["value"] == 'A & B "C"'
    assert attrs("<http method=post url=http://x/y/>")["method"] == "post"
    assert attrs("<collect TYPE='pin' interruptible/>") == {"type": "pin", "interruptible": ""}


@pytest.mark.parametrize(
    "text",
    [
        "<",
        "<han",
        "<hangup",
        "<hangup ",
        "<hangup /",
        '<refer to="sip:a',
        '<http body="{"a": 1',
        "</",
    ],
)
def test_a_tag_cut_by_the_end_of_the_text_waits(text: str) -> None:
    assert scan_tag(text, 0) is INCOMPLETE


@pytest.mark.parametrize("text", ["< b", "<3 you", "<=", "<a+b>", "<hangup/x>"])
def test_text_that_is_not_a_tag(text: str) -> None:
    assert scan_tag(text, 0) is None


def test_a_runaway_tag_is_given_up_as_text() -> None:
    text = '<http body="' + "x" * MAX_TAG_CHARS
    assert scan_tag(text, 0) is None


def test_find_tags_picks_names_and_skips_the_rest() -> None:
    text = 'a < b <dtmf digit="1" action="hangup"/> <b>x</b> <play file="f.wav"/> <goto'
    found = find_tags(text, {"dtmf", "play", "goto"})
    assert [t.name for t in found] == ["dtmf", "play"]
    assert text[found[1].start : found[1].end] == '<play file="f.wav"/>'
