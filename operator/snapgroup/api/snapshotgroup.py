"""SnapshotGroup: one application-consistent snapshot of several services, taken once."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from snapgroup.api.base import (
    ApiModel,
    Condition,
    DnsLabel,
    Duration,
    LabelSelector,
    ObjectName,
    SecretRef,
    parse_duration,
)

KIND = "SnapshotGroup"
PLURAL = "snapshotgroups"

ServiceType = Literal["postgresql", "mongodb", "minio"]
WorkloadKind = Literal["Deployment", "StatefulSet"]


class WriterTarget(ApiModel):
    """An application workload that writes to the services.

    Before the cut it is scaled to zero and the operator waits until none of its pods exists
    (a terminating pod still writes); afterwards it is scaled back to its original replicas.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.name) != has(self.selector)",
                 "message": "set exactly one of name and selector"},
            ]
        }
    )

    kind: WorkloadKind = "Deployment"
    """Kind of the workload: Deployment or StatefulSet."""
    name: ObjectName | None = None
    """Name of one workload. Exactly one of name and selector is set."""
    selector: LabelSelector | None = None
    """Labels of the workloads to isolate. Exactly one of name and selector is set."""

    @model_validator(mode="after")
    def _name_or_selector(self) -> WriterTarget:
        if (self.name is None) == (self.selector is None):
            raise ValueError("set exactly one of name and selector")
        return self

    def describe(self) -> str:
        """Human-readable target, e.g. ``Deployment/data-writer``."""
        if self.name is not None:
            return f"{self.kind}/{self.name}"
        assert self.selector is not None
        return f"{self.kind}[{self.selector.as_query()}]"


class Connection(ApiModel):
    """Where the credentials and address of a service are kept."""

    secret_ref: SecretRef
    """A Secret with either a `uri` key, or `host`, `port`, `username`, `password` (and for
    PostgreSQL `database`; for MinIO `endpoint`, `accessKey`, `secretKey`)."""
    timeout: Duration = "5s"
    """Timeout of each call to the service (connect, quiesce, resume, query)."""


_SQL_NAME = r'(?:[^."\x00]{1,63}|"(?:[^"\x00]|""){1,63}")'
TABLE_PATTERN = rf"^{_SQL_NAME}(?:\.{_SQL_NAME})?$"
"""``table`` or ``schema.table``; a part holding a dot is written in double quotes (``"a.b"``, a
quote inside doubled). Parts are taken literally (no case folding) and always quoted as
identifiers, never pasted into SQL."""

TableName = Annotated[str, Field(max_length=256, pattern=TABLE_PATTERN)]
ColumnName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[^\x00]+$")]
SqlQuery = Annotated[str, Field(min_length=1, max_length=4096)]
MongoDatabaseName = Annotated[str, Field(max_length=63, pattern=r'^[^/\\. "$*<>:|?\x00]+$')]
MongoCollectionName = Annotated[str, Field(max_length=255, pattern=r"^[^$\x00]+$")]
MongoFieldPath = Annotated[
    str, Field(max_length=255, pattern=r"^[^$.\x00][^.\x00]*(\.[^$.\x00][^.\x00]*)*$")
]
"""Dotted path of plain field names: no segment starts with $ (no query operators)."""
BucketName = Annotated[
    str, Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
]
ObjectKeyPrefix = Annotated[str, Field(max_length=1024, pattern=r"^[^\x00-\x1f\x7f]*$")]


def split_table(name: str) -> tuple[str, ...]:
    """``schema.table`` as its parts, unquoting ``"..."`` parts; `TABLE_PATTERN` holds."""
    parts: list[str] = []
    i = 0
    while i < len(name):
        if name[i] == '"':
            j, text = i + 1, []
            while j < len(name):
                if name[j] == '"' and name[j + 1 : j + 2] == '"':
                    text.append('"')
                    j += 2
                elif name[j] == '"':
                    break
                else:
                    text.append(name[j])
                    j += 1
            parts.append("".join(text))
            i = j + 2  # past the closing quote and the dot
        else:
            end = name.find(".", i)
            end = len(name) if end < 0 else end
            parts.append(name[i:end])
            i = end + 1
    return tuple(parts)


