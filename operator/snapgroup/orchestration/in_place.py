"""Running an in-place SnapshotGroupRestore: prove, stop, swap, start, resume; or roll back.

Forward, in order: scratch claims restored from the group's snapshots, proof pods of every
service on them (Ready, then gone); the previous volumes set to Retain with the claim they were
bound to written on them; the writers stopped, then the services (pods gone); the scratch claims
and the claims deleted, each claim re-created under its name on its restored volume; the
services started and ready. That is the point of no return, recorded in the status (`swapped`):
from there on the restore only goes forward (writers resumed, volumes settled per
`previousVolumes`).

Before that point, every failure, and a restart of the operator, rolls back. The rollback reads
the world, not a memory of the run: volumes carry the restore's uid label with their role and
reclaim policy, a previous volume the JSON of its claim, stopped workloads their replicas; each
step of it is idempotent and tolerates what never happened. It runs until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from snapgroup import failpoints
from snapgroup.api.base import LabelSelector
from snapgroup.api.labels import LEASE_LABEL, lease_name
from snapgroup.api.restore import (
    REPLACED_BY,
    RESTORE_UID_LABEL,
    RESTORED_FROM,
    STOPPED_AS,
    STOPPED_BY,
    STOPPED_REPLICAS,
    VOLUME_CLAIM,
    VOLUME_RECLAIM,
    VOLUME_ROLE,
    PreviousVolumes,
)
from snapgroup.ports import ClusterObjects, StepError

from .exclusion import LEASE_SECONDS, RENEW_EVERY, holder_title, restore_holder
from .in_place_plan import InPlacePlan, Stopped
from .restore_plan import RestoreRef, claims_of
from .restore_steps import (
    RestoreFailed,
    all_at_once,
    condition,
    first_error,
    is_bound,
    is_ready,
    pod_ready,
    time_left,
)

log = logging.getLogger("snapgroup.restore")
JSON = dict[str, Any]
Report = Callable[[JSON], Awaitable[None]]
T = TypeVar("T")

READY_WAIT = 120.0
"""How long starting a workload again waits for it to be ready before it reports it not ready
(its data is back either way; readiness is then the workload's own business)."""
PODS_GONE_POLL = 0.5
"""Seconds between looks at a stopped workload's pods (they go within their grace period)."""
LEASE_RETRY = 2.0
"""Seconds between tries for Leases a group holds."""
ATTEMPT_TIMEOUT = 300.0
"""How long one attempt of a rollback or of finishing may take (stopping, swapping, ready)."""
RETRY_PAUSES = (2.0, 5.0, 10.0, 30.0)
"""Pauses between attempts that failed; the last one repeats."""
PREVIOUS, RESTORED = "previous", "restored"
WRITER, SERVICE = "writer", "service"
_WORKLOADS = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class Finished:
    """What finishing a restore in place reports."""

    claims: list[JSON]
    """Status entries of the swapped claims."""
    writers: list[JSON]
    """Status entries of the writers running again."""
    writers_back: float
    """When the writers were running again (monotonic)."""


class InPlace:
    """One in-place restore's steps over the cluster; `run` forward, `roll_back`, `finish`."""

    def __init__(self, objects: ClusterObjects, ref: RestoreRef, operator_id: str, report: Report) -> None:
        self.objects = objects
        self.ref = ref
        self.holder = restore_holder(ref.name, ref.uid, operator_id)
        self.report = report
        self._held: list[str] = []
        self._renewal: asyncio.Task[None] | None = None
        self._lost: str | None = None
        """Who took a Lease this restore held (it expired in an outage), if anyone."""
        self._put_back: set[str] = set()
        """Claims this process put back on their previous volumes, over every rollback attempt."""

    # -- exclusion ------------------------------------------------------------------------------

    async def hold(self, targets: Iterable[str], deadline: float) -> None:
        """Take the Leases groups take for these targets (waiting while a group holds one) and
        keep them renewed until `release`."""
        keys = sorted(set(targets))
        told = False
        while True:
            busy = await self._take(keys)
            if busy is None:
                break
            if not told:
                told = True
                await self.report({"message": f"waiting for {holder_title(busy)}, which holds a claim "
                                              "or workload of this restore"})
            if time.monotonic() + LEASE_RETRY > deadline:
                raise RestoreFailed("TargetsBusy", f"{holder_title(busy)} still holds a claim or workload "
                                    "of this restore")
            await asyncio.sleep(LEASE_RETRY)  # the holder gives up or its Lease expires
        self._held = keys
        self._renewal = asyncio.create_task(self._renew(), name=f"leases of restore {self.ref.name}")

    async def hold_touched(self) -> None:
        """Before a rollback or finish this process did not start (after a restart, or for a
        deletion): the Leases of what the restore touched, as the world shows it (the claims of
        its marked volumes, the workloads it stopped). It waits a while for a group holding one;
        past that it goes on without, since the world must be put right either way."""
        try:
            await self.hold(await self._touched(), time.monotonic() + ATTEMPT_TIMEOUT)
        except (StepError, RestoreFailed) as exc:
            log.warning("restore %s: going on without its Leases (%s)", self.ref.name, exc)

    async def _touched(self) -> list[str]:
        targets = []
        for volume in await self.objects.list("PersistentVolume", "", self._selector):
            claim = (json.loads(_annotation(volume, VOLUME_CLAIM) or "{}").get("metadata") or {}).get("name")
            if claim:
                targets.append(f"pvc:{claim}")
        for kind in _WORKLOADS:
            for workload in await self.objects.list(kind, self.ref.namespace):
                if _annotation(workload, STOPPED_BY) == self.ref.uid:
                    targets.append(f"workload:{kind}/{workload['metadata']['name']}")
        return targets

    async def _take(self, keys: list[str]) -> str | None:
        taken: list[str] = []
        for key in keys:
            other = await self.objects.acquire_lease(
                self.ref.namespace, lease_name(key), self.holder, LEASE_SECONDS,
                labels={LEASE_LABEL: key.split(":", 1)[0]})
            if other is not None:
                await self._give_back(taken)
                return other
            taken.append(key)
        return None

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            for key in self._held:
                try:
                    other = await self.objects.acquire_lease(self.ref.namespace, lease_name(key),
                                                             self.holder, LEASE_SECONDS)
                    if other is not None and self._lost is None:
                        log.error("restore %s: the Lease of %s is held by %s now", self.ref.name, key, other)
                        self._lost = other
                except StepError as exc:  # an outage: next period
                    log.warning("restore %s: Lease of %s not renewed: %s", self.ref.name, key, exc.message)

    async def release(self, keep: bool = False) -> None:
        """Stop renewing and give every Lease back (one not given back expires). Idempotent; a
        cancellation (the restore deleted as it ends) does not stop the giving back. With keep
        (the run was cancelled: a deletion's stop or the next operator goes on with the same
        Leases), only the renewing stops, so no group slips in between."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
            self._renewal = None
        held, self._held = self._held, []
        if not keep:
            await asyncio.shield(self._give_back(held))

    async def _give_back(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                await self.objects.release_lease(self.ref.namespace, lease_name(key), self.holder)
            except StepError as exc:
                log.warning("restore %s: Lease of %s not released (%s); it expires", self.ref.name, key, exc)

    # -- forward --------------------------------------------------------------------------------

    async def run(self, plan: InPlacePlan, deadline: float) -> float:
        """Forward up to and including the point of no return; returns when the writers were
        stopped (monotonic). Raises on any failure before that point (the caller rolls back)."""
        ns = self.ref.namespace
        for secret in plan.secrets:
            await self._create("Secret", secret)
        await all_at_once(self._create("PersistentVolumeClaim", s.scratch) for s in plan.swaps)
        await self._step("scratch-claims")
        scratch = await all_at_once(
            self.objects.wait("PersistentVolumeClaim", ns, s.scratch["metadata"]["name"], is_bound,
                              time_left(deadline)) for s in plan.swaps)
        restored = {s.pvc: str(c["spec"]["volumeName"]) for s, c in zip(plan.swaps, scratch, strict=True)}
        for swap in plan.swaps:
            # Found again by label whatever happens next; once swapped it takes the previous
            # volume's reclaim policy, as the claim's volume did before.
            await self._mark_volume(restored[swap.pvc], RESTORED, swap.previous_reclaim_policy)
        await self.report({"message": "proving every service starts on its restored claims",
                           "claims": _claims(plan, restored)})
        await all_at_once(self._create("Pod", pod) for pod in plan.proofs)
        await all_at_once(self.objects.wait("Pod", ns, p["metadata"]["name"], pod_ready, time_left(deadline))
                          for p in plan.proofs)
        await self._step("proven")
        await all_at_once(self._delete_and_wait("Pod", p["metadata"]["name"], deadline) for p in plan.proofs)
        proven = "every service started on its restored claims: " + ", ".join(w.key for w in plan.services)
        await self.report({"message": "every service started on its restored claims; stopping writers",
                           "conditions": [condition("Proven", "True", "ServicesStarted", proven)]})
        # Intent before effect: each previous volume is kept (Retain) and carries its claim.
        for swap in plan.swaps:
            meta = swap.replacement["metadata"]
            record = {"metadata": {**meta, "annotations": {k: v for k, v in meta["annotations"].items()
                                                           if k != RESTORED_FROM}},
                      "spec": swap.replacement["spec"]}
            await self._mark_volume(swap.previous_volume, PREVIOUS, swap.previous_reclaim_policy,
                                    json.dumps(record, sort_keys=True))
        stopped_at = time.monotonic()
        await self._stop(plan.writers, WRITER, deadline)
        await self._step("writers-stopped")
        await self._stop(plan.services, SERVICE, deadline)
        await self._step("services-stopped")
        await all_at_once(self._release_claims(s.scratch["metadata"]["name"], s.pvc, deadline)
                          for s in plan.swaps)
        await self._step("claims-released")
        for swap in plan.swaps:
            await self._bind(restored[swap.pvc], {**swap.replacement, "spec": {
                **swap.replacement["spec"], "volumeName": restored[swap.pvc]}}, deadline)
        await all_at_once(self.objects.wait("PersistentVolumeClaim", ns, s.pvc, is_bound, time_left(deadline))
                          for s in plan.swaps)
        await self._step("claims-swapped")
        await self._start(SERVICE, deadline, strict=True)
        await self._step("services-started")
        return stopped_at

    async def _finish_once(self, policy: PreviousVolumes, deadline: float) -> Finished:
        await self._start(SERVICE, deadline)
        writers = await self._start(WRITER, deadline)
        writers_back = time.monotonic()
        await self._point("writers-resumed")
        claims: list[JSON] = []
        for volume in await self.objects.list("PersistentVolume", "", self._selector):
            claims += await self._settle(volume, policy)
        await self._remove_made()
        return Finished(claims, writers, writers_back)

    async def _settle(self, volume: JSON, policy: PreviousVolumes) -> list[JSON]:
        annotations = volume["metadata"].get("annotations") or {}
        name = volume["metadata"]["name"]
        done = _unmarked(annotations)
        if annotations.get(VOLUME_ROLE) == RESTORED:
            # The claim's volume now: it behaves as the previous one did.
            reclaim = annotations.get(VOLUME_RECLAIM) or "Delete"
            await self.objects.patch("PersistentVolume", "", name, {
                **done, "spec": {"persistentVolumeReclaimPolicy": reclaim}})
            return []
        record = json.loads(annotations.get(VOLUME_CLAIM) or "{}")
        claim = (record.get("metadata") or {}).get("name", "")
        current = await self.objects.get("PersistentVolumeClaim", self.ref.namespace, claim)
        entry = {"pvc": claim, "volumeSnapshot": _annotation(current or {}, RESTORED_FROM) or "",
                 "restoredVolume": ((current or {}).get("spec") or {}).get("volumeName"),
                 "previousVolume": name, "previousVolumeKept": policy == PreviousVolumes.RETAIN}
        if policy == PreviousVolumes.DELETE:
            await self.objects.patch("PersistentVolume", "", name, {
                **done, "spec": {"persistentVolumeReclaimPolicy": "Delete"}})
        else:
            done["metadata"]["annotations"][REPLACED_BY] = f"{self.ref.namespace}/{self.ref.name}"
            done["metadata"]["annotations"][VOLUME_CLAIM] = annotations.get(VOLUME_CLAIM)
            await self.objects.patch("PersistentVolume", "", name, done)
        return [entry]

    # -- rollback -------------------------------------------------------------------------------

    async def roll_back(self) -> str:
        """Put every claim back on its previous volume and every stopped workload back at its
        replicas, ready; retried until done. Returns what it checked, in a sentence."""
        return await self._until_done("rolling back", self._roll_back_once)

    async def finish(self, policy: PreviousVolumes) -> Finished:
        """After the point of no return: resume the writers, settle the volumes, remove what
        the restore made; idempotent, retried until done."""
        return await self._until_done("finishing", lambda deadline: self._finish_once(policy, deadline))

    async def _until_done(self, doing: str, attempt: Callable[[float], Awaitable[T]]) -> T:
        tries = 0
        while True:
            try:
                async with asyncio.timeout(ATTEMPT_TIMEOUT):
                    return await first_error(attempt(time.monotonic() + ATTEMPT_TIMEOUT))
            except (StepError, RestoreFailed, TimeoutError, failpoints.Injected) as exc:
                pause = RETRY_PAUSES[min(tries, len(RETRY_PAUSES) - 1)]
                tries += 1
                log.warning("restore %s: %s, attempt %d failed (%s); again in %.0fs",
                            self.ref.name, doing, tries, exc, pause)
                with contextlib.suppress(StepError):  # the news is lost in an outage; the work is not
                    await self.report({"message": f"{doing}: attempt {tries} failed ({exc}); "
                                                  f"trying again in {pause:.0f}s"})
                await asyncio.sleep(pause)  # back-off between attempts at a failing API

    async def _roll_back_once(self, deadline: float) -> str:
        ns = self.ref.namespace
        for pod in await self.objects.list("Pod", ns, self._selector):
            await self._delete_and_wait("Pod", pod["metadata"]["name"], deadline)
        volumes = await self.objects.list("PersistentVolume", "", self._selector)
        previous = [v for v in volumes if _annotation(v, VOLUME_ROLE) == PREVIOUS]
        for volume in previous:
            record = json.loads(_annotation(volume, VOLUME_CLAIM) or "{}")
            name = (record.get("metadata") or {}).get("name")
            if not name:
                continue
            claim = await self.objects.get("PersistentVolumeClaim", ns, name)
            leaving = claim is not None and bool(claim["metadata"].get("deletionTimestamp"))
            on_it = ((claim or {}).get("spec") or {}).get("volumeName") == volume["metadata"]["name"]
            if leaving or not on_it:
                # A claim being deleted (held by a pod the restore does not stop) is not back:
                # the volume stays kept and marked until it is gone and bound again.
                # Nothing may run on the claim while it goes back: stop whatever mounts it.
                await self._stop(await self._mounting(name), SERVICE, deadline)
                await self._delete_and_wait("PersistentVolumeClaim", name, deadline)
                await self._bind(volume["metadata"]["name"], {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim", **record,
                    "spec": {**record["spec"], "volumeName": volume["metadata"]["name"]}}, deadline)
                await self.objects.wait("PersistentVolumeClaim", ns, name, is_bound, time_left(deadline))
                self._put_back.add(name)
            await self.objects.patch("PersistentVolume", "", volume["metadata"]["name"], {
                **_unmarked(volume["metadata"].get("annotations") or {}),
                "spec": {"persistentVolumeReclaimPolicy": _annotation(volume, VOLUME_RECLAIM) or "Delete"}})
        for volume in volumes:
            if _annotation(volume, VOLUME_ROLE) == RESTORED:
                await self._discard(volume)
        await self._remove_made()
        services = await self._start(SERVICE, deadline)
        writers = await self._start(WRITER, deadline)
        put_back = sorted(self._put_back)
        claims = f"claims {', '.join(put_back)} back on their previous volumes" if put_back else \
            "every claim on its previous volume"
        return f"rolled back: {claims}" + started_words([*services, *writers])

    async def _discard(self, volume: JSON) -> None:
        """A volume restored for this restore and not kept: reclaimed (Delete) once released."""
        spec = volume.get("spec") or {}
        patch: JSON = {**_unmarked(volume["metadata"].get("annotations") or {}),
                       "spec": {"persistentVolumeReclaimPolicy": "Delete"}}
        ref = spec.get("claimRef") or {}
        if ref and not ref.get("uid"):
            # Pre-bound to a claim that never came: a uid of no claim releases it.
            patch["spec"]["claimRef"] = {"uid": self.ref.uid}
        await self.objects.patch("PersistentVolume", "", volume["metadata"]["name"], patch)

    async def _remove_made(self) -> None:
        """Delete the proof pods, scratch claims and preparation Secrets the restore made."""
        ns = self.ref.namespace
        for kind in ("Pod", "PersistentVolumeClaim", "Secret"):
            for obj in await self.objects.list(kind, ns, self._selector):
                await self.objects.delete(kind, ns, obj["metadata"]["name"])

    # -- steps ------------------------------------------------------------------------------------

    @property
    def _selector(self) -> str:
        return f"{RESTORE_UID_LABEL}={self.ref.uid}"

    async def _point(self, step: str) -> None:
        await failpoints.reached(f"restore:{self.ref.name}:{step}")

    async def _step(self, step: str) -> None:
        """A step of the forward run is done: go on only while every Lease is still held."""
        if self._lost is not None:
            raise RestoreFailed("LeaseLost", f"{holder_title(self._lost)} took a Lease of this restore "
                                "(it could not be renewed in time)")
        await self._point(step)

    async def _create(self, kind: str, body: JSON) -> None:
        ns = self.ref.namespace
        if await self.objects.create(kind, ns, body) is not None:
            return
        existing = await self.objects.get(kind, ns, body["metadata"]["name"])
        mine = (((existing or {}).get("metadata") or {}).get("labels") or {}).get(RESTORE_UID_LABEL)
        if mine != self.ref.uid:
            raise RestoreFailed("ObjectExists", f"{kind} {body['metadata']['name']} exists in {ns} and is "
                                "not this restore's; it was left alone")

    async def _delete_and_wait(self, kind: str, name: str, deadline: float) -> None:
        await self.objects.delete(kind, self.ref.namespace, name)
        await self.objects.wait_gone(kind, self.ref.namespace, name, time_left(deadline))

    async def _mark_volume(self, name: str, role: str, reclaim: str, claim: str | None = None) -> None:
        """Label a volume as this restore's and set it to Retain, its reclaim policy recorded; in
        one write, so the label is there whenever the policy changed."""
        annotations = {VOLUME_ROLE: role, VOLUME_RECLAIM: reclaim, **({VOLUME_CLAIM: claim} if claim else {})}
        done = await self.objects.patch("PersistentVolume", "", name, {
            "metadata": {"labels": {RESTORE_UID_LABEL: self.ref.uid}, "annotations": annotations},
            "spec": {"persistentVolumeReclaimPolicy": "Retain"}})
        if done is None:
            raise RestoreFailed("VolumeGone", f"PersistentVolume {name} disappeared during the restore")

    async def _release_claims(self, scratch: str, claim: str, deadline: float) -> None:
        await self._delete_and_wait("PersistentVolumeClaim", scratch, deadline)
        await self._delete_and_wait("PersistentVolumeClaim", claim, deadline)

    async def _bind(self, volume: str, claim: JSON, deadline: float) -> None:
        """Reserve the released volume for a claim of this name and, once the PV controller has
        seen that (the volume turns Available), create the claim on it. The PV controller binds
        a claim at its creation only if its cache holds the reservation; if not, only at its next
        periodic sync (~15s more with the writers stopped)."""
        ns = self.ref.namespace
        name = claim["metadata"]["name"]
        done = await self.objects.patch("PersistentVolume", "", volume, {"spec": {"claimRef": {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
            "uid": None, "resourceVersion": None}}})
        if done is None:
            raise RestoreFailed("VolumeGone", f"PersistentVolume {volume} disappeared during the restore")
        await self.objects.wait("PersistentVolume", "", volume, _reserved_for(ns, name), time_left(deadline))
        if await self.objects.create("PersistentVolumeClaim", ns, claim) is None:
            existing = await self.objects.get("PersistentVolumeClaim", ns, name)
            if ((existing or {}).get("spec") or {}).get("volumeName") != volume:
                raise RestoreFailed("ClaimExists", f"claim {name} was created by someone else during the "
                                    f"restore, not on volume {volume}")

    async def _mounting(self, claim: str) -> list[Stopped]:
        """Every workload of the namespace whose pods mount the claim (running or not)."""
        found = []
        for kind in _WORKLOADS:
            for workload in await self.objects.list(kind, self.ref.namespace):
                if claim in claims_of(dict(workload, kind=kind)):
                    found.append(Stopped(kind, workload["metadata"]["name"],
                                         int(workload["spec"].get("replicas", 1)),
                                         dict(workload["spec"].get("selector") or {}), False))
        return found

    async def _stop(self, workloads: list[Stopped], role: str, deadline: float) -> None:
        """Scale to zero, the replicas to give back written in the same patch; then wait until no
        pod of theirs exists. A workload stopped already keeps the replicas it recorded."""
        for workload in workloads:
            current = await self.objects.get(workload.kind, self.ref.namespace, workload.name)
            if current is None:
                raise RestoreFailed("WorkloadGone", f"{workload.key} disappeared during the restore")
            annotations = current["metadata"].get("annotations") or {}
            if annotations.get(STOPPED_BY) == self.ref.uid:
                record: JSON = {}
            else:
                replicas = int(current["spec"].get("replicas", 1))
                record = {STOPPED_BY: self.ref.uid, STOPPED_AS: role, STOPPED_REPLICAS: str(replicas)}
            await self.objects.patch(workload.kind, self.ref.namespace, workload.name,
                                     {"metadata": {"annotations": record}, "spec": {"replicas": 0}})
        await all_at_once(self._pods_gone(w, deadline) for w in workloads)

    async def _pods_gone(self, workload: Stopped, deadline: float) -> None:
        selector = LabelSelector.model_validate(workload.selector)
        while True:
            pods = [p for p in await self.objects.list("Pod", self.ref.namespace)
                    if selector.matches(p["metadata"].get("labels") or {})]
            if not pods:
                return
            if time.monotonic() + PODS_GONE_POLL > deadline:
                raise RestoreFailed("PodsNotGone", f"pods of {workload.key} still exist: "
                                    + ", ".join(p["metadata"]["name"] for p in pods))
            await asyncio.sleep(PODS_GONE_POLL)  # pods go within their grace period

    async def _start(self, role: str, deadline: float, strict: bool = False) -> list[JSON]:
        """Give every workload this restore stopped in this role its replicas back (unless someone
        scaled it meanwhile: theirs stands) and wait, at most READY_WAIT, until it is ready; only
        then does its stopped-by annotation go, so an attempt cut short finds it again. strict
        (the swap itself): one not ready fails the step; else it is reported not ready."""
        ns = self.ref.namespace
        stopped: list[tuple[str, str]] = []
        started: list[tuple[str, str]] = []
        for kind in _WORKLOADS:
            for workload in await self.objects.list(kind, ns):
                annotations = workload["metadata"].get("annotations") or {}
                if annotations.get(STOPPED_BY) != self.ref.uid or annotations.get(STOPPED_AS) != role:
                    continue
                name = workload["metadata"]["name"]
                stopped.append((kind, name))
                done: JSON | None = workload
                if int(workload["spec"].get("replicas", 0)) == 0:
                    done = await self.objects.patch(kind, ns, name, {"spec": {
                        "replicas": int(annotations.get(STOPPED_REPLICAS) or "1")}})
                if done is not None and int(done["spec"].get("replicas", 0)) > 0:
                    started.append((kind, name))
        wait = min(READY_WAIT, time_left(deadline))
        waits = await asyncio.gather(*(self.objects.wait(kind, ns, name, is_ready, wait)
                                       for kind, name in started), return_exceptions=True)
        for (kind, name), result in zip(started, waits, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, TimeoutError):
                raise result
            if strict and isinstance(result, BaseException):  # still marked: the rollback stops it
                raise RestoreFailed("NotReady", f"{kind}/{name} was not ready within {wait:.0f}s on the "
                                    "restored claims")
        for kind, name in stopped:
            await self.objects.patch(kind, ns, name, {"metadata": {"annotations": {
                STOPPED_BY: None, STOPPED_AS: None, STOPPED_REPLICAS: None}}})
        entries = []
        for (kind, name), result in zip(started, waits, strict=True):
            ready = not isinstance(result, BaseException)
            current = await self.objects.get(kind, ns, name) if isinstance(result, BaseException) else result
            status = (current or {}).get("status") or {}
            entries.append({"kind": kind, "name": name,
                            "replicas": int(((current or {}).get("spec") or {}).get("replicas") or 0),
                            "readyReplicas": int(status.get("readyReplicas") or 0), "ready": ready})
        return entries


def started_words(entries: list[JSON]) -> str:
    """What starting workloads again came to, for a status message ('' for none)."""
    ready = ", ".join(f"{w['kind']}/{w['name']}" for w in entries if w["ready"])
    late = ", ".join(f"{w['kind']}/{w['name']}" for w in entries if not w["ready"])
    return ((f"; {ready} running again, ready" if ready else "")
            + (f"; {late} given back its replicas, not ready yet" if late else ""))


def _reserved_for(namespace: str, claim: str) -> Callable[[JSON], bool]:
    """The volume is Available for that claim (or bound to it already)."""
    def reserved(volume: JSON) -> bool:
        ref = (volume.get("spec") or {}).get("claimRef") or {}
        phase = (volume.get("status") or {}).get("phase")
        return (ref.get("namespace"), ref.get("name")) == (namespace, claim) and phase in (
            "Available", "Bound")
    return reserved


def _annotation(obj: JSON, key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def _unmarked(annotations: dict[str, Any]) -> JSON:
    """The patch that takes a volume out of the restore's charge: label and annotations off."""
    return {"metadata": {"labels": {RESTORE_UID_LABEL: None},
                         "annotations": {k: None for k in (VOLUME_ROLE, VOLUME_RECLAIM, VOLUME_CLAIM)
                                         if k in annotations}}}


def _claims(plan: InPlacePlan, restored: dict[str, str]) -> list[JSON]:
    return [{"pvc": s.pvc, "volumeSnapshot": s.snapshot, "restoredVolume": restored.get(s.pvc),
             "previousVolume": s.previous_volume, "previousVolumeKept": True} for s in plan.swaps]
