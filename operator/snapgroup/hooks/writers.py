"""Hook type ``scale``: isolate application writers by scaling them to zero.

A terminating pod still writes, so isolation is only done once no pod of the workload exists.
The scale to zero and the journal annotations (which group holds the workload, its original
replicas, the freeze deadline) are one patch, so the workload itself always says how to undo
the isolation, even when the operator and its status are gone. Undo never fights a person or an
autoscaler: a workload whose replicas changed while isolated keeps them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from snapgroup.api.labels import FREEZE_DEADLINE, ISOLATED_BY, ORIGINAL_REPLICAS
from snapgroup.api.snapshotgroup import WriterTarget
from snapgroup.hooks.registry import BoundHook, HookContext, HookType, UndoRecord, register
from snapgroup.ports import Cluster, PlanError, StepError, WorkloadInfo

HOOK_TYPE = "scale"
KEY_PREFIX = "writer:"

_OUR_ANNOTATIONS: dict[str, str | None] = {
    ISOLATED_BY: None, ORIGINAL_REPLICAS: None, FREEZE_DEADLINE: None,
}
"""Merge-patch values that remove every annotation isolation puts on a workload."""


def holder_id(namespace: str, group: str, uid: str) -> str:
    """The ISOLATED_BY value naming one SnapshotGroup: ``<namespace>/<group>/<uid>``."""
    return f"{namespace}/{group}/{uid}"


def workload_target(kind: str, name: str) -> str:
    """The exclusion key of a workload: ``workload:<Kind>/<name>``."""
    return f"workload:{kind}/{name}"


def writer_key(kind: str, name: str) -> str:
    """Journal key of one isolated workload, e.g. ``writer:Deployment/data-writer``."""
    return f"{KEY_PREFIX}{kind}/{name}"


@register
class ScaleWriters(HookType[WriterTarget]):
    """Scale Deployments or StatefulSets to zero and wait until their pods are gone; undo
    restores the original replicas."""

    name = HOOK_TYPE
    params_model = WriterTarget

    async def plan(self, ctx: HookContext, params: WriterTarget, path: str) -> list[BoundHook]:
        """Resolve the workloads by name or selector; refuse ones another group holds."""
        cluster, namespace = ctx.cluster, ctx.namespace
        if params.name is not None:
            field = f"{path}.name"
            workload = await cluster.get_workload(params.kind, namespace, params.name)
            if workload is None:
                raise PlanError(
                    "WriterNotFound", field,
                    f"{params.kind} {params.name} does not exist in namespace {namespace}",
                )
            workloads = [workload]
        else:
            assert params.selector is not None  # WriterTarget sets exactly one of the two
            field = f"{path}.selector"
            query = params.selector.as_query()
            # An empty selector matches nothing here, never everything.
            workloads = await cluster.list_workloads(params.kind, namespace, query) if query else []
            if not workloads:
                raise PlanError(
                    "WriterNotFound", field,
                    f"no {params.kind} in namespace {namespace} matches the selector "
                    f"{query or '(empty)'}",
                )

        me = holder_id(namespace, ctx.group, ctx.group_uid)
        hooks: list[BoundHook] = []
        for workload in sorted(workloads, key=lambda w: w.name):
            holder = workload.annotations.get(ISOLATED_BY)
            if holder is not None and holder != me:
                raise PlanError(
                    "WriterBusy", field,
                    f"{workload.kind} {workload.name} is held at zero replicas by SnapshotGroup "
                    f"{holder}; once that group has thawed it (or the safety net has restored "
                    "it), create this group again",
                    held_target=workload_target(workload.kind, workload.name),
                )
            hooks.append(IsolatedWriter(ctx, workload, _replicas_before_isolation(workload, me)))
        return hooks

    async def recover(
        self, ctx: HookContext, key: str, record: UndoRecord, side_effect_done: bool
    ) -> str:
        """Restore a workload from the journal after a restart, as `undo` does.

        The scale and the annotations are one patch, so the workload's own annotations say
        whether the step happened; side_effect_done adds nothing to that.
        """
        kind, name = _target_from(key, record)
        workload = await ctx.cluster.get_workload(kind, ctx.namespace, name)
        if workload is None:
            return f"{kind} {name} no longer exists; nothing to restore"
        me = holder_id(ctx.namespace, ctx.group, ctx.group_uid)
        return await restore_workload(ctx.cluster, workload, me, _original_from(record))


class IsolatedWriter(BoundHook):
    """One workload to hold at zero replicas for the freeze window."""

    type = HOOK_TYPE

    def __init__(self, ctx: HookContext, workload: WorkloadInfo, original_replicas: int) -> None:
        self._ctx = ctx
        self.kind = workload.kind
        self.name = workload.name
        self.pod_selector = workload.selector  # immutable in apps/v1, so the plan's is current
        self.original_replicas = original_replicas
        self.key = writer_key(workload.kind, workload.name)

    def intent(self) -> UndoRecord:
        """Everything the undo needs is known before acting."""
        return {"kind": self.kind, "name": self.name, "originalReplicas": self.original_replicas}

    def targets(self) -> list[str]:
        """The workload, as an exclusion key."""
        return [workload_target(self.kind, self.name)]

    async def apply(self) -> UndoRecord:
        """Scale to zero with the journal annotations in one patch, then wait for the pods to go.

        Waiting is bounded by the freeze deadline; past it StepError("FreezeBudgetExceeded").
        """
        ctx = self._ctx
        remaining = ctx.deadline - time.monotonic()
        deadline_at = datetime.now(UTC) + timedelta(seconds=max(remaining, 0.0))
        await ctx.cluster.scale(
            self.kind, ctx.namespace, self.name, 0,
            {
                ISOLATED_BY: holder_id(ctx.namespace, ctx.group, ctx.group_uid),
                ORIGINAL_REPLICAS: str(self.original_replicas),
                FREEZE_DEADLINE: _rfc3339(deadline_at),
            },
        )
        try:
            async with ctx.waits.waiting("pods"):
                await ctx.cluster.wait_pods_gone(
                    ctx.namespace, self.pod_selector, max(ctx.deadline - time.monotonic(), 0.0)
                )
        except TimeoutError:
            raise StepError(
                "FreezeBudgetExceeded",
                f"pods of {self.kind} {self.name} (selector {self.pod_selector}) still exist "
                "at the end of the freeze budget; raise spec.freezeBudget or shorten the pods' "
                "terminationGracePeriodSeconds",
            ) from None
        return {**self.intent(), "isolatedAt": _rfc3339(datetime.now(UTC))}

    async def undo(self, record: UndoRecord) -> str:
        """Scale back to the original replicas, unless someone changed them meanwhile."""
        ctx = self._ctx
        workload = await ctx.cluster.get_workload(self.kind, ctx.namespace, self.name)
        if workload is None:
            return f"{self.kind} {self.name} no longer exists; nothing to restore"
        me = holder_id(ctx.namespace, ctx.group, ctx.group_uid)
        original = _original_from(record)
        return await restore_workload(
            ctx.cluster, workload, me, self.original_replicas if original is None else original
        )


async def restore_workload(
    cluster: Cluster, workload: WorkloadInfo, holder: str, original_replicas: int | None
) -> str:
    """Give back a workload this holder isolated: original replicas, no isolation annotations.

    The scale and the annotations are one patch, so a workload without our ISOLATED_BY
    annotation was not scaled down by us (or was already given back) and is left alone, as is
    one another group holds. When its replicas are no longer zero, someone scaled it while it
    was isolated: keep their count, only drop the annotations. Returns what was done, in words.
    """
    what = f"{workload.kind} {workload.name}"
    current_holder = workload.annotations.get(ISOLATED_BY)
    if current_holder is None:
        return f"{what} is not isolated (no {ISOLATED_BY} annotation); left as it is"
    if current_holder != holder:
        return f"{what} is now held by SnapshotGroup {current_holder}; left to that group"
    if original_replicas is None:
        original_replicas = _annotated_replicas(workload)
    try:
        if workload.replicas != 0:
            await cluster.scale(
                workload.kind, workload.namespace, workload.name, workload.replicas,
                _OUR_ANNOTATIONS,
            )
            return (
                f"{what} was scaled to {workload.replicas} by someone else while isolated; "
                "kept that count and removed the isolation annotations"
            )
        if original_replicas is None:
            raise StepError(
                "OriginalReplicasUnknown",
                f"{what} is at 0 replicas and its original count is unknown; left at 0: "
                f"set its replicas and remove the {ISOLATED_BY} annotation")
        await cluster.scale(
            workload.kind, workload.namespace, workload.name, original_replicas, _OUR_ANNOTATIONS
        )
    except StepError as err:
        if err.reason == "WorkloadNotFound":
            return f"{what} no longer exists; nothing to restore"
        raise
    await _check_restored(cluster, workload, holder, original_replicas)
    return f"{what} scaled back to {original_replicas} replicas"


async def _check_restored(
    cluster: Cluster, workload: WorkloadInfo, holder: str, replicas: int
) -> None:
    """Read the workload back: restored means not held by us and not at zero (unless it was)."""
    now = await cluster.get_workload(workload.kind, workload.namespace, workload.name)
    if now is None:
        return
    if now.annotations.get(ISOLATED_BY) == holder or (now.replicas == 0 and replicas != 0):
        raise StepError(
            "RestoreNotConfirmed",
            f"{workload.kind} {workload.name} still shows {now.replicas} replicas and "
            f"{ISOLATED_BY}={now.annotations.get(ISOLATED_BY)!r} after being scaled back")


def _replicas_before_isolation(workload: WorkloadInfo, me: str) -> int:
    # Already held by this very group (planned again after a restart): the count to restore is
    # the annotated one, not today's zero.
    if workload.annotations.get(ISOLATED_BY) == me:
        annotated = _annotated_replicas(workload)
        if annotated is not None:
            return annotated
    return workload.replicas


def _annotated_replicas(workload: WorkloadInfo) -> int | None:
    try:
        value = int(workload.annotations.get(ORIGINAL_REPLICAS, ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _original_from(record: UndoRecord) -> int | None:
    value: Any = record.get("originalReplicas")
    return value if isinstance(value, int) and value >= 0 else None


def _target_from(key: str, record: UndoRecord) -> tuple[str, str]:
    kind, name = record.get("kind"), record.get("name")
    if isinstance(kind, str) and isinstance(name, str):
        return kind, name
    kind, _, name = key.removeprefix(KEY_PREFIX).partition("/")
    return kind, name


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
