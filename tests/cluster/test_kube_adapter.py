"""The Kubernetes adapter against the local cluster's real API server and snapshot stack.

Workloads here use an image the node emulator does not run: their pods stay Pending, but they
exist in the API until deleted, which is all waiting for pods to be gone needs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.operator_process import OperatorProcess
from snapgroup.adapters.kube import DEFAULT_SNAPSHOT_CLASS_ANNOTATION, KubeCluster
from snapgroup.api import API_VERSION
from snapgroup.api.crd import SNAPSHOT_GROUP
from snapgroup.api.labels import GROUP_LABEL, ISOLATED_BY
from snapgroup.api.snapshotgroup import KIND, PLURAL
from snapgroup.ports import StepError

pytestmark = pytest.mark.cluster

# The `namespace` fixture (tests/cluster/conftest.py) names the module's namespace after this.
NAMESPACE_PREFIX = "kube-adapter"

PLACEHOLDER_IMAGE = "snapgroup.dev/placeholder:0.1"
WAIT = 90  # seconds for the control plane to act (bind a claim, cut a snapshot, ...)

Objects = dict[str, dict[str, Any]]


# -- helpers talking to the API directly, independent of the adapter under test ------------


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One request through the plain client, its JSON body decoded."""
    return json.loads(call(*args, _preload_content=False, _request_timeout=30, **kwargs).data)


def watch_until(
    call: Callable[..., Any], *args: Any, done: Callable[[Objects], bool], timeout: int = WAIT,
    **kwargs: Any,
) -> Objects:
    """List, then watch from the list's resourceVersion until done(objects by name) holds."""
    listing = raw(call, *args, **kwargs)
    objects = {o["metadata"]["name"]: o for o in listing["items"]}
    if done(objects):
        return objects
    watcher = watch.Watch()
    for event in watcher.stream(
        call, *args, resource_version=listing["metadata"]["resourceVersion"],
        timeout_seconds=timeout, deserialize=False, **kwargs,
    ):
        obj = event["object"]
        if event["type"] == "DELETED":
            objects.pop(obj["metadata"]["name"], None)
        elif event["type"] in ("ADDED", "MODIFIED"):
            objects[obj["metadata"]["name"]] = obj
        if done(objects):
            watcher.stop()
            return objects
    raise AssertionError(f"condition not reached within {timeout}s; last seen: {sorted(objects)}")


def deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    pod_labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels},
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {"app": name},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["writer"]}],
            },
            "template": {
                "metadata": {"labels": {**pod_labels, "tier": "writer"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": PLACEHOLDER_IMAGE}],
                },
            },
        },
    }


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def kube(api: client.ApiClient) -> Iterator[KubeCluster]:
    cluster = KubeCluster(api)
    yield cluster
    cluster.close()


def start_deployment(api: client.ApiClient, namespace: str, name: str, replicas: int) -> str:
    """Create a Deployment and wait until its pods exist; returns their selector."""
    client.AppsV1Api(api).create_namespaced_deployment(namespace, deployment(name, replicas))
    selector = f"app={name},tier in (writer)"
    watch_until(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=selector,
                done=lambda pods: len(pods) == replicas)
    return selector


def pod_names(api: client.ApiClient, namespace: str, selector: str) -> list[str]:
    pods = raw(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=selector)
    return [p["metadata"]["name"] for p in pods["items"]]


# -- workloads -----------------------------------------------------------------------------


