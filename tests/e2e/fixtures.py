"""Fixtures of the cluster and end-to-end tests: the CRDs installed, the operator running as a
process, test-side clients (registered in tests/conftest.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.bleater import Bleater
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess


@pytest.fixture(scope="session")
def crds(local_cluster: Any) -> None:
    """The snapgroup CRDs, applied server-side and established."""
    local_cluster.apply_crds(REPO / "crds")


@pytest.fixture(scope="session")
def kube(local_cluster: Any) -> Kube:
    """Test-side Kubernetes client."""
    return Kube(Path(local_cluster.kubeconfig))


@pytest.fixture(scope="session")
def bleater(kube: Kube) -> Bleater:
    """The bleater sample's services and records."""
    return Bleater(kube)


@pytest.fixture(scope="session")
def operator(local_cluster: Any, crds: None, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    """The operator, running for the whole session, as `snapgroup run` would."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(Path(local_cluster.kubeconfig), log)
    process.start()
    yield process
    process.stop()


_counter = iter(range(1, 10_000))


@pytest.fixture
def group_name(request: pytest.FixtureRequest) -> str:
    """A unique, readable SnapshotGroup name per test."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())[:40].strip("-")
    return f"{base}-{next(_counter)}"


@pytest.fixture
def armed(operator: OperatorProcess, local_cluster: Any, tmp_path: Path) -> Iterator[Any]:
    """Stop the session's operator; hand out operators armed with failpoints
    (SNAPGROUP_FAILPOINTS, see snapgroup.failpoints) and run with extra `snapgroup run`
    arguments, each logging to a file of its own; start the session's operator again after."""
    operator.stop()
    started: list[OperatorProcess] = []

    def arm(failpoints: str, *args: str) -> OperatorProcess:
        os.environ["SNAPGROUP_FAILPOINTS"] = failpoints
        try:
            log = tmp_path / f"armed-{len(started)}.log"
            process = OperatorProcess(Path(local_cluster.kubeconfig), log, args)
            process.start()
        finally:
            del os.environ["SNAPGROUP_FAILPOINTS"]
        started.append(process)
        return process

    yield arm
    for process in started:
        process.stop()
    operator.start()
