"""The mongodb hook type against the local MongoDB stand-in (see conftest.mongo_server).

mongod cannot be installed here: the server is FerretDB, which speaks the wire protocol but has
no fsync lock, behind `localcluster.mongolock`, which emulates mongod's counted, server-wide fsync
lock and holds writes from every connection while the count is above zero. The tests therefore
check the hook's behaviour against mongod's lock semantics as that layer implements them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

import snapgroup.hooks.mongodb  # noqa: F401 - registers the hook type
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks import mongodb as mongodb_hook
from snapgroup.hooks.evidence import skew_from
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.ports import PlanError, StepError

PATH = "spec.services[1]"
SECRET = "mongodb-credentials"
Client = AsyncMongoClient[dict[str, Any]]


def target(last_record: dict[str, str] | None = None, timeout: str = "10s") -> ServiceTarget:
    return ServiceTarget.model_validate({
        "name": "mongodb", "type": "mongodb", "pvcs": ["mongodb-data"],
        "connection": {"secretRef": {"name": SECRET}, "timeout": timeout},
        **({"lastRecord": last_record} if last_record else {}),
    })


async def plan(ctx: HookContext, service: ServiceTarget | None = None) -> ServiceHook:
    hook_type = lookup("mongodb")
    assert hook_type is not None
    [hook] = await hook_type.plan(ctx, service or target(), PATH)
    assert isinstance(hook, ServiceHook)
    return hook


def connect(server: Any) -> Client:
    """A test-side client with its own connections."""
    return AsyncMongoClient(server.uri, username=server.username, password=server.password,
                            directConnection=True, serverSelectionTimeoutMS=10_000,
                            tz_aware=True)


@pytest.fixture
async def other(mongo_server: Any) -> AsyncIterator[Client]:
    """Another client of the server; afterwards every fsync lock is released for the next test."""
    client = connect(mongo_server)
    try:
        yield client
    finally:
        with contextlib.suppress(OperationFailure):
            for _ in range(8):
                await client.admin.command({"fsyncUnlock": 1})
        await client.close()


@pytest.fixture
def ctx(mongo_server: Any, hook_context: Any) -> HookContext:
    context: HookContext = hook_context(**{SECRET: mongo_server.secret()})
    return context


async def locked(client: Client) -> bool:
    """What the server reports in currentOp: is an fsync lock held?"""
    return bool((await client.admin.command("currentOp")).get("fsyncLock"))


async def start_held_insert(server: Any, writer: Client, doc: dict[str, Any],
                            eventually: Any) -> asyncio.Task[Any]:
    """Send an insert and return once the lock layer reports holding it."""
    held_before: int = server.held_writes("insert")
    insert = asyncio.create_task(writer.bleater.events.insert_one(doc))

    async def held() -> bool:
        held_now: int = server.held_writes("insert")
        return held_now > held_before
    await eventually(held, "the lock layer to hold the insert")
    return insert


async def test_fsync_lock_blocks_other_clients_writes_until_undo(
    mongo_server: Any, ctx: HookContext, other: Client, eventually: Any
) -> None:
    marker = uuid.uuid4().hex
    hook = await plan(ctx)
    writer = connect(mongo_server)
    try:
        record = await hook.apply()
        assert (record["lockCountBefore"], record["lockCountAfterLock"]) == (0, 1)
        assert await locked(other)

        insert = await start_held_insert(mongo_server, writer, {"marker": marker}, eventually)
        # Reads still pass while writes are held: a round trip that sees no document.
        assert await other.bleater.events.count_documents({"marker": marker}) == 0
        assert not insert.done(), "the insert completed while the fsync lock was held"

        message = await hook.undo(record)
        await asyncio.wait_for(insert, 30)
    finally:
        await hook.release()
        await writer.close()

    assert await other.bleater.events.count_documents({"marker": marker}) == 1
    assert not await locked(other)
    assert "lock count back to 0" in message
    assert hook.evidence() == {"lockCountBefore": "0", "lockCountAfterLock": "1",
                               "lockCountAfterUnlock": "0"}


async def test_undo_leaves_a_lock_taken_before_the_group(
    mongo_server: Any, ctx: HookContext, other: Client, eventually: Any
) -> None:
    assert (await other.admin.command({"fsync": 1, "lock": True}))["lockCount"] == 1
    hook = await plan(ctx)
    try:
        record = await hook.apply()
        assert (record["lockCountBefore"], record["lockCountAfterLock"]) == (1, 2)
        await hook.undo(record)
    finally:
        await hook.release()

    assert hook.evidence()["lockCountAfterUnlock"] == "1"
    # Writes are still held by the earlier lock, and exactly one unlock releases them.
    writer = connect(mongo_server)
    try:
        insert = await start_held_insert(mongo_server, writer, {"marker": uuid.uuid4().hex},
                                         eventually)
        assert (await other.admin.command({"fsyncUnlock": 1}))["lockCount"] == 0
        await asyncio.wait_for(insert, 30)
    finally:
        await writer.close()


async def test_recover_after_restart_unlocks_with_a_fresh_connection(
    ctx: HookContext, other: Client
) -> None:
    hook = await plan(ctx)
    record = await hook.apply()
    await hook.release()  # the operator died; its client is gone, the lock is not
    assert await locked(other)

    mongodb = lookup("mongodb")
    assert mongodb is not None
    message = await mongodb.recover(ctx, hook.key, record, True)

    assert not await locked(other)
    assert "lock count back to 0" in message


async def test_recover_of_an_unconfirmed_lock_lowers_a_lock_that_landed_on_an_unlocked_server(
    ctx: HookContext, other: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.05)
    hook = await plan(ctx)
    intent = hook.intent()  # journaled before apply; the lock call never answered
    assert intent["lockedBefore"] is False
    await hook.release()
    mongodb = lookup("mongodb")
    assert mongodb is not None

    message = await mongodb.recover(ctx, hook.key, intent, False)
    assert "no lock landed" in message

    # The lock that call sent lands late (here: taken on the server by another client).
    assert (await other.admin.command({"fsync": 1, "lock": True}))["lockCount"] == 1
    message = await mongodb.recover(ctx, hook.key, intent, False)
    assert "its lock landed" in message and "lock count back to 0" in message
    assert not await locked(other)


async def test_a_lock_call_that_timed_out_while_the_server_flushes_is_unlocked_when_it_lands(
    ctx: HookContext, other: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server flushes for 4 s (the stand-in's slowFsyncLockFlush fail point) and the hook's
    call gives up after 1 s; the lock lands after the late-lock looks would have ended. The undo
    sees the group's call still in currentOp, waits for it to end, and unlocks what it took."""
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.2)  # looks end 0.8 s after the undo
    await other.admin.command({"configureFailPoint": "slowFsyncLockFlush", "mode": {"times": 1},
                               "data": {"seconds": 4}})
    hook = await plan(ctx, target(timeout="1s"))
    try:
        with pytest.raises(StepError) as failed:
            await hook.apply()
        # The fault, proven: the call ended on the client, the server still runs it.
        assert failed.value.reason == "Timeout", failed.value
        inprog = (await other.admin.command("currentOp"))["inprog"]
        assert [op["appName"] for op in inprog if op.get("command", {}).get("fsync")] == [
            ctx.session_name]

        message = await hook.undo(hook.intent())
    finally:
        await hook.release()
    assert "its lock landed" in message and "lock count back to 0" in message
    assert not await locked(other)


