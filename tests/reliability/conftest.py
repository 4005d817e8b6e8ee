"""Fault injection (`-m reliability`): each test records what it did and measured with
`figures.record(...)`; the figures are printed at the end of the run and, with
ERP_RELIABILITY_REPORT=path, written there as Markdown (docs/reliability.md is one)."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest


class Figures:
    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, Any]]] = []

    def record(self, scenario: str, **numbers: Any) -> None:
        self.rows.append((scenario, numbers))

    def markdown(self) -> str:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        lines = ["# Reliability: fault-injection figures", "",
                 f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}, by "
                 "`pytest -m reliability` (tests/reliability/).", ""]
        for scenario, numbers in self.rows:
            lines.append(f"## {scenario}")
            lines.append("")
            lines.extend(f"- {name.replace('_', ' ')}: {value}" for name, value in numbers.items())
            lines.append("")
        return "\n".join(lines)


_FIGURES = Figures()


@pytest.fixture
def figures() -> Figures:
    return _FIGURES


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    request.node.user_properties.append(("seconds", round(time.monotonic() - started, 1)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES.rows:
        return
    text = _FIGURES.markdown()
    terminalreporter.write_sep("=", "reliability figures")
    terminalreporter.write_line(text)
    target = os.environ.get("ERP_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(text)
