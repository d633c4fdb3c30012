"""Tests for app.stacks.mapping: which values a template receives, and type checks."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import app.stacks.mapping as mapping_module
from app.stacks.catalog import Catalog, StackError, Template, Variable
from app.stacks.mapping import (
    RUNBOT_INSTANCE_VARIABLES,
    RUNBOT_SILO_VARIABLES,
    MappingError,
    check_type,
    instance_inputs,
    silo_inputs,
    undeclared_names,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stacks"


def var(
    name: str,
    type_: str = "any",
    *,
    required: bool = False,
    sensitive: bool = False,
    line: int = 1,
) -> Variable:
    return Variable(
        name=name,
        type=type_,
        default=None if required else "dflt",
        required=required,
        description="",
        sensitive=sensitive,
        file="main.tf",
        line=line,
    )


def template(*variables: Variable) -> Template:
    return Template(Path("/t"), {v.name: v for v in variables}, {}, None)


def test_runbot_variable_sets() -> None:
    expected_instance = {
        "runbot_instance_id",
        "runbot_slot",
        "runbot_pr_number",
        "runbot_head_sha",
        "runbot_head_ref",
        "runbot_repository",
        "runbot_suspended",
        "runbot_workspace_dir",
        "runbot_source_dir",
    }
    assert set(RUNBOT_INSTANCE_VARIABLES) == expected_instance
    assert set(RUNBOT_SILO_VARIABLES) == {
        "runbot_silo_name",
        "runbot_workspace_dir",
        "runbot_api_url",
        "runbot_silo_token",
    }
    assert isinstance(RUNBOT_INSTANCE_VARIABLES, frozenset)


def test_mapping_error_is_a_stack_error() -> None:
    assert issubclass(MappingError, StackError)


# --- priority -------------------------------------------------------------------

ABSENT = object()

# (declared name, required, runbot value, repo var, silo output, expected)
PRIORITY_CASES = [
    ("runbot_slot", False, 1, ABSENT, 3, 1),  # runbot beats everything
    ("runbot_slot", False, ABSENT, ABSENT, 3, 3),  # then silo outputs
    ("runbot_slot", False, ABSENT, ABSENT, ABSENT, ABSENT),  # then the template default
    ("db_host", False, ABSENT, ABSENT, "from-silo", "from-silo"),
    ("db_host", True, ABSENT, ABSENT, "from-silo", "from-silo"),
    ("db_host", False, ABSENT, ABSENT, ABSENT, ABSENT),
    ("greeting", False, ABSENT, "from-repo", ABSENT, "from-repo"),  # repo vars fill the rest
    ("flag", False, ABSENT, False, ABSENT, False),  # falsy values still count
    ("flag", False, ABSENT, None, ABSENT, None),  # explicit null from repo vars counts
]


@pytest.mark.parametrize(
    ("name", "runbot", "silo"),
    [
        ("runbot_slot", {"runbot_slot": 1}, {}),
        ("runbot_slot", {}, {}),
        ("db_host", {}, {"db_host": "x"}),
    ],
)
def test_finding_3_repo_vars_never_override_runbot_or_the_silo(
    name: str, runbot: dict[str, Any], silo: dict[str, Any]
) -> None:
    """Silo outputs are the operator's facts: a repository asking for one is refused, by name."""
    with pytest.raises(MappingError, match=re.escape(f"`vars.{name}`")):
        instance_inputs(template(var(name)), runbot, {name: "0.0.0.0"}, silo)


def test_a_manifest_limits_repo_vars_to_what_it_lists() -> None:
    tpl = template(var("greeting"), var("image"))
    assert instance_inputs(tpl, {}, {"greeting": "hi"}, {}, settable=frozenset({"greeting"})) == {
        "greeting": "hi"
    }
    with pytest.raises(MappingError, match=r"`vars\.image`"):
        instance_inputs(tpl, {}, {"image": "evil"}, {}, settable=frozenset({"greeting"}))
    with pytest.raises(MappingError, match=r"`vars\.admin_token`"):
        instance_inputs(tpl, {}, {"admin_token": "x"}, {}, provided={"admin_token"})


@pytest.mark.parametrize(("name", "required", "runbot", "repo", "silo", "expected"), PRIORITY_CASES)
def test_instance_priority(
    name: str, required: bool, runbot: Any, repo: Any, silo: Any, expected: Any
) -> None:
    tpl = template(var(name, required=required))

    def only(value: Any) -> dict[str, Any]:
        return {} if value is ABSENT else {name: value}

    result = instance_inputs(tpl, only(runbot), only(repo), only(silo))
    if expected is ABSENT:
        assert result == {}
    else:
        assert result == {name: expected}


