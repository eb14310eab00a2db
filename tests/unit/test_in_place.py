"""In-place SnapshotGroupRestore over the in-memory cluster: proof, swap, rollback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from snapgroup import failpoints
from snapgroup.api.restore import RESTORE_TARGET_LABEL, STOPPED_BY
from snapgroup.orchestration.restores import Restorer
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
