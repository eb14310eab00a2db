"""A kubeconfig that authenticates as a ServiceAccount of the local cluster.

Tests use it to make real requests with exactly the permissions the install grants, e.g. to run
the operator as `snapgroup-system/snapgroup` and prove its RBAC is sufficient.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Protocol

import yaml

from localcluster.build import ensure_binaries

TOKEN_LIFETIME = "2h"
"""Long enough for a whole test session; the API server caps it at its own maximum."""


class ClusterLike(Protocol):
    """What is needed of the `local_cluster` fixture."""

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...


class TokenRequestError(RuntimeError):
    """The API server did not issue a token for the ServiceAccount."""


def service_account_kubeconfig(local_cluster: ClusterLike, namespace: str, sa: str) -> Path:
    """Write a kubeconfig for ServiceAccount ``namespace/sa`` and return its path.

    The token comes from the TokenRequest API (``kubectl create token``), so the ServiceAccount
    must exist. The file reuses the admin kubeconfig's server and CA, sets ``namespace`` as the
    context's namespace, and is readable by its owner only (it holds a bearer token). Each call
    writes a fresh token to the same path.
    """
    admin_path = Path(local_cluster.kubeconfig)
    admin = yaml.safe_load(admin_path.read_text())
    cluster_name, cluster = _current_cluster(admin, admin_path)
    token = _request_token(admin_path, namespace, sa)
    user = f"system:serviceaccount:{namespace}:{sa}"
    context = f"{sa}@{namespace}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": context, "context": {"cluster": cluster_name, "user": user, "namespace": namespace}}
        ],
        "current-context": context,
    }
    directory = Path(local_cluster.state_dir) / "serviceaccounts"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{namespace}.{sa}.kubeconfig"
    path.unlink(missing_ok=True)
    # Created 0600 rather than chmod-ed afterwards: the token is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(config, out)
    return path


def _current_cluster(admin: dict[str, Any], admin_path: Path) -> tuple[str, dict[str, Any]]:
    contexts = {c["name"]: c["context"] for c in admin.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in admin.get("clusters") or []}
    current = admin.get("current-context") or next(iter(contexts), None)
    if current is not None and current in contexts:
        name = contexts[current]["cluster"]
    elif len(clusters) == 1:
        name = next(iter(clusters))
    else:
        raise ValueError(f"{admin_path}: no current context naming one of its clusters")
    cluster = dict(clusters[name])
    # A CA file named relative to the admin kubeconfig must still resolve from the new file.
    if "certificate-authority" in cluster:
        cluster["certificate-authority"] = str(
            (admin_path.parent / cluster["certificate-authority"]).resolve()
        )
    return name, cluster


def _request_token(admin_kubeconfig: Path, namespace: str, sa: str) -> str:
    kubectl = ensure_binaries() / "kubectl"
    done = subprocess.run(
        [
            str(kubectl), "--kubeconfig", str(admin_kubeconfig), "--request-timeout=30s",
            "create", "token", sa, "-n", namespace, f"--duration={TOKEN_LIFETIME}",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        # stderr is kubectl's error; stdout (which would be the token) is never quoted.
        raise TokenRequestError(
            f"no token for ServiceAccount {namespace}/{sa}: {done.stderr.strip()}"
        )
    token = done.stdout.strip()
    if not token:
        raise TokenRequestError(f"no token for ServiceAccount {namespace}/{sa}: kubectl printed none")
    return token
