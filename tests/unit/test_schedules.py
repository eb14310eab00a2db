"""Schedules without a cluster: ticks (DST included), catch-up, concurrency, retention, and the
reconcile pass against an in-memory GroupStore.

FakeGroupStore below is a test double for the Kubernetes API (which cannot run in a unit test): it
keeps objects in dicts, answers create with "already exists" like the API server's 409, and
records status patches and Events. Time never comes from the system clock here: every pass gets
its "now" from the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from snapgroup.api.labels import SCHEDULE_LABEL
from snapgroup.api.schedule import SCHEDULED_TIME_ANNOTATION, Retention, ScheduledSnapshotGroupSpec
from snapgroup.orchestration.scheduler import Scheduler, ScheduleRef
from snapgroup.orchestration.schedules import (
    ScheduleError,
    decide,
    expired,
    group_name,
    is_good,
    newest_good,
    parse_cadence,
    plan_tick,
    schedule_label_value,
    schedule_origin,
)
from snapgroup.ports import ScheduledGroup, StepError

BERLIN = ZoneInfo("Europe/Berlin")
NS, NAME, UID = "bleater", "nightly", "uid-nightly"
REF = ScheduleRef(NS, NAME, UID)
CREATED = datetime(2026, 3, 1, 11, 59, 30, tzinfo=UTC)

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "storage"}},
    "spec": {
        "volumeSnapshotClassName": "csi-hostpath-snapclass",
        "writers": [{"kind": "Deployment", "name": "data-writer"}],
        "services": [{
            "name": "postgres", "type": "postgresql", "pvcs": ["postgres-data"],
            "connection": {"secretRef": {"name": "postgres-credentials"}},
        }],
    },
}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def berlin(text: str) -> datetime:
    """A Berlin wall time; fold=1 picks the second occurrence of a repeated one."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN)


def ticks(schedule: str, zone: str | None, start: datetime, count: int) -> list[datetime]:
    cadence = parse_cadence(schedule, zone)
    out, moment = [], start
    for _ in range(count):
        moment = cadence.next_after(moment)
        out.append(moment)
    return out


# --- ticks ----------------------------------------------------------------------------------------


def test_five_fields_six_fields_with_seconds_last_and_macros() -> None:
    start = utc("2026-03-01T12:00:00")
    assert ticks("*/20 * * * *", None, start, 2) == [utc("2026-03-01T12:20:00"), utc("2026-03-01T12:40:00")]
    # croniter's convention: a sixth field is the seconds.
    assert ticks("*/5 * * * * 30", None, start, 2) == [utc("2026-03-01T12:00:30"), utc("2026-03-01T12:05:30")]
    assert ticks("@daily", None, start, 1) == [utc("2026-03-02T00:00:00")]
    assert ticks("@hourly", None, start, 1) == [utc("2026-03-01T13:00:00")]


def test_every_interval_ticks_on_multiples_since_the_epoch_whatever_the_zone() -> None:
    start = utc("2026-03-01T12:00:03.5")
    assert ticks("@every 10s", None, start, 3) == [
        utc("2026-03-01T12:00:10"), utc("2026-03-01T12:00:20"), utc("2026-03-01T12:00:30"),
    ]
    # The same instants for every replica and every restart, in any zone.
    assert ticks("@every 10s", "Europe/Berlin", start, 3) == ticks("@every 10s", None, start, 3)
    assert ticks("@every 1h30m", None, utc("2026-03-01T00:00:00"), 2) == [
        utc("2026-03-01T01:30:00"), utc("2026-03-01T03:00:00"),
    ]


def test_daily_time_in_the_spring_forward_gap_is_taken_when_the_clock_jumps() -> None:
    # Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that night.
    got = ticks("30 2 * * *", "Europe/Berlin", berlin("2026-03-28T12:00:00"), 3)
    assert got == [
        berlin("2026-03-29T03:00:00").astimezone(UTC),  # the first instant after the gap
        berlin("2026-03-30T02:30:00").astimezone(UTC),
        berlin("2026-03-31T02:30:00").astimezone(UTC),
    ]
    assert got == [utc("2026-03-29T01:00:00"), utc("2026-03-30T00:30:00"), utc("2026-03-31T00:30:00")]


def test_hourly_and_half_hourly_across_spring_forward_follow_real_time() -> None:
    hourly = ticks("0 * * * *", "Europe/Berlin", berlin("2026-03-29T00:30:00"), 3)
    assert hourly == [utc("2026-03-29T00:00:00"), utc("2026-03-29T01:00:00"), utc("2026-03-29T02:00:00")]
    half = ticks("*/30 * * * *", "Europe/Berlin", berlin("2026-03-29T01:10:00"), 3)
    # 01:30 CET, then 03:00 CEST (02:00 and 02:30 do not exist), then 03:30 CEST: no duplicates.
    assert half == [utc("2026-03-29T00:30:00"), utc("2026-03-29T01:00:00"), utc("2026-03-29T01:30:00")]


