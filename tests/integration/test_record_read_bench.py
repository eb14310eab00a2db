"""A small smoke run of the record-read benchmark (`make bench-record` runs it on 100,000)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks import record_read


def test_the_benchmark_runs_and_reports_each_set_up(tmp_path: Path) -> None:
    # A bucket larger than the cap, as the 100,000-object run is: the capped read stops there.
    report = asyncio.run(record_read.run(500, cap=200, recent=100))
    results = {r["setup"]: r for r in report["results"]}  # type: ignore[union-attr]
    assert set(results) == {"capped", "startAfter", "unbounded"}
    capped = results["capped"]
    assert (capped["listed"], capped["complete"], capped["newest_is_right"]) == (200, False, False)
    after = results["startAfter"]
    assert (after["listed"], after["complete"], after["newest_is_right"]) == (100, True, True)
    assert results["unbounded"]["listed"] == 500 and results["unbounded"]["complete"]
    assert record_read.main(["--objects", "20", "--report", str(tmp_path)]) == 0
    assert "| capped |" in (tmp_path / "record-read.md").read_text()
