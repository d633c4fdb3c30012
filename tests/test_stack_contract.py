"""The shipped stacks (local, aws, kubernetes) parse and follow the silo/instance contract."""

from __future__ import annotations

import pytest

from app.stacks.catalog import Catalog
from app.stacks.mapping import RUNBOT_INSTANCE_VARIABLES
from tests.conftest import TEMPLATES

SHIPPED = ["aws", "kubernetes", "local"]


def test_catalog_lists_the_shipped_stacks_and_all_pass_checks() -> None:
    catalog = Catalog(TEMPLATES)
    assert catalog.names() == SHIPPED
    assert catalog.check_all() == {name: None for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_instance_contract(name: str) -> None:
    stack = Catalog(TEMPLATES).get(name)
    assert "url" in stack.instance.outputs and not stack.instance.outputs["url"].sensitive
    assert "runbot_capacity" in stack.silo.outputs
    for required in ("runbot_instance_id", "runbot_slot", "runbot_suspended"):
        assert required in stack.instance.variables, f"{name} instance ignores {required}"
    # Every required instance variable is provided by runbot or by a silo output of that name.
    provided = RUNBOT_INSTANCE_VARIABLES | set(stack.silo.outputs)
    unmet = [
        v.name for v in stack.instance.variables.values() if v.required and v.name not in provided
    ]
    assert unmet == [] or name != "local", unmet
    for variable in [*stack.silo.variables.values(), *stack.instance.variables.values()]:
        assert variable.description, f"{name}: {variable.location} has no description"


@pytest.mark.parametrize("name", ["aws", "kubernetes"])
def test_cloud_stacks_use_their_provider_and_route_by_pr(name: str) -> None:
    stack = Catalog(TEMPLATES).get(name)
    text = "".join(p.read_text() for p in stack.instance.path.glob("*.tf"))
    assert f"hashicorp/{name}" in "".join(p.read_text() for p in stack.root.rglob("*.tf"))
    assert "runbot_pr_number" in text and "runbot_suspended" in text
    assert stack.instance.variables["runbot_suspended"].type == "bool"
