"""One verification of a SnapshotGroup by restoring it: what it makes, how it reads each service,
and its verdict; removing what it made. `Verifier` (verifier.py) decides when one runs.

Everything a verification makes carries the group's uid label and an owner reference to the
group, and is made from the group's own snapshots: removal deletes only objects that show all
of that, so a label put on a live object by someone else never gets it deleted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from snapgroup import failpoints
from snapgroup.api import GROUP
from snapgroup.api.base import parse_duration, stamp
from snapgroup.api.labels import VERIFICATION_LABEL
from snapgroup.api.snapshotgroup import KIND, ServiceStatus, ServiceTarget, ServiceVerification
from snapgroup.hooks.registry import HookContext, lookup
from snapgroup.hooks.restore_prep import prepare_restore
from snapgroup.hooks.services import ServiceHookType
from snapgroup.ports import Cluster, ClusterObjects, Connectors, PlanError, StepError

from .restore_steps import RestoreFailed, all_at_once, first_error, pod_ready, read_world, time_left
from .verification_plan import VerificationPlan, plan_verification, verification_selector

log = logging.getLogger("snapgroup.verify")
JSON = dict[str, Any]
Verdict = tuple[str, str, str, list[ServiceVerification]]
"""(Verified condition status, reason, message, per-service evidence)."""
Relocate = Callable[[str, "int | None"], "tuple[str, int | None]"]
"""(host, port) of a Secret's address -> where that server is in a started scratch pod."""

READ_WAIT = 60.0
"""How long a started service may take to answer its first read (recovery may still run once
the pod is ready)."""
READ_PAUSE = 1.0
"""Seconds between tries of a read the service did not answer yet."""
REMOVE_TIMEOUT = 120.0
"""How long waiting for one object a verification made to go may take."""
_KINDS = ("Pod", "PersistentVolumeClaim", "Secret")
RUN_ANNOTATION = f"{GROUP}/verification-run"
"""On what a verification creates: a nonce of the run that created it."""


@dataclass(frozen=True)
class GroupKey:
    """Which group: its namespace, name and uid."""

    namespace: str
    name: str
    uid: str


