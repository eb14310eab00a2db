"""In-place SnapshotGroupRestore over the in-memory cluster: proof, swap, rollback."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from snapgroup import failpoints
from snapgroup.api.restore import RESTORE_TARGET_LABEL, RESTORE_UID_LABEL, STOPPED_BY
from snapgroup.orchestration import in_place
from snapgroup.orchestration.restores import Restorer
from snapgroup.ports import StepError
from unit.fake_objects import FakeObjects
from unit.restore_world import (
    CLAIMS,
    GROUP,
    IMAGE,
    PG_ANNOTATIONS,
    REF,
    RESTORE,
    RESTORE_UID,
    SOURCE,
    bleater,
    put,
)

JSON = dict[str, Any]
RESTORE_KEY = ("SnapshotGroupRestore", SOURCE, RESTORE)
SPEC = {"groupName": GROUP, "inPlace": True, "timeout": "1m"}


def world() -> FakeObjects:
    objects = bleater(PG_ANNOTATIONS)
    objects[("Namespace", "", SOURCE)]["metadata"]["labels"] = {RESTORE_TARGET_LABEL: SOURCE}
    for claim in CLAIMS.values():
        put(objects, {"apiVersion": "v1", "kind": "PersistentVolume",
                      "metadata": {"name": f"pvc-{claim}", "uid": f"uid-pv-{claim}"},
                      "spec": {"persistentVolumeReclaimPolicy": "Delete",
                               "claimRef": {"namespace": SOURCE, "name": claim, "uid": f"uid-{claim}"}},
                      "status": {"phase": "Bound"}})
    put(objects, {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
                  "metadata": {"name": RESTORE, "namespace": SOURCE, "uid": RESTORE_UID, "generation": 1},
                  "spec": dict(SPEC)})
    return FakeObjects(objects)


async def run(fake: FakeObjects) -> JSON:
    await Restorer(fake, IMAGE).run(REF, dict(SPEC))
    return dict(fake.objects[RESTORE_KEY].get("status") or {})


def conditions(status: JSON) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def volume_of(fake: FakeObjects, claim: str) -> str:
    return str(fake.objects[("PersistentVolumeClaim", SOURCE, claim)]["spec"]["volumeName"])


def replicas(fake: FakeObjects, kind: str, name: str) -> int:
    return int(fake.objects[(kind, SOURCE, name)]["spec"]["replicas"])


async def test_in_place_swaps_every_claim_onto_its_restored_volume_and_starts_everything_again() -> None:
    fake = world()
    status = await run(fake)
    assert status["phase"] == "Succeeded", status.get("message")
    for claim in CLAIMS.values():
        assert volume_of(fake, claim) != f"pvc-{claim}"
        previous = fake.objects[("PersistentVolume", "", f"pvc-{claim}")]
        assert previous["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        assert previous["status"]["phase"] == "Released"
    assert replicas(fake, "Deployment", "data-writer") == 1
    for name in CLAIMS:
        workload = fake.objects[("Deployment", SOURCE, name)]
        assert workload["spec"]["replicas"] == 1
        assert STOPPED_BY not in (workload["metadata"].get("annotations") or {})
    assert fake.labelled(RESTORE_UID) == []
    assert fake.leases == {}
    assert conditions(status) == {"Planned": ("True", "Planned"), "Proven": ("True", "ServicesStarted"),
                                  "Restored": ("True", "Swapped")}


@pytest.mark.parametrize("step", ["scratch-claims", "proven", "writers-stopped", "services-stopped",
                                  "claims-released", "claims-swapped", "services-started"])
async def test_a_failure_at_any_step_before_the_swap_is_done_puts_everything_back(
    step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(failpoints._POINTS, f"restore:{RESTORE}:{step}", "fail")
    fake = world()
    status = await run(fake)
    assert status["phase"] == "Failed"
    assert "rolled back" in status["message"], status["message"]
    proven = step not in ("scratch-claims", "proven")
    assert conditions(status) == {"Planned": ("True", "Planned"), "Restored": ("False", "FailpointInjected"),
                                  **({"Proven": ("True", "ServicesStarted")} if proven else {})}
    for claim in CLAIMS.values():
        assert volume_of(fake, claim) == f"pvc-{claim}"
        previous = fake.objects[("PersistentVolume", "", f"pvc-{claim}")]
        assert previous["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert replicas(fake, "Deployment", "data-writer") == 1
    for name in CLAIMS:
        assert replicas(fake, "Deployment", name) == 1
    assert fake.labelled(RESTORE_UID) == []


async def test_the_leases_are_given_back_before_the_status_says_it_is_over() -> None:
    fake = world()
    held_when_over: list[dict[Any, str]] = []
    write = fake.patch_status

    async def patch_status(kind: str, namespace: str, name: str, status: JSON) -> None:
        if status.get("phase") in ("Succeeded", "Failed"):
            held_when_over.append(dict(fake.leases))
        await write(kind, namespace, name, status)

    fake.patch_status = patch_status  # type: ignore[method-assign]
    status = await run(fake)
    assert status["phase"] == "Succeeded", status.get("message")
    assert held_when_over == [{}]


async def test_a_deletion_as_the_restore_gives_its_leases_back_does_not_keep_them() -> None:
    fake = world()
    restorer = Restorer(fake, IMAGE)
    give_back = fake.release_lease
    deletions: list[asyncio.Task[None]] = []
    deleted = asyncio.Event()

    async def release_lease(namespace: str, name: str, holder: str) -> None:
        if not deletions:  # the user deletes the restore the moment it ends: its run is cancelled
            deletions.append(asyncio.create_task(restorer.stop(REF, SPEC, {"phase": "Succeeded"})))
            deleted.set()
            await asyncio.sleep(0)  # the deletion's stop() cancels the run here
            await asyncio.sleep(0)
        await give_back(namespace, name, holder)

    fake.release_lease = release_lease  # type: ignore[method-assign]
    restorer.start(REF, SPEC, {})
    await asyncio.wait_for(deleted.wait(), 5)
    await asyncio.wait_for(deletions[0], 5)
    await asyncio.wait_for(fake.until(lambda: fake.leases == {}), 5)
    assert fake.labelled(RESTORE_UID) == []


def message(fake: FakeObjects) -> str:
    return str((fake.objects[RESTORE_KEY].get("status") or {}).get("message") or "")


async def test_a_claim_a_pod_nobody_stops_holds_keeps_its_previous_volume_until_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(in_place, "ATTEMPT_TIMEOUT", 0.5)
    monkeypatch.setattr(in_place, "RETRY_PAUSES", (0.05,))
    fake = world()
    claim = CLAIMS["postgres"]
    fake.in_use(claim, SOURCE)  # a bare pod mounts it: deleting it only marks it
    task = asyncio.create_task(Restorer(fake, IMAGE).run(REF, {**SPEC, "timeout": "2s"}))
    await asyncio.wait_for(fake.until(lambda: "rolling back: attempt" in message(fake)), 10)
    # The rollback cannot put the claim back while it is on its way out: the volume with the
    # data stays kept and marked (never given back to its Delete policy).
    previous = fake.objects[("PersistentVolume", "", f"pvc-{claim}")]
    assert previous["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert previous["metadata"]["labels"][RESTORE_UID_LABEL] == RESTORE_UID
    assert fake.objects[("PersistentVolumeClaim", SOURCE, claim)]["metadata"]["deletionTimestamp"]
    fake.unused(claim, SOURCE)  # the pod ended
    await asyncio.wait_for(task, 10)
    status = dict(fake.objects[RESTORE_KEY]["status"])
    assert status["phase"] == "Failed"
    for name in CLAIMS.values():
        assert volume_of(fake, name) == f"pvc-{name}"
        assert fake.objects[("PersistentVolume", "", f"pvc-{name}")]["spec"][
            "persistentVolumeReclaimPolicy"] == "Delete"
    back = status["message"].split("rolled back: claims ", 1)[1].split(" back on")[0]
    assert sorted(back.split(", ")) == sorted(CLAIMS.values()), status["message"]
    assert fake.labelled(RESTORE_UID) == []


async def test_a_rollback_goes_on_when_its_status_cannot_be_written() -> None:
    fake = world()
    failpoints._POINTS[f"restore:{RESTORE}:services-stopped"] = "fail"
    write = fake.patch_status
    refused: list[str] = []

    async def patch_status(kind: str, namespace: str, name: str, status: JSON) -> None:
        if "rolling back" in str(status.get("message")) and len(refused) < 3:
            refused.append(str(status["message"]))
            raise StepError("KubernetesApiError", "HTTP 503: the API server is away")
        await write(kind, namespace, name, status)

    fake.patch_status = patch_status  # type: ignore[method-assign]
    try:
        status = await run(fake)
    finally:
        del failpoints._POINTS[f"restore:{RESTORE}:services-stopped"]
    assert refused, "the fault never happened"
    assert status["phase"] == "Failed", status
    for name in CLAIMS.values():
        assert volume_of(fake, name) == f"pvc-{name}"
    assert replicas(fake, "Deployment", "data-writer") == 1
    assert fake.labelled(RESTORE_UID) == []


async def test_a_lease_taken_by_another_stops_the_restore_before_it_swaps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(in_place, "RENEW_EVERY", 0.01)
    monkeypatch.setitem(failpoints._POINTS, f"restore:{RESTORE}:proven", "pause:0.2")  # renewals meanwhile
    fake = world()
    taken: list[Any] = []
    renew = fake.acquire_lease

    async def acquire_lease(namespace: str, name: str, holder: str, seconds: int,
                            labels: dict[str, str] | None = None) -> str | None:
        if labels is None and not taken:  # a renewal: the Lease expired in an outage, a group took it
            taken.append(name)
            fake.leases[namespace, name] = "nightly/uid-9@snapgroup-other"
        return await renew(namespace, name, holder, seconds, labels)

    fake.acquire_lease = acquire_lease  # type: ignore[method-assign]
    status = await run(fake)
    assert taken, "the fault never happened"
    assert status["phase"] == "Failed", status
    assert "LeaseLost" in {c["reason"] for c in status["conditions"]}, status["conditions"]
    for name in CLAIMS.values():
        assert volume_of(fake, name) == f"pvc-{name}"


async def test_a_workload_is_marked_stopped_until_it_is_ready_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(failpoints._POINTS, f"restore:{RESTORE}:writers-resumed", "fail")
    fake = world()
    seen: list[JSON] = []
    wait = fake.wait

    async def watch(kind: str, namespace: str, name: str, done: Any, timeout: float) -> JSON:
        if kind == "Deployment" and name == "data-writer":
            annotations = fake.objects[(kind, namespace, name)]["metadata"].get("annotations") or {}
            seen.append(copy.deepcopy(annotations))
        return await wait(kind, namespace, name, done, timeout)

    fake.wait = watch  # type: ignore[method-assign]
    monkeypatch.setattr(in_place, "RETRY_PAUSES", (0.01,))
    task = asyncio.create_task(run(fake))
    await asyncio.wait_for(fake.until(lambda: "finishing: attempt 1 failed" in message(fake)), 10)
    failpoints._POINTS.pop(f"restore:{RESTORE}:writers-resumed")
    status = await asyncio.wait_for(task, 10)
    assert status["phase"] == "Succeeded", status
    # While the writer was waited on to be ready, it still said who stopped it.
    assert seen and all(a.get(STOPPED_BY) == RESTORE_UID for a in seen), seen
    writer = fake.objects[("Deployment", SOURCE, "data-writer")]
    assert STOPPED_BY not in (writer["metadata"].get("annotations") or {})


async def test_a_restarted_operator_rolls_back_holding_the_leases_of_what_the_restore_touched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(failpoints._POINTS, f"restore:{RESTORE}:claims-released", "pause:30")
    fake = world()
    first = asyncio.create_task(Restorer(fake, IMAGE).run(REF, dict(SPEC)))
    await asyncio.wait_for(fake.until(lambda: all(
        ("PersistentVolumeClaim", SOURCE, c) not in fake.objects for c in CLAIMS.values())), 10)
    first.cancel()  # the operator stops with the claims released
    await asyncio.gather(first, return_exceptions=True)
    # The stopped run leaves its Leases (unrenewed, they expire) to whoever goes on: no group
    # slips in between.
    assert len(fake.leases) == len(CLAIMS) + 4 and all(
        holder.startswith(f"restore:{RESTORE}/{RESTORE_UID}@") for holder in fake.leases.values())
    held_while_rolling_back: list[int] = []
    patch = fake.patch

    async def patching(kind: str, namespace: str, name: str, body: JSON) -> JSON | None:
        if kind == "PersistentVolume":
            held_while_rolling_back.append(len(fake.leases))
        return await patch(kind, namespace, name, body)

    fake.patch = patching  # type: ignore[method-assign]
    monkeypatch.delitem(failpoints._POINTS, f"restore:{RESTORE}:claims-released")
    await Restorer(fake, IMAGE).run(REF, dict(SPEC), resumed=True)
    status = dict(fake.objects[RESTORE_KEY]["status"])
    assert status["phase"] == "Failed" and "OperatorRestarted" in {c["reason"] for c in status["conditions"]}
    # Every claim and every stopped workload (3 services, the writer) was held throughout.
    assert held_while_rolling_back, "the rollback patched no volume"
    assert min(held_while_rolling_back) == len(CLAIMS) + 4, held_while_rolling_back
    assert fake.leases == {}
    for name in CLAIMS.values():
        assert volume_of(fake, name) == f"pvc-{name}"


async def test_a_claim_of_no_class_is_refused_before_anything_is_made() -> None:
    fake = world()
    fake.objects[("PersistentVolumeClaim", SOURCE, CLAIMS["mongodb"])]["spec"]["storageClassName"] = ""
    status = await run(fake)
    assert status["phase"] == "Failed"
    planned = conditions(status)["Planned"]
    assert planned == ("False", "ClaimWithoutClass"), status
    assert "spec.groupName" in status["message"] and CLAIMS["mongodb"] in status["message"]
    assert fake.created == [] and fake.labelled(RESTORE_UID) == []


async def test_a_writer_that_never_gets_ready_again_does_not_hold_the_rollback_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(failpoints._POINTS, f"restore:{RESTORE}:claims-swapped", "fail")
    monkeypatch.setattr(in_place, "READY_WAIT", 0.2)
    fake = world()
    fake.never_ready.add(("Deployment", "data-writer"))  # e.g. it cannot be scheduled any more
    status = await asyncio.wait_for(run(fake), 20)
    assert status["phase"] == "Failed", status
    assert "Deployment/data-writer given back its replicas, not ready" in status["message"], status["message"]
    assert replicas(fake, "Deployment", "data-writer") == 1
    for name in CLAIMS.values():
        assert volume_of(fake, name) == f"pvc-{name}"
    assert fake.labelled(RESTORE_UID) == [] and fake.leases == {}
