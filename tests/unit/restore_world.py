"""A bleater-like source namespace as the API server stores it, for the SnapshotGroupRestore tests.

`bleater()` returns every object by (kind, namespace, name): the sample's PostgreSQL, MongoDB
and MinIO (Secret with the Service IP as host, claim, Deployment, Service with a fixed cluster IP),
the data-writer (the group's writer), a Succeeded and Consistent SnapshotGroup, its three ready
VolumeSnapshots and their VolumeSnapshotContents, the StorageClass, and the target namespace
labelled to accept clones from bleater. Tests change the dict, then read it as a `SourceWorld`
(`source_world`) or load it into `unit.fake_objects.FakeObjects`.
"""

from __future__ import annotations

import base64
import copy
import gzip
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snapgroup.api.labels import (
    GROUP_UID_LABEL,
    PG_BACKUP_LABEL,
    PG_BACKUP_WAL,
    PG_BACKUP_WAL_START,
)
from snapgroup.api.restore import RESTORE_TARGET_LABEL, RESTORE_UID_LABEL
from snapgroup.orchestration.restore_plan import RestoreRef, SourceWorld
from snapgroup.orchestration.snapshots import snapshot_manifest

JSON = dict[str, Any]
Key = tuple[str, str, str]
Objects = dict[Key, JSON]

SOURCE = "bleater"
TARGET = "bleater-clone"
GROUP = "bleater-snapshot"
GROUP_UID = "0b7d4c1e-3f5a-4e8b-9c2d-6a1f0e9b8d7c"
RESTORE = "bleater-snapshot-to-bleater-clone"
RESTORE_UID = "5e2a9c3b-8d4f-4a1e-b6c7-0f9e8d7c6b5a"
REF = RestoreRef(SOURCE, RESTORE, RESTORE_UID)
DRIVER = "hostpath.csi.snapgroup.dev"
STORAGE_CLASS = "csi-hostpath-sc"
IMAGE = "registry.example/snapgroup:0.1.0"
PGDATA = "/var/lib/postgresql/data/pgdata"
PG_MOUNT = "/var/lib/postgresql/data"
EARLIEST_CUT = "2026-11-27T12:00:01Z"

IPS = {"postgres": "127.96.0.10", "mongodb": "127.96.0.11", "minio": "127.96.0.12"}
PORTS = {"postgres": 5432, "mongodb": 27017, "minio": 9000}
CLAIMS = {"postgres": "postgres-data", "mongodb": "mongodb-data", "minio": "minio-data"}
TYPES = {"postgres": "postgresql", "mongodb": "mongodb", "minio": "minio"}
MOUNTS = {"postgres": PG_MOUNT, "mongodb": "/data/db", "minio": "/data"}
HANDLES = {s: f"snapshot-{s}-7f3e9a" for s in CLAIMS}

BACKUP_LABEL = (
    "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n"
    "CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n"
    "START TIME: 2026-11-27 12:00:00 UTC\nLABEL: snapgroup bleater/bleater-snapshot\n"
    "START TIMELINE: 1\n"
)
WAL = base64.b64encode(gzip.compress(b"\x00\x01WAL-SEGMENT-BYTES" * 64, mtime=0)).decode()
WAL_START = '{"segmentSize": 16777216, "start": "0/5000028", "timeline": 1}'
PG_ANNOTATIONS = {PG_BACKUP_LABEL: BACKUP_LABEL, PG_BACKUP_WAL: WAL, PG_BACKUP_WAL_START: WAL_START}

TLS_DER = b"0\x82\x01\n\x02\x82\x01\x01\x00\xc3\xff 127.96.0.12 minio.bleater.svc \xfe\x00"
"""A binary Secret value (not UTF-8) that spells a source address in its bytes: never rewritten."""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def _meta(name: str, namespace: str | None = SOURCE, **extra: Any) -> JSON:
    meta: JSON = {"name": name, "uid": f"uid-{name}", "resourceVersion": "1001",
                  "creationTimestamp": "2026-11-20T09:00:00Z"}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


