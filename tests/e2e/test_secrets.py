"""Credentials never leak: not into a group's status, its Events, the operator's log, or the
error messages of failures (which end in the status and Events)."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from e2e.bleater import Bleater
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample

pytestmark = pytest.mark.cluster

WRONG_PASSWORD = "wrong-but-still-secret-0x5eed"


def test_passwords_appear_in_no_status_event_or_log(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    try:
        kube.core.create_namespaced_secret("bleater", {
            "metadata": {"name": "postgres-leaky"},
            "stringData": dict(bleater.pg, password=WRONG_PASSWORD)})
    except ApiException as exc:
        if exc.status != 409:
            raise
    good, bad = f"{group_name}-ok", f"{group_name}-badpw"
    kube.create_group(sample(good))
    doc = sample(bad)
    doc["spec"]["services"][0]["connection"]["secretRef"]["name"] = "postgres-leaky"
    kube.create_group(doc)
    groups = [kube.wait_group("bleater", name) for name in (good, bad)]
    assert groups[1]["status"]["phase"] == "Failed"  # the failure path ran, with its messages
    kube.wait_event_reasons("bleater", good, {"Succeeded"})
    kube.wait_event_reasons("bleater", bad, {"AuthenticationFailed"})  # scan the failure's Event too

    secrets = {
        bleater.pg["password"], bleater.mongo["password"], bleater.s3["secretKey"], WRONG_PASSWORD,
    }
    places = {
        "status": json.dumps([g["status"] for g in groups]),
        "events": json.dumps([e for name in (good, bad) for e in kube.events("bleater", name)]),
        "operator log": operator.log_path.read_text(errors="replace"),
    }
    for place, text in places.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"a credential appears in the {place}"
