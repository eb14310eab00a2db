"""The fsync-lock layer in front of FerretDB behaves like mongod's fsync lock.

These tests run the real stand-in: FerretDB (the MongoDB stand-in, SQLite backend) built from
the project's Go module, with ``localcluster.mongolock`` in front of it, all on 127.0.0.1. The
process launchers are shared with test_datawriter (``localcluster.services_bin``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest

from localcluster.mongolock import FsyncLock
from localcluster.services_bin import MongoStandIn, start_mongo_stand_in, wait_until

# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def mongo(bin_dir: Path, tmp_path: Path) -> Iterator[MongoStandIn]:
    """A fresh FerretDB + lock layer without authentication."""
    stand_in = start_mongo_stand_in(bin_dir, tmp_path / "ferretdb", tmp_path)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for client calls that are expected to block."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


# --- tests -------------------------------------------------------------------------------------


def held_writes(stand_in: MongoStandIn, command: str) -> int:
    """How many times the lock layer has logged a ``command`` held by the lock."""
    return stand_in.lock_layer.log_text().count(f": {command} held by the fsync lock")


def assert_insert_held(
    stand_in: MongoStandIn,
    pending: concurrent.futures.Future[Any],
    reader: pymongo.MongoClient[dict[str, Any]],
    held_before: int,
) -> None:
    """The insert reached the lock layer, is held there, and FerretDB has not seen it."""
    wait_until(lambda: held_writes(stand_in, "insert") > held_before, "the lock layer to hold the insert")
    # A read round trip on another connection: reads pass while writes are held.
    assert reader.bleater.events.count_documents({"writer": "held"}) == 0
    assert not pending.done(), "the insert completed while the fsync lock was held"


def test_fsync_lock_holds_other_clients_writes_until_unlock(
    mongo: MongoStandIn, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    locker, writer, reader = mongo.client(), mongo.client(), mongo.client()
    writer.bleater.events.insert_one({"writer": "before"})

    reply = locker.admin.command("fsync", lock=True)
    assert reply["ok"] == 1 and reply["lockCount"] == 1
    assert reader.admin.command("currentOp").get("fsyncLock") is True

    pending = executor.submit(writer.bleater.events.insert_one, {"writer": "held"})
    assert_insert_held(mongo, pending, reader, held_before=0)
    assert reader.bleater.events.count_documents({"writer": "before"}) == 1

    reply = locker.admin.command("fsyncUnlock")
    assert reply["ok"] == 1 and reply["lockCount"] == 0
    pending.result(timeout=30)
    assert reader.bleater.events.count_documents({"writer": "held"}) == 1
    assert "fsyncLock" not in reader.admin.command("currentOp")


def test_nested_locks_need_as_many_unlocks(
    mongo: MongoStandIn, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    locker, writer, reader = mongo.client(), mongo.client(), mongo.client()
    assert locker.admin.command("fsync", lock=True)["lockCount"] == 1
    assert locker.admin.command("fsync", lock=True)["lockCount"] == 2

    pending = executor.submit(writer.bleater.events.insert_one, {"writer": "held"})
    assert_insert_held(mongo, pending, reader, held_before=0)

    assert locker.admin.command("fsyncUnlock")["lockCount"] == 1
    # Still locked once: another round trip, and the insert is still held.
    assert reader.admin.command("currentOp").get("fsyncLock") is True
    assert reader.bleater.events.count_documents({"writer": "held"}) == 0
    assert not pending.done(), "the insert completed while lockCount was 1"

    assert locker.admin.command("fsyncUnlock")["lockCount"] == 0
    pending.result(timeout=30)
    assert reader.bleater.events.count_documents({"writer": "held"}) == 1

    with pytest.raises(pymongo.errors.OperationFailure) as failure:
        locker.admin.command("fsyncUnlock")
    assert failure.value.code == 20
    assert "fsyncUnlock called when not locked" in str(failure.value)


def test_lock_outlives_the_connection_that_took_it(
    mongo: MongoStandIn, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    locker = mongo.client()
    assert locker.admin.command("fsync", lock=True)["lockCount"] == 1
    locker.close()

    writer, other = mongo.client(), mongo.client()
    pending = executor.submit(writer.bleater.events.insert_one, {"writer": "held"})
    assert_insert_held(mongo, pending, other, held_before=0)
    assert other.admin.command("currentOp").get("fsyncLock") is True

    # Any client may unlock, as with mongod.
    assert other.admin.command("fsyncUnlock")["lockCount"] == 0
    pending.result(timeout=30)
    assert other.bleater.events.count_documents({"writer": "held"}) == 1


def test_ddl_and_bulk_writes_are_held_too(
    mongo: MongoStandIn, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    locker, writer, reader = mongo.client(), mongo.client(), mongo.client()
    locker.admin.command("fsync", lock=True)
    pending = executor.submit(writer.bleater.create_collection, "made_while_locked")
    wait_until(lambda: held_writes(mongo, "create") > 0, "the lock layer to hold the create")
    assert "made_while_locked" not in reader.bleater.list_collection_names()
    assert not pending.done()
    locker.admin.command("fsyncUnlock")
    pending.result(timeout=30)
    assert "made_while_locked" in reader.bleater.list_collection_names()


def test_fsync_without_lock_and_outside_admin(mongo: MongoStandIn) -> None:
    client = mongo.client()
    assert client.admin.command("fsync") == {"numFiles": 1, "ok": 1.0}
    with pytest.raises(pymongo.errors.OperationFailure) as failure:
        client.bleater.command("fsync", lock=True)
    assert failure.value.code == 13
    # Nothing was locked by either call.
    client.bleater.events.insert_one({"writer": "free"})
    assert "fsyncLock" not in client.admin.command("currentOp")


def test_fsync_requires_authentication_when_ferretdb_has_it(bin_dir: Path, tmp_path: Path) -> None:
    stand_in = start_mongo_stand_in(
        bin_dir, tmp_path / "ferretdb", tmp_path, username="root", password="s3cret"
    )
    try:
        anonymous = stand_in.client(authenticated=False)
        with pytest.raises(pymongo.errors.OperationFailure) as failure:
            anonymous.admin.command("fsync", lock=True)
        assert failure.value.code == 13

        client = stand_in.client()
        with pytest.raises(pymongo.errors.OperationFailure) as failure:
            client.admin.command("fsyncUnlock")  # the anonymous attempt took no lock
        assert failure.value.code == 20
        assert client.admin.command("fsync", lock=True)["lockCount"] == 1
        assert client.admin.command("fsyncUnlock")["lockCount"] == 0
        client.bleater.events.insert_one({"writer": "authenticated"})
        assert client.bleater.events.count_documents({}) == 1
    finally:
        stand_in.stop()


async def test_lock_waits_for_writes_already_running() -> None:
    """Unit level: a lock is granted only once writes that entered before it have finished."""
    lock = FsyncLock()
    await lock.begin_write()
    locking = asyncio.create_task(lock.lock())
    for _ in range(100):  # let the task run until it has raised the count and waits
        if lock.count:
            break
        await asyncio.sleep(0)
    assert lock.count == 1
    assert not locking.done(), "the lock was granted while a write was running"

    entering = asyncio.create_task(lock.begin_write())
    for _ in range(10):
        await asyncio.sleep(0)
    await lock.end_write()
    assert await locking == 1
    assert not entering.done(), "a write entered while locked"
    assert await lock.unlock() == 0
    await entering
    assert await lock.unlock() is None


def fsync_ops(reader: pymongo.MongoClient[dict[str, Any]]) -> list[dict[str, Any]]:
    """The fsync locks currentOp lists as still being taken."""
    return [op for op in reader.admin.command("currentOp").get("inprog", [])
            if op.get("command", {}).get("fsync")]


def test_a_slow_flush_lock_lands_after_its_client_gave_up(
    mongo: MongoStandIn, executor: concurrent.futures.ThreadPoolExecutor
) -> None:
    """mongod's behaviour the operator's undo must cope with: the lock call times out on the
    client, the server goes on flushing, and the lock lands later and stays."""
    reader, writer = mongo.client(), mongo.client()
    reply = reader.admin.command({"configureFailPoint": "slowFsyncLockFlush",
                                  "mode": {"times": 1}, "data": {"seconds": 3}})
    assert reply["ok"] == 1
    impatient = pymongo.MongoClient(mongo.uri, serverSelectionTimeoutMS=10_000, socketTimeoutMS=500,
                                    appname="snapgroup:uid-7")
    with pytest.raises(pymongo.errors.NetworkTimeout):
        impatient.admin.command("fsync", lock=True)
    impatient.close()

    # Still flushing: listed as in progress under the client's appName, the server already
    # reports locked (as mongod does), and writes are held.
    (op,) = fsync_ops(reader)
    assert op["appName"] == "snapgroup:uid-7" and op["command"]["lock"] is True
    assert reader.admin.command("currentOp").get("fsyncLock") is True
    pending = executor.submit(writer.bleater.events.insert_one, {"writer": "during the flush"})
    wait_until(lambda: held_writes(mongo, "insert") > 0, "the insert to be held by the flush")

    # The lock is taken with nobody waiting for it, and stays until someone unlocks it.
    wait_until(lambda: fsync_ops(reader) == [], "the flush to end", timeout=15)
    assert reader.admin.command("currentOp").get("fsyncLock") is True
    assert not pending.done(), "a write passed the lock"
    assert reader.admin.command("fsyncUnlock")["lockCount"] == 0
    pending.result(timeout=30)

    # {times: 1}: the next lock is instant again.
    assert reader.admin.command("fsync", lock=True)["lockCount"] == 1
    assert reader.admin.command("fsyncUnlock")["lockCount"] == 0


def test_the_slow_flush_fail_point_refuses_bad_values(mongo: MongoStandIn) -> None:
    client = mongo.client()
    for body in ({"mode": "alwaysOn", "data": {"seconds": -1}},
                 {"mode": "sometimes", "data": {"seconds": 1}}):
        with pytest.raises(pymongo.errors.OperationFailure, match=r"must be"):
            client.admin.command({"configureFailPoint": "slowFsyncLockFlush", **body})
    assert client.admin.command({"configureFailPoint": "slowFsyncLockFlush", "mode": "off"})["ok"] == 1
