"""The install's RBAC is sufficient: the operator, running with its ServiceAccount's token (not
the admin kubeconfig), completes the bleater group. Minimality is checked in
tests/cluster/test_install.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.sa_kubeconfig import service_account_kubeconfig
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from e2e.test_bleater_group import condition, sample

pytestmark = pytest.mark.cluster


@pytest.fixture
def installed(local_cluster: Any) -> Iterator[Path]:
    """`kubectl apply -k deploy/`, then a kubeconfig for the operator's ServiceAccount."""
    local_cluster.kubectl("apply", "--server-side", "-k", str(REPO / "deploy"))
    yield service_account_kubeconfig(local_cluster, "snapgroup-system", "snapgroup")
    local_cluster.kubectl("delete", "namespace", "snapgroup-system", "--timeout=90s", check=False)


def test_operator_with_its_service_account_completes_the_bleater_group(
    installed: Path, operator: OperatorProcess, kube: Kube, group_name: str, tmp_path: Path
) -> None:
    operator.stop()
    confined = OperatorProcess(installed, tmp_path / "operator-sa.log")
    try:
        confined.start()
        kube.create_group(sample(group_name))
        group = kube.wait_group("bleater", group_name)
        assert group["status"]["phase"] == "Succeeded", (group["status"], confined.tail())
        assert condition(group, "Consistent")["status"] == "True"
        assert "Forbidden" not in confined.log_path.read_text(), confined.tail()
    finally:
        confined.stop()
        operator.start()
