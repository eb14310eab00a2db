"""Verifying SnapshotGroups by restoring them: when a verification runs, how many at once, and
what the status says (the run itself: verification_run.py).

Asked for by the group's `spec.verify: Restore` once it succeeded, or by a new value of its
snapgroup.dev/verify-requested annotation (`snapgroup verify --restore`). The status's
`verification.request` says which request the latest verification answers; one without a
completion time was interrupted (an operator restart), and runs again; `verification.removed`
false means what it made is not gone yet, and removing it is tried again (also after a
restart). Whatever a verification makes carries the group's uid label and an owner reference to
the group: it is removed at the end, before a verification starts again, and by the garbage
collector if the group goes first. Nothing a verification does touches the live claims,
workloads or services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from snapgroup import metrics
from snapgroup.api.base import stamp
from snapgroup.api.labels import VERIFY_REQUESTED
from snapgroup.api.snapshotgroup import KIND, Phase
from snapgroup.ports import Cluster, ClusterObjects, Connectors, StepError

from .restore_steps import condition, write_status, write_status_surely
from .verification_plan import verification_selector
from .verification_run import GroupKey, VerificationRun

log = logging.getLogger("snapgroup.verify")
JSON = dict[str, Any]

SPEC_REQUEST = "spec.verify"
"""The request a group's `spec.verify: Restore` makes."""
MAX_VERIFICATIONS = 2
"""Verifications running at once, operator-wide: each holds a copy of its group's volumes and
pods while it runs; more wait (their status says so)."""
REMOVE_PAUSES = (2.0, 5.0, 10.0, 30.0)
"""Pauses between attempts at removing what a verification made; the last one repeats."""
NOT_REMOVED = "; what it made is not all removed yet"
"""What the Verified message says while removal is still tried (and loses once it is done)."""
CLOSE_TIMEOUT = 30.0
"""How long a stopping operator waits for verifications to remove what they made (the rest is
removed at the next start, or with the group)."""


