"""What an in-place restore of a SnapshotGroup does, decided from what the cluster holds; no I/O.

Each claim of the group gets a scratch claim restored from its VolumeSnapshot (same namespace,
so the snapshot is its data source directly); each workload that mounts the claims gets proof
pods on the scratch claims (labelled so no Service selects them) to show it starts there; the
group's writers and those workloads are what the swap stops and starts again. `plan_in_place`
raises PlanError naming the field and the reason, before anything exists.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from snapgroup.api.labels import ISOLATED_BY, shortened
from snapgroup.api.restore import (
    PROOF_LABEL,
    RESTORE_TARGET_LABEL,
    RESTORED_FROM,
    SYSTEM_NAMESPACES,
    SnapshotGroupRestoreSpec,
)
from snapgroup.ports import PlanError

from .restore_plan import (
    Prepare,
    RestoreRef,
    SourceWorld,
    add_preparation,
    check_group,
    checked_snapshot,
    claims_of,
    earliest_cut,
    is_writer,
    own_labels,
    quantity,
    replicas_of,
    workload_key,
)

JSON = dict[str, Any]

_POD_NAME_LIMIT = 63
_CLAIM_NAME_LIMIT = 253
_BINDING_ANNOTATIONS = ("pv.kubernetes.io/", "volume.beta.kubernetes.io/", "volume.kubernetes.io/",
                        "kubectl.kubernetes.io/last-applied-configuration")
"""Annotations the API server and the PV controller keep on a bound claim: not copied."""


@dataclass(frozen=True)
class Swap:
    """One claim of the namespace to move onto a volume restored from the group's snapshot."""

    service: str
    snapshot: str
    pvc: str
    previous_volume: str
    previous_reclaim_policy: str
    scratch: JSON
    """The scratch claim restored from the snapshot, under a name of the restore's."""
    replacement: JSON
    """The claim under its own name that takes the restored volume (volumeName set at the swap)."""


@dataclass(frozen=True)
class Stopped:
    """A workload stopped while the claims are swapped, and started again after."""

    kind: str
    name: str
    replicas: int
    selector: JSON
    writer: bool

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class InPlacePlan:
    """Everything an in-place restore creates, stops and swaps, in order."""

    swaps: list[Swap]
    proofs: list[JSON]
    """Pods that prove each service starts on its scratch claims."""
    secrets: list[JSON]
    """Files of a restored server's init step (PostgreSQL's backup label and WAL)."""
    services: list[Stopped]
    writers: list[Stopped]
    preparations: dict[str, str]
    """Workload key -> how its server starts on the restored data."""
    notes: list[str] = field(default_factory=list)
    earliest_cut: str | None = None

    @property
    def targets(self) -> list[str]:
        """Exclusion keys (as groups use them): no group freezes these while the restore runs."""
        return sorted({f"pvc:{s.pvc}" for s in self.swaps}
                      | {f"workload:{w.key}" for w in [*self.services, *self.writers]})

    def summary(self) -> str:
        services = ", ".join(w.key for w in self.services) or "no services"
        writers = ", ".join(w.key for w in self.writers) or "no writers"
        text = (f"in place: {len(self.swaps)} claim(s) swapped to restored volumes, {services} proven "
                f"on scratch claims first, {writers} stopped meanwhile")
        return text + ("; " + "; ".join(self.notes) if self.notes else "")


