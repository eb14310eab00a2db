"""The bleater data-writer: one timestamped record per tick into PostgreSQL, MongoDB and S3.

It is the application workload of the bleater sample, the writer that a SnapshotGroup must
isolate. Each tick takes one timestamp (UTC, truncated to milliseconds so that PostgreSQL and
MongoDB hold the same value) and writes the record with the next sequence number to:

- PostgreSQL: ``events(seq bigint primary key, created_at timestamptz not null default now(),
  payload text)`` in the connected database (created if missing);
- MongoDB: database ``bleater``, collection ``events``, ``{_id: seq, seq, created_at}``;
- S3: bucket ``$S3_BUCKET`` (created if missing), object ``events/<seq, 12 digits>.json``, whose
  LastModified is the record's time on the S3 side.

Sequence numbers have no gaps and no duplicates: every write is idempotent (the seq is the key
in all three), a tick is retried until all three services hold the record, and on start the
writer continues from the highest seq found in any service after completing that record
wherever it is missing (the writer may have been killed in the middle of a tick).

A service that is unreachable is retried with backoff rather than crashing the writer: the
services may start after it. SIGTERM (or SIGINT) lets the current tick finish, then the writer
exits 0.

Environment: PGHOST, PGPORT (5432), PGUSER, PGPASSWORD, PGDATABASE (bleater); MONGODB_URI;
S3_ENDPOINT (host:port, plain HTTP), S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET (bleater);
WRITE_INTERVAL_SECONDS (1). Each service is optional: the writer writes to those whose variable
(PGHOST, MONGODB_URI, S3_ENDPOINT) is set, and at least one must be.

Run: ``python -m localcluster.datawriter``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

import psycopg
import pymongo
import pymongo.errors
from minio import Minio
from minio.error import S3Error

log = logging.getLogger("localcluster.datawriter")

MONGO_DATABASE = "bleater"
MONGO_COLLECTION = "events"
OBJECT_PREFIX = "events/"
_OBJECT_NAME = re.compile(r"^events/(\d{12})\.json$")

# The variable whose presence turns each service on.
SERVICE_VARIABLES = {"postgres": "PGHOST", "mongodb": "MONGODB_URI", "s3": "S3_ENDPOINT"}

_BACKOFF_FIRST_SECONDS = 0.5
_BACKOFF_MAX_SECONDS = 5.0

T = TypeVar("T")


class Stopping(Exception):
    """Raised inside a retry loop when a stop was requested while a service was failing."""


@dataclass(frozen=True)
class WriterConfig:
    """Where to write and how often, read from the environment."""

    pg_host: str
    pg_port: int
    pg_user: str
    pg_password: str
    pg_database: str
    mongodb_uri: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    interval_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WriterConfig:
        """Build the configuration from environment variables (see the module docstring).

        An empty host, URI or endpoint leaves that service out; at least one must be given.
        """
        if not any(env.get(name) for name in SERVICE_VARIABLES.values()):
            raise ValueError(
                "no service to write to: set at least one of " + ", ".join(SERVICE_VARIABLES.values())
            )
        if env.get("PGHOST") and not env.get("PGUSER"):
            raise ValueError("missing environment variables: PGUSER (needed with PGHOST)")
        return cls(
            pg_host=env.get("PGHOST", ""),
            pg_port=int(env.get("PGPORT") or 5432),
            pg_user=env.get("PGUSER", ""),
            pg_password=env.get("PGPASSWORD", ""),
            pg_database=env.get("PGDATABASE") or "bleater",
            mongodb_uri=env.get("MONGODB_URI", ""),
            s3_endpoint=env.get("S3_ENDPOINT", ""),
            s3_access_key=env.get("S3_ACCESS_KEY", ""),
            s3_secret_key=env.get("S3_SECRET_KEY", ""),
            s3_bucket=env.get("S3_BUCKET") or "bleater",
            interval_seconds=float(env.get("WRITE_INTERVAL_SECONDS") or 1),
        )

    @property
    def services(self) -> list[str]:
        """The services configured, in write order: postgres, mongodb, s3."""
        given = {"postgres": self.pg_host, "mongodb": self.mongodb_uri, "s3": self.s3_endpoint}
        return [name for name, value in given.items() if value]


@dataclass(frozen=True)
class Record:
    """One event, written identically to every service."""

    seq: int
    created_at: dt.datetime

    @property
    def object_name(self) -> str:
        """The S3 object key of this record."""
        return f"{OBJECT_PREFIX}{self.seq:012d}.json"

    @property
    def payload(self) -> str:
        """The record's text payload."""
        return f"bleat #{self.seq}"

    def object_body(self) -> bytes:
        """The S3 object's JSON content."""
        document = {
            "seq": self.seq,
            "created_at": self.created_at.isoformat(),
            "payload": self.payload,
        }
        return json.dumps(document).encode()


