"""The operator policy, pure: reading the file (line and key in every error), merging `default`
with the matching `repos` globs (a later match wins key by key), explaining where each value
comes from, and the checks of a repository's request. The store, the CLI and a real `runbot
serve` are in test_policy_process.py.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from app.policy.checks import (
    POLICY_RULES,
    RULE_KEYS,
    CatalogStack,
    GitSource,
    RepoStack,
    Request,
    Rule,
    cap_environments,
    cap_ttl,
    check_base_branch,
    check_request,
    under_prefix,
)
from app.policy.explain import OriginKind, explain, explanation_record, render
from app.policy.load import PolicyError, load_policy, parse_policy
from app.policy.merge import Layer, effective_policy, merge_layers
from app.policy.model import KEYS, Forks, Policy, PolicyFile
from app.settings import SettingsError


def policy_text(text: str) -> PolicyFile:
    return parse_policy(textwrap.dedent(text).lstrip("\n"))


def error_of(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        policy_text(text)
    return caught.value


# ----- loading -------------------------------------------------------------------------------


def test_the_issue_example_loads() -> None:
    loaded = policy_text(
        """
        default:                     # every repository
          stacks: ["*"]
          repo_stacks: false
          git_stacks: []
          base_branches: [default]
          forks: approve
          max_environments: 10
          max_ttl: 7d
        repos:
          "octo-org/*":
            repo_stacks: true
        """
    )
    assert loaded.document.default.forks is Forks.APPROVE
    assert loaded.document.default.max_ttl == timedelta(days=7)
    assert loaded.document.repos["octo-org/*"].repo_stacks is True
    assert loaded.lines[("repos", "octo-org/*", "repo_stacks")] == 11
    assert loaded.digest and len(loaded.digest) == 64


def test_the_error_names_file_line_and_key() -> None:
    text = "default:\n  max_ttl: 7d\nrepos:\n  a/b:\n    max_silos: 2\n\n"
    text += '  "octo-org/*":\n    max_ttl: 1 year\n'
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yml")
    assert str(caught.value) == (
        'policy.yml line 8: repos."octo-org/*".max_ttl: "1 year" is not a duration; '
        "use 90s, 30m, 4h, 2d, 1w"
    )
    assert (caught.value.line, caught.value.key) == (8, 'repos."octo-org/*".max_ttl')


BAD_FILES = [
    pytest.param(
        "default:\n  stakcs: [local]\n",
        2,
        "default.stakcs",
        'did you mean "stacks"?',
        id="misspelt-key",
    ),
    pytest.param(
        "defualt:\n  max_ttl: 7d\n", 1, "defualt", 'did you mean "default"?', id="top-key"
    ),
    pytest.param(
        "repos:\n  octo-org:\n    repo_stacks: true\n",
        2,
        'repos."octo-org"',
        'write "octo-org/*"',
        id="glob-without-owner",
    ),
    pytest.param(
        'repos:\n  "a/*": {max_silos: 1}\n  "b/*": {}\n  "a/*": {max_silos: 2}\n',
        4,
        'repos."a/*"',
        "appears twice (also on line 2)",
        id="duplicate-glob",
    ),
    pytest.param(
        "default:\n  max_ttl: 7d\n  max_ttl: 9d\n", 3, "default.max_ttl", "appears twice", id="dup"
    ),
    pytest.param('repos:\n  "a/*":\n', 2, 'repos."a/*"', "is empty", id="empty-entry"),
    pytest.param(
        "default:\n  stacks:\n    - local\n    - 3\n",
        4,
        "default.stacks[1]",
        "expected a non-empty text, got 3",
        id="list-item",
    ),
    pytest.param(
        "default:\n  stacks: local\n", 2, "default.stacks", 'write it as ["local"]', id="str"
    ),
    pytest.param(
        "default:\n  repo_stacks: maybe\n", 2, "default.repo_stacks", "true or false", id="bool"
    ),
    pytest.param("default:\n  forks: always\n", 2, "default.forks", "off or approve", id="forks"),
    pytest.param(
        "default:\n  max_environments: 0\n", 2, "default.max_environments", "from 1 to", id="zero"
    ),
    pytest.param(
        "default:\n  max_environments: ten\n", 2, "default.max_environments", "whole", id="int"
    ),
    pytest.param("default:\n  max_silos: -1\n", 2, "default.max_silos", "from 0 to", id="silos"),
    pytest.param("default:\n  max_ttl: 3\n", 2, "default.max_ttl", "has no unit", id="no-unit"),
    pytest.param(
        "default:\n  max_ttl: 400d\n", 2, "default.max_ttl", "longer than 365d", id="ceiling"
    ),
    pytest.param("default:\n  max_ttl:\n", 2, "default.max_ttl", "got nothing", id="null"),
    pytest.param(
        'default:\n  git_stacks: ["file:///srv/stacks"]\n',
        2,
        "default.git_stacks[0]",
        "is not a git URL prefix",
        id="file-url",
    ),
    pytest.param(
        'default:\n  git_stacks: ["https://github.com/octo-org/../x/"]\n',
        2,
        "default.git_stacks[0]",
        "'..'",
        id="dot-segments",
    ),
    pytest.param(
        'default:\n  git_hosts: ["https://github.com"]\n',
        2,
        "default.git_hosts[0]",
        "not a host name",
        id="host-with-scheme",
    ),
    pytest.param(
        "default:\n  base_branches: []\n", 2, "default.base_branches", "[default]", id="no-base"
    ),
    pytest.param("default: [1]\n", 1, "default", "expected a mapping", id="entry-list"),
    pytest.param("- a\n", 1, "", "must be a mapping", id="document-list"),
    pytest.param("default:\n  stacks: [a\n", 3, "", "YAML syntax error", id="yaml-syntax"),
    pytest.param(
        "base: &b {max_silos: 2}\ndefault:\n  <<: *b\n", 3, "default", "merge keys", id="merge-key"
    ),
    pytest.param("default:\n  1: true\n", 2, "default", "is not text", id="int-key"),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), BAD_FILES)
def test_bad_files_name_the_line_and_key(text: str, line: int, key: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yml")
    error = caught.value
    assert (error.line, error.key) == (line, key), str(error)
    assert words in error.problem
    assert str(error).startswith(f"policy.yml line {line}: ")


def test_a_policy_error_is_a_settings_error() -> None:
    """Every process that stops on a bad setting at start stops on a bad policy too."""
    assert issubclass(PolicyError, SettingsError)


def test_an_empty_file_is_the_defaults() -> None:
    assert effective_policy(parse_policy("# nothing yet\n"), "a/b") == effective_policy(
        PolicyFile(), "a/b"
    )


def test_yaml_off_means_forks_off() -> None:
    assert policy_text("default:\n  forks: off\n").document.default.forks is Forks.OFF


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read it"):
        load_policy(tmp_path / "missing.yml")
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"default:\n  stacks: [\xff]\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)
    assert load_policy(None) == PolicyFile()


def test_an_alias_bomb_is_refused() -> None:
    """An alias-expanded document is walked under a budget, not expanded without end."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    with pytest.raises(PolicyError, match="more than"):
        parse_policy("\n".join(lines))


