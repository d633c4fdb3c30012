#!/usr/bin/env python3
"""runbot local stack: per pull request, its own app or a tiny page server, plus their lifecycle.

The silo template copies this file and `runbot_app.py` into its shared directory; the instance
template runs it. Every value arrives through the environment (never through the command
string), so a branch named `$(rm -rf ~)` or a `start` command stays inert data here. Standard
library only, Python >= 3.8.

Commands (values from the environment):
  start        RUNBOT_INSTANCE_ID RUNBOT_INSTANCE_DIR RUNBOT_BIND_HOST RUNBOT_PORT, and
               RUNBOT_SOURCE_DIR RUNBOT_START RUNBOT_READY_TIMEOUT; stop what runs for the
               instance, then start the app (the `start` var or the Procfile's `web:` line, in
               the copied source) and wait until GET / answers below 500, or, without either,
               start the page server and wait /healthz
  stop         same variables; stop the app and the server, wait until the port no longer answers
  copy-source  RUNBOT_INSTANCE_DIR RUNBOT_SOURCE_DIR; replace the instance's copy of the source
  write-page   RUNBOT_INSTANCE_DIR RUNBOT_PAGE_JSON; atomically replace the page data
  write-route  RUNBOT_INSTANCE_ID RUNBOT_INSTANCE_DIR RUNBOT_BIND_HOST RUNBOT_PORT
               RUNBOT_SUSPENDED; tell the silo's ingress where the instance listens and
               whether it sleeps (route.json, read by the ingress on every request)
  stop-all     RUNBOT_SHARED_DIR; stop every instance's app and server, and the ingress
               (silo destroy)
  serve        --instance-id --dir --host --port; the page server itself (started by `start`)
"""

import argparse
import contextlib
import hmac
import html
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import runbot_app  # the sibling file: the repository's own app and its supervisor

PAGE_FILE = "page.json"
ROUTE_FILE = "route.json"  # read by the silo's ingress (ingress.py)
PID_FILE = "server.pid"
LOG_FILE = "server.log"
# A stop by request, not by pid: an engine run in runbot's sandbox has its own PID namespace, so
# the destroy cannot see (or signal) the server an earlier apply started. The token is written
# 0600 next to the page; only what can read the instance dir can stop the server.
STOP_FILE = "stop.token"
STOP_PATH = "/-/stop"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# The instance id becomes a directory name and a pgrep pattern: keep it boring.
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


Failure = runbot_app.Failure


# --------------------------------------------------------------------------- server


def render_page(data):
    def field(key):
        value = data.get(key)
        return html.escape("" if value is None else str(value), quote=True)

    rows = [
        ("Repository", field("repository")),
        ("Pull request", "#" + field("pr_number")),
        ("Head SHA", "<code>" + field("head_sha") + "</code>"),
        ("Head ref", "<code>" + field("head_ref") + "</code>"),
        ("Environment", "<code>" + field("instance_id") + "</code>"),
    ]
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{field('repository')} #{field('pr_number')} - runbot</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:3rem auto;max-width:48rem}"
        "th{text-align:left;padding-right:1.5rem}code{white-space:pre-wrap}</style>\n"
        f"</head>\n<body>\n<h1>{field('greeting')}</h1>\n<table>\n{table}\n</table>\n"
        "</body>\n</html>\n"
    )