async def test_workloads_are_read_with_their_pod_selector(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    client.AppsV1Api(api).create_namespaced_deployment(
        namespace, deployment("reader", 0, {"role": "reporting"})
    )

    workload = await kube.get_workload("Deployment", namespace, "reader")
    assert workload is not None
    assert (workload.kind, workload.namespace, workload.name) == ("Deployment", namespace, "reader")
    assert workload.replicas == 0
    assert workload.selector == "app=reader,tier in (writer)"
    assert [w.name for w in await kube.list_workloads("Deployment", namespace, "role=reporting")] \
        == ["reader"]
    assert await kube.get_workload("Deployment", namespace, "absent") is None
    assert await kube.get_workload("StatefulSet", namespace, "reader") is None
    assert await kube.list_workloads("Deployment", namespace, "") == []


async def test_scale_to_zero_then_wait_returns_once_no_pod_exists(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    selector = start_deployment(api, namespace, "writer", 2)

    await kube.scale("Deployment", namespace, "writer", 0,
                     {ISOLATED_BY: f"{namespace}/g/u", "example.com/keep": None})
    await kube.wait_pods_gone(namespace, selector, timeout=WAIT)

    assert pod_names(api, namespace, selector) == []
    stored = raw(client.AppsV1Api(api).read_namespaced_deployment, "writer", namespace)
    assert stored["spec"]["replicas"] == 0
    assert stored["metadata"]["annotations"][ISOLATED_BY] == f"{namespace}/g/u"
    # Waiting was a watch, not a polling loop.
    assert kube.requests["watch"] >= 1 and kube.requests["list"] <= 3

    await kube.scale("Deployment", namespace, "writer", 2, {ISOLATED_BY: None})
    stored = raw(client.AppsV1Api(api).read_namespaced_deployment, "writer", namespace)
    assert stored["spec"]["replicas"] == 2
    assert ISOLATED_BY not in (stored["metadata"].get("annotations") or {})


async def test_scaling_a_missing_workload_is_reported(namespace: str, kube: KubeCluster) -> None:
    with pytest.raises(StepError) as err:
        await kube.scale("Deployment", namespace, "absent", 0, {})
    assert err.value.reason == "WorkloadNotFound"


async def test_waiting_on_pods_that_stay_times_out_and_frees_its_thread(
    api: client.ApiClient, namespace: str
) -> None:
    selector = start_deployment(api, namespace, "stays", 1)
    [pod] = pod_names(api, namespace, selector)
    # One worker thread: a watch left running after its caller gave up would block the next call.
    kube = KubeCluster(api, max_concurrent_requests=1)
    try:
        with pytest.raises(TimeoutError, match=pod):
            await kube.wait_pods_gone(namespace, selector, timeout=2)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kube.wait_pods_gone(namespace, selector, timeout=300), 2)
        workload = await asyncio.wait_for(kube.get_workload("Deployment", namespace, "stays"), 10)
        assert workload is not None and workload.replicas == 1
    finally:
        kube.close()


async def test_annotated_workloads_are_found_in_every_namespace(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("held", 0))
    apps.create_namespaced_deployment(namespace, deployment("free", 0))
    await kube.scale("Deployment", namespace, "held", 0, {ISOLATED_BY: f"{namespace}/g/u"})

    found = await kube.list_annotated_workloads(ISOLATED_BY)

    mine = {(w.kind, w.name) for w in found if w.namespace == namespace}
    assert ("Deployment", "held") in mine
    assert ("Deployment", "free") not in mine


# -- secrets, claims, snapshots ------------------------------------------------------------


async def test_secret_data_is_decoded(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    client.CoreV1Api(api).create_namespaced_secret(namespace, {
        "metadata": {"name": "db"}, "stringData": {"username": "app", "password": "pässwörd"},
    })
    assert await kube.get_secret(namespace, "db") == {"username": "app", "password": "pässwörd"}
    assert await kube.get_secret(namespace, "absent") is None


@pytest.fixture(scope="module")
def snapshot_class(api: client.ApiClient) -> dict[str, Any]:
    """The cluster's default VolumeSnapshotClass (else the first one)."""
    classes = raw(client.CustomObjectsApi(api).list_cluster_custom_object,
                  "snapshot.storage.k8s.io", "v1", "volumesnapshotclasses")["items"]
    assert classes, "the local cluster has no VolumeSnapshotClass"
    defaults = [c for c in classes if (c["metadata"].get("annotations") or {})
                .get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true"]
    return dict((defaults or classes)[0])


@pytest.fixture(scope="module")
def bound_claim(api: client.ApiClient, namespace: str, snapshot_class: dict[str, Any]) -> str:
    """A claim provisioned by the snapshot class's driver, once it is Bound."""
    storage_classes = raw(client.StorageV1Api(api).list_storage_class)["items"]
    matching = [s for s in storage_classes if s["provisioner"] == snapshot_class["driver"]]
    assert matching, f"no StorageClass provisions with {snapshot_class['driver']}"
    core = client.CoreV1Api(api)
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "data"},
        "spec": {
            "storageClassName": matching[0]["metadata"]["name"],
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Mi"}},
        },
    })
    watch_until(core.list_namespaced_persistent_volume_claim, namespace,
                done=lambda c: c.get("data", {}).get("status", {}).get("phase") == "Bound")
    return "data"


