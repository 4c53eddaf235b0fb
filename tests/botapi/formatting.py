"""Telegram's text markup (HTML, MarkdownV2, legacy Markdown) parsed into plain text + entities.

Telegram refuses malformed markup with "can't parse entities: ..."; bots need that error to
exercise their plain-text fallbacks, and tests want the plain text a user would see.
Offsets are in UTF-16 code units, as in the real API.
"""

from __future__ import annotations

import re


class ParseError(ValueError):
    """Markup Telegram would reject; the message is what follows "can't parse entities: "."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


class _Builder:
    """Accumulates the plain text and the entities opened/closed while scanning markup."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.entities: list[dict] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.pos += utf16_len(text)

    def entity(self, type_: str, start: int, end: int | None = None, **extra: object) -> None:
        end = self.pos if end is None else end
        if end > start:  # Telegram drops empty entities
            self.entities.append({"type": type_, "offset": start, "length": end - start, **extra})

    def result(self) -> tuple[str, list[dict]]:
        entities = sorted(self.entities, key=lambda e: (e["offset"], -e["length"]))
        return "".join(self.parts), entities


def parse(text: str, parse_mode: str | None) -> tuple[str, list[dict]]:
    """Return (plain text, entities); raises ParseError or ValueError (unknown mode)."""
    mode = (parse_mode or "").lower()
    if not mode:
        return text, []
    parser = {"html": parse_html, "markdownv2": parse_markdown_v2, "markdown": parse_markdown}
    if mode not in parser:
        raise ValueError(parse_mode)
    return parser[mode](text)


# --- HTML -------------------------------------------------------------------------------

