"""Tests for reading stack templates (app.stacks.catalog / app.stacks.hcl) on real .tf text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.stacks.catalog import (
    Catalog,
    Output,
    Stack,
    StackError,
    StackSource,
    Variable,
    load_stack,
    load_template,
    validate_name,
)

FIXTURES = Path(__file__).parent / "fixtures" / "stacks"


def write(directory: Path, files: dict[str, str]) -> Path:
    """Write dedented files into directory (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


def make_stack(root: Path, silo: str, instance: str) -> Path:
    write(root / "silo", {"main.tf": silo})
    write(root / "instance", {"main.tf": instance})
    return root


MINIMAL_INSTANCE = """
output "url" {
  value = "https://example.test"
}
"""


# --- names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "web", "web-app_2", "0day", "x" * 63])
def test_validate_name_accepts(name: str) -> None:
    assert validate_name("stack", name) == name


@pytest.mark.parametrize(
    "name",
    ["", "..", ".", "../x", "a/b", "/abs", "Web", "a b", "a.b", "-x", "_x", "x" * 64, "é", "a\n"],
)
def test_validate_name_rejects(name: str) -> None:
    with pytest.raises(StackError, match="is not allowed"):
        validate_name("stack", name)


def test_validate_name_message_is_exact() -> None:
    with pytest.raises(StackError) as info:
        validate_name("stack", "../x")
    assert str(info.value) == (
        "stack name '../x' is not allowed: use lowercase letters, digits, '-' and '_' (max 63)"
    )


def test_validate_name_uses_kind() -> None:
    with pytest.raises(StackError, match=r"^silo name 'A' is not allowed"):
        validate_name("silo", "A")


# --- templates: variables, outputs, backend ---------------------------------


@pytest.fixture(scope="module")
def good() -> Stack:
    return Catalog(FIXTURES).get("good")


def test_variables_are_discovered_with_all_fields(good: Stack) -> None:
    variables = good.instance.variables
    assert sorted(variables) == [
        "api_key",
        "db_host",
        "features",
        "greeting",
        "hosts",
        "image_tag",
        "replicas",
        "runbot_instance_id",
        "runbot_pr_number",
        "tags",
    ]
    assert variables["replicas"] == Variable(
        name="replicas",
        type="number",
        default=2,
        required=False,
        description="How many app containers to run.",
        sensitive=False,
        file="variables.tf",
        line=10,
    )
    assert variables["runbot_instance_id"].line == 2  # after a leading comment line
    assert variables["runbot_instance_id"].required is True
    assert variables["runbot_instance_id"].default is None


def test_heredoc_description_is_dedented_text(good: Stack) -> None:
    image_tag = good.instance.variables["image_tag"]
    assert image_tag.description == "Container image tag to deploy.\nUsually the head SHA."
    assert image_tag.required is True
    assert image_tag.location == "variables.tf:16"


def test_null_default_makes_a_variable_optional_and_sensitive_is_read(good: Stack) -> None:
    api_key = good.instance.variables["api_key"]
    assert api_key.required is False
    assert api_key.default is None
    assert api_key.sensitive is True
    assert good.instance.variables["db_host"].sensitive is False


def test_types_are_normalised_text(good: Stack) -> None:
    variables = good.instance.variables
    assert variables["tags"].type == "map(string)"
    assert variables["hosts"].type == "list(string)"
    assert variables["runbot_pr_number"].type == "number"
    assert variables["features"].type == (
        "object({search = bool, limits = optional(list(number), [])})"
    )
    assert variables["greeting"].type == "any"  # no type argument


def test_defaults_are_python_values(good: Stack) -> None:
    variables = good.instance.variables
    assert variables["tags"].default == {"team": "web", "cost-center": "42"}
    assert variables["hosts"].default == ["a.example", "b.example"]
    assert variables["features"].default == {"search": True, "limits": [1, -2.5]}
    # Escapes are resolved and `$${` is the literal `${`.
    assert variables["greeting"].default == 'say "hi"\n${not_interpolated}'


def test_outputs_with_sensitivity(good: Stack) -> None:
    assert good.instance.outputs == {
        "admin_password": Output("admin_password", "", True, "main.tf", 13),
        "url": Output("url", "Where the environment is served.", False, "main.tf", 8),
    }
    assert good.silo.outputs["db_password"].sensitive is True
    assert good.silo.outputs["db_host"].sensitive is False
    assert good.silo.outputs["db_host"].description == "Shared database host."


def test_backend_detection(good: Stack) -> None:
    assert good.silo.backend == "s3"
    assert good.instance.backend is None


def test_cloud_block_counts_as_backend(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'terraform {\n  cloud {\n    organization = "x"\n  }\n}\n'})
    assert load_template(tmp_path).backend == "cloud"


