"""Running a SnapshotGroupRestore: read, plan, create, wait until the restored services serve.

A clone is level-triggered: every object the restore creates carries its uid label, a create
that finds its own object goes on, and a run interrupted by a restart simply runs again. A
failure removes everything carrying the label, so the target namespace is left as it was.

In place (`in_place.InPlace`), a failure or a restart before the point of no return rolls back
to the previous volumes and workloads; after it, the restore only goes forward.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from snapgroup import failpoints
from snapgroup.api.base import parse_duration
from snapgroup.api.restore import (
    KIND,
    RESTORE_UID_LABEL,
    PreviousVolumes,
    RestorePhase,
    SnapshotGroupRestoreSpec,
)
from snapgroup.hooks.restore_prep import prepare_restore
from snapgroup.ports import ClusterObjects, PlanError, StepError

from .in_place import InPlace, started_words
from .in_place_plan import InPlacePlan, plan_in_place
from .restore_addresses import address_rewrites, rewrite_object
from .restore_plan import RestorePlan, RestoreRef, SourceWorld, build, select
from .restore_steps import (
    RestoreFailed,
    all_at_once,
    condition,
    first_error,
    is_bound,
    is_ready,
    now,
    read_world,
    time_left,
    write_status,
    write_status_surely,
)

log = logging.getLogger("snapgroup.restore")
JSON = dict[str, Any]

CLEANUP_TIMEOUT = 120.0
"""How long removing a failed restore's objects may take."""
_CLEANUP_ORDER = ("Deployment", "StatefulSet", "Service", "Secret", "ConfigMap", "PersistentVolumeClaim",
                  "VolumeSnapshot")


