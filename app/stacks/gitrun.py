"""Runs git for one stack URL inside the operator's limits: transports, environment, size, time.

Every git invocation gets the same fence, whatever the URL says:
- only the https and ssh transports (`protocol.allow=never` plus an allow for those two), and no
  HTTP redirects (`http.followRedirects=false`), so a server cannot send git somewhere else;
- a low-speed abort (`http.lowSpeedLimit`/`http.lowSpeedTime`) and an overall timeout;
- a size cap: the directory git writes into is watched while git runs, and git (its whole process
  group, so `git-remote-https` and `index-pack` too) is killed when what it added passes the cap;
- an allow-listed environment: PATH, HOME pointed at a scratch directory, the locale, proxy
  settings, the operator's CA bundle and SSH command, and the caller's own credentials. Nothing
  else of runbot's environment (no RUNBOT_*, no cloud credentials) reaches git or its helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from app.stacks.model import StackError

__all__ = ["GitLimits", "GitRunner", "GitTooLarge", "tree_size"]

#: Variables passed to git from runbot's own environment (when set); everything else is dropped.
PASSED_THROUGH = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)
_POLL_SECONDS = 0.1


class GitTooLarge(StackError):
    """Git was stopped because what it wrote passed RUNBOT_GIT_MAX_BYTES."""


@dataclass(frozen=True)
class GitLimits:
    """The operator's limits for git stacks (the RUNBOT_GIT_* settings)."""

    #: Largest a fetch (the pack git adds to the mirror) or an exported checkout may grow.
    max_bytes: int = 100_000_000
    #: Abort an HTTPS transfer slower than `low_speed_limit` bytes/s for `low_speed_time` s.
    low_speed_limit: int = 1000
    low_speed_time: int = 30
    #: Longest one git command may run, however fast its transfer.
    timeout: float = 600.0
    #: A CA bundle for a git server with an internal CA (GIT_SSL_CAINFO).
    ca_file: str | None = None
    #: How git starts ssh: the operator's key and known_hosts options go here.
    ssh_command: str = "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15"
    #: Hosts git may contact (lowercase); None lets any host through (tests and tools only).
    allowed_hosts: frozenset[str] | None = frozenset()

    def config_args(self) -> list[str]:
        """`-c` options that fence every git command (visible in `ps`: none is a secret)."""
        settings = {
            "protocol.allow": "never",
            "protocol.https.allow": "always",
            "protocol.ssh.allow": "always",
            "http.followRedirects": "false",
            "http.lowSpeedLimit": str(self.low_speed_limit),
            "http.lowSpeedTime": str(self.low_speed_time),
            "core.hooksPath": os.devnull,
            "credential.helper": "",
            "fetch.recurseSubmodules": "false",
        }
        return [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]


def tree_size(root: Path) -> int:
    """Bytes in the files under `root` (0 if it does not exist); links are not followed."""
    total = 0
    stack = [root]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


class GitRunner:
    """Runs git for one URL with the limits' fence, a prompt-free environment and given
    credentials (`secrets`, e.g. GIT_CONFIG_COUNT/KEY/VALUE for an `http.extraHeader`)."""

    def __init__(
        self,
        limits: GitLimits,
        home: Path,
        secrets: Mapping[str, str] | None,
    ) -> None:
        self.limits = limits
        home.mkdir(parents=True, exist_ok=True)
        ambient = {key: os.environ[key] for key in PASSED_THROUGH if key in os.environ}
        ambient.setdefault("PATH", os.defpath)
        self.env: dict[str, str] = {
            **ambient,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_SSH_COMMAND": limits.ssh_command,
        }
        if limits.ca_file:
            self.env["GIT_SSL_CAINFO"] = limits.ca_file
        self.env.update(secrets or {})

    def run(
        self, args: list[str], *, watch: Path | None = None, what: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run `git <fence> <args>`; with `watch`, kill git once that directory grew past the
        cap. Raises StackError on a timeout, an oversize or a missing git, never on git's own
        failure (the caller reads `returncode` and `stderr`)."""
        argv = ["git", *self.limits.config_args(), *args]
        try:
            process = subprocess.Popen(
                argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # its own process group: killed with its helpers
            )
        except FileNotFoundError as exc:
            raise StackError(
                "git is not installed on the runbot host: install git to use git stacks"
            ) from exc
        baseline = tree_size(watch) if watch is not None else 0
        deadline = time.monotonic() + self.limits.timeout
        while True:
            try:
                out, err = process.communicate(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            else:
                # Also after the end: git may write more than the cap between two looks.
                self._check_size(watch, baseline, what)
                return subprocess.CompletedProcess(argv, process.returncode, out, err)
            if time.monotonic() > deadline:
                self._kill(process)
                raise StackError(
                    f"{what or 'git'} took longer than {self.limits.timeout:g}s "
                    "(RUNBOT_GIT_TIMEOUT): check the repository URL and network"
                )
            try:
                self._check_size(watch, baseline, what)
            except GitTooLarge:
                self._kill(process)
                raise

    def _check_size(self, watch: Path | None, baseline: int, what: str) -> None:
        if watch is not None and tree_size(watch) - baseline > self.limits.max_bytes:
            raise GitTooLarge(
                f"{what or 'git'} was stopped: the repository is larger than "
                f"{self.limits.max_bytes} bytes (RUNBOT_GIT_MAX_BYTES); keep stacks in a "
                "smaller repository, or raise the setting"
            )

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
