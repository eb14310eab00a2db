"""Verification by restoring, on the local cluster: a bleater group restored into scratch claims in
its own namespace, each service started there and its newest record read back, while the live
services and the data-writer go on untouched; and a backup whose snapshot no longer holds what the
group recorded is caught.

PostgreSQL is the real server; MongoDB is FerretDB behind the fsync-lock layer and MinIO the S3
server (stand-ins, as in test_bleater_group). The tampered backup is a hostpath snapshot archive
with the newest object of the S3 stand-in's bucket taken out, as a copy gone wrong would leave it.
"""

from __future__ import annotations

import io
import re
import signal
import tarfile
from pathlib import Path
from typing import Any

import pytest

from e2e.bleater import NAMESPACE, SERVICES, Bleater, utc
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample
from e2e.test_cli import snapgroup
from snapgroup.api.labels import VERIFICATION_LABEL

pytestmark = pytest.mark.cluster

EVENT_OBJECT = re.compile(r"buckets/bleater/events/(\d+)\.json$")


def verified(kube: Kube, name: str, timeout: float = 300.0) -> dict[str, Any]:
    """The group once its verification answered."""
    return kube.wait_custom(
        NAMESPACE, "snapshotgroups", name,
        lambda o: bool(((o.get("status") or {}).get("verification") or {}).get("completionTime")),
        timeout, "a verification that answered")


def condition(group: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in group["status"]["conditions"] if c["type"] == kind)


def left_behind(kube: Kube, uid: str) -> list[str]:
    selector = f"{VERIFICATION_LABEL}={uid}"
    return ([f"pod/{p.metadata.name}" for p in kube.core.list_namespaced_pod(
                NAMESPACE, label_selector=selector).items]
            + [f"pvc/{c.metadata.name}" for c in kube.core.list_namespaced_persistent_volume_claim(
                NAMESPACE, label_selector=selector).items]
            + [f"secret/{s.metadata.name}" for s in kube.core.list_namespaced_secret(
                NAMESPACE, label_selector=selector).items])


def service_pods(kube: Kube) -> dict[str, str]:
    """uid of every pod of the live services (a restart would change it; the writer's pod is
    replaced by the group's isolation, as it should be)."""
    return {p.metadata.name: p.metadata.uid for p in kube.core.list_namespaced_pod(NAMESPACE).items
            if VERIFICATION_LABEL not in (p.metadata.labels or {})
            and p.metadata.name.startswith(("postgres-", "mongodb-", "minio-"))}


def test_a_group_asking_for_it_is_verified_by_restoring_it_while_bleater_runs_on(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str,
) -> None:
    pods_before = service_pods(kube)
    assert len(pods_before) == 3, pods_before
    kube.create_group(sample(group_name, verify="Restore"))
    group = kube.wait_group(NAMESPACE, group_name)
    assert group["status"]["phase"] == "Succeeded", group["status"]
    done = verified(kube, group_name)
    status = done["status"]
    verdict = condition(done, "Verified")
    assert (verdict["status"], verdict["reason"]) == ("True", "Restored"), (verdict, operator.tail())
    assert status["verified"] is True
    assert status["verification"]["request"] == "spec.verify"
    recorded = {s["name"]: utc(s["lastRecordTime"]) for s in status["services"]}
    cut = utc(status["earliestSnapshotTime"])
    evidence = {s["name"]: s for s in status["verification"]["services"]}
    assert set(evidence) == set(recorded) == {"postgres", "mongodb", "minio"}
    for name, found in evidence.items():
        assert found["matches"] is True, found
        restored = utc(found["restoredNewestRecord"])
        assert restored == recorded[name] and restored <= cut, (name, found, recorded)
        assert len(found["pods"]) == 1 and found["seconds"] > 0
    # Nothing is left, the live services were never restarted, and the writer wrote on.
    assert left_behind(kube, done["metadata"]["uid"]) == []
    assert service_pods(kube) == pods_before
    after = max(r.seq for r in bleater.records("postgres"))
    bleater.wait_new_records(after)
    for service in SERVICES:
        assert max(r.at for r in bleater.records(service)) > cut


