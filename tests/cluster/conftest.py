"""Fixtures shared by the tests that drive the operator's Kubernetes code against the local cluster."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from snapgroup.adapters.kube import load_api_client


@pytest.fixture(scope="module")
def api(local_cluster: Any) -> Iterator[client.ApiClient]:
    """An API client for the local cluster, as the operator's adapter loads it."""
    api_client = load_api_client(str(local_cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def namespace(request: pytest.FixtureRequest, api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace for the test module, named after its ``NAMESPACE_PREFIX``."""
    name = f"{request.module.NAMESPACE_PREFIX}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
