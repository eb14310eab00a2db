"""A SnapshotGroupRestore puts a bleater group back in place, on the local cluster, while the
data-writer runs; and a failure at a step of it puts the original volumes and workloads back.

PostgreSQL is the real server; MongoDB is FerretDB behind the fsync-lock layer and MinIO the S3
server (stand-ins, as in test_bleater_group). Volumes are the CSI hostpath driver's, restored by
the real external-provisioner from the group's VolumeSnapshots; the real PersistentVolume
controller binds and releases them.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from e2e.bleater import NAMESPACE, SERVICES, Bleater, contiguous, utc
from e2e.faults import WRITER, Records, assert_records_kept, read_records
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample
from e2e.test_restore_clone import create_restore, pods_of, wait_records, wait_restore
from snapgroup.api.restore import (
    REPLACED_BY,
    RESTORE_TARGET_LABEL,
    RESTORE_UID_LABEL,
    STOPPED_BY,
)

pytestmark = pytest.mark.cluster

CLAIMS = ("postgres-data", "mongodb-data", "minio-data")
WORKLOADS = ("postgres", "mongodb", "minio", WRITER)
OWN_SERVICE = {"postgres": "postgres", "mongodb": "mongodb", "minio": "minio"}


def in_place(name: str, group: str, previous: str = "Retain") -> dict[str, Any]:
    return {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"groupName": group, "inPlace": True, "previousVolumes": previous, "timeout": "5m"}}


@pytest.fixture
def consent(kube: Kube) -> Iterator[None]:
    """The bleater namespace's owner allows restores into it, for the test's length."""
    kube.core.patch_namespace(NAMESPACE, {"metadata": {"labels": {RESTORE_TARGET_LABEL: NAMESPACE}}})
    yield
    kube.core.patch_namespace(NAMESPACE, {"metadata": {"labels": {RESTORE_TARGET_LABEL: None}}})


def volumes(kube: Kube) -> dict[str, str]:
    """Each bleater claim's volume."""
    return {c: kube.core.read_namespaced_persistent_volume_claim(c, NAMESPACE).spec.volume_name
            for c in CLAIMS}


def reclaim_policies(kube: Kube, names: dict[str, str]) -> dict[str, str]:
    return {v: kube.core.read_persistent_volume(v).spec.persistent_volume_reclaim_policy
            for v in names.values()}


def replicas(kube: Kube) -> dict[str, int]:
    return {w: kube.replicas(NAMESPACE, w) for w in WORKLOADS}


def group_of(kube: Kube, name: str) -> dict[str, Any]:
    kube.create_group(sample(name))
    group = kube.wait_group(NAMESPACE, name)
    assert group["status"]["phase"] == "Succeeded", group["status"]
    assert group["status"]["consistent"] is True
    return group


def left_behind(kube: Kube, uid: str) -> list[str]:
    """Anything still carrying the restore's uid label: claims, pods, Secrets, volumes; and any
    workload still annotated as stopped by it."""
    selector = f"{RESTORE_UID_LABEL}={uid}"
    found = [f"PersistentVolumeClaim/{c.metadata.name}" for c in
             kube.core.list_namespaced_persistent_volume_claim(NAMESPACE, label_selector=selector).items]
    found += [f"Pod/{p.metadata.name}"
              for p in kube.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items]
    found += [f"Secret/{s.metadata.name}" for s in
              kube.core.list_namespaced_secret(NAMESPACE, label_selector=selector).items]
    found += [f"PersistentVolume/{v.metadata.name}" for v in
              kube.core.list_persistent_volume(label_selector=selector).items]
    found += [f"Deployment/{d.metadata.name}" for d in kube.apps.list_namespaced_deployment(NAMESPACE).items
              if (d.metadata.annotations or {}).get(STOPPED_BY) == uid]
    return found


def wait_volumes_gone(kube: Kube, names: set[str], timeout: float = 120.0) -> None:
    """The restored volumes of a rolled-back restore are reclaimed by the driver."""
    deadline = time.monotonic() + timeout
    while names & {v.metadata.name for v in kube.core.list_persistent_volume().items}:
        if time.monotonic() > deadline:
            raise AssertionError(f"volumes {sorted(names)} still exist {timeout}s after the rollback")
        time.sleep(0.5)  # the external-provisioner deletes a released volume


