"""Names the operator puts on other objects: labels, annotations, finalizer."""

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
