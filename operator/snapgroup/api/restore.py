"""SnapshotGroupRestore: a whole SnapshotGroup brought back at its one moment, as a clone or in place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, Field, model_validator

from snapgroup.api import GROUP
from snapgroup.api.base import ApiModel, Condition, DnsLabel, Duration, ObjectName

KIND = "SnapshotGroupRestore"
PLURAL = "snapshotgrouprestores"

RESTORE_TARGET_LABEL = f"{GROUP}/restore-from"
"""On a namespace: the one source namespace whose groups may be cloned into it. A namespace owner
opts in by setting it; without it the operator refuses to create anything there."""
RESTORE_UID_LABEL = f"{GROUP}/restore-uid"
"""On every object a restore creates: the uid of that SnapshotGroupRestore."""
RESTORE_LABEL = f"{GROUP}/restore"
"""On every object a restore creates: ``<namespace>.<name>`` of that SnapshotGroupRestore."""

PROOF_LABEL = f"{GROUP}/restore-proof"
"""In place: on a pod that proves a service starts on its restored claims (value: the workload)."""
STOPPED_BY = f"{GROUP}/stopped-by-restore"
"""In place: on a workload the restore scaled to zero: the restore's uid."""
STOPPED_REPLICAS = f"{GROUP}/restore-replicas"
"""In place: on a workload the restore scaled to zero: the replicas it gives back."""
STOPPED_AS = f"{GROUP}/restore-stopped-as"
"""In place: on a workload the restore scaled to zero: ``writer`` or ``service`` (services start
first, writers last)."""
VOLUME_ROLE = f"{GROUP}/restore-role"
"""In place: on a PersistentVolume the restore took charge of: ``previous`` (the claim's volume
before) or ``restored`` (the volume restored from the group's snapshot)."""
VOLUME_CLAIM = f"{GROUP}/restore-claim"
"""In place: on a previous volume: JSON of the claim it was bound to, written before that claim
is deleted, so a rollback can bind a claim of the same name and spec to it again."""
VOLUME_RECLAIM = f"{GROUP}/restore-reclaim-policy"
"""In place: on a volume the restore set to Retain: the reclaim policy it had."""
REPLACED_BY = f"{GROUP}/replaced-by-restore"
"""In place: on a previous volume kept after success: ``<namespace>/<restore>`` that replaced it."""
RESTORED_FROM = f"{GROUP}/restored-from"
"""In place: on a swapped claim: ``<VolumeSnapshot>`` of the group its volume was restored from."""

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "default"})
"""Namespaces a restore never writes to, whatever their labels say."""


class PreviousVolumes(StrEnum):
    """What an in-place restore does with the volumes its claims had, once it succeeded."""

    RETAIN = "Retain"
    DELETE = "Delete"


