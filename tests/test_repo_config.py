"""`.runbot.yml` parsing: defaults, every rejection path, and the PR-comment explanation."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.github.config import (
    MAX_CONFIG_BYTES,
    GitStack,
    LocalStack,
    RepoConfig,
    parse_repo_config,
)
from app.github.config_errors import ConfigError
from app.ttl.policy import TTLPolicy

FULL = """\
stack: local
silo: local-default
vars: {greeting: hi, replicas: 2, tags: [a, b], nested: {x: null, ratio: 0.5}}
ttl: {idle: 48h, max: 7d, warn_before: 1h}
drafts: false
forks: off
labels: {require: []}
max_environments: 10
wait_for_ci: false
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_repo_config(text)
    return info.value


# --- valid configs --------------------------------------------------------------------------


def test_minimal_config_gets_defaults() -> None:
    config = parse_repo_config("stack: local\n")
    assert config.stack == "local"
    assert config.silo == "local-default"
    assert config.vars == {}
    assert config.ttl_policy() == TTLPolicy()
    assert config.drafts is False
    assert config.forks == "off"
    assert config.labels.require == []
    assert config.max_environments == 10
    assert config.wait_for_ci is False


def test_full_example_from_the_docs() -> None:
    config = parse_repo_config(FULL)
    assert config.vars == {
        "greeting": "hi",
        "replicas": 2,
        "tags": ["a", "b"],
        "nested": {"x": None, "ratio": 0.5},
    }
    assert config.ttl.idle == timedelta(hours=48)
    assert config.forks == "off"


def test_custom_values() -> None:
    config = parse_repo_config(
        "stack: web_app-2\nsilo: shared\nttl: {idle: 4h, max: 1d, warn_before: 30m}\n"
        "drafts: true\nforks: approve\nlabels: {require: [preview, 'needs env']}\n"
        "max_environments: 1000\nwait_for_ci: true\n"
    )
    assert config.silo == "shared"
    assert config.ttl_policy() == TTLPolicy(
        idle=timedelta(hours=4), max=timedelta(days=1), warn_before=timedelta(minutes=30)
    )
    assert config.drafts is True
    assert config.forks == "approve"
    assert config.labels.require == ["preview", "needs env"]
    assert config.max_environments == 1000
    assert config.wait_for_ci is True


@pytest.mark.parametrize("spelling", ["off", "Off", "OFF", "'off'", "no", "false"])
def test_forks_bare_off_parsed_by_yaml_as_false_means_off(spelling: str) -> None:
    assert parse_repo_config(f"stack: local\nforks: {spelling}\n").forks == "off"


@pytest.mark.parametrize("spelling", ["on", "yes", "true"])
def test_forks_on_is_ambiguous(spelling: str) -> None:
    error = _error(f"stack: local\nforks: {spelling}\n")
    assert error.field == "forks"
    assert "`off` or `approve`" in error.problem


def test_forks_unknown_word() -> None:
    assert "`off` or `approve`" in _error("stack: local\nforks: always\n").problem


def test_repo_local_stack_mapping_derives_silo_from_last_segment() -> None:
    config = parse_repo_config("stack: {path: ./.runbot/stacks/web/}\n")
    assert config.stack == LocalStack(path=".runbot/stacks/web")
    assert config.silo == "web-default"


def test_git_stack_mapping() -> None:
    config = parse_repo_config(
        "stack: {git: 'https://github.com/acme/stacks.git', ref: v1.2.0, path: aws/ecs}\n"
    )
    assert config.stack == GitStack(
        git="https://github.com/acme/stacks.git", ref="v1.2.0", path="aws/ecs"
    )
    assert config.silo == "ecs-default"


def test_git_stack_defaults_and_silo_from_repo_name() -> None:
    config = parse_repo_config("stack: {git: 'git@github.com:acme/Infra_Stacks.git'}\n")
    assert isinstance(config.stack, GitStack)
    assert config.stack.ref is None
    assert config.stack.path == "."
    assert config.silo == "infra_stacks-default"


def test_ttl_policy_uses_partial_ttl_with_defaults() -> None:
    policy = parse_repo_config("stack: local\nttl: {idle: 12h}\n").ttl_policy()
    assert policy == TTLPolicy(idle=timedelta(hours=12))


