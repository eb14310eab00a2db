"""Tests of the local cluster launcher: the control plane, the CSI storage, the supervisor.

Tests marked ``cluster`` use the session's running cluster (fixture ``local_cluster``); the
others start throwaway processes to check how the launcher reports and stops components.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from localcluster.cluster import (
    CSI_DRIVER,
    NODE_NAME,
    SERVICE_CIDR,
    SNAPSHOT_CLASS,
    STORAGE_CLASS,
    TESTS_DIR,
    ClusterError,
    ComponentError,
    LocalCluster,
    _Component,
)
from localcluster.fixtures import wait_for

# The `namespace` fixture (tests/localcluster/conftest.py) names each test's namespace after this.
NAMESPACE_PREFIX = "lc"


def _get(cluster: LocalCluster, path: str) -> Any:
    try:
        return cluster.api("GET", path)
    except ClusterError:
        return None


# --- the running cluster -------------------------------------------------------------------------


@pytest.mark.cluster
def test_node_is_ready_and_bleater_pods_run(local_cluster: LocalCluster) -> None:
    # What a user sees through the written kubeconfig.
    env = {**os.environ, "KUBECONFIG": str(local_cluster.kubeconfig)}
    kubectl = str(local_cluster.bin_dir / "kubectl")
    table = subprocess.run(
        [kubectl, "get", "nodes,pods", "-A"], env=env, capture_output=True, text=True, check=True
    ).stdout
    node_line = next(line for line in table.splitlines() if f"node/{NODE_NAME}" in line)
    assert node_line.split()[1] == "Ready", table

    pods = json.loads(
        subprocess.run(
            [kubectl, "get", "pods", "-n", "bleater", "-o", "json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["items"]
    by_name = {p["metadata"]["name"]: p for p in pods}
    for prefix in ("postgres", "mongodb", "minio", "data-writer"):
        assert any(name.startswith(prefix) for name in by_name), f"no {prefix} pod: {table}"
    for name, pod in by_name.items():
        ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        assert pod["status"]["phase"] == "Running" and ready.get("Ready") == "True", (name, table)
    assert local_cluster.failed_components() == {}


@pytest.mark.cluster
def test_services_get_loopback_cluster_ips(local_cluster: LocalCluster, namespace: str) -> None:
    local_cluster.kubectl("create", "service", "clusterip", "probe", "--tcp=8080:8080", "-n", namespace)
    svc = local_cluster.api("GET", f"/api/v1/namespaces/{namespace}/services/probe")
    assert ipaddress.ip_address(svc["spec"]["clusterIP"]) in ipaddress.ip_network(SERVICE_CIDR)
    pinned = local_cluster.api("GET", "/api/v1/namespaces/bleater/services/postgres")
    assert pinned["spec"]["clusterIP"] == "127.96.0.10"


@pytest.mark.cluster
def test_storage_classes_are_installed_as_defaults(local_cluster: LocalCluster) -> None:
    sc = local_cluster.api("GET", f"/apis/storage.k8s.io/v1/storageclasses/{STORAGE_CLASS}")
    assert sc["provisioner"] == CSI_DRIVER
    assert sc["volumeBindingMode"] == "Immediate"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    vsc = local_cluster.api("GET", f"/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses/{SNAPSHOT_CLASS}")
    assert vsc["driver"] == CSI_DRIVER and vsc["deletionPolicy"] == "Delete"
    annotations = vsc["metadata"]["annotations"]
    assert annotations["snapshot.storage.kubernetes.io/is-default-class"] == "true"


def _bound_volume_dir(cluster: LocalCluster, namespace: str, pvc: str) -> Path:
    def bound() -> Any:
        claim = _get(cluster, f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{pvc}")
        return claim if claim and claim["status"].get("phase") == "Bound" else None

    claim = wait_for(bound, 60, f"PVC {namespace}/{pvc} to be Bound")
    pv = cluster.api("GET", f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
    assert pv["spec"]["csi"]["driver"] == CSI_DRIVER
    directory: Path = cluster.csi_dir / str(pv["spec"]["csi"]["volumeHandle"])
    assert directory.is_dir()
    return directory


@pytest.mark.cluster
def test_snapshot_of_a_volume_restores_into_a_new_volume(local_cluster: LocalCluster, namespace: str) -> None:
    postgres = pwd.getpwnam("postgres")
    local_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
""",
    )
    source = _bound_volume_dir(local_cluster, namespace, "data")
    (source / "pgdata").mkdir(mode=0o700)
    (source / "pgdata" / "PG_VERSION").write_text("15\n")
    os.chown(source / "pgdata", postgres.pw_uid, postgres.pw_gid)
    os.chown(source / "pgdata" / "PG_VERSION", postgres.pw_uid, postgres.pw_gid)
    (source / "notes.txt").write_text("before the cut\n")
    (source / "latest").symlink_to("notes.txt")

    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    local_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=f"""
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata: {{name: data-snap}}
spec:
  volumeSnapshotClassName: {SNAPSHOT_CLASS}
  source: {{persistentVolumeClaimName: data}}
""",
    )

    def ready() -> Any:
        snap = _get(
            local_cluster,
            f"/apis/snapshot.storage.k8s.io/v1/namespaces/{namespace}/volumesnapshots/data-snap",
        )
        status = (snap or {}).get("status") or {}
        return status if status.get("readyToUse") and status.get("creationTime") else None

    status = wait_for(ready, 60, "VolumeSnapshot data-snap to be readyToUse with a creationTime")
    after = datetime.datetime.now(datetime.UTC)
    cut = datetime.datetime.fromisoformat(status["creationTime"].replace("Z", "+00:00"))
    assert before <= cut <= after
    assert status["restoreSize"] == "16Mi"
    content = local_cluster.api(
        "GET",
        "/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/" + status["boundVolumeSnapshotContentName"],
    )
    archive = local_cluster.csi_dir / "snapshots" / f"{content['status']['snapshotHandle']}.tar.gz"
    assert archive.is_file()

    # Written after the cut: the restored volume must not have it.
    (source / "notes.txt").write_text("after the cut\n")
    local_cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input="""
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: restored}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 16Mi}}
  dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: data-snap}
""",
    )
    restored = _bound_volume_dir(local_cluster, namespace, "restored")
    assert restored != source
    assert (restored / "notes.txt").read_text() == "before the cut\n"
    assert (restored / "latest").is_symlink() and (restored / "latest").read_text() == ("before the cut\n")
    assert (restored / "pgdata" / "PG_VERSION").read_text() == "15\n"
    pgdata = (restored / "pgdata").stat()
    assert (pgdata.st_uid, pgdata.st_mode & 0o777) == (postgres.pw_uid, 0o700)

    # deletionPolicy Delete and reclaimPolicy Delete remove the data too.
    local_cluster.kubectl("delete", "-n", namespace, "volumesnapshot", "data-snap")
    wait_for(lambda: not archive.exists(), 60, f"{archive} to be deleted with its snapshot")
    local_cluster.kubectl("delete", "-n", namespace, "pvc", "data", "restored")
    wait_for(
        lambda: not source.exists() and not restored.exists(),
        60,
        "the volume directories to be deleted with their PVCs",
    )


