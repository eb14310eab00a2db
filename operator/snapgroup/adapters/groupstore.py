"""The `GroupStore` port over the Kubernetes API: schedules and the SnapshotGroups they create.

It shares `KubeCluster`'s client, worker threads, timeouts, request counts and error handling: each
request goes through the cluster's request primitive, so the API economy figures include schedules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from snapgroup.api import GROUP, VERSION
from snapgroup.api.schedule import KIND as SCHEDULE_KIND
from snapgroup.api.schedule import PLURAL as SCHEDULE_PLURAL
from snapgroup.api.schedule import SCHEDULED_TIME_ANNOTATION
from snapgroup.api.snapshotgroup import KIND as GROUP_KIND
from snapgroup.api.snapshotgroup import PLURAL as GROUP_PLURAL
from snapgroup.ports import EventType, ScheduledGroup, StepError

from .kube import KubeCluster

_MERGE_PATCH = "application/merge-patch+json"
_REFUSED = (400, 422)  # the object itself is wrong: retrying the same body cannot help


class KubeGroupStore:
    """`snapgroup.ports.GroupStore` with the official client, through a `KubeCluster`."""

    def __init__(self, cluster: KubeCluster) -> None:
        self._cluster = cluster

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ScheduledSnapshotGroup as stored, or None when it does not exist."""
        found = await self._cluster._call(
            "get", f"read {SCHEDULE_KIND} {namespace}/{name}",
            self._cluster._custom.get_namespaced_custom_object,
            GROUP, VERSION, namespace, SCHEDULE_PLURAL, name, allow={404},
        )
        return None if found is None else dict(found)

    async def list_groups(self, namespace: str, selector: str) -> list[ScheduledGroup]:
        """SnapshotGroups matching a label selector; an empty selector matches none."""
        if not selector:
            return []
        listing = await self._cluster._call(
            "list", f"list {GROUP_KIND}s in {namespace} matching {selector!r}",
            self._cluster._custom.list_namespaced_custom_object,
            GROUP, VERSION, namespace, GROUP_PLURAL, label_selector=selector,
        )
        return [_scheduled_group(item) for item in (listing or {}).get("items") or []]

    async def get_group(self, namespace: str, name: str) -> ScheduledGroup | None:
        """One SnapshotGroup, or None when it does not exist."""
        found = await self._cluster._call(
            "get", f"read {GROUP_KIND} {namespace}/{name}",
            self._cluster._custom.get_namespaced_custom_object,
            GROUP, VERSION, namespace, GROUP_PLURAL, name, allow={404},
        )
        return None if found is None else _scheduled_group(found)

    async def create_group(self, namespace: str, body: dict[str, Any]) -> bool:
        """Create a SnapshotGroup: False when one of that name exists (409).

        A 400 or 422 answer (the template makes an object the API server refuses: a bad label, a
        CEL rule) raises StepError("TemplateRejected") with the server's message.
        """
        name = (body.get("metadata") or {}).get("name", "")
        action = f"create {GROUP_KIND} {namespace}/{name}"
        try:
            done = await self._cluster._call(
                "create", action, self._cluster._custom.create_namespaced_custom_object,
                GROUP, VERSION, namespace, GROUP_PLURAL, body, allow={409},
            )
        except StepError as exc:
            cause = exc.__cause__
            if isinstance(cause, ApiException) and cause.status in _REFUSED:
                raise StepError(
                    "TemplateRejected",
                    f"the API server refused the SnapshotGroup made from spec.template: {exc.message}",
                ) from exc
            raise
        return done is not None

    async def delete_group(self, namespace: str, name: str, *, keep_snapshots: bool) -> None:
        """Delete a SnapshotGroup; its VolumeSnapshots go too (background cascade), or, when
        keep_snapshots, are orphaned and stay. A missing group counts as deleted."""
        await self._cluster._call(
            "delete", f"delete {GROUP_KIND} {namespace}/{name}",
            self._cluster._custom.delete_namespaced_custom_object,
            GROUP, VERSION, namespace, GROUP_PLURAL, name,
            propagation_policy="Orphan" if keep_snapshots else "Background",
            allow={404},
        )

    async def patch_schedule_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the schedule's status subresource; a schedule that is gone is not an error
        (its loop ends at the next pass)."""
        await self._cluster._call(
            "patch", f"write the status of {SCHEDULE_KIND} {namespace}/{name}",
            self._cluster._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, SCHEDULE_PLURAL, name, {"status": status},
            _content_type=_MERGE_PATCH, allow={404},
        )

    async def emit_schedule_event(
        self, namespace: str, name: str, uid: str, event_type: EventType, reason: str, message: str,
    ) -> None:
        """Record a core/v1 Event on the schedule, as ``kubectl describe`` shows them."""
        await self._cluster.record_event(SCHEDULE_KIND, namespace, name, uid, event_type, reason, message)


def _scheduled_group(obj: dict[str, Any]) -> ScheduledGroup:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    owner = next(
        (ref.get("uid") for ref in meta.get("ownerReferences") or []
         if ref.get("kind") == SCHEDULE_KIND and ref.get("controller")),
        None,
    )
    return ScheduledGroup(
        name=meta["name"],
        owner_uid=owner,
        phase=status.get("phase") or "Pending",
        scheduled_time=_time((meta.get("annotations") or {}).get(SCHEDULED_TIME_ANNOTATION)),
        created_at=_time(meta.get("creationTimestamp")),
        completed_at=_time(status.get("completionTime")),
        deleting=bool(meta.get("deletionTimestamp")),
        keeps_snapshots=(obj.get("spec") or {}).get("snapshotDeletionPolicy") == "Retain",
        consistent=_condition(status, "Consistent"),
        verified=_condition(status, "Verified"),
    )


def _condition(status: dict[str, Any], kind: str) -> bool | None:
    """A condition (Consistent, Verified) as a bool (None while Unknown or absent); the condition
    is the API, status.consistent and status.verified only its mirrors."""
    condition = next(
        (c for c in status.get("conditions") or [] if c.get("type") == kind), None
    )
    if condition is None:
        return None
    return {"True": True, "False": False}.get(str(condition.get("status")))


def _time(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None  # a hand-edited annotation: the group then counts by its creation time
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
