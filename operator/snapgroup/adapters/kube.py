"""Kubernetes through the official client: the operator's `Cluster` port.

Every request runs in a worker thread with its own ``_request_timeout`` and reads the raw JSON
body (the client's model classes are slow to build and unnecessary here). Waiting is done by
list + watch from the list's resourceVersion, never by polling; watches have threads and
connections of their own, so however many groups wait, a thaw's requests never queue behind
them. A transient failure (no answer, a reset connection, HTTP 429/5xx) is retried with capped
exponential backoff for up to ``outage_tolerance`` seconds, so a short API server restart is
ridden through; every verb used is safe to repeat (merge patches, reads, creates where 409 means
"already there", deletes where 404 means "already gone"). API errors become
``StepError("KubernetesApiError", ...)`` carrying the server's message and never a request or
response body that could hold Secret data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import math
import os
import socket
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from snapgroup import metrics
from snapgroup.api import API_VERSION, GROUP, VERSION
from snapgroup.api.base import LabelSelector
from snapgroup.api.labels import GROUP_UID_LABEL, QUIESCE_LABEL, QUIESCE_RECORD
from snapgroup.api.snapshotgroup import KIND, PLURAL
from snapgroup.ports import (
    GROUP_GONE,
    EventType,
    LeaseRecord,
    PvcInfo,
    SnapshotClassInfo,
    SnapshotInfo,
    StepError,
    WorkloadInfo,
)

from .kube_watch import WatchStream

log = logging.getLogger("snapgroup.kube")

SNAPSHOT_API_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_API_VERSION = "v1"
DEFAULT_SNAPSHOT_CLASS_ANNOTATION = "snapshot.storage.kubernetes.io/is-default-class"
EVENT_SOURCE_COMPONENT = "snapgroup"
REPORTING_CONTROLLER = "snapgroup.dev/operator"
MAX_CONCURRENT_REQUESTS = 64
"""Worker threads and pooled connections for ordinary requests (watches have their own)."""
MAX_CONCURRENT_WATCHES = 1024
"""Bound on watches open at once: each holds a thread and a connection for as long as it waits.
Threads are started as waits need them, so the pool grows with the number of waits."""
OUTAGE_TOLERANCE = 15.0
"""Seconds of transient API failures (from the first) a request retries through before failing."""

_MERGE_PATCH = "application/merge-patch+json"
_EVENT_MESSAGE_LIMIT = 1024
_LIST_PAGE = 500
_HTTP_GONE = 410
_TRANSIENT_STATUS = frozenset({0, 429, 500, 502, 503, 504})  # 0: the client's own TLS failure
_FIRST_BACKOFF = 0.2
_MAX_BACKOFF = 2.0
_LEASE_ATTEMPTS = 5
_WATCH_SPAN = 30.0
"""Longest a watch runs before its caller lists again: a connection an API server restart left
half-open (no reset reaches the client) stalls a wait no longer than this plus the request
timeout."""
_WORKLOAD_KINDS = ("Deployment", "StatefulSet")
_LEASE_LABELS = {"app.kubernetes.io/managed-by": "snapgroup"}
_MUTATING = frozenset({"create", "patch", "delete"})
"""Verbs whose request, once sent, is waited for even when the caller is cancelled."""


def load_api_client(
    kubeconfig: str | None, *, pool_size: int = MAX_CONCURRENT_REQUESTS
) -> client.ApiClient:
    """An API client from a kubeconfig file, or in-cluster when kubeconfig is None.

    Outside a pod and without a path, the usual ``$KUBECONFIG`` / ``~/.kube/config`` applies.
    The connection pool is sized for concurrent watches (the client's default is 5 per CPU).
    """
    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration, persist_config=False
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, persist_config=False
        )
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration=configuration)


class KubeCluster:
    """The `snapgroup.ports.Cluster` port, implemented with the official Kubernetes client.

    ``requests`` counts the API requests sent, per verb (get, list, watch, create, patch,
    delete), for the benchmark's requests-per-group figure.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        request_timeout: float = 10.0,
        max_concurrent_requests: int = MAX_CONCURRENT_REQUESTS,
        max_concurrent_watches: int = MAX_CONCURRENT_WATCHES,
        outage_tolerance: float = OUTAGE_TOLERANCE,
        namespaces: Collection[str] = (),
        lease_namespace: str | None = None,
    ) -> None:
        self.namespaces = tuple(namespaces)
        """The namespaces the operator watches; empty means all (cluster-wide permissions)."""
        self.lease_namespace = lease_namespace
        """The operator's namespace, where database servers' exclusion Leases are (None: none)."""
        self.api_client = api_client
        """The client every request goes through (other adapters share its pools)."""
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._storage = client.StorageV1Api(api_client)
        self._coordination = client.CoordinationV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._timeout = request_timeout
        self.outage_tolerance = outage_tolerance
        # Pools of our own, one for requests and one for watches: a watch blocks its thread and
        # its connection for as long as it waits, so sharing either would let enough waiting
        # groups stall every other call (a thaw, a journal write) behind them.
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent_requests, thread_name_prefix="snapgroup-kube"
        )
        self._watch_executor = ThreadPoolExecutor(
            max_workers=max_concurrent_watches, thread_name_prefix="snapgroup-watch"
        )
        # Same server, credentials and token refresh (a shallow copy shares them); its own pool.
        watch_configuration = copy.copy(api_client.configuration)
        watch_configuration.connection_pool_maxsize = max_concurrent_watches
        self._watch_client = client.ApiClient(configuration=watch_configuration)
        self._watch_apis: dict[type[Any], Any] = {}
        self.requests: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        """Requests retried after a transient failure, per verb (watches: reopened)."""

    def close(self) -> None:
        """Release the worker threads; requests still running end at their own timeouts."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._watch_executor.shutdown(wait=False, cancel_futures=True)
        self._watch_client.rest_client.pool_manager.clear()

    # -- claims, secrets, classes ---------------------------------------------------------

    async def get_pvc(self, namespace: str, name: str) -> PvcInfo | None:
        """The claim with its CSI driver (from the bound volume, else the StorageClass)."""
        pvc = await self._call(
            "get", f"read PersistentVolumeClaim {namespace}/{name}",
            self._core.read_namespaced_persistent_volume_claim, name, namespace, allow={404},
        )
        return None if pvc is None else await self._pvc_info(pvc)

    async def list_pvcs(self, namespace: str, selector: str) -> list[PvcInfo]:
        """Claims matching a label selector; an empty selector matches none."""
        if not selector:
            return []
        listing = await self._call(
            "list", f"list PersistentVolumeClaims in {namespace} matching {selector!r}",
            self._core.list_namespaced_persistent_volume_claim, namespace, label_selector=selector,
        )
        return list(await asyncio.gather(*(self._pvc_info(item) for item in _items(listing))))

    async def _pvc_info(self, pvc: dict[str, Any]) -> PvcInfo:
        spec = pvc.get("spec") or {}
        storage_class = spec.get("storageClassName")
        driver: str | None = None
        if volume_name := spec.get("volumeName"):
            volume = await self._call(
                "get", f"read PersistentVolume {volume_name}",
                self._core.read_persistent_volume, volume_name, allow={404},
            )
            driver = (((volume or {}).get("spec") or {}).get("csi") or {}).get("driver")
        if driver is None and storage_class:
            klass = await self._call(
                "get", f"read StorageClass {storage_class}",
                self._storage.read_storage_class, storage_class, allow={404},
            )
            driver = (klass or {}).get("provisioner")
        return PvcInfo(
            name=pvc["metadata"]["name"],
            phase=(pvc.get("status") or {}).get("phase") or "Pending",
            storage_class=storage_class,
            driver=driver,
        )

    async def get_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, base64-decoded; None when it does not exist.

        Keys whose value is not UTF-8 text (a keystore, say) are left out: no connection
        setting is binary, and one such key must not make the others unusable.
        """
        secret = await self._call(
            "get", f"read Secret {namespace}/{name}",
            self._core.read_namespaced_secret, name, namespace, allow={404},
        )
        if secret is None:
            return None
        decoded: dict[str, str] = {}
        for key, value in (secret.get("data") or {}).items():
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                decoded[key] = base64.b64decode(value).decode("utf-8")
        return decoded

    async def get_snapshot_class(self, name: str | None) -> SnapshotClassInfo | None:
        """The named VolumeSnapshotClass, or the one annotated as default when name is None."""
        if name is not None:
            klass = await self._call(
                "get", f"read VolumeSnapshotClass {name}",
                self._custom.get_cluster_custom_object,
                SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, "volumesnapshotclasses", name,
                allow={404},
            )
            return None if klass is None else SnapshotClassInfo(name=name, driver=klass["driver"])
        listing = await self._call(
            "list", "list VolumeSnapshotClasses",
            self._custom.list_cluster_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, "volumesnapshotclasses",
        )
        defaults = sorted(
            (item for item in _items(listing)
             if _annotations(item).get(DEFAULT_SNAPSHOT_CLASS_ANNOTATION) == "true"),
            key=lambda item: str(item["metadata"]["name"]),
        )
        if not defaults:
            return None
        # Several defaults is a cluster misconfiguration; the first by name keeps plans stable.
        return SnapshotClassInfo(name=defaults[0]["metadata"]["name"], driver=defaults[0]["driver"])

    # -- workloads -------------------------------------------------------------------------

    async def get_workload(self, kind: str, namespace: str, name: str) -> WorkloadInfo | None:
        """One Deployment or StatefulSet, or None when it does not exist."""
        read = self._workload_calls(kind)["read"]
        workload = await self._call(
            "get", f"read {kind} {namespace}/{name}", read, name, namespace, allow={404}
        )
        return None if workload is None else _workload_info(kind, workload)

    async def list_workloads(self, kind: str, namespace: str, selector: str) -> list[WorkloadInfo]:
        """Deployments or StatefulSets matching a label selector; an empty selector matches none."""
        calls = self._workload_calls(kind)
        if not selector:
            return []
        listing = await self._call(
            "list", f"list {kind}s in {namespace} matching {selector!r}",
            calls["list"], namespace, label_selector=selector,
        )
        return [_workload_info(kind, item) for item in _items(listing)]

    async def list_annotated_workloads(self, annotation: str) -> list[WorkloadInfo]:
        """Every Deployment and StatefulSet, in the watched namespaces, carrying the annotation.

        Annotations cannot be selected on by the API server, so everything is listed (in pages)
        and filtered here: cluster-wide, or namespace by namespace when the operator watches
        only some (its Roles then grant nothing cluster-wide).
        """
        found: list[WorkloadInfo] = []
        for kind in _WORKLOAD_KINDS:
            calls = self._workload_calls(kind)
            if self.namespaces:
                items = [
                    item
                    for ns in self.namespaces
                    for item in await self._list_pages(
                        f"list {kind}s in {ns}", partial(calls["list"], ns)
                    )
                ]
            else:
                items = await self._list_pages(f"list {kind}s in all namespaces", calls["list_all"])
            found.extend(
                _workload_info(kind, item) for item in items if annotation in _annotations(item)
            )
        return found

    async def scale(
        self, kind: str, namespace: str, name: str, replicas: int,
        annotations: Mapping[str, str | None],
    ) -> None:
        """Set replicas and annotations (None removes one) in one merge patch.

        One patch keeps the journal annotations and the replica count from ever disagreeing.
        A workload that no longer exists raises StepError("WorkloadNotFound").
        """
        patch = {"metadata": {"annotations": dict(annotations)}, "spec": {"replicas": replicas}}
        action = f"scale {kind} {namespace}/{name} to {replicas}"
        done = await self._call(
            "patch", action, self._workload_calls(kind)["patch"], name, namespace, patch,
            _content_type=_MERGE_PATCH, allow={404},
        )
        if done is None:
            raise StepError("WorkloadNotFound", f"{action}: the {kind} does not exist any more")

    async def wait_pods_gone(self, namespace: str, selector: str, timeout: float) -> None:
        """Return once no pod matching the selector exists, terminating ones included.

        Lists, then watches from the list's resourceVersion, tracking pod names; raises
        TimeoutError naming the remaining pods after timeout seconds.
        """
        _require_selector(selector, "wait for pods to be gone")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        present: set[str] = set()
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    listing = await self._call(
                        "list", f"list pods in {namespace} matching {selector!r}",
                        self._core.list_namespaced_pod, namespace, label_selector=selector,
                    )
                    present = {item["metadata"]["name"] for item in _items(listing)}
                    if not present:
                        return
                    stream = self._watch(
                        f"watch pods in {namespace} matching {selector!r}",
                        self._core.list_namespaced_pod, namespace,
                        label_selector=selector, resource_version=_version(listing),
                        deadline=deadline,
                    )
                    async with stream:
                        while (event := await self._next(stream)) is not None:
                            name = event["object"]["metadata"]["name"]
                            if event["type"] == "DELETED":
                                present.discard(name)
                            elif event["type"] in ("ADDED", "MODIFIED"):
                                present.add(name)
                            if not present:
                                return
                    # The server ended the watch early (or the history was compacted): start over.
        except TimeoutError:
            raise TimeoutError(
                f"pods matching {selector!r} in {namespace} still exist after {timeout:.1f}s: "
                + ", ".join(sorted(present))
            ) from None

    # -- volume snapshots ------------------------------------------------------------------

    async def create_snapshot(self, namespace: str, body: dict[str, Any]) -> None:
        """Create a VolumeSnapshot; one that already exists by that name counts as created only
        when it carries the same group-uid label (a retry of our own create). Anybody else's
        raises StepError("SnapshotNameTaken"): it is never adopted."""
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        created = await self._call(
            "create", f"create VolumeSnapshot {namespace}/{name}",
            self._custom.create_namespaced_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots", body,
            allow={409},
        )
        if created is not None:
            return
        ours = (meta.get("labels") or {}).get(GROUP_UID_LABEL)
        existing = await self.get_snapshot(namespace, name)
        if existing is not None and existing.owner_uid != ours:
            raise StepError(
                "SnapshotNameTaken",
                f"VolumeSnapshot {namespace}/{name} already exists and belongs to "
                + (f"another SnapshotGroup (uid {existing.owner_uid})" if existing.owner_uid
                   else "no SnapshotGroup")
                + "; it was left alone: delete it or give the group another name",
            )

    async def get_snapshot(self, namespace: str, name: str) -> SnapshotInfo | None:
        """One VolumeSnapshot, or None when it does not exist."""
        found = await self._call(
            "get", f"read VolumeSnapshot {namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots", name,
            allow={404},
        )
        return None if found is None else _snapshot_info(found)

    async def delete_snapshot(self, namespace: str, name: str) -> None:
        """Delete a VolumeSnapshot; a missing one counts as deleted."""
        await self._call(
            "delete", f"delete VolumeSnapshot {namespace}/{name}",
            self._custom.delete_namespaced_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots", name,
            allow={404},
        )

    async def annotate_snapshot(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """Add annotations to a VolumeSnapshot."""
        await self._patch_snapshot(namespace, name, f"annotate VolumeSnapshot {namespace}/{name}",
                                   {"metadata": {"annotations": dict(annotations)}})

    async def orphan_snapshot(self, namespace: str, name: str) -> None:
        """Drop a VolumeSnapshot's owner references, so it outlives its group."""
        await self._patch_snapshot(namespace, name,
                                   f"release VolumeSnapshot {namespace}/{name} from its group",
                                   {"metadata": {"ownerReferences": None}})

    async def _patch_snapshot(self, namespace: str, name: str, action: str, patch: dict[str, Any]) -> None:
        await self._call(
            "patch", action, self._custom.patch_namespaced_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots", name,
            patch, allow={404},
        )

    async def list_snapshots(self, namespace: str, selector: str) -> list[SnapshotInfo]:
        """VolumeSnapshots matching a label selector; an empty selector matches none."""
        if not selector:
            return []
        listing = await self._list_snapshot_objects(namespace, selector)
        return [_snapshot_info(item) for item in _items(listing)]

    async def _list_snapshot_objects(self, namespace: str, selector: str) -> Any:
        return await self._call(
            "list", f"list VolumeSnapshots in {namespace} matching {selector!r}",
            self._custom.list_namespaced_custom_object,
            SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots",
            label_selector=selector,
        )

    async def wait_snapshots(
        self, namespace: str, selector: str, names: set[str], until: Literal["cut", "ready"],
        timeout: float,
    ) -> dict[str, SnapshotInfo]:
        """Watch the named snapshots until each is cut (has creationTime) or ready to use.

        The snapshot controller retries failed snapshots, so an error in ``status.error`` is
        only reported in the returned state; at the timeout, a pending snapshot with an error
        raises StepError("SnapshotFailed") quoting the last error, otherwise TimeoutError.
        """
        _require_selector(selector, "wait for VolumeSnapshots")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: dict[str, SnapshotInfo] = {}

        def reached(name: str) -> bool:
            info = seen.get(name)
            if info is None:
                return False
            return info.ready_to_use if until == "ready" else info.creation_time is not None

        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    listing = await self._list_snapshot_objects(namespace, selector)
                    seen = {
                        info.name: info
                        for info in map(_snapshot_info, _items(listing)) if info.name in names
                    }
                    if all(map(reached, names)):
                        return await self._precise({name: seen[name] for name in names})
                    stream = self._watch(
                        f"watch VolumeSnapshots in {namespace} matching {selector!r}",
                        self._custom.list_namespaced_custom_object,
                        SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION, namespace, "volumesnapshots",
                        label_selector=selector, resource_version=_version(listing),
                        deadline=deadline,
                    )
                    async with stream:
                        while (event := await self._next(stream)) is not None:
                            if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                                continue
                            info = _snapshot_info(event["object"])
                            if info.name not in names:
                                continue
                            if event["type"] == "DELETED":
                                seen.pop(info.name, None)
                            else:
                                seen[info.name] = info
                            if all(map(reached, names)):
                                return await self._precise({name: seen[name] for name in names})
        except TimeoutError:
            pending = sorted(name for name in names if not reached(name))
            state = "ready to use" if until == "ready" else "cut (no creationTime)"
            failures = [f"{name}: {seen[name].error}" for name in pending
                        if name in seen and seen[name].error]
            if failures:
                raise StepError(
                    "SnapshotFailed",
                    f"VolumeSnapshots in {namespace} not {state} after {timeout:.1f}s; "
                    f"last errors: {'; '.join(failures)}",
                ) from None
            missing = [name for name in pending if name not in seen]
            raise TimeoutError(
                f"VolumeSnapshots in {namespace} not {state} after {timeout:.1f}s: "
                + ", ".join(pending)
                + (f" (missing: {', '.join(missing)})" if missing else "")
            ) from None

    async def _precise(self, infos: dict[str, SnapshotInfo]) -> dict[str, SnapshotInfo]:
        """Creation times to the microsecond, from the bound VolumeSnapshotContents.

        A VolumeSnapshot's creationTime is a metav1.Time and keeps whole seconds only; compared
        with record timestamps, that would put the cut up to a second too early. The content
        keeps the driver's time in nanoseconds.
        """

        async def refine(info: SnapshotInfo) -> SnapshotInfo:
            if info.content is None or info.creation_time is None:
                return info
            content = await self._call(
                "get", f"read VolumeSnapshotContent {info.content}",
                self._custom.get_cluster_custom_object, SNAPSHOT_API_GROUP, SNAPSHOT_API_VERSION,
                "volumesnapshotcontents", info.content, allow={404},
            )
            nanos = ((content or {}).get("status") or {}).get("creationTime")
            return info if nanos is None else replace(info, creation_time=_nanos_time(int(nanos)))

        refined = await asyncio.gather(*(refine(i) for i in infos.values()))
        return dict(zip(infos, refined, strict=True))

    # -- the SnapshotGroup itself ----------------------------------------------------------

    async def get_group(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SnapshotGroup object as stored, or None when it does not exist."""
        group = await self._call(
            "get", f"read {KIND} {namespace}/{name}",
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
            allow={404},
        )
        return None if group is None else dict(group)

    async def patch_group_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the SnapshotGroup's status subresource (lists in it are replaced whole).

        A group that is gone raises StepError(GROUP_GONE): a journal that cannot
        be written must stop the step it was about to record.
        """
        action = f"write the status of {KIND} {namespace}/{name}"
        done = await self._call(
            "patch", action, self._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _content_type=_MERGE_PATCH, allow={404},
        )
        if done is None:
            raise StepError(
                GROUP_GONE,
                f"{action}: it does not exist (deleted, or the {KIND} CRD is not installed)",
            )

    async def emit_event(
        self, namespace: str, name: str, uid: str, event_type: EventType, reason: str, message: str,
    ) -> None:
        """Record a core/v1 Event on the SnapshotGroup, as ``kubectl describe`` shows them."""
        await self.record_event(KIND, namespace, name, uid, event_type, reason, message)

    async def record_event(
        self, kind: str, namespace: str, name: str, uid: str, event_type: EventType, reason: str,
        message: str,
    ) -> None:
        """Record a core/v1 Event on one of the operator's own objects (a snapgroup.dev kind)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": kind,
                "namespace": namespace, "name": name, "uid": uid,
            },
            "type": event_type,
            "reason": reason,
            "message": message[:_EVENT_MESSAGE_LIMIT],
            "source": {"component": EVENT_SOURCE_COMPONENT},
            "reportingComponent": REPORTING_CONTROLLER,
            "reportingInstance": _reporting_instance(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(
            "create", f"record event {reason} on {kind} {namespace}/{name}",
            self._core.create_namespaced_event, namespace, event,
        )

    # -- leases (mutual exclusion of groups over shared targets) ----------------------------

    async def acquire_lease(
        self, namespace: str, name: str, holder: str, seconds: int,
        labels: Mapping[str, str] | None = None,
    ) -> str | None:
        """Take a coordination.k8s.io Lease for holder, or renew it.

        Returns None when holder now holds it, else the identity of the live holder. A lease
        whose holder let it expire (renewTime + leaseDurationSeconds in the past) is taken
        over, unless it carries another holder's quiesce record. Holders are compared by group
        (``<group>/<uid>``, the part before ``@``): a restarted operator renews its groups'
        Leases. Every write carries the resourceVersion read, so two takers never both win.
        """
        action = f"take Lease {namespace}/{name}"
        for _ in range(_LEASE_ATTEMPTS):
            lease = await self._call(
                "get", action, self._coordination.read_namespaced_lease, name, namespace,
                allow={404},
            )
            if lease is None:
                # No times in the body: the model layer would reformat them; creationTimestamp
                # stands for the first renewal.
                body = {"metadata": {"name": name, "labels": {**(labels or {}), **_LEASE_LABELS}},
                        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds}}
                created = await self._call(
                    "create", action, self._coordination.create_namespaced_lease, namespace, body,
                    allow={409},
                )
                if created is not None:
                    return None
                continue  # someone created it meanwhile: look again
            spec = lease.get("spec") or {}
            current = spec.get("holderIdentity")
            mine = bool(current) and _same_holder(str(current), holder)
            if current and not mine and (
                not _lease_expired(lease) or QUIESCE_RECORD in _annotations(lease)
            ):
                return str(current)
            now = _micro_time(datetime.now(UTC))
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
                         "renewTime": now},
            }
            if not mine:
                patch["spec"]["acquireTime"] = now
                patch["spec"]["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            done = await self._call(
                "patch", action, self._coordination.patch_namespaced_lease, name, namespace, patch,
                _content_type=_MERGE_PATCH, allow={404, 409},
            )
            if done is not None:
                return None
        raise StepError(
            "LeaseContended", f"{action}: it changed under every one of {_LEASE_ATTEMPTS} attempts"
        )

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Delete a Lease if holder still holds it (the resourceVersion read is a precondition);
        one that carries a quiesce record is kept for the safety net."""
        action = f"release Lease {namespace}/{name}"
        lease = await self._call(
            "get", action, self._coordination.read_namespaced_lease, name, namespace, allow={404},
        )
        current = str((lease or {}).get("spec", {}).get("holderIdentity") or "")
        if lease is None or not _same_holder(current, holder) or QUIESCE_RECORD in _annotations(lease):
            return
        preconditions = {"uid": lease["metadata"]["uid"],
                         "resourceVersion": lease["metadata"]["resourceVersion"]}
        await self._call(
            "delete", action, self._coordination.delete_namespaced_lease, name, namespace,
            body={"preconditions": preconditions}, allow={404, 409},
        )

    async def set_lease_record(
        self, namespace: str, name: str, holder: str, record: Mapping[str, Any] | None
    ) -> None:
        """Write (or with None remove) the quiesce record of a Lease held by holder's group.

        Raises StepError("LeaseNotHeld") when the Lease is gone or another group holds it.
        """
        action = f"{'write' if record is not None else 'remove'} the quiesce record of Lease " \
                 f"{namespace}/{name}"
        lease = await self._call(
            "get", action, self._coordination.read_namespaced_lease, name, namespace, allow={404},
        )
        current = str((lease or {}).get("spec", {}).get("holderIdentity") or "")
        if lease is None or not _same_holder(current, holder):
            if record is None:
                return  # nothing of ours left to remove
            raise StepError("LeaseNotHeld", f"{action}: the Lease is not held by {holder}")
        value = None if record is None else json.dumps(dict(record), sort_keys=True)
        patch = {"metadata": {
            "resourceVersion": lease["metadata"]["resourceVersion"],
            "annotations": {QUIESCE_RECORD: value},
            "labels": {QUIESCE_LABEL: None if record is None else "held"},
        }}
        done = await self._call(
            "patch", action, self._coordination.patch_namespaced_lease, name, namespace, patch,
            _content_type=_MERGE_PATCH, allow={409},
        )
        if done is None:
            raise StepError("LeaseContended", f"{action}: the Lease changed meanwhile")

    async def list_lease_records(self) -> list[LeaseRecord]:
        """Every Lease with a quiesce record, in the watched namespaces and the operator's."""
        selector = f"{QUIESCE_LABEL}=held"
        if self.namespaces:
            spaces = dict.fromkeys([*self.namespaces, *filter(None, [self.lease_namespace])])
            items = [
                item for ns in spaces
                for item in _items(await self._call(
                    "list", f"list Leases in {ns} with quiesce records",
                    self._coordination.list_namespaced_lease, ns, label_selector=selector))
            ]
        else:
            items = _items(await self._call(
                "list", "list Leases with quiesce records",
                self._coordination.list_lease_for_all_namespaces, label_selector=selector))
        found = []
        for item in items:
            try:
                record = json.loads(_annotations(item).get(QUIESCE_RECORD) or "")
            except ValueError:
                record = None
            if isinstance(record, dict):
                found.append(LeaseRecord(
                    namespace=item["metadata"]["namespace"], name=item["metadata"]["name"],
                    holder=(item.get("spec") or {}).get("holderIdentity"), record=record))
        return found

    async def wait_lease_change(self, namespace: str, name: str, timeout: float) -> None:
        """Return when the Lease changes or is deleted (at once if it is gone), or after timeout
        seconds; watched, not polled."""
        deadline = asyncio.get_running_loop().time() + timeout
        selector = f"metadata.name={name}"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                listing = await self._call(
                    "list", f"read Lease {namespace}/{name}",
                    self._coordination.list_namespaced_lease, namespace, field_selector=selector,
                )
                if not _items(listing):
                    return
                stream = self._watch(
                    f"watch Lease {namespace}/{name}", self._coordination.list_namespaced_lease,
                    namespace, field_selector=selector, resource_version=_version(listing),
                    deadline=deadline,
                )
                async with stream:
                    while (event := await self._next(stream)) is not None:
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            return

    # -- plumbing --------------------------------------------------------------------------

    def _workload_calls(self, kind: str) -> dict[str, Callable[..., Any]]:
        if kind == "Deployment":
            return {
                "read": self._apps.read_namespaced_deployment,
                "list": self._apps.list_namespaced_deployment,
                "list_all": self._apps.list_deployment_for_all_namespaces,
                "patch": self._apps.patch_namespaced_deployment,
            }
        if kind == "StatefulSet":
            return {
                "read": self._apps.read_namespaced_stateful_set,
                "list": self._apps.list_namespaced_stateful_set,
                "list_all": self._apps.list_stateful_set_for_all_namespaces,
                "patch": self._apps.patch_namespaced_stateful_set,
            }
        raise StepError(
            "UnsupportedWorkloadKind", f"{kind} cannot be isolated; use Deployment or StatefulSet"
        )

    async def _call(
        self, verb: str, action: str, method: Callable[..., Any], *args: Any,
        allow: Collection[int] = (), **kwargs: Any,
    ) -> Any:
        """Send one request in a worker thread: the decoded JSON body, or None for an allowed
        error status (404 read as "absent", 409 on create as "already there").

        Transient failures are retried with capped exponential backoff until
        ``outage_tolerance`` seconds have passed since the first; the waits are plain sleeps
        on the loop, so cancelling the caller stops the retries at once.
        """
        request = partial(_send, method, *args, _request_timeout=self._timeout, **kwargs)
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        delay = _FIRST_BACKOFF
        while True:
            self.requests[verb] += 1
            metrics.API_REQUESTS.labels(verb).inc()
            future = loop.run_in_executor(self._executor, request)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                if verb in _MUTATING:
                    # The request is already on its way: let it land (within its own timeout),
                    # so an undo that follows the cancellation sees its effect, never the reverse.
                    await asyncio.wait({future}, timeout=self._timeout + 1.0)
                raise
            except ApiException as exc:
                if exc.status in allow:
                    return None
                if exc.status not in _TRANSIENT_STATUS:
                    raise _api_error(action, exc) from exc
                failure: Exception = exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                failure = exc
            now = loop.time()
            give_up = now + self.outage_tolerance if give_up is None else give_up
            if now >= give_up:
                raise _outage_error(action, failure, self._timeout, self.outage_tolerance) from failure
            pause = min(max(delay, _retry_after(failure)), give_up - now)
            self.retries[verb] += 1
            metrics.API_RETRIES.labels(verb).inc()
            log.warning("%s: %s; retrying in %.1fs", action, _transient_cause(failure), pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, _MAX_BACKOFF)

    async def _list_pages(self, action: str, method: Callable[..., Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await self._call("list", action, method, limit=_LIST_PAGE, _continue=token)
            items.extend(_items(page))
            token = (page.get("metadata") or {}).get("continue") or None
            if token is None:
                return items

    def _watch(
        self, action: str, method: Callable[..., Any], *args: Any,
        resource_version: str, deadline: float, **kwargs: Any,
    ) -> _ActionWatch:
        """A watch that the server itself ends by the deadline (or within _WATCH_SPAN), with a
        read timeout just past it.

        It runs on the watch threads and connections (the same API call, bound to the watch
        client), never on those of ordinary requests.
        """
        remaining = deadline - asyncio.get_running_loop().time()
        server_timeout = max(1, math.ceil(min(remaining, _WATCH_SPAN)))
        self.requests["watch"] += 1
        metrics.API_REQUESTS.labels("watch").inc()
        api = getattr(method, "__self__", None)
        if api is not None:
            if type(api) not in self._watch_apis:
                self._watch_apis[type(api)] = type(api)(self._watch_client)
            method = getattr(self._watch_apis[type(api)], method.__name__)
        open_request = partial(
            method, *args, watch=True, resource_version=resource_version,
            timeout_seconds=server_timeout, _preload_content=False,
            _request_timeout=(self._timeout, server_timeout + self._timeout), **kwargs,
        )
        return _ActionWatch(action, open_request, self._watch_executor)

    async def _next(self, stream: _ActionWatch) -> dict[str, Any] | None:
        """The next event, or None when the watch ended and the caller should list again.

        A watch broken by a transient failure also ends this way, after a short pause: the
        list that follows retries through the outage (or reports it), then watches again.
        """
        try:
            return await stream.next_event()
        except ApiException as exc:
            if exc.status == _HTTP_GONE:
                return None
            if exc.status not in _TRANSIENT_STATUS:
                raise _api_error(stream.action, exc) from exc
            failure: Exception = exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            failure = exc
        self.retries["watch"] += 1
        metrics.API_RETRIES.labels("watch").inc()
        log.warning("%s: %s; listing again", stream.action, _transient_cause(failure))
        await asyncio.sleep(_FIRST_BACKOFF)  # no hot loop while the server refuses watches
        return None


class _ActionWatch(WatchStream):
    """A watch stream that remembers what it is watching, for error messages."""

    def __init__(
        self, action: str, open_request: Callable[[], Any], executor: ThreadPoolExecutor
    ) -> None:
        super().__init__(open_request, executor)
        self.action = action


def _send(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Worker thread: one request, its JSON body decoded."""
    response = method(*args, _preload_content=False, **kwargs)
    try:
        body = response.data
    finally:
        response.release_conn()
    return json.loads(body) if body else {}


def _api_error(action: str, exc: ApiException) -> StepError:
    detail = str(exc.reason or "")
    try:
        status = json.loads(exc.body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        detail = str(status["message"])
    hint = " (the operator's RBAC role lacks this permission)" if exc.status == 403 else ""
    return StepError(
        "KubernetesApiError", f"{action} failed: HTTP {exc.status}: {detail[:500]}{hint}"
    )


def _outage_error(action: str, failure: Exception, timeout: float, tolerance: float) -> StepError:
    if isinstance(failure, ApiException):
        error = _api_error(action, failure)
        return StepError(error.reason, f"{error.message} (still failing after {tolerance:g}s of retries)")
    return StepError(
        "KubernetesApiError",
        f"{action}: no answer from the API server within {timeout:g}s "
        f"({type(failure).__name__}), still none after {tolerance:g}s of retries",
    )


def _transient_cause(failure: Exception) -> str:
    if isinstance(failure, ApiException):
        return f"HTTP {failure.status} {failure.reason or ''}".rstrip()
    return f"no answer ({type(failure).__name__})"


def _retry_after(failure: Exception) -> float:
    """The server's Retry-After (HTTP 429 from API priority and fairness), capped; else 0."""
    headers = getattr(failure, "headers", None) or {}
    try:
        return min(float(headers.get("Retry-After", 0)), _MAX_BACKOFF * 2)
    except (TypeError, ValueError):
        return 0.0


def _require_selector(selector: str, what: str) -> None:
    if not selector:
        # An empty selector would match every object in the namespace.
        raise StepError("EmptySelector", f"cannot {what} with an empty label selector")


def _items(listing: Any) -> list[dict[str, Any]]:
    return list((listing or {}).get("items") or [])


def _version(listing: Any) -> str:
    return str(((listing or {}).get("metadata") or {}).get("resourceVersion") or "")


def _annotations(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _workload_info(kind: str, obj: dict[str, Any]) -> WorkloadInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    selector = LabelSelector.model_validate(spec.get("selector") or {})
    return WorkloadInfo(
        kind=kind,
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        replicas=int(spec.get("replicas", 1)),  # the API's default when unset
        selector=selector.as_query(),
        annotations=_annotations(obj),
        resource_version=meta.get("resourceVersion", ""),
    )


def _snapshot_info(obj: dict[str, Any]) -> SnapshotInfo:
    status = obj.get("status") or {}
    created = status.get("creationTime")
    restore_size = status.get("restoreSize")
    return SnapshotInfo(
        name=obj["metadata"]["name"],
        creation_time=datetime.fromisoformat(created) if created else None,
        ready_to_use=bool(status.get("readyToUse")),
        restore_size=None if restore_size is None else str(restore_size),
        error=(status.get("error") or {}).get("message"),
        content=status.get("boundVolumeSnapshotContentName"),
        owner_uid=_labels(obj).get(GROUP_UID_LABEL),
    )


def _nanos_time(nanos: int) -> datetime:
    """A VolumeSnapshotContent creationTime (Unix nanoseconds), truncated to microseconds."""
    return datetime.fromtimestamp(nanos // 1_000_000_000, UTC) + timedelta(
        microseconds=(nanos % 1_000_000_000) // 1000
    )


def _micro_time(moment: datetime) -> str:
    """A metav1.MicroTime: RFC 3339 with exactly six fractional digits, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _same_holder(current: str, holder: str) -> bool:
    """Whether two holder identities name the same group (``<group>/<uid>``, before ``@``)."""
    return current.split("@", 1)[0] == holder.split("@", 1)[0]


def _lease_expired(lease: dict[str, Any]) -> bool:
    spec = lease.get("spec") or {}
    renewed = spec.get("renewTime") or lease["metadata"].get("creationTimestamp")
    duration = spec.get("leaseDurationSeconds")
    if not renewed or duration is None:
        return True  # a lease that cannot say when it ends protects nothing
    ends = datetime.fromisoformat(renewed).timestamp() + float(duration)
    return ends < datetime.now(UTC).timestamp()


def _reporting_instance() -> str:
    # In a pod HOSTNAME is the pod's name, which tells replicas and restarts apart.
    return (os.environ.get("HOSTNAME") or socket.gethostname())[:128]
