"""What the tests ask of the cluster, through the admin kubeconfig (not the operator's code)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "snapgroup.dev", "v1alpha1", "snapshotgroups"
TERMINAL = ("Succeeded", "Failed")


class Kube:
    """A thin test-side client: create, read, and wait by watching."""

    def __init__(self, kubeconfig: Path) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    # -- SnapshotGroups ----------------------------------------------------------------------

    def create_group(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create a SnapshotGroup."""
        ns = manifest["metadata"]["namespace"]
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, manifest)
        return created

    def group(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A SnapshotGroup, or None."""
        return self.custom_object(namespace, PLURAL, name)

    def custom_object(self, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
        """One of the operator's custom objects (a group, a schedule), or None."""
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name)
            return found
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def wait_group(self, namespace: str, name: str, phases: tuple[str, ...] = TERMINAL,
                   timeout: float = 240.0) -> dict[str, Any]:
        """Watch a group until its phase is one of phases."""
        return self.wait_custom(namespace, PLURAL, name,
                                lambda o: (o.get("status") or {}).get("phase") in phases, timeout,
                                f"phase in {phases}")

    def wait_custom(self, namespace: str, plural: str, name: str, predicate: Any, timeout: float,
                    what: str) -> dict[str, Any]:
        """Watch one custom object until predicate(object) holds."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            listing = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, field_selector=f"metadata.name={name}")
            for item in listing["items"]:
                last = item
                if predicate(item):
                    return dict(item)
            remaining = max(1, int(deadline - time.monotonic()))
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural,
                field_selector=f"metadata.name={name}",
                resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=remaining)
            for event in stream:
                obj = event["object"]
                last = obj
                if event["type"] != "DELETED" and predicate(obj):
                    return dict(obj)
        raise AssertionError(f"{plural} {namespace}/{name}: {what} not reached in {timeout}s; "
                             f"last status: {(last or {}).get('status')}")

    def delete_group(self, namespace: str, name: str) -> None:
        """Delete a group (its finalizer runs first)."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def wait_group_gone(self, namespace: str, name: str, timeout: float = 60.0) -> None:
        """Wait until the group object no longer exists."""
        deadline = time.monotonic() + timeout
        while self.group(namespace, name) is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"SnapshotGroup {namespace}/{name} still exists after {timeout}s")
            time.sleep(0.2)  # polling the API for the finalizer to go

    # -- workloads ---------------------------------------------------------------------------

    def replicas(self, namespace: str, name: str) -> int:
        """spec.replicas of a Deployment."""
        dep = self.apps.read_namespaced_deployment(name, namespace)
        return int(dep.spec.replicas or 0)

    def deployment(self, namespace: str, name: str) -> Any:
        """A Deployment."""
        return self.apps.read_namespaced_deployment(name, namespace)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Scale a Deployment the way a person would."""
        self.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})

    def pods(self, namespace: str, selector: str) -> list[Any]:
        """Pods matching a selector."""
        return list(self.core.list_namespaced_pod(namespace, label_selector=selector).items)

    def wait_pods(self, namespace: str, selector: str, count: int, ready: bool = True,
                  timeout: float = 120.0) -> list[Any]:
        """Watch until exactly count pods match (and are Ready, when asked)."""
        def ok(pods: list[Any]) -> bool:
            live = [p for p in pods if p.metadata.deletion_timestamp is None] if count else pods
            if len(live) != count or len(pods) != len(live):
                return False
            return not ready or all(
                any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                for p in live)

        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods(namespace, selector)
            if ok(pods):
                return pods
            if time.monotonic() > deadline:
                raise AssertionError(f"{namespace} pods {selector}: wanted {count} (ready={ready}), "
                                     f"have {[(p.metadata.name, p.status.phase) for p in pods]}")
            stream = watch.Watch().stream(self.core.list_namespaced_pod, namespace,
                                          label_selector=selector, timeout_seconds=2)
            for _ in stream:
                if ok(self.pods(namespace, selector)):
                    break

    def secret(self, namespace: str, name: str) -> dict[str, str]:
        """Decoded Secret data."""
        data = self.core.read_namespaced_secret(name, namespace).data or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the Events about an object."""
        items = self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}").items
        return [(e.reason, e.message) for e in items]

    def wait_snapshots_gone(self, namespace: str, selector: str, timeout: float = 180.0,
                            asked_within: float = 30.0) -> None:
        """Wait until no VolumeSnapshot matches.

        Deleting is the operator's part: within `asked_within` seconds every matching snapshot
        must carry a deletionTimestamp, or nobody deleted it. The rest is the snapshot
        controller's (content deleted, then finalizers removed), which retries a delete that
        raced the snapshot's own creation with a backoff of up to 30 s here: `timeout` allows
        for a few of those.
        """
        start = time.monotonic()
        while remaining := self.snapshots(namespace, selector):
            names = [s["metadata"]["name"] for s in remaining]
            undeleted = [s["metadata"]["name"] for s in remaining
                         if not s["metadata"].get("deletionTimestamp")]
            waited = time.monotonic() - start
            if undeleted and waited > asked_within:
                raise AssertionError(f"VolumeSnapshots {undeleted} were never deleted "
                                     f"({asked_within}s)")
            if waited > timeout:
                raise AssertionError(f"VolumeSnapshots {names} deleted but still there after "
                                     f"{timeout}s: {[s.get('status') for s in remaining]}")
            time.sleep(0.2)  # polling for the snapshot controller's finalizers to go

    def wait_event_reasons(self, namespace: str, name: str, reasons: set[str],
                           timeout: float = 30.0) -> set[str]:
        """Wait until Events with all these reasons exist for an object; return every reason seen.

        The operator records Events after the status write they describe, so a test that saw the
        status may look a moment before the Event is there.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = {reason for reason, _ in self.events(namespace, name)}
            if reasons <= seen:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{namespace}/{name}: Events {sorted(reasons - seen)} missing "
                                     f"after {timeout}s; seen {sorted(seen)}")
            time.sleep(0.2)  # polling the Events list

    def snapshots(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """VolumeSnapshots matching a selector."""
        listing = self.custom.list_namespaced_custom_object(
            "snapshot.storage.k8s.io", "v1", namespace, "volumesnapshots", label_selector=selector)
        return list(listing["items"])
