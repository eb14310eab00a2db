"""A VolumeSnapshot is a group's only when it carries the group's uid: never adopted, never
deleted by another group, on the real API server and snapshot controller.

- A group re-created under the name of one whose snapshots were kept (`Retain`) is refused in
  its plan, touches nothing, and the kept snapshots stay as they were, through its deletion too.
- A snapshot somebody else creates under the group's name while the group is already planned
  makes the cut's create answer 409: the attempt fails `SnapshotNameTaken` (not retried), the
  window is thawed, the group's own snapshots go and the other one stays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.bleater import Bleater
from e2e.faults import read_records
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample
from e2e.test_cluster_faults import FAST, assert_all_back, assert_resumed
from localcluster.fixtures import wait_for
from snapgroup.api.labels import GROUP_UID_LABEL

pytestmark = pytest.mark.cluster

SNAPSHOTS = ("snapshot.storage.k8s.io", "v1", "bleater", "volumesnapshots")


@pytest.fixture
def leftovers(kube: Kube) -> Iterator[set[str]]:
    """VolumeSnapshots no group will delete: removed after the test."""
    names: set[str] = set()
    yield names
    for name in names:
        with contextlib.suppress(ApiException):
            kube.custom.delete_namespaced_custom_object(*SNAPSHOTS, name)
    wait_for(lambda: not names & set(by_name(kube.snapshots("bleater", ""))), 60,
             "the test's leftover VolumeSnapshots gone")


def by_name(snapshots: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in snapshots}


def test_a_group_recreated_under_a_retained_name_leaves_the_kept_snapshots_alone(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str, leftovers: set[str]
) -> None:
    kube.create_group(sample(group_name, snapshotDeletionPolicy="Retain"))
    first = kube.wait_group("bleater", group_name)
    assert first["status"]["phase"] == "Succeeded", condition(first, "Succeeded")
    first_uid = first["metadata"]["uid"]
    kept = by_name(kube.snapshots("bleater", f"{GROUP_UID_LABEL}={first_uid}"))
    leftovers.update(kept)
    assert len(kept) == 3
    kube.delete_group("bleater", group_name)
    kube.wait_group_gone("bleater", group_name)

    writer_before = kube.deployment("bleater", "data-writer").metadata.resource_version
    second = kube.create_group(sample(group_name))
    group = kube.wait_group("bleater", group_name)
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "SnapshotNameTaken", failed
    assert "nothing was touched" in failed["message"]
    assert any(name in failed["message"] for name in kept), failed["message"]
    assert not group["status"].get("hooks"), "no step may have been applied"
    assert kube.deployment("bleater", "data-writer").metadata.resource_version == writer_before
    assert kube.snapshots("bleater", f"{GROUP_UID_LABEL}={second['metadata']['uid']}") == []

    kube.delete_group("bleater", group_name)
    kube.wait_group_gone("bleater", group_name)
    after = by_name(kube.snapshots("bleater", f"{GROUP_UID_LABEL}={first_uid}"))
    assert set(after) == set(kept), "a kept snapshot went with the second group"
    for name, snap in after.items():
        assert snap["metadata"]["uid"] == kept[name]["metadata"]["uid"], f"{name} was re-created"
        assert snap["status"]["readyToUse"] is True
        assert not snap["metadata"].get("ownerReferences"), f"{name} is owned again"
        assert "deletionTimestamp" not in snap["metadata"]


def test_a_snapshot_name_taken_during_the_run_fails_the_cut_and_is_left_alone(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str, leftovers: set[str]
) -> None:
    replicas = kube.replicas("bleater", "data-writer")
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("plan=pause:6", *FAST)
    created = kube.create_group(sample(group_name))
    uid = created["metadata"]["uid"]
    kube.wait_event_reasons("bleater", group_name, {"Planned"})
    theirs = f"{group_name}-postgres-postgres-data"
    kube.custom.create_namespaced_custom_object(*SNAPSHOTS, {
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": theirs},
        "spec": {"volumeSnapshotClassName": "csi-hostpath-snapclass",
                 "source": {"persistentVolumeClaimName": "postgres-data"}},
    })
    leftovers.add(theirs)
    group = kube.wait_group("bleater", group_name)

    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "SnapshotNameTaken", failed
    assert theirs in failed["message"] and not group["status"].get("attempts"), "not retried"
    journal = {h["name"]: h["state"] for h in group["status"]["hooks"]}
    assert journal.get("service:postgres") == "Undone", "the cut came after the freeze"
    assert_resumed(group)
    kube.wait_snapshots_gone("bleater", f"{GROUP_UID_LABEL}={uid}")
    other = kube.custom.get_namespaced_custom_object(*SNAPSHOTS, theirs)
    assert GROUP_UID_LABEL not in (other["metadata"].get("labels") or {})
    assert "deletionTimestamp" not in other["metadata"], "the group deleted a snapshot not its own"
    errors = {v["name"]: v.get("error", "") for s in group["status"]["services"]
              for v in s["volumeSnapshots"]}
    assert "left alone" in errors[theirs], errors
    assert_all_back(kube, bleater, replicas, uid, before)