def tick_time() -> dt.datetime:
    """Now in UTC, truncated to milliseconds (MongoDB's datetime resolution)."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class PostgresEvents:
    """The ``events`` table in PostgreSQL."""

    def __init__(self, config: WriterConfig) -> None:
        self._config = config
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                host=self._config.pg_host,
                port=self._config.pg_port,
                user=self._config.pg_user,
                password=self._config.pg_password,
                dbname=self._config.pg_database,
                connect_timeout=5,
                autocommit=True,
                application_name="bleater-data-writer",
            )
        return self._conn

    def reset(self) -> None:
        """Drop the connection after a failure; the next call reconnects."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def ensure_schema(self) -> None:
        """Create the table if missing."""
        self._connection().execute(
            "CREATE TABLE IF NOT EXISTS events ("
            " seq bigint PRIMARY KEY,"
            " created_at timestamptz NOT NULL DEFAULT now(),"
            " payload text)"
        )

    def max_seq(self) -> int:
        """The highest stored seq, 0 if none."""
        row = self._connection().execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(row[0]) if row else 0

    def created_at(self, seq: int) -> dt.datetime | None:
        """The stored time of ``seq``, or None if it is missing."""
        row = self._connection().execute("SELECT created_at FROM events WHERE seq = %s", (seq,)).fetchone()
        return row[0].astimezone(dt.UTC) if row else None

    def write(self, record: Record) -> None:
        """Insert the record; a record already present is left as it is."""
        self._connection().execute(
            "INSERT INTO events (seq, created_at, payload) VALUES (%s, %s, %s) ON CONFLICT (seq) DO NOTHING",
            (record.seq, record.created_at, record.payload),
        )


class MongoEvents:
    """The ``bleater.events`` collection in MongoDB."""

    def __init__(self, config: WriterConfig) -> None:
        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            config.mongodb_uri,
            tz_aware=True,
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=5000,
            # No socket timeout: an insert held by an fsync lock must wait, not fail.
        )
        self._events = self._client[MONGO_DATABASE][MONGO_COLLECTION]

    def reset(self) -> None:
        """Nothing to do: pymongo reconnects by itself."""

    def max_seq(self) -> int:
        """The highest stored seq, 0 if none."""
        doc = self._events.find_one({}, sort=[("seq", pymongo.DESCENDING)], projection=["seq"])
        return int(doc["seq"]) if doc else 0

    def created_at(self, seq: int) -> dt.datetime | None:
        """The stored time of ``seq``, or None if it is missing."""
        doc = self._events.find_one({"seq": seq})
        return doc["created_at"].astimezone(dt.UTC) if doc else None

    def write(self, record: Record) -> None:
        """Insert the record; a record already present is left as it is."""
        document = {"_id": record.seq, "seq": record.seq, "created_at": record.created_at}
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            self._events.insert_one(document)

    def close(self) -> None:
        """Close the client."""
        self._client.close()


class S3Events:
    """The ``events/`` objects in the S3 bucket."""

    def __init__(self, config: WriterConfig) -> None:
        self._bucket = config.s3_bucket
        self._client = Minio(
            config.s3_endpoint,
            access_key=config.s3_access_key or None,
            secret_key=config.s3_secret_key or None,
            secure=False,
        )

    def reset(self) -> None:
        """Nothing to do: every request opens or reuses a pooled connection."""

    def ensure_bucket(self) -> None:
        """Create the bucket if missing."""
        if not self._client.bucket_exists(self._bucket):
            self._client.make_bucket(self._bucket)

    def max_seq(self) -> int:
        """The highest seq among the stored objects, 0 if none."""
        highest = 0
        for obj in self._client.list_objects(self._bucket, prefix=OBJECT_PREFIX, recursive=True):
            match = _OBJECT_NAME.match(obj.object_name or "")
            if match:
                highest = max(highest, int(match.group(1)))
        return highest

    def created_at(self, seq: int) -> dt.datetime | None:
        """The time recorded in the object for ``seq``, or None if it is missing."""
        name = Record(seq, tick_time()).object_name
        try:
            response = self._client.get_object(self._bucket, name)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            document = json.loads(response.read())
        finally:
            response.close()
            response.release_conn()
        return dt.datetime.fromisoformat(document["created_at"]).astimezone(dt.UTC)

    def write(self, record: Record) -> None:
        """Store the record's object (overwriting it is harmless: same content)."""
        body = record.object_body()
        self._client.put_object(
            self._bucket,
            record.object_name,
            io.BytesIO(body),
            len(body),
            content_type="application/json",
        )


