"""Names the operator puts on other objects: labels, annotations, finalizer."""

import hashlib

from snapgroup.api import GROUP

GROUP_LABEL = f"{GROUP}/group"
"""On each VolumeSnapshot: the SnapshotGroup that cut it."""
SERVICE_LABEL = f"{GROUP}/service"
"""On each VolumeSnapshot: the service of the group it belongs to."""
SCHEDULE_LABEL = f"{GROUP}/schedule"
"""On each scheduled SnapshotGroup: the schedule that created it."""
ISOLATED_BY = f"{GROUP}/isolated-by"
"""On an isolated workload: ``<namespace>/<group>/<uid>`` of the group holding it at zero."""
ORIGINAL_REPLICAS = f"{GROUP}/original-replicas"
"""On an isolated workload: replicas to restore."""
FREEZE_DEADLINE = f"{GROUP}/freeze-deadline"
"""On an isolated workload: RFC 3339 time by which it must be restored."""
FINALIZER = f"{GROUP}/cleanup"
"""Held on a SnapshotGroup until its writers are restored and its services resumed."""
VERIFY_REQUESTED = f"{GROUP}/verify-requested"
"""On a SnapshotGroup: asks for a verification by restoring; its value names the request (a new
value asks again), and status.verification.request answers it."""
VERIFICATION_LABEL = f"{GROUP}/verification-of"
"""On the scratch claims, pods and Secrets of a verification: uid of the group it verifies."""
GROUP_UID_LABEL = f"{GROUP}/group-uid"
"""On each VolumeSnapshot: uid of the SnapshotGroup that cut it (names are reused, uids never)."""
ATTEMPT_LABEL = f"{GROUP}/attempt"
"""On each VolumeSnapshot: the attempt of its group that cut it."""
LEASE_LABEL = f"{GROUP}/target"
"""On each exclusion Lease: the kind of target it guards (workload, pvc, server)."""
QUIESCE_LABEL = f"{GROUP}/quiesce"
"""On a server's exclusion Lease while a group may hold that server quiesced (value ``held``)."""
QUIESCE_RECORD = f"{GROUP}/quiesce-record"
"""On a server's exclusion Lease: JSON saying which group may hold the server quiesced and how to
undo it, written before the quiesce and removed once the undo was checked; it outlives the group,
so the safety net can repair a server whose group vanished."""


def lease_name(key: str) -> str:
    """The exclusion Lease of a target key such as ``workload:Deployment/x``: short, valid, stable."""
    return "snapgroup-" + hashlib.sha256(key.encode()).hexdigest()[:20]


LABEL_VALUE_LIMIT = 63


def label_value(name: str) -> str:
    """An object name (up to 253 characters) as a label value (at most 63): long names are cut
    and a hash of the whole name added, so distinct names stay distinct."""
    return shortened(name, LABEL_VALUE_LIMIT)


def shortened(name: str, limit: int) -> str:
    """name itself when it fits in limit characters, else cut (never ending in '-' or '.') with
    a hash of the whole name added, so distinct names stay distinct."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(digest) - 1].rstrip('-.')}-{digest}"


PG_BACKUP_LABEL = f"{GROUP}/pg-backup-label"
"""On a PostgreSQL service's VolumeSnapshot: the backup_label pg_backup_stop returned."""
PG_TABLESPACE_MAP = f"{GROUP}/pg-tablespace-map"
"""On a PostgreSQL service's VolumeSnapshot: the tablespace_map pg_backup_stop returned, if any."""
PG_BACKUP_WAL = f"{GROUP}/pg-backup-wal"
"""On a PostgreSQL service's VolumeSnapshot: the WAL from the backup's start to its end, gzip, base64."""
PG_BACKUP_WAL_START = f"{GROUP}/pg-backup-wal-start"
"""On a PostgreSQL service's VolumeSnapshot: where that WAL starts, as JSON (start LSN, timeline,
segment size)."""