def test_config_is_immutable() -> None:
    config = parse_repo_config("stack: local\n")
    with pytest.raises(ValueError):
        config.stack = "other"  # type: ignore[misc]


# --- document-level errors --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_says_stack_is_required(text: str) -> None:
    error = _error(text)
    assert error.field == "stack"
    assert "required" in error.problem


def test_missing_stack_in_a_mapping() -> None:
    error = _error("drafts: true\n")
    assert (error.field, error.problem) == ("stack", "is required")


def test_yaml_syntax_error_reports_the_line() -> None:
    error = _error("stack: local\nttl:\n  idle: 4h\n max: [7d\n")
    assert error.line is not None and error.line >= 3
    assert f"line {error.line}" in error.problem
    assert "YAML syntax error" in error.problem


def test_tab_indentation_is_a_syntax_error_with_line() -> None:
    error = _error("stack: local\nttl:\n\tidle: 4h\n")
    assert error.line == 3


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("local\n", "str"), ("42\n", "int")]
)
def test_non_mapping_document(text: str, kind: str) -> None:
    error = _error(text)
    assert "mapping" in error.problem
    assert kind in error.problem


def test_file_over_64kb_is_rejected() -> None:
    text = "stack: local\n#" + "x" * MAX_CONFIG_BYTES
    error = _error(text)
    assert "64 KB" in error.problem


def test_file_just_under_the_limit_is_fine() -> None:
    text = "stack: local\n#"
    text += "x" * (MAX_CONFIG_BYTES - len(text))
    assert parse_repo_config(text).stack == "local"


def test_python_tags_are_not_executed() -> None:
    error = _error("stack: !!python/object/apply:os.system ['echo pwned']\n")
    assert error.line == 1


def test_impossible_date_is_a_config_error() -> None:
    assert "month must be in 1..12" in _error("stack: local\nvars: {d: 2024-13-45}\n").problem


def test_alias_bomb_is_rejected_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    started = time.perf_counter()
    error = _error("stack: local\n" + "\n".join(lines) + "\n")
    assert time.perf_counter() - started < 1
    assert "aliases" in error.problem


def test_self_referencing_document_is_rejected() -> None:
    assert "nested deeper" in _error("stack: local\nvars: {a: &a [*a]}\n").problem


def test_deep_nesting_is_rejected() -> None:
    deep = "[" * 5000 + "]" * 5000
    assert "nested deeper" in _error(f"stack: local\nvars: {{a: {deep}}}\n").problem


# --- field errors -----------------------------------------------------------------------------


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    error = _error("stack: local\nmax_environment: 3\n")
    assert error.field == "max_environment"
    assert "Did you mean `max_environments`?" in error.problem


def test_misspelt_stack_reports_the_typo_not_just_the_missing_key() -> None:
    error = _error("stak: local\n")
    assert error.field == "stak"
    assert "Did you mean `stack`?" in error.problem
    assert ("stack", "is required") in error.others


def test_unknown_nested_key_suggests_the_right_one() -> None:
    error = _error("stack: local\nttl: {idel: 4h}\n")
    assert error.field == "ttl.idel"
    assert "Did you mean `idle`?" in error.problem


def test_unknown_key_in_stack_mapping() -> None:
    error = _error("stack: {path: web, branch: main}\n")
    assert error.field == "stack.branch"


def test_non_string_top_level_key() -> None:
    assert _error("stack: local\n1: x\n").field == "1"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("Local", "did you mean `local`?"),
        ("-local", "not a valid stack name"),
        ("a" * 64, "not a valid stack name"),
        ("my.stack", "not a valid stack name"),
        ("local\n", "not a valid stack name"),  # "$" in a regex would accept a trailing newline
        ("../etc", "not a valid stack name"),
        ("", "not a valid stack name"),
    ],
)
def test_bad_stack_names(name: str, fragment: str) -> None:
    error = _error(yaml.safe_dump({"stack": name}))
    assert error.field == "stack"
    assert fragment in error.problem


def test_longest_valid_stack_name() -> None:
    name = "a" * 63
    assert parse_repo_config(f"stack: {name}\n").silo == f"{name}-default"