class DataWriter:
    """Writes one record per interval to every configured service until asked to stop."""

    def __init__(self, config: WriterConfig) -> None:
        self.config = config
        self.stop_requested = threading.Event()
        configured = config.services
        self.postgres = PostgresEvents(config) if "postgres" in configured else None
        self.mongo = MongoEvents(config) if "mongodb" in configured else None
        self.s3 = S3Events(config) if "s3" in configured else None
        candidates: dict[str, PostgresEvents | MongoEvents | S3Events | None] = {
            "postgres": self.postgres,
            "mongodb": self.mongo,
            "s3": self.s3,
        }
        self._services: dict[str, PostgresEvents | MongoEvents | S3Events] = {
            name: service for name, service in candidates.items() if service is not None
        }

    def request_stop(self) -> None:
        """Finish the current tick, then stop."""
        self.stop_requested.set()

    def _retry(self, service: str, action: str, call: Callable[[], T]) -> T:
        """Run ``call`` until it succeeds, backing off between failures.

        Raises Stopping when a stop is requested while the service keeps failing.
        """
        delay = _BACKOFF_FIRST_SECONDS
        while True:
            try:
                return call()
            except Exception as exc:
                log.warning("%s: %s failed: %s; retrying in %.1fs", service, action, exc, delay)
                self._services[service].reset()
            if self.stop_requested.wait(delay):
                raise Stopping(f"{service}: {action} abandoned on stop request")
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)

    def prepare(self) -> int:
        """Create what is missing, complete a half-written last record, return the next seq."""
        if self.postgres is not None:
            self._retry("postgres", "create table", self.postgres.ensure_schema)
        if self.s3 is not None:
            self._retry("s3", "create bucket", self.s3.ensure_bucket)
        highest = {
            name: self._retry(name, "read max seq", service.max_seq)
            for name, service in self._services.items()
        }
        last = max(highest.values())
        if last:
            self._complete(last)
        log.info(
            "resuming after seq %d (%s)", last, ", ".join(f"{name} {seq}" for name, seq in highest.items())
        )
        return last + 1

    def _complete(self, seq: int) -> None:
        """Write ``seq`` wherever it is missing, with the time it was first written with."""
        found = {
            name: self._retry(name, f"read seq {seq}", functools.partial(service.created_at, seq))
            for name, service in self._services.items()
        }
        created_at = next((t for t in found.values() if t is not None), None)
        if created_at is None:
            return
        missing = [name for name, t in found.items() if t is None]
        if missing:
            log.info("completing seq %d in %s", seq, ", ".join(missing))
        record = Record(seq, created_at)
        for name in missing:
            service = self._services[name]
            self._retry(name, f"write seq {seq}", functools.partial(service.write, record))

    def write_tick(self, seq: int) -> Record:
        """Write record ``seq`` to every service."""
        record = Record(seq, tick_time())
        for name, service in self._services.items():
            self._retry(name, f"write seq {seq}", functools.partial(service.write, record))
        return record

    def run(self) -> None:
        """Prepare, then write one record per interval until a stop is requested."""
        try:
            seq = self.prepare()
        except Stopping as exc:
            log.info("stopped before the first tick: %s", exc)
            return
        next_tick = time.monotonic()
        while not self.stop_requested.is_set():
            started = time.monotonic()
            try:
                record = self.write_tick(seq)
            except Stopping as exc:
                log.info("stopped with seq %d incomplete (%s); the next start completes it", seq, exc)
                return
            log.info(
                "seq=%d created_at=%s written to %s in %.0f ms",
                record.seq,
                record.created_at.isoformat(),
                ", ".join(self._services),
                (time.monotonic() - started) * 1000,
            )
            seq += 1
            next_tick += self.config.interval_seconds
            # After a long outage, write the next record at once instead of catching up in bursts.
            next_tick = max(next_tick, time.monotonic())
            self.stop_requested.wait(next_tick - time.monotonic())
        log.info("stopped after seq %d", seq - 1)

    def close(self) -> None:
        """Release the connections."""
        if self.postgres is not None:
            self.postgres.reset()
        if self.mongo is not None:
            self.mongo.close()


def main() -> int:
    """Command-line entry point: configuration comes from the environment."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s data-writer: %(message)s",
    )
    # Per-request chatter from the clients would drown the one line per tick.
    logging.getLogger("pymongo").setLevel(logging.WARNING)
    try:
        config = WriterConfig.from_env(os.environ)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    writer = DataWriter(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing the current tick", signal.Signals(signum).name)
        writer.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    targets = {
        "postgres": f"postgres {config.pg_host}:{config.pg_port}/{config.pg_database}",
        "mongodb": "mongodb",
        "s3": f"s3 {config.s3_endpoint} bucket {config.s3_bucket}",
    }
    log.info(
        "writing every %.3gs to %s",
        config.interval_seconds,
        ", ".join(targets[name] for name in config.services),
    )
    try:
        writer.run()
    finally:
        writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
