"""The service hook types (postgresql, mongodb, minio) without running any server.

FakeCluster is an in-memory double of the Cluster port that only knows Secrets; the Fake*Session
classes and FakeConnectors stand in for the database clients. The secret-leak tests use the real
adapters against a loopback port nobody listens on, so the messages checked are the drivers' own.
"""

from __future__ import annotations

import base64
import gzip
import random
import socket
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import snapgroup.hooks.minio
import snapgroup.hooks.mongodb
import snapgroup.hooks.postgresql  # noqa: F401 - registers the hook types
from snapgroup.adapters.connectors import DatabaseConnectors
from snapgroup.adapters.mongo import MongoConnection
from snapgroup.adapters.objectstore import ObjectStoreConnection
from snapgroup.adapters.postgres import PostgresConnection
from snapgroup.api.labels import PG_BACKUP_LABEL, PG_BACKUP_WAL, PG_BACKUP_WAL_START, PG_TABLESPACE_MAP
from snapgroup.api.restore import WalStart
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks import mongodb as mongodb_hook
from snapgroup.hooks.mongodb import MAX_UNLOCKS
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.hooks.services import ServiceHookType, address_of, pointed_at, server_identity
from snapgroup.ports import BackupEnd, BackupWal, ClockSample, NewestObject, PlanError, StepError

NS = "bleater"
PATH = "spec.services[1]"
PASSWORD = "s3cr3t-Pa55"

SECRETS: dict[str, dict[str, str]] = {
    "postgresql": {"host": "db", "port": "5432", "username": "app", "password": PASSWORD,
                   "database": "bleater"},
    "mongodb": {"uri": f"mongodb://app:{PASSWORD}@db:27017/"},
    "minio": {"endpoint": "s3:9000", "accessKey": "app", "secretKey": PASSWORD},
}
LAST_RECORDS: dict[str, dict[str, str]] = {
    "postgresql": {"table": "events", "column": "created_at"},
    "mongodb": {"database": "bleater", "collection": "events", "field": "created_at"},
    "minio": {"bucket": "bleater"},
}
NEWEST = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
IN_STEP = {"clockSkewSeconds": "0.000000", "clockSkewUncertaintySeconds": "0.000000"}
"""The clock evidence of a server whose clock agrees with the operator's."""


def service(service_type: str, *, last_record: bool = True) -> ServiceTarget:
    return ServiceTarget.model_validate({
        "name": f"my-{service_type}",
        "type": service_type,
        "pvcs": ["data"],
        "connection": {"secretRef": {"name": f"{service_type}-credentials"}, "timeout": "2s"},
        **({"lastRecord": LAST_RECORDS[service_type]} if last_record else {}),
    })


class FakeCluster:
    """The Cluster port in memory; only Secrets are modelled (the service hooks read nothing else)."""

    def __init__(self, secrets: Mapping[tuple[str, str], dict[str, str]] | None = None) -> None:
        self.secrets = dict(secrets or {})

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get((namespace, name))

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a service hook must not call Cluster.{name}")


class FakeClock:
    """A server whose clock agrees with the operator's (to skew_seconds)."""

    skew_seconds = 0.0

    async def clock_sample(self) -> ClockSample:
        now = datetime.now(UTC)
        return ClockSample(now, now + timedelta(seconds=self.skew_seconds), now, resolution=0.0)


PG_LABEL = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"