# ----- merging -------------------------------------------------------------------------------

LAYERED = """
default:
  stacks: [local]
  max_ttl: 2d
  max_environments: 5
repos:
  "octo-org/*":
    repo_stacks: true
    max_ttl: 3d
    stacks: [local, kubernetes]
  "octo-org/web":
    max_ttl: 1d
  "*/web":
    max_environments: 20
  "OTHER/*":
    quote_logs: true
"""


@pytest.mark.parametrize(
    ("repository", "expected"),
    [
        pytest.param(
            "someone/else",
            {"stacks": ("local",), "max_ttl": timedelta(days=2), "max_environments": 5},
            id="default-only",
        ),
        pytest.param(
            "octo-org/api",
            {"stacks": ("local", "kubernetes"), "repo_stacks": True, "max_ttl": timedelta(days=3)},
            id="one-glob",
        ),
        pytest.param(
            "octo-org/web",
            {"max_ttl": timedelta(days=1), "max_environments": 20, "repo_stacks": True},
            id="later-match-wins-key-by-key",
        ),
        pytest.param("Octo-Org/Web", {"max_ttl": timedelta(days=1)}, id="case-insensitive"),
        pytest.param("other/thing", {"quote_logs": True}, id="glob-case"),
        pytest.param("octo-org-evil/x", {"repo_stacks": False}, id="no-prefix-match"),
    ],
)
def test_merge(repository: str, expected: dict[str, object]) -> None:
    policy = effective_policy(policy_text(LAYERED), repository)
    for key, value in expected.items():
        assert getattr(policy, key) == value, key


