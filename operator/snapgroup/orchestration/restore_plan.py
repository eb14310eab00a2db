"""What a clone of a SnapshotGroup creates, decided from what the cluster holds; no I/O here.

`select` picks, from the source namespace, the workloads that mount the group's claims (writers
only when asked), the Services that select them and the Secrets and ConfigMaps they reference;
`build` turns that selection into the bodies to create in the target namespace. Both raise
PlanError naming the field and the reason, before anything exists.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snapgroup.api import GROUP
from snapgroup.api.labels import GROUP_UID_LABEL, ORIGINAL_REPLICAS, label_value, shortened
from snapgroup.api.restore import (
    RESTORE_LABEL,
    RESTORE_TARGET_LABEL,
    RESTORE_UID_LABEL,
    SYSTEM_NAMESPACES,
    SnapshotGroupRestoreSpec,
)
from snapgroup.api.snapshotgroup import SnapshotGroupSpec, SnapshotGroupStatus
from snapgroup.hooks.restore_prep import PREPARATION_MOUNT, Preparation
from snapgroup.ports import PlanError

JSON = dict[str, Any]

SNAPSHOT_API = "snapshot.storage.k8s.io/v1"
_PREPARATION_VOLUME = "snapgroup-restore"
_DROPPED_ANNOTATIONS = (
    "kubectl.kubernetes.io/last-applied-configuration", "deployment.kubernetes.io/revision",
)
_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
_NAME_LIMIT = 253
_VOLUME_SECRET_REFS = (
    ("csi", "nodePublishSecretRef"), ("cephfs", "secretRef"), ("rbd", "secretRef"),
    ("iscsi", "secretRef"), ("flexVolume", "secretRef"), ("azureFile", "secretName"),
    ("scaleIO", "secretRef"), ("storageos", "secretRef"),
)
"""Volume types that name a Secret of the pod's namespace: copied like any other reference."""


@dataclass(frozen=True)
class RestoreRef:
    """One SnapshotGroupRestore: where it lives and which object it is."""

    namespace: str
    name: str
    uid: str

    @property
    def labels(self) -> dict[str, str]:
        """The labels every object the restore creates carries."""
        return {RESTORE_UID_LABEL: self.uid, RESTORE_LABEL: label_value(f"{self.namespace}.{self.name}")}


Prepare = Callable[[str, Mapping[str, str], JSON, str], "Preparation | str"]
"""(service type, annotations of its snapshot, the server's container, the claim's mount path)
-> a Preparation, or a sentence saying how the server starts without one."""


@dataclass(frozen=True)
class SourceWorld:
    """What the plan reads from the cluster: the group, its snapshots, the source namespace."""

    group: JSON | None
    snapshots: dict[str, JSON] = field(default_factory=dict)
    contents: dict[str, JSON] = field(default_factory=dict)
    pvcs: dict[str, JSON] = field(default_factory=dict)
    workloads: list[JSON] = field(default_factory=list)
    services: list[JSON] = field(default_factory=list)
    storage_classes: list[JSON] = field(default_factory=list)
    target_namespace: JSON | None = None


@dataclass(frozen=True)
class Volume:
    """One claim to restore from one of the group's VolumeSnapshots."""

    service: str
    service_type: str
    snapshot: str
    pvc: str
    content_copy: JSON
    snapshot_copy: JSON
    claim: JSON


@dataclass(frozen=True)
class Selection:
    """The source objects a clone copies."""

    volumes: list[Volume]
    workloads: list[JSON]
    services: list[JSON]
    secrets: list[str]
    config_maps: list[str]
    notes: list[str]
    earliest_cut: str | None
    optional: frozenset[str] = frozenset()
    """Secret and ConfigMap names only optional references name: copied when they exist."""


@dataclass(frozen=True)
class RestorePlan:
    """Bodies to create in the target namespace, in order; addresses are rewritten later, once
    the cloned Services have theirs."""

    volumes: list[Volume]
    services: list[JSON]
    secrets: list[JSON]
    config_maps: list[JSON]
    workloads: list[JSON]
    preparations: dict[str, str]
    """Workload key (``Kind/name``) -> how its server starts (the preparation's summary)."""
    notes: list[str]
    earliest_cut: str | None = None
    absent: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) an optional reference names and the source lacks: the target must lack it
    too, or the clone would read the target's object."""

    def created(self) -> list[tuple[str, str]]:
        """(kind, name) of everything created in the target namespace, in creation order."""
        out = [("VolumeSnapshot", v.snapshot_copy["metadata"]["name"]) for v in self.volumes]
        out += [("PersistentVolumeClaim", v.pvc) for v in self.volumes]
        out += [("Service", s["metadata"]["name"]) for s in self.services]
        out += [("Secret", s["metadata"]["name"]) for s in self.secrets]
        out += [("ConfigMap", c["metadata"]["name"]) for c in self.config_maps]
        out += [(w["kind"], w["metadata"]["name"]) for w in self.workloads]
        return out


