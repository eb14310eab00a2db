"""A small smoke run of the record-read benchmark (`make bench-record` runs it on 100,000)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks import record_read


def test_the_benchmark_runs_and_reports_each_set_up(tmp_path: Path) -> None:
    report = asyncio.run(record_read.run(500))
    results = {r["setup"]: r for r in report["results"]}  # type: ignore[union-attr]
    assert set(results) == {"capped", "startAfter", "unbounded"}
    assert all(r["complete"] and r["newest_is_right"] for r in results.values())
    assert results["unbounded"]["listed"] == 500
    assert record_read.main(["--objects", "20", "--report", str(tmp_path)]) == 0
    assert "| capped |" in (tmp_path / "record-read.md").read_text()
