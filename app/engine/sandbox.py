"""What an engine run may see, and how it is started so it sees only that (`jail.py` does it).

Every template is code: without this, a `local-exec` runs as runbot's user and can read the App
key, the data dir's secrets, the database and `/proc/<runbot>/environ`. The sandbox gives each
engine phase new PID and mount namespaces and an unprivileged identity:

- `uid` mode (runbot is root, as in the container image): the engine runs as
  `RUNBOT_SANDBOX_UID` (65534, nobody), so files it cannot see through the view are still
  closed to it by their modes;
- `userns` mode (runbot is not root): a user namespace makes the namespaces possible; the engine
  keeps runbot's uid on the host but has no capabilities, and relies on the view alone.

The view: the data dir, `/tmp` and runbot's home are empty tmpfs; the run's working copy, its
engine data dir, its own local state, its workspaces and the plugin cache (read-only outside
`init`) are bound back at the same paths; the key file, the SQLite file, `.env` and the
per-silo credential files are masked; `/proc` is the namespace's own.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import platform
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

JAIL = Path(__file__).with_name("jail.py")
Mode = Literal["uid", "userns"]


@dataclass(frozen=True)
class Bind:
    path: str
    writable: bool


@dataclass(frozen=True)
class Plan:
    """One phase's view; serialised to `jail.py` as JSON."""

    mode: Mode
    uid: int
    gid: int
    hide: tuple[str, ...]
    binds: tuple[Bind, ...]
    mask: tuple[str, ...]
    cwd: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "uid": self.uid,
                "gid": self.gid,
                "hide": list(self.hide),
                "binds": [[b.path, b.writable] for b in self.binds],
                "mask": list(self.mask),
                "cwd": self.cwd,
            }
        )


@dataclass(frozen=True)
class Availability:
    mode: Mode | None
    reason: str  # why not, when mode is None; what it is otherwise


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def closed_ancestors(path: str, traversable: Callable[[str], bool]) -> list[str]:
    """The directories on the way to `path` that others may not enter (e.g. `/root`, 0700)."""
    parts = Path(path).parts
    found = []
    for i in range(2, len(parts)):
        ancestor = str(Path(*parts[:i]))
        if not traversable(ancestor):
            found.append(ancestor)
    return found