def requested(body: Mapping[str, Any]) -> str | None:
    """The verification the group asks for now, if it is not answered yet: the annotation's
    value, else SPEC_REQUEST for spec.verify Restore; None when there is nothing to do."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != Phase.SUCCEEDED.value:
        return None
    wanted = (meta.get("annotations") or {}).get(VERIFY_REQUESTED)
    if not wanted and (body.get("spec") or {}).get("verify") == "Restore":
        wanted = SPEC_REQUEST
    answered = status.get("verification") or {}
    if not wanted or (answered.get("request") == wanted and answered.get("completionTime")):
        return None
    return str(wanted)


def removal_pending(body: Mapping[str, Any]) -> bool:
    """The latest verification answered, but what it made is not all gone yet."""
    return ((body.get("status") or {}).get("verification") or {}).get("removed") is False


class Verifier:
    """Runs verifications, one task per group; `seen` is idempotent."""

    def __init__(self, cluster: Cluster, objects: ClusterObjects, connectors: Connectors,
                 operator_image: str, operator_id: str = "snapgroup") -> None:
        self.cluster = cluster
        self.objects = objects
        self.connectors = connectors
        self.operator_image = operator_image
        self.operator_id = operator_id
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.slots = asyncio.Semaphore(MAX_VERIFICATIONS)
        self._latest: dict[str, Mapping[str, Any]] = {}
        """The group as last seen while its task ran: looked at again when the task ends."""
        self._taken: dict[str, str] = {}
        """uid -> the request this process took last: an event that predates its answer never
        starts it again."""
        self._removing: set[str] = set()
        """uids whose task only removes what a verification made: a new request interrupts it."""
        self._closing = False

    def seen(self, body: Mapping[str, Any]) -> None:
        """A group changed: verify it if it asks for a verification not answered yet, or finish
        removing what the last one made; stop a verification of a group being deleted (what it
        made goes with the group)."""
        meta = body["metadata"]
        key = GroupKey(meta["namespace"], meta["name"], meta["uid"])
        if meta.get("deletionTimestamp"):
            self.forget(key.uid)
            return
        if self._closing:
            return
        if key.uid in self.tasks:
            self._latest[key.uid] = body
            if key.uid in self._removing and requested(body) not in (None, self._taken.get(key.uid)):
                self.tasks[key.uid].cancel()  # the new verification removes first, then answers
            return
        request = requested(body)
        if request is not None and self._taken.get(key.uid) != request:
            self._taken[key.uid] = request
            self._start(key, self.verify(key, request))
        elif removal_pending(body):
            self._start(key, self._remove_until_done(key))

    def stop_taking(self) -> None:
        """The operator is stopping: no new verification starts."""
        self._closing = True

    def _start(self, key: GroupKey, work: Any) -> None:
        task = asyncio.create_task(work, name=f"verify {key.namespace}/{key.name}")
        self.tasks[key.uid] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def forget(self, uid: str) -> None:
        """The group is going: stop its verification (the garbage collector removes the rest)."""
        self._latest.pop(uid, None)
        self._taken.pop(uid, None)
        task = self.tasks.get(uid)
        if task is not None:
            task.cancel()

    def _finished(self, key: GroupKey, task: asyncio.Task[None]) -> None:
        self.tasks.pop(key.uid, None)
        self._removing.discard(key.uid)
        if not task.cancelled() and task.exception() is not None:
            log.error("verifying %s/%s failed", key.namespace, key.name, exc_info=task.exception())
            self._taken.pop(key.uid, None)  # unanswered: the next event takes it again
        latest = self._latest.pop(key.uid, None)
        if latest is not None:
            self.seen(latest)  # a request made while this one ran

    async def close(self) -> None:
        """The operator stops: verifications stop, each after one attempt at removing what it
        made (at most CLOSE_TIMEOUT); an unanswered request runs again at the next start, which
        first removes what this one left."""
        self._closing = True
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=CLOSE_TIMEOUT)

    # -- one verification -------------------------------------------------------------------------

    def _run(self, key: GroupKey) -> VerificationRun:
        return VerificationRun(key, self.cluster, self.objects, self.connectors, self.operator_image,
                               self.operator_id)

    async def verify(self, key: GroupKey, request: str) -> None:
        """Verify the group once for request, remove what it made, and say how it went."""
        if self.slots.locked():
            with contextlib.suppress(StepError):  # news only; the verification says the rest
                await self._write(key, {"conditions": [condition(
                    "Verified", "Unknown", "Waiting",
                    f"waiting for one of {MAX_VERIFICATIONS} verifications running at once to end")]})
        async with self.slots:
            removed = await self._verify(key, request)
        if not removed:  # outside the slot: a removal that keeps failing holds up nobody else
            await self._remove_until_done(key)

    async def _verify(self, key: GroupKey, request: str) -> bool:
        """One verification, answered in the status; whether what it made is gone."""
        started = time.monotonic()
        start_time = stamp(datetime.now(UTC))
        await write_status_surely(self.objects, KIND, key.namespace, key.name, {
            # A merge patch: what the previous verification wrote is cleared explicitly (null).
            "verified": None, "verification": {"request": request, "startTime": start_time,
                                               "completionTime": None, "seconds": None, "removed": None,
                                               "services": []},
            "conditions": [condition("Verified", "Unknown", "Verifying",
                                     "restoring the group's snapshots into scratch claims")]})
        run = self._run(key)
        try:
            status, reason, message, services = await run.verdict(started)
        finally:
            removed = await self._remove_shielded(run)
        seconds = round(time.monotonic() - started, 3)
        message = f"{message} ({seconds:.1f}s)"
        if not removed:
            message += f"{NOT_REMOVED} ({verification_selector(key.uid)}): tried again"
        metrics.VERIFICATIONS.labels(status, reason).inc()
        metrics.VERIFICATION_SECONDS.observe(seconds)
        # Retried until it lands: unanswered, the request would run again after a restart.
        await write_status_surely(self.objects, KIND, key.namespace, key.name, {
            "verified": status == "True",
            "verification": {"request": request, "startTime": start_time,
                             "completionTime": stamp(datetime.now(UTC)), "seconds": seconds,
                             "removed": removed, "services": [s.wire() for s in services]},
            "conditions": [condition("Verified", status, reason, message)]})
        with contextlib.suppress(StepError):  # the status says it; the Event is news
            await self.objects.record_event(KIND, key.namespace, key.name, key.uid,
                                            "Normal" if status == "True" else "Warning",
                                            "Verified" if status == "True" else reason, message)
        return removed

    async def _remove_shielded(self, run: VerificationRun) -> bool:
        """One attempt at removing what the verification made, not cut short by cancellation;
        False when it failed."""
        attempt = asyncio.ensure_future(run.remove())
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await asyncio.gather(attempt, return_exceptions=True)
            raise
        except Exception as exc:  # anything: the status says it, and removing is tried again
            log.warning("verification of %s/%s: not removed yet: %s", run.key.namespace, run.key.name, exc)
            return False
        return True

    async def _remove_until_done(self, key: GroupKey) -> None:
        """Remove what the group's verification made, trying until it is gone (a new request
        interrupts this: it removes first itself); then the status says so."""
        self._removing.add(key.uid)
        run = self._run(key)
        tries = 0
        while not await self._remove_shielded(run):
            await asyncio.sleep(REMOVE_PAUSES[min(tries, len(REMOVE_PAUSES) - 1)])
            tries += 1
        group = await self.objects.get(KIND, key.namespace, key.name) or {}
        verified = next((c for c in (group.get("status") or {}).get("conditions") or []
                         if c.get("type") == "Verified"), None)
        update: JSON = {"verification": {"removed": True}}
        if verified is not None and NOT_REMOVED in str(verified.get("message")):
            update["conditions"] = [{**verified, "message": str(verified["message"]).split(NOT_REMOVED)[0]}]
        await write_status_surely(self.objects, KIND, key.namespace, key.name, update)
        log.info("verification of %s/%s: everything it made is removed", key.namespace, key.name)

    async def _write(self, key: GroupKey, status: JSON) -> None:
        await write_status(self.objects, KIND, key.namespace, key.name, status)

