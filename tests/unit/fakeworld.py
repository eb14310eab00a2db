"""A stateful in-memory world behind the ports, for fault injection (test double, no network).

`World` holds what the operator acts on: workloads whose pods terminate a moment after a scale
to zero, a PostgreSQL server whose non-exclusive backups are bound to sessions, a MongoDB server
with a server-wide fsync lock count, an S3 store, VolumeSnapshots that a pretend CSI driver cuts
(creationTime) and then readies, Leases with quiesce records, and the SnapshotGroup objects with
their status (merge-patched, as the API server stores it).

An operator process sees the world only through a `Process`: its `cluster` and `connectors`
proxies count every call in one sequence, and an `Injector` may turn call k into a fault. A
crashed process's calls never reach the world again, and its database sessions end with it.
The world also records violations it can see directly: a snapshot cut while not frozen, an undo
sent while the same target's apply is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from snapgroup.api.labels import ATTEMPT_LABEL, GROUP_UID_LABEL, ISOLATED_BY
from snapgroup.ports import (
    BackupEnd,
    BackupWal,
    ClockSample,
    LeaseRecord,
    NewestObject,
    PvcInfo,
    SnapshotClassInfo,
    SnapshotInfo,
    StepError,
    WorkloadInfo,
)

NS = "bleater"
DRIVER = "hostpath.csi.snapgroup.dev"
RECORD_TIME = datetime(2026, 11, 27, 11, 0, 0, tzinfo=UTC)
"""Newest record in every service: older than any cut, so a finished group is Consistent."""
SECRETS = {
    "postgres-credentials": {"host": "postgres", "port": "5432", "username": "app",
                             "password": "pw", "database": "bleater"},
    "mongodb-credentials": {"uri": "mongodb://app:pw@mongodb:27017/"},
    "minio-credentials": {"endpoint": "minio:9000", "accessKey": "app", "secretKey": "pw"},
}


class OperatorCrashed(Exception):
    """What every call of a crashed operator process gets: nothing reaches the world any more."""


@dataclass
class Workload:
    name: str
    replicas: int
    annotations: dict[str, str] = field(default_factory=dict)
    pods: set[str] = field(default_factory=set)

    @property
    def selector(self) -> str:
        return f"app={self.name}"


BACKUP_LABEL_TEXT = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
"""The backup_label the fake server's pg_backup_stop returns."""


@dataclass
class Snapshot:
    name: str
    labels: dict[str, str]
    owner_uid: str | None
    creation_time: datetime | None = None
    ready: bool = False
    frozen_at_create: bool = False
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Lease:
    holder: str
    expires: float
    record: dict[str, Any] | None = None


@dataclass
class PgSession:
    number: int
    application_name: str
    process: int
    closed: bool = False
    in_backup: bool = False


@dataclass
class Group:
    name: str
    uid: str
    spec: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)
    deleting: bool = False


def same_group(a: str, b: str) -> bool:
    """Lease holders are compared by group (the part before ``@``), as the adapter does."""
    return a.split("@")[0] == b.split("@")[0]


def merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """RFC 7386 merge patch in place: dicts merge, None removes, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class World:
    """Everything outside the operator, with the state the invariants read."""

    def __init__(self, writer_replicas: int = 2, mongo_locks: int = 0) -> None:
        self.workloads = {"data-writer": Workload("data-writer", writer_replicas)}
        self.original_replicas = {"data-writer": writer_replicas}
        for w in self.workloads.values():
            w.pods = {f"{w.name}-{i}" for i in range(w.replicas)}
        self.pvcs = {n: PvcInfo(n, "Bound", "hostpath", DRIVER)
                     for n in ("postgres-data", "mongodb-data", "minio-data")}
        self.pg_sessions: list[PgSession] = []
        self.mongo_locks = self.mongo_baseline = mongo_locks
        self.mongo_sessions: dict[int, int] = {}
        """Open MongoDB clients, by number: the process that opened each."""
        self.s3_sessions: dict[int, int] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        """Secrets of a namespace that differ from SECRETS (which every namespace sees)."""
        self.leases: dict[tuple[str, str], Lease] = {}
        """By (namespace, name)."""
        self.groups: dict[str, Group] = {}
        self.removed: dict[str, Group] = {}
        """Groups whose object is gone, as they were last stored."""
        self.events: list[tuple[str, str, str]] = []
        self.violations: list[str] = []
        self.applying: dict[str, int] = {}
        """Targets with an apply call in flight, and how many."""
        self.effects: Counter[str] = Counter()
        """Side effects that changed the world, by what they did: each apply and each undo."""
        self.changed = asyncio.Condition()
        self._touches: set[asyncio.Future[None]] = set()
        self._numbers = 0

    # -- what the invariants read -----------------------------------------------------

    def held(self) -> list[str]:
        """Everything still isolated, quiesced or open, in words; empty when all is given back."""
        found = []
        for w in self.workloads.values():
            original = self.original_replicas[w.name]
            if w.replicas != original or ISOLATED_BY in w.annotations:
                found.append(f"{w.name} at {w.replicas}/{original} replicas, "
                             f"annotations {sorted(w.annotations)}")
        if self.mongo_locks != self.mongo_baseline:
            found.append(f"MongoDB lock count {self.mongo_locks} (was {self.mongo_baseline})")
        found += [f"PostgreSQL backup on session {s.number}" for s in self.pg_sessions
                  if s.in_backup]
        return found

    def unbalanced(self) -> list[str]:
        """Applies not undone exactly once: a writer isolated and resumed, a MongoDB lock taken
        and released, a PostgreSQL backup started and stopped (by its session's end, too), as
        many times each. Empty when every effect was undone exactly once."""
        pairs = [(f"isolated {name}", f"resumed {name}") for name in self.workloads]
        pairs += [("mongodb locked", "mongodb unlocked"),
                  ("postgresql backup started", "postgresql backup stopped")]
        return [f"{self.effects[done]} x {done}, {self.effects[undone]} x {undone}"
                for done, undone in pairs if self.effects[done] != self.effects[undone]]

    def end_backup(self, session: Any) -> None:
        """A session's backup ends with the session (closed, terminated, its process gone)."""
        if session.in_backup:
            self.effects["postgresql backup stopped"] += 1
        session.closed, session.in_backup = True, False

    def open_sessions(self) -> list[str]:
        """Database sessions still open (a leak once the run is over)."""
        return ([f"postgres session {s.number} ({s.application_name})" for s in self.pg_sessions
                 if not s.closed]
                + [f"mongodb client {n}" for n in self.mongo_sessions]
                + [f"s3 client {n}" for n in self.s3_sessions])

    def frozen(self) -> bool:
        """Writers gone and every service quiesced: a cut now holds one moment."""
        writers_gone = all(w.replicas == 0 and not w.pods for w in self.workloads.values())
        backup = any(s.in_backup and not s.closed for s in self.pg_sessions)
        return writers_gone and backup and self.mongo_locks > self.mongo_baseline

    def end_process(self, process: int) -> None:
        """A process died: its connections close (a PostgreSQL backup ends with its session)."""
        for s in self.pg_sessions:
            if s.process == process:
                self.end_backup(s)
        for table in (self.mongo_sessions, self.s3_sessions):
            for number in [n for n, p in table.items() if p == process]:
                del table[number]

    def number(self) -> int:
        self._numbers += 1
        return self._numbers

    async def touch(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def soon(self, action: Callable[[], None]) -> None:
        """Something the world does on its own a moment later (a kubelet, a CSI driver)."""
        def run() -> None:
            action()
            task = asyncio.ensure_future(self.touch())
            self._touches.add(task)
            task.add_done_callback(self._touches.discard)
        asyncio.get_running_loop().call_soon(run)

    async def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(ready)

    def check_not_applying(self, target: str, what: str) -> None:
        if self.applying.get(target):
            self.violations.append(f"{what} while an apply of {target} was still in flight")

    def remove_group(self, name: str) -> None:
        """The finalizer is gone: the object goes, and the garbage collector takes the
        snapshots it owns."""
        group = self.removed[name] = self.groups.pop(name)
        for snap in [s for s in self.snapshots.values() if s.owner_uid == group.uid]:
            del self.snapshots[snap.name]


class WorldCluster:
    """The Cluster port over a World (one instance serves every process: the proxies count)."""

    def __init__(self, world: World) -> None:
        self.w = world

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        return self.w.pvcs.get(name)

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        return []

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        if (namespace, name) in self.w.secrets:
            return dict(self.w.secrets[namespace, name])
        return dict(SECRETS[name]) if name in SECRETS else None

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        return SnapshotClassInfo("hostpath-snapclass", DRIVER)

    def _workload(self, w: Workload) -> WorkloadInfo:
        return WorkloadInfo("Deployment", NS, w.name, w.replicas, w.selector,
                            dict(w.annotations), "1")

    async def get_workload(self, kind: str, namespace: str, name: str) -> WorkloadInfo | None:
        w = self.w.workloads.get(name)
        return None if w is None or kind != "Deployment" else self._workload(w)

    async def list_workloads(self, kind: str, namespace: str, selector: str) -> list[WorkloadInfo]:
        return [self._workload(w) for w in self.w.workloads.values() if w.selector == selector]

    async def list_annotated_workloads(self, annotation: str) -> list[WorkloadInfo]:
        return [self._workload(w) for w in self.w.workloads.values() if annotation in w.annotations]

    async def scale(self, kind: str, namespace: str, name: str, replicas: int,
                    annotations: Mapping[str, str | None]) -> None:
        w = self.w.workloads.get(name)
        if w is None:
            raise StepError("WorkloadNotFound", f"{kind} {name} does not exist")
        if replicas > 0 or any(v is None for v in annotations.values()):
            self.w.check_not_applying(f"workload:{name}", f"{name} restored")
        if w.replicas > 0 and replicas == 0:
            self.w.effects[f"isolated {name}"] += 1
        elif w.replicas == 0 and replicas > 0:
            self.w.effects[f"resumed {name}"] += 1
        w.replicas = replicas
        merge_patch(w.annotations, annotations)  # type: ignore[arg-type]
        if replicas == 0:
            self.w.soon(w.pods.clear)  # the kubelet confirms the pods' deletion
        else:
            w.pods |= {f"{name}-{i}" for i in range(replicas)}

    async def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        w = next(w for w in self.w.workloads.values() if w.selector == selector)
        await self.w.wait_until(lambda: not w.pods, timeout)

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        labels = dict(meta.get("labels", {}))
        existing = self.w.snapshots.get(meta["name"])
        if existing is not None:
            if existing.labels.get(GROUP_UID_LABEL) != labels.get(GROUP_UID_LABEL):
                raise StepError("SnapshotNameTaken", f"{meta['name']} belongs to someone else")
            return
        owners = meta.get("ownerReferences") or [{}]
        snap = Snapshot(meta["name"], labels, owners[0].get("uid"),
                        frozen_at_create=self.w.frozen())
        if not snap.frozen_at_create:
            self.w.violations.append(f"snapshot {snap.name} created while not frozen: "
                                     f"{self.w.held() or 'nothing held'}")
        self.w.snapshots[snap.name] = snap

        def cut() -> None:
            snap.creation_time = datetime.now(UTC)
            self.w.soon(lambda: setattr(snap, "ready", True))
        self.w.soon(cut)

    def _snapshot(self, s: Snapshot) -> SnapshotInfo:
        return SnapshotInfo(s.name, s.creation_time, s.ready, "1Gi" if s.ready else None, None,
                            content=f"content-{s.name}", owner_uid=s.labels.get(GROUP_UID_LABEL))

    async def get_snapshot(self, namespace: str, name: str) -> SnapshotInfo | None:
        s = self.w.snapshots.get(name)
        return None if s is None else self._snapshot(s)

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        self.w.snapshots.pop(name, None)

    async def annotate_snapshot(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        s = self.w.snapshots.get(name)
        if s is not None:
            s.annotations.update(annotations)

    async def orphan_snapshot(self, namespace: str, name: str) -> None:
        s = self.w.snapshots.get(name)
        if s is not None:
            s.owner_uid = None

    def _matching(self, selector: str) -> list[Snapshot]:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        return [s for s in self.w.snapshots.values() if wanted.items() <= s.labels.items()]

    async def list_snapshots(self, namespace: str, selector: str) -> list[SnapshotInfo]:
        return [self._snapshot(s) for s in self._matching(selector)]

    async def wait_snapshots(self, namespace: str, selector: str, names: set[str], until: str,
                             timeout: float) -> dict[str, SnapshotInfo]:
        def done() -> bool:
            found = {s.name: s for s in self._matching(selector)}
            return all(n in found and (found[n].ready if until == "ready"
                                       else found[n].creation_time is not None) for n in names)
        await self.w.wait_until(done, timeout)
        return {n: self._snapshot(self.w.snapshots[n]) for n in names}

    async def patch_group_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        group = self.w.groups.get(name)
        if group is None:
            raise StepError("SnapshotGroupNotFound", f"SnapshotGroup {name} does not exist")
        before = group.status.get("attempt", 1)
        merge_patch(group.status, status)
        if group.status.get("attempt", 1) != before and self.w.held():
            self.w.violations.append(f"attempt {group.status.get('attempt')} began while the "
                                     f"previous one still held {self.w.held()}")

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        group = self.w.groups.get(name)
        if group is None:
            return None
        return {"metadata": {"name": name, "namespace": NS, "uid": group.uid},
                "spec": copy.deepcopy(group.spec), "status": copy.deepcopy(group.status)}

    async def emit_event(self, namespace: str, name: str, uid: str, event_type: str, reason: str,
                         message: str) -> None:
        self.w.events.append((event_type, reason, message))

    async def acquire_lease(self, namespace: str, name: str, holder: str, seconds: int,
                            labels: Mapping[str, str] | None = None) -> str | None:
        loop = asyncio.get_running_loop()
        lease = self.w.leases.get((namespace, name))
        if lease is not None and not same_group(lease.holder, holder):
            expired = lease.expires < loop.time()
            if not expired or lease.record is not None:
                return lease.holder
        record = lease.record if lease is not None else None
        self.w.leases[namespace, name] = Lease(holder, loop.time() + seconds, record)
        return None

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        lease = self.w.leases.get((namespace, name))
        if lease is not None and same_group(lease.holder, holder) and lease.record is None:
            del self.w.leases[namespace, name]
            await self.w.touch()

    async def set_lease_record(self, namespace: str, name: str, holder: str,
                               record: Mapping[str, Any] | None) -> None:
        lease = self.w.leases.get((namespace, name))
        if lease is None or not same_group(lease.holder, holder):
            if record is None:
                return
            raise StepError("LeaseNotHeld", f"Lease {name} is not held by {holder}")
        lease.record = None if record is None else copy.deepcopy(dict(record))

    async def list_lease_records(self) -> list[LeaseRecord]:
        return [LeaseRecord(namespace, name, lease.holder, lease.record)
                for (namespace, name), lease in self.w.leases.items() if lease.record is not None]

    async def wait_lease_change(self, namespace: str, name: str, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self.w.changed:
                await self.w.changed.wait()


def clock_sample() -> ClockSample:
    """A server clock that agrees with the operator's."""
    moment = datetime.now(UTC)
    return ClockSample(before=moment, server=moment, after=moment, resolution=0.0)


class WorldPostgres:
    """One PostgreSQL session: a backup belongs to it and ends when it closes."""

    def __init__(self, world: World, session: PgSession) -> None:
        self.w, self.s = world, session

    def _alive(self) -> None:
        if self.s.closed:
            raise StepError("SessionLost", "the session to PostgreSQL has ended")

    async def server_version(self) -> int:
        self._alive()
        return 160004

    async def backup_start(self, label: str) -> str:
        self._alive()
        if self.s.in_backup:
            raise StepError("BackupInProgress", "a backup is already in progress on this session")
        self.s.in_backup = True
        self.w.effects["postgresql backup started"] += 1
        return "0/2000028"

    async def backup_stop(self) -> str:
        self._alive()
        self.w.check_not_applying("server:postgresql", "pg_backup_stop")
        if not self.s.in_backup:
            raise StepError("BackupNotInProgress", "backup is not in progress")
        self.s.in_backup = False
        self.w.effects["postgresql backup stopped"] += 1
        return BackupEnd("0/2000100", BACKUP_LABEL_TEXT, "")

    async def backup_wal(self, start: str, end: str, limit: int) -> BackupWal:
        self._alive()
        return BackupWal(start, 1, 16 * 1024 * 1024, b"wal from " + start.encode() + b" to " + end.encode())

    async def newest_record(self, table: str | None, column: str | None,
                            query: str | None) -> datetime | None:
        self._alive()
        return RECORD_TIME

    async def column_indexed(self, table: str, column: str) -> bool:
        self._alive()
        return True

    async def clock_sample(self) -> ClockSample:
        self._alive()
        return clock_sample()

    async def terminate_sessions(self, application_name: str) -> int:
        self._alive()
        others = [s for s in self.w.pg_sessions if s is not self.s and not s.closed
                  and s.application_name == application_name]
        for s in others:
            self.w.end_backup(s)
        return len(others)

    async def close(self) -> None:
        if self.s.in_backup:
            self.w.check_not_applying("server:postgresql", "closing the backup's session")
        self.w.end_backup(self.s)


class WorldMongo:
    """A MongoDB client; the fsync lock count is the server's."""

    def __init__(self, world: World, number: int) -> None:
        self.w, self.number = world, number

    def _alive(self) -> None:
        if self.number not in self.w.mongo_sessions:
            raise StepError("DatabaseUnreachable", "the MongoDB client is closed")

    async def ping(self) -> None:
        self._alive()

    async def fsync_lock(self) -> int:
        self._alive()
        self.w.mongo_locks += 1
        self.w.effects["mongodb locked"] += 1
        return self.w.mongo_locks

    async def fsync_unlock(self) -> int:
        self._alive()
        self.w.check_not_applying("server:mongodb", "fsyncUnlock")
        if self.w.mongo_locks == 0:
            raise StepError("NotLocked", "fsyncUnlock called when not locked")
        self.w.mongo_locks -= 1
        self.w.effects["mongodb unlocked"] += 1
        return self.w.mongo_locks

    async def is_locked(self) -> bool:
        self._alive()
        return self.w.mongo_locks > 0

    async def lock_in_flight(self, app_name: str) -> bool:
        self._alive()
        return False  # a lock call lands at once or never here

    async def clock_sample(self) -> ClockSample:
        self._alive()
        return clock_sample()

    async def newest_record(self, database: str, collection: str, field: str) -> datetime | None:
        self._alive()
        return RECORD_TIME

    async def close(self) -> None:
        self.w.mongo_sessions.pop(self.number, None)


class WorldS3:
    def __init__(self, world: World, number: int) -> None:
        self.w, self.number = world, number

    async def check_bucket(self, bucket: str) -> bool:
        return bucket == "bleater"

    async def newest_object_time(self, bucket: str, prefix: str, start_after: str,
                                 max_objects: int) -> NewestObject:
        return NewestObject(newest=RECORD_TIME, listed=1, complete=True)

    async def clock_sample(self) -> ClockSample:
        return clock_sample()

    async def close(self) -> None:
        self.w.s3_sessions.pop(self.number, None)


class WorldConnectors:
    """Opens sessions on the World's servers for one process."""

    def __init__(self, world: World, process: Process) -> None:
        self.w, self.process = world, process

    async def postgres(self, secret: Mapping[str, str], timeout: float,
                       application_name: str = "snapgroup") -> Any:
        session = PgSession(self.w.number(), application_name, self.process.number)
        self.w.pg_sessions.append(session)
        return self.process.wrap(WorldPostgres(self.w, session), "pg")

    async def mongo(self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup") -> Any:
        number = self.w.number()
        self.w.mongo_sessions[number] = self.process.number
        return self.process.wrap(WorldMongo(self.w, number), "mongo")

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> Any:
        number = self.w.number()
        self.w.s3_sessions[number] = self.process.number
        return self.process.wrap(WorldS3(self.w, number), "s3")


APPLY_TARGETS: dict[str, str] = {
    "cluster.scale": "workload:data-writer", "cluster.wait_pods_gone": "workload:data-writer",
    "pg.backup_start": "server:postgresql", "mongo.fsync_lock": "server:mongodb",
}
"""Calls that apply an effect, and the target they apply it to (for the in-flight check)."""


Fault = Callable[["Call", Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""Given the call and a thunk that performs it in the world, what the caller gets instead."""


@dataclass(frozen=True)
class Call:
    index: int
    name: str
    """``cluster.scale``, ``pg.backup_start``, ``connectors.mongo``, ..."""
    args: tuple[Any, ...]
    occurrence: int = 0
    """How many calls of the same name came before this one. A fault is aimed at (name,
    occurrence): calls of concurrent tasks (undos of one stage, the event sender) may interleave
    differently from run to run, the n-th call of one kind stays the same step."""


class Injector:
    """Counts every call of the processes that share it; turns the call `at` (its name and
    occurrence) into `fault`."""

    def __init__(self, at: Call | None = None, fault: Fault | None = None) -> None:
        self.at, self.fault = at, fault
        self.calls: list[Call] = []
        self.seen: Counter[str] = Counter()
        self.fired: Call | None = None
        self.outages: dict[str, int] = {}
        """Calls by name that keep failing, and how many more times they will."""


class Process:
    """One operator process: the ports it sees, counted, faultable, and mortal."""

    def __init__(self, world: World, number: int, injector: Injector | None) -> None:
        self.world, self.number, self.injector = world, number, injector
        self.dead = False
        self.cluster: Any = self.wrap(WorldCluster(world), "cluster")
        self.connectors: Any = self.wrap(WorldConnectors(world, self), "connectors")

    def crash(self) -> None:
        """SIGKILL: no later call reaches the world, and the process's connections close."""
        self.dead = True
        self.world.end_process(self.number)

    def wrap(self, target: object, prefix: str) -> Any:
        return _Proxy(self, target, prefix)

    async def call(self, name: str, method: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                   kwargs: dict[str, Any]) -> Any:
        if self.dead:
            raise OperatorCrashed(f"{name}: the operator process is gone")
        target = APPLY_TARGETS.get(name)
        if name == "cluster.scale" and (args[3] > 0 or None in args[4].values()):
            target = None  # a scale back up is an undo
        injector = self.injector
        thunk: Callable[[], Awaitable[Any]] = lambda: method(*args, **kwargs)  # noqa: E731
        if target is not None:
            self.world.applying[target] = self.world.applying.get(target, 0) + 1
        try:
            if injector is None:
                return await thunk()
            call = Call(len(injector.calls), name, args, injector.seen[name])
            injector.seen[name] += 1
            injector.calls.append(call)
            if injector.outages.get(name):
                injector.outages[name] -= 1
                if name.endswith(".close"):
                    await thunk()  # a close drops the connection locally all the same
                raise StepError("KubernetesApiError", f"{name}: still failing (an outage)")
            at = injector.at
            if (at is not None and (call.name, call.occurrence) == (at.name, at.occurrence)
                    and injector.fault is not None):
                injector.fired = call
                perform = self._alive(thunk)
                if name.endswith(".close"):
                    # A client's close drops its connection locally whatever the server
                    # answers: a fault can only spoil the answer.
                    await perform()
                    perform = _nothing
                if name.startswith("connectors."):
                    return await self._connect_or_nothing(call, perform, injector.fault)
                return await injector.fault(call, perform)
            return await thunk()
        finally:
            if target is not None:
                self.world.applying[target] -= 1

    async def _connect_or_nothing(self, call: Call, perform: Callable[[], Awaitable[Any]],
                                  fault: Fault) -> Any:
        """A connection attempt that fails leaves no connection: the client closes what it
        half-opened (only a completed connect hands a session to the caller)."""
        opened: list[Any] = []

        async def connect() -> Any:
            session = await perform()
            opened.append(session)
            return session
        try:
            return await fault(call, connect)
        except BaseException:
            for session in opened:
                await session._target.close()
            raise

    def _alive(self, thunk: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            if self.dead:
                raise OperatorCrashed("the operator process is gone")
            return await thunk()
        return run


async def _nothing() -> None:
    return None


class _Proxy:
    def __init__(self, process: Process, target: object, prefix: str) -> None:
        self._process, self._target, self._prefix = process, target, prefix

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._target, attr)
        name = f"{self._prefix}.{attr}"

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._process.call(name, method, args, kwargs)
        return call

    def __repr__(self) -> str:
        return f"<{self._prefix} of process {self._process.number}>"


def snapshots_of(world: World, uid: str) -> dict[str, Snapshot]:
    return {n: s for n, s in world.snapshots.items() if s.labels.get(GROUP_UID_LABEL) == uid}


def attempt_of(snapshot: Snapshot) -> int:
    return int(snapshot.labels.get(ATTEMPT_LABEL, "1"))


def since(moment: datetime) -> timedelta:
    return datetime.now(UTC) - moment