def secret(name: str, data: dict[str, str], type_: str = "Opaque",
           binary: dict[str, bytes] | None = None) -> JSON:
    """A Secret as stored: every value base64 in `data`."""
    encoded = {k: b64(v) for k, v in data.items()}
    encoded |= {k: base64.b64encode(v).decode() for k, v in (binary or {}).items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name), "type": type_, "data": encoded}


def config_map(name: str, data: dict[str, str]) -> JSON:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name), "data": dict(data)}


def claim(name: str, size: str = "1Gi") -> JSON:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": _meta(name, labels={"app": name.removesuffix("-data")},
                          annotations={"pv.kubernetes.io/bind-completed": "yes"}),
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                 "volumeMode": "Filesystem", "resources": {"requests": {"storage": size}},
                 "volumeName": f"pvc-{name}"},
        "status": {"phase": "Bound", "capacity": {"storage": size}},
    }


def service(name: str, *, ip: str | None = None, port: int = 80, selector: dict[str, str] | None = None,
            type_: str = "ClusterIP", node_port: int | None = None) -> JSON:
    """A Service as stored: the API server has filled in clusterIPs, families and policies."""
    ports: list[JSON] = [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}]
    if node_port is not None:
        ports[0]["nodePort"] = node_port
    spec: JSON = {"type": type_, "ports": ports, "sessionAffinity": "None",
                  "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                  "internalTrafficPolicy": "Cluster"}
    if ip is not None:
        spec["clusterIP"] = ip
        spec["clusterIPs"] = [ip]
    if selector is not None:
        spec["selector"] = dict(selector)
    if type_ in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Cluster"
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, labels={"app": name}),
            "spec": spec, "status": {"loadBalancer": {}}}


