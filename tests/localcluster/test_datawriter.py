"""The bleater data-writer writes one gap-free sequence into PostgreSQL, MongoDB and S3.

Against real processes on 127.0.0.1: a private PostgreSQL 15 cluster (initdb/pg_ctl in a
temporary directory, password auth), the MongoDB stand-in (FerretDB behind the fsync-lock
layer, with authentication) and the S3 stand-in (s3server, with SigV4 credentials).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymongo
import pytest
from minio import Minio

from localcluster.services_bin import (
    MongoStandIn,
    Process,
    as_postgres,
    free_port,
    port_open,
    python_env,
    start_mongo_stand_in,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.postgres

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "bleater"
PG_PASSWORD = "pg-sample-pass"
MONGO_USER = "bleater"
MONGO_PASSWORD = "mongo-sample-pass"
S3_ACCESS_KEY = "bleater"
S3_SECRET_KEY = "minio-sample-secret"
BUCKET = "bleater"


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster listening on 127.0.0.1:port."""

    root: Path
    port: int

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to the ``bleater`` database."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_USER,
            password=PG_PASSWORD,
            dbname="bleater",
            autocommit=True,
        )


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    """initdb + pg_ctl start in a fresh directory; database ``bleater`` with scram auth."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip("needs PostgreSQL 15 binaries in /usr/lib/postgresql/15/bin")
    # Not under pytest's tmp_path: the postgres user must be able to enter the directory.
    root = Path(tempfile.mkdtemp(prefix="snapgroup-pg-"))
    root.chmod(0o755)
    (root / "pwfile").write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    port = free_port()
    data = root / "data"
    subprocess.run(
        as_postgres(
            [
                str(PG_BIN / "initdb"),
                f"--pgdata={data}",
                f"--username={PG_USER}",
                f"--pwfile={root / 'pwfile'}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    subprocess.run(
        as_postgres(
            [
                str(PG_BIN / "pg_ctl"),
                f"--pgdata={data}",
                f"--log={root / 'server.log'}",
                "-o",
                options,
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    server = PostgresServer(root, port)
    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=port,
            user=PG_USER,
            password=PG_PASSWORD,
            dbname="postgres",
            autocommit=True,
        ) as conn:
            conn.execute("CREATE DATABASE bleater")
        yield server
    finally:
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), f"--pgdata={data}", "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mongo(bin_dir: Path, tmp_path: Path) -> Iterator[MongoStandIn]:
    """FerretDB + the fsync-lock layer, with a root user like the mongo image's."""
    stand_in = start_mongo_stand_in(
        bin_dir, tmp_path / "ferretdb", tmp_path, username=MONGO_USER, password=MONGO_PASSWORD
    )
    yield stand_in
    stand_in.stop()


