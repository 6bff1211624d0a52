"""Incremental sentence splitting for text-to-speech: text arrives in pieces, sentences leave.

A core without I/O. :class:`SentenceSplitter` is fed text as an LLM streams it and returns each
sentence as soon as it is known to be complete, so synthesis of the first sentence starts
before the rest of the reply exists. The rules:

- ``.`` ``!`` ``?`` ``…`` (and runs of them, then any closing quotes or brackets) end a
  sentence when whitespace follows, unless the next word starts in lower case (``"Stop!" he
  said``). A terminator at the end of the text seen so far waits for the next piece, so
  ``3.`` + ``5`` stays one number.
- Not after common abbreviations (``Mr.``, ``Dr.``, ``e.g.`` ...), single capital initials
  (``J. Smith``) or a number opening the sentence (a list item, ``1. Open the app``).
- The CJK forms ``。`` ``！`` ``？`` (and ``．`` ``｡``) end a sentence at once: CJK text puts no
  space after them.
- A blank line (paragraph break) ends a sentence.
- Nothing inside ``<...>`` ends a sentence, and an unclosed ``<tag`` holds everything after it
  back until its ``>`` arrives, so a later layer always sees whole tags. A ``<`` followed by a
  space or digit (``a < b``) is not a tag.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ABBREVIATIONS", "Sentence", "SentenceSplitter"]

ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "mt",
        "vs",
        "e.g",
        "i.e",
        "cf",
        "approx",
        "dept",
        "inc",
        "ltd",
        "co",
        "corp",
        "no",
        "fig",
        "vol",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    }
)
"""Lower-case words (without their final dot) after which a ``.`` does not end a sentence."""

_ENDS = ".!?…"
_CJK_ENDS = "。！？．｡"
_CLOSERS = "\"')]}»”’」』）】》"
_OPENERS = "\"'([{«“‘"
_SPACE = " \t\r\n\u00a0\u3000"


@dataclass(frozen=True, slots=True)
class Sentence:
    """A complete sentence: its text (whitespace-trimmed) and its character span in the text."""

    text: str
    begin: int  # offset of ``text`` in everything pushed so far
    end: int


class SentenceSplitter:
    """Split text pushed in pieces into sentences, each returned as soon as it is complete."""

    def __init__(self) -> None:
        self._buf = ""  # text not yet returned, starting outside any tag
        self._base = 0  # offset of ``_buf[0]`` in everything pushed
        self._scanned = 0  # ``_buf[:_scanned]`` holds no sentence end: the next scan starts here

    @property
    def pending(self) -> str:
        """Text pushed but not yet returned as a sentence."""
        return self._buf

    def push(self, text: str) -> list[str]:
        """Add ``text``; return the sentences it completed (maybe none)."""
        return [s.text for s in self.push_spans(text)]

    def flush(self) -> str:
        """Return what remains (stripped; maybe empty) and start over with an empty buffer."""
        rest = self.flush_span()
        return rest.text if rest else ""

    def push_spans(self, text: str) -> list[Sentence]:
        """:meth:`push`, with each sentence's character span in the whole text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, not {type(text).__name__}")
        self._buf += text
        out: list[Sentence] = []
        start = 0
        cuts, scanned = _cuts(self._buf, self._scanned)
        for cut in cuts:
            sentence = self._sentence(start, cut)
            if sentence is not None:
                out.append(sentence)
            start = cut
        self._base += start
        self._buf = self._buf[start:]
        self._scanned = scanned - start
        return out

    def flush_span(self) -> Sentence | None:
        """:meth:`flush`, with the span; ``None`` when nothing but whitespace remains."""
        rest = self._sentence(0, len(self._buf))
        self._base += len(self._buf)
        self._buf = ""
        self._scanned = 0
        return rest

    def _sentence(self, start: int, end: int) -> Sentence | None:
        raw = self._buf[start:end]
        text = raw.strip()
        if not text:
            return None
        begin = self._base + start + (len(raw) - len(raw.lstrip()))
        return Sentence(text, begin, begin + len(text))


def _cuts(buf: str, i: int) -> tuple[list[int], int]:
    """Offsets in ``buf`` just past each complete sentence, in order, scanning from ``i``
    (``buf`` starts a sentence, outside any tag); and where the next scan must start."""
    cuts: list[int] = []
    start = 0
    n = len(buf)
    while i < n:
        c = buf[i]
        if c == "<" and _opens_tag(buf, i):
            close = buf.find(">", i + 1)
            if close < 0:
                break  # unclosed tag: nothing after it is decided yet
            i = close + 1
            continue
        if c in _CJK_ENDS:
            j = _skip(buf, i + 1, _CJK_ENDS + _ENDS + _CLOSERS)
            cuts.append(j)
            start = i = j
            continue
        if c in _ENDS:
            j = _skip(buf, _skip(buf, i + 1, _ENDS), _CLOSERS)
            if j == n:
                break  # the next piece decides (``3.`` + ``5``)
            if buf[j].isspace() and not (c == "." and j == i + 1 and _abbreviated(buf, start, i)):
                k = _skip(buf, j, _SPACE)
                if k == n:
                    break  # the next word decides ("Stop!" he said)
                if not buf[k].islower():
                    cuts.append(j)
                    start = j
            i = j
            continue
        if c == "\n" and buf[start:i].strip():
            j = _skip(buf, i + 1, " \t\r")
            if j == n:
                break  # maybe a paragraph break
            if buf[j] == "\n":
                cuts.append(j + 1)
                start = i = j + 1
                continue
        i += 1
    return cuts, i


def _skip(buf: str, i: int, chars: str) -> int:
    while i < len(buf) and buf[i] in chars:
        i += 1
    return i


def _opens_tag(buf: str, i: int) -> bool:
    """A ``<`` opens a tag when a name, ``/`` or ``!`` follows (or nothing yet)."""
    if i + 1 == len(buf):
        return True
    nxt = buf[i + 1]
    return nxt.isalpha() or nxt in "/!?"


def _abbreviated(buf: str, start: int, dot: int) -> bool:
    """Whether the word ending at ``buf[dot] == "."`` keeps the sentence going."""
    k = dot
    while k > start and not buf[k - 1].isspace():
        k -= 1
    word = buf[k:dot].lstrip(_OPENERS)
    if word.lower() in ABBREVIATIONS:
        return True
    if len(word) == 1 and word.isalpha() and word.isupper():
        return True  # an initial: "J. Smith"
    # a list number: "1. Open the app" (but "I have 3. You ..." ends)
    return word.isdigit() and not buf[start:k].strip()
