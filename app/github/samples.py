"""Minimal, realistic webhook payloads for `runbot demo` and `runbot receive --sample`.

They carry the fields runbot reads (intake reads leniently), shaped like GitHub's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def pull_request_payload(
    action: str,
    repository: str = "demo/hello",
    number: int = 1,
    head_sha: str = "0" * 40,
    head_ref: str = "feature",
    author: str = "octocat",
    base_ref: str = "main",
    installation_id: int | None = None,
) -> dict[str, Any]:
    owner, _, name = repository.partition("/")
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    repo = {"full_name": repository, "name": name, "owner": {"login": owner}}
    payload: dict[str, Any] = {
        "action": action,
        "number": number,
        "pull_request": {
            "number": number,
            "state": "closed" if action == "closed" else "open",
            "draft": False,
            "merged": False,
            "updated_at": now,
            "user": {"login": author, "type": "User"},
            "labels": [],
            "head": {"sha": head_sha, "ref": head_ref, "repo": repo},
            "base": {"sha": "1" * 40, "ref": base_ref, "repo": repo},
        },
        "repository": repo,
        "sender": {"login": author, "type": "User"},
    }
    if installation_id is not None:
        payload["installation"] = {"id": installation_id}
    return payload
