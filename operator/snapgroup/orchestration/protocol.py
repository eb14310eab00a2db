"""The freeze-window protocol of one SnapshotGroup, as an explicit sequence of steps.

plan (no side effects) -> isolate writers -> quiesce services -> pre hooks -> cut every snapshot
concurrently and wait for creationTime -> record newest records while frozen -> post hooks ->
resume in reverse (always) -> wait for readyToUse outside the window -> verdict.

Every side effect is journaled in the status before it happens; whatever was applied is undone,
whatever failed; the freeze budget bounds everything from the first isolation to the last resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from snapgroup import failpoints, metrics
from snapgroup.api.snapshotgroup import (
    FreezeWindow,
    HookState,
    Phase,
    ServiceStatus,
    SnapshotGroupSpec,
    VolumeSnapshotStatus,
    WriterStatus,
)
from snapgroup.hooks.registry import BoundHook, HookContext, ServiceHook, UndoRecord
from snapgroup.orchestration.exclusion import exclusive_targets
from snapgroup.orchestration.journal import CONDITION_TYPES, Journal, now
from snapgroup.orchestration.plan import Plan, PlannedService, make_plan
from snapgroup.orchestration.snapshots import (
    consistency,
    group_selector,
    snapshot_manifest,
    snapshot_name,
)
from snapgroup.ports import SnapshotInfo, StepError

log = logging.getLogger("snapgroup.protocol")

UNDO_BACKOFF = (0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
"""Pauses between attempts of one undo: about 16 s in all, enough to ride out an API server
restart, short enough that a broken target is reported rather than retried forever."""
UNDO_ATTEMPTS = len(UNDO_BACKOFF) + 1
BUDGET_SLACK = 0.5
"""Seconds before the deadline within which a timed-out wait counts as the budget running out."""
WAIT_TIMEOUT = 3600.0
"""How long a group waits for another group holding its targets before it fails."""
READY_TIMEOUT = 600.0
"""How long to wait for readyToUse after the window; uploads can be slow, nothing is frozen."""


@dataclass
class Stage:
    """Hooks applied together; undone together, stages in reverse order."""

    name: str
    applied: list[tuple[BoundHook, UndoRecord]] = field(default_factory=list)


@dataclass
class Timings:
    """Where the freeze window went, for the benchmark and the logs."""

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str, seconds: float) -> None:
        """Add seconds to a step."""
        self.marks[step] = self.marks.get(step, 0.0) + seconds


class GroupRun:
    """One run of the protocol for one group."""

    def __init__(
        self, ctx: HookContext, journal: Journal, spec: SnapshotGroupSpec,
        ready_timeout: float = READY_TIMEOUT, wait_timeout: float = WAIT_TIMEOUT,
        window_slots: asyncio.Semaphore | None = None,
    ) -> None:
        self.wait_timeout = wait_timeout
        self.window_slots = window_slots or asyncio.Semaphore(1)
        self.ctx = ctx
        self.journal = journal
        self.spec = spec
        self.ready_timeout = ready_timeout
        self.stages: list[Stage] = []
        self.timings = Timings()
        self._window: asyncio.Task[None] | None = None
        self._abort_reason: StepError | None = None

    # -- entry points -------------------------------------------------------------------

    async def run(self) -> None:
        """Plan, freeze, cut, resume, finalize; the status tells the outcome."""
        j = self.journal
        j.status.start_time = now()
        j.phase(Phase.PENDING, "planning")
        for type_ in CONDITION_TYPES:
            j.condition(type_, "Unknown", "Pending", "not started yet")
        await j.flush()

        try:
            # Queue for a window slot before planning: a burst of groups then waits with
            # nothing frozen, instead of every window stretching over shared resources.
            async with (
                exclusive_targets(self.ctx, j, self.spec, self.wait_timeout),
                self.window_slots,
            ):
                failure = await self._plan_and_freeze()
        except StepError as exc:
            failure = exc
        if failure is not None:
            await self.fail(failure.reason, failure.message)
            return
        await self.finalize()

    async def _plan_and_freeze(self) -> StepError | None:
        plan = await make_plan(self.ctx, self.spec)
        if not plan.ok:
            detail = "; ".join(f"{p.field_path}: {p.message}" for p in plan.problems)
            return StepError(plan.problems[0].reason, f"nothing was touched: {detail}")
        self.journal.event("Normal", "Planned", self._describe(plan))
        for warning in plan.warnings:
            self.journal.event("Warning", warning.reason, f"{warning.field_path}: {warning.message}")
        await failpoints.reached("plan")
        try:
            return await self._freeze(plan)
        finally:
            await plan.release()

    def abort(self, reason: str, message: str) -> None:
        """Stop the window now (the group was deleted, the operator is stopping): thaw and fail."""
        self._abort_reason = StepError(reason, message)
        if self._window is not None and not self._window.done():
            self._window.cancel()

    # -- the window ---------------------------------------------------------------------

    async def _freeze(self, plan: Plan) -> StepError | None:
        j = self.journal
        budget = self.spec.freeze_budget_delta.total_seconds()
        started = time.monotonic()
        self.ctx.deadline = started + budget
        j.status.freeze = FreezeWindow(start=now())
        window = self._window = asyncio.create_task(self._frozen_steps(plan))
        failure: StepError | None = None
        try:
            done, _ = await asyncio.wait({window}, timeout=budget)
            if not done:
                window.cancel()
                await asyncio.gather(window, return_exceptions=True)
                failure = self._budget_exceeded()
            else:
                failure = self._window_failure(window)
        except asyncio.CancelledError:
            # The operator is stopping: thaw before going, whatever else happens.
            window.cancel()
            await asyncio.gather(window, return_exceptions=True)
            await asyncio.shield(self._thaw(started))
            raise
        await asyncio.shield(self._thaw(started))
        if failure is not None:
            await self._discard_uncut()
        return failure

    def _budget_exceeded(self) -> StepError:
        return StepError(
            "FreezeBudgetExceeded",
            f"the freeze budget of {self.spec.freeze_budget} ran out while "
            f"{self.journal.status.message}; everything was thawed at once")

    def _window_failure(self, window: asyncio.Task[None]) -> StepError | None:
        if window.cancelled():
            return self._abort_reason or StepError("Aborted", "the freeze window was cancelled")
        exc = window.exception()
        if exc is None:
            return None
        if isinstance(exc, StepError):
            return exc
        if isinstance(exc, TimeoutError):
            if time.monotonic() >= self.ctx.deadline - BUDGET_SLACK:
                # A wait bounded by the budget ran out a moment before the window's own timer.
                return self._budget_exceeded()
            return StepError("Timeout", f"a step timed out while {self.journal.status.message}")
        log.error("unexpected error in the freeze window", exc_info=exc)
        return StepError("InternalError", f"{type(exc).__name__}: {exc}")

    async def _frozen_steps(self, plan: Plan) -> None:
        j = self.journal
        j.phase(Phase.QUIESCING, "isolating writers")
        await self._apply_stage("isolate", plan.writers)
        j.phase(Phase.QUIESCING, "quiescing services")
        await self._apply_stage("quiesce", [s.hook for s in plan.services])
        for step in (s for s in plan.steps if s.stage == "Pre"):
            await self._apply_stage(f"pre:{step.step.name}", step.hooks,
                                    tolerate=step.step.on_error == "Continue")
        j.condition("Quiesced", "True", "WritersIsolatedServicesQuiesced",
                    f"{len(plan.writers)} writer(s) isolated, {len(plan.services)} service(s) quiesced")
        await j.flush()  # visible while it holds: whoever watches the group sees the freeze
        await self._cut(plan.services, plan.snapshot_class or "")
        await self._record(plan.services)
        for step in (s for s in plan.steps if s.stage == "Post"):
            await self._apply_stage(f"post:{step.step.name}", step.hooks,
                                    tolerate=step.step.on_error == "Continue")

    async def _apply_stage(
        self, name: str, hooks: Sequence[BoundHook], tolerate: bool = False
    ) -> None:
        if not hooks:
            return
        j = self.journal
        t0 = time.monotonic()
        stage = Stage(name)
        self.stages.append(stage)
        for hook in hooks:
            j.mark(hook.key, hook.type, "Pre", HookState.APPLYING, undo=hook.intent())
        await j.flush()  # write-ahead: the intent is durable before anything changes
        results = await asyncio.gather(*(self._timed_apply(h) for h in hooks), return_exceptions=True)
        errors: list[tuple[BoundHook, BaseException]] = []
        for hook, result in zip(hooks, results, strict=True):
            if isinstance(result, BaseException):
                # The side effect may have happened in part: undo it like an applied one.
                stage.applied.append((hook, hook.intent()))
                message = result.message if isinstance(result, StepError) else str(result)
                j.mark(hook.key, hook.type, "Pre", HookState.FAILED, message=message)
                errors.append((hook, result))
            else:
                stage.applied.append((hook, result))
                j.mark(hook.key, hook.type, "Pre", HookState.APPLIED, message="applied", undo=result)
                j.event("Normal", "HookApplied", f"{hook.key} applied")
        await j.flush()
        self.timings.mark(name.split(":")[0], time.monotonic() - t0)
        if errors and not tolerate:
            hook, exc = errors[0]
            if isinstance(exc, StepError):
                raise StepError(exc.reason, f"{hook.key}: {exc.message}")
            if isinstance(exc, TimeoutError):
                raise StepError("Timeout", f"{hook.key}: timed out")
            raise StepError("HookFailed", f"{hook.key}: {type(exc).__name__}: {exc}")

    async def _timed_apply(self, hook: BoundHook) -> UndoRecord:
        t0 = time.monotonic()
        if hook.key.startswith("writer:"):
            metrics.WRITERS_ISOLATED.inc()
        try:
            record = await hook.apply()
        finally:
            metrics.HOOK_SECONDS.labels(hook.type, "apply").observe(time.monotonic() - t0)
        await failpoints.reached(f"apply:{hook.key}")
        return record

    async def _cut(self, services: list[PlannedService], snapshot_class: str) -> None:
        j, ctx = self.journal, self.ctx
        t0 = time.monotonic()
        j.phase(Phase.SNAPSHOTTING, "cutting snapshots")
        j.status.services = [
            ServiceStatus(
                name=s.target.name, type=s.target.type,
                volume_snapshots=[
                    VolumeSnapshotStatus(name=snapshot_name(ctx.group, s.target.name, pvc), pvc=pvc)
                    for pvc in s.pvcs
                ],
            )
            for s in services
        ]
        manifests = [
            snapshot_manifest(namespace=ctx.namespace, group=ctx.group, group_uid=ctx.group_uid,
                              service=s.target.name, pvc=pvc, snapshot_class=snapshot_class)
            for s in services for pvc in s.pvcs
        ]
        await asyncio.gather(*(self._create_snapshot(m) for m in manifests))
        metrics.SNAPSHOTS_CREATED.inc(len(manifests))
        names = {m["metadata"]["name"] for m in manifests}
        async with ctx.waits.waiting("cut"):
            infos = await ctx.cluster.wait_snapshots(
                ctx.namespace, group_selector(ctx.group), names, "cut",
                timeout=max(0.0, ctx.deadline - time.monotonic()))
        self._apply_snapshot_infos(infos)
        metrics.CUT_SECONDS.observe(time.monotonic() - t0)
        times = [i.creation_time for i in infos.values() if i.creation_time is not None]
        j.status.earliest_snapshot_time = min(times) if times else None
        await failpoints.reached("cut")
        j.condition("SnapshotsCut", "True", "AllCut", f"{len(names)} snapshot(s) cut")
        j.event("Normal", "SnapshotsCut", f"{len(names)} snapshot(s) cut")
        self.timings.mark("cut", time.monotonic() - t0)

    async def _create_snapshot(self, manifest: dict[str, Any]) -> None:
        await self.ctx.cluster.create_snapshot(self.ctx.namespace, manifest)
        await failpoints.reached(f"create:{manifest['metadata']['name']}")

    async def _record(self, services: list[PlannedService]) -> None:
        t0 = time.monotonic()
        times = await asyncio.gather(*(s.hook.newest_record() for s in services))
        for svc_status, stamp in zip(self.journal.status.services, times, strict=True):
            svc_status.last_record_time = stamp
        self.timings.mark("record", time.monotonic() - t0)
        await failpoints.reached("record")

    # -- always: resume -----------------------------------------------------------------

    async def _thaw(self, started: float) -> None:
        """Undo every applied stage in reverse; each undo retried within bounds."""
        j = self.journal
        t0 = time.monotonic()
        if self.stages:
            j.phase(Phase.RESUMING, "resuming")
        for stage in reversed(self.stages):
            await asyncio.gather(*(self._undo(h, rec) for h, rec in reversed(stage.applied)))
            await j.flush()
        if j.status.freeze is not None:
            j.status.freeze.end = now()
            seconds = time.monotonic() - started
            j.status.freeze.seconds = round(seconds, 3)
            metrics.FREEZE_SECONDS.observe(seconds)
            self.timings.mark("resume", time.monotonic() - t0)
            waits = self.ctx.waits
            j.status.freeze.breakdown = {
                **{step: round(s, 3) for step, s in self.timings.marks.items()},
                "waitingOnPods": round(waits.seconds("pods"), 3),
                "waitingOnCut": round(waits.seconds("cut"), 3),
                "operator": round(seconds - waits.seconds(), 3),
            }
        j.status.writers = self._writer_statuses()
        by_name = {s.name: s for s in j.status.services}
        for hook in self._service_hooks():
            svc_status = by_name.get(hook.key.removeprefix("service:"))
            if svc_status is not None:
                svc_status.evidence = hook.evidence()
        j.condition("Quiesced", "False", "Resumed", "writers restored and services resumed")

    async def _undo(self, hook: BoundHook, record: UndoRecord) -> None:
        t0 = time.monotonic()
        try:
            await self._undo_with_retries(hook, record)
        finally:
            metrics.HOOK_SECONDS.labels(hook.type, "undo").observe(time.monotonic() - t0)
            if hook.key.startswith("writer:"):
                metrics.WRITERS_ISOLATED.dec()

    async def _undo_with_retries(self, hook: BoundHook, record: UndoRecord) -> None:
        j = self.journal
        for attempt in range(UNDO_ATTEMPTS):
            try:
                message = await hook.undo(record)
            except Exception as exc:
                text = exc.message if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
                if attempt + 1 < UNDO_ATTEMPTS:
                    await asyncio.sleep(UNDO_BACKOFF[attempt])  # back off before retrying the undo
                    continue
                j.mark(hook.key, hook.type, "Post", HookState.FAILED,
                       message=f"undo failed after {UNDO_ATTEMPTS} attempts: {text}")
                j.event("Warning", "UndoFailed", f"{hook.key}: {text}")
                return
            await failpoints.reached(f"undo:{hook.key}")
            j.mark(hook.key, hook.type, "Post", HookState.UNDONE, message=message)
            j.event("Normal", "HookUndone", f"{hook.key}: {message}")
            return

    def _service_hooks(self) -> list[ServiceHook]:
        return [h for st in self.stages if st.name == "quiesce" for h, _ in st.applied
                if isinstance(h, ServiceHook)]

    def _writer_statuses(self) -> list[WriterStatus]:
        writers = []
        for entry in self.journal.status.hooks:
            if not entry.name.startswith("writer:") or not entry.undo:
                continue
            undo: dict[str, Any] = entry.undo
            writers.append(WriterStatus(
                kind=undo.get("kind", "Deployment"), name=str(undo.get("name", entry.name)),
                original_replicas=int(undo.get("originalReplicas", 0)),
                isolated_at=_parse_time(undo.get("isolatedAt")),
                restored_at=entry.finished_at if entry.state == HookState.UNDONE else None,
                note=entry.message if entry.stage == "Post" else None,
            ))
        return writers

    async def _discard_uncut(self) -> None:
        """After a failure, delete snapshots that were never cut: they prove nothing."""
        ctx = self.ctx
        for svc in self.journal.status.services:
            for snap in svc.volume_snapshots:
                if snap.creation_time is None:
                    try:
                        await ctx.cluster.delete_snapshot(ctx.namespace, snap.name)
                        snap.error = "deleted: not cut within the freeze window"
                    except StepError as exc:
                        snap.error = f"not cut; deleting it failed: {exc.message}"

    # -- after the window ---------------------------------------------------------------

    async def finalize(self) -> None:
        """After the window: wait for readyToUse, judge consistency, succeed."""
        j, ctx = self.journal, self.ctx
        j.phase(Phase.FINALIZING, "waiting for snapshots to be ready")
        await j.flush()
        names = {s.name for svc in j.status.services for s in svc.volume_snapshots}
        try:
            infos = await ctx.cluster.wait_snapshots(
                ctx.namespace, group_selector(ctx.group), names, "ready", timeout=self.ready_timeout)
        except (TimeoutError, StepError) as exc:
            reason = exc.reason if isinstance(exc, StepError) else "SnapshotsNotReady"
            await self.fail(reason, f"snapshots were cut but did not become ready: {exc}")
            return
        self._apply_snapshot_infos(infos)
        j.condition("SnapshotsReady", "True", "AllReady", f"{len(names)} snapshot(s) ready to use")
        verdict = consistency(j.status.services, j.status.earliest_snapshot_time)
        j.condition("Consistent", verdict.status, verdict.reason, verdict.message)
        j.status.consistent = {"True": True, "False": False}.get(verdict.status)
        if verdict.status == "False":
            j.event("Warning", "Inconsistent", verdict.message)
        j.condition("Succeeded", "True", "Completed", "snapshots cut, services resumed, snapshots ready")
        j.phase(Phase.SUCCEEDED, f"freeze {j.status.freeze.seconds if j.status.freeze else '?'}s; "
                f"{verdict.message}")
        j.status.completion_time = now()
        await j.flush()
        metrics.GROUPS.labels("Succeeded", verdict.reason).inc()
        j.event("Normal", "Succeeded", j.status.message or "")
        await j.drain_events()

    def _apply_snapshot_infos(self, infos: dict[str, SnapshotInfo]) -> None:
        ready = total = 0
        for svc in self.journal.status.services:
            for snap in svc.volume_snapshots:
                total += 1
                info = infos.get(snap.name)
                if info is None:
                    continue
                # The first time seen is the precise one (from the content); keep it.
                snap.creation_time = snap.creation_time or info.creation_time
                snap.ready_to_use = info.ready_to_use
                snap.restore_size = info.restore_size
                snap.error = info.error
                ready += int(info.ready_to_use)
        self.journal.status.snapshots_ready = f"{ready}/{total}"

    async def fail(self, reason: str, message: str) -> None:
        """End the group as Failed with a reason, in the status and in an Event."""
        await self.journal.fail(reason, message)

    def _describe(self, plan: Plan) -> str:
        writers = ", ".join(h.key.removeprefix("writer:") for h in plan.writers) or "none"
        pvcs = ", ".join(p for s in plan.services for p in s.pvcs)
        return f"writers: {writers}; volumes: {pvcs}; snapshot class {plan.snapshot_class}"


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
