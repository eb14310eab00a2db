"""deploy/admission on the real API server: a user may create a SnapshotGroup or
ScheduledSnapshotGroup only for writers they may scale and Secrets they may read, and a
SnapshotGroupRestore only where they may create (and, in place, replace) what it consists of.

Users are ServiceAccounts of the test namespace with tokens from the TokenRequest API, each bound
to its own Role; requests are server-side dry runs (admission runs, nothing is stored, so no
operator acts on them).
"""

from __future__ import annotations

import copy
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.sa_kubeconfig import service_account_kubeconfig
from e2e.operator_process import REPO

pytestmark = pytest.mark.cluster

POLICY = "snapgroup-requester-may-freeze"
RESTORE_POLICY = "snapgroup-requester-may-restore"
VERIFY_POLICY = "snapgroup-requester-may-verify"
CREATE_GROUPS = {"apiGroups": ["snapgroup.dev"],
                 "resources": ["snapshotgroups", "scheduledsnapshotgroups"], "verbs": ["create"]}
SCALE_ALL = {"apiGroups": ["apps"], "resources": ["deployments/scale", "statefulsets/scale"],
             "verbs": ["update"]}
SECRETS = ["postgres-credentials", "mongodb-credentials", "minio-credentials"]
SNAPSHOTS = {"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["volumesnapshots"],
             "verbs": ["create"]}
CREATE_RESTORES = {"apiGroups": ["snapgroup.dev"], "resources": ["snapshotgrouprestores"],
                   "verbs": ["create"]}
ANNOTATE_GROUPS = {"apiGroups": ["snapgroup.dev"], "resources": ["snapshotgroups"], "verbs": ["patch", "get"]}
RESTORE_BASICS = [CREATE_RESTORES, {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}]
USERS: dict[str, list[dict[str, Any]]] = {
    # May do everything the sample group asks for.
    "allowed": [CREATE_GROUPS, SCALE_ALL, SNAPSHOTS,
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    # May do all but take snapshots.
    "nosnap": [CREATE_GROUPS, SCALE_ALL,
               {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    # May create groups, and nothing else: the review's case.
    "denied": [CREATE_GROUPS],
    # May scale data-writer only, and read only the three service Secrets.
    "narrow": [CREATE_GROUPS, SNAPSHOTS,
               {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"],
                "resourceNames": ["data-writer"]},
               {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                "resourceNames": SECRETS}],
    # May do all the sample group asks for, annotate groups, and create what a verification makes.
    "verifier": [CREATE_GROUPS, SCALE_ALL, SNAPSHOTS,
                 {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
                 {"apiGroups": [""], "resources": ["persistentvolumeclaims", "pods"], "verbs": ["create"]},
                 ANNOTATE_GROUPS],
    # May annotate groups, and nothing else.
    "annotator": [ANNOTATE_GROUPS],
    # May create restores, and nothing else.
    "restore-only": [CREATE_RESTORES],
    # May create claims and workloads (a clone), not delete claims or scale (in place).
    "cloner": [*RESTORE_BASICS,
               {"apiGroups": [""], "resources": ["persistentvolumeclaims", "services"], "verbs": ["create"]},
               {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["create"]}],
    # May replace claims and stop workloads (in place), not create workloads (a clone).
    "replacer": [*RESTORE_BASICS, SCALE_ALL,
                 {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create", "delete"]}],
}


def group(namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroup",
        "metadata": {"name": f"g-{uuid.uuid4().hex[:6]}", "namespace": namespace},
        "spec": {
            "writers": [{"kind": "Deployment", "name": "data-writer"}],
            "services": [
                {"name": name.split("-")[0], "type": kind, "pvcs": [f"{name.split('-')[0]}-data"],
                 "connection": {"secretRef": {"name": name}}}
                for name, kind in zip(SECRETS, ("postgresql", "mongodb", "minio"), strict=True)
            ],
        },
    }
    body["spec"].update(spec)
    return body


def schedule(namespace: str, template_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "snapgroup.dev/v1alpha1", "kind": "ScheduledSnapshotGroup",
        "metadata": {"name": f"s-{uuid.uuid4().hex[:6]}", "namespace": namespace},
        "spec": {"schedule": "@daily", "template": {"spec": template_spec}},
    }


class Users:
    """Server-side dry-run creates as each test user."""

    def __init__(self, local_cluster: Any, namespace: str) -> None:
        self.kubectl_bin = local_cluster.bin_dir / "kubectl"
        self.configs: dict[str, Path] = {
            user: service_account_kubeconfig(local_cluster, namespace, user) for user in USERS}

    def create(self, user: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", str(self.configs[user]), "--request-timeout=30s",
             "create", "--dry-run=server", "-o", "name", "-f", "-"],
            input=yaml.safe_dump(body), capture_output=True, text=True, timeout=60, check=False)

    def annotate(self, user: str, name: str, value: str) -> subprocess.CompletedProcess[str]:
        """A server-side dry run of `kubectl annotate` on a SnapshotGroup, as user."""
        return subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", str(self.configs[user]), "--request-timeout=30s",
             "annotate", "--dry-run=server", "--overwrite", f"snapshotgroup/{name}",
             f"snapgroup.dev/verify-requested={value}"],
            capture_output=True, text=True, timeout=60, check=False)

    def admitted(self, user: str, body: dict[str, Any]) -> None:
        done = self.create(user, body)
        assert done.returncode == 0, done.stderr

    def refused(self, user: str, body: dict[str, Any], policy: str = POLICY) -> str:
        done = self.create(user, body)
        assert done.returncode != 0, f"{user} was admitted: {done.stdout}"
        assert policy in done.stderr, done.stderr
        return done.stderr


@pytest.fixture(scope="module")
def users(local_cluster: Any) -> Iterator[Users]:
    """The CRDs and deploy/admission applied, a namespace with the three users, and the policy
    in force (it takes effect a moment after it is created)."""
    local_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    local_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/snapshotgroups.snapgroup.dev", "crd/scheduledsnapshotgroups.snapgroup.dev",
                          "crd/snapshotgrouprestores.snapgroup.dev")
    local_cluster.kubectl("apply", "--server-side", "-k", str(REPO / "deploy" / "admission"))
    namespace = f"admission-{uuid.uuid4().hex[:6]}"
    manifests: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": namespace}}]
    for user, rules in USERS.items():
        meta = {"name": user, "namespace": namespace}
        manifests += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
             "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
             "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": namespace}]},
        ]
    local_cluster.kubectl("apply", "-f", "-", input="---\n".join(yaml.safe_dump(m) for m in manifests))
    made = Users(local_cluster, namespace)
    probe = group(namespace)
    deadline = time.monotonic() + 60
    while made.create("denied", probe).returncode == 0:
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.2)  # pacing between probes of the condition, not a stand-in for it
    made.namespace = namespace  # type: ignore[attr-defined]
    try:
        yield made
    finally:
        local_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        local_cluster.kubectl("delete", "--ignore-not-found", "-k", str(REPO / "deploy" / "admission"),
                              check=False)


