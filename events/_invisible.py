"""The characters that show nothing, not even a space: Unicode's Default_Ignorable_Code_Point
set and the few letters and symbols that fonts draw blank. Text holding one reads as the
same text without it, so a user id holding one could pass for another user's."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "BLANK",
    "DEFAULT_IGNORABLE",
    "JOINERS",
    "VARIATION_SELECTORS",
    "char_class",
    "code_points",
]

Ranges = tuple[tuple[int, int], ...]

DEFAULT_IGNORABLE: Ranges = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian variation selectors and vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, isolates, deprecated formats
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space (byte-order mark)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tags, variation selectors 17 to 256, and reserved
)
"""Unicode's Default_Ignorable_Code_Point property, whole: the ranges of
DerivedCoreProperties.txt (unchanged from Unicode 14.0 through 16.0), which renderers show
as nothing when they do not support them."""

BLANK: Ranges = (
    (0x2800, 0x2800),  # braille pattern blank
    (0xFFF9, 0xFFFB),  # interlinear annotation anchor, separator and terminator
)
"""Characters outside that property that show nothing either: a braille cell without dots,
and the interlinear annotation controls. (The Hangul fillers are in the property.)"""

JOINERS: Ranges = ((0x200C, 0x200D),)
"""Zero-width non-joiner and joiner: invisible, but needed between the characters of some
scripts (Persian, the Indic scripts) and of joined emoji."""

VARIATION_SELECTORS: Ranges = (
    (0x180B, 0x180D),
    (0x180F, 0x180F),
    (0xFE00, 0xFE0F),
    (0xE0100, 0xE01EF),
)
"""Unicode's Variation_Selector property: invisible, but they choose how the character
before them is drawn (an emoji's colour form, a Mongolian letter's shape)."""


def code_points(*ranges: Ranges) -> frozenset[int]:
    """Every code point of ``ranges`` (inclusive pairs)."""
    return frozenset(c for part in ranges for first, last in part for c in range(first, last + 1))


def char_class(points: Iterable[int]) -> str:
    """A regular expression character class (brackets included) matching ``points``,
    written as ranges."""
    spans: list[list[int]] = []
    for point in sorted(points):
        if spans and spans[-1][1] == point - 1:
            spans[-1][1] = point
        else:
            spans.append([point, point])
    parts = (
        f"\\U{first:08x}" if first == last else f"\\U{first:08x}-\\U{last:08x}"
        for first, last in spans
    )
    return f"[{''.join(parts)}]"
