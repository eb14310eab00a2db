"""A SnapshotGroupRestore clones a bleater group into another namespace, on the local cluster.

PostgreSQL is the real server; MongoDB is FerretDB behind the fsync-lock layer and MinIO the S3
server (stand-ins, as in test_bleater_group). The clone's services are read through the clone's
own Secrets, whose addresses the restore pointed at the clone's Services.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.bleater import NAMESPACE, SERVICES, Bleater, contiguous, utc
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample
from snapgroup.api.labels import PG_BACKUP_LABEL, PG_BACKUP_WAL
from snapgroup.api.restore import PLURAL, RESTORE_TARGET_LABEL, RESTORE_UID_LABEL

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed")
OWN_SERVICE = {"postgres": "postgres", "mongodb": "mongodb", "minio": "minio"}


def restore(name: str, group: str, target: str) -> dict[str, Any]:
    return {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"groupName": group, "targetNamespace": target, "timeout": "5m"}}


@pytest.fixture
def target(kube: Kube) -> Iterator[str]:
    """A namespace that accepts clones from bleater; deleted after the test."""
    name = f"clone-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": name, "labels": {RESTORE_TARGET_LABEL: NAMESPACE}}})
    yield name
    kube.core.delete_namespace(name)


def create_restore(kube: Kube, body: dict[str, Any]) -> None:
    kube.custom.create_namespaced_custom_object("snapgroup.dev", "v1alpha1", NAMESPACE, PLURAL, body)


def wait_restore(kube: Kube, name: str, timeout: float = 300.0) -> dict[str, Any]:
    return kube.wait_custom(NAMESPACE, PLURAL, name,
                            lambda o: (o.get("status") or {}).get("phase") in TERMINAL, timeout,
                            "a terminal phase")


def wait_records(bleater: Bleater, service: str, timeout: float = 60.0) -> list[Any]:
    """The clone's records once its server answers (the workload is ready, the server may still
    be finishing recovery for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bleater.records(service)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def pods_of(kube: Kube, namespace: str) -> list[tuple[str, str, list[Any]]]:
    """Each pod's name, phase and init container states, for a failure's message."""
    return [(p.metadata.name, p.status.phase,
             [(c.name, c.state.to_dict()) for c in p.status.init_container_statuses or []])
            for p in kube.core.list_namespaced_pod(namespace).items]


def restored_server_log(local_cluster: Any, kube: Kube, namespace: str) -> str:
    """The log the node emulator keeps of the clone's PostgreSQL container."""
    (pod,) = [p for p in kube.core.list_namespaced_pod(namespace, label_selector="app=postgres").items
              if p.status.phase == "Running"]
    path = Path(local_cluster.state_dir) / "node" / "logs" / f"{namespace}_{pod.metadata.name}_postgres.log"
    return path.read_text(errors="replace")


