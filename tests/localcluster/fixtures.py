"""Pytest fixtures for the local cluster (registered in ``tests/conftest.py``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from localcluster.build import GoToolchainMissingError, ensure_binaries
from localcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running local cluster with the bleater sample applied and its pods ready.

    Started once per test session in a fresh state dir under pytest's temporary directory and
    stopped at the end. Skips only when the binaries need building and Go is not installed.
    """
    try:
        ensure_binaries()
    except GoToolchainMissingError as exc:
        pytest.skip(f"local cluster unavailable: {exc}")
    cluster = LocalCluster(tmp_path_factory.mktemp("localcluster"))
    started = time.monotonic()
    try:
        # Cluster sessions on one machine take turns (they would share loopback addresses);
        # the wait stays well inside pytest-timeout's 600 s for the first test.
        cluster.up(apply_bleater=True, wait_for_other_cluster=300)
        print(
            f"local cluster with bleater ready in {time.monotonic() - started:.1f}s "
            f"(KUBECONFIG={cluster.kubeconfig})",
            file=sys.stderr,
        )
        yield cluster
    finally:
        cluster.down()
