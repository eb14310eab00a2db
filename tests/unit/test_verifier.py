"""Verifying a SnapshotGroup by restoring it, over the in-memory cluster: scratch claims and pods,
each service read at its scratch pod's address, the verdict, and nothing left behind."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from snapgroup.api.labels import VERIFICATION_LABEL, VERIFY_REQUESTED
from snapgroup.api.snapshotgroup import SnapshotGroupStatus
from snapgroup.orchestration.verification import verify
from snapgroup.orchestration.verifier import MAX_VERIFICATIONS, SPEC_REQUEST, GroupKey, Verifier, requested
from snapgroup.ports import NewestObject, StepError
from unit.fake_objects import FakeObjects
from unit.restore_world import CLAIMS, GROUP, GROUP_UID, IMAGE, IPS, PG_ANNOTATIONS, PORTS, SOURCE, bleater
from unit.test_service_hooks import FakeClock

JSON = dict[str, Any]
KEY = GroupKey(SOURCE, GROUP, GROUP_UID)
GROUP_KEY = ("SnapshotGroup", SOURCE, GROUP)
OWNER = {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroup", "name": GROUP, "uid": GROUP_UID}
RECORDED = datetime(2026, 11, 27, 12, 0, 0, 250000, tzinfo=UTC)
"""What the group read from each live service while frozen (before the cut at 12:00:01)."""
LAST_RECORDS = {"postgres": {"table": "events", "column": "created_at"},
                "mongodb": {"database": "bleater", "collection": "events", "field": "created_at"},
                "minio": {"bucket": "bleater", "prefix": "events/"}}


class Servers:
    """Database servers by address: the live ones (at the Services' IPs) and whatever started in
    a scratch pod (at the pod's IP). Reading a server not (yet) up fails like a refused connection."""

    def __init__(self, fake: FakeObjects) -> None:
        self.fake = fake
        self.newest: dict[str, datetime | None] = {s: RECORDED for s in CLAIMS}
        """What each service's restored data holds as its newest record."""
        self.answers_after: dict[str, int] = {}
        """Refused reads before a service's scratch server answers (it is still recovering)."""
        self.reads: list[tuple[str, str]] = []
        """(service, host:port) of every read."""

    def at(self, service: str, secret: Mapping[str, str]) -> Session:
        address = secret.get("endpoint") or secret.get("uri") or f"{secret['host']}:{secret['port']}"
        address = address.rpartition("@")[2].split("/")[0]
        self.reads.append((service, address))
        host, _, port = address.partition(":")
        pods = [o for (kind, _, _), o in self.fake.objects.items()
                if kind == "Pod" and (o.get("status") or {}).get("podIP") == host]
        if host in IPS.values():
            raise AssertionError(f"a verification read the live {service} at {address}")
        if not pods or int(port) != PORTS[service]:
            raise StepError("Unreachable", f"connection to {address} refused")
        if self.answers_after.get(service, 0) > 0:
            self.answers_after[service] -= 1
            raise StepError("Unreachable", f"{address}: the server is starting up")
        return Session(self.newest[service])


class Session(FakeClock):
    def __init__(self, newest: datetime | None) -> None:
        self.newest = newest

    async def server_version(self) -> int:
        return 150004

    async def ping(self) -> None:
        pass

    async def is_locked(self) -> bool:
        return False

    async def lock_in_flight(self, app_name: str) -> bool:
        return False

    async def check_bucket(self, bucket: str) -> bool:
        return True

    async def newest_record(self, *args: Any) -> datetime | None:
        return self.newest

    async def newest_object_time(self, *args: Any) -> NewestObject:
        return NewestObject(self.newest, 1, complete=True)

    async def close(self) -> None:
        pass


class Connectors:
    def __init__(self, servers: Servers) -> None:
        self.servers = servers

    async def postgres(self, secret: Mapping[str, str], timeout: float, name: str = "") -> Session:
        return self.servers.at("postgres", secret)

    async def mongo(self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup") -> Session:
        return self.servers.at("mongodb", secret)

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> Session:
        return self.servers.at("minio", secret)


class Secrets:
    """The Cluster port's Secret reads over the fake's objects (all a service hook reads)."""

    def __init__(self, fake: FakeObjects) -> None:
        self.fake = fake

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.fake.objects.get(("Secret", namespace, name))
        if found is None:
            return None
        return {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}


def world(verify_timeout: str = "1m") -> tuple[FakeObjects, Servers, Verifier]:
    objects = bleater(PG_ANNOTATIONS)
    group = objects[GROUP_KEY]
    group["spec"]["verify"] = "Restore"
    group["spec"]["verifyTimeout"] = verify_timeout
    for service in group["spec"]["services"]:
        service["lastRecord"] = LAST_RECORDS[service["name"]]
    for service in group["status"]["services"]:
        service["lastRecordTime"] = RECORDED.isoformat().replace("+00:00", "Z")
    fake = FakeObjects(objects)
    servers = Servers(fake)
    return fake, servers, Verifier(Secrets(fake), fake, Connectors(servers), IMAGE)  # type: ignore[arg-type]


def status(fake: FakeObjects) -> SnapshotGroupStatus:
    return SnapshotGroupStatus.model_validate(fake.objects[GROUP_KEY]["status"])


def verified(fake: FakeObjects) -> tuple[str, str, str]:
    found = next(c for c in status(fake).conditions if c.type == "Verified")
    return found.status, found.reason or "", found.message or ""


def made(fake: FakeObjects) -> list[tuple[str, str, str]]:
    return sorted(k for k, o in fake.objects.items()
                  if (o["metadata"].get("labels") or {}).get(VERIFICATION_LABEL) == GROUP_UID)


def created(fake: FakeObjects, kind: str) -> list[JSON]:
    return [fake.sent[k] for k in fake.created if k[0] == kind]


async def test_a_good_backup_is_restored_started_read_at_its_scratch_pods_and_removed() -> None:
    fake, servers, verifier = world()
    servers.answers_after["postgres"] = 2  # recovery still runs for a moment after Ready
    await verifier.verify(KEY, SPEC_REQUEST)
    assert verified(fake)[:2] == ("True", "Restored"), verified(fake)
    current = status(fake)
    assert current.verified is True
    assert current.verification is not None and current.verification.request == SPEC_REQUEST
    assert current.verification.completion_time is not None
    for evidence in current.verification.services:
        assert evidence.matches is True, evidence
        assert evidence.restored_newest_record == evidence.recorded_newest_record == RECORDED
        assert len(evidence.pods) == 1 and evidence.seconds is not None
    # Every read went to a scratch pod, at the port the Service's named targetPort gives.
    # (Servers refuses the live addresses and any port but the container's.)
    assert len(created(fake, "Pod")) == 3
    assert {s for s, _ in servers.reads} == set(CLAIMS)
    assert all(address.startswith("10.244.0.") for _, address in servers.reads), servers.reads
    # Scratch claims come from the group's snapshots; pods carry none of the template's labels.
    claims = created(fake, "PersistentVolumeClaim")
    assert sorted(c["spec"]["dataSource"]["name"] for c in claims) == sorted(
        f"{GROUP}-{s}-{CLAIMS[s]}" for s in CLAIMS)
    for pod in created(fake, "Pod"):
        assert "app" not in pod["metadata"]["labels"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == GROUP_UID
        claims_used = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]
                       if v.get("persistentVolumeClaim")}
        assert claims_used <= {c["metadata"]["name"] for c in claims}, claims_used
    pg_pod = next(p for p in created(fake, "Pod") if p["metadata"]["name"].startswith("postgres-"))
    step = pg_pod["spec"]["initContainers"][0]
    assert step["image"] == IMAGE and "--keep-archiving" not in step["args"]  # never the live archive
    assert made(fake) == []
    # The live workloads were never touched.
    assert not [c for c in fake.calls if c[0] in ("patch", "delete")
                and c[1] in ("Deployment", "PersistentVolumeClaim") and not c[3].endswith(GROUP_UID[:8])]
    assert fake.events[-1][:2] == ("Normal", "Verified")
    assert all(check.passed for check in verify(current)), [c for c in verify(current) if not c.passed]


async def test_a_snapshot_that_does_not_hold_what_the_group_recorded_fails_verification() -> None:
    fake, servers, verifier = world()
    servers.newest["minio"] = RECORDED - timedelta(seconds=3)  # its newest object is missing
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "RecordMismatch"), message
    assert message.startswith("minio: restored newest record 2026-11-27T11:59:57.250000Z is not the "
                              "recorded 2026-11-27T12:00:00.250000Z"), message
    by_name = {s.name: s for s in status(fake).verification.services}  # type: ignore[union-attr]
    assert by_name["minio"].matches is False
    assert by_name["postgres"].matches is True and by_name["mongodb"].matches is True
    assert status(fake).verified is False
    assert made(fake) == []
    assert fake.events[-1][:2] == ("Warning", "RecordMismatch")
    failed = [c for c in verify(status(fake)) if not c.passed]
    assert [c.subject for c in failed] == ["minio", "group"], failed


async def test_a_restored_record_newer_than_the_cut_fails_even_when_it_was_recorded() -> None:
    fake, servers, verifier = world()
    late = datetime(2026, 11, 27, 12, 0, 2, tzinfo=UTC)  # after the earliest cut (12:00:01)
    servers.newest = {s: late for s in CLAIMS}
    for service in fake.objects[GROUP_KEY]["status"]["services"]:
        service["lastRecordTime"] = "2026-11-27T12:00:02Z"
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "RecordMismatch")
    assert "is newer than the earliest cut 2026-11-27T12:00:01.000000Z" in message


