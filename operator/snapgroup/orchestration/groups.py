"""Runs groups: one run at a time per group, recovery of interrupted runs, aborts on deletion."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError

from snapgroup.api.snapshotgroup import Phase, SnapshotGroupSpec, SnapshotGroupStatus
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.exclusion import release_targets
from snapgroup.orchestration.journal import GroupRef, Journal
from snapgroup.orchestration.protocol import READY_TIMEOUT, GroupRun
from snapgroup.orchestration.recovery import discard_snapshots, undo_journal
from snapgroup.orchestration.snapshots import group_selector
from snapgroup.ports import Cluster, Connectors

log = logging.getLogger("snapgroup.groups")

MAX_WINDOWS = 8
"""Default bound on freeze windows open at once: each window's length stays close to a lone
group's when many groups start together (writers drain and snapshots are cut with less
contention), and later groups wait with nothing frozen."""


class GroupRunner:
    """The operator's in-process view of the groups it is working on."""

    def __init__(
        self, cluster: Cluster, connectors: Connectors, ready_timeout: float = READY_TIMEOUT,
        max_windows: int = MAX_WINDOWS,
    ) -> None:
        self.window_slots = asyncio.Semaphore(max_windows)
        """Freeze windows open at once, operator-wide."""
        self.cluster = cluster
        self.connectors = connectors
        self.ready_timeout = ready_timeout
        self.runs: dict[str, GroupRun] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._busy: dict[str, tuple[asyncio.Lock, int]] = {}

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
            cluster=self.cluster, connectors=self.connectors,
        )

    def start(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Reconcile in the background, so the group's deletion can reach a running window.

        (kopf handles one event of an object at a time: a deletion would wait behind a
        handler that runs the whole protocol.)
        """
        if ref.uid in self.tasks:
            return
        task = asyncio.create_task(self.reconcile(ref, spec, status), name=f"group {ref.qualified}")
        self.tasks[ref.uid] = task
        task.add_done_callback(lambda done: self._finished(ref, done))

    def _finished(self, ref: GroupRef, task: asyncio.Task[None]) -> None:
        self.tasks.pop(ref.uid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("group %s/%s: run failed", ref.namespace, ref.name, exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        """The operator is stopping: thaw every open window, then let the runs end."""
        for run in list(self.runs.values()):
            run.abort("OperatorStopping", "the operator stopped during the group's freeze window")
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=timeout)

    async def reconcile(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """Run a new group, recover an interrupted one, leave a finished one alone."""
        async with self._exclusive(ref.uid):
            current = SnapshotGroupStatus.model_validate(status or {})
            if current.phase.terminal:
                return
            journal = Journal(self.cluster, ref, current)
            ctx = self._context(ref)
            try:
                parsed = SnapshotGroupSpec.model_validate(spec)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                await journal.fail("InvalidSpec", f"spec.{where}: {first['msg']}; nothing was touched")
                return
            run = GroupRun(ctx, journal, parsed, self.ready_timeout, window_slots=self.window_slots)
            if current.phase == Phase.FINALIZING:
                # The window had closed and everything was resumed: only readiness is left.
                await run.finalize()
                return
            if current.start_time is not None:
                await self._recover(ctx, journal, parsed)
                return
            self.runs[ref.uid] = run
            try:
                await run.run()
            finally:
                self.runs.pop(ref.uid, None)

    async def _recover(
        self, ctx: HookContext, journal: Journal, spec: SnapshotGroupSpec | None
    ) -> None:
        undone = await undo_journal(ctx, journal)
        discarded = await discard_snapshots(ctx, journal)
        if spec is not None:
            await release_targets(ctx, spec)
        summary = "; ".join(undone) or "nothing had been applied"
        await journal.fail(
            "OperatorRestarted",
            f"the operator restarted during the group (phase {journal.status.phase.value}); "
            f"undone: {summary}; {discarded} snapshot(s) of the interrupted run deleted",
        )

    async def deleted(self, ref: GroupRef, spec: dict[str, Any], status: dict[str, Any]) -> None:
        """The group is being deleted: abort a running window and wait until it has thawed.

        A group interrupted by an operator crash and deleted while the operator was down is
        recovered here, since nothing else will see it again.
        """
        run = self.runs.get(ref.uid)
        if run is not None:
            run.abort("GroupDeleted", "the SnapshotGroup was deleted during its run")
        async with self._exclusive(ref.uid):
            if spec.get("snapshotDeletionPolicy") == "Retain":
                await self._retain_snapshots(ref)
            if run is not None or self.is_terminal(status):
                return
            current = SnapshotGroupStatus.model_validate(status or {})
            if current.start_time is not None:
                try:
                    parsed: SnapshotGroupSpec | None = SnapshotGroupSpec.model_validate(spec)
                except ValidationError:
                    parsed = None  # it never ran, so it holds no Lease
                await self._recover(self._context(ref), Journal(self.cluster, ref, current), parsed)

    async def _retain_snapshots(self, ref: GroupRef) -> None:
        """snapshotDeletionPolicy Retain: the group's snapshots stay when it goes."""
        snapshots = await self.cluster.list_snapshots(ref.namespace, group_selector(ref.name))
        for snap in snapshots:
            await self.cluster.orphan_snapshot(ref.namespace, snap.name)

    @staticmethod
    def is_terminal(status: dict[str, Any] | None) -> bool:
        """True when a group status says it will not act again."""
        phase = (status or {}).get("phase")
        return phase in (Phase.SUCCEEDED.value, Phase.FAILED.value)
