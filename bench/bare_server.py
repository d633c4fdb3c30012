"""The baseline of the webhook benchmark: a bare FastAPI endpoint on uvicorn that only
verifies the HMAC signature and parses the JSON body, run the way `runbot serve` runs uvicorn
(same loop and HTTP implementation, access log on).

    python -m bench.bare_server <port>      (secret in BENCH_WEBHOOK_SECRET)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

SECRET = os.environ["BENCH_WEBHOOK_SECRET"].encode()
app = FastAPI()


@app.post("/webhooks/github", status_code=202)
async def receive(request: Request) -> JSONResponse:
    body = await request.body()
    expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-hub-signature-256", "")):
        return JSONResponse({"error": "bad signature"}, status_code=401)
    payload = json.loads(body)
    return JSONResponse(
        {
            "status": "accepted",
            "delivery": request.headers.get("x-github-delivery"),
            "action": payload.get("action"),
        },
        status_code=202,
    )


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
