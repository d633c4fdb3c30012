"""The shipped aws and kubernetes examples output an honest hourly cost.

Their providers cannot be downloaded here, so the templates are read as runbot reads them
(`app.stacks.catalog`, python-hcl2), and the cost part alone (cost.tf, the two outputs, the
variables they use with their defaults) is applied by the real embedded engine: the outputs
exist, are numbers, and are what the prices named in the comments add up to.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.cost.rates import read_rates
from app.stacks.catalog import load_template
from tests.conftest import TEMPLATES

pytestmark = pytest.mark.engine

OUTPUTS = ("runbot_hourly_cost", "runbot_hourly_cost_asleep")
#: The awake estimate at the templates' defaults, from the prices in their cost.tf comments.
EXPECTED = {
    # 0.25 vCPU x 0.04048 + 0.5 GB x 0.004445 + one public IPv4 x 0.005
    "aws": 0.25 * 0.04048 + 0.5 * 0.004445 + 0.005,
    # 50m CPU x 0.0445 + 64 MiB x 0.0049225 per GiB
    "kubernetes": 0.05 * 0.0445 + 64 / 1024 * 0.0049225,
}


def output_blocks(text: str) -> str:
    """The two cost output blocks of outputs.tf, as written."""
    found = [
        match.group(0)
        for match in re.finditer(r'(?ms)^output "(\w+)" \{\n.*?^\}\n', text)
        if match.group(1) in OUTPUTS
    ]
    assert len(found) == 2, text
    return "\n".join(found)


def cost_module(stack: str, into: Path) -> Path:
    instance = TEMPLATES / stack / "instance"
    template = load_template(instance)
    for name in OUTPUTS:
        assert name in template.outputs, f"{stack} does not output {name}"
        assert not template.outputs[name].sensitive, "runbot refuses a sensitive cost"
    cost = (instance / "cost.tf").read_text()
    outputs = output_blocks((instance / "outputs.tf").read_text())
    used = sorted(
        set(re.findall(r"\bvar\.(\w+)", cost)) - set(re.findall(r'variable "(\w+)"', cost))
    )
    declared = []
    for name in used:
        variable = template.variables[name]
        assert not variable.required, f"{name}: the cost needs a default to be applied alone"
        declared.append(f'variable "{name}" {{\n  default = {json.dumps(variable.default)}\n}}\n')
    into.mkdir(parents=True)
    (into / "cost.tf").write_text(cost)
    (into / "outputs.tf").write_text(outputs)
    (into / "variables.tf").write_text("\n".join(declared))
    return into


def engine(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.engine.embedded", *args, "-no-color"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_IN_AUTOMATION": "1", "PATH": "/usr/bin:/bin", "HOME": str(workdir)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("stack", ["aws", "kubernetes"])
def test_the_example_outputs_an_hourly_cost(stack: str, tmp_path: Path) -> None:
    module = cost_module(stack, tmp_path / stack)
    engine(module, "init", "-input=false")
    engine(module, "apply", "-input=false", "-auto-approve")
    outputs = json.loads(engine(module, "output", "-json"))
    rates, warnings = read_rates(outputs)
    assert warnings == [] and rates.declared
    assert rates.awake == pytest.approx(EXPECTED[stack])
    assert 0 < rates.awake < 1, "an estimate for one small preview, per hour"
    assert rates.asleep == 0  # asleep nothing runs: no task, no replica


@pytest.mark.parametrize("stack", ["aws", "kubernetes"])
def test_the_prices_used_are_named(stack: str) -> None:
    """Each price is a variable whose description names its source and value."""
    instance = TEMPLATES / stack / "instance"
    text = (instance / "cost.tf").read_text()
    assert "on-demand" in text and "as of 2025" in text
    prices = {
        name: variable
        for name, variable in load_template(instance).variables.items()
        if name.startswith("price_")
    }
    assert len(prices) >= 2
    for name, variable in prices.items():
        assert isinstance(variable.default, float) and variable.default > 0, name
        assert f"{variable.default:g}" in variable.description, name