def test_lists_are_replaced_not_joined() -> None:
    loaded = policy_text(
        'default:\n  stacks: [local, aws]\nrepos:\n  "a/*":\n    stacks: [kubernetes]\n'
    )
    assert effective_policy(loaded, "a/b").stacks == ("kubernetes",)


def test_without_a_file_the_defaults_of_the_issue_apply() -> None:
    policy = effective_policy(PolicyFile(), "any/repo")
    assert policy == Policy(git_hosts=())
    assert policy.stacks == ("*",)
    assert (policy.repo_stacks, policy.git_stacks, policy.base_branches) == (
        False,
        (),
        ("default",),
    )
    assert (policy.forks, policy.max_environments, policy.max_ttl) == (
        Forks.APPROVE,
        10,
        timedelta(days=7),
    )
    assert (policy.max_silos, policy.quote_logs) == (1, False)


def test_git_hosts_default_to_the_hosts_of_git_stacks() -> None:
    loaded = policy_text(
        """
        default:
          git_stacks: ["https://github.com/octo-org/", "git@GitLab.example:infra/", "ssh://git@git.example:2222/x/"]
        repos:
          "pinned/*":
            git_hosts: [github.com]
        """
    )
    assert effective_policy(loaded, "a/b").git_hosts == (
        "github.com",
        "gitlab.example",
        "git.example",
    )
    assert effective_policy(loaded, "pinned/b").git_hosts == ("github.com",)


def test_policy_and_entry_have_the_same_keys() -> None:
    assert tuple(f.name for f in fields(Policy)) == KEYS


# ----- explaining ----------------------------------------------------------------------------


def test_explain_names_the_entry_and_line_of_each_value() -> None:
    loaded = policy_text(LAYERED)
    explained = explain(loaded, "octo-org/web")
    assert explained.matched == ("octo-org/*", "octo-org/web", "*/web")
    origins = explained.origins
    assert str(origins["max_ttl"]) == 'repos."octo-org/web" (line 11)'
    assert str(origins["max_environments"]) == 'repos."*/web" (line 13)'
    assert str(origins["repo_stacks"]) == 'repos."octo-org/*" (line 7)'
    assert str(origins["stacks"]) == 'repos."octo-org/*" (line 9)'
    assert origins["forks"].kind is OriginKind.BUILT_IN
    assert origins["git_hosts"].kind is OriginKind.DERIVED
    assert str(explain(loaded, "x/y").origins["max_ttl"]) == "default (line 3)"
    record = explanation_record(explained)
    assert record["policy"]["max_ttl"] == "1d"
    assert record["policy"]["stacks"] == ["local", "kubernetes"]
    assert record["origins"]["max_ttl"] == 'repos."octo-org/web" (line 11)'
    text = render(explained)
    assert 'entries     default, repos."octo-org/*", repos."octo-org/web", repos."*/web"' in text
    assert any(
        line.startswith("max_ttl") and '"1d"' in line and "line 11" in line
        for line in text.splitlines()
    )


def test_explain_without_a_file() -> None:
    explained = explain(PolicyFile(), "a/b")
    assert explained.matched == ()
    assert render(explained).startswith("policy      defaults (no RUNBOT_POLICY_FILE)")
    assert all(
        origin.kind in (OriginKind.BUILT_IN, OriginKind.DERIVED)
        for origin in explained.origins.values()
    )


# ----- checks --------------------------------------------------------------------------------

OPEN = Policy(
    stacks=("local", "k8s-*"),
    repo_stacks=True,
    git_stacks=("https://github.com/octo-org", "git@github.com:octo-org/"),
    git_hosts=("github.com",),
    base_branches=("default", "release/*"),
    forks=Forks.APPROVE,
    max_environments=10,
    max_ttl=timedelta(days=7),
    max_silos=2,
)
CLOSED = Policy(git_hosts=(), forks=Forks.OFF, max_silos=0)


