"""The run spec a pod fetches, its signature, and the template tarball: pure, no I/O but files.

The spec is everything the pod needs to run one job and nothing more: the job (variables,
backend with the target's own PostgreSQL role, the silo's provider credentials), the engine
limits, the template's digest and an expiry. GitHub tokens and runbot's own secrets are never
in it.

It is signed with HMAC-SHA256 under a key derived from the run token (`spec_key`): runbot
knows the token when it writes the spec, the pod knows it from its Secret, and the database
keeps only the token's hash. So a pod runs a spec only if whoever minted its token wrote it,
unchanged, and not after `exp`; someone who can write runbot's tables but never saw the token
cannot hand it another job.

The template travels as a tarball pinned by sha256 in the signed spec. Unpacking it refuses
anything that could write outside the target folder or fill the disk (`unpack`).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import secrets
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from app.source.archive import ArchiveLimits, ArchiveRefused, extract

SPEC_VERSION = 1
TOKEN_PREFIX = "rbr_"
MAX_TEMPLATE_BYTES = 32 << 20  # unpacked, all members together
MAX_TEMPLATE_MEMBERS = 5000
_IGNORED_PARTS = (".terraform",)
_IGNORED_SUFFIXES = (".tfstate", ".tfvars.json")


class SpecError(Exception):
    """A spec or template that must not be run; the message says why."""


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(presented: str, stored_hash: str) -> bool:
    """Constant-time: the hashes are compared, never the token against anything secret."""
    return hmac.compare_digest(token_hash(presented), stored_hash)


def spec_key(token: str) -> bytes:
    """The per-run signing key: known to runbot when it mints the token, and to the pod."""
    return hmac.new(token.encode(), b"runbot run spec v1", hashlib.sha256).digest()


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign(spec: dict[str, Any], token: str) -> str:
    """The envelope stored and served: `{"spec": ..., "sig": hex}` as JSON text."""
    sig = hmac.new(spec_key(token), canonical(spec), hashlib.sha256).hexdigest()
    return json.dumps({"spec": spec, "sig": sig}, sort_keys=True)


def verify(envelope: str | bytes, token: str, now: float, run_id: int) -> dict[str, Any]:
    """The spec inside `envelope` if its signature, run and expiry hold; SpecError otherwise."""
    try:
        data = json.loads(envelope)
        spec, sig = data["spec"], data["sig"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError("the run spec is not a signed envelope") from exc
    if not isinstance(spec, dict) or not isinstance(sig, str):
        raise SpecError("the run spec is not a signed envelope")
    expected = hmac.new(spec_key(token), canonical(spec), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, sig):
        raise SpecError("the run spec's signature does not match this run's token")
    if spec.get("v") != SPEC_VERSION:
        raise SpecError(f"the run spec has version {spec.get('v')!r}, expected {SPEC_VERSION}")
    if spec.get("run_id") != run_id:
        raise SpecError(f"the run spec is for run {spec.get('run_id')!r}, not run {run_id}")
    exp = spec.get("exp")
    if not isinstance(exp, int | float) or exp <= now:
        raise SpecError("the run spec has expired")
    return spec


def _kept(relative: PurePosixPath) -> bool:
    if any(part in _IGNORED_PARTS for part in relative.parts):
        return False
    return not relative.name.endswith(_IGNORED_SUFFIXES) and ".tfstate." not in relative.name


def pack(root: Path) -> bytes:
    """The template folder as a gzipped tar: regular files and folders only, sorted, no owners
    or times, so the same template gives the same bytes (and digest)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            relative = PurePosixPath(path.relative_to(root).as_posix())
            if not _kept(relative) or path.is_symlink():
                continue
            info = tarfile.TarInfo(str(relative))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif path.is_file():
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o755 if path.stat().st_mode & 0o100 else 0o644
                tar.addfile(info, io.BytesIO(data))
    # gzip's header holds a time: 0, so that a pack a second later has the same digest.
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_TEMPLATE_BYTES
    max_members: int = MAX_TEMPLATE_MEMBERS


def unpack(data: bytes, dest: Path, expected_digest: str, limits: Limits = Limits()) -> None:
    """Unpack a template tarball into the empty folder `dest`, after checking its digest.

    Refused: another digest than the signed spec pins, and whatever `app.source.archive`
    refuses, links included (runbot's `pack` writes none, so any is foreign): absolute paths,
    `..`, devices and fifos, more than `limits.max_members` entries or `limits.max_bytes`
    unpacked.
    """
    if not hmac.compare_digest(digest(data), expected_digest):
        raise SpecError("the template's digest differs from the one the run spec pins")
    if len(data) > limits.max_bytes:
        raise SpecError(f"the template is larger than {limits.max_bytes} bytes")
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            extract(
                tar,
                dest,
                ArchiveLimits(limits.max_bytes, limits.max_members),
                noun="the template",
            )
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SpecError(f"the template cannot be unpacked: {exc}") from exc
    except ArchiveRefused as exc:
        raise SpecError(str(exc)) from exc
