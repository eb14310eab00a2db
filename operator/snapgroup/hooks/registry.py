"""The hook registry: named hook types, each with a params model, an apply step that returns its
undo record, and an undo step that takes it.

A hook type is planned first (no side effects) into a bound hook; the orchestration journals the
bound hook's intent, applies it, journals the undo record, and always undoes what was applied.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from snapgroup.ports import Cluster, Connectors, PlanError

UndoRecord = dict[str, Any]
ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass
class WaitClock:
    """Wall-clock intervals spent waiting on others (pods to go, the CSI driver to cut).

    The freeze window minus these is the operator's own share of it.
    """

    intervals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @asynccontextmanager
    async def waiting(self, on: str) -> AsyncIterator[None]:
        """Count the body as time spent waiting on `on`."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.intervals.setdefault(on, []).append((start, time.monotonic()))

    def seconds(self, on: str | None = None) -> float:
        """Length of the union of the intervals (of one kind, or of all): overlaps count once."""
        spans = sorted(
            span for kind, found in self.intervals.items() if on is None or kind == on for span in found
        )
        total, end = 0.0, float("-inf")
        for start, stop in spans:
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total


@dataclass
class HookContext:
    """What a hook may use: the group's identity and the outside world's ports.

    Shared by every hook of one group run; the deadline is set when the freeze window opens.
    """

    namespace: str
    group: str
    group_uid: str
    cluster: Cluster
    connectors: Connectors
    deadline: float = float("inf")
    """Monotonic time by which the freeze window must be closed."""
    waits: WaitClock = field(default_factory=WaitClock)
    """Where hooks and the protocol account for time spent waiting on others."""
    operator_id: str = "snapgroup"
    """Identity of the operator process running the group (pod name), for Lease holders."""
    server_lease_namespace: str | None = None
    """Where database servers' exclusion Leases live: the operator's namespace, shared by the
    groups of every namespace (None: the group's own namespace)."""

    @property
    def qualified(self) -> str:
        """``<namespace>/<group>/<uid>``: the group, as written on what it isolates or quiesces."""
        return f"{self.namespace}/{self.group}/{self.group_uid}"

    @property
    def session_name(self) -> str:
        """How the group's database sessions introduce themselves (PostgreSQL application_name),
        so a session left behind can be found on the server and closed."""
        return f"snapgroup:{self.group_uid}"


class BoundHook(ABC):
    """A hook planned against real targets, ready to apply."""

    key: str
    """Journal key, unique within the group, e.g. ``writer:Deployment/data-writer``."""
    type: str
    """Registered hook type name."""

    apply_timeout: float | None = None
    """Longest time one apply (and one undo) may take; None: bounded by the freeze budget only."""

    def intent(self) -> UndoRecord:
        """What the undo needs, as far as known before acting; journaled before apply."""
        return {}

    def targets(self) -> list[str]:
        """Exclusion keys of what this hook touches (``workload:Kind/name``, ``server:...``):
        two groups never hold the same key at once."""
        return []

    def quiesce_record(self) -> UndoRecord | None:
        """What a repair needs if the group vanishes while this hook may be applied, kept on the
        exclusion Lease of the hook's server (its first target); None: nothing to keep there."""
        return None

    @abstractmethod
    async def apply(self) -> UndoRecord:
        """Perform the side effect; return the complete undo record."""

    @abstractmethod
    async def undo(self, record: UndoRecord) -> str:
        """Undo the side effect described by record; return what was done, in words."""

    async def release(self) -> None:  # noqa: B027 - optional for hooks without sessions
        """Release connections held by the hook; safe to call more than once."""


class ServiceHook(BoundHook):
    """A bound hook of a stateful service: also reads the newest record and reports evidence."""

    @abstractmethod
    async def newest_record(self) -> datetime | None:
        """Newest record timestamp in the service, read while it is quiesced."""

    def evidence(self) -> dict[str, str]:
        """Type-specific proof of quiesce for the status (LSNs, lock counts)."""
        return {}

    async def keep_with_snapshot(self) -> dict[str, str]:
        """After the thaw: annotations for the service's snapshots that a restore needs."""
        return {}

    def plan_warnings(self) -> list[PlanError]:
        """What the plan found worth a warning but no reason to stop."""
        return []


class HookType(ABC, Generic[ParamsT]):
    """A kind of hook; subclasses register themselves with `register`."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]

    def parse(self, params: dict[str, Any]) -> ParamsT:
        """Validate raw params with the type's model."""
        return self.params_model.model_validate(params)  # type: ignore[return-value]

    @abstractmethod
    async def plan(self, ctx: HookContext, params: ParamsT, path: str) -> list[BoundHook]:
        """Resolve targets and check access without touching anything.

        Raises PlanError naming the offending field; path is where params sit in the spec,
        e.g. ``spec.services[0]``.
        """

    @abstractmethod
    async def recover(
        self, ctx: HookContext, key: str, record: UndoRecord, side_effect_done: bool
    ) -> str:
        """Undo a journaled step after the operator lost its in-memory state.

        side_effect_done is False when the journal says the step was only being applied: the
        side effect may or may not have happened.
        """


class DuplicateHookType(Exception):
    """Two hook types registered under one name."""


_REGISTRY: dict[str, HookType[Any]] = {}

HookTypeT = TypeVar("HookTypeT", bound=type[HookType[Any]])


def register(cls: HookTypeT) -> HookTypeT:
    """Class decorator: register one instance of a hook type under its name, loudly once."""
    if cls.name in _REGISTRY:
        raise DuplicateHookType(f"hook type {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def lookup(name: str) -> HookType[Any] | None:
    """The registered hook type of that name, or None."""
    return _REGISTRY.get(name)


def registered() -> list[str]:
    """Names of every registered hook type."""
    return sorted(_REGISTRY)