def test_daily_time_repeated_by_fall_back_is_taken_once() -> None:
    # Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    got = ticks("30 2 * * *", "Europe/Berlin", berlin("2026-10-24T12:00:00"), 2)
    assert got == [utc("2026-10-25T00:30:00"), utc("2026-10-26T01:30:00")]  # 02:30 CEST, then next day


def test_hourly_schedule_takes_both_occurrences_of_the_repeated_hour() -> None:
    got = ticks("0 * * * *", "Europe/Berlin", berlin("2026-10-25T00:30:00"), 4)
    # 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET: one group per real hour.
    assert got == [
        utc("2026-10-24T23:00:00"), utc("2026-10-25T00:00:00"),
        utc("2026-10-25T01:00:00"), utc("2026-10-25T02:00:00"),
    ]


@pytest.mark.parametrize(
    ("schedule", "start"),
    [("30 2 * * *", "2026-03-27T00:00:00"), ("*/30 * * * *", "2026-03-29T00:00:00"),
     ("30 2 * * *", "2026-10-23T00:00:00"), ("0 * * * *", "2026-10-24T22:00:00"),
     ("15 1-3 * * *", "2026-10-24T00:00:00")],
)
def test_newest_tick_agrees_with_next_tick_across_dst(schedule: str, start: str) -> None:
    cadence = parse_cadence(schedule, "Europe/Berlin")
    forward = ticks(schedule, "Europe/Berlin", utc(start), 12)
    for earlier, later in itertools.pairwise(forward):
        assert cadence.latest_until(later) == later
        assert cadence.latest_until(later - timedelta(seconds=1)) == earlier
    assert cadence.count_between(forward[0], forward[-1]) == len(forward) - 2


