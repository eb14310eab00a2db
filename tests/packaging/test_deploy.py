"""The kustomize installs as rendered: complete, least-privilege, and in step with the code.

Rendering needs only kubectl (its built-in kustomize); tests/cluster/test_install.py applies the
same manifests to a real API server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapgroup.adapters.leadership import LEADER_LEASE
from snapgroup.cli import parser

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy"
NAMESPACED = REPO / "deploy" / "overlays" / "namespaced"
OPERATOR_NAMESPACE = "snapgroup-system"
SERVICE_ACCOUNT = {"kind": "ServiceAccount", "name": "snapgroup", "namespace": OPERATOR_NAMESPACE}
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

Permission = tuple[str, str, str]
"""(API group, resource, verb)."""

# What the operator's code asks of the API server, and nothing else.
OPERATOR_PERMISSIONS: set[Permission] = {
    *(("snapgroup.dev", "snapshotgroups", v) for v in ("get", "list", "watch", "patch", "create", "delete")),
    *(("snapgroup.dev", "snapshotgroups/status", v) for v in ("get", "patch")),
    *(("snapgroup.dev", "snapshotgrouprestores", v) for v in ("get", "list", "watch", "patch")),
    *(("snapgroup.dev", "snapshotgrouprestores/status", v) for v in ("get", "patch")),
    *(("snapgroup.dev", "scheduledsnapshotgroups", v) for v in ("get", "list", "watch", "patch")),
    *(("snapgroup.dev", "scheduledsnapshotgroups/status", v) for v in ("get", "patch")),
    ("snapgroup.dev", "snapshotgroups/finalizers", "update"),
    ("snapgroup.dev", "scheduledsnapshotgroups/finalizers", "update"),
    *(("snapshot.storage.k8s.io", "volumesnapshots", v)
      for v in ("get", "list", "watch", "create", "delete", "patch")),
    *(("snapshot.storage.k8s.io", "volumesnapshotcontents", v) for v in ("get", "list", "create", "delete")),
    *(("snapshot.storage.k8s.io", "volumesnapshotclasses", v) for v in ("get", "list")),
    *(("", "persistentvolumeclaims", v) for v in ("get", "list")),
    *(("", "persistentvolumes", v) for v in ("get", "list", "watch", "patch")),
    ("", "secrets", "get"),
    ("", "configmaps", "get"),
    ("", "services", "list"),
    *(("", "pods", v) for v in ("list", "watch")),
    *(("", "events", v) for v in ("create", "patch")),
    *(("events.k8s.io", "events", v) for v in ("create", "patch")),
    *(("storage.k8s.io", "storageclasses", v) for v in ("get", "list")),
    *(("apps", r, v) for r in ("deployments", "statefulsets") for v in ("get", "list", "patch")),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "list", "watch", "create", "patch", "delete")),
    *(("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")),
    *(("", "namespaces", v) for v in ("get", "list", "watch")),
}
# Leader election, in the operator's namespace: create any Lease (create cannot be limited to a
# name), read and renew only the leader's.
LEADER_ELECTION_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [LEADER_LEASE],
     "verbs": ["get", "patch"]},
]
CLUSTER_SCOPED = {
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"),
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"),
    ("", "persistentvolumes"),
    ("storage.k8s.io", "storageclasses"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
}


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found:
        return found
    from localcluster.build import ensure_binaries

    return str(ensure_binaries() / "kubectl")


def render(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def install() -> list[dict[str, Any]]:
    return render(INSTALL)


@pytest.fixture(scope="module")
def namespaced() -> list[dict[str, Any]]:
    return render(NAMESPACED)


def only(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def permissions(rules: Iterable[dict[str, Any]]) -> set[Permission]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def granted_to_operator(docs: list[dict[str, Any]], binding_kind: str) -> list[dict[str, Any]]:
    """The (Cluster)Roles that (Cluster)RoleBindings grant to the operator's ServiceAccount."""
    role_kind = "ClusterRole" if binding_kind == "ClusterRoleBinding" else "Role"
    granted = []
    for binding in only(docs, binding_kind):
        if SERVICE_ACCOUNT not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        assert ref["kind"] == role_kind, f"{binding['metadata']['name']} binds a {ref['kind']}"
        namespace = binding["metadata"].get("namespace")
        (role,) = [
            r for r in only(docs, role_kind, ref["name"]) if r["metadata"].get("namespace") == namespace
        ]
        granted.append(role)
    return granted


