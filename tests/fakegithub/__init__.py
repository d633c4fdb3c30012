"""A fake GitHub for runbot's tests: real HTTP on loopback, validated against GitHub's OpenAPI.

See ``server.FakeGitHub`` (REST/OAuth/manifest fake: a facade over one mixin
module per domain, with its records in ``state``), ``webhooks`` (real payload
fixtures, signing, delivery) and ``schema`` (validation helpers).
"""

from .server import FakeGitHub, RecordedRequest, Violation
from .webhooks import (
    adeliver,
    deliver,
    load_fixture,
    make_issue_comment_event,
    make_pull_request_event,
    sign,
)

__all__ = [
    "FakeGitHub",
    "RecordedRequest",
    "Violation",
    "adeliver",
    "deliver",
    "load_fixture",
    "make_issue_comment_event",
    "make_pull_request_event",
    "sign",
]