@pytest.mark.parametrize(
    ("schedule", "zone", "reason", "words"),
    [
        ("61 * * * *", None, "InvalidSchedule", "61"),
        ("0 0 31 2 *", None, "InvalidSchedule", "names no date"),
        ("every 10 seconds", None, "InvalidSchedule", "@every 10s"),
        ("* * * * * * *", None, "InvalidSchedule", "6 cron fields"),
        ("@every 1500ms", None, "InvalidSchedule", "whole number of seconds"),
        ("0 3 * * *", "Europe/Atlantis", "InvalidTimeZone", "Europe/Atlantis"),
    ],
)
def test_unusable_schedule_says_why(schedule: str, zone: str | None, reason: str, words: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_cadence(schedule, zone)
    assert caught.value.reason == reason
    assert words in caught.value.message


# --- due ticks and catch-up -------------------------------------------------------------------------


def test_after_downtime_only_the_newest_missed_tick_is_due() -> None:
    cadence = parse_cadence("*/10 * * * *", None)
    tick = plan_tick(cadence, since=utc("2026-03-01T12:00:00"), now=utc("2026-03-01T13:05:00"))
    assert tick is not None
    assert tick.at == utc("2026-03-01T13:00:00")
    assert tick.missed == 5  # 12:10 ... 12:50
    assert tick.first_missed == utc("2026-03-01T12:10:00")
    assert tick.catch_up and not tick.too_late


def test_on_time_tick_is_not_a_catch_up() -> None:
    cadence = parse_cadence("@every 10s", None)
    tick = plan_tick(cadence, since=utc("2026-03-01T12:00:00"), now=utc("2026-03-01T12:00:10.2"))
    assert tick is not None and tick.at == utc("2026-03-01T12:00:10")
    assert tick.missed == 0 and not tick.catch_up
    assert plan_tick(cadence, since=tick.at, now=utc("2026-03-01T12:00:19.9")) is None


def test_starting_deadline_turns_a_late_tick_away() -> None:
    cadence = parse_cadence("0 3 * * *", None)
    tick = plan_tick(cadence, since=utc("2026-03-01T03:00:00"), now=utc("2026-03-02T05:00:00"),
                     starting_deadline=timedelta(hours=1))
    assert tick is not None and tick.at == utc("2026-03-02T03:00:00") and tick.too_late


def test_spec_seen_for_the_first_time_since_a_change_counts_from_now() -> None:
    now = utc("2026-03-01T13:05:00")
    common = dict(created=CREATED, last_schedule=utc("2026-03-01T12:00:00"), newest_child=None, now=now)
    assert schedule_origin(generation=2, observed_generation=1, next_schedule=None, **common) == now
    # Same spec: due from the recorded next tick on, so an edit's "now" is kept across passes.
    assert schedule_origin(generation=2, observed_generation=2, next_schedule=utc("2026-03-01T13:10:00"),
                           **common) == utc("2026-03-01T13:09:59.999999")
    # A child for a tick means that tick is handled, even if the status never said so.
    assert schedule_origin(generation=1, observed_generation=1, next_schedule=utc("2026-03-01T12:10:00"),
                           created=CREATED, last_schedule=utc("2026-03-01T12:00:00"),
                           newest_child=utc("2026-03-01T12:30:00"), now=now) == utc("2026-03-01T12:30:00")


# --- concurrency and retention -----------------------------------------------------------------------


def test_concurrency_policies() -> None:
    assert decide("Forbid", []).take
    forbid = decide("Forbid", ["a"])
    assert not forbid.take and forbid.blocking == ("a",)
    replace_ = decide("Replace", ["a"])
    assert replace_.take and replace_.replace == ("a",)
    allow = decide("Allow", ["a"])
    assert allow.take and not allow.replace


def child(name: str, phase: str, at: datetime, **more: Any) -> ScheduledGroup:
    fields: dict[str, Any] = dict(
        name=name, owner_uid=UID, phase=phase, scheduled_time=at, created_at=at,
        completed_at=at + timedelta(seconds=5), deleting=False, keeps_snapshots=False,
        consistent=True if phase == "Succeeded" else None,
    )
    fields.update(more)
    return ScheduledGroup(**fields)


def history() -> list[ScheduledGroup]:
    t0 = utc("2026-03-01T00:00:00")
    phases = ["Succeeded", "Failed", "Succeeded", "Succeeded", "Failed", "Failed", "Succeeded", "Quiescing"]
    return [child(f"g{i}", phase, t0 + timedelta(hours=i)) for i, phase in enumerate(phases)]


def test_retention_counts_succeeded_and_failed_separately() -> None:
    now = utc("2026-03-01T08:00:00")
    doomed = expired(history(), Retention(succeeded=2, failed=1), now)
    assert [(e.group.name, e.why) for e in doomed] == [
        ("g0", "retention.succeeded=2"), ("g1", "retention.failed=1"),
        ("g2", "retention.succeeded=2"), ("g4", "retention.failed=1"),
    ]
    # g7 is still running: never pruned, whatever the limits.
    assert "g7" not in {e.group.name for e in expired(history(), Retention(succeeded=0, failed=0), now)}


def test_retention_by_age_spares_the_newest_success() -> None:
    groups = history()
    now = utc("2026-03-01T07:30:00")
    doomed = expired(groups, Retention(max_age="3h"), now)
    # Created before 04:30: g0..g4. Nothing else, the running g7 least of all.
    assert [e.group.name for e in doomed] == ["g0", "g1", "g2", "g3", "g4"]
    # Long after the last success, everything finished ages out but the newest success.
    late = expired(groups, Retention(max_age="1h"), utc("2026-03-02T00:00:00"))
    assert "g6" not in {e.group.name for e in late}
    assert {e.group.name for e in late} == {"g0", "g1", "g2", "g3", "g4", "g5"}


def test_only_consistent_successes_count_as_successes_for_retention() -> None:
    t0 = utc("2026-03-01T00:00:00")
    # Two good backups, then a week of a missing writer: Succeeded, but Consistent False/Unknown.
    groups = [child("good0", "Succeeded", t0), child("good1", "Succeeded", t0 + timedelta(hours=1))]
    groups += [
        child(f"bad{i}", "Succeeded", t0 + timedelta(days=1 + i), consistent=False if i % 2 else None)
        for i in range(7)
    ]
    doomed = {e.group.name: e.why for e in expired(groups, Retention(succeeded=2, failed=3), t0)}
    assert "good0" not in doomed and "good1" not in doomed
    # The inconsistent ones are counted with the failures: the 3 newest stay.
    assert doomed == {f"bad{i}": "retention.failed=3" for i in range(4)}
    assert newest_good(groups) is groups[1]
    # Past maxAge everything goes but the newest consistent success, not the newest Succeeded.
    late = {e.group.name for e in expired(groups, Retention(max_age="1h"), t0 + timedelta(days=30))}
    assert late == {g.name for g in groups} - {"good1"}


def test_an_inconsistent_success_is_never_the_last_successful_group() -> None:
    t0 = utc("2026-03-01T00:00:00")
    assert newest_good([child("bad", "Succeeded", t0, consistent=False)]) is None
    assert newest_good([child("unknown", "Succeeded", t0, consistent=None)]) is None
    assert newest_good([child("failed", "Failed", t0, consistent=True)]) is None
    assert is_good(child("good", "Succeeded", t0))


def test_the_newest_verified_group_is_never_pruned() -> None:
    t0 = utc("2026-03-01T00:00:00")
    # g0 was verified by restoring it; g1..g3 succeeded later but were not (or failed verification).
    groups = [child("g0", "Succeeded", t0, verified=True),
              child("g1", "Succeeded", t0 + timedelta(hours=1), verified=False),
              child("g2", "Succeeded", t0 + timedelta(hours=2)),
              child("g3", "Succeeded", t0 + timedelta(hours=3), verified=None),
              child("g4", "Failed", t0 + timedelta(hours=4), verified=True)]
    by_count = {e.group.name for e in expired(groups, Retention(succeeded=1), t0 + timedelta(hours=5))}
    assert by_count == {"g1", "g2"}
    late = t0 + timedelta(days=9)
    by_age = {e.group.name for e in expired(groups, Retention(max_age="1h", failed=0), late)}
    assert by_age == {"g1", "g2", "g4"}  # g3: the newest success; g0: the newest verified
    # Once a newer group is verified, the older verified one is an ordinary success again.
    groups[2] = child("g2", "Succeeded", t0 + timedelta(hours=2), verified=True)
    again = {e.group.name for e in expired(groups, Retention(succeeded=1), t0 + timedelta(hours=5))}
    assert again == {"g0", "g1"}


def test_groups_already_being_deleted_are_not_pruned_again() -> None:
    groups = [replace(g, deleting=True) if g.name == "g0" else g for g in history()]
    doomed = expired(groups, Retention(succeeded=1), utc("2026-03-02T00:00:00"))
    assert "g0" not in {e.group.name for e in doomed}


def test_child_names_are_deterministic_and_stay_dns_labels() -> None:
    at = utc("2026-03-01T12:00:10")
    assert group_name("nightly", at) == "nightly-20260301120010"
    assert group_name("nightly", at.astimezone(BERLIN)) == "nightly-20260301120010"
    long = "a-very-long-schedule-name-that-goes-on-and-on-and-on.and-on-some-more"
    name = group_name(long, at)
    assert len(name) <= 63 and name.endswith("-20260301120010") and name == group_name(long, at)
    assert name != group_name(long + "x", at)
    label = schedule_label_value(long)
    assert len(label) <= 63 and label[-1].isalnum() and schedule_label_value("nightly") == "nightly"


# --- the reconcile pass --------------------------------------------------------------------------


class FakeGroupStore:
    """In-memory GroupStore (test double): one namespace, the API server's create/delete semantics."""

    def __init__(self, spec: dict[str, Any], created: datetime = CREATED) -> None:
        self.schedule: dict[str, Any] | None = {
            "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1,
                         "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": spec,
        }
        self.groups: dict[str, dict[str, Any]] = {}
        self.deleted: list[tuple[str, bool]] = []
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.refuse: str | None = None
        """When set, create answers like a 422 with this message."""
        self.created = asyncio.Event()
        self.status_written = asyncio.Condition()

    # the port

    async def get_schedule(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.schedule)

    async def list_groups(self, namespace: str, selector: str) -> list[ScheduledGroup]:
        key, value = selector.split("=", 1)
        return [self._view(g) for g in self.groups.values() if g["metadata"]["labels"].get(key) == value]

    async def get_group(self, namespace: str, name: str) -> ScheduledGroup | None:
        return self._view(self.groups[name]) if name in self.groups else None

    async def create_group(self, namespace: str, body: dict[str, Any]) -> bool:
        if self.refuse:
            raise StepError("TemplateRejected", self.refuse)
        name = body["metadata"]["name"]
        if name in self.groups:
            return False
        self.groups[name] = copy.deepcopy(body)
        self.created.set()
        return True

    async def delete_group(self, namespace: str, name: str, *, keep_snapshots: bool) -> None:
        if self.groups.pop(name, None) is not None:
            self.deleted.append((name, keep_snapshots))

    async def patch_schedule_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        assert self.schedule is not None
        self.patches.append(copy.deepcopy(status))
        current = self.schedule.setdefault("status", {})
        for key, value in status.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = copy.deepcopy(value)
        async with self.status_written:
            self.status_written.notify_all()

    async def emit_schedule_event(self, namespace: str, name: str, uid: str, event_type: str,
                                  reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))

    # the test's hands

    def _view(self, body: dict[str, Any]) -> ScheduledGroup:
        meta, status = body["metadata"], body.get("status") or {}
        at = meta["annotations"].get(SCHEDULED_TIME_ANNOTATION)
        return ScheduledGroup(
            name=meta["name"], owner_uid=meta["ownerReferences"][0]["uid"],
            phase=status.get("phase", "Pending"),
            scheduled_time=datetime.fromisoformat(at) if at else None,
            created_at=datetime.fromisoformat(at) if at else None,
            completed_at=None, deleting=False,
            keeps_snapshots=body["spec"].get("snapshotDeletionPolicy") == "Retain",
            consistent=status.get("consistent"),
        )

    async def wait_status(self, key: str, value: Any) -> None:
        """Until a status patch has left status[key] == value."""
        async with self.status_written:
            await self.status_written.wait_for(lambda: self.status.get(key) == value)

    def finish(self, name: str, phase: str = "Succeeded", consistent: bool | None = True) -> None:
        self.groups[name]["status"] = {"phase": phase, "consistent": consistent}

    def edit_spec(self, **changes: Any) -> None:
        assert self.schedule is not None
        self.schedule["spec"].update(changes)
        self.schedule["metadata"]["generation"] += 1

    @property
    def status(self) -> dict[str, Any]:
        assert self.schedule is not None
        return dict(self.schedule.get("status") or {})

    def ready(self) -> dict[str, Any]:
        return next(c for c in self.status["conditions"] if c["type"] == "Ready")

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]


