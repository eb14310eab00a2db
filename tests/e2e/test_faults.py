"""The fault matrix: under any single fault, nothing is left frozen and no record is lost.

Each case runs the bleater group on the local cluster with the data-writer writing every second,
injects one fault, and then checks: the writer is back at its original replicas and writing, the
(emulated) MongoDB lock count is back to 0, no PostgreSQL session of the operator (and so no
backup) remains, the group's status names what happened, and the writer's sequence numbers have
no gap. Crashes and pauses at exact step boundaries use the operator's failpoints
(SNAPGROUP_FAILPOINTS).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from e2e.bleater import Bleater
from e2e.faults import (
    WRITER,
    FaultOutcome,
    assert_nothing_frozen_or_lost,
    assert_records_kept,
    kill_mongodb_connections,
    kill_pg_sessions,
    read_records,
    record,
    stop_component,
    wait_journal,
    wait_writer_back,
)
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample

pytestmark = pytest.mark.cluster

CRASH_POINTS = [
    "plan",
    "apply:writer:Deployment/data-writer",
    "apply:service:postgres",
    "apply:service:mongodb",
    "apply:service:minio",
    "create:{group}-postgres-postgres-data",
    "create:{group}-mongodb-mongodb-data",
    "create:{group}-minio-minio-data",
    "cut",
    "record",
    "undo:service:minio",
    "undo:service:mongodb",
    "undo:service:postgres",
    "undo:writer:Deployment/data-writer",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_operator_killed_at_a_step_boundary_recovers_everything(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str, point: str
) -> None:
    template, point = point, point.format(group=group_name)
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    crashing = armed(f"{point}=crash")
    created = kube.create_group(sample(group_name))
    uid = created["metadata"]["uid"]
    assert crashing.process is not None
    crashing.process.wait(timeout=120)
    # The fault, proven: the process died of SIGKILL, at the failpoint.
    assert crashing.process.returncode == -signal.SIGKILL, crashing.tail()
    assert f"failpoint {point}: crash" in crashing.tail(400)
    crashed_at = time.monotonic()

    operator.start()  # the restart the journal exists for
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, crashed_at)
    status = group["status"]
    result = condition(group, "Succeeded")
    # The interrupted attempt is undone and retried; a crash before anything was applied just
    # runs the same attempt again.
    assert status["phase"] == "Succeeded", result
    assert condition(group, "Consistent")["status"] == "True", condition(group, "Consistent")
    attempts = status.get("attempts", [])
    if point == "plan":
        assert attempts == [] and status["attempt"] == 1, attempts
    else:
        assert [a["reason"] for a in attempts] == ["OperatorRestarted"], attempts
        kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group-uid={uid},snapgroup.dev/attempt=1")
        assert all(s["metadata"]["name"].endswith("-a2")
                   for s in kube.snapshots("bleater", f"snapgroup.dev/group-uid={uid}"))
    quiesced = condition(group, "Quiesced")
    assert (quiesced["status"], quiesced["reason"]) == ("False", "Resumed"), quiesced
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    assert_records_kept(bleater, before)
    fault = f"SIGKILL after {template.replace('{group}-', '')}"
    first = attempts[0]["message"][:160] if attempts else "crashed before anything was applied"
    record(FaultOutcome(fault, status["phase"],
                        f"{result['reason']} after {', '.join(a['reason'] for a in attempts) or 'no'}"
                        " failed attempt", round(back, 2), first))


def _drop_postgres_session(bleater: Bleater, operator: OperatorProcess, uid: str) -> int:
    killed = kill_pg_sessions(bleater, uid)
    assert killed >= 1, "the group held no PostgreSQL session in the window"
    return killed


def _drop_mongodb_connections(bleater: Bleater, operator: OperatorProcess, uid: str) -> int:
    assert operator.process is not None
    killed = kill_mongodb_connections(bleater, [operator.process.pid])
    assert killed >= 1, "no socket of the operator to MongoDB was killed"
    return killed


@pytest.mark.parametrize(("service", "drop"), [
    pytest.param("postgres", _drop_postgres_session, id="postgresql"),
    pytest.param("mongodb", _drop_mongodb_connections, id="mongodb"),
])
def test_database_connection_dropped_mid_window(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str,
    service: str, drop: Any,
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed_operator = armed("cut=pause:4", "--retry-delay", "1")  # the window held after the cut
    created = kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:minio", "Applied")  # all quiesced: window open
    dropped_at = time.monotonic()
    killed = drop(bleater, armed_operator, created["metadata"]["uid"])
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, dropped_at)
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    assert_records_kept(bleater, before)
    result = condition(group, "Succeeded")
    quiesced = condition(group, "Quiesced")
    assert (quiesced["status"], quiesced["reason"]) == ("False", "Resumed"), quiesced
    if group["status"]["phase"] == "Succeeded":
        assert condition(group, "Consistent")["status"] == "True"
    attempts = [a["reason"] for a in group["status"].get("attempts", [])]
    record(FaultOutcome(f"{service} connection dropped mid-window", group["status"]["phase"],
                        result["reason"], round(back, 2),
                        f"{killed} killed; failed attempts: {', '.join(attempts) or 'none'}"))


def test_snapshot_sidecar_stopped_exceeds_budget_and_thaws(
    operator: OperatorProcess, local_cluster: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    stop_component(local_cluster, "csi-snapshotter")
    try:
        kube.create_group(sample(group_name, freezeBudget="8s"))
        group = kube.wait_group("bleater", group_name)
    finally:
        local_cluster.restart_component("csi-snapshotter")
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "FreezeBudgetExceeded"
    freeze = group["status"]["freeze"]
    # Thawed within the budget plus the documented margin (undo retries, journal writes).
    assert freeze["seconds"] <= 8 + 5, freeze
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group={group_name}")
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    record(FaultOutcome("CSI snapshot sidecar stopped (budget 8s)", group["status"]["phase"],
                        failed["reason"],
                        float(freeze["seconds"]), failed["message"][:160]))


def test_group_deleted_mid_window(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("cut=pause:5")
    created = kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:minio", "Applied")
    assert kube.replicas("bleater", WRITER) == 0, "the writer is not isolated: no window is open"
    deleted_at = time.monotonic()
    kube.delete_group("bleater", group_name)
    returned = time.monotonic() - deleted_at
    kube.wait_group_gone("bleater", group_name, timeout=60)
    gone = time.monotonic() - deleted_at
    back = wait_writer_back(kube, replicas, deleted_at)
    kube.wait_event_reasons("bleater", group_name, {"GroupDeleted"})
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    assert_records_kept(bleater, before)
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group-uid={created['metadata']['uid']}")
    message = next(m for r, m in kube.events("bleater", group_name) if r == "GroupDeleted")
    record(FaultOutcome("SnapshotGroup deleted mid-window", f"gone after {gone:.1f}s",
                        "GroupDeleted", round(back, 2),
                        f"delete returned in {returned:.2f}s; {message[:120]}"))


def test_writer_scaled_by_a_person_while_isolated_is_not_fought(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    armed("apply:service:minio=pause:4")
    kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "writer:Deployment/data-writer", "Applied")
    kube.scale("bleater", WRITER, replicas + 1)  # a person scales the writer up mid-window
    try:
        group = kube.wait_group("bleater", group_name)
        assert kube.replicas("bleater", WRITER) == replicas + 1, "the operator fought the person"
        writer = group["status"]["writers"][0]
        assert writer["note"] and "scaled" in writer["note"], writer
        annotations = kube.deployment("bleater", WRITER).metadata.annotations or {}
        assert not any(k.startswith("snapgroup.dev/") for k in annotations)
    finally:
        kube.scale("bleater", WRITER, replicas)
    kube.wait_pods("bleater", "app=data-writer", replicas)
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    record(FaultOutcome("writer scaled by a person while isolated", group["status"]["phase"],
                        condition(group, "Succeeded")["reason"], 0.0, writer["note"][:160]))


def test_two_groups_over_the_same_targets_take_turns(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    first, second = f"{group_name}-a", f"{group_name}-b"
    kube.create_group(sample(first))
    kube.create_group(sample(second))
    groups = [kube.wait_group("bleater", n) for n in (first, second)]
    assert [g["status"]["phase"] for g in groups] == ["Succeeded", "Succeeded"]
    windows = sorted((g["status"]["freeze"]["start"], g["status"]["freeze"]["end"]) for g in groups)
    assert windows[0][1] <= windows[1][0], f"freeze windows overlap: {windows}"
    waited = [g for g in groups if any(c["type"] == "Waiting" for c in g["status"]["conditions"])]
    assert waited, "one group must have waited for the other"
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    waiting = condition(waited[0], "Waiting")
    record(FaultOutcome("two groups over the same targets at once",
                        ", ".join(g["status"]["phase"] for g in groups), waiting["reason"], 0.0,
                        f"{waited[0]['metadata']['name']} waited: {waiting['message'][:80]}; "
                        f"windows {windows[0][1]} <= {windows[1][0]}"))
