"""Wiring: the real adapters behind the ports, shared by the kopf handlers and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from snapgroup.adapters.connectors import DatabaseConnectors
from snapgroup.adapters.groupstore import KubeGroupStore
from snapgroup.adapters.kube import KubeCluster, load_api_client
from snapgroup.hooks.builtin import BUILTIN_HOOK_TYPES
from snapgroup.hooks.writers import restore_orphans
from snapgroup.orchestration.groups import MAX_WINDOWS, GroupRunner

assert BUILTIN_HOOK_TYPES  # imported for registration: every entry point goes through here


@dataclass
class Runtime:
    """One operator process's clients and group runner."""

    cluster: KubeCluster
    connectors: DatabaseConnectors
    runner: GroupRunner

    @classmethod
    def from_environment(
        cls, kubeconfig: str | None = None, namespaces: Sequence[str] = (),
        max_windows: int = MAX_WINDOWS,
    ) -> Runtime:
        """Clients from a kubeconfig, $KUBECONFIG, or the pod's service account.

        namespaces: the namespaces the operator watches (empty: all); max_windows: freeze
        windows open at once.
        """
        cluster = KubeCluster(load_api_client(kubeconfig), namespaces=namespaces)
        connectors = DatabaseConnectors()
        runner = GroupRunner(cluster, connectors, max_windows=max_windows)
        return cls(cluster=cluster, connectors=connectors, runner=runner)

    @cached_property
    def group_store(self) -> KubeGroupStore:
        """Schedules and their SnapshotGroups, over the same client as `cluster`."""
        return KubeGroupStore(self.cluster)

    async def restore_orphans(self) -> list[str]:
        """Restore workloads isolated by groups that are gone or finished (e.g. after a crash)."""

        async def is_live(namespace: str, name: str, uid: str) -> bool:
            group = await self.cluster.get_group(namespace, name)
            if group is None or group.get("metadata", {}).get("uid") != uid:
                return False
            return not GroupRunner.is_terminal(group.get("status"))

        return await restore_orphans(self.cluster, is_live)

    def close(self) -> None:
        """Release connection pools."""
        self.cluster.close()