# -- select ---------------------------------------------------------------------------------


def select(ref: RestoreRef, spec: SnapshotGroupRestoreSpec, world: SourceWorld) -> Selection:
    """The source objects to copy; PlanError for a group, snapshot or namespace that won't do."""
    group_spec, group_status, group_uid = check_group(spec, world.group)
    _check_target(ref, spec, world.target_namespace)
    volumes = [
        _volume(ref, spec, world, service.name, service.type, snap.name, snap.pvc, group_uid)
        for service in group_status.services for snap in service.volume_snapshots
    ]
    claims = {v.pvc for v in volumes}
    writers = {workload_key(w) for w in world.workloads if is_writer(w, group_spec)}
    chosen: list[JSON] = []
    notes: list[str] = []
    for workload in sorted(world.workloads, key=workload_key):
        mounted = claims_of(workload)
        if workload_key(workload) in writers:
            if not spec.include_writers:
                notes.append(f"writer {workload_key(workload)} left out (includeWriters is false)")
                continue
        elif not mounted & claims:
            continue
        foreign = sorted(mounted - claims)
        if foreign:
            raise PlanError(
                "ClaimNotInGroup", "spec.groupName",
                f"{workload_key(workload)} also mounts {', '.join(foreign)}, which the group did not "
                "snapshot: a clone would start it without that data",
            )
        chosen.append(workload)
    pod_labels = [_pod_labels(w) for w in chosen]
    services = [
        s for s in sorted(world.services, key=lambda s: s["metadata"]["name"])
        if (s.get("spec") or {}).get("type") != "ExternalName"
        and (selector := (s.get("spec") or {}).get("selector"))
        and any(selector.items() <= labels.items() for labels in pod_labels)
    ]
    secrets = _named_by_group(group_spec)
    config_maps: set[str] = set()
    optional: set[str] = set()
    for workload in chosen:
        refs = _references(pod_spec(workload))
        secrets |= refs.secrets
        config_maps |= refs.config_maps
        optional |= refs.optional
    required = (secrets | config_maps) - (optional - _named_by_group(group_spec))
    return Selection(volumes, chosen, services, sorted(secrets), sorted(config_maps), notes,
                     earliest_cut(group_status), frozenset(optional - required))


def check_group(
    spec: SnapshotGroupRestoreSpec, group: JSON | None
) -> tuple[SnapshotGroupSpec, SnapshotGroupStatus, str]:
    if group is None:
        raise PlanError("GroupNotFound", "spec.groupName",
                        f"no SnapshotGroup {spec.group_name} in this namespace")
    status = SnapshotGroupStatus.model_validate(group.get("status") or {})
    if status.phase != "Succeeded":
        raise PlanError("GroupNotSucceeded", "spec.groupName",
                        f"SnapshotGroup {spec.group_name} is {status.phase}, not Succeeded: "
                        "only a finished, consistent group is one moment to restore")
    if status.consistent is not True:
        raise PlanError("GroupNotConsistent", "spec.groupName",
                        f"SnapshotGroup {spec.group_name} is not Consistent: a service holds records "
                        "newer than the earliest cut, so its snapshots are not one moment")
    return (SnapshotGroupSpec.model_validate(group.get("spec") or {}), status,
            str(group["metadata"]["uid"]))


def _check_target(ref: RestoreRef, spec: SnapshotGroupRestoreSpec, namespace: JSON | None) -> None:
    target = spec.clone_target
    if target == ref.namespace:
        raise PlanError("TargetIsSource", "spec.targetNamespace",
                        f"{target} is the group's own namespace; a clone goes to another one")
    if target in SYSTEM_NAMESPACES or target.startswith("kube-"):
        raise PlanError("TargetNamespaceForbidden", "spec.targetNamespace",
                        f"{target} is a system namespace; a restore never writes there")
    if namespace is None:
        raise PlanError("TargetNamespaceNotFound", "spec.targetNamespace",
                        f"namespace {target} does not exist; create it and label it "
                        f"{RESTORE_TARGET_LABEL}={ref.namespace}")
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    if labels.get(RESTORE_TARGET_LABEL) != ref.namespace:
        raise PlanError("TargetNamespaceNotOptedIn", "spec.targetNamespace",
                        f"namespace {target} does not accept clones from {ref.namespace}: its owner "
                        f"labels it {RESTORE_TARGET_LABEL}={ref.namespace} to allow that")


