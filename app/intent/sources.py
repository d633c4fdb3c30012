"""Which silo a PR's environment goes into, and where that silo's stack comes from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from app.db.models import PullRequest, Silo
from app.db.session import Database
from app.github.config import GitStack, LocalStack, RepoConfig
from app.github.gateway import Gateway
from app.lifecycle.service import Lifecycle, LifecycleError
from app.lifecycle.states import Desired, Status
from app.stacks.catalog import StackError, StackSource, validate_name


def slug(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return (cleaned or "stack")[:63]


class SiloChooser:
    """The config's silo, created on first use from the stack the config names."""

    def __init__(
        self, db: Database, lifecycle: Lifecycle, gateway: Gateway, data_dir: Path
    ) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.data_dir = data_dir.absolute()

    async def ensure(self, pull: PullRequest, config: RepoConfig) -> str:
        stack_name, source = await self._stack_source(pull, config)
        name = config.silo
        validate_name("silo", name)
        with self.db.session() as session:
            silo = session.get(Silo, name)
        if silo is not None and silo.status != Status.DESTROYED and silo.desired != Desired.ABSENT:
            if silo.stack != stack_name:
                raise LifecycleError(
                    f"silo '{name}' runs stack '{silo.stack}', but .runbot.yml asks for"
                    f" '{stack_name}': choose another `silo:` name"
                )
            return name
        self.lifecycle.create_silo(name, stack_name, {}, source)
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
        files = await self.gateway.list_tree(
            pull.installation_id, pull.repository, stack.path, pull.base_sha or pull.base_ref
        )
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