class FakePostgresSession(FakeClock):
    """A PostgreSQL session: backup mode is a flag; `lost` makes every call fail like a dead one."""

    def __init__(self) -> None:
        self.in_backup = False
        self.lost = False
        self.closed = 0
        self.newest_error: StepError | None = None
        self.indexed = True
        self.others: dict[str, int] = {}
        """Other sessions open on the server, by application_name."""
        self.names: list[str] = []
        """application_name of every connection made."""
        self.wal: bytes | StepError = b"\x00" * 8192
        """What reading the backup's WAL gives: its bytes, or the error the server answers."""
        self.wal_reads: list[tuple[str, str]] = []

    def _alive(self) -> None:
        if self.lost or self.closed:
            raise StepError("SessionLost", "the session to PostgreSQL has ended")

    async def server_version(self) -> int:
        self._alive()
        return 150004

    async def backup_start(self, label: str) -> str:
        self._alive()
        self.in_backup = True
        return "0/2000028"

    async def backup_stop(self) -> BackupEnd:
        self._alive()
        if not self.in_backup:
            raise StepError("BackupNotInProgress", "backup is not in progress")
        self.in_backup = False
        return BackupEnd("0/2000100", PG_LABEL, "")

    async def backup_wal(self, start: str, end: str, limit: int) -> BackupWal:
        self._alive()
        self.wal_reads.append((start, end))
        if isinstance(self.wal, StepError):
            raise self.wal
        return BackupWal(start, 1, 16 * 1024 * 1024, self.wal)

    async def newest_record(self, table: str | None, column: str | None,
                            query: str | None) -> datetime | None:
        self._alive()
        if self.newest_error:
            raise self.newest_error
        return NEWEST

    async def column_indexed(self, table: str, column: str) -> bool:
        return self.indexed

    async def terminate_sessions(self, application_name: str) -> int:
        self._alive()
        ended = self.others.pop(application_name, 0)
        return ended

    async def close(self) -> None:
        self.closed += 1


class FakeMongoServer:
    """mongod's fsync lock count, shared by every FakeMongoSession (the lock is the server's)."""

    def __init__(self, lock_count: int = 0) -> None:
        self.lock_count = lock_count
        self.unlock_calls = 0
        self.stuck = False
        """When True, fsyncUnlock never lowers the count (someone keeps re-locking)."""
        self.flushing: dict[str, int] = {}
        """Lock calls still flushing, by client appName: each lands (the count rises) after
        that many more looks at the server."""
        self.names: list[str] = []
        """The appName of every client opened."""

    def look(self) -> None:
        """Time passes on the server: flushes progress, and a finished one's lock lands."""
        for name, left in list(self.flushing.items()):
            if left <= 1:
                del self.flushing[name]
                self.lock_count += 1
            else:
                self.flushing[name] = left - 1


class FakeMongoSession(FakeClock):
    def __init__(self, server: FakeMongoServer) -> None:
        self.server = server
        self.closed = 0

    async def ping(self) -> None:
        pass

    async def fsync_lock(self) -> int:
        self.server.lock_count += 1
        return self.server.lock_count

    async def is_locked(self) -> bool:
        self.server.look()
        return self.server.lock_count > 0

    async def lock_in_flight(self, app_name: str) -> bool:
        self.server.look()
        return app_name in self.server.flushing

    async def fsync_unlock(self) -> int:
        self.server.unlock_calls += 1
        if self.server.lock_count == 0:
            raise StepError("NotLocked", "fsyncUnlock called when not locked")
        if not self.server.stuck:
            self.server.lock_count -= 1
        return self.server.lock_count

    async def newest_record(self, database: str, collection: str, field: str) -> datetime | None:
        return NEWEST

    async def close(self) -> None:
        self.closed += 1


class FakeObjectStoreSession(FakeClock):
    def __init__(self, buckets: set[str]) -> None:
        self.buckets = buckets
        self.closed = 0

    async def check_bucket(self, bucket: str) -> bool:
        return bucket in self.buckets

    async def newest_object_time(self, bucket: str, prefix: str, start_after: str,
                                 max_objects: int) -> NewestObject:
        return NewestObject(NEWEST, 1, complete=True)

    async def close(self) -> None:
        self.closed += 1


class FakeConnectors:
    """Hands out fake sessions and records what it was asked to connect with."""

    def __init__(self, *, fail: StepError | None = None) -> None:
        self.fail = fail
        self.connected: list[Mapping[str, str]] = []
        self.postgres_session = FakePostgresSession()
        self.mongo_server = FakeMongoServer()
        self.mongo_sessions: list[FakeMongoSession] = []
        self.object_store_session = FakeObjectStoreSession({"bleater"})

    def _connect(self, secret: Mapping[str, str]) -> None:
        self.connected.append(secret)
        if self.fail:
            raise self.fail

    async def postgres(self, secret: Mapping[str, str], timeout: float,
                       application_name: str = "snapgroup") -> FakePostgresSession:
        self._connect(secret)
        self.postgres_session.names.append(application_name)
        return self.postgres_session

    async def mongo(self, secret: Mapping[str, str], timeout: float,
                    app_name: str = "snapgroup") -> FakeMongoSession:
        self._connect(secret)
        self.mongo_server.names.append(app_name)
        session = FakeMongoSession(self.mongo_server)
        self.mongo_sessions.append(session)
        return session

    async def object_store(self, secret: Mapping[str, str],
                           timeout: float) -> FakeObjectStoreSession:
        self._connect(secret)
        return self.object_store_session


