"""An apply's outputs, as runbot keeps them: name -> {"value", "sensitive", "type"}.

Apart from the runner because they come from two places with one shape: runbot's own local
state file (read directly, no second engine process) and the engine's `output -json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.engine.backends import Backend, local_state_file


def outputs_of(items: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The outputs of a state file or of `output -json`, keeping only what runbot uses."""
    return {
        name: {
            "value": item.get("value"),
            "sensitive": bool(item.get("sensitive")),
            "type": item.get("type"),
        }
        for name, item in items.items()
    }


def local_state_outputs(
    data_dir: Path, target: str, declared_backend: str | None, backend: Backend
) -> dict[str, dict[str, Any]] | None:
    """Outputs read from runbot's own local state file; None to ask the engine instead.

    Only for the local backend runbot chose itself (a state file at a path it decided), and
    only for the state format both OpenTofu and Terraform write today (version 4).
    """
    if declared_backend or backend.kind != "local":
        return None
    path = local_state_file(data_dir, target)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("version") != 4:
        return None  # not a state this reader knows (a list, a string): the engine reads it
    outputs = state.get("outputs")
    if not isinstance(outputs, dict):
        return None
    if not all(isinstance(item, dict) and "value" in item for item in outputs.values()):
        return None
    return outputs_of(outputs)
