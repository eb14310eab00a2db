"""The bleater sample on the local cluster, without the operator: the data-writer writes to all
three services, stops only once its pod is gone, and resumes without a gap when scaled back."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from e2e.bleater import SERVICES, Bleater, contiguous
from e2e.kube import Kube

pytestmark = pytest.mark.cluster

WRITER_INTERVAL = 1.0
"""The sample's WRITE_INTERVAL_SECONDS."""


def newest_seq(bleater: Bleater) -> dict[str, int]:
    return {s: max((r.seq for r in bleater.records(s)), default=0) for s in SERVICES}


def test_writer_writes_everywhere_stops_when_its_pod_is_gone_and_resumes(
    kube: Kube, bleater: Bleater
) -> None:
    first = bleater.wait_new_records(0)
    bleater.wait_new_records(first)  # and they keep arriving

    kube.scale("bleater", "data-writer", 0)
    kube.wait_pods("bleater", "app=data-writer", 0, ready=False)
    gone_at = datetime.now(UTC)
    stopped = newest_seq(bleater)
    newest = max(r.at for s in SERVICES for r in bleater.records(s))
    assert newest <= gone_at, "a record was written after the writer's pod was gone"

    # Over three writer intervals with no pod, nothing new arrives anywhere.
    quiet_until = time.monotonic() + 3 * WRITER_INTERVAL
    while time.monotonic() < quiet_until:
        assert newest_seq(bleater) == stopped, "records arrived with no writer pod"
        time.sleep(0.2)  # sampling the services over the quiet period

    kube.scale("bleater", "data-writer", 1)
    kube.wait_pods("bleater", "app=data-writer", 1)
    bleater.wait_new_records(max(stopped.values()))
    for service in SERVICES:
        seqs = [r.seq for r in bleater.records(service)]
        assert contiguous(seqs), f"{service}: gap or duplicate after the writer resumed"
