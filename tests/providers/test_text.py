"""SentenceSplitter: sentences out as soon as they are complete, never a cut in a tag."""

from __future__ import annotations

import random

import pytest

from activecall.providers.text import Sentence, SentenceSplitter


def split_all(text: str) -> list[str]:
    """Push ``text`` in one piece, then flush."""
    splitter = SentenceSplitter()
    out = splitter.push(text)
    rest = splitter.flush()
    return [*out, rest] if rest else out


def split_by_char(text: str) -> list[str]:
    """Push ``text`` one character at a time, then flush."""
    splitter = SentenceSplitter()
    out: list[str] = []
    for ch in text:
        out += splitter.push(ch)
    rest = splitter.flush()
    return [*out, rest] if rest else out


CASES = [
    ("Hello there. How are you? I am fine!", ["Hello there.", "How are you?", "I am fine!"]),
    ("It costs 3.5 dollars. Pay now.", ["It costs 3.5 dollars.", "Pay now."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("Bring fruit, e.g. apples. Thanks.", ["Bring fruit, e.g. apples.", "Thanks."]),
    ("J. R. Tolkien wrote it. Yes.", ["J. R. Tolkien wrote it.", "Yes."]),
    ("1. Open the app. 2. Tap login.", ["1. Open the app.", "2. Tap login."]),
    ("Wait... What?! Really?", ["Wait...", "What?!", "Really?"]),
    (
        'He said "Stop!" and left. Then "Go." Done.',
        ['He said "Stop!" and left.', 'Then "Go."', "Done."],
    ),
    ("你好。今天天气很好！你呢？", ["你好。", "今天天气很好！", "你呢？"]),
    ("First part\n\nSecond part", ["First part", "Second part"]),
    ('Say <break time="1.5s"/> now. Bye.', ['Say <break time="1.5s"/> now.', "Bye."]),
    (
        '<emotion value="Happy. Very.">Hi. There.</emotion>',
        ['<emotion value="Happy. Very.">Hi.', "There.</emotion>"],
    ),
    ("If a < b. Then stop.", ["If a < b.", "Then stop."]),
    ("No terminator at all", ["No terminator at all"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_split_whole_text(text: str, expected: list[str]) -> None:
    assert split_all(text) == expected


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_split_is_the_same_in_any_chunking(text: str, expected: list[str]) -> None:
    assert split_by_char(text) == expected


def test_sentence_is_returned_as_soon_as_the_next_word_starts() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hello there.") == []  # "3." + "5" must stay possible
    assert splitter.push(" How") == ["Hello there."]
    assert splitter.push(" are you?") == []
    assert splitter.push(" Fine") == ["How are you?"]
    assert splitter.flush() == "Fine"


def test_decimal_split_across_pieces_is_kept_whole() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("The rate is 3.") == []
    assert splitter.push("5 percent. Next") == ["The rate is 3.5 percent."]


def test_unclosed_tag_holds_back_everything_after_it() -> None:
    splitter = SentenceSplitter()
    assert splitter.push('Done. <refer to="sip:a@b. c"') == ["Done."]
    assert splitter.push(" /> Bye. More") == ['<refer to="sip:a@b. c" /> Bye.']
    assert splitter.pending == " More"


def test_lone_angle_bracket_at_end_waits_for_the_next_piece() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Yes. X <") == ["Yes."]
    assert splitter.push(" y. Ok") == ["X < y."]


def test_spans_point_into_the_whole_text() -> None:
    pieces = ["  Hi", " there. How", " are you?  ", " Good"]
    whole = "".join(pieces)
    splitter = SentenceSplitter()
    spans: list[Sentence] = []
    for piece in pieces:
        spans += splitter.push_spans(piece)
    rest = splitter.flush_span()
    assert rest is not None
    spans.append(rest)
    assert [s.text for s in spans] == ["Hi there.", "How are you?", "Good"]
    for s in spans:
        assert whole[s.begin : s.end] == s.text


def test_spans_continue_after_flush() -> None:
    splitter = SentenceSplitter()
    splitter.push("One.")
    assert splitter.flush_span() == Sentence("One.", 0, 4)
    assert splitter.push_spans(" Two. Three") == [Sentence("Two.", 5, 9)]


def test_whitespace_only_text_gives_nothing() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("   \n ") == []
    assert splitter.flush() == ""
    assert splitter.flush_span() is None


def test_non_string_text_is_a_type_error_and_keeps_the_buffer() -> None:
    splitter = SentenceSplitter()
    splitter.push("Kept")
    with pytest.raises(TypeError, match="text must be str"):
        splitter.push(b"bytes")  # type: ignore[arg-type]
    assert splitter.flush() == "Kept"


def test_random_chunking_of_a_long_text_gives_the_same_sentences() -> None:
    text = " ".join(t for t, _ in CASES)
    whole = split_all(text)
    rng = random.Random(7)
    for _ in range(20):
        splitter = SentenceSplitter()
        out: list[str] = []
        pos = 0
        while pos < len(text):
            step = rng.randint(1, 12)
            out += splitter.push(text[pos : pos + step])
            pos += step
        rest = splitter.flush()
        got = [*out, rest] if rest else out
        assert got == whole
