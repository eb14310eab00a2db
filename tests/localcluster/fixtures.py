"""Pytest fixtures for the local cluster (registered in ``tests/conftest.py``), and waiting on it."""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from localcluster.build import GoToolchainMissingError, ensure_binaries
from localcluster.cluster import LocalCluster

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll condition until it returns a truthy value; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A running local cluster with the bleater sample applied and its pods ready.

    Started once per test session in a fresh state dir and stopped (and removed) at the end.
    The state dir is not under pytest's temporary base: every pytest session that starts
    resets that base to mode 0700, which would lock the pods' users (postgres) out of their
    volumes mid-run. Skips only when the binaries need building and Go is not installed.
    """
    try:
        ensure_binaries()
    except GoToolchainMissingError as exc:
        pytest.skip(f"local cluster unavailable: {exc}")
    state_dir = Path(tempfile.mkdtemp(prefix="snapgroup-cluster-"))
    cluster = LocalCluster(state_dir)
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
        shutil.rmtree(state_dir, ignore_errors=True)
