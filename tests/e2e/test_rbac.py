"""The install's RBAC is sufficient: the operator, running with its ServiceAccount's token (not
the admin kubeconfig), completes the bleater group, and a restore in place where the namespace
consents (its label and a RoleBinding of snapgroup-restore-target). Minimality is checked in
tests/cluster/test_install.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.sa_kubeconfig import service_account_kubeconfig
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from e2e.test_bleater_group import condition, sample
from e2e.test_restore_clone import create_restore, wait_restore
from e2e.test_restore_in_place import in_place
from localcluster.fixtures import wait_for
from snapgroup.api.labels import LEASE_LABEL
from snapgroup.api.restore import RESTORE_TARGET_LABEL

pytestmark = pytest.mark.cluster


@pytest.fixture
def installed(local_cluster: Any) -> Iterator[Path]:
    """`kubectl apply -k deploy/`, then a kubeconfig for the operator's ServiceAccount."""
    local_cluster.kubectl("apply", "--server-side", "-k", str(REPO / "deploy"))
    yield service_account_kubeconfig(local_cluster, "snapgroup-system", "snapgroup")
    local_cluster.kubectl("delete", "namespace", "snapgroup-system", "--timeout=90s", check=False)


def test_operator_with_its_service_account_completes_the_bleater_group(
    installed: Path, operator: OperatorProcess, kube: Kube, group_name: str, tmp_path: Path,
    local_cluster: Any,
) -> None:
    operator.stop()
    # As in a pod of deploy/: the servers' exclusion Leases in the operator's namespace; the
    # cut held 3 s (failpoint) so that they are seen held.
    os.environ["SNAPGROUP_FAILPOINTS"] = "cut=pause:3"
    confined = OperatorProcess(installed, tmp_path / "operator-sa.log",
                               ("--leader-election-namespace", "snapgroup-system"))
    try:
        confined.start()
        del os.environ["SNAPGROUP_FAILPOINTS"]
        kube.create_group(sample(group_name))

        def server_leases() -> list[str]:
            return local_cluster.kubectl(
                "get", "leases", "-n", "snapgroup-system", "-l", f"{LEASE_LABEL}=server",
                "-o", "jsonpath={.items[*].spec.holderIdentity}").stdout.split()
        held = wait_for(lambda: (found := server_leases()) and len(found) == 3 and found, 60,
                        "the group's three server Leases in the operator's namespace")
        assert all(h.startswith(f"{group_name}/") for h in held), held
        group = kube.wait_group("bleater", group_name)
        assert group["status"]["phase"] == "Succeeded", (group["status"], confined.tail())
        assert condition(group, "Consistent")["status"] == "True"
        assert "Forbidden" not in confined.log_path.read_text(), confined.tail()
        assert server_leases() == [], "given back after the thaw"
    finally:
        os.environ.pop("SNAPGROUP_FAILPOINTS", None)
        confined.stop()
        operator.start()


def test_operator_with_its_service_account_restores_in_place_where_the_namespace_consents(
    installed: Path, operator: OperatorProcess, kube: Kube, group_name: str, tmp_path: Path,
    local_cluster: Any,
) -> None:
    kube.create_group(sample(group_name))
    assert kube.wait_group("bleater", group_name)["status"]["phase"] == "Succeeded"
    operator.stop()
    confined = OperatorProcess(installed, tmp_path / "operator-sa.log")
    local_cluster.kubectl("label", "namespace", "bleater", f"{RESTORE_TARGET_LABEL}=bleater", "--overwrite")
    local_cluster.kubectl("create", "rolebinding", "snapgroup-restore", "-n", "bleater",
                          "--clusterrole=snapgroup-restore-target",
                          "--serviceaccount=snapgroup-system:snapgroup")
    try:
        confined.start()
        create_restore(kube, in_place(f"{group_name}-back", group_name, previous="Delete"))
        status = wait_restore(kube, f"{group_name}-back")["status"]
        assert status["phase"] == "Succeeded", (status.get("message"), confined.tail())
        assert "Forbidden" not in confined.log_path.read_text(), confined.tail()
    finally:
        confined.stop()
        local_cluster.kubectl("delete", "rolebinding", "snapgroup-restore", "-n", "bleater", check=False)
        local_cluster.kubectl("label", "namespace", "bleater", f"{RESTORE_TARGET_LABEL}-", check=False)
        operator.start()
