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
    crashing = armed(f"{point}=crash")
    kube.create_group(sample(group_name))
    assert crashing.process is not None
    crashing.process.wait(timeout=120)
    assert crashing.process.returncode == -signal.SIGKILL, crashing.tail()
    crashed_at = time.monotonic()

    operator.start()  # the restart the journal exists for
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, crashed_at)
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed"
    assert failed["reason"] == "OperatorRestarted", failed
    assert "undone" in failed["message"]
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group={group_name}")
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    fault = f"SIGKILL after {template.replace('{group}-', '')}"
    record(FaultOutcome(fault, "Failed", failed["reason"], round(back, 2), failed["message"][:160]))


def _drop_postgres_session(bleater: Bleater) -> None:
    import psycopg

    pg = bleater.pg
    with psycopg.connect(host=pg["host"], port=int(pg["port"]), user=pg["username"],
                         password=pg["password"], dbname=pg["database"], autocommit=True) as conn:
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name LIKE 'snapgroup%'").fetchone()
        assert killed and killed[0] >= 1, "the operator held no PostgreSQL session in the window"


def _drop_mongodb_connections(bleater: Bleater) -> None:
    import subprocess

    host = bleater.service_host("mongodb")
    subprocess.run(["ss", "-K", "dst", host, "dport", "=", "27017"], check=True,
                   capture_output=True, timeout=10)


@pytest.mark.parametrize(("service", "drop"), [
    pytest.param("postgres", _drop_postgres_session, id="postgresql"),
    pytest.param("mongodb", _drop_mongodb_connections, id="mongodb"),
])
def test_database_connection_dropped_mid_window(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str,
    service: str, drop: Any,
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    armed("cut=pause:4")  # hold the window open after the cut, everything quiesced
    kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:minio", "Applied")  # all quiesced: window open
    dropped_at = time.monotonic()
    drop(bleater)
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, dropped_at)
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    result = condition(group, "Succeeded")
    hooks = {h["name"]: h for h in group["status"]["hooks"]}
    undo = hooks[f"service:{service}"]
    assert undo["stage"] == "Post" and undo["message"], undo
    record(FaultOutcome(f"{service} connection dropped mid-window", group["status"]["phase"],
                        result["reason"], round(back, 2), undo["message"][:160]))


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
    record(FaultOutcome("CSI snapshot sidecar stopped (budget 8s)", "Failed", failed["reason"],
                        float(freeze["seconds"]), failed["message"][:160]))


def test_api_server_restarted_mid_window(
    armed: Any, operator: OperatorProcess, local_cluster: Any, kube: Kube, bleater: Bleater,
    group_name: str,
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    armed("apply:service:minio=pause:3")
    kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:mongodb", "Applied")
    restarted_at = time.monotonic()
    stop_component(local_cluster, "kube-apiserver")
    local_cluster.restart_component("kube-apiserver")
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, restarted_at)
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    result = condition(group, "Succeeded")
    record(FaultOutcome("API server restarted mid-window", group["status"]["phase"],
                        result["reason"], round(back, 2), result["message"][:160]))


def test_group_deleted_mid_window(
    armed: Any, operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    armed("cut=pause:5")
    kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:minio", "Applied")
    deleted_at = time.monotonic()
    kube.delete_group("bleater", group_name)
    kube.wait_group_gone("bleater", group_name, timeout=60)
    back = wait_writer_back(kube, replicas, deleted_at)
    kube.wait_event_reasons("bleater", group_name, {"GroupDeleted"})
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group={group_name}")
    record(FaultOutcome("SnapshotGroup deleted mid-window", "deleted", "GroupDeleted",
                        round(back, 2), "thawed, then the finalizer let the group go"))


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
    record(FaultOutcome("two groups over the same targets at once", "Succeeded x2", "Waiting",
                        0.0, "the second waited for the first; windows did not overlap"))