def plan_in_place(
    ref: RestoreRef, spec: SnapshotGroupRestoreSpec, world: SourceWorld, volumes: dict[str, JSON],
    prepare: Prepare, operator_image: str,
) -> InPlacePlan:
    """The in-place restore of the group in its own namespace; volumes: PersistentVolumes by name.

    world.target_namespace is the group's own namespace object (its consent label is read)."""
    group_spec, group_status, group_uid = check_group(spec, world.group)
    _check_consent(ref, world.target_namespace)
    swaps: list[Swap] = []
    for service in group_status.services:
        for snap in service.volume_snapshots:
            status, _, _ = checked_snapshot(world, snap.name, group_uid)
            swaps.append(_swap(ref, world, volumes, service.name, snap.name, snap.pvc, status))
    claims = {s.pvc for s in swaps}
    services: list[Stopped] = []
    writers: list[Stopped] = []
    serving: list[JSON] = []
    for workload in sorted(world.workloads, key=workload_key):
        key = workload_key(workload)
        if ISOLATED_BY in (workload["metadata"].get("annotations") or {}):
            raise PlanError("WorkloadIsolated", "spec.groupName",
                            f"{key} is isolated by a SnapshotGroup right now; restore once it is resumed")
        writer = is_writer(workload, group_spec)
        mounted = claims_of(workload)
        if not writer and not mounted & claims:
            continue
        foreign = sorted(mounted - claims)
        if foreign and not writer:
            raise PlanError(
                "ClaimNotInGroup", "spec.groupName",
                f"{key} also mounts {', '.join(foreign)}, which the group did not snapshot: "
                "it would come back with part of its data at another moment",
            )
        stopped = Stopped(workload["kind"], workload["metadata"]["name"], replicas_of(workload),
                          dict(workload["spec"].get("selector") or {}), writer)
        (writers if writer else services).append(stopped)
        if not writer:
            serving.append(workload)
    notes: list[str] = []
    unmounted = sorted(claims - {c for w in serving for c in claims_of(w)})
    if unmounted:
        notes.append(f"no workload mounts {', '.join(unmounted)}: swapped without a proof")
    by_claim = {s.pvc: s for s in swaps}
    service_types = {s.name: s.type for s in group_spec.services}
    proofs: list[JSON] = []
    secrets: list[JSON] = []
    preparations: dict[str, str] = {}
    scratch_names = {s.pvc: s.scratch["metadata"]["name"] for s in swaps}
    for workload in serving:
        for pod, restored in proof_pods(ref, workload, scratch_names):
            if len(restored) == 1:
                swap = by_claim[restored[0][1]]
                preparations[workload_key(workload)] = add_preparation(
                    pod["spec"], restored[0][0], swap.service, service_types.get(swap.service, ""),
                    world.snapshots.get(swap.snapshot) or {}, prepare, ref, operator_image, secrets,
                    ("--keep-archiving",))
            proofs.append(pod)
    return InPlacePlan(swaps, proofs, secrets, services, writers, preparations, notes,
                       earliest_cut(group_status))


def _check_consent(ref: RestoreRef, namespace: JSON | None) -> None:
    path = "spec.inPlace"
    if ref.namespace in SYSTEM_NAMESPACES or ref.namespace.startswith("kube-"):
        raise PlanError("TargetNamespaceForbidden", path,
                        f"{ref.namespace} is a system namespace; a restore never writes there")
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    if labels.get(RESTORE_TARGET_LABEL) != ref.namespace:
        raise PlanError("TargetNamespaceNotOptedIn", path,
                        f"namespace {ref.namespace} does not accept restores in place: its owner labels "
                        f"it {RESTORE_TARGET_LABEL}={ref.namespace} to allow that")


def _swap(
    ref: RestoreRef, world: SourceWorld, volumes: dict[str, JSON], service: str, snapshot: str,
    pvc: str, snapshot_status: JSON,
) -> Swap:
    path = "spec.groupName"
    claim = world.pvcs.get(pvc)
    if claim is None:
        raise PlanError("ClaimNotFound", path,
                        f"claim {pvc} is gone from {ref.namespace}: in place there is nothing to swap; "
                        "restore it as a clone")
    volume_name = (claim.get("spec") or {}).get("volumeName")
    if (claim.get("status") or {}).get("phase") != "Bound" or volume_name not in volumes:
        raise PlanError("ClaimNotBound", path, f"claim {pvc} is not bound to a volume")
    volume = volumes[volume_name]
    scratch = scratch_claim(ref, claim, f"{pvc}-restore-{ref.uid[:8]}", snapshot, snapshot_status)
    annotations = {k: v for k, v in (claim["metadata"].get("annotations") or {}).items()
                   if not k.startswith(_BINDING_ANNOTATIONS)}
    replacement = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": pvc, "labels": own_labels(claim),
                     "annotations": {**annotations, RESTORED_FROM: snapshot}},
        "spec": {k: v for k, v in scratch["spec"].items() if k != "dataSource"},
    }
    return Swap(service, snapshot, pvc, volume_name,
                str(volume["spec"].get("persistentVolumeReclaimPolicy") or "Delete"), scratch, replacement)