def ns(users: Users) -> str:
    return str(users.namespace)  # type: ignore[attr-defined]


def test_a_user_who_may_scale_and_read_everything_is_admitted(users: Users) -> None:
    users.admitted("allowed", group(ns(users)))
    users.admitted("allowed", group(ns(users), writers=[
        {"kind": "StatefulSet", "selector": {"matchLabels": {"app": "x"}}}]))
    users.admitted("allowed", schedule(ns(users), group(ns(users))["spec"]))


def test_a_user_who_may_only_create_groups_is_refused_naming_writers_and_secrets(users: Users) -> None:
    message = users.refused("denied", group(ns(users)))
    assert "may not update the scale of Deployment/data-writer" in message
    assert "spec.writers" in message
    # With no writers, the Secrets are what is refused.
    message = users.refused("denied", group(ns(users), writers=[]))
    assert "may not get Secret postgres-credentials" in message and "spec.services" in message
    # The schedule says where in its spec.
    message = users.refused("denied", schedule(ns(users), group(ns(users))["spec"]))
    assert "spec.template.spec.writers" in message


def test_a_user_who_may_not_take_snapshots_gets_none_through_the_operator(users: Users) -> None:
    assert "may not create volumesnapshots" in users.refused("nosnap", group(ns(users)))


def test_permissions_are_checked_per_name_and_per_kind(users: Users) -> None:
    namespace = ns(users)
    users.admitted("narrow", group(namespace))
    # Another Deployment, a StatefulSet of the same name, a selector (all Deployments): refused.
    for writer, named in (({"kind": "Deployment", "name": "payments"}, "Deployment/payments"),
                          ({"kind": "StatefulSet", "name": "data-writer"}, "StatefulSet/data-writer"),
                          ({"kind": "Deployment", "selector": {"matchLabels": {"app": "bleater"}}},
                           "Deployment/* (selector)")):
        message = users.refused("narrow", group(namespace, writers=[writer]))
        assert named in message
    # A Secret beyond its reach, as a service's connection or a separate record reader.
    body = group(namespace)
    body["spec"]["services"][0]["connection"]["secretRef"]["name"] = "payments-db"
    assert "may not get Secret payments-db" in users.refused("narrow", body)
    body = group(namespace)
    body["spec"]["services"][0]["lastRecord"] = {"table": "events", "column": "created_at",
                                                 "secretRef": {"name": "admin-db"}}
    assert "may not get Secret admin-db" in users.refused("narrow", body)