async def test_claims_report_phase_and_driver(
    namespace: str, bound_claim: str, snapshot_class: dict[str, Any], kube: KubeCluster
) -> None:
    claim = await kube.get_pvc(namespace, bound_claim)
    assert claim is not None
    assert claim.phase == "Bound"
    assert claim.driver == snapshot_class["driver"]
    assert claim.storage_class
    assert await kube.get_pvc(namespace, "absent") is None


async def test_snapshot_classes_by_name_and_default(
    snapshot_class: dict[str, Any], kube: KubeCluster
) -> None:
    name = snapshot_class["metadata"]["name"]
    named = await kube.get_snapshot_class(name)
    assert named is not None and named.driver == snapshot_class["driver"]
    assert await kube.get_snapshot_class("absent-class") is None
    annotations = snapshot_class["metadata"].get("annotations") or {}
    if annotations.get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true":
        default = await kube.get_snapshot_class(None)
        assert default is not None
        assert (default.name, default.driver) == (name, snapshot_class["driver"])


async def test_a_snapshot_is_cut_then_ready(
    namespace: str, bound_claim: str, snapshot_class: dict[str, Any], kube: KubeCluster
) -> None:
    selector = f"{GROUP_LABEL}=cut-test"
    body = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "cut-test-data", "labels": {GROUP_LABEL: "cut-test"}},
        "spec": {
            "volumeSnapshotClassName": snapshot_class["metadata"]["name"],
            "source": {"persistentVolumeClaimName": bound_claim},
        },
    }
    await kube.create_snapshot(namespace, body)
    await kube.create_snapshot(namespace, body)  # a second create finds it there: no error

    cut = await kube.wait_snapshots(namespace, selector, {"cut-test-data"}, "cut", WAIT)
    assert cut["cut-test-data"].creation_time is not None
    ready = await kube.wait_snapshots(namespace, selector, {"cut-test-data"}, "ready", WAIT)
    assert ready["cut-test-data"].ready_to_use
    assert ready["cut-test-data"].restore_size
    assert ready["cut-test-data"].creation_time == cut["cut-test-data"].creation_time
    assert [s.name for s in await kube.list_snapshots(namespace, selector)] == ["cut-test-data"]

    await kube.delete_snapshot(namespace, "cut-test-data")
    await kube.delete_snapshot(namespace, "cut-test-data")  # already deleting or gone: no error


async def test_a_snapshot_that_never_appears_times_out_naming_it(
    namespace: str, kube: KubeCluster
) -> None:
    with pytest.raises(TimeoutError, match="never-made"):
        await kube.wait_snapshots(namespace, f"{GROUP_LABEL}=nothing", {"never-made"}, "cut", 1)


async def test_api_errors_carry_the_servers_reason(namespace: str, kube: KubeCluster) -> None:
    invalid = {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": "no-source"}, "spec": {}}
    with pytest.raises(StepError) as err:
        await kube.create_snapshot(namespace, invalid)
    assert err.value.reason == "KubernetesApiError"
    assert "create VolumeSnapshot" in err.value.message and "422" in err.value.message


# -- the SnapshotGroup ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def group_crd(api: client.ApiClient) -> None:
    """The SnapshotGroup CRD generated from the API models, installed and established."""
    crd = SNAPSHOT_GROUP.manifest()
    extensions = client.ApiextensionsV1Api(api)
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:  # installed already (by the cluster or another test)
            raise

    def established(crds: Objects) -> bool:
        status = crds.get(SNAPSHOT_GROUP.name, {}).get("status") or {}
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in status.get("conditions") or [])

    watch_until(extensions.list_custom_resource_definition,
                field_selector=f"metadata.name={SNAPSHOT_GROUP.name}", done=established)


@pytest.fixture(scope="module")
def no_operator(operator: OperatorProcess) -> Iterator[None]:
    """No operator reconciles the groups these tests write: the session's operator (which an
    earlier module may have started) is stopped for this module and started again after it."""
    operator.stop()
    yield
    operator.start()


