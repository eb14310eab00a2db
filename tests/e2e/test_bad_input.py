"""Bad input fails the group with a reason naming the field, and touches nothing.

After each failure: the writer's Deployment is unchanged (same resourceVersion), no
VolumeSnapshot exists for the group, the journal shows no step applied, and the writer keeps
writing to every service (so MongoDB is not locked and nothing is isolated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.bleater import SERVICES, Bleater
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample

pytestmark = pytest.mark.cluster


def _service(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in doc["spec"]["services"] if s["name"] == name)


def missing_pvc(doc: dict[str, Any]) -> None:
    _service(doc, "postgres")["pvcs"] = ["no-such-claim"]


def missing_secret(doc: dict[str, Any]) -> None:
    _service(doc, "mongodb")["connection"]["secretRef"]["name"] = "no-such-secret"


def missing_writer(doc: dict[str, Any]) -> None:
    doc["spec"]["writers"] = [{"kind": "Deployment", "name": "no-such-writer"}]


def missing_class(doc: dict[str, Any]) -> None:
    doc["spec"]["volumeSnapshotClassName"] = "no-such-class"


def postgres_secret(name: str) -> Callable[[dict[str, Any]], None]:
    """Point the postgres service at another Secret."""
    def change(doc: dict[str, Any]) -> None:
        _service(doc, "postgres")["connection"]["secretRef"]["name"] = name
    return change


@dataclass(frozen=True)
class Breakage:
    """One way to get the input wrong, and the Secret it needs, if any."""

    mutate: Callable[[dict[str, Any]], None]
    secret: str | None = None
    secret_overrides: tuple[tuple[str, str], ...] = ()


CASES = [
    pytest.param(Breakage(missing_pvc), "PVCNotFound", "spec.services[0].pvcs[0]", id="missing-pvc"),
    pytest.param(Breakage(missing_secret), "SecretNotFound",
                 "spec.services[1].connection.secretRef.name", id="missing-secret"),
    pytest.param(Breakage(missing_writer), "WriterNotFound", "spec.writers[0].name", id="missing-writer"),
    pytest.param(Breakage(missing_class), "VolumeSnapshotClassNotFound", "spec.volumeSnapshotClassName",
                 id="missing-snapshot-class"),
    pytest.param(Breakage(postgres_secret("postgres-unreachable"), "postgres-unreachable", (("port", "1"),)),
                 "DatabaseUnreachable", "spec.services[0]", id="unreachable-database"),
    pytest.param(Breakage(postgres_secret("postgres-wrong-password"), "postgres-wrong-password",
                          (("password", "not-the-password"),)),
                 "AuthenticationFailed", "spec.services[0]", id="wrong-credentials"),
]


@pytest.mark.parametrize(("breakage", "reason", "field"), CASES)
def test_bad_input_fails_cleanly(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str,
    breakage: Breakage, reason: str, field: str,
) -> None:
    if breakage.secret is not None:
        data = dict(bleater.pg, **dict(breakage.secret_overrides))
        try:
            kube.core.create_namespaced_secret(
                "bleater", {"metadata": {"name": breakage.secret}, "stringData": data})
        except ApiException as exc:
            if exc.status != 409:
                raise
    writer_before = kube.deployment("bleater", "data-writer")
    doc = sample(group_name)
    breakage.mutate(doc)
    kube.create_group(doc)
    group = kube.wait_group("bleater", group_name)

    status = group["status"]
    assert status["phase"] == "Failed"
    failed = condition(group, "Succeeded")
    assert failed["status"] == "False" and failed["reason"] == reason, failed
    assert field in failed["message"] and "nothing was touched" in failed["message"]
    assert not status.get("hooks"), "no step may have been applied"
    assert kube.snapshots("bleater", f"snapgroup.dev/group={group_name}") == []
    writer_after = kube.deployment("bleater", "data-writer")
    assert writer_after.metadata.resource_version == writer_before.metadata.resource_version
    kube.wait_event_reasons("bleater", group_name, {reason})
    newest = min(max(r.seq for r in bleater.records(s)) for s in SERVICES)
    bleater.wait_new_records(newest)


def test_spec_edit_after_start_is_rejected(
    operator: OperatorProcess, kube: Kube, group_name: str
) -> None:
    kube.create_group(sample(group_name))
    with pytest.raises(ApiException) as rejected:
        kube.custom.patch_namespaced_custom_object(
            "snapgroup.dev", "v1alpha1", "bleater", "snapshotgroups", group_name,
            {"spec": {"freezeBudget": "5s"}})
    assert rejected.value.status == 422
    assert "immutable" in str(rejected.value.body)
    kube.wait_group("bleater", group_name)
