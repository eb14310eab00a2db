"""The operator's view of the outside world, as interfaces.

Orchestration and hooks talk only to these protocols; `snapgroup.adapters` implements them with
real clients, and unit tests implement them in memory. Every method carries its own timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol


class PlanError(Exception):
    """A problem found before anything was touched: the group fails with this reason.

    ``held_target``: the exclusion key (``workload:Kind/name``, ...) of something another group
    holds right now. Such a problem may clear once that group is done, so a group first queues
    for the target's Lease and fails only if it is still held once the Lease is its own.
    """

    def __init__(self, reason: str, field_path: str, message: str,
                 held_target: str | None = None) -> None:
        super().__init__(f"{field_path}: {message}")
        self.reason = reason
        self.field_path = field_path
        self.message = message
        self.held_target = held_target


class StepError(Exception):
    """A side-effecting step failed; the reason is CamelCase, the message is for a person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


GROUP_GONE = "SnapshotGroupNotFound"
"""The StepError reason of a status write to a SnapshotGroup that no longer exists."""


@dataclass(frozen=True)
class PvcInfo:
    """A PersistentVolumeClaim as the plan needs it."""

    name: str
    phase: str
    storage_class: str | None
    driver: str | None


@dataclass(frozen=True)
class SnapshotClassInfo:
    """A VolumeSnapshotClass."""

    name: str
    driver: str


@dataclass(frozen=True)
class WorkloadInfo:
    """A Deployment or StatefulSet as isolation needs it."""

    kind: str
    namespace: str
    name: str
    replicas: int
    selector: str
    """Its pod selector, in labelSelector query syntax."""
    annotations: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


@dataclass(frozen=True)
class SnapshotInfo:
    """What the cluster says about one VolumeSnapshot."""

    name: str
    creation_time: datetime | None
    ready_to_use: bool
    restore_size: str | None
    error: str | None
    content: str | None = None
    """Name of the bound VolumeSnapshotContent."""
    owner_uid: str | None = None
    """uid of the SnapshotGroup that cut it (its group-uid label), None for anybody else's."""


@dataclass(frozen=True)
class LeaseRecord:
    """A quiesce record kept on a server's exclusion Lease (see `api.labels.QUIESCE_RECORD`)."""

    namespace: str
    name: str
    holder: str | None
    record: Mapping[str, Any]


@dataclass(frozen=True)
class BackupEnd:
    """What pg_backup_stop returns: where the backup ended, and the files a restore writes into
    PGDATA before the server starts (`tablespace_map` is empty without tablespaces)."""

    lsn: str
    backup_label: str
    tablespace_map: str


@dataclass(frozen=True)
class BackupWal:
    """The WAL a backup needs beyond what its snapshot holds: the bytes from `start` (an LSN) on,
    in segments of `segment_size` bytes on `timeline`."""

    start: str
    timeline: int
    segment_size: int
    data: bytes


@dataclass(frozen=True)
class ClockSample:
    """One reading of a server's clock, taken between two readings of the operator's clock.

    The server read its clock at some instant between `before` and `after` (operator time), and
    reported `server`, truncated to `resolution` seconds (1 for an HTTP Date header).
    """

    before: datetime
    server: datetime
    after: datetime
    resolution: float


EventType = Literal["Normal", "Warning"]