async def test_a_service_that_never_starts_is_named_with_its_pod_and_everything_is_removed() -> None:
    fake, _, verifier = world(verify_timeout="2s")
    del fake.objects[("Secret", SOURCE, "minio-tls")]  # the minio pod cannot start without it
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "ServiceNotRead"), message
    assert message.startswith("minio: pod minio-verify-"), message
    assert "did not become ready" in message
    answered = status(fake).verification
    assert answered is not None
    assert {s.name for s in answered.services if s.matches} == {"postgres", "mongodb"}
    assert made(fake) == []


async def test_what_an_interrupted_verification_left_is_removed_before_it_runs_again() -> None:
    fake, _, verifier = world()
    leftover = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"postgres-data-verify-{GROUP_UID[:8]}", "namespace": SOURCE,
                             "uid": "uid-leftover", "labels": {VERIFICATION_LABEL: GROUP_UID},
                             "ownerReferences": [OWNER]},
                "spec": {"resources": {"requests": {"storage": "1Gi"}},
                         "dataSource": {"kind": "VolumeSnapshot", "name": f"{GROUP}-postgres-postgres-data"}},
                "status": {"phase": "Bound"}}
    fake.objects[("PersistentVolumeClaim", SOURCE, leftover["metadata"]["name"])] = leftover
    fake.objects[GROUP_KEY]["status"]["verification"] = {"request": SPEC_REQUEST,
                                                         "startTime": "2026-11-27T12:01:00Z"}
    assert requested(fake.objects[GROUP_KEY]) == SPEC_REQUEST  # started, never answered: again
    await verifier.verify(KEY, SPEC_REQUEST)
    assert verified(fake)[0] == "True", verified(fake)
    assert ("PersistentVolumeClaim", SOURCE, leftover["metadata"]["name"]) in fake.deleted
    assert made(fake) == []
    assert requested(fake.objects[GROUP_KEY]) is None


