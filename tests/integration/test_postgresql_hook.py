"""The postgresql hook type against a real PostgreSQL 15 (see conftest.postgres_server).

How a test sees backup mode from outside the hook's session: PostgreSQL keeps a count of running
backups in shared memory and, while it is above zero, forces full-page writes even when
full_page_writes is off (the fixture turns it off). After a CHECKPOINT, the first change to a full
heap page then logs an image of the whole page (about 8 kB of WAL) instead of a ~100-byte record.
A second session measures the WAL its own UPDATE generates: large means a backup is running
somewhere on the server, small means none is. (PostgreSQL 15 has no function that reports
non-exclusive backups — pg_is_in_backup() covered exclusive ones and is gone — and a second
session's pg_backup_stop() fails whatever other sessions do.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

import snapgroup.hooks.postgresql  # noqa: F401 - registers the hook type
from snapgroup.adapters.postgres import APPLICATION_NAME, PostgresConnection
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.ports import PlanError

pytestmark = pytest.mark.postgres

PATH = "spec.services[0]"
FULL_PAGE_IMAGE = 4096
"""WAL bytes above which an UPDATE must have logged a page image (a full page is 8192)."""


def target(last_record: dict[str, str] | None = None) -> ServiceTarget:
    return ServiceTarget.model_validate({
        "name": "postgres", "type": "postgresql", "pvcs": ["postgres-data"],
        "connection": {"secretRef": {"name": "postgres-credentials"}, "timeout": "10s"},
        **({"lastRecord": last_record} if last_record else {}),
    })


async def plan(ctx: HookContext, service: ServiceTarget | None = None) -> ServiceHook:
    hook_type = lookup("postgresql")
    assert hook_type is not None
    [hook] = await hook_type.plan(ctx, service or target(), PATH)
    assert isinstance(hook, ServiceHook)
    return hook


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@pytest.fixture
async def observer(postgres_server: Any) -> AsyncIterator[psycopg.AsyncConnection]:
    """A second session, independent of the hook's."""
    conn = await psycopg.AsyncConnection.connect(postgres_server.conninfo(), autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(conn: psycopg.AsyncConnection, query: str) -> object:
    row = await (await conn.execute(query.encode())).fetchone()
    assert row is not None
    return row[0]


async def page_image_bytes(conn: psycopg.AsyncConnection) -> int:
    """WAL written by updating one row of a freshly checkpointed, full heap page."""
    await conn.execute("DROP TABLE IF EXISTS fpw_probe")
    await conn.execute("CREATE TABLE fpw_probe (id int, pad text)")
    await conn.execute(
        "INSERT INTO fpw_probe SELECT g, repeat('x', 60) FROM generate_series(1, 100) g")
    await conn.execute("CHECKPOINT")
    before = await scalar(conn, "SELECT pg_current_wal_insert_lsn()")
    await conn.execute("UPDATE fpw_probe SET pad = pad WHERE id = 1")
    written = await scalar(
        conn, f"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '{before}')")
    return int(str(written))


async def operator_backends(conn: psycopg.AsyncConnection) -> int:
    return int(str(await scalar(
        conn, f"SELECT count(*) FROM pg_stat_activity "
              f"WHERE application_name = '{APPLICATION_NAME}'")))


async def test_backup_mode_is_held_by_the_hooks_session_and_left_by_undo(
    postgres_server: Any, observer: psycopg.AsyncConnection, hook_context: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    hook = await plan(ctx)
    try:
        assert await page_image_bytes(observer) < FULL_PAGE_IMAGE, "a backup ran before apply"

        record = await hook.apply()
        # The fast checkpoint of pg_backup_start is the latest checkpoint, and its redo point
        # is the backup's start LSN.
        redo = await scalar(observer, "SELECT redo_lsn::text FROM pg_control_checkpoint()")
        assert redo == record["startLsn"]
        assert await page_image_bytes(observer) >= FULL_PAGE_IMAGE, "no backup is running"

        message = await hook.undo(record)
        assert await page_image_bytes(observer) < FULL_PAGE_IMAGE, "the backup is still running"
    finally:
        await hook.release()

    evidence = hook.evidence()
    assert evidence["serverVersion"].startswith("15.")
    assert evidence["backupStartLSN"] == record["startLsn"]
    assert lsn(evidence["backupStopLSN"]) >= lsn(evidence["backupStartLSN"])
    assert evidence["backupStopLSN"] in message
    assert record["label"] == "snapgroup it/group-1 postgres"


async def test_closing_the_session_mid_backup_ends_the_backup(
    postgres_server: Any, observer: psycopg.AsyncConnection, hook_context: Any, eventually: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    hook = await plan(ctx)
    try:
        record = await hook.apply()
        assert await page_image_bytes(observer) >= FULL_PAGE_IMAGE, "no backup is running"
    finally:
        await hook.release()  # what an operator crash does to the session
    # The backend aborts the backup on its way out, before it leaves pg_stat_activity.
    await eventually(lambda: _gone(observer), "the hook's backend to exit")

    assert await page_image_bytes(observer) < FULL_PAGE_IMAGE, "the backup outlived its session"
    assert "aborting backup due to backend exiting before pg_backup_stop" in (
        postgres_server.log_text())
    message = await hook.undo(record)
    assert "ended with its session" in message
    postgresql = lookup("postgresql")
    assert postgresql is not None
    recovered = await postgresql.recover(ctx, hook.key, record, True)
    assert "no session of the group is open" in recovered


async def _gone(observer: psycopg.AsyncConnection) -> bool:
    return await operator_backends(observer) == 0


async def test_wrong_password_fails_plan_with_authentication_failed(
    postgres_server: Any, hook_context: Any
) -> None:
    wrong = "not-" + postgres_server.password
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret(password=wrong)})
    with pytest.raises(PlanError) as caught:
        await plan(ctx)
    assert caught.value.reason == "AuthenticationFailed"
    assert caught.value.field_path == f"{PATH}.connection.secretRef.name"
    assert "password authentication failed" in caught.value.message
    assert wrong not in str(caught.value)


async def test_unreachable_server_fails_plan_with_database_unreachable(
    postgres_server: Any, hook_context: Any, closed_port: int
) -> None:
    port = closed_port
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret(port=str(port))})
    with pytest.raises(PlanError) as caught:
        await plan(ctx)
    assert caught.value.reason == "DatabaseUnreachable"
    assert caught.value.field_path == f"{PATH}.connection"
    assert f"127.0.0.1:{port}" in caught.value.message


