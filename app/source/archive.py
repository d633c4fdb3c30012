"""Unpacking an untrusted tarball into a folder, refusing anything that could escape it.

Shared by the executor's template tarballs (`app.executor.spec.unpack`) and the PR's source
tarballs (`app.source.fetch`). Members are written by hand with O_EXCL and O_NOFOLLOW, never by
`extractall`, so nothing is followed or overwritten. Refused, as `ArchiveRefused` naming the
member or the limit: absolute paths, `..`, hard links, devices and fifos, more entries or more
unpacked bytes than the limits. Symbolic links are refused too unless `links=True`; then only
relative ones whose target stays inside the tree are made, after every file and folder, and
never inside a folder reached through another link.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import IO, Any

_CHUNK = 1 << 20


class Refusal(Enum):
    """Why a tarball was refused: a limit it passes, or one member runbot will not write."""

    TOO_MANY = "too-many"
    TOO_BIG = "too-big"
    ABSOLUTE = "absolute"
    DOTDOT = "dotdot"
    LINK = "link"
    LINK_OUT = "link-out"
    SPECIAL = "special"
    DUPLICATE = "duplicate"
    LAYOUT = "layout"
    BROKEN = "broken"


class ArchiveRefused(Exception):
    """A tarball runbot will not unpack; the message names the member or the limit."""

    def __init__(self, message: str, kind: Refusal, member: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.member = member


@dataclass(frozen=True)
class ArchiveLimits:
    """The most a tarball may unpack to: bytes of all its files together, and entries."""

    max_bytes: int
    max_members: int


@dataclass(frozen=True)
class Unpacked:
    """What was written: regular files, folders and links, and the files' bytes."""

    files: int
    dirs: int
    links: int
    bytes: int


def _opener(mode: int) -> Any:
    def opener(path: str, flags: int) -> int:
        return os.open(path, flags | os.O_NOFOLLOW, mode)

    return opener


def _relative(name: str, noun: str, strip_top: bool, top: list[str]) -> PurePosixPath | None:
    """The member's path inside the folder; None for the stripped top folder itself."""
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or "\\" in name:
        raise ArchiveRefused(f"{noun} holds an absolute path: {name!r}", Refusal.ABSOLUTE, name)
    if ".." in path.parts:
        raise ArchiveRefused(f"{noun} holds a path with '..': {name!r}", Refusal.DOTDOT, name)
    parts = tuple(part for part in path.parts if part != ".")
    if not strip_top:
        return PurePosixPath(*parts) if parts else None
    if not parts:
        return None
    if not top:
        top.append(parts[0])
    elif parts[0] != top[0]:
        raise ArchiveRefused(
            f"{noun} has more than one top folder ({top[0]!r} and {parts[0]!r})",
            Refusal.LAYOUT,
            name,
        )
    return PurePosixPath(*parts[1:]) if len(parts) > 1 else None


def _link_target(relative: PurePosixPath, member: tarfile.TarInfo, noun: str) -> str:
    """A symbolic link's target if it stays inside the tree: relative, normalised, no way out."""
    target = member.linkname
    name = member.name
    if not target or target.startswith("/") or "\\" in target:
        raise ArchiveRefused(
            f"{noun} holds a link that points outside it: {name!r} -> {target!r}",
            Refusal.LINK_OUT,
            name,
        )
    # Only leading '..': after a real name a '..' could climb out through another link.
    if posixpath.normpath(target) != target.rstrip("/"):
        raise ArchiveRefused(
            f"{noun} holds a link with a '..' or '.' after a name: {name!r} -> {target!r}",
            Refusal.LINK_OUT,
            name,
        )
    landing = posixpath.normpath(posixpath.join(str(relative.parent), target))
    if landing == ".." or landing.startswith("../") or posixpath.isabs(landing):
        raise ArchiveRefused(
            f"{noun} holds a link that points outside it: {name!r} -> {target!r}",
            Refusal.LINK_OUT,
            name,
        )
    return target


