"""Mutual exclusion of groups over shared targets, by coordination.k8s.io Leases.

Each writer workload and each claim a group names is a target with a Lease of its own in the
group's namespace (a label selector is a target of its own). A group takes all of its targets'
Leases (in one global order, so two groups never wait on each other) before it plans, so its plan
sees the targets as nobody else holds them, and gives them back after the thaw.
Groups over disjoint targets never meet; a group whose targets are held waits, visibly, and runs
after. Leases work across operator replicas; one that outlives a crashed holder expires.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from snapgroup.api.snapshotgroup import SnapshotGroupSpec
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.journal import Journal
from snapgroup.ports import StepError

LEASE_MARGIN_SECONDS = 30
"""Beyond the freeze budget, how long a Lease outlives a holder that crashed."""
WAIT_SLICE_SECONDS = 5.0
"""Longest single wait on a held Lease before looking again (a holder may expire silently)."""


def target_keys(spec: SnapshotGroupSpec) -> list[str]:
    """Everything a group would freeze, as stable keys, in the one global order."""
    keys = {f"writer:{w.describe()}" for w in spec.writers}
    for svc in spec.services:
        if svc.pvcs is not None:
            keys |= {f"pvc:{p}" for p in svc.pvcs}
        elif svc.pvc_selector is not None:
            keys.add(f"pvc:[{svc.pvc_selector.as_query()}]")
    return sorted(keys)


def lease_name(key: str) -> str:
    """A Lease name for a target: short, valid, stable."""
    return "snapgroup-" + hashlib.sha256(key.encode()).hexdigest()[:20]


@asynccontextmanager
async def exclusive_targets(
    ctx: HookContext, journal: Journal, spec: SnapshotGroupSpec, wait_timeout: float
) -> AsyncIterator[None]:
    """Hold every target's Lease for the body; wait (with a Waiting condition) while one is held."""
    holder = f"{ctx.group}/{ctx.group_uid}"
    names = [lease_name(k) for k in target_keys(spec)]
    budget_seconds = spec.freeze_budget_delta.total_seconds()
    seconds = int(budget_seconds) + LEASE_MARGIN_SECONDS
    deadline = time.monotonic() + wait_timeout
    waited = False
    while True:
        taken: list[str] = []
        busy: tuple[str, str] | None = None
        for name in names:
            other = await ctx.cluster.acquire_lease(ctx.namespace, name, holder, seconds)
            if other is not None:
                busy = (name, other)
                break
            taken.append(name)
        if busy is None:
            break
        for name in taken:
            await ctx.cluster.release_lease(ctx.namespace, name, holder)
        if not waited:
            waited = True
            other_group = busy[1].split("/")[0]
            journal.condition("Waiting", "True", "TargetsBusy",
                              f"SnapshotGroup {other_group} holds a writer or volume of this group; "
                              "this group runs when it is done")
            journal.status.message = f"waiting for SnapshotGroup {other_group}"
            await journal.flush()
            journal.event("Normal", "Waiting", journal.status.message)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StepError("TargetsBusy", f"targets still held by {busy[1].split('/')[0]} "
                            f"after waiting {wait_timeout:.0f}s")
        await ctx.cluster.wait_lease_change(ctx.namespace, busy[0], min(remaining, WAIT_SLICE_SECONDS))
    if waited:
        journal.condition("Waiting", "False", "TargetsFree", "the targets are free")
    try:
        yield
    finally:
        await release_targets(ctx, spec)


async def release_targets(ctx: HookContext, spec: SnapshotGroupSpec) -> None:
    """Give back every target Lease the group holds (after a run, or after recovering one)."""
    holder = f"{ctx.group}/{ctx.group_uid}"
    for key in target_keys(spec):
        # An unreleased Lease expires on its own after the budget plus margin.
        with contextlib.suppress(StepError):
            await ctx.cluster.release_lease(ctx.namespace, lease_name(key), holder)
