"""The stack catalog: read silo/instance templates and check runbot's contract with them.

Everything a template author can get wrong is reported here, before any
Terraform run, as a StackError that names `file:line` and says what to change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.stacks import hcl
from app.stacks.model import (
    RUNBOT_INSTANCE_VARIABLES,
    RUNBOT_SILO_VARIABLES,
    Output,
    PoolSpec,
    Stack,
    StackError,
    StackSource,
    Template,
    Variable,
    validate_name,
)
from app.ttl.durations import DurationError, parse_duration

__all__ = [
    "Catalog",
    "Output",
    "Stack",
    "StackError",
    "StackSource",
    "Template",
    "Variable",
    "load_stack",
    "load_template",
    "validate_name",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TYPE_KEYWORDS = frozenset(
    {"any", "string", "number", "bool", "list", "map", "set", "object", "tuple"}
)
_TYPE_HEAD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)")


#: A stack's manifest, next to its silo/ and instance/ directories.
MANIFEST = "runbot.yml"
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def load_template(path: Path) -> Template:
    """Read the variables, outputs and backend of the root module in `path`.

    Files are read the way Terraform reads them: `*.tf` in name order, ignoring
    editor/hidden files, with `override.tf` / `*_override.tf` merged last.
    """
    path = Path(path)
    if not path.is_dir():
        raise StackError(f"template directory {path} does not exist: create it with the *.tf files")
    files = sorted(
        child for child in path.iterdir() if child.suffix == ".tf" and not _ignored(child.name)
    )
    files = [child for child in files if child.is_file()]
    if not files:
        raise StackError(
            f"{path} has no .tf files: a template directory must be a Terraform root module"
        )
    module = _Module(path)
    for file in sorted(files, key=lambda f: (_is_override(f.name), f.name)):
        module.add(file.name, hcl.parse(_read(file), str(file)), _is_override(file.name))
    return module.template()


def load_stack(name: str, root: Path, source: StackSource | None = None) -> Stack:
    """Load a stack directory (`root/silo`, `root/instance`) and check runbot's contract."""
    validate_name("stack", name)
    root = Path(root)
    if not root.is_dir():
        raise StackError(f"stack {name!r}: {root} is not a directory")
    missing = [part for part in ("silo", "instance") if not (root / part).is_dir()]
    if missing:
        listed = " and ".join(f"{part}/" for part in missing)
        raise StackError(
            f"stack {name!r} at {root} has no {listed}: a stack needs both silo/ and "
            "instance/ directories, each a Terraform root module"
        )
    silo = load_template(root / "silo")
    instance = load_template(root / "instance")
    _check_runbot_names(silo, RUNBOT_SILO_VARIABLES, "silo")
    _check_runbot_names(instance, RUNBOT_INSTANCE_VARIABLES, "instance")
    url = instance.outputs.get("url")
    if url is None:
        raise StackError(
            f"stack {name!r}: the instance template {instance.path} declares no output "
            '"url": add `output "url" { value = ... }` so runbot can link the environment '
            "from the pull request"
        )
    if url.sensitive:
        raise StackError(
            f'stack {name!r}: output "url" at {instance.path / url.file}:{url.line} is marked '
            "sensitive, but runbot posts it on the pull request: remove `sensitive = true` "
            "and keep secrets out of the URL"
        )
    return Stack(
        name,
        root,
        silo,
        instance,
        source or StackSource(kind="catalog"),
        repo_vars=load_manifest(name, root / MANIFEST),
        pool=load_pool_spec(name, root / MANIFEST),
    )


