"""Runs groups: one run at a time per group, attempts and their retries, recovery of interrupted
runs, aborts on deletion and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError

from snapgroup.api.snapshotgroup import HookState, Phase, SnapshotGroupSpec, SnapshotGroupStatus
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.exclusion import release_targets
from snapgroup.orchestration.journal import GroupRef, Journal
from snapgroup.orchestration.protocol import READY_TIMEOUT, Failure, GroupRun, gone_failure
from snapgroup.orchestration.recovery import discard_snapshots, undo_journal
from snapgroup.orchestration.snapshots import group_selector
from snapgroup.orchestration.window import uncancellable
from snapgroup.ports import Cluster, Connectors, StepError

log = logging.getLogger("snapgroup.groups")

MAX_WINDOWS = 8
"""Default bound on freeze windows open at once: each window's length stays close to a lone
group's when many groups start together (writers drain and snapshots are cut with less
contention), and later groups wait with nothing frozen."""
RETRY_DELAY = 5.0
"""Pause before the second attempt; it doubles for each further one (capped at RETRY_DELAY_MAX)."""
RETRY_DELAY_MAX = 300.0
DELETE_WAIT = 5.0
"""How long the delete handler waits for a run to stop before it asks kopf to call again."""


class GroupRunner:
    """The operator's in-process view of the groups it is working on."""

    def __init__(
        self, cluster: Cluster, connectors: Connectors, ready_timeout: float = READY_TIMEOUT,
        max_windows: int = MAX_WINDOWS, retry_delay: float = RETRY_DELAY,
        operator_id: str = "snapgroup", server_lease_namespace: str | None = None,
    ) -> None:
        self.window_slots = asyncio.Semaphore(max_windows)
        """Freeze windows open at once, operator-wide."""
        self.cluster = cluster
        self.connectors = connectors
        self.ready_timeout = ready_timeout
        self.retry_delay = retry_delay
        self.operator_id = operator_id
        self.server_lease_namespace = server_lease_namespace
        self.runs: dict[str, GroupRun] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._busy: dict[str, tuple[asyncio.Lock, int]] = {}
        self._deleting: set[str] = set()
        self._stopping = False

    @asynccontextmanager
    async def _exclusive(self, uid: str) -> AsyncIterator[None]:
        """One handler at a time per group; the lock is dropped when nobody holds or wants it."""
        lock, users = self._busy.get(uid, (asyncio.Lock(), 0))
        self._busy[uid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._busy[uid]
            if users == 1:
                del self._busy[uid]
            else:
                self._busy[uid] = (lock, users - 1)

    def _context(self, ref: GroupRef) -> HookContext:
        return HookContext(
            namespace=ref.namespace, group=ref.name, group_uid=ref.uid,
            cluster=self.cluster, connectors=self.connectors, operator_id=self.operator_id,
            server_lease_namespace=self.server_lease_namespace,
        )

    def start(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Reconcile in the background, so the group's deletion can reach a running window.

        (kopf handles one event of an object at a time: a deletion would wait behind a
        handler that runs the whole protocol.)
        """
        if ref.uid in self.tasks or self._stopping:
            return
        task = asyncio.create_task(self.reconcile(ref, spec, status), name=f"group {ref.qualified}")
        self.tasks[ref.uid] = task
        task.add_done_callback(lambda done: self._finished(ref, done))

    def _finished(self, ref: GroupRef, task: asyncio.Task[None]) -> None:
        self.tasks.pop(ref.uid, None)
        self._deleting.discard(ref.uid)
        if not task.cancelled() and task.exception() is not None:
            log.error("group %s/%s: run failed", ref.namespace, ref.name, exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        """The operator is stopping: thaw every open window, leave queued groups untouched, and
        let the runs end; the next operator (a standby, or this one restarted) goes on."""
        self._stopping = True
        for uid, task in list(self.tasks.items()):
            run = self.runs.get(uid)
            if run is not None and run.in_window:
                run.abort("OperatorStopping",
                          "the operator stopped during the group's freeze window", retriable=True)
            else:
                task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=timeout)

    async def reconcile(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Run a new group, recover an interrupted one, leave a finished one alone."""
        async with self._exclusive(ref.uid):
            current = SnapshotGroupStatus.model_validate(status or {})
            if current.phase.terminal:
                return
            journal = Journal(self.cluster, ref, current)
            try:
                parsed = SnapshotGroupSpec.model_validate(spec)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                await journal.fail("InvalidSpec", f"spec.{where}: {first['msg']}; nothing was touched")
                return
            try:
                await self._attempts(ref, journal, parsed)
            except asyncio.CancelledError:
                if ref.uid not in self._deleting:
                    raise  # the operator is stopping: the next one goes on from the journal
                when = "between two attempts" if journal.status.attempts else "before it froze anything"
                await journal.fail("GroupDeleted", f"the SnapshotGroup was deleted {when}; "
                                   "nothing is frozen")

    async def _attempts(self, ref: GroupRef, journal: Journal, spec: SnapshotGroupSpec) -> None:
        """The current attempt (recovered, finishing, or new), then retries within backoffLimit."""
        ctx = self._context(ref)
        status = journal.status
        if status.phase == Phase.FINALIZING:
            # The window had closed and everything was resumed: only readiness is left.
            failure = await self._run(ref, journal, spec, finalize_only=True)
        elif status.start_time is not None and (status.hooks or status.services):
            failure = await uncancellable(self._recover(ctx, journal))
        else:
            # New, or interrupted before touching anything: (re)start the attempt.
            failure = await self._run(ref, journal, spec)
        while failure is not None:
            if self._stopping and failure.retriable and status.attempt <= spec.backoff_limit:
                # Everything was undone; the next operator process makes the next attempt.
                await journal.next_attempt(failure.reason, failure.message, 0.0)
                return
            if not failure.retriable or status.attempt > spec.backoff_limit or self._stopping:
                tried = f" (attempt {status.attempt} of {spec.backoff_limit + 1})" \
                    if status.attempts else ""
                await journal.fail(failure.reason, failure.message + tried)
                return
            delay = min(self.retry_delay * 2 ** len(status.attempts), RETRY_DELAY_MAX)
            await journal.next_attempt(failure.reason, failure.message, delay)
            await asyncio.sleep(delay)  # Job-like backoff between attempts
            failure = await self._run(ref, journal, spec)

    async def _run(
        self, ref: GroupRef, journal: Journal, spec: SnapshotGroupSpec, finalize_only: bool = False
    ) -> Failure | None:
        run = GroupRun(self._context(ref), journal, spec, self.ready_timeout,
                       window_slots=self.window_slots)
        self.runs[ref.uid] = run
        try:
            return await (run.finalize() if finalize_only else run.run())
        except StepError as exc:
            # Only a journal write that kept failing (an API outage) gets here, before a window
            # opened or after its thaw: the attempt's snapshots go and the attempt is retried.
            log.warning("group %s: status not written (%s); the attempt failed", ref.qualified,
                        exc.message)
            try:
                await discard_snapshots(self._context(ref), journal)
            except Exception as err:  # left to their owner reference: they go with the group
                log.warning("group %s: snapshots of the attempt not deleted: %s", ref.qualified, err)
            return gone_failure(exc) or Failure(
                exc.reason, f"the status could not be written: {exc.message}", retriable=True)
        finally:
            self.runs.pop(ref.uid, None)

    async def _recover(self, ctx: HookContext, journal: Journal) -> Failure:
        """Undo what an interrupted attempt's journal says may have been applied."""
        phase = journal.status.phase.value
        undone = await undo_journal(ctx, journal)
        discarded = await discard_snapshots(ctx, journal)
        await release_targets(ctx, journal.status.targets)
        held = [h.name for h in journal.status.hooks if h.state == HookState.FAILED and h.stage == "Post"]
        summary = "; ".join(undone) or "nothing had been applied"
        if journal.condition_status("Quiesced") is not None:  # the interrupted window's word
            if held:
                journal.condition("Quiesced", "True", "StillHeld", "after the restart, not undone: "
                                  + "; ".join(u for u in undone if u.split(": ", 1)[0] in held))
            else:
                journal.condition("Quiesced", "False", "Resumed",
                                  "undone after the operator restarted, each undo checked")
        return Failure(
            "OperatorRestarted",
            f"the operator restarted during the group (phase {phase}); undone: {summary}; "
            f"{discarded} snapshot(s) of the interrupted attempt deleted",
            retriable=not held,
        )

    def vanished(self, ref: GroupRef) -> None:
        """The group object is gone without its delete handler having run (its finalizer was
        removed by hand): stop its run at once, thawing an open window. Its status cannot be
        written any more; its Events still say what happened."""
        if ref.uid in self.tasks:
            self._stop_for_deletion(ref, "the SnapshotGroup object was removed (its finalizer "
                                    "stripped) during its run")

    def _stop_for_deletion(self, ref: GroupRef, message: str) -> asyncio.Task[None] | None:
        """Abort the group's run (an open window thaws) or, between attempts, cancel it; the
        run's task, if there is one."""
        self._deleting.add(ref.uid)
        task = self.tasks.get(ref.uid)
        run = self.runs.get(ref.uid)
        if run is not None:
            run.abort("GroupDeleted", message)
        elif task is not None:
            task.cancel()  # between attempts: nothing is frozen
        return task

    async def deleted(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> bool:
        """The group is being deleted: stop its run (thawing an open window) and clean up.

        Returns False when the run is still thawing after DELETE_WAIT seconds: call again
        later. A group interrupted by an operator crash and deleted while the operator was down
        is recovered here, since nothing else will see it again.
        """
        task = self._stop_for_deletion(ref, "the SnapshotGroup was deleted during its run")
        if task is not None:
            await asyncio.wait({task}, timeout=DELETE_WAIT)
            if not task.done():
                return False
        async with self._exclusive(ref.uid):
            if spec.get("snapshotDeletionPolicy") == "Retain":
                await self._retain_snapshots(ref)
            if task is not None or self.is_terminal(status):
                self._deleting.discard(ref.uid)
                return True
            current = SnapshotGroupStatus.model_validate(status or {})
            if current.start_time is not None:
                ctx = self._context(ref)
                journal = Journal(self.cluster, ref, current)
                failure = await uncancellable(self._recover(ctx, journal))
                await journal.fail(failure.reason, failure.message)
        self._deleting.discard(ref.uid)
        return True

    async def _retain_snapshots(self, ref: GroupRef) -> None:
        """snapshotDeletionPolicy Retain: the group's snapshots stay when it goes."""
        snapshots = await self.cluster.list_snapshots(ref.namespace, group_selector(ref.uid))
        for snap in snapshots:
            await self.cluster.orphan_snapshot(ref.namespace, snap.name)

    @staticmethod
    def is_terminal(status: dict[str, Any] | None) -> bool:
        """True when a group status says it will not act again."""
        phase = (status or {}).get("phase")
        return phase in (Phase.SUCCEEDED.value, Phase.FAILED.value)
