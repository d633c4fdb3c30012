"""Pytest fixture for kubelite.

Enable with ``pytest_plugins = ["tests.kubelite.pytest_plugin"]`` in a test module.

The fixture yields a started ``KubeLite`` and, at teardown, stops it, kills every process any
pod started, and fails the test if one survived or if kubelite itself misbehaved (wrote an
object that breaks the strict schema, or crashed a controller tick, a kubelet tick or a
handler). Refusals sent to the client are in ``kubelite.errors``; tests that expect none
assert it is empty themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kubelet import process_identity
from .server import KubeLite


@pytest.fixture
def kubelite() -> Iterator[KubeLite]:
    """A running KubeLite in namespace ``runbot``; no pod process outlives the test."""
    kube = KubeLite().start()
    try:
        yield kube
    finally:
        started = {process_identity(pid) for pid in kube.live_pids()} - {None}
        kube.stop()
    leaked = [ident for ident in started if ident and process_identity(ident[0]) == ident]
    assert not leaked, f"kubelite left pod processes running: {leaked}"
    assert kube.internal_errors == [], "kubelite's own faults:\n" + "\n".join(kube.internal_errors)