def container(name: str, image: str, *, env: list[JSON] | None = None,
              mounts: list[JSON] | None = None, **extra: Any) -> JSON:
    body: JSON = {"name": name, "image": image, "env": env or [], "resources": {},
                  "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}
    if mounts:
        body["volumeMounts"] = mounts
    body.update(extra)
    return body


def secret_env(var: str, secret_name: str, key: str) -> JSON:
    return {"name": var, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def workload(name: str, containers: list[JSON], *, kind: str = "Deployment", replicas: int = 1,
             volumes: list[JSON] | None = None, labels: dict[str, str] | None = None,
             annotations: dict[str, str] | None = None, **pod: Any) -> JSON:
    """A Deployment or StatefulSet as stored, with status and the annotations kubectl and the
    controller add."""
    pod_labels = labels or {"app": name}
    pod_spec: JSON = {"containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                      "terminationGracePeriodSeconds": 30, **pod}
    if volumes:
        pod_spec["volumes"] = volumes
    spec: JSON = {"replicas": replicas, "selector": {"matchLabels": dict(pod_labels)},
                  "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod_spec}}
    if kind == "Deployment":
        spec["strategy"] = {"type": "Recreate"}
    stored_annotations = {"kubectl.kubernetes.io/last-applied-configuration": '{"kind":"' + kind + '"}'}
    if kind == "Deployment":
        stored_annotations["deployment.kubernetes.io/revision"] = "1"
    stored_annotations |= annotations or {}
    return {
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": _meta(name, labels=dict(pod_labels), annotations=stored_annotations, generation=3),
        "spec": spec,
        "status": {"observedGeneration": 3, "replicas": replicas, "readyReplicas": replicas},
    }


def claim_volume(claim_name: str, volume: str = "data") -> JSON:
    return {"name": volume, "persistentVolumeClaim": {"claimName": claim_name}}


def server(name: str) -> JSON:
    """The postgres, mongodb or minio Deployment of the bleater sample."""
    images = {"postgres": "postgres:15", "mongodb": "mongo:7.0",
              "minio": "quay.io/minio/minio:RELEASE.2025-04-22T22-12-26Z"}
    creds = f"{name}-credentials"
    env = {
        "postgres": [secret_env("POSTGRES_USER", creds, "username"),
                     secret_env("POSTGRES_PASSWORD", creds, "password"),
                     secret_env("POSTGRES_DB", creds, "database"),
                     {"name": "PGDATA", "value": PGDATA}],
        "mongodb": [secret_env("MONGO_INITDB_ROOT_USERNAME", creds, "username"),
                    secret_env("MONGO_INITDB_ROOT_PASSWORD", creds, "password")],
        "minio": [secret_env("MINIO_ROOT_USER", creds, "accessKey"),
                  secret_env("MINIO_ROOT_PASSWORD", creds, "secretKey")],
    }[name]
    mounts = [{"name": "data", "mountPath": MOUNTS[name]}]
    volumes = [claim_volume(CLAIMS[name])]
    extra: JSON = {}
    if name == "postgres":
        extra["securityContext"] = {"runAsUser": 999, "runAsGroup": 999, "allowPrivilegeEscalation": False}
    if name == "minio":
        extra["args"] = ["server", "/data"]
        mounts.append({"name": "certs", "mountPath": "/root/.minio/certs", "readOnly": True})
        volumes.append({"name": "certs", "secret": {"secretName": "minio-tls", "defaultMode": 420}})
    body = container(name, images[name], env=env, mounts=mounts,
                     ports=[{"name": name, "containerPort": PORTS[name], "protocol": "TCP"}], **extra)
    return workload(name, [body], volumes=volumes)


def data_writer() -> JSON:
    """The group's writer: talks to the three servers through their Secrets and a ConfigMap."""
    env = [
        {"name": "PGHOST", "value": "$(POSTGRES_SERVICE_HOST)"},
        secret_env("PGUSER", "postgres-credentials", "username"),
        secret_env("PGPASSWORD", "postgres-credentials", "password"),
        secret_env("MONGODB_PASSWORD", "mongodb-credentials", "password"),
        {"name": "S3_ENDPOINT", "value": "minio.bleater.svc:9000"},
        {"name": "PG_FALLBACK", "value": "postgresql://127.96.0.10:5432/bleater"},
        secret_env("S3_SECRET_KEY", "minio-credentials", "secretKey"),
    ]
    body = container("data-writer", "snapgroup.dev/bleater-data-writer:0.1", env=env,
                     envFrom=[{"configMapRef": {"name": "bleater-endpoints"}}])
    return workload("data-writer", [body], serviceAccountName="data-writer", serviceAccount="data-writer")


def snapshot(service_name: str, annotations: dict[str, str] | None = None) -> JSON:
    """One of the group's VolumeSnapshots, cut and ready, bound to its content."""
    body = snapshot_manifest(namespace=SOURCE, group=GROUP, group_uid=GROUP_UID, service=service_name,
                             pvc=CLAIMS[service_name], snapshot_class="csi-hostpath-snapclass")
    body["metadata"] |= {"uid": f"uid-snap-{service_name}", "resourceVersion": "2002",
                         "creationTimestamp": EARLIEST_CUT}
    if annotations:
        body["metadata"]["annotations"] = dict(annotations)
    body["status"] = {"readyToUse": True, "restoreSize": "1Gi", "creationTime": EARLIEST_CUT,
                      "boundVolumeSnapshotContentName": content_name(service_name)}
    return body


def snapshot_name(service_name: str) -> str:
    return f"{GROUP}-{service_name}-{CLAIMS[service_name]}"


def content_name(service_name: str) -> str:
    return f"snapcontent-uid-snap-{service_name}"


def content(service_name: str) -> JSON:
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
        "metadata": _meta(content_name(service_name), namespace=None),
        "spec": {"deletionPolicy": "Delete", "driver": DRIVER,
                 "volumeSnapshotClassName": "csi-hostpath-snapclass",
                 "source": {"volumeHandle": f"pvc-{CLAIMS[service_name]}"},
                 "volumeSnapshotRef": {"kind": "VolumeSnapshot", "namespace": SOURCE,
                                       "name": snapshot_name(service_name),
                                       "uid": f"uid-snap-{service_name}"}},
        "status": {"readyToUse": True, "restoreSize": 1073741824, "creationTime": 1795867201000000000,
                   "snapshotHandle": HANDLES[service_name]},
    }


def snapshot_group(phase: str = "Succeeded", consistent: bool | None = True) -> JSON:
    services = []
    for name in CLAIMS:
        services.append({"name": name, "type": TYPES[name], "pvcs": [CLAIMS[name]],
                         "connection": {"secretRef": {"name": f"{name}-credentials"}}})
    condition = {"type": "Consistent", "status": "True" if consistent else "False",
                 "reason": "NoRecordNewerThanCut" if consistent else "RecordsNewerThanCut",
                 "message": "", "lastTransitionTime": "2026-11-27T12:00:05Z"}
    return {
        "apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroup",
        "metadata": _meta(GROUP, uid=GROUP_UID, generation=1),
        "spec": {"volumeSnapshotClassName": "csi-hostpath-snapclass", "freezeBudget": "60s",
                 "writers": [{"kind": "Deployment", "name": "data-writer"}], "services": services},
        "status": {
            "phase": phase, "consistent": consistent, "earliestSnapshotTime": EARLIEST_CUT,
            "snapshotsReady": "3/3", "conditions": [condition],
            "services": [{"name": name, "type": TYPES[name], "volumeSnapshots": [
                {"name": snapshot_name(name), "pvc": CLAIMS[name], "creationTime": EARLIEST_CUT,
                 "readyToUse": True, "restoreSize": "1Gi"}]} for name in CLAIMS],
        },
    }


def namespace(name: str, labels: dict[str, str] | None = None) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": f"uid-ns-{name}",
                         "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}},
            "status": {"phase": "Active"}}


def bleater(pg_annotations: dict[str, str] | None = None) -> Objects:
    """The source namespace, the cluster-scoped objects it uses, and the opted-in target."""
    objects: list[JSON] = [
        namespace(SOURCE),
        namespace(TARGET, {RESTORE_TARGET_LABEL: SOURCE}),
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS,
                      "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": DRIVER, "volumeBindingMode": "Immediate", "reclaimPolicy": "Delete"},
        secret("postgres-credentials", {"host": IPS["postgres"], "port": "5432", "username": "bleater",
                                        "password": "bleater-pg-sample", "database": "bleater"}),
        secret("mongodb-credentials", {
            "uri": f"mongodb://bleater:bleater-mongo-sample@{IPS['mongodb']}:27017/?authSource=admin",
            "username": "bleater", "password": "bleater-mongo-sample"}),
        secret("minio-credentials", {"endpoint": f"{IPS['minio']}:9000", "accessKey": "bleater",
                                     "secretKey": "bleater-minio-sample"}),
        secret("minio-tls", {"public.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
               binary={"private.der": TLS_DER}),
        config_map("bleater-endpoints", {
            "DATABASE_URL": "postgresql://bleater@postgres.bleater.svc.cluster.local:5432/bleater",
            "MONGODB_HOST": "mongodb.bleater.svc", "PLAIN_HOST": "postgres"}),
        snapshot_group(),
        data_writer(),
    ]
    for name in CLAIMS:
        objects += [claim(CLAIMS[name]), server(name),
                    service(name, ip=IPS[name], port=PORTS[name], selector={"app": name}),
                    snapshot(name, pg_annotations if name == "postgres" else None), content(name)]
    return {key(o): o for o in objects}


CLUSTER_SCOPED = frozenset({"Namespace", "StorageClass", "VolumeSnapshotContent"})


def key(obj: JSON) -> Key:
    meta = obj["metadata"]
    ns = "" if obj["kind"] in CLUSTER_SCOPED else meta.get("namespace", SOURCE)
    return obj["kind"], ns, meta["name"]


def put(objects: Objects, obj: JSON, namespace_: str = SOURCE) -> JSON:
    """Add or replace an object (in namespace_ unless cluster-scoped); returns it."""
    if obj["kind"] not in CLUSTER_SCOPED:
        obj["metadata"]["namespace"] = namespace_
    objects[key(obj)] = obj
    return obj


def source_world(objects: Objects, target: str = TARGET) -> SourceWorld:
    """What the cluster holds, as the plan reads it: every VolumeSnapshot of the namespace (the
    plan itself checks whose they are), every content, claim, workload and Service."""

    def of(kind: str, ns: str = SOURCE) -> list[JSON]:
        return [copy.deepcopy(o) for (k, n, _), o in sorted(objects.items()) if k == kind and n == ns]

    group = objects.get(("SnapshotGroup", SOURCE, GROUP))
    return SourceWorld(
        group=copy.deepcopy(group),
        snapshots={s["metadata"]["name"]: s for s in of("VolumeSnapshot")},
        contents={c["metadata"]["name"]: c for c in of("VolumeSnapshotContent", "")},
        pvcs={p["metadata"]["name"]: p for p in of("PersistentVolumeClaim")},
        workloads=of("Deployment") + of("StatefulSet"),
        services=of("Service"),
        storage_classes=of("StorageClass", ""),
        target_namespace=copy.deepcopy(objects.get(("Namespace", "", target))),
    )


def group_uid_of(objects: Objects) -> str:
    return str(objects[("SnapshotGroup", SOURCE, GROUP)]["metadata"]["uid"])


def relabel(obj: JSON, **labels: str) -> None:
    obj["metadata"].setdefault("labels", {}).update(labels)


# -- plan refusals, shared by the planner's and the Restorer's tests ----------------------------


@dataclass(frozen=True)
class Refusal:
    """A source world the plan must refuse: `change` edits the objects and returns spec fields."""

    id: str
    change: Callable[[Objects], dict[str, Any]]
    reason: str
    field_path: str
    stage: str = "select"
    """select: `select` refuses; build: `build` does (a Secret); restorer: only the Restorer can
    tell (what the target namespace holds)."""


def _edit(action: Callable[[Objects], object], **spec: Any) -> Callable[[Objects], dict[str, Any]]:
    def change(objects: Objects) -> dict[str, Any]:
        action(objects)
        return spec
    return change


def _group(objects: Objects) -> JSON:
    return objects[("SnapshotGroup", SOURCE, GROUP)]


def _snap(objects: Objects, service_name: str = "mongodb") -> JSON:
    return objects[("VolumeSnapshot", SOURCE, snapshot_name(service_name))]


def _extra_claim(objects: Objects) -> None:
    put(objects, claim("postgres-wal"))
    pg = objects[("Deployment", SOURCE, "postgres")]["spec"]["template"]["spec"]
    pg["volumes"].append(claim_volume("postgres-wal", "wal"))
    pg["containers"][0]["volumeMounts"].append({"name": "wal", "mountPath": "/var/lib/postgresql/wal"})


def _opted_in_system_namespace(name: str) -> Callable[[Objects], dict[str, Any]]:
    # The label does not matter: a restore never writes to a system namespace.
    return _edit(lambda o: put(o, namespace(name, {RESTORE_TARGET_LABEL: SOURCE})), targetNamespace=name)


REFUSALS = [
    Refusal("group-missing", _edit(lambda o: o.pop(("SnapshotGroup", SOURCE, GROUP))),
            "GroupNotFound", "spec.groupName"),
    Refusal("group-failed", _edit(lambda o: _group(o)["status"].update(phase="Failed")),
            "GroupNotSucceeded", "spec.groupName"),
    Refusal("group-still-running", _edit(lambda o: _group(o)["status"].update(phase="Snapshotting")),
            "GroupNotSucceeded", "spec.groupName"),
    Refusal("group-inconsistent", _edit(lambda o: _group(o)["status"].update(consistent=False)),
            "GroupNotConsistent", "spec.groupName"),
    Refusal("group-consistency-unknown", _edit(lambda o: _group(o)["status"].pop("consistent")),
            "GroupNotConsistent", "spec.groupName"),
    Refusal("target-is-source", _edit(lambda o: None, targetNamespace=SOURCE),
            "TargetIsSource", "spec.targetNamespace"),
    Refusal("target-kube-system", _opted_in_system_namespace("kube-system"),
            "TargetNamespaceForbidden", "spec.targetNamespace"),
    Refusal("target-default", _opted_in_system_namespace("default"),
            "TargetNamespaceForbidden", "spec.targetNamespace"),
    Refusal("target-missing", _edit(lambda o: o.pop(("Namespace", "", TARGET))),
            "TargetNamespaceNotFound", "spec.targetNamespace"),
    Refusal("target-without-label", _edit(lambda o: put(o, namespace(TARGET))),
            "TargetNamespaceNotOptedIn", "spec.targetNamespace"),
    Refusal("target-accepts-another-source",
            _edit(lambda o: put(o, namespace(TARGET, {RESTORE_TARGET_LABEL: "shop"}))),
            "TargetNamespaceNotOptedIn", "spec.targetNamespace"),
    Refusal("snapshot-gone", _edit(lambda o: o.pop(key(_snap(o)))),
            "SnapshotNotFound", "spec.groupName"),
    Refusal("snapshot-of-another-group",
            _edit(lambda o: relabel(_snap(o), **{GROUP_UID_LABEL: "9a9a9a9a-other-group"})),
            "SnapshotNotOwned", "spec.groupName"),
    Refusal("snapshot-not-ready", _edit(lambda o: _snap(o)["status"].update(readyToUse=False)),
            "SnapshotNotReady", "spec.groupName"),
    Refusal("content-without-handle",
            _edit(lambda o: o[("VolumeSnapshotContent", "", content_name("mongodb"))]["status"]
                  .pop("snapshotHandle")),
            "SnapshotContentNotFound", "spec.groupName"),
    Refusal("content-gone", _edit(lambda o: o.pop(("VolumeSnapshotContent", "", content_name("minio")))),
            "SnapshotContentNotFound", "spec.groupName"),
    Refusal("workload-mounts-an-unsnapshotted-claim", _edit(_extra_claim),
            "ClaimNotInGroup", "spec.groupName"),
    Refusal("referenced-secret-missing", _edit(lambda o: o.pop(("Secret", SOURCE, "minio-tls"))),
            "SecretNotFound", "spec.groupName", stage="build"),
    Refusal("connection-secret-missing",
            _edit(lambda o: o.pop(("Secret", SOURCE, "mongodb-credentials"))),
            "SecretNotFound", "spec.groupName", stage="build"),
    Refusal("service-account-token",
            _edit(lambda o: o[("Secret", SOURCE, "minio-tls")].update(
                type="kubernetes.io/service-account-token")),
            "SecretNotCopyable", "spec.groupName", stage="build"),
    Refusal("target-holds-a-service-of-that-name",
            _edit(lambda o: put(o, service("postgres", ip="10.96.3.3", port=5432,
                                           selector={"app": "postgres"}), TARGET)),
            "TargetObjectExists", "spec.targetNamespace", stage="restorer"),
    Refusal("target-holds-a-claim-of-another-restore",
            _edit(lambda o: relabel(put(o, claim("postgres-data"), TARGET),
                                    **{RESTORE_UID_LABEL: "1c1c1c1c-another-restore"})),
            "TargetObjectExists", "spec.targetNamespace", stage="restorer"),
]
