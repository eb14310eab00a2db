"""The node emulator (localcluster.node) against the session's local cluster: what a user sees.

Pods are created in a fresh namespace; their processes are found through the node
emulator's process record (`<state>/node/pods/<uid>/processes.json`) to check what runs
with which environment, and that nothing is left running once a pod is gone.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localcluster.cluster import ClusterError, LocalCluster
from localcluster.fixtures import wait_for

pytestmark = pytest.mark.cluster

# The `namespace` fixture (tests/localcluster/conftest.py) names each test's namespace after this.
NAMESPACE_PREFIX = "node"
POSTGRES_PASSWORD = "node-test-pw"


def _get(cluster: LocalCluster, path: str) -> Any:
    try:
        return cluster.api("GET", path)
    except ClusterError as error:
        if "HTTP 404" in str(error):
            return None
        raise


def _pod_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def _ready_pod(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    pod = _get(cluster, _pod_path(namespace, name))
    if pod is None:
        return None
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod if conditions.get("Ready") == "True" else None


def _processes(cluster: LocalCluster, pod: dict[str, Any]) -> list[int]:
    record = cluster.state_dir / "node" / "pods" / pod["metadata"]["uid"] / "processes.json"
    return [int(entry["pid"]) for entry in json.loads(record.read_text())]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _postgres_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 20,
            "containers": [
                {
                    "name": "postgres",
                    "image": "docker.io/library/postgres:15.6",
                    "ports": [{"name": "pg", "containerPort": 5432}],
                    "env": [
                        {"name": "POSTGRES_USER", "value": "tester"},
                        {
                            "name": "POSTGRES_PASSWORD",
                            "valueFrom": {"secretKeyRef": {"name": "pg", "key": "password"}},
                        },
                        {"name": "POSTGRES_DB", "value": "$(POSTGRES_USER)db"},
                    ],
                    "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def test_unknown_image_stays_pending_with_an_event(local_cluster: LocalCluster, namespace: str) -> None:
    local_cluster.kubectl("run", "web", "--image=nginx:1.25", "-n", namespace)

    def waiting_reason() -> str | None:
        pod = _get(local_cluster, _pod_path(namespace, "web"))
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    assert wait_for(waiting_reason, 30, "a waiting reason on pod web", interval=0.1) == "ImageNotEmulated"
    assert local_cluster.api("GET", _pod_path(namespace, "web"))["status"]["phase"] == "Pending"
    events = wait_for(
        lambda: [
            e
            for e in local_cluster.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
            if e["reason"] == "ImageNotEmulated"
        ],
        30,
        "an ImageNotEmulated event",
        interval=0.1,
    )
    assert events[0]["involvedObject"]["name"] == "web"
    assert "nginx:1.25" in events[0]["message"]


def test_postgres_pod_env_service_proxy_restart_and_deletion(
    local_cluster: LocalCluster, namespace: str
) -> None:
    cluster = local_cluster
    cluster.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        {"metadata": {"name": "pg"}, "stringData": {"password": POSTGRES_PASSWORD}},
    )
    service = cluster.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "db"},
            "spec": {"selector": {"app": "db"}, "ports": [{"port": 15432, "targetPort": "pg"}]},
        },
    )
    cluster.api("POST", _pod_path(namespace), _postgres_pod("db-0", {"app": "db"}))
    pod = wait_for(lambda: _ready_pod(cluster, namespace, "db-0"), 120, "pod db-0 to be Ready", interval=0.1)

    status = pod["status"]
    assert pod["spec"]["nodeName"] == "local-node"
    assert status["phase"] == "Running"
    assert status["podIP"].startswith("127.10.")
    assert status["hostIP"] == "127.0.0.1"
    assert status["containerStatuses"][0]["started"] is True
    (pid,) = _processes(cluster, pod)
    env = _environ(pid)
    log_file = cluster.state_dir / "node" / "logs" / f"{namespace}_db-0_postgres.log"
    assert "database system is ready to accept connections" in log_file.read_text()

    # Through the Service's ClusterIP, with the password from the Secret and the database
    # name from an expanded $(VAR).
    def query(sql: str) -> Any:
        with psycopg.connect(
            host=service["spec"]["clusterIP"],
            port=15432,
            user="tester",
            password=POSTGRES_PASSWORD,
            dbname="testerdb",
            connect_timeout=5,
        ) as connection:
            row = connection.execute(sql.encode()).fetchone()
            return row[0] if row else None

    assert query("select current_database()") == "testerdb"
    # The server itself gets none of the container env (PG* variables would redirect it).
    assert "POSTGRES_PASSWORD" not in env

    # A crashed container is restarted and counted.
    os.kill(pid, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        current = _ready_pod(cluster, namespace, "db-0")
        if current and current["status"]["containerStatuses"][0]["restartCount"] == 1:
            return current
        return None

    pod = wait_for(restarted, 120, "db-0 to restart once and be Ready again", interval=0.1)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 128 + signal.SIGKILL
    assert query("select 1") == 1

    # Deleting waits for the processes: once the object is gone, so are they.
    (pid,) = _processes(cluster, pod)
    cluster.api("DELETE", _pod_path(namespace, "db-0"))
    wait_for(
        lambda: _get(cluster, _pod_path(namespace, "db-0")) is None, 60, "db-0 to be deleted", interval=0.1
    )
    assert not _alive(pid), "the pod object was removed while its postgres still ran"


def test_pod_env_follows_the_kubelet(local_cluster: LocalCluster, namespace: str) -> None:
    cluster = local_cluster
    cluster.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        {"metadata": {"name": "settings"}, "data": {"interval": "7", "mode": "fast"}},
    )
    cluster.api(
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        {
            "metadata": {"name": "my-db"},
            "spec": {"selector": {"app": "nothing"}, "ports": [{"name": "sql", "port": 5432}]},
        },
    )
    cluster.api(
        "POST",
        _pod_path(namespace),
        {
            "metadata": {"name": "writer"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "containers": [
                    {
                        "name": "writer",
                        "image": "snapgroup.dev/bleater-data-writer:0.1",
                        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
                        "env": [
                            {"name": "PGHOST", "value": "$(MY_DB_SERVICE_HOST)"},
                            {"name": "PGPORT", "value": "$(MY_DB_SERVICE_PORT_SQL)"},
                            {
                                "name": "WRITE_INTERVAL_SECONDS",
                                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "interval"}},
                            },
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "LATER", "value": "$(DEFINED_BELOW)"},
                            {"name": "DEFINED_BELOW", "value": "x"},
                        ],
                    }
                ],
            },
        },
    )
    pod = wait_for(
        lambda: _ready_pod(cluster, namespace, "writer"), 60, "pod writer to be Ready", interval=0.1
    )
    (pid,) = _processes(cluster, pod)
    env = _environ(pid)
    service = cluster.api("GET", f"/api/v1/namespaces/{namespace}/services/my-db")
    assert env["PGHOST"] == service["spec"]["clusterIP"]
    assert env["MY_DB_SERVICE_HOST"] == service["spec"]["clusterIP"]
    assert env["PGPORT"] == "5432"
    assert env["WRITE_INTERVAL_SECONDS"] == "7"
    assert env["CFG_mode"] == "fast"
    assert env["POD_IP"] == pod["status"]["podIP"]
    assert env["POD_NAME"] == "writer"
    assert env["LATER"] == "$(DEFINED_BELOW)"
    assert "KUBERNETES_SERVICE_HOST" in env
