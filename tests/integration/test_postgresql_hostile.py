"""Hostile and odd lastRecord input against a real PostgreSQL 15 (see conftest.postgres_server).

Whoever writes a SnapshotGroup chooses the query, the table and the column. Each test checks what
the database looks like afterwards (nothing dropped, nothing written), what reason and field the
plan names, and that no value stored in the database reaches a message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError

import snapgroup.hooks.postgresql  # noqa: F401 - registers the hook type
from snapgroup.adapters.postgres import PostgresConnection
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks.evidence import skew_from
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.ports import PlanError, StepError

pytestmark = pytest.mark.postgres

PATH = "spec.services[0]"
SECRET_VALUE = "tops3cret-value-7f3a"
"""Stored in the database; must never show in a message."""
READER_PASSWORD = "reader-pw-91c2"


def target(last_record: dict[str, Any], timeout: str = "10s") -> ServiceTarget:
    return ServiceTarget.model_validate({
        "name": "postgres", "type": "postgresql", "pvcs": ["postgres-data"],
        "connection": {"secretRef": {"name": "postgres-credentials"}, "timeout": timeout},
        "lastRecord": last_record,
    })


async def plan(ctx: HookContext, service: ServiceTarget) -> ServiceHook:
    hook_type = lookup("postgresql")
    assert hook_type is not None
    [hook] = await hook_type.plan(ctx, service, PATH)
    assert isinstance(hook, ServiceHook)
    return hook


async def refused(ctx: HookContext, last_record: dict[str, Any], timeout: str = "10s") -> PlanError:
    with pytest.raises(PlanError) as caught:
        await plan(ctx, target(last_record, timeout))
    assert SECRET_VALUE not in str(caught.value)
    return caught.value


@pytest.fixture
async def db(postgres_server: Any) -> AsyncIterator[psycopg.AsyncConnection]:
    """A test-side session over a fresh schema: events (timestamptz, indexed), naive (timestamp),
    days (date), secrets (a value that must not leak)."""
    conn = await psycopg.AsyncConnection.connect(postgres_server.conninfo(), autocommit=True)
    for statement in (
        "DROP TABLE IF EXISTS events, naive, days, secrets, unindexed",
        "CREATE TABLE events (id serial, created_at timestamptz)",
        "CREATE INDEX ON events (created_at)",
        "INSERT INTO events (created_at) VALUES ('2026-03-01 12:00:00+00')",
        "CREATE TABLE naive (created_at timestamp)",
        "CREATE INDEX ON naive (created_at)",
        "INSERT INTO naive VALUES ('2026-03-01 12:00:00')",
        "CREATE TABLE days (created_on date)",
        "INSERT INTO days VALUES ('2026-03-01')",
        "CREATE TABLE unindexed (created_at timestamptz)",
        "CREATE TABLE secrets (v text)",
        f"INSERT INTO secrets VALUES ('{SECRET_VALUE}')",
    ):
        await conn.execute(statement.encode())
    try:
        yield conn
    finally:
        await conn.execute(b"ALTER ROLE postgres RESET TimeZone")
        await conn.close()


async def count(conn: psycopg.AsyncConnection, table: str) -> int:
    row = await (await conn.execute(f"SELECT count(*) FROM {table}".encode())).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("query", [
    "COMMIT; DROP TABLE events; SELECT now()",
    "SELECT now(); DROP TABLE events",
    "SELECT now() /* ; */ ; DROP TABLE events",
    "SELECT $$;$$::text, now(); DROP TABLE events",
    "DROP TABLE events",
    "DELETE FROM events RETURNING created_at",
    "SET TRANSACTION READ WRITE",
    "SELECT 'unterminated; DROP TABLE events",
])
async def test_queries_other_than_one_select_are_refused_and_touch_nothing(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any, query: str
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    error = await refused(ctx, {"query": query})
    assert (error.reason, error.field_path) == ("LastRecordQueryRejected", f"{PATH}.lastRecord.query")
    assert await count(db, "events") == 1


async def test_what_the_lexer_lets_through_still_runs_as_one_statement(
    postgres_server: Any, db: psycopg.AsyncConnection
) -> None:
    """The adapter alone, past the plan's check: the extended protocol refuses two statements."""
    session = await PostgresConnection.open(postgres_server.secret(), 10)
    try:
        with pytest.raises(StepError) as caught:
            await session.newest_record(None, None, "COMMIT; DROP TABLE events; SELECT now()")
        assert caught.value.reason == "LastRecordInvalid"
        assert "SQLSTATE 42601" in caught.value.message
        # A data-modifying CTE is one SELECT-looking statement: the read-only transaction stops it.
        with pytest.raises(StepError) as caught:
            await session.newest_record(
                None, None,
                "WITH d AS (DELETE FROM events RETURNING created_at) SELECT max(created_at) FROM d")
        assert "SQLSTATE 25006" in caught.value.message
    finally:
        await session.close()
    assert await count(db, "events") == 1


