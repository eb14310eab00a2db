"""End to end on the local cluster: the bleater sample with its data-writer writing every second.

PostgreSQL is real; MongoDB is FerretDB behind a layer giving it mongod's fsync lock (stand-in);
MinIO is an S3 server standing in for the MinIO server. Kubernetes, the CSI snapshot controller
and sidecars are the real components, with a small hostpath CSI driver of this project's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.bleater import SERVICES, Bleater, contiguous, utc
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess

pytestmark = pytest.mark.cluster

SAMPLE = REPO / "deploy" / "samples" / "bleater-snapshotgroup.yaml"
WRITER = "data-writer"
SVC_OF = {"postgres": "postgres", "mongodb": "mongodb", "minio": "minio"}


def sample(name: str, **changes: Any) -> dict[str, Any]:
    """The bleater SnapshotGroup sample under another name, with spec changes."""
    doc: dict[str, Any] = yaml.safe_load(Path(SAMPLE).read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    doc["spec"].update(changes)
    return doc


def services_without_mongodb() -> list[dict[str, Any]]:
    """The sample's services but MongoDB.

    The data-writer writes each record to PostgreSQL, MongoDB and S3 in turn, so MongoDB's fsync
    lock (which blocks every client's writes) would hold the whole writer too, and whether one
    more record lands after the cut would be down to timing. Without the lock, a writer left out
    of the spec keeps writing through the cut, as the scenario means.
    """
    doc: dict[str, Any] = yaml.safe_load(Path(SAMPLE).read_text())
    return [s for s in doc["spec"]["services"] if s["type"] != "mongodb"]


def condition(group: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in group["status"]["conditions"] if c["type"] == type_)


def test_bleater_group_is_consistent_restorable_and_resumes_the_writer(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas_before = kube.replicas("bleater", WRITER)
    assert replicas_before >= 1
    start_seq = bleater.wait_new_records(0)
    metrics_before = scrape(operator)

    kube.create_group(sample(group_name))
    group = kube.wait_group("bleater", group_name)
    status = group["status"]
    assert status["phase"] == "Succeeded", status
    assert condition(group, "Consistent")["status"] == "True", condition(group, "Consistent")
    assert status["consistent"] is True
    assert condition(group, "SnapshotsReady")["status"] == "True"
    assert condition(group, "Quiesced")["status"] == "False"  # only True inside the window
    assert status["snapshotsReady"] == "3/3"
    earliest = utc(status["earliestSnapshotTime"])
    assert status["freeze"]["seconds"] > 0

    # Evidence of the quiesce steps, per type.
    by_name = {s["name"]: s for s in status["services"]}
    assert set(by_name) == set(SERVICES)
    assert {"backupStartLSN", "backupStopLSN"} <= set(by_name["postgres"]["evidence"])
    assert "lockCountBefore" in by_name["mongodb"]["evidence"]

    # Each snapshot, restored into a new PVC and served by a pod of the same image, holds no
    # record newer than the earliest cut, and its newest record is the status's lastRecordTime.
    for service in SERVICES:
        snap = by_name[service]["volumeSnapshots"][0]
        assert snap["readyToUse"] is True and snap["creationTime"]
        ip = bleater.restore(snap["name"], SVC_OF[service])
        try:
            restored = bleater.records(service, host=ip)
            assert restored, f"restored {service} holds no records"
            newest = max(r.at for r in restored)
            assert newest <= earliest, f"{service}: restored record at {newest} is after the cut {earliest}"
            assert newest == utc(by_name[service]["lastRecordTime"]), service
        finally:
            bleater.drop_restore(snap["name"])

    # The writer is back at its replicas and writing; no record was lost or duplicated.
    assert kube.replicas("bleater", WRITER) == replicas_before
    writer_status = status["writers"][0]
    assert writer_status["originalReplicas"] == replicas_before and writer_status["restoredAt"]
    bleater.wait_new_records(max(r.seq for r in bleater.records("postgres")))
    for service in SERVICES:
        seqs = [r.seq for r in bleater.records(service)]
        assert seqs[0] <= start_seq
        assert contiguous(seqs), f"{service}: sequence has gaps or duplicates"

    # What a person sees: Events for the steps.
    kube.wait_event_reasons("bleater", group_name, {"Planned", "SnapshotsCut", "Succeeded"})

    # What Prometheus sees: one more freeze window and one more succeeded group.
    metrics_after = scrape(operator)
    assert metric(metrics_after, "snapgroup_freeze_window_seconds_count") == \
        metric(metrics_before, "snapgroup_freeze_window_seconds_count") + 1
    succeeded = 'snapgroup_groups_total{reason="AllRecordsBeforeCut",result="Succeeded"}'
    assert metric(metrics_after, succeeded) == metric(metrics_before, succeeded) + 1
    assert metric(metrics_after, "snapgroup_writers_isolated") == 0


def test_writer_left_out_is_inconsistent_and_names_the_services(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    # The local CSI driver cuts in milliseconds; a real one takes seconds, and the writer (not
    # isolated) writes in between. Holding the window 2 s after the cut makes that certain here.
    armed("cut=pause:2")
    bleater.wait_new_records(0)
    kube.create_group(sample(group_name, writers=[], services=services_without_mongodb()))
    group = kube.wait_group("bleater", group_name)
    assert group["status"]["phase"] == "Succeeded"
    consistent = condition(group, "Consistent")
    assert consistent["status"] == "False" and consistent["reason"] == "RecordsNewerThanCut"
    assert group["status"]["consistent"] is False
    earliest = utc(group["status"]["earliestSnapshotTime"])
    newer = [s["name"] for s in group["status"]["services"] if utc(s["lastRecordTime"]) > earliest]
    assert newer, "the writer kept writing through the cut, so some service must be newer"
    for name in newer:
        assert name in consistent["message"]


def scrape(operator: OperatorProcess) -> dict[str, float]:
    """The operator's /metrics samples by name with labels."""
    return {
        key: float(value)
        for key, value in (line.rsplit(" ", 1) for line in operator.scrape().splitlines()
                           if line and not line.startswith("#"))
    }


def metric(samples: dict[str, float], key: str) -> float:
    """A sample's value; an unseen labelled counter is zero."""
    return samples.get(key, 0.0)
