"""Running `init` once per template rather than once per run or per pull request.

`init` writes a target's TF_DATA_DIR (the backend's settings, modules, provider links) and the
dependency lock file. Run again from the very same template, backend and engine, it rewrites the
same bytes: ~0.15 s with the embedded engine and the local stack, seconds with real providers.

Two levels:
- a target's own TF_DATA_DIR carries a stamp of what it was initialised from, so an update or a
  destroy of that target skips `init`;
- with runbot's own backends nothing in TF_DATA_DIR names the target (the local backend keeps one
  workspace per target under a shared `workspace_dir`; pg takes its schema from the environment),
  so a *new* target starts from a copy of an initialised one with the same fingerprint: a new
  pull request's environment skips `init` too. Templates that declare their own backend get a
  per-target key in their backend settings, so they only use the first level.

If the engine disagrees anyway (a wiped plugin cache, an engine upgraded in place), the runner
sees its "run init first" error, which comes before any change, runs `init` and retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

STAMP = "runbot-init.json"  # in TF_DATA_DIR: what it was initialised from, and its lock file
LOCK_FILE = ".terraform.lock.hcl"
KEEP = 16  # initialised copies kept, most recently used first; one per template in use

# Engine messages that mean "run init first"; they come before any change is made.
_INIT_HINTS = (
    "terraform init",
    "tofu init",
    "Backend initialization required",
    "Inconsistent dependency lock file",
    "Module not installed",
    "Required plugins are not installed",
    "Plugin reinitialization required",
    "please run init",
)


def needs_init(lines: list[str]) -> bool:
    """Whether a failed engine phase asks for `init` (so nothing was changed yet)."""
    text = "\n".join(lines)
    return any(hint.lower() in text.lower() for hint in _INIT_HINTS)


class InitCache:
    def __init__(self, root: Path) -> None:
        self.root = root  # <data dir>/init-cache: one initialised TF_DATA_DIR per fingerprint

    def restore(self, data_dir: Path, fingerprint: str, workdir: Path) -> bool:
        """Whether `data_dir` was initialised from `fingerprint`; if so, restore the lock file."""
        return self._restore(data_dir, fingerprint, workdir) is not None

    @staticmethod
    def _restore(data_dir: Path, fingerprint: str, workdir: Path) -> dict[str, Any] | None:
        """The stamp of `data_dir` if it matches `fingerprint`, its lock file restored."""
        try:
            saved = json.loads((data_dir / STAMP).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            return None
        lock = saved.get("lock")
        if isinstance(lock, str):
            (workdir / LOCK_FILE).write_text(lock)
        return saved

    def adopt(self, data_dir: Path, fingerprint: str, workdir: Path) -> bool:
        """Make `data_dir` a copy of an initialised one with the same fingerprint, if any.

        The target's stamp is written last, so a copy cut short (a crash, an eviction) is never
        taken for a complete one.
        """
        shared = self.root / fingerprint
        if not shared.is_dir():
            return False
        shutil.rmtree(data_dir, ignore_errors=True)
        try:
            shutil.copytree(shared, data_dir, symlinks=True, ignore=shutil.ignore_patterns(STAMP))
            stamp = self._restore(shared, fingerprint, workdir)
            if stamp is None:
                raise ValueError("the shared copy has no stamp")
            origin = stamp.get("data_dir")
            if isinstance(origin, str) and origin != str(data_dir):
                _relocate_modules(data_dir, Path(origin))
        except (OSError, ValueError, AttributeError, shutil.Error):  # init as usual instead
            shutil.rmtree(data_dir, ignore_errors=True)
            data_dir.mkdir(parents=True, exist_ok=True)
            return False
        with contextlib.suppress(OSError):
            os.utime(shared)  # recently used: kept by prune()
        self._stamp(data_dir, fingerprint, workdir)
        return True

    def unstamp(self, data_dir: Path) -> None:
        """Drop a target's stamp before an `init` that may fail half-way."""
        (data_dir / STAMP).unlink(missing_ok=True)

    def save(self, data_dir: Path, fingerprint: str, workdir: Path, *, share: bool) -> None:
        """Stamp a freshly initialised `data_dir`; with `share`, keep a copy for new targets."""
        self._stamp(data_dir, fingerprint, workdir)
        if not share or (self.root / fingerprint).is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Copied aside, then renamed into place: a concurrent adopt() never sees half a copy,
        # and of two runs publishing the same fingerprint at once, one rename wins.
        staging = self.root / f".staging-{uuid.uuid4().hex[:12]}"
        try:
            shutil.copytree(data_dir, staging, symlinks=True)
            os.rename(staging, self.root / fingerprint)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            return
        self.prune()

    @staticmethod
    def _stamp(data_dir: Path, fingerprint: str, workdir: Path) -> None:
        lock_path = workdir / LOCK_FILE
        lock = lock_path.read_text() if lock_path.is_file() else None
        stamp = {"fingerprint": fingerprint, "lock": lock, "data_dir": str(data_dir)}
        (data_dir / STAMP).write_text(json.dumps(stamp))

    def prune(self) -> None:
        """Keep the KEEP most recently used copies, so old templates' copies do not pile up, and
        drop staging copies a crash left behind."""
        try:
            entries = list(self.root.iterdir())
        except OSError:
            return

        def last_used(entry: Path) -> float:
            try:
                return entry.stat().st_mtime
            except OSError:
                return 0.0

        stale = time.time() - 3600
        abandoned = [e for e in entries if e.name.startswith(".") and last_used(e) < stale]
        copies = [e for e in entries if not e.name.startswith(".")]
        kept = sorted(copies, key=last_used, reverse=True)
        for entry in [*abandoned, *kept[KEEP:]]:
            shutil.rmtree(entry, ignore_errors=True)


def _relocate_modules(data_dir: Path, origin: Path) -> None:
    """Point the module manifest at this copy: the engine records where it installed each
    downloaded module as an absolute path under the TF_DATA_DIR that ran `init`."""
    manifest = data_dir / "modules" / "modules.json"
    if not manifest.is_file():
        return
    content = json.loads(manifest.read_text())
    prefix = str(origin).rstrip("/") + "/"
    for module in content.get("Modules") or []:
        place = module.get("Dir")
        if isinstance(place, str) and place.startswith(prefix):
            module["Dir"] = str(data_dir / place[len(prefix) :])
    manifest.write_text(json.dumps(content))
