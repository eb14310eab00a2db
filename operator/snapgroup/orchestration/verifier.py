"""Verifying a SnapshotGroup by restoring it: scratch claims, the services started on them, their
newest records read and compared with what the group recorded while frozen; then removed.

Asked for by the group's `spec.verify: Restore` once it succeeded, or by a new value of its
snapgroup.dev/verify-requested annotation (`snapgroup verify --restore`). The status's
`verification.request` says which request the latest verification answers; one without a
completion time was interrupted (an operator restart), and runs again. Whatever a verification
makes carries the group's uid label and an owner reference to the group: it is removed at the
end, before a verification starts again, and by the garbage collector if the group goes first.
Nothing a verification does touches the live claims, workloads or services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from snapgroup import failpoints, metrics
from snapgroup.api.base import parse_duration
from snapgroup.api.labels import VERIFICATION_LABEL, VERIFY_REQUESTED
from snapgroup.api.snapshotgroup import (
    KIND,
    Phase,
    ServiceStatus,
    ServiceTarget,
    ServiceVerification,
)
from snapgroup.hooks.registry import HookContext, lookup
from snapgroup.hooks.restore_prep import prepare_restore
from snapgroup.hooks.services import ServiceHookType
from snapgroup.ports import Cluster, ClusterObjects, Connectors, PlanError, StepError

from .restore_steps import (
    RestoreFailed,
    all_at_once,
    condition,
    pod_ready,
    read_world,
    time_left,
    write_status,
    write_status_surely,
)
from .verification_plan import VerificationPlan, plan_verification, verification_selector

log = logging.getLogger("snapgroup.verify")
JSON = dict[str, Any]
Verdict = tuple[str, str, str, list[ServiceVerification]]
"""(Verified condition status, reason, message, per-service evidence)."""
Relocate = Callable[[str, "int | None"], "tuple[str, int | None]"]
"""(host, port) of a Secret's address -> where that server is in a started scratch pod."""

SPEC_REQUEST = "spec.verify"
"""The request a group's `spec.verify: Restore` makes."""
READ_WAIT = 60.0
"""How long a started service may take to answer its first read (recovery may still run once
the pod is ready)."""
READ_PAUSE = 1.0
"""Seconds between tries of a read the service did not answer yet."""
REMOVE_TIMEOUT = 120.0
"""How long one attempt at removing what a verification made may take."""
MAX_VERIFICATIONS = 2
"""Verifications running at once, operator-wide: each holds a copy of its group's volumes and
pods while it runs; more wait (their status says so)."""
REMOVE_PAUSES = (2.0, 5.0, 10.0, 30.0)
"""Pauses between attempts at removing what a verification made; the last one repeats."""
_KINDS = ("Pod", "PersistentVolumeClaim", "Secret")


