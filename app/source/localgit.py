"""Local mode's source: `git archive` of a commit in the operator's own repository.

`RUNBOT_LOCAL_REPO` names a git repository on this host holding the commits the simulated
pull requests point at. The archive is made as GitHub makes its tarballs (gzip, one top folder
`<owner>-<name>-<sha7>/`), so the same unpacking serves both. git runs as an argv, never a
shell, with the commit checked as hex first.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from app.source.cache import SHA_RE
from app.source.fetch import CappedFile, Download, SourceRefused, SourceUnavailable

_GIT_ENV = ("PATH", "HOME", "LANG", "TZ")


def git_archive_download(repo_dir: Path) -> Download:
    """A `Download` that archives commits of the git repository at `repo_dir`."""

    async def download(repository: str, sha: str, dest: Path, limit: int) -> None:
        if not SHA_RE.fullmatch(sha):
            raise SourceRefused(f"{sha!r} is not a commit id (40 hex digits)")
        prefix = repository.replace("/", "-") + f"-{sha[:7]}/"
        argv = ["git", "-C", str(repo_dir), "archive", "--format=tar.gz", f"--prefix={prefix}"]
        env = {key: os.environ[key] for key in _GIT_ENV if key in os.environ}
        env["GIT_CONFIG_NOSYSTEM"] = "1"
        what = f"the source of {repository} at {sha[:7]}"
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                sha,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            raise SourceUnavailable(f"cannot run git to archive {what}: {exc}") from exc
        assert process.stdout is not None and process.stderr is not None
        out = CappedFile(dest, limit, what)
        try:
            while chunk := await process.stdout.read(1 << 20):
                out.write(chunk)
            errors = await process.stderr.read()
            code = await process.wait()
        finally:
            out.close()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if code != 0:
            # git names the repository's path; the reason may be shown in a comment.
            said = errors.decode(errors="replace").replace(str(repo_dir), "RUNBOT_LOCAL_REPO")
            last = said.strip().splitlines()[-1:] or [f"exit {code}"]
            raise SourceRefused(
                f"git archive could not make {what} from RUNBOT_LOCAL_REPO: {last[0]}; commit"
                " it there, or point RUNBOT_LOCAL_REPO at the repository that has it"
            )

    return download
