"""Which environment URLs runbot shows anywhere (comment, dashboard, API, deployment).

A stack's `url` output is code's output: only a plain http(s) URL with a host is a link;
`javascript:`, `data:` and anything with spaces or control characters is dropped.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

__all__ = ["MAX_URL_CHARS", "web_url"]

MAX_URL_CHARS = 2_000


def web_url(value: object) -> str | None:
    """`value` if it is an http(s) URL fit to link to, else None."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > MAX_URL_CHARS:
        return None
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url