class Restorer:
    """Runs restores, one task each; `start` is idempotent, `stop` cancels a running one."""

    def __init__(self, objects: ClusterObjects, operator_image: str, operator_id: str = "snapgroup") -> None:
        self.objects = objects
        self.operator_image = operator_image
        self.operator_id = operator_id
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, ref: RestoreRef, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Run the restore unless it finished or runs already."""
        phase = status.get("phase")
        if phase in (RestorePhase.SUCCEEDED, RestorePhase.FAILED) or ref.uid in self._tasks:
            return
        resumed = phase == RestorePhase.RESTORING
        task = asyncio.create_task(self.run(ref, dict(spec), resumed, status.get("swapped") is True),
                                   name=f"restore {ref.namespace}/{ref.name}")
        self._tasks[ref.uid] = task
        task.add_done_callback(lambda _: self._tasks.pop(ref.uid, None))

    async def stop(self, ref: RestoreRef, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """The restore is being deleted: stop its run and, unless it Succeeded (a finished clone
        is its owner's), remove what it created, or in place roll back (or, past the point of no
        return, finish); status is the one the deleted object showed.

        Also for a restore deleted while no operator ran, or whose own clean-up failed: its
        finalizer keeps it until this has run."""
        task = self._tasks.pop(ref.uid, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        current = await self.objects.get(KIND, ref.namespace, ref.name)
        if current is not None:
            status = current.get("status") or {}
        if status.get("phase") == RestorePhase.SUCCEEDED:
            return
        parsed = SnapshotGroupRestoreSpec.model_validate(dict(spec))
        if not parsed.in_place:
            await self._clean_up(ref, parsed.target_namespace)
            return
        steps = InPlace(self.objects, ref, self.operator_id, lambda s: self._write(ref, s))
        await steps.hold_touched()
        try:
            if status.get("swapped") is True:
                await steps.finish(parsed.previous_volumes)
            else:
                await steps.roll_back()
        finally:
            await steps.release()

    async def close(self) -> None:
        """Operator shutdown: cancel runs; each resumes from the cluster's state on restart."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(
        self, ref: RestoreRef, raw_spec: JSON, resumed: bool = False, swapped: bool = False
    ) -> None:
        """One restore, to Succeeded or Failed; a cancellation (shutdown) leaves it to resume.

        resumed: an earlier run got as far as creating objects; a clone whose plan fails now
        removes them rather than saying nothing was created, an in-place restore rolls back, or
        (swapped: past its point of no return) finishes."""
        spec = SnapshotGroupRestoreSpec.model_validate(raw_spec)
        if spec.in_place:
            await self._run_in_place(ref, spec, resumed, swapped)
            return
        started = time.monotonic()
        try:
            plan = await self.plan(ref, spec)
        except Exception as exc:
            reason, problem = _plan_problem(exc, ref)
            if resumed:
                await self._fail(ref, spec.clone_target, reason, problem, started)
            else:
                await self._report_plan_failure(ref, reason, problem)
            return
        await self._write(ref, {
            "phase": RestorePhase.RESTORING, "startTime": now(), "message": "creating the clone",
            "earliestSnapshotTime": plan.earliest_cut,
            "conditions": [condition("Planned", "True", "Planned", _plan_summary(plan))],
        })
        await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Normal", "Restoring",
                                        f"cloning into {spec.clone_target}: {_plan_summary(plan)}")
        try:
            budget = parse_duration(spec.timeout).total_seconds()
            async with asyncio.timeout(budget):
                status = await first_error(self._apply(ref, spec, plan, started + budget))
        except (StepError, RestoreFailed, TimeoutError) as exc:
            reason = getattr(exc, "reason", "RestoreTimedOut")
            message = getattr(exc, "message", None) or f"not done within {spec.timeout}: {exc}"
            await self._fail(ref, spec.clone_target, reason, message, started)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave half a clone behind
            log.exception("restore %s/%s failed", ref.namespace, ref.name)
            await self._fail(ref, spec.clone_target, "InternalError",
                             f"{type(exc).__name__}: {exc}", started)
            return
        seconds = round(time.monotonic() - started, 3)
        message = f"clone in {spec.clone_target} serving the data of the cut, {seconds:.1f}s"
        await self._write(ref, {
            **status, "phase": RestorePhase.SUCCEEDED, "completionTime": now(), "seconds": seconds,
            "earliestSnapshotTime": plan.earliest_cut,
            "message": message,
            "conditions": [condition("Planned", "True", "Planned", _plan_summary(plan)),
                           condition("Restored", "True", "WorkloadsReady", message)],
        })
        await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Normal", "Restored", message)

    async def _run_in_place(
        self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec, resumed: bool, swapped: bool
    ) -> None:
        started = time.monotonic()
        steps = InPlace(self.objects, ref, self.operator_id, lambda status: self._write(ref, status))
        if resumed:
            await steps.hold_touched()
            keep = False
            try:
                if swapped:
                    await self._finish_in_place(ref, spec, steps, started, None)
                else:  # the operator stopped inside the restore, before its point of no return
                    await self._roll_back(ref, steps, "OperatorRestarted",
                                          "the operator stopped while the restore ran", started)
            except asyncio.CancelledError:
                keep = True
                raise
            finally:
                await steps.release(keep=keep)
            return
        try:
            plan = await self.plan_in_place(ref, spec)
        except Exception as exc:
            await self._report_plan_failure(ref, *_plan_problem(exc, ref))
            return
        await self._write(ref, {
            "phase": RestorePhase.RESTORING, "startTime": now(), "message": "restoring scratch claims",
            "earliestSnapshotTime": plan.earliest_cut, "swapped": False,
            "conditions": [condition("Planned", "True", "Planned", plan.summary())],
        })
        await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Normal", "Restoring",
                                        plan.summary())
        budget = parse_duration(spec.timeout).total_seconds()
        keep = False
        try:
            try:
                async with asyncio.timeout(budget):
                    await steps.hold(plan.targets, started + budget)
                    plan = await self._planned_again(ref, spec, plan)
                    stopped_at = await first_error(steps.run(plan, started + budget))
            except (StepError, RestoreFailed, TimeoutError, failpoints.Injected) as exc:
                reason = getattr(exc, "reason", "FailpointInjected" if isinstance(exc, failpoints.Injected)
                                 else "RestoreTimedOut")
                message = getattr(exc, "message", None) or (
                    str(exc) if isinstance(exc, failpoints.Injected) else f"not done within {spec.timeout}")
                await self._roll_back(ref, steps, reason, message, started)
                return
            except asyncio.CancelledError:
                raise  # shutdown or deletion: whoever runs next rolls back
            except Exception as exc:  # a bug must not leave the namespace half swapped
                log.exception("restore %s/%s failed", ref.namespace, ref.name)
                await self._roll_back(ref, steps, "InternalError", f"{type(exc).__name__}: {exc}", started)
                return
            await self._write_surely(ref, {
                "swapped": True, "message": "the services answer on the restored data; resuming writers"})
            await self._finish_in_place(ref, spec, steps, started, stopped_at, plan)
        except asyncio.CancelledError:
            keep = True  # whoever goes on (a deletion's stop, the next operator) takes them over
            raise
        finally:
            await steps.release(keep=keep)

    async def _planned_again(self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec,
                             planned: InPlacePlan) -> InPlacePlan:
        """The plan again once the Leases are held: nothing changes the targets from here on, and
        what the restore swaps is what the world holds now (a restore that ran while this one
        waited has moved the claims to other volumes)."""
        try:
            fresh = await self.plan_in_place(ref, spec)
        except PlanError as exc:
            raise RestoreFailed(exc.reason, f"{exc.field_path}: {exc.message}") from None
        grown = sorted(set(fresh.targets) - set(planned.targets))
        if grown:
            raise RestoreFailed("TargetsChanged", f"while the restore waited its turn, {', '.join(grown)} "
                                "came to belong to it; apply it again to plan anew")
        return fresh

    async def _finish_in_place(
        self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec, steps: InPlace, started: float,
        stopped_at: float | None, plan: InPlacePlan | None = None,
    ) -> None:
        finished = await steps.finish(spec.previous_volumes)
        claims, writers = await self._swapped_claims(ref, spec, finished.claims), finished.writers
        await steps.release()  # before the status says it is over
        seconds = round(time.monotonic() - started, 3)
        stopped = None if stopped_at is None else round(finished.writers_back - stopped_at, 3)
        kept = "kept (Released, Retain)" if spec.previous_volumes == "Retain" else "deleted"
        late = "" if all(w["ready"] for w in writers) else started_words(writers)
        message = (f"in place: {len(claims)} claim(s) on volumes restored from the group, services and "
                   f"writers running{late}; previous volumes {kept}"
                   + (f"; writers stopped {stopped:.1f}s" if stopped is not None else "")
                   + (f"; {seconds:.1f}s in all" if plan is not None else ""))
        await self._write_surely(ref, {
            "phase": RestorePhase.SUCCEEDED, "completionTime": now(), "message": message, "claims": claims,
            "workloads": writers, **({"seconds": seconds} if plan is not None else {}),
            "writersStoppedSeconds": stopped,
            "conditions": [condition("Restored", "True", "Swapped", message)],
        })
        with contextlib.suppress(StepError):  # the status says it; the Event is news
            await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Normal", "Restored",
                                            message)

    async def _swapped_claims(self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec,
                              settled: list[JSON]) -> list[JSON]:
        """Every swapped claim's entry: those settled now, and those a finish cut short had
        settled before (the status listed them when the swap began)."""
        try:
            current = await self.objects.get(KIND, ref.namespace, ref.name) or {}
        except StepError:
            return settled
        kept = spec.previous_volumes == PreviousVolumes.RETAIN
        entries = {c["pvc"]: {**c, "previousVolumeKept": kept}
                   for c in (current.get("status") or {}).get("claims") or []}
        return list((entries | {c["pvc"]: c for c in settled}).values())

    async def _roll_back(
        self, ref: RestoreRef, steps: InPlace, reason: str, message: str, started: float
    ) -> None:
        try:  # news only: the rollback must not wait for it
            await self._write(ref, {"message": f"{message}; rolling back"})
            await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Warning", reason,
                                            f"{message}; rolling back")
        except StepError as exc:
            log.warning("restore %s/%s: rolling back, not recorded (%s)", ref.namespace, ref.name, exc)
        done = await steps.roll_back()
        await steps.release()  # before the status says it is over
        text = f"{message}; {done}"
        await self._write_surely(ref, {
            "phase": RestorePhase.FAILED, "completionTime": now(), "message": text,
            "seconds": round(time.monotonic() - started, 3),
            "conditions": [condition("Restored", "False", reason, text)],
        })
        with contextlib.suppress(StepError):  # the status says it; the Event is news
            await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Warning", reason, text)

    async def plan_in_place(self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec) -> InPlacePlan:
        """Read what an in-place plan needs and decide; PlanError before anything is created."""
        world = await self._world(ref, spec)
        names = sorted({str(p["spec"]["volumeName"]) for p in world.pvcs.values()
                        if (p.get("spec") or {}).get("volumeName")})
        found = await asyncio.gather(*(self.objects.get("PersistentVolume", "", n) for n in names))
        volumes = {v["metadata"]["name"]: v for v in found if v is not None}
        return plan_in_place(ref, spec, world, volumes, prepare_restore, self.operator_image)

    async def plan(self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec) -> RestorePlan:
        """Read what the plan needs and decide; PlanError before anything is created."""
        world = await self._world(ref, spec)
        selection = select(ref, spec, world)
        secrets, maps = await asyncio.gather(
            asyncio.gather(*(self.objects.get("Secret", ref.namespace, n) for n in selection.secrets)),
            asyncio.gather(*(self.objects.get("ConfigMap", ref.namespace, n) for n in selection.config_maps)),
        )
        plan = build(ref, selection, dict(zip(selection.secrets, secrets, strict=True)),
                     dict(zip(selection.config_maps, maps, strict=True)), world.snapshots,
                     prepare_restore, self.operator_image)
        await self._check_conflicts(ref, spec.clone_target, plan)
        return plan

    async def _world(self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec) -> SourceWorld:
        return await read_world(self.objects, ref.namespace, spec.group_name,
                                spec.target_namespace or ref.namespace)

    async def _check_conflicts(self, ref: RestoreRef, target: str, plan: RestorePlan) -> None:
        found = await asyncio.gather(*(self.objects.get(kind, target, name) for kind, name in plan.created()))
        for (kind, name), obj in zip(plan.created(), found, strict=True):
            if obj is not None and not _ours(obj, ref):
                raise PlanError("TargetObjectExists", "spec.targetNamespace",
                                f"{kind} {name} already exists in {target} and is not this restore's; "
                                "a clone never overwrites anything")
        found = await asyncio.gather(*(self.objects.get(kind, target, name) for kind, name in plan.absent))
        for (kind, name), obj in zip(plan.absent, found, strict=True):
            if obj is not None:
                raise PlanError("TargetObjectExists", "spec.targetNamespace",
                                f"{kind} {name} exists in {target} but not in {ref.namespace}: a copied "
                                "workload's optional reference would read the target's object")

    async def _apply(
        self, ref: RestoreRef, spec: SnapshotGroupRestoreSpec, plan: RestorePlan, deadline: float
    ) -> JSON:
        """Create everything, wait for it to serve; the caller's timeout bounds it all. The waits
        end just before that deadline, so a timeout names what was not ready."""
        target = spec.clone_target
        for volume in plan.volumes:
            await self._create(ref, "VolumeSnapshotContent", "", volume.content_copy)
            await self._create(ref, "VolumeSnapshot", target, volume.snapshot_copy)
        await all_at_once(self._create(ref, "PersistentVolumeClaim", target, v.claim) for v in plan.volumes)
        created = await all_at_once(self._create(ref, "Service", target, s) for s in plan.services)
        sources = {s["metadata"]["name"]: s for s in await self.objects.list("Service", ref.namespace)}
        rewrites = address_rewrites(
            [(sources[c["metadata"]["name"]], c) for c in created if c["metadata"]["name"] in sources],
            ref.namespace, target)
        objects: list[JSON] = [{"kind": "Service", "name": s["metadata"]["name"]} for s in plan.services]
        for body in [*plan.secrets, *plan.config_maps]:
            changed = rewrite_object(body, rewrites)
            await self._create(ref, body["kind"], target, body)
            objects.append({"kind": body["kind"], "name": body["metadata"]["name"],
                            **({"note": "points at the clone: " + ", ".join(changed)} if changed else {})})
        for body in plan.workloads:
            rewrite_object(body, rewrites)
            await self._create(ref, body["kind"], target, body)
        await self._write(ref, {"message": "waiting for the restored claims and workloads",
                                "objects": objects, "volumes": _volumes(plan, set())})
        await all_at_once(
            self.objects.wait("PersistentVolumeClaim", target, v.pvc, is_bound, time_left(deadline))
            for v in plan.volumes)
        workloads = await all_at_once(
            self.objects.wait(w["kind"], target, w["metadata"]["name"], is_ready, time_left(deadline))
            for w in plan.workloads if w["spec"].get("replicas", 1) > 0)
        # The claims are bound to volumes provisioned from the snapshots: the copies have done
        # their work (Retain keeps the group's backing snapshots whatever happens to them).
        for volume in plan.volumes:
            await self.objects.delete("VolumeSnapshot", target, volume.snapshot_copy["metadata"]["name"])
            await self.objects.delete("VolumeSnapshotContent", "", volume.content_copy["metadata"]["name"])
        ready = {(w["kind"], w["metadata"]["name"]): w for w in workloads}
        return {"objects": objects, "volumes": _volumes(plan, {v.pvc for v in plan.volumes}),
                "workloads": [_workload_status(w, ready, plan) for w in plan.workloads]}

    async def _create(self, ref: RestoreRef, kind: str, namespace: str, body: JSON) -> JSON:
        created = await self.objects.create(kind, namespace, body)
        if created is not None:
            return created
        existing = await self.objects.get(kind, namespace, body["metadata"]["name"])
        if existing is None or not _ours(existing, ref):
            raise RestoreFailed("TargetObjectExists",
                                f"{kind} {body['metadata']['name']} appeared in {namespace or 'the cluster'} "
                                "while the restore ran and is not its own; it was left alone")
        return existing

    async def _fail(self, ref: RestoreRef, target: str, reason: str, message: str, started: float) -> None:
        try:
            removed = await asyncio.wait_for(self._clean_up(ref, target), CLEANUP_TIMEOUT)
            after = f"removed the {removed} object(s) it had created"
        except (StepError, TimeoutError) as exc:
            after = (f"removing what it created failed ({exc}); objects labelled "
                     f"{RESTORE_UID_LABEL}={ref.uid} may remain in {target}")
        text = f"{message}; {after}"
        await self._write(ref, {
            "phase": RestorePhase.FAILED, "completionTime": now(), "message": text,
            "seconds": round(time.monotonic() - started, 3),
            "conditions": [condition("Restored", "False", reason, text)],
        })
        await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Warning", reason, text)

    async def _clean_up(self, ref: RestoreRef, target: str | None) -> int:
        """Delete every object carrying the restore's uid; returns how many there were."""
        selector = f"{RESTORE_UID_LABEL}={ref.uid}"
        removed = 0
        if target:
            for kind in _CLEANUP_ORDER:
                for obj in await self.objects.list(kind, target, selector):
                    await self.objects.delete(kind, target, obj["metadata"]["name"])
                    removed += 1
        for obj in await self.objects.list("VolumeSnapshotContent", "", selector):
            await self.objects.delete("VolumeSnapshotContent", "", obj["metadata"]["name"])
            removed += 1
        return removed

    async def _report_plan_failure(self, ref: RestoreRef, reason: str, problem: str) -> None:
        message = f"{problem}; nothing was created"
        await self._write(ref, {
            "phase": RestorePhase.FAILED, "completionTime": now(), "message": message,
            "conditions": [condition("Planned", "False", reason, message)],
        })
        await self.objects.record_event(KIND, ref.namespace, ref.name, ref.uid, "Warning", reason, message)

    async def _write_surely(self, ref: RestoreRef, status: JSON) -> None:
        """A status write the world already depends on (swapped, or the end): retried until it
        lands (or the restore is gone), since a restarted operator acts on what it says."""
        await write_status_surely(self.objects, KIND, ref.namespace, ref.name, status)

    async def _write(self, ref: RestoreRef, status: JSON) -> None:
        """Patch the status; conditions replace those of their type, the others stay."""
        await write_status(self.objects, KIND, ref.namespace, ref.name, status)


