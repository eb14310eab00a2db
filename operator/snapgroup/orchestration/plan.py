"""Planning: resolve and check every target of a group without touching anything."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from snapgroup.api.base import parse_duration
from snapgroup.api.snapshotgroup import HookStep, ServiceTarget, SnapshotGroupSpec
from snapgroup.hooks.registry import BoundHook, HookContext, ServiceHook, lookup
from snapgroup.orchestration.snapshots import snapshot_name
from snapgroup.orchestration.window import uncancellable
from snapgroup.ports import PlanError, StepError

WRITER_HOOK_TYPE = "scale"


@dataclass
class PlannedService:
    """A service with its resolved claims and its bound quiesce hook."""

    target: ServiceTarget
    pvcs: list[str]
    hook: ServiceHook


@dataclass
class PlannedStep:
    """A user hook from spec.hooks, bound to its targets."""

    step: HookStep
    stage: str
    hooks: list[BoundHook]


@dataclass
class Plan:
    """Everything the freeze window will touch, in order, or the problems that forbid it."""

    snapshot_class: str | None = None
    writers: list[BoundHook] = field(default_factory=list)
    services: list[PlannedService] = field(default_factory=list)
    steps: list[PlannedStep] = field(default_factory=list)
    problems: list[PlanError] = field(default_factory=list)

    @property
    def warnings(self) -> list[PlanError]:
        """Problems that do not stop the group, e.g. an unindexed lastRecord column."""
        return [w for s in self.services for w in s.hook.plan_warnings()]

    @property
    def ok(self) -> bool:
        """True when nothing stands in the way."""
        return not self.problems

    def bound_hooks(self) -> list[BoundHook]:
        """Every bound hook of the plan."""
        hooks = [*self.writers, *(s.hook for s in self.services)]
        return hooks + [h for s in self.steps for h in s.hooks]

    def targets(self) -> list[str]:
        """Exclusion keys of everything the window would touch: workloads, claims, servers."""
        keys = {key for hook in self.bound_hooks() for key in hook.targets()}
        keys.update(f"pvc:{pvc}" for s in self.services for pvc in s.pvcs)
        return sorted(keys)

    async def release(self) -> None:
        """Close every session the plan opened."""
        await asyncio.gather(*(h.release() for h in self.bound_hooks()), return_exceptions=True)


async def _bind(
    ctx: HookContext, type_name: str, params: BaseModel | dict[str, Any], path: str, type_path: str
) -> list[BoundHook]:
    hook_type = lookup(type_name)
    if hook_type is None:
        raise PlanError("UnknownHookType", type_path, f"no hook type {type_name!r} is registered")
    if isinstance(params, hook_type.params_model):
        parsed: Any = params  # already validated as part of the spec
    else:
        raw = params.model_dump(by_alias=True, exclude_none=True) if isinstance(params, BaseModel) else params
        try:
            parsed = hook_type.parse(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PlanError("InvalidHookParams", f"{path}.{where}" if where else path, first["msg"]) from exc
    try:
        return await hook_type.plan(ctx, parsed, path)
    except StepError as exc:
        # E.g. the API server refusing a selector that is no label selector: the hook's entry.
        raise PlanError(exc.reason, path, exc.message) from None


async def _resolve_pvcs(
    ctx: HookContext, target: ServiceTarget, path: str, driver: str | None
) -> list[str]:
    problems: list[PlanError] = []
    if target.pvcs is not None:
        names = list(target.pvcs)
        claims = await asyncio.gather(*(ctx.cluster.get_pvc(ctx.namespace, n) for n in names))
        found = []
        for i, (name, claim) in enumerate(zip(names, claims, strict=True)):
            if claim is None:
                problems.append(PlanError(
                    "PVCNotFound", f"{path}.pvcs[{i}]",
                    f"PersistentVolumeClaim {name!r} does not exist in namespace {ctx.namespace}"))
            else:
                found.append(claim)
    else:
        assert target.pvc_selector is not None
        query = target.pvc_selector.as_query()
        try:
            found = await ctx.cluster.list_pvcs(ctx.namespace, query) if query else []
        except StepError as exc:
            raise PlanError(exc.reason, f"{path}.pvcSelector", exc.message) from None
        if not found:
            problems.append(PlanError(
                "PVCNotFound", f"{path}.pvcSelector",
                f"no PersistentVolumeClaim in {ctx.namespace} matches {query or 'an empty selector'}"))
    for claim in found:
        if claim.phase != "Bound":
            problems.append(PlanError(
                "PVCNotBound", f"{path}.pvcs",
                f"PersistentVolumeClaim {claim.name!r} is {claim.phase}, not Bound"))
        elif driver is not None and claim.driver != driver:
            problems.append(PlanError(
                "DriverMismatch", f"{path}.pvcs",
                f"PersistentVolumeClaim {claim.name!r} is provisioned by {claim.driver}, "
                f"but the VolumeSnapshotClass uses {driver}"))
    if problems:
        raise ExceptionGroup("pvc problems", problems)
    return [c.name for c in found]


async def _snapshot_names_free(
    ctx: HookContext, service: str, pvcs: list[str], path: str, attempt: int
) -> None:
    """Refuse names of VolumeSnapshots that exist and belong to somebody else: never adopted."""
    names = [snapshot_name(ctx.group, service, pvc, attempt) for pvc in pvcs]
    found = await asyncio.gather(*(ctx.cluster.get_snapshot(ctx.namespace, n) for n in names))
    taken = [n for n, info in zip(names, found, strict=True)
             if info is not None and info.owner_uid != ctx.group_uid]
    if taken:
        raise PlanError(
            "SnapshotNameTaken", f"{path}.name",
            f"VolumeSnapshot {', '.join(taken)} already exists in {ctx.namespace} and belongs to "
            "another SnapshotGroup (or to nobody); it is left alone: delete it, or name this "
            "group or service differently")


async def make_plan(ctx: HookContext, spec: SnapshotGroupSpec, attempt: int = 1) -> Plan:
    """Check everything the group needs; collect every problem rather than stop at the first.

    Nothing is changed: claims, Secrets, workloads and the snapshot class are read, database
    sessions are opened and tested. On problems, the sessions already opened are released; so
    they are when planning ends early (an API error, a cancellation): no session outlives it.
    """
    plan = Plan()
    opened: list[BoundHook] = []

    async def bind(type_name: str, params: BaseModel | dict[str, Any], path: str,
                   type_path: str) -> list[BoundHook]:
        hooks = await _bind(ctx, type_name, params, path, type_path)
        opened.extend(hooks)
        return hooks

    snapshot_class = await ctx.cluster.get_snapshot_class(spec.volume_snapshot_class_name)
    driver: str | None = None
    if snapshot_class is None:
        wanted = spec.volume_snapshot_class_name
        plan.problems.append(PlanError(
            "VolumeSnapshotClassNotFound", "spec.volumeSnapshotClassName",
            f"VolumeSnapshotClass {wanted!r} does not exist" if wanted
            else "no VolumeSnapshotClass is marked as the cluster default; name one"))
    else:
        plan.snapshot_class, driver = snapshot_class.name, snapshot_class.driver

    async def writer(i: int) -> list[BoundHook]:
        return await bind(WRITER_HOOK_TYPE, spec.writers[i], f"spec.writers[{i}]",
                          f"spec.writers[{i}]")

    async def service(i: int) -> PlannedService:
        target, path = spec.services[i], f"spec.services[{i}]"
        pvcs, hooks = await asyncio.gather(
            _resolve_pvcs(ctx, target, path, driver),
            bind(target.type, target, path, f"{path}.type"),
            return_exceptions=True,
        )
        failures = [r for r in (pvcs, hooks) if isinstance(r, Exception)]
        if failures:
            if isinstance(hooks, list):
                await asyncio.gather(*(h.release() for h in hooks), return_exceptions=True)
            raise ExceptionGroup("service problems", failures)
        assert isinstance(pvcs, list) and isinstance(hooks, list)
        try:
            await _snapshot_names_free(ctx, target.name, pvcs, path, attempt)
        except PlanError:
            await asyncio.gather(*(h.release() for h in hooks), return_exceptions=True)
            raise
        hook = hooks[0]
        assert isinstance(hook, ServiceHook)
        return PlannedService(target=target, pvcs=pvcs, hook=hook)

    async def step(stage: str, i: int, item: HookStep) -> PlannedStep:
        path = f"spec.hooks.{stage.lower()}[{i}]"
        hooks = await bind(item.type, item.params, f"{path}.params", f"{path}.type")
        for hook in hooks:
            hook.apply_timeout = parse_duration(item.timeout).total_seconds()
        return PlannedStep(step=item, stage=stage, hooks=hooks)

    writers = asyncio.gather(*(writer(i) for i in range(len(spec.writers))),
                             return_exceptions=True)
    services = asyncio.gather(*(service(i) for i in range(len(spec.services))),
                              return_exceptions=True)
    steps = asyncio.gather(
        *(step("Pre", i, s) for i, s in enumerate(spec.hooks.pre)),
        *(step("Post", i, s) for i, s in enumerate(spec.hooks.post)),
        return_exceptions=True,
    )
    try:
        for bound in await writers:
            if isinstance(bound, BaseException):
                plan.problems.extend(_problems(bound))
            else:
                plan.writers.extend(bound)
        for planned in await services:
            if isinstance(planned, BaseException):
                plan.problems.extend(_problems(planned))
            else:
                plan.services.append(planned)
        for step_result in await steps:
            if isinstance(step_result, BaseException):
                plan.problems.extend(_problems(step_result))
            else:
                plan.steps.append(step_result)
    except BaseException:
        # An error that is no plan problem, or a cancellation: stop the binds still running (so
        # none opens a session afterwards), then close every session opened so far.
        for pending in (writers, services, steps):
            pending.cancel()
        await uncancellable(_release_opened(opened, writers, services, steps))
        raise
    plan.problems.extend(_shared_claims(plan))
    if plan.problems:
        await plan.release()
    return plan


async def _release_opened(opened: list[BoundHook], *binds: asyncio.Future[Any]) -> None:
    await asyncio.gather(*binds, return_exceptions=True)
    await asyncio.gather(*(h.release() for h in opened), return_exceptions=True)


def _shared_claims(plan: Plan) -> list[PlanError]:
    seen: dict[str, str] = {}
    problems = []
    for svc in plan.services:
        for pvc in svc.pvcs:
            if pvc in seen:
                problems.append(PlanError(
                    "PVCSharedByServices", "spec.services",
                    f"PersistentVolumeClaim {pvc!r} belongs to both {seen[pvc]} and {svc.target.name}"))
            seen[pvc] = svc.target.name
    return problems


def _problems(exc: BaseException) -> list[PlanError]:
    """Flatten what planning raised into PlanErrors; anything else is a bug and propagates."""
    if isinstance(exc, PlanError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [p for inner in exc.exceptions for p in _problems(inner)]
    raise exc