def test_clone_serves_exactly_the_records_of_the_cut(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str, target: str,
    local_cluster: Any,
) -> None:
    kube.create_group(sample(group_name))
    group = kube.wait_group(NAMESPACE, group_name)
    assert group["status"]["phase"] == "Succeeded", group["status"]
    assert group["status"]["consistent"] is True
    cut = utc(group["status"]["earliestSnapshotTime"])
    recorded = {s["name"]: utc(s["lastRecordTime"]) for s in group["status"]["services"]}
    # The backup's label and WAL are kept with the PostgreSQL snapshot.
    postgres = next(s for s in group["status"]["services"] if s["type"] == "postgresql")
    start_lsn = postgres["evidence"]["backupStartLSN"]
    (pg_snapshot,) = postgres["volumeSnapshots"]
    kept = kube.custom.get_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", NAMESPACE, "volumesnapshots", pg_snapshot["name"])
    annotations = kept["metadata"].get("annotations") or {}
    assert f"START WAL LOCATION: {start_lsn} " in annotations.get(PG_BACKUP_LABEL, ""), postgres["evidence"]
    assert PG_BACKUP_WAL in annotations, postgres["evidence"]
    # The writer goes on after the group: the source now holds records the clone must not.
    after = max(r.seq for r in bleater.records("postgres"))
    bleater.wait_new_records(after)

    create_restore(kube, restore(f"{group_name}-clone", group_name, target))
    done = wait_restore(kube, f"{group_name}-clone")
    status = done["status"]
    assert status["phase"] == "Succeeded", (status.get("message"), pods_of(kube, target), operator.tail())
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Planned": "True", "Restored": "True"}
    assert all(w["ready"] for w in status["workloads"]), status["workloads"]
    assert {w["name"] for w in status["workloads"]} == {"postgres", "mongodb", "minio"}
    assert {v["pvc"] for v in status["volumes"]} == {"postgres-data", "mongodb-data", "minio-data"}
    recovery = {w["name"]: w.get("backupRecovery") for w in status["workloads"]}
    assert recovery["postgres"].startswith("backup recovery"), recovery

    clone = Bleater(kube, target)
    for service in SERVICES:
        # The clone's Secret names the clone's Service, not the source's.
        assert clone.service_host(service) != bleater.service_host(service)
    held = {service: wait_records(clone, service) for service in SERVICES}
    seqs = {service: [r.seq for r in records] for service, records in held.items()}
    assert seqs["postgres"] == seqs["mongodb"] == seqs["minio"], seqs
    assert contiguous(seqs["postgres"]) and seqs["postgres"][0] == 1
    for service, records in held.items():
        newest = max(r.at for r in records)
        assert newest <= cut, (service, newest, cut)
        assert newest == recorded[OWN_SERVICE[service]], (service, newest, recorded)
    # The restored server ran backup recovery from the backup's start, not crash recovery.
    log = restored_server_log(local_cluster, kube, target)
    assert f"starting backup recovery with redo LSN {start_lsn}," in log, log[-2000:]
    assert "completed backup recovery" in log, log[-2000:]
    source_top = max(r.seq for r in bleater.records("postgres"))
    assert source_top > seqs["postgres"][-1], "the source wrote on; the clone holds only the cut"

    # The writer was left out, and the snapshot copies are gone once the claims were bound.
    assert [d.metadata.name for d in kube.apps.list_namespaced_deployment(target).items
            if d.metadata.name == "data-writer"] == []
    uid = done["metadata"]["uid"]
    copies = kube.custom.list_cluster_custom_object(
        "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents",
        label_selector=f"{RESTORE_UID_LABEL}={uid}")
    assert copies["items"] == []
    # The group's own snapshots are untouched.
    for service in group["status"]["services"]:
        for snap in service["volumeSnapshots"]:
            assert kube.custom.get_namespaced_custom_object(
                "snapshot.storage.k8s.io", "v1", NAMESPACE, "volumesnapshots", snap["name"])


def test_restore_into_a_namespace_without_consent_creates_nothing(
    operator: OperatorProcess, kube: Kube, group_name: str
) -> None:
    kube.create_group(sample(group_name))
    assert kube.wait_group(NAMESPACE, group_name)["status"]["phase"] == "Succeeded"
    stranger = f"stranger-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": stranger}})
    try:
        create_restore(kube, restore(f"{group_name}-nope", group_name, stranger))
        status = wait_restore(kube, f"{group_name}-nope", timeout=60)["status"]
        assert status["phase"] == "Failed"
        planned = next(c for c in status["conditions"] if c["type"] == "Planned")
        assert (planned["status"], planned["reason"]) == ("False", "TargetNamespaceNotOptedIn")
        assert "spec.targetNamespace" in status["message"]
        assert kube.core.list_namespaced_persistent_volume_claim(stranger).items == []
        assert kube.apps.list_namespaced_deployment(stranger).items == []
        assert [s.metadata.name for s in kube.core.list_namespaced_secret(stranger).items
                if not s.metadata.name.startswith("default-token")] == []
    finally:
        try:
            kube.core.delete_namespace(stranger)
        except ApiException as exc:
            if exc.status != 404:
                raise
