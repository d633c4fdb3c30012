"""Start one engine command in new PID and mount namespaces, as an unprivileged user.

Run as `python -I -S jail.py` by `app.engine.sandbox`, the plan and the command in the
`RUNBOT_JAIL` environment variable (marshal, hex-encoded: the same interpreter writes and reads
it). The stdlib only, so it runs by path, importing nothing of runbot. Not in argv: the init may
outlive the run as a daemon's reaper, and an argv naming the target would make it look like one.
The kernel calls are made directly (ctypes) rather than through util-linux `unshare --fork` or
bubblewrap because both end the namespace when the command exits: a local stack's server,
started by a provisioner, must outlive its `apply`. So:

- the launcher (this process, runbot's child) creates the namespaces and forks an init;
- the init (PID 1 inside) builds the view: tmpfs over what is hidden, the run's paths bound
  back, secret files masked, a fresh `/proc` that shows no runbot process; then it forks the
  command, which drops to the sandbox uid (or, in a user namespace, to no capabilities) and
  executes;
- when the command exits, the init hands its exit code to the launcher over a pipe and closes
  its copy of the output; the launcher exits with that code, so runbot sees the command end.
  The init stays as long as a daemon the command left behind lives, and reaps it;
- SIGINT and SIGTERM to the launcher reach the command through the init; a SIGKILL to the
  launcher's process group kills the init, and with it everything in the namespace.
"""

from __future__ import annotations

# Each phase pays for this start-up: `_signal` and `marshal` rather than `signal` (enum) and
# `json` (re), and no contextlib, keep it to the interpreter's own few milliseconds.
import _signal as signal  # type: ignore[import-not-found]
import ctypes
import marshal
import os
import sys
import warnings  # noqa: F401 - os.execvp imports it lazily, when the stdlib may be out of view

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
# statvfs f_flag bits, which a bind remount inside a user namespace must keep (they are locked).
_ST_FLAGS = {1: MS_RDONLY, 2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME}
_ST_FLAGS.update({2048: MS_NODIRATIME, 4096: MS_RELATIME})
SETUP_FAILED = 125
PLAN_VARIABLE = "RUNBOT_JAIL"

_libc = ctypes.CDLL(None, use_errno=True)


def _call(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _call(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _write(path: str, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _build_view(plan: dict) -> None:  # type: ignore[type-arg]
    """Inside the new mount namespace: hide, bind back, mask, and a /proc of our own."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    sources = {}
    for path, _writable in plan["binds"]:
        sources[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    for directory in plan["hide"]:
        mode = "1777" if directory == "/tmp" else "0755"
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    for path, writable in plan["binds"]:
        fd = sources[path]
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif not os.path.exists(path):
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            open(path, "a").close()
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        kept = os.statvfs(path).f_flag
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
        flags |= sum(bit for st, bit in _ST_FLAGS.items() if kept & st)
        flags = flags | MS_RDONLY if not writable else flags & ~MS_RDONLY
        if not writable or flags != MS_BIND | MS_REMOUNT:
            _mount(None, path, None, flags)
        os.close(fd)
    for path in plan["mask"]:
        if os.path.isfile(path) and not _under(path, [p for p, _ in plan["binds"]] + ["/proc"]):
            _mount("/dev/null", path, None, MS_BIND)
        elif os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _drop_privileges(plan: dict) -> None:  # type: ignore[type-arg]
    if plan["mode"] == "uid":
        os.setgroups([])
        os.setgid(plan["gid"])
        os.setuid(plan["uid"])  # from root: every capability goes with it
    else:
        for cap in range(64):  # the bounding set first, then what this process holds
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        data = (ctypes.c_uint32 * 6)()
        _call(_libc.capset(header, data), "capset")
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _init(plan: dict, argv: list[str], status_fd: int) -> None:  # type: ignore[type-arg]
    """PID 1: build the view, run the command, report its exit, then reap until alone."""
    try:
        _build_view(plan)
    except OSError as exc:
        print(f"runbot sandbox: cannot build the engine's view: {exc}", file=sys.stderr)
        os.write(status_fd, str(SETUP_FAILED).encode())
        os._exit(SETUP_FAILED)
    child = os.fork()
    if child == 0:
        try:
            os.chdir(plan["cwd"])
            _drop_privileges(plan)
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"runbot sandbox: cannot start {argv[0]}: {exc}", file=sys.stderr)
        os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 - contextlib costs the start-up time this module saves
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(code if code is not None else 0)
        if pid == child and code is None:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            os.write(status_fd, str(code).encode())
            os.close(status_fd)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main() -> int:
    handed = marshal.loads(bytes.fromhex(os.environ.pop(PLAN_VARIABLE)))
    plan, argv = handed["plan"], handed["argv"]
    flags = CLONE_NEWNS | CLONE_NEWPID
    if plan["mode"] == "userns":
        uid, gid = os.getuid(), os.getgid()
        _call(_libc.unshare(flags | CLONE_NEWUSER), "unshare")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    else:
        _call(_libc.unshare(flags), "unshare")
    read_end, write_end = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(read_end)
        _init(plan, argv, write_end)
    os.close(write_end)

    def forward(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 - as above
            os.kill(init, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    reported = os.read(read_end, 16)  # written in one go, or EOF: the init died first
    if reported:
        return int(reported)
    _, status = os.waitpid(init, 0)  # the init died before the command ended (SIGKILL)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as exc:
        print(f"runbot sandbox: {exc}", file=sys.stderr)
        sys.exit(SETUP_FAILED)
