"""How the fake mints what GitHub mints: numeric ids, node ids, SHAs and timestamps.

Ids come from process-wide counters, so two fakes in one test run never hand out the
same id (githubkit caches by App id across fakes).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from datetime import UTC, datetime

_ids = itertools.count(1_000_001)
_app_ids = itertools.count(900_001)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, ident: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


def _fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
