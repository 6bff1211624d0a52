"""Streaming replies: sentences and whole tags in order, wherever the chunks are cut; JSON mode."""

from __future__ import annotations

import pytest

from activecall.playbook.reply import (
    ActionTag,
    JsonReply,
    ReplyItem,
    ReplyParser,
    Speech,
    parse_json_reply,
)

REPLY = (
    "Your order ships to 12.5 Main St. today. Let me connect you "
    '<refer to="sip:agent@10.0.0.5"/> now. '
    '<http url="http://127.0.0.1:8080/orders/42.json?a=1" body=\'{"note": "Hi. Bye!"}\'/>'
    "Goodbye! <hangup/>"
)
EXPECTED: list[ReplyItem] = [
    Speech("Your order ships to 12.5 Main St. today."),
    Speech("Let me connect you"),
    ActionTag("refer", {"to": "sip:agent@10.0.0.5"}),
    Speech("now."),
    ActionTag(
        "http", {"url": "http://127.0.0.1:8080/orders/42.json?a=1", "body": '{"note": "Hi. Bye!"}'}
    ),
    Speech("Goodbye!"),
    ActionTag("hangup", {}),
]


def parse(chunks: list[str]) -> list[ReplyItem]:
    parser = ReplyParser()
    out: list[ReplyItem] = []
    for chunk in chunks:
        out.extend(parser.push(chunk))
    out.extend(parser.finish())
    assert parser.text == "".join(chunks)
    return out


def normal(items: list[ReplyItem]) -> list[tuple[str, object]]:
    return [
        (type(i).__name__, i.text if isinstance(i, Speech) else dict(getattr(i, "attrs", {})))
        for i in items
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64, len(REPLY)])
def test_any_chunking_gives_the_same_items(size: int) -> None:
    chunks = [REPLY[i : i + size] for i in range(0, len(REPLY), size)]
    assert normal(parse(chunks)) == normal(EXPECTED)


def test_a_tag_is_returned_only_when_whole() -> None:
    parser = ReplyParser()
    assert parser.push("Sure thing. Goodbye") == [Speech("Sure thing.")]
    assert parser.push("! <hang") == []
    assert parser.push("up") == []
    assert normal(parser.push("/> ")) == [("Speech", "Goodbye!"), ("ActionTag", {})]
    assert parser.finish() == []


def test_markup_and_cut_off_tags_are_not_spoken() -> None:
    items = parse(['Read <b>this</b> </hangup> aloud. Then <refer to="sip:x'])
    assert normal(items) == [("Speech", "Read this aloud."), ("Speech", "Then")]


def test_json_mode_waits_for_the_whole_reply() -> None:
    parser = ReplyParser()
    assert parser.push("  \n") == []
    assert parser.push('{"text": "Transferring you. ') == [] and parser.json_mode
    assert (
        parser.push('", "waitInputTimeout": 5000, "tools": [{"name": "refer", "to": "sip:a@b"}]}')
        == []
    )
    assert parser.finish() == [
        JsonReply("Transferring you. ", 5000, ({"name": "refer", "to": "sip:a@b"},))
    ]


def test_a_fenced_json_reply_and_text_that_only_looks_like_json() -> None:
    fenced = parse(['```json\n{"tools": [{"name": "hangup"}]}\n```'])
    assert fenced == [JsonReply(None, None, ({"name": "hangup"},))]
    assert normal(parse(["{laughs} Hello there. ", "<hangup/>"])) == [
        ("Speech", "{laughs} Hello there."),
        ("ActionTag", {}),
    ]
    assert parse_json_reply("[1, 2]") is None
    assert parse_json_reply('{"text": 5, "waitInputTimeout": true}') == JsonReply()