def forget_previous(kube: Kube, names: list[str]) -> None:
    """The test's own cleanup: previous volumes kept by a restore go (Delete) after it checked them."""
    for name in names:
        kube.core.patch_persistent_volume(name, {"spec": {"persistentVolumeReclaimPolicy": "Delete"}})


def test_in_place_while_the_writer_runs_brings_back_exactly_the_cut(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str, consent: None
) -> None:
    group = group_of(kube, group_name)
    cut = utc(group["status"]["earliestSnapshotTime"])
    recorded = {s["name"]: utc(s["lastRecordTime"]) for s in group["status"]["services"]}
    # The writer goes on after the group: these records are newer than the cut and must go.
    top = max(r.seq for r in bleater.records("postgres"))
    bleater.wait_new_records(top + 2)
    before = read_records(bleater)
    after_cut = {s: {seq: at for seq, at in held.items() if at > cut} for s, held in before.items()}
    assert all(after_cut.values()), "the writer wrote nothing after the group"
    previous = volumes(kube)
    scaled = replicas(kube)

    started = time.time()
    create_restore(kube, in_place(f"{group_name}-back", group_name))
    done = wait_restore(kube, f"{group_name}-back")
    status = done["status"]
    assert status["phase"] == "Succeeded", (status.get("message"), pods_of(kube, NAMESPACE), operator.tail())
    assert status["swapped"] is True
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]} == {
        "Planned": ("True", "Planned"), "Proven": ("True", "ServicesStarted"),
        "Restored": ("True", "Swapped")}
    assert 0 < status["writersStoppedSeconds"] < status["seconds"]

    # Every claim is on a volume restored from the group; the previous ones are kept, Released.
    now_on = volumes(kube)
    entries = {c["pvc"]: c for c in status["claims"]}
    assert set(entries) == set(CLAIMS)
    snapshots = {s["pvc"]: s["name"] for svc in group["status"]["services"] for s in svc["volumeSnapshots"]}
    for claim in CLAIMS:
        assert now_on[claim] != previous[claim]
        assert entries[claim]["restoredVolume"] == now_on[claim]
        assert entries[claim]["previousVolume"] == previous[claim]
        assert entries[claim]["previousVolumeKept"] is True
        assert entries[claim]["volumeSnapshot"] == snapshots[claim]
        kept = kube.core.read_persistent_volume(previous[claim])
        assert kept.spec.persistent_volume_reclaim_policy == "Retain"
        assert kept.status.phase == "Released"
        assert kept.metadata.annotations[REPLACED_BY] == f"{NAMESPACE}/{group_name}-back"
    assert replicas(kube) == scaled
    assert left_behind(kube, done["metadata"]["uid"]) == []

    # The services hold the cut's records; the ones written after the group are gone; the writer
    # goes on from the restored maximum without a gap.
    held = {service: {r.seq: r.at for r in wait_records(bleater, service)} for service in SERVICES}
    for service in SERVICES:
        kept_records = {seq: at for seq, at in held[service].items() if at <= cut}
        assert max(kept_records.values()) == recorded[OWN_SERVICE[service]], service
        assert {seq: at for seq, at in before[service].items() if at <= cut} == kept_records, service
        newer = {seq: at for seq, at in held[service].items() if at > cut}
        assert all(at.timestamp() > started for at in newer.values()), (service, newer)
        assert not set(after_cut[service].items()) & set(newer.items()), service
    restored_top = max(seq for seq, at in held["postgres"].items() if at <= cut)
    resumed = bleater.wait_new_records(restored_top + 1)
    assert resumed > restored_top
    final = read_records(bleater)
    for service in SERVICES:
        assert contiguous(sorted(final[service])) and min(final[service]) == 1, service
        assert final[service][restored_top + 1] > datetime.fromtimestamp(started, cut.tzinfo), service
    forget_previous(kube, list(previous.values()))


FAIL_STEPS = ["scratch-claims", "proven", "writers-stopped", "services-stopped", "claims-released",
              "claims-swapped", "services-started"]


