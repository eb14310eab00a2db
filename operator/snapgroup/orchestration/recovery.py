"""Recovery after the operator lost its in-memory state in the middle of a group."""

from __future__ import annotations

import logging

from snapgroup.api.snapshotgroup import HookState
from snapgroup.hooks.registry import HookContext, lookup
from snapgroup.orchestration.exclusion import holder_of
from snapgroup.orchestration.journal import Journal
from snapgroup.orchestration.snapshots import group_selector
from snapgroup.ports import GROUP_GONE, StepError

log = logging.getLogger("snapgroup.recovery")

_NEEDS_UNDO = (HookState.APPLYING, HookState.APPLIED, HookState.FAILED, HookState.UNDOING)


async def undo_journal(ctx: HookContext, journal: Journal) -> list[str]:
    """Undo, newest first, every journaled step that may have been applied and not undone.

    An entry still Applying (or failed while applying) may or may not have taken effect; the hook
    type's recover step decides what is safe to do about it.
    """
    done: list[str] = []
    for entry in reversed(journal.status.hooks):
        if entry.state not in _NEEDS_UNDO or (entry.state == HookState.FAILED and entry.stage == "Post"):
            continue
        hook_type = lookup(entry.type)
        if hook_type is None:
            message = f"hook type {entry.type!r} is no longer registered; undo it by hand"
            journal.mark(entry.name, entry.type, "Post", HookState.FAILED, message=message)
            done.append(f"{entry.name}: {message}")
            continue
        try:
            message = await hook_type.recover(
                ctx, entry.name, dict(entry.undo or {}), side_effect_done=entry.state == HookState.APPLIED
            )
            journal.mark(entry.name, entry.type, "Post", HookState.UNDONE, message=message)
        except Exception as exc:
            text = exc.message if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
            message = f"recovery failed: {text}"
            journal.mark(entry.name, entry.type, "Post", HookState.FAILED, message=message)
            log.error("%s/%s %s: %s", ctx.namespace, ctx.group, entry.name, message)
        done.append(f"{entry.name}: {message}")
    try:
        await journal.flush()
    except StepError as exc:
        if exc.reason != GROUP_GONE:
            raise
        log.warning("%s: the group is gone; its undone journal is not written", ctx.qualified)
    await clear_quiesce_records(ctx, journal)
    return done


async def clear_quiesce_records(ctx: HookContext, journal: Journal) -> None:
    """Remove this group's quiesce records from its servers' Leases for the hooks now undone."""
    undone = {h.name for h in journal.status.hooks if h.state == HookState.UNDONE}
    for found in await ctx.cluster.list_lease_records():
        # Wherever the Lease is (a server's is in the operator's namespace): the record names
        # the group by namespace, name and uid.
        if found.record.get("group") == ctx.qualified and found.record.get("key") in undone:
            await ctx.cluster.set_lease_record(found.namespace, found.name, holder_of(ctx), None)


async def discard_snapshots(ctx: HookContext, journal: Journal) -> int:
    """Delete every snapshot the interrupted attempt created: with its proof lost it proves
    nothing. Only this group's (by uid) snapshots of this attempt are touched."""
    snapshots = await ctx.cluster.list_snapshots(
        ctx.namespace, group_selector(ctx.group_uid, journal.status.attempt))
    for snap in snapshots:
        await ctx.cluster.delete_snapshot(ctx.namespace, snap.name)
    deleted = {snap.name for snap in snapshots}
    for svc in journal.status.services:
        for entry in svc.volume_snapshots:
            entry.error = "deleted: the run that cut it was interrupted" if entry.name in deleted \
                else "not found with this group's uid (never created, or somebody else's): left alone"
    return len(snapshots)