@pytest.mark.cluster
def test_killed_component_is_reported_by_name(local_cluster: LocalCluster) -> None:
    assert local_cluster.failed_components() == {}
    os.kill(local_cluster.pids()["csi-snapshotter"], signal.SIGKILL)
    try:
        failed = wait_for(local_cluster.failed_components, 10, "csi-snapshotter to be reported as failed")
        assert list(failed) == ["csi-snapshotter"]
        # The report carries the end of the component's log.
        assert local_cluster.log_tail("csi-snapshotter", lines=1) in failed["csi-snapshotter"]
        assert local_cluster.component_health()["csi-snapshotter"].startswith("not running")
    finally:
        local_cluster.restart_component("csi-snapshotter")
    assert local_cluster.failed_components() == {}


# --- reporting and stopping, with throwaway processes --------------------------------------------


def test_component_that_exits_is_named_with_its_log(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, node_emulator=False)
    cluster.logs_dir.mkdir()
    broken = _Component(
        "broken", ["sh", "-c", "echo 'listen 127.0.0.1:1: permission denied'; exit 3"], lambda: False
    )
    with pytest.raises(ComponentError) as error:
        cluster._start_and_wait([broken])
    message = str(error.value)
    assert "'broken' exited with code 3 before becoming ready" in message
    assert "listen 127.0.0.1:1: permission denied" in message
    cluster.down()


def test_component_that_never_gets_ready_is_named_and_stopped(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, node_emulator=False)
    cluster.logs_dir.mkdir()
    stuck = _Component("stuck", ["sh", "-c", "echo waiting; exec sleep 600"], lambda: False)
    stuck.timeout = 0.5
    with pytest.raises(ComponentError, match="'stuck' did not become ready within"):
        cluster._start_and_wait([stuck])
    pid = cluster.pids()["stuck"]
    cluster.down()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_down_from_another_process_stops_everything(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, node_emulator=False)
    cluster.logs_dir.mkdir()
    # A component with a child of its own, and a child that ignores SIGTERM.
    script = "trap '' TERM; sleep 600 & sleep 600"
    cluster._start_and_wait([_Component("stubborn", ["sh", "-c", script], lambda: True)])
    pid = cluster.pids()["stubborn"]
    group = [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]

    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "localcluster", "down", "--state-dir", str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        check=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    for member in group:
        alive = psutil.pid_exists(member) and psutil.Process(member).status() != "zombie"
        assert not alive, f"process {member} survived `down`"
    assert LocalCluster(tmp_path).pids() == {}, "down left components recorded as running"


def test_second_node_emulator_on_the_machine_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("localcluster.cluster._NODE_ADDRESS_LOCK", str(tmp_path / "node.lock"))
    first = LocalCluster(tmp_path / "first")
    lock = first._claim_node_addresses()
    try:
        with pytest.raises(ClusterError, match=r"another local cluster's node emulator.*first"):
            LocalCluster(tmp_path / "second")._claim_node_addresses()
    finally:
        os.close(lock)
    os.close(LocalCluster(tmp_path / "second")._claim_node_addresses())
