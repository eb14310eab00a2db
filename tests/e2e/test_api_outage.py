"""A kube-apiserver restart inside a group's freeze window is ridden through: the group succeeds.

The window is held open by a failpoint (`apply:service:minio=pause:1`, after PostgreSQL and
MongoDB are quiesced and the writer is isolated); the API server is SIGKILLed and started again
right then, so the operator's next calls (the journal write for MinIO, the snapshots, the cut's
watch) meet a server that is down or still starting. The test proves the outage hit the
operator (its retry counter rose, its log names the failed calls, and the kill happened between
the window's start and end), then that the group still ended Succeeded and Consistent, with the
writer back, MongoDB unlocked and nothing lost.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from e2e.bleater import Bleater, utc
from e2e.faults import (
    WRITER,
    FaultOutcome,
    assert_nothing_frozen_or_lost,
    assert_records_kept,
    read_records,
    record,
    stop_component,
    wait_journal,
    wait_writer_back,
)
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample
from snapgroup.api.labels import ISOLATED_BY

pytestmark = pytest.mark.cluster

RETRIES_METRIC = "snapgroup_kubernetes_request_retries_total"


def retries(operator: OperatorProcess) -> float:
    """The operator's count of Kubernetes requests retried after a transient failure."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in operator.scrape().splitlines()
               if line.startswith(RETRIES_METRIC + "{"))


def test_api_server_restart_inside_the_window_ends_succeeded(
    armed: Any, local_cluster: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    operator = armed("apply:service:minio=pause:1")
    retried_before = retries(operator)
    kube.create_group(sample(group_name))
    wait_journal(kube, group_name, "service:mongodb", "Applied")
    writer = kube.deployment("bleater", WRITER)
    assert writer.spec.replicas == 0 and ISOLATED_BY in (writer.metadata.annotations or {})
    killed_wall, killed_at = datetime.now(UTC), time.monotonic()
    stop_component(local_cluster, "kube-apiserver")
    local_cluster.restart_component("kube-apiserver")
    outage = time.monotonic() - killed_at

    group = kube.wait_group("bleater", group_name)
    status = group["status"]
    # The fault hit the window and the operator.
    assert utc(status["freeze"]["start"]) < killed_wall < utc(status["freeze"]["end"]), status["freeze"]
    retried = retries(operator) - retried_before
    assert retried > 0, "the operator never saw the API server fail"
    failed_calls = [line for line in operator.tail(2000).splitlines() if "; retrying in" in line]
    assert failed_calls, operator.tail()
    # And rode through it.
    assert status["phase"] == "Succeeded", condition(group, "Succeeded")
    assert condition(group, "Consistent")["status"] == "True", condition(group, "Consistent")
    assert status["snapshotsReady"] == "3/3"
    back = wait_writer_back(kube, replicas, killed_at)
    assert_nothing_frozen_or_lost(kube, bleater, replicas)
    assert_records_kept(bleater, before)
    print(f"API server down/restarting {outage:.1f}s inside the window; the operator retried "
          f"{retried:.0f} request(s), e.g. {failed_calls[0][-160:]}")
    record(FaultOutcome("API server restarted inside the window (ridden through)", status["phase"],
                        condition(group, "Succeeded")["reason"], round(back, 2),
                        f"outage {outage:.1f}s, {retried:.0f} request(s) retried, freeze "
                        f"{status['freeze']['seconds']}s"))