def spec(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schedule": "*/10 * * * *", "template": copy.deepcopy(TEMPLATE)}
    body.update(changes)
    return body


@pytest.fixture
def store() -> FakeGroupStore:
    return FakeGroupStore(spec())


async def test_a_tick_takes_one_group_made_from_the_template(store: FakeGroupStore) -> None:
    scheduler = Scheduler(store)
    first = await scheduler.reconcile(REF, utc("2026-03-01T11:59:45"))
    assert first.created is None and not store.groups
    assert store.status["nextScheduleTime"] == "2026-03-01T12:00:00Z"

    outcome = await scheduler.reconcile(REF, utc("2026-03-01T12:00:00.3"))
    assert outcome.created == "nightly-20260301120000"
    assert outcome.wake_at == utc("2026-03-01T12:10:00")
    body = store.groups["nightly-20260301120000"]
    assert body["kind"] == "SnapshotGroup"
    assert body["metadata"]["labels"] == {"team": "storage", SCHEDULE_LABEL: NAME}
    assert body["metadata"]["annotations"][SCHEDULED_TIME_ANNOTATION] == "2026-03-01T12:00:00Z"
    owner = body["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ScheduledSnapshotGroup", UID, True)
    assert body["spec"]["services"][0]["name"] == "postgres"
    assert body["spec"]["freezeBudget"] == "60s"  # the group's defaults, filled in
    status = store.status
    assert status["lastScheduleTime"] == "2026-03-01T12:00:00Z"
    assert status["nextScheduleTime"] == "2026-03-01T12:10:00Z"
    assert status["active"] == ["nightly-20260301120000"]
    assert store.ready()["status"] == "True" and store.ready()["reason"] == "Scheduled"
    assert "GroupCreated" in store.reasons() and "MissedSchedule" not in store.reasons()


async def test_passes_and_replicas_never_duplicate_a_tick(store: FakeGroupStore) -> None:
    now = utc("2026-03-01T12:00:01")
    await Scheduler(store).reconcile(REF, now)
    # A second replica (its own Scheduler), and a pass after a restart that lost the status patch.
    await Scheduler(store).reconcile(REF, now + timedelta(seconds=1))
    assert store.schedule is not None
    store.schedule["status"] = {}
    await Scheduler(store).reconcile(REF, now + timedelta(seconds=2))
    assert list(store.groups) == ["nightly-20260301120000"]
    assert store.reasons().count("GroupCreated") == 1


async def test_downtime_gives_one_catch_up_group_and_an_event(store: FakeGroupStore) -> None:
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    store.finish("nightly-20260301120000")
    # The operator was away from 12:05 to 13:07: 12:10 ... 13:00 passed unseen.
    outcome = await Scheduler(store).reconcile(REF, utc("2026-03-01T13:07:00"))
    assert outcome.created == "nightly-20260301130000"
    assert sorted(store.groups) == ["nightly-20260301120000", "nightly-20260301130000"]
    missed = [m for _, r, m in store.events if r == "MissedSchedule"]
    assert len(missed) == 1
    assert "5 earlier tick(s) from 2026-03-01T12:10:00Z" in missed[0]
    assert "one catch-up group nightly-20260301130000" in missed[0]
    assert store.status["lastScheduleTime"] == "2026-03-01T13:00:00Z"


async def test_starting_deadline_skips_a_stale_catch_up() -> None:
    store = FakeGroupStore(spec(startingDeadline="5m"))
    await Scheduler(store).reconcile(REF, utc("2026-03-01T12:00:01"))
    store.finish("nightly-20260301120000")
    outcome = await Scheduler(store).reconcile(REF, utc("2026-03-01T13:07:00"))
    assert outcome.created is None and outcome.skipped
    assert list(store.groups) == ["nightly-20260301120000"]
    assert any("startingDeadline" in m for _, r, m in store.events if r == "MissedSchedule")
    assert store.status["lastScheduleTime"] == "2026-03-01T13:00:00Z"


async def test_forbid_skips_the_tick_while_a_group_runs(store: FakeGroupStore) -> None:
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    outcome = await scheduler.reconcile(REF, utc("2026-03-01T12:10:01"))
    assert outcome.skipped and outcome.created is None
    assert list(store.groups) == ["nightly-20260301120000"]
    skipped = [m for t, r, m in store.events if r == "TickSkipped"]
    assert skipped and "nightly-20260301120000 still running" in skipped[0]
    assert store.status["lastScheduleTime"] == "2026-03-01T12:10:00Z"
    # Once it finished, the next tick is taken again.
    store.finish("nightly-20260301120000")
    assert (await scheduler.reconcile(REF, utc("2026-03-01T12:20:01"))).created == "nightly-20260301122000"


async def test_replace_deletes_the_running_group_first() -> None:
    store = FakeGroupStore(spec(concurrencyPolicy="Replace"))
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    outcome = await scheduler.reconcile(REF, utc("2026-03-01T12:10:01"))
    assert outcome.replaced == ("nightly-20260301120000",)
    assert list(store.groups) == ["nightly-20260301121000"]
    assert store.deleted == [("nightly-20260301120000", False)]
    assert store.status["active"] == ["nightly-20260301121000"]
    assert "GroupReplaced" in store.reasons()


async def test_allow_runs_groups_side_by_side() -> None:
    store = FakeGroupStore(spec(concurrencyPolicy="Allow"))
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    await scheduler.reconcile(REF, utc("2026-03-01T12:10:01"))
    assert store.status["active"] == ["nightly-20260301120000", "nightly-20260301121000"]


async def test_retention_prunes_finished_groups_and_names_the_limit() -> None:
    template = copy.deepcopy(TEMPLATE)
    store = FakeGroupStore(spec(retention={"succeeded": 2, "failed": 1}, template=template))
    scheduler = Scheduler(store)
    outcomes = ["Succeeded", "Failed", "Succeeded", "Failed", "Succeeded"]
    for minute, phase in zip((0, 10, 20, 30, 40), outcomes, strict=True):
        created = (await scheduler.reconcile(REF, utc(f"2026-03-01T12:{minute:02d}:01"))).created
        assert created is not None
        store.finish(created, phase)
    await scheduler.reconcile(REF, utc("2026-03-01T12:45:00"))
    # The failed 12:10 went when the failed 12:30 finished; the succeeded 12:00 when 12:40 did.
    assert sorted(name for name, _ in store.deleted) == ["nightly-20260301120000", "nightly-20260301121000"]
    assert sorted(store.groups) == [
        "nightly-20260301122000", "nightly-20260301123000", "nightly-20260301124000",
    ]
    assert store.status["lastSuccessfulGroup"] == "nightly-20260301124000"
    pruned = " ".join(m for _, r, m in store.events if r == "GroupsPruned")
    assert "nightly-20260301121000 (retention.failed=1)" in pruned
    assert "nightly-20260301120000 (retention.succeeded=2)" in pruned


async def test_inconsistent_groups_neither_become_last_successful_nor_prune_consistent_ones() -> None:
    store = FakeGroupStore(spec(retention={"succeeded": 1, "failed": 1}, template=copy.deepcopy(TEMPLATE)))
    scheduler = Scheduler(store)
    verdicts = [True, False, None, False]
    for minute, consistent in zip((0, 10, 20, 30), verdicts, strict=True):
        created = (await scheduler.reconcile(REF, utc(f"2026-03-01T12:{minute:02d}:01"))).created
        assert created is not None
        store.finish(created, "Succeeded", consistent)
    await scheduler.reconcile(REF, utc("2026-03-01T12:35:00"))
    # The one consistent group stays however many inconsistent ones follow it.
    assert "nightly-20260301120000" in store.groups
    assert store.status["lastSuccessfulGroup"] == "nightly-20260301120000"
    assert sorted(name for name, _ in store.deleted) == ["nightly-20260301121000", "nightly-20260301122000"]
    pruned = " ".join(m for _, r, m in store.events if r == "GroupsPruned")
    assert "retention.failed=1" in pruned and "retention.succeeded" not in pruned


async def test_pruning_a_retain_group_keeps_its_snapshots() -> None:
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["snapshotDeletionPolicy"] = "Retain"
    store = FakeGroupStore(spec(retention={"succeeded": 1}, template=template))
    scheduler = Scheduler(store)
    for minute in (0, 10):
        created = (await scheduler.reconcile(REF, utc(f"2026-03-01T12:{minute:02d}:01"))).created
        assert created is not None
        store.finish(created)
    await scheduler.reconcile(REF, utc("2026-03-01T12:11:00"))
    assert store.deleted == [("nightly-20260301120000", True)]
    assert any("snapshotDeletionPolicy Retain" in m for _, r, m in store.events if r == "GroupsPruned")


@pytest.mark.parametrize(
    ("changes", "reason", "words"),
    [
        ({"schedule": "61 * * * *"}, "InvalidSchedule", "61"),
        ({"timeZone": "Mars/Olympus"}, "InvalidTimeZone", "Mars/Olympus"),
        ({"template": {"spec": {"services": []}}}, "InvalidTemplate", "spec.template.spec.services"),
        ({"retention": {"maxAge": "a week"}}, "InvalidSpec", "spec.retention.maxAge"),
    ],
)
async def test_invalid_spec_is_reported_in_ready_and_takes_nothing(
    changes: dict[str, Any], reason: str, words: str
) -> None:
    store = FakeGroupStore(spec(**changes))
    scheduler = Scheduler(store)
    outcome = await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    assert outcome.wake_at is None and not store.groups
    ready = store.ready()
    assert (ready["status"], ready["reason"]) == ("False", reason)
    assert words in ready["message"]
    assert "nextScheduleTime" not in store.status
    await scheduler.reconcile(REF, utc("2026-03-01T12:10:01"))
    assert store.reasons() == [reason]  # one Event per problem, not one per pass


async def test_duplicate_service_names_in_the_template_are_an_invalid_template() -> None:
    template = copy.deepcopy(TEMPLATE)
    template["spec"]["services"].append(copy.deepcopy(template["spec"]["services"][0]))
    store = FakeGroupStore(spec(template=template))
    await Scheduler(store).reconcile(REF, utc("2026-03-01T12:00:01"))
    assert store.ready()["reason"] == "InvalidTemplate"
    assert "names must be unique" in store.ready()["message"]


async def test_template_the_api_server_refuses_stays_reported_until_fixed(store: FakeGroupStore) -> None:
    store.refuse = 'metadata.labels: Invalid value: "bad value!"'
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    assert (store.ready()["status"], store.ready()["reason"]) == ("False", "TemplateRejected")
    await scheduler.reconcile(REF, utc("2026-03-01T12:05:00"))  # no tick: still refused
    assert store.ready()["reason"] == "TemplateRejected"
    store.refuse = None
    store.edit_spec(template=copy.deepcopy(TEMPLATE))
    await scheduler.reconcile(REF, utc("2026-03-01T12:05:01"))
    assert store.ready()["status"] == "True"
    assert (await scheduler.reconcile(REF, utc("2026-03-01T12:10:01"))).created == "nightly-20260301121000"


async def test_suspend_stops_new_groups_and_resuming_does_not_catch_up(store: FakeGroupStore) -> None:
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    store.finish("nightly-20260301120000")
    store.edit_spec(suspend=True)
    outcome = await scheduler.reconcile(REF, utc("2026-03-01T12:30:01"))
    assert outcome.wake_at is None and outcome.created is None
    assert (store.ready()["status"], store.ready()["reason"]) == ("True", "Suspended")
    assert "nextScheduleTime" not in store.status
    store.edit_spec(suspend=False)
    resumed = await scheduler.reconcile(REF, utc("2026-03-01T13:05:00"))
    assert resumed.created is None  # the suspended hour is not caught up
    assert resumed.wake_at == utc("2026-03-01T13:10:00")
    assert (await scheduler.reconcile(REF, utc("2026-03-01T13:10:00"))).created == "nightly-20260301131000"
    assert "MissedSchedule" not in store.reasons()


async def test_a_new_schedule_expression_applies_from_its_next_tick(store: FakeGroupStore) -> None:
    scheduler = Scheduler(store)
    await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))
    store.finish("nightly-20260301120000")
    store.edit_spec(schedule="*/1 * * * *")
    edited = await scheduler.reconcile(REF, utc("2026-03-01T12:03:30"))
    assert edited.created is None and edited.wake_at == utc("2026-03-01T12:04:00")
    assert (await scheduler.reconcile(REF, utc("2026-03-01T12:04:00.5"))).created == "nightly-20260301120400"
    assert "MissedSchedule" not in store.reasons()


