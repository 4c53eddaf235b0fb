"""Scrubbing personal data out of logged conversations before they become training data.

A model fine-tuned on chats can repeat what it saw, so contact details, account numbers and
handles are replaced by placeholders. The patterns are deliberately shaped so that the numbers a
football bot lives on (years, scores, dates, attendances, distances) are never touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_END = r"(?![\w@])"
_START = r"(?<![\w@+/.-])"
# A link's last character is never sentence punctuation: "see https://x.pt/?a=1." keeps its dot.
_URL_TAIL = r"[^\s<>\"']*[^\s<>\"'.,;:!?)\]}]"

_TELEGRAM_LINK = re.compile(r"(?i)(?<![\w.])(?:https?://)?(?:www\.)?(?:t|telegram)\.(?:me|dog)/" + _URL_TAIL)
_URL_WITH_QUERY = re.compile(r"(?i)(?:https?://|www\.)[^\s?#<>\"']+\?" + _URL_TAIL)
_EMAIL = re.compile(r"(?i)(?<![\w.+-])[\w.+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_LABELLED_NIF = re.compile(
    r"(?i)\b(N\.?I\.?F\.?|NIPC|contribuinte|tax\s+(?:id|number)|VAT(?:\s+number)?)"
    r"([^\d\n]{0,12}?)\d{3}[ .-]?\d{3}[ .-]?\d{3}(?!\d)"
)
_CARD_DIGITS = re.compile(_START + r"(?!00)\d{13,19}" + _END)
_CARD_GROUPED = re.compile(_START + r"\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,4})?" + _END)
# Portuguese numbers: 9 digits as written (3-3-3, 2-3-4, 3-2-2-2, 2-3-2-2 or plain), after an
# optional +351 / 00351; which first digits make a phone is checked by `_portuguese`.
_PT_PREFIX = re.compile(r"\(?(?:\+|00)351\)?[ .-]?")
_PT_NUMBER = re.compile(r"9[1236]|2\d|30|70[78]|80[08]")
_PHONE_PT = re.compile(
    _START + r"(?:\(?(?:\+|00)351\)?[ .-]?)?"
    r"(?:\d{3}[ .-]?\d{3}[ .-]?\d{3}|\d{2}[ .-]\d{3}[ .-]\d{4}"
    r"|\d{3}(?:[ .-]\d{2}){3}|\d{2}[ .-]\d{3}(?:[ .-]\d{2}){2})" + _END
)
_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){2,6}" + _END)
_USERNAME = re.compile(r"(?<![\w@.])@[A-Za-z][A-Za-z0-9_]{3,31}\b")


def _luhn_valid(digits: str) -> bool:
    """The card checksum: tells a card number from, say, four years in a row."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _card(match: re.Match[str]) -> str | None:
    return "[card]" if _luhn_valid(_digits(match.group())) else None


def _portuguese(match: re.Match[str]) -> str | None:
    """A Portuguese first digit pair; dots only after +351, since "300.000.000" is money."""
    text = match.group()
    prefix = _PT_PREFIX.match(text)
    number = text[prefix.end() :] if prefix else text
    if not _PT_NUMBER.match(number):
        return None
    return "[phone]" if prefix or "." not in number else None


def _international(match: re.Match[str]) -> str | None:
    return "[phone]" if 8 <= len(_digits(match.group())) <= 15 else None


def _nif(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}[nif]"


# Order matters: links before handles and e-mails, e-mails before handles, labelled
# numbers and cards before the looser phone shapes.
_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None] | str]] = [
    (_TELEGRAM_LINK, "[link]"),
    (_URL_WITH_QUERY, "[url]"),
    (_EMAIL, "[email]"),
    (_IBAN, "[iban]"),
    (_LABELLED_NIF, _nif),
    (_CARD_DIGITS, "[card]"),
    (_CARD_GROUPED, _card),
    (_PHONE_PT, _portuguese),
    (_PHONE_INTERNATIONAL, _international),
    (_USERNAME, "[user]"),
]


def scrub_counted(text: str) -> tuple[str, int]:
    """The scrubbed text and how many pieces of personal data were replaced."""
    replaced = 0
    for pattern, replacement in _RULES:

        def substitute(match: re.Match[str], replacement=replacement) -> str:
            nonlocal replaced
            result = replacement if isinstance(replacement, str) else replacement(match)
            if result is None:
                return match.group()
            replaced += 1
            return result

        text = pattern.sub(substitute, text)
    return text, replaced


def scrub(text: str) -> str:
    """Replace e-mails, phones, IBANs, labelled NIFs, cards, handles and tracking URLs."""
    return scrub_counted(text)[0]
