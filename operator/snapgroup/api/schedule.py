"""ScheduledSnapshotGroup: a SnapshotGroup taken from a template at every tick, old ones pruned."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, ConfigDict, Field

from snapgroup.api import GROUP
from snapgroup.api.base import ApiModel, Condition, Duration
from snapgroup.api.labels import SCHEDULE_LABEL, VERIFY_REQUESTED
from snapgroup.api.snapshotgroup import SnapshotGroupSpec

KIND = "ScheduledSnapshotGroup"
PLURAL = "scheduledsnapshotgroups"

SCHEDULED_TIME_ANNOTATION = f"{GROUP}/scheduled-time"
"""On each scheduled SnapshotGroup: the tick it was taken for (RFC 3339, UTC)."""

CRON_MACROS = ("yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")
_CRON_FIELD = r"[0-9A-Za-z*?/,#-]+"
SCHEDULE_PATTERN = (
    rf"^(@({'|'.join(CRON_MACROS)})"
    r"|@every ([0-9]+(\.[0-9]+)?(ms|s|m|h))+"
    rf"|{_CRON_FIELD}( +{_CRON_FIELD}){{4,5}})$"
)
"""Five or six cron fields, a macro, or ``@every <duration>``; croniter checks the fields' values."""
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"

ConcurrencyPolicy = Literal["Forbid", "Replace", "Allow"]


def _known_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin or UTC"
        ) from None
    return name


TimeZoneName = Annotated[
    str,
    Field(min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN,
          json_schema_extra={"example": "Europe/Berlin"}),
    AfterValidator(_known_time_zone),
]


class GroupTemplateMetadata(ApiModel):
    """Labels and annotations every SnapshotGroup of the schedule gets."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!has(self.labels) || !('{SCHEDULE_LABEL}' in self.labels)",
                 "message": f"{SCHEDULE_LABEL} is set by the operator; remove it from the template"},
                {"rule": f"!has(self.annotations) || !('{VERIFY_REQUESTED}' in self.annotations)",
                 "message": f"{VERIFY_REQUESTED} asks for one verification of one group; for every "
                            "group of the schedule set spec.template.spec.verify: Restore"},
            ]
        }
    )

    labels: dict[str, str] | None = None
    """Labels of each group, besides the `snapgroup.dev/schedule` label the operator adds."""
    annotations: dict[str, str] | None = None
    """Annotations of each group, besides `snapgroup.dev/scheduled-time`."""


class SnapshotGroupTemplateSpec(SnapshotGroupSpec):
    """What each SnapshotGroup of the schedule snapshots: the spec of a SnapshotGroup.

    Unlike a group's own spec it may be edited; an edit applies to the groups taken after it.
    """

    # A group's spec is immutable (a CEL transition rule); the template's must not be, so the
    # rule is not inherited.
    model_config = ConfigDict(json_schema_extra=None)


class SnapshotGroupTemplate(ApiModel):
    """The SnapshotGroup to take at each tick."""

    metadata: GroupTemplateMetadata = Field(default_factory=GroupTemplateMetadata)
    """Labels and annotations of each group."""
    spec: SnapshotGroupTemplateSpec
    """Spec of each group, as in a SnapshotGroup. Unlike a group's own spec it may be edited;
    an edit applies to the groups taken after it."""


class Retention(ApiModel):
    """Which finished groups to keep. Groups still running are never pruned.

    A pruned group's VolumeSnapshots are deleted with it, unless the template's
    snapshotDeletionPolicy is Retain. Unset limits do not prune anything.
    """

    succeeded: int | None = Field(default=None, ge=0)
    """Keep this many of the newest good groups (Succeeded and Consistent=True); older ones are
    pruned."""
    failed: int | None = Field(default=None, ge=0)
    """Keep this many of the newest other finished groups (Failed, or Succeeded without
    Consistent=True); older ones are pruned. They never count against `succeeded`."""
    max_age: Duration | None = None
    """Prune finished groups created longer ago than this (e.g. 168h), except the newest good
    group (Succeeded and Consistent=True), so a schedule that stopped succeeding still keeps its
    last good snapshots."""


class ScheduledSnapshotGroupSpec(ApiModel):
    """When to take a SnapshotGroup, what it looks like, and how many to keep.

    The operator never writes the spec (whoever applies it, a GitOps tool say, owns it), only the
    status; a change takes effect from the next tick on.
    """

    schedule: str = Field(
        min_length=1, max_length=256, pattern=SCHEDULE_PATTERN,
        json_schema_extra={"example": "0 3 * * *"},
    )
    """When to take a group. Standard cron with 5 fields (minute hour day-of-month month
    day-of-week), or 6 fields where the sixth is seconds (croniter's convention: `*/5 * * * * 30`
    is second 30 of every fifth minute); macros @hourly, @daily (@midnight), @weekly, @monthly,
    @yearly (@annually); or `@every <duration>` (e.g. `@every 10s`, `@every 1h30m`), whose ticks
    fall on whole multiples of the interval since 1970-01-01T00:00:00Z, whatever the time zone.
    Day-of-month and day-of-week combine with OR when both are restricted, as in cron."""
    time_zone: TimeZoneName | None = None
    """IANA time zone the cron fields are read in (e.g. Europe/Berlin); UTC when empty. Across a
    daylight-saving change a time that does not exist is taken when the clock jumps past it, and
    a time that occurs twice is taken once (at its first occurrence) unless the hour field is `*`,
    where both occurrences are real hours."""
    suspend: bool = False
    """No new groups while true; pruning goes on. Times passed while suspended are not caught up."""
    concurrency_policy: ConcurrencyPolicy = "Forbid"
    """What to do at a tick while an earlier group of this schedule is still running. Forbid:
    skip the tick. Replace: delete the running group (it thaws at once) and take the new one.
    Allow: take the new one as well."""
    starting_deadline: Duration | None = None
    """How late a tick may still be taken, e.g. after the operator was not running. Without it a
    missed tick is always caught up; either way at most one group is taken for all the ticks
    missed."""
    run_on_create: bool = False
    """Take a group at once when the schedule is created (or, if it is suspended or invalid then,
    as soon as it can take one), without waiting for the first tick. It is named after the
    schedule's creation time."""
    retention: Retention = Field(default_factory=Retention)
    """Which finished groups to keep; groups still running are never pruned. A pruned group's
    VolumeSnapshots are deleted with it unless the template's snapshotDeletionPolicy is Retain.
    Without limits nothing is pruned."""
    template: SnapshotGroupTemplate
    """The SnapshotGroup to take at each tick."""


class ScheduledSnapshotGroupStatus(ApiModel):
    """What the schedule did last and will do next."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    last_schedule_time: datetime | None = None
    """The newest tick handled: a group was taken for it, or it was skipped by the concurrency
    policy or the starting deadline."""
    next_schedule_time: datetime | None = None
    """The next tick; empty while suspended or while the spec is invalid."""
    last_successful_group: str | None = None
    """Name of the newest group that Succeeded with Consistent=True."""
    last_successful_time: datetime | None = None
    """When that group completed."""
    active: list[str] = Field(default_factory=list)
    """Groups of this schedule still running."""
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready: True while the schedule is valid and taking groups (reason Scheduled or Suspended);
    False with reason InvalidSchedule, InvalidTimeZone, InvalidTemplate or TemplateRejected."""