def request(**changes: object) -> Request:
    values: dict[str, object] = {
        "stack": CatalogStack("local"),
        "base_branch": "main",
        "base_is_default": True,
    }
    values.update(changes)
    return Request(**values)  # type: ignore[arg-type]


CASES = [
    pytest.param(OPEN, request(), [], id="plain-request"),
    pytest.param(OPEN, request(stack=CatalogStack("k8s-eu")), [], id="stack-glob"),
    pytest.param(OPEN, request(stack=CatalogStack("aws")), [Rule.CATALOG_STACK], id="stack"),
    pytest.param(
        CLOSED, request(stack=RepoStack(".runbot/stacks/x")), [Rule.REPO_STACK], id="repo"
    ),
    pytest.param(OPEN, request(stack=RepoStack(".runbot/stacks/x")), [], id="repo-allowed"),
    pytest.param(
        CLOSED,
        request(stack=GitSource("https://github.com/octo-org/s.git")),
        [Rule.GIT_STACK],
        id="git-none-allowed",
    ),
    pytest.param(OPEN, request(stack=GitSource("https://github.com/octo-org/s.git")), [], id="git"),
    pytest.param(
        OPEN, request(stack=GitSource("https://github.com/octo-org.git")), [], id="git-org"
    ),
    pytest.param(OPEN, request(stack=GitSource("git@github.com:octo-org/s.git")), [], id="scp"),
    pytest.param(
        OPEN,
        request(stack=GitSource("https://github.com/octo-org-evil/s.git")),
        [Rule.GIT_STACK],
        id="untrusted-prefix-lookalike",
    ),
    pytest.param(
        OPEN,
        request(stack=GitSource("https://github.com/octo-org@evil.example/s.git")),
        [Rule.GIT_STACK],
        id="untrusted-userinfo-host",
    ),
    pytest.param(
        OPEN,
        request(stack=GitSource("https://github.com/octo-org/../evil/s.git")),
        [Rule.GIT_STACK],
        id="untrusted-dot-segments",
    ),
    pytest.param(
        OPEN,
        request(stack=GitSource("https://github.com/octo-org/%2e%2e/evil/s.git")),
        [Rule.GIT_STACK],
        id="untrusted-percent-escapes",
    ),
    pytest.param(
        Policy(git_stacks=("https://git.example/",), git_hosts=("github.com",)),
        request(stack=GitSource("https://git.example/s.git")),
        [Rule.GIT_HOST],
        id="git-host",
    ),
    pytest.param(OPEN, request(base_branch="release/1.2", base_is_default=False), [], id="glob"),
    pytest.param(
        OPEN,
        request(base_branch="x", base_is_default=False),
        [Rule.BASE_BRANCH],
        id="untrusted-side-branch",
    ),
    pytest.param(
        CLOSED,
        request(base_branch="default", base_is_default=False),
        [Rule.BASE_BRANCH],
        id="untrusted-branch-named-default",
    ),
    pytest.param(
        Policy(base_branches=("release/*",)),
        request(),
        [Rule.BASE_BRANCH],
        id="default-branch-not-listed",
    ),
    pytest.param(CLOSED, request(forks=Forks.APPROVE), [Rule.FORKS], id="forks"),
    pytest.param(CLOSED, request(forks=Forks.OFF), [], id="forks-off"),
    pytest.param(OPEN, request(max_environments=10), [], id="environments-at-ceiling"),
    pytest.param(OPEN, request(max_environments=1000), [Rule.MAX_ENVIRONMENTS], id="1000-envs"),
    pytest.param(OPEN, request(ttl_max=timedelta(days=7)), [], id="ttl-at-ceiling"),
    pytest.param(OPEN, request(ttl_max=timedelta(days=365)), [Rule.MAX_TTL], id="365-days"),
    pytest.param(OPEN, request(owned_silos=1, creates_silo=True), [], id="second-silo"),
    pytest.param(OPEN, request(owned_silos=2, creates_silo=True), [Rule.MAX_SILOS], id="third"),
    pytest.param(CLOSED, request(creates_silo=True), [Rule.MAX_SILOS], id="no-new-silos"),
    pytest.param(CLOSED, request(owned_silos=5), [], id="existing-silos-are-not-rechecked"),
    pytest.param(
        CLOSED,
        request(
            stack=RepoStack("."),
            base_branch="x",
            base_is_default=False,
            forks=Forks.APPROVE,
            max_environments=11,
            ttl_max=timedelta(days=8),
            creates_silo=True,
        ),
        [
            Rule.REPO_STACK,
            Rule.BASE_BRANCH,
            Rule.FORKS,
            Rule.MAX_ENVIRONMENTS,
            Rule.MAX_TTL,
            Rule.MAX_SILOS,
        ],
        id="every-violation-at-once",
    ),
]


