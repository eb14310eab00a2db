"""A PostgreSQL server whose clock is 30 s ahead of the operator's, for real: the server runs under
libfaketime (LD_PRELOAD, a constant offset on every clock call it makes, as a host with a wrong
clock would give it). The plan measures the skew from the server's clock_timestamp(); a record
written just before the cut then reads as 30 s after it, and the verdict is Unknown
(ClockSkewTooLarge) instead of False, since nobody can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import snapgroup.hooks.postgresql  # noqa: F401 - registers the hook type
from integration.conftest import PostgresServer, running_postgres
from integration.test_postgresql_hostile import plan, target
from snapgroup.api.snapshotgroup import ServiceStatus
from snapgroup.hooks.evidence import skew_from
from snapgroup.orchestration.snapshots import consistency

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
AHEAD = 30.0


@pytest.fixture(scope="module")
def skewed_server() -> Iterator[PostgresServer]:
    if not LIBFAKETIME.exists():
        pytest.skip(f"libfaketime is not installed at {LIBFAKETIME} (Debian package libfaketime)")
    with running_postgres({"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"+{AHEAD:g}s",
                           "FAKETIME_DONT_RESET": "1"}) as server:
        yield server


async def test_a_server_clock_ahead_is_measured_and_makes_the_verdict_unknown_not_false(
    skewed_server: PostgresServer, hook_context: Any,
) -> None:
    with psycopg.connect(skewed_server.conninfo(), autocommit=True) as conn:
        server_now = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        conn.execute("CREATE TABLE events (seq int, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("CREATE INDEX ON events (created_at)")
        conn.execute("INSERT INTO events (seq) VALUES (1)")
    # The fault, proven: the server's clock runs ahead of ours by the offset.
    assert abs((server_now - datetime.now(UTC)).total_seconds() - AHEAD) < 2.0, server_now
    written_by_us = datetime.now(UTC)  # the record was written before this moment
    cut = written_by_us + timedelta(seconds=1)  # a cut one second after the record

    ctx = hook_context(**{"postgres-credentials": skewed_server.secret()})
    hook = await plan(ctx, target({"table": "events", "column": "created_at"}))
    try:
        skew = skew_from(hook.evidence())
        newest = await hook.newest_record()
    finally:
        await hook.release()
    assert skew is not None and abs(skew.seconds - AHEAD) < 1.0, hook.evidence()
    assert newest is not None and newest > cut  # read in the server's clock: "after" the cut

    measured = ServiceStatus(name="postgres", type="postgresql", last_record_time=newest,
                             evidence=hook.evidence())
    verdict = consistency([measured], cut)
    assert (verdict.status, verdict.reason) == ("Unknown", "ClockSkewTooLarge"), verdict
    assert "postgres's clock differs from the operator's by up to 3" in verdict.message
    # Without the measurement, the same record would condemn a consistent backup.
    blind = consistency([measured.model_copy(update={"evidence": {}})], cut)
    assert (blind.status, blind.reason) == ("False", "RecordsNewerThanCut")