def scratch_claim(ref: RestoreRef, claim: JSON, name: str, snapshot: str, snapshot_status: JSON) -> JSON:
    """A claim like `claim` (modes, class, size: at least the snapshot's restoreSize) restored
    from the snapshot, under `name`. PlanError for a claim of no class."""
    spec = claim["spec"]
    pvc = claim["metadata"]["name"]
    if spec.get("storageClassName") == "":
        # No provisioner restores a claim of no class: it would bind any free static volume.
        raise PlanError("ClaimWithoutClass", "spec.groupName",
                        f'claim {pvc} has storageClassName "" (a static volume): restoring it here needs '
                        "a class whose CSI driver restores snapshots; restore it as a clone")
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    restore_size = snapshot_status.get("restoreSize")
    if size is None or (restore_size and quantity(restore_size) > quantity(size)):
        size = restore_size
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": shortened(name, _CLAIM_NAME_LIMIT), "labels": ref.labels},
        "spec": {
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "resources": {"requests": {"storage": size}},
            **({"storageClassName": spec["storageClassName"]} if spec.get("storageClassName") else {}),
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot},
        },
    }


_PRIVATE_VOLUMES = frozenset({"persistentVolumeClaim", "configMap", "secret", "emptyDir", "projected",
                              "downwardAPI", "ephemeral", "image"})
"""Volume types a copy of a pod may have without sharing live storage with the original (a
claim: the scratch one put in its place)."""


def proof_pods(
    ref: RestoreRef, workload: JSON, scratch: dict[str, str], kind: str = "proof",
    path: str = "spec.inPlace",
) -> list[tuple[JSON, list[tuple[str, str]]]]:
    """Pods of the workload's template on the scratch claims (claim name -> scratch claim name):
    one for a Deployment, one per replica for a StatefulSet's claim templates; with (volume name,
    claim) of each restored claim. PlanError (at path) for a template with a volume of shared
    storage (hostPath, nfs, an inline CSI volume not read-only, ...): its copy would use it live."""
    name = workload["metadata"]["name"]
    template = workload["spec"]["template"]
    ordinals = range(replicas_of(workload)) if workload["kind"] == "StatefulSet" else range(1)
    pods = []
    for ordinal in ordinals:
        pod_spec = copy.deepcopy(template.get("spec") or {})
        for volume in pod_spec.get("volumes") or []:
            types = set(volume) - {"name"}
            if types <= _PRIVATE_VOLUMES or (types == {"csi"} and volume["csi"].get("readOnly")):
                continue
            raise PlanError("VolumeNotRestorable", path,
                            f"{workload['kind']}/{name} mounts volume {volume.get('name')} "
                            f"({', '.join(sorted(types))}), storage it shares with the running pods: a "
                            "copy of it started on the restored claims would use it live")
        for key in ("nodeName", "hostname", "subdomain"):
            pod_spec.pop(key, None)
        restored: list[tuple[str, str]] = []
        for volume in pod_spec.get("volumes") or []:
            source = volume.get("persistentVolumeClaim")
            if source and source["claimName"] in scratch:
                restored.append((volume["name"], source["claimName"]))
                source["claimName"] = scratch[source["claimName"]]
        if workload["kind"] == "StatefulSet":
            for claim_template in workload["spec"].get("volumeClaimTemplates") or []:
                claim = f"{claim_template['metadata']['name']}-{name}-{ordinal}"
                if claim in scratch:
                    volume_name = claim_template["metadata"]["name"]
                    pod_spec.setdefault("volumes", []).append(
                        {"name": volume_name, "persistentVolumeClaim": {"claimName": scratch[claim]}})
                    restored.append((volume_name, claim))
        if not restored:
            continue
        suffix = f"-{ordinal}" if workload["kind"] == "StatefulSet" else ""
        pods.append(({
            "apiVersion": "v1", "kind": "Pod",
            # No label of the template: no Service, and no controller, ever picks this pod.
            "metadata": {"name": shortened(f"{name}-{kind}-{ref.uid[:8]}{suffix}", _POD_NAME_LIMIT),
                         "labels": {**ref.labels, PROOF_LABEL: name}},
            "spec": pod_spec,
        }, restored))
    return pods
