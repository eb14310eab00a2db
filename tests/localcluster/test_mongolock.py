"""The fsync-lock layer in front of FerretDB behaves like mongod's fsync lock.

These tests run the real stand-in: FerretDB (the MongoDB stand-in, SQLite backend) built from
the project's Go module, with ``localcluster.mongolock`` in front of it, all on 127.0.0.1. The
process launchers here are shared with test_datawriter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pymongo.errors
import pytest

from localcluster.mongolock import FsyncLock

SERVICES_MODULE = Path(__file__).parent / "go" / "services"
TESTS_DIR = Path(__file__).parent.parent
# FerretDB panics at start-up when it is built from outside its own repository unless the
# build info is cleared: it then asks for a version file only its release builds carry.
FERRETDB_LDFLAGS = "-X runtime.modinfo="

# --- process launchers (also used by test_datawriter) ----------------------------------------


def services_bin_dir() -> Path:
    """The directory holding ``ferretdb`` and ``s3server``, built from the services module.

    ``SNAPGROUP_SERVICES_BIN`` points at prebuilt binaries; otherwise they are built once per
    source state into ``${SNAPGROUP_CACHE:-~/.cache/snapgroup}/services-bin/<key>``.
    """
    if override := os.environ.get("SNAPGROUP_SERVICES_BIN"):
        return Path(override)
    digest = hashlib.sha256()
    for path in sorted(SERVICES_MODULE.rglob("*")):
        if path.is_file() and (path.name in ("go.mod", "go.sum") or path.suffix == ".go"):
            digest.update(str(path.relative_to(SERVICES_MODULE)).encode())
            digest.update(path.read_bytes())
    cache = Path(os.environ.get("SNAPGROUP_CACHE", Path.home() / ".cache" / "snapgroup"))
    out = cache / "services-bin" / digest.hexdigest()[:16]
    if (out / "ferretdb").is_file() and (out / "s3server").is_file():
        return out
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "go",
            "build",
            f"-ldflags={FERRETDB_LDFLAGS}",
            "-o",
            f"{staging}/",
            "github.com/FerretDB/FerretDB/cmd/ferretdb",
            "./cmd/s3server",
        ],
        cwd=SERVICES_MODULE,
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
    )
    if out.exists():  # built concurrently by someone else
        shutil.rmtree(staging)
    else:
        staging.rename(out)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    """A started service process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit within 10 s; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_process(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``argv`` with its output in ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return Process(name, popen, log_path)


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``python -m localcluster.*``: this interpreter's, plus tests/ on the path."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    return env


@dataclass
class MongoStandIn:
    """FerretDB with the fsync-lock layer in front: the local cluster's MongoDB."""

    port: int
    ferretdb: Process
    lock_layer: Process
    username: str | None = None
    password: str | None = None

    @property
    def uri(self) -> str:
        """A connection string for the lock layer (with credentials when auth is on)."""
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"mongodb://{auth}127.0.0.1:{self.port}/?directConnection=true&authSource=admin"

    def client(self, authenticated: bool = True) -> pymongo.MongoClient[dict[str, Any]]:
        """A new client, i.e. its own connections to the lock layer."""
        uri = self.uri if authenticated else f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        return pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)

    def stop(self) -> None:
        """Stop both processes."""
        self.lock_layer.stop()
        self.ferretdb.stop()


def start_mongo_stand_in(
    bin_dir: Path, data_dir: Path, log_dir: Path, username: str | None = None, password: str | None = None
) -> MongoStandIn:
    """Start FerretDB on a free port and the lock layer in front of it; wait until both accept."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ferretdb_port, lock_port = free_port(), free_port()
    argv = [
        str(bin_dir / "ferretdb"),
        "--handler=sqlite",
        f"--sqlite-url=file:{data_dir}/",
        f"--listen-addr=127.0.0.1:{ferretdb_port}",
        "--telemetry=disable",
        "--state-dir=-",
        "--debug-addr=-",
        "--log-level=error",
    ]
    if username and password:
        argv += [
            "--test-enable-new-auth",
            "--setup-database=admin",
            f"--setup-username={username}",
            f"--setup-password={password}",
        ]
    ferretdb = start_process("ferretdb", argv, log_dir)
    lock_layer = start_process(
        "mongolock",
        [
            sys.executable,
            "-m",
            "localcluster.mongolock",
            "--listen",
            f"127.0.0.1:{lock_port}",
            "--upstream",
            f"127.0.0.1:{ferretdb_port}",
        ],
        log_dir,
        env=python_env(),
    )
    stand_in = MongoStandIn(lock_port, ferretdb, lock_layer, username, password)
    try:
        wait_until(lambda: port_open(ferretdb_port), f"FerretDB on port {ferretdb_port}")
        wait_until(lambda: port_open(lock_port), f"the lock layer on port {lock_port}")
    except BaseException:
        stand_in.stop()
        raise
    return stand_in


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """ferretdb and s3server, built if needed."""
    if shutil.which("go") is None and "SNAPGROUP_SERVICES_BIN" not in os.environ:
        pytest.skip("needs Go to build FerretDB and s3server")
    return services_bin_dir()


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
