"""A freeze window as a saga: every side effect is registered for undo before it starts, and one
thaw undoes whatever started, whatever stopped the window.

Whatever ends a step early (an exception, a timeout, the budget, a deletion, a shutdown's
cancellation) leaves its effects "possibly applied": they are already registered, so the thaw
undoes them, and every undo tolerates "it never happened". The thaw attempts every undo even when
journal writes fail (the journal catches up afterwards), and it reports as undone only what the
undo itself checked; anything else is named as still held, and the safety net keeps repairing it
from what the world shows (workload annotations, quiesce records on Leases).

Snapshot taking, restore and verification each open a window of their own through this class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from snapgroup import failpoints, metrics
from snapgroup.api.snapshotgroup import HookState
from snapgroup.hooks.registry import BoundHook, HookContext, UndoRecord
from snapgroup.orchestration.exclusion import holder_of, lease_of
from snapgroup.orchestration.journal import Journal, now
from snapgroup.ports import StepError

log = logging.getLogger("snapgroup.window")

T = TypeVar("T")

UNDO_BACKOFF = (0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0)
"""Pauses between attempts of one undo: about 26 s in all, enough to ride out an API server
restart; what is still held after it is reported and left to the safety net, which keeps
repairing from the world's state."""
UNDO_CALL_TIMEOUT = 30.0
"""Longest one undo attempt may take when the hook sets no timeout of its own."""


@dataclass
class Effect:
    """One hook's side effect in a window: registered before it starts."""

    hook: BoundHook
    stage: str
    record: UndoRecord
    """The intent until apply returns, then the full undo record."""
    started: bool = False
    """apply was entered: from here on the side effect may have happened."""
    applied: bool = False
    """apply returned: the side effect is known to have happened."""
    undone: bool = False
    """The undo ran and checked the effect is gone (or never happened)."""
    outcome: str = ""
    """What the undo did, or why the effect is still held."""


@dataclass
class Timings:
    """Where the freeze window went, for the benchmark and the logs."""

    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str, seconds: float) -> None:
        """Add seconds to a step."""
        self.marks[step] = self.marks.get(step, 0.0) + seconds