def _copy(source: IO[bytes], out: IO[bytes], size: int, name: str, noun: str) -> None:
    left = size
    while left > 0:
        chunk = source.read(min(_CHUNK, left))
        if not chunk:
            break
        out.write(chunk)
        left -= len(chunk)
    if left or source.read(1):
        raise ArchiveRefused(f"{noun}'s {name!r} is not the size it declares", Refusal.BROKEN, name)


def extract(
    tar: tarfile.TarFile,
    dest: Path,
    limits: ArchiveLimits,
    *,
    noun: str,
    strip_top: bool = False,
    links: bool = False,
) -> Unpacked:
    """Write `tar`'s members into the existing empty folder `dest` (see the module's rules).

    Files get mode 0644 (0755 if executable by their owner) and folders 0755 whatever the
    umask: an engine running as another user must be able to read them.
    """
    dest = dest.resolve()
    top: list[str] = []
    total = files = dirs = 0
    deferred: list[tuple[Path, str]] = []
    current = ""  # the member being written, for messages: never a host path
    try:
        for count, member in enumerate(tar, start=1):
            if count > limits.max_members:
                raise ArchiveRefused(
                    f"{noun} has more than {limits.max_members} entries", Refusal.TOO_MANY
                )
            name = current = member.name
            relative = _relative(name, noun, strip_top, top)
            if member.islnk() or (member.issym() and not links):
                raise ArchiveRefused(
                    f"{noun} holds a {'hard' if member.islnk() else 'symbolic'} link, which"
                    f" runbot does not unpack: {name!r}",
                    Refusal.LINK,
                    name,
                )
            if not (member.isfile() or member.isdir() or member.issym()):
                raise ArchiveRefused(
                    f"{noun} holds a special file (device or fifo): {name!r}", Refusal.SPECIAL, name
                )
            total += member.size if member.isfile() else 0
            if total > limits.max_bytes:
                raise ArchiveRefused(
                    f"{noun} unpacks to more than {limits.max_bytes} bytes", Refusal.TOO_BIG
                )
            if relative is None:
                if member.isdir():
                    continue
                raise ArchiveRefused(
                    f"{noun} holds a file outside its top folder: {name!r}", Refusal.LAYOUT, name
                )
            target = dest.joinpath(*relative.parts)
            if member.isdir():
                _make_parents(dest, target, noun)
                target.mkdir(exist_ok=True)
                target.chmod(0o755)
                dirs += 1
                continue
            if member.issym():
                deferred.append((target, _link_target(relative, member, noun)))
                continue
            _make_parents(dest, target, noun)
            source = tar.extractfile(member)
            assert source is not None
            mode = 0o755 if member.mode & 0o100 else 0o644
            with open(target, "xb", opener=_opener(mode)) as out:
                os.fchmod(out.fileno(), mode)
                _copy(source, out, member.size, name, noun)
            files += 1
        for target, link in deferred:
            current = str(target.relative_to(dest))
            _make_parents(dest, target, noun)
            os.symlink(link, target)
    except FileExistsError as exc:
        raise ArchiveRefused(f"{noun} lists {current!r} twice", Refusal.DUPLICATE, current) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        said = str(exc).replace(f"{dest}/", "").replace(str(dest), ".")
        raise ArchiveRefused(
            f"{noun} cannot be unpacked at {current!r}: {said}", Refusal.BROKEN, current
        ) from exc
    return Unpacked(files, dirs, len(deferred), total)


def _make_parents(dest: Path, target: Path, noun: str) -> None:
    """Create `target`'s folders (0755); refuse a parent that is not a real folder inside."""
    parent = target.parent
    missing: list[Path] = []
    while parent != dest and not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
        folder.chmod(0o755)
    if target.parent.resolve() != target.parent or dest not in target.parents:
        inside = str(target.relative_to(dest))
        raise ArchiveRefused(
            f"{noun} holds an entry inside a linked folder: {inside!r}", Refusal.LINK_OUT, inside
        )
