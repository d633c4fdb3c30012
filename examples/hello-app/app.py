"""A tiny web app for runbot's local stack: shows message.txt on $HOST:$PORT.

Standard library only. message.txt is read on every request.
"""

import html
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MESSAGE = Path(__file__).with_name("message.txt")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/":
            self.send_error(404)
            return
        text = MESSAGE.read_text(encoding="utf-8").strip()
        body = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>hello-app</title></head>\n<body><h1>{html.escape(text)}</h1></body></html>\n"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"hello-app: serving http://{host}:{port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