def context(cluster: Any, connectors: Any) -> HookContext:
    return HookContext(namespace=NS, group="nightly-1", group_uid="uid-1", cluster=cluster,
                       connectors=connectors, deadline=0.0)


def with_secret(service_type: str, data: dict[str, str] | None = None) -> FakeCluster:
    name = f"{service_type}-credentials"
    return FakeCluster({(NS, name): SECRETS[service_type] if data is None else data})


async def plan_one(service_type: str, cluster: Any, connectors: Any,
                   target: ServiceTarget | None = None) -> ServiceHook:
    hook_type = lookup(service_type)
    assert hook_type is not None
    hooks = await hook_type.plan(context(cluster, connectors), target or service(service_type),
                                 PATH)
    assert len(hooks) == 1
    hook = hooks[0]
    assert isinstance(hook, ServiceHook)
    return hook


# --- plan errors name the field to fix ------------------------------------------------------


@pytest.mark.parametrize("service_type", ["postgresql", "mongodb", "minio"])
async def test_missing_secret_names_secret_ref_and_touches_nothing(service_type: str) -> None:
    connectors = FakeConnectors()
    with pytest.raises(PlanError) as caught:
        await plan_one(service_type, FakeCluster(), connectors)
    assert caught.value.reason == "SecretNotFound"
    assert caught.value.field_path == f"{PATH}.connection.secretRef.name"
    assert f"{service_type}-credentials" in caught.value.message
    assert connectors.connected == []


@pytest.mark.parametrize(("service_type", "data", "missing"), [
    ("postgresql", {"host": "db", "username": "app"}, "password"),
    ("postgresql", {"host": "db", "password": PASSWORD}, "username (or user)"),
    ("mongodb", {"username": "app", "password": PASSWORD}, "uri"),
    ("minio", {"endpoint": "s3:9000", "accessKey": "app"}, "secretKey"),
])
async def test_incomplete_secret_names_the_missing_keys(
    service_type: str, data: dict[str, str], missing: str
) -> None:
    connectors = FakeConnectors()
    with pytest.raises(PlanError) as caught:
        await plan_one(service_type, with_secret(service_type, data), connectors)
    assert caught.value.reason == "SecretIncomplete"
    assert caught.value.field_path == f"{PATH}.connection.secretRef.name"
    assert f"lacks {missing};" in caught.value.message
    assert PASSWORD not in str(caught.value)
    assert connectors.connected == []


async def test_postgres_secret_with_user_and_uri_alternatives_is_complete() -> None:
    for data in ({"uri": f"postgresql://app:{PASSWORD}@db/bleater"},
                 {"host": "db", "user": "app", "password": PASSWORD}):
        connectors = FakeConnectors()
        await plan_one("postgresql", with_secret("postgresql", data), connectors)
        assert connectors.connected == [data]


@pytest.mark.parametrize(("reason", "field"), [
    ("AuthenticationFailed", "connection.secretRef.name"),
    ("DatabaseUnreachable", "connection"),
])
async def test_connection_failure_at_plan_names_the_field(reason: str, field: str) -> None:
    connectors = FakeConnectors(fail=StepError(reason, "cannot connect"))
    with pytest.raises(PlanError) as caught:
        await plan_one("mongodb", with_secret("mongodb"), connectors)
    assert (caught.value.reason, caught.value.field_path) == (reason, f"{PATH}.{field}")


async def test_postgres_missing_last_record_table_fails_plan_and_closes_session() -> None:
    connectors = FakeConnectors()
    connectors.postgres_session.newest_error = StepError(
        "LastRecordNotFound", 'relation "events" does not exist')
    with pytest.raises(PlanError) as caught:
        await plan_one("postgresql", with_secret("postgresql"), connectors)
    assert caught.value.reason == "LastRecordNotFound"
    assert caught.value.field_path == f"{PATH}.lastRecord"
    assert connectors.postgres_session.closed == 1


