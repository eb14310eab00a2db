"""The freeze-window protocol against in-memory fakes of the ports (no network).

FakeCluster and the Fake* hook types below are test doubles: they record what the protocol asked
for, in order, so ordering, fail-closed and undo-always can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from snapgroup.api.labels import GROUP_UID_LABEL, lease_name
from snapgroup.api.snapshotgroup import (
    HookState,
    Phase,
    ServiceTarget,
    SnapshotGroupSpec,
    SnapshotGroupStatus,
    WriterTarget,
)
from snapgroup.hooks import registry
from snapgroup.hooks.registry import BoundHook, HookContext, HookType, ServiceHook, UndoRecord
from snapgroup.orchestration.groups import GroupRunner
from snapgroup.orchestration.journal import GroupRef
from snapgroup.ports import (
    LeaseRecord,
    PlanError,
    PvcInfo,
    SnapshotClassInfo,
    SnapshotInfo,
    StepError,
)

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
DRIVER = "hostpath.csi.snapgroup.dev"


class FakeCluster:
    """In-memory stand-in for the Cluster port; every call lands in `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.pvcs = {n: PvcInfo(n, "Bound", "sc", DRIVER) for n in ("pg-data", "mongo-data")}
        self.snapshot_class: SnapshotClassInfo | None = SnapshotClassInfo("snapclass", DRIVER)
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.cut_time = T0
        self.hang_groups: set[str] = set()
        """Groups (by uid) whose cut never happens until let_cut is set."""
        self.records: dict[str, dict[str, Any]] = {}
        """Quiesce records on Leases, by Lease name."""
        self.cutting = asyncio.Event()
        self.let_cut = asyncio.Event()
        self.leases: dict[str, str] = {}
        self.lease_changed = asyncio.Condition()
        self.by_group: dict[str, list[dict[str, Any]]] = {}
        self.waiting = asyncio.Event()
        """Set when a group reports that it waits for another one."""
        self.patches: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.annotate_fails = False

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        return self.pvcs.get(name)

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        return []

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        return self.snapshot_class

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> None:
        self.log.append(f"create {body['metadata']['name']}")
        self.snapshots[body["metadata"]["name"]] = body

    async def get_snapshot(self, namespace: str, name: str) -> SnapshotInfo | None:
        body = self.snapshots.get(name)
        return None if body is None else self._info(name, body)

    @staticmethod
    def _info(name: str, body: dict[str, Any]) -> SnapshotInfo:
        labels = body.get("metadata", {}).get("labels", {})
        return SnapshotInfo(name, None, False, None, None, owner_uid=labels.get(GROUP_UID_LABEL))

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        self.log.append(f"delete {name}")
        self.snapshots.pop(name, None)

    async def orphan_snapshot(self, namespace: str, name: str) -> None:
        self.log.append(f"orphan {name}")

    async def annotate_snapshot(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self.log.append(f"annotate {name}")
        if self.annotate_fails:
            raise StepError("KubernetesApiError", f"patch VolumeSnapshot {name}: HTTP 500")
        self.snapshots[name]["metadata"].setdefault("annotations", {}).update(annotations)

    async def list_snapshots(self, namespace: str, selector: str) -> list[SnapshotInfo]:
        wanted = dict(part.split("=", 1) for part in selector.split(","))
        return [self._info(n, body) for n, body in self.snapshots.items()
                if wanted.items() <= body.get("metadata", {}).get("labels", {}).items()]

    async def wait_snapshots(
        self, namespace: str, selector: str, names: set[str], until: str, timeout: float
    ) -> dict[str, SnapshotInfo]:
        self.log.append(f"wait {until}")
        uid = dict(part.split("=", 1) for part in selector.split(","))[GROUP_UID_LABEL]
        if until == "cut" and uid in self.hang_groups:
            self.cutting.set()
            await self.let_cut.wait()  # until the test lets the driver cut; maybe never
        ready = until == "ready"
        return {n: SnapshotInfo(n, self.cut_time, ready, "1Gi" if ready else None, None) for n in names}

    async def patch_group_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(copy.deepcopy(status))
        self.by_group.setdefault(name, []).append(copy.deepcopy(status))
        if any(c.get("type") == "Waiting" and c.get("status") == "True"
               for c in status.get("conditions", [])):
            self.waiting.set()

    async def acquire_lease(self, namespace: str, name: str, holder: str, seconds: int,
                            labels: Any = None) -> str | None:
        current = self.leases.setdefault(name, holder)
        return None if same_group(current, holder) else current

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        if same_group(self.leases.get(name, ""), holder) and name not in self.records:
            del self.leases[name]
            async with self.lease_changed:
                self.lease_changed.notify_all()

    async def set_lease_record(self, namespace: str, name: str, holder: str,
                               record: Any) -> None:
        self.log.append(f"{'record' if record is not None else 'clear'} lease {name}")
        if record is None:
            self.records.pop(name, None)
        else:
            assert same_group(self.leases.get(name, ""), holder), "a record needs the Lease held"
            self.records[name] = dict(record)

    async def list_lease_records(self) -> list[LeaseRecord]:
        return [LeaseRecord("bleater", name, self.leases.get(name), record)
                for name, record in self.records.items()]

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        statuses = self.by_group.get(name)
        return None if statuses is None else {"metadata": {"uid": "uid-1"}, "status": statuses[-1]}

    async def wait_lease_change(self, namespace: str, name: str, timeout: float) -> None:
        async with self.lease_changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lease_changed.wait(), timeout)

    async def emit_event(self, namespace: str, name: str, uid: str, event_type: str, reason: str,
                         message: str) -> None:
        self.events.append((event_type, reason, message))

    def persisted_state(self, key: str) -> str | None:
        """State of a journal entry in the last persisted status."""
        for hook in self.patches[-1].get("hooks", []) if self.patches else []:
            if hook["name"] == key:
                return str(hook["state"])
        return None


def same_group(current: str, holder: str) -> bool:
    return current.split("@")[0] == holder.split("@")[0]


class FakeBound(ServiceHook):
    """A bound fake hook: applying and undoing append to the shared log."""

    def __init__(self, ctx: HookContext, key: str, type_: str, behaviour: dict[str, Any]) -> None:
        self.ctx, self.key, self.type, self.behaviour = ctx, key, type_, behaviour
        self.undo_failures = int(behaviour.get("undo_failures", 0))

    def targets(self) -> list[str]:
        kind, _, name = self.key.partition(":")
        return [f"workload:{name}" if kind == "writer" else f"server:{self.type}/{name}"]

    def intent(self) -> UndoRecord:
        return {"target": self.key}

    async def apply(self) -> UndoRecord:
        cluster = self.ctx.cluster
        assert isinstance(cluster, FakeCluster)
        # Write-ahead: the intent must be durable before the side effect.
        assert cluster.persisted_state(self.key) == "Applying"
        cluster.log.append(f"apply {self.key}")
        if self.behaviour.get("apply_fails"):
            raise StepError("QuiesceFailed", f"{self.key} refused")
        return {"target": self.key, "done": True}

    async def undo(self, record: UndoRecord) -> str:
        cluster = self.ctx.cluster
        assert isinstance(cluster, FakeCluster)
        cluster.log.append(f"undo {self.key}")
        if self.undo_failures:
            self.undo_failures -= 1
            raise StepError("Busy", "try again")
        return f"undid {record['target']}"

    async def newest_record(self) -> datetime | None:
        cluster = self.ctx.cluster
        assert isinstance(cluster, FakeCluster)
        cluster.log.append(f"record {self.key}")
        offset = self.behaviour.get("record_offset", -1.0)
        return T0 + timedelta(seconds=offset)

    def evidence(self) -> dict[str, str]:
        return {"fake": self.key}

    async def keep_with_snapshot(self) -> dict[str, str]:
        cluster = self.ctx.cluster
        assert isinstance(cluster, FakeCluster)
        cluster.log.append(f"keep {self.key}")
        kept = self.behaviour.get("keep", {})
        if isinstance(kept, StepError):
            raise kept
        return dict(kept)

    def plan_warnings(self) -> list[PlanError]:
        return [PlanError("LastRecordNotIndexed", "spec.services[0].lastRecord.column", "no index")] \
            if self.behaviour.get("unindexed") else []


BEHAVIOUR: dict[str, dict[str, Any]] = {}
RECOVERED: list[tuple[str, bool]] = []


def _fake_type(type_name: str, model: type[BaseModel], key_of: Any) -> type[HookType[Any]]:
    class FakeType(HookType[Any]):
        name: ClassVar[str] = type_name
        params_model: ClassVar[type[BaseModel]] = model

        async def plan(self, ctx: HookContext, params: Any, path: str) -> list[BoundHook]:
            key = key_of(params)
            behaviour = BEHAVIOUR.get(key, {})
            if behaviour.get("plan_fails"):
                raise PlanError("WriterNotFound", f"{path}.name", f"{key} does not exist")
            busy = behaviour.get("busy_for")
            if busy is not None and busy(ctx):
                raise PlanError("WriterBusy", f"{path}.name", f"{key} is isolated by another group",
                                held_target=f"workload:{key.removeprefix('writer:')}")
            return [FakeBound(ctx, key, type_name, behaviour)]

        async def recover(self, ctx: HookContext, key: str, record: UndoRecord,
                          side_effect_done: bool) -> str:
            RECOVERED.append((key, side_effect_done))
            if BEHAVIOUR.get(key, {}).get("recover_fails"):
                raise StepError("Unreachable", f"{key}: the server does not answer")
            return f"recovered {key}"

    return FakeType


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", {})
    BEHAVIOUR.clear()
    RECOVERED.clear()
    registry.register(_fake_type("scale", WriterTarget, lambda p: f"writer:{p.kind}/{p.name}"))
    for svc_type in ("postgresql", "mongodb"):
        registry.register(_fake_type(svc_type, ServiceTarget, lambda p: f"service:{p.name}"))


def spec(budget: str = "5s") -> SnapshotGroupSpec:
    return SnapshotGroupSpec.model_validate({
        "freezeBudget": budget,
        "writers": [{"name": "data-writer"}],
        "services": [
            {"name": "postgres", "type": "postgresql", "pvcs": ["pg-data"],
             "connection": {"secretRef": {"name": "pg"}}},
            {"name": "mongodb", "type": "mongodb", "pvcs": ["mongo-data"],
             "connection": {"secretRef": {"name": "mongo"}}},
        ],
    })


REF = GroupRef("bleater", "nightly", "uid-1", 1)


async def run_group(cluster: FakeCluster, budget: str = "5s",
                    status: dict[str, Any] | None = None) -> SnapshotGroupStatus:
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5,  # type: ignore[arg-type]
                         retry_delay=0)
    await runner.reconcile(REF, spec(budget).wire(), status or {})
    return SnapshotGroupStatus.model_validate(cluster.patches[-1])


def condition(status: SnapshotGroupStatus, type_: str) -> str:
    return next(c.status for c in status.conditions if c.type == type_)


async def test_what_a_service_keeps_is_read_after_the_thaw_and_annotated_on_its_snapshots() -> None:
    BEHAVIOUR["service:postgres"] = {"keep": {"snapgroup.dev/pg-backup-label": "START WAL LOCATION"}}
    log: list[str] = []
    cluster = FakeCluster(log)
    status = await run_group(cluster)
    assert status.phase == "Succeeded"
    (pg_snapshot,) = status.services[0].volume_snapshots
    (mongo_snapshot,) = status.services[1].volume_snapshots
    assert cluster.snapshots[pg_snapshot.name]["metadata"]["annotations"] == {
        "snapgroup.dev/pg-backup-label": "START WAL LOCATION"}
    assert "annotations" not in cluster.snapshots[mongo_snapshot.name]["metadata"]
    # Read once everything is resumed (never inside the window), annotated once the cut is ready.
    assert log.index("keep service:postgres") > log.index("undo writer:Deployment/data-writer")
    assert log.index(f"annotate {pg_snapshot.name}") > log.index("wait ready")


@pytest.mark.parametrize("fault", ["keep", "annotate"])
async def test_a_service_that_cannot_keep_its_backup_does_not_fail_the_group(fault: str) -> None:
    BEHAVIOUR["service:postgres"] = {"keep": StepError("PermissionDenied", "no pg_read_binary_file")
                                     if fault == "keep" else {"k": "v"}}
    cluster = FakeCluster([])
    cluster.annotate_fails = fault == "annotate"
    status = await run_group(cluster)
    assert status.phase == "Succeeded"
    assert condition(status, "Consistent") == "True"
    warned = [e for e in cluster.events if e[1] == "BackupNotKept"]
    assert len(warned) == (1 if fault == "annotate" else 0)
    assert not any("annotations" in s["metadata"] for s in cluster.snapshots.values())


async def test_plan_warnings_become_warning_events_and_do_not_stop_the_group() -> None:
    BEHAVIOUR["service:postgres"] = {"unindexed": True}
    cluster = FakeCluster([])
    status = await run_group(cluster)
    assert status.phase == "Succeeded"
    assert ("Warning", "LastRecordNotIndexed", "spec.services[0].lastRecord.column: no index") in (
        cluster.events)


async def test_happy_path_orders_isolate_quiesce_cut_record_resume_then_ready() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    status = await run_group(cluster)
    assert log == [
        "apply writer:Deployment/data-writer",
        "apply service:postgres", "apply service:mongodb",
        "create nightly-postgres-pg-data", "create nightly-mongodb-mongo-data",
        "wait cut",
        "record service:postgres", "record service:mongodb",
        "undo service:mongodb", "undo service:postgres",
        "undo writer:Deployment/data-writer",
        "keep service:postgres", "keep service:mongodb",
        "wait ready",
    ]
    assert status.phase == Phase.SUCCEEDED
    assert condition(status, "Consistent") == "True"
    assert status.consistent is True
    assert status.earliest_snapshot_time == T0
    assert status.snapshots_ready == "2/2"
    assert all(h.state == HookState.UNDONE for h in status.hooks)
    assert status.freeze is not None and status.freeze.seconds is not None
    breakdown = status.freeze.breakdown
    assert {"isolate", "quiesce", "cut", "record", "resume", "waitingOnPods", "waitingOnCut",
            "operator"} <= set(breakdown)
    assert 0 <= breakdown["operator"] <= status.freeze.seconds
    assert [s.evidence for s in status.services] == [{"fake": "service:postgres"},
                                                     {"fake": "service:mongodb"}]
    assert ("Normal", "Succeeded") in {(t, r) for t, r, _ in cluster.events}


async def test_failed_quiesce_takes_no_snapshot_and_undoes_what_ran() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    BEHAVIOUR["service:mongodb"] = {"apply_fails": True}
    status = await run_group(cluster)
    assert not any(line.startswith("create") for line in log)
    assert "undo service:postgres" in log and "undo writer:Deployment/data-writer" in log
    # The failed quiesce is undone too: it may have half-happened.
    assert "undo service:mongodb" in log
    assert log.index("undo service:postgres") < log.index("undo writer:Deployment/data-writer")
    assert status.phase == Phase.FAILED
    failed = next(c for c in status.conditions if c.type == "Succeeded")
    assert failed.status == "False" and failed.reason == "QuiesceFailed"
    assert "service:mongodb" in failed.message


async def test_plan_problems_are_all_reported_and_nothing_is_touched() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.snapshot_class = None
    del cluster.pvcs["mongo-data"]
    BEHAVIOUR["writer:Deployment/data-writer"] = {"plan_fails": True}
    status = await run_group(cluster)
    assert log == []
    assert status.phase == Phase.FAILED
    message = next(c.message for c in status.conditions if c.type == "Succeeded")
    assert "spec.volumeSnapshotClassName" in message
    assert "spec.services[1].pvcs[0]" in message
    assert "spec.writers[0].name" in message
    assert "nothing was touched" in message


async def test_budget_exceeded_thaws_and_deletes_uncut_snapshots() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    status = await run_group(cluster, budget="300ms")
    assert status.phase == Phase.FAILED
    assert next(c.reason for c in status.conditions if c.type == "Succeeded") == "FreezeBudgetExceeded"
    assert {"undo service:postgres", "undo service:mongodb",
            "undo writer:Deployment/data-writer"} <= set(log)
    assert "delete nightly-postgres-pg-data" in log and "delete nightly-mongodb-mongo-data" in log
    assert cluster.snapshots == {}
    assert condition(status, "Quiesced") == "False"


async def test_undo_is_retried_within_bounds() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    BEHAVIOUR["writer:Deployment/data-writer"] = {"undo_failures": 1}
    status = await run_group(cluster)
    assert log.count("undo writer:Deployment/data-writer") == 2
    assert status.phase == Phase.SUCCEEDED
    writer = next(h for h in status.hooks if h.name.startswith("writer:"))
    assert writer.state == HookState.UNDONE


async def test_records_newer_than_the_cut_make_the_group_inconsistent() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    BEHAVIOUR["service:mongodb"] = {"record_offset": 2.5}
    status = await run_group(cluster)
    assert status.phase == Phase.SUCCEEDED
    consistent = next(c for c in status.conditions if c.type == "Consistent")
    assert consistent.status == "False" and consistent.reason == "RecordsNewerThanCut"
    assert "mongodb" in consistent.message and "postgres has" not in consistent.message
    assert status.consistent is False


async def test_restart_mid_group_undoes_the_journal_then_retries_as_a_new_attempt() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.snapshots["nightly-postgres-pg-data"] = {"metadata": {"labels": {
        GROUP_UID_LABEL: "uid-1", "snapgroup.dev/attempt": "1"}}}
    cluster.snapshots["nightly-postgres-pg-data-kept"] = {"metadata": {"labels": {
        GROUP_UID_LABEL: "uid-0", "snapgroup.dev/attempt": "1"}}}  # an earlier group's, Retained
    held = lease_name("workload:Deployment/data-writer")
    cluster.leases[held] = "nightly/uid-1@old-operator"  # taken by the run that was interrupted
    interrupted = {
        "phase": "Snapshotting", "startTime": "2026-11-27T12:00:00Z",
        "targets": ["workload:Deployment/data-writer"],
        "hooks": [
            {"name": "writer:Deployment/data-writer", "type": "scale", "stage": "Pre",
             "state": "Applied", "undo": {"originalReplicas": 1}},
            {"name": "service:postgres", "type": "postgresql", "stage": "Pre", "state": "Applied"},
            {"name": "service:mongodb", "type": "mongodb", "stage": "Pre", "state": "Applying"},
        ],
    }
    status = await run_group(cluster, status=interrupted)
    assert RECOVERED == [("service:mongodb", False), ("service:postgres", True),
                         ("writer:Deployment/data-writer", True)]
    first = cluster.patches[len(cluster.patches) - 1 - next(
        i for i, p in enumerate(reversed(cluster.patches)) if p.get("attempt", 1) == 1)]
    assert all(h["state"] == "Undone" for h in first["hooks"])
    assert [(a.number, a.reason) for a in status.attempts] == [(1, "OperatorRestarted")]
    assert status.attempt == 2 and status.phase == Phase.SUCCEEDED
    assert "delete nightly-postgres-pg-data" in log
    assert "nightly-postgres-pg-data-kept" in cluster.snapshots, "another group's snapshot is kept"
    assert "create nightly-postgres-pg-data-a2" in log, "the retry cuts snapshots of its own"
    assert cluster.leases == {}, "the interrupted run's Leases must be given back"


INTERRUPTED_WINDOW = {
    "phase": "Snapshotting", "startTime": "2026-11-27T12:00:00Z",
    "conditions": [{"type": "Quiesced", "status": "True", "reason": "WritersIsolatedServicesQuiesced",
                    "message": "1 writer(s) isolated, 1 service(s) quiesced",
                    "lastTransitionTime": "2026-11-27T12:00:01Z"}],
    "hooks": [
        {"name": "writer:Deployment/data-writer", "type": "scale", "stage": "Pre",
         "state": "Applied", "undo": {"originalReplicas": 1}},
        {"name": "service:postgres", "type": "postgresql", "stage": "Pre", "state": "Applied"},
    ],
}


async def test_recovery_says_the_window_was_resumed_only_when_every_undo_was_checked() -> None:
    cluster = FakeCluster([])
    BEHAVIOUR["service:postgres"] = {"recover_fails": True}
    status = await run_group(cluster, status=copy.deepcopy(INTERRUPTED_WINDOW))
    quiesced = next(c for c in status.conditions if c.type == "Quiesced")
    assert status.phase == Phase.FAILED, "a recovery that left something held is not retried"
    assert (quiesced.status, quiesced.reason) == ("True", "StillHeld")
    assert "service:postgres" in quiesced.message and "writer:" not in quiesced.message

    BEHAVIOUR.clear()
    cluster = FakeCluster([])
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5,  # type: ignore[arg-type]
                         retry_delay=0)
    await runner.reconcile(REF, spec("5s").model_copy(update={"backoff_limit": 0}).wire(),
                           copy.deepcopy(INTERRUPTED_WINDOW))
    status = SnapshotGroupStatus.model_validate(cluster.patches[-1])
    quiesced = next(c for c in status.conditions if c.type == "Quiesced")
    assert status.phase == Phase.FAILED
    assert (quiesced.status, quiesced.reason) == ("False", "Resumed"), quiesced


async def test_a_failure_past_the_backoff_limit_fails_the_group_with_every_attempt_listed() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    BEHAVIOUR["service:mongodb"] = {"apply_fails": True}
    status = await run_group(cluster)
    assert status.phase == Phase.FAILED
    assert [a.number for a in status.attempts] == [1, 2] and status.attempt == 3
    assert log.count("apply service:mongodb") == 3
    assert log.count("undo service:mongodb") == 3, "each attempt undoes what it started"
    assert "attempt 3 of 3" in (status.message or "")


async def test_a_bad_spec_is_not_retried() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    del cluster.pvcs["mongo-data"]
    status = await run_group(cluster)
    assert status.phase == Phase.FAILED and status.attempts == [] and log == []


async def test_a_group_deleted_while_queued_never_freezes() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    first = asyncio.create_task(runner.reconcile(REF, spec("60s").wire(), {}))
    await cluster.cutting.wait()
    queued_ref = GroupRef("bleater", "second", "uid-2", 1)
    runner.start(queued_ref, spec("60s").wire(), {})
    await cluster.waiting.wait()
    assert await runner.deleted(queued_ref, spec().wire(), {}) is True
    cluster.let_cut.set()
    await first
    assert log.count("apply writer:Deployment/data-writer") == 1, "the deleted group froze nothing"
    last = cluster.by_group["second"][-1]
    assert last["phase"] == "Failed"
    assert next(c["reason"] for c in last["conditions"] if c["type"] == "Succeeded") == "GroupDeleted"
    assert "frozen nothing" in last["message"]


async def test_finished_group_is_left_alone() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    runner = GroupRunner(cluster, connectors=None)  # type: ignore[arg-type]
    await runner.reconcile(REF, spec().wire(), {"phase": "Succeeded"})
    assert log == [] and cluster.patches == []


async def test_deleting_the_group_mid_window_thaws_and_fails() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    task = asyncio.create_task(runner.reconcile(REF, spec("60s").wire(), {}))
    await cluster.cutting.wait()
    await runner.deleted(REF, spec().wire(), {})
    await task
    status = SnapshotGroupStatus.model_validate(cluster.patches[-1])
    assert next(c.reason for c in status.conditions if c.type == "Succeeded") == "GroupDeleted"
    assert "undo writer:Deployment/data-writer" in log


async def test_groups_over_the_same_targets_take_turns_and_disjoint_ones_do_not_wait() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    first = asyncio.create_task(runner.reconcile(REF, spec("60s").wire(), {}))
    await cluster.cutting.wait()
    second_ref = GroupRef("bleater", "second", "uid-2", 1)
    second = asyncio.create_task(runner.reconcile(second_ref, spec("60s").wire(), {}))
    await cluster.waiting.wait()
    assert log.count("apply writer:Deployment/data-writer") == 1  # the second has not started

    disjoint = SnapshotGroupSpec.model_validate({
        "services": [{"name": "other", "type": "postgresql", "pvcs": ["other-data"],
                      "connection": {"secretRef": {"name": "pg"}}}]})
    cluster.pvcs["other-data"] = PvcInfo("other-data", "Bound", "sc", DRIVER)
    third_ref = GroupRef("bleater", "third", "uid-3", 1)
    await runner.reconcile(third_ref, disjoint.wire(), {})  # runs while the first is frozen
    assert cluster.by_group["third"][-1]["phase"] == "Succeeded"

    cluster.let_cut.set()
    await asyncio.gather(first, second)
    assert cluster.by_group["nightly"][-1]["phase"] == "Succeeded"
    assert cluster.by_group["second"][-1]["phase"] == "Succeeded"
    writer = [line for line in log if line.endswith("writer:Deployment/data-writer")]
    assert writer == ["apply writer:Deployment/data-writer", "undo writer:Deployment/data-writer"] * 2
    waiting = next(c for c in cluster.by_group["second"][-1]["conditions"] if c["type"] == "Waiting")
    assert waiting["status"] == "False"
    assert cluster.leases == {}


async def test_a_group_found_finalizing_after_a_restart_only_waits_for_readiness() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    finalizing = {
        "phase": "Finalizing", "startTime": "2026-11-27T12:00:00Z",
        "earliestSnapshotTime": "2026-11-27T12:00:00Z",
        "services": [{"name": "postgres", "type": "postgresql", "lastRecordTime": "2026-11-27T11:59:59Z",
                      "volumeSnapshots": [{"name": "nightly-postgres-pg-data", "pvc": "pg-data",
                                           "creationTime": "2026-11-27T12:00:00Z"}]}],
        "hooks": [{"name": "service:postgres", "type": "postgresql", "stage": "Post", "state": "Undone"}],
    }
    status = await run_group(cluster, status=finalizing)
    assert log == ["wait ready"]
    assert status.phase == Phase.SUCCEEDED and status.consistent is True
    assert RECOVERED == []


async def test_a_stopping_operator_thaws_open_windows_first_and_leaves_the_retry_to_the_next() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    runner.start(REF, spec("60s").wire(), {})
    await cluster.cutting.wait()
    await runner.stop(timeout=10)
    assert runner.tasks == {}
    status = SnapshotGroupStatus.model_validate(cluster.patches[-1])
    assert [(a.number, a.reason) for a in status.attempts] == [(1, "OperatorStopping")]
    assert status.phase == Phase.PENDING and status.attempt == 2 and status.hooks == []
    assert "everything it applied was undone and checked" in status.attempts[0].message
    assert {"undo service:postgres", "undo service:mongodb",
            "undo writer:Deployment/data-writer"} <= set(log)


async def test_retained_snapshots_lose_their_owner_before_the_group_goes() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    await run_group(cluster)
    retained = {**spec().wire(), "snapshotDeletionPolicy": "Retain"}
    runner = GroupRunner(cluster, connectors=None)  # type: ignore[arg-type]
    await runner.deleted(REF, retained, {"phase": "Succeeded"})
    assert {"orphan nightly-postgres-pg-data", "orphan nightly-mongodb-mongo-data"} <= set(log)
    log.clear()
    await runner.deleted(REF, spec().wire(), {"phase": "Succeeded"})
    assert log == [], "with the default policy the snapshots go with the group"


async def test_window_slots_bound_open_windows_and_later_groups_wait_unfrozen() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    cluster.pvcs["other-data"] = PvcInfo("other-data", "Bound", "sc", DRIVER)
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5, max_windows=1)  # type: ignore[arg-type]
    first = asyncio.create_task(runner.reconcile(REF, spec("60s").wire(), {}))
    await cluster.cutting.wait()
    disjoint = SnapshotGroupSpec.model_validate({
        "services": [{"name": "other", "type": "postgresql", "pvcs": ["other-data"],
                      "connection": {"secretRef": {"name": "pg"}}}]})
    second = asyncio.create_task(
        runner.reconcile(GroupRef("bleater", "other", "uid-9", 1), disjoint.wire(), {}))
    cluster.let_cut.set()
    await asyncio.gather(first, second)
    assert log.index("undo writer:Deployment/data-writer") < log.index("apply service:other")


async def test_a_snapshot_name_held_by_another_group_is_refused_in_the_plan_and_left_alone() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    theirs = {"metadata": {"labels": {GROUP_UID_LABEL: "uid-of-an-earlier-group"}}}
    cluster.snapshots["nightly-postgres-pg-data"] = theirs
    status = await run_group(cluster)
    assert status.phase == Phase.FAILED and status.attempts == []
    failed = next(c for c in status.conditions if c.type == "Succeeded")
    assert failed.reason == "SnapshotNameTaken" and "spec.services[0].name" in failed.message
    assert log == [] and cluster.snapshots == {"nightly-postgres-pg-data": theirs}


async def test_a_snapshot_name_taken_after_the_plan_fails_the_cut_and_is_left_alone() -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    theirs: dict[str, Any] = {"metadata": {"labels": {}}}
    create = cluster.create_snapshot

    async def create_racing_somebody(namespace: str, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if name != "nightly-postgres-pg-data":
            return await create(namespace, body)
        cluster.snapshots[name] = theirs  # created by somebody else since the plan: the API's 409
        raise StepError("SnapshotNameTaken", f"VolumeSnapshot bleater/{name} belongs to no group")

    cluster.create_snapshot = create_racing_somebody  # type: ignore[method-assign]
    status = await run_group(cluster)
    failed = next(c for c in status.conditions if c.type == "Succeeded")
    assert status.phase == Phase.FAILED and failed.reason == "SnapshotNameTaken"
    assert status.attempts == [], "a taken name is not retried"
    assert cluster.snapshots == {"nightly-postgres-pg-data": theirs}, "ours go, theirs stays"
    assert "delete nightly-postgres-pg-data" not in log and "delete nightly-mongodb-mongo-data" in log
    errors = {v.name: v.error for s in status.services for v in s.volume_snapshots}
    assert "left alone" in (errors["nightly-postgres-pg-data"] or "")
    assert errors["nightly-mongodb-mongo-data"] == "deleted: its attempt failed"
    assert condition(status, "Quiesced") == "False"


async def test_a_group_object_removed_mid_window_is_thawed_at_once_without_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    runner.start(REF, spec("60s").wire(), {})
    task = runner.tasks[REF.uid]
    await cluster.cutting.wait()

    async def gone(namespace: str, name: str, status: dict[str, Any]) -> None:
        log.append("status write")
        raise StepError("SnapshotGroupNotFound", f"{name} does not exist")

    async def no_group(namespace: str, name: str) -> dict[str, Any] | None:
        return None

    cluster.patch_group_status = gone  # type: ignore[method-assign]
    cluster.get_group = no_group  # type: ignore[method-assign]
    runner.vanished(REF)
    await asyncio.wait_for(task, 5)
    assert "undo writer:Deployment/data-writer" in log and "undo service:postgres" in log
    assert cluster.snapshots == {}, "the attempt's snapshots go with it"
    assert "status write" in log
    assert not [r for r in caplog.records if "retrying" in r.getMessage()], \
        "a vanished group's status writes are not retried"
    assert not any("create" in entry for entry in log[log.index("undo service:postgres"):])
    assert runner.tasks == {} and runner.runs == {}
    ended = [m for _, reason, m in cluster.events if reason == "GroupDeleted"]
    assert ended and "finalizer stripped" in ended[-1], cluster.events


@pytest.mark.parametrize("freed", [True, False], ids=["freed-by-its-thaw", "still-held"])
async def test_a_writer_another_group_isolates_is_queued_for_not_refused(freed: bool) -> None:
    """Created while another group's window holds the writer, a group waits for the writer's
    Lease; it fails WriterBusy, touching nothing, only if the writer is still isolated once the
    Lease is its own."""
    log: list[str] = []
    cluster = FakeCluster(log)
    cluster.hang_groups.add("uid-1")
    BEHAVIOUR["writer:Deployment/data-writer"] = {
        "busy_for": lambda ctx: ctx.group_uid == "uid-2" and (not freed or not cluster.let_cut.is_set())}
    runner = GroupRunner(cluster, connectors=None, ready_timeout=5)  # type: ignore[arg-type]
    first = asyncio.create_task(runner.reconcile(REF, spec("60s").wire(), {}))
    await cluster.cutting.wait()
    second_ref = GroupRef("bleater", "second", "uid-2", 1)
    only_the_writer_shared = SnapshotGroupSpec.model_validate({
        "freezeBudget": "60s", "writers": [{"name": "data-writer"}],
        "services": [{"name": "other", "type": "postgresql", "pvcs": ["other-data"],
                      "connection": {"secretRef": {"name": "pg"}}}]})
    cluster.pvcs["other-data"] = PvcInfo("other-data", "Bound", "sc", DRIVER)
    second = asyncio.create_task(runner.reconcile(second_ref, only_the_writer_shared.wire(), {}))
    await cluster.waiting.wait()
    assert "WriterBusy" not in str(cluster.by_group["second"][-1]), "refused instead of queued"
    cluster.let_cut.set()
    await asyncio.gather(first, second)
    ended = SnapshotGroupStatus.model_validate(cluster.by_group["second"][-1])
    writer = [line for line in log if line.endswith("writer:Deployment/data-writer")]
    if freed:
        assert ended.phase == Phase.SUCCEEDED
        assert writer == ["apply writer:Deployment/data-writer",
                          "undo writer:Deployment/data-writer"] * 2
    else:
        failed = next(c for c in ended.conditions if c.type == "Succeeded")
        assert (ended.phase, failed.reason) == (Phase.FAILED, "WriterBusy")
        assert "nothing was touched" in failed.message and ended.hooks == []
        assert writer == ["apply writer:Deployment/data-writer", "undo writer:Deployment/data-writer"]
    assert cluster.leases == {}
