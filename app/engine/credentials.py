"""The credentials an engine run is given, and the scrubbing of their values from its logs.

Apart from the runner because it is the one place that decides what counts as a secret: the
Kubernetes executor reads silo credentials for its pods, and the log views and the scrubber
redact with the same `Redactor` the runner streams through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from app.engine.errors import EngineMissing

_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def silo_credentials(directory: Path | None, silo: str | None) -> dict[str, str]:
    """`<directory>/<silo>.env`: KEY=VALUE lines (quotes stripped, `#` comments), or nothing.

    A line that is not KEY=VALUE is an error naming the file and line, never a guess: a
    credential silently dropped would fail much later, in a provider, with a worse message.
    """
    if directory is None or not silo:
        return {}
    path = directory / f"{silo}.env"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise EngineMissing(f"cannot read the credentials of silo {silo} ({path}): {exc}") from exc
    found: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if not match or match[1].startswith(("RUNBOT_", "TF_")):
            raise EngineMissing(
                f"{path} line {number} is not KEY=VALUE (RUNBOT_* and TF_* are runbot's own):"
                " fix the line"
            )
        value = match[2].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[match[1]] = value
    return found


# Names of environment variables that carry credentials (AWS_SECRET_ACCESS_KEY, GITHUB_TOKEN,
# ARM_CLIENT_SECRET, PGPASSWORD, ...): their values are scrubbed from every stored or shown log.
_SECRETISH = re.compile(r"SECRET|TOKEN|PASSW|PRIVATE|CREDENTIAL|ACCESS_KEY|API_KEY|CONN_STR", re.I)


def secretish_values(env: dict[str, str]) -> list[str]:
    return [value for name, value in env.items() if _SECRETISH.search(name) and len(value) >= 8]


class Redactor:
    """Scrubs secret values out of log lines before they are stored or shown anywhere."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._secrets:
            if secret in line:
                line = line.replace(secret, "***")
        return line