_HTML_ENTITY = {
    "b": "bold", "strong": "bold", "i": "italic", "em": "italic",
    "u": "underline", "ins": "underline", "s": "strikethrough", "strike": "strikethrough",
    "del": "strikethrough", "tg-spoiler": "spoiler", "span": "spoiler", "a": "text_link",
    "code": "code", "pre": "pre", "blockquote": "blockquote", "tg-emoji": "custom_emoji",
}  # fmt: skip
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_ATTR = re.compile(r"""([a-zA-Z-]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_CHARREF = re.compile(r"&(?:(lt|gt|amp|quot)|#(\d+)|#[xX]([0-9a-fA-F]+));")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _unescape(text: str) -> str:
    def one(m: re.Match) -> str:
        if m[1]:
            return _NAMED[m[1]]
        return chr(int(m[2]) if m[2] else int(m[3], 16))

    return _CHARREF.sub(one, text)


def _html_entity(tag: str, attrs: dict[str, str], offset: int) -> tuple[str, dict]:
    """Map a start tag to (entity type, extra fields), enforcing Telegram's attribute rules."""
    if tag == "span" and attrs.get("class") != "tg-spoiler":
        raise ParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {offset}')
    if tag == "a":
        return "text_link", {"url": attrs.get("href", "")}
    if tag == "tg-emoji":
        return "custom_emoji", {"custom_emoji_id": attrs.get("emoji-id", "")}
    if tag == "blockquote" and "expandable" in attrs:
        return "expandable_blockquote", {}
    if tag == "code" and attrs.get("class", "").startswith("language-"):
        return "code", {"language": attrs["class"][len("language-") :]}
    return _HTML_ENTITY[tag], {}


def parse_html(text: str) -> tuple[str, list[dict]]:
    out = _Builder()
    stack: list[tuple[str, int, str, dict]] = []  # tag, start, entity type, extra
    i = 0
    while i < len(text):
        lt = text.find("<", i)
        out.add(_unescape(text[i : len(text) if lt < 0 else lt]))
        if lt < 0:
            break
        offset = _byte_offset(text, lt)
        m = _TAG.match(text, lt)
        if not m:
            name = re.match(r"</?([^\s>]*)", text[lt:])[1]
            raise ParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
        closing, tag = m[1] == "/", m[2].lower()
        if closing:
            if not stack:
                raise ParseError(f"Unexpected end tag at byte offset {offset}")
            if stack[-1][0] != tag:
                raise ParseError(
                    f'Unmatched end tag at byte offset {offset}, expected "</{stack[-1][0]}>", found "</{tag}>"'
                )
            _, start, type_, extra = stack.pop()
            language = extra.pop("language", None) if type_ == "code" else None
            if language and stack and stack[-1][2] == "pre":
                stack[-1][3]["language"] = language  # <pre><code class="language-x">
            elif type_ != "text_link" or extra["url"]:
                out.entity(type_, start, **extra)
        elif tag not in _HTML_ENTITY:
            raise ParseError(f'Unsupported start tag "{tag}" at byte offset {offset}')
        else:
            attrs = {a[1].lower(): a[2] or a[3] or a[4] or "" for a in _ATTR.finditer(m[3])}
            stack.append((tag, out.pos, *_html_entity(tag, attrs, offset)))
        i = m.end()
    if stack:
        raise ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return out.result()


# --- MarkdownV2 -------------------------------------------------------------------------

_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MD_NAMES = {
    "bold": "Bold", "italic": "Italic", "underline": "Underline", "strikethrough": "Strikethrough",
    "spoiler": "Spoiler", "code": "Code", "pre": "Pre", "text_link": "TextUrl",
}  # fmt: skip
_MD_TOGGLES = [
    ("||", "spoiler"), ("__", "underline"), ("*", "bold"), ("_", "italic"), ("~", "strikethrough"),
]  # fmt: skip


def _reserved(char: str) -> ParseError:
    return ParseError(f"Character '{char}' is reserved and must be escaped with the preceding '\\'")


def _link_url(text: str, i: int) -> tuple[str, int]:
    """Read "(url)" at i where only ')' and '\\' need escaping; return (url, index after)."""
    url, j = [], i + 1
    while j < len(text) and text[j] != ")":
        if text[j] == "\\" and j + 1 < len(text):
            j += 1
        url.append(text[j])
        j += 1
    if j >= len(text):
        raise ParseError(f"Can't find end of a URL at byte offset {_byte_offset(text, i)}")
    return "".join(url), j + 1


def parse_markdown_v2(text: str) -> tuple[str, list[dict]]:
    out = _Builder()
    stack: list[tuple[str, int, int, dict]] = []  # type, start, byte offset, extra
    quote_start = quote_end = None
    i, n = 0, len(text)
    while i < n:
        c, top = text[i], stack[-1][0] if stack else None
        at_line_start = i == 0 or text[i - 1] == "\n"
        if top in ("code", "pre"):  # inside code only '`' and '\' are special
            fence = "```" if top == "pre" else "`"
            if c == "\\" and i + 1 < n and text[i + 1] in "`\\":
                out.add(text[i + 1])
                i += 2
            elif text.startswith(fence, i):
                _, start, _, extra = stack.pop()
                out.entity(top, start, **extra)
                i += len(fence)
            else:
                out.add(c)
                i += 1
            continue
        if at_line_start and quote_start is not None and c != ">":
            out.entity("blockquote", quote_start, quote_end)
            quote_start = None
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) < 127:
            out.add(text[i + 1])
            i += 2
            continue
        if c == ">" and at_line_start:
            quote_start = out.pos if quote_start is None else quote_start
            i += 1
            continue
        if c == "\n" and quote_start is not None:
            quote_end = out.pos
        toggle = next(((d, t) for d, t in _MD_TOGGLES if text.startswith(d, i)), None)
        if toggle:
            delim, type_ = toggle
            if top == type_:
                _, start, _, extra = stack.pop()
                out.entity(type_, start, **extra)
            else:
                stack.append((type_, out.pos, _byte_offset(text, i), {}))
            i += len(delim)
        elif c == "`":
            if text.startswith("```", i):
                newline = text.find("\n", i + 3)
                header = text[i + 3 : newline] if newline >= 0 else ""
                extra = {"language": header} if header and " " not in header else {}
                stack.append(("pre", out.pos, _byte_offset(text, i), extra))
                i = newline + 1 if newline >= 0 and " " not in header else i + 3
            else:
                stack.append(("code", out.pos, _byte_offset(text, i), {}))
                i += 1
        elif c == "[":
            stack.append(("text_link", out.pos, _byte_offset(text, i), {}))
            i += 1
        elif c == "]" and top == "text_link":
            _, start, offset, _ = stack.pop()
            if not text.startswith("(", i + 1):
                raise ParseError(f"Can't find end of TextUrl entity at byte offset {offset}")
            url, i = _link_url(text, i + 1)
            out.entity("text_link", start, url=url)
        elif c in _RESERVED:
            raise _reserved(c)
        else:
            out.add(c)
            i += 1
    if quote_start is not None:
        out.entity("blockquote", quote_start)
    if stack:
        type_, _, offset, _ = stack[-1]
        raise ParseError(f"Can't find end of {_MD_NAMES[type_]} entity at byte offset {offset}")
    return out.result()


# --- legacy Markdown --------------------------------------------------------------------

_LEGACY = {"*": "bold", "_": "italic", "`": "code"}


def parse_markdown(text: str) -> tuple[str, list[dict]]:
    """Legacy Markdown: no nesting, and an unclosed marker fails the whole message."""
    out = _Builder()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.add(text[i + 1])
            i += 2
            continue
        if c not in _LEGACY and c != "[":
            out.add(c)
            i += 1
            continue
        fence = "```" if text.startswith("```", i) else "]" if c == "[" else c
        body = i + len(fence) if fence == "```" else i + 1
        end = text.find(fence, body)
        close = end
        if fence == "]":  # a link needs "[text](url)"
            close = text.find(")", end) if end >= 0 and text.startswith("(", end + 1) else -1
        if end < 0 or close < 0:
            offset = _byte_offset(text, i)
            raise ParseError(f"Can't find end of the entity starting at byte offset {offset}")
        start = out.pos
        out.add(text[body:end])
        if fence == "]":
            out.entity("text_link", start, url=text[end + 2 : close])
            i = close + 1
        else:
            out.entity("pre" if fence == "```" else _LEGACY[c], start)
            i = end + len(fence)
    return out.result()