def _others_may_enter(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return True  # absent: nothing to open a way through


def make_plan(
    mode: Mode,
    uid: int,
    gid: int,
    *,
    cwd: Path,
    writable: Iterable[Path],
    readable: Iterable[Path],
    hide: Iterable[Path],
    mask: Iterable[Path],
    traversable: Callable[[str], bool] = _others_may_enter,
) -> Plan:
    """The view for one phase: what to hide, bind back and mask, shallowest first.

    In `uid` mode a bound path under a directory the sandbox uid may not enter (the venv's base
    interpreter under `/root`) would be unreachable: that directory is hidden too (a 0755
    tmpfs), and only the bound path comes back.
    """
    binds = {str(p): True for p in writable}
    for p in readable:
        binds.setdefault(str(p), False)
    hidden = {str(p) for p in hide}
    if mode == "uid":
        for path in binds:
            hidden.update(closed_ancestors(path, traversable))
    hidden = {h for h in hidden if h not in ("/", "")}
    # A hide inside another is already empty; a hide inside a bind would undo part of it.
    hides = sorted(
        (h for h in hidden if not any(o != h and _inside(h, o) for o in hidden)),
        key=lambda h: (_depth(h), h),
    )
    masks = sorted({str(p) for p in mask if not any(_inside(str(p), h) for h in hides)})
    return Plan(
        mode=mode,
        uid=uid,
        gid=gid,
        hide=tuple(hides),
        binds=tuple(
            Bind(p, w) for p, w in sorted(binds.items(), key=lambda kv: (_depth(kv[0]), kv[0]))
        ),
        mask=tuple(masks),
        cwd=str(cwd),
    )


def wrap(
    plan: Plan, argv: Sequence[str], env: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The launcher's argv and environment for `argv` in `plan`'s view (the plan travels in
    the environment, which the launcher removes before the command starts)."""
    handed = marshal.dumps({"plan": json.loads(plan.to_json()), "argv": list(argv)}).hex()
    base = dict(os.environ if env is None else env)
    return [sys.executable, "-I", "-S", str(JAIL)], {**base, "RUNBOT_JAIL": handed}


def probe(uid: int) -> Availability:
    """Whether a sandbox can start here, really tried (a kernel or seccomp may refuse)."""
    if platform.system() != "Linux":
        return Availability(None, f"namespaces are Linux only (this is {platform.system()})")
    mode: Mode = "uid" if os.geteuid() == 0 else "userns"
    plan = make_plan(
        mode, uid, uid, cwd=Path("/"), writable=(), readable=(), hide=(Path("/tmp"),), mask=()
    )
    try:
        argv, env = wrap(plan, ["sh", "-c", "test $$ = 2 && id -u"], {"PATH": os.defpath})
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Availability(None, f"the sandbox did not start: {exc}")
    expected = str(uid) if mode == "uid" else "0"
    if done.returncode != 0 or done.stdout.strip() != expected:
        said = (done.stderr or done.stdout).strip().splitlines()
        return Availability(None, said[-1] if said else f"exit code {done.returncode}")
    if mode == "uid":
        return Availability(mode, f"uid {uid}, own PID and mount namespaces")
    return Availability(mode, "a user namespace without capabilities, own PID and mount namespaces")


class SandboxUnavailable(RuntimeError):
    """No sandbox can start here; the message says why and what to do."""


@dataclass
class Sandbox:
    """The sandbox an `EngineRunner` starts its phases in; probed once, on first use."""

    uid: int = 65534
    #: Files and directories the engine must never see, besides the data dir (key file, ...).
    secrets: tuple[Path, ...] = ()
    #: Directories the engine needs to read outside its data dir (the interpreter, the engine).
    readable: tuple[Path, ...] = field(default_factory=tuple)
    _found: Availability | None = field(default=None, repr=False)

    def availability(self) -> Availability:
        if self._found is None:
            self._found = probe(self.uid)
        return self._found

    @property
    def mode(self) -> Mode:
        found = self.availability()
        if found.mode is None:
            raise SandboxUnavailable(
                f"the engine sandbox cannot start here: {found.reason}. Run runbot on Linux as"
                " root or where unprivileged user namespaces are allowed (a container needs"
                " them: see docs/security.md), or set RUNBOT_SANDBOX=off to run templates"
                " unsandboxed on purpose"
            )
        return found.mode

    @property
    def gid(self) -> int:
        return self.uid

    def wrap(
        self, plan: Plan, argv: Sequence[str], env: dict[str, str]
    ) -> tuple[list[str], dict[str, str]]:
        return wrap(plan, argv, env)

    def describe(self) -> str:
        return self.availability().reason

    def own(self, paths: Iterable[Path]) -> None:
        """Give the sandbox uid the run's writable paths (uid mode; runbot is root)."""
        if self.mode != "uid":
            return
        for top in paths:
            if not top.exists():
                continue
            os.chown(top, self.uid, self.gid)
            for root, dirs, files in os.walk(top):
                for name in (*dirs, *files):
                    with contextlib.suppress(FileNotFoundError):
                        os.lchown(os.path.join(root, name), self.uid, self.gid)

    def plan(
        self,
        argv: Sequence[str],
        *,
        data_dir: Path,
        cwd: Path,
        writable: Iterable[Path],
        readable: Iterable[Path],
    ) -> Plan:
        home = Path.home()
        hide = [data_dir, Path("/tmp")]
        if str(home) not in ("/", ""):
            hide.append(home)
        needed = [Path(sys.base_prefix), Path(sys.prefix), _package_root(), *self.readable]
        first = shutil.which(argv[0]) if argv else None
        if first:
            needed.append(Path(os.path.realpath(first)).parent)
        dotenv = Path.cwd() / ".env"
        return make_plan(
            self.mode,
            self.uid,
            self.gid,
            cwd=cwd,
            writable=writable,
            readable=[*readable, *needed],
            hide=hide,
            mask=[*self.secrets, dotenv],
        )


def _package_root() -> Path:
    """Where `app` is imported from: the embedded engine (`python -m app.engine.embedded`)
    runs runbot's own code, so an editable checkout must be readable."""
    return Path(__file__).resolve().parents[2]