@pytest.mark.parametrize("value", ["42", "true", "[local]", "null"])
def test_stack_of_the_wrong_type(value: str) -> None:
    error = _error(f"stack: {value}\n")
    assert error.field == "stack"
    assert "stack name" in error.problem


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("../other-repo", "'..'"),
        (".runbot/../../x", "'..'"),
        ("..\\\\x", "'..'"),
        ("/etc/stacks", "absolute"),
        ("\\\\server\\\\share", "absolute"),
        ("C:/stacks", "absolute"),
        ("~/stacks", "absolute"),
        ("''", "empty"),
    ],
)
def test_bad_stack_paths(path: str, fragment: str) -> None:
    quoted = path if path == "''" else f'"{path}"'
    error = _error(f"stack: {{path: {quoted}}}\n")
    assert error.field == "stack.path"
    assert fragment in error.problem


def test_git_stack_path_is_checked_too() -> None:
    error = _error("stack: {git: 'https://github.com/a/b.git', path: ../../etc}\n")
    assert error.field == "stack.path"


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "file:///etc",
        "-uhttps://github.com/a/b.git",
        "http://github.com/a/b.git",
        "https://github.com/a/b.git --upload-pack=x",
        "not a url",
    ],
)
def test_unsafe_or_unsupported_git_urls(url: str) -> None:
    error = _error(f"stack: {{git: '{url}'}}\n")
    assert error.field == "stack.git"
    assert "not a supported git URL" in error.problem


@pytest.mark.parametrize("ref", ["-x", "a..b", "feature/", "main.lock", "with space"])
def test_bad_git_refs(ref: str) -> None:
    error = _error(f"stack: {{git: 'https://github.com/a/b.git', ref: '{ref}'}}\n")
    assert error.field == "stack.ref"


def test_bad_silo_name() -> None:
    error = _error("stack: local\nsilo: Shared Silo\n")
    assert error.field == "silo"
    assert "not a valid silo name" in error.problem


def test_explicit_empty_silo_is_rejected_not_defaulted() -> None:
    assert _error("stack: local\nsilo: ''\n").field == "silo"


@pytest.mark.parametrize(
    ("ttl", "field", "fragment"),
    [
        ("{idle: 4x}", "ttl.idle", "unknown unit 'x'"),
        ("{idle: -4h}", "ttl.idle", "negative"),
        ("{idle: 0s}", "ttl.idle", "greater than zero"),
        ("{max: 99999999w}", "ttl.max", "365d ceiling"),
        ("{idle: 3600}", "ttl.idle", "has no unit"),
        ("{idle: [4h]}", "ttl.idle", "expected a duration"),
        ("{idle: 10d}", "ttl.idle", "idle (10d) is longer than max (7d)"),
        ("{warn_before: 48h}", "ttl.warn_before", "shorter than idle"),
        ("{idle: 1h, warn_before: 2h}", "ttl.warn_before", "shorter than idle"),
        ("4h", "ttl", "valid dictionary"),
    ],
)
def test_bad_ttl(ttl: str, field: str, fragment: str) -> None:
    error = _error(f"stack: local\nttl: {ttl}\n")
    assert error.field == field
    assert fragment in error.problem


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("drafts: 'false'", "drafts"),
        ("drafts: 1", "drafts"),
        ("wait_for_ci: maybe", "wait_for_ci"),
        ("max_environments: 0", "max_environments"),
        ("max_environments: 1001", "max_environments"),
        ("max_environments: '10'", "max_environments"),
        ("max_environments: true", "max_environments"),
        ("max_environments: 2.5", "max_environments"),
        ("labels: [preview]", "labels"),
        ("labels: {require: preview}", "labels.require"),
        ("labels: {require: [preview, 3]}", "labels.require[1]"),
        ("labels: {require: ['']}", "labels.require[0]"),
        ("labels: {require: [" + "x" * 51 + "]}", "labels.require[0]"),
        ("vars: [a, b]", "vars"),
        ("vars: {1st: x}", "vars"),
        ("vars: {'with space': x}", "vars"),
        ("vars: {when: 2024-01-01}", "vars.when"),
        ("vars: {n: [1, {x: .nan}]}", "vars.n[1].x"),
        ("vars: {b: !!binary aGk=}", "vars.b"),
        ("vars: {m: {1: x}}", "vars.m"),
    ],
)
def test_bad_types(line: str, field: str) -> None:
    error = _error(f"stack: local\n{line}\n")
    assert error.field == field


