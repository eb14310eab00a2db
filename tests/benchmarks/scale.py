"""Many groups at once: 1, 10, 50 SnapshotGroups applied together, each in its own namespace.

Each namespace is light enough for a 2-core machine: a data-writer writing only to S3, and one
PVC-backed S3 server (the ``minio/minio`` stand-in) behind a Service whose clusterIP is pinned to
``127.96.<10+i>.12`` (the local cluster has no DNS; the Secret names the service by IP). Every
namespace's pods are Ready and its writer has written before the groups are applied. The round of
one group runs several times: its median is the lone-group window the larger rounds are held to.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import urllib3
import yaml
from minio import Minio

from benchmarks.measure import (
    JSON,
    BenchmarkError,
    FinishedGroup,
    ResourceSampler,
    apiserver_requests,
    apiserver_snapshot_requests,
    csi_archives,
    delta,
    median,
    operator_requests,
    pipeline_means,
    pod_ready,
    progress,
    snapshot_pipeline,
    summary,
    watch_until,
)
from e2e.kube import GROUP, PLURAL, TERMINAL, VERSION, Kube
from e2e.operator_process import OperatorProcess
from localcluster.cluster import SNAPSHOT_CLASS, STORAGE_CLASS, LocalCluster

SCALE_LABEL = "benchmarks.snapgroup.dev/scale"
ROUND_LABEL = "benchmarks.snapgroup.dev/round"
BUCKET = "bleater"
ACCESS_KEY = "bench"
SECRET_KEY = "bench-minio-sample"  # a sample value: the stand-in wants 8 characters or more
S3_PORT = 9000
READY_TIMEOUT = 900.0
GONE_TIMEOUT = 900.0
ROUND_TIMEOUT = 900.0


def service_ip(index: int) -> str:
    """The pinned clusterIP of namespace ``index`` (1-based)."""
    if not 1 <= index <= 200:
        raise ValueError("namespace index must be 1..200 to stay inside 127.96.11-210.x")
    return f"127.96.{10 + index}.12"


def namespace_name(groups: int, index: int) -> str:
    """The namespace of one group of a round."""
    return f"bench-scale-{groups}-{index:02d}"


def namespace_manifests(namespace: str, ip: str) -> list[JSON]:
    """Namespace, credentials, PVC, S3 server with its Service, and an S3-only data-writer."""
    endpoint = f"{ip}:{S3_PORT}"
    labels = {SCALE_LABEL: "true"}
    secret_env = [
        {"name": env, "valueFrom": {"secretKeyRef": {"name": "minio-credentials", "key": key}}}
        for env, key in (("S3_ENDPOINT", "endpoint"), ("S3_ACCESS_KEY", "accessKey"),
                         ("S3_SECRET_KEY", "secretKey"))
    ]

    def deployment(name: str, container: JSON, volumes: list[JSON] | None = None) -> JSON:
        pod_spec: JSON = {"terminationGracePeriodSeconds": 10, "containers": [container]}
        if volumes:
            pod_spec["volumes"] = volumes
        return {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name, **labels}},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name, **labels}}, "spec": pod_spec},
            },
        }

    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}},
        {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "minio-credentials", "namespace": namespace, "labels": labels},
            "type": "Opaque",
            "stringData": {"endpoint": endpoint, "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY},
        },
        {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "minio-data", "namespace": namespace, "labels": labels},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                     "resources": {"requests": {"storage": "1Gi"}}},
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "minio", "namespace": namespace, "labels": labels},
            "spec": {"clusterIP": ip, "selector": {"app": "minio"},
                     "ports": [{"name": "s3", "port": S3_PORT, "targetPort": "s3", "protocol": "TCP"}]},
        },
        deployment("minio", {
            "name": "minio",
            "image": "minio/minio",
            "args": ["server", "/data"],
            "ports": [{"name": "s3", "containerPort": S3_PORT, "protocol": "TCP"}],
            "env": [
                {"name": "MINIO_ROOT_USER",
                 "valueFrom": {"secretKeyRef": {"name": "minio-credentials", "key": "accessKey"}}},
                {"name": "MINIO_ROOT_PASSWORD",
                 "valueFrom": {"secretKeyRef": {"name": "minio-credentials", "key": "secretKey"}}},
            ],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "readinessProbe": {"tcpSocket": {"port": "s3"}, "periodSeconds": 2, "failureThreshold": 3},
        }, volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "minio-data"}}]),
        deployment("data-writer", {
            "name": "data-writer",
            "image": "snapgroup.dev/bleater-data-writer:0.1",
            "env": [*secret_env, {"name": "S3_BUCKET", "value": BUCKET},
                    {"name": "WRITE_INTERVAL_SECONDS", "value": "1"}],
        }),
    ]


def group_manifest(namespace: str, name: str, round_id: str) -> JSON:
    """A SnapshotGroup over the namespace's writer and its one S3 service."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "SnapshotGroup",
        "metadata": {"name": name, "namespace": namespace, "labels": {ROUND_LABEL: round_id}},
        "spec": {
            "volumeSnapshotClassName": SNAPSHOT_CLASS,
            "freezeBudget": "60s",
            "writers": [{"kind": "Deployment", "name": "data-writer"}],
            "services": [{
                "name": "minio", "type": "minio", "pvcs": ["minio-data"],
                "connection": {"secretRef": {"name": "minio-credentials"}},
                "lastRecord": {"bucket": BUCKET},
            }],
        },
    }


