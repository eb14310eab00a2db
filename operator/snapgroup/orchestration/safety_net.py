"""The safety net: a level-triggered repair loop that looks at the world, not at what any run
remembers, and undoes what no live group holds any more.

It runs at start-up and then periodically (and soon after the nearest freeze deadline it saw):
- a workload annotated as isolated by a group that is terminal, gone (or of another uid), or
  past its ``freeze-deadline`` is given back its replicas;
- a server whose exclusion Lease carries a quiesce record of such a group is resumed by its hook
  type's recover step (MongoDB: the fsync lock it raised is lowered back; PostgreSQL: a session
  of the group still open is closed, which ends its backup), then the record is removed.
Each repair is an Event on the group and a metric. Safety never waits for an operator restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from snapgroup import metrics
from snapgroup.api.labels import FREEZE_DEADLINE, ISOLATED_BY
from snapgroup.api.snapshotgroup import Phase
from snapgroup.hooks.registry import HookContext, lookup
from snapgroup.hooks.writers import restore_workload, workload_target
from snapgroup.ports import Cluster, Connectors, LeaseRecord, StepError, WorkloadInfo

log = logging.getLogger("snapgroup.safety_net")

INTERVAL = 15.0
"""Seconds between two looks at the world when no deadline is near."""
DEADLINE_GRACE = 15.0
"""How long past a freeze deadline a live group may still be thawing before the net steps in."""


class GroupState(Enum):
    """What the cluster says of the group named in an annotation or record."""

    LIVE = "live"
    TERMINAL = "terminal"
    GONE = "gone"


@dataclass(frozen=True)
class Repair:
    """One repair the net made (or tried)."""

    target: str
    group: str
    """``<namespace>/<name>/<uid>`` of the group that had left it held."""
    message: str
    ok: bool


class SafetyNet:
    """Repairs workloads and servers left held by groups that can no longer give them back."""

    def __init__(
        self, cluster: Cluster, connectors: Connectors,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.cluster = cluster
        self.connectors = connectors
        self.clock = clock
        self.next_deadline: datetime | None = None
        """The nearest freeze deadline of a live group seen in the last pass."""

    async def run(self, stopped: Callable[[], bool], wake: asyncio.Event | None = None) -> None:
        """Repair, then wait for the next pass, until stopped() is true; never raises."""
        wake = wake or asyncio.Event()
        while not stopped():
            try:
                await self.repair_once()
            except Exception:  # the next pass looks again; a broken pass must not end the loop
                log.exception("safety net pass failed")
            pause = INTERVAL
            if self.next_deadline is not None:
                until = (self.next_deadline - self.clock()).total_seconds() + DEADLINE_GRACE
                pause = min(pause, max(until, 1.0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)  # woken early by a finished window
            wake.clear()

    async def repair_once(self) -> list[Repair]:
        """One look at the world; every repair made, in words."""
        self.next_deadline = None
        states: dict[str, GroupState] = {}
        workloads = await self.cluster.list_annotated_workloads(ISOLATED_BY)
        metrics.ISOLATED.observed({
            f"{w.namespace}/{workload_target(w.kind, w.name)}"
            for w in workloads
        })
        repairs = []
        for w in workloads:
            repair = await self._repair_workload(w, states)
            if repair is None:
                continue
            repairs.append(repair)
            if repair.ok:  # restored and checked: no longer isolated, as of now
                metrics.ISOLATED.ended(w.namespace, [workload_target(w.kind, w.name)])
        for record in await self.cluster.list_lease_records():
            repair = await self._repair_server(record, states)
            if repair is not None:
                repairs.append(repair)
        for repair in repairs:
            await self._report(repair)
        return repairs

    async def _repair_workload(
        self, workload: WorkloadInfo, states: dict[str, GroupState]
    ) -> Repair | None:
        holder = workload.annotations.get(ISOLATED_BY, "")
        deadline = _parse_time(workload.annotations.get(FREEZE_DEADLINE))
        if not await self._needs_repair(holder, deadline, states):
            return None
        target = f"{workload.kind} {workload.namespace}/{workload.name}"
        try:
            message = await restore_workload(self.cluster, workload, holder, None)
        except StepError as exc:
            return Repair(target, holder, f"not restored: {exc.message}", ok=False)
        return Repair(target, holder, message, ok=True)

    async def _repair_server(
        self, found: LeaseRecord, states: dict[str, GroupState]
    ) -> Repair | None:
        record: dict[str, Any] = dict(found.record)
        holder = str(record.get("group", ""))
        if not await self._needs_repair(holder, _parse_time(record.get("deadline")), states):
            return None
        target = f"{record.get('type')} server of {record.get('key')} (Lease {found.namespace}/{found.name})"
        hook_type = lookup(str(record.get("type")))
        parts = holder.split("/")
        if hook_type is None or len(parts) != 3:
            return Repair(target, holder, "the record names no registered hook type or group; "
                          "resume the server by hand and delete the Lease", ok=False)
        ctx = HookContext(namespace=parts[0], group=parts[1], group_uid=parts[2],
                          cluster=self.cluster, connectors=self.connectors)
        try:
            message = await hook_type.recover(
                ctx, str(record.get("key")), dict(record.get("record") or {}), side_effect_done=False)
            await self.cluster.set_lease_record(found.namespace, found.name, found.holder or "", None)
            await self.cluster.release_lease(found.namespace, found.name, found.holder or "")
        except StepError as exc:
            return Repair(target, holder, f"not resumed: {exc.message}", ok=False)
        return Repair(target, holder, message, ok=True)

    async def _needs_repair(
        self, holder: str, deadline: datetime | None, states: dict[str, GroupState]
    ) -> bool:
        if holder not in states:
            states[holder] = await self._state(holder)
        state = states[holder]
        if state is not GroupState.LIVE:
            return True
        if deadline is None:
            return False
        if self.clock() > deadline + timedelta(seconds=DEADLINE_GRACE):
            return True  # live but stuck past its budget: the window must not outlive it
        if self.next_deadline is None or deadline < self.next_deadline:
            self.next_deadline = deadline
        return False

    async def _state(self, holder: str) -> GroupState:
        parts = holder.split("/")
        if len(parts) != 3 or not all(parts):
            return GroupState.GONE  # names no group that could give it back
        namespace, name, uid = parts
        group = await self.cluster.get_group(namespace, name)
        if group is None or (group.get("metadata") or {}).get("uid") != uid:
            return GroupState.GONE
        phase = (group.get("status") or {}).get("phase")
        terminal = phase in (Phase.SUCCEEDED.value, Phase.FAILED.value)
        return GroupState.TERMINAL if terminal else GroupState.LIVE

    async def _report(self, repair: Repair) -> None:
        outcome = "repaired" if repair.ok else "failed"
        metrics.REPAIRS.labels(repair.target.split(" ", 1)[0], outcome).inc()
        (log.warning if repair.ok else log.error)("safety net: %s: %s", repair.target, repair.message)
        parts = repair.group.split("/")
        if len(parts) != 3:
            return
        with contextlib.suppress(StepError):
            await self.cluster.emit_event(
                parts[0], parts[1], parts[2], "Warning" if not repair.ok else "Normal",
                "SafetyNetRepaired" if repair.ok else "SafetyNetRepairFailed",
                f"{repair.target}: {repair.message}")


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)

