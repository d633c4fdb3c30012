"""Unpacking a PR's source tarball: GitHub's layout, and every member runbot refuses, by name.

The tarballs are built here with `tarfile`, as an attacker would build them: git never
archives a device or a `..`, but a tarball is only bytes from the network.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from app.source.archive import Refusal
from app.source.fetch import SourceLimits, SourceRefused, unpack_source

TOP = "octo-org-hello-abcdef1"
WHAT = "the source of octo-org/hello at abcdef1"


def member(
    name: str, data: bytes | None = b"x", **fields: object
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def folder(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o775
    return info, None


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def archive(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def unpack(tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes | None], **limits: int) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    unpack_source(archive(tmp_path / "s.tar.gz", *members), tree, SourceLimits(**limits), WHAT)
    return tree


def test_the_top_folder_is_stripped_and_files_are_readable_by_anyone(tmp_path: Path) -> None:
    """The sandbox runs the engine as another user: files 0644 (0755 if executable), folders
    0755, whatever the tarball or the umask said."""
    old = os.umask(0o077)
    try:
        tree = unpack(
            tmp_path,
            folder(f"{TOP}/"),
            member(f"{TOP}/app/index.html", b"<h1>hi</h1>", mode=0o600),
            member(f"{TOP}/run.sh", b"#!/bin/sh\n", mode=0o700),
            link(f"{TOP}/app/latest.html", "index.html"),
            link(f"{TOP}/docs", "app"),
        )
    finally:
        os.umask(old)
    assert (tree / "app" / "index.html").read_bytes() == b"<h1>hi</h1>"
    assert stat.S_IMODE((tree / "app" / "index.html").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "app").stat().st_mode) == 0o755
    assert os.readlink(tree / "app" / "latest.html") == "index.html"
    assert (tree / "docs" / "index.html").read_bytes() == b"<h1>hi</h1>"
    assert not (tree / TOP).exists()


@pytest.mark.parametrize(
    ("members", "kind", "words"),
    [
        ([member("/etc/cron.d/evil")], Refusal.ABSOLUTE, "absolute path: '/etc/cron.d/evil'"),
        ([member(f"{TOP}/../escape")], Refusal.DOTDOT, "'..'"),
        ([member(f"{TOP}/a/../../escape")], Refusal.DOTDOT, "'..'"),
        ([link(f"{TOP}/out", "/etc/passwd")], Refusal.LINK_OUT, "points outside it"),
        ([link(f"{TOP}/up", "../../escape")], Refusal.LINK_OUT, "points outside it"),
        ([link(f"{TOP}/a/b", "x/../../../..")], Refusal.LINK_OUT, "'..'"),
        (
            [
                folder(f"{TOP}/sub"),
                link(f"{TOP}/sub/root", ".."),
                link(f"{TOP}/sub/root/x", "../y"),
            ],
            Refusal.LINK_OUT,
            "linked folder",
        ),
        (
            [member(f"{TOP}/a"), link(f"{TOP}/hard", "/etc/shadow", tarfile.LNKTYPE)],
            Refusal.LINK,
            "hard link",
        ),
        ([link(f"{TOP}/hard", f"{TOP}/a", tarfile.LNKTYPE)], Refusal.LINK, "hard link"),
        ([link(f"{TOP}/dev", "", tarfile.CHRTYPE)], Refusal.SPECIAL, "device or fifo"),
        ([link(f"{TOP}/disk", "", tarfile.BLKTYPE)], Refusal.SPECIAL, "device or fifo"),
        ([link(f"{TOP}/fifo", "", tarfile.FIFOTYPE)], Refusal.SPECIAL, "device or fifo"),
        ([member(f"{TOP}/a"), member("other-top/b")], Refusal.LAYOUT, "more than one top"),
        ([member("loose-file")], Refusal.LAYOUT, "outside its top folder"),
        ([member(f"{TOP}/a"), member(f"{TOP}/a")], Refusal.DUPLICATE, "twice"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "dotdot-nested",
        "link-out-absolute",
        "link-out-relative",
        "link-dotdot-after-name",
        "link-through-linked-folder",
        "hardlink-out",
        "hardlink-in",
        "device-char",
        "device-block",
        "fifo",
        "two-tops",
        "no-top",
        "duplicate",
    ],
)
def test_refused_members_are_named(
    tmp_path: Path,
    members: list[tuple[tarfile.TarInfo, bytes | None]],
    kind: Refusal,
    words: str,
) -> None:
    with pytest.raises(SourceRefused) as caught:
        unpack(tmp_path, *members)
    message = str(caught.value)
    assert words in message
    assert message.startswith(WHAT)
    assert "push again" in message  # what to do
    assert isinstance(caught.value.__cause__, Exception)
    assert getattr(caught.value.__cause__, "kind", None) is kind
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
    assert not (tmp_path / "y").exists()
    assert str(tmp_path) not in message  # reasons reach comments: no host path


def test_over_size_names_the_limit_and_the_policy_key(tmp_path: Path) -> None:
    # a small tarball that claims more than the limit once unpacked (a gzip bomb)
    with pytest.raises(SourceRefused, match="more than 100000 bytes") as caught:
        unpack(tmp_path, member(f"{TOP}/big", b"\0" * 200_000), max_bytes=100_000)
    assert "`source_max_bytes`" in str(caught.value)
    assert (tmp_path / "s.tar.gz").stat().st_size < 10_000


def test_over_file_count_names_the_limit_and_the_policy_key(tmp_path: Path) -> None:
    files = [member(f"{TOP}/f{i}") for i in range(6)]
    with pytest.raises(SourceRefused, match="more than 5 entries") as caught:
        unpack(tmp_path, *files, max_files=5)
    assert "`source_max_files`" in str(caught.value)
    (tmp_path / "ok").mkdir()
    tree = unpack(tmp_path / "ok", *files[:5], max_files=5)  # at the limit: fine
    assert len(list(tree.iterdir())) == 5


def test_not_a_tarball_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "s.tar.gz"
    bad.write_bytes(b"<html>rate limited</html>")
    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(SourceRefused, match="not a gzipped tarball"):
        unpack_source(bad, tree, SourceLimits(), WHAT)
