"""Installing the operator with kustomize, and what its ServiceAccount may and may not do.

The cluster-wide install (`kubectl apply -k deploy/`) is applied for real: the API server
validates every object, and the Deployment's pod is admitted in a namespace enforcing the
restricted Pod Security Standard (the node emulator does not run the operator image, so the
pod stays Pending). The namespaced overlay is then applied in its place and probed with real
requests made with a token of the `snapgroup` ServiceAccount.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.sa_kubeconfig import service_account_kubeconfig
from localcluster.build import ensure_binaries
from snapgroup.adapters.leadership import LEADER_LEASE

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "deploy"
NAMESPACED = REPO / "deploy" / "overlays" / "namespaced"
OPERATOR_NAMESPACE = "snapgroup-system"
SERVICE_ACCOUNT = "snapgroup"
AS_OPERATOR = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
WATCHED = "bleater"  # the namespace the overlay watches as shipped
FIELD_MANAGER = "snapgroup-install-tests"


class Kubectl:
    """The cluster's own kubectl, bound to one kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.kubeconfig), "--request-timeout=30s", *args],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self(*args, stdin=stdin)
        assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
        return done.stdout

    def forbidden(self, *args: str) -> str:
        """Run a request that RBAC must refuse; returns the API server's message."""
        done = self(*args)
        assert done.returncode != 0, f"kubectl {' '.join(args)} was allowed: {done.stdout}"
        assert "Forbidden" in done.stderr or "forbidden" in done.stderr, done.stderr
        return done.stderr

    def can_i(self, verb: str, resource: str, *scope: str) -> bool:
        """`kubectl auth can-i`; ``resource`` may name a subresource as ``pods/exec``."""
        kind, _, subresource = resource.partition("/")
        extra = (f"--subresource={subresource}",) if subresource else ()
        done = self("auth", "can-i", verb, kind, *extra, *scope)
        answer = done.stdout.strip()
        assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource}: {done.stderr}"
        return answer == "yes"


