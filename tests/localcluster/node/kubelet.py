"""Pod lifecycle on the emulated node: binding, starting, status, restarts, deletion.

The node emulator stands in for both the scheduler (every pending pod without a node is
bound to this node) and the kubelet (each bound pod runs as local processes, see
`runtimes`). One `PodWorker` per pod drives it from creation to the final delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .addresses import PodAddressPool, listening_addresses
from .containers import (
    ContainerProcesses,
    LocalProcess,
    record_processes,
    spawn,
)
from .environment import (
    ContainerConfigError,
    PodAddresses,
    SourceKey,
    config_map_data,
    decode_secret_data,
    referenced_sources,
    resolve_env,
)
from .informer import DELETED, Informer
from .kubeapi import STRATEGIC_MERGE, ApiError, KubeClient, object_path
from .registration import HOST_IP, now_rfc3339
from .runtimes import (
    DEFAULT_POSTGRES_BIN_DIR,
    ContainerContext,
    ContainerStartError,
    Runtime,
    data_volume,
    runtime_for,
)
from .volumes import VolumeNotReady, VolumeResolver, read_optional

log = logging.getLogger(__name__)

JSON = dict[str, Any]

EMULATED_IMAGES = "postgres:15, mongo:7, minio/minio, snapgroup.dev/bleater-data-writer, snapgroup"
EVENT_SOURCE = "node-emulator"
READINESS_PERIOD_SECONDS = 0.5
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# A container that ran this long before exiting restarts without accumulated back-off.
BACKOFF_RESET_SECONDS = 60.0
DEFAULT_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class NodeConfig:
    """Where the node keeps its state and finds its binaries."""

    node_name: str
    state_dir: Path
    bin_dir: Path
    postgres_bin_dir: Path = DEFAULT_POSTGRES_BIN_DIR
    # On emulator shutdown, pods get at most this long to stop.
    shutdown_grace_seconds: float = 10.0

    @property
    def node_dir(self) -> Path:
        """The emulator's own state."""
        return self.state_dir / "node"

    @property
    def pods_dir(self) -> Path:
        """One directory per pod uid (emptyDirs, process records)."""
        return self.node_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        """Container logs, `<ns>_<pod>_<container>.log`."""
        return self.node_dir / "logs"

    @property
    def csi_dir(self) -> Path:
        """The hostpath CSI driver's data directory."""
        return self.state_dir / "csi"


