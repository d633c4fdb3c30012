"""Engine child processes (app.engine.process) on both event loops runbot runs on.

`runbot serve` runs on uvloop (uvicorn's default), the CLI and the tests on asyncio's own loop;
children are real processes here, small Python scripts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from app.engine.process import start

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_lines_arrive_in_order_and_the_exit_code_is_kept(run: Any) -> None:
    async def main() -> tuple[list[str], int | None, int]:
        proc = await start(
            python(
                "import sys\nfor i in range(3): print(f'line {i}', flush=True)\n"
                "print('oops', file=sys.stderr)\nsys.exit(3)"
            ),
            env=dict(os.environ),
            merge=True,
        )
        lines = []
        while raw := await proc.stdout.readline():
            lines.append(raw.decode().rstrip("\n"))
        code = await proc.wait()
        return lines, proc.returncode, code

    lines, returncode, code = run(main())
    assert lines == ["line 0", "line 1", "line 2", "oops"]  # stderr merged, in order
    assert returncode == code == 3


def test_unmerged_stderr_is_kept_apart(run: Any) -> None:
    async def main() -> tuple[bytes, bytes, int | None]:
        proc = await start(
            python("import sys\nprint('{\"a\": 1}')\nprint('secret-free error', file=sys.stderr)"),
            env=dict(os.environ),
            merge=False,
        )
        out, err = await proc.communicate()
        return out, err, proc.returncode

    out, err, code = run(main())
    assert (out.strip(), err.strip(), code) == (b'{"a": 1}', b"secret-free error", 0)


def test_sigint_reaches_the_child_which_can_clean_up(run: Any) -> None:
    async def main() -> tuple[list[str], int]:
        proc = await start(
            python(
                "import signal, sys, time\n"
                "def stop(*_):\n    print('releasing lock', flush=True); sys.exit(130)\n"
                "signal.signal(signal.SIGINT, stop)\nprint('ready', flush=True)\ntime.sleep(60)"
            ),
            env=dict(os.environ),
            merge=True,
        )
        assert await proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
        rest = (await proc.stdout.read()).decode().split()
        proc.send_signal(signal.SIGKILL)  # after the exit: a no-op, never another process
        return rest, code

    rest, code = run(main())
    assert (rest, code) == (["releasing", "lock"], 130)


def test_a_missing_program_raises_file_not_found(run: Any) -> None:
    async def main() -> None:
        await start(["/nonexistent/tofu", "version"], env=dict(os.environ), merge=True)

    with pytest.raises(FileNotFoundError):
        run(main())


def test_many_children_are_all_reaped(run: Any) -> None:
    async def main() -> tuple[list[int], list[int]]:
        procs = [
            await start(python(f"import sys; sys.exit({i % 5})"), env=dict(os.environ), merge=True)
            for i in range(12)
        ]
        return list(await asyncio.gather(*(p.wait() for p in procs))), [p.pid for p in procs]

    codes, pids = run(main())
    assert codes == [i % 5 for i in range(12)]
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []  # no zombies left