async def test_minio_missing_bucket_names_last_record_bucket() -> None:
    connectors = FakeConnectors()
    connectors.object_store_session.buckets.clear()
    with pytest.raises(PlanError) as caught:
        await plan_one("minio", with_secret("minio"), connectors)
    assert caught.value.reason == "LastRecordNotFound"
    assert caught.value.field_path == f"{PATH}.lastRecord.bucket"
    assert connectors.object_store_session.closed == 1


# --- apply / undo ---------------------------------------------------------------------------


async def test_postgres_backup_round_trip_records_lsns() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    assert hook.key == "service:my-postgresql"
    intent = hook.intent()
    assert intent["label"] == "snapgroup bleater/nightly-1 my-postgresql"
    assert intent["secretRef"] == hook.service.connection.secret_ref.name

    record = await hook.apply()
    assert record["startLsn"] == "0/2000028"
    assert connectors.postgres_session.in_backup
    assert await hook.newest_record() == NEWEST
    message = await hook.undo(record)

    assert not connectors.postgres_session.in_backup
    assert "0/2000100" in message
    assert hook.evidence() == {"serverVersion": "15.4", "backupStartLSN": "0/2000028",
                               "backupStopLSN": "0/2000100", **IN_STEP}
    await hook.release()
    await hook.release()
    assert connectors.postgres_session.closed == 1


async def test_postgres_keeps_the_backup_label_and_its_wal_for_the_snapshots() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    await hook.undo(await hook.apply())

    kept = await hook.keep_with_snapshot()

    assert connectors.postgres_session.wal_reads == [("0/2000028", "0/2000100")]
    assert kept[PG_BACKUP_LABEL] == PG_LABEL
    assert gzip.decompress(base64.b64decode(kept[PG_BACKUP_WAL])) == connectors.postgres_session.wal
    assert WalStart.from_text(kept[PG_BACKUP_WAL_START]) == WalStart("0/2000028", 1, 16 * 1024 * 1024)
    assert PG_TABLESPACE_MAP not in kept  # no tablespaces
    assert hook.evidence()["backupKept"] == "label and 8192 bytes of WAL from 0/2000028"


@pytest.mark.parametrize(("wal", "why"), [
    (StepError("PermissionDenied", "reading WAL segment: permission denied"), "permission denied"),
    (random.Random(7).randbytes(200_000), "more than"),  # incompressible: too large to annotate
])
async def test_postgres_without_its_wal_keeps_the_label_only_and_says_restores_use_crash_recovery(
    wal: bytes | StepError, why: str
) -> None:
    connectors = FakeConnectors()
    connectors.postgres_session.wal = wal
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    await hook.undo(await hook.apply())

    kept = await hook.keep_with_snapshot()

    assert kept == {PG_BACKUP_LABEL: PG_LABEL}
    assert why in hook.evidence()["backupKept"]
    assert "crash recovery" in hook.evidence()["backupKept"]


async def test_postgres_whose_backup_did_not_stop_keeps_nothing() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    record = await hook.apply()
    connectors.postgres_session.lost = True
    await hook.undo(record)
    assert await hook.keep_with_snapshot() == {}
    assert connectors.postgres_session.wal_reads == []


async def test_postgres_undo_after_session_died_reports_instead_of_failing() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    record = await hook.apply()
    connectors.postgres_session.lost = True

    message = await hook.undo(record)

    assert "ended with its session" in message
    assert "backupStopLSN" not in hook.evidence()


async def test_postgres_undo_whose_stop_fails_closes_the_session_and_says_the_backup_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connectors = FakeConnectors()
    hook = await plan_one("postgresql", with_secret("postgresql"), connectors)
    record = await hook.apply()

    async def stop_fails() -> str:
        raise StepError("Timeout", "pg_backup_stop did not answer")
    monkeypatch.setattr(connectors.postgres_session, "backup_stop", stop_fails)

    message = await hook.undo(record)

    assert connectors.postgres_session.closed == 1, "closing the session ends the backup"
    assert "did not answer" in message and "ended with its session" in message


async def test_newest_record_is_none_without_last_record() -> None:
    for service_type in ("postgresql", "mongodb", "minio"):
        hook = await plan_one(service_type, with_secret(service_type), FakeConnectors(),
                              service(service_type, last_record=False))
        assert await hook.newest_record() is None