class Cluster(Protocol):
    """Kubernetes, as the orchestration sees it."""

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        """The claim, or None when it does not exist."""
        ...

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        """Claims matching a label selector."""
        ...

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """Decoded data of a Secret, or None when it does not exist."""
        ...

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        """The named class, or the default class when name is None; None when absent."""
        ...

    async def get_workload(self, kind: str, namespace: str, name: str) -> WorkloadInfo | None:
        """One Deployment or StatefulSet, or None."""
        ...

    async def list_workloads(self, kind: str, namespace: str, selector: str) -> list[WorkloadInfo]:
        """Deployments or StatefulSets matching a label selector."""
        ...

    async def list_annotated_workloads(self, annotation: str) -> list[WorkloadInfo]:
        """Every Deployment and StatefulSet, in all watched namespaces, carrying an annotation."""
        ...

    async def scale(
        self, kind: str, namespace: str, name: str, replicas: int,
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set replicas and annotations (None removes one) in a single patch."""
        ...

    async def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        """Return once no pod matches the selector; raise TimeoutError after timeout seconds."""
        ...

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a VolumeSnapshot; an existing one of that name counts as created only when it
        carries the same group-uid label, else StepError("SnapshotNameTaken")."""
        ...

    async def get_snapshot(self, namespace: str, name: str) -> SnapshotInfo | None:
        """One VolumeSnapshot, or None when it does not exist."""
        ...

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        """Delete a VolumeSnapshot; a missing one counts as deleted."""
        ...

    async def annotate_snapshot(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Add annotations to a VolumeSnapshot."""
        ...

    async def orphan_snapshot(self, namespace: str, name: str) -> None:
        """Drop a VolumeSnapshot's owner references, so it outlives its group."""
        ...

    async def list_snapshots(self, namespace: str, selector: str) -> list[SnapshotInfo]:
        """VolumeSnapshots matching a label selector."""
        ...

    async def wait_snapshots(
        self, namespace: str, selector: str, names: set[str], until: Literal["cut", "ready"],
        timeout: float,
    ) -> dict[str, SnapshotInfo]:
        """Watch the named snapshots until each is cut (has creationTime) or ready to use.

        Returns the last seen state of each; raises TimeoutError after timeout seconds, and
        StepError when a snapshot reports an error that will not go away.
        """
        ...

    async def patch_group_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the SnapshotGroup's status subresource directly (the journal)."""
        ...

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A SnapshotGroup as stored, or None when it does not exist."""
        ...

    async def emit_event(
        self, namespace: str, name: str, uid: str, event_type: EventType, reason: str, message: str,
    ) -> None:
        """Record a Kubernetes Event on the SnapshotGroup."""
        ...

    async def acquire_lease(
        self, namespace: str, name: str, holder: str, seconds: int,
        labels: Mapping[str, str] | None = None,
    ) -> str | None:
        """Take a coordination.k8s.io Lease for holder, or renew it.

        Returns None when holder now holds it, else the identity of the live holder. A lease
        whose holder let it expire is taken over, unless it still carries another holder's
        quiesce record (that server is not known to be resumed yet).
        """
        ...

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Give a Lease up if holder still holds it; one with a quiesce record is kept."""
        ...

    async def set_lease_record(
        self, namespace: str, name: str, holder: str, record: Mapping[str, Any] | None
    ) -> None:
        """Write (or with None remove) the quiesce record on a Lease holder holds."""
        ...

    async def list_lease_records(self) -> list[LeaseRecord]:
        """Every Lease with a quiesce record, in all watched namespaces."""
        ...

    async def wait_lease_change(self, namespace: str, name: str, timeout: float) -> None:
        """Return when the Lease changes or is deleted, or after timeout seconds."""
        ...


class ClusterObjects(Protocol):
    """Kubernetes objects by kind, as a restore reads and creates them (JSON as stored).

    Kinds: Namespace, PersistentVolumeClaim, PersistentVolume, Pod, Secret, ConfigMap, Service,
    Deployment, StatefulSet, StorageClass, VolumeSnapshot, VolumeSnapshotContent, SnapshotGroup,
    SnapshotGroupRestore. ``namespace`` is ignored for cluster-scoped kinds.
    """

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        ...

    async def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """Objects of a kind (in a namespace), matching a label selector when one is given."""
        ...

    async def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create the object and return it as stored; None when one of that name exists."""
        ...

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete the object (background propagation); one that does not exist is no error."""
        ...

    async def patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch the object (a null value removes a key) and return it; None when it does
        not exist."""
        ...

    async def wait(
        self, kind: str, namespace: str, name: str, done: Callable[[dict[str, Any]], bool],
        timeout: float,
    ) -> dict[str, Any]:
        """Watch the object until done(object) holds and return it; TimeoutError at the
        timeout, naming the object."""
        ...

    async def wait_gone(self, kind: str, namespace: str, name: str, timeout: float) -> None:
        """Watch the object until it no longer exists; TimeoutError at the timeout."""
        ...

    async def acquire_lease(
        self, namespace: str, name: str, holder: str, seconds: int,
        labels: dict[str, str] | None = None,
    ) -> str | None:
        """Take or renew an exclusion Lease, as groups do (`Cluster.acquire_lease`): None
        when holder holds it now, else the live other holder."""
        ...

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Give an exclusion Lease up if holder still holds it."""
        ...

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource of one of the operator's own objects;
        StepError(GROUP_GONE) when it does not exist."""
        ...

    async def record_event(
        self, kind: str, namespace: str, name: str, uid: str, event_type: EventType, reason: str,
        message: str,
    ) -> None:
        """Record a core/v1 Event on one of the operator's own objects."""
        ...


class PostgresSession(Protocol):
    """One PostgreSQL session, held open through the freeze window."""

    async def server_version(self) -> int:
        """server_version_num, e.g. 150004."""
        ...

    async def backup_start(self, label: str) -> str:
        """Enter non-exclusive backup mode on this session; returns the start LSN."""
        ...

    async def backup_stop(self) -> BackupEnd:
        """Leave backup mode on this session; returns where it ended and its label."""
        ...

    async def backup_wal(self, start: str, end: str, limit: int) -> BackupWal:
        """The WAL from LSN start through the page holding LSN end, read from the server's
        pg_wal; StepError when it may not be read or is longer than limit bytes."""
        ...

    async def newest_record(
        self, table: str | None, column: str | None, query: str | None
    ) -> datetime | None:
        """Newest record time by table/column or by a query."""
        ...

    async def column_indexed(self, table: str, column: str) -> bool:
        """True when an index of the table leads with the column."""
        ...

    async def clock_sample(self) -> ClockSample:
        """The server's clock, read between two readings of the operator's."""
        ...

    async def terminate_sessions(self, application_name: str) -> int:
        """End every other session introducing itself with application_name; how many ended."""
        ...

    async def close(self) -> None:
        """Close the session (ends a backup still in progress)."""
        ...


class MongoSession(Protocol):
    """A MongoDB client."""

    async def ping(self) -> None:
        """Check the server answers and the credentials work."""
        ...

    async def fsync_lock(self) -> int:
        """fsync with lock; returns the lock count after locking."""
        ...

    async def fsync_unlock(self) -> int:
        """fsyncUnlock; returns the lock count after unlocking."""
        ...

    async def is_locked(self) -> bool:
        """True while the server holds an fsync lock (currentOp's fsyncLock)."""
        ...

    async def lock_in_flight(self, app_name: str) -> bool:
        """True while an fsync lock command of a client named app_name is still running on the
        server (currentOp lists it): a lock that will land when its flush ends."""
        ...

    async def newest_record(self, database: str, collection: str, field: str) -> datetime | None:
        """Newest value of a date field."""
        ...

    async def clock_sample(self) -> ClockSample:
        """The server's clock (hello.localTime), read between two readings of the operator's."""
        ...

    async def close(self) -> None:
        """Close the client."""
        ...


@dataclass(frozen=True)
class NewestObject:
    """What a bounded listing found."""

    newest: datetime | None
    """Newest LastModified seen; None when no object was listed."""
    listed: int
    """Objects listed."""
    complete: bool
    """The listing reached the end of the prefix: newest is the newest there is."""


class ObjectStoreSession(Protocol):
    """An S3 / MinIO client."""

    async def check_bucket(self, bucket: str) -> bool:
        """True when the bucket exists and the credentials can read it."""
        ...

    async def newest_object_time(
        self, bucket: str, prefix: str, start_after: str, max_objects: int
    ) -> NewestObject:
        """Newest LastModified among at most max_objects keys under prefix after start_after."""
        ...

    async def clock_sample(self) -> ClockSample:
        """The server's clock (its HTTP Date header), read between two readings of the
        operator's."""
        ...

    async def close(self) -> None:
        """Release the client."""
        ...


class Connectors(Protocol):
    """Opens database sessions from a Secret's data; each raises StepError(reason=...) on failure."""

    async def postgres(
        self, secret: Mapping[str, str], timeout: float, application_name: str = "snapgroup"
    ) -> PostgresSession:
        """Connect to PostgreSQL; the session introduces itself as application_name."""
        ...

    async def mongo(
        self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup"
    ) -> MongoSession:
        """Connect to MongoDB; the client introduces itself as app_name (currentOp's appName)."""
        ...

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> ObjectStoreSession:
        """Connect to an S3 / MinIO endpoint."""
        ...


# --- schedules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledGroup:
    """A SnapshotGroup as the schedule that created it sees it."""

    name: str
    owner_uid: str | None
    """uid of the ScheduledSnapshotGroup controlling it (its controller owner reference)."""
    phase: str
    """status.phase; Pending until the group runs."""
    scheduled_time: datetime | None
    """The tick it was taken for (its scheduled-time annotation)."""
    created_at: datetime | None
    completed_at: datetime | None
    deleting: bool
    """Deletion has begun (it has a deletionTimestamp)."""
    keeps_snapshots: bool
    """Its spec.snapshotDeletionPolicy is Retain: deleting it must leave its VolumeSnapshots."""
    consistent: bool | None = None
    """status.consistent: True only when its Consistent condition is True."""
    verified: bool | None = None
    """status.verified: True only when its Verified condition is True (restored and read)."""


class GroupStore(Protocol):
    """ScheduledSnapshotGroups and the SnapshotGroups they create, as the scheduler sees them."""

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ScheduledSnapshotGroup as stored, or None when it does not exist."""
        ...

    async def list_groups(self, namespace: str, selector: str) -> list[ScheduledGroup]:
        """SnapshotGroups matching a label selector."""
        ...

    async def get_group(self, namespace: str, name: str) -> ScheduledGroup | None:
        """One SnapshotGroup, or None when it does not exist."""
        ...

    async def create_group(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a SnapshotGroup: True when created, False when one of that name exists already.

        Raises StepError("TemplateRejected") when the API server refuses the object itself.
        """
        ...

    async def delete_group(self, namespace: str, name: str, *, keep_snapshots: bool) -> None:
        """Delete a SnapshotGroup, its VolumeSnapshots too unless keep_snapshots; a missing one
        counts as deleted."""
        ...

    async def patch_schedule_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the ScheduledSnapshotGroup's status subresource (a None value removes a field)."""
        ...

    async def emit_schedule_event(
        self, namespace: str, name: str, uid: str, event_type: EventType, reason: str, message: str,
    ) -> None:
        """Record a Kubernetes Event on the ScheduledSnapshotGroup."""
        ...
