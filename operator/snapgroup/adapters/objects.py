"""The `snapgroup.ports.ClusterObjects` port: Kubernetes objects by kind, as plain JSON.

Requests go through the `KubeCluster`'s worker threads, retries and watch pool; only the REST
path differs per kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from snapgroup.api import GROUP, VERSION
from snapgroup.api.restore import PLURAL as RESTORE_PLURAL
from snapgroup.api.snapshotgroup import PLURAL as GROUP_PLURAL
from snapgroup.ports import GROUP_GONE, EventType, StepError

from .kube import KubeCluster

JSON = dict[str, Any]
_MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class _Kind:
    prefix: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str, name: str | None = None) -> str:
        where = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{self.prefix}{where}/{self.plural}" + (f"/{name}" if name else "")


KINDS: dict[str, _Kind] = {
    "Namespace": _Kind("/api/v1", "namespaces", namespaced=False),
    "PersistentVolumeClaim": _Kind("/api/v1", "persistentvolumeclaims"),
    "PersistentVolume": _Kind("/api/v1", "persistentvolumes", namespaced=False),
    "Pod": _Kind("/api/v1", "pods"),
    "Secret": _Kind("/api/v1", "secrets"),
    "ConfigMap": _Kind("/api/v1", "configmaps"),
    "Service": _Kind("/api/v1", "services"),
    "Deployment": _Kind("/apis/apps/v1", "deployments"),
    "StatefulSet": _Kind("/apis/apps/v1", "statefulsets"),
    "StorageClass": _Kind("/apis/storage.k8s.io/v1", "storageclasses", namespaced=False),
    "VolumeSnapshot": _Kind("/apis/snapshot.storage.k8s.io/v1", "volumesnapshots"),
    "VolumeSnapshotContent": _Kind("/apis/snapshot.storage.k8s.io/v1", "volumesnapshotcontents",
                                   namespaced=False),
    "SnapshotGroup": _Kind(f"/apis/{GROUP}/{VERSION}", GROUP_PLURAL),
    "SnapshotGroupRestore": _Kind(f"/apis/{GROUP}/{VERSION}", RESTORE_PLURAL),
}

_QUERY = {"label_selector": "labelSelector", "field_selector": "fieldSelector", "limit": "limit",
          "_continue": "continue", "watch": "watch", "resource_version": "resourceVersion",
          "timeout_seconds": "timeoutSeconds"}


class KubeObjects:
    """Objects by kind over a KubeCluster's client, pools and retries."""

    def __init__(self, cluster: KubeCluster) -> None:
        self._cluster = cluster
        self._api: client.ApiClient = cluster.api_client

    def _request(self, method: str, path: str, body: JSON | None = None,
                 content_type: str = "application/json") -> Callable[..., Any]:
        """A call the cluster's `_send` can make: query parameters from keyword arguments."""

        def send(**kwargs: Any) -> Any:
            query = [(_QUERY[k], v) for k, v in kwargs.items() if k in _QUERY and v is not None]
            request = self._api.param_serialize(
                method=method, resource_path=path, query_params=query, body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"],
            )
            # As the typed calls do with _preload_content=False: the raw response, an error
            # status raised as ApiException.
            return self._api._call_with_legacy_options(
                request, {}, None, False, kwargs.get("_request_timeout"), True)

        return send

    async def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        """The object, or None when it does not exist."""
        found = await self._cluster._call(
            "get", f"read {kind} {namespace}/{name}",
            self._request("GET", KINDS[kind].path(namespace, name)), allow={404})
        return None if found is None else dict(found)

    async def list(self, kind: str, namespace: str, selector: str = "") -> list[JSON]:
        """Objects of a kind, all pages."""
        action = f"list {kind} in {namespace}" + (f" matching {selector!r}" if selector else "")
        send = self._request("GET", KINDS[kind].path(namespace))
        items: list[JSON] = []
        token: str | None = None
        while True:
            page = await self._cluster._call("list", action, send, label_selector=selector or None,
                                             limit=500, _continue=token)
            items += [dict(item, kind=kind) for item in page.get("items") or []]
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    async def create(self, kind: str, namespace: str, body: JSON) -> JSON | None:
        """Create it; None when an object of that name exists."""
        created = await self._cluster._call(
            "create", f"create {kind} {namespace}/{body['metadata']['name']}",
            self._request("POST", KINDS[kind].path(namespace), body), allow={409})
        return None if created is None else dict(created)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete it, dependents in the background; absent is no error."""
        await self._cluster._call(
            "delete", f"delete {kind} {namespace}/{name}",
            self._request("DELETE", KINDS[kind].path(namespace, name),
                          {"propagationPolicy": "Background"}), allow={404})

    async def patch(self, kind: str, namespace: str, name: str, patch: JSON) -> JSON | None:
        """Merge-patch the object; None when it does not exist."""
        done = await self._cluster._call(
            "patch", f"patch {kind} {namespace}/{name}",
            self._request("PATCH", KINDS[kind].path(namespace, name), patch, content_type=_MERGE_PATCH),
            allow={404})
        return None if done is None else dict(done, kind=kind)

    async def wait(self, kind: str, namespace: str, name: str, done: Callable[[JSON], bool],
                   timeout: float) -> JSON:
        """List the one object, then watch it until done(object) holds."""
        found = await self._watch_until(kind, namespace, name, lambda o: o is not None and done(o), timeout)
        assert found is not None
        return found

    async def wait_gone(self, kind: str, namespace: str, name: str, timeout: float) -> None:
        """List the one object, then watch it until it no longer exists."""
        await self._watch_until(kind, namespace, name, lambda o: o is None, timeout)

    async def _watch_until(self, kind: str, namespace: str, name: str,
                           done: Callable[[JSON | None], bool], timeout: float) -> JSON | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        field = f"metadata.name={name}"
        send = self._request("GET", KINDS[kind].path(namespace))
        last: JSON | None = None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    listing = await self._cluster._call(
                        "list", f"read {kind} {namespace}/{name}", send, field_selector=field)
                    items = listing.get("items") or []
                    last = dict(items[0], kind=kind) if items else None
                    if done(last):
                        return last
                    stream = self._cluster._watch(
                        f"watch {kind} {namespace}/{name}", send, field_selector=field,
                        resource_version=(listing.get("metadata") or {}).get("resourceVersion", ""),
                        deadline=deadline)
                    async with stream:
                        while (event := await self._cluster._next(stream)) is not None:
                            if event["type"] in ("ADDED", "MODIFIED"):
                                last = dict(event["object"], kind=kind)
                            elif event["type"] == "DELETED":
                                last = None
                            else:
                                continue
                            if done(last):
                                return last
        except TimeoutError:
            gone_yet = "does not exist" if last is None else "is not there yet"
            state = "still exists" if done(None) else gone_yet
            raise TimeoutError(f"{kind} {namespace}/{name} {state} after {timeout:.0f}s") from None

    async def acquire_lease(self, namespace: str, name: str, holder: str, seconds: int,
                            labels: dict[str, str] | None = None) -> str | None:
        """Take or renew an exclusion Lease (as groups do); the live other holder, or None."""
        return await self._cluster.acquire_lease(namespace, name, holder, seconds, labels=labels)

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Give an exclusion Lease up if holder still holds it."""
        await self._cluster.release_lease(namespace, name, holder)

    async def patch_status(self, kind: str, namespace: str, name: str, status: JSON) -> None:
        """Merge-patch the status subresource; StepError(GROUP_GONE) when the object is gone."""
        action = f"write the status of {kind} {namespace}/{name}"
        done = await self._cluster._call(
            "patch", action,
            self._request("PATCH", KINDS[kind].path(namespace, name) + "/status", {"status": status},
                          content_type=_MERGE_PATCH), allow={404})
        if done is None:
            raise StepError(GROUP_GONE, f"{action}: it does not exist")

    async def record_event(
        self, kind: str, namespace: str, name: str, uid: str, event_type: EventType, reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event on one of the operator's own objects."""
        await self._cluster.record_event(kind, namespace, name, uid, event_type, reason, message)
