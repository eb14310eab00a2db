"""Steps both kinds of restore take: waits bounded by the run's deadline, many at once, readiness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")
JSON = dict[str, Any]


class RestoreFailed(Exception):
    """A step of the restore failed after objects were created."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def now() -> str:
    """The time for a status field."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, status: str, reason: str, message: str) -> JSON:
    """A status condition, as of now."""
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": now()}


async def all_at_once(steps: Iterable[Awaitable[T]]) -> list[T]:
    """Run steps at once; when one fails, the others are cancelled and awaited before the error
    goes on, so nothing lands after the clean-up that follows."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(_awaited(step)) for step in steps]
    return [task.result() for task in tasks]


async def first_error(step: Awaitable[T]) -> T:
    """The step's result; of several errors raised at once (by `all_at_once`), the first."""
    try:
        return await step
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from group


async def _awaited(step: Awaitable[T]) -> T:
    return await step


def time_left(deadline: float) -> float:
    """Seconds a wait may take: until shortly before the run's own deadline."""
    remaining = max(0.0, deadline - time.monotonic())
    return remaining - min(1.0, remaining / 10)


def is_bound(pvc: JSON) -> bool:
    """The claim is bound to a volume."""
    return (pvc.get("status") or {}).get("phase") == "Bound"


def is_ready(workload: JSON) -> bool:
    """Every replica of the workload's current generation is ready (zero replicas never is)."""
    wanted = int((workload.get("spec") or {}).get("replicas", 1))
    status = workload.get("status") or {}
    return (wanted > 0 and int(status.get("readyReplicas") or 0) >= wanted
            and int(status.get("observedGeneration") or 0) >= int(workload["metadata"].get("generation", 1)))


def pod_ready(pod: JSON) -> bool:
    """The pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])