@dataclass
class GroupOutcome(FinishedGroup):
    """One group of a round."""

    namespace: str
    name: str
    status: JSON


    def as_json(self) -> JSON:
        """Plain data for results.json."""
        reason = next((c.get("reason") for c in self.status.get("conditions") or []
                       if c.get("type") == "Succeeded"), None)
        out: JSON = {
            "namespace": self.namespace, "name": self.name, "phase": self.phase,
            "consistent": self.consistent, "reason": reason, "message": self.status.get("message"),
            "window": self.window,
            "breakdown": (self.status.get("freeze") or {}).get("breakdown") or {},
            "startTime": self.status.get("startTime"),
            "completionTime": self.status.get("completionTime"),
        }
        return out


class ScaleBenchmark:
    """Rounds of N groups at once, each round in fresh namespaces deleted afterwards."""

    def __init__(self, cluster: LocalCluster, kube: Kube, operator: OperatorProcess,
                 sizes: list[int], lone_repeats: int) -> None:
        self.cluster = cluster
        self.kube = kube
        self.operator = operator
        self.sizes = sizes
        self.lone_repeats = lone_repeats

    def run(self) -> JSON:
        """Every round; the lone-group round first, since the others are compared with it."""
        rounds: list[JSON] = []
        lone: float | None = None
        for size in sorted(self.sizes):
            repeats = self.lone_repeats if size == 1 else 1
            outcomes = self._round(size, repeats)
            if size == 1:
                lone = median(o["window"] for rep in outcomes for o in rep["groups"])
            for rep in outcomes:
                windows = [g["window"] for g in rep["groups"]]
                if lone:
                    rep["groups"] = [{**g, "ratioToLone": round(g["window"] / lone, 3)}
                                     for g in rep["groups"]]
                    rep["maxRatioToLone"] = round(max(windows) / lone, 3)
            rounds.extend(outcomes)
        return {"loneMedian": round(lone, 3) if lone else None, "rounds": rounds}

    def _round(self, size: int, repeats: int) -> list[JSON]:
        namespaces = [namespace_name(size, i) for i in range(1, size + 1)]
        progress(f"scale {size}: creating {size} namespace(s)")
        docs = [doc for i, ns in enumerate(namespaces, start=1)
                for doc in namespace_manifests(ns, service_ip(i))]
        try:
            started = time.monotonic()
            self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), timeout=600)
            self._wait_ready(size)
            self._wait_written(size)
            ready_seconds = time.monotonic() - started
            progress(f"scale {size}: {2 * size} pods Ready and writing in {ready_seconds:.0f}s")
            results = []
            for repeat in range(repeats):
                if repeat:
                    self._wait_ready(size)
                results.append(self._apply_groups(size, namespaces, repeat, ready_seconds))
            return results
        finally:
            self._delete_namespaces(size)

    def _wait_ready(self, size: int) -> None:
        watch_until(
            self.kube.core.list_pod_for_all_namespaces, label_selector=SCALE_LABEL,
            predicate=lambda pods: sum(pod_ready(p) for p in pods.values()) == 2 * size
            and len(pods) == 2 * size,
            timeout=READY_TIMEOUT, what=f"{2 * size} benchmark pods Ready")

    def _wait_written(self, size: int) -> None:
        """Wait until every namespace's writer has written a record (the bucket exists)."""
        deadline = time.monotonic() + READY_TIMEOUT
        waiting = set(range(1, size + 1))
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
        while waiting:
            for index in sorted(waiting):
                client = Minio(f"{service_ip(index)}:{S3_PORT}", access_key=ACCESS_KEY,
                               secret_key=SECRET_KEY, secure=False, http_client=http)
                try:
                    if next(iter(client.list_objects(BUCKET, prefix="events/")), None) is not None:
                        waiting.discard(index)
                except Exception:  # no bucket yet, or the server still starting: look again
                    continue
            if waiting and time.monotonic() > deadline:
                raise BenchmarkError(f"writers of namespaces {sorted(waiting)} wrote nothing within "
                                     f"{READY_TIMEOUT:.0f}s")
            if waiting:
                time.sleep(0.5)  # the writers tick once a second
        http.clear()

    def _apply_groups(self, size: int, namespaces: list[str], repeat: int, ready_seconds: float) -> JSON:
        round_id = f"{size}-{repeat}"
        sampler = ResourceSampler(self._operator_pid())
        before_operator = operator_requests(self.operator)
        before_api = apiserver_requests(self.cluster)
        pipeline_before = snapshot_pipeline(self.cluster)
        snapshot_api_before = apiserver_snapshot_requests(self.cluster)
        sampler.start()
        started_wall = time.time()
        started = time.monotonic()
        for index, namespace in enumerate(namespaces, start=1):
            self.kube.create_group(group_manifest(namespace, f"scale-{size}-{repeat}-{index:02d}", round_id))
        applied = time.monotonic() - started
        groups = watch_until(
            self.kube.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
            label_selector=f"{ROUND_LABEL}={round_id}",
            predicate=lambda gs: len(gs) == size and all(
                (g.get("status") or {}).get("phase") in TERMINAL for g in gs.values()),
            timeout=ROUND_TIMEOUT, what=f"{size} groups finished")
        all_done = time.monotonic() - started
        ended_wall = time.time()
        use = sampler.stop()
        archives = [a for a in csi_archives(self.cluster) if started_wall <= a.cut_at <= ended_wall]
        pipeline = pipeline_means(snapshot_pipeline(self.cluster), pipeline_before)
        snapshot_api = delta(apiserver_snapshot_requests(self.cluster), snapshot_api_before)
        operator_delta = delta(operator_requests(self.operator), before_operator)
        api_delta = delta(apiserver_requests(self.cluster), before_api)
        outcomes = [GroupOutcome(g["metadata"]["namespace"], g["metadata"]["name"], g.get("status") or {})
                    for _, g in sorted(groups.items())]
        progress(f"scale {size} (repeat {repeat + 1}): all finished in {all_done:.1f}s, "
                 f"{sum(o.phase == 'Succeeded' for o in outcomes)}/{size} Succeeded")
        return {
            "size": size,
            "repeat": repeat,
            "podsReadySeconds": round(ready_seconds, 1),
            "applySeconds": round(applied, 3),
            "timeToAllFinished": round(all_done, 3),
            "succeeded": sum(o.phase == "Succeeded" for o in outcomes),
            "consistent": sum(o.consistent for o in outcomes),
            "window": summary(o.window for o in outcomes),
            "operatorCpuSeconds": use.cpu_seconds,
            "operatorPeakRssBytes": use.peak_rss_bytes,
            "operatorStartRssBytes": use.start_rss_bytes,
            "operatorRequests": operator_delta,
            "operatorRequestsPerGroup": round(sum(operator_delta.values()) / size, 1),
            "apiserverRequests": api_delta,
            "apiserverRequestsPerGroup": round(sum(api_delta.values()) / size, 1),
            "clusterRssBytes": self.cluster.resident_memory(),
            "csi": {
                "snapshots": len(archives),
                "archiveSeconds": summary(a.seconds for a in archives),
                "firstCutAfterApply": round(min((a.cut_at for a in archives), default=math.nan)
                                            - started_wall, 3),
                "lastCutAfterApply": round(max((a.cut_at for a in archives), default=math.nan)
                                           - started_wall, 3),
                "pipeline": pipeline,
                # Every client's requests on VolumeSnapshots and contents (the operator's too).
                "apiRequests": snapshot_api,
                "apiRequestsPerSecond": round(sum(snapshot_api.values()) / all_done, 2),
            },
            "groups": [o.as_json() for o in outcomes],
        }

    def _operator_pid(self) -> int:
        if self.operator.process is None:
            raise BenchmarkError("the operator is not running")
        return self.operator.process.pid

    def _delete_namespaces(self, size: int) -> None:
        progress(f"scale {size}: deleting the namespaces")
        self.cluster.kubectl("delete", "namespace", "-l", f"{SCALE_LABEL}=true", "--wait=false",
                             "--ignore-not-found", timeout=300)
        watch_until(self.kube.core.list_namespace, label_selector=f"{SCALE_LABEL}=true",
                    predicate=lambda nss: not nss, timeout=GONE_TIMEOUT, what="benchmark namespaces gone")
