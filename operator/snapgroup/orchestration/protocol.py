"""The freeze-window protocol of one SnapshotGroup attempt, as an explicit sequence of steps.

plan (no side effects) -> take the resolved targets' Leases -> plan again under them -> isolate
writers -> quiesce services -> pre hooks -> cut every snapshot concurrently and wait for
creationTime -> record newest records while frozen -> post hooks -> thaw (always) -> wait for
readyToUse outside the window -> verdict.

The window is a `Window`: every side effect is registered for undo before it starts, and one thaw
undoes whatever started; the freeze budget bounds everything from the first isolation to the
thaw. An attempt that fails is undone; whether it is retried is the group runner's decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
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
from snapgroup.hooks.registry import HookContext, ServiceHook
from snapgroup.orchestration.exclusion import exclusive_targets, holder_title
from snapgroup.orchestration.journal import CONDITION_TYPES, Journal, now
from snapgroup.orchestration.plan import Plan, PlannedService, make_plan
from snapgroup.orchestration.snapshots import (
    consistency,
    group_selector,
    snapshot_manifest,
    snapshot_name,
)
from snapgroup.orchestration.window import Timings, Window, summarize_thaw, uncancellable
from snapgroup.ports import GROUP_GONE, SnapshotInfo, StepError

log = logging.getLogger("snapgroup.protocol")

BUDGET_SLACK = 0.5
"""Seconds before the deadline within which a timed-out wait counts as the budget running out."""
WAIT_TIMEOUT = 3600.0
"""How long a group waits for another group holding its targets before it fails."""
READY_TIMEOUT = 600.0
"""How long to wait for readyToUse after the window; uploads can be slow, nothing is frozen."""
KEEP_TIMEOUT = 15.0
"""Seconds a service may take, after the thaw, to say what it keeps with its snapshots."""
REPLANS = 3
"""How often the targets may change between the first plan and the plan under their Leases."""


@dataclass(frozen=True)
class Failure:
    """Why an attempt failed, and whether another attempt may follow."""

    reason: str
    message: str
    retriable: bool
    """False for a bad spec, a deletion, or a thaw that left something held."""


PLAN_RETRIABLE = frozenset({"KubernetesApiError", "DatabaseUnreachable", "Timeout", "TargetsBusy",
                            "LeaseContended"})
"""Plan failures that say nothing about the spec: worth another attempt."""


class GroupRun:
    """One attempt of the protocol for one group."""

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
        self.timings = Timings()
        self.window = Window(ctx, journal, self.timings)
        self._window_task: asyncio.Task[None] | None = None
        self._outer_task: asyncio.Task[Any] | None = None
        self._abort: Failure | None = None
        self._kept: dict[str, dict[str, str]] = {}
        """Service name -> annotations for its snapshots (see `_gather_kept`)."""
        self.in_window = False
        """True from the window's opening to the end of its thaw: an abort then thaws; outside
        it nothing is frozen."""

    @property
    def attempt(self) -> int:
        """The attempt this run is."""
        return self.journal.status.attempt

    # -- entry points -------------------------------------------------------------------

    async def run(self) -> Failure | None:
        """Plan, freeze, cut, thaw, finalize; None on success, else why it failed (already
        undone). The status tells the outcome; a failure is not yet written as terminal."""
        j = self.journal
        j.status.start_time = j.status.start_time or now()
        j.phase(Phase.PENDING, "planning")
        for type_ in CONDITION_TYPES:
            j.condition(type_, "Unknown", "Pending", "not started yet")
        await j.flush()
        return await self._abortable(self._plan_freeze_finalize())

    async def finalize(self) -> Failure | None:
        """Only what is left after the window: readiness and the verdict (abortable)."""
        return await self._abortable(self._finalize())

    async def _plan_freeze_finalize(self) -> Failure | None:
        failure = await self._plan_and_freeze()
        return failure if failure is not None else await self._finalize()

    def _aborted(self, done: str) -> Failure:
        assert self._abort is not None
        return Failure(self._abort.reason, f"{self._abort.message}; {done}", self._abort.retriable)

    async def _abortable(self, steps: Coroutine[Any, Any, Failure | None]) -> Failure | None:
        """Run steps so that `abort` outside the window stops them at once (nothing is frozen
        then: before the window nothing was touched, after it everything was thawed)."""
        self._outer_task = asyncio.current_task()
        try:
            if self._abort is not None:  # aborted before there was a task to cancel
                steps.close()
                return self._aborted("it had frozen nothing")
            return await steps
        except asyncio.CancelledError:
            if self._abort is None or self.in_window:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._aborted("it had frozen nothing" if self.window.effects == []
                                 else "its window had already closed")
        except Exception as exc:  # e.g. a journal write that kept failing, or a bug: fail, never stall
            if self.journal.status.services:
                # Snapshots of an attempt that did not finish are no backup it can vouch for.
                await uncancellable(self._discard_snapshots())
            if isinstance(exc, StepError):
                return gone_failure(exc) or Failure(
                    exc.reason, exc.message, exc.reason in PLAN_RETRIABLE or bool(self.window.effects))
            log.error("%s: unexpected error in the run", self.ctx.qualified, exc_info=exc)
            return Failure("InternalError", f"{type(exc).__name__}: {exc}", retriable=True)
        finally:
            self._outer_task = None

    def abort(self, reason: str, message: str, retriable: bool = False) -> None:
        """Stop now (the group was deleted, the operator is stopping, a Lease was lost): thaw
        an open window, or leave the queue or the wait for readiness with nothing frozen."""
        if self._abort is None:
            self._abort = Failure(reason, message, retriable)
        if self.in_window:
            if self._window_task is not None and not self._window_task.done():
                self._window_task.cancel()
        elif self._outer_task is not None:
            self._outer_task.cancel()

    async def _plan_and_freeze(self) -> Failure | None:
        first = await make_plan(self.ctx, self.spec, self.attempt)
        held = _held_targets(first)
        if held is None:
            return _plan_failure(first)
        # Something another group holds (a writer it isolated) is queued for like the rest.
        keys = sorted(set(first.targets()) | held)
        await first.release()
        for _ in range(REPLANS):
            # Queue for a window slot too: a burst of groups then waits with nothing frozen,
            # instead of every window stretching over shared resources.
            async with (
                exclusive_targets(self.ctx, self.journal, keys, self.wait_timeout, self._lease_lost),
                self.window_slots,
            ):
                plan = await make_plan(self.ctx, self.spec, self.attempt)  # as nobody else holds it
                if not plan.ok:
                    held = _held_targets(plan)
                    if held is None or held <= set(keys):
                        return _plan_failure(plan)  # held although its Lease is ours: stale
                    keys = sorted(set(keys) | held)  # held by another group: queue for it too
                    continue
                try:
                    if set(plan.targets()) <= set(keys):
                        self.journal.status.targets = keys
                        self.journal.event("Normal", "Planned", self._describe(plan))
                        for warning in plan.warnings:
                            self.journal.event("Warning", warning.reason,
                                               f"{warning.field_path}: {warning.message}")
                        await failpoints.reached("plan")
                        return await self._freeze(plan)
                    keys = sorted(set(keys) | set(plan.targets()))
                finally:
                    await plan.release()
        return Failure("TargetsChanged", "the workloads, volumes or servers of the group kept "
                       f"changing while it took their Leases ({REPLANS} tries); nothing was touched",
                       retriable=True)

    def _lease_lost(self, holder: str) -> None:
        self.abort("LeaseLost", f"{holder_title(holder)} took over a Lease of this "
                   "group (it was not renewed in time)", retriable=True)

    # -- the window ---------------------------------------------------------------------

    async def _freeze(self, plan: Plan) -> Failure | None:
        j = self.journal
        budget = self.spec.freeze_budget_delta.total_seconds()
        started = time.monotonic()
        self.ctx.deadline = started + budget
        j.status.freeze = FreezeWindow(start=now())
        self.in_window = True
        window = self._window_task = asyncio.create_task(self._frozen_steps(plan))
        failure: Failure | None = None
        try:
            done, _ = await asyncio.wait({window}, timeout=budget)
            if not done:
                window.cancel()
                await asyncio.gather(window, return_exceptions=True)
                failure = self._budget_exceeded()
            else:
                failure = self._window_failure(window)
        finally:
            # Whatever happened, even a cancellation of this task: thaw before anything else.
            if not window.done():
                window.cancel()
                await uncancellable(asyncio.gather(window, return_exceptions=True))
            held = await uncancellable(self._thaw(plan, started))
            self._window_task = None
            self.in_window = False
        if failure is None and held:
            failure = Failure("ThawIncomplete", "the snapshots were cut (and deleted with the "
                              "failed attempt), but " + summarize_thaw(self.window.held()),
                              retriable=False)
        elif failure is not None:
            failure = Failure(failure.reason, f"{failure.message}; {summarize_thaw(self.window.held())}",
                              failure.retriable and not held)
        if failure is not None:
            # A failed attempt's snapshots are no backup the group can vouch for.
            await uncancellable(self._discard_snapshots())
        return failure

    def _budget_exceeded(self) -> Failure:
        return Failure("FreezeBudgetExceeded",
                       f"the freeze budget of {self.spec.freeze_budget} ran out while "
                       f"{self.journal.status.message}; the thaw began at once", retriable=True)

    def _window_failure(self, window: asyncio.Task[None]) -> Failure | None:
        if window.cancelled():
            return self._abort or Failure("Aborted", "the freeze window was cancelled", True)
        exc = window.exception()
        if exc is None:
            return None
        if isinstance(exc, StepError):
            return gone_failure(exc) or Failure(exc.reason, exc.message,
                                                retriable=exc.reason != "SnapshotNameTaken")
        if isinstance(exc, TimeoutError):
            if time.monotonic() >= self.ctx.deadline - BUDGET_SLACK:
                # A wait bounded by the budget ran out a moment before the window's own timer.
                return self._budget_exceeded()
            return Failure("Timeout", f"a step timed out while {self.journal.status.message}", True)
        log.error("unexpected error in the freeze window", exc_info=exc)
        return Failure("InternalError", f"{type(exc).__name__}: {exc}", retriable=True)

    async def _frozen_steps(self, plan: Plan) -> None:
        j, window = self.journal, self.window
        j.phase(Phase.QUIESCING, "isolating writers")
        await window.apply_stage("isolate", plan.writers)
        j.phase(Phase.QUIESCING, "quiescing services")
        await window.apply_stage("quiesce", [s.hook for s in plan.services])
        for step in (s for s in plan.steps if s.stage == "Pre"):
            await window.apply_stage(f"pre:{step.step.name}", step.hooks,
                                     tolerate=step.step.on_error == "Continue")
        j.condition("Quiesced", "True", "WritersIsolatedServicesQuiesced",
                    f"{len(plan.writers)} writer(s) isolated, {len(plan.services)} service(s) quiesced")
        await j.flush()  # visible while it holds: whoever watches the group sees the freeze
        await self._cut(plan.services, plan.snapshot_class or "")
        await self._record(plan.services)
        for step in (s for s in plan.steps if s.stage == "Post"):
            await window.apply_stage(f"post:{step.step.name}", step.hooks,
                                     tolerate=step.step.on_error == "Continue")

    async def _cut(self, services: list[PlannedService], snapshot_class: str) -> None:
        j, ctx = self.journal, self.ctx
        t0 = time.monotonic()
        j.phase(Phase.SNAPSHOTTING, "cutting snapshots")
        j.status.services = [
            ServiceStatus(
                name=s.target.name, type=s.target.type,
                volume_snapshots=[
                    VolumeSnapshotStatus(
                        name=snapshot_name(ctx.group, s.target.name, pvc, self.attempt), pvc=pvc)
                    for pvc in s.pvcs
                ],
            )
            for s in services
        ]
        manifests = [
            snapshot_manifest(namespace=ctx.namespace, group=ctx.group, group_uid=ctx.group_uid,
                              service=s.target.name, pvc=pvc, snapshot_class=snapshot_class,
                              attempt=self.attempt)
            for s in services for pvc in s.pvcs
        ]
        # A failed create cancels the others (each lands or not before the group goes on), so no
        # create of this attempt can land after its thaw and its clean-up.
        try:
            async with asyncio.TaskGroup() as creates:
                for manifest in manifests:
                    creates.create_task(self._create_snapshot(manifest))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure is the cut's
        metrics.SNAPSHOTS_CREATED.inc(len(manifests))
        names = {m["metadata"]["name"] for m in manifests}
        async with ctx.waits.waiting("cut"):
            infos = await ctx.cluster.wait_snapshots(
                ctx.namespace, group_selector(ctx.group_uid, self.attempt), names, "cut",
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

    # -- always: thaw -------------------------------------------------------------------

    async def _thaw(self, plan: Plan, started: float) -> bool:
        """Undo everything the window started; True when something is still held."""
        j = self.journal
        t0 = time.monotonic()
        if self.window.effects:
            j.phase(Phase.RESUMING, "resuming")
        held = await self.window.thaw()
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
        if not held:
            await self._gather_kept(plan)
        by_name = {s.name: s for s in j.status.services}
        for hook in (s.hook for s in plan.services):
            svc_status = by_name.get(hook.key.removeprefix("service:"))
            if svc_status is not None:
                svc_status.evidence = hook.evidence()
        if held:
            j.condition("Quiesced", "True", "StillHeld", summarize_thaw(held))
        else:
            j.condition("Quiesced", "False", "Resumed",
                        "every writer restored and every service resumed, each checked")
        try:
            await j.flush()
        except Exception as exc:  # the group may be gone; the thaw itself is done
            log.warning("%s: status not written after the thaw: %s", self.ctx.qualified, exc)
        return bool(held)

    async def _gather_kept(self, plan: Plan) -> None:
        """What each service keeps with its snapshots (read after the thaw, on its session),
        bounded; a service that cannot say is restored without it."""
        async def one(hook: ServiceHook) -> tuple[str, dict[str, str]]:
            try:
                return hook.key, await asyncio.wait_for(hook.keep_with_snapshot(), KEEP_TIMEOUT)
            except Exception as exc:  # never a reason to fail a group whose thaw is done
                log.warning("%s: %s keeps nothing with its snapshots: %s", self.ctx.qualified, hook.key, exc)
                return hook.key, {}
        found = await asyncio.gather(*(one(s.hook) for s in plan.services))
        self._kept = {key.removeprefix("service:"): kept for key, kept in found if kept}

    async def _annotate_snapshots(self) -> None:
        """Put what the services kept on their snapshots; a failure leaves a restore without it
        (and says so), never the group failed."""
        ctx = self.ctx
        for svc in self.journal.status.services:
            kept = self._kept.get(svc.name)
            if not kept:
                continue
            for snap in svc.volume_snapshots:
                try:
                    await ctx.cluster.annotate_snapshot(ctx.namespace, snap.name, kept)
                except StepError as exc:
                    text = f"{snap.name}: what a restore of {svc.name} needs was not kept: {exc.message}"
                    self.journal.event("Warning", "BackupNotKept", text)
                    svc.evidence = {**(svc.evidence or {}), "backupKept": f"not kept ({text})"}

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

    async def _discard_snapshots(self) -> None:
        """After a failed attempt, delete its snapshots: uncut ones prove nothing, and cut ones
        belong to an attempt that did not finish (a retry cuts its own). Only snapshots labelled
        with this group's uid are touched: a name another object holds is left alone."""
        ctx = self.ctx
        try:
            found = await ctx.cluster.list_snapshots(
                ctx.namespace, group_selector(ctx.group_uid, self.attempt))
        except StepError as exc:
            log.warning("%s: snapshots of the failed attempt not listed: %s", ctx.qualified, exc)
            found = []
        ours = {s.name for s in found}
        errors: dict[str, str] = {}
        planned = {s.name for svc in self.journal.status.services for s in svc.volume_snapshots}
        for name in sorted(planned - ours):  # not listed: the list failed, or not created by us
            try:
                info = await ctx.cluster.get_snapshot(ctx.namespace, name)
            except StepError as exc:
                errors[name] = f"not read, so not deleted: {exc.message}"
                continue
            if info is not None and info.owner_uid == ctx.group_uid:
                ours.add(name)
        for name in sorted(ours):
            try:
                await ctx.cluster.delete_snapshot(ctx.namespace, name)
            except StepError as exc:
                errors[name] = f"deleting it failed: {exc.message}"
        for svc in self.journal.status.services:
            for snap in svc.volume_snapshots:
                if snap.name in errors:
                    snap.error = errors[snap.name]
                elif snap.name in ours:
                    snap.error = "deleted: its attempt failed"
                else:
                    snap.error = "not created by this group (the name is taken or it never " \
                                 "landed): left alone"

    # -- after the window ---------------------------------------------------------------

    async def _finalize(self) -> Failure | None:
        """After the window: wait for readyToUse, judge consistency, succeed."""
        j, ctx = self.journal, self.ctx
        j.phase(Phase.FINALIZING, "waiting for snapshots to be ready")
        await j.flush()
        names = {s.name for svc in j.status.services for s in svc.volume_snapshots}
        try:
            infos = await ctx.cluster.wait_snapshots(
                ctx.namespace, group_selector(ctx.group_uid, self.attempt), names, "ready",
                timeout=self.ready_timeout)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, StepError) else \
                "SnapshotsNotReady" if isinstance(exc, TimeoutError) else "InternalError"
            await self._discard_snapshots()
            return Failure(reason, f"snapshots were cut but did not become ready: {exc}", True)
        self._apply_snapshot_infos(infos)
        await self._annotate_snapshots()
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
        return None

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

    def _describe(self, plan: Plan) -> str:
        writers = ", ".join(h.key.removeprefix("writer:") for h in plan.writers) or "none"
        pvcs = ", ".join(p for s in plan.services for p in s.pvcs)
        return f"writers: {writers}; volumes: {pvcs}; snapshot class {plan.snapshot_class}"


def gone_failure(exc: StepError) -> Failure | None:
    """The failure of a run whose group object is gone (a status write found no such group):
    the group was deleted, whatever noticed it first; never retried."""
    if exc.reason != GROUP_GONE:
        return None
    return Failure("GroupDeleted", "the SnapshotGroup object is gone (removed without its delete "
                   f"handler, e.g. its finalizer stripped): {exc.message}", retriable=False)


def _held_targets(plan: Plan) -> set[str] | None:
    """The targets other groups hold that stand in the plan's way (empty for a sound plan), or
    None when a problem no wait for a Lease can clear stands there too."""
    if any(p.held_target is None for p in plan.problems):
        return None
    return {p.held_target for p in plan.problems if p.held_target is not None}


def _plan_failure(plan: Plan) -> Failure:
    detail = "; ".join(f"{p.field_path}: {p.message}" for p in plan.problems)
    reason = plan.problems[0].reason
    return Failure(reason, f"nothing was touched: {detail}", reason in PLAN_RETRIABLE)


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