def checked_snapshot(world: SourceWorld, name: str, group_uid: str) -> tuple[JSON, JSON, str]:
    """The group's VolumeSnapshot's status, its bound content and snapshot handle; PlanError for
    one that is gone, another group's, not ready, or without a handle."""
    path = "spec.groupName"
    snapshot = world.snapshots.get(name)
    if snapshot is None:
        raise PlanError("SnapshotNotFound", path, f"VolumeSnapshot {name} of the group is gone")
    if ((snapshot["metadata"].get("labels") or {}).get(GROUP_UID_LABEL)) != group_uid:
        raise PlanError("SnapshotNotOwned", path,
                        f"VolumeSnapshot {name} was not cut by this SnapshotGroup (another uid)")
    status = snapshot.get("status") or {}
    if not status.get("readyToUse"):
        raise PlanError("SnapshotNotReady", path, f"VolumeSnapshot {name} is not ready to use")
    content = world.contents.get(status.get("boundVolumeSnapshotContentName") or "")
    handle = ((content or {}).get("status") or {}).get("snapshotHandle")
    if content is None or not handle:
        raise PlanError("SnapshotContentNotFound", path,
                        f"VolumeSnapshot {name} has no bound VolumeSnapshotContent with a snapshot handle")
    return status, content, str(handle)


def _volume(
    ref: RestoreRef, spec: SnapshotGroupRestoreSpec, world: SourceWorld, service: str,
    service_type: str, name: str, pvc: str, group_uid: str,
) -> Volume:
    status, content, handle = checked_snapshot(world, name, group_uid)
    labels = ref.labels
    copy_name = shortened(f"{name}-{ref.uid[:8]}", _NAME_LIMIT)
    content_name = shortened(f"snapgroup-{ref.uid[:8]}-{name}", _NAME_LIMIT)
    content_copy = {
        "apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name, "labels": labels},
        "spec": {
            # Retain: the backing snapshot belongs to the group's own content, never to the copy.
            "deletionPolicy": "Retain",
            "driver": content["spec"]["driver"],
            "source": {"snapshotHandle": handle},
            "volumeSnapshotRef": {"namespace": spec.clone_target, "name": copy_name},
            **({"volumeSnapshotClassName": content["spec"]["volumeSnapshotClassName"]}
               if content["spec"].get("volumeSnapshotClassName") else {}),
        },
    }
    snapshot_copy = {
        "apiVersion": SNAPSHOT_API, "kind": "VolumeSnapshot",
        "metadata": {"name": copy_name, "labels": labels},
        "spec": {"source": {"volumeSnapshotContentName": content_name}},
    }
    claim = _claim(world, pvc, content["spec"]["driver"], status.get("restoreSize"), copy_name, labels)
    return Volume(service, service_type, name, pvc, content_copy, snapshot_copy, claim)


def _claim(
    world: SourceWorld, name: str, driver: str, restore_size: str | None, source: str,
    labels: dict[str, str],
) -> JSON:
    """The claim under its original name: the source claim's class, modes and size when it still
    exists, else the default class of the snapshot's driver and the snapshot's size."""
    original = world.pvcs.get(name)
    spec = (original or {}).get("spec") or {}
    storage_class = spec.get("storageClassName") or _class_for(world.storage_classes, driver)
    if storage_class is None:
        raise PlanError("StorageClassNotFound", "spec.groupName",
                        f"claim {name} is gone from the source and no StorageClass provisions with {driver}")
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage") or restore_size
    if size is None:
        raise PlanError("SnapshotSizeUnknown", "spec.groupName",
                        f"neither claim {name} nor its snapshot says how large the volume is")
    if restore_size and quantity(restore_size) > quantity(size):
        size = restore_size
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "labels": {**own_labels(original), **labels}},
        "spec": {
            "storageClassName": storage_class,
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "resources": {"requests": {"storage": size}},
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": source},
        },
    }


