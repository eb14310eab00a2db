"""The generated SnapshotGroup CRD on a real API server: accepted, explained, and enforcing."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapgroup.api.crd import SNAPSHOT_GROUP

pytestmark = pytest.mark.cluster

CRD_FILE = Path(__file__).resolve().parents[2] / "crds" / SNAPSHOT_GROUP.file_name
FIELD_MANAGER = "snapgroup-crd-tests"


class Kubectl:
    """The cluster's own kubectl, bound to the local cluster's kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: str) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), "--kubeconfig", self.kubeconfig, "--request-timeout=30s", *args],
            input=stdin, capture_output=True, text=True, timeout=90, check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
        return done.stdout


def until(check: Callable[[], subprocess.CompletedProcess[str]], timeout: float) -> str:
    """Repeat a kubectl call until it succeeds (the API server publishes CRD schemas lazily)."""
    deadline = time.monotonic() + timeout
    while True:
        done = check()
        if done.returncode == 0 or time.monotonic() > deadline:
            assert done.returncode == 0, done.stderr
            return done.stdout
        time.sleep(0.5)  # pacing between retries of a condition, not a stand-in for one


@pytest.fixture(scope="module")
def kubectl(local_cluster: Any) -> Kubectl:
    return Kubectl(local_cluster.bin_dir / "kubectl", str(local_cluster.kubeconfig))


@pytest.fixture(scope="module")
def crd_applied(kubectl: Kubectl) -> str:
    """The committed CRD applied server-side; returns kubectl's report."""
    out = kubectl.ok(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}",
        "-f", str(CRD_FILE),
    )
    kubectl.ok(
        "wait", "--for=condition=Established", "--timeout=60s", f"crd/{SNAPSHOT_GROUP.name}"
    )
    return out


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl, crd_applied: str) -> Iterator[str]:
    name = f"crd-test-{uuid.uuid4().hex[:6]}"
    kubectl.ok("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


def bleater_group(name: str, namespace: str) -> dict[str, Any]:
    """The design's bleater group; its targets do not exist in the test namespace, so an
    operator watching the cluster fails it at planning, touching nothing."""
    group: dict[str, Any] = yaml.safe_load(f"""
apiVersion: snapgroup.dev/v1alpha1
kind: SnapshotGroup
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  volumeSnapshotClassName: csi-hostpath-snapclass
  freezeBudget: 60s
  writers:
    - kind: Deployment
      name: data-writer
  services:
    - name: postgres
      type: postgresql
      pvcs: [postgres-data]
      connection: {{secretRef: {{name: postgres-credentials}}}}
      lastRecord: {{table: events, column: created_at}}
    - name: mongodb
      type: mongodb
      pvcs: [mongodb-data]
      connection: {{secretRef: {{name: mongodb-credentials}}}}
      lastRecord: {{database: bleater, collection: events, field: created_at}}
    - name: minio
      type: minio
      pvcs: [minio-data]
      connection: {{secretRef: {{name: minio-credentials}}}}
      lastRecord: {{bucket: bleater}}
""")
    return group


def apply(kubectl: Kubectl, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-",
        stdin=yaml.safe_dump(body),
    )


def test_crd_applies_server_side(kubectl: Kubectl, crd_applied: str) -> None:
    assert SNAPSHOT_GROUP.name in crd_applied
    names = yaml.safe_load(kubectl.ok("get", f"crd/{SNAPSHOT_GROUP.name}", "-o", "yaml"))
    assert names["spec"]["names"]["shortNames"] == ["sg", "snapgroup"]
    # The short name and the category resolve for users.
    kubectl.ok("get", "sg", "--all-namespaces")
    kubectl.ok("get", "snapgroup", "--all-namespaces")


def test_kubectl_explain_lists_spec_fields_with_descriptions(
    kubectl: Kubectl, crd_applied: str
) -> None:
    text = until(lambda: kubectl("explain", "snapshotgroups.spec"), timeout=60)
    for field in ("freezeBudget", "writers", "services", "hooks", "volumeSnapshotClassName"):
        assert field in text
    assert "What to snapshot together. Immutable once the group is created." in text
    assert "Longest time writers may stay isolated and services quiesced" in text
    services = until(lambda: kubectl("explain", "snapshotgroups.spec.services"), timeout=30)
    assert "pvcSelector" in services
    assert "pg_backup_start" in services


def test_valid_group_is_accepted_and_listed(kubectl: Kubectl, namespace: str) -> None:
    done = apply(kubectl, bleater_group("accepted", namespace))
    assert done.returncode == 0, done.stderr
    stored = yaml.safe_load(kubectl.ok("get", "sg", "accepted", "-n", namespace, "-o", "yaml"))
    # Defaults of the models are applied by the API server.
    assert stored["spec"]["snapshotDeletionPolicy"] == "Delete"
    assert stored["spec"]["services"][0]["connection"]["timeout"] == "5s"
    table = kubectl.ok("get", "snapshotgroups", "-n", namespace, "-o", "wide")
    header = table.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "CONSISTENT", "VERIFIED", "FREEZE", "SNAPSHOTS", "AGE", "MESSAGE"]


def _both_name_and_selector(group: dict[str, Any]) -> None:
    group["spec"]["writers"][0]["selector"] = {"matchLabels": {"app": "data-writer"}}


def _last_record_without_column(group: dict[str, Any]) -> None:
    del group["spec"]["services"][0]["lastRecord"]["column"]


def _neither_pvcs_nor_selector(group: dict[str, Any]) -> None:
    del group["spec"]["services"][2]["pvcs"]


def _freeze_budget_soon(group: dict[str, Any]) -> None:
    group["spec"]["freezeBudget"] = "soon"


def _unknown_service_type(group: dict[str, Any]) -> None:
    group["spec"]["services"][1]["type"] = "redis"


@pytest.mark.parametrize(
    ("spoil", "field", "words"),
    [
        (_both_name_and_selector, "spec.writers[0]", "exactly one of name and selector"),
        (_last_record_without_column, "spec.services[0]", "needs table and column, or query"),
        (_neither_pvcs_nor_selector, "spec.services[2]", "exactly one of pvcs and pvcSelector"),
        (_freeze_budget_soon, "spec.freezeBudget", "soon"),
        (_unknown_service_type, "spec.services[1].type", "redis"),
    ],
    ids=["writer-name-and-selector", "lastrecord-without-column", "no-pvcs", "freeze-soon",
         "unknown-type"],
)
def test_api_server_rejects_invalid_groups_naming_the_field(
    kubectl: Kubectl, namespace: str, spoil: Callable[[dict[str, Any]], None], field: str,
    words: str,
) -> None:
    name = f"bad-{uuid.uuid4().hex[:6]}"
    group = bleater_group(name, namespace)
    spoil(group)
    done = apply(kubectl, group)
    assert done.returncode != 0, f"the API server accepted {field}"
    assert field in done.stderr
    assert words in done.stderr
    missing = kubectl("get", "sg", name, "-n", namespace)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def test_spec_of_an_existing_group_cannot_be_edited(kubectl: Kubectl, namespace: str) -> None:
    group = bleater_group("immutable", namespace)
    done = apply(kubectl, group)
    assert done.returncode == 0, done.stderr
    group["spec"]["freezeBudget"] = "30s"
    edited = apply(kubectl, group)
    assert edited.returncode != 0
    assert "spec is immutable once the group is created" in edited.stderr
    stored = yaml.safe_load(kubectl.ok("get", "sg", "immutable", "-n", namespace, "-o", "yaml"))
    assert stored["spec"]["freezeBudget"] == "60s"