async def test_mongo_undo_unlocks_down_to_the_count_before_the_group() -> None:
    connectors = FakeConnectors()
    connectors.mongo_server.lock_count = 1  # someone else's backup holds a lock already
    hook = await plan_one("mongodb", with_secret("mongodb"), connectors)

    record = await hook.apply()
    assert (record["lockCountBefore"], record["lockCountAfterLock"]) == (1, 2)
    connectors.mongo_server.lock_count = 3  # a nested lock arrived meanwhile
    await hook.undo(record)

    assert connectors.mongo_server.lock_count == 1
    assert connectors.mongo_server.unlock_calls == 2
    assert hook.evidence() == {"lockCountBefore": "1", "lockCountAfterLock": "2",
                               "lockCountAfterUnlock": "1", **IN_STEP}


async def test_mongo_undo_gives_up_after_a_bounded_number_of_unlocks() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("mongodb", with_secret("mongodb"), connectors)
    record = await hook.apply()
    connectors.mongo_server.stuck = True

    with pytest.raises(StepError) as caught:
        await hook.undo(record)
    assert caught.value.reason == "UnlockIncomplete"
    assert connectors.mongo_server.unlock_calls == MAX_UNLOCKS


async def test_mongo_undo_when_someone_already_unlocked_is_not_an_error() -> None:
    connectors = FakeConnectors()
    hook = await plan_one("mongodb", with_secret("mongodb"), connectors)
    record = await hook.apply()
    connectors.mongo_server.lock_count = 0

    message = await hook.undo(record)
    assert "nothing to unlock" in message


async def test_mongo_recover_reconnects_with_the_journaled_secret() -> None:
    connectors = FakeConnectors()
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    record = await hook.apply()
    await hook.release()  # the operator process is gone; the lock stays on the server

    mongodb = lookup("mongodb")
    assert mongodb is not None
    message = await mongodb.recover(context(cluster, connectors), hook.key, record, True)

    assert connectors.mongo_server.lock_count == 0
    assert "lock count back to 0" in message
    assert connectors.connected[-1] == SECRETS["mongodb"]
    assert connectors.mongo_sessions[-1].closed == 1


@pytest.mark.parametrize("locked", [True, False])
async def test_mongo_recover_without_a_count_unlocks_only_a_lock_that_landed(
    locked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.01)
    connectors = FakeConnectors()
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    intent = hook.intent()  # journaled before apply; the lock call never answered
    assert intent["lockedBefore"] is False
    connectors.mongo_server.lock_count = 1 if locked else 0  # the lock landed, or never did

    mongodb = lookup("mongodb")
    assert mongodb is not None
    message = await mongodb.recover(context(cluster, connectors), hook.key, intent, False)

    assert connectors.mongo_server.lock_count == 0
    assert connectors.mongo_server.unlock_calls == (1 if locked else 0)
    assert ("its lock landed" in message) == locked
    assert ("no lock landed" in message) == (not locked)


async def test_a_lock_still_flushing_is_waited_for_and_unlocked_when_it_lands(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock call timed out on the client; the server goes on flushing (currentOp lists the
    group's call) past the late-lock looks, and the lock lands later: the undo waits for it."""
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.001)
    connectors = FakeConnectors()
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    assert connectors.mongo_server.names == ["snapgroup:uid-1"], "clients named after the group"
    flushing_looks = mongodb_hook.LATE_LOCK_CHECKS * 3
    connectors.mongo_server.flushing = {"snapgroup:uid-1": flushing_looks}

    message = await hook.undo(hook.intent())

    assert connectors.mongo_server.lock_count == 0 and connectors.mongo_server.unlock_calls == 1
    assert "its lock landed" in message


async def test_a_lock_flushing_past_the_wait_fails_the_undo_for_a_retry(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.001)
    monkeypatch.setattr(mongodb_hook, "LOCK_IN_FLIGHT_WAIT", 0.01)
    connectors = FakeConnectors()
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    connectors.mongo_server.flushing = {"snapgroup:uid-1": 10**9}
    with pytest.raises(StepError) as caught:
        await hook.undo(hook.intent())
    assert caught.value.reason == "LockInFlight"
    assert "still running on the server" in caught.value.message
    assert connectors.mongo_server.unlock_calls == 0


async def test_another_clients_lock_in_flight_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mongodb_hook, "LATE_LOCK_SETTLE", 0.001)
    connectors = FakeConnectors()
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    connectors.mongo_server.flushing = {"snapgroup:uid-2": 10**9}
    message = await hook.undo(hook.intent())
    assert "no lock landed" in message and connectors.mongo_server.unlock_calls == 0