def _class_for(classes: Iterable[JSON], driver: str) -> str | None:
    matching = [c for c in classes if c.get("provisioner") == driver]
    default = [c for c in matching if (c["metadata"].get("annotations") or {}).get(_DEFAULT_CLASS) == "true"]
    chosen = default or matching
    return str(chosen[0]["metadata"]["name"]) if chosen else None


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(text: str) -> float:
    """A storage quantity in bytes ("1Gi", "500M", "1073741824")."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text.strip())
    if match is None or match.group(2) not in _UNITS:
        raise PlanError("SnapshotSizeUnknown", "spec.groupName", f"cannot read the size {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def workload_key(workload: JSON) -> str:
    return f"{workload['kind']}/{workload['metadata']['name']}"


def pod_spec(workload: JSON) -> JSON:
    return dict(((workload.get("spec") or {}).get("template") or {}).get("spec") or {})


def _pod_labels(workload: JSON) -> dict[str, str]:
    template = (workload.get("spec") or {}).get("template") or {}
    return dict((template.get("metadata") or {}).get("labels") or {})


def own_labels(obj: JSON | None) -> dict[str, str]:
    return {k: v for k, v in (((obj or {}).get("metadata") or {}).get("labels") or {}).items()
            if not k.startswith(f"{GROUP}/")}


def claims_of(workload: JSON) -> set[str]:
    """Claims the workload's pods mount: its volumes' claims, and for a StatefulSet the claims
    its volumeClaimTemplates make for each replica it runs (or ran, before an isolation)."""
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec(workload).get("volumes") or [] if v.get("persistentVolumeClaim")
    }
    if workload["kind"] == "StatefulSet":
        name = workload["metadata"]["name"]
        for template in workload["spec"].get("volumeClaimTemplates") or []:
            claims |= {f"{template['metadata']['name']}-{name}-{i}" for i in range(replicas_of(workload))}
    return claims


def replicas_of(workload: JSON) -> int:
    """The workload's replicas, or those an isolation will give back."""
    annotations = workload["metadata"].get("annotations") or {}
    if ORIGINAL_REPLICAS in annotations:
        return int(annotations[ORIGINAL_REPLICAS])
    return int((workload.get("spec") or {}).get("replicas", 1))


def is_writer(workload: JSON, spec: SnapshotGroupSpec) -> bool:
    labels = workload["metadata"].get("labels") or {}
    for writer in spec.writers:
        if writer.kind != workload["kind"]:
            continue
        if writer.name is not None and writer.name == workload["metadata"]["name"]:
            return True
        if writer.selector is not None and writer.selector.matches(labels):
            return True
    return False


@dataclass
class _References:
    secrets: set[str] = field(default_factory=set)
    config_maps: set[str] = field(default_factory=set)
    optional: set[str] = field(default_factory=set)
    """Names every reference to which is `optional: true` so far; a required one removes it."""
    required: set[str] = field(default_factory=set)

    def add(self, kind: str, ref: Mapping[str, Any], name_key: str = "name") -> None:
        name = ref.get(name_key)
        if not name:
            return
        (self.secrets if kind == "Secret" else self.config_maps).add(name)
        if ref.get("optional") is True and name not in self.required:
            self.optional.add(name)
        else:
            self.required.add(name)
            self.optional.discard(name)


def _references(pod: JSON) -> _References:
    """Secrets and ConfigMaps a pod spec names: env, envFrom, volumes, projections, pull secrets."""
    refs = _References()
    for pull in pod.get("imagePullSecrets") or []:
        refs.add("Secret", pull)
    for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            if source.get("secretKeyRef"):
                refs.add("Secret", source["secretKeyRef"])
            if source.get("configMapKeyRef"):
                refs.add("ConfigMap", source["configMapKeyRef"])
        for env_from in container.get("envFrom") or []:
            if env_from.get("secretRef"):
                refs.add("Secret", env_from["secretRef"])
            if env_from.get("configMapRef"):
                refs.add("ConfigMap", env_from["configMapRef"])
    for volume in pod.get("volumes") or []:
        if volume.get("secret"):
            refs.add("Secret", volume["secret"], "secretName")
        for driver, key in _VOLUME_SECRET_REFS:
            source = volume.get(driver) or {}
            ref = source.get(key)
            if isinstance(ref, Mapping):
                refs.add("Secret", ref)
            elif isinstance(ref, str):
                refs.add("Secret", {"name": ref})
        if volume.get("configMap"):
            refs.add("ConfigMap", volume["configMap"])
        for source in (volume.get("projected") or {}).get("sources") or []:
            if source.get("secret"):
                refs.add("Secret", source["secret"])
            if source.get("configMap"):
                refs.add("ConfigMap", source["configMap"])
    return refs


