"""Pytest fixtures for the fake GitHub.

Enable with ``pytest_plugins = ["tests.fakegithub.pytest_plugin"]`` in a conftest.

Kept out of ``conftest.py`` so suites opt in explicitly; the fixture fails the
test if the code under test sent GitHub anything it would reject.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeGitHub


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    """A running FakeGitHub; asserts at teardown that no request violated GitHub's schema."""
    with FakeGitHub() as fake:
        yield fake
        assert fake.violations == [], "requests GitHub would reject:\n" + "\n".join(
            f"{v.kind}: {v.method} {v.path}: {v.message}" for v in fake.violations
        )