# (declared name, runbot value, operator var, expected)
SILO_PRIORITY_CASES = [
    ("runbot_silo_name", "silo-a", "op", "silo-a"),
    ("runbot_silo_name", ABSENT, "op", "op"),
    ("region", ABSENT, "eu-west-1", "eu-west-1"),
    ("region", ABSENT, ABSENT, ABSENT),
]


@pytest.mark.parametrize(("name", "runbot", "operator", "expected"), SILO_PRIORITY_CASES)
def test_silo_priority(name: str, runbot: Any, operator: Any, expected: Any) -> None:
    def only(value: Any) -> dict[str, Any]:
        return {} if value is ABSENT else {name: value}

    result = silo_inputs(template(var(name)), only(runbot), only(operator))
    assert result == ({} if expected is ABSENT else {name: expected})


def test_instance_inputs_on_the_good_fixture() -> None:
    stack = Catalog(FIXTURES).get("good")
    runbot = {
        "runbot_instance_id": "pr-7",
        "runbot_pr_number": 7,
        "runbot_slot": 3,  # not declared by the template: dropped
        "runbot_head_sha": "abc",
    }
    repo_vars = {"image_tag": "sha-abc", "replicas": "3", "unused": 1}
    silo_outputs = {"db_host": "db.silo.internal", "db_password": "pw"}
    with pytest.raises(MappingError, match=r"`vars\.image_tag`"):  # the silo decides it
        instance_inputs(stack.instance, runbot, repo_vars, {**silo_outputs, "image_tag": "s"})
    assert instance_inputs(stack.instance, runbot, repo_vars, silo_outputs) == {
        "runbot_instance_id": "pr-7",
        "runbot_pr_number": 7,
        "image_tag": "sha-abc",
        "replicas": "3",
        "db_host": "db.silo.internal",
    }


def test_silo_inputs_on_the_good_fixture() -> None:
    stack = Catalog(FIXTURES).get("good")
    result = silo_inputs(
        stack.silo,
        {"runbot_silo_name": "main", "runbot_workspace_dir": "/w"},
        {"admin_email": "ops@example.test", "not_declared": 1},
    )
    assert result == {"runbot_silo_name": "main", "admin_email": "ops@example.test"}


# --- only declared ----------------------------------------------------------------


def test_only_declared_variables_are_returned() -> None:
    tpl = template(var("a"), var("runbot_slot"))
    result = instance_inputs(
        tpl,
        {"runbot_slot": 1, "runbot_pr_number": 2},
        {"a": 1, "b": 2},
        {"c": 3},
    )
    assert result == {"runbot_slot": 1, "a": 1}


def test_undeclared_names_lists_ignored_vars() -> None:
    tpl = template(var("a"))
    assert undeclared_names(tpl, {"b": 1, "a": 1, "c": 2}) == ["b", "c"]
    assert undeclared_names(tpl, {"a": 1}) == []


def test_unknown_runbot_keys_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="runbot_silo_name"):
        instance_inputs(template(), {"runbot_silo_name": "x"}, {}, {})
    with pytest.raises(ValueError, match="runbot_pr_number"):
        silo_inputs(template(), {"runbot_pr_number": 1}, {})


# --- missing required ------------------------------------------------------------


def test_missing_required_instance_variable() -> None:
    tpl = template(var("app_secret", "string", required=True, line=9))
    with pytest.raises(MappingError) as info:
        instance_inputs(tpl, {}, {}, {})
    assert str(info.value) == (
        "the instance template needs a value for variable 'app_secret' (main.tf:9): "
        "set it under `vars:` in .runbot.yml, or add a silo output named 'app_secret'"
    )


def test_all_missing_variables_are_named_at_once() -> None:
    tpl = template(var("a", required=True), var("b", required=True), var("c"))
    with pytest.raises(MappingError) as info:
        instance_inputs(tpl, {}, {}, {})
    message = str(info.value)
    assert "variable 'a'" in message
    assert "variable 'b'" in message
    assert "variable 'c'" not in message


def test_missing_required_on_the_needs_var_fixture() -> None:
    stack = Catalog(FIXTURES).get("needs-var")
    with pytest.raises(MappingError, match=r"'app_secret' \(main\.tf:9\)"):
        instance_inputs(stack.instance, {"runbot_pr_number": 1}, {}, {"db_host": "h"})
    supplied = instance_inputs(
        stack.instance, {"runbot_pr_number": 1}, {"app_secret": "s"}, {"db_host": "h"}
    )
    assert supplied == {"runbot_pr_number": 1, "app_secret": "s", "db_host": "h"}