async def test_an_object_of_the_same_name_that_is_not_the_verifications_is_left_alone() -> None:
    fake, _, verifier = world()
    name = f"mongodb-data-verify-{GROUP_UID[:8]}"
    theirs = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
              "metadata": {"name": name, "namespace": SOURCE, "uid": "uid-theirs", "labels": {"app": "x"}},
              "spec": {"resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Bound"}}
    fake.objects[("PersistentVolumeClaim", SOURCE, name)] = theirs
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "ObjectExists"), message
    assert fake.objects[("PersistentVolumeClaim", SOURCE, name)]["metadata"]["uid"] == "uid-theirs"
    assert made(fake) == []


async def test_a_verification_cancelled_midway_still_removes_what_it_made() -> None:
    fake, servers, verifier = world()
    servers.answers_after = {s: 10**6 for s in CLAIMS}  # nobody answers: it waits for reads
    task = asyncio.create_task(verifier.verify(KEY, SPEC_REQUEST))
    await fake.until(lambda: len([k for k in fake.created if k[0] == "Pod"]) == 3)
    await fake.until(lambda: len(servers.reads) >= 3)  # reading, so everything was made
    assert len(made(fake)) >= 6
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert made(fake) == []
    current = status(fake)
    assert current.verification is not None and current.verification.completion_time is None
    assert requested(fake.objects[GROUP_KEY]) == SPEC_REQUEST  # the next start runs it again