async def test_run_on_create_takes_a_group_at_once_named_after_the_creation() -> None:
    store = FakeGroupStore(spec(runOnCreate=True))
    scheduler = Scheduler(store)
    outcome = await scheduler.reconcile(REF, utc("2026-03-01T11:59:31"))
    assert outcome.created == "nightly-20260301115930"
    store.finish("nightly-20260301115930")
    assert (await scheduler.reconcile(REF, utc("2026-03-01T11:59:50"))).created is None
    assert (await scheduler.reconcile(REF, utc("2026-03-01T12:00:01"))).created == "nightly-20260301120000"


async def test_a_deleted_schedule_ends_its_pass(store: FakeGroupStore) -> None:
    store.schedule = None
    assert (await Scheduler(store).reconcile(REF, utc("2026-03-01T12:00:01"))).gone


async def test_a_group_of_the_same_name_owned_by_someone_else_is_not_adopted(store: FakeGroupStore) -> None:
    stranger = {
        "metadata": {"name": "nightly-20260301120000", "labels": {}, "annotations": {},
                     "ownerReferences": [{"uid": "someone-else"}]},
        "spec": {},
    }
    store.groups["nightly-20260301120000"] = stranger
    outcome = await Scheduler(store).reconcile(REF, utc("2026-03-01T12:00:01"))
    assert outcome.skipped and store.groups["nightly-20260301120000"] is stranger
    assert "GroupNameTaken" in store.reasons()


