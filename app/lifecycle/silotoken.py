"""The silo token: what a silo's ingress shows runbot's silo API, derived, never stored.

token = HMAC-SHA256(key, f"{silo}:{token_version}"). The key is RUNBOT_SILO_TOKEN_SECRET, or a
random one created once in the data dir (0600; the engine's sandbox sees the data dir as an
empty tmpfs). The database holds only `Silo.token_version`: bumping it (rotation) changes the
token, and the old one stops verifying at once because verification derives from the row.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

API_URL_VARIABLE = "runbot_api_url"
TOKEN_VARIABLE = "runbot_silo_token"
KEY_FILE = "silo-token.key"


def derive(key: bytes, silo: str, version: int) -> str:
    """The token of `silo` at `version` (hex, 64 characters)."""
    return hmac.new(key, f"{silo}:{version}".encode(), hashlib.sha256).hexdigest()


def load_key(secret: str | None, data_dir: Path) -> bytes:
    """The configured secret, else the data dir's key file, created (0600) the first time."""
    if secret:
        return secret.encode()
    path = data_dir / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < 32:
        raise ValueError(
            f"{path} holds no silo token key (it is short or empty): delete it and restart, or"
            " set RUNBOT_SILO_TOKEN_SECRET"
        )
    return key.encode()


@dataclass(frozen=True)
class SiloTokens:
    """Mints and checks silo tokens; `api_url` is where a silo's ingress reaches runbot."""

    key: bytes
    api_url: str

    def token(self, silo: str, version: int) -> str:
        return derive(self.key, silo, version)

    def verify(self, silo: str, version: int, presented: str) -> bool:
        """Constant-time: the presented token against the silo's current one."""
        return hmac.compare_digest(presented.encode(), self.token(silo, version).encode())
