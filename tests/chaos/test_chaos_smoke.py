"""A short `make chaos` inside `make test`: three groups, each with one random fault, on the local
cluster with two operator replicas; the same invariants as the full run."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from chaos.runner import Chaos, Replicas, WriterSampler, summary
from e2e.bleater import Bleater
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

GROUPS = 3


def test_chaos_smoke_leaves_nothing_frozen_or_lost(
    operator: OperatorProcess, local_cluster: Any, kube: Kube, bleater: Bleater,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    seed = random.SystemRandom().randrange(1, 10**6)
    print(f"chaos smoke: seed {seed}")
    lease = f"snapgroup-chaos-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SNAPGROUP_FAILPOINTS", "cut=pause:1.5")

    def make(i: int) -> OperatorProcess:
        return OperatorProcess(Path(local_cluster.kubeconfig), tmp_path / f"replica-{i}.log", (
            "--leader-elect", "--leader-election-namespace", "default",
            "--leader-election-id", lease, "--retry-delay", "1"))

    operator.stop()
    replicas = Replicas(make)
    try:
        replicas.start()
        chaos = Chaos(local_cluster, kube, bleater, replicas, random.Random(seed),
                      f"smoke-{seed}", 1.5)
        with WriterSampler(kube) as sampler:
            results = chaos.run(GROUPS, time.monotonic() + 600, sampler)
    finally:
        replicas.stop()
        monkeypatch.delenv("SNAPGROUP_FAILPOINTS")
        operator.start()
    totals = summary(results)
    assert totals["groups"] == GROUPS
    assert all(r.outcome in ("Succeeded", "Failed", "Deleted") for r in results), results
    assert totals["writers_left_isolated"] == 0, results
    assert totals["locks_left"] == 0 and totals["pg_sessions_left"] == 0, results
    assert totals["records_lost"] == 0 and totals["groups_with_record_problems"] == 0, results
    assert totals["succeeded_not_consistent"] == [], results