def test_type_error_names_what_yaml_read() -> None:
    problem = _error("stack: local\nmax_environments: '10'\n").problem
    assert "valid integer" in problem
    assert "(text)" in problem


def test_date_var_explains_quoting() -> None:
    assert "quote it" in _error("stack: local\nvars: {when: 2024-01-01}\n").problem


def test_multiple_problems_are_all_listed() -> None:
    error = _error("stack: local\ndrafts: 'no'\nmax_environments: 0\n")
    assert error.field == "drafts"
    assert [field for field, _ in error.others] == ["max_environments"]
    assert "max_environments" in error.markdown()


# --- the PR comment -----------------------------------------------------------------------


def test_markdown_names_field_problem_and_example() -> None:
    error = _error("stack: local\nttl: {idle: 4x}\n")
    text = error.markdown()
    assert "`ttl.idle`" in text
    assert error.problem in text
    assert "```yaml\n" in text
    assert "idle: 48h" in text
    assert str(error).startswith(".runbot.yml: ttl.idle: ")


def test_markdown_for_syntax_error_names_the_line() -> None:
    error = _error("stack: [local\n")
    assert f"line {error.line}" in error.markdown()


def test_markdown_keeps_user_text_inside_code_spans() -> None:
    text = _error("stack: local\n'@everyone`x': 1\n").markdown()
    assert "`@everyone'x`" in text
    assert "@everyone`" not in text


@pytest.mark.parametrize(
    "text",
    [
        "stack: Local\n",
        "stack: local\nsilo: X\n",
        "stack: local\nvars: [x]\n",
        "stack: local\nttl: {idle: 4x}\n",
        "stack: local\ndrafts: 'x'\n",
        "stack: local\nforks: on\n",
        "stack: local\nlabels: [x]\n",
        "stack: local\nmax_environments: 0\n",
        "stack: local\nwait_for_ci: 'x'\n",
        "stack: local\nwait_for_cl: true\n",
        "stack: [local\n",
        "- local\n",
        "",
    ],
)
def test_every_suggested_example_is_itself_valid(text: str) -> None:
    example = _error(text).example
    assert isinstance(parse_repo_config(example), RepoConfig)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_non_string_input() -> None:
    with pytest.raises(ConfigError):
        parse_repo_config(b"stack: local")  # type: ignore[arg-type]


# --- properties -----------------------------------------------------------------------------


def _parse_or_config_error(text: str) -> None:
    try:
        result = parse_repo_config(text)
    except ConfigError as error:
        assert error.markdown()
        return
    assert isinstance(result, RepoConfig)
    assert result.silo


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text())
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    _parse_or_config_error(text)


_KNOWN = "stack silo vars ttl drafts forks labels max_environments wait_for_ci"
_NESTED = "idle max warn_before require git ref path"
_keys = st.one_of(st.sampled_from(f"{_KNOWN} {_NESTED}".split()), st.text(max_size=12))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(["local", "48h", "7d", "1h", "off", "approve", "../x", "/abs", "0s"]),
)
_documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(_keys, children, max_size=5)
    ),
    max_leaves=25,
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(_keys, _documents, max_size=8))
def test_arbitrary_yaml_dicts_only_raise_config_error(document: dict[str, object]) -> None:
    _parse_or_config_error(yaml.safe_dump(document))


@settings(deadline=None)
@given(
    st.sampled_from(["local", {"path": ".runbot/stacks/web"}]),
    st.dictionaries(
        st.sampled_from(["idle", "max", "warn_before"]),
        st.sampled_from(["30m", "1h", "4h", "48h", "2d", "7d", "14d"]),
    ),
)
def test_valid_ttl_combinations_parse_and_keep_the_ordering(
    stack: object, ttl: dict[str, str]
) -> None:
    try:
        config = parse_repo_config(yaml.safe_dump({"stack": stack, "ttl": ttl}))
    except ConfigError as error:
        assert error.field.startswith("ttl.")
        return
    policy = config.ttl_policy()
    assert policy.warn_before < policy.idle <= policy.max