def test_missing_required_silo_variable() -> None:
    tpl = template(var("admin_email", required=True, line=16))
    with pytest.raises(MappingError, match=r"silo template .*'admin_email' \(main\.tf:16\)"):
        silo_inputs(tpl, {}, {})


# --- types ---------------------------------------------------------------------------

TYPE_CASES: list[tuple[str, Any, bool]] = [
    ("string", "abc", True),
    ("string", 3, True),  # number -> string
    ("string", 1.5, True),
    ("string", True, True),  # bool -> string
    ("string", [1], False),
    ("string", {"a": 1}, False),
    ("string", float("nan"), False),
    ("number", 3, True),
    ("number", -2.5, True),
    ("number", "12", True),  # numeric string -> number
    ("number", "-1.5e3", True),
    ("number", "+.5", True),
    ("number", "abc", False),
    ("number", "", False),
    ("number", " 1", False),
    ("number", "0x10", False),
    ("number", "1_000", False),
    ("number", True, False),  # bool never converts to number
    ("number", [1], False),
    ("number", float("nan"), False),
    ("bool", True, True),
    ("bool", "true", True),
    ("bool", "false", True),
    ("bool", "1", True),
    ("bool", "0", True),
    ("bool", "True", False),
    ("bool", "yes", False),
    ("bool", 1, False),  # number never converts to bool
    ("list(string)", ["a"], True),
    ("list(string)", "a", False),
    ("list(string)", {"a": 1}, False),
    ("set(number)", [1, 2], True),
    ("tuple([string, number])", ["a", 1], True),
    ("map(string)", {"a": "b"}, True),
    ("map(string)", ["a"], False),
    ("object({a = string})", {"a": "b"}, True),
    ("object({a = string})", "a", False),
    ("any", object(), True),
    ("any", [1, {"x": None}], True),
    ("string", None, True),  # null is valid for every type
    ("list(string)", None, True),
]


@pytest.mark.parametrize(("type_", "value", "ok"), TYPE_CASES)
def test_check_type(type_: str, value: Any, ok: bool) -> None:
    variable = var("v", type_)
    if ok:
        check_type(variable, value)
    else:
        with pytest.raises(MappingError, match=r"^variable 'v' \(main\.tf:1\) expects "):
            check_type(variable, value)


def test_check_type_message_is_exact() -> None:
    with pytest.raises(MappingError) as info:
        check_type(var("replicas", "number", line=12), "abc")
    assert str(info.value) == "variable 'replicas' (main.tf:12) expects number, got string 'abc'"


def test_check_type_hides_sensitive_values() -> None:
    with pytest.raises(MappingError) as info:
        check_type(var("token", "number", sensitive=True), "hunter2")
    assert "hunter2" not in str(info.value)
    assert "value hidden" in str(info.value)


def test_wrong_repo_var_type_says_how_to_fix() -> None:
    tpl = template(var("replicas", "number", line=12))
    with pytest.raises(MappingError) as info:
        instance_inputs(tpl, {}, {"replicas": "many"}, {})
    assert str(info.value) == (
        "variable 'replicas' (main.tf:12) expects number, got string 'many': "
        "fix `vars.replicas` in .runbot.yml"
    )


def test_wrong_silo_output_type_does_not_echo_the_value() -> None:
    tpl = template(var("db_host", "string"))
    with pytest.raises(MappingError) as info:
        instance_inputs(tpl, {}, {}, {"db_host": ["s3cret-list"]})
    assert "s3cret-list" not in str(info.value)
    assert "silo output 'db_host'" in str(info.value)


def test_wrong_operator_var_type_does_not_echo_the_value() -> None:
    tpl = template(var("db_password", "number"))
    with pytest.raises(MappingError) as info:
        silo_inputs(tpl, {}, {"db_password": "pa55word"})
    assert "pa55word" not in str(info.value)
    assert "operator's silo var 'db_password'" in str(info.value)


def test_wrong_runbot_value_type_blames_the_declaration() -> None:
    tpl = template(var("runbot_pr_number", "bool"))
    with pytest.raises(MappingError, match="runbot provides 'runbot_pr_number' itself"):
        instance_inputs(tpl, {"runbot_pr_number": 5}, {}, {})


# --- values pass through verbatim ---------------------------------------------------

NASTY_VALUES = [
    "quote \" and ' both",
    "line one\nline two\r\n",
    "$(rm -rf /)",
    "`id`; echo pwned; ls && true || false",
    "${var.injected} %{ if true }x%{ endif }",
    "back\\slash \\n not a newline",
    "unicode ☃ \u0000 nul",
]


