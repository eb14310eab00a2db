"""Mutual exclusion of groups over shared targets, by coordination.k8s.io Leases.

A target is what a plan resolved, not what the spec says: each workload a group would isolate
(by name or matched by a selector), each claim it would snapshot, and each database server it
would quiesce has a Lease of its own: in the group's namespace, except a database server's,
which is in the operator's namespace, so that groups of different namespaces over one server
(however their Secrets spell its address) meet on it. A group takes all of its targets'
Leases (in one global order, so two groups never wait on each other), renews them while it holds
them, and gives them back after the thaw. Groups over disjoint targets never meet; a group whose
targets are held waits, visibly, and runs after. A Lease that outlives a crashed holder expires,
except a server's Lease that still carries a quiesce record: that server is not known to be
resumed, and the safety net repairs it first.

The holder identity is ``<group>/<uid>@<operator>``: which group, run by which operator process.
An in-place SnapshotGroupRestore takes the same Leases for the claims it swaps and the workloads
it stops, as ``restore:<restore>/<uid>@<operator>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from snapgroup.api.labels import LEASE_LABEL, lease_name
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.journal import Journal
from snapgroup.ports import StepError

log = logging.getLogger("snapgroup.exclusion")

LEASE_SECONDS = 30
"""How long a Lease outlives a holder that stopped renewing it."""
RENEW_EVERY = 10.0
"""Seconds between renewals of the Leases a group holds."""
WAIT_SLICE_SECONDS = 5.0
"""Longest single wait on a held Lease before looking again (a holder may expire silently)."""


SERVER_TARGET = "server:"


def lease_of(ctx: HookContext, key: str) -> tuple[str, str]:
    """Where a target's Lease is: ``(namespace, name)``."""
    if key.startswith(SERVER_TARGET) and ctx.server_lease_namespace:
        return ctx.server_lease_namespace, lease_name(key)
    return ctx.namespace, lease_name(key)


def holder_of(ctx: HookContext) -> str:
    """The Lease holder identity of a group run: ``<group>/<uid>@<operator>``."""
    return f"{ctx.group}/{ctx.group_uid}@{ctx.operator_id}"


RESTORE_HOLDER = "restore:"


def restore_holder(name: str, uid: str, operator_id: str) -> str:
    """The Lease holder identity of an in-place restore."""
    return f"{RESTORE_HOLDER}{name}/{uid}@{operator_id}"


def holder_title(holder: str) -> str:
    """Who a holder identity is, in words: ``SnapshotGroup x`` or ``SnapshotGroupRestore x``."""
    name = holder.split("/", 1)[0]
    if name.startswith(RESTORE_HOLDER):
        return f"SnapshotGroupRestore {name.removeprefix(RESTORE_HOLDER)}"
    return f"SnapshotGroup {name}"


@asynccontextmanager
async def exclusive_targets(
    ctx: HookContext, journal: Journal, keys: Iterable[str], wait_timeout: float,
    on_lost: Callable[[str], None],
) -> AsyncIterator[None]:
    """Hold every target's Lease for the body, renewed; wait (Waiting condition) while one is held.

    on_lost is called with the new holder if another holder takes a Lease over meanwhile (this
    run stopped renewing for longer than a Lease lasts); the caller then stops its window.
    """
    holder = holder_of(ctx)
    targets = sorted(set(keys))
    deadline = time.monotonic() + wait_timeout
    waited = False
    while True:
        busy = await _take_all(ctx, holder, targets)
        if busy is None:
            break
        if not waited:
            waited = True
            other = holder_title(busy[1])
            journal.condition("Waiting", "True", "TargetsBusy",
                              f"{other} holds a writer, volume or database server of "
                              "this group; this group runs when it is done")
            journal.status.message = f"waiting for {other}"
            await journal.flush()
            journal.event("Normal", "Waiting", journal.status.message)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepError("TargetsBusy", f"targets still held by {holder_title(busy[1])} "
                            f"after waiting {wait_timeout:.0f}s")
        await ctx.cluster.wait_lease_change(*lease_of(ctx, busy[0]),
                                            min(remaining, WAIT_SLICE_SECONDS))
    if waited:
        journal.condition("Waiting", "False", "TargetsFree", "the targets are free")
    renewal = asyncio.create_task(_renew(ctx, holder, targets, on_lost),
                                  name=f"renew leases of {ctx.qualified}")
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        await release_targets(ctx, targets)


async def _take_all(ctx: HookContext, holder: str, targets: list[str]) -> tuple[str, str] | None:
    """Take every Lease; on the first one held by another, give back what was taken."""
    taken: list[str] = []
    for key in targets:
        other = await ctx.cluster.acquire_lease(
            *lease_of(ctx, key), holder, LEASE_SECONDS,
            labels={LEASE_LABEL: key.split(":", 1)[0]},
        )
        if other is not None:
            await release_targets(ctx, taken)
            return key, other
        taken.append(key)
    return None


async def _renew(
    ctx: HookContext, holder: str, targets: list[str], on_lost: Callable[[str], None]
) -> None:
    while True:
        await asyncio.sleep(RENEW_EVERY)  # renewal period: the Leases last LEASE_SECONDS
        for key in targets:
            try:
                other = await ctx.cluster.acquire_lease(*lease_of(ctx, key), holder, LEASE_SECONDS)
            except StepError as exc:  # an API outage: try again next period
                log.warning("%s: Lease of %s not renewed: %s", ctx.qualified, key, exc.message)
                continue
            if other is not None:
                on_lost(other)
                return


async def release_targets(ctx: HookContext, keys: Iterable[str]) -> None:
    """Give back every target Lease the group holds (after a run, or after recovering one)."""
    holder = holder_of(ctx)
    for key in keys:
        # An unreleased Lease expires on its own; one with a quiesce record stays for the repair.
        try:
            await ctx.cluster.release_lease(*lease_of(ctx, key), holder)
        except Exception as exc:  # never fails the run whose window is already thawed
            log.warning("%s: Lease of %s not released (%s); it expires on its own",
                        ctx.qualified, key, exc)
