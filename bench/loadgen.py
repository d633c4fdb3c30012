"""A lean HTTP/1.1 load generator, run as its own process so that nothing else in the bench
process (the fake GitHub answering runbot) competes with it for the GIL.

    python -m bench.loadgen <host> <port> <requests.jsonl> <concurrency> <out.json>

Each line of requests.jsonl is {"body": "<latin-1 str>", "headers": {...}}. Requests are sent
over `concurrency` keep-alive connections; every latency is measured from the first byte written
to the last byte of the response read.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time


def build(host: str, port: int, item: dict) -> bytes:
    body = item["body"].encode("latin-1")
    lines = ["POST /webhooks/github HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in item["headers"].items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def worker(
    host: str,
    port: int,
    queue: list[bytes],
    latencies: list[float],
    statuses: dict[int, int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while queue:
            request = queue.pop()
            started = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def main(host: str, port: int, path: str, concurrency: int) -> dict:
    with open(path, encoding="utf-8") as handle:
        queue = [build(host, port, json.loads(line)) for line in handle]
    queue.reverse()  # pop() from the end sends them in file order
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    await asyncio.gather(
        *(worker(host, port, queue, latencies, statuses) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    return {"latencies": latencies, "elapsed": elapsed, "statuses": statuses}


if __name__ == "__main__":
    host, port, path, concurrency, out = sys.argv[1:6]
    result = asyncio.run(main(host, int(port), path, int(concurrency)))
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