@pytest.mark.parametrize(("policy", "asked", "rules"), CASES)
def test_check_request(policy: Policy, asked: Request, rules: list[Rule]) -> None:
    violations = check_request(policy, asked)
    assert [violation.rule for violation in violations] == rules
    for violation in violations:
        assert violation.key == RULE_KEYS[violation.rule]
        # The sentence names the key that refused it, and the way to allow it.
        assert f"`{violation.key}" in violation.message
        assert "operator" in violation.message


def test_every_rule_is_tested_and_names_a_policy_key() -> None:
    tested = {rule for case in CASES for rule in case.values[2]}
    assert tested == POLICY_RULES
    assert {RULE_KEYS[rule] for rule in POLICY_RULES} <= set(KEYS)


def test_the_repo_stack_message_reads_as_the_issue_asks() -> None:
    (violation,) = check_request(CLOSED, request(stack=RepoStack(".runbot/stacks/x")))
    assert violation.message == (
        "this repository may not use stacks from its own tree (`repo_stacks: false` in the "
        "operator policy); an operator can allow it with `repo_stacks: true` for this repository"
    )


def test_untrusted_branch_names_cannot_break_out_of_the_message() -> None:
    branch = "x` @everyone [click](javascript:alert(1)) " + "y" * 200
    violation = check_base_branch(CLOSED, branch, False)
    assert violation is not None
    quoted = violation.message.split("the branch ", 1)[1]
    span = quoted[: quoted.index("`", 1) + 1]
    assert span.startswith("`x' @everyone") and span.endswith("…`")
    assert "\n" not in violation.message


def test_under_prefix_is_at_a_path_boundary() -> None:
    assert under_prefix("https://h/o/x", "https://h/o/")
    assert under_prefix("https://h/o/x", "https://h/o")
    assert under_prefix("https://h/o.git", "https://h/o")
    assert not under_prefix("https://h/ox/y", "https://h/o")
    assert not under_prefix("https://h.evil/o/y", "https://h")


def test_caps() -> None:
    assert cap_ttl(OPEN, timedelta(days=30)) == timedelta(days=7)
    assert cap_ttl(OPEN, timedelta(hours=4)) == timedelta(hours=4)
    assert cap_environments(OPEN, 1000) == 10
    assert cap_environments(OPEN, 3) == 3


# ----- the reference -------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", text, re.S)


def test_the_reference_documents_every_key_with_its_default() -> None:
    text = DOC.read_text()
    defaults = Policy(git_hosts=())
    for key in KEYS:
        section = re.search(rf"^### `{key}`\n\n(.*?)(?=^#)", text, re.S | re.M)
        assert section, f"docs/policy.md has no section for {key}"
        if key == "git_hosts":
            assert "Default: the hosts of the `git_stacks` prefixes" in section[1]
            continue
        default = re.match(r"Default `([^`]+)`", section[1])
        assert default, f"{key}: the section does not start with its default"
        assert yaml.safe_load(default[1]) == defaults.value_of(key), key


def test_the_reference_examples_are_valid_and_the_first_is_the_defaults() -> None:
    blocks = yaml_blocks(DOC.read_text())
    assert len(blocks) > len(KEYS)
    for block in blocks:
        parse_policy(block, "docs/policy.md")
    first = parse_policy(blocks[0])
    assert merge_layers([Layer(None, first.document.default)]) == effective_policy(
        PolicyFile(), "a/b"
    )
    assert effective_policy(first, "octo-org/legacy-api").max_ttl == timedelta(days=1)
