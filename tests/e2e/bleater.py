"""Reading the bleater data-writer's records from the three services, live or restored.

PostgreSQL is the real server; MongoDB is FerretDB behind the fsync-lock layer (a stand-in: no
mongod runs here); MinIO is an S3 server standing in for the MinIO server. The clients are the
real psycopg, pymongo and minio SDKs.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import urllib3
from minio import Minio
from pymongo import MongoClient

from e2e.kube import Kube

NAMESPACE = "bleater"
SERVICES = ("postgres", "mongodb", "minio")
PORTS = {"postgres": 5432, "mongodb": 27017, "minio": 9000}


@dataclass(frozen=True)
class Record:
    """One record as a service holds it."""

    seq: int
    at: datetime


class Bleater:
    """The bleater services, addressed at a host per service (Service IPs, or a restored pod's IP)."""

    def __init__(self, kube: Kube, namespace: str = NAMESPACE) -> None:
        self.kube = kube
        self.namespace = namespace
        self.pg = kube.secret(namespace, "postgres-credentials")
        self.mongo = kube.secret(namespace, "mongodb-credentials")
        self.s3 = kube.secret(namespace, "minio-credentials")

    def service_host(self, service: str) -> str:
        """The host in the service's Secret (its Service IP)."""
        if service == "postgres":
            return self.pg["host"]
        if service == "mongodb":
            return self.mongo["uri"].split("//", 1)[1].split("/", 1)[0].split("@")[-1].split(":")[0]
        return self.s3["endpoint"].split(":")[0]

    def records(self, service: str, host: str | None = None) -> list[Record]:
        """Every record of one service, by seq."""
        host = host or self.service_host(service)
        port = PORTS[service]
        if service == "postgres":
            with psycopg.connect(host=host, port=port, user=self.pg["username"],
                                 password=self.pg["password"], dbname=self.pg["database"],
                                 connect_timeout=5) as conn:
                rows = conn.execute("SELECT seq, created_at FROM events ORDER BY seq").fetchall()
            return [Record(int(s), t) for s, t in rows]
        if service == "mongodb":
            with MongoClient(host, port, directConnection=True, serverSelectionTimeoutMS=5000,
                             tz_aware=True, username=self.mongo["username"],
                             password=self.mongo["password"], authSource="admin") as mc:
                docs = mc["bleater"]["events"].find({}, {"seq": 1, "created_at": 1}).sort("seq", 1)
                return [Record(int(d["seq"]), d["created_at"]) for d in docs]
        s3 = Minio(f"{host}:{port}", access_key=self.s3["accessKey"], secret_key=self.s3["secretKey"],
                   secure=False, http_client=urllib3.PoolManager(timeout=5, retries=False))
        out = []
        for obj in s3.list_objects("bleater", prefix="events/", recursive=True):
            name = obj.object_name or ""
            out.append(Record(int(name.rsplit("/", 1)[1].split(".")[0]), obj.last_modified or datetime.min))
        return sorted(out, key=lambda r: r.seq)

    def newest(self, service: str, host: str | None = None) -> datetime | None:
        """Newest record time, read the way the operator reads it."""
        records = self.records(service, host)
        return max((r.at for r in records), default=None)

    def wait_new_records(self, after_seq: int, timeout: float = 60.0) -> int:
        """Wait until every service holds a record with seq > after_seq; return the newest seq."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tops = [max((r.seq for r in self.records(s)), default=0) for s in SERVICES]
            if min(tops) > after_seq:
                return min(tops)
            time.sleep(0.5)  # the writer ticks every second
        raise AssertionError(f"no record after seq {after_seq} in every service within {timeout}s")

    # -- restore -------------------------------------------------------------------------------

    def restore(self, snapshot: str, service: str, timeout: float = 180.0) -> str:
        """Restore a VolumeSnapshot into a new PVC and run a pod of the service's image on it.

        Returns the pod IP. The pod carries other labels than the service's, so the Service keeps
        sending the writer's traffic to the original pod.
        """
        deployment = self.kube.deployment(self.namespace, service)
        name = restore_name(snapshot)
        template = self.kube.api.sanitize_for_serialization(deployment.spec.template)
        pvc_volume = next(v for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v)
        original_pvc = self.kube.core.read_namespaced_persistent_volume_claim(
            pvc_volume["persistentVolumeClaim"]["claimName"], self.namespace)
        self.kube.core.create_namespaced_persistent_volume_claim(self.namespace, {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": original_pvc.spec.storage_class_name,
                "resources": {"requests": {"storage": original_pvc.spec.resources.requests["storage"]}},
                "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                               "name": snapshot},
            },
        })
        spec = copy.deepcopy(template["spec"])
        for volume in spec["volumes"]:
            if "persistentVolumeClaim" in volume:
                volume["persistentVolumeClaim"]["claimName"] = name
        self.kube.core.create_namespaced_pod(self.namespace, {
            "metadata": {"name": name, "labels": {"snapgroup.dev/restore-test": name}},
            "spec": spec,
        })
        pods = self.kube.wait_pods(self.namespace, f"snapgroup.dev/restore-test={name}", 1,
                                   timeout=timeout)
        ip: str = pods[0].status.pod_ip
        return ip

    def drop_restore(self, snapshot: str) -> None:
        """Delete a restore pod and its claim."""
        name = restore_name(snapshot)
        self.kube.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        self.kube.core.delete_namespaced_persistent_volume_claim(name, self.namespace)


def restore_name(snapshot: str) -> str:
    """A short, valid name (and label value) for the restore of one snapshot."""
    return "restore-" + hashlib.sha256(snapshot.encode()).hexdigest()[:16]


def contiguous(seqs: list[int]) -> bool:
    """True when sequence numbers have no gap and no duplicate."""
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


def utc(value: Any) -> datetime:
    """A timestamp from the status as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
