"""Collects the chaos suite's fault matrices and prints them at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

MATRICES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MATRICES:
        terminalreporter.section("chaos: fault x outcome")
        for matrix in MATRICES:
            terminalreporter.write_line(matrix)


@pytest.fixture
def report_matrix() -> Any:
    return MATRICES.append