async def test_database_values_never_reach_the_message(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    error = await refused(ctx, {"query": "SELECT v::timestamptz FROM secrets"})
    assert error.field_path == f"{PATH}.lastRecord"
    assert "SQLSTATE 22007" in error.message and SECRET_VALUE not in error.message
    # Through a function that raises with the value in its message and its detail.
    error = await refused(ctx, {"query": "SELECT CAST(v AS int)::text::timestamptz FROM secrets"})
    assert "SQLSTATE 22P02" in error.message
    error = await refused(ctx, {"query": "SELECT now() FROM secrets WHERE v::int > 0"})
    assert SECRET_VALUE not in error.message


async def test_identifiers_are_quoted_never_pasted(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    error = await refused(
        ctx, {"table": "events", "column": "created_at) FROM events; DROP TABLE events; --"})
    assert error.reason == "LastRecordNotFound" and "SQLSTATE 42703" in error.message
    # A stray quote is refused by the API (the CRD's pattern is the same); a well-quoted one is a
    # name like any other.
    with pytest.raises(ValidationError) as invalid:
        target({"table": 'events"; DROP TABLE events; --', "column": "created_at"})
    assert invalid.value.errors()[0]["loc"] == ("lastRecord", "table")
    error = await refused(ctx, {"table": '"events""; DROP TABLE events; --"', "column": "created_at"})
    assert error.reason == "LastRecordNotFound"
    assert await count(db, "events") == 1
    await db.execute(b'CREATE SCHEMA IF NOT EXISTS "odd.schema"')
    await db.execute(b'CREATE TABLE IF NOT EXISTS "odd.schema"."Ev""ents" ("At" timestamptz)')
    await db.execute(b'INSERT INTO "odd.schema"."Ev""ents" VALUES (\'2026-03-01 13:00:00+00\')')
    hook = await plan(ctx, target({"table": '"odd.schema"."Ev""ents"', "column": "At"}))
    try:
        assert await hook.newest_record() == datetime(2026, 3, 1, 13, tzinfo=UTC)
    finally:
        await hook.release()


async def test_naive_timestamps_are_read_in_the_servers_time_zone(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    await db.execute(b"ALTER ROLE postgres SET TimeZone = 'America/New_York'")
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    hook = await plan(ctx, target({"table": "naive", "column": "created_at"}))
    try:
        # 12:00 on the New York wall clock is 17:00 UTC, not 12:00 UTC.
        assert await hook.newest_record() == datetime(2026, 3, 1, 17, tzinfo=UTC)
    finally:
        await hook.release()
    # And what now() writes into a naive column comes back as now.
    await db.execute(b"INSERT INTO naive VALUES (now() AT TIME ZONE 'America/New_York')")
    hook = await plan(ctx, target({"table": "naive", "column": "created_at"}))
    try:
        newest = await hook.newest_record()
        assert newest is not None and abs(newest - datetime.now(UTC)) < timedelta(seconds=30)
    finally:
        await hook.release()


async def test_date_columns_are_refused(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    error = await refused(ctx, {"table": "days", "column": "created_on"})
    assert (error.reason, error.field_path) == ("LastRecordInvalid", f"{PATH}.lastRecord")
    assert "date" in error.message
    error = await refused(ctx, {"query": "SELECT max(created_on) FROM days"})
    assert error.reason == "LastRecordInvalid"
    error = await refused(ctx, {"query": "SELECT 'x'::text"})
    assert error.reason == "LastRecordInvalid" and "not a timestamp" in error.message


async def test_statement_and_lock_timeouts_bound_the_read(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    started = asyncio.get_running_loop().time()
    error = await refused(ctx, {"query": "SELECT now() FROM pg_sleep(30)"}, timeout="2s")
    assert error.reason == "Timeout"
    assert asyncio.get_running_loop().time() - started < 10
    # A lock another session holds: the lock timeout ends the wait, not the caller's patience.
    async with db.transaction():
        await db.execute(b"LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        error = await refused(ctx, {"table": "events", "column": "created_at"}, timeout="2s")
    assert error.reason == "Timeout" and "SQLSTATE 55P03" in error.message


async def test_a_separate_least_privileged_reader(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    await db.execute(b"DROP ROLE IF EXISTS record_reader")
    await db.execute(f"CREATE ROLE record_reader LOGIN PASSWORD '{READER_PASSWORD}'".encode())
    await db.execute(b"GRANT SELECT ON events TO record_reader")
    reader_secret = postgres_server.secret(username="record_reader", password=READER_PASSWORD)
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret(),
                          "reader-credentials": reader_secret})
    hook = await plan(ctx, target({"table": "events", "column": "created_at",
                                   "secretRef": {"name": "reader-credentials"}}))
    try:
        assert await hook.newest_record() == datetime(2026, 3, 1, 12, tzinfo=UTC)
        users = await (await db.execute(
            b"SELECT usename FROM pg_stat_activity WHERE application_name LIKE 'snapgroup%'")).fetchall()
        assert sorted(u for (u,) in users) == ["postgres", "record_reader"]
    finally:
        await hook.release()
    # The reader may read nothing else: the secrets table is out of its reach.
    error = await refused(ctx, {"query": "SELECT now() FROM secrets",
                                "secretRef": {"name": "reader-credentials"}})
    assert error.reason == "PermissionDenied"
    error = await refused(ctx, {"table": "events", "column": "created_at",
                                "secretRef": {"name": "no-such-secret"}})
    assert (error.reason, error.field_path) == ("SecretNotFound", f"{PATH}.lastRecord.secretRef.name")


async def test_plan_warns_when_the_column_has_no_index_and_records_the_clock_skew(
    postgres_server: Any, db: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    hook = await plan(ctx, target({"table": "unindexed", "column": "created_at"}))
    try:
        [warning] = hook.plan_warnings()
        assert (warning.reason, warning.field_path) == ("LastRecordNotIndexed", f"{PATH}.lastRecord.column")
        skew = skew_from(hook.evidence())
        # Same machine, same clock: the skew is within its own uncertainty of zero.
        assert skew is not None and abs(skew.seconds) <= skew.uncertainty + 0.01
    finally:
        await hook.release()
    indexed = await plan(ctx, target({"table": "events", "column": "created_at"}))
    try:
        assert indexed.plan_warnings() == []
    finally:
        await indexed.release()