class LastRecord(ApiModel):
    """Where a service keeps its newest record, so the cut can be checked against it.

    PostgreSQL: `table` and `column` (a timestamp column), or `query` returning one timestamp.
    MongoDB: `database`, `collection` and `field` (a date field).
    MinIO: `bucket` and optional `prefix` (the newest object's LastModified).
    """

    table: TableName | None = None
    """PostgreSQL: table holding the records, ``table`` or ``schema.table`` (a part holding a dot
    in double quotes); quoted as an identifier, case kept."""
    column: ColumnName | None = None
    """PostgreSQL: `timestamp with time zone` column of that table (`timestamp without time zone`
    is read in the server's TimeZone; `date` is refused)."""
    query: SqlQuery | None = None
    """PostgreSQL: exactly one SELECT (or WITH) statement returning the newest record time as one
    value; run read-only with statement and lock timeouts."""
    database: MongoDatabaseName | None = None
    """MongoDB: database name."""
    collection: MongoCollectionName | None = None
    """MongoDB: collection name."""
    field: MongoFieldPath | None = None
    """MongoDB: date field of the documents (a dotted path; no segment starts with $)."""
    bucket: BucketName | None = None
    """MinIO: bucket name."""
    prefix: ObjectKeyPrefix | None = None
    """MinIO: object key prefix; empty means the whole bucket. The newest record is looked for
    among at most `maxObjects` keys listed from `startAfter`."""
    start_after: ObjectKeyPrefix | None = None
    """MinIO: list keys after this one (e.g. yesterday's key when keys sort by time)."""
    max_objects: int | None = Field(default=None, ge=1, le=1000000)
    """MinIO: most object keys listed for the newest record (default 10000); when more are
    there, the newest record (and so Consistent) is Unknown. Bounds the read in time and memory."""
    secret_ref: SecretRef | None = None
    """A Secret (same layout as connection.secretRef) for a separate session that only reads the
    newest record: a least-privileged role, not the backup role."""


DEFAULT_MAX_OBJECTS = 10000
"""lastRecord.maxObjects when unset."""

LAST_RECORD_FIELDS: dict[str, tuple[tuple[str, ...], ...]] = {
    # Each type accepts any one of these field sets.
    "postgresql": (("table", "column"), ("query",)),
    "mongodb": (("database", "collection", "field"),),
    "minio": (("bucket",),),
}


def _last_record_rule(service_type: str) -> JsonValue:
    alternatives = " || ".join(
        "(" + " && ".join(f"has(self.lastRecord.{f})" for f in fields) + ")"
        for fields in LAST_RECORD_FIELDS[service_type]
    )
    wanted = ", or ".join(" and ".join(fields) for fields in LAST_RECORD_FIELDS[service_type])
    return {
        "rule": f"self.type != '{service_type}' || !has(self.lastRecord) || {alternatives}",
        "message": f"lastRecord of a {service_type} service needs {wanted}",
    }


class ServiceTarget(ApiModel):
    """A stateful service: its volumes are snapshotted and its type brings a quiesce hook pair."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.pvcs) != has(self.pvcSelector)",
                 "message": "set exactly one of pvcs and pvcSelector"},
                *[_last_record_rule(t) for t in LAST_RECORD_FIELDS],
            ]
        }
    )

    name: DnsLabel
    """Name of the service within the group; names the snapshots and the status entry."""
    type: ServiceType
    """postgresql (pg_backup_start/stop), mongodb (fsync lock/unlock) or minio (no quiesce)."""
    pvcs: list[ObjectName] | None = Field(default=None, min_length=1)
    """PersistentVolumeClaims to snapshot. Exactly one of pvcs and pvcSelector is set."""
    pvc_selector: LabelSelector | None = None
    """Labels of the PersistentVolumeClaims to snapshot. Exactly one of pvcs and pvcSelector is set."""
    connection: Connection
    """How to reach the service."""
    last_record: LastRecord | None = None
    """Where the newest record is kept; without it the newest record time is not checked."""

    @model_validator(mode="after")
    def _pvcs_or_selector(self) -> ServiceTarget:
        if (self.pvcs is None) == (self.pvc_selector is None):
            raise ValueError("set exactly one of pvcs and pvcSelector")
        if self.last_record is not None:
            given = self.last_record.model_dump(exclude_none=True)
            options = LAST_RECORD_FIELDS[self.type]
            if not any(all(f in given for f in fields) for fields in options):
                wanted = ", or ".join(" and ".join(fields) for fields in options)
                raise ValueError(f"lastRecord of a {self.type} service needs {wanted}")
        return self


class HookStep(ApiModel):
    """An extra hook from the registry, run before (pre) or after (post) the built-in steps."""

    name: DnsLabel
    """Name of the step, unique within the group."""
    type: str = Field(min_length=1)
    """Registered hook type, e.g. `scale`."""
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Parameters of the hook type (validated by the hook type's own model)."""
    on_error: Literal["Fail", "Continue"] = "Fail"
    """Fail stops the group (fail closed); Continue records the error and goes on."""
    timeout: Duration = "30s"
    """Longest time one run of the hook may take."""


class Hooks(ApiModel):
    """Extra hooks, in order."""

    pre: list[HookStep] = Field(default_factory=list)
    """Run after writers are isolated and services quiesced, before the cut."""
    post: list[HookStep] = Field(default_factory=list)
    """Run after the cut, before services resume."""