@dataclass
class S3Server:
    """The S3 stand-in (s3server) on 127.0.0.1:port."""

    port: int
    data: Path
    process: Process | None = None

    @property
    def endpoint(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"

    def start(self, bin_dir: Path, log_dir: Path) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = start_process(
            "s3server",
            [
                str(bin_dir / "s3server"),
                "--listen",
                self.endpoint,
                "--data",
                str(self.data),
                "--access-key",
                S3_ACCESS_KEY,
                "--secret-key",
                S3_SECRET_KEY,
            ],
            log_dir,
        )
        wait_until(lambda: port_open(self.port), f"s3server on port {self.port}")

    def client(self) -> Minio:
        """A minio SDK client with the server's credentials."""
        return Minio(self.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY, secure=False)


@pytest.fixture
def s3(bin_dir: Path, tmp_path: Path) -> Iterator[S3Server]:
    """An S3 server that tests start when they want (to test a late start)."""
    server = S3Server(free_port(), tmp_path / "s3data")
    yield server
    if server.process:
        server.process.stop()


@dataclass
class Writer:
    """Starts and stops the data-writer against the three services."""

    postgres: PostgresServer
    mongo: MongoStandIn
    s3: S3Server
    log_dir: Path
    started: list[Process] = field(default_factory=list)

    def start(self) -> Process:
        """Start ``python -m localcluster.datawriter`` (a new log file per run)."""
        env = python_env(
            {
                "PGHOST": "127.0.0.1",
                "PGPORT": str(self.postgres.port),
                "PGUSER": PG_USER,
                "PGPASSWORD": PG_PASSWORD,
                "PGDATABASE": "bleater",
                "MONGODB_URI": self.mongo.uri,
                "S3_ENDPOINT": self.s3.endpoint,
                "S3_ACCESS_KEY": S3_ACCESS_KEY,
                "S3_SECRET_KEY": S3_SECRET_KEY,
                "S3_BUCKET": BUCKET,
                "WRITE_INTERVAL_SECONDS": "0.1",
            }
        )
        argv = [sys.executable, "-m", "localcluster.datawriter"]
        process = start_process(f"datawriter-{len(self.started) + 1}", argv, self.log_dir, env=env)
        self.started.append(process)
        return process

    def stop(self, process: Process) -> None:
        """SIGTERM; the writer must exit 0 within the pod's 10 s grace period."""
        process.popen.send_signal(signal.SIGTERM)
        try:
            code = process.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            pytest.fail(f"the data-writer ignored SIGTERM for 10 s:\n{process.log_text()}")
        assert code == 0, f"the data-writer exited {code}:\n{process.log_text()}"

    def pg_records(self) -> dict[int, dt.datetime]:
        """seq -> created_at in PostgreSQL."""
        with self.postgres.connect() as conn:
            rows = conn.execute("SELECT seq, created_at FROM events ORDER BY seq").fetchall()
        return {int(seq): created_at for seq, created_at in rows}

    def mongo_records(self) -> dict[int, dt.datetime]:
        """seq -> created_at in MongoDB."""
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(self.mongo.uri, tz_aware=True)
        with client:
            docs = list(client.bleater.events.find())
        seqs = [doc["seq"] for doc in docs]
        assert len(seqs) == len(set(seqs)), f"duplicate seq in MongoDB: {sorted(seqs)}"
        return {int(doc["seq"]): doc["created_at"] for doc in docs}

    def s3_records(self) -> dict[int, dt.datetime]:
        """seq -> created_at stored in each S3 object."""
        client = self.s3.client()
        records = {}
        for obj in client.list_objects(BUCKET, prefix="events/", recursive=True):
            name = obj.object_name or ""
            response = client.get_object(BUCKET, name)
            try:
                document = json.loads(response.read())
            finally:
                response.close()
                response.release_conn()
            assert name == f"events/{document['seq']:012d}.json"
            records[int(document["seq"])] = dt.datetime.fromisoformat(document["created_at"])
        return records

    def assert_consistent(self) -> int:
        """All three hold the records 1..N with the same times; returns N."""
        pg, mongo, s3 = self.pg_records(), self.mongo_records(), self.s3_records()
        assert pg, "no records written"
        last = max(pg)
        assert sorted(pg) == list(range(1, last + 1)), f"gaps in PostgreSQL: {sorted(pg)}"
        assert pg == mongo, "MongoDB differs from PostgreSQL"
        assert pg == s3, "S3 differs from PostgreSQL"
        return last

    def wait_for_pg_seq(self, seq: int, process: Process) -> None:
        """Wait until PostgreSQL holds ``seq``."""

        def reached() -> bool:
            if process.popen.poll() is not None:
                pytest.fail(f"the data-writer exited early:\n{process.log_text()}")
            try:
                return max(self.pg_records(), default=0) >= seq
            except psycopg.errors.UndefinedTable:
                return False

        wait_until(reached, f"seq {seq} in PostgreSQL")


@pytest.fixture
def writer(
    postgres: PostgresServer, mongo: MongoStandIn, s3: S3Server, bin_dir: Path, tmp_path: Path
) -> Iterator[Writer]:
    """The three services, S3 not started yet; writers still running at the end are stopped."""
    writer = Writer(postgres, mongo, s3, tmp_path)
    yield writer
    for process in writer.started:
        process.stop()


def test_writes_contiguous_records_to_all_three_and_stops_on_sigterm(writer: Writer, bin_dir: Path) -> None:
    writer.s3.start(bin_dir, writer.log_dir)
    process = writer.start()
    writer.wait_for_pg_seq(5, process)
    writer.stop(process)

    last = writer.assert_consistent()
    assert last >= 5
    pg = writer.pg_records()
    assert all(t.tzinfo is not None and t.microsecond % 1000 == 0 for t in pg.values())
    assert len(process.log_text().splitlines()) >= last, "expected one log line per tick"
    # S3 LastModified is when the object was written: never before the record's time.
    for obj in writer.s3.client().list_objects(BUCKET, prefix="events/", recursive=True):
        seq = int((obj.object_name or "")[len("events/") : -len(".json")])
        assert obj.last_modified is not None
        assert obj.last_modified >= pg[seq].replace(microsecond=0)


def test_restart_continues_the_sequence(writer: Writer, bin_dir: Path) -> None:
    writer.s3.start(bin_dir, writer.log_dir)
    first = writer.start()
    writer.wait_for_pg_seq(3, first)
    writer.stop(first)
    after_first = writer.assert_consistent()

    second = writer.start()
    writer.wait_for_pg_seq(after_first + 3, second)
    writer.stop(second)
    assert writer.assert_consistent() >= after_first + 3
    assert f"resuming after seq {after_first} " in second.log_text()


def test_a_record_left_half_written_is_completed_on_start(writer: Writer, bin_dir: Path) -> None:
    writer.s3.start(bin_dir, writer.log_dir)
    first = writer.start()
    writer.wait_for_pg_seq(2, first)
    writer.stop(first)
    last = writer.assert_consistent()

    # As if the writer had been killed after writing PostgreSQL only.
    half_written = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    with writer.postgres.connect() as conn:
        conn.execute(
            "INSERT INTO events (seq, created_at, payload) VALUES (%s, %s, 'half')", (last + 1, half_written)
        )

    second = writer.start()
    writer.wait_for_pg_seq(last + 3, second)
    writer.stop(second)
    writer.assert_consistent()
    assert writer.mongo_records()[last + 1] == half_written
    assert writer.s3_records()[last + 1] == half_written


def test_waits_for_a_service_that_starts_later(writer: Writer, bin_dir: Path) -> None:
    process = writer.start()
    wait_until(lambda: "s3: create bucket failed" in process.log_text(), "the writer to retry S3")
    assert process.popen.poll() is None, "the writer crashed instead of retrying"

    writer.s3.start(bin_dir, writer.log_dir)
    writer.wait_for_pg_seq(3, process)
    writer.stop(process)
    writer.assert_consistent()


def test_sigterm_while_a_service_is_down_exits_zero(writer: Writer) -> None:
    process = writer.start()
    wait_until(lambda: "s3: create bucket failed" in process.log_text(), "the writer to retry S3")
    writer.stop(process)


def test_writer_waits_out_an_fsync_lock(writer: Writer, bin_dir: Path) -> None:
    writer.s3.start(bin_dir, writer.log_dir)
    process = writer.start()
    writer.wait_for_pg_seq(2, process)

    locker = writer.mongo.client()
    assert locker.admin.command("fsync", lock=True)["lockCount"] == 1
    wait_until(
        lambda: ": insert held by the fsync lock" in writer.mongo.lock_layer.log_text(),
        "the writer's insert to be held by the fsync lock",
    )
    held_at = max(writer.mongo_records())
    assert max(writer.mongo_records()) == held_at, "MongoDB was written while fsync-locked"
    assert process.popen.poll() is None

    assert locker.admin.command("fsyncUnlock")["lockCount"] == 0
    writer.wait_for_pg_seq(held_at + 3, process)
    writer.stop(process)
    writer.assert_consistent()


def start_s3_only_writer(s3: S3Server, log_dir: Path) -> Process:
    """A writer given only the S3 variables, as in the benchmark's light namespaces."""
    env = python_env(
        {
            "S3_ENDPOINT": s3.endpoint,
            "S3_ACCESS_KEY": S3_ACCESS_KEY,
            "S3_SECRET_KEY": S3_SECRET_KEY,
            "S3_BUCKET": BUCKET,
            "WRITE_INTERVAL_SECONDS": "0.1",
        }
    )
    for name in ("PGHOST", "PGUSER", "PGPASSWORD", "MONGODB_URI"):
        env.pop(name, None)
    return start_process("datawriter-s3-only", [sys.executable, "-m", "localcluster.datawriter"], log_dir,
                         env=env)


def test_writer_with_only_s3_writes_a_gap_free_sequence_there(s3: S3Server, bin_dir: Path,
                                                             tmp_path: Path) -> None:
    s3.start(bin_dir, tmp_path)
    process = start_s3_only_writer(s3, tmp_path)
    client = s3.client()

    def seqs() -> list[int]:
        if not client.bucket_exists(BUCKET):
            return []
        listing = client.list_objects(BUCKET, prefix="events/", recursive=True)
        names = [obj.object_name or "" for obj in listing]
        return sorted(int(name[len("events/") : -len(".json")]) for name in names)

    def reached() -> bool:
        if process.popen.poll() is not None:
            pytest.fail(f"the S3-only writer exited:\n{process.log_text()}")
        return len(seqs()) >= 5

    wait_until(reached, "five records in S3")
    process.popen.send_signal(signal.SIGTERM)
    assert process.popen.wait(timeout=10) == 0, process.log_text()
    written = seqs()
    assert written == list(range(1, len(written) + 1)), f"gaps or duplicates in S3: {written}"
    assert "written to s3 in" in process.log_text()
    assert "postgres" not in process.log_text() and "mongodb" not in process.log_text()


def test_writer_without_any_service_refuses_to_start(tmp_path: Path) -> None:
    env = python_env({})
    for name in ("PGHOST", "MONGODB_URI", "S3_ENDPOINT"):
        env.pop(name, None)
    process = start_process("datawriter-nothing", [sys.executable, "-m", "localcluster.datawriter"], tmp_path,
                            env=env)
    assert process.popen.wait(timeout=30) == 2
    assert "set at least one of PGHOST, MONGODB_URI, S3_ENDPOINT" in process.log_text()
