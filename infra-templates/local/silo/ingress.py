#!/usr/bin/env python3
"""runbot local stack: the silo's one ingress, a reverse proxy in front of every instance.

Routes `/<instance id>/...` (prefix stripped, X-Forwarded-Prefix set) and Host
`<instance id>.<anything>` to the instance's port, read from `<shared dir>/<id>/route.json` on
every request (the instance template writes it; its destroy removes the directory), so
instances come and go without a restart. It reports traffic (the last request time per
instance, batched) to runbot's silo API, and for a sleeping instance answers a self-refreshing "waking up" page (503, Retry-After)
while it asks runbot to wake it. Standard library only, Python >= 3.8.

Commands (values from the environment, never the command line; `start` hands the silo token
to `serve` on its stdin, so it is in no long-lived process's environment either):
  start  RUNBOT_SHARED_DIR RUNBOT_SILO_NAME RUNBOT_INGRESS_HOST RUNBOT_INGRESS_PORT, and
         RUNBOT_API_URL RUNBOT_SILO_TOKEN RUNBOT_REPORT_INTERVAL; stop a running one, start one
  stop   RUNBOT_SHARED_DIR RUNBOT_INGRESS_HOST RUNBOT_INGRESS_PORT; stop it, wait until it is gone
  serve  --silo --dir --host --port; the ingress itself (started by `start`)
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
import threading
import time
from datetime import datetime, timezone
from http.client import HTTPConnection, HTTPException, HTTPSConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ROUTE_FILE = "route.json"
STATE_FILE = "ingress.json"  # where it listens, for the silo destroy's stop-all
PID_FILE = "ingress.pid"
LOG_FILE = "ingress.log"
STOP_FILE = "ingress.stop.token"  # 0600: only what can read the shared dir may stop it
CONTROL = "/-/ingress/"  # never an instance id: ids start with a letter or digit
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",  # answered here (HTTP/1.0: the client sends its body anyway), not forwarded
    }
)
MAX_BODY = 64 * 1024 * 1024
WAKE_DEBOUNCE = 5.0
BACKEND_TIMEOUT = 60.0
START_TIMEOUT = 10.0


class Failure(Exception):
    pass


def log(message):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    print(f"{stamp} runbot-ingress: {message}", flush=True)


# --------------------------------------------------------------------------- runbot's API


class Reporter:
    """Last request time per instance, POSTed in batches; wake-ups, debounced per instance.
    Every failure is logged and retried; none reaches a proxied request."""

    def __init__(self, api_url, silo, token, interval):
        self.api = urlsplit(api_url) if api_url else None
        self.silo, self.token, self.interval = silo, token, interval
        self.lock = threading.Lock()
        self.seen = {}
        self.woken = {}
        self.enabled = bool(self.api and self.api.hostname and token)

    def saw(self, instance_id):
        with self.lock:
            self.seen[instance_id] = datetime.now(timezone.utc)

    def awake(self, instance_id):
        """Its app answered: the next time it sleeps, its first request wakes it at once."""
        with self.lock:
            self.woken.pop(instance_id, None)

    def wake(self, instance_id):
        """Ask runbot to wake `instance_id`, at most once per WAKE_DEBOUNCE seconds."""
        now = time.monotonic()
        with self.lock:
            if now - self.woken.get(instance_id, -WAKE_DEBOUNCE) < WAKE_DEBOUNCE:
                return
            self.woken[instance_id] = now
        if self.enabled:
            body = {"environment": instance_id}
            threading.Thread(target=self._post, args=("wake", body), daemon=True).start()

    def run(self, stop):
        while not stop.wait(self.interval):
            self.flush()

    def flush(self):
        with self.lock:
            batch, self.seen = self.seen, {}
        if not batch or not self.enabled:
            return
        body = {"seen": {k: v.isoformat().replace("+00:00", "Z") for k, v in batch.items()}}
        if not self._post("activity", body):
            with self.lock:  # keep them for the next try; newer times win
                for key, at in batch.items():
                    if key not in self.seen or self.seen[key] < at:
                        self.seen[key] = at

    def _post(self, what, body):
        api = self.api
        path = f"{api.path.rstrip('/')}/api/v1/silos/{self.silo}/{what}"
        cls = HTTPSConnection if api.scheme == "https" else HTTPConnection
        conn = cls(api.hostname, api.port, timeout=10)
        try:
            conn.request(
                "POST",
                path,
                body=json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            resp = conn.getresponse()
            answer = resp.read(2000).decode("utf-8", "replace")
            if resp.status != 200:
                log(f"{what}: runbot answered {resp.status}: {answer[:300]}")
                return False
            if what == "wake":
                log(f"wake {body['environment']}: {answer[:300]}")
            return True
        except (OSError, HTTPException) as exc:
            log(f"{what}: cannot reach runbot at {api.scheme}://{api.netloc}: {exc}; retrying")
            return False
        finally:
            conn.close()


# --------------------------------------------------------------------------- proxy


def read_route(shared_dir, instance_id):
    if not ID_RE.match(instance_id):
        return None
    try:
        with open(os.path.join(shared_dir, instance_id, ROUTE_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    port = data.get("port") if isinstance(data, dict) else None
    if not isinstance(port, int) or not 0 < port < 65536:
        return None
    return {"port": port, "host": str(data.get("host") or "127.0.0.1"),
            "suspended": data.get("suspended") is True}  # fmt: skip


def connect_host(host):
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def bad_path(path):
    """Dot segments (also percent-encoded) or backslashes: never forwarded, answered 404."""
    lowered = path.lower().replace("%2e", ".").replace("%2f", "/").replace("%5c", "\\")
    return "\\" in lowered or any(seg in (".", "..") for seg in lowered.split("/"))


def waking_page(instance_id):
    name = html.escape(instance_id, quote=True)
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="refresh" content="2">\n'
        f"<title>Waking up {name} - runbot</title>\n"
        "<style>body{font-family:system-ui,sans-serif;margin:3rem auto;max-width:40rem}</style>\n"
        f"</head>\n<body>\n<h1>Waking up {name}</h1>\n"
        "<p>This preview environment was asleep to save money. runbot is starting it; this page"
        " reloads by itself every 2 seconds and shows the app once it answers.</p>\n"
        "</body>\n</html>\n"
    )


def make_handler(silo, shared_dir, reporter, stop_token, on_stop):
    class Handler(BaseHTTPRequestHandler):
        server_version = "runbot-ingress/1"
        protocol_version = "HTTP/1.0"  # one request per connection: no framing to get wrong
        timeout = 60  # seconds a client may take per read: a slow one cannot hold a thread

        def log_message(self, fmt, *args):
            log(f"{self.address_string()} {fmt % args}")

        def _simple(self, status, text, headers=()):
            raw = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Cache-Control", "no-store")
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _control(self):
            if self.path == CONTROL + "healthz":
                self._simple(200, json.dumps({"silo": silo, "pid": os.getpid()}))
            elif self.path == CONTROL + "stop" and self.command == "POST" and stop_token:
                given = self.headers.get("X-Runbot-Stop", "")
                if hmac.compare_digest(given.encode(), stop_token.encode()):
                    self._simple(202, "stopping\n")
                    on_stop()
                else:
                    self._simple(403, "wrong stop token\n")
            else:
                self._simple(404, "not found\n")

        def _target(self):
            """(instance id, route, path to forward, prefix) or None."""
            host = (self.headers.get("Host") or "").split(":", 1)[0].strip().lower()
            label = host.split(".", 1)[0] if "." in host else ""
            route = read_route(shared_dir, label) if label else None
            if route is not None:
                return label, route, self.path, ""
            path, query_sep, query = self.path.partition("?")
            if not path.startswith("/"):
                return None
            first, sep, rest = path[1:].partition("/")
            route = read_route(shared_dir, first)
            if route is None:
                return None
            query = query_sep + query
            if not sep:  # /<id> or /<id>?q: the app's links are relative to /<id>/
                self._simple(308, "moved\n", [("Location", f"/{first}/{query}")])
                return False
            return first, route, f"/{rest}{query}", f"/{first}"

        def _handle(self):
            if self.path.startswith(CONTROL):
                self._control()
                return
            if bad_path(self.path.split("?", 1)[0]):
                self._simple(404, "not found\n")
                return
            found = self._target()
            if found is False:
                return
            if found is None:
                self._simple(
                    404, "no environment here: the path must start with /<environment id>/\n"
                )
                return
            instance_id, route, path, prefix = found
            reporter.saw(instance_id)
            try:
                body = self._body()
            except ValueError as exc:
                self._simple(400, f"{exc}\n")
                return
            backend = HTTPConnection(
                connect_host(route["host"]), route["port"], timeout=BACKEND_TIMEOUT
            )
            try:
                try:
                    backend.connect()
                except OSError:
                    if route["suspended"]:
                        self._waking(instance_id)
                    else:
                        self._simple(502, f"{instance_id} is not answering; try again shortly\n")
                    return
                backend.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
                for key, value in self._forward_headers(
                    prefix, len(body) if body is not None else None
                ):
                    backend.putheader(key, value)
                backend.endheaders(body)
                resp = backend.getresponse()
                reporter.awake(instance_id)
                self._relay(resp)
            except (OSError, HTTPException) as exc:
                with contextlib.suppress(OSError):
                    self._simple(502, f"{instance_id} failed to answer: {exc.__class__.__name__}\n")
            finally:
                backend.close()

        def _waking(self, instance_id):
            reporter.wake(instance_id)
            raw = waking_page(instance_id).encode("utf-8")
            self.send_response(503)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Retry-After", "2")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _body(self):
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                return self._chunked()
            length = self.headers.get("Content-Length")
            if length is None:
                return None
            if not length.isdigit() or int(length) > MAX_BODY:
                raise ValueError(f"Content-Length must be a number up to {MAX_BODY}")
            return self.rfile.read(int(length))

        def _chunked(self):
            parts, total = [], 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise ValueError("malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers are hop-by-hop here: dropped
                    return b"".join(parts)
                total += size
                if total > MAX_BODY:
                    raise ValueError(f"the body is over {MAX_BODY} bytes")
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)

        def _forward_headers(self, prefix, length):
            named = {
                token.strip().lower()
                for value in self.headers.get_all("Connection", [])
                for token in value.split(",")
            }
            out = []
            for key, value in self.headers.items():
                lower = key.lower()
                if lower in HOP_BY_HOP or lower in named or lower == "content-length":
                    continue
                if lower.startswith("x-forwarded-"):
                    continue  # ours replace whatever the client claimed
                out.append((key, value))
            client = self.client_address[0]
            out += [
                ("X-Forwarded-For", client),
                ("X-Forwarded-Host", self.headers.get("Host") or ""),
                ("X-Forwarded-Proto", "http"),
                ("Connection", "close"),
            ]
            if prefix:
                out.append(("X-Forwarded-Prefix", prefix))
            if length is not None:
                out.append(("Content-Length", str(length)))
            return out

        def _relay(self, resp):
            self.send_response_only(resp.status, resp.reason)
            named = {
                t.strip().lower()
                for v in resp.headers.get_all("Connection", [])
                for t in v.split(",")
            }
            for key, value in resp.getheaders():
                lower = key.lower()
                if lower in HOP_BY_HOP or lower in named:
                    continue
                self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                self.wfile.write(chunk)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    return Handler


def serve(argv):
    parser = argparse.ArgumentParser(prog="ingress.py serve")
    parser.add_argument("--silo", required=True)  # in the argv: `pgrep -f` and the sweep find it
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    try:
        interval = float(os.environ.get("RUNBOT_REPORT_INTERVAL") or "5")
    except ValueError:
        interval = 5.0
    # The token comes on stdin from `start`: never in this long-lived process's environ.
    token = sys.stdin.readline().strip()
    reporter = Reporter(os.environ.get("RUNBOT_API_URL", ""), args.silo, token, max(interval, 0.05))
    if not reporter.enabled:
        log("no runbot_api_url or runbot_silo_token: traffic is not reported, nothing wakes")
    try:
        with open(os.path.join(args.dir, STOP_FILE), encoding="utf-8") as fh:
            stop_token = fh.read().strip()
    except OSError:
        stop_token = ""

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        daemon_threads = True
        allow_reuse_address = True

    stopping = threading.Event()

    def on_stop():
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    handler = make_handler(args.silo, args.dir, reporter, stop_token, on_stop)
    httpd = Server((args.host, args.port), handler)
    threading.Thread(target=reporter.run, args=(stopping,), daemon=True).start()
    log(f"silo {args.silo}: serving on {args.host}:{args.port} (pid {os.getpid()})")
    try:
        httpd.serve_forever()
    finally:
        stopping.set()
        reporter.flush()  # the last batch is not lost on a stop
        httpd.server_close()


# --------------------------------------------------------------------------- lifecycle


def env(name):
    value = os.environ.get(name)
    if not value:
        raise Failure(f"{name} is not set")
    return value


def config():
    port = env("RUNBOT_INGRESS_PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise Failure(f"ingress port {port!r} is out of range")
    return {
        "dir": os.path.abspath(env("RUNBOT_SHARED_DIR")),
        "host": env("RUNBOT_INGRESS_HOST"),
        "port": int(port),
    }


def health(cfg):
    conn = HTTPConnection(connect_host(cfg["host"]), cfg["port"], timeout=1.0)
    try:
        conn.request("GET", CONTROL + "healthz")
        resp = conn.getresponse()
        data = json.loads(resp.read().decode("utf-8")) if resp.status == 200 else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, HTTPException):
        return None
    finally:
        conn.close()


def is_ours(pid, shared_dir):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return False
    return (
        "serve" in argv and "--dir" in argv and argv[argv.index("--dir") + 1 :][:1] == [shared_dir]
    )


def stop(cfg):
    """Ask it to stop with its token (another PID namespace cannot signal it), then by pid."""
    try:
        with open(os.path.join(cfg["dir"], STOP_FILE), encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError:
        token = ""
    if token and health(cfg) is not None:
        conn = HTTPConnection(connect_host(cfg["host"]), cfg["port"], timeout=2)
        with contextlib.suppress(OSError, HTTPException):
            conn.request("POST", CONTROL + "stop", headers={"X-Runbot-Stop": token})
            conn.getresponse().read()
        conn.close()
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(cfg["dir"], PID_FILE), encoding="utf-8") as fh:
            pid = int(fh.read().strip())
        if is_ours(pid, cfg["dir"]):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT
    while health(cfg) is not None:
        if time.monotonic() > deadline:
            raise Failure(
                f"the ingress on {cfg['host']}:{cfg['port']} still answers after stopping"
            )
        time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cfg["dir"], PID_FILE))


def cmd_start():
    cfg = config()
    silo = env("RUNBOT_SILO_NAME")
    os.makedirs(cfg["dir"], exist_ok=True)
    stop_recorded(cfg["dir"])  # a moved port: the old one first
    stop(cfg)
    write_json(os.path.join(cfg["dir"], STATE_FILE), {"host": cfg["host"], "port": cfg["port"]})
    token_path = os.path.join(cfg["dir"], STOP_FILE)
    fd = os.open(token_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(24))
    os.replace(token_path + ".tmp", token_path)
    argv = [
        sys.executable, os.path.abspath(__file__), "serve", "--silo", silo,
        "--dir", cfg["dir"], "--host", cfg["host"], "--port", str(cfg["port"]),
    ]  # fmt: skip
    child_env = {
        k: v for k, v in os.environ.items() if not k.startswith("TF_") and k != "RUNBOT_SILO_TOKEN"
    }
    with open(os.path.join(cfg["dir"], LOG_FILE), "ab") as out:
        # Detached, as the page server: local-exec waits for every holder of its pipes.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cfg["dir"],
            env=child_env,
            start_new_session=True,
            close_fds=True,
        )
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write((os.environ.get("RUNBOT_SILO_TOKEN", "") + "\n").encode())
    proc.stdin.close()
    with open(os.path.join(cfg["dir"], PID_FILE), "w", encoding="utf-8") as fh:
        fh.write(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(
                f"the ingress exited with code {proc.returncode}; see {LOG_FILE}:\n{tail(cfg)}"
            )
        info = health(cfg)
        if info and info.get("pid") == proc.pid:
            print(f"runbot: ingress of silo {silo} on {cfg['host']}:{cfg['port']} (pid {proc.pid})")
            return
        time.sleep(0.05)
    proc.terminate()
    raise Failure(
        f"the ingress did not answer on {cfg['host']}:{cfg['port']} within {START_TIMEOUT:.0f}s:\n{tail(cfg)}"
    )


def tail(cfg, lines=20):
    try:
        with open(os.path.join(cfg["dir"], LOG_FILE), encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip() or "(empty)"
    except OSError as exc:
        return f"(no log: {exc})"


def write_json(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def stop_recorded(shared_dir):
    """Stop the ingress `ingress.json` names (silo destroy, a port change); quiet if none."""
    try:
        with open(os.path.join(shared_dir, STATE_FILE), encoding="utf-8") as fh:
            data = json.load(fh)
        cfg = {
            "dir": os.path.abspath(shared_dir),
            "host": str(data["host"]),
            "port": int(data["port"]),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return
    stop(cfg)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(shared_dir, STATE_FILE))


def cmd_stop():
    cfg = config()
    stop(cfg)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(cfg["dir"], STATE_FILE))
    print(f"runbot: ingress on {cfg['host']}:{cfg['port']} stopped")


def main(argv):
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    commands = {"start": cmd_start, "stop": cmd_stop}
    if len(argv) != 1 or argv[0] not in commands:
        sys.stderr.write("usage: ingress.py serve|start|stop\n")
        return 2
    try:
        commands[argv[0]]()
    except Failure as exc:
        sys.stderr.write(f"runbot: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
