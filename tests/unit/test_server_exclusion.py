"""Two groups in different namespaces over one database server never quiesce it at once.

The server's exclusion Lease is keyed on the server as the cluster's DNS reads its address,
whatever the Secret's spelling, and lives in the operator's namespace: a group in `bleater`
whose Secret says `mongodb` and one in `reports` whose Secret says
`mongodb.bleater.svc.cluster.local` meet on one Lease. The world is `fakeworld.World`, with the
real hook types.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import snapgroup.hooks.builtin  # noqa: F401 - registers the real hook types
from snapgroup.api.snapshotgroup import SnapshotGroupSpec
from snapgroup.orchestration.groups import GroupRunner
from snapgroup.orchestration.journal import GroupRef
from unit.fakeworld import NS, Call, Group, Injector, Process, World

OPERATOR_NAMESPACE = "snapgroup-system"
ELSEWHERE = "reports"


def mongodb_only(secret: str) -> dict[str, Any]:
    return SnapshotGroupSpec.model_validate({
        "services": [{"name": "mongodb", "type": "mongodb", "pvcs": ["mongodb-data"],
                      "connection": {"secretRef": {"name": secret}}}],
    }).wire()


def runner_of(world: World, injector: Injector, lease_namespace: str | None) -> GroupRunner:
    process = Process(world, 1, injector)
    return GroupRunner(process.cluster, process.connectors, ready_timeout=2.0, retry_delay=0,
                       server_lease_namespace=lease_namespace)


async def run_both(lease_namespace: str | None) -> tuple[World, int, dict[str, Any]]:
    """The first group is held at its cut; the second starts meanwhile. Returns the world, the
    highest MongoDB lock count seen, and the second group's last status."""
    world = World()
    world.secrets[ELSEWHERE, "mongodb-far"] = {
        "uri": "mongodb://app:pw@MongoDB.bleater.svc.cluster.local/?authSource=admin"}
    cutting, let_cut = asyncio.Event(), asyncio.Event()
    highest = 0

    async def hold(call: Call, perform: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal highest
        highest = max(highest, world.mongo_locks)
        cutting.set()
        await let_cut.wait()
        highest = max(highest, world.mongo_locks)
        return await perform()

    runner = runner_of(world, Injector(Call(0, "cluster.create_snapshot", (), 0), hold),
                       lease_namespace)
    first_spec, second_spec = mongodb_only("mongodb-credentials"), mongodb_only("mongodb-far")
    world.groups["first"] = Group("first", "uid-1", copy.deepcopy(first_spec))
    world.groups["second"] = Group("second", "uid-2", copy.deepcopy(second_spec))
    first = asyncio.create_task(runner.reconcile(GroupRef(NS, "first", "uid-1", 1), first_spec, {}))
    await asyncio.wait_for(cutting.wait(), 10)
    second = asyncio.create_task(
        runner.reconcile(GroupRef(ELSEWHERE, "second", "uid-2", 1), second_spec, {}))

    def second_waits_or_locks() -> bool:
        waiting = any(c.get("type") == "Waiting" and c.get("status") == "True"
                      for c in world.groups["second"].status.get("conditions", []))
        return waiting or world.mongo_locks > 1
    await world.wait_until(second_waits_or_locks, 10)
    highest = max(highest, world.mongo_locks)
    let_cut.set()
    await asyncio.wait_for(asyncio.gather(first, second), 30)
    return world, highest, world.groups["second"].status


async def test_groups_of_two_namespaces_over_one_server_take_turns() -> None:
    world, highest, second = await run_both(OPERATOR_NAMESPACE)
    assert highest == 1, "the second group locked the server while the first held it"
    waited = next(c for c in second["conditions"] if c["type"] == "Waiting")
    assert waited["status"] == "False" and waited["reason"] == "TargetsFree"
    assert world.groups["first"].status["phase"] == world.groups["second"].status["phase"] == "Succeeded"
    assert world.mongo_locks == 0 and world.held() == [] and world.unbalanced() == []
    assert world.leases == {}, "every Lease given back"


async def test_without_the_operators_namespace_a_servers_leases_are_per_namespace() -> None:
    """Outside a pod with no --leader-election-namespace, each group's own namespace holds its
    server Leases: the two groups do not meet (as the README says)."""
    world, highest, second = await run_both(None)
    assert highest == 2
    assert not any(c["type"] == "Waiting" for c in second.get("conditions", []))
    assert world.mongo_locks == 0 and world.held() == []
