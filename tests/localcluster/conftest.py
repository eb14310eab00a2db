"""Fixtures for the tests of the local cluster and of its parts."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.cluster import LocalCluster
from localcluster.services_bin import services_bin_dir


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    """ferretdb and s3server, built if needed."""
    if shutil.which("go") is None and "SNAPGROUP_SERVICES_BIN" not in os.environ:
        pytest.skip("needs Go to build FerretDB and s3server")
    return services_bin_dir()


@pytest.fixture
def namespace(request: pytest.FixtureRequest, local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace, deleted after the test; named after the module's ``NAMESPACE_PREFIX``."""
    name = f"{request.module.NAMESPACE_PREFIX}-{uuid.uuid4().hex[:8]}"
    local_cluster.kubectl("create", "namespace", name)
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false")
