"""The Node object and its heartbeats.

The node registers itself Ready and then renews its Lease in `kube-node-lease` and the
Ready condition's heartbeat, so kube-controller-manager's node lifecycle controller never
marks it NotReady (which would taint it and evict its pods).
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import uuid
from datetime import UTC, datetime
from typing import Any

from .kubeapi import MERGE_PATCH, STRATEGIC_MERGE, ApiError, KubeClient, object_path

log = logging.getLogger(__name__)

JSON = dict[str, Any]

HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
HEARTBEAT_SECONDS = 10.0
MAX_PODS = 250
EMULATOR_VERSION = "snapgroup-node-emulator://0.1"


def now_rfc3339() -> str:
    """Current time as a Kubernetes `Time` (seconds precision)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """Current time as a Kubernetes `MicroTime`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_status(kubelet_version: str, heartbeat_only: bool = False) -> JSON:
    """The status the node reports: Ready, capacity, addresses, node info.

    With `heartbeat_only`, just the conditions without their transition times: a strategic
    merge patch then refreshes the heartbeats and keeps when each condition last changed.
    """
    heartbeat = now_rfc3339()
    capacity = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_bytes() // 1024}Ki",
        "pods": str(MAX_PODS),
        "ephemeral-storage": "100Gi",
    }

    def condition(kind: str, status: str, reason: str, message: str) -> JSON:
        entry = {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
        }
        if not heartbeat_only:
            entry["lastTransitionTime"] = heartbeat
        return entry

    conditions = [
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "node emulator reports no memory pressure",
        ),
        condition(
            "DiskPressure", "False", "KubeletHasNoDiskPressure", "node emulator reports no disk pressure"
        ),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "node emulator reports no PID pressure"),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "node emulator (a kubelet stand-in running pods as local processes) is posting ready status",
        ),
    ]
    if heartbeat_only:
        return {"conditions": conditions}
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": HOST_IP},
            {"type": "Hostname", "address": platform.node() or "localhost"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": _machine_id(),
            "bootID": _boot_id(),
            "kernelVersion": platform.release(),
            "osImage": _os_image(),
            "containerRuntimeVersion": EMULATOR_VERSION,
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _architecture(),
        },
    }


def _read_first_line(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.readline().strip() or None
    except OSError:
        return None


def _machine_id() -> str:
    return _read_first_line("/etc/machine-id") or uuid.uuid5(uuid.NAMESPACE_DNS, platform.node()).hex


def _boot_id() -> str:
    return _read_first_line("/proc/sys/kernel/random/boot_id") or "unknown"


def _os_image() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


class NodeRegistration:
    """Registers the Node and keeps its Lease and Ready heartbeat fresh."""

    def __init__(self, client: KubeClient, node_name: str) -> None:
        self._client = client
        self._node_name = node_name
        self._node_uid = ""
        self._kubelet_version = "v0.0.0"

    async def register(self) -> None:
        """Create the Node (or take over an existing one) and report it Ready."""
        try:
            version = await self._client.call("GET", "/version")
            self._kubelet_version = str(version.get("gitVersion", "v0.0.0"))
        except ApiError as error:
            log.warning("cannot read the API server version: %s", error)
        node: JSON = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self._node_name,
                "labels": {
                    "kubernetes.io/hostname": self._node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _architecture(),
                    "node.snapgroup.dev/emulated": "true",
                },
            },
            "spec": {},
        }
        path = object_path(None, "nodes", self._node_name)
        try:
            created = await self._client.call("POST", object_path(None, "nodes"), body=node)
            self._node_uid = created["metadata"]["uid"]
            log.info("registered node %s", self._node_name)
        except ApiError as error:
            if error.status != 409:
                raise
            existing = await self._client.call(
                "PATCH",
                path,
                body={"metadata": {"labels": node["metadata"]["labels"]}},
                content_type=STRATEGIC_MERGE,
            )
            self._node_uid = existing["metadata"]["uid"]
            log.info("node %s already exists; taking it over", self._node_name)
        await self.report_status()
        await self.renew_lease()

    async def report_status(self, heartbeat_only: bool = False) -> None:
        """Send the node status (at least the conditions' heartbeats)."""
        await self._client.call(
            "PATCH",
            object_path(None, "nodes", self._node_name) + "/status",
            body={"status": node_status(self._kubelet_version, heartbeat_only)},
            content_type=STRATEGIC_MERGE,
        )

    async def renew_lease(self) -> None:
        """Renew (or create) the node's Lease."""
        path = object_path(LEASE_NAMESPACE, "leases", self._node_name, "coordination.k8s.io/v1")
        try:
            await self._client.call(
                "PATCH",
                path,
                body={
                    "spec": {
                        "holderIdentity": self._node_name,
                        "renewTime": now_micro(),
                        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                    }
                },
                content_type=MERGE_PATCH,
            )
            return
        except ApiError as error:
            if error.status != 404:
                raise
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self._node_name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": self._node_name, "uid": self._node_uid}
                ],
            },
            "spec": {
                "holderIdentity": self._node_name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            await self._client.call(
                "POST",
                object_path(LEASE_NAMESPACE, "leases", None, "coordination.k8s.io/v1"),
                body=lease,
            )
        except ApiError as error:
            if error.status != 409:
                raise

    async def keep_alive(self) -> None:
        """Renew the Lease and the Ready heartbeat every few seconds, forever."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.report_status(heartbeat_only=True)
                await self.renew_lease()
            except ApiError as error:
                if error.status == 404:
                    # The Node was deleted: register again, as the kubelet does.
                    log.warning("node %s is gone; registering it again", self._node_name)
                    try:
                        await self.register()
                    except Exception as again:
                        log.warning("registering the node again failed: %s", again)
                else:
                    log.warning("node heartbeat failed: %s", error)
            except Exception as error:
                # A missed beat is retried at the next tick; the lease lasts four of them.
                log.warning("node heartbeat failed: %s", error)
