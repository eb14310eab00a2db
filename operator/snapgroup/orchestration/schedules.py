"""The decisions of a schedule, free of I/O and of the clock: "now" is always an argument.

- `parse_cadence` turns ``spec.schedule`` and ``spec.timeZone`` into a `Cadence`, the ticks it
  fires at (cron via croniter, computed in the time zone; ``@every`` intervals in plain UTC).
- `schedule_origin` and `plan_tick` say which tick, if any, is due now and how many were missed.
- `decide` applies the concurrency policy; `expired` applies the retention; `is_good` says which
  groups count as a success (Succeeded and Consistent=True).
- `group_name`, `schedule_label_value` and `group_manifest` make the children, deterministically:
  two replicas or a restarted operator compute the same name for the same tick.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from snapgroup.api import API_VERSION
from snapgroup.api.base import parse_duration
from snapgroup.api.labels import SCHEDULE_LABEL, VERIFY_REQUESTED, label_value
from snapgroup.api.schedule import KIND as SCHEDULE_KIND
from snapgroup.api.schedule import (
    SCHEDULE_PATTERN,
    SCHEDULED_TIME_ANNOTATION,
    ConcurrencyPolicy,
    Retention,
    SnapshotGroupTemplate,
)
from snapgroup.api.snapshotgroup import KIND as GROUP_KIND
from snapgroup.api.snapshotgroup import Phase
from snapgroup.ports import ScheduledGroup, StepError

Clock = Callable[[], datetime]
"""Where "now" comes from: the system clock in the operator, a hand-moved one in tests."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LATE_TOLERANCE = timedelta(seconds=60)
"""A tick taken later than this after its time counts as a catch-up and says so in an Event."""
MISSED_COUNT_LIMIT = 1000
"""Missed ticks are counted up to this many (a per-second schedule down for a week has more)."""
NAME_LIMIT = 63
"""Child names stay DNS labels: they become label values on the groups' VolumeSnapshots."""

_SEARCH_LIMIT = 10_000  # iterations; a schedule that fires this rarely in a row is rejected
_STAMP = "%Y%m%d%H%M%S"
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = "@every "
_DIGEST = 8


def system_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


class ScheduleError(StepError, ValueError):
    """spec.schedule or spec.timeZone cannot be used; reason is CamelCase, message for a person."""


