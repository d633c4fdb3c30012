"""Engine child processes, started without fork()ing runbot.

uvicorn runs on uvloop, whose subprocess support starts children with fork(): the kernel copies
runbot's page tables, ~6 ms for a 100 MB process, synchronously on the event loop, and a create
starts the engine twice. `subprocess.Popen` uses vfork()/posix_spawn (~0.2 ms). The child's
pipes are then read by the event loop, and its exit is watched through a pidfd, so no thread
waits on it; where pidfds are missing (Linux < 5.3, other systems) a thread does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Sequence
from typing import IO

__all__ = ["EngineProcess", "start"]

STREAM_LIMIT = 1 << 20  # longest line read from the engine (a long plan line, base64 blobs)


class EngineProcess:
    """What the runner needs of a child: its output streams, signals, and its exit."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader | None,
        exited: asyncio.Future[int],
    ) -> None:
        self._popen = popen
        self.stdout = stdout
        self.stderr = stderr
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def send_signal(self, signum: int) -> None:
        """Signal the child unless it has been reaped (its pid may be reused by then)."""
        if not self._exited.done():
            self._popen.send_signal(signum)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def communicate(self) -> tuple[bytes, bytes]:
        """All of stdout and stderr (empty when merged into stdout), then the exit."""

        async def read(stream: asyncio.StreamReader | None) -> bytes:
            return await stream.read() if stream is not None else b""

        out, err = await asyncio.gather(read(self.stdout), read(self.stderr))
        await self.wait()
        return out, err


async def _reader(loop: asyncio.AbstractEventLoop, pipe: IO[bytes]) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
    return reader


def _watch_exit(
    loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]
) -> asyncio.Future[int]:
    exited: asyncio.Future[int] = loop.create_future()

    def reaped(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        waiter = loop.run_in_executor(None, popen.wait)
        waiter.add_done_callback(lambda done: reaped(done.result()))
        return exited

    def readable() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        reaped(popen.wait())  # it has exited: this only collects the status

    loop.add_reader(pidfd, readable)
    return exited


async def start(
    argv: Sequence[str], *, env: dict[str, str], merge: bool, new_session: bool = True
) -> EngineProcess:
    """Start `argv` with stdin closed; stderr merged into stdout when `merge`.

    `new_session` puts the child in its own process group: our signals reach it only when
    we send them, and a SIGKILL can reach its whole group. Raises FileNotFoundError when the
    program does not exist.
    """
    loop = asyncio.get_running_loop()
    popen = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        env=env,
        start_new_session=new_session,
    )
    try:
        assert popen.stdout is not None
        stdout = await _reader(loop, popen.stdout)
        stderr = None
        if not merge:
            assert popen.stderr is not None
            stderr = await _reader(loop, popen.stderr)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        popen.wait()
        raise
    return EngineProcess(popen, stdout, stderr, _watch_exit(loop, popen))
