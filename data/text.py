"""Text normalisation shared by the seed checks, the dataset builder and the scorer.

One definition keeps "the same question" meaning the same thing everywhere: a duplicate found
by the seed check is also a duplicate for the builder and a match for the scorer.
"""

from __future__ import annotations

import re
import unicodedata

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")
_QUOTES = {ord("\u2018"): "'", ord("\u2019"): "'", ord("\u201c"): '"', ord("\u201d"): '"'}
# A 1-3 digit group followed by groups of exactly three: "14,000", "10.018", "14 000", "3,000,000".
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:[,.\u00a0\u202f ]\d{3})+(?![\d]|[.,]\d)")
_SEPARATORS = re.compile(r"[,.\u00a0\u202f ]")
_SPACES = re.compile(r"\s+")


def strip_accents(text: str) -> str:
    """NFKD-decompose and drop combining marks, so "São Luís" matches "Sao Luis"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(char for char in decomposed if not unicodedata.combining(char))


def normalise(text: str) -> str:
    """Comparable form of a text: no accents or case, one dash kind, plain numbers, single spaces."""
    text = strip_accents(text).casefold().translate(_DASHES).translate(_QUOTES)
    text = _SPACES.sub(" ", text).strip()
    return _THOUSANDS.sub(lambda match: _SEPARATORS.sub("", match.group()), text)