@pytest.mark.parametrize("value", NASTY_VALUES)
def test_metacharacter_values_pass_through_verbatim(value: str) -> None:
    tpl = template(var("a", "string"), var("b"), var("runbot_head_ref", "string"))
    result = instance_inputs(tpl, {"runbot_head_ref": value}, {"a": value}, {"b": value})
    assert result == {"a": value, "b": value, "runbot_head_ref": value}
    assert all(type(v) is str for v in result.values())
    # Written into a JSON var file, the value survives byte for byte.
    assert json.loads(json.dumps(result)) == result


def test_structured_values_are_returned_as_given() -> None:
    value = {"cmd": ["sh", "-c", "echo $HOME; exit 1"], "n": 1}
    result = instance_inputs(template(var("cfg", "map(any)")), {}, {"cfg": value}, {})
    assert result["cfg"] == value


# --- purity ----------------------------------------------------------------------------


def test_mapping_module_has_no_io_imports() -> None:
    tree = ast.parse(Path(mapping_module.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(
                node.module if node.module.startswith("app") else node.module.split(".")[0]
            )
    assert imported <= {
        "__future__",
        "math",
        "re",
        "dataclasses",
        "collections",
        "typing",
        "app.stacks.model",
    }, imported
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert "open" not in calls


# --- properties ------------------------------------------------------------------------

NAMES = st.sampled_from(
    [*sorted(RUNBOT_INSTANCE_VARIABLES), "a", "b", "db_host", "image_tag", "replicas", "url"]
)
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)
TYPES = st.sampled_from(["any", "string", "number", "bool", "list(string)", "map(string)"])


@st.composite
def declared_templates(draw: st.DrawFn) -> Template:
    names = draw(st.sets(NAMES, max_size=8))
    return template(*(var(n, draw(TYPES), required=draw(st.booleans())) for n in sorted(names)))


@given(
    tpl=declared_templates(),
    runbot=st.dictionaries(st.sampled_from(sorted(RUNBOT_INSTANCE_VARIABLES)), VALUES),
    repo=st.dictionaries(NAMES | st.text(max_size=8), VALUES),
    silo=st.dictionaries(NAMES | st.text(max_size=8), VALUES),
)
def test_instance_inputs_never_returns_an_undeclared_key(
    tpl: Template, runbot: dict[str, Any], repo: dict[str, Any], silo: dict[str, Any]
) -> None:
    try:
        result = instance_inputs(tpl, runbot, repo, silo)
    except MappingError:
        return
    assert set(result) <= set(tpl.variables)


@given(
    names=st.sets(NAMES, max_size=8),
    runbot=st.dictionaries(st.sampled_from(sorted(RUNBOT_INSTANCE_VARIABLES)), VALUES),
    repo=st.dictionaries(NAMES | st.text(max_size=8), VALUES),
    silo=st.dictionaries(NAMES | st.text(max_size=8), VALUES),
)
def test_instance_inputs_takes_the_first_source_that_has_a_value(
    names: set[str], runbot: dict[str, Any], repo: dict[str, Any], silo: dict[str, Any]
) -> None:
    tpl = template(*(var(n) for n in names))  # type any, optional: never raises
    # A repository may set only what runbot and the silo leave (refusals are tested above).
    repo = {k: v for k, v in repo.items() if k not in runbot and k not in silo}
    repo = {k: v for k, v in repo.items() if k not in RUNBOT_INSTANCE_VARIABLES}
    result = instance_inputs(tpl, runbot, repo, silo)
    for name in names:
        for source in (runbot, silo, repo):
            if name in source:
                assert result[name] is source[name]
                break
        else:
            assert name not in result


def test_the_silo_token_fills_its_variable_and_a_wrong_type_does_not_echo_it() -> None:
    token = "f" * 64
    declared = template(var("runbot_silo_token", "string"), var("runbot_api_url", "string"))
    runbot = {"runbot_api_url": "http://runbot:8000"}
    filled = silo_inputs(declared, runbot, {}, {"runbot_silo_token": token})
    assert filled == {"runbot_silo_token": token, "runbot_api_url": "http://runbot:8000"}
    assert silo_inputs(template(), runbot, {}, {"runbot_silo_token": token}) == {}  # undeclared
    with pytest.raises(MappingError) as info:
        silo_inputs(
            template(var("runbot_silo_token", "number")), {}, {}, {"runbot_silo_token": token}
        )
    assert token not in str(info.value) and "runbot_silo_token" in str(info.value)