class Window:
    """The effects of one freeze window, in the order their stages started."""

    def __init__(self, ctx: HookContext, journal: Journal, timings: Timings | None = None) -> None:
        self.ctx = ctx
        self.journal = journal
        self.timings = timings or Timings()
        self.effects: list[Effect] = []
        self._stages: list[str] = []

    # -- applying -------------------------------------------------------------------------

    async def apply_stage(self, name: str, hooks: Sequence[BoundHook], tolerate: bool = False) -> None:
        """Apply hooks together; every one is registered for undo before anything happens.

        A hook that fails stays registered (it may have half-happened). Unless tolerate, the
        first failure raises StepError after all of the stage's hooks have returned.
        """
        if not hooks:
            return
        j = self.journal
        t0 = time.monotonic()
        effects = [Effect(hook, name, hook.intent()) for hook in hooks]
        self.effects.extend(effects)  # registered for undo: from here on the thaw covers them
        self._stages.append(name)
        for effect in effects:
            j.mark(effect.hook.key, effect.hook.type, "Pre", HookState.APPLYING, undo=effect.record)
            metrics.ISOLATED.started(self.ctx.namespace, effect.hook.targets())
        # Write-ahead: the intent is durable (journal, and the quiesce records that outlive the
        # group) before any side effect starts.
        await _all(j.flush(), *(self._write_quiesce_record(e) for e in effects))
        results = await asyncio.gather(*(self._apply(e) for e in effects), return_exceptions=True)
        errors: list[tuple[BoundHook, BaseException]] = []
        for effect, result in zip(effects, results, strict=True):
            hook = effect.hook
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                message = _describe_error(result)
                j.mark(hook.key, hook.type, "Pre", HookState.FAILED, message=message)
                errors.append((hook, result))
            else:
                j.mark(hook.key, hook.type, "Pre", HookState.APPLIED, message="applied",
                       undo=effect.record)
                j.event("Normal", "HookApplied", f"{hook.key} applied")
        await j.flush()
        self.timings.mark(name.split(":")[0], time.monotonic() - t0)
        if errors and not tolerate:
            hook, exc = errors[0]
            if isinstance(exc, StepError):
                raise StepError(exc.reason, f"{hook.key}: {exc.message}")
            raise StepError("Timeout" if isinstance(exc, TimeoutError) else "HookFailed",
                            f"{hook.key}: {_describe_error(exc)}")

    async def _apply(self, effect: Effect) -> None:
        hook = effect.hook
        t0 = time.monotonic()
        await failpoints.reached(f"before:{hook.key}")
        effect.started = True
        try:
            async with asyncio.timeout(hook.apply_timeout):
                record = await hook.apply()
        except TimeoutError:
            if hook.apply_timeout is None:
                raise
            raise StepError("HookTimeout", f"did not finish within its timeout of "
                            f"{hook.apply_timeout:g}s") from None
        finally:
            metrics.HOOK_SECONDS.labels(hook.type, "apply").observe(time.monotonic() - t0)
        effect.record, effect.applied = record, True
        await failpoints.reached(f"apply:{hook.key}")

    # -- thawing --------------------------------------------------------------------------

    async def thaw(self) -> list[Effect]:
        """Undo every registered effect, stages in reverse; returns the effects still held.

        Never raises and never stops early: each undo is retried within bounds, and a journal
        write that fails is logged and caught up by the next one.
        """
        for stage in reversed(self._stages):
            pending = [e for e in self.effects if e.stage == stage and not e.undone]
            await asyncio.gather(*(self._undo(e) for e in reversed(pending)))
            await self._flush_quietly()
        # Bookkeeping, not safety: the records of what was resumed go once everything is.
        await asyncio.gather(*(self._clear_quiesce_record(e) for e in self.effects if e.undone))
        return self.held()

    def held(self) -> list[Effect]:
        """Effects not (yet) checked undone."""
        return [e for e in self.effects if not e.undone]

    async def _undo(self, effect: Effect) -> None:
        hook, j = effect.hook, self.journal
        if not effect.started:
            # Registered, but its apply never began (an earlier step or the journal write
            # failed first): nothing can have happened.
            effect.undone, effect.outcome = True, "never started"
            metrics.ISOLATED.ended(self.ctx.namespace, hook.targets())
            j.mark(hook.key, hook.type, "Post", HookState.UNDONE, message="never started")
            return
        t0 = time.monotonic()
        text = ""
        for pause in (*UNDO_BACKOFF, None):
            try:
                async with asyncio.timeout(hook.apply_timeout or UNDO_CALL_TIMEOUT):
                    message = await hook.undo(effect.record)
            except Exception as exc:
                text = _describe_error(exc)
                if pause is None:
                    break
                await asyncio.sleep(pause)  # back off before retrying the undo
                continue
            effect.undone, effect.outcome = True, message
            metrics.ISOLATED.ended(self.ctx.namespace, hook.targets())
            await failpoints.reached(f"undo:{hook.key}")
            j.mark(hook.key, hook.type, "Post", HookState.UNDONE, message=message)
            j.event("Normal", "HookUndone", f"{hook.key}: {message}")
            break
        metrics.HOOK_SECONDS.labels(hook.type, "undo").observe(time.monotonic() - t0)
        if not effect.undone:
            effect.outcome = f"undo failed after {len(UNDO_BACKOFF) + 1} attempts: {text}"
            j.mark(hook.key, hook.type, "Post", HookState.FAILED, message=effect.outcome)
            j.event("Warning", "UndoFailed", f"{hook.key}: {text}; the safety net keeps repairing it")

    async def _flush_quietly(self) -> None:
        try:
            await self.journal.flush()
        except Exception as exc:  # the thaw goes on; the next write carries everything
            log.warning("%s: journal not written during the thaw (%s); thawing goes on",
                        self.ctx.qualified, _describe_error(exc))

    # -- quiesce records on the servers' Leases -------------------------------------------

    async def _write_quiesce_record(self, effect: Effect) -> None:
        hook = effect.hook
        record = hook.quiesce_record()
        targets = hook.targets()
        if record is None or not targets:
            return
        remaining = max(self.ctx.deadline - time.monotonic(), 0.0)
        deadline = now() + timedelta(seconds=remaining) if remaining != float("inf") else None
        body: dict[str, Any] = {
            "group": self.ctx.qualified, "key": hook.key, "type": hook.type, "record": record,
            "since": now().isoformat(),
        }
        if deadline is not None:
            body["deadline"] = deadline.isoformat()
        await self.ctx.cluster.set_lease_record(
            *lease_of(self.ctx, targets[0]), holder_of(self.ctx), body)

    async def _clear_quiesce_record(self, effect: Effect) -> None:
        targets = effect.hook.targets()
        if effect.hook.quiesce_record() is None or not targets:
            return
        try:
            await self.ctx.cluster.set_lease_record(
                *lease_of(self.ctx, targets[0]), holder_of(self.ctx), None)
        except Exception as exc:  # the safety net finds the record, sees the group done, clears it
            log.warning("%s: quiesce record of %s not cleared (%s)", self.ctx.qualified,
                        effect.hook.key, _describe_error(exc))


def summarize_thaw(held: Sequence[Effect]) -> str:
    """One sentence on the thaw, true to what was checked."""
    if not held:
        return "everything it applied was undone and checked"
    parts = "; ".join(f"{e.hook.key} ({e.outcome or 'not undone'})" for e in held)
    return f"still held: {parts}; the safety net keeps repairing it"


async def uncancellable(awaitable: Awaitable[T]) -> T:
    """Run to the end even if the caller is cancelled meanwhile (then re-raise the cancel)."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


async def _all(*steps: Awaitable[Any]) -> None:
    """Await every step, even when one fails; then raise the first failure."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, StepError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
