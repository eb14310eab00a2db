"""What verifying a SnapshotGroup by restoring it creates, decided from what the cluster holds; no I/O.

Each claim of the group gets a scratch claim restored from its VolumeSnapshot in the group's own
namespace; each workload that mounts the claims (writers never) gets scratch pods of its template
on them, labelled so no Service and no controller picks them; each service is then read in the
pods that hold its claims. `plan_verification` raises PlanError naming the reason before anything
exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapgroup.api import API_VERSION
from snapgroup.api.labels import VERIFICATION_LABEL
from snapgroup.api.restore import SnapshotGroupRestoreSpec
from snapgroup.api.snapshotgroup import KIND, SnapshotGroupSpec, SnapshotGroupStatus
from snapgroup.ports import PlanError

from .in_place_plan import proof_pods, scratch_claim
from .restore_plan import (
    Prepare,
    RestoreRef,
    SourceWorld,
    add_preparation,
    check_group,
    checked_snapshot,
    claims_of,
    is_writer,
    workload_key,
)

JSON = dict[str, Any]


@dataclass(frozen=True)
class VerificationPlan:
    """Everything a verification creates, and which pods serve which service."""

    uid: str
    """The group's uid: on every object the verification makes (VERIFICATION_LABEL)."""
    group: SnapshotGroupSpec
    status: SnapshotGroupStatus
    claims: list[JSON]
    """Scratch claims restored from the group's snapshots."""
    pods: list[JSON]
    """Scratch pods of the services' workloads on those claims."""
    secrets: list[JSON]
    """Files of a restored server's init step (PostgreSQL's backup label and WAL)."""
    serving: dict[str, list[str]]
    """Service name -> the scratch pods that mount its restored claims."""
    recovery: dict[str, str] = field(default_factory=dict)
    """Service name -> how its server starts on the restored data."""


def verification_selector(group_uid: str) -> str:
    """What finds every object a verification of the group made."""
    return f"{VERIFICATION_LABEL}={group_uid}"


def verification_ref(namespace: str, group: str, uid: str) -> RestoreRef:
    """The names and labels a verification of the group gives what it creates."""
    return RestoreRef(namespace, f"{group}.verify", uid)


def plan_verification(
    namespace: str, group_name: str, world: SourceWorld, prepare: Prepare, operator_image: str
) -> VerificationPlan:
    """The verification of the group in its own namespace (world.group is the group)."""
    spec = SnapshotGroupRestoreSpec.model_validate({"groupName": group_name, "inPlace": True})
    group_spec, group_status, group_uid = check_group(spec, world.group)
    ref = verification_ref(namespace, group_name, group_uid)
    scratch: dict[str, str] = {}
    claims: list[JSON] = []
    service_of: dict[str, tuple[str, str]] = {}
    """claim -> (service, snapshot)"""
    for service in group_status.services:
        for snap in service.volume_snapshots:
            snapshot_status, _, _ = checked_snapshot(world, snap.name, group_uid)
            claim = world.pvcs.get(snap.pvc)
            if claim is None:
                raise PlanError("ClaimNotFound", "spec.verify",
                                f"claim {snap.pvc} is gone from {namespace}: its class and size are "
                                "what a restored copy of it is made with; restore it as a clone")
            body = scratch_claim(ref, claim, f"{snap.pvc}-verify-{group_uid[:8]}", snap.name, snapshot_status)
            claims.append(body)
            scratch[snap.pvc] = body["metadata"]["name"]
            service_of[snap.pvc] = (service.name, snap.name)
    service_types = {s.name: s.type for s in group_spec.services}
    pods: list[JSON] = []
    secrets: list[JSON] = []
    recovery: dict[str, str] = {}
    serving: dict[str, list[str]] = {s.name: [] for s in group_status.services}
    for workload in sorted(world.workloads, key=workload_key):
        mounted = claims_of(workload)
        if is_writer(workload, group_spec) or not mounted & scratch.keys():
            continue
        foreign = sorted(mounted - scratch.keys())
        if foreign:
            raise PlanError(
                "ClaimNotInGroup", "spec.verify",
                f"{workload_key(workload)} also mounts {', '.join(foreign)}, which the group did not "
                "snapshot: a scratch copy of it would run on a live claim")
        for pod, restored in proof_pods(ref, workload, scratch, kind="verify", path="spec.verify"):
            if len(restored) == 1:
                served, snapshot = service_of[restored[0][1]]
                recovery[served] = add_preparation(
                    pod["spec"], restored[0][0], served, service_types.get(served, ""),
                    world.snapshots.get(snapshot) or {}, prepare, ref, operator_image, secrets)
            pods.append(pod)
            for _, claim_name in restored:
                serving[service_of[claim_name][0]].append(pod["metadata"]["name"])
    # Found by label to be removed, and by the garbage collector should the group go first.
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": group_name, "uid": group_uid}
    for body in [*claims, *pods, *secrets]:
        body["metadata"]["labels"] = {**body["metadata"]["labels"], VERIFICATION_LABEL: group_uid}
        body["metadata"]["ownerReferences"] = [owner]
    return VerificationPlan(group_uid, group_spec, group_status, claims, pods, secrets,
                            {name: sorted(set(names)) for name, names in serving.items()}, recovery)