async def test_missing_last_record_table_fails_plan(
    postgres_server: Any, observer: psycopg.AsyncConnection, hook_context: Any, eventually: Any
) -> None:
    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    with pytest.raises(PlanError) as caught:
        await plan(ctx, target({"table": "no_such_table", "column": "created_at"}))
    assert caught.value.reason == "LastRecordNotFound"
    assert caught.value.field_path == f"{PATH}.lastRecord"
    assert "no_such_table" in caught.value.message
    # The plan's session was closed again.
    await eventually(lambda: _gone(observer), "the plan's session to close")


async def test_newest_record_is_the_greatest_timestamp(
    postgres_server: Any, observer: psycopg.AsyncConnection, hook_context: Any
) -> None:
    times = [datetime(2026, 3, 1, 12, 0, s, 250000, tzinfo=UTC) for s in (5, 42, 17)]
    await observer.execute("DROP SCHEMA IF EXISTS app CASCADE")
    await observer.execute("CREATE SCHEMA app")
    await observer.execute('CREATE TABLE app."Events" (kind text, "createdAt" timestamptz)')
    async with observer.cursor() as cur:
        await cur.executemany('INSERT INTO app."Events" VALUES (%s, %s)',
                              [("bleat", t) for t in times])
        await cur.execute('INSERT INTO app."Events" VALUES (%s, %s)', ("other", None))

    ctx = hook_context(**{"postgres-credentials": postgres_server.secret()})
    by_column = await plan(ctx, target({"table": "app.Events", "column": "createdAt"}))
    by_query = await plan(ctx, target(
        {"query": """SELECT min("createdAt") FROM app."Events" WHERE kind = 'bleat'"""}))
    try:
        assert await by_column.newest_record() == max(times)
        assert await by_query.newest_record() == min(times)
    finally:
        await by_column.release()
        await by_query.release()


async def test_a_connect_cancelled_after_the_server_has_the_session_closes_it(
    postgres_server: Any, observer: psycopg.AsyncConnection, monkeypatch: pytest.MonkeyPatch,
    eventually: Any,
) -> None:
    """A plan cancelled (the group deleted) while its connect is still finishing: the session
    the server already has is closed, not left open until garbage collection."""
    name = "snapgroup:cancelled-connect"
    connect = psycopg.AsyncConnection.connect
    connected, finish = asyncio.Event(), asyncio.Event()
    referenced: list[psycopg.AsyncConnection[Any]] = []
    """What else still references the connection (a kept traceback, a frame) keeps it from being
    collected: only an explicit close ends the session then."""

    async def slow_to_finish(*args: Any, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        conn = await connect(*args, **kwargs)
        referenced.append(conn)
        connected.set()
        await finish.wait()  # the client side still busy when the cancellation comes
        return conn

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", slow_to_finish)
    opening = asyncio.create_task(
        PostgresConnection.open(postgres_server.secret(), 10.0, application_name=name))
    await connected.wait()

    async def sessions() -> int:
        return int(str(await scalar(
            observer, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'")))

    assert await sessions() == 1, "the fault: the server holds the session being opened"
    opening.cancel()
    await asyncio.sleep(0)
    finish.set()
    with pytest.raises(asyncio.CancelledError):
        await opening

    async def closed() -> bool:
        return await sessions() == 0

    await eventually(closed, "the cancelled connect's session closed")