def render(directory: Path) -> list[dict[str, Any]]:
    """The manifests a kustomization produces, as the cluster's kubectl renders them."""
    kubectl = ensure_binaries() / "kubectl"
    done = subprocess.run(
        [str(kubectl), "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def installed_objects(*directories: Path) -> list[dict[str, Any]]:
    """What the installs create besides the CRDs (other tests share those, with their objects)."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for directory in directories:
        for doc in render(directory):
            if doc["kind"] == "CustomResourceDefinition":
                continue
            meta = doc["metadata"]
            seen[(doc["kind"], meta.get("namespace", ""), meta["name"])] = doc
    return list(seen.values())


def eventually(check: Any, timeout: float = 30.0) -> Any:
    """Repeat check() until it returns without an AssertionError.

    RBAC changes reach the API server's authorizer through an informer, a moment after the
    write that made them.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.3)  # pacing between retries of a condition, not a stand-in for one


@pytest.fixture(scope="module")
def kubectl(local_cluster: Any) -> Kubectl:
    return Kubectl(local_cluster.bin_dir / "kubectl", Path(local_cluster.kubeconfig))


@pytest.fixture(scope="module")
def install(kubectl: Kubectl) -> Iterator[subprocess.CompletedProcess[str]]:
    """`kubectl apply -k deploy/ --server-side`, as a user installs; removed again at the end."""
    done = kubectl("apply", "-k", str(INSTALL), "--server-side", f"--field-manager={FIELD_MANAGER}")
    yield done
    leftovers = installed_objects(INSTALL, NAMESPACED)
    kubectl(
        "delete", "--ignore-not-found", "--wait=false", "-f", "-",
        stdin=yaml.safe_dump_all(leftovers),
    )


def test_install_applies_server_side(kubectl: Kubectl, install: subprocess.CompletedProcess[str]) -> None:
    assert install.returncode == 0, install.stderr
    # The API server would have warned here if the pod template broke the namespace's policy.
    assert "PodSecurity" not in install.stderr, install.stderr
    for doc in render(INSTALL):
        if doc["kind"] == "CustomResourceDefinition":
            kubectl.ok(
                "wait", "--for=condition=Established", "--timeout=60s", f"crd/{doc['metadata']['name']}"
            )
    deployment = json.loads(
        kubectl.ok("get", "deployment", "snapgroup", "-n", OPERATOR_NAMESPACE, "-o", "json")
    )
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    service = json.loads(
        kubectl.ok("get", "service", "snapgroup-metrics", "-n", OPERATOR_NAMESPACE, "-o", "json")
    )
    assert service["spec"]["clusterIP"], "the metrics Service got no ClusterIP"
    kubectl.ok("get", "serviceaccount", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE)


def test_operator_pod_is_admitted_under_restricted_pod_security(
    kubectl: Kubectl, install: subprocess.CompletedProcess[str]
) -> None:
    namespace = json.loads(kubectl.ok("get", "namespace", OPERATOR_NAMESPACE, "-o", "json"))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"

    def pod_created() -> list[dict[str, Any]]:
        pods = json.loads(
            kubectl.ok(
                "get", "pods", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/name=snapgroup",
                "-o", "json",
            )
        )["items"]
        events = kubectl.ok(
            "get", "events", "-n", OPERATOR_NAMESPACE, "--field-selector", "reason=FailedCreate",
            "-o", "custom-columns=MESSAGE:.message", "--no-headers",
        )
        # A pod the policy refuses is never created; the ReplicaSet reports why.
        assert "violates PodSecurity" not in events, events
        assert pods, "the Deployment has no pod yet"
        return list(pods)

    pods = eventually(pod_created, timeout=60)
    container = pods[0]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["run", "--leader-elect"]


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("watch", "snapshotgroups.snapgroup.dev", None),
        ("patch", "snapshotgroups.snapgroup.dev", WATCHED),
        ("create", "snapshotgroups.snapgroup.dev", WATCHED),
        ("delete", "snapshotgroups.snapgroup.dev", WATCHED),
        ("patch", "snapshotgroups.snapgroup.dev/status", WATCHED),
        ("watch", "scheduledsnapshotgroups.snapgroup.dev", None),
        ("patch", "scheduledsnapshotgroups.snapgroup.dev/status", WATCHED),
        ("create", "volumesnapshots.snapshot.storage.k8s.io", WATCHED),
        ("watch", "volumesnapshots.snapshot.storage.k8s.io", WATCHED),
        ("delete", "volumesnapshots.snapshot.storage.k8s.io", WATCHED),
        ("get", "volumesnapshotcontents.snapshot.storage.k8s.io", None),
        ("create", "volumesnapshotcontents.snapshot.storage.k8s.io", None),
        ("delete", "volumesnapshotcontents.snapshot.storage.k8s.io", None),
        ("get", "configmaps", WATCHED),
        ("list", "services", WATCHED),
        ("watch", "snapshotgrouprestores.snapgroup.dev", None),
        ("patch", "snapshotgrouprestores.snapgroup.dev/status", WATCHED),
        ("list", "volumesnapshotclasses.snapshot.storage.k8s.io", None),
        ("list", "persistentvolumeclaims", WATCHED),
        ("get", "persistentvolumes", None),
        ("watch", "persistentvolumes", None),
        ("patch", "persistentvolumes", None),
        ("get", "storageclasses.storage.k8s.io", None),
        ("get", "secrets", WATCHED),
        ("watch", "pods", WATCHED),
        ("patch", "deployments.apps", WATCHED),
        ("patch", "statefulsets.apps", WATCHED),
        ("list", "deployments.apps", None),
        ("create", "events", WATCHED),
        ("create", "events.events.k8s.io", WATCHED),
        ("create", "leases.coordination.k8s.io", WATCHED),
        ("patch", "leases.coordination.k8s.io", WATCHED),
        ("watch", "leases.coordination.k8s.io", WATCHED),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("list", "namespaces", None),
    ],
)
def test_cluster_wide_service_account_may_do_what_the_operator_does(
    kubectl: Kubectl, install: subprocess.CompletedProcess[str], verb: str, resource: str,
    namespace: str | None,
) -> None:
    scope = ("-n", namespace) if namespace else ("--all-namespaces",)
    assert kubectl.can_i(verb, resource, "--as", AS_OPERATOR, *scope)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace"),
    [
        ("list", "secrets", WATCHED),  # credentials are read by name only
        ("create", "secrets", WATCHED),
        ("list", "configmaps", WATCHED),
        ("create", "configmaps", WATCHED),
        ("create", "services", WATCHED),
        ("create", "persistentvolumeclaims", WATCHED),
        ("create", "deployments.apps", WATCHED),
        ("create", "pods", WATCHED),
        ("delete", "pods", WATCHED),
        ("create", "pods/exec", WATCHED),
        ("delete", "deployments.apps", WATCHED),
        ("update", "deployments.apps", WATCHED),
        ("delete", "persistentvolumeclaims", WATCHED),
        ("delete", "persistentvolumes", None),
        ("update", "snapshotgroups.snapgroup.dev", WATCHED),
        ("create", "snapshotgrouprestores.snapgroup.dev", WATCHED),
        ("create", "scheduledsnapshotgroups.snapgroup.dev", WATCHED),
        ("delete", "scheduledsnapshotgroups.snapgroup.dev", WATCHED),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None),
        ("create", "serviceaccounts/token", OPERATOR_NAMESPACE),
    ],
)
def test_cluster_wide_service_account_may_do_nothing_else(
    kubectl: Kubectl, install: subprocess.CompletedProcess[str], verb: str, resource: str,
    namespace: str | None,
) -> None:
    scope = ("-n", namespace) if namespace else ("--all-namespaces",)
    assert not kubectl.can_i(verb, resource, "--as", AS_OPERATOR, *scope)


