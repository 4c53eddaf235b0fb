"""Splitting long answers into Telegram-sized messages at the most natural boundary available."""

from __future__ import annotations

TELEGRAM_LIMIT = 4096
# Best first: paragraph, line, sentence, clause, word. A boundary only counts in the second half
# of the window, so a split never leaves a stub message; words may split anywhere.
_BOUNDARIES = ("\n\n", "\n", ". ", "! ", "? ", "… ", "; ", ", ")


def utf16_len(text: str) -> int:
    """Telegram counts message length in UTF-16 code units (an emoji is two)."""
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Parts of at most `limit` UTF-16 units each that, joined by whitespace, read as `text`."""
    parts = []
    rest = text.strip()
    while rest:
        if utf16_len(rest) <= limit:
            parts.append(rest)
            break
        window = _prefix(rest, limit)
        cut = _cut(window)
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    return parts


def _prefix(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-16 units."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text


def _cut(window: str) -> int:
    for boundary in _BOUNDARIES:
        index = window.rfind(boundary)
        if index >= len(window) // 2:
            return index + len(boundary)
    index = window.rfind(" ")
    if index > 0 and window[:index].strip():
        return index + 1
    return len(window)  # one enormous word: cut it
