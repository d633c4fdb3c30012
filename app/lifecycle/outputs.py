"""Views of a stack's outputs: plain, public or secret values, and what to mask where shown."""

from __future__ import annotations

from typing import Any


def plain_values(outputs: dict[str, Any]) -> dict[str, Any]:
    return {name: item.get("value") for name, item in outputs.items()}


def public_values(outputs: dict[str, Any]) -> dict[str, Any]:
    return {name: item.get("value") for name, item in outputs.items() if not item.get("sensitive")}


def secret_values(outputs: dict[str, Any]) -> dict[str, Any]:
    return {name: item.get("value") for name, item in outputs.items() if item.get("sensitive")}


def sensitive_values(outputs: dict[str, Any]) -> list[str]:
    """Every string inside sensitive outputs, so logs can be scrubbed of them."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif value is not None and not isinstance(value, bool):
            found.append(str(value))

    for item in outputs.values():
        if item.get("sensitive"):
            walk(item.get("value"))
    return found


def public_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """Outputs as shown anywhere (CLI, API, dashboard, comments): sensitive values masked."""
    return {
        name: ("(sensitive)" if item.get("sensitive") else item.get("value"))
        for name, item in outputs.items()
    }


#: The instance output a stack sets to true when its `url` answers while the environment
#: sleeps and wakes it (a silo ingress that calls runbot's wake API).
WAKES_ON_REQUEST = "runbot_wakes_on_request"


def wakes_on_request(outputs: dict[str, Any]) -> bool:
    """The stack says opening the URL wakes the environment; only a literal true counts."""
    item = outputs.get(WAKES_ON_REQUEST)
    return isinstance(item, dict) and item.get("value") is True and not item.get("sensitive")