def test_cluster_wide_token_reads_a_named_secret_but_lists_none(
    kubectl: Kubectl, install: subprocess.CompletedProcess[str], local_cluster: Any
) -> None:
    operator = Kubectl(
        kubectl.binary, service_account_kubeconfig(local_cluster, OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
    )
    # -o name: a failing assertion must never print a credential.
    assert eventually(
        lambda: operator.ok("get", "secret", "postgres-credentials", "-n", WATCHED, "-o", "name")
    ).strip() == "secret/postgres-credentials"
    operator.forbidden("get", "secrets", "-n", WATCHED, "-o", "name")
    operator.forbidden("get", "secrets", "--all-namespaces", "-o", "name")


# -- the namespaced overlay --------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_namespace(kubectl: Kubectl) -> Iterator[str]:
    """A namespace the overlay does not watch, holding a Secret and a Deployment of its own."""
    name = f"install-other-{uuid.uuid4().hex[:6]}"
    kubectl.ok("create", "namespace", name)
    kubectl.ok("create", "secret", "generic", "probe", "-n", name, "--from-literal=password=not-for-you")
    kubectl.ok("create", "deployment", "probe", "-n", name, "--image=example.invalid/probe:1", "--replicas=0")
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def namespaced_install(
    kubectl: Kubectl, install: subprocess.CompletedProcess[str], local_cluster: Any,
    other_namespace: str,
) -> Kubectl:
    """The overlay applied in place of the cluster-wide install; a kubectl acting as the operator."""
    # As the overlay's kustomization says: switching removes the cluster-wide grant.
    kubectl.ok(
        "delete", "clusterrolebinding/snapgroup", "clusterrole/snapgroup", "--ignore-not-found"
    )
    done = kubectl("apply", "-k", str(NAMESPACED), "--server-side", f"--field-manager={FIELD_MANAGER}")
    assert done.returncode == 0, done.stderr
    return Kubectl(
        kubectl.binary, service_account_kubeconfig(local_cluster, OPERATOR_NAMESPACE, SERVICE_ACCOUNT)
    )


def test_namespaced_overlay_runs_the_operator_on_the_watched_namespace_only(
    kubectl: Kubectl, namespaced_install: Kubectl
) -> None:
    deployment = json.loads(
        kubectl.ok("get", "deployment", "snapgroup", "-n", OPERATOR_NAMESPACE, "-o", "json")
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "run", "--leader-elect", "--namespace", WATCHED
    ]


def test_namespaced_token_works_in_the_watched_namespace(namespaced_install: Kubectl) -> None:
    operator = namespaced_install
    assert eventually(
        lambda: operator.ok("get", "secret", "postgres-credentials", "-n", WATCHED, "-o", "name")
    ).strip() == "secret/postgres-credentials"
    # A server-side dry run is authorized exactly like the real patch, and changes nothing.
    operator.ok(
        "patch", "deployment", "data-writer", "-n", WATCHED, "--dry-run=server", "--type=merge",
        "-p", '{"metadata": {"annotations": {"snapgroup.dev/rbac-probe": "yes"}}}', "-o", "name",
    )
    operator.ok("get", "snapshotgroups.snapgroup.dev", "-n", WATCHED, "-o", "name")
    operator.ok("get", "volumesnapshots.snapshot.storage.k8s.io", "-n", WATCHED, "-o", "name")
    operator.ok("get", "pods", "-n", WATCHED, "-o", "name")
    assert operator.can_i("create", "volumesnapshots.snapshot.storage.k8s.io", "-n", WATCHED)
    assert operator.can_i("patch", "snapshotgroups.snapgroup.dev/status", "-n", WATCHED)
    assert operator.can_i("create", "leases.coordination.k8s.io", "-n", WATCHED)


def test_namespaced_token_takes_and_renews_the_leader_lease_and_only_leases_there(
    kubectl: Kubectl, namespaced_install: Kubectl
) -> None:
    operator = namespaced_install
    eventually(lambda: operator.ok("get", "secret", "postgres-credentials", "-n", WATCHED, "-o", "name"))
    lease = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEADER_LEASE, "namespace": OPERATOR_NAMESPACE},
        "spec": {"holderIdentity": "install-test", "leaseDurationSeconds": 15},
    }
    try:
        operator.ok("create", "-f", "-", "-o", "name", stdin=json.dumps(lease))
        operator.ok("get", "lease", LEADER_LEASE, "-n", OPERATOR_NAMESPACE, "-o", "name")
        operator.ok("patch", "lease", LEADER_LEASE, "-n", OPERATOR_NAMESPACE, "--type=merge",
                    "-p", '{"spec": {"holderIdentity": "install-test-renewed"}}', "-o", "name")
        # The database servers' exclusion Leases are in the operator's namespace too: Leases
        # there are its own to manage, and nothing else there or in other namespaces.
        assert operator.can_i("delete", "leases.coordination.k8s.io", "-n", OPERATOR_NAMESPACE)
        assert not operator.can_i("get", "configmaps", "-n", OPERATOR_NAMESPACE)
        assert not operator.can_i("get", "secrets", "-n", OPERATOR_NAMESPACE)
        operator.forbidden("get", "lease", "kube-controller-manager", "-n", "kube-system", "-o", "name")
    finally:
        kubectl("delete", "lease", LEADER_LEASE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def test_namespaced_token_is_refused_in_another_namespace(
    namespaced_install: Kubectl, other_namespace: str
) -> None:
    operator = namespaced_install
    eventually(lambda: operator.ok("get", "secret", "postgres-credentials", "-n", WATCHED, "-o", "name"))
    operator.forbidden("get", "secret", "probe", "-n", other_namespace, "-o", "name")
    operator.forbidden(
        "patch", "deployment", "probe", "-n", other_namespace, "--dry-run=server", "--type=merge",
        "-p", '{"spec": {"replicas": 0}}', "-o", "name",
    )
    operator.forbidden("get", "snapshotgroups.snapgroup.dev", "-n", other_namespace, "-o", "name")
    assert not operator.can_i("create", "volumesnapshots.snapshot.storage.k8s.io", "-n", other_namespace)


def test_namespaced_token_reads_nothing_namespaced_cluster_wide(namespaced_install: Kubectl) -> None:
    operator = namespaced_install
    eventually(lambda: operator.ok("get", "secret", "postgres-credentials", "-n", WATCHED, "-o", "name"))
    for resource in (
        "secrets", "deployments.apps", "statefulsets.apps", "pods", "persistentvolumeclaims",
        "volumesnapshots.snapshot.storage.k8s.io", "snapshotgroups.snapgroup.dev",
    ):
        operator.forbidden("get", resource, "--all-namespaces", "-o", "name")


def test_namespaced_token_keeps_the_cluster_scoped_reads(
    kubectl: Kubectl, namespaced_install: Kubectl
) -> None:
    operator = namespaced_install
    eventually(lambda: operator.ok("get", "crd", "-o", "name"))
    operator.ok("get", "volumesnapshotclasses.snapshot.storage.k8s.io", "-o", "name")
    operator.ok("get", "namespaces", "-o", "name")
    claim = json.loads(kubectl.ok("get", "pvc", "postgres-data", "-n", WATCHED, "-o", "json"))
    operator.ok("get", "persistentvolume", claim["spec"]["volumeName"], "-o", "name")
    operator.ok("get", "storageclass", claim["spec"]["storageClassName"], "-o", "name")
    # Volumes are listed (a restore in place finds its own by label) and patched, never
    # created or deleted; classes are only read.
    operator.ok("get", "persistentvolumes", "-o", "name")
    assert not operator.can_i("delete", "persistentvolumes")
    assert not operator.can_i("create", "persistentvolumes")
    assert not operator.can_i("delete", "volumesnapshotclasses.snapshot.storage.k8s.io")