def _plan_problem(exc: Exception, ref: RestoreRef) -> tuple[str, str]:
    """Reason and sentence for a plan that failed: a refusal, a failed read, or a bug."""
    if isinstance(exc, PlanError):
        return exc.reason, f"{exc.field_path}: {exc.message}"
    if isinstance(exc, StepError):  # reading the world failed (past the client's retries)
        return exc.reason, exc.message
    log.error("planning restore %s/%s failed", ref.namespace, ref.name, exc_info=exc)
    return "InternalError", f"{type(exc).__name__}: {exc}"


def _ours(obj: JSON, ref: RestoreRef) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(RESTORE_UID_LABEL) == ref.uid


def _volumes(plan: RestorePlan, bound: set[str]) -> list[JSON]:
    return [{"pvc": v.pvc, "volumeSnapshot": v.snapshot, "service": v.service, "bound": v.pvc in bound}
            for v in plan.volumes]


def _workload_status(body: JSON, ready: Mapping[tuple[str, str], JSON], plan: RestorePlan) -> JSON:
    key = (body["kind"], body["metadata"]["name"])
    replicas = int(body["spec"].get("replicas", 1))
    seen = ready.get(key)
    ready_replicas = int(((seen or {}).get("status") or {}).get("readyReplicas") or 0)
    status: JSON = {"kind": key[0], "name": key[1], "replicas": replicas, "readyReplicas": ready_replicas,
                    "ready": seen is not None and replicas > 0}
    recovery = plan.preparations.get(f"{key[0]}/{key[1]}")
    if recovery:
        status["backupRecovery"] = recovery
    return status


def _plan_summary(plan: RestorePlan) -> str:
    workloads = ", ".join(f"{w['kind']}/{w['metadata']['name']}" for w in plan.workloads) or "no workloads"
    text = f"{len(plan.volumes)} claim(s), {workloads}, {len(plan.services)} Service(s)"
    return text + ("; " + "; ".join(plan.notes) if plan.notes else "")
