"""Running schedules: one reconcile loop per ScheduledSnapshotGroup, over the GroupStore port.

`Scheduler.reconcile` is level-triggered: it reads the schedule and the groups it owns, and acts on
what exists (a group already there for the due tick means the tick was handled, whoever created
it). `Scheduler.run` is the loop around it: it waits until the next tick, wakes early when the
spec changes or one of the schedule's groups finishes, and ends when the schedule is deleted or
the operator stops. The decisions themselves live in `snapgroup.orchestration.schedules`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import ValidationError

from snapgroup.api.base import Condition, ConditionStatus, parse_duration
from snapgroup.api.schedule import (
    ScheduledSnapshotGroupSpec,
    ScheduledSnapshotGroupStatus,
)
from snapgroup.api.snapshotgroup import Phase
from snapgroup.orchestration.schedules import (
    Cadence,
    Clock,
    ScheduleError,
    Tick,
    children_selector,
    decide,
    expired,
    group_manifest,
    group_name,
    is_running,
    newest_good,
    parse_cadence,
    plan_tick,
    rfc3339,
    schedule_origin,
    system_clock,
    taken_at,
)
from snapgroup.ports import EventType, GroupStore, ScheduledGroup, StepError

log = logging.getLogger("snapgroup.schedules")

READY = "Ready"
MAX_NAP = 300.0
"""While waiting for a tick, the wall clock is read again at least this often (it may jump)."""
RETRY_DELAYS = (5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds before retrying a pass that failed (the API server unreachable, say), growing."""
_SPEC_FIELDS = {"schedule": "InvalidSchedule", "timeZone": "InvalidTimeZone", "template": "InvalidTemplate"}
_TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)