def drop_newest_object(archive: Path) -> int:
    """Rewrite a snapshot archive of the S3 stand-in's volume without its newest event object;
    the seq taken out."""
    with tarfile.open(archive) as source:
        members = [(m, source.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                   for m in source.getmembers()]
    seqs = {int(found.group(1)): m.name for m, _ in members if (found := EVENT_OBJECT.search(m.name))}
    newest = max(seqs)
    rewritten = archive.with_suffix(".rewritten")
    with tarfile.open(rewritten, "w:gz") as target:
        for member, data in members:
            if member.name != seqs[newest]:
                target.addfile(member, io.BytesIO(data) if data is not None else None)
    rewritten.replace(archive)
    return newest


def test_verification_catches_a_snapshot_that_no_longer_holds_what_the_group_recorded(
    operator: OperatorProcess, kube: Kube, local_cluster: Any, group_name: str,
) -> None:
    kube.create_group(sample(group_name))
    group = kube.wait_group(NAMESPACE, group_name)
    assert group["status"]["phase"] == "Succeeded", group["status"]
    assert "verification" not in group["status"]  # not asked for
    minio = next(s for s in group["status"]["services"] if s["type"] == "minio")
    (snap,) = minio["volumeSnapshots"]
    stored = kube.custom.get_namespaced_custom_object(
        "snapshot.storage.k8s.io", "v1", NAMESPACE, "volumesnapshots", snap["name"])
    content = kube.custom.get_cluster_custom_object(
        "snapshot.storage.k8s.io", "v1", "volumesnapshotcontents",
        stored["status"]["boundVolumeSnapshotContentName"])
    archive = local_cluster.csi_dir / "snapshots" / f"{content['status']['snapshotHandle']}.tar.gz"
    dropped = drop_newest_object(archive)
    # The fault is in place: the archive lacks that object now.
    with tarfile.open(archive) as source:
        assert not any(f"events/{dropped:012d}.json" in m.name for m in source.getmembers())

    done = snapgroup(local_cluster, "verify", group_name, "-n", NAMESPACE, "--restore")
    assert done.returncode == 1, (done.stdout, done.stderr, operator.tail())
    assert "verification requested" in done.stdout
    assert "Verified=False" in done.stdout, done.stdout
    group = kube.group(NAMESPACE, group_name)
    assert group is not None
    verdict = condition(group, "Verified")
    assert (verdict["status"], verdict["reason"]) == ("False", "RecordMismatch"), verdict
    assert verdict["message"].startswith("minio: restored newest record"), verdict
    assert group["status"]["verified"] is False
    evidence = {s["name"]: s for s in group["status"]["verification"]["services"]}
    assert evidence["minio"]["matches"] is False
    assert utc(evidence["minio"]["restoredNewestRecord"]) < utc(evidence["minio"]["recordedNewestRecord"])
    assert evidence["postgres"]["matches"] is True and evidence["mongodb"]["matches"] is True
    # The checker's table says which service failed, and the objects are gone.
    assert re.search(r"minio\s+restored holds the recorded newest record\s+FAIL", done.stdout), done.stdout
    assert left_behind(kube, group["metadata"]["uid"]) == []


def test_the_operator_killed_inside_a_verification_runs_it_again_and_leaves_nothing(
    armed: Any, kube: Kube, group_name: str,
) -> None:
    point = f"verify:{group_name}:started"
    crashing = armed(f"{point}=crash")
    kube.create_group(sample(group_name, verify="Restore"))
    assert crashing.process is not None
    crashing.process.wait(timeout=300)
    # The fault, proven: SIGKILL once the scratch claims and pods existed, the request unanswered.
    assert crashing.process.returncode == -signal.SIGKILL, crashing.tail()
    assert f"failpoint {point}: crash" in crashing.tail(400)
    group = kube.group(NAMESPACE, group_name)
    assert group is not None and group["status"]["phase"] == "Succeeded"
    uid = group["metadata"]["uid"]
    interrupted = group["status"]["verification"]
    assert "completionTime" not in interrupted and condition(group, "Verified")["status"] == "Unknown"
    left = left_behind(kube, uid)
    assert any(o.startswith("pod/") for o in left) and any(o.startswith("pvc/") for o in left), left

    armed("")  # a new operator finds the request unanswered
    done = verified(kube, group_name)
    verdict = condition(done, "Verified")
    assert (verdict["status"], verdict["reason"]) == ("True", "Restored"), verdict
    assert utc(done["status"]["verification"]["startTime"]) >= utc(interrupted["startTime"])
    assert left_behind(kube, uid) == []
