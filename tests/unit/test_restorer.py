"""The Restorer end to end on an in-memory ClusterObjects (`unit.fake_objects`): plan refusals
that create nothing, a clone that comes up on the restored claims, and failures, timeouts,
crashes and deletions that leave the target namespace as it was."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from typing import Any

import pytest

from snapgroup.api.restore import RESTORE_TARGET_LABEL, RESTORE_UID_LABEL
from snapgroup.orchestration.restores import Restorer
from snapgroup.ports import StepError
from unit.fake_objects import FakeObjects
from unit.restore_world import (
    CLAIMS,
    EARLIEST_CUT,
    GROUP,
    HANDLES,
    IMAGE,
    JSON,
    PG_ANNOTATIONS,
    REF,
    REFUSALS,
    RESTORE,
    RESTORE_UID,
    SOURCE,
    TARGET,
    Key,
    Objects,
    bleater,
    claim,
    config_map,
    put,
    relabel,
    secret,
    service,
    unb64,
)

RESTORE_KEY: Key = ("SnapshotGroupRestore", SOURCE, RESTORE)
TASK_NAME = f"restore {SOURCE}/{RESTORE}"
COPIES = 2 * len(CLAIMS)
"""The VolumeSnapshot and VolumeSnapshotContent copies, one each per claim."""


def restore_spec(**fields: Any) -> JSON:
    return {"groupName": GROUP, "targetNamespace": TARGET, **fields}


def cluster(objects: Objects | None = None, **fields: Any) -> FakeObjects:
    """The bleater world, a few unrelated objects already in the target, and the restore object."""
    objects = bleater(PG_ANNOTATIONS) if objects is None else objects
    put(objects, config_map("team-notes", {"owner": "storage team"}), TARGET)
    put(objects, secret("registry-creds", {".dockerconfigjson": "{}"}, "kubernetes.io/dockerconfigjson"),
        TARGET)
    scratch = put(objects, claim("scratch"), TARGET)  # another restore's: never ours to remove
    relabel(scratch, **{RESTORE_UID_LABEL: "1c1c1c1c-another-restore"})
    put(objects, {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
                  "metadata": {"name": RESTORE, "namespace": SOURCE, "uid": RESTORE_UID, "generation": 1},
                  "spec": restore_spec(**fields)})
    return FakeObjects(objects)


def others(fake: FakeObjects) -> dict[Key, JSON]:
    """Everything that is not the restore's: the source, the cluster, what the target held (not
    the volumes and pods the pretend controllers made for the restore's claims and workloads)."""
    mine = set(fake.labelled(RESTORE_UID))
    return {k: copy.deepcopy(o) for k, o in fake.objects.items()
            if k not in mine and k != RESTORE_KEY and k not in fake.made
            and not (k[0] == "Pod" and k[1] == TARGET)}


async def run(fake: FakeObjects, **fields: Any) -> JSON:
    await Restorer(fake, IMAGE).run(REF, restore_spec(**fields))
    return dict(fake.objects[RESTORE_KEY].get("status") or {})


def condition(status: JSON, type_: str) -> JSON:
    return next(c for c in status["conditions"] if c["type"] == type_)


def restore_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == TASK_NAME]


# -- refusals create nothing ------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [pytest.param(r, id=r.id) for r in REFUSALS])
async def test_a_refused_plan_fails_the_restore_and_creates_nothing(refusal: Any) -> None:
    objects = bleater(PG_ANNOTATIONS)
    fields = refusal.change(objects)
    fake = cluster(objects, **fields)
    status = await run(fake, **fields)
    assert status["phase"] == "Failed"
    planned = condition(status, "Planned")
    assert (planned["status"], planned["reason"]) == ("False", refusal.reason)
    assert planned["message"].startswith(f"{refusal.field_path}: ")
    assert planned["message"].endswith("; nothing was created")
    assert status["message"] == planned["message"]
    assert [c for c in fake.calls if c[0] in ("create", "delete")] == []
    assert fake.events == [("Warning", refusal.reason, planned["message"])]


