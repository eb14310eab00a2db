"""Wiring: the real adapters behind the ports, shared by the kopf handlers and the CLI."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from snapgroup import __version__
from snapgroup.adapters.connectors import DatabaseConnectors
from snapgroup.adapters.groupstore import KubeGroupStore
from snapgroup.adapters.kube import KubeCluster, load_api_client
from snapgroup.adapters.objects import KubeObjects
from snapgroup.hooks.builtin import BUILTIN_HOOK_TYPES
from snapgroup.orchestration.groups import MAX_WINDOWS, RETRY_DELAY, GroupRunner
from snapgroup.orchestration.restores import Restorer
from snapgroup.orchestration.safety_net import SafetyNet
from snapgroup.orchestration.verifier import Verifier

assert BUILTIN_HOOK_TYPES  # imported for registration: every entry point goes through here

OPERATOR_IMAGE = f"snapgroup:{__version__}"
"""The operator's image, run by a restored server's init step; $SNAPGROUP_IMAGE overrides it
(the Deployment sets it to the image it runs)."""


@dataclass
class Runtime:
    """One operator process's clients and group runner."""

    cluster: KubeCluster
    connectors: DatabaseConnectors
    runner: GroupRunner

    @classmethod
    def from_environment(
        cls, kubeconfig: str | None = None, namespaces: Sequence[str] = (),
        max_windows: int = MAX_WINDOWS, retry_delay: float = RETRY_DELAY,
        server_lease_namespace: str | None = None,
    ) -> Runtime:
        """Clients from a kubeconfig, $KUBECONFIG, or the pod's service account.

        namespaces: the namespaces the operator watches (empty: all); max_windows: freeze
        windows open at once; retry_delay: pause before a failed attempt's retry;
        server_lease_namespace: where database servers' exclusion Leases are (the operator's).
        """
        cluster = KubeCluster(load_api_client(kubeconfig), namespaces=namespaces,
                              lease_namespace=server_lease_namespace)
        connectors = DatabaseConnectors()
        runner = GroupRunner(cluster, connectors, max_windows=max_windows,
                             retry_delay=retry_delay, operator_id=operator_identity(),
                             server_lease_namespace=server_lease_namespace)
        return cls(cluster=cluster, connectors=connectors, runner=runner)

    @cached_property
    def group_store(self) -> KubeGroupStore:
        """Schedules and their SnapshotGroups, over the same client as `cluster`."""
        return KubeGroupStore(self.cluster)

    @cached_property
    def objects(self) -> KubeObjects:
        """Objects by kind, over the same client as `cluster`."""
        return KubeObjects(self.cluster)

    @property
    def operator_image(self) -> str:
        """The image a restored server's init step runs."""
        return os.environ.get("SNAPGROUP_IMAGE") or OPERATOR_IMAGE

    @cached_property
    def restorer(self) -> Restorer:
        """Runs SnapshotGroupRestores."""
        return Restorer(self.objects, self.operator_image, self.runner.operator_id)

    @cached_property
    def verifier(self) -> Verifier:
        """Verifies succeeded groups by restoring them."""
        return Verifier(self.cluster, self.objects, self.connectors, self.operator_image,
                        self.runner.operator_id)

    @cached_property
    def safety_net(self) -> SafetyNet:
        """The repair loop over the same clients."""
        return SafetyNet(self.cluster, self.connectors)

    def close(self) -> None:
        """Release connection pools."""
        self.cluster.close()


def operator_identity() -> str:
    """Who this operator process is, for Lease holders: the pod name (HOSTNAME in a pod)."""
    return (os.environ.get("HOSTNAME") or socket.gethostname())[:63]
