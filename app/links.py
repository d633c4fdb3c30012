"""The one rule for an outside URL shown as a link (PR comments, the dashboard): http(s) only.

Pure: an environment's URL comes from a template's `url` output, which a repository may
influence, so whoever renders it as a link asks this function first.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote, urlsplit

__all__ = ["MAX_URL_CHARS", "invisible_control", "safe_link"]

MAX_URL_CHARS = 2_000
_ZWJ = "\u200d"


def invisible_control(ch: str) -> bool:
    """Control and bidi-override characters: they hide or reorder text, never carry meaning."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") and ch not in (_ZWJ, "\t")


def safe_link(url: str | None) -> str | None:
    """An http(s) URL fit for a link target (markdown or an HTML `href`), or None.

    Characters that could end a markdown destination or a table cell are percent-encoded, and
    other schemes (``javascript:``, ``data:``, ``vbscript:``) are refused outright, as are
    URLs without a host, with spaces or invisible controls, or longer than MAX_URL_CHARS.
    """
    if not url:
        return None
    url = url.strip()
    if len(url) > MAX_URL_CHARS or any(invisible_control(ch) or ch.isspace() for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    quoted = quote(url, safe="/:?#[]@!$&'*+,;=%-._~")
    # Checked again after quoting: non-ASCII text grows up to twelvefold when encoded.
    return quoted if len(quoted) <= MAX_URL_CHARS else None
