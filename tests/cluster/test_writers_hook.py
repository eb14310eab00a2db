"""Writer isolation (hook type ``scale``) through the real adapter on the local cluster.

The workloads use an image the node emulator does not run: their pods stay Pending but exist in
the API until deleted, which is what isolation waits on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client, watch

from snapgroup.adapters.kube import KubeCluster
from snapgroup.api.labels import FREEZE_DEADLINE, ISOLATED_BY, ORIGINAL_REPLICAS
from snapgroup.api.snapshotgroup import WriterTarget
from snapgroup.hooks.registry import HookContext
from snapgroup.hooks.writers import ScaleWriters
from snapgroup.orchestration.safety_net import SafetyNet
from snapgroup.ports import PlanError

pytestmark = pytest.mark.cluster

# The `namespace` fixture (tests/cluster/conftest.py) names the module's namespace after this.
NAMESPACE_PREFIX = "writers"

PLACEHOLDER_IMAGE = "snapgroup.dev/placeholder:0.1"
WAIT = 90
OUR_ANNOTATIONS = {ISOLATED_BY, ORIGINAL_REPLICAS, FREEZE_DEADLINE}


class NoConnectors:
    """The scale hook opens no database sessions; any attempt fails the test."""

    async def postgres(self, secret: Mapping[str, str], timeout: float) -> Any:
        raise AssertionError("no database session expected")

    async def mongo(self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup") -> Any:
        raise AssertionError("no database session expected")

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> Any:
        raise AssertionError("no database session expected")


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return json.loads(call(*args, _preload_content=False, _request_timeout=30, **kwargs).data)


def wait_for_pod_count(api: client.ApiClient, namespace: str, selector: str, count: int) -> None:
    """List, then watch the pods until exactly `count` exist."""
    core = client.CoreV1Api(api)
    listing = raw(core.list_namespaced_pod, namespace, label_selector=selector)
    names = {p["metadata"]["name"] for p in listing["items"]}
    if len(names) == count:
        return
    watcher = watch.Watch()
    for event in watcher.stream(
        core.list_namespaced_pod, namespace, label_selector=selector, deserialize=False,
        resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=WAIT,
    ):
        name = event["object"]["metadata"]["name"]
        if event["type"] == "DELETED":
            names.discard(name)
        elif event["type"] == "ADDED":
            names.add(name)
        if len(names) == count:
            watcher.stop()
            return
    raise AssertionError(f"{count} pods expected, {len(names)} exist after {WAIT}s")


@pytest.fixture
def kube(api: client.ApiClient) -> Iterator[KubeCluster]:
    cluster = KubeCluster(api)
    yield cluster
    cluster.close()


def start_writer(api: client.ApiClient, namespace: str, name: str, replicas: int) -> str:
    """A Deployment whose pods exist; returns their selector."""
    client.AppsV1Api(api).create_namespaced_deployment(namespace, {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "main", "image": PLACEHOLDER_IMAGE}]},
            },
        },
    })
    wait_for_pod_count(api, namespace, f"app={name}", replicas)
    return f"app={name}"


def stored(api: client.ApiClient, namespace: str, name: str) -> tuple[int, dict[str, str]]:
    """Replicas and annotations of the Deployment as the API server has them."""
    obj = raw(client.AppsV1Api(api).read_namespaced_deployment, name, namespace)
    return obj["spec"]["replicas"], dict(obj["metadata"].get("annotations") or {})


def context(kube: KubeCluster, namespace: str, group: str = "nightly") -> HookContext:
    return HookContext(namespace=namespace, group=group, group_uid=str(uuid.uuid4()),
                       cluster=kube, connectors=NoConnectors(),
                       deadline=time.monotonic() + WAIT)


async def test_isolation_holds_the_writer_without_pods_until_undone(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    selector = start_writer(api, namespace, "data-writer", 2)
    ctx = context(kube, namespace)
    [hook] = await ScaleWriters().plan(ctx, WriterTarget(name="data-writer"), "spec.writers[0]")

    record = await hook.apply()

    pods = raw(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=selector)
    assert pods["items"] == [], "apply returned while a writer pod still existed"
    replicas, annotations = stored(api, namespace, "data-writer")
    assert replicas == 0
    assert annotations[ISOLATED_BY] == f"{namespace}/nightly/{ctx.group_uid}"
    assert annotations[ORIGINAL_REPLICAS] == "2"
    assert record["originalReplicas"] == 2

    message = await hook.undo(record)

    replicas, annotations = stored(api, namespace, "data-writer")
    assert replicas == 2 and not OUR_ANNOTATIONS & annotations.keys(), message
    wait_for_pod_count(api, namespace, selector, 2)


async def test_a_second_group_cannot_isolate_a_held_writer(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    start_writer(api, namespace, "shared-writer", 1)
    first = context(kube, namespace, "first")
    [hook] = await ScaleWriters().plan(first, WriterTarget(name="shared-writer"), "spec.writers[0]")
    record = await hook.apply()
    try:
        with pytest.raises(PlanError) as err:
            await ScaleWriters().plan(context(kube, namespace, "second"),
                                      WriterTarget(name="shared-writer"), "spec.writers[0]")
        assert err.value.reason == "WriterBusy"
    finally:
        await hook.undo(record)
    assert stored(api, namespace, "shared-writer")[0] == 1


async def test_undo_keeps_a_scale_made_while_isolated(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    start_writer(api, namespace, "busy-writer", 2)
    [hook] = await ScaleWriters().plan(context(kube, namespace), WriterTarget(name="busy-writer"),
                                       "spec.writers[0]")
    record = await hook.apply()
    client.AppsV1Api(api).patch_namespaced_deployment_scale(
        "busy-writer", namespace, {"spec": {"replicas": 3}})  # kubectl scale --replicas=3

    message = await hook.undo(record)

    replicas, annotations = stored(api, namespace, "busy-writer")
    assert replicas == 3 and not OUR_ANNOTATIONS & annotations.keys()
    assert "someone else" in message


class GroupsInFlight(KubeCluster):
    """The real adapter, except that the groups named in `running` read as mid-window.

    (A real SnapshotGroup would be run to its end by an operator the test session may have
    running; the net's view of groups is unit-tested, its repairs of workloads are tested here.)
    """

    def __init__(self, api: client.ApiClient, *, namespaces: list[str],
                 running: Mapping[str, str]) -> None:
        super().__init__(api, namespaces=namespaces)
        self.running = dict(running)

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        uid = self.running.get(name)
        if uid is None:
            return None
        return {"metadata": {"uid": uid}, "status": {"phase": "Snapshotting"}}


async def test_the_safety_net_restores_writers_no_live_group_holds(
    api: client.ApiClient, namespace: str
) -> None:
    live, dead = f"{namespace}/running/u-2", f"{namespace}/crashed/u-1"
    # Only this namespace: workloads of other tests are not this test's to restore.
    kube = GroupsInFlight(api, namespaces=[namespace], running={"running": "u-2"})
    start_writer(api, namespace, "orphan", 1)
    await kube.scale("Deployment", namespace, "orphan", 0,
                     {ISOLATED_BY: dead, ORIGINAL_REPLICAS: "1"})
    start_writer(api, namespace, "still-held", 1)
    await kube.scale("Deployment", namespace, "still-held", 0,
                     {ISOLATED_BY: live, ORIGINAL_REPLICAS: "1",
                      FREEZE_DEADLINE: "2999-01-01T00:00:00Z"})
    start_writer(api, namespace, "overdue", 2)
    await kube.scale("Deployment", namespace, "overdue", 0,
                     {ISOLATED_BY: live, ORIGINAL_REPLICAS: "2",
                      FREEZE_DEADLINE: "2020-01-01T00:00:00Z"})

    repairs = await SafetyNet(kube, NoConnectors()).repair_once()
    kube.close()

    assert stored(api, namespace, "orphan")[0] == 1
    assert stored(api, namespace, "overdue")[0] == 2, "past its freeze deadline"
    replicas, annotations = stored(api, namespace, "still-held")
    assert (replicas, annotations[ISOLATED_BY]) == (0, live)
    assert sorted(r.target for r in repairs if r.ok) == [
        f"Deployment {namespace}/orphan", f"Deployment {namespace}/overdue"]
    events = client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector="reason=SafetyNetRepaired").items
    assert {e.involved_object.name for e in events} >= {"crashed", "running"}