def _named_by_group(spec: SnapshotGroupSpec) -> set[str]:
    names = {s.connection.secret_ref.name for s in spec.services}
    return names | {s.last_record.secret_ref.name for s in spec.services
                    if s.last_record is not None and s.last_record.secret_ref is not None}


def earliest_cut(status: SnapshotGroupStatus) -> str | None:
    if status.earliest_snapshot_time is None:
        return None
    return status.earliest_snapshot_time.isoformat().replace("+00:00", "Z")


# -- build ----------------------------------------------------------------------------------


def build(
    ref: RestoreRef, selection: Selection, secrets: Mapping[str, JSON | None],
    config_maps: Mapping[str, JSON | None], snapshots: Mapping[str, JSON], prepare: Prepare,
    operator_image: str,
) -> RestorePlan:
    """The bodies to create; PlanError for a Secret or ConfigMap a copied workload needs but the
    source does not have."""
    labels = ref.labels
    secret_bodies = [_copied("Secret", name, secrets.get(name), labels, ("type", "data"))
                     for name in selection.secrets
                     if secrets.get(name) is not None or name not in selection.optional]
    absent = [("Secret", n) for n in selection.secrets if secrets.get(n) is None and n in selection.optional]
    absent += [("ConfigMap", n) for n in selection.config_maps
               if config_maps.get(n) is None and n in selection.optional]
    map_bodies = [_copied("ConfigMap", name, config_maps.get(name), labels, ("data", "binaryData"))
                  for name in selection.config_maps
                  if config_maps.get(name) is not None or name not in selection.optional]
    services = [_service(s, labels) for s in selection.services]
    notes = list(selection.notes)
    workloads: list[JSON] = []
    preparations: dict[str, str] = {}
    by_claim = {v.pvc: v for v in selection.volumes}
    for source in selection.workloads:
        body, note = _workload(source, labels)
        if note:
            notes.append(note)
        restored = [by_claim[c] for c in sorted(claims_of(source) & by_claim.keys())]
        if len(restored) == 1:
            volume = restored[0]
            preparations[workload_key(body)] = _prepare(body, volume, snapshots.get(volume.snapshot) or {},
                                                prepare, ref, operator_image, secret_bodies)
        elif restored and any(v.service_type == "postgresql" for v in restored):
            # One pod template serves every replica's claim, and each claim's backup differs.
            preparations[workload_key(body)] = (
                f"crash recovery: its {len(restored)} restored claims share one pod template, and each "
                "holds a different backup")
        workloads.append(body)
    return RestorePlan(selection.volumes, services, secret_bodies, map_bodies, workloads,
                       preparations, notes, selection.earliest_cut, absent)


def _copied(kind: str, name: str, source: JSON | None, labels: dict[str, str],
            keys: tuple[str, ...]) -> JSON:
    if source is None:
        raise PlanError(f"{kind}NotFound", "spec.groupName",
                        f"{kind} {name}, which the group or a copied workload references, does not exist")
    if kind == "Secret" and source.get("type") == "kubernetes.io/service-account-token":
        raise PlanError("SecretNotCopyable", "spec.groupName",
                        f"Secret {name} is a service account token; a clone cannot carry it")
    body: JSON = {"apiVersion": "v1", "kind": kind,
                  "metadata": {"name": name, "labels": {**own_labels(source), **labels}}}
    body.update({k: copy.deepcopy(source[k]) for k in keys if k in source})
    return body


def _service(source: JSON, labels: dict[str, str]) -> JSON:
    """A Service for the clone: same ports and selector, a fresh cluster IP (headless stays
    headless), never exposed outside the cluster (NodePort and LoadBalancer become ClusterIP)."""
    spec = source.get("spec") or {}
    headless = spec.get("clusterIP") == "None"
    ports = [{k: v for k, v in port.items() if k != "nodePort"} for port in spec.get("ports") or []]
    body_spec: JSON = {"type": "ClusterIP", "selector": dict(spec["selector"]), "ports": ports}
    if headless:
        body_spec["clusterIP"] = "None"
    for kept in ("publishNotReadyAddresses", "sessionAffinity", "ipFamilyPolicy"):
        if kept in spec:
            body_spec[kept] = spec[kept]
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": source["metadata"]["name"], "labels": {**own_labels(source), **labels}},
            "spec": body_spec}