def test_two_backends_are_refused(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.tf": 'terraform {\n  backend "s3" {}\n}\n',
            "b.tf": '\n\nterraform {\n  backend "gcs" {}\n}\n',
        },
    )
    with pytest.raises(StackError, match=r"b\.tf:4: a second backend .*a\.tf:2"):
        load_template(tmp_path)


def test_template_path_is_recorded(good: Stack) -> None:
    assert good.instance.path == FIXTURES / "good" / "instance"
    assert good.root == FIXTURES / "good"
    assert good.source == StackSource(kind="catalog")


def test_non_literal_default_is_kept_as_expression_text(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.tf": """
            variable "sum" {
              default = 1 + 2
            }
            variable "neg" {
              default = -3
            }
            variable "ref" {
              default = "x-${var.sum}"
            }
            """
        },
    )
    variables = load_template(tmp_path).variables
    assert variables["sum"].default == "${1 + 2}"
    assert variables["sum"].required is False
    assert variables["neg"].default == -3
    assert variables["ref"].default == '${"x-${var.sum}"}'


# --- templates: what the author can get wrong --------------------------------


def test_syntax_error_names_file_and_line() -> None:
    with pytest.raises(StackError) as info:
        load_template(FIXTURES / "syntax-error" / "instance")
    message = str(info.value)
    assert f"{FIXTURES / 'syntax-error' / 'instance' / 'main.tf'}:12:" in message
    assert "syntax error" in message
    assert "column 18" in message


def test_syntax_error_at_end_of_file_points_at_last_line(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'variable "a" {\n  type = string\n\n'})
    with pytest.raises(StackError, match=r"main\.tf:3: syntax error, the file ends early"):
        load_template(tmp_path)


def test_unterminated_string_is_reported(tmp_path: Path) -> None:
    write(tmp_path, {"vars.tf": '\nvariable "a" {\n  default = "open\n}\n'})
    with pytest.raises(StackError, match=r"vars\.tf:3: syntax error"):
        load_template(tmp_path)


def test_crlf_files_keep_line_numbers(tmp_path: Path) -> None:
    tmp_path.joinpath("main.tf").write_bytes(
        b'# c\r\n\r\nvariable "a" {\r\n  type = string\r\n}\r\n'
        b'output "url" {\r\n  value = 1\r\n}\r\n'
    )
    template = load_template(tmp_path)
    assert template.variables["a"].line == 3
    assert template.outputs["url"].line == 6


def test_directory_without_tf_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"README.md": "hi", "main.tf.bak": "x"})
    with pytest.raises(StackError, match=r"has no \.tf files"):
        load_template(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="does not exist"):
        load_template(tmp_path / "nope")


def test_hidden_and_backup_files_are_ignored(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.tf": 'variable "a" {}\n',
            ".hidden.tf": "this is { not hcl",
            "main.tf~": 'variable "a" {}\n',
            "#main.tf#": 'variable "a" {}\n',
        },
    )
    assert list(load_template(tmp_path).variables) == ["a"]


def test_duplicate_variable_across_files_names_both_places(tmp_path: Path) -> None:
    write(tmp_path, {"a.tf": 'variable "x" {}\n', "b.tf": '\nvariable "x" {}\n'})
    with pytest.raises(StackError) as info:
        load_template(tmp_path)
    message = str(info.value)
    assert f"{tmp_path / 'b.tf'}:2: variable 'x' is declared twice" in message
    assert f"first at {tmp_path / 'a.tf'}:1" in message


def test_duplicate_argument_is_refused(tmp_path: Path) -> None:
    # python-hcl2 alone would silently keep the second `type`.
    write(tmp_path, {"main.tf": 'variable "x" {\n  type = string\n  type = number\n}\n'})
    with pytest.raises(StackError, match=r"main\.tf:3: argument 'type' is set twice .*line 2"):
        load_template(tmp_path)


def test_quoted_type_is_refused_with_a_fix(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'variable "x" {\n  type = "string"\n}\n'})
    with pytest.raises(StackError, match=r"main\.tf:2: .*quoted type.*type = string"):
        load_template(tmp_path)


def test_unknown_type_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'variable "x" {\n  type = strng\n}\n'})
    with pytest.raises(StackError, match=r"main\.tf:2: variable 'x' has type 'strng'"):
        load_template(tmp_path)


def test_sensitive_must_be_a_literal_bool(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'output "x" {\n  value = 1\n  sensitive = var.s\n}\n'})
    with pytest.raises(StackError, match=r"main\.tf:3: `sensitive` of 'x' must be true or false"):
        load_template(tmp_path)


def test_variable_block_needs_exactly_one_label(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": "\nvariable a b {}\n"})
    with pytest.raises(StackError, match=r"main\.tf:2: a variable block needs exactly one label"):
        load_template(tmp_path)


def test_top_level_argument_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": 'variable "a" {}\nfoo = 1\n'})
    with pytest.raises(StackError, match=r"main\.tf:2: argument 'foo' is not allowed"):
        load_template(tmp_path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    tmp_path.joinpath("main.tf").write_bytes(b'variable "\xff" {}\n')
    with pytest.raises(StackError, match="is not UTF-8"):
        load_template(tmp_path)


def test_override_files_merge_last(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "main.tf": 'terraform {\n  backend "local" {}\n}\nvariable "x" {\n  default = 1\n}\n',
            "a_override.tf": 'variable "x" {\n  default = 5\n  sensitive = true\n}\n',
            "override.tf": 'terraform {\n  backend "s3" {}\n}\n',
        },
    )
    template = load_template(tmp_path)
    x = template.variables["x"]
    assert (x.default, x.sensitive, x.file, x.line) == (5, True, "main.tf", 4)
    assert template.backend == "s3"


def test_override_without_original_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"main.tf": "", "override.tf": 'variable "ghost" {}\n'})
    with pytest.raises(StackError, match=r"override\.tf:1: variable 'ghost' in an override file"):
        load_template(tmp_path)


# --- stacks: the contract -----------------------------------------------------


def test_instance_must_declare_url() -> None:
    with pytest.raises(StackError, match=r"stack 'no-url': .* declares no output \"url\""):
        Catalog(FIXTURES).get("no-url")


def test_url_output_must_not_be_sensitive(tmp_path: Path) -> None:
    root = make_stack(
        tmp_path / "s",
        "",
        '\noutput "url" {\n  value = "x"\n  sensitive = true\n}\n',
    )
    with pytest.raises(StackError, match=r"instance/main\.tf:2 is marked sensitive"):
        load_stack("s", root)


@pytest.mark.parametrize("missing", ["silo", "instance"])
def test_stack_needs_silo_and_instance(tmp_path: Path, missing: str) -> None:
    root = make_stack(tmp_path / "s", "", MINIMAL_INSTANCE)
    for child in (root / missing).iterdir():
        child.unlink()
    (root / missing).rmdir()
    with pytest.raises(StackError, match=rf"has no {missing}/: a stack needs both"):
        load_stack("s", root)


def test_load_stack_validates_its_name(tmp_path: Path) -> None:
    root = make_stack(tmp_path / "s", "", MINIMAL_INSTANCE)
    with pytest.raises(StackError, match=r"stack name '\.\./s' is not allowed"):
        load_stack("../s", root)


def test_unknown_runbot_variable_is_a_typo(tmp_path: Path) -> None:
    root = make_stack(
        tmp_path / "s",
        "",
        'variable "runbot_pr_numbr" {}\n' + MINIMAL_INSTANCE,
    )
    with pytest.raises(StackError, match=r"instance/main\.tf:1: .*'runbot_pr_numbr' uses the"):
        load_stack("s", root)


def test_silo_cannot_use_instance_runbot_variables(tmp_path: Path) -> None:
    root = make_stack(tmp_path / "s", 'variable "runbot_pr_number" {}\n', MINIMAL_INSTANCE)
    provided = "runbot_api_url, runbot_silo_name, runbot_silo_token, runbot_work"
    with pytest.raises(StackError, match=f"runbot provides only {provided}"):
        load_stack("s", root)


def test_needs_repo_vars_is_listed_not_raised() -> None:
    stack = Catalog(FIXTURES).get("needs-var")
    # db_host comes from a silo output and runbot_pr_number from runbot.
    assert [v.name for v in stack.needs_repo_vars()] == ["app_secret"]
    assert stack.needs_repo_vars()[0].location == "main.tf:9"


def test_good_stack_needs(good: Stack) -> None:
    assert [v.name for v in good.needs_repo_vars()] == ["image_tag"]
    assert [v.name for v in good.needs_operator_vars()] == ["admin_email"]


def test_explicit_source_is_kept(tmp_path: Path) -> None:
    root = make_stack(tmp_path / "s", "", MINIMAL_INSTANCE)
    source = StackSource(kind="repo", path="infra/runbot")
    assert load_stack("s", root, source).source is source


# --- catalog -------------------------------------------------------------------


def test_names_are_sorted_stack_directories(tmp_path: Path) -> None:
    make_stack(tmp_path / "zeta", "", MINIMAL_INSTANCE)
    make_stack(tmp_path / "alpha", "", MINIMAL_INSTANCE)
    (tmp_path / "modules" / "net").mkdir(parents=True)  # shared modules, not a stack
    (tmp_path / "README.md").write_text("x")
    make_stack(tmp_path / "Bad Name", "", MINIMAL_INSTANCE)
    assert Catalog(tmp_path).names() == ["alpha", "zeta"]


def test_fixture_catalog_names() -> None:
    assert Catalog(FIXTURES).names() == ["good", "needs-var", "no-url", "syntax-error"]


def test_unknown_stack_lists_what_exists() -> None:
    with pytest.raises(StackError) as info:
        Catalog(FIXTURES).get("nope")
    assert str(info.value) == (
        f"unknown stack 'nope': the catalog at {FIXTURES} has: "
        "good, needs-var, no-url, syntax-error"
    )


def test_unknown_stack_in_empty_catalog(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="has: no stacks"):
        Catalog(tmp_path).get("web")


@pytest.mark.parametrize("name", ["../good", "good/..", "..", "/good", "good/instance", "GOOD"])
def test_get_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(StackError, match=r"stack name .* is not allowed"):
        Catalog(FIXTURES).get(name)


def test_get_refuses_a_directory_that_is_not_a_stack(tmp_path: Path) -> None:
    make_stack(tmp_path / "web", "", MINIMAL_INSTANCE)
    (tmp_path / "modules").mkdir()
    with pytest.raises(StackError, match=r"unknown stack 'modules'.*has: web"):
        Catalog(tmp_path).get("modules")


def test_missing_templates_dir(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"templates directory .* does not exist"):
        Catalog(tmp_path / "nope").names()


def test_check_all_reports_each_stack() -> None:
    results = Catalog(FIXTURES).check_all()
    assert set(results) == {"good", "needs-var", "no-url", "syntax-error"}
    assert results["good"] is None
    assert results["needs-var"] is None
    assert isinstance(results["no-url"], StackError)
    assert "declares no output" in str(results["no-url"])
    assert isinstance(results["syntax-error"], StackError)
    assert "main.tf:12" in str(results["syntax-error"])


def test_check_all_reports_badly_named_stacks(tmp_path: Path) -> None:
    make_stack(tmp_path / "Web", "", MINIMAL_INSTANCE)
    results = Catalog(tmp_path).check_all()
    assert list(results) == ["Web"]
    assert "stack name 'Web' is not allowed" in str(results["Web"])


# --- parse cache -------------------------------------------------------------


def test_a_stack_is_parsed_once_until_a_template_file_changes(tmp_path: Path) -> None:
    make_stack(tmp_path / "web", 'output "zone" {\n  value = "z"\n}\n', MINIMAL_INSTANCE)
    catalog = Catalog(tmp_path)
    first = catalog.get("web")
    assert catalog.get("web") is first  # same parse, no second trip through HCL
    # An edit, a new file and a broken file all show at the next get, without a restart.
    write(tmp_path / "web" / "instance", {"vars.tf": 'variable "size" {\n  default = 2\n}\n'})
    edited = catalog.get("web")
    assert edited is not first and "size" in edited.instance.variables
    write(tmp_path / "web" / "instance", {"vars.tf": 'variable "size" {\n'})
    with pytest.raises(StackError, match=r"vars\.tf"):
        catalog.get("web")