def make_handler(instance_id, instance_dir, stop_token, on_stop):
    page_path = os.path.join(instance_dir, PAGE_FILE)

    class Handler(BaseHTTPRequestHandler):
        server_version = "runbot-local/1"

        def do_POST(self):
            given = self.headers.get("X-Runbot-Stop", "")
            if self.path != STOP_PATH or not stop_token:
                self._send(404, "text/plain; charset=utf-8", "not found\n")
            elif not hmac.compare_digest(given.encode(), stop_token.encode()):
                self._send(403, "text/plain; charset=utf-8", "wrong stop token\n")
            else:
                self._send(202, "text/plain; charset=utf-8", "stopping\n")
                on_stop()

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                body = json.dumps({"status": "ok", "instance_id": instance_id, "pid": os.getpid()})
                self._send(200, "application/json", body)
            elif path == "/":
                # Read on every request: an update only has to rewrite the file.
                try:
                    with open(page_path, encoding="utf-8") as fh:
                        data = json.load(fh)
                except (OSError, ValueError) as exc:
                    self._send(503, "text/plain; charset=utf-8", f"page data unavailable: {exc}\n")
                    return
                self._send(200, "text/html; charset=utf-8", render_page(data))
            else:
                self._send(404, "text/plain; charset=utf-8", "not found\n")

        def _send(self, status, content_type, body):
            raw = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(raw)

    return Handler


