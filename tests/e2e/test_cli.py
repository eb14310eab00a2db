"""The `snapgroup` command as a person or a script uses it against the local cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.bleater import Bleater
from e2e.kube import Kube
from e2e.operator_process import REPO
from e2e.test_bleater_group import sample, services_without_mongodb
from snapgroup.api.restore import RESTORE_TARGET_LABEL

pytestmark = pytest.mark.cluster


def snapgroup(cluster: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI the way a user does, with the cluster's kubeconfig."""
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "snapgroup", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def versions(kube: Kube) -> dict[str, str]:
    """resourceVersions of everything a plan could touch in bleater."""
    found = {f"deploy/{d.metadata.name}": d.metadata.resource_version
             for d in kube.apps.list_namespaced_deployment("bleater").items}
    found |= {f"pvc/{c.metadata.name}": c.metadata.resource_version
              for c in kube.core.list_namespaced_persistent_volume_claim("bleater").items}
    found |= {f"secret/{s.metadata.name}": s.metadata.resource_version
              for s in kube.core.list_namespaced_secret("bleater").items}
    return found


def test_plan_lists_writers_volumes_and_hooks_in_order_and_changes_nothing(
    local_cluster: Any, crds: None, kube: Kube, tmp_path: Path
) -> None:
    before = versions(kube)
    result = snapgroup(local_cluster, "plan", "-f", str(REPO / "deploy/samples/bleater-snapshotgroup.yaml"),
                       "-o", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)[0]
    assert plan["writers"] == ["Deployment/data-writer"]
    assert [v["pvc"] for v in plan["volumes"]] == ["postgres-data", "mongodb-data", "minio-data"]
    assert [(h["step"], h["target"]) for h in plan["hooks"]] == [
        ("isolate", "writer:Deployment/data-writer"),
        ("quiesce", "service:postgres"), ("quiesce", "service:mongodb"), ("quiesce", "service:minio"),
        ("cut", "3 service(s)"),
        ("resume", "service:minio"), ("resume", "service:mongodb"), ("resume", "service:postgres"),
        ("resume", "writer:Deployment/data-writer"),
    ]
    assert plan["problems"] == []
    assert versions(kube) == before, "a dry run must not change anything"
    table = snapgroup(local_cluster, "plan", "-f", str(REPO / "deploy/samples/bleater-snapshotgroup.yaml"))
    assert "data-writer" in table.stdout and "No problems found" in table.stdout


def test_plan_of_a_broken_spec_lists_every_problem(local_cluster: Any, crds: None, tmp_path: Path) -> None:
    doc = sample("broken")
    doc["spec"]["writers"] = [{"name": "no-such-writer"}]
    doc["spec"]["services"][0]["pvcs"] = ["no-such-claim"]
    doc["spec"]["services"][1]["connection"]["secretRef"]["name"] = "no-such-secret"
    doc["spec"]["volumeSnapshotClassName"] = "no-such-class"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = snapgroup(local_cluster, "plan", "-f", str(path), "-o", "json")
    assert result.returncode == 1
    problems = {(p["reason"], p["field"]) for p in json.loads(result.stdout)[0]["problems"]}
    assert {
        ("WriterNotFound", "spec.writers[0].name"),
        ("PVCNotFound", "spec.services[0].pvcs[0]"),
        ("SecretNotFound", "spec.services[1].connection.secretRef.name"),
        ("VolumeSnapshotClassNotFound", "spec.volumeSnapshotClassName"),
    } <= problems


def test_verify_passes_a_consistent_group_and_fails_an_inconsistent_one(
    local_cluster: Any, armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    good, bad = f"{group_name}-ok", f"{group_name}-nowriter"
    armed("cut=pause:2")  # a cut as slow as a real driver's: the writer left out writes meanwhile
    kube.create_group(sample(good))
    kube.wait_group("bleater", good)
    kube.create_group(sample(bad, writers=[], services=services_without_mongodb()))
    kube.wait_group("bleater", bad)

    passed = snapgroup(local_cluster, "verify", good, "-n", "bleater")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "verified" in passed.stdout

    failed = snapgroup(local_cluster, "verify", bad, "-n", "bleater", "-o", "json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["passed"] is False
    failing = {c["subject"] for c in report["checks"] if not c["passed"]}
    assert failing & {"postgres", "minio"}, failing

    status = snapgroup(local_cluster, "status", good, "-n", "bleater")
    assert status.returncode == 0 and "Phase: Succeeded" in status.stdout
    missing = snapgroup(local_cluster, "verify", "no-such-group", "-n", "bleater")
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_restore_dry_runs_print_the_plan_and_change_nothing(
    local_cluster: Any, operator: Any, kube: Kube, group_name: str
) -> None:
    kube.create_group(sample(group_name))
    assert kube.wait_group("bleater", group_name)["status"]["phase"] == "Succeeded"
    kube.core.patch_namespace("bleater", {"metadata": {"labels": {RESTORE_TARGET_LABEL: "bleater"}}})
    try:
        before = versions(kube)
        restores = restore_names(kube)
        in_place = snapgroup(local_cluster, "restore", group_name, "-n", "bleater", "--in-place", "--dry-run")
        assert in_place.returncode == 0, in_place.stderr
        for claim, previous in (("postgres-data", volume_of(kube, "postgres-data")),
                                ("mongodb-data", volume_of(kube, "mongodb-data"))):
            line = next(row for row in in_place.stdout.splitlines() if row.startswith(claim))
            assert f"{group_name}-" in line and previous in line, line
        assert "previous volumes: Retain" in in_place.stdout
        writer = next(row for row in in_place.stdout.splitlines() if row.startswith("Deployment/data-writer"))
        assert "writer" in writer, writer
        assert "Dry run: nothing was created." in in_place.stdout
        clone = snapgroup(local_cluster, "restore", group_name, "-n", "bleater", "--to-namespace",
                          "bleater-copy", "--dry-run")
        # The clone's target does not exist: refused, naming the field.
        assert clone.returncode == 1 and "spec.targetNamespace" in clone.stderr, clone.stderr
        assert versions(kube) == before, "a dry run must not change anything"
        assert restore_names(kube) == restores, "a dry run creates no SnapshotGroupRestore"
    finally:
        kube.core.patch_namespace("bleater", {"metadata": {"labels": {RESTORE_TARGET_LABEL: None}}})
    refused = snapgroup(local_cluster, "restore", group_name, "-n", "bleater", "--in-place", "--dry-run")
    assert refused.returncode == 1 and "TargetNamespaceNotOptedIn" in refused.stderr, refused.stderr
    both = snapgroup(local_cluster, "restore", group_name, "--in-place", "--to-namespace", "x")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both.stderr


def restore_names(kube: Kube) -> set[str]:
    listed = kube.custom.list_namespaced_custom_object("snapgroup.dev", "v1alpha1", "bleater",
                                                       "snapshotgrouprestores")
    return {r["metadata"]["name"] for r in listed["items"]}


def volume_of(kube: Kube, claim: str) -> str:
    return str(kube.core.read_namespaced_persistent_volume_claim(claim, "bleater").spec.volume_name)