@dataclass
class VerificationRun:
    """One verification of one group, with the clients it works through."""

    key: GroupKey
    cluster: Cluster
    objects: ClusterObjects
    connectors: Connectors
    operator_image: str
    operator_id: str
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    """On everything this run creates (RUN_ANNOTATION)."""

    async def verdict(self, started: float) -> Verdict:
        """(condition status, reason, message, per-service evidence) of one verification; every
        failure is a verdict (False), never an exception, so every request gets its answer."""
        key = self.key
        try:
            await self.remove()  # what an interrupted verification left
            world = await read_world(self.objects, key.namespace, key.name, key.namespace)
            if ((world.group or {}).get("metadata") or {}).get("uid") != key.uid:
                return "False", "GroupReplaced", "the group was replaced by another of its name", []
            plan = plan_verification(key.namespace, key.name, world, prepare_restore, self.operator_image)
            timeout = parse_duration(plan.group.verify_timeout).total_seconds()
            deadline = time.monotonic() + timeout
            try:
                services = await asyncio.wait_for(self._restore_and_read(plan, started, deadline), timeout)
            except TimeoutError:
                return ("False", "VerificationTimedOut", "the restored services were not all read within "
                        f"verifyTimeout {plan.group.verify_timeout}", [])
        except PlanError as exc:
            return "False", exc.reason, f"not verified: {exc.field_path}: {exc.message}", []
        except (RestoreFailed, StepError) as exc:
            hint = (f"; the operator writes in {key.namespace} only where a RoleBinding of "
                    "snapgroup-restore-target grants it" if "HTTP 403" in exc.message else "")
            return "False", exc.reason, f"not verified: {exc.message}{hint}", []
        except TimeoutError as exc:  # removing what an earlier verification made
            return ("False", "NotRemoved",
                    f"not verified: what an earlier verification made is not gone: {exc}", [])
        except failpoints.Injected as exc:
            return "False", "Injected", str(exc), []
        except Exception as exc:  # a bug, or the world in a shape nobody planned for
            log.error("verifying %s/%s failed", key.namespace, key.name, exc_info=exc)
            return "False", "InternalError", f"not verified: {type(exc).__name__}: {exc}", []
        return _judge(services)

    async def _restore_and_read(
        self, plan: VerificationPlan, started: float, deadline: float
    ) -> list[ServiceVerification]:
        key = self.key
        for body in [*plan.secrets, *plan.claims]:
            await self._create(body["kind"], body)
        await first_error(all_at_once(self._create("Pod", pod) for pod in plan.pods))
        await failpoints.reached(f"verify:{key.name}:started")
        ctx = HookContext(namespace=key.namespace, group=key.name, group_uid=key.uid, cluster=self.cluster,
                          connectors=self.connectors, operator_id=self.operator_id)
        services = await self.objects.list("Service", key.namespace)
        targets = {s.name: s for s in plan.group.services}
        recorded = {s.name: s for s in plan.status.services}
        return await first_error(all_at_once(
            self._read_service(ctx, targets[name], recorded[name], plan, pods, services, started, deadline)
            for name, pods in plan.serving.items()))

    async def _read_service(
        self, ctx: HookContext, service: ServiceTarget, recorded: ServiceStatus, plan: VerificationPlan,
        pods: list[str], services: list[JSON], started: float, deadline: float,
    ) -> ServiceVerification:
        """The service started in each of its scratch pods and read there, against what was recorded."""
        evidence = ServiceVerification(name=service.name, pods=pods, recovery=plan.recovery.get(service.name),
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
                "seconds": seconds,
                "message": "started and answered; no lastRecord, so no record was compared"})
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

    async def _create(self, kind: str, body: JSON) -> None:
        """Create one object, marked with this run's nonce: after the sweep of what earlier runs
        left, an object of that name is this run's only if it carries the nonce (a create whose
        answer was lost and that was sent again); anything else was put there by someone else."""
        key = self.key
        meta = body["metadata"]
        body = {**body, "metadata": {**meta, "annotations": {**(meta.get("annotations") or {}),
                                                             RUN_ANNOTATION: self.nonce}}}
        if await self.objects.create(kind, key.namespace, body) is not None:
            return
        existing = await self.objects.get(kind, key.namespace, meta["name"]) or {}
        if ((existing.get("metadata") or {}).get("annotations") or {}).get(RUN_ANNOTATION) != self.nonce:
            raise RestoreFailed("ObjectExists", f"{kind} {meta['name']} exists in {key.namespace} and is "
                                "not this verification's; it was left alone")

    async def remove(self) -> None:
        """Delete what a verification of the group made and wait until it is gone: objects with
        its label, an owner reference to the group, and (claims) restored from its snapshots."""
        key = self.key
        group = await self.objects.get(KIND, key.namespace, key.name) or {}
        snapshots = {snap.get("name") for service in (group.get("status") or {}).get("services") or []
                     for snap in service.get("volumeSnapshots") or []}
        for kind in _KINDS:
            listed = await self.objects.list(kind, key.namespace, verification_selector(key.uid))
            made = [o for o in listed if _made_by(o, key.uid, snapshots)]
            for obj in listed:
                if obj not in made:
                    log.warning("%s %s/%s carries %s but was not made by a verification; left alone",
                                kind, key.namespace, obj["metadata"]["name"], VERIFICATION_LABEL)
            for obj in made:
                await self.objects.delete(kind, key.namespace, obj["metadata"]["name"])
            for obj in made:
                await self.objects.wait_gone(kind, key.namespace, obj["metadata"]["name"], REMOVE_TIMEOUT)


def _made_by(obj: JSON, uid: str, snapshots: set[Any]) -> bool:
    """The object is one a verification of the group made: its label and owner reference, and
    for a claim a data source among the group's snapshots (set at creation, never changed)."""
    meta = obj.get("metadata") or {}
    if (meta.get("labels") or {}).get(VERIFICATION_LABEL) != uid:
        return False
    if not any(o.get("uid") == uid and o.get("kind") == KIND for o in meta.get("ownerReferences") or []):
        return False
    if obj.get("kind") == "PersistentVolumeClaim":
        source = (obj.get("spec") or {}).get("dataSource") or {}
        return source.get("kind") == "VolumeSnapshot" and source.get("name") in snapshots
    return True


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


def _spelled(at: datetime | None) -> str:
    return stamp(at) if at is not None else "none"
