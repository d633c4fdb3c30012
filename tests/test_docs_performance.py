"""The performance documents are what bench/report.py renders from the committed results.

docs/performance.md and the README's table of targets are never edited by hand: `python -m bench`
(or `python -m bench.report`) renders them from bench/results.json and the benchmarks'
docstrings. The README stays a five-minute read.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import BENCHMARKS, report
from tests.conftest import ROOT

RERENDER = "run `python -m bench.report` and commit what it writes"


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    assert report.RESULTS.exists(), "bench/results.json is committed: run `python -m bench`"
    return report.load()


def test_performance_page_is_rendered_from_the_results(results: dict[str, Any]) -> None:
    assert report.PERFORMANCE.read_text() == report.render_performance(results), RERENDER


def test_readme_targets_are_rendered_from_the_results(results: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    assert report.readme_block(readme) == report.render_targets(results), RERENDER


def test_the_results_cover_every_benchmark(results: dict[str, Any]) -> None:
    assert {row["bench"] for row in results["rows"]} == set(BENCHMARKS)
    assert set(results["runs"]) == set(BENCHMARKS)
    assert any(row["passed"] is not None for row in results["rows"]), "no figure has a target"


@pytest.mark.parametrize("module", ["bench", *BENCHMARKS.values()])
def test_every_benchmark_documents_its_method(module: str) -> None:
    method = report.method(module)
    assert method.title and "\n" not in method.title, f"{module}: a one-line summary first"
    assert len(method.body.splitlines()) >= 3, f"{module}: the method, after a blank line"


def test_the_readme_is_a_five_minute_read() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move detail to docs/"
