"""Property tests: generated SnapshotGroup and ScheduledSnapshotGroup specs, valid and invalid.

The model either accepts a spec or rejects it naming the field; planning an accepted spec never
crashes, whether its names and selectors match nothing or everything; every problem names a field.
The same specs meet the real API server in tests/cluster/test_spec_fuzz_cluster.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from fuzz.specs import group_spec, schedule_spec
from snapgroup.api.schedule import ScheduledSnapshotGroupSpec
from snapgroup.api.snapshotgroup import SnapshotGroupSpec
from snapgroup.hooks.builtin import BUILTIN_HOOK_TYPES
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.plan import make_plan
from snapgroup.ports import PvcInfo, SnapshotClassInfo, StepError, WorkloadInfo

assert BUILTIN_HOOK_TYPES
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def validate(model: Any, spec: dict[str, Any]) -> Any | None:
    """The parsed spec, or None after checking that every error names a field."""
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        for error in exc.errors():
            assert error["loc"], error
        return None


@FUZZ
@given(group_spec())
def test_group_specs_are_accepted_or_rejected_naming_the_field(spec: dict[str, Any]) -> None:
    parsed = validate(SnapshotGroupSpec, spec)
    if parsed is not None:
        # What the model accepts, it writes back the same (the operator re-reads its own output).
        assert SnapshotGroupSpec.model_validate(parsed.wire()) == parsed


@FUZZ
@given(schedule_spec())
def test_schedule_specs_are_accepted_or_rejected_naming_the_field(spec: dict[str, Any]) -> None:
    validate(ScheduledSnapshotGroupSpec, spec)


class World:
    """A namespace where nothing exists (everything=False) or everything does; like the API
    server, it refuses selectors that are not label selectors."""

    def __init__(self, everything: bool) -> None:
        self.everything = everything

    @staticmethod
    def _parse(selector: str) -> None:
        if not selector.isascii() or " " in selector.replace(" in (", "").replace(" notin (", ""):
            raise StepError("ApiError", f"HTTP 400: unable to parse requirement {selector!r}")

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        return PvcInfo(name, "Bound", "sc", "hostpath.csi") if self.everything else None

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        self._parse(selector)
        return [PvcInfo(f"claim-{i}", "Bound", "sc", "hostpath.csi") for i in range(3)] \
            if self.everything else []

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        if not self.everything:
            return None
        return {"uri": "postgresql://u:p@127.0.0.1:1/db", "host": "127.0.0.1", "username": "u",
                "password": "p", "endpoint": "127.0.0.1:1", "accessKey": "a", "secretKey": "s"}

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        return SnapshotClassInfo(name or "default", "hostpath.csi") if self.everything else None

    async def get_workload(self, kind: str, namespace: str, name: str) -> WorkloadInfo | None:
        return WorkloadInfo(kind, namespace, name, 1, "app=x") if self.everything else None

    async def list_workloads(self, kind: str, namespace: str, selector: str) -> list[WorkloadInfo]:
        self._parse(selector)
        return [WorkloadInfo(kind, namespace, f"w{i}", 1, "app=x") for i in range(2)] \
            if self.everything else []


class Unreachable:
    """Every database is down: the plan must say so per service, not crash."""

    async def _down(self, secret: Mapping[str, str], timeout: float, *names: str) -> Any:
        raise StepError("DatabaseUnreachable", "nothing listens there")

    postgres = mongo = object_store = _down


def plan_problems(spec: SnapshotGroupSpec, everything: bool) -> list[str]:
    ctx = HookContext(namespace="fuzz", group="g" * 63, group_uid="uid", cluster=World(everything),  # type: ignore[arg-type]
                      connectors=Unreachable())  # type: ignore[arg-type]
    plan = asyncio.run(make_plan(ctx, spec))
    asyncio.run(plan.release())
    return [p.field_path for p in plan.problems]


@FUZZ
@given(group_spec())
def test_planning_odd_specs_never_crashes_and_names_fields(spec: dict[str, Any]) -> None:
    parsed = validate(SnapshotGroupSpec, spec)
    if parsed is None:
        return
    for everything in (False, True):
        fields = plan_problems(parsed, everything)
        assert fields, "services that cannot be reached must be problems"
        assert all(f.startswith("spec.") for f in fields), fields