@pytest.mark.parametrize("step", FAIL_STEPS)
def test_a_failure_midway_puts_back_the_original_data_and_workloads(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str, consent: None, step: str
) -> None:
    name = f"{group_name}-back"
    armed(f"restore:{name}:{step}=fail")
    group_of(kube, group_name)
    before = Before.read(kube, bleater)

    create_restore(kube, in_place(name, group_name))
    done = wait_restore(kube, name)
    status = done["status"]
    # The fault, proven: the failpoint at that step failed the run.
    assert status["phase"] == "Failed", status
    assert f"failpoint restore:{name}:{step}" in status["message"], status["message"]
    restored = next(c for c in status["conditions"] if c["type"] == "Restored")
    assert (restored["status"], restored["reason"]) == ("False", "FailpointInjected")
    assert status.get("swapped") is False
    assert_rolled_back(kube, bleater, done, before)


@pytest.mark.parametrize("step", ["claims-released", "services-started"])
def test_the_operator_killed_midway_and_restarted_rolls_back(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str, consent: None, step: str
) -> None:
    name = f"{group_name}-back"
    point = f"restore:{name}:{step}"
    crashing = armed(f"{point}=crash")
    group_of(kube, group_name)
    before = Before.read(kube, bleater)

    create_restore(kube, in_place(name, group_name))
    assert crashing.process is not None
    crashing.process.wait(timeout=300)
    # The fault, proven: SIGKILL at the failpoint, the world as that step left it: the claims
    # released and everything stopped, or the claims swapped and the services started again.
    assert crashing.process.returncode == -signal.SIGKILL, crashing.tail()
    assert f"failpoint {point}: crash" in crashing.tail(400)
    live = {c.metadata.name: c.spec.volume_name
            for c in kube.core.list_namespaced_persistent_volume_claim(NAMESPACE).items
            if c.metadata.deletion_timestamp is None and c.metadata.name in CLAIMS}
    if step == "claims-released":
        assert live == {} and all(n == 0 for n in replicas(kube).values()), (live, replicas(kube))
    else:
        assert set(live) == set(CLAIMS) and all(live[c] != before.volumes[c] for c in CLAIMS), live
        assert replicas(kube)[WRITER] == 0 and replicas(kube)["postgres"] == before.replicas["postgres"]

    armed("")  # a new operator, which finds the restore cut off before its point of no return
    done = wait_restore(kube, name)
    status = done["status"]
    assert status["phase"] == "Failed", status
    restored = next(c for c in status["conditions"] if c["type"] == "Restored")
    assert (restored["status"], restored["reason"]) == ("False", "OperatorRestarted")
    put_back = status["message"].split("rolled back: claims ", 1)[-1]
    put_back = put_back.split(" back on their previous volumes")[0]
    assert sorted(put_back.split(", ")) == sorted(CLAIMS), status["message"]
    assert_rolled_back(kube, bleater, done, before)


@dataclass(frozen=True)
class Before:
    """The namespace as a restore found it: what a rollback must give back."""

    volumes: dict[str, str]
    policies: dict[str, str]
    replicas: dict[str, int]
    records: Records

    @classmethod
    def read(cls, kube: Kube, bleater: Bleater) -> Before:
        found = volumes(kube)
        return cls(found, reclaim_policies(kube, found), replicas(kube), read_records(bleater))


def assert_rolled_back(kube: Kube, bleater: Bleater, done: dict[str, Any], before: Before) -> None:
    """The claims on their own volumes, the workloads at their replicas, every record that existed
    before the restore still there and the writer going on; nothing of the restore left."""
    assert volumes(kube) == before.volumes
    assert reclaim_policies(kube, before.volumes) == before.policies
    assert replicas(kube) == before.replicas
    kube.wait_pods(NAMESPACE, "app=data-writer", before.replicas[WRITER])
    assert_records_kept(bleater, before.records)
    uid = done["metadata"]["uid"]
    assert left_behind(kube, uid) == []
    restored = {c["restoredVolume"] for c in done["status"].get("claims") or [] if c.get("restoredVolume")}
    wait_volumes_gone(kube, restored)