async def test_a_failed_read_of_the_source_fails_the_restore_and_creates_nothing() -> None:
    fake = cluster()
    fake.fail_list["Deployment"] = StepError(
        "KubernetesApiError", "list Deployment in bleater failed: HTTP 503: the server is shutting down")
    status = await run(fake)
    assert status["phase"] == "Failed"
    planned = condition(status, "Planned")
    assert (planned["status"], planned["reason"]) == ("False", "KubernetesApiError")
    assert "HTTP 503" in planned["message"]
    assert fake.created == []


# -- a clone that serves --------------------------------------------------------------------


async def test_a_restore_brings_the_group_up_in_the_target_on_its_snapshots() -> None:
    fake = cluster()
    before = others(fake)
    status = await run(fake)

    assert status["phase"] == "Succeeded", status.get("message")
    assert condition(status, "Planned")["status"] == "True"
    restored = condition(status, "Restored")
    assert (restored["status"], restored["reason"]) == ("True", "WorkloadsReady")
    assert {"startTime", "completionTime", "seconds"} <= set(status)
    assert status["volumes"] == [
        {"pvc": CLAIMS[s], "volumeSnapshot": f"{GROUP}-{s}-{CLAIMS[s]}", "service": s, "bound": True}
        for s in ("postgres", "mongodb", "minio")]
    workloads = {w["name"]: w for w in status["workloads"]}
    assert sorted(workloads) == ["minio", "mongodb", "postgres"]  # the writer is left out
    for w in workloads.values():
        assert (w["kind"], w["replicas"], w["readyReplicas"], w["ready"]) == ("Deployment", 1, 1, True)
    assert workloads["postgres"]["backupRecovery"].startswith("backup recovery")

    # Each claim holds the data of the group's own snapshot.
    assert {k[2]: h for k, h in fake.provisioned_from.items() if k[1] == TARGET} == {
        CLAIMS[s]: HANDLES[s] for s in CLAIMS}
    target = fake.in_namespace(TARGET)
    for name in CLAIMS.values():
        assert target[("PersistentVolumeClaim", TARGET, name)]["status"]["phase"] == "Bound"
    assert ("Deployment", TARGET, "data-writer") not in target
    pg = target[("Deployment", TARGET, "postgres")]
    assert [c["name"] for c in pg["spec"]["template"]["spec"]["initContainers"]] == ["snapgroup-prepare"]

    # The copies did their work and are gone; nothing else was deleted.
    assert not [k for k in fake.objects if k[0] in ("VolumeSnapshot", "VolumeSnapshotContent")
                and k in set(fake.created)]
    assert len(fake.deleted) == COPIES
    assert {k[0] for k in fake.deleted} == {"VolumeSnapshot", "VolumeSnapshotContent"}
    assert set(fake.deleted) <= set(fake.created)
    assert others(fake) == before

    # Everything created carried the restore's uid from the start.
    for key in fake.created:
        assert fake.sent[key]["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID, key
    assert [reason for _, reason, _ in fake.events] == ["Restoring", "Restored"]
    assert {t for t, _, _ in fake.events} == {"Normal"}


async def test_the_clones_secrets_point_at_the_clones_services() -> None:
    fake = cluster()
    status = await run(fake)
    assert status["phase"] == "Succeeded", status.get("message")
    ips = {name: fake.objects[("Service", TARGET, name)]["spec"]["clusterIP"] for name in CLAIMS}
    assert all(ip.startswith("10.96.0.") for ip in ips.values())
    for name in CLAIMS:  # a fresh IP was asked for, not the source's
        assert "clusterIP" not in fake.sent[("Service", TARGET, name)]["spec"]
    data = {name: {k: unb64(v) for k, v in fake.objects[("Secret", TARGET, name)]["data"].items()}
            for name in ("postgres-credentials", "mongodb-credentials", "minio-credentials")}
    assert data["postgres-credentials"]["host"] == ips["postgres"]
    assert data["mongodb-credentials"]["uri"] == (
        f"mongodb://bleater:bleater-mongo-sample@{ips['mongodb']}:27017/?authSource=admin")
    assert data["minio-credentials"]["endpoint"] == f"{ips['minio']}:9000"
    assert fake.objects[("Secret", TARGET, "minio-tls")]["data"] == (
        fake.objects[("Secret", SOURCE, "minio-tls")]["data"])
    notes = {(o["kind"], o["name"]): o.get("note") for o in status["objects"]}
    assert notes[("Secret", "postgres-credentials")] == "points at the clone: postgres's IP"
    assert notes[("Secret", "minio-tls")] is None
    assert ("Service", "postgres") in notes
    # The source keeps its own addresses.
    assert unb64(fake.objects[("Secret", SOURCE, "postgres-credentials")]["data"]["host"]) == "127.96.0.10"


async def test_workloads_are_created_after_the_claims_services_and_secrets_they_use() -> None:
    fake = cluster()
    await run(fake)
    kinds = [k[0] for k in fake.created]
    first_workload = kinds.index("Deployment")
    assert set(kinds[first_workload:]) == {"Deployment"}
    assert kinds.index("PersistentVolumeClaim") > max(i for i, k in enumerate(kinds) if k == "VolumeSnapshot")


async def test_include_writers_brings_the_writer_up_on_the_clone_too() -> None:
    fake = cluster(includeWriters=True)
    status = await run(fake, includeWriters=True)
    assert status["phase"] == "Succeeded", status.get("message")
    assert "data-writer" in {w["name"] for w in status["workloads"]}
    writer = fake.objects[("Deployment", TARGET, "data-writer")]
    env = {e["name"]: e.get("value") for e in writer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["S3_ENDPOINT"] == "minio.bleater-clone.svc:9000"
    assert env["PG_FALLBACK"].startswith("postgresql://10.96.0.")
    endpoints = fake.objects[("ConfigMap", TARGET, "bleater-endpoints")]["data"]
    assert endpoints["DATABASE_URL"] == "postgresql://bleater@postgres.bleater-clone.svc.cluster.local:5432/bleater"


async def test_the_status_says_which_moment_the_clone_holds() -> None:
    status = await run(cluster())
    assert status["phase"] == "Succeeded"
    assert status.get("earliestSnapshotTime") == EARLIEST_CUT


# -- failures leave the target as it was ----------------------------------------------------------


async def test_a_create_failure_midway_removes_everything_the_restore_created_and_nothing_else() -> None:
    fake = cluster()
    before = others(fake)
    fake.fail_create["Deployment", "mongodb"] = StepError(
        "KubernetesApiError", "create Deployment bleater-clone/mongodb failed: HTTP 500: etcdserver: "
                              "request timed out")
    status = await run(fake)
    assert status["phase"] == "Failed"
    restored = condition(status, "Restored")
    assert (restored["status"], restored["reason"]) == ("False", "KubernetesApiError")
    assert "etcdserver: request timed out" in status["message"]
    # Up to the failing one: copies, claims, Services, Secrets, and Deployment/minio.
    assert ("Deployment", TARGET, "minio") in fake.created
    assert f"removed the {len(fake.created)} object(s) it had created" in status["message"]
    assert fake.labelled(RESTORE_UID) == []
    assert sorted(fake.deleted) == sorted(fake.created)
    assert others(fake) == before
    assert fake.events[-1][:2] == ("Warning", "KubernetesApiError")


async def test_an_object_appearing_while_the_restore_runs_is_left_alone() -> None:
    fake = cluster()
    theirs = service("postgres", ip="10.96.9.9", port=5432, selector={"app": "postgres"})
    theirs["metadata"]["namespace"] = TARGET
    fake.appear["Service", "postgres"] = theirs
    status = await run(fake)
    assert status["phase"] == "Failed"
    assert condition(status, "Restored")["reason"] == "TargetObjectExists"
    assert fake.objects[("Service", TARGET, "postgres")] == theirs
    assert fake.labelled(RESTORE_UID) == []


async def test_a_workload_that_never_gets_ready_times_the_restore_out_and_is_removed() -> None:
    fake = cluster(timeout="200ms")
    before = others(fake)
    fake.never_ready.add(("Deployment", "postgres"))
    status = await run(fake, timeout="200ms")
    assert status["phase"] == "Failed"
    restored = condition(status, "Restored")
    assert (restored["status"], restored["reason"]) == ("False", "RestoreTimedOut")
    assert "200ms" in status["message"]
    assert fake.labelled(RESTORE_UID) == []
    assert fake.waiting == set()
    assert others(fake) == before
    assert fake.events[-1][:2] == ("Warning", "RestoreTimedOut")


async def test_a_timed_out_restore_names_what_was_not_ready() -> None:
    fake = cluster(timeout="200ms")
    fake.never_ready.add(("Deployment", "postgres"))
    status = await run(fake, timeout="200ms")
    assert status["phase"] == "Failed"
    assert "postgres" in status["message"]


async def test_a_create_failing_beside_another_in_flight_leaves_nothing_behind() -> None:
    fake = cluster()
    fake.fail_create["PersistentVolumeClaim", "mongodb-data"] = StepError(
        "KubernetesApiError", "create PersistentVolumeClaim bleater-clone/mongodb-data failed: HTTP 403: "
                              "exceeded quota: storage")
    fake.slow_create["PersistentVolumeClaim", "minio-data"] = 50  # still in flight when mongodb's fails
    status = await run(fake)
    assert status["phase"] == "Failed"
    await fake.settled()
    assert fake.labelled(RESTORE_UID) == []


# -- crashes, deletion, shutdown ----------------------------------------------------------------


async def interrupted_run(fake: FakeObjects) -> None:
    """A run that created everything and waits for PostgreSQL when the operator stops: the run
    is cancelled, what it created stays."""
    fake.never_ready.add(("Deployment", "postgres"))
    first = Restorer(fake, IMAGE)
    first.start(REF, restore_spec(), {})
    await fake.until(lambda: ("Deployment", TARGET, "postgres") in fake.waiting)
    await first.close()


async def test_a_rerun_whose_plan_now_fails_removes_what_the_first_run_created() -> None:
    fake = cluster()
    await interrupted_run(fake)
    assert len(fake.labelled(RESTORE_UID)) > COPIES
    # While the operator was down the namespace's owner withdrew consent.
    del fake.objects[("Namespace", "", TARGET)]["metadata"]["labels"][RESTORE_TARGET_LABEL]
    before = others(fake)

    second = Restorer(fake, IMAGE)
    second.start(REF, restore_spec(), dict(fake.objects[RESTORE_KEY]["status"]))
    await fake.until(lambda: fake.objects[RESTORE_KEY]["status"]["phase"] == "Failed")
    status = fake.objects[RESTORE_KEY]["status"]
    assert condition(status, "Restored")["reason"] == "TargetNamespaceNotOptedIn"
    assert "nothing was created" not in status["message"]
    assert "removed the" in status["message"]
    assert fake.labelled(RESTORE_UID) == []
    assert others(fake) == before


async def test_a_rerun_after_a_crash_goes_on_with_what_the_first_run_created() -> None:
    fake = cluster()
    before = others(fake)
    await interrupted_run(fake)
    assert restore_tasks() == []
    assert fake.objects[RESTORE_KEY]["status"]["phase"] == "Restoring"
    left = fake.labelled(RESTORE_UID)
    assert ("Deployment", TARGET, "postgres") in left and len(left) > COPIES

    fake.release("Deployment", "postgres")
    status = await run(fake)  # a new operator process resumes it
    assert status["phase"] == "Succeeded", status.get("message")
    assert max(Counter(fake.created).values()) == 1  # nothing was created twice
    assert {w["name"]: w["ready"] for w in status["workloads"]} == {
        "minio": True, "mongodb": True, "postgres": True}
    assert len(fake.deleted) == COPIES
    assert others(fake) == before


async def test_a_rerun_finds_its_own_objects_and_refuses_nobody_elses() -> None:
    fake = cluster()
    first = await run(fake)
    assert first["phase"] == "Succeeded"
    fake.objects[RESTORE_KEY]["status"] = {}
    status = await run(fake)  # e.g. the status write was lost: the clone is recognised as its own
    assert status["phase"] == "Succeeded", status.get("message")


async def test_deleting_a_running_restore_stops_it_and_removes_what_it_created() -> None:
    fake = cluster()
    before = others(fake)
    fake.never_ready.add(("Deployment", "postgres"))
    restorer = Restorer(fake, IMAGE)
    restorer.start(REF, restore_spec(), {})
    (task,) = restore_tasks()
    await fake.until(lambda: ("Deployment", TARGET, "postgres") in fake.waiting or task.done())
    if task.done():
        task.result()  # the run ended early: show why
    del fake.objects[RESTORE_KEY]  # what the API server did before the DELETED event
    calls = len(fake.calls)
    await restorer.stop(REF, restore_spec(), {})
    assert task.cancelled()
    assert restore_tasks() == []
    assert fake.waiting == set()
    assert fake.labelled(RESTORE_UID) == []
    assert "create" not in {c[0] for c in fake.calls[calls:]}
    assert others(fake) == before


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
async def test_deleting_a_finished_restore_keeps_a_clone_and_removes_what_a_failure_left(phase: str) -> None:
    # Objects of the restore in the target: the clone it made, or what a failed clean-up (or an
    # operator down when it was deleted) left behind.
    fake = cluster()
    assert (await run(fake))["phase"] == "Succeeded"
    made = fake.labelled(RESTORE_UID)
    fake.objects[RESTORE_KEY]["status"]["phase"] = phase
    # the object's own phase counts
    await Restorer(fake, IMAGE).stop(REF, restore_spec(), {"phase": "Restoring"})
    assert fake.labelled(RESTORE_UID) == (made if phase == "Succeeded" else [])


async def test_start_runs_a_restore_once_and_never_a_finished_one() -> None:
    fake = cluster()
    restorer = Restorer(fake, IMAGE)
    for phase in ("Succeeded", "Failed"):
        restorer.start(REF, restore_spec(), {"phase": phase})
    assert restore_tasks() == []
    fake.never_ready.add(("Deployment", "postgres"))
    restorer.start(REF, restore_spec(), {})
    restorer.start(REF, restore_spec(), {"phase": "Restoring"})
    assert len(restore_tasks()) == 1
    await fake.until(lambda: ("Deployment", TARGET, "postgres") in fake.waiting)
    assert fake.calls.count(("get", "SnapshotGroup", SOURCE, GROUP)) == 1  # one run planned
    await restorer.close()
    assert restore_tasks() == []


async def test_an_optional_reference_the_target_could_answer_is_refused_before_anything_is_created() -> None:
    objects = bleater(PG_ANNOTATIONS)
    minio = objects[("Deployment", SOURCE, "minio")]["spec"]["template"]["spec"]["containers"][0]
    minio["env"].append({"name": "KMS_KEY", "valueFrom": {"secretKeyRef": {
        "name": "kms-key", "key": "key", "optional": True}}})
    fake = cluster(objects)
    # The source has no kms-key; the target does: a clone would hand it to the copied workload.
    put(fake.objects, secret("kms-key", {"key": "the target's own"}), TARGET)
    before = others(fake)
    status = await run(fake)
    assert status["phase"] == "Failed"
    planned = condition(status, "Planned")
    assert (planned["status"], planned["reason"]) == ("False", "TargetObjectExists")
    assert "Secret kms-key exists in bleater-clone but not in bleater" in status["message"]
    assert fake.labelled(RESTORE_UID) == [] and fake.created == []
    assert others(fake) == before
