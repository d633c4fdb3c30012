"""Regenerate the small vendored extracts of GitHub's API descriptions.

The fake GitHub validates every request and response against GitHub's own
OpenAPI description, but the full description is ~13 MB (73 MB dereferenced)
and must not be committed.  This script is run *by hand* whenever we start
using a new endpoint or webhook, and writes only what runbot needs:

* ``tests/fakegithub/vendor/rest-openapi-extract.json``: the REST operations in
  :data:`OPERATIONS` (parameters, request-body schema, every response schema,
  one example per success response) plus the ``components/schemas`` they
  reference, transitively; descriptions and schema examples are dropped.
* ``tests/fakegithub/vendor/webhooks-schema-extract.json``: the payload schemas
  of the webhooks in :data:`WEBHOOKS`, with their transitive schemas.
* ``tests/fixtures/webhooks/*.json``: real example payloads for those
  webhooks; per event/action the first example that validates against the
  schema is taken (preferring App deliveries, i.e. ones with ``installation``).
* ``tests/fakegithub/vendor/LICENSE-octokit.md``: MIT licence + provenance.

Usage (network access to the npm registry is enough)::

    mkdir -p /tmp/octo && cd /tmp/octo && npm init -y && \\
        npm install @octokit/openapi @octokit/openapi-webhooks @octokit/webhooks-examples
    cd /work/main && /work/venv/bin/python -m tests.fakegithub.vendor.extract \\
        --node-modules /tmp/octo/node_modules
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

VENDOR_DIR = Path(__file__).resolve().parent
REPO_ROOT = VENDOR_DIR.parents[2]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "webhooks"
REST_EXTRACT = VENDOR_DIR / "rest-openapi-extract.json"
WEBHOOKS_EXTRACT = VENDOR_DIR / "webhooks-schema-extract.json"
LICENSE_FILE = VENDOR_DIR / "LICENSE-octokit.md"

#: (METHOD, path template) -> names of the response examples to keep (per
#: status); by default the first example of every 2xx response is kept.
OPERATIONS: dict[tuple[str, str], dict[str, list[str]]] = {
    ("GET", "/app"): {},
    ("POST", "/app/installations/{installation_id}/access_tokens"): {},
    ("GET", "/installation/repositories"): {},
    ("GET", "/repos/{owner}/{repo}/installation"): {},
    ("GET", "/repos/{owner}/{repo}"): {},
    (
        "GET",
        "/repos/{owner}/{repo}/contents/{path}",
    ): {"200": ["response-if-content-is-a-file", "response-if-content-is-a-directory"]},
    ("GET", "/repos/{owner}/{repo}/tarball/{ref}"): {},
    ("GET", "/repos/{owner}/{repo}/pulls"): {},
    ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"): {},
    ("GET", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): {},
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments"): {},
    ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}"): {},
    ("POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions"): {},
    ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/reactions"): {},
    ("GET", "/repos/{owner}/{repo}/deployments"): {},
    ("POST", "/repos/{owner}/{repo}/deployments"): {},
    ("GET", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): {},
    ("POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses"): {},
    ("DELETE", "/repos/{owner}/{repo}/deployments/{deployment_id}"): {},
    ("DELETE", "/repos/{owner}/{repo}/environments/{environment_name}"): {},
    ("POST", "/repos/{owner}/{repo}/check-runs"): {},
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): {},
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"): {},
    ("GET", "/repos/{owner}/{repo}/collaborators/{username}/permission"): {},
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-suites"): {},
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/status"): {},
    ("GET", "/repos/{owner}/{repo}/git/ref/{ref}"): {},
    ("POST", "/app-manifests/{code}/conversions"): {},
    (
        "GET",
        "/user",
    ): {"200": ["response-with-public-and-private-profile-information"]},
    ("GET", "/user/installations"): {},
    ("GET", "/user/installations/{installation_id}/repositories"): {},
}

#: (event, action or None, fixture variant or None) -> openapi-webhooks key.
WEBHOOKS: dict[tuple[str, str | None], str] = {
    ("pull_request", "opened"): "pull-request-opened",
    ("pull_request", "synchronize"): "pull-request-synchronize",
    ("pull_request", "closed"): "pull-request-closed",
    ("pull_request", "reopened"): "pull-request-reopened",
    ("pull_request", "ready_for_review"): "pull-request-ready-for-review",
    ("pull_request", "converted_to_draft"): "pull-request-converted-to-draft",
    ("pull_request", "labeled"): "pull-request-labeled",
    ("pull_request", "unlabeled"): "pull-request-unlabeled",
    ("issue_comment", "created"): "issue-comment-created",
    ("issue_comment", "edited"): "issue-comment-edited",
    ("installation", "created"): "installation-created",
    ("installation", "deleted"): "installation-deleted",
    ("installation", "suspend"): "installation-suspend",
    ("installation", "unsuspend"): "installation-unsuspend",
    ("installation_repositories", "added"): "installation-repositories-added",
    ("installation_repositories", "removed"): "installation-repositories-removed",
    ("check_suite", "completed"): "check-suite-completed",
    ("status", None): "status",
    ("ping", None): "ping",
}

# Keywords that carry documentation only; dropped to keep the extract small.
_DROP_KEYWORDS = {
    "description",
    "title",
    "example",
    "examples",
    "externalDocs",
    "discriminator",
    "deprecated",
    "readOnly",
    "writeOnly",
    "summary",
}
# Keywords whose value is a mapping of *names* to subschemas (the names must
# not be mistaken for keywords: GitHub objects have a "description" field).
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_SINGLE = {"items", "additionalProperties", "not", "contains", "propertyNames"}


def strip_schema(node: Any) -> Any:
    """Drop documentation keywords from a schema, recursing only into subschemas."""
    if isinstance(node, list):
        return [strip_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYWORDS or key.startswith("x-"):
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: strip_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [strip_schema(sub) for sub in value]
        elif key in _SCHEMA_SINGLE and isinstance(value, dict):
            out[key] = strip_schema(value)
        else:
            out[key] = value
    return out


def _schema_refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _schema_refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _schema_refs(value, found)


def close_over(roots: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """Return the stripped component schemas reachable from *roots*."""
    pending: set[str] = set()
    _schema_refs(roots, pending)
    done: dict[str, Any] = {}
    while pending:
        name = pending.pop()
        if name in done:
            continue
        done[name] = strip_schema(schemas[name])
        more: set[str] = set()
        _schema_refs(done[name], more)
        pending |= more - done.keys()
    return dict(sorted(done.items()))


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (to parameters/responses/examples) once."""
    while "$ref" in node:
        parts = node["$ref"].removeprefix("#/").split("/")
        target: Any = spec
        for part in parts:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def _json_content(content: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if "application/json" in content:
        return "application/json", content["application/json"]
    for ctype, media in content.items():
        if ctype.endswith("json"):
            return ctype, media
    return None


def extract_rest(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the REST extract: operations + transitively referenced schemas."""
    operations: dict[str, Any] = {}
    breaking: dict[str, dict[str, Any]] = {"operations": {}, "schemas": {}}
    for (method, path), wanted_examples in OPERATIONS.items():
        op = spec["paths"][path][method.lower()]
        params = []
        for raw in op.get("parameters", []):
            param = _resolve(spec, raw)
            params.append(
                {
                    "name": param["name"],
                    "in": param["in"],
                    "required": bool(param.get("required", False)),
                    "schema": strip_schema(param.get("schema", {})),
                }
            )
        request_body = None
        if "requestBody" in op:
            body = _resolve(spec, op["requestBody"])
            found = _json_content(body.get("content", {}))
            if found is not None:
                ctype, media = found
                request_body = {
                    "required": bool(body.get("required", False)),
                    "contentType": ctype,
                    "schema": strip_schema(media.get("schema", {})),
                }
        responses: dict[str, Any] = {}
        for status, raw in op["responses"].items():
            resp = _resolve(spec, raw)
            entry: dict[str, Any] = {"schema": None}
            found = _json_content(resp.get("content", {}))
            if found is not None:
                ctype, media = found
                entry["contentType"] = ctype
                entry["schema"] = strip_schema(media.get("schema", {}))
                if status.startswith("2") and media.get("examples"):
                    names = wanted_examples.get(status) or [next(iter(media["examples"]))]
                    entry["examples"] = {
                        name: _resolve(spec, media["examples"][name])["value"] for name in names
                    }
            if "Link" in resp.get("headers", {}):
                entry["paginated"] = True
            responses[status] = entry
        operations[f"{method} {path}"] = {
            "operationId": op["operationId"],
            "parameters": params,
            "requestBody": request_body,
            "responses": responses,
        }
        changes = _breaking_changes(op)
        if changes:
            breaking["operations"][f"{method} {path}"] = changes
    schemas = close_over(operations, spec["components"]["schemas"])
    for name in schemas:
        changes = _breaking_changes(spec["components"]["schemas"][name])
        if changes:
            breaking["schemas"][name] = changes
    return {
        "openapi": spec["openapi"],
        "info": {"version": spec["info"]["version"]},
        "operations": operations,
        "components": {"schemas": schemas},
        "breakingChanges": breaking,
    }


def _breaking_changes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``x-github-breaking-changes`` of a schema/operation, minus documentation.

    Each patch is a JSON merge patch (RFC 7386) that turns the 2022-11-28
    description into the one for ``version`` (e.g. 2026-03-10, which githubkit
    0.16 requests).  Patches that only reword descriptions are dropped.
    """
    out = []
    for change in node.get("x-github-breaking-changes", []):
        patch = strip_schema(change["patch"])
        if patch:
            out.append(
                {"version": change["version"], "changeset": change["changeset"], "patch": patch}
            )
    return out


def extract_webhook_schemas(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the webhook extract: payload schema per ``event.action`` key."""
    webhooks: dict[str, Any] = {}
    for (event, action), key in WEBHOOKS.items():
        post = spec["webhooks"][key]["post"]
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        webhooks[event if action is None else f"{event}.{action}"] = strip_schema(schema)
    schemas = close_over(webhooks, spec["components"]["schemas"])
    return {
        "openapi": spec["openapi"],
        "webhooks": webhooks,
        "components": {"schemas": schemas},
    }


def _derive_pr_comment(plain: dict[str, Any]) -> dict[str, Any]:
    """Turn a plain-issue comment example into a comment on a pull request.

    @octokit/webhooks-examples has no issue_comment example on a PR; GitHub
    sends the same payload with ``issue.pull_request`` set, so add exactly that.
    """
    payload = copy.deepcopy(plain)
    issue = payload["issue"]
    number = issue["number"]
    repo_api = issue["repository_url"]
    repo_html = payload["repository"]["html_url"]
    issue["pull_request"] = {
        "url": f"{repo_api}/pulls/{number}",
        "html_url": f"{repo_html}/pull/{number}",
        "diff_url": f"{repo_html}/pull/{number}.diff",
        "patch_url": f"{repo_html}/pull/{number}.patch",
        "merged_at": None,
    }
    issue["html_url"] = f"{repo_html}/pull/{number}"
    comment = payload["comment"]
    comment["html_url"] = f"{repo_html}/pull/{number}#issuecomment-{comment['id']}"
    return payload


#: Values for required string properties that some published examples predate.
_STRING_FILLS = {"app_slug": "octoapp"}


def _leaf_errors(errors: Any) -> list[Any]:
    """Flatten anyOf/oneOf errors, ignoring the ``{"type": "null"}`` branch."""
    leaves = []
    for err in errors:
        if err.context:
            leaves += _leaf_errors(
                e
                for e in err.context
                if not (e.validator == "type" and e.validator_value == "null")
            )
        else:
            leaves.append(err)
    return leaves


def _fill_for(name: str, subschema: dict[str, Any]) -> Any:
    kinds = subschema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "null" in kinds or any(s == {"type": "null"} for s in subschema.get("anyOf", [])):
        return None
    if "boolean" in kinds:
        return False
    if "array" in kinds:
        return []
    if name in _STRING_FILLS:
        return _STRING_FILLS[name]
    raise ValueError(f"cannot fill required property {name!r}")


def repair_example(key: str, payload: dict[str, Any], validator: Any) -> list[str]:
    """Bring an example that predates the current schema up to date, in place.

    Only two mechanical repairs are made, and each is reported: a missing
    *required* property is added (null / false / [] or a fixed string), and an
    integer epoch where the schema now wants a date-time string is converted
    (GitHub's old ``installation`` payloads carried epochs).  Anything else is
    an error: pick another example instead.
    """
    import datetime as dt

    done: list[str] = []
    for _ in range(20):
        leaves = _leaf_errors(validator.iter_errors(payload))
        if not leaves:
            return done
        for err in leaves:
            where = err.json_path
            if err.validator == "required":
                props = err.schema.get("properties", {})
                for name in err.validator_value:
                    if name not in err.instance:
                        err.instance[name] = _fill_for(name, props.get(name, {}))
                        done.append(f"{where}.{name} added as {json.dumps(err.instance[name])}")
            elif (
                err.validator == "type"
                and isinstance(err.instance, int)
                and "string"
                in (
                    err.validator_value
                    if isinstance(err.validator_value, list)
                    else [err.validator_value]
                )
                and err.schema.get("format") == "date-time"
            ):
                parent: Any = payload
                *head, last = list(err.absolute_path)
                for part in head:
                    parent = parent[part]
                stamp = dt.datetime.fromtimestamp(err.instance, dt.UTC)
                parent[last] = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
                done.append(f"{where} epoch {err.instance} -> {parent[last]}")
            else:
                raise ValueError(f"{key}: cannot repair {where}: {err.message}")
    raise ValueError(f"{key}: repairs did not converge")


def add_label_archived_fields(payload: Any) -> int:
    """Give every label ``archived_at``/``archived_by`` = null; returns how many changed.

    The published examples predate them, but newer GitHub descriptions (the
    ones githubkit 0.16's webhook models are generated from) require them, so
    without them ``githubkit.webhooks.parse_obj`` rejects every payload with a
    label.  The octokit schema allows the extra properties.
    """
    changed = 0
    if isinstance(payload, dict):
        labels = payload.get("labels") if isinstance(payload.get("labels"), list) else []
        for label in [*labels, payload.get("label")]:
            if isinstance(label, dict) and "color" in label and "archived_by" not in label:
                label.setdefault("archived_at", None)
                label["archived_by"] = None
                changed += 1
        for value in payload.values():
            changed += add_label_archived_fields(value)
    elif isinstance(payload, list):
        for value in payload:
            changed += add_label_archived_fields(value)
    return changed


def extract_fixtures(
    examples: list[dict[str, Any]], validator_for: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Pick one real example per (event, action), schema-valid after minimal repairs.

    Preference: an App delivery (has ``installation``) that validates as is;
    then the App delivery needing the fewest repairs; then any example.
    """
    by_event = {entry["name"]: entry["examples"] for entry in examples}
    fixtures: dict[str, dict[str, Any]] = {}
    repairs: dict[str, list[str]] = {}
    for event, action in WEBHOOKS:
        key = event if action is None else f"{event}.{action}"
        validator = validator_for(key)
        ranked = []
        for index, example in enumerate(by_event[event]):
            if action is not None and example.get("action") != action:
                continue
            candidate = copy.deepcopy(example)
            try:
                fixes = repair_example(key, candidate, validator)
            except ValueError as exc:
                print(f"  skip example {index} of {key}: {exc}", file=sys.stderr)
                continue
            ranked.append(("installation" not in example, len(fixes), index, candidate, fixes))
        if not ranked:
            raise SystemExit(f"no usable example for {key}")
        _, _, _, fixtures[key], fixes = min(ranked, key=lambda r: r[:3])
        if add_label_archived_fields(fixtures[key]):
            fixes.append("labels given archived_at/archived_by=null (add_label_archived_fields)")
            if list(validator.iter_errors(fixtures[key])):
                raise SystemExit(f"{key}: adding archived_* broke schema validity")
        if fixes:
            repairs[key] = fixes
    derived = _derive_pr_comment(fixtures["issue_comment.created"])
    if list(validator_for("issue_comment.created").iter_errors(derived)):
        raise SystemExit("derived issue_comment on a PR is not schema-valid")
    fixtures["issue_comment.created.on_pull_request"] = derived
    return fixtures, repairs


def _repairs_markdown(repairs: dict[str, list[str]]) -> str:
    if not repairs:
        return ""
    lines = [
        "Some published examples predate the current webhook schema; these were "
        "brought up to date mechanically (see `repair_example`):\n"
    ]
    for key, fixes in repairs.items():
        lines += [f"- `{key}.json`: " + "; ".join(f"`{f}`" for f in fixes)]
    return "\n".join(lines) + "\n\n"


def _write_json(path: Path, data: Any, *, compact: bool) -> None:
    text = (
        json.dumps(data, separators=(",", ":"), sort_keys=False)
        if compact
        else json.dumps(data, indent=2, ensure_ascii=False)
    )
    path.write_text(text + "\n", encoding="utf-8")


def _version(pkg_dir: Path) -> str:
    return json.loads((pkg_dir / "package.json").read_text())["version"]


def main(argv: list[str] | None = None) -> None:
    """Read the npm packages under --node-modules and rewrite the extracts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node-modules", type=Path, default=Path("/tmp/octo/node_modules"))
    args = parser.parse_args(argv)
    octokit = args.node_modules / "@octokit"
    rest_pkg = octokit / "openapi"
    hooks_pkg = octokit / "openapi-webhooks"
    examples_pkg = octokit / "webhooks-examples"

    rest_spec = json.loads((rest_pkg / "generated" / "api.github.com.json").read_text())
    rest = extract_rest(rest_spec)
    rest["source"] = {
        "package": "@octokit/openapi",
        "version": _version(rest_pkg),
        "file": "generated/api.github.com.json",
    }
    _write_json(REST_EXTRACT, rest, compact=True)

    hooks_spec = json.loads((hooks_pkg / "generated" / "api.github.com.json").read_text())
    hooks = extract_webhook_schemas(hooks_spec)
    hooks["source"] = {
        "package": "@octokit/openapi-webhooks",
        "version": _version(hooks_pkg),
        "file": "generated/api.github.com.json",
    }
    _write_json(WEBHOOKS_EXTRACT, hooks, compact=True)

    # Import late: schema.py loads the extract we have just written.
    from tests.fakegithub import schema

    schema.reload()
    examples = json.loads((examples_pkg / "api.github.com" / "index.json").read_text())
    fixtures, repairs = extract_fixtures(examples, schema.webhook_validator)
    FIXTURES_DIR.mkdir(parents=True, exist_ok=True)
    for key, payload in fixtures.items():
        _write_json(FIXTURES_DIR / f"{key}.json", payload, compact=False)

    license_text = (rest_pkg / "LICENSE").read_text().strip()
    LICENSE_FILE.write_text(
        "# Vendored from Octokit packages (MIT)\n\n"
        "Files in this directory and `tests/fixtures/webhooks/*.json` are extracts of:\n\n"
        f"| extract | npm package | version | file |\n| --- | --- | --- | --- |\n"
        f"| `rest-openapi-extract.json` | `@octokit/openapi` | {_version(rest_pkg)} "
        "| `generated/api.github.com.json` |\n"
        f"| `webhooks-schema-extract.json` | `@octokit/openapi-webhooks` | {_version(hooks_pkg)} "
        "| `generated/api.github.com.json` |\n"
        f"| `tests/fixtures/webhooks/*.json` | `@octokit/webhooks-examples` "
        f"| {_version(examples_pkg)} | `api.github.com/index.json` |\n\n"
        "`issue_comment.created.on_pull_request.json` is derived from the "
        "`issue_comment.created` example by adding `issue.pull_request` (no such "
        "example is published). Regenerate with `tests/fakegithub/vendor/extract.py`.\n\n"
        f"{_repairs_markdown(repairs)}"
        "`@octokit/openapi` and `@octokit/openapi-webhooks` ship the licence below; "
        "`@octokit/webhooks-examples` (repository octokit/webhooks) declares "
        '`"license": "MIT"` in its package.json and ships no licence file.\n\n'
        "## Licence text (from `@octokit/openapi/LICENSE`)\n\n"
        f"```\n{license_text}\n```\n",
        encoding="utf-8",
    )
    for path in (REST_EXTRACT, WEBHOOKS_EXTRACT):
        print(f"{path.relative_to(REPO_ROOT)}: {path.stat().st_size / 1024:.0f} KiB")
    print(f"{len(fixtures)} fixtures in {FIXTURES_DIR.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