# --- the loop -------------------------------------------------------------------------------------


class StopFlag:
    """Stands in for kopf's daemon `stopped` flag."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, timeout: float | None = None) -> StopFlag:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        return self


class HandClock:
    """A clock the test moves; the loop's waits are bounded by what it says."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def loop_store() -> Iterator[FakeGroupStore]:
    yield FakeGroupStore(spec(schedule="0 3 * * *"))


async def test_loop_wakes_on_spec_change_and_ends_when_stopped(loop_store: FakeGroupStore) -> None:
    clock = HandClock(utc("2026-03-01T12:00:00"))
    scheduler = Scheduler(loop_store, clock=clock)
    stopped = StopFlag()
    task = asyncio.create_task(scheduler.run(REF, stopped))
    async with asyncio.timeout(10):
        await loop_store.wait_status("observedGeneration", 1)
    assert loop_store.status["nextScheduleTime"] == "2026-03-02T03:00:00Z"
    # The loop now waits for tomorrow 03:00; an edit wakes it at once.
    loop_store.edit_spec(schedule="@every 10s")
    clock.now = utc("2026-03-01T12:00:05")
    scheduler.spec_seen(UID, 2)
    async with asyncio.timeout(10):
        await loop_store.wait_status("observedGeneration", 2)
    assert loop_store.status["nextScheduleTime"] == "2026-03-01T12:00:10Z"
    stopped.event.set()
    async with asyncio.timeout(10):
        await task
    assert not loop_store.groups