def load_manifest(name: str, path: Path) -> frozenset[str] | None:
    """The stack's `runbot.yml`: which instance variables repositories may set.

    ```yaml
    repo_vars: [greeting]
    ```
    No file: None (every declared variable runbot and the silo leave). A malformed file is
    an error that names it, so a typo never opens more than the operator meant."""
    if not path.is_file():
        return None
    try:
        document = yaml.safe_load(_read(path)) or {}
    except yaml.YAMLError as exc:
        raise StackError(f"stack {name!r}: {path} is not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) - {"repo_vars", "pool"}:
        raise StackError(
            f"stack {name!r}: {path} may only hold `repo_vars: [names]` (the instance "
            "variables repositories may set) and `pool: {size: N, max_age: 24h}`"
        )
    names = document.get("repo_vars", [])
    if not isinstance(names, list) or not all(
        isinstance(item, str) and _VAR_NAME.fullmatch(item) for item in names
    ):
        raise StackError(
            f"stack {name!r}: `repo_vars` in {path} must be a list of variable names, "
            "like [greeting, image_tag]"
        )
    return frozenset(names)


_POOL_MAX = 50


def load_pool_spec(name: str, path: Path) -> PoolSpec | None:
    """The manifest's `pool: {size: 2, max_age: 12h}` (or `pool: 2`); None without one."""
    if not path.is_file():
        return None
    try:
        document = yaml.safe_load(_read(path)) or {}
    except yaml.YAMLError:
        return None  # `load_manifest` reports it
    raw = document.get("pool") if isinstance(document, dict) else None
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raw = {"size": raw}
    size, age = raw.get("size"), raw.get("max_age", "24h")
    wrong = set(raw) - {"size", "max_age"}
    if wrong or isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _POOL_MAX:
        raise StackError(
            f"stack {name!r}: `pool` in {path} must be `{{size: N, max_age: 24h}}` with N a"
            f" whole number from 0 to {_POOL_MAX}"
        )
    try:
        max_age = parse_duration(str(age))
    except DurationError as exc:
        raise StackError(f"stack {name!r}: `pool.max_age` in {path}: {exc}") from None
    return PoolSpec(size=size, max_age_seconds=int(max_age.total_seconds()))


def _template_entries(root: Path) -> list[tuple[str, os.DirEntry[str]]]:
    """Every entry of a stack's two templates, by part then name (a part unreadable: none)."""
    found: list[tuple[str, os.DirEntry[str]]] = []
    for part in ("silo", "instance"):
        with contextlib.suppress(OSError):
            found += [(part, e) for e in sorted(os.scandir(root / part), key=lambda e: e.name)]
    return found


def template_fingerprint(root: Path) -> tuple[Any, ...]:
    """Name, size and mtime of every file of a stack's two templates."""
    found: list[Any] = []
    for part, entry in _template_entries(root):
        with contextlib.suppress(OSError):
            info = entry.stat()
            found.append((part, entry.name, info.st_size, info.st_mtime_ns))
    return tuple(found)


def template_digest(root: Path) -> str:
    """A hash of the contents of a stack's two templates: what its instances are made of,
    unchanged by a fresh checkout that rewrites the same files."""
    digest = hashlib.sha256()
    for part, entry in _template_entries(root):
        if entry.is_file():
            with contextlib.suppress(OSError):
                content = Path(entry.path).read_bytes()
                digest.update(f"{part}/{entry.name}:{len(content)}:".encode())
                digest.update(content)
    return digest.hexdigest()


class Catalog:
    """The operator's templates directory: one sub-directory per stack."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir)
        # Parsing a stack's HCL costs ~25 ms, and creating an environment needs the stack
        # twice on its critical path (the input check, then the run): parses are kept while
        # none of the template files changed (name, size, mtime), so edits apply at once.
        self._parsed: dict[str, tuple[tuple[Any, ...], Stack]] = {}
        self._digests: dict[str, tuple[tuple[Any, ...], str]] = {}

    def names(self) -> list[str]:
        """Sorted names of the stacks present (directories with silo/ or instance/)."""
        return [name for name in self._candidates() if _is_valid_name(name)]

    def get(self, name: str) -> Stack:
        """Load one stack by name; the name is checked before it touches the filesystem."""
        validate_name("stack", name)
        names = self.names()
        if name not in names:
            available = ", ".join(names) if names else "no stacks"
            raise StackError(
                f"unknown stack {name!r}: the catalog at {self.templates_dir} has: {available}"
            )
        return self._load(name)[0]

    def get_with_digest(self, name: str) -> tuple[Stack, str]:
        """A stack and `template_digest` of its templates, re-read only when a file's name,
        size or mtime changed."""
        stack, fingerprint = self._load(name)
        cached = self._digests.get(name)
        if cached is None or cached[0] != fingerprint:
            cached = (fingerprint, template_digest(self.templates_dir / name))
            self._digests[name] = cached
        return stack, cached[1]

    def _load(self, name: str) -> tuple[Stack, tuple[Any, ...]]:
        root = self.templates_dir / name
        fingerprint = template_fingerprint(root)
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == fingerprint:
            return cached[1], fingerprint
        stack = load_stack(name, root, StackSource(kind="catalog"))
        self._parsed[name] = (fingerprint, stack)
        return stack, fingerprint

    def check_all(self) -> dict[str, StackError | None]:
        """Load every stack for `runbot doctor`: None when fine, else the problem.

        Directories that look like stacks but have a disallowed name are
        reported too, since `get` would refuse them.
        """
        results: dict[str, StackError | None] = {}
        for name in self._candidates():
            try:
                load_stack(name, self.templates_dir / name, StackSource(kind="catalog"))
            except StackError as exc:
                results[name] = exc
            else:
                results[name] = None
        return results

    def _candidates(self) -> list[str]:
        if not self.templates_dir.is_dir():
            raise StackError(
                f"the templates directory {self.templates_dir} does not exist: create it, "
                "with one sub-directory per stack holding silo/ and instance/"
            )
        return sorted(
            child.name
            for child in self.templates_dir.iterdir()
            if child.is_dir()
            and not child.name.startswith(".")
            and ((child / "silo").is_dir() or (child / "instance").is_dir())
        )


@dataclass
class _Declaration:
    """A variable or output block plus its arguments, merged across override files."""

    name: str
    file: str
    line: int
    location: str
    attributes: dict[str, hcl.Attribute] = field(default_factory=dict)


class _Module:
    """Accumulates the blocks of one module's files, enforcing Terraform's uniqueness rules."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.variables: dict[str, _Declaration] = {}
        self.outputs: dict[str, _Declaration] = {}
        self.backend: str | None = None
        self.backend_location: str | None = None

    def add(self, file: str, blocks: list[hcl.Block], override: bool) -> None:
        for block in blocks:
            location = f"{self.path / file}:{block.line}"
            if block.type == "variable":
                self._declare(self.variables, "variable", block, file, location, override)
            elif block.type == "output":
                self._declare(self.outputs, "output", block, file, location, override)
            elif block.type == "terraform":
                self._terraform(block, override)

    def _declare(
        self,
        table: dict[str, _Declaration],
        kind: str,
        block: hcl.Block,
        file: str,
        location: str,
        override: bool,
    ) -> None:
        if len(block.labels) != 1 or not _IDENTIFIER.fullmatch(block.labels[0]):
            raise StackError(
                f"{location}: a {kind} block needs exactly one label, its name "
                f'(letters, digits, "_" and "-"), e.g. {kind} "name" {{ ... }}'
            )
        name = block.labels[0]
        existing = table.get(name)
        if override:
            if existing is None:
                raise StackError(
                    f"{location}: {kind} {name!r} in an override file has no original "
                    f"declaration to override: declare it in a non-override .tf file first"
                )
            existing.attributes.update(block.attributes)
            return
        if existing is not None:
            raise StackError(
                f"{location}: {kind} {name!r} is declared twice (first at "
                f"{existing.location}): remove one"
            )
        table[name] = _Declaration(name, file, block.line, location, dict(block.attributes))

    def _terraform(self, block: hcl.Block, override: bool) -> None:
        for nested in block.blocks:
            if nested.type not in ("backend", "cloud"):
                continue
            nested_location = f"{nested.file}:{nested.line}"
            if nested.type == "backend":
                if len(nested.labels) != 1:
                    raise StackError(
                        f"{nested_location}: a backend block needs one label, its type, "
                        'e.g. backend "s3" {}'
                    )
                backend = nested.labels[0]
            else:
                backend = "cloud"
            if self.backend is not None and not override:
                raise StackError(
                    f"{nested_location}: a second backend is declared (first at "
                    f"{self.backend_location}): a module has at most one backend or cloud block"
                )
            self.backend = backend
            self.backend_location = nested_location

    def template(self) -> Template:
        variables = {name: self._variable(d) for name, d in sorted(self.variables.items())}
        outputs = {name: self._output(d) for name, d in sorted(self.outputs.items())}
        return Template(self.path, variables, outputs, self.backend)

    def _variable(self, declaration: _Declaration) -> Variable:
        attributes = declaration.attributes
        default_attribute = attributes.get("default")
        default = None
        if default_attribute is not None:
            try:
                default = hcl.constant_value(default_attribute.expression)
            except hcl.NotConstant:
                default = "${" + hcl.expression_text(default_attribute.expression) + "}"
        return Variable(
            name=declaration.name,
            type=self._type(declaration, attributes.get("type")),
            default=default,
            required=default_attribute is None,
            description=self._text(attributes.get("description")),
            sensitive=self._flag(declaration, attributes.get("sensitive")),
            file=declaration.file,
            line=declaration.line,
        )

    def _output(self, declaration: _Declaration) -> Output:
        attributes = declaration.attributes
        return Output(
            name=declaration.name,
            description=self._text(attributes.get("description")),
            sensitive=self._flag(declaration, attributes.get("sensitive")),
            file=declaration.file,
            line=declaration.line,
        )

    def _type(self, declaration: _Declaration, attribute: hcl.Attribute | None) -> str:
        if attribute is None:
            return "any"
        location = f"{attribute.file}:{attribute.line}"
        try:
            quoted = hcl.constant_value(attribute.expression)
        except hcl.NotConstant:
            quoted = None
        if isinstance(quoted, str):
            raise StackError(
                f"{location}: variable {declaration.name!r} has a quoted type "
                f'"{quoted}", which current Terraform/OpenTofu reject: write type = {quoted} '
                "without quotes"
            )
        text = hcl.expression_text(attribute.expression)
        head = _TYPE_HEAD.match(text)
        if head is None or head.group(1) not in _TYPE_KEYWORDS:
            raise StackError(
                f"{location}: variable {declaration.name!r} has type {text!r}, which is not a "
                "Terraform type: use string, number, bool, list(...), set(...), map(...), "
                "object({...}), tuple([...]) or any"
            )
        return text

    @staticmethod
    def _text(attribute: hcl.Attribute | None) -> str:
        if attribute is None:
            return ""
        try:
            value = hcl.constant_value(attribute.expression)
        except hcl.NotConstant:
            return hcl.expression_text(attribute.expression)
        return value if isinstance(value, str) else hcl.expression_text(attribute.expression)

    @staticmethod
    def _flag(declaration: _Declaration, attribute: hcl.Attribute | None) -> bool:
        if attribute is None:
            return False
        try:
            value = hcl.constant_value(attribute.expression)
        except hcl.NotConstant:
            value = None
        if not isinstance(value, bool):
            raise StackError(
                f"{attribute.file}:{attribute.line}: `sensitive` of {declaration.name!r} must be "
                "true or false (Terraform does not evaluate expressions here)"
            )
        return value


def _check_runbot_names(template: Template, provided: frozenset[str], kind: str) -> None:
    """Refuse `runbot_*` variables runbot does not provide: almost always a typo."""
    for name, variable in sorted(template.variables.items()):
        if name.startswith("runbot_") and name not in provided:
            raise StackError(
                f"{template.path / variable.file}:{variable.line}: the {kind} variable "
                f"{name!r} uses the runbot_ prefix, but runbot provides only "
                f"{', '.join(sorted(provided))} to {kind} templates: fix the name or drop "
                "the prefix"
            )


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StackError(f"{file}: is not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc
    except OSError as exc:
        raise StackError(f"{file}: cannot be read ({exc.strerror})") from exc


def _ignored(name: str) -> bool:
    """Terraform skips hidden files and editor backups/autosaves."""
    return (
        name.startswith(".") or name.endswith("~") or (name.startswith("#") and name.endswith("#"))
    )


def _is_override(name: str) -> bool:
    return name == "override.tf" or name.endswith("_override.tf")


def _is_valid_name(name: str) -> bool:
    try:
        validate_name("stack", name)
    except StackError:
        return False
    return True