async def test_newest_record_is_the_greatest_date(ctx: HookContext, other: Client) -> None:
    collection = f"events_{uuid.uuid4().hex[:8]}"
    times = [datetime(2026, 3, 1, 12, 0, s, 250000, tzinfo=UTC) for s in (5, 42, 17)]
    await other.bleater[collection].insert_many(
        [{"seq": i, "created_at": t} for i, t in enumerate(times)]
        + [{"seq": 9, "created_at": "2099-01-01T00:00:00Z"}, {"seq": 10}])
    hook = await plan(ctx, target({"database": "bleater", "collection": collection,
                                   "field": "created_at"}))
    empty = await plan(ctx, target({"database": "bleater", "collection": collection + "_none",
                                    "field": "created_at"}))
    try:
        assert await hook.newest_record() == max(times)
        assert await empty.newest_record() is None
    finally:
        await hook.release()
        await empty.release()
    # The plan read the server's clock (hello.localTime): one machine, one clock.
    skew = skew_from(hook.evidence())
    assert skew is not None and abs(skew.seconds) <= skew.uncertainty + 0.01


@pytest.mark.parametrize(("last_record", "field"), [
    ({"database": "bleater", "collection": "events", "field": "$where"}, "field"),
    ({"database": "bleater", "collection": "events", "field": "meta.$gt"}, "field"),
    ({"database": "bleater", "collection": "events", "field": "a..b"}, "field"),
    ({"database": "bad/db", "collection": "events", "field": "created_at"}, "database"),
    ({"database": "bleater", "collection": "$cmd", "field": "created_at"}, "collection"),
])
def test_operator_syntax_in_names_is_refused_by_the_model(last_record: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        target(last_record)
    assert caught.value.errors()[0]["loc"] == ("lastRecord", field)


@pytest.mark.parametrize("collection", ["system.snapgroup", "c" * 255, "ü" * 100, "a b.c"])
async def test_odd_collection_names_fail_with_codes_or_read_nothing(
    ctx: HookContext, collection: str
) -> None:
    try:
        hook = await plan(ctx, target({"database": "bleater", "collection": collection,
                                       "field": "created_at"}))
    except PlanError as exc:
        # The server refused: our words and its error code, not its message.
        assert exc.field_path == f"{PATH}.lastRecord" and "error code" in exc.message, exc
        return
    try:
        assert await hook.newest_record() is None
    finally:
        await hook.release()
