"""Two operator replicas with leader election: the leader SIGKILLed inside a freeze window.

Two `snapgroup run --leader-elect` processes share one leader Lease. A group's window is held
open by a failpoint (`cut=pause:40`); once the writer is provably isolated and the databases
quiesced, the leader (provably the Lease's holder at that moment) is SIGKILLed. The standby must
take the Lease, recover the window from the journal (the writer back at its replicas, Ready and
writing; MongoDB's lock count 0; no PostgreSQL backup session; no record lost) and, with
`backoffLimit: 0` so that the interrupted attempt is the end state, end the group Failed with
OperatorRestarted and Quiesced False/Resumed. Each run's failover time (SIGKILL -> writer back)
is printed and, with SNAPGROUP_FAULT_REPORT set, added to the fault report;
SNAPGROUP_FAILOVER_RUNS repeats the case.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.bleater import Bleater
from e2e.faults import (
    WRITER,
    FaultOutcome,
    assert_nothing_frozen_or_lost,
    assert_records_kept,
    read_records,
    record,
    wait_journal,
    wait_writer_back,
)
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample
from localcluster.fixtures import wait_for
from snapgroup.api.labels import ISOLATED_BY

pytestmark = pytest.mark.cluster

LEASE_NAMESPACE = "default"
RUNS = int(os.environ.get("SNAPGROUP_FAILOVER_RUNS", "1"))


def leader_election(lease: str) -> tuple[str, ...]:
    return ("--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE,
            "--leader-election-id", lease)


def lease_holder(kube: Kube, name: str) -> str | None:
    try:
        lease = client.CoordinationV1Api(kube.api).read_namespaced_lease(name, LEASE_NAMESPACE)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    holder: str | None = lease.spec.holder_identity
    return holder


def leading(process: OperatorProcess) -> str | None:
    """The process's identity once it leads."""
    health = process.health()
    return str(health["identity"]) if health.get("leader") else None


@pytest.mark.parametrize("run", range(RUNS))
def test_leader_killed_mid_window_standby_takes_over_and_recovers(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str, run: int
) -> None:
    lease = f"snapgroup-leader-{uuid.uuid4().hex[:8]}"
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    first = armed("cut=pause:40", *leader_election(lease))
    leader = wait_for(lambda: leading(first), 60, "the first replica to lead")
    second = armed("cut=pause:40", *leader_election(lease))
    standby = wait_for(lambda: second.health().get("holder") == leader and second.health()["identity"],
                       60, "the second replica to see the leader and stand by")
    assert second.health()["leader"] is False

    created = kube.create_group(sample(group_name, backoffLimit=0))
    wait_journal(kube, group_name, "service:minio", "Applied")  # every service quiesced
    # The fault, proven at the moment it happens: the window is open and `first` leads.
    writer = kube.deployment("bleater", WRITER)
    assert writer.spec.replicas == 0, "the writer is not isolated: no window is open"
    assert (writer.metadata.annotations or {}).get(ISOLATED_BY, "").endswith(
        kube.group("bleater", group_name)["metadata"]["uid"])
    assert lease_holder(kube, lease) == leader
    first.kill()
    killed_at = time.monotonic()
    assert first.process is not None and first.process.returncode == -signal.SIGKILL

    wait_for(lambda: lease_holder(kube, lease) == standby, 60, "the standby to take the Lease")
    took_lease = time.monotonic() - killed_at
    back = wait_writer_back(kube, replicas, killed_at)
    group = kube.wait_group("bleater", group_name)
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "OperatorRestarted", failed
    assert leading(second) == standby
    quiesced = condition(group, "Quiesced")
    assert (quiesced["status"], quiesced["reason"]) == ("False", "Resumed"), quiesced
    assert "recovery failed" not in failed["message"], failed
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group-uid={created['metadata']['uid']}")
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    assert_records_kept(bleater, before)
    print(f"leader failover run {run}: Lease taken {took_lease:.2f}s, writer back {back:.2f}s "
          "after the leader's SIGKILL")
    record(FaultOutcome(f"leader SIGKILLed mid-window, two replicas (run {run + 1})",
                        group["status"]["phase"],
                        failed["reason"], round(back, 2),
                        f"standby took the Lease {took_lease:.2f}s after the kill; "
                        + failed["message"][:120]))


def test_leader_stopped_gives_the_lease_up_and_the_standby_runs_groups(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    lease = f"snapgroup-leader-{uuid.uuid4().hex[:8]}"
    replicas = kube.replicas("bleater", WRITER)
    first = armed("", *leader_election(lease))
    leader = wait_for(lambda: leading(first), 60, "the first replica to lead")
    second = armed("", *leader_election(lease))
    standby = wait_for(lambda: second.health().get("holder") == leader and second.health()["identity"],
                       60, "the second replica to stand by")
    first.stop()  # SIGTERM, as Kubernetes stops a pod
    assert first.process is not None and first.process.returncode == 0, first.tail()
    assert "gave the Lease up" in first.tail(200)
    wait_for(lambda: lease_holder(kube, lease) == standby, 30, "the standby to take the Lease")
    assert leading(second) == standby
    kube.create_group(sample(group_name))
    group = kube.wait_group("bleater", group_name)
    assert group["status"]["phase"] == "Succeeded", condition(group, "Succeeded")
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