class SnapshotGroupSpec(ApiModel):
    """What to snapshot together. Immutable once the group is created."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf",
                 "message": "spec is immutable once the group is created; create a new SnapshotGroup"},
            ]
        }
    )

    volume_snapshot_class_name: ObjectName | None = None
    """VolumeSnapshotClass for every snapshot; the cluster's default class when empty."""
    freeze_budget: Duration = "60s"
    """Longest time writers may stay isolated and services quiesced; past it everything is thawed
    at once and the group fails with FreezeBudgetExceeded."""
    writers: list[WriterTarget] = Field(default_factory=list)
    """Application workloads to isolate during the cut."""
    services: list[ServiceTarget] = Field(
        min_length=1,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Services to quiesce and snapshot."""
    hooks: Hooks = Field(default_factory=Hooks)
    """Extra hooks from the registry."""
    snapshot_deletion_policy: Literal["Delete", "Retain"] = "Delete"
    """Delete: the VolumeSnapshots go with the group. Retain: they are kept when the group is deleted."""
    backoff_limit: int = Field(default=2, ge=0, le=10)
    """How many times a failed attempt (operator restart, API errors, freeze budget, lost session)
    is retried after it was undone, like a Job's backoffLimit. A bad spec is never retried."""
    verify: Literal["None", "Restore"] = "None"
    """Restore: once the group succeeded, its snapshots are restored into scratch claims in its
    namespace, each service is started there on them (in pods no Service selects) and its newest
    record read and compared with what the group recorded while frozen; the Verified condition
    says how that went. The namespace grants it with a RoleBinding of snapgroup-restore-target."""
    verify_timeout: Duration = "10m"
    """How long a verification may take to restore, start and read every service; what it made
    is removed either way."""

    @field_validator("services")
    @classmethod
    def _unique_names(cls, services: list[ServiceTarget]) -> list[ServiceTarget]:
        names = [s.name for s in services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique, repeated: {', '.join(dupes)}")
        return services

    @property
    def freeze_budget_delta(self) -> timedelta:
        """The freeze budget as a timedelta."""
        return parse_duration(self.freeze_budget)


class Phase(StrEnum):
    """Summary of where the group is; conditions carry the detail."""

    PENDING = "Pending"
    QUIESCING = "Quiescing"
    SNAPSHOTTING = "Snapshotting"
    RESUMING = "Resuming"
    FINALIZING = "Finalizing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """True once the group will never act again."""
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class FreezeWindow(ApiModel):
    """From the first writer isolated (or service quiesced) to the last one resumed."""

    start: datetime | None = None
    """When the first isolation or quiesce step began."""
    end: datetime | None = None
    """When the last resume step finished."""
    seconds: float | None = None
    """Length of the window."""
    breakdown: dict[str, float] = Field(default_factory=dict)
    """Where the window went, in seconds: per step (isolate, quiesce, cut, record, resume),
    waitingOnPods (writer pods to terminate), waitingOnCut (the CSI driver), and operator (the
    rest: the operator's own share)."""


class ServiceVerification(ApiModel):
    """One service of the group, started on its restored snapshots and read."""

    name: str
    """The service (spec.services[].name)."""
    pods: list[str] = Field(default_factory=list)
    """The scratch pods it was started in (removed afterwards)."""
    recovery: str | None = None
    """How its server started on the restored data (e.g. PostgreSQL's backup recovery)."""
    restored_newest_record: datetime | None = None
    """The newest record the restored service holds."""
    recorded_newest_record: datetime | None = None
    """The newest record the group read from the live service while frozen."""
    matches: bool | None = None
    """True: the restored newest record equals the recorded one and is not newer than the
    earliest cut; None: not compared (no lastRecord, or the service did not answer)."""
    seconds: float | None = None
    """From the start of the verification to this service's answer."""
    message: str = ""


class VerificationStatus(ApiModel):
    """The latest verification of the group by restoring it."""

    request: str
    """What asked for it: ``spec.verify``, or the value of the snapgroup.dev/verify-requested
    annotation (`snapgroup verify --restore`)."""
    start_time: datetime | None = None
    completion_time: datetime | None = None
    seconds: float | None = None
    """From start to every service read and everything it made removed."""
    removed: bool | None = None
    """Everything the verification made is gone; false while removing it is still tried."""
    services: list[ServiceVerification] = Field(default_factory=list)


class VolumeSnapshotStatus(ApiModel):
    """One VolumeSnapshot of the group."""

    name: str
    """Name of the VolumeSnapshot (in the group's namespace)."""
    pvc: str
    """The PersistentVolumeClaim it captures."""
    creation_time: datetime | None = None
    """The moment of the cut, as reported by the CSI driver."""
    ready_to_use: bool | None = None
    """True once the snapshot can be restored."""
    restore_size: str | None = None
    """Minimum size of a volume restored from it."""
    error: str | None = None
    """Last error reported for it."""


class ServiceStatus(ApiModel):
    """What was captured of one service."""

    name: str
    """Service name from the spec."""
    type: ServiceType
    """Service type."""
    volume_snapshots: list[VolumeSnapshotStatus] = Field(default_factory=list)
    """One entry per PVC."""
    last_record_time: datetime | None = None
    """Newest record timestamp read while frozen, i.e. the newest record the snapshots hold."""
    evidence: dict[str, str] = Field(default_factory=dict)
    """Type-specific proof of quiesce: backup start/stop LSN, fsync lock counts, ..."""


class WriterStatus(ApiModel):
    """One isolated workload."""

    kind: WorkloadKind
    """Deployment or StatefulSet."""
    name: str
    """Workload name."""
    original_replicas: int
    """Replicas before isolation; restored afterwards."""
    isolated_at: datetime | None = None
    """When its last pod was gone."""
    restored_at: datetime | None = None
    """When its replicas were set back."""
    note: str | None = None
    """Anything unusual, e.g. replicas changed by someone else while isolated."""


class HookState(StrEnum):
    """Journal state of one hook run; written before and after each side effect."""

    PLANNED = "Planned"
    APPLYING = "Applying"
    APPLIED = "Applied"
    UNDOING = "Undoing"
    UNDONE = "Undone"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class HookStatus(ApiModel):
    """One hook run, doubling as the write-ahead journal entry for its side effect."""

    name: str
    """Key of the hook, e.g. `writer:Deployment/data-writer` or `service:postgres`."""
    type: str
    """Registered hook type."""
    stage: Literal["Pre", "Post"]
    """Pre: isolate/quiesce; Post: its undo."""
    state: HookState
    """Where the hook is; Applying or Undoing after a crash means the side effect may have happened."""
    started_at: datetime | None = None
    """When the step started."""
    finished_at: datetime | None = None
    """When it finished."""
    message: str | None = None
    """Outcome in words."""
    undo: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """What the undo step needs (e.g. original replicas, lock count before), written before acting."""


class AttemptStatus(ApiModel):
    """One finished attempt of a group that was retried."""

    number: int
    """1 for the first attempt."""
    start_time: datetime | None = None
    """When the attempt started."""
    completion_time: datetime | None = None
    """When it ended and everything it applied was undone."""
    reason: str
    """Why it failed (CamelCase)."""
    message: str = ""
    """What happened, in words."""


class SnapshotGroupStatus(ApiModel):
    """The contract with users and checkers: what happened, and the proof of consistency."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    phase: Phase = Phase.PENDING
    """Pending, Quiescing, Snapshotting, Resuming, Finalizing, Succeeded or Failed."""
    message: str | None = None
    """Latest news in one sentence."""
    start_time: datetime | None = None
    """When the operator started on the group."""
    completion_time: datetime | None = None
    """When the group reached Succeeded or Failed."""
    freeze: FreezeWindow | None = None
    """The freeze window."""
    earliest_snapshot_time: datetime | None = None
    """The earliest creationTime of the group's snapshots: no record may be newer."""
    snapshots_ready: str | None = None
    """Ready snapshots out of all, e.g. 3/3."""
    consistent: bool | None = None
    """Mirror of the Consistent condition for printer columns."""
    verified: bool | None = None
    """Mirror of the Verified condition for printer columns (None until verified by restoring)."""
    verification: VerificationStatus | None = None
    """The latest verification by restoring (spec.verify: Restore, or `snapgroup verify --restore`)."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Succeeded, Quiesced, SnapshotsCut, SnapshotsReady, Consistent (and Waiting when queued);
    Verified once verified by restoring."""
    services: list[ServiceStatus] = Field(default_factory=list)
    """Per service: snapshots, newest record time, evidence."""
    writers: list[WriterStatus] = Field(default_factory=list)
    """Per isolated workload: original replicas and times."""
    hooks: list[HookStatus] = Field(default_factory=list)
    """Every hook run of the current attempt in order; the write-ahead journal."""
    targets: list[str] = Field(default_factory=list)
    """What the attempt resolved and holds exclusively while it runs (a Lease each): workloads,
    claims and database servers, e.g. ``workload:Deployment/data-writer``."""
    attempt: int = 1
    """The attempt the status describes: 1, then 2... after a failed attempt was retried."""
    attempts: list[AttemptStatus] = Field(default_factory=list)
    """Earlier attempts that failed and were retried, oldest first."""