# --- ticks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cadence:
    """The ticks of a schedule. Every tick is a whole second; all results are in UTC."""

    expression: str
    """The cron expression (macros expanded); empty for an interval."""
    zone: ZoneInfo
    interval: timedelta | None = None
    """For ``@every``: ticks at whole multiples of it since the Unix epoch."""
    every_hour: bool = False
    """The hour field is ``*``: in an hour repeated by a DST change both occurrences are ticks."""

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after moment."""
        if self.interval is not None:
            step = _micros(self.interval)
            return EPOCH + timedelta(microseconds=(_micros(moment - EPOCH) // step + 1) * step)
        ticks = croniter(self.expression, moment.astimezone(self.zone), second_at_beginning=False)
        for _ in range(_SEARCH_LIMIT):
            candidate: datetime = ticks.get_next(datetime)
            # croniter maps a time inside a spring-forward gap to the end of the gap, so the same
            # instant can come twice; only later instants count.
            if candidate > moment and not self._repeated(candidate):
                return candidate.astimezone(UTC)
        raise ScheduleError("InvalidSchedule", f"{self.expression!r} does not fire")

    def latest_until(self, moment: datetime) -> datetime:
        """The newest tick at or before moment."""
        if self.interval is not None:
            step = _micros(self.interval)
            return EPOCH + timedelta(microseconds=(_micros(moment - EPOCH) // step) * step)
        # croniter's get_prev is strictly before its start: start one second past moment.
        start = moment.replace(microsecond=0) + timedelta(seconds=1)
        ticks = croniter(self.expression, start.astimezone(self.zone), second_at_beginning=False)
        for _ in range(_SEARCH_LIMIT):
            candidate: datetime = ticks.get_prev(datetime)
            if candidate <= moment and not self._repeated(candidate):
                return candidate.astimezone(UTC)
        raise ScheduleError("InvalidSchedule", f"{self.expression!r} does not fire")

    def count_between(self, after: datetime, before: datetime, limit: int = MISSED_COUNT_LIMIT) -> int:
        """How many ticks lie strictly between after and before, counting up to limit."""
        if before <= after:
            return 0
        if self.interval is not None:
            first = self.next_after(after)
            if first >= before:
                return 0
            return min(limit, (_micros(before - first) - 1) // _micros(self.interval) + 1)
        count, tick = 0, self.next_after(after)
        while tick < before and count < limit:
            count += 1
            tick = self.next_after(tick)
        return count

    def _repeated(self, tick: datetime) -> bool:
        """The tick is the second occurrence of a wall time that a fall-back change repeats.

        Cron reads wall-clock times, so 02:30 names two instants on the night clocks go back; a
        daily 02:30 group is taken once (at the first), an hourly one at both (both are hours).
        """
        if self.every_hour:
            return False
        wall = tick.astimezone(self.zone).replace(tzinfo=None)
        first = wall.replace(tzinfo=self.zone, fold=0).utcoffset()
        second = wall.replace(tzinfo=self.zone, fold=1).utcoffset()
        return first != second and tick.utcoffset() == second


def _micros(delta: timedelta) -> int:
    return delta // timedelta(microseconds=1)


def parse_cadence(schedule: str, time_zone: str | None = None) -> Cadence:
    """Read spec.schedule (in spec.timeZone, UTC when None); raise ScheduleError when unusable.

    Cron has 5 fields, or 6 with seconds as the sixth (croniter's convention); the macros
    @hourly ... @yearly; or ``@every <duration>`` in whole seconds, aligned to the Unix epoch.
    """
    try:
        zone = ZoneInfo(time_zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            "InvalidTimeZone",
            f"spec.timeZone {time_zone!r} is not a known IANA time zone (e.g. Europe/Berlin, UTC)",
        ) from None
    text = schedule.strip()
    if not re.fullmatch(SCHEDULE_PATTERN, text):
        raise ScheduleError(
            "InvalidSchedule",
            f"spec.schedule {schedule!r} is neither 5 or 6 cron fields, a macro such as @daily, "
            "nor '@every <duration>' such as '@every 10s'",
        )
    if text.startswith(_EVERY):
        return Cadence("", zone, interval=_interval(text.removeprefix(_EVERY)))
    expression = _MACROS.get(text, text)
    fields = expression.split()
    try:
        cadence = Cadence(expression, zone, every_hour=fields[1] in ("*", "*/1"))
        cadence.next_after(datetime(2000, 1, 1, tzinfo=UTC))  # croniter checks values lazily
    except CroniterBadDateError:
        raise ScheduleError(
            "InvalidSchedule", f"spec.schedule {schedule!r} names no date that exists"
        ) from None
    except (CroniterBadCronError, CroniterError, ValueError) as exc:
        raise ScheduleError("InvalidSchedule", f"spec.schedule {schedule!r}: {exc}") from None
    return cadence


def _interval(text: str) -> timedelta:
    interval = parse_duration(text)
    if interval < timedelta(seconds=1) or interval % timedelta(seconds=1):
        raise ScheduleError(
            "InvalidSchedule",
            f"spec.schedule '@every {text}': the interval must be a whole number of seconds, "
            "at least 1s (group names have a resolution of one second)",
        )
    return interval


# --- which tick is due --------------------------------------------------------------------------


def schedule_origin(
    *,
    created: datetime,
    generation: int,
    observed_generation: int | None,
    last_schedule: datetime | None,
    next_schedule: datetime | None,
    newest_child: datetime | None,
    now: datetime,
) -> datetime:
    """The moment after which ticks are due: everything up to it has been handled.

    What exists wins over what the status remembers: a child for a tick means the tick was
    handled even if the status patch after its creation was lost. A spec the operator has not
    seen yet counts from now (an edit takes effect from the next tick; unsuspending does not
    catch up the suspended time); otherwise ticks are due from the recorded next tick, which was
    computed from this same spec.
    """
    handled = max((t for t in (last_schedule, newest_child) if t is not None), default=None)
    if observed_generation is None:
        return max(created, handled) if handled is not None else created
    if observed_generation != generation:
        return max(now, handled) if handled is not None else now
    if next_schedule is not None:
        before_next = next_schedule - timedelta(microseconds=1)
        return max(before_next, handled) if handled is not None else before_next
    return handled if handled is not None else now


@dataclass(frozen=True)
class Tick:
    """The tick to act on now, and what was passed over to get to it."""

    at: datetime
    """Its scheduled time, which also names the group."""
    missed: int
    """Older due ticks passed over without a group (counted up to MISSED_COUNT_LIMIT)."""
    first_missed: datetime | None
    """The oldest of them."""
    late_by: timedelta
    """How long after its scheduled time it is handled."""
    too_late: bool
    """Past the starting deadline: handled without taking a group."""

    @property
    def catch_up(self) -> bool:
        """Ticks were missed or this one is late: worth an Event."""
        return self.missed > 0 or self.late_by > LATE_TOLERANCE


def plan_tick(
    cadence: Cadence, *, since: datetime, now: datetime, starting_deadline: timedelta | None = None
) -> Tick | None:
    """The newest tick in (since, now], or None when none is due.

    Only the newest is ever taken: after any downtime at most one catch-up group.
    """
    if now <= since:
        return None
    at = cadence.latest_until(now)
    if at <= since:
        return None
    missed = cadence.count_between(since, at)
    late_by = now - at
    return Tick(
        at=at,
        missed=missed,
        first_missed=cadence.next_after(since) if missed else None,
        late_by=late_by,
        too_late=starting_deadline is not None and late_by > starting_deadline,
    )


# --- concurrency --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do at a due tick, given the groups of the schedule still running."""

    take: bool
    """Create the tick's group."""
    replace: tuple[str, ...] = ()
    """Running groups to delete first (Replace)."""
    blocking: tuple[str, ...] = ()
    """Running groups that made the tick be skipped (Forbid)."""


def decide(policy: ConcurrencyPolicy, running: Sequence[str]) -> Decision:
    """Apply spec.concurrencyPolicy to the running groups of the schedule."""
    if not running or policy == "Allow":
        return Decision(take=True)
    if policy == "Replace":
        return Decision(take=True, replace=tuple(running))
    return Decision(take=False, blocking=tuple(running))


def is_running(group: ScheduledGroup) -> bool:
    """Not finished and not being deleted."""
    return not group.deleting and group.phase not in (Phase.SUCCEEDED.value, Phase.FAILED.value)


def taken_at(group: ScheduledGroup) -> datetime:
    """The time a group stands for: its tick, else its creation; orders groups oldest first."""
    return group.scheduled_time or group.created_at or EPOCH


# --- retention ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expired:
    """A finished group the retention no longer keeps."""

    group: ScheduledGroup
    why: str
    """Which limit, in words: ``retention.succeeded=3`` or ``retention.maxAge=168h``."""


def is_good(group: ScheduledGroup) -> bool:
    """A backup worth keeping: Succeeded and judged Consistent=True.

    A group that succeeded with Consistent False or Unknown holds snapshots that do not describe
    one moment (or nobody could tell); for schedules it is not a success.
    """
    return group.phase == Phase.SUCCEEDED.value and group.consistent is True


def newest_good(groups: Sequence[ScheduledGroup]) -> ScheduledGroup | None:
    """The newest good group (`is_good`): the schedule's lastSuccessfulGroup."""
    return max(
        (g for g in groups if is_good(g)),
        key=lambda g: (taken_at(g), g.name), default=None,
    )


def expired(groups: Sequence[ScheduledGroup], retention: Retention, now: datetime) -> list[Expired]:
    """Finished groups to prune, oldest first.

    Good groups (`is_good`: Succeeded and Consistent=True) count against retention.succeeded;
    every other finished group (Failed, or Succeeded but not proven consistent) counts against
    retention.failed, so inconsistent groups can never push a consistent one out. The count keeps
    the newest. maxAge prunes groups created before now - maxAge, except the newest good group.
    The newest Verified group (restored and read back) is never pruned, whatever the limits.
    Running groups and groups already being deleted are never selected.
    """
    finished = sorted(
        (g for g in groups if not g.deleting and not is_running(g)),
        key=lambda g: (taken_at(g), g.name),
        reverse=True,
    )
    verdicts: dict[str, str] = {}
    for good, keep, field in ((True, retention.succeeded, "succeeded"),
                              (False, retention.failed, "failed")):
        if keep is None:
            continue
        of_kind = [g for g in finished if is_good(g) == good]
        for group in of_kind[keep:]:
            verdicts[group.name] = f"retention.{field}={keep}"
    if retention.max_age is not None:
        cutoff = now - parse_duration(retention.max_age)
        spared = newest_good(finished)
        for group in finished:
            if group is not spared and (group.created_at or taken_at(group)) < cutoff:
                verdicts.setdefault(group.name, f"retention.maxAge={retention.max_age}")
    verified = next((g for g in finished if g.verified is True and is_good(g)), None)
    if verified is not None:
        verdicts.pop(verified.name, None)
    return [Expired(g, verdicts[g.name]) for g in reversed(finished) if g.name in verdicts]


# --- children -----------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]


def group_name(schedule: str, at: datetime) -> str:
    """``<schedule>-<UTC yyyymmddhhmmss>``; a long schedule name is cut and a hash of it added.

    The same schedule and tick always give the same name, so creating it twice is harmless.
    """
    stamp = at.astimezone(UTC).strftime(_STAMP)
    name = f"{schedule}-{stamp}"
    if len(name) <= NAME_LIMIT:
        return name
    head = schedule[: NAME_LIMIT - len(stamp) - _DIGEST - 2].rstrip("-.")
    return f"{head}-{_digest(schedule)}-{stamp}"


def schedule_label_value(schedule: str) -> str:
    """The schedule's name as a label value (63 characters at most)."""
    return label_value(schedule)


def children_selector(schedule: str) -> str:
    """Label selector of every group a schedule created."""
    return f"{SCHEDULE_LABEL}={schedule_label_value(schedule)}"


def rfc3339(moment: datetime) -> str:
    """UTC, second resolution, as Kubernetes writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def group_manifest(
    *, namespace: str, schedule: str, schedule_uid: str, template: SnapshotGroupTemplate, at: datetime
) -> dict[str, Any]:
    """The SnapshotGroup for one tick: the template, labelled, annotated and owned by the schedule."""
    labels = {**(template.metadata.labels or {}), SCHEDULE_LABEL: schedule_label_value(schedule)}
    # A template cannot ask for verifications by annotation (its CRD refuses it; a template stored
    # before that rule is not obeyed either): the admission policy checks spec.verify for that.
    annotations = {k: v for k, v in (template.metadata.annotations or {}).items() if k != VERIFY_REQUESTED}
    annotations[SCHEDULED_TIME_ANNOTATION] = rfc3339(at)
    return {
        "apiVersion": API_VERSION,
        "kind": GROUP_KIND,
        "metadata": {
            "name": group_name(schedule, at),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": SCHEDULE_KIND, "name": schedule,
                "uid": schedule_uid, "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": template.spec.wire(),
    }
