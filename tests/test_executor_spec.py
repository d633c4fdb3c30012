"""The run spec's signature and expiry, and unpacking a template tarball without surprises."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import pytest

from app.executor.spec import (
    SPEC_VERSION,
    Limits,
    SpecError,
    digest,
    new_token,
    pack,
    sign,
    token_hash,
    token_matches,
    unpack,
    verify,
)


def a_spec(**overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "v": SPEC_VERSION,
        "run_id": 7,
        "target": "env-pr-1-abcde",
        "variables": {"greeting": "hi"},
        "exp": int(time.time()) + 600,
    }
    spec.update(overrides)
    return spec


def test_a_signed_spec_verifies_with_its_token_only() -> None:
    token = new_token()
    envelope = sign(a_spec(), token)
    assert verify(envelope, token, time.time(), 7)["variables"] == {"greeting": "hi"}
    with pytest.raises(SpecError, match="signature"):
        verify(envelope, new_token(), time.time(), 7)


def test_a_changed_spec_is_refused() -> None:
    token = new_token()
    data = json.loads(sign(a_spec(), token))
    data["spec"]["variables"]["greeting"] = "rm -rf"
    with pytest.raises(SpecError, match="signature"):
        verify(json.dumps(data), token, time.time(), 7)


def test_an_expired_spec_or_another_runs_spec_is_refused() -> None:
    token = new_token()
    old = sign(a_spec(exp=int(time.time()) - 1), token)
    with pytest.raises(SpecError, match="expired"):
        verify(old, token, time.time(), 7)
    with pytest.raises(SpecError, match="run 7"):
        verify(sign(a_spec(run_id=8), token), token, time.time(), 7)
    with pytest.raises(SpecError, match="version"):
        verify(sign(a_spec(v=99), token), token, time.time(), 7)
    with pytest.raises(SpecError, match="envelope"):
        verify("not json", token, time.time(), 7)


def test_only_the_hash_of_a_token_is_needed_to_check_it() -> None:
    token = new_token()
    stored = token_hash(token)
    assert token not in stored
    assert token_matches(token, stored)
    assert not token_matches(token + "x", stored)


def test_pack_is_deterministic_and_leaves_state_and_engine_data_out(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text("# main\n")
    (tmp_path / "modules" / "m").mkdir(parents=True)
    (tmp_path / "modules" / "m" / "x.tf").write_text("# x\n")
    (tmp_path / ".terraform").mkdir()
    (tmp_path / ".terraform" / "junk").write_text("junk")
    (tmp_path / "terraform.tfstate").write_text("{}")
    (tmp_path / "runbot.tfvars.json").write_text("{}")
    first = pack(tmp_path)
    time.sleep(1.1)  # gzip's header has a time field: it must not change the bytes
    second = pack(tmp_path)
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = sorted(tar.getnames())
    assert names == ["main.tf", "modules", "modules/m", "modules/m/x.tf"]
    out = tmp_path.parent / "out"
    out.mkdir()
    unpack(first, out, digest(first))
    assert (out / "modules" / "m" / "x.tf").read_text() == "# x\n"


def tarball(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


@pytest.mark.parametrize(
    ("members", "reason"),
    [
        ([file("/etc/cron.d/evil")], "absolute path"),
        ([file("../escape.tf")], r"'\.\.'"),
        ([file("modules/../../escape.tf")], r"'\.\.'"),
        ([link("out", "/etc/passwd", tarfile.SYMTYPE)], "link"),
        ([link("inside", "main.tf", tarfile.SYMTYPE)], "link"),  # even one inside: never packed
        ([file("main.tf"), link("hard", "/etc/shadow", tarfile.LNKTYPE)], "link"),
        ([link("fifo", "", tarfile.FIFOTYPE)], "special file"),
        ([file("a.tf"), file("a.tf")], "twice"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "dotdot-nested",
        "symlink-out",
        "symlink-in",
        "hardlink",
        "fifo",
        "duplicate",
    ],
)
def test_unpack_refuses_what_could_write_outside_or_surprise(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], reason: str
) -> None:
    data = tarball(*members)
    with pytest.raises(SpecError, match=reason):
        unpack(data, tmp_path, digest(data))
    assert not (tmp_path.parent / "escape.tf").exists()


def test_unpack_refuses_another_digest_and_too_much(tmp_path: Path) -> None:
    data = tarball(file("main.tf", b"a" * 1000))
    with pytest.raises(SpecError, match="digest"):
        unpack(data, tmp_path / "a", digest(data + b"x"))
    with pytest.raises(SpecError, match="more than 500 bytes"):
        unpack(data, tmp_path, digest(data), Limits(max_bytes=500))
    many = tarball(*(file(f"f{i}.tf") for i in range(5)))
    with pytest.raises(SpecError, match="more than 3 entries"):
        unpack(many, tmp_path, digest(many), Limits(max_members=3))
    # a zip bomb's small tarball that claims more than the limit once unpacked
    bomb = tarball(file("big.tf", b"\0" * 200_000))
    assert len(bomb) < 10_000
    with pytest.raises(SpecError, match="more than 100000 bytes"):
        unpack(bomb, tmp_path / "b", digest(bomb), Limits(max_bytes=100_000))