def format_time(moment: datetime) -> str:
    """A Kubernetes `Time`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Posts core/v1 Events about pods, once per distinct (pod, reason, message)."""

    def __init__(self, client: KubeClient, node_name: str) -> None:
        self._client = client
        self._node_name = node_name
        self._sent: set[tuple[str, str, str]] = set()

    async def pod_event(self, pod: JSON, kind: str, reason: str, message: str) -> None:
        """Record an event on `pod` (Normal or Warning); failures are logged, not raised."""
        meta = pod["metadata"]
        key = (meta["uid"], reason, message)
        if key in self._sent:
            return
        self._sent.add(key)
        stamp = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": EVENT_SOURCE, "host": self._node_name},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": self._node_name,
        }
        try:
            await self._client.call("POST", object_path(meta["namespace"], "events"), body=event)
        except Exception as error:
            log.warning("cannot record event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], error)

    def forget(self, uid: str) -> None:
        """Drop the memory of a deleted pod's events."""
        self._sent = {key for key in self._sent if key[0] != uid}


class ContainerRunner:
    """One container of a pod: start, readiness, restarts with back-off, status."""

    def __init__(self, worker: PodWorker, spec: JSON, runtime: Runtime, init: bool) -> None:
        self.worker = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.runtime = runtime
        self.init = init
        self.restart_count = 0
        self.ready = False
        self.started = False
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = {}
        self.container_id = ""
        self.processes: ContainerProcesses | None = None
        self.succeeded = False

    def status(self) -> JSON:
        """This container's entry in containerStatuses."""
        entry: JSON = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.container_id:
            entry["containerID"] = self.container_id
        return entry

    def _set(self, *, state: JSON | None = None, ready: bool | None = None) -> None:
        if state is not None:
            self.state = state
        if ready is not None:
            self.ready = ready
        self.worker.status_changed()

    async def run(self) -> None:
        """Run the container until it ends for good (per restartPolicy), restarting it."""
        policy = self.worker.restart_policy
        if self.init and policy == "Always":
            policy = "OnFailure"
        backoff = BACKOFF_INITIAL_SECONDS
        while True:
            began = time.monotonic()
            try:
                code = await self._run_once()
            except ContainerConfigError as error:
                await self._report_failure("CreateContainerConfigError", str(error))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            except (ContainerStartError, OSError) as error:
                self._append_log(f"container start failed: {error}")
                await self._report_failure("RunContainerError", str(error))
                code = 128
            except Exception as error:
                log.exception("%s: container %s failed to start", self.worker.key, self.name)
                self._append_log(f"container start failed: {error!r}")
                await self._report_failure("RunContainerError", repr(error))
                code = 128
            if code == 0 and self.init:
                self.succeeded = True
                return
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.succeeded = code == 0
                return
            if time.monotonic() - began > BACKOFF_RESET_SECONDS:
                backoff = BACKOFF_INITIAL_SECONDS
            self._set(
                state={
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {backoff:.0f}s restarting failed container="
                        f"{self.name} pod={self.worker.pod_name}",
                    }
                }
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            self.restart_count += 1

    async def _report_failure(self, reason: str, message: str) -> None:
        log.warning("%s: container %s: %s: %s", self.worker.key, self.name, reason, message)
        self._set(state={"waiting": {"reason": reason, "message": message}}, ready=False)
        await self.worker.events.pod_event(self.worker.pod, "Warning", "Failed", message)

    def _append_log(self, line: str) -> None:
        with self.worker.log_path(self.name).open("a") as handle:
            handle.write(f"{now_rfc3339()} node-emulator: {line}\n")

    async def _run_once(self) -> int:
        worker = self.worker
        env = await worker.container_env(self.spec)
        ctx = worker.container_context(self.spec, env)
        self._append_log(
            f"starting container {self.name} ({self.runtime.description}), restart {self.restart_count}"
        )
        await self.runtime.prepare(ctx)
        specs = self.runtime.processes(ctx)
        started: list[LocalProcess] = []
        try:
            for spec in specs:
                started.append(spawn(spec, ctx.log_path))
        except OSError as error:
            for process in started:
                process.kill_group()
            raise ContainerStartError(f"cannot start {spec.argv[0]}: {error}") from error
        self.processes = ContainerProcesses(started)
        worker.record_processes()
        started_at = self.processes.started_at
        self.started = True
        self.container_id = f"emulated://{worker.uid}/{self.name}/{self.restart_count}"
        self._set(state={"running": {"startedAt": format_time(started_at)}}, ready=False)
        log.info(
            "%s: started container %s (%s), pids %s",
            worker.key,
            self.name,
            self.runtime.description,
            [p.pid for p in started],
        )
        probe = asyncio.create_task(self._probe_until_ready(ctx))
        try:
            code = await self.processes.wait()
        finally:
            probe.cancel()
        worker.record_processes()
        finished = format_time(datetime.now(UTC))
        terminated: JSON = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": format_time(started_at),
            "finishedAt": finished,
            "containerID": self.container_id,
        }
        if code < 0:
            # Killed by a signal: container runtimes report 128 + the signal number.
            terminated["exitCode"] = 128 - code
            terminated["signal"] = -code
            code = 128 - code
        log.info("%s: container %s exited with %d", worker.key, self.name, code)
        self._append_log(f"container {self.name} exited with {code}")
        self.last_state = {"terminated": terminated}
        self.started = False
        self._set(state={"terminated": terminated}, ready=False)
        return code

    async def _probe_until_ready(self, ctx: ContainerContext) -> None:
        ports = sorted(
            {
                int(port["containerPort"])
                for port in self.spec.get("ports") or []
                if str(port.get("protocol", "TCP")) == "TCP"
            }
            | set(self.runtime.probe_ports(ctx))
        )
        while True:
            if all([await _accepts(ctx.pod_ip, port) for port in ports]) and await self.runtime.ready(ctx):
                log.info("%s: container %s is ready", self.worker.key, self.name)
                self._set(ready=True)
                return
            await asyncio.sleep(READINESS_PERIOD_SECONDS)


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class PodWorker:
    """Drives one pod bound to this node from start to the final delete."""

    def __init__(self, kubelet: Kubelet, pod: JSON) -> None:
        self.kubelet = kubelet
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.key = f"{self.namespace}/{self.pod_name}"
        self.events = kubelet.events
        self.restart_policy: str = pod.get("spec", {}).get("restartPolicy", "Always")
        self.pod_dir = kubelet.config.pods_dir / self.uid
        self.run_dir: Path | None = None
        self.pod_ip = ""
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.mounts: dict[str, Path] = {}
        self.init_runners: list[ContainerRunner] = []
        self.runners: list[ContainerRunner] = []
        self.initialized = False
        self.sandbox_ready = False
        self.unknown_images: list[tuple[str, str]] = []
        self._deletion = asyncio.Event()
        self._grace_changed = asyncio.Event()
        self._gone = False
        self._shutdown = False
        self._dirty = asyncio.Event()
        self._last_sent: JSON | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # --- events from the pod informer -------------------------------------------------

    def update(self, pod: JSON) -> None:
        """A newer version of the pod arrived."""
        previous_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._deletion.set()
            if pod["metadata"].get("deletionGracePeriodSeconds") != previous_grace:
                self._grace_changed.set()

    def gone(self) -> None:
        """The pod object was removed from the API (force delete or final delete)."""
        self._gone = True
        self._deletion.set()
        self._grace_changed.set()

    def shut_down(self) -> None:
        """Stop the pod's processes because the emulator exits (the pod stays in the API)."""
        self._shutdown = True
        self._deletion.set()

    # --- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """The whole life of the pod on this node."""
        publisher = asyncio.create_task(self._publish_status())
        try:
            if not self._deletion.is_set() and not self._terminal():
                live = asyncio.create_task(self._live())
                live.add_done_callback(self._log_failure)
                self._tasks.append(live)
            await self._deletion.wait()
            await self._terminate()
        finally:
            publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publisher

    def _log_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: pod setup failed", self.key, exc_info=task.exception())

    def _terminal(self) -> bool:
        return (self.pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    async def _live(self) -> None:
        spec = self.pod.get("spec", {})
        previous = {s["name"]: s for s in (self.pod.get("status") or {}).get("containerStatuses") or []}
        for container in spec.get("initContainers") or []:
            runtime = runtime_for(container.get("image", ""))
            if runtime is None:
                self.unknown_images.append((container["name"], container.get("image", "")))
            else:
                self.init_runners.append(ContainerRunner(self, container, runtime, init=True))
        for container in spec.get("containers") or []:
            runtime = runtime_for(container.get("image", ""))
            if runtime is None:
                self.unknown_images.append((container["name"], container.get("image", "")))
            else:
                runner = ContainerRunner(self, container, runtime, init=False)
                runner.restart_count = int(previous.get(container["name"], {}).get("restartCount", 0))
                self.runners.append(runner)
        if self.unknown_images:
            self.status_changed()
            for name, image in self.unknown_images:
                message = (
                    f'image "{image}" of container "{name}" is not emulated by the node '
                    f"emulator (it runs: {EMULATED_IMAGES}); the pod stays Pending"
                )
                log.warning("%s: %s", self.key, message)
                await self.events.pod_event(self.pod, "Warning", "ImageNotEmulated", message)
            return

        await self._set_up_sandbox()
        for runner in self.init_runners:
            await runner.run()
            if not runner.succeeded:
                log.warning("%s: init container %s failed", self.key, runner.name)
                return
        self.initialized = True
        self.status_changed()
        tasks = [asyncio.create_task(runner.run()) for runner in self.runners]
        self._tasks.extend(tasks)
        await asyncio.gather(*tasks)

    async def _set_up_sandbox(self) -> None:
        """Pod IP, directories and volumes; waits while a volume is not ready."""
        kubelet = self.kubelet
        previous_ip = (self.pod.get("status") or {}).get("podIP", "")
        # Something listening on the address is not ours: this node's earlier processes were
        # stopped or killed before pods start (another cluster's pods, most likely).
        busy = listening_addresses()
        if previous_ip and previous_ip not in busy and kubelet.addresses.reserve(self.uid, previous_ip):
            self.pod_ip = previous_ip
        else:
            self.pod_ip = kubelet.addresses.allocate(self.uid, busy)
        self.pod_dir.mkdir(parents=True, exist_ok=True)
        kubelet.config.logs_dir.mkdir(parents=True, exist_ok=True)
        # Unix sockets (PostgreSQL's) need a short path: keep them out of the state dir.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"sgpod-{self.uid[:8]}-"))
        self.sandbox_ready = True
        self.status_changed()
        while True:
            generation = kubelet.volumes.changes.generation
            try:
                self.mounts = await kubelet.volumes.mount_all(self.pod, self.pod_dir, self.addresses())
                return
            except (VolumeNotReady, ApiError, OSError) as error:
                log.info("%s: waiting for volumes: %s", self.key, error)
                await self.events.pod_event(self.pod, "Warning", "FailedMount", str(error))
                # Secrets and ConfigMaps are not watched: the timeout retries those.
                await kubelet.volumes.changes.wait(generation, timeout=5.0)

    def addresses(self) -> PodAddresses:
        """The downward API's pod and host IP."""
        return PodAddresses(pod_ip=self.pod_ip, host_ip=HOST_IP)

    async def container_env(self, container: JSON) -> dict[str, str]:
        """Resolve a container's environment (reads the Secrets/ConfigMaps it references)."""
        sources: dict[SourceKey, dict[str, str] | None] = {}
        for kind, name in referenced_sources(container):
            resource = "secrets" if kind == "Secret" else "configmaps"
            obj = await read_optional(self.kubelet.client, object_path(self.namespace, resource, name))
            if obj is None:
                sources[(kind, name)] = None
            elif kind == "Secret":
                sources[(kind, name)] = decode_secret_data(obj)
            else:
                sources[(kind, name)] = config_map_data(obj)
        services = list(self.kubelet.services.objects.values())
        return resolve_env(self.pod, container, services, sources, self.addresses())

    def container_context(self, container: JSON, env: dict[str, str]) -> ContainerContext:
        """What a runtime needs to start `container`."""
        volume_sources = {v["name"]: v for v in self.pod.get("spec", {}).get("volumes") or []}
        mounts = {
            m["mountPath"]: self.mounts[m["name"]]
            for m in container.get("volumeMounts") or []
            if m["name"] in self.mounts
        }
        scratch = self.pod_dir / "scratch" / container["name"]
        scratch.mkdir(parents=True, exist_ok=True)
        assert self.run_dir is not None
        config = self.kubelet.config
        return ContainerContext(
            namespace=self.namespace,
            pod_name=self.pod_name,
            pod_uid=self.uid,
            pod_ip=self.pod_ip,
            container=container,
            env=env,
            mounts=mounts,
            data_dir=data_volume(container, volume_sources, mounts, scratch),
            pod_dir=self.pod_dir,
            run_dir=self.run_dir,
            bin_dir=config.bin_dir,
            log_path=self.log_path(container["name"]),
            postgres_bin_dir=config.postgres_bin_dir,
        )

    def log_path(self, container_name: str) -> Path:
        """The container's log file."""
        return self.kubelet.config.logs_dir / f"{self.namespace}_{self.pod_name}_{container_name}.log"

    def record_processes(self) -> None:
        """Persist the pod's live processes, for cleanup by a later emulator run."""
        processes = [
            process
            for runner in self.init_runners + self.runners
            if runner.processes is not None
            for process in runner.processes.processes
        ]
        with contextlib.suppress(OSError):
            record_processes(self.pod_dir, processes)

    def grace_seconds(self) -> float:
        """How long the pod's processes may take to stop, as things stand now."""
        meta = self.pod["metadata"]
        spec = self.pod.get("spec", {})
        grace = float(
            meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionGracePeriodSeconds") is not None
            else spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        )
        if self._shutdown:
            grace = min(grace, self.kubelet.config.shutdown_grace_seconds)
        if self._gone:
            # Force-deleted: the object is gone already; stop quickly but not brutally.
            grace = min(grace, 2.0)
        return grace

    async def _terminate(self) -> None:
        log.info(
            "%s: stopping (grace %.0fs%s)",
            self.key,
            self.grace_seconds(),
            ", node shutting down" if self._shutdown else "",
        )
        for task in self._tasks:
            task.cancel()
        # Failures were logged when they happened; stopping goes on regardless.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [
            runner.processes for runner in self.init_runners + self.runners if runner.processes is not None
        ]
        await self._stop_within_grace(running)
        for runner in self.runners:
            runner.ready = False
        self.record_processes()
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self._shutdown:
            return
        self.kubelet.addresses.release(self.uid)
        shutil.rmtree(self.pod_dir, ignore_errors=True)
        self.events.forget(self.uid)
        log.info("%s: processes stopped", self.key)
        if not self._gone:
            await self._final_delete()

    async def _stop_within_grace(self, running: list[ContainerProcesses]) -> None:
        # Like the kubelet, a later, shorter grace period (a second delete, a force delete)
        # cuts the wait short.
        began = time.monotonic()
        for processes in running:
            processes.send_stop_signals()
        while True:
            pending: list[asyncio.Future[Any]] = [
                exited for processes in running for exited in processes.pending_exits()
            ]
            remaining = began + self.grace_seconds() - time.monotonic()
            if not pending or remaining <= 0:
                break
            self._grace_changed.clear()
            changed = asyncio.create_task(self._grace_changed.wait())
            await asyncio.wait([*pending, changed], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
        await asyncio.gather(*(processes.kill_all() for processes in running))

    async def _final_delete(self) -> None:
        # The kubelet's last word: remove the object now that nothing of it runs.
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        for attempt in range(10):
            try:
                await self.kubelet.client.call(
                    "DELETE", object_path(self.namespace, "pods", self.pod_name), body=body
                )
                log.info("%s: deleted", self.key)
                return
            except ApiError as error:
                if error.status in (404, 409):
                    return
                log.warning("%s: final delete failed (%s), attempt %d", self.key, error, attempt)
            except Exception as error:
                log.warning("%s: final delete failed (%s), attempt %d", self.key, error, attempt)
            await asyncio.sleep(1.0)

    # --- status ------------------------------------------------------------------------

    def status_changed(self) -> None:
        """Ask the publisher to send the pod status."""
        self._dirty.set()

    async def _publish_status(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self._deletion.is_set():
                # Nothing more is reported for a pod on its way out.
                continue
            status = self.build_status()
            if status == self._last_sent:
                continue
            try:
                await self.kubelet.client.call(
                    "PATCH",
                    object_path(self.namespace, "pods", self.pod_name) + "/status",
                    body={"metadata": {"uid": self.uid}, "status": status},
                    content_type=STRATEGIC_MERGE,
                )
                self._last_sent = status
            except ApiError as error:
                if error.status in (404, 409):
                    return
                log.warning("%s: status update failed: %s", self.key, error)
                await asyncio.sleep(1.0)
                self._dirty.set()
            except Exception as error:
                log.warning("%s: status update failed: %s", self.key, error)
                await asyncio.sleep(1.0)
                self._dirty.set()

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> JSON:
        status = "True" if ok else "False"
        previous = self._transitions.get(kind)
        if previous is None or previous[0] != status:
            previous = (status, now_rfc3339())
            self._transitions[kind] = previous
        condition: JSON = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": previous[1],
        }
        # Explicit nulls: the status is sent as a strategic merge patch, which would otherwise
        # keep the reason of an earlier False next to a True.
        condition["reason"] = reason if reason and not ok else None
        condition["message"] = message if reason and not ok else None
        return condition

    def build_status(self) -> JSON:
        """The pod status as the kubelet would report it now."""
        status: JSON = {
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "startTime": self.start_time,
        }
        if self.unknown_images:
            unknown = {
                name: {
                    "name": name,
                    "image": image,
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "waiting": {
                            "reason": "ImageNotEmulated",
                            "message": f'image "{image}" is not emulated by the node emulator',
                        }
                    },
                }
                for name, image in self.unknown_images
            }
            spec = self.pod.get("spec", {})
            status["phase"] = "Pending"
            status["containerStatuses"] = _in_spec_order(
                spec.get("containers"), unknown, [r.status() for r in self.runners]
            )
            if spec.get("initContainers"):
                status["initContainerStatuses"] = _in_spec_order(
                    spec.get("initContainers"), unknown, [r.status() for r in self.init_runners]
                )
            status["conditions"] = [
                self._condition("PodReadyToStartContainers", False),
                self._condition(
                    "Initialized",
                    False,
                    "ContainersNotInitialized",
                    "containers with incomplete status: images not emulated",
                ),
                self._condition(
                    "ContainersReady",
                    False,
                    "ContainersNotReady",
                    "containers with unready status: images not emulated",
                ),
                self._condition(
                    "Ready",
                    False,
                    "ContainersNotReady",
                    "containers with unready status: images not emulated",
                ),
                self._condition("PodScheduled", True),
            ]
            return status

        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        unready = [r.name for r in self.runners if not r.ready]
        pending_init = [r.name for r in self.init_runners if not r.succeeded]
        status["phase"] = self._phase()
        status["conditions"] = [
            self._condition("PodReadyToStartContainers", self.sandbox_ready),
            self._condition(
                "Initialized",
                self.initialized,
                "ContainersNotInitialized",
                f"containers with incomplete status: [{' '.join(pending_init)}]",
            ),
            self._condition(
                "ContainersReady",
                not unready,
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition(
                "Ready",
                not unready,
                "ContainersNotReady",
                f"containers with unready status: [{' '.join(unready)}]",
            ),
            self._condition("PodScheduled", True),
        ]
        status["containerStatuses"] = [r.status() for r in self.runners]
        if self.init_runners:
            status["initContainerStatuses"] = [r.status() for r in self.init_runners]
        return status

    def _phase(self) -> str:
        # The kubelet's getPhase, for the states the emulator produces.
        if not self.initialized:
            return "Pending"
        running = stopped = waiting = succeeded = 0
        for runner in self.runners:
            if "running" in runner.state:
                running += 1
            elif "terminated" in runner.state:
                stopped += 1
                if runner.state["terminated"].get("exitCode") == 0:
                    succeeded += 1
            elif runner.last_state.get("terminated"):
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped and self.restart_policy == "Always":
            return "Running"
        if stopped and stopped == succeeded:
            return "Succeeded"
        if stopped and self.restart_policy == "Never":
            return "Failed"
        return "Running"


def _in_spec_order(containers: list[JSON] | None, unknown: dict[str, JSON], known: list[JSON]) -> list[JSON]:
    """Statuses of `containers` in the order the pod spec lists them."""
    by_name = {**unknown, **{s["name"]: s for s in known}}
    return [by_name[c["name"]] for c in containers or [] if c["name"] in by_name]


class Kubelet:
    """Binds pending pods to this node and runs a `PodWorker` for each pod bound to it."""

    def __init__(
        self,
        client: KubeClient,
        config: NodeConfig,
        services: Informer,
        volumes: VolumeResolver,
        addresses: PodAddressPool,
    ) -> None:
        self.client = client
        self.config = config
        self.services = services
        self.volumes = volumes
        self.addresses = addresses
        self.events = EventRecorder(client, config.node_name)
        self.workers: dict[str, PodWorker] = {}
        self._worker_tasks: dict[str, asyncio.Task[None]] = {}
        self._binding: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    def on_pod_event(self, kind: str, pod: JSON) -> None:
        """Informer listener for every pod in the cluster."""
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == DELETED:
            if worker is not None:
                worker.gone()
            return
        node_name = pod.get("spec", {}).get("nodeName")
        if not node_name:
            self._maybe_bind(pod)
            return
        if node_name != self.config.node_name:
            return
        if worker is not None:
            worker.update(pod)
            return
        if self._stopping:
            return
        worker = PodWorker(self, pod)
        worker.update(pod)
        self.workers[uid] = worker
        log.info("%s: bound to this node; starting", worker.key)
        task = asyncio.create_task(self._run_worker(worker))
        self._worker_tasks[uid] = task

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        except Exception:
            log.exception("%s: pod worker failed", worker.key)
        finally:
            self.workers.pop(worker.uid, None)
            self._worker_tasks.pop(worker.uid, None)

    def _maybe_bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        spec = pod.get("spec", {})
        if (
            self._stopping
            or meta.get("deletionTimestamp")
            or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            or spec.get("schedulingGates")
            or meta["uid"] in self._binding
        ):
            return
        self._binding.add(meta["uid"])
        self._spawn(self._bind(pod))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bind(self, pod: JSON) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.node_name},
        }
        try:
            for attempt in range(20):
                try:
                    await self.client.call(
                        "POST",
                        object_path(meta["namespace"], "pods", meta["name"]) + "/binding",
                        body=body,
                    )
                    log.info("%s/%s: bound to %s", meta["namespace"], meta["name"], self.config.node_name)
                    return
                except ApiError as error:
                    if error.status in (404, 409):
                        return
                    log.warning(
                        "%s/%s: binding failed (%s), attempt %d",
                        meta["namespace"],
                        meta["name"],
                        error,
                        attempt,
                    )
                except Exception as error:
                    log.warning("%s/%s: binding failed (%s)", meta["namespace"], meta["name"], error)
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        finally:
            self._binding.discard(meta["uid"])

    def forget_orphan_pod_dirs(self, bound_uids: set[str]) -> None:
        """Remove directories of pods that no longer exist (deleted while we were down)."""
        if not self.config.pods_dir.is_dir():
            return
        for directory in self.config.pods_dir.iterdir():
            if directory.is_dir() and directory.name not in bound_uids:
                log.info("removing directory of vanished pod %s", directory.name)
                shutil.rmtree(directory, ignore_errors=True)

    async def shutdown(self) -> None:
        """Stop every pod's processes (pods stay in the API, as when a kubelet stops)."""
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        for worker in list(self.workers.values()):
            worker.shut_down()
        tasks = list(self._worker_tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def bound_pod_uids(pods: Informer, node_name: str) -> set[str]:
    """The uids of the cached pods bound to `node_name`."""
    return {
        pod["metadata"]["uid"]
        for pod in pods.objects.values()
        if pod.get("spec", {}).get("nodeName") == node_name
    }
