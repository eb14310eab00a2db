"""SnapshotGroupRestore: a whole SnapshotGroup brought back at its one moment, as a clone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import ConfigDict, Field

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

SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease", "default"})
"""Namespaces a restore never writes to, whatever their labels say."""


class SnapshotGroupRestoreSpec(ApiModel):
    """Which SnapshotGroup to bring back, and where.

    The group's VolumeSnapshots become claims under their original names in the target
    namespace, and the workloads that mount those claims come up there on the restored data,
    with the Services that select them and the Secrets and ConfigMaps they reference. The spec
    is immutable: a restore is one act.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf",
                 "message": "a restore's spec cannot be changed; create a new one"},
            ]
        }
    )

    group_name: ObjectName
    """The SnapshotGroup (in this namespace) to restore; it must have Succeeded and be
    Consistent, and its VolumeSnapshots must still exist and be ready to use."""
    target_namespace: DnsLabel
    """The namespace to clone into. It must exist, differ from this one, carry the label
    `snapgroup.dev/restore-from` with this namespace as value (its owner's consent), and hold
    none of the objects the restore creates."""
    include_writers: bool = False
    """Also copy the group's writers (spec.writers); by default they are left out, so nothing
    writes to the clone until someone decides it should."""
    timeout: Duration = "10m"
    """How long the restore may take, from the first object created to every restored workload
    ready; past it, everything the restore created is removed and it fails."""


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
    conditions: list[Condition] = Field(default_factory=list)
    """Planned (the plan holds), Restored (every workload ready on the restored data)."""


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
