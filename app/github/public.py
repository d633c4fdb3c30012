"""What runbot may say where anyone can read it: comment text without host detail (pure).

A PR comment on a public repository is world-readable, and even a private repository's readers
need not learn runbot's host. Error sentences written for operators (kept in full on the
dashboard and in the run log) name host paths and the operator's whole stack catalog; this
module turns them into what a comment may show.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["CATALOG_NOTE", "HOST_PATH", "public_text"]

HOST_PATH = "<runbot host path>"
CATALOG_NOTE = "it is not in the operator's stack catalog (the operator can list the stacks)"
#: "the catalog at /srv/templates has: a, b, c" (app.stacks.catalog), to the end of the sentence.
_CATALOG = re.compile(r"the catalog at .*? has: [^\n]*?(?=\.\s|\.$|\n|$)", re.IGNORECASE)
#: An absolute path that is not the path of a URL (no word, ':' or '/' right before it).
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+~-]+/)*[\w.@+~-]+/?")


def public_text(text: str, host_paths: Iterable[str] = ()) -> str:
    """``text`` without the catalog listing or any host path (known roots first, then any
    absolute path)."""
    text = _CATALOG.sub(CATALOG_NOTE, text)
    for root in sorted({p.rstrip("/") for p in host_paths if len(p.rstrip("/")) > 1}, key=len)[
        ::-1
    ]:
        text = re.sub(re.escape(root) + r"(?:/[\w.@+~-]*)*", HOST_PATH, text)
    return _ABSOLUTE_PATH.sub(HOST_PATH, text)