async def test_mongo_recover_leaves_a_lock_it_cannot_tell_is_ours() -> None:
    connectors = FakeConnectors()
    connectors.mongo_server.lock_count = 1  # locked by someone before the group
    cluster = with_secret("mongodb")
    hook = await plan_one("mongodb", cluster, connectors)
    intent = hook.intent()
    assert intent["lockedBefore"] is True

    mongodb = lookup("mongodb")
    assert mongodb is not None
    with pytest.raises(StepError) as caught:
        await mongodb.recover(context(cluster, connectors), hook.key, intent, False)
    assert caught.value.reason == "LockOwnerUnknown"
    assert connectors.mongo_server.lock_count == 1 and connectors.mongo_server.unlock_calls == 0


async def test_postgres_sessions_are_named_after_the_group_and_recover_closes_leftovers() -> None:
    connectors = FakeConnectors()
    cluster = with_secret("postgresql")
    hook = await plan_one("postgresql", cluster, connectors)
    assert connectors.postgres_session.names == ["snapgroup:uid-1"]
    record = hook.quiesce_record()
    assert record is not None and record["sessionName"] == "snapgroup:uid-1"
    connectors.postgres_session.others = {"snapgroup:uid-1": 1, "snapgroup:uid-2": 1}

    postgresql = lookup("postgresql")
    assert postgresql is not None
    message = await postgresql.recover(context(cluster, connectors), hook.key, record, False)
    assert "closed 1 session(s)" in message
    assert connectors.postgres_session.others == {"snapgroup:uid-2": 1}, "only the group's own"


async def test_postgres_recover_reconnects_from_the_journal_records() -> None:
    # A restarted operator has only the journal: the intent (journaled Applying) and the
    # apply's record (journaled Applied) must each say how to reconnect.
    connectors = FakeConnectors()
    cluster = with_secret("postgresql")
    hook = await plan_one("postgresql", cluster, connectors)
    intent = hook.intent()
    applied = await hook.apply()
    postgresql = lookup("postgresql")
    assert postgresql is not None
    for record, done in ((intent, False), (applied, True)):
        assert record["secretRef"] and record["timeout"], record
        connectors.postgres_session.others = {"snapgroup:uid-1": 1}
        connectors.postgres_session.closed = 0  # the fake hands out one session object
        message = await postgresql.recover(context(cluster, connectors), hook.key, record, done)
        assert "closed 1 session" in message, message


async def test_minio_recover_touches_nothing() -> None:
    connectors = FakeConnectors()
    hook_type = lookup("minio")
    assert hook_type is not None
    message = await hook_type.recover(context(FakeCluster(), connectors), "service:minio", {}, True)
    assert message
    assert connectors.connected == []


# --- credentials never leak -----------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on (bound, never listened: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _secrets_for(service_type: str, port: int) -> dict[str, str]:
    return {
        "postgresql": {"uri": f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/bleater"},
        "mongodb": {"uri": f"mongodb://app:{PASSWORD}@127.0.0.1:{port}/"},
        "minio": {"endpoint": f"127.0.0.1:{port}", "accessKey": "app", "secretKey": PASSWORD},
    }[service_type]


@pytest.mark.parametrize("service_type", ["postgresql", "mongodb", "minio"])
async def test_unreachable_service_error_carries_no_credentials(
    service_type: str, closed_port: int
) -> None:
    secret = _secrets_for(service_type, closed_port)
    connectors = DatabaseConnectors()
    with pytest.raises(PlanError) as caught:
        await plan_one(service_type, with_secret(service_type, secret), connectors)
    assert caught.value.reason == "DatabaseUnreachable"
    assert caught.value.field_path == f"{PATH}.connection"
    assert f"127.0.0.1:{closed_port}" in caught.value.message
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)


