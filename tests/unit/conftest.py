"""Unit-suite hooks: the fault-injection matrix reports how many (k, fault) cases ran."""

from __future__ import annotations

import pytest

FAULT_CASES = "test_fault_injection.py::test_a_fault_at_any_call"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line: (k, fault) cases run, and how many held every invariant."""
    stats = terminalreporter.stats
    reports = [r for outcome in ("passed", "failed") for r in stats.get(outcome, [])
               if getattr(r, "when", "") == "call" and FAULT_CASES in r.nodeid]
    if reports:
        passed = sum(1 for r in reports if r.passed)
        terminalreporter.write_line(
            f"fault injection: {len(reports)} (k, fault) cases ran, {passed} held every invariant")
