"""The ``scale`` hook type (writer isolation) against an in-memory cluster (no network).

FakeCluster below is a test double of the Cluster port holding workloads and their pods; the
real adapter is exercised against the local cluster in tests/cluster/test_writers_hook.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from snapgroup.api.base import LabelSelector
from snapgroup.api.labels import FREEZE_DEADLINE, ISOLATED_BY, ORIGINAL_REPLICAS
from snapgroup.api.snapshotgroup import WriterTarget
from snapgroup.hooks import registry
from snapgroup.hooks.registry import HookContext
from snapgroup.hooks.writers import IsolatedWriter, ScaleWriters
from snapgroup.orchestration.safety_net import SafetyNet
from snapgroup.ports import (
    Connectors,
    PlanError,
    PvcInfo,
    SnapshotClassInfo,
    SnapshotInfo,
    StepError,
    WorkloadInfo,
)

NS = "bleater"
GROUP, UID = "nightly-1", "0f6a0c2e-uid"
ME = f"{NS}/{GROUP}/{UID}"


@dataclass
class FakeWorkload:
    kind: str
    namespace: str
    name: str
    replicas: int
    labels: dict[str, str]
    annotations: dict[str, str] = field(default_factory=dict)
    pods: set[str] = field(default_factory=set)
    """Pods that exist, terminating ones included."""

    @property
    def selector(self) -> str:
        return f"app={self.name}"


class FakeCluster:
    """In-memory stand-in for the Cluster port: workloads, their pods, and the patches sent.

    Scaling to zero only marks pods as terminating; they are gone once `terminate_pods` runs,
    like a kubelet confirming the deletion. Scaling up creates pods at once.
    """

    def __init__(self) -> None:
        self.workloads: dict[tuple[str, str, str], FakeWorkload] = {}
        self.scale_calls: list[tuple[str, str, int, dict[str, str | None]]] = []
        self.pods_changed = asyncio.Condition()
        self.waiting_for_pods = asyncio.Event()
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        """SnapshotGroups as stored, for the safety net."""
        self.asked: list[tuple[str, str]] = []
        self.events: list[tuple[str, str, str]] = []

    def add(self, name: str, replicas: int, *, kind: str = "Deployment", namespace: str = NS,
            labels: Mapping[str, str] | None = None,
            annotations: Mapping[str, str] | None = None) -> FakeWorkload:
        workload = FakeWorkload(kind, namespace, name, replicas,
                                {"app": name, **(labels or {})}, dict(annotations or {}),
                                {f"{name}-{i}" for i in range(replicas)})
        self.workloads[(kind, namespace, name)] = workload
        return workload

    async def terminate_pods(self, workload: FakeWorkload) -> None:
        async with self.pods_changed:
            workload.pods.clear()
            self.pods_changed.notify_all()

    def _info(self, w: FakeWorkload) -> WorkloadInfo:
        return WorkloadInfo(w.kind, w.namespace, w.name, w.replicas, w.selector,
                            dict(w.annotations), "1")

    async def get_workload(self, kind: str, namespace: str, name: str) -> WorkloadInfo | None:
        w = self.workloads.get((kind, namespace, name))
        return None if w is None else self._info(w)

    async def list_workloads(self, kind: str, namespace: str, selector: str) -> list[WorkloadInfo]:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        return [self._info(w) for (k, ns, _), w in self.workloads.items()
                if k == kind and ns == namespace and wanted.items() <= w.labels.items()]

    async def list_annotated_workloads(self, annotation: str) -> list[WorkloadInfo]:
        return [self._info(w) for w in self.workloads.values() if annotation in w.annotations]

    async def scale(self, kind: str, namespace: str, name: str, replicas: int,
                    annotations: Mapping[str, str | None]) -> None:
        self.scale_calls.append((kind, name, replicas, dict(annotations)))
        w = self.workloads.get((kind, namespace, name))
        if w is None:
            raise StepError("WorkloadNotFound", f"{kind} {name} does not exist any more")
        w.replicas = replicas
        for key, value in annotations.items():
            if value is None:
                w.annotations.pop(key, None)
            else:
                w.annotations[key] = value
        if replicas > 0:
            w.pods |= {f"{name}-{i}" for i in range(replicas)}

    async def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        owner = next(w for w in self.workloads.values()
                     if w.namespace == namespace and w.selector == selector)
        self.waiting_for_pods.set()
        async with self.pods_changed:
            await asyncio.wait_for(self.pods_changed.wait_for(lambda: not owner.pods), timeout)

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        raise AssertionError("the scale hook reads no claims")

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        raise AssertionError("the scale hook reads no claims")

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        raise AssertionError("the scale hook reads no Secrets")

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        raise AssertionError("the scale hook takes no snapshots")

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> None:
        raise AssertionError("the scale hook takes no snapshots")

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        raise AssertionError("the scale hook takes no snapshots")

    async def list_snapshots(self, namespace: str, selector: str) -> list[SnapshotInfo]:
        raise AssertionError("the scale hook takes no snapshots")

    async def wait_snapshots(self, namespace: str, selector: str, names: set[str], until: Any,
                             timeout: float) -> dict[str, SnapshotInfo]:
        raise AssertionError("the scale hook takes no snapshots")

    async def patch_group_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        raise AssertionError("the journal is the orchestration's to write")

    async def emit_event(self, namespace: str, name: str, uid: str, event_type: Any, reason: str,
                         message: str) -> None:
        self.events.append((namespace, name, reason))

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.asked.append((namespace, name))
        return self.groups.get((namespace, name))

    async def list_lease_records(self) -> list[Any]:
        return []


class NoConnectors:
    """The scale hook opens no database sessions; any attempt fails the test."""

    async def postgres(self, secret: Mapping[str, str], timeout: float) -> Any:
        raise AssertionError("no database session expected")

    async def mongo(self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup") -> Any:
        raise AssertionError("no database session expected")

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> Any:
        raise AssertionError("no database session expected")


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


def context(cluster: FakeCluster, *, budget: float = 60.0, group: str = GROUP,
            uid: str = UID) -> HookContext:
    connectors: Connectors = NoConnectors()
    return HookContext(namespace=NS, group=group, group_uid=uid, cluster=cluster,
                       connectors=connectors, deadline=time.monotonic() + budget)


HOOK = ScaleWriters()


async def plan_one(ctx: HookContext, **target: Any) -> IsolatedWriter:
    hooks = await HOOK.plan(ctx, WriterTarget.model_validate(target), "spec.writers[0]")
    assert len(hooks) == 1
    hook = hooks[0]
    assert isinstance(hook, IsolatedWriter)
    return hook


def test_scale_is_the_registered_hook_type_and_validates_its_params() -> None:
    hook_type = registry.lookup("scale")
    assert isinstance(hook_type, ScaleWriters)
    assert hook_type.parse({"kind": "StatefulSet", "name": "ingest"}).describe() == "StatefulSet/ingest"
    with pytest.raises(ValueError, match="exactly one of name and selector"):
        hook_type.parse({"name": "ingest", "selector": {"matchLabels": {"app": "x"}}})


async def test_plan_of_a_missing_workload_names_the_name_field(cluster: FakeCluster) -> None:
    with pytest.raises(PlanError) as err:
        await plan_one(context(cluster), name="data-writer")
    assert err.value.reason == "WriterNotFound"
    assert err.value.field_path == "spec.writers[0].name"
    assert "data-writer" in err.value.message and NS in err.value.message
    assert cluster.scale_calls == []


async def test_plan_of_a_selector_matching_nothing_names_the_selector_field(
    cluster: FakeCluster,
) -> None:
    cluster.add("data-writer", 2, labels={"tier": "writer"})
    for selector in ({"matchLabels": {"tier": "reader"}}, {}):
        with pytest.raises(PlanError) as err:
            await plan_one(context(cluster), selector=selector)
        assert err.value.reason == "WriterNotFound"
        assert err.value.field_path == "spec.writers[0].selector"


async def test_plan_refuses_a_workload_another_group_holds(cluster: FakeCluster) -> None:
    cluster.add("data-writer", 0, annotations={ISOLATED_BY: f"{NS}/other/1234",
                                               ORIGINAL_REPLICAS: "2"})
    with pytest.raises(PlanError) as err:
        await plan_one(context(cluster), name="data-writer")
    assert err.value.reason == "WriterBusy"
    assert err.value.field_path == "spec.writers[0].name"
    assert f"{NS}/other/1234" in err.value.message


async def test_plan_by_selector_binds_one_hook_per_workload(cluster: FakeCluster) -> None:
    cluster.add("ingest", 3, labels={"tier": "writer"})
    cluster.add("api", 2, labels={"tier": "writer"})
    cluster.add("reports", 1, labels={"tier": "reader"})
    target = WriterTarget(selector=LabelSelector(match_labels={"tier": "writer"}))
    hooks = await HOOK.plan(context(cluster), target, "spec.writers[1]")
    assert [h.key for h in hooks] == ["writer:Deployment/api", "writer:Deployment/ingest"]
    assert [h.intent() for h in hooks] == [
        {"kind": "Deployment", "name": "api", "originalReplicas": 2},
        {"kind": "Deployment", "name": "ingest", "originalReplicas": 3},
    ]
    assert cluster.scale_calls == []  # planning touches nothing


async def test_apply_returns_only_once_the_pods_are_gone_and_undo_restores(
    cluster: FakeCluster,
) -> None:
    writer = cluster.add("data-writer", 3)
    hook = await plan_one(context(cluster, budget=60), name="data-writer")

    applying = asyncio.create_task(hook.apply())
    await cluster.waiting_for_pods.wait()
    # One patch both scales to zero and journals the isolation on the workload itself.
    [(kind, name, replicas, annotations)] = cluster.scale_calls
    assert (kind, name, replicas) == ("Deployment", "data-writer", 0)
    assert annotations[ISOLATED_BY] == ME
    assert annotations[ORIGINAL_REPLICAS] == "3"
    deadline = datetime.fromisoformat(str(annotations[FREEZE_DEADLINE]))
    assert 50 < (deadline - datetime.now(UTC)).total_seconds() <= 61
    assert not applying.done(), "terminating pods still write: apply must wait for them"

    await cluster.terminate_pods(writer)
    record = await applying
    assert record["originalReplicas"] == 3 and record["kind"] == "Deployment"
    assert datetime.fromisoformat(record["isolatedAt"]).tzinfo is not None

    message = await hook.undo(record)
    assert writer.replicas == 3
    assert not {ISOLATED_BY, ORIGINAL_REPLICAS, FREEZE_DEADLINE} & writer.annotations.keys()
    assert "scaled back to 3" in message


async def test_undo_keeps_the_replicas_a_person_set_while_isolated(cluster: FakeCluster) -> None:
    writer = cluster.add("data-writer", 3, annotations={"team": "bleater"})
    hook = await plan_one(context(cluster), name="data-writer")
    await cluster.terminate_pods(writer)
    record = await hook.apply()

    await cluster.scale("Deployment", NS, "data-writer", 1, {})  # kubectl scale --replicas=1
    message = await hook.undo(record)

    assert writer.replicas == 1
    assert writer.annotations == {"team": "bleater"}
    assert "someone else" in message and "1" in message


async def test_undo_of_a_deleted_workload_says_so_without_failing(cluster: FakeCluster) -> None:
    writer = cluster.add("data-writer", 2)
    hook = await plan_one(context(cluster), name="data-writer")
    await cluster.terminate_pods(writer)
    record = await hook.apply()
    del cluster.workloads[("Deployment", NS, "data-writer")]

    assert "no longer exists" in await hook.undo(record)


async def test_pods_outliving_the_budget_fail_the_step_and_undo_still_restores(
    cluster: FakeCluster,
) -> None:
    writer = cluster.add("data-writer", 2)
    hook = await plan_one(context(cluster, budget=0.2), name="data-writer")

    with pytest.raises(StepError) as err:
        await hook.apply()
    assert err.value.reason == "FreezeBudgetExceeded"
    assert "data-writer" in err.value.message

    await hook.undo(hook.intent())  # the journal holds the intent when apply failed
    assert writer.replicas == 2
    assert ISOLATED_BY not in writer.annotations


async def test_undo_when_the_scale_never_happened_leaves_the_workload(cluster: FakeCluster) -> None:
    writer = cluster.add("data-writer", 2)
    hook = await plan_one(context(cluster), name="data-writer")

    message = await hook.undo(hook.intent())

    assert cluster.scale_calls == []
    assert writer.replicas == 2
    assert "not isolated" in message


async def test_recover_restores_from_the_workload_annotations(cluster: FakeCluster) -> None:
    writer = cluster.add("data-writer", 0, annotations={ISOLATED_BY: ME, ORIGINAL_REPLICAS: "4"})

    message = await HOOK.recover(context(cluster), "writer:Deployment/data-writer", {}, False)

    assert writer.replicas == 4
    assert ISOLATED_BY not in writer.annotations
    assert "scaled back to 4" in message


async def test_recover_after_a_crash_before_the_patch_touches_nothing(cluster: FakeCluster) -> None:
    writer = cluster.add("data-writer", 2)
    intent = {"kind": "Deployment", "name": "data-writer", "originalReplicas": 2}

    await HOOK.recover(context(cluster), "writer:Deployment/data-writer", intent, False)

    assert cluster.scale_calls == []
    assert writer.replicas == 2


async def test_planning_again_after_a_restart_keeps_the_original_replicas(
    cluster: FakeCluster,
) -> None:
    cluster.add("data-writer", 0, annotations={ISOLATED_BY: ME, ORIGINAL_REPLICAS: "3"})
    hook = await plan_one(context(cluster), name="data-writer")
    assert hook.intent()["originalReplicas"] == 3


def _group(uid: str, phase: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid}, "status": {"phase": phase}}


async def test_safety_net_gives_back_only_workloads_no_live_group_holds(
    cluster: FakeCluster,
) -> None:
    live = cluster.add("ingest", 0, annotations={ISOLATED_BY: f"{NS}/running/u1",
                                                  ORIGINAL_REPLICAS: "2",
                                                  FREEZE_DEADLINE: "2999-01-01T00:00:00Z"})
    dead = cluster.add("data-writer", 0, namespace="shop",
                       annotations={ISOLATED_BY: "shop/finished/u2", ORIGINAL_REPLICAS: "3"})
    replaced = cluster.add("api", 0, annotations={ISOLATED_BY: f"{NS}/running/old-uid",
                                                   ORIGINAL_REPLICAS: "1"})
    stuck = cluster.add("late", 0, annotations={ISOLATED_BY: f"{NS}/stuck/u3",
                                                 ORIGINAL_REPLICAS: "4",
                                                 FREEZE_DEADLINE: "2020-01-01T00:00:00Z"})
    untouched = cluster.add("reports", 1)
    cluster.groups = {(NS, "running"): _group("u1", "Quiescing"),
                      ("shop", "finished"): _group("u2", "Succeeded"),
                      (NS, "stuck"): _group("u3", "Snapshotting")}

    repairs = await SafetyNet(cluster, NoConnectors()).repair_once()

    assert (live.replicas, live.annotations[ISOLATED_BY]) == (0, f"{NS}/running/u1")
    assert dead.replicas == 3 and ISOLATED_BY not in dead.annotations
    assert replaced.replicas == 1 and ISOLATED_BY not in replaced.annotations
    assert stuck.replicas == 4 and ISOLATED_BY not in stuck.annotations, "past its freeze deadline"
    assert untouched.replicas == 1
    assert ("shop", "finished") in cluster.asked
    assert sorted(r.target for r in repairs) == [
        f"Deployment {NS}/api", f"Deployment {NS}/late", "Deployment shop/data-writer"]
    assert all(r.ok for r in repairs)
    assert {e[2] for e in cluster.events} == {"SafetyNetRepaired"}