class SnapshotGroupRestoreSpec(ApiModel):
    """Which SnapshotGroup to bring back, and where: as a clone in another namespace, or in place.

    A clone: the group's VolumeSnapshots become claims under their original names in the target
    namespace, and the workloads that mount those claims come up there on the restored data,
    with the Services that select them and the Secrets and ConfigMaps they reference.

    In place: every claim is first restored under a scratch name and each service is proven to
    start on it; only then are the group's writers and the services stopped, the claims swapped
    to the restored volumes, the services started and the writers resumed. A failure at any step
    swaps the original volumes back and restarts everything as it was. The spec is immutable: a
    restore is one act.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf",
                 "message": "a restore's spec cannot be changed; create a new one"},
                {"rule": "has(self.targetNamespace) != (has(self.inPlace) && self.inPlace)",
                 "message": "set exactly one of targetNamespace (a clone) and inPlace: true"},
                {"rule": "!has(self.includeWriters) || !self.includeWriters || has(self.targetNamespace)",
                 "message": "includeWriters is for a clone: in place, the group's writers are "
                            "stopped and resumed, never copied"},
            ]
        }
    )

    group_name: ObjectName
    """The SnapshotGroup (in this namespace) to restore; it must have Succeeded and be
    Consistent, and its VolumeSnapshots must still exist and be ready to use."""
    target_namespace: DnsLabel | None = None
    """The namespace to clone into. It must exist, differ from this one, carry the label
    `snapgroup.dev/restore-from` with this namespace as value (its owner's consent), and hold
    none of the objects the restore creates. Leave it out for an in-place restore."""
    in_place: bool = False
    """Restore this namespace itself to the group's moment: its claims are swapped to volumes
    restored from the snapshots, records written since are gone. The namespace consents with the
    label `snapgroup.dev/restore-from` set to its own name."""
    previous_volumes: PreviousVolumes = PreviousVolumes.RETAIN
    """In place, after success: Retain keeps the volumes the claims had (Released, annotated
    with this restore) for whoever wants them back; Delete removes them. Before success they are
    always kept."""
    include_writers: bool = False
    """A clone only: also copy the group's writers (spec.writers); by default they are left out,
    so nothing writes to the clone until someone decides it should."""
    timeout: Duration = "10m"
    """How long the restore may take, from the first object created to every restored workload
    ready; past it, a clone's objects are removed and an in-place restore rolls back, and it
    fails."""

    @model_validator(mode="after")
    def _one_kind_of_restore(self) -> SnapshotGroupRestoreSpec:
        if (self.target_namespace is not None) == self.in_place:
            raise ValueError("set exactly one of targetNamespace (a clone) and inPlace: true")
        if self.in_place and self.include_writers:
            raise ValueError("includeWriters is for a clone: in place, the group's writers are "
                             "stopped and resumed, never copied")
        return self

    @property
    def clone_target(self) -> str:
        """The namespace a clone goes to."""
        if self.target_namespace is None:
            raise ValueError("an in-place restore has no target namespace")
        return self.target_namespace

class RestorePhase(StrEnum):
    """Where the restore is; conditions carry the detail."""

    PENDING = "Pending"
    RESTORING = "Restoring"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        """True once the restore will never act again."""
        return self in (RestorePhase.SUCCEEDED, RestorePhase.FAILED)


class RestoredVolume(ApiModel):
    """One claim brought back from one of the group's VolumeSnapshots."""

    pvc: str
    """The claim's name (the original one) in the target namespace."""
    volume_snapshot: str
    """The group's VolumeSnapshot it was restored from."""
    service: str
    """The group's service the snapshot belongs to."""
    bound: bool = False
    """The claim is bound to a volume provisioned from the snapshot."""


class RestoredObject(ApiModel):
    """One object the restore created in the target namespace."""

    kind: str
    """Its kind, e.g. Deployment, Service, Secret."""
    name: str
    """Its name (the original one)."""
    note: str | None = None
    """What was changed on the way, e.g. an address pointed at the clone."""


class RestoredWorkload(ApiModel):
    """One workload brought up on the restored claims."""

    kind: str
    """Deployment or StatefulSet."""
    name: str
    """Its name (the original one)."""
    replicas: int
    """Replicas it was copied with (those of the source)."""
    ready_replicas: int = 0
    """Replicas ready, as last seen."""
    ready: bool = False
    """Every replica is ready (a workload with zero replicas never counts as ready)."""
    backup_recovery: str | None = None
    """For a PostgreSQL server: how its data directory starts, from the backup label kept with
    the snapshot or by crash recovery."""


class SwappedClaim(ApiModel):
    """In place: one claim of the namespace moved onto a volume restored from the group."""

    pvc: str
    """The claim (its name is kept)."""
    volume_snapshot: str
    """The group's VolumeSnapshot the new volume was restored from."""
    restored_volume: str | None = None
    """The PersistentVolume the claim is bound to now."""
    previous_volume: str
    """The PersistentVolume it had before."""
    previous_volume_kept: bool = True
    """The previous volume still exists (Released, Retain) and can be bound again."""


class SnapshotGroupRestoreStatus(ApiModel):
    """What the restore did, step by step; the objects it created carry its uid as a label."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    phase: RestorePhase = RestorePhase.PENDING
    """Pending, Restoring, Succeeded or Failed."""
    message: str | None = None
    """Latest news, in a sentence."""
    start_time: datetime | None = None
    """When the restore began creating objects."""
    completion_time: datetime | None = None
    """When it succeeded or failed."""
    seconds: float | None = None
    """From start to every workload ready (or to the failure)."""
    earliest_snapshot_time: datetime | None = None
    """The group's earliest cut: the restored services hold no record newer than this."""
    volumes: list[RestoredVolume] = Field(default_factory=list)
    """Claims restored from the group's snapshots."""
    workloads: list[RestoredWorkload] = Field(default_factory=list)
    """Workloads brought up on them."""
    objects: list[RestoredObject] = Field(default_factory=list)
    """Everything else created: Services, Secrets, ConfigMaps."""
    claims: list[SwappedClaim] = Field(default_factory=list)
    """In place: each claim, the volume it is on now and the one it had."""
    swapped: bool | None = None
    """In place: the claims are on the restored volumes and the services answered there; from
    here the restore only goes forward (an interrupted run finishes it rather than rolling back)."""
    writers_stopped_seconds: float | None = None
    """In place: how long the group's writers were stopped."""
    conditions: list[Condition] = Field(default_factory=list)
    """Planned (the plan holds), Proven (in place: every service started on its restored
    claims), Restored (every workload ready on the restored data)."""


# Files a restored PostgreSQL pod's init step finds in its preparation directory.
PG_LABEL_FILE = "backup_label"
PG_TABLESPACE_MAP_FILE = "tablespace_map"
PG_WAL_FILE = "backup-wal"
"""gzip of the WAL bytes from the backup's start on."""
PG_WAL_START_FILE = "backup-wal-start"
"""JSON: {"start": LSN, "timeline": int, "segmentSize": int}."""


@dataclass(frozen=True)
class WalStart:
    """Where the kept WAL bytes begin."""

    start: str
    timeline: int
    segment_size: int

    def to_text(self) -> str:
        """The JSON kept beside the WAL."""
        return json.dumps({"start": self.start, "timeline": self.timeline,
                           "segmentSize": self.segment_size}, sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> WalStart:
        """Read what `to_text` wrote."""
        data = json.loads(text)
        return cls(str(data["start"]), int(data["timeline"]), int(data["segmentSize"]))