async def test_a_group_that_is_not_consistent_is_not_verified_and_nothing_is_made() -> None:
    fake, _, verifier = world()
    fake.objects[GROUP_KEY]["status"]["consistent"] = False
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, _ = verified(fake)
    assert (state, reason) == ("False", "GroupNotConsistent")
    assert not [k for k in fake.created]


async def test_without_the_namespaces_grant_the_status_says_which_rolebinding_is_missing() -> None:
    fake, _, verifier = world()
    for claim in CLAIMS.values():
        fake.fail_create[("PersistentVolumeClaim", f"{claim}-verify-{GROUP_UID[:8]}")] = StepError(
            "KubernetesApiError", "create failed: HTTP 403: forbidden (the operator's RBAC role lacks this "
            "permission)")
    await verifier.verify(KEY, SPEC_REQUEST)
    state, _, message = verified(fake)
    assert state == "False" and "RoleBinding of snapgroup-restore-target" in message, message


def test_what_asks_for_a_verification_and_what_answers_it() -> None:
    group = bleater()[GROUP_KEY]
    assert requested(group) is None  # no spec.verify, no annotation
    group["spec"]["verify"] = "Restore"
    assert requested(group) == SPEC_REQUEST
    group["status"]["verification"] = {"request": SPEC_REQUEST, "completionTime": "2026-11-27T12:02:00Z"}
    assert requested(group) is None
    group["metadata"].setdefault("annotations", {})[VERIFY_REQUESTED] = "20261203T100000.000000Z"
    assert requested(group) == "20261203T100000.000000Z"  # a new request, answered by a new run
    group["status"]["phase"] = "Failed"
    assert requested(group) is None  # only a Succeeded group
    group["status"]["phase"] = "Succeeded"
    group["metadata"]["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    assert requested(group) is None


async def test_seen_runs_one_verification_per_group_and_stops_it_when_the_group_goes() -> None:
    fake, servers, verifier = world()
    servers.answers_after = {s: 10**6 for s in CLAIMS}
    body = fake.objects[GROUP_KEY]
    verifier.seen(body)
    verifier.seen(body)
    assert len(verifier.tasks) == 1
    task = verifier.tasks[GROUP_UID]
    await fake.until(lambda: len(servers.reads) >= 3)
    verifier.seen({**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-12-03T10:00:00Z"}})
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled() and GROUP_UID not in verifier.tasks
    assert made(fake) == []



async def test_a_verification_waits_while_as_many_as_allowed_run_and_says_so() -> None:
    fake, _, verifier = world()
    for _ in range(MAX_VERIFICATIONS):
        await verifier.slots.acquire()  # others are running
    task = asyncio.create_task(verifier.verify(KEY, SPEC_REQUEST))
    await fake.until(lambda: any(c.type == "Verified" for c in status(fake).conditions))
    assert verified(fake)[:2] == ("Unknown", "Waiting")
    assert not fake.created  # nothing made while it waits
    verifier.slots.release()
    await task
    assert verified(fake)[:2] == ("True", "Restored")


async def test_a_new_request_clears_what_the_previous_verification_answered() -> None:
    fake, servers, verifier = world()
    await verifier.verify(KEY, SPEC_REQUEST)
    assert status(fake).verification.completion_time is not None  # type: ignore[union-attr]
    servers.answers_after = {s: 10**6 for s in CLAIMS}  # the next one is still reading
    fake.objects[GROUP_KEY]["metadata"]["annotations"] = {VERIFY_REQUESTED: "second"}
    task = asyncio.create_task(verifier.verify(KEY, "second"))
    reads = len(servers.reads)
    await fake.until(lambda: len(servers.reads) >= reads + 3)
    current = status(fake)
    assert current.verification is not None and current.verification.request == "second"
    assert current.verification.completion_time is None and current.verification.seconds is None
    assert current.verification.services == [] and current.verified is None
    assert requested(fake.objects[GROUP_KEY]) == "second"  # unanswered: a restart runs it again
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_live_object_labelled_by_someone_else_is_never_deleted() -> None:
    fake, _, verifier = world()
    live = fake.objects[("PersistentVolumeClaim", SOURCE, "mongodb-data")]
    live["metadata"]["labels"][VERIFICATION_LABEL] = GROUP_UID  # a patch right, not a delete right
    live["metadata"]["ownerReferences"] = [OWNER]
    pod = {"kind": "Pod", "metadata": {"name": "minio-pod-0", "namespace": SOURCE, "uid": "uid-p",
                                       "labels": {VERIFICATION_LABEL: GROUP_UID}}, "spec": {}}
    fake.objects[("Pod", SOURCE, "minio-pod-0")] = pod  # labelled, no owner reference to the group
    await verifier.verify(KEY, SPEC_REQUEST)
    assert verified(fake)[0] == "True", verified(fake)
    assert ("PersistentVolumeClaim", SOURCE, "mongodb-data") in fake.objects
    assert ("Pod", SOURCE, "minio-pod-0") in fake.objects
    assert not [k for k in fake.deleted if k[2] in ("mongodb-data", "minio-pod-0")]


async def test_a_failure_nobody_planned_for_is_still_an_answer_and_runs_once() -> None:
    fake, _, verifier = world()
    pod = f"minio-verify-{GROUP_UID[:8]}"
    fake.fail_create[("Pod", pod)] = StepError("KubernetesApiError",
                                               "create failed: HTTP 422: forbidden by PodSecurity")
    fake.objects[("StatefulSet", SOURCE, "odd")] = {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "odd", "namespace": SOURCE, "uid": "uid-odd",
                     "annotations": {"snapgroup.dev/original-replicas": "many"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": []}}}}
    body = fake.objects[GROUP_KEY]
    verifier.seen(body)
    task = verifier.tasks[GROUP_UID]
    verifier.seen(body)  # an event from before the answer, once more
    await task
    state, reason, message = verified(fake)
    assert state == "False" and reason in ("KubernetesApiError", "InternalError"), (reason, message)
    assert status(fake).verification.completion_time is not None  # type: ignore[union-attr]
    verifier.seen(body)  # the stale body again: this process answered that request already
    assert not verifier.tasks
    assert made(fake) == []


async def test_a_request_made_while_one_runs_is_taken_when_it_ends() -> None:
    fake, _, verifier = world()
    verifier.seen(fake.objects[GROUP_KEY])
    task = verifier.tasks[GROUP_UID]
    fake.objects[GROUP_KEY]["metadata"]["annotations"] = {VERIFY_REQUESTED: "while-running"}
    verifier.seen(fake.objects[GROUP_KEY])  # while the first runs
    await task
    await fake.until(lambda: GROUP_UID not in verifier.tasks
                     or verifier.tasks[GROUP_UID] is not task)
    second = verifier.tasks.get(GROUP_UID)
    assert second is not None and second is not task
    await second
    assert status(fake).verification.request == "while-running"  # type: ignore[union-attr]
    assert verified(fake)[0] == "True"


async def test_removal_that_fails_is_recorded_and_finished_later_without_holding_a_slot() -> None:
    fake, _, verifier = world()
    fake.fail_list["Secret"] = StepError("KubernetesApiError", "list failed: HTTP 503: unavailable")
    verifier.seen(fake.objects[GROUP_KEY])
    task = verifier.tasks[GROUP_UID]
    await fake.until(lambda: status(fake).verification is not None
                     and status(fake).verification.completion_time is not None)  # type: ignore[union-attr]
    current = status(fake).verification
    assert current is not None and current.removed is False
    assert "not all removed yet" in verified(fake)[2]
    assert not verifier.slots.locked() and verifier.slots._value == MAX_VERIFICATIONS
    del fake.fail_list["Secret"]
    await task
    assert status(fake).verification.removed is True  # type: ignore[union-attr]
    assert made(fake) == []


async def test_a_service_with_shared_storage_is_refused_before_anything_is_made() -> None:
    fake, _, verifier = world()
    minio = fake.objects[("Deployment", SOURCE, "minio")]["spec"]["template"]["spec"]
    minio["volumes"].append({"name": "archive", "hostPath": {"path": "/srv/archive"}})
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "VolumeNotRestorable"), message
    assert "spec.verify: Deployment/minio mounts volume archive (hostPath)" in message
    assert not fake.created


async def test_a_scratch_object_planted_under_its_name_is_not_adopted() -> None:
    fake, _, verifier = world()
    name = f"minio-verify-{GROUP_UID[:8]}"
    planted = {"kind": "Pod", "metadata": {"name": name, "namespace": SOURCE, "uid": "uid-planted",
                                           "labels": {VERIFICATION_LABEL: GROUP_UID}},
               "spec": {}, "status": {"phase": "Running", "podIP": "10.1.2.3",
                                      "conditions": [{"type": "Ready", "status": "True"}]}}
    fake.appear[("Pod", name)] = planted  # created between the sweep and the verification's create
    await verifier.verify(KEY, SPEC_REQUEST)
    state, reason, message = verified(fake)
    assert (state, reason) == ("False", "ObjectExists"), message
    assert fake.objects[("Pod", SOURCE, name)]["metadata"]["uid"] == "uid-planted"


async def test_a_removal_that_raises_anything_is_an_answer_and_is_finished_later() -> None:
    fake, _, verifier = world()
    calls = {"n": 0}
    listing = fake.list

    async def flaky(kind: str, namespace: str, selector: str = "") -> list[JSON]:
        if kind == "Secret" and VERIFICATION_LABEL in selector:
            calls["n"] += 1
            if calls["n"] in (2, 3):  # the removal at the end, and its first retry
                raise RuntimeError("connection pool exploded")
        return await listing(kind, namespace, selector)

    fake.list = flaky  # type: ignore[method-assign]
    await verifier.verify(KEY, SPEC_REQUEST)
    current = status(fake).verification
    assert current is not None and current.completion_time is not None and current.removed is True
    assert verified(fake)[0] == "True"
    assert "not all removed yet" not in verified(fake)[2]  # said while it was true, not after
    assert made(fake) == []


async def test_a_new_request_interrupts_a_removal_that_keeps_failing() -> None:
    fake, _, verifier = world()
    fake.fail_list["Secret"] = StepError("KubernetesApiError", "list failed: HTTP 503: unavailable")
    verifier.seen(fake.objects[GROUP_KEY])
    await fake.until(lambda: status(fake).verification is not None
                     and status(fake).verification.removed is False)  # type: ignore[union-attr]
    first = verifier.tasks[GROUP_UID]
    fake.objects[GROUP_KEY]["metadata"]["annotations"] = {VERIFY_REQUESTED: "again"}
    verifier.seen(fake.objects[GROUP_KEY])
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    second = verifier.tasks[GROUP_UID]
    del fake.fail_list["Secret"]
    await second
    current = status(fake).verification
    assert current is not None and current.request == "again" and current.removed is True
