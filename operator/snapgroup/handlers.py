"""kopf entry points. Every handler is a few lines: build the reference, delegate."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from snapgroup.api import GROUP, VERSION
from snapgroup.api.labels import FINALIZER, SCHEDULE_LABEL
from snapgroup.api.restore import PLURAL as RESTORE_PLURAL
from snapgroup.api.schedule import KIND as SCHEDULE_KIND
from snapgroup.api.schedule import PLURAL as SCHEDULE_PLURAL
from snapgroup.api.snapshotgroup import PLURAL
from snapgroup.orchestration.groups import GroupRunner
from snapgroup.orchestration.journal import GroupRef
from snapgroup.orchestration.restore_plan import RestoreRef
from snapgroup.orchestration.scheduler import Scheduler, ScheduleRef
from snapgroup.runtime import Runtime

log = logging.getLogger("snapgroup.handlers")
STOP_TIMEOUT = 60.0
"""How long a stopping operator waits for open freeze windows to thaw."""


def _ref(body: kopf.Body) -> GroupRef:
    meta = body["metadata"]
    return GroupRef(meta["namespace"], meta["name"], meta["uid"], int(meta.get("generation", 1)))


def _runner(memo: kopf.Memo) -> GroupRunner:
    runtime: Runtime = memo["runtime"]
    return runtime.runner


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure kopf, connect, and restore workloads left isolated by groups that are gone."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.posting.level = logging.WARNING  # our own Events carry the story; kopf adds errors only
    runtime = memo.get("runtime") or Runtime.from_environment()
    memo["runtime"] = runtime
    # First pass now, before any group runs: what a previous process left held is repaired.
    await runtime.safety_net.repair_once()
    memo["safety_net_stop"] = stop_event = asyncio.Event()
    memo["safety_net"] = asyncio.create_task(
        runtime.safety_net.run(stop_event.is_set), name="safety net")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG (set from --kubeconfig), read now."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    """Release clients."""
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.restorer.close()
        runtime.verifier.stop_taking()
        await runtime.runner.stop(timeout=STOP_TIMEOUT)  # open freeze windows thaw first
        await runtime.verifier.close()
        stop_event: asyncio.Event | None = memo.get("safety_net_stop")
        task: asyncio.Task[None] | None = memo.get("safety_net")
        if stop_event is not None and task is not None:
            stop_event.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        runtime.close()


@kopf.on.create(GROUP, VERSION, PLURAL)
async def group_created(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new group: run it."""
    _runner(memo).start(_ref(body), dict(body.get("spec", {})), dict(body.get("status", {})))


@kopf.on.resume(GROUP, VERSION, PLURAL)
async def group_resumed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A group seen at start-up: recover it if a run was interrupted."""
    _runner(memo).start(_ref(body), dict(body.get("spec", {})), dict(body.get("status", {})))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def group_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A group being deleted: thaw whatever it holds before the finalizer goes."""
    done = await _runner(memo).deleted(
        _ref(body), dict(body.get("spec", {})), dict(body.get("status", {})))
    if not done:
        raise kopf.TemporaryError("the group's window is still thawing", delay=2)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def group_event(body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A group removed without its delete handler (finalizer stripped): stop its run (and its
    verification) now. Any other change: verify a succeeded group that asks for it."""
    runtime: Runtime = memo["runtime"]
    if event["type"] == "DELETED":
        _runner(memo).vanished(_ref(body))
        runtime.verifier.forget(body["metadata"]["uid"])
    else:
        runtime.verifier.seen(body)


# --- ScheduledSnapshotGroup: one loop per schedule, woken early by spec edits and finished groups ---


def _scheduler(memo: kopf.Memo) -> Scheduler:
    scheduler: Scheduler = memo["scheduler"]
    return scheduler


def _schedule_owner(body: kopf.Body) -> str | None:
    owners = body["metadata"].get("ownerReferences") or []
    return next((o["uid"] for o in owners if o.get("kind") == SCHEDULE_KIND and o.get("controller")), None)


@kopf.on.startup()
async def start_schedules(memo: kopf.Memo, **_: Any) -> None:
    """Set up the scheduler over the runtime that `start` (registered, so run, before) connected."""
    runtime: Runtime = memo["runtime"]
    memo["scheduler"] = Scheduler(runtime.group_store)


@kopf.daemon(GROUP, VERSION, SCHEDULE_PLURAL, cancellation_backoff=30.0, cancellation_timeout=10.0)
async def schedule_loop(body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any) -> None:
    """Take a SnapshotGroup at every tick until the schedule is deleted or the operator stops."""
    meta = body["metadata"]
    await _scheduler(memo).run(ScheduleRef(meta["namespace"], meta["name"], meta["uid"]), stopped)


@kopf.on.event(GROUP, VERSION, SCHEDULE_PLURAL)
async def schedule_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Wake the schedule's loop when its spec changed: the change applies from the next tick."""
    meta = body["metadata"]
    _scheduler(memo).spec_seen(meta["uid"], int(meta.get("generation", 1)))


@kopf.on.event(GROUP, VERSION, PLURAL, labels={SCHEDULE_LABEL: kopf.PRESENT})
async def scheduled_group_changed(
    body: kopf.Body, event: kopf.RawEvent, memo: kopf.Memo, **_: Any
) -> None:
    """Wake a group's schedule when the group finished or vanished: status and retention follow."""
    phase = (body.get("status") or {}).get("phase")
    _scheduler(memo).group_changed(
        _schedule_owner(body), body["metadata"]["name"], phase, deleted=event["type"] == "DELETED"
    )


# --- SnapshotGroupRestore: one task per restore; objects it created carry its uid ---


def _restore_ref(body: kopf.Body) -> RestoreRef:
    meta = body["metadata"]
    return RestoreRef(meta["namespace"], meta["name"], meta["uid"])


@kopf.on.create(GROUP, VERSION, RESTORE_PLURAL)
@kopf.on.resume(GROUP, VERSION, RESTORE_PLURAL)
async def restore_seen(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new restore, or one seen at start-up: run it unless it finished."""
    runtime: Runtime = memo["runtime"]
    runtime.restorer.start(_restore_ref(body), dict(body.get("spec", {})), dict(body.get("status", {})))


@kopf.on.delete(GROUP, VERSION, RESTORE_PLURAL)
async def restore_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A restore deleted (its finalizer holds it until this ran, even if no operator ran when it
    was deleted): stop it and, unless it Succeeded, remove what it created."""
    runtime: Runtime = memo["runtime"]
    await runtime.restorer.stop(_restore_ref(body), dict(body.get("spec") or {}),
                                dict(body.get("status") or {}))
