"""The postgres:15 runtime with Debian's PostgreSQL 15: initdb like the official image,
password auth over TCP on the pod IP, a stale pid file from a snapshot, fast shutdown."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from localcluster.node.addresses import listening_addresses
from localcluster.node.containers import ContainerProcesses, spawn
from localcluster.node.runtimes import (
    DEFAULT_POSTGRES_BIN_DIR,
    ContainerContext,
    ContainerStartError,
    PostgresRuntime,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not (DEFAULT_POSTGRES_BIN_DIR / "postgres").exists(), reason="PostgreSQL 15 not installed"
    ),
]


@pytest.fixture
def world_dir() -> Iterator[Path]:
    # pytest's tmp_path is private to root; the postgres user must reach the volume.
    directory = Path(tempfile.mkdtemp(prefix="sgnode-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def _free_address() -> str:
    # A pod address nothing listens on, not even a local cluster running at the same time.
    busy = listening_addresses()
    while True:
        address = f"127.10.{random.randint(0, 255)}.{random.randint(2, 254)}"
        if address not in busy:
            return address


def _context(base: Path, pod_ip: str) -> ContainerContext:
    volume = base / "volume"
    run_dir = base / "run"
    pod_dir = base / "pod"
    for directory in (volume, run_dir, pod_dir):
        directory.mkdir(exist_ok=True)
    return ContainerContext(
        namespace="bleater",
        pod_name="postgres-0",
        pod_uid="uid-pg",
        pod_ip=pod_ip,
        container={"name": "postgres", "ports": [{"containerPort": 5432}]},
        env={
            "POSTGRES_USER": "bleater",
            "POSTGRES_PASSWORD": "s3cret pass",
            "POSTGRES_DB": "bleater",
        },
        mounts={"/var/lib/postgresql/data": volume},
        data_dir=volume,
        pod_dir=pod_dir,
        run_dir=run_dir,
        bin_dir=base,
        log_path=base / "postgres.log",
    )


async def _start(ctx: ContainerContext) -> ContainerProcesses:
    runtime = PostgresRuntime()
    await runtime.prepare(ctx)
    container = ContainerProcesses([spawn(spec, ctx.log_path) for spec in runtime.processes(ctx)])
    deadline = time.monotonic() + 60
    while not await runtime.ready(ctx):
        assert time.monotonic() < deadline, (
            "PostgreSQL never accepted connections: " + (ctx.log_path.read_text()[-2000:])
        )
        assert container.processes[0].running, ctx.log_path.read_text()[-2000:]
        await asyncio.sleep(0.2)
    return container


def _connect(ctx: ContainerContext, password: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=ctx.pod_ip,
        port=5432,
        user="bleater",
        password=password,
        dbname="bleater",
        connect_timeout=5,
    )


def _query(ctx: ContainerContext, sql: str, password: str = "s3cret pass") -> object:
    with _connect(ctx, password) as connection:
        cursor = connection.execute(sql.encode())
        if cursor.description is None:
            return None
        row = cursor.fetchone()
        return row[0] if row else None


async def test_initdb_password_auth_restart_and_fast_shutdown(world_dir: Path) -> None:
    ctx = _context(world_dir, _free_address())
    container = await _start(ctx)
    assert (ctx.data_dir / "pgdata" / "PG_VERSION").read_text().strip() == "15"
    assert await asyncio.to_thread(_query, ctx, "select current_database()") == "bleater"
    await asyncio.to_thread(_query, ctx, "create table t(x int); insert into t values (42)")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await asyncio.to_thread(_query, ctx, "select 1", "wrong")

    # Keep a client connected: fast shutdown (SIGINT) must not wait for it.
    idle = await asyncio.to_thread(_connect, ctx, "s3cret pass")
    began = time.monotonic()
    await container.stop(grace_seconds=20)
    assert time.monotonic() - began < 10
    assert container.processes[0].exited.result() == 0
    idle.close()

    # A second start reuses the data directory (no initdb) and keeps the data.
    container = await _start(ctx)
    assert await asyncio.to_thread(_query, ctx, "select x from t") == 42
    await container.stop(grace_seconds=20)


async def test_stale_pid_file_from_a_snapshot_is_removed(world_dir: Path) -> None:
    ctx = _context(world_dir, _free_address())
    container = await _start(ctx)
    await container.stop(grace_seconds=20)
    # A restored snapshot carries the pid file of the server that was live at the cut;
    # the pid belongs to some other live process here.
    pid_file = ctx.data_dir / "pgdata" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n{ctx.data_dir / 'pgdata'}\n")
    container = await _start(ctx)
    assert await asyncio.to_thread(_query, ctx, "select 1") == 1

    # While that server runs, a second one on the same data directory is refused.
    with pytest.raises(ContainerStartError, match="still running"):
        await PostgresRuntime().prepare(ctx)
    container.processes[0].signal(signal.SIGINT)
    await container.stop(grace_seconds=20)


async def test_missing_password_is_refused_like_the_official_image(world_dir: Path) -> None:
    ctx = _context(world_dir, "127.10.254.2")
    ctx.env = {"POSTGRES_USER": "bleater"}
    with pytest.raises(ContainerStartError, match="POSTGRES_PASSWORD"):
        await PostgresRuntime().prepare(ctx)