@pytest.mark.parametrize("secret", [
    {"uri": f"mongodb://app:{PASSWORD}@db:notaport/"},
    {"uri": f"mongodb+srv://app:{PASSWORD}@db:27017/"},
    {"uri": f"http://app:{PASSWORD}@db/"},
])
async def test_unusable_mongo_uri_error_carries_no_credentials(secret: dict[str, str]) -> None:
    with pytest.raises(StepError) as caught:
        await MongoConnection.open(secret, 1.0)
    assert caught.value.reason == "SecretInvalid"
    assert PASSWORD not in str(caught.value)


async def test_session_reprs_carry_no_credentials(closed_port: int) -> None:
    mongo = await MongoConnection.open(_secrets_for("mongodb", closed_port), 1.0)
    store = await ObjectStoreConnection.open(_secrets_for("minio", closed_port), 1.0)
    try:
        for shown in (repr(mongo), repr(store), repr(mongo._address), repr(store._address)):
            assert PASSWORD not in shown
    finally:
        await mongo.close()
        await store.close()
    with pytest.raises(StepError) as caught:
        await PostgresConnection.open(_secrets_for("postgresql", closed_port), 1.0)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(("secret", "host", "port", "expected"), [
    ({"host": "127.96.0.10", "port": "5432"}, "10.244.0.7", 5433, {"host": "10.244.0.7", "port": "5433"}),
    ({"uri": "mongodb://u:p@127.96.0.11:27017,127.96.0.21:27017/?authSource=admin"}, "10.244.0.8", 27017,
     {"uri": "mongodb://u:p@10.244.0.8:27017/?authSource=admin"}),
    ({"uri": "mongodb+srv://u:p@db.example.com/app"}, "10.244.0.8", None,
     {"uri": "mongodb://u:p@10.244.0.8/app"}),
    ({"uri": "postgresql://bleater@postgres.bleater.svc:5432/bleater?sslmode=disable"}, "10.244.0.9", 5432,
     {"uri": "postgresql://bleater@10.244.0.9:5432/bleater?sslmode=disable"}),
    ({"uri": "host=a,b port=5432 dbname=bleater user=u"}, "10.244.0.9", 6432,
     {"uri": "host=10.244.0.9 port=6432 dbname=bleater user=u"}),
    # Options naming another host go, whatever their spelling; the others stay as written.
    ({"uri": "postgresql://u:p@pg/db?host=pg-live&options=-c%20statement_timeout%3D5000&HostAddr=10.96.0.5&ssl"},
     "10.244.0.9", 5432, {"uri": "postgresql://u:p@10.244.0.9:5432/db?options=-c%20statement_timeout%3D5000&ssl"}),
    ({"uri": "host = pg.ns.svc port=5432 service=live password='a  b' sslpassword=it's"}, "10.244.0.9", 5432,
     {"uri": "host=10.244.0.9 port=5432 password='a  b' sslpassword=it's"}),
    ({"endpoint": "https://minio.bleater.svc:9000", "accessKey": "k"}, "10.244.0.10", 9443,
     {"endpoint": "https://10.244.0.10:9443", "accessKey": "k"}),
    ({"endpoint": "127.96.0.12:9000"}, "fd00::7", None, {"endpoint": "[fd00::7]:9000"}),
])
def test_a_secrets_address_is_pointed_elsewhere_keeping_credentials_and_options(
    secret: dict[str, str], host: str, port: int | None, expected: dict[str, str]
) -> None:
    assert pointed_at(secret, host, port) == expected


@pytest.mark.parametrize(("secret", "expected"), [
    ({"host": "127.96.0.10", "port": "5432"}, ("127.96.0.10", 5432)),
    ({"host": "postgres"}, ("postgres", None)),
    ({"uri": "mongodb://u:p@Mongo.Bleater.svc:27017,b:1/?x=y"}, ("mongo.bleater.svc", 27017)),
    ({"uri": "postgresql://u@[fd00::1]:5432/db"}, ("fd00::1", 5432)),
    ({"uri": "host=a,b port=6432,6433 dbname=x"}, ("a", 6432)),
    ({"endpoint": "http://minio:9000"}, ("minio", 9000)),
    ({"uri": "postgresql:///app?host=pg.bleater.svc&port=5433"}, ("pg.bleater.svc", 5433)),
    ({"uri": "host = pg port = 6432 dbname=x"}, ("pg", 6432)),
])
def test_the_address_a_secret_names(secret: dict[str, str], expected: tuple[str, int | None]) -> None:
    assert address_of(secret) == expected


