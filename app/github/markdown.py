"""Escaping and fencing for the markdown runbot posts: outside text rendered literally.

Every comment, reply and check-run summary shows text that came from outside (reasons, ids,
URLs, engine output); these pure helpers keep such text inside its table cell or code block,
so it never opens markup, pings someone, or ends a fence or ``<details>`` block early.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from app.links import invisible_control, safe_link

__all__ = [
    "FIELD_CHARS",
    "clip",
    "defuse_markers",
    "escape_markdown_inline",
    "fit_tail",
    "inline_code",
    "markdown_link",
    "neutralise_block",
    "one_line",
    "short_sha",
    "tail_lines",
    "utc",
]

#: What one id or short field may show before it is cut.
FIELD_CHARS = 200
_TAIL_LINE_CHARS = 2_000
_SHORT_SHA = 7
_ZWJ = "\u200d"
_ZWSP = "\u200b"
# Markdown punctuation that can start emphasis, code, links, table cells, strikethrough or
# math anywhere in a line; each gets a backslash. ``(``/``)``/``!`` only matter next to ``[``/``]``.
_INLINE_SPECIAL = frozenset("\\`*_[]|~$")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Text that would turn into a block construct (heading, list, quote...) at the start of a line.
_LEADING_BLOCK = re.compile(r"^([-+=]|\d+[.)])")
# Everything str.splitlines() breaks on, so no stray line break survives into a table row.
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
# Safe inside a code span within a table cell, and what ids, SHAs and silo names look like.
_CODE_SAFE = re.compile(r"[A-Za-z0-9._:/@+=,#%~-]+")
_HEX_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_FENCE_RUN = re.compile(r"`{3,}|~{3,}")
_DETAILS_TAG = re.compile(r"<(/?)(details|summary)", re.IGNORECASE)
_OUR_MARKERS = re.compile(r"<!--(\s*runbot:)", re.IGNORECASE)


def one_line(text: str) -> str:
    """Collapse line breaks to spaces and drop controls, so the text stays in its table cell."""
    text = _LINE_BREAKS.sub(" ", text).replace("\t", " ")
    return "".join(ch for ch in text if not invisible_control(ch))


def clip(text: str, limit: int) -> str:
    """Cut before escaping, so an escape sequence is never split in half."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_markdown_inline(text: str) -> str:
    """Make arbitrary text render literally inside a markdown line (or table cell).

    Strips line breaks, invisible controls and surrounding blanks (leading spaces could
    make an indented code block), backslash-escapes markdown punctuation (so no
    code spans, emphasis, links or table cells can be opened), turns ``<``/``>``/``&`` into
    entities (so no HTML such as ``</details>`` or ``<script>``), and puts a zero-width joiner
    after ``@`` and ``#`` so ``@everyone`` pings nobody and ``#1`` links no issue.
    """
    text = one_line(text).strip()
    out: list[str] = []
    for ch in text:
        if ch in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[ch])
        elif ch in _INLINE_SPECIAL:
            out.append("\\" + ch)
        elif ch in "@#":
            out.append(("\\#" if ch == "#" else ch) + _ZWJ)
        else:
            out.append(ch)
    escaped = "".join(out)
    # "- x", "1. x", "=" or "+" at the very start would become a list or heading.
    return _LEADING_BLOCK.sub(lambda m: _escape_block_start(m.group(1)), escaped)


def _escape_block_start(token: str) -> str:
    if token[-1] in ".)":
        return token[:-1] + "\\" + token[-1]
    return "\\" + token


def inline_code(text: str | None, limit: int = FIELD_CHARS) -> str:
    """An id as inline code (copy-pastable), or escaped text when it holds odd characters."""
    if not text:
        return "—"
    text = clip(one_line(text).strip(), limit)
    if not text:
        return "—"
    if _CODE_SAFE.fullmatch(text):
        return f"`{text}`"
    return escape_markdown_inline(text)


def markdown_link(label: str, url: str | None) -> str | None:
    safe = safe_link(url)
    return None if safe is None else f"[{escape_markdown_inline(label)}]({safe})"


def utc(moment: datetime) -> str:
    """Absolute time for people in any timezone; naive datetimes are rejected upstream."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_sha(sha: str | None) -> str:
    if sha and _HEX_SHA.fullmatch(sha.strip()):
        return f"`{sha.strip()[:_SHORT_SHA].lower()}`"
    return inline_code(sha, limit=12)


def defuse_markers(text: str) -> str:
    """Our HTML-comment markers inside other text must not make a comment look like ours."""
    return _OUR_MARKERS.sub(lambda m: f"<!{_ZWSP}--{m.group(1)}", text)


def neutralise_block(text: str) -> str:
    """Keep engine output from ending our code fence or ``<details>`` block.

    A zero-width space splits every run of three or more backticks (or tildes) and every
    ``<details>``/``<summary>`` tag: invisible when read, inert when parsed.
    """
    text = _FENCE_RUN.sub(lambda m: _ZWSP.join(m.group()), text)
    text = _DETAILS_TAG.sub(lambda m: f"<{_ZWSP}{m.group(1)}{m.group(2)}", text)
    return defuse_markers(text)


def tail_lines(log_tail: tuple[str, ...]) -> list[str]:
    """One entry per physical line, each capped and cleaned for display in a code block."""
    lines: list[str] = []
    for entry in log_tail:
        for raw in str(entry).splitlines() or [""]:
            line = "".join(ch for ch in raw if not invisible_control(ch))
            if len(line) > _TAIL_LINE_CHARS:
                line = line[: _TAIL_LINE_CHARS - 1] + "…"
            lines.append(neutralise_block(line))
    return lines


def fit_tail(lines: list[str], budget: int) -> tuple[list[str], int]:
    """Keep the last lines that fit in ``budget`` chars; the end of a log is where errors are."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    kept.reverse()
    return kept, len(lines) - len(kept)