def in_watched_namespaces(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Roles granted to the operator for groups: all but the leader election's."""
    return [r for r in granted_to_operator(docs, "RoleBinding")
            if r["metadata"]["namespace"] != OPERATOR_NAMESPACE]


def committed_crds() -> set[str]:
    return {
        yaml.safe_load(path.read_text())["metadata"]["name"]
        for path in sorted((REPO / "crds").glob("snapgroup.dev_*.yaml"))
    }


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = only(docs, "Deployment", "snapgroup")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


@pytest.mark.parametrize("directory", [INSTALL, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_install_holds_every_committed_crd(directory: Path) -> None:
    rendered = {d["metadata"]["name"] for d in only(render(directory), "CustomResourceDefinition")}
    assert rendered == committed_crds(), "list every crds/snapgroup.dev_*.yaml in crds/Kustomization"


def test_cluster_wide_service_account_gets_exactly_what_the_operator_uses(
    install: list[dict[str, Any]],
) -> None:
    assert not in_watched_namespaces(install)
    roles = granted_to_operator(install, "ClusterRoleBinding")
    assert [r["metadata"]["name"] for r in roles] == ["snapgroup"]
    granted = permissions(roles[0]["rules"])
    assert granted - OPERATOR_PERMISSIONS == set(), "more than the operator uses"
    assert OPERATOR_PERMISSIONS - granted == set(), "less than the operator uses"
    for rule in roles[0]["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule


def test_namespaced_overlay_grants_only_cluster_scoped_reads_cluster_wide(
    namespaced: list[dict[str, Any]],
) -> None:
    cluster_roles = granted_to_operator(namespaced, "ClusterRoleBinding")
    assert [r["metadata"]["name"] for r in cluster_roles] == ["snapgroup-cluster-reads"]
    cluster_wide = permissions(cluster_roles[0]["rules"])
    assert {(group, resource) for group, resource, _ in cluster_wide} <= CLUSTER_SCOPED
    # Reads only, but for a clone's static snapshot contents (Retain: a copy owns no data) and an
    # in-place restore's patches of volumes (keep, bind, label): never creating or deleting one.
    writes = {(g, r, verb) for g, r, verb in cluster_wide if verb not in ("get", "list", "watch")}
    assert {(g, r) for g, r, verb in writes if r != "persistentvolumes"} <= {
        ("snapshot.storage.k8s.io", "volumesnapshotcontents")}
    assert {verb for _, r, verb in writes if r == "persistentvolumes"} <= {"patch"}


def test_namespaced_overlay_adds_up_to_the_cluster_wide_grant(namespaced: list[dict[str, Any]]) -> None:
    (cluster_reads,) = granted_to_operator(namespaced, "ClusterRoleBinding")
    roles = in_watched_namespaces(namespaced)
    assert roles, "no Role in any watched namespace"
    for role in roles:
        within = permissions(role["rules"])
        assert not {(g, r) for g, r, _ in within} & CLUSTER_SCOPED
        # Each watched namespace gets the whole job, so the two installs behave alike there.
        assert within | permissions(cluster_reads["rules"]) == OPERATOR_PERMISSIONS, (
            role["metadata"]["namespace"]
        )


def test_namespaced_operator_watches_exactly_the_namespaces_it_has_roles_in(
    namespaced: list[dict[str, Any]],
) -> None:
    with_roles = {r["metadata"]["namespace"] for r in in_watched_namespaces(namespaced)}
    args = parser().parse_args(operator_container(namespaced)["args"])
    assert args.command == "run" and args.leader_elect
    assert set(args.namespace) == with_roles == {"bleater"}


@pytest.mark.parametrize("directory", [INSTALL, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_leader_election_may_take_and_renew_only_the_leader_lease(directory: Path) -> None:
    docs = render(directory)
    roles = {r["metadata"]["name"]: r for r in granted_to_operator(docs, "RoleBinding")
             if r["metadata"]["namespace"] == OPERATOR_NAMESPACE}
    assert set(roles) == {"snapgroup-leader-election", "snapgroup-server-leases"}
    assert roles["snapgroup-leader-election"]["rules"] == LEADER_ELECTION_RULES
    # The database servers' exclusion Leases (hashed names) are in the operator's namespace:
    # Leases only, nothing else there.
    assert roles["snapgroup-server-leases"]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]
    args = parser().parse_args(operator_container(docs)["args"])
    assert args.leader_elect and args.leader_election_id == LEADER_LEASE
    # In a pod, the Lease is in the pod's namespace: the one the Role is in.
    assert args.leader_election_namespace is None


def test_deployment_matches_the_image_and_the_command(install: list[dict[str, Any]]) -> None:
    (deployment,) = only(install, "Deployment", "snapgroup")
    spec = deployment["spec"]
    assert deployment["metadata"]["namespace"] == OPERATOR_NAMESPACE
    # Two replicas, one leader; a rolling update starts the new pod as a standby first.
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT["name"]
    container = operator_container(install)
    assert container["image"] == f"snapgroup:{VERSION}"
    defaults = parser().parse_args(container["args"])
    assert defaults.command == "run" and defaults.namespace is None and defaults.leader_elect

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    liveness = re.fullmatch(r"http://[^:/]+:(\d+)(/.*)", defaults.liveness)
    assert liveness, defaults.liveness
    for probe in ("startupProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert ports[check["port"]] == int(liveness.group(1)) and check["path"] == liveness.group(2)
    assert ports["metrics"] == defaults.metrics_port
    (service,) = only(install, "Service", "snapgroup-metrics")
    assert service["spec"]["ports"][0]["port"] == defaults.metrics_port
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(defaults.metrics_port)
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()

    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_operator_runs_unprivileged_on_a_read_only_root(install: list[dict[str, Any]]) -> None:
    (deployment,) = only(install, "Deployment", "snapgroup")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(install)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    # The image's USER; the Dockerfile test pins it there.
    assert context["runAsUser"] == pod["securityContext"]["runAsUser"] == 65532
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # HOME=/tmp in the image: the one writable place.
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    (namespace,) = only(install, "Namespace", OPERATOR_NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_install_leaves_out_the_samples(install: list[dict[str, Any]]) -> None:
    namespaces = {d["metadata"].get("namespace") for d in install} - {None}
    assert namespaces == {OPERATOR_NAMESPACE}


def test_the_admission_policy_is_what_its_generator_writes() -> None:
    done = subprocess.run([sys.executable, str(REPO / "hack" / "admission_policy.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
