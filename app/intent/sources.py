"""Which silo a PR's environment goes into, and where that silo's stack comes from.

A silo is known by where its stack comes from (`source_key`): the catalog's stack name, the
repository and path of a repository stack, or a git URL, ref and path. Two repositories whose
own stacks share a folder name therefore never share a silo, and a configuration that names
a silo built from another source is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from sqlmodel import func, select

from app.db.models import PullRequest, Silo
from app.db.session import Database
from app.github.config import GitStack, LocalStack, RepoConfig, default_silo
from app.github.gateway import Gateway
from app.intent.bounds import SiloFacts
from app.lifecycle.service import Lifecycle, LifecycleError
from app.lifecycle.states import Desired, Status
from app.policy.checks import code
from app.stacks.catalog import StackError, StackSource, validate_name


def slug(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return (cleaned or "stack")[:63]


def source_key(repository: str, config: RepoConfig) -> str:
    """Where the configuration's stack comes from, as silos are keyed."""
    stack = config.stack
    if isinstance(stack, GitStack):
        return f"git:{stack.git}#{stack.ref or ''}:{stack.path}"
    if isinstance(stack, LocalStack):
        return f"repo:{repository.lower()}:{stack.path.strip('/')}"
    return f"catalog:{stack}"


def describe_source(key: str) -> str:
    """A silo's source for a PR comment (never a host path)."""
    kind, _, rest = key.partition(":")
    if kind == "catalog":
        return f"the catalog stack {code(rest)}"
    if kind == "repo":
        repository, _, path = rest.partition(":")
        return f"the stack {code(path)} of the repository {code(repository)}"
    if kind == "git":
        return f"the git stack {code(rest)}"
    return "a source runbot no longer knows (an operator can recreate the silo)"


def silo_name(repository: str, config: RepoConfig) -> str:
    """The silo `.runbot.yml` names; a repository stack's own silo is named after the
    repository as well as the folder, since it belongs to that repository."""
    stack = config.stack
    if isinstance(stack, LocalStack) and config.silo == default_silo(stack):
        folder = stack.path.strip("/").rsplit("/", 1)[-1] or "stack"
        name = re.sub(r"[^a-z0-9_-]+", "-", f"{repository}-{folder}".lower()).strip("-_")
        if len(name) > 63:
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            name = f"{name[:54].rstrip('-_')}-{digest}"
        return name
    return config.silo


class SiloChooser:
    """The config's silo, created on first use from the stack the config names."""

    def __init__(
        self, db: Database, lifecycle: Lifecycle, gateway: Gateway, data_dir: Path
    ) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.data_dir = data_dir.absolute()

    def facts(self, pull: PullRequest, config: RepoConfig) -> SiloFacts:
        """What the policy checks need to know of the silo this configuration would use."""
        name = silo_name(pull.repository, config)
        key = source_key(pull.repository, config)
        with self.db.session() as session:
            silo = session.get(Silo, name)
            owned = session.exec(
                select(func.count())
                .select_from(Silo)
                .where(
                    Silo.owner == pull.repository,
                    Silo.name != name,
                    Silo.status != Status.DESTROYED,
                )
            ).one()
        live = silo is not None and silo.status != Status.DESTROYED
        conflict = None
        if silo is not None and live and silo.source_key != key:
            conflict = describe_source(silo.source_key)
        return SiloFacts(name=name, creates=not live, owned=int(owned), conflict=conflict)

    def variables(self, config: RepoConfig) -> tuple[frozenset[str] | None, frozenset[str]]:
        """What a repository may set and what is decided for it, where known before a fetch
        (a catalog stack); a git or repository stack is checked when its code is loaded."""
        if not isinstance(config.stack, str):
            return None, frozenset()
        try:
            stack = self.lifecycle.catalog.get(config.stack)
        except StackError:
            return None, frozenset()  # reported when the silo is created
        return stack.repo_vars, stack.provided_names()

    async def ensure(self, pull: PullRequest, config: RepoConfig) -> str:
        stack_name, source = await self._stack_source(pull, config)
        name = silo_name(pull.repository, config)
        key = source_key(pull.repository, config)
        validate_name("silo", name)
        with self.db.session() as session:
            silo = session.get(Silo, name)
        if silo is not None and silo.status != Status.DESTROYED and silo.desired != Desired.ABSENT:
            if silo.source_key != key:
                raise LifecycleError(
                    f"silo '{name}' is built from {describe_source(silo.source_key)}, not from"
                    " the stack .runbot.yml names: choose another `silo:` name"
                )
            return name
        self.lifecycle.create_silo(
            name, stack_name, {}, source, source_key=key, owner=pull.repository
        )
        return name

    async def _stack_source(
        self, pull: PullRequest, config: RepoConfig
    ) -> tuple[str, StackSource | None]:
        stack = config.stack
        if isinstance(stack, str):
            return stack, None
        if isinstance(stack, GitStack):
            name = validate_name("stack", slug(Path(stack.path).name or "stack"))
            return name, StackSource(
                kind="git", url=stack.git, ref=stack.ref or "", path=stack.path
            )
        assert isinstance(stack, LocalStack)
        # The repository's own templates, from the default branch at the commit whose
        # `.runbot.yml` asked for them: never from the PR's base or head.
        ref = pull.config_sha or pull.default_branch or pull.base_ref
        files = await self.gateway.list_tree(pull.installation_id, pull.repository, stack.path, ref)
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        root = self.data_dir / "repo-stacks" / slug(pull.repository) / digest
        if not root.exists():
            staging = root.with_name(root.name + ".tmp")
            for relative, content in files.items():
                target = (staging / relative).resolve()
                if not str(target).startswith(str(staging.resolve())):
                    raise StackError(f"stack file '{relative}' escapes the stack directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            staging.rename(root)
        name = validate_name("stack", slug(Path(stack.path).name or "stack"))
        return name, StackSource(kind="repo", path=stack.path, commit=digest, url=str(root))