@dataclass(frozen=True)
class GroupKey:
    """Which group: its namespace, name and uid."""

    namespace: str
    name: str
    uid: str


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

    def seen(self, body: Mapping[str, Any]) -> None:
        """A group changed: verify it if it asks for a verification not answered yet; stop a
        verification of a group being deleted (what it made goes with the group)."""
        meta = body["metadata"]
        key = GroupKey(meta["namespace"], meta["name"], meta["uid"])
        if meta.get("deletionTimestamp"):
            self.forget(key.uid)
            return
        request = requested(body)
        if request is None or key.uid in self.tasks:
            return
        task = asyncio.create_task(self.verify(key, request), name=f"verify {key.namespace}/{key.name}")
        self.tasks[key.uid] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def forget(self, uid: str) -> None:
        """The group is going: stop its verification (the garbage collector removes the rest)."""
        task = self.tasks.get(uid)
        if task is not None:
            task.cancel()

    def _finished(self, key: GroupKey, task: asyncio.Task[None]) -> None:
        self.tasks.pop(key.uid, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("verifying %s/%s failed", key.namespace, key.name, exc_info=task.exception())

    async def close(self) -> None:
        """The operator stops: verifications stop; an unanswered request runs again at the next
        start, which first removes what this one made."""
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # -- one verification -------------------------------------------------------------------------

    async def verify(self, key: GroupKey, request: str) -> None:
        """Verify the group once for request, remove what it made, and say how it went."""
        if self.slots.locked():
            await self._write(key, {"conditions": [condition(
                "Verified", "Unknown", "Waiting",
                f"waiting for one of {MAX_VERIFICATIONS} verifications running at once to end")]})
        async with self.slots:
            await self._verify(key, request)

    async def _verify(self, key: GroupKey, request: str) -> None:
        started = time.monotonic()
        start_time = _stamp(datetime.now(UTC))
        await write_status_surely(self.objects, KIND, key.namespace, key.name, {
            # A merge patch: what the previous verification wrote is cleared explicitly (null).
            "verified": None, "verification": {"request": request, "startTime": start_time,
                                               "completionTime": None, "seconds": None, "services": []},
            "conditions": [condition("Verified", "Unknown", "Verifying",
                                     "restoring the group's snapshots into scratch claims")]})
        try:
            verdict = await self._verdict(key, started)
        finally:
            removed = await self._remove_shielded(key)
        status, reason, message, services = verdict
        seconds = round(time.monotonic() - started, 3)
        message = f"{message} ({seconds:.1f}s)"
        pending = f"; what it made is not removed yet ({verification_selector(key.uid)}), it is tried again"
        metrics.VERIFICATIONS.labels(status, reason).inc()
        metrics.VERIFICATION_SECONDS.observe(seconds)
        # Retried until it lands: unanswered, the request would run again after a restart.
        await write_status_surely(self.objects, KIND, key.namespace, key.name, {
            "verified": status == "True",
            "verification": {"request": request, "startTime": start_time,
                             "completionTime": _stamp(datetime.now(UTC)), "seconds": seconds,
                             "services": [s.wire() for s in services]},
            "conditions": [condition("Verified", status, reason, message + ("" if removed else pending))]})
        with contextlib.suppress(StepError):  # the status says it; the Event is news
            await self.objects.record_event(KIND, key.namespace, key.name, key.uid,
                                            "Normal" if status == "True" else "Warning",
                                            "Verified" if status == "True" else reason, message)
        if not removed:
            await self._remove_until_done(key)
            await self._write(key, {"conditions": [condition("Verified", status, reason, message)]})

    async def _verdict(self, key: GroupKey, started: float) -> Verdict:
        """(condition status, reason, message, per-service evidence) of one verification."""
        try:
            await self._remove(key)  # what an interrupted verification left
            world = await read_world(self.objects, key.namespace, key.name, key.namespace)
            if ((world.group or {}).get("metadata") or {}).get("uid") != key.uid:
                return "False", "GroupReplaced", "the group was replaced by another of its name", []
            plan = plan_verification(key.namespace, key.name, world, prepare_restore, self.operator_image)
        except PlanError as exc:
            return "False", exc.reason, f"not verified: {exc.field_path}: {exc.message}", []
        except StepError as exc:
            return "False", exc.reason, f"not verified: {exc.message}", []
        except TimeoutError as exc:
            return "False", "NotRemoved", (f"not verified: what an earlier verification made is not gone: "
                                           f"{exc}"), []
        timeout = parse_duration(plan.group.verify_timeout).total_seconds()
        deadline = time.monotonic() + timeout
        try:
            services = await asyncio.wait_for(self._restore_and_read(key, plan, started, deadline), timeout)
        except TimeoutError:
            return "False", "VerificationTimedOut", \
                f"the restored services were not all read within verifyTimeout {plan.group.verify_timeout}", \
                []
        except (RestoreFailed, StepError) as exc:
            hint = (f"; the operator writes in {key.namespace} only where a RoleBinding of "
                    "snapgroup-restore-target grants it" if "HTTP 403" in exc.message else "")
            return "False", exc.reason, f"not verified: {exc.message}{hint}", []
        except failpoints.Injected as exc:
            return "False", "Injected", str(exc), []
        return _judge(services)

    async def _restore_and_read(
        self, key: GroupKey, plan: VerificationPlan, started: float, deadline: float
    ) -> list[ServiceVerification]:
        ns = key.namespace
        for body in [*plan.secrets, *plan.claims]:
            await self._create(key, body["kind"], body)
        await all_at_once(self._create(key, "Pod", pod) for pod in plan.pods)
        await failpoints.reached(f"verify:{key.name}:started")
        ctx = HookContext(namespace=ns, group=key.name, group_uid=key.uid, cluster=self.cluster,
                          connectors=self.connectors, operator_id=self.operator_id)
        services = await self.objects.list("Service", ns)
        targets = {s.name: s for s in plan.group.services}
        recorded = {s.name: s for s in plan.status.services}
        return await all_at_once(
            self._read_service(ctx, targets[name], recorded[name], plan, pods, services, started, deadline)
            for name, pods in plan.serving.items())

    async def _read_service(
        self, ctx: HookContext, service: ServiceTarget, recorded: ServiceStatus, plan: VerificationPlan,
        pods: list[str], services: list[JSON], started: float, deadline: float,
    ) -> ServiceVerification:
        """The service started in each of its scratch pods and read there, against what was recorded."""
        evidence = ServiceVerification(name=service.name, pods=pods,
                                       recorded_newest_record=recorded.last_record_time)
        if not pods:
            return evidence.model_copy(update={"message": "no workload mounts its claims: not started"})
        hook_type = lookup(service.type)
        assert isinstance(hook_type, ServiceHookType)
        newest: list[datetime | None] = []
        for name in pods:
            try:
                pod = await self.objects.wait("Pod", ctx.namespace, name, pod_ready, time_left(deadline))
            except TimeoutError:
                return evidence.model_copy(update={"message": await self._not_started(ctx.namespace, name)})
            relocate = _relocation(pod, services, ctx.namespace)
            try:
                newest.append(await _read_when_up(hook_type, ctx, service, relocate, deadline))
            except (StepError, PlanError) as exc:
                return evidence.model_copy(update={"message": f"pod {name} started but was not read: {exc}"})
        seconds = round(time.monotonic() - started, 3)
        if service.last_record is None:
            return evidence.model_copy(update={
                "seconds": seconds, "message": "started; no lastRecord, so no record was compared"})
        restored = max((t for t in newest if t is not None), default=None)
        earliest = plan.status.earliest_snapshot_time
        same = all(t == recorded.last_record_time for t in newest)
        not_newer = restored is None or earliest is None or restored <= earliest
        if same and not_newer:
            message = "holds the newest record the group recorded"
        elif not same:
            message = (f"restored newest record {_spelled(restored)} is not the recorded "
                       f"{_spelled(recorded.last_record_time)}")
        else:
            message = (f"restored newest record {_spelled(restored)} is newer than the earliest cut "
                       f"{_spelled(earliest)}")
        return evidence.model_copy(update={
            "restored_newest_record": restored, "matches": same and not_newer, "seconds": seconds,
            "message": message})

    async def _not_started(self, namespace: str, name: str) -> str:
        """Why a scratch pod is not ready, as its status says."""
        status = (await self.objects.get("Pod", namespace, name) or {}).get("status") or {}
        text = f"pod {name} did not become ready: phase {status.get('phase') or 'unknown'}"
        containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        for container in containers:
            state = container.get("state") or {}
            if state.get("waiting"):
                why = f"{state['waiting'].get('reason')} {state['waiting'].get('message') or ''}".strip()
                return f"{text}, container {container.get('name')}: {why}"
            if state.get("terminated") and state["terminated"].get("exitCode"):
                return (f"{text}, container {container.get('name')} exited "
                        f"{state['terminated'].get('exitCode')} ({state['terminated'].get('reason')})")
        return text

    # -- objects --------------------------------------------------------------------------------

    async def _create(self, key: GroupKey, kind: str, body: JSON) -> None:
        if await self.objects.create(kind, key.namespace, body) is not None:
            return
        name = body["metadata"]["name"]
        existing = await self.objects.get(kind, key.namespace, name) or {}
        if ((existing.get("metadata") or {}).get("labels") or {}).get(VERIFICATION_LABEL) != key.uid:
            raise RestoreFailed("ObjectExists", f"{kind} {name} exists in {key.namespace} and is not "
                                "this verification's; it was left alone")

    async def _remove(self, key: GroupKey) -> None:
        """Delete what a verification of the group made and wait until it is gone."""
        selector = verification_selector(key.uid)
        for kind in _KINDS:
            made = await self.objects.list(kind, key.namespace, selector)
            for obj in made:
                await self.objects.delete(kind, key.namespace, obj["metadata"]["name"])
            for obj in made:
                await self.objects.wait_gone(kind, key.namespace, obj["metadata"]["name"], REMOVE_TIMEOUT)

    async def _remove_shielded(self, key: GroupKey) -> bool:
        """One attempt at removing what the verification made, not cut short by cancellation;
        False when it failed."""
        attempt = asyncio.ensure_future(self._remove(key))
        try:
            await asyncio.shield(attempt)
        except asyncio.CancelledError:
            await asyncio.gather(attempt, return_exceptions=True)
            raise
        except (StepError, TimeoutError) as exc:
            log.warning("verification of %s/%s: not removed yet: %s", key.namespace, key.name, exc)
            return False
        return True

    async def _remove_until_done(self, key: GroupKey) -> None:
        tries = 0
        while not await self._remove_shielded(key):
            await asyncio.sleep(REMOVE_PAUSES[min(tries, len(REMOVE_PAUSES) - 1)])
            tries += 1
        log.info("verification of %s/%s: everything it made is removed", key.namespace, key.name)

    async def _write(self, key: GroupKey, status: JSON) -> None:
        await write_status(self.objects, KIND, key.namespace, key.name, status)


async def _read_when_up(
    hook_type: ServiceHookType[Any], ctx: HookContext, service: ServiceTarget, relocate: Relocate,
    deadline: float,
) -> datetime | None:
    """The newest record, once the started server answers (it may still be recovering)."""
    until = min(deadline, time.monotonic() + READ_WAIT)
    while True:
        try:
            return await hook_type.newest_at(ctx, service, relocate, f"spec.services[{service.name}]")
        except StepError:
            if time.monotonic() + READ_PAUSE >= until:
                raise
        await asyncio.sleep(READ_PAUSE)  # the server is starting; its own pace


def _relocation(pod: JSON, services: list[JSON], namespace: str) -> Relocate:
    """Where a Secret's address (a Service's IP or DNS name, and its port) is in the started pod:
    the pod's IP and the Service port's target port; other addresses keep their port."""
    ip = str((pod.get("status") or {}).get("podIP") or "")
    names = {p.get("name"): p.get("containerPort")
             for c in (pod.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []}

    def relocate(host: str, port: int | None) -> tuple[str, int | None]:
        service = next((s for s in services if _addresses(s, host, namespace)), None)
        entries = ((service or {}).get("spec") or {}).get("ports") or []
        entry = next((e for e in entries if e.get("port") == port), None) or (
            entries[0] if port is None and len(entries) == 1 else None)
        if entry is None:
            return ip, port
        target = entry.get("targetPort", entry.get("port"))
        if isinstance(target, str):
            target = names.get(target, port)
        return ip, int(target) if target is not None else port

    return relocate


def _addresses(service: JSON, host: str, namespace: str) -> bool:
    """The host is the Service's cluster IP or one of its DNS names."""
    name = service["metadata"]["name"]
    host = host.lower().rstrip(".")
    if host and host == (service.get("spec") or {}).get("clusterIP"):
        return True
    return host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc") or host.startswith(
        f"{name}.{namespace}.svc.")


def _judge(services: list[ServiceVerification]) -> Verdict:
    unread = [s for s in services if s.seconds is None]
    wrong = [s for s in services if s.matches is False]
    if unread:
        return "False", "ServiceNotRead", "; ".join(f"{s.name}: {s.message}" for s in unread), services
    if wrong:
        return "False", "RecordMismatch", "; ".join(f"{s.name}: {s.message}" for s in wrong), services
    compared = [s.name for s in services if s.matches]
    text = "every service started on the restored snapshots"
    if compared:
        text += f"; {', '.join(compared)} hold the newest record the group recorded"
    others = [s.name for s in services if s.matches is None]
    if others:
        text += f"; {', '.join(others)}: no lastRecord, not compared"
    return "True", "Restored", text, services


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spelled(at: datetime | None) -> str:
    return _stamp(at) if at is not None else "none"