async def test_loop_updates_the_status_when_a_group_finishes_between_ticks() -> None:
    store = FakeGroupStore(spec(schedule="0 3 * * *", runOnCreate=True))
    scheduler = Scheduler(store, clock=HandClock(utc("2026-03-01T12:00:00")))
    stopped = StopFlag()
    task = asyncio.create_task(scheduler.run(REF, stopped))
    async with asyncio.timeout(10):
        await store.wait_status("active", ["nightly-20260301115930"])
    store.finish("nightly-20260301115930")
    scheduler.group_changed(UID, "nightly-20260301115930", "Succeeded", deleted=False)
    async with asyncio.timeout(10):
        await store.wait_status("lastSuccessfulGroup", "nightly-20260301115930")
    assert store.status["active"] == []  # long before the next tick, tomorrow at 03:00
    stopped.event.set()
    await asyncio.wait_for(task, 10)


async def test_loop_ends_when_the_schedule_is_gone(loop_store: FakeGroupStore) -> None:
    loop_store.schedule = None
    scheduler = Scheduler(loop_store, clock=HandClock(utc("2026-03-01T12:00:00")))
    async with asyncio.timeout(10):
        await scheduler.run(REF, StopFlag())


async def test_loop_takes_the_group_when_its_tick_comes() -> None:
    store = FakeGroupStore(spec(schedule="@every 1s"), created=datetime.now(UTC))
    scheduler = Scheduler(store)  # the system clock: the first tick is at most a second away
    stopped = StopFlag()
    task = asyncio.create_task(scheduler.run(REF, stopped))
    async with asyncio.timeout(10):
        await store.created.wait()
    stopped.event.set()
    await asyncio.wait_for(task, 10)
    assert len(store.groups) >= 1


def test_schedule_spec_round_trips_with_camel_case() -> None:
    wire = ScheduledSnapshotGroupSpec.model_validate(
        spec(concurrencyPolicy="Replace", timeZone="Europe/Berlin")
    ).wire()
    assert wire["concurrencyPolicy"] == "Replace" and wire["timeZone"] == "Europe/Berlin"
    service = wire["template"]["spec"]["services"][0]
    assert service["connection"]["secretRef"]["name"] == "postgres-credentials"
