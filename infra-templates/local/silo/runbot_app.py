#!/usr/bin/env python3
"""runbot local stack: run the pull request's own app, supervised, and stop it by request.

`server.py` imports this file (the silo copies both into its shared directory). When runbot
gives the instance a source directory (`runbot_source_dir`), the source is copied into
`<instance dir>/app` and its web process (the `start` var, or else the Procfile's `web:` line)
runs there under a small supervisor:

- the supervisor (`runbot_app.py supervise`) owns the app's process group, holds an exclusive
  flock on `app.lock` while it lives and listens on the Unix socket `app.sock`;
- a stop never needs a pid: the destroy or suspend that stops the app runs in another PID
  namespace than the apply that started it (runbot's engine sandbox), so it sends the token of
  `app.token` (0600) over the socket, and waits until the lock is free;
- the app's output and the supervisor's own lines go to `app.log` (the previous run's to
  `app.log.1`).

Every value arrives through the environment, never through a command string. Standard library
only, Python >= 3.8.
"""

import argparse
import contextlib
import errno
import fcntl
import hmac
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from http.client import HTTPConnection, HTTPException

APP_DIR = "app"
APP_LOG = "app.log"
LOCK_FILE = "app.lock"
SOCK_FILE = "app.sock"  # bound and connected relative to the instance dir: paths may be long
TOKEN_FILE = "app.token"
STATE_FILE = "app.state.json"
PROCFILE_LIMIT = 64 * 1024
STOP_TIMEOUT = 15.0
TERM_GRACE = 5.0
TAIL_LINES = 20
# The variables an app gets: runbot's own (and the engine's) stay out of its environment.
APP_ENV_PASSED = ("PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR")
PROCFILE_LINE = re.compile(r"^([A-Za-z0-9_-]+)\s*:\s*(.*)$")


class Failure(Exception):
    pass


# --------------------------------------------------------------------------- source


def _skip_special(directory, names):
    """Only directories, regular files and symlinks (copied as links) are copied: a FIFO or
    a device in a source tree would block or misbehave in copy2."""
    skipped = []
    for name in names:
        mode = os.lstat(os.path.join(directory, name)).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            skipped.append(name)
    return skipped


def copy_source(source_dir, instance_dir):
    """Replace `<instance dir>/app` with a copy of `source_dir` ("" removes it).

    The source directory is shared by every environment at that commit and read-only; the
    app may write into its copy. Symlinks are copied as links, never followed.
    """
    target = os.path.join(instance_dir, APP_DIR)
    os.makedirs(instance_dir, exist_ok=True)
    if source_dir:
        if not os.path.isabs(source_dir) or not os.path.isdir(source_dir):
            raise Failure(
                f"runbot_source_dir {source_dir!r} is not a directory; runbot provides it"
                " (leave it unset to serve the runbot page)"
            )
        staging = f"{target}.new.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(source_dir, staging, symlinks=True, ignore=_skip_special)
        except (OSError, shutil.Error) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise Failure(
                f"could not copy the source {source_dir} into {instance_dir}: {exc}; check that"
                " the engine's user may read every file of it and that the disk has room"
            ) from None
    old = f"{target}.old.{os.getpid()}"
    if os.path.lexists(target):
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    if source_dir:
        os.rename(staging, target)
        print(f"runbot: copied {source_dir} to {target}", flush=True)


