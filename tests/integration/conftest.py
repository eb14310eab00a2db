"""Servers for the service hook integration tests, each private to the test session on 127.0.0.1.

- PostgreSQL 15: a real cluster made with Debian's initdb/pg_ctl in a temporary directory, run as
  the OS user ``postgres`` (PostgreSQL refuses to run as root), scram-sha-256 password auth.
- MongoDB: no mongod can be installed here. FerretDB (SQLite backend) speaks the wire protocol,
  and ``localcluster.mongolock`` in front of it adds mongod's fsync-lock semantics, which FerretDB
  lacks. Together they stand in for MongoDB.
- MinIO: the MinIO server is not used (AGPL); ``s3server`` (gofakes3 on a directory) stands in
  for it, with signature checking on.

FerretDB and s3server come from ``localcluster.build.ensure_binaries()``; set
``SNAPGROUP_SERVICES_BIN`` to a directory holding prebuilt ``ferretdb`` and ``s3server`` to skip
that build.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localcluster.services_bin import as_postgres, free_port, start_mongo_stand_in, start_process
from snapgroup.adapters.connectors import DatabaseConnectors
from snapgroup.hooks.registry import HookContext

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT = 60.0


async def eventually(condition: Callable[[], Awaitable[bool]], what: str,
                     timeout: float = 30.0) -> None:
    """Await condition every 50 ms until it holds, letting other tasks run in between."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


class FakeCluster:
    """The Cluster port reduced to Secrets, held in memory.

    The service hooks read nothing else from Kubernetes, and these tests are about the database
    side; the Kubernetes adapter has its own tests against the local cluster.
    """

    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, or None."""
        return self.secrets.get(name)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a service hook must not call Cluster.{name}")


HookContextFactory = Callable[..., HookContext]
Eventually = Callable[[Callable[[], Awaitable[bool]], str], Awaitable[None]]


@pytest.fixture
def hook_context() -> HookContextFactory:
    """Makes hook contexts with real database connectors and the given Secrets (name=data)."""
    def make(**secrets: dict[str, str]) -> HookContext:
        return HookContext(namespace="it", group="group-1", group_uid="uid-1",
                           cluster=FakeCluster(dict(secrets)), connectors=DatabaseConnectors(),
                           deadline=time.monotonic() + 300)
    return make


@pytest.fixture(name="eventually")
def eventually_fixture() -> Eventually:
    """`eventually(condition, what)` for tests: await an async condition with a deadline."""
    return eventually


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound for the test, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass
class PostgresServer:
    """A private PostgreSQL 15 cluster."""

    port: int
    password: str
    data_dir: Path
    log_path: Path
    host: str = "127.0.0.1"
    user: str = "postgres"
    database: str = "postgres"

    def secret(self, **overrides: str) -> dict[str, str]:
        """Secret data as a postgresql service expects it."""
        return {"host": self.host, "port": str(self.port), "username": self.user,
                "password": self.password, "database": self.database, **overrides}

    def conninfo(self) -> str:
        """A libpq connection string for test-side sessions."""
        return (f"host={self.host} port={self.port} user={self.user} "
                f"password={self.password} dbname={self.database}")

    def log_text(self) -> str:
        """The server log so far."""
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_postgres(env: dict[str, str] | None = None) -> Iterator[PostgresServer]:
    """A PostgreSQL 15 cluster on 127.0.0.1 with a free port, password auth only, its server
    started with `env` added to the environment; removed afterwards.

    full_page_writes is off: PostgreSQL then writes full-page images only while a backup is
    running, which lets a test observe backup mode from another session.
    """
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 binaries are not installed at {PG_BIN}")
    # Not pytest's tmp_path: it is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="snapgroup-pg-"))
    password = "it-" + os.urandom(8).hex()
    port = free_port()
    server = PostgresServer(port, password, root / "data", root / "postgres.log")
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    subprocess.run(
        as_postgres([str(PG_BIN / "initdb"), "-D", str(server.data_dir), "-U", "postgres",
                     "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync"]),
        check=True, capture_output=True,
    )
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
               "-c full_page_writes=off")
    subprocess.run(
        as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-l",
                     str(server.log_path), "-o", options, "-w", "start"]),
        check=True, capture_output=True, env={**os.environ, **(env or {})},
    )
    try:
        yield server
    finally:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(server.data_dir), "-m", "immediate",
                         "-w", "stop"]),
            check=False, capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL (see `running_postgres`)."""
    with running_postgres() as server:
        yield server


# --- MongoDB and S3 stand-ins ---------------------------------------------------------------


@pytest.fixture(scope="session")
def service_binaries() -> Path:
    """The directory holding ferretdb and s3server."""
    if override := os.environ.get("SNAPGROUP_SERVICES_BIN"):
        return Path(override)
    try:
        from localcluster import build
    except ImportError as exc:
        pytest.skip(f"localcluster.build is not available: {exc}")
    try:
        directory: Path = build.ensure_binaries()
    except build.GoToolchainMissingError as exc:
        pytest.skip(str(exc))
    return directory


@dataclass
class MongoServer:
    """FerretDB behind the fsync-lock layer, with one user."""

    port: int
    username: str
    password: str
    lock_layer_log: Path

    def held_writes(self, command: str = "insert") -> int:
        """How often the lock layer has logged holding that write command."""
        return self.lock_layer_log.read_text(errors="replace").count(
            f": {command} held by the fsync lock")

    @property
    def uri(self) -> str:
        """A URI without credentials: the Secret's username/password keys supply them."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def secret(self, **overrides: str) -> dict[str, str]:
        """Secret data as a mongodb service expects it."""
        return {"uri": self.uri, "username": self.username, "password": self.password,
                **overrides}


@pytest.fixture(scope="session")
def mongo_server(service_binaries: Path) -> Iterator[MongoServer]:
    """FerretDB (SQLite, with authentication) and `python -m localcluster.mongolock` before it."""
    root = Path(tempfile.mkdtemp(prefix="snapgroup-mongo-"))
    username, password = "snapgroup", "it-" + os.urandom(8).hex()
    stand_in = start_mongo_stand_in(service_binaries, root, root, username, password, START_TIMEOUT)
    try:
        yield MongoServer(stand_in.port, username, password, stand_in.lock_layer.log_path)
    finally:
        stand_in.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class S3Server:
    """s3server standing in for MinIO, checking request signatures."""

    port: int
    access_key: str
    secret_key: str
    data_dir: Path

    @property
    def endpoint(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"

    def secret(self, **overrides: str) -> dict[str, str]:
        """Secret data as a minio service expects it."""
        return {"endpoint": self.endpoint, "accessKey": self.access_key,
                "secretKey": self.secret_key, **overrides}


@pytest.fixture(scope="session")
def s3_server(service_binaries: Path) -> Iterator[S3Server]:
    """`s3server --listen 127.0.0.1:PORT --data DIR` with an access key pair."""
    root = Path(tempfile.mkdtemp(prefix="snapgroup-s3-"))
    server = S3Server(free_port(), "snapgroup", "it-" + os.urandom(8).hex(), root / "data")
    process = start_process(
        "s3server",
        [str(service_binaries / "s3server"), "--listen", server.endpoint, "--data",
         str(server.data_dir), "--access-key", server.access_key, "--secret-key",
         server.secret_key, "--quiet"],
        root,
    )
    try:
        process.wait_listening(server.port, "s3server", START_TIMEOUT)
        yield server
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)
