"""An in-memory `snapgroup.ports.ClusterObjects` with pretend controllers (test double, no network).

Objects live by (kind, namespace, name), cluster-scoped kinds under namespace "". `create`
stores a copy as the API server would (uid, resourceVersion, generation, a cluster IP for a
Service that is not headless) and returns None for a name that exists. After every change the
pretend controllers run, as a kubelet, a CSI driver and the snapshot controller would, a moment
later (`call_soon`): a VolumeSnapshot bound to a content with a snapshot handle becomes ready, a
claim restoring from a ready VolumeSnapshot becomes Bound (and remembers the handle it was
provisioned from), and a Deployment or StatefulSet whose claims are Bound and whose Secrets and
ConfigMaps exist gets readyReplicas = replicas. `wait` blocks on an asyncio.Event renewed at every
change; it never polls.

Fault injection: `fail_create` (a StepError for one object), `fail_list` (a StepError for a kind),
`never_ready` (a workload whose pods never become ready, until `release`), `slow_create` (a create
that stays in flight for a number of loop turns, as an API call does; no time passes) and `appear`
(someone else creates an object of that name just before the restore does). Bodies the API
server's validation would refuse (duplicate names in a pod template, a nodePort on a ClusterIP
Service) fail as HTTP 422.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from snapgroup.api.restore import RESTORE_UID_LABEL
from snapgroup.ports import GROUP_GONE, StepError
from unit.fakeworld import merge_patch

JSON = dict[str, Any]
Key = tuple[str, str, str]

CLUSTER_SCOPED = frozenset({"Namespace", "StorageClass", "VolumeSnapshotContent", "PersistentVolume"})
WORKLOADS = ("Deployment", "StatefulSet")


def _selector(text: str) -> dict[str, str]:
    """Equality-based selectors only (``a=b,c=d``): the restore uses nothing else."""
    wanted: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        assert sep and "!" not in name and not value.startswith("="), f"unsupported selector {text!r}"
        wanted[name] = value
    return wanted


class FakeObjects:
    """The ClusterObjects port over a dict; every call is listed in `calls`."""

    def __init__(self, objects: dict[Key, JSON] | None = None) -> None:
        self.objects: dict[Key, JSON] = {}
        for obj in (objects or {}).values():
            self.objects[self._key(obj["kind"], obj["metadata"].get("namespace", ""),
                                   obj["metadata"]["name"])] = copy.deepcopy(obj)
        self.calls: list[tuple[str, str, str, str]] = []
        """(method, kind, namespace, name or selector) of every call, in order."""
        self.created: list[Key] = []
        """Objects a create stored, in order."""
        self.sent: dict[Key, JSON] = {}
        """Each created object's body as the caller sent it."""
        self.deleted: list[Key] = []
        """Objects a delete removed, in order (deletes of absent objects are not listed)."""
        self.protected: set[tuple[str, str]] = set()
        """Claims (namespace, name) a pod nobody stops mounts (see `in_use`)."""
        self.reclaimed: list[Key] = []
        """Volumes the pretend controller deleted after their claim went (reclaim policy Delete)."""
        self.patches: list[JSON] = []
        self.events: list[tuple[str, str, str]] = []
        """(type, reason, message) of every Event recorded."""
        self.provisioned_from: dict[Key, str] = {}
        """Claim -> the snapshot handle the pretend CSI driver restored it from."""
        self.fail_create: dict[tuple[str, str], StepError] = {}
        self.fail_list: dict[str, StepError] = {}
        self.never_ready: set[tuple[str, str]] = set()
        self.slow_create: dict[tuple[str, str], int] = {}
        self.appear: dict[tuple[str, str], JSON] = {}
        """Objects someone else creates just before the restore's create of that name."""
        self.waiting: set[Key] = set()
        """Objects a `wait` is watching right now."""
        self.made: list[Key] = []
        """Objects the pretend controllers made (volumes) or a patch touched: they act on them too."""
        self.leases: dict[tuple[str, str], str] = {}
        """(namespace, name) -> holder of every exclusion Lease held."""
        self._changed = asyncio.Event()
        self._ips = itertools.count(7)
        self._versions = itertools.count(5000)
        self._in_flight = 0

    # -- helpers for the tests -------------------------------------------------------------

    @staticmethod
    def _key(kind: str, namespace: str, name: str) -> Key:
        return kind, "" if kind in CLUSTER_SCOPED else namespace, name

    def labelled(self, uid: str) -> list[Key]:
        """Every object carrying the restore uid label."""
        return sorted(k for k, o in self.objects.items()
                      if (o["metadata"].get("labels") or {}).get(RESTORE_UID_LABEL) == uid)

    def in_namespace(self, namespace: str) -> dict[Key, JSON]:
        return {k: o for k, o in self.objects.items() if k[1] == namespace}

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once predicate holds, re-checked at every change of the world."""
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    async def settled(self) -> None:
        """Return once no create is in flight."""
        await self.until(lambda: self._in_flight == 0)

    def release(self, kind: str, name: str) -> None:
        """A workload that was stuck can become ready now (its pods start a moment later)."""
        self.never_ready.discard((kind, name))
        asyncio.get_running_loop().call_soon(self._reconcile)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the port --------------------------------------------------------------------------

    async def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        self.calls.append(("get", kind, namespace, name))
        found = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(found)

    async def list(self, kind: str, namespace: str, selector: str = "") -> list[JSON]:
        self.calls.append(("list", kind, namespace, selector))
        if kind in self.fail_list:
            raise self.fail_list[kind]
        wanted = _selector(selector)
        ns = "" if kind in CLUSTER_SCOPED else namespace
        return [copy.deepcopy(o) for (k, n, _), o in sorted(self.objects.items())
                if k == kind and n == ns and wanted.items() <= (o["metadata"].get("labels") or {}).items()]

    async def create(self, kind: str, namespace: str, body: JSON) -> JSON | None:
        name = body["metadata"]["name"]
        self.calls.append(("create", kind, namespace, name))
        assert body["kind"] == kind, f"create {kind} with a {body['kind']} body"
        self._in_flight += 1
        try:
            for _ in range(self.slow_create.get((kind, name), 0)):
                await asyncio.sleep(0)  # the request is in flight for one more loop turn
            if (kind, name) in self.fail_create:
                raise self.fail_create[kind, name]
            problem = _invalid(kind, body)
            if problem:
                raise StepError("KubernetesApiError",
                                f"create {kind} {namespace}/{name} failed: HTTP 422: {problem}")
            key = self._key(kind, namespace, name)
            if (kind, name) in self.appear:
                self.objects[key] = self.appear.pop((kind, name))
            if key in self.objects:
                return None
            stored = copy.deepcopy(body)
            meta = stored["metadata"]
            if kind not in CLUSTER_SCOPED:
                meta["namespace"] = namespace
            meta.update(uid=f"uid-{kind.lower()}-{namespace}-{name}", generation=1,
                        resourceVersion=str(next(self._versions)),
                        creationTimestamp="2026-11-28T08:00:00Z")
            if kind == "Service":
                spec = stored.setdefault("spec", {})
                if spec.get("clusterIP") != "None" and not spec.get("clusterIP"):
                    ip = f"10.96.0.{next(self._ips)}"
                    spec["clusterIP"], spec["clusterIPs"] = ip, [ip]
            if kind == "PersistentVolumeClaim":
                stored["status"] = {"phase": "Pending"}
            self.objects[key] = stored
            self.created.append(key)
            self.sent[key] = copy.deepcopy(body)
            asyncio.get_running_loop().call_soon(self._reconcile)
            self._notify()
            return copy.deepcopy(stored)
        finally:
            self._in_flight -= 1
            self._notify()

    def in_use(self, claim: str, namespace: str) -> None:
        """A pod nobody stops mounts the claim: a delete only marks it (pvc-protection)."""
        self.protected.add((namespace, claim))

    def unused(self, claim: str, namespace: str) -> None:
        """That pod ended: a claim marked for deletion goes now."""
        self.protected.discard((namespace, claim))
        key = self._key("PersistentVolumeClaim", namespace, claim)
        if (self.objects.get(key) or {}).get("metadata", {}).get("deletionTimestamp"):
            self._gone(key, self.objects.pop(key))

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, namespace, name))
        key = self._key(kind, namespace, name)
        if kind == "PersistentVolumeClaim" and (namespace, name) in self.protected and key in self.objects:
            self.objects[key]["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
            self._notify()
            return
        gone = self.objects.pop(key, None)
        if gone is not None:
            self._gone(key, gone)

    def _gone(self, key: Key, gone: JSON) -> None:
        self.deleted.append(key)
        if key[0] == "PersistentVolumeClaim":
            self._release(gone)
        asyncio.get_running_loop().call_soon(self._reconcile)
        self._notify()

    def _release(self, claim: JSON) -> None:
        """The volume a deleted claim was bound to: Released, or gone with reclaim policy Delete."""
        volume = self.objects.get(("PersistentVolume", "", (claim.get("spec") or {}).get("volumeName") or ""))
        bound_to = (volume or {}).get("spec", {}).get("claimRef") or {}
        if volume is None or bound_to.get("uid") != claim["metadata"].get("uid"):
            return
        volume["status"] = {"phase": "Released"}

    async def wait(self, kind: str, namespace: str, name: str, done: Callable[[JSON], bool],
                   timeout: float) -> JSON:
        self.calls.append(("wait", kind, namespace, name))
        key = self._key(kind, namespace, name)
        self.waiting.add(key)
        self._notify()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    found = self.objects.get(key)
                    if found is not None and done(copy.deepcopy(found)):
                        return copy.deepcopy(found)
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(f"{kind} {namespace}/{name} is not there yet after {timeout:.0f}s") from None
        finally:
            self.waiting.discard(key)
            self._notify()

    async def patch(self, kind: str, namespace: str, name: str, patch: JSON) -> JSON | None:
        self.calls.append(("patch", kind, namespace, name))
        key = self._key(kind, namespace, name)
        found = self.objects.get(key)
        if found is None:
            return None
        before = copy.deepcopy(found.get("spec"))
        merge_patch(found, patch)
        found["metadata"]["resourceVersion"] = str(next(self._versions))
        if kind in WORKLOADS and found.get("spec") != before:
            found["metadata"]["generation"] = int(found["metadata"].get("generation", 1)) + 1
            found.setdefault("status", {}).pop("readyReplicas", None)
        if key not in self.made:
            self.made.append(key)  # the pretend controllers act on it from now on
        asyncio.get_running_loop().call_soon(self._reconcile)
        self._notify()
        return copy.deepcopy(found)

    async def wait_gone(self, kind: str, namespace: str, name: str, timeout: float) -> None:
        self.calls.append(("wait_gone", kind, namespace, name))
        key = self._key(kind, namespace, name)
        try:
            await asyncio.wait_for(self.until(lambda: key not in self.objects), timeout)
        except TimeoutError:
            raise TimeoutError(f"{kind} {namespace}/{name} still exists after {timeout:.0f}s") from None

    async def acquire_lease(self, namespace: str, name: str, holder: str, seconds: int,
                            labels: dict[str, str] | None = None) -> str | None:
        self.calls.append(("acquire_lease", "Lease", namespace, name))
        current = self.leases.get((namespace, name))
        if current is not None and current.split("@")[0] != holder.split("@")[0]:
            return current
        self.leases[namespace, name] = holder
        return None

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        self.calls.append(("release_lease", "Lease", namespace, name))
        if (self.leases.get((namespace, name)) or "").split("@")[0] == holder.split("@")[0]:
            del self.leases[namespace, name]
            self._notify()

    async def patch_status(self, kind: str, namespace: str, name: str, status: JSON) -> None:
        self.calls.append(("patch_status", kind, namespace, name))
        found = self.objects.get(self._key(kind, namespace, name))
        if found is None:
            raise StepError(GROUP_GONE, f"write the status of {kind} {namespace}/{name}: it does not exist")
        self.patches.append(copy.deepcopy(status))
        merge_patch(found.setdefault("status", {}), status)
        self._notify()

    async def record_event(self, kind: str, namespace: str, name: str, uid: str, event_type: str,
                           reason: str, message: str) -> None:
        self.calls.append(("record_event", kind, namespace, name))
        self.events.append((event_type, reason, message))

    # -- the pretend controllers -------------------------------------------------------------

    def _reconcile(self) -> None:
        """Advance every created object as far as the world allows, then wake the waiters."""
        while any([self._step(key) for key in [*self.created, *self.made] if key in self.objects]):
            pass
        self._notify()

    def _step(self, key: Key) -> bool:
        kind, ns, name = key
        obj = self.objects[key]
        status = obj.setdefault("status", {})
        if kind == "VolumeSnapshot" and not status.get("readyToUse"):
            content_name = (obj["spec"].get("source") or {}).get("volumeSnapshotContentName")
            content = self.objects.get(("VolumeSnapshotContent", "", content_name or ""))
            if content is None or content["spec"].get("volumeSnapshotRef") != {"namespace": ns, "name": name}:
                return False
            handle = (content["spec"].get("source") or {}).get("snapshotHandle")
            if not handle:
                return False
            content["status"] = {"readyToUse": True, "snapshotHandle": handle, "restoreSize": 1073741824}
            obj["status"] = {"readyToUse": True, "boundVolumeSnapshotContentName": content_name,
                             "restoreSize": "1Gi"}
            return True
        if kind == "PersistentVolume":
            phase = status.get("phase")
            ref = obj["spec"].get("claimRef") or {}
            if phase == "Released" and obj["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                del self.objects[key]
                self.reclaimed.append(key)
                return True
            if phase == "Released" and ref and not ref.get("uid"):
                obj["status"] = {"phase": "Available"}
                return True
            if phase == "Bound" and ref.get("uid"):
                claim = self.objects.get(("PersistentVolumeClaim", ref.get("namespace", ""),
                                          ref.get("name", "")))
                if claim is None or claim["metadata"].get("uid") != ref["uid"]:
                    obj["status"] = {"phase": "Released"}
                    return True
            return False
        if kind == "Pod" and status.get("phase") != "Running":
            if not self._can_start(obj["spec"], ns):
                return False
            obj["status"] = {"phase": "Running", "podIP": f"10.244.0.{next(self._ips)}",
                             "conditions": [{"type": "Ready", "status": "True"}]}
            return True
        pre_bound = obj["spec"].get("volumeName") if kind == "PersistentVolumeClaim" else None
        if pre_bound and status.get("phase") != "Bound":
            volume = self.objects.get(("PersistentVolume", "", obj["spec"]["volumeName"]))
            ref = (volume or {}).get("spec", {}).get("claimRef") or {}
            theirs = ref.get("uid") not in (None, obj["metadata"]["uid"])
            if volume is None or ref.get("name") != name or theirs:
                return False
            ref["uid"] = obj["metadata"]["uid"]
            volume["status"] = {"phase": "Bound"}
            obj["status"] = {"phase": "Bound", "capacity": dict(obj["spec"]["resources"]["requests"])}
            return True
        if kind == "PersistentVolumeClaim" and status.get("phase") != "Bound":
            source = obj["spec"].get("dataSource")
            if source is not None:
                assert source.get("kind") == "VolumeSnapshot", source
                snap = self.objects.get(("VolumeSnapshot", ns, source["name"]))
                if snap is None or not (snap.get("status") or {}).get("readyToUse"):
                    return False
                content = self.objects[("VolumeSnapshotContent", "",
                                        snap["status"]["boundVolumeSnapshotContentName"])]
                self.provisioned_from[key] = content["status"]["snapshotHandle"]
            volume_name = f"pvc-{obj['metadata']['uid']}"
            obj["spec"]["volumeName"] = volume_name
            self.objects[("PersistentVolume", "", volume_name)] = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": volume_name, "uid": f"uid-{volume_name}"},
                "spec": {"persistentVolumeReclaimPolicy": "Delete",
                         "claimRef": {"namespace": ns, "name": name, "uid": obj["metadata"]["uid"]}},
                "status": {"phase": "Bound"}}
            self.made.append(("PersistentVolume", "", volume_name))
            obj["status"] = {"phase": "Bound", "capacity": dict(obj["spec"]["resources"]["requests"])}
            return True
        if kind in WORKLOADS and self._sync_pods(obj, ns):
            return True
        if kind in WORKLOADS and "readyReplicas" not in status:
            if (kind, name) in self.never_ready or not self._can_run(obj, ns):
                return False
            replicas = int(obj["spec"].get("replicas", 1))
            obj["status"] = {"observedGeneration": obj["metadata"]["generation"], "replicas": replicas,
                             "readyReplicas": replicas, "availableReplicas": replicas}
            return True
        return False

    def _sync_pods(self, workload: JSON, ns: str) -> bool:
        """A scaled-down workload's extra pods go (at once: the grace period is the test's)."""
        name = workload["metadata"]["name"]
        wanted = int(workload["spec"].get("replicas", 1))
        if wanted == 0 and (workload.get("status") or {}).get("readyReplicas"):
            workload["status"] = {"observedGeneration": workload["metadata"]["generation"], "replicas": 0,
                                  "readyReplicas": 0}
        extra = [k for k in self.objects if k[0] == "Pod" and k[1] == ns and k[2].startswith(f"{name}-pod-")
                 and int(k[2].rsplit("-", 1)[1]) >= wanted]
        for key in extra:
            del self.objects[key]
        return bool(extra)

    def _can_run(self, workload: JSON, ns: str) -> bool:
        """Its pods start: every claim Bound, every Secret and ConfigMap they need exists."""
        pod = workload["spec"]["template"]["spec"]
        if not self._can_start(pod, ns, workload):
            return False
        for i in range(int(workload["spec"].get("replicas", 1))):
            pod_key = ("Pod", ns, f"{workload['metadata']['name']}-pod-{i}")
            self.objects[pod_key] = {"kind": "Pod", "metadata": {
                "name": pod_key[2], "namespace": ns, "uid": f"uid-{pod_key[2]}",
                "labels": dict((workload["spec"]["template"].get("metadata") or {}).get("labels") or {})},
                "spec": copy.deepcopy(pod), "status": {"phase": "Running"}}
        return True

    def _can_start(self, pod: JSON, ns: str, workload: JSON | None = None) -> bool:
        """A pod of this spec starts: every claim Bound, every Secret and ConfigMap it needs exists."""
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or []
                  if v.get("persistentVolumeClaim")]
        if workload is not None and workload["kind"] == "StatefulSet":
            claims += [f"{t['metadata']['name']}-{workload['metadata']['name']}-{i}"
                       for t in workload["spec"].get("volumeClaimTemplates") or []
                       for i in range(int(workload["spec"].get("replicas", 1)))]
        for claim in claims:
            found = self.objects.get(("PersistentVolumeClaim", ns, claim))
            if found is None or (found.get("status") or {}).get("phase") != "Bound":
                return False
        return all((kind, ns, n) in self.objects for kind, n in _needs(pod))


def _invalid(kind: str, body: JSON) -> str | None:
    """What the API server's validation would refuse in the body (the part the restore can get
    wrong), or None."""
    spec = body.get("spec") or {}
    if (kind == "Service" and spec.get("type", "ClusterIP") == "ClusterIP"
            and any("nodePort" in port for port in spec.get("ports") or [])):
        return "spec.ports[].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
    if kind in WORKLOADS:
        pod = spec["template"]["spec"]
        for field in ("volumes", "containers", "initContainers"):
            seen = [item["name"] for item in pod.get(field) or []]
            if len(seen) != len(set(seen)):
                return f"spec.template.spec.{field}[].name: Duplicate value"
        wanted = (spec.get("selector") or {}).get("matchLabels") or {}
        if not wanted.items() <= ((spec["template"].get("metadata") or {}).get("labels") or {}).items():
            return "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
    return None


def _needs(pod: JSON) -> Iterable[tuple[str, str]]:
    """(kind, name) of the Secrets and ConfigMaps a pod cannot start without."""
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for env in c.get("env") or []:
            ref = env.get("valueFrom") or {}
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if ref.get(field) and not ref[field].get("optional"):
                    yield kind, ref[field]["name"]
        for env_from in c.get("envFrom") or []:
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if env_from.get(field) and not env_from[field].get("optional"):
                    yield kind, env_from[field]["name"]
    for volume in pod.get("volumes") or []:
        if volume.get("secret") and not volume["secret"].get("optional"):
            yield "Secret", volume["secret"]["secretName"]
        if volume.get("configMap") and not volume["configMap"].get("optional"):
            yield "ConfigMap", volume["configMap"]["name"]
