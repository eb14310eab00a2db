"""Steps both kinds of restore take: waits bounded by the run's deadline, many at once, readiness."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

from snapgroup.api.snapshotgroup import KIND as GROUP_KIND
from snapgroup.ports import GROUP_GONE, ClusterObjects, StepError

from .restore_plan import SourceWorld

log = logging.getLogger("snapgroup.restore")
T = TypeVar("T")
JSON = dict[str, Any]


class RestoreFailed(Exception):
    """A step of the restore failed after objects were created."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def now() -> str:
    """The time for a status field."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str) -> JSON:
    """A status condition, as of now."""
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now()}


async def all_at_once(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Run steps at once; when one fails, the others are cancelled and awaited before the error
    goes on, so nothing lands after the clean-up that follows."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_awaited(step)) for step in steps]
    return [task.result() for task in tasks]


async def first_error(step: Awaitable[T]) -> T:
    """The step's result; of several errors raised at once (by `all_at_once`), the first."""
    try:
        return await step
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


async def _awaited(step: Awaitable[T]) -> T:
    return await step


def time_left(deadline: float) -> float:
    """Seconds a wait may take: until shortly before the run's own deadline."""
    remaining = max(0.0, deadline - time.monotonic())
    return remaining - min(1.0, remaining / 10)


def is_bound(pvc: JSON) -> bool:
    """The claim is bound to a volume."""
    return (pvc.get("status") or {}).get("phase") == "Bound"


def is_ready(workload: JSON) -> bool:
    """Every replica of the workload's current generation is ready (zero replicas never is)."""
    wanted = int((workload.get("spec") or {}).get("replicas", 1))
    status = workload.get("status") or {}
    return (wanted > 0 and int(status.get("readyReplicas") or 0) >= wanted
            and int(status.get("observedGeneration") or 0) >= int(workload["metadata"].get("generation", 1)))


def pod_ready(pod: JSON) -> bool:
    """The pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


async def read_world(objects: ClusterObjects, namespace: str, group_name: str, target: str) -> SourceWorld:
    """What a restore's plan reads: the group, its snapshots and their contents, the namespace's
    claims, workloads and Services, the storage classes, and the target namespace."""
    group = await objects.get(GROUP_KIND, namespace, group_name)
    # By the names the group recorded, not by its label: a snapshot of that name cut by
    # another group must read as not owned, never as gone.
    recorded = ((group or {}).get("status") or {}).get("services") or []
    names = sorted({snap.get("name") for service in recorded
                    for snap in service.get("volumeSnapshots") or []} - {None})
    found = await asyncio.gather(*(objects.get("VolumeSnapshot", namespace, n) for n in names))
    snapshots = [s for s in found if s is not None]
    pvcs, deployments, statefulsets, services, classes = await asyncio.gather(*(
        objects.list(kind, "" if kind == "StorageClass" else namespace)
        for kind in ("PersistentVolumeClaim", "Deployment", "StatefulSet", "Service", "StorageClass")))
    target_namespace = await objects.get("Namespace", "", target)
    content_names = {(s.get("status") or {}).get("boundVolumeSnapshotContentName") for s in snapshots}
    contents = await asyncio.gather(*(objects.get("VolumeSnapshotContent", "", n)
                                      for n in sorted(filter(None, content_names))))
    return SourceWorld(
        group=group,
        snapshots={s["metadata"]["name"]: s for s in snapshots},
        contents={c["metadata"]["name"]: c for c in contents if c is not None},
        pvcs={p["metadata"]["name"]: p for p in pvcs},
        workloads=[*deployments, *statefulsets],
        services=services, storage_classes=classes, target_namespace=target_namespace,
    )


WRITE_PAUSES = (1.0, 2.0, 5.0, 10.0)
"""Pauses between tries of a status write that must land; the last one repeats."""


async def write_status_surely(
    objects: ClusterObjects, kind: str, namespace: str, name: str, status: JSON
) -> None:
    """`write_status` retried until it lands (or the object is gone): a write the world already
    depends on, since a restarted operator acts on what it says."""
    tries = 0
    while True:
        try:
            await write_status(objects, kind, namespace, name, status)
            return
        except StepError as exc:
            pause = WRITE_PAUSES[min(tries, len(WRITE_PAUSES) - 1)]
            tries += 1
            log.warning("%s %s/%s: status not written (%s); again in %.0fs", kind, namespace, name,
                        exc, pause)
            await asyncio.sleep(pause)  # back-off while the API server is away


async def write_status(objects: ClusterObjects, kind: str, namespace: str, name: str, status: JSON) -> None:
    """Patch one of the operator's objects' status; conditions replace those of their type, the
    others stay. An object that is gone is no error (there is nobody left to tell)."""
    try:
        if "conditions" in status:
            current = await objects.get(kind, namespace, name) or {}
            new = {c["type"] for c in status["conditions"]}
            kept = [c for c in (current.get("status") or {}).get("conditions") or []
                    if c.get("type") not in new]
            status = {**status, "conditions": [*kept, *status["conditions"]]}
        await objects.patch_status(kind, namespace, name, status)
    except StepError as exc:
        if exc.reason != GROUP_GONE:
            raise