@pytest.mark.parametrize("secret", [
    {"host": "mongodb"},
    {"host": "mongodb", "port": "27017"},
    {"host": "MongoDB.bleater"},
    {"uri": "mongodb://u:p@mongodb.bleater.svc/?authSource=admin"},
    {"uri": "mongodb://mongodb.bleater.svc.cluster.local.:27017/"},
])
def test_every_spelling_of_one_cluster_service_is_one_server(secret: dict[str, str]) -> None:
    """From namespace bleater, or from another one naming bleater's Service in full."""
    namespace = "bleater" if "bleater" not in str(secret).lower() else "elsewhere"
    assert server_identity(secret, namespace, 27017) == "mongodb.bleater.svc:27017"


@pytest.mark.parametrize(("secret", "expected"), [
    ({"host": "mongodb"}, "mongodb.other.svc:27017"),  # a Service of the same name elsewhere
    ({"host": "mongodb", "port": "27018"}, "mongodb.bleater.svc:27018"),
    ({"host": "10.96.0.12"}, "10.96.0.12:27017"),
    ({"uri": "mongodb://db.example.com:27017/"}, "db.example.com:27017"),
    ({"uri": "postgresql://u@[fd00::1]/db"}, "[fd00::1]:27017"),
    ({"uri": "mongodb://b.bleater.svc:1,a.bleater.svc:1/"}, "a.bleater.svc:1,b.bleater.svc:1"),
])
def test_different_servers_stay_apart(secret: dict[str, str], expected: str) -> None:
    namespace = "other" if secret == {"host": "mongodb"} else "bleater"
    assert server_identity(secret, namespace, 27017) == expected


def test_a_port_is_only_defaulted_where_the_type_has_one() -> None:
    assert server_identity({"endpoint": "http://minio:9000"}, "bleater", None) == "minio.bleater.svc:9000"
    assert server_identity({"endpoint": "https://minio"}, "bleater", None) == "minio.bleater.svc"


async def test_the_servers_exclusion_key_is_its_identity() -> None:
    cluster = FakeCluster({(NS, "mongodb-credentials"): {"host": "mongodb"}})
    target = ServiceTarget.model_validate({
        "name": "db", "type": "mongodb", "pvcs": ["mongo-data"],
        "connection": {"secretRef": {"name": "mongodb-credentials"}}})
    hook_type = lookup("mongodb")
    assert hook_type is not None
    (hook,) = await hook_type.plan(context(cluster, FakeConnectors()), target, PATH)
    assert hook.targets() == [f"server:mongodb/mongodb.{NS}.svc:27017"]


async def test_the_newest_record_of_a_copy_is_read_at_the_relocated_address_with_the_readers_secret() -> None:
    reader = {"host": "127.96.0.10", "port": "5432", "username": "reader", "password": "r"}
    cluster = FakeCluster({(NS, "postgresql-credentials"): SECRETS["postgresql"], (NS, "pg-reader"): reader})
    connectors = FakeConnectors()
    target = ServiceTarget.model_validate({
        "name": "pg", "type": "postgresql", "pvcs": ["pg-data"],
        "connection": {"secretRef": {"name": "postgresql-credentials"}},
        "lastRecord": {**LAST_RECORDS["postgresql"], "secretRef": {"name": "pg-reader"}}})
    hook_type = lookup("postgresql")
    assert isinstance(hook_type, ServiceHookType)
    moved: list[tuple[str, int | None]] = []

    def relocate(host: str, port: int | None) -> tuple[str, int | None]:
        moved.append((host, port))
        return "10.244.0.7", 5433

    newest = await hook_type.newest_at(context(cluster, connectors), target, relocate, PATH)
    assert newest == NEWEST
    assert moved == [("127.96.0.10", 5432)]
    assert connectors.connected == [{**reader, "host": "10.244.0.7", "port": "5433"}]
    assert connectors.postgres_session.closed == 1
    # Without lastRecord the copy is still asked something (its clock): it answered.
    without = target.model_copy(update={"last_record": None})
    fresh = FakeConnectors()
    assert await hook_type.newest_at(context(cluster, fresh), without, relocate, PATH) is None
    assert fresh.connected == [{**SECRETS["postgresql"], "host": "10.244.0.7", "port": "5433"}]