def serve(argv):
    parser = argparse.ArgumentParser(prog="server.py serve")
    # --instance-id is in the argv on purpose: `pgrep -f <instance id>` finds the server.
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    instance_id, instance_dir, host, port = args.instance_id, args.dir, args.host, args.port

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True
        allow_reuse_address = True  # restart right after a stop despite TIME_WAIT

    # SystemExit from the handler unwinds serve_forever so the socket is closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with open(os.path.join(instance_dir, STOP_FILE), encoding="utf-8") as fh:
            stop_token = fh.read().strip()
    except OSError:
        stop_token = ""

    def on_stop():
        # From a handler thread: shutdown() waits for serve_forever, so it cannot run here.
        import threading

        threading.Thread(target=httpd.shutdown, daemon=True).start()

    httpd = Server((host, port), make_handler(instance_id, instance_dir, stop_token, on_stop))
    print(f"runbot: serving {instance_id} on {host}:{port} (pid {os.getpid()})", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


# --------------------------------------------------------------------------- lifecycle


def env(name):
    value = os.environ.get(name)
    if value is None or value == "":
        raise Failure(f"{name} is not set")
    return value


def instance_config():
    instance_id = env("RUNBOT_INSTANCE_ID")
    if not INSTANCE_ID_RE.match(instance_id):
        raise Failure(f"invalid instance id {instance_id!r}")
    port = int(env("RUNBOT_PORT"))
    if not 0 < port < 65536:
        raise Failure(f"port {port} is out of range")
    return {
        "id": instance_id,
        "dir": os.path.abspath(env("RUNBOT_INSTANCE_DIR")),
        "host": env("RUNBOT_BIND_HOST"),
        "port": port,
    }


def connect_host(host):
    # A wildcard bind is reachable on loopback; connecting to the wildcard itself is not portable.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def port_open(host, port):
    try:
        with socket.create_connection((connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


def healthz(host, port):
    """The JSON /healthz answer of whatever listens there, {} if it is not ours, None if nothing."""
    if not port_open(host, port):
        return None
    conn = HTTPConnection(connect_host(host), port, timeout=1.0)
    try:
        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        data = json.loads(resp.read().decode("utf-8")) if resp.status == 200 else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, HTTPException):  # e.g. a server stopping mid-answer
        return {}
    finally:
        conn.close()


def process_argv(pid):
    """argv of a live, non-zombie process, or None."""
    proc = f"/proc/{pid}"
    if os.path.isdir("/proc/self"):
        try:
            with open(f"{proc}/stat", "rb") as fh:
                # The state letter follows the parenthesised command name.
                if fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    return None
            with open(f"{proc}/cmdline", "rb") as fh:
                return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
        except (OSError, IndexError):
            return None
    # No procfs (macOS): ask ps; good enough to recognise our own argv.
    out = subprocess.run(
        ["ps", "-o", "state=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def is_our_server(pid, instance_id):
    # The pid check guards against pid reuse: only kill a process that is this instance's server.
    argv = process_argv(pid)
    if not argv or "serve" not in argv:
        return False
    return any(
        argv[i] == "--instance-id" and argv[i + 1] == instance_id for i in range(len(argv) - 1)
    )


def read_pid(instance_dir):
    try:
        with open(os.path.join(instance_dir, PID_FILE), encoding="utf-8") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def write_file(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)  # readers see the old or the new file, never half of one


def terminate(pid, instance_id):
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not is_our_server(pid, instance_id):
                return
            time.sleep(0.05)
    raise Failure(f"server pid {pid} of {instance_id} survived SIGKILL")


def request_stop(cfg):
    """Ask the server to stop itself with its token; whether it agreed."""
    try:
        with open(os.path.join(cfg["dir"], STOP_FILE), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError:
        return False
    conn = HTTPConnection(connect_host(cfg["host"]), cfg["port"], timeout=2)
    try:
        conn.request("POST", STOP_PATH, headers={"X-Runbot-Stop": token})
        return conn.getresponse().status == 202
    except (OSError, HTTPException):
        return False
    finally:
        conn.close()


def stop_instance(cfg):
    info = healthz(cfg["host"], cfg["port"])
    if info and info.get("instance_id") == cfg["id"] and request_stop(cfg):
        print(f"runbot: asked {cfg['id']} to stop")
    pids = set()
    recorded = read_pid(cfg["dir"])
    if recorded and is_our_server(recorded, cfg["id"]):
        pids.add(recorded)
    # Also whatever answers as us: covers a crash between spawning and writing the pidfile.
    info = healthz(cfg["host"], cfg["port"])
    answering = info.get("pid") if info and info.get("instance_id") == cfg["id"] else None
    if isinstance(answering, int) and is_our_server(answering, cfg["id"]):
        pids.add(answering)
    for pid in sorted(pids):
        terminate(pid, cfg["id"])
    deadline = time.monotonic() + STOP_TIMEOUT
    while True:
        info = healthz(cfg["host"], cfg["port"])
        if not info or info.get("instance_id") != cfg["id"]:
            break
        if time.monotonic() > deadline:
            raise Failure(
                f"{cfg['host']}:{cfg['port']} still answers as {cfg['id']} after stopping"
                f" pid(s) {sorted(pids) or 'none found'}"
            )
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cfg["dir"], PID_FILE))
    return pids


def log_tail(instance_dir, lines=20):
    try:
        with open(os.path.join(instance_dir, LOG_FILE), encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip() or "(empty)"
    except OSError as exc:
        return f"(no log: {exc})"


def ready_timeout():
    raw = os.environ.get("RUNBOT_READY_TIMEOUT", "") or "30"
    try:
        value = float(raw)
    except ValueError:
        raise Failure(f"ready_timeout {raw!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise Failure(f"ready_timeout {raw} must be between 1 and 3600 seconds")
    return value


def cmd_start():
    cfg = instance_config()
    os.makedirs(cfg["dir"], exist_ok=True)
    runbot_app.stop_app(cfg["dir"])
    stopped = stop_instance(cfg)  # idempotent: never two copies of one instance
    if stopped:
        print(f"runbot: stopped previous server pid(s) {sorted(stopped)} of {cfg['id']}")
    if port_open(cfg["host"], cfg["port"]):
        who = healthz(cfg["host"], cfg["port"]) or {}
        owner = f"instance {who['instance_id']}" if who.get("instance_id") else "another process"
        raise Failure(f"port {cfg['host']}:{cfg['port']} is already in use by {owner}")
    source_dir = os.environ.get("RUNBOT_SOURCE_DIR", "")
    found = runbot_app.app_command(cfg["dir"], source_dir, os.environ.get("RUNBOT_START", ""))
    if found:
        command, origin = found
        timeout = ready_timeout()
        runbot_app.start_app(cfg, command, origin, timeout, connect_host(cfg["host"]))
        return
    if source_dir:
        runbot_app.note(
            cfg["dir"],
            "no `start` var and no Procfile `web:` line in the source: serving runbot's page",
        )
    token_path = os.path.join(cfg["dir"], STOP_FILE)
    fd = os.open(token_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(24))
    os.replace(token_path + ".tmp", token_path)
    argv = [
        sys.executable, os.path.abspath(__file__), "serve",
        "--instance-id", cfg["id"], "--dir", cfg["dir"],
        "--host", cfg["host"], "--port", str(cfg["port"]),
    ]  # fmt: skip
    with open(os.path.join(cfg["dir"], LOG_FILE), "ab") as log:
        # Fully detached: Terraform's local-exec waits until every holder of its pipes exits.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cfg["dir"],
            start_new_session=True,
            close_fds=True,
        )
    write_file(os.path.join(cfg["dir"], PID_FILE), f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise Failure(
                f"server for {cfg['id']} exited with code {code} before answering /healthz;"
                f" log tail:\n{log_tail(cfg['dir'])}"
            )
        info = healthz(cfg["host"], cfg["port"])
        if info and info.get("pid") == proc.pid:
            print(f"runbot: {cfg['id']} serving on {cfg['host']}:{cfg['port']} (pid {proc.pid})")
            return
        time.sleep(0.05)
    terminate(proc.pid, cfg["id"])
    raise Failure(
        f"server for {cfg['id']} did not answer http://{cfg['host']}:{cfg['port']}/healthz"
        f" within {START_TIMEOUT:.0f}s; log tail:\n{log_tail(cfg['dir'])}"
    )


def cmd_stop():
    cfg = instance_config()
    runbot_app.stop_app(cfg["dir"])
    stopped = stop_instance(cfg)
    print(f"runbot: {cfg['id']} stopped" + (f" (pid(s) {sorted(stopped)})" if stopped else ""))


def cmd_copy_source():
    instance_dir = os.path.abspath(env("RUNBOT_INSTANCE_DIR"))
    runbot_app.copy_source(os.environ.get("RUNBOT_SOURCE_DIR", ""), instance_dir)


def cmd_write_page():
    instance_dir = os.path.abspath(env("RUNBOT_INSTANCE_DIR"))
    data = json.loads(env("RUNBOT_PAGE_JSON"))
    if not isinstance(data, dict):
        raise Failure("RUNBOT_PAGE_JSON must be a JSON object")
    os.makedirs(instance_dir, exist_ok=True)
    write_file(os.path.join(instance_dir, PAGE_FILE), json.dumps(data, indent=2) + "\n")


def cmd_write_route():
    cfg = instance_config()
    suspended = os.environ.get("RUNBOT_SUSPENDED", "") == "true"
    route = {"port": cfg["port"], "host": cfg["host"], "suspended": suspended}
    os.makedirs(cfg["dir"], exist_ok=True)
    write_file(os.path.join(cfg["dir"], ROUTE_FILE), json.dumps(route) + "\n")


def cmd_stop_all():
    shared_dir = env("RUNBOT_SHARED_DIR")
    if not os.path.isdir(shared_dir):
        return
    if os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ingress.py")):
        import ingress  # the sibling file, copied by the same silo apply

        try:
            ingress.stop_recorded(shared_dir)
        except ingress.Failure as exc:
            raise Failure(str(exc)) from None
    for name in sorted(os.listdir(shared_dir)):
        if INSTANCE_ID_RE.match(name) and os.path.isdir(os.path.join(shared_dir, name)):
            runbot_app.stop_app(os.path.join(shared_dir, name))
        pid = read_pid(os.path.join(shared_dir, name))
        if pid and INSTANCE_ID_RE.match(name) and is_our_server(pid, name):
            terminate(pid, name)
            print(f"runbot: stopped leftover server of {name} (pid {pid})")


def main(argv):
    commands = {
        "start": cmd_start,
        "stop": cmd_stop,
        "copy-source": cmd_copy_source,
        "write-page": cmd_write_page,
        "write-route": cmd_write_route,
        "stop-all": cmd_stop_all,
    }
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    if len(argv) != 1 or argv[0] not in commands:
        sys.stderr.write(f"usage: {os.path.basename(__file__)} serve|{'|'.join(commands)}\n")
        return 2
    try:
        commands[argv[0]]()
    except Failure as exc:
        sys.stderr.write(f"runbot: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