@dataclass(frozen=True)
class ScheduleRef:
    """Identity of one ScheduledSnapshotGroup."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Pass:
    """What one reconcile did, and when the next one is needed."""

    gone: bool = False
    """The schedule no longer exists (or is being deleted): the loop ends."""
    wake_at: datetime | None = None
    """The next tick; None while nothing is scheduled (suspended, invalid spec)."""
    created: str | None = None
    """The group taken in this pass."""
    skipped: bool = False
    """A due tick was handled without a group (concurrency policy, deadline, name taken)."""
    replaced: tuple[str, ...] = ()
    pruned: tuple[str, ...] = ()


class StopSignal(Protocol):
    """Tells a loop to end: true once set (kopf's daemon ``stopped`` flag is one)."""

    def __bool__(self) -> bool:
        """True once the loop must end."""
        ...

    def wait(self, timeout: float | None = None) -> Awaitable[object]:
        """Return once set, or after timeout seconds."""
        ...


def parse_spec(spec: Mapping[str, Any]) -> tuple[ScheduledSnapshotGroupSpec, Cadence]:
    """The spec and its ticks; ScheduleError with InvalidSchedule, InvalidTimeZone, InvalidTemplate
    or InvalidSpec naming the first field in error."""
    try:
        parsed = ScheduledSnapshotGroupSpec.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        reason = _SPEC_FIELDS.get(str(loc[0]) if loc else "", "InvalidSpec")
        where = ".".join(str(p) for p in loc)
        raise ScheduleError(reason, f"spec.{where}: {first['msg']}") from None
    return parsed, parse_cadence(parsed.schedule, parsed.time_zone)


@dataclass
class _Draft:
    """What a pass has seen and done so far, turned into the new status at its end."""

    ref: ScheduleRef
    old: ScheduledSnapshotGroupStatus
    children: list[ScheduledGroup]
    last: datetime | None
    events: list[tuple[EventType, str, str]] = field(default_factory=list)
    created: str | None = None
    skipped: bool = False
    replaced: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    rejected: ScheduleError | None = None

    def running(self) -> list[ScheduledGroup]:
        return [g for g in self.children if is_running(g)]

    def mark_deleting(self, names: Sequence[str]) -> None:
        self.children = [replace(g, deleting=True) if g.name in names else g for g in self.children]

    def handled(self, at: datetime) -> None:
        self.last = at if self.last is None else max(self.last, at)


class Scheduler:
    """Every schedule of the operator: their loops, and what wakes them early."""

    def __init__(self, store: GroupStore, clock: Clock = system_clock) -> None:
        self.store = store
        self.clock = clock
        self._wakes: dict[str, asyncio.Event] = {}
        self._generations: dict[str, int] = {}
        self._finished: dict[str, set[str]] = {}

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, ref: ScheduleRef, stopped: StopSignal) -> None:
        """Reconcile the schedule at each tick until it is deleted or stopped is set."""
        wake = asyncio.Event()
        self._wakes[ref.uid] = wake
        failures = 0
        try:
            while not stopped:
                wake.clear()  # before the pass: a change seen during it wakes the next one
                try:
                    outcome = await self.reconcile(ref)
                except Exception as exc:  # whatever failed, the schedule must keep its loop
                    delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                    failures += 1
                    await self._report_failure(ref, exc, delay)
                    wake_at: datetime | None = self.clock() + timedelta(seconds=delay)
                else:
                    failures = 0
                    if outcome.gone:
                        return
                    wake_at = outcome.wake_at
                await self._pause(wake_at, wake, stopped)
        finally:
            if self._wakes.get(ref.uid) is wake:
                del self._wakes[ref.uid]
                self._generations.pop(ref.uid, None)
                self._finished.pop(ref.uid, None)

    async def _pause(self, until: datetime | None, wake: asyncio.Event, stopped: StopSignal) -> None:
        """Wait until the given time (forever when None), a wake-up, or the stop signal."""
        while not stopped and not wake.is_set():
            nap = MAX_NAP
            if until is not None:
                left = (until - self.clock()).total_seconds()
                if left <= 0:
                    return
                nap = min(left, MAX_NAP)
            woken = asyncio.ensure_future(wake.wait())
            halted = asyncio.ensure_future(stopped.wait(nap))
            try:
                await asyncio.wait({woken, halted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woken.cancel()
                halted.cancel()

    async def _report_failure(self, ref: ScheduleRef, exc: Exception, delay: float) -> None:
        if isinstance(exc, StepError):
            reason, message = exc.reason, exc.message
            log.warning("%s/%s: %s: %s", ref.namespace, ref.name, reason, message)
        else:
            reason, message = "ScheduleFailed", f"{type(exc).__name__}: {exc}"
            log.exception("%s/%s: unexpected failure", ref.namespace, ref.name)
        await self._event(ref, "Warning", reason, f"{message}; trying again in {delay:g}s")

    def notify(self, uid: str) -> None:
        """Wake a schedule's loop now (no-op when it has none in this process)."""
        wake = self._wakes.get(uid)
        if wake is not None:
            wake.set()

    def spec_seen(self, uid: str, generation: int) -> None:
        """The schedule object changed: wake its loop if the spec did (the status is the loop's)."""
        known = self._generations.get(uid)
        if known is not None and known != generation:
            self.notify(uid)

    def group_changed(self, owner_uid: str | None, name: str, phase: str | None, deleted: bool) -> None:
        """A group of a schedule changed: wake the schedule once it finished (to prune and update
        its status) or when it vanished before finishing."""
        if owner_uid is None or owner_uid not in self._wakes:
            return  # no loop here: its first pass will see the group anyway
        finished = self._finished.setdefault(owner_uid, set())
        if deleted:
            if name in finished:
                finished.discard(name)  # a pruned group: its schedule knows already
                return
        elif phase not in _TERMINAL or name in finished:
            return
        else:
            finished.add(name)
        self.notify(owner_uid)

    # -- one pass ----------------------------------------------------------------------------

    async def reconcile(self, ref: ScheduleRef, now: datetime | None = None) -> Pass:
        """Take the due tick's group if the policy allows, prune, and write the status."""
        now = now or self.clock()
        obj = await self.store.get_schedule(ref.namespace, ref.name)
        meta = (obj or {}).get("metadata") or {}
        if obj is None or meta.get("uid") != ref.uid or meta.get("deletionTimestamp"):
            return Pass(gone=True)
        generation = int(meta.get("generation") or 1)
        self._generations[ref.uid] = generation
        raw_status = dict(obj.get("status") or {})
        old = _read_status(raw_status)
        children = [
            g for g in await self.store.list_groups(ref.namespace, children_selector(ref.name))
            if g.owner_uid == ref.uid  # a namesake's leftovers carry the label too
        ]
        draft = _Draft(ref, old, children, old.last_schedule_time)
        try:
            spec, cadence = parse_spec(obj.get("spec") or {})
        except ScheduleError as exc:
            await self._finish(draft, raw_status, generation, None, ("False", exc.reason, exc.message))
            return Pass()

        if not spec.suspend:
            created = _time(meta.get("creationTimestamp")) or now
            if spec.run_on_create and old.last_schedule_time is None and not children:
                # Named after the creation time, so every replica names it alike; it also covers
                # any tick missed since (at most one group on first sight).
                at = created.replace(microsecond=0)
                tick = plan_tick(cadence, since=created, now=now)
                await self._take(draft, spec, at, catch_up=None)
                draft.handled(tick.at if tick is not None else at)
            else:
                since = schedule_origin(
                    created=created, generation=generation,
                    observed_generation=old.observed_generation,
                    last_schedule=old.last_schedule_time, next_schedule=old.next_schedule_time,
                    newest_child=max((taken_at(g) for g in children), default=None), now=now,
                )
                deadline = parse_duration(spec.starting_deadline) if spec.starting_deadline else None
                tick = plan_tick(cadence, since=since, now=now, starting_deadline=deadline)
                if tick is not None:
                    await self._act(draft, spec, tick)

        await self._prune(draft, spec, now)
        next_time = None if spec.suspend else cadence.next_after(now)
        ready = _ready(spec, cadence, next_time, draft, old, generation)
        await self._finish(draft, raw_status, generation, next_time, ready)
        return Pass(
            wake_at=next_time, created=draft.created, skipped=draft.skipped,
            replaced=tuple(draft.replaced), pruned=tuple(draft.pruned),
        )

    async def _act(self, draft: _Draft, spec: ScheduledSnapshotGroupSpec, tick: Tick) -> None:
        """Handle a due tick: take its group, or say why not."""
        draft.handled(tick.at)
        name = group_name(draft.ref.name, tick.at)
        if any(g.name == name for g in draft.children):
            return  # taken already: by another replica, or before a restart
        if tick.too_late:
            draft.skipped = True
            draft.events.append((
                "Warning", "MissedSchedule",
                f"{_missed_text(tick)}; that is past spec.startingDeadline ({spec.starting_deadline}), "
                "so no group was taken for it",
            ))
            return
        decision = decide(spec.concurrency_policy, [g.name for g in draft.running()])
        if not decision.take:
            draft.skipped = True
            draft.events.append((
                "Warning", "TickSkipped",
                f"tick {rfc3339(tick.at)} skipped: {', '.join(decision.blocking)} still running "
                "and spec.concurrencyPolicy is Forbid",
            ))
            return
        for victim in decision.replace:
            group = next(g for g in draft.children if g.name == victim)
            await self.store.delete_group(
                draft.ref.namespace, victim, keep_snapshots=group.keeps_snapshots
            )
            draft.replaced.append(victim)
            draft.events.append((
                "Normal", "GroupReplaced",
                f"deleted {victim}, still running, to take {name} (spec.concurrencyPolicy is Replace)",
            ))
        draft.mark_deleting(decision.replace)
        await self._take(draft, spec, tick.at, catch_up=tick if tick.catch_up else None)

    async def _take(
        self, draft: _Draft, spec: ScheduledSnapshotGroupSpec, at: datetime, catch_up: Tick | None
    ) -> None:
        """Create the group for one tick; 409 means another replica or an earlier run took it."""
        ref = draft.ref
        body = group_manifest(
            namespace=ref.namespace, schedule=ref.name, schedule_uid=ref.uid,
            template=spec.template, at=at,
        )
        name = body["metadata"]["name"]
        try:
            created = await self.store.create_group(ref.namespace, body)
        except StepError as exc:
            if exc.reason != "TemplateRejected":
                raise
            draft.skipped = True
            draft.rejected = ScheduleError(exc.reason, exc.message)
            draft.events.append(("Warning", exc.reason, f"tick {rfc3339(at)}: {exc.message}"))
            return
        if not created:
            existing = await self.store.get_group(ref.namespace, name)
            if existing is None or existing.owner_uid != ref.uid:
                draft.skipped = True
                draft.events.append((
                    "Warning", "GroupNameTaken",
                    f"tick {rfc3339(at)} skipped: SnapshotGroup {name} exists and does not belong "
                    "to this schedule; delete or rename it",
                ))
                return
            draft.children.append(existing)
            return
        draft.created = name
        draft.children.append(ScheduledGroup(
            name=name, owner_uid=ref.uid, phase=Phase.PENDING.value, scheduled_time=at,
            created_at=None, completed_at=None, deleting=False,
            keeps_snapshots=spec.template.spec.snapshot_deletion_policy == "Retain",
        ))
        if catch_up is not None:
            draft.events.append((
                "Warning", "MissedSchedule",
                f"{_missed_text(catch_up)}; took one catch-up group {name} for {rfc3339(at)}",
            ))
        draft.events.append(("Normal", "GroupCreated", f"took SnapshotGroup {name} for {rfc3339(at)}"))

    async def _prune(self, draft: _Draft, spec: ScheduledSnapshotGroupSpec, now: datetime) -> None:
        """Delete the finished groups the retention no longer keeps."""
        doomed = expired(draft.children, spec.retention, now)
        for item in doomed:
            await self.store.delete_group(
                draft.ref.namespace, item.group.name, keep_snapshots=item.group.keeps_snapshots
            )
        if not doomed:
            return
        draft.pruned = [item.group.name for item in doomed]
        draft.mark_deleting(draft.pruned)
        words = [
            f"{item.group.name} ({item.why}"
            + ("; its VolumeSnapshots are kept: snapshotDeletionPolicy Retain" if item.group.keeps_snapshots
               else "") + ")"
            for item in doomed
        ]
        draft.events.append(("Normal", "GroupsPruned", "pruned " + ", ".join(words)))

    async def _finish(
        self, draft: _Draft, raw_status: dict[str, Any], generation: int, next_time: datetime | None,
        ready: tuple[ConditionStatus, str, str],
    ) -> None:
        """Write the new status if it differs, then the pass's Events."""
        old = draft.old
        status, reason, message = ready
        now = self.clock()
        previous = next((c for c in old.conditions if c.type == READY), None)
        condition = Condition(
            type=READY, status=status, reason=reason, message=message,
            last_transition_time=(
                previous.last_transition_time
                if previous is not None and previous.status == status else now
            ),
            observed_generation=generation,
        )
        good = newest_good(draft.children)
        new = ScheduledSnapshotGroupStatus(
            observed_generation=generation,
            last_schedule_time=draft.last,
            next_schedule_time=next_time,
            last_successful_group=good.name if good else old.last_successful_group,
            last_successful_time=(
                good.completed_at if good else old.last_successful_time
            ),
            active=sorted(g.name for g in draft.running()),
            conditions=[
                *[c for c in old.conditions if c.type != READY], condition,
            ],
        )
        wire = new.wire()
        if wire != old.wire() or not set(raw_status) <= set(wire):
            # A merge patch: null removes what the new status no longer has.
            patch: dict[str, Any] = {key: wire.get(key) for key in set(raw_status) | set(wire)}
            await self.store.patch_schedule_status(draft.ref.namespace, draft.ref.name, patch)
        announced = any(event_reason == reason for _, event_reason, _ in draft.events)
        if status == "False" and not announced and (
            previous is None or previous.status != "False" or previous.reason != reason
            or previous.observed_generation != generation
        ):
            # Once per problem, not at every pass.
            draft.events.append(("Warning", reason, message))
        for event_type, event_reason, event_message in draft.events:
            await self._event(draft.ref, event_type, event_reason, event_message)

    async def _event(self, ref: ScheduleRef, event_type: EventType, reason: str, message: str) -> None:
        log.info("%s/%s %s: %s", ref.namespace, ref.name, reason, message)
        try:
            await self.store.emit_schedule_event(
                ref.namespace, ref.name, ref.uid, event_type, reason, message
            )
        except Exception as exc:  # an Event lost is a log line, never a failed pass
            log.warning("event %s for %s/%s not recorded: %s", reason, ref.namespace, ref.name, exc)


def _ready(
    spec: ScheduledSnapshotGroupSpec, cadence: Cadence, next_time: datetime | None, draft: _Draft,
    old: ScheduledSnapshotGroupStatus, generation: int,
) -> tuple[ConditionStatus, str, str]:
    """The Ready condition after a pass over a valid spec."""
    if draft.rejected is not None:
        return "False", draft.rejected.reason, draft.rejected.message
    previous = next((c for c in old.conditions if c.type == READY), None)
    if (draft.created is None and previous is not None and previous.reason == "TemplateRejected"
            and previous.observed_generation == generation):
        # The same template was refused at its last tick; only a new group or a new spec clears it.
        return "False", previous.reason, previous.message
    if spec.suspend:
        return "True", "Suspended", "spec.suspend is true: no groups are taken until it is false"
    assert next_time is not None
    message = f"next tick at {rfc3339(next_time)}"
    if str(cadence.zone) != "UTC":
        message += f" ({next_time.astimezone(cadence.zone):%Y-%m-%d %H:%M:%S} {cadence.zone})"
    return "True", "Scheduled", message


def _missed_text(tick: Tick) -> str:
    parts = []
    if tick.missed:
        count = f"{tick.missed}" + ("+" if tick.missed >= 1000 else "")
        first = rfc3339(tick.first_missed) if tick.first_missed else "?"
        parts.append(f"{count} earlier tick(s) from {first} on were missed")
    parts.append(f"tick {rfc3339(tick.at)} came {_duration(tick.late_by)} late")
    return "; ".join(parts) + " (the operator was not running or could not reach the API server)"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n) or "0s"


def _read_status(raw: Mapping[str, Any]) -> ScheduledSnapshotGroupStatus:
    """The stored status; one that does not parse (edited by hand, say) counts as empty."""
    try:
        return ScheduledSnapshotGroupStatus.model_validate(raw)
    except ValidationError:
        log.warning("ignoring a status that does not parse: %s", sorted(raw))
        return ScheduledSnapshotGroupStatus()


def _time(text: Any) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(str(text))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
