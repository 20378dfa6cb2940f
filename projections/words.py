"""Words: how text is folded and cut into the words the full-text index compares.

Stored text and queries go through :func:`word_pieces` alike, so they meet. The text is
folded whole before it is cut: compatibility forms unfolded (NFKD: "ﬁ" as "fi", full- and
half-width forms as the usual ones), case-folded, diacritics stripped (every mark of a
non-zero combining class: accents, harakat, niqqud, tone marks), strokes and ligatures
as plain letters. Cutting first split a word at a mark that folding made or had not yet
stripped ("İ" folds to "i" and a dot above; Arabic, Hebrew and Yoruba marks have no
precomposed form), so a query's word and the same stored word came out in other pieces.
Marks that stay (vowel signs of class 0, as Indic scripts write) belong to their word.
"""

from __future__ import annotations

import functools
import re
import unicodedata

__all__ = ["LAYOUT", "UNSPACED_RUN", "fold", "word_pieces", "words"]

_STROKED = {
    **{"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ŧ": "t", "\u0131": "i", "ƀ": "b", "ɨ": "i"},
    **{"ð": "d", "æ": "ae", "œ": "oe", "þ": "th"},
}
"""Case-folded letters with a stroke or ligatures, as their plain letters (Unicode does not
decompose them)."""

_IGNORABLE_MARKS = (0x034F, *range(0x180B, 0x180E), *range(0xFE00, 0xFE10))
"""Marks of combining class 0 that are no part of a word's spelling: the combining
grapheme joiner and the variation selectors (those of plane 14 are listed apart)."""


@functools.cache
def _marks() -> tuple[dict[int, str | None], re.Pattern[str]]:
    """The folding table (diacritics stripped, strokes and ligatures unfolded, ``_`` a
    space) and the pattern of a word of folded text: letters, digits and the marks that
    stay in words. Made on the first text that is not ASCII (a walk over every mark of
    Unicode takes some 30 ms), not as the package is imported."""
    table: dict[int, str | None] = {ord(k): v for k, v in _STROKED.items()}
    table[ord("_")] = " "
    table.update(dict.fromkeys(range(0xE0100, 0xE01F0)))
    kept: list[int] = []
    category, combining = unicodedata.category, unicodedata.combining
    for code, c in enumerate(map(chr, range(0x20000))):
        if category(c)[0] != "M":
            continue
        if combining(c) or code in _IGNORABLE_MARKS:
            table[code] = None
        else:
            kept.append(code)
    ranges: list[str] = []
    for code in kept:
        if ranges and ranges[-1][-1] == chr(code - 1):
            ranges[-1] = ranges[-1][0] + chr(code)
        else:
            ranges.append(chr(code))
    spans = "".join(
        re.escape(r[0]) + ("-" + re.escape(r[-1]) if len(r) > 1 else "") for r in ranges
    )
    return table, re.compile(f"[\\w{spans}]+")


_ASCII_WORDS = bytes(
    ord(chr(c).lower()) if c < 128 and chr(c).isalnum() else ord(" ") for c in range(256)
)
"""A translation of ASCII text that lowers its letters and blanks every byte that is no
letter or digit: split on whitespace, it gives the words :func:`words` gives (faster)."""

UNSPACED_RUN = re.compile(
    "([\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3040-\u30ff\u3130-\u318f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+)"
)
"""A run of characters of a script written without spaces between words: Chinese,
Japanese (half-width katakana are full-width once folded), Korean, Thai, Lao, Burmese or
Khmer. A run is indexed as its overlapping pairs of characters (see :func:`word_pieces`):
cut at its marks instead, a Thai sentence gave pieces no query word shared."""

LAYOUT = "nfkd-casefold-unmarked-nfc|then-cut|marks-in-words|unspaced-bigrams-and-singles|strokes"
"""How text is folded and cut, in the search fingerprint (beside the Unicode version that
folding follows): a change refolds the index, so that stored words and query words meet."""


def fold(text: str) -> str:
    """``text`` folded as the index compares it: compatibility forms unfolded, case-folded,
    without diacritics, strokes or ligatures, ``_`` as a space, recomposed (NFC, so that
    Korean stays in syllables)."""
    if text.isascii():
        return text.lower().replace("_", " ")
    folded = unicodedata.normalize("NFKD", text).casefold().translate(_marks()[0])
    return unicodedata.normalize("NFC", folded)


def words(text: str) -> list[str]:
    """The folded words of ``text``, a run of a script written without spaces
    (:data:`UNSPACED_RUN`) whole."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_WORDS).decode("ascii").split()
    return _marks()[1].findall(fold(text))


def word_pieces(text: str, *, singles: bool = False) -> list[str]:
    """The words of ``text`` as the index cuts them (:func:`words`), each run of a script
    written without spaces (:data:`UNSPACED_RUN`) as its overlapping pairs ("東京都"
    gives "東京", "京都"), a run of one character as itself. With ``singles`` (stored
    text, not a query) a run's characters follow its pairs, so that a one-character word
    ("猫") is found in a sentence."""
    found = words(text)
    if text.isascii():
        return found
    pieces: list[str] = []
    for word in found:
        if word.isascii() or UNSPACED_RUN.search(word) is None:
            pieces.append(word)
            continue
        for part in UNSPACED_RUN.split(word):
            if not part:
                continue
            if len(part) > 1 and UNSPACED_RUN.fullmatch(part):
                pieces.extend(part[i : i + 2] for i in range(len(part) - 1))
                if singles:
                    pieces.extend(part)
            else:
                pieces.append(part)
    return pieces
