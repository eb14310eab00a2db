"""The group's status as a write-ahead journal: kept in memory, patched directly before and after
every side effect (not through kopf's end-of-handler patch), with a Kubernetes Event per step."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snapgroup import metrics
from snapgroup.api.base import Condition, ConditionStatus
from snapgroup.api.snapshotgroup import (
    AttemptStatus,
    HookState,
    HookStatus,
    Phase,
    SnapshotGroupStatus,
)
from snapgroup.ports import GROUP_GONE, Cluster, EventType, StepError

log = logging.getLogger("snapgroup.journal")

FLUSH_BACKOFF = (0.1, 0.3, 0.6, 1.0, 2.0, 3.0, 4.0, 5.0)
"""Pauses between attempts to write the journal: about 16 s in all."""

CONDITION_TYPES = ("Succeeded", "Quiesced", "SnapshotsCut", "SnapshotsReady", "Consistent")


def now() -> datetime:
    """Wall-clock time in UTC; the one clock the status uses."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class GroupRef:
    """Identity of one SnapshotGroup."""

    namespace: str
    name: str
    uid: str
    generation: int

    @property
    def qualified(self) -> str:
        """``namespace/name/uid``, as written on isolated workloads."""
        return f"{self.namespace}/{self.name}/{self.uid}"


class Journal:
    """Status of one group, in memory, with a direct patch per journal write."""

    def __init__(self, cluster: Cluster, ref: GroupRef, status: SnapshotGroupStatus) -> None:
        self.cluster = cluster
        self.ref = ref
        self.status = status
        self._events: set[asyncio.Task[None]] = set()

    async def flush(self) -> None:
        """Persist the whole status now (a merge patch of the status subresource).

        Retried with backoff for a bounded time: a journal write lost to a passing API server
        outage must not turn into a step taken without its record.
        """
        self.status.observed_generation = self.ref.generation
        body = self.status.wire()
        for pause in (*FLUSH_BACKOFF, None):
            try:
                await self.cluster.patch_group_status(self.ref.namespace, self.ref.name, body)
                return
            except Exception as exc:
                if pause is None or (isinstance(exc, StepError) and exc.reason == GROUP_GONE
                                     and await self._gone()):
                    raise  # a group that is gone does not come back: no point retrying
                log.warning("status of %s/%s not written (%s); retrying in %.1fs",
                            self.ref.namespace, self.ref.name, exc, pause)
                await asyncio.sleep(pause)

    async def _gone(self) -> bool:
        """Whether this group (by uid) is really gone: a 404 right after an API server restart
        may be the server catching up, and a group of the same name may be another one."""
        try:
            found = await self.cluster.get_group(self.ref.namespace, self.ref.name)
        except StepError:
            return False
        return found is None or (found.get("metadata") or {}).get("uid") != self.ref.uid

    def condition(self, type_: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        """Set a condition; lastTransitionTime moves only when its status changes."""
        for cond in self.status.conditions:
            if cond.type == type_:
                if cond.status != status:
                    cond.last_transition_time = now()
                cond.status, cond.reason, cond.message = status, reason, message
                cond.observed_generation = self.ref.generation
                return
        self.status.conditions.append(
            Condition(
                type=type_, status=status, reason=reason, message=message,
                last_transition_time=now(), observed_generation=self.ref.generation,
            )
        )

    def condition_status(self, type_: str) -> ConditionStatus | None:
        """Current status of a condition, if set."""
        return next((c.status for c in self.status.conditions if c.type == type_), None)

    def phase(self, phase: Phase, message: str) -> None:
        """Move to a phase with a one-line message."""
        self.status.phase = phase
        self.status.message = message

    def hook(self, key: str) -> HookStatus | None:
        """Journal entry of a hook by key."""
        return next((h for h in self.status.hooks if h.name == key), None)

    def mark(
        self, key: str, type_: str, stage: str, state: HookState,
        message: str | None = None, undo: dict[str, Any] | None = None,
    ) -> HookStatus:
        """Create or move a journal entry (not yet persisted: call flush)."""
        entry = self.hook(key)
        if entry is None:
            entry = HookStatus(name=key, type=type_, stage="Pre", state=state, started_at=now())
            self.status.hooks.append(entry)
        entry.stage = "Post" if stage == "Post" else "Pre"
        if state in (HookState.APPLYING, HookState.UNDOING):
            entry.started_at = now()
            entry.finished_at = None
        else:
            entry.finished_at = now()
        entry.state = state
        if message is not None:
            entry.message = message
        if undo is not None:
            entry.undo = undo
        return entry

    async def fail(self, reason: str, message: str) -> None:
        """End the group as Failed with a reason, in the status and in an Event.

        A group that vanished meanwhile (its finalizer removed by hand) cannot be written any
        more: that is logged, never raised, since everything it held was already undone.
        """
        self.condition("Succeeded", "False", reason, message)
        for type_ in CONDITION_TYPES:
            if self.condition_status(type_) == "Unknown":
                self.condition(type_, "False", reason, "not reached")
        self.phase(Phase.FAILED, f"{reason}: {message}")
        metrics.GROUPS.labels("Failed", reason).inc()
        self.status.completion_time = now()
        try:
            await self.flush()
        except Exception as exc:
            log.warning("%s/%s: final status not written (%s): %s: %s",
                        self.ref.namespace, self.ref.name, exc, reason, message)
        self.event("Warning", reason, message)
        await self.drain_events()

    async def next_attempt(self, reason: str, message: str, delay: float) -> None:
        """Close the current attempt as failed (it was undone) and start the journal afresh.

        The finished attempt keeps its reason and message in status.attempts; the journal, the
        services and writers of the new attempt start empty.
        """
        status = self.status
        status.attempts.append(AttemptStatus(
            number=status.attempt, start_time=status.start_time, completion_time=now(),
            reason=reason, message=message,
        ))
        status.attempt += 1
        status.hooks, status.services, status.writers, status.targets = [], [], [], []
        status.freeze = status.earliest_snapshot_time = status.snapshots_ready = None
        status.consistent = None
        status.start_time = None
        for type_ in CONDITION_TYPES:
            self.condition(type_, "Unknown", "Retrying", f"attempt {status.attempt} pending")
        self.phase(Phase.PENDING, f"attempt {status.attempt - 1} failed ({reason}); "
                   f"attempt {status.attempt} in {delay:g}s")
        await self.flush()
        self.event("Warning", "Retrying", f"attempt {status.attempt - 1} failed and was undone "
                   f"({reason}: {message}); attempt {status.attempt} in {delay:g}s")

    def event(self, event_type: EventType, reason: str, message: str) -> None:
        """Record an Event without holding up the caller (Events are not the journal)."""
        log.info("%s/%s %s: %s", self.ref.namespace, self.ref.name, reason, message)
        task = asyncio.create_task(self._emit(event_type, reason, message))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def _emit(self, event_type: EventType, reason: str, message: str) -> None:
        try:
            await self.cluster.emit_event(
                self.ref.namespace, self.ref.name, self.ref.uid, event_type, reason, message
            )
        except Exception as exc:  # an Event lost is a log line, never a failed group
            log.warning("event %s for %s/%s not recorded: %s",
                        reason, self.ref.namespace, self.ref.name, exc)

    async def drain_events(self) -> None:
        """Wait for Events still being sent."""
        if self._events:
            await asyncio.gather(*self._events, return_exceptions=True)