def test_hooks_cannot_reach_what_writers_cannot(users: Users) -> None:
    namespace = ns(users)
    scale_hook = {"name": "stop-payments", "type": "scale",
                  "params": {"kind": "Deployment", "name": "payments"}}
    message = users.refused("narrow", group(namespace, hooks={"pre": [scale_hook]}))
    assert "Deployment/payments" in message
    service_hook = {"name": "other-db", "type": "postgresql",
                    "params": {"name": "other", "type": "postgresql", "pvcs": ["x"],
                               "connection": {"secretRef": {"name": "payments-db"}}}}
    assert "payments-db" in users.refused("narrow", group(namespace, hooks={"post": [service_hook]}))
    users.admitted("allowed", group(namespace, hooks={"pre": [copy.deepcopy(scale_hook)]}))


def test_more_targets_than_the_policy_can_check_are_refused(users: Users) -> None:
    many = [{"kind": "Deployment", "name": f"w{i}"} for i in range(11)]
    assert "at most 10 writers" in users.refused("allowed", group(ns(users), writers=many))


def restore(namespace: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
            "metadata": {"name": f"r-{uuid.uuid4().hex[:6]}", "namespace": namespace},
            "spec": {"groupName": "bleater-snapshot", **spec}}


def test_a_verification_by_restoring_needs_the_right_to_create_what_it_makes(
    users: Users, local_cluster: Any
) -> None:
    namespace = ns(users)
    users.admitted("verifier", group(namespace, verify="Restore"))
    message = users.refused("allowed", group(namespace, verify="Restore"), VERIFY_POLICY)
    assert f"may not create persistentvolumeclaims in {namespace}" in message and "verify: Restore" in message
    message = users.refused("allowed", schedule(namespace, group(namespace, verify="Restore")["spec"]),
                            VERIFY_POLICY)
    assert "verify: Restore" in message
    users.admitted("allowed", group(namespace, verify="None"))
    # Asking with the annotation (`snapgroup verify --restore`) needs the same.
    stored = group(namespace)
    local_cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(stored))
    name = stored["metadata"]["name"]
    try:
        done = users.annotate("annotator", name, "first")
        assert done.returncode != 0 and VERIFY_POLICY in done.stderr, done
        assert "the snapgroup.dev/verify-requested annotation" in done.stderr
        done = users.annotate("verifier", name, "first")
        assert done.returncode == 0, done.stderr
    finally:
        local_cluster.kubectl("delete", "snapshotgroup", name, "-n", namespace, "--wait=false", check=False)


def test_a_restore_in_place_needs_the_right_to_replace_claims_and_stop_workloads(users: Users) -> None:
    namespace = ns(users)
    users.admitted("replacer", restore(namespace, inPlace=True))
    message = users.refused("cloner", restore(namespace, inPlace=True), RESTORE_POLICY)
    assert f"may not delete persistentvolumeclaims in {namespace}" in message and "spec.inPlace" in message
    message = users.refused("restore-only", restore(namespace, inPlace=True), RESTORE_POLICY)
    assert f"may not get secrets in {namespace}" in message
    # Having the previous volumes deleted needs the right to delete volumes oneself.
    message = users.refused("replacer", restore(namespace, inPlace=True, previousVolumes="Delete"),
                            RESTORE_POLICY)
    assert "may not delete persistentvolumes" in message and "spec.previousVolumes" in message


def test_a_clone_needs_the_right_to_create_its_objects_in_the_target(users: Users) -> None:
    namespace = ns(users)
    users.admitted("cloner", restore(namespace, targetNamespace=namespace))
    message = users.refused("replacer", restore(namespace, targetNamespace=namespace), RESTORE_POLICY)
    assert f"may not create services in {namespace}" in message
    elsewhere = f"other-{uuid.uuid4().hex[:6]}"
    message = users.refused("cloner", restore(namespace, targetNamespace=elsewhere), RESTORE_POLICY)
    assert f"may not create persistentvolumeclaims in {elsewhere}" in message