def _workload(source: JSON, labels: dict[str, str]) -> tuple[JSON, str | None]:
    meta = source["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in _DROPPED_ANNOTATIONS and not k.startswith(f"{GROUP}/")}
    spec = copy.deepcopy(source["spec"])
    spec["replicas"] = replicas_of(source)
    spec.pop("paused", None)
    pod = spec["template"].setdefault("spec", {})
    note = None
    account = pod.pop("serviceAccountName", None) or pod.pop("serviceAccount", None)
    pod.pop("serviceAccount", None)
    pod.pop("nodeName", None)
    # The target's default ServiceAccount is no identity the workload had: no token of it
    # unless the source asked for one in so many words.
    if pod.get("automountServiceAccountToken") is not True:
        pod["automountServiceAccountToken"] = False
    if account and account != "default":
        note = (f"{workload_key(source)} runs as the target namespace's default ServiceAccount, not "
                f"{account}: a restore copies no identities or permissions")
    body = {"apiVersion": "apps/v1", "kind": source["kind"],
            "metadata": {"name": meta["name"], "labels": {**own_labels(source), **labels},
                         **({"annotations": annotations} if annotations else {})},
            "spec": spec}
    return body, note


def _prepare(
    workload: JSON, volume: Volume, snapshot: JSON, prepare: Prepare, ref: RestoreRef,
    operator_image: str, secrets: list[JSON],
) -> str:
    """Add the service type's init step to the workload that serves the volume's data."""
    volume_name = volume_name_of(workload, volume.pvc)
    if volume_name is None:
        return "its claim is not mounted by a container"
    return add_preparation(workload["spec"]["template"]["spec"], volume_name, volume.service,
                           volume.service_type, snapshot, prepare, ref, operator_image, secrets)


def add_preparation(
    pod: JSON, volume_name: str, service: str, service_type: str, snapshot: JSON, prepare: Prepare,
    ref: RestoreRef, operator_image: str, secrets: list[JSON], extra_args: tuple[str, ...] = (),
) -> str:
    """Add the service type's init step to a pod spec whose volume volume_name holds the
    restored data; its files go into a Secret appended to secrets. Returns how the server starts."""
    for container in pod.get("containers") or []:
        mount = next((m for m in container.get("volumeMounts") or [] if m.get("name") == volume_name), None)
        if mount is None:
            continue
        annotations = (snapshot.get("metadata") or {}).get("annotations") or {}
        outcome = prepare(service_type, annotations, container, mount["mountPath"])
        if isinstance(outcome, str):
            return outcome
        secret_name = shortened(f"snapgroup-restore-{ref.uid[:8]}-{service}", _NAME_LIMIT)
        if not any(s["metadata"]["name"] == secret_name for s in secrets):
            secrets.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                            "metadata": {"name": secret_name, "labels": ref.labels},
                            "data": outcome.files})
        # Readable by whichever user the step runs as; only the pod's containers see the volume.
        pod.setdefault("volumes", []).append(
            {"name": _PREPARATION_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o444}})
        data_mount = {k: v for k, v in mount.items() if k in ("name", "mountPath", "subPath", "subPathExpr")}
        step: JSON = {
            "name": "snapgroup-prepare", "image": operator_image, "args": [*outcome.args, *extra_args],
            "volumeMounts": [
                data_mount,
                {"name": _PREPARATION_VOLUME, "mountPath": PREPARATION_MOUNT, "readOnly": True},
            ],
        }
        context = container.get("securityContext") or {}
        if context.get("runAsUser") is not None:
            # The server's own user: the files it writes belong to PGDATA's owner.
            step["securityContext"] = copy.deepcopy(context)
        else:
            # The server image starts as root and drops to its user (the official postgres
            # image does): so does the step, which gives what it writes to PGDATA's owner.
            step["securityContext"] = {"runAsUser": 0}
        pod["initContainers"] = [step, *(pod.get("initContainers") or [])]
        return outcome.summary
    return "its claim is not mounted by a container"


def volume_name_of(workload: JSON, claim: str) -> str | None:
    for v in workload["spec"]["template"]["spec"].get("volumes") or []:
        if (v.get("persistentVolumeClaim") or {}).get("claimName") == claim:
            return str(v["name"])
    if workload["kind"] == "StatefulSet":
        for template in workload["spec"].get("volumeClaimTemplates") or []:
            if claim.startswith(f"{template['metadata']['name']}-{workload['metadata']['name']}-"):
                return str(template["metadata"]["name"])
    return None