def create_group(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
        "spec": {"services": [{
            "name": "pg", "type": "postgresql", "pvcs": ["absent-claim"],
            "connection": {"secretRef": {"name": "absent-secret"}},
        }]},
    }
    group, version = API_VERSION.split("/")
    created: Any = client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, namespace, PLURAL, body)
    return dict(created)


async def test_group_status_is_patched_through_the_status_subresource(
    api: client.ApiClient, namespace: str, group_crd: None, no_operator: None, kube: KubeCluster
) -> None:
    created = create_group(api, namespace, "journal-test")

    await kube.patch_group_status(namespace, "journal-test",
                                  {"message": "isolating writers", "phase": "Quiescing"})

    stored = await kube.get_group(namespace, "journal-test")
    assert stored is not None
    assert stored["status"]["message"] == "isolating writers"
    assert stored["spec"] == created["spec"]
    with pytest.raises(StepError) as err:
        await kube.patch_group_status(namespace, "absent-group", {"message": "x"})
    assert err.value.reason == "SnapshotGroupNotFound"


async def test_events_are_recorded_on_the_group(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    uid = str(uuid.uuid4())
    await kube.emit_event(namespace, "event-test", uid, "Warning", "WriterBusy",
                          "Deployment data-writer is held by another group")

    events = raw(client.CoreV1Api(api).list_namespaced_event, namespace,
                 field_selector=f"involvedObject.uid={uid}")["items"]
    [event] = events
    assert (event["type"], event["reason"]) == ("Warning", "WriterBusy")
    assert event["message"] == "Deployment data-writer is held by another group"
    assert event["involvedObject"]["kind"] == KIND
    assert event["involvedObject"]["name"] == "event-test"
    assert event["source"]["component"] == "snapgroup"
    assert event["reportingComponent"] == "snapgroup.dev/operator"


# -- leases --------------------------------------------------------------------------------


async def test_a_lease_has_one_holder_until_released(namespace: str, kube: KubeCluster) -> None:
    assert await kube.acquire_lease(namespace, "target-a", "first/u1", 60) is None
    assert await kube.acquire_lease(namespace, "target-a", "first/u1", 60) is None  # renewal
    assert await kube.acquire_lease(namespace, "target-a", "second/u2", 60) == "first/u1"

    await kube.release_lease(namespace, "target-a", "second/u2")  # not its lease: no effect
    assert await kube.acquire_lease(namespace, "target-a", "second/u2", 60) == "first/u1"

    waiting = asyncio.create_task(kube.wait_lease_change(namespace, "target-a", 60))
    await kube.release_lease(namespace, "target-a", "first/u1")
    await asyncio.wait_for(waiting, 30)  # the waiter learns of the release, not of a timeout
    assert await kube.acquire_lease(namespace, "target-a", "second/u2", 60) is None


async def test_an_expired_lease_is_taken_over(
    api: client.ApiClient, namespace: str, kube: KubeCluster
) -> None:
    assert await kube.acquire_lease(namespace, "target-b", "crashed/u1", 30) is None
    client.CoordinationV1Api(api).patch_namespaced_lease(
        "target-b", namespace, {"spec": {"renewTime": "2020-01-01T00:00:00.000000Z"}},
        _content_type="application/merge-patch+json",
    )  # its holder stopped renewing long ago

    assert await kube.acquire_lease(namespace, "target-b", "next/u2", 30) is None
    lease = raw(client.CoordinationV1Api(api).read_namespaced_lease, "target-b", namespace)
    assert lease["spec"]["holderIdentity"] == "next/u2"
    assert lease["spec"]["leaseTransitions"] == 1


async def test_waiting_on_a_lease_that_stays_ends_at_the_timeout(
    namespace: str, kube: KubeCluster
) -> None:
    assert await kube.acquire_lease(namespace, "target-c", "holder/u1", 60) is None
    await asyncio.wait_for(kube.wait_lease_change(namespace, "target-c", 1), 10)
    # No lease at all: nothing to wait for.
    await asyncio.wait_for(kube.wait_lease_change(namespace, "never-taken", 60), 10)