def procfile_web(app_dir):
    """The Procfile's `web:` command, None without a Procfile or without a `web:` line."""
    path = os.path.join(app_dir, "Procfile")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Failure(
                "the repository's Procfile is a symlink; make it a regular file"
            ) from None
        raise Failure(f"cannot read the repository's Procfile: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise Failure("the repository's Procfile is not a regular file")
        raw = fh.read(PROCFILE_LIMIT + 1)
    if len(raw) > PROCFILE_LIMIT:
        raise Failure(f"the repository's Procfile is over {PROCFILE_LIMIT} bytes; shorten it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Failure("the repository's Procfile is not UTF-8 text") from None
    for line in text.splitlines():
        found = PROCFILE_LINE.match(line.strip())
        if found and found.group(1) == "web" and found.group(2).strip():
            return found.group(2).strip()
    return None


def app_command(instance_dir, source_dir, start):
    """(command, where it came from), or None to serve runbot's page instead."""
    app_dir = os.path.join(instance_dir, APP_DIR)
    if not source_dir or not os.path.isdir(app_dir):
        return None
    if start.strip():
        return start, "the `start` var"
    web = procfile_web(app_dir)
    return (web, "the Procfile's web: line") if web else None


# --------------------------------------------------------------------------- supervisor


def app_env(app_dir, host, port):
    env = {k: v for k, v in os.environ.items() if k in APP_ENV_PASSED or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    env.update(HOST=host, PORT=str(port), HOME=app_dir, PYTHONUNBUFFERED="1")
    return env


def _die_with_parent():
    """In the app's child before exec: SIGKILL it if the supervisor dies (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(proc):
    """SIGTERM the app's whole process group, SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reaps the leader, so only live members keep the group
            if not _group_alive(proc.pid):
                return
            time.sleep(0.05)


def write_state(instance_dir, state):
    path = os.path.join(instance_dir, STATE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(state, fh)
    os.replace(path + ".tmp", path)


def read_state(instance_dir):
    try:
        with open(os.path.join(instance_dir, STATE_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def supervise(argv):
    """The supervisor process: start the app, stop its group on a tokened request or SIGTERM,
    exit when the app exits."""
    parser = argparse.ArgumentParser(prog="runbot_app.py supervise")
    # In the argv so `pgrep -f <instance id>` finds the supervisor.
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    os.chdir(args.dir)
    lock = open(LOCK_FILE, "a")  # noqa: SIM115 - held for the process's lifetime
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("runbot: another supervisor runs this instance's app; not starting", flush=True)
        return 3
    with open(TOKEN_FILE, encoding="utf-8") as fh:
        token = fh.read().strip().encode()
    command = os.environ.pop("RUNBOT_APP_COMMAND")
    host, port = os.environ["RUNBOT_BIND_HOST"], int(os.environ["RUNBOT_PORT"])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SOCK_FILE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(SOCK_FILE)
    os.chmod(SOCK_FILE, 0o600)
    listener.listen(4)
    stop_reason = []
    signal.signal(signal.SIGTERM, lambda *_: stop_reason.append("SIGTERM"))
    app_dir = os.path.abspath(APP_DIR)
    proc = subprocess.Popen(
        ["sh", "-c", command],
        cwd=app_dir,
        env=app_env(app_dir, host, port),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped as a whole
        preexec_fn=_die_with_parent,
    )
    state = {"supervisor": os.getpid(), "app": proc.pid, "exit": None}
    write_state(".", state)
    print(f"runbot: started the app (pid {proc.pid}) on {host}:{port}", flush=True)
    while not stop_reason:
        code = proc.poll()
        if code is not None:
            print(f"runbot: the app exited with code {code}", flush=True)
            end_group(proc)  # what it left behind in its group
            write_state(".", {**state, "exit": code})
            return 0
        try:
            ready, _, _ = select.select([listener], [], [], 0.2)
        except InterruptedError:
            continue
        if ready:
            _answer(listener, token, stop_reason)
    print(f"runbot: stopping the app ({stop_reason[0]})", flush=True)
    end_group(proc)
    write_state(".", {**state, "exit": proc.poll()})
    return 0


def _answer(listener, token, stop_reason):
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(2.0)
        try:
            given = conn.recv(256).strip()
        except OSError:
            return
        if hmac.compare_digest(given, token):
            stop_reason.append("a stop request")
            conn.sendall(b"stopping\n")
        else:
            conn.sendall(b"wrong token\n")


# --------------------------------------------------------------------------- stop


def lock_held(instance_dir):
    """Whether a supervisor lives for this instance (works across PID namespaces)."""
    path = os.path.join(instance_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _send_stop(instance_dir):
    try:
        with open(os.path.join(instance_dir, TOKEN_FILE), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError:
        return False
    here = os.open(".", os.O_RDONLY)
    try:
        os.chdir(instance_dir)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3.0)
            sock.connect(SOCK_FILE)
            sock.sendall(token.encode() + b"\n")
            return sock.recv(64).startswith(b"stopping")
    except OSError:
        return False
    finally:
        os.fchdir(here)
        os.close(here)


def _is_supervisor(pid, instance_dir):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0")]
    except OSError:
        return False
    return "supervise" in argv and instance_dir in argv


def stop_app(instance_dir):
    """Stop the instance's app if one runs; whether one did. Idempotent."""
    if not lock_held(instance_dir):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(instance_dir, SOCK_FILE))
        return False
    if not _send_stop(instance_dir):
        # No answer on the socket: signal the supervisor if it is visible from here.
        pid = read_state(instance_dir).get("supervisor")
        if isinstance(pid, int) and _is_supervisor(pid, instance_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while lock_held(instance_dir):
        if time.monotonic() > deadline:
            raise Failure(
                f"the app supervisor of {instance_dir} did not stop within {STOP_TIMEOUT:.0f}s"
                f" ({LOCK_FILE} is still locked and {SOCK_FILE} did not take the stop request);"
                " stop the process holding the lock (`fuser` on the file) and apply again"
            )
        time.sleep(0.05)
    print(f"runbot: stopped the app of {instance_dir}", flush=True)
    return True


# --------------------------------------------------------------------------- start


def log_tail(path, lines=TAIL_LINES):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip() or "(empty)"
    except OSError as exc:
        return f"(no log: {exc.strerror})"


def listening_ports(pgid):
    """TCP ports the process group listens on (from /proc), None where that cannot be told."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    inodes = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:  # state, ppid, pgrp
                continue
            for fd in os.listdir(f"/proc/{entry}/fd"):
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except (OSError, ValueError, IndexError):
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def http_status(host, port):
    """The status GET / answers with, None if nothing answers."""
    conn = HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status
    except (OSError, ValueError, HTTPException):
        return None
    finally:
        conn.close()


def _rotate_log(instance_dir):
    log_path = os.path.join(instance_dir, APP_LOG)
    if os.path.exists(log_path):
        os.replace(log_path, log_path + ".1")
    return log_path


def note(instance_dir, text):
    """A line for the app log that says what runbot did instead of starting an app."""
    with open(_rotate_log(instance_dir), "w", encoding="utf-8") as fh:
        fh.write(f"runbot: {text}\n")


def start_app(cfg, command, origin, ready_timeout, connect):
    """Start the supervised app and wait until GET / answers below 500; on failure stop it and
    raise a Failure naming the cause, with the app log's last lines."""
    instance_dir, host, port = cfg["dir"], cfg["host"], cfg["port"]
    token_path = os.path.join(instance_dir, TOKEN_FILE)
    fd = os.open(token_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(24))
    os.replace(token_path + ".tmp", token_path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(instance_dir, STATE_FILE))
    log_path = _rotate_log(instance_dir)
    env = {k: v for k, v in os.environ.items() if k in APP_ENV_PASSED or k.startswith("LC_")}
    env.update(RUNBOT_APP_COMMAND=command, RUNBOT_BIND_HOST=host, RUNBOT_PORT=str(port))
    argv = [
        sys.executable, os.path.abspath(__file__), "supervise",
        "--instance-id", cfg["id"], "--dir", instance_dir,
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        log.write(f"runbot: starting {origin}: {command}\n".encode("utf-8", "replace"))
        log.flush()
        # Detached like the page server: local-exec waits for every holder of its pipes.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=instance_dir,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    url = f"http://{connect}:{port}/"
    deadline = time.monotonic() + ready_timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            code = read_state(instance_dir).get("exit")
            raise Failure(
                f"the app ({origin}: {command!r}) exited"
                + (f" with code {code}" if code is not None else "")
                + f" before GET {url} answered; it must keep running and serve HTTP on $HOST:$PORT"
                f" ({host}:{port}). App log {log_path}, last lines:\n{log_tail(log_path)}"
            )
        last = http_status(connect, port)
        if last is not None and last < 500:
            print(f"runbot: {cfg['id']} app answers {url} with {last} ({origin}: {command})")
            return
        time.sleep(0.1)
    pgid = read_state(instance_dir).get("app")
    ports = listening_ports(pgid) if isinstance(pgid, int) else None
    stop_app(instance_dir)
    if last is not None:
        why = f"GET / answered {last}; fix the error the app log shows"
    elif ports and port not in ports:
        shown = ", ".join(str(p) for p in ports)
        why = f"it listens on {shown}, expected {port}: make it listen on $PORT and $HOST"
    elif ports:
        why = f"it listens on {port} but does not answer HTTP there"
    else:
        why = f"it does not listen on any TCP port; make it listen on $PORT ({port})"
    raise Failure(
        f"the app ({origin}: {command!r}) did not answer GET {url} below 500 within"
        f" {ready_timeout:g}s ({why}; or raise the `ready_timeout` var if it only starts"
        f" slowly). App log {log_path}, last lines:\n{log_tail(log_path)}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] != ["supervise"]:
        sys.stderr.write("usage: runbot_app.py supervise --instance-id ID --dir DIR\n")
        sys.exit(2)
    sys.exit(supervise(sys.argv[2:]))
