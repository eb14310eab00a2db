"""Launch and stop the local Kubernetes cluster: a real control plane as local processes.

Components, all on 127.0.0.1 with ports chosen at start:

- etcd, kube-apiserver (service ClusterIPs from ``127.96.0.0/16``, so a Service's clusterIP is a
  loopback address the node emulator can bind) and kube-controller-manager;
- the CSI snapshot-controller, csi-provisioner and csi-snapshotter sidecars;
- ``hostpath-csi``, the project's stand-in for csi-driver-host-path (same on-disk layout: volume
  ``V`` is the directory ``<state>/csi/V``, snapshots are tar archives in ``<state>/csi/snapshots``);
- the node emulator (``python -m localcluster.node``), the kubelet's stand-in that runs pods as
  local processes and registers the Node ``local-node``.

Then it installs the VolumeSnapshot CRDs, a CSIDriver object, the default StorageClass
``csi-hostpath-sc`` and the default VolumeSnapshotClass ``csi-hostpath-snapclass``, and writes an
admin ``kubeconfig`` into the state directory.

Every component runs in its own session and logs to ``<state>/logs/<name>.log``; their pids are
kept in ``<state>/cluster.json`` so that another process can stop them (``python -m localcluster
down``). All components authenticate as the cluster admin: this cluster exists for tests.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import http.client
import ipaddress
import json
import os
import random
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster.build import SNAPSHOT_CRDS_DIR, ensure_binaries

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"
DEFAULT_STATE_DIR = REPO_ROOT / ".localcluster"
BLEATER_SAMPLE = REPO_ROOT / "deploy" / "samples" / "bleater"

SERVICE_CIDR = "127.96.0.0/16"
NODE_NAME = "local-node"
CSI_DRIVER = "hostpath.csi.snapgroup.dev"
STORAGE_CLASS = "csi-hostpath-sc"
SNAPSHOT_CLASS = "csi-hostpath-snapclass"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

_LOG_TAIL_LINES = 30
_NODE_ADDRESS_LOCK = "/tmp/snapgroup-localcluster-node.lock"
_POLL_SECONDS = 0.2

# Seconds between SIGTERM and SIGKILL. The node emulator stops every pod first, and pods have
# termination grace periods of their own.
_STOP_GRACE = {"node-emulator": 45.0}
_DEFAULT_STOP_GRACE = 10.0


class ClusterError(RuntimeError):
    """The local cluster cannot be started or used."""


class ComponentError(ClusterError):
    """A component exited or did not become ready; the message names it and shows its log."""

    def __init__(self, component: str, problem: str, log_tail: str) -> None:
        super().__init__(
            f"local cluster component {component!r} {problem}\n--- last lines of its log ---\n{log_tail}"
        )
        self.component = component
        self.problem = problem
        self.log_tail = log_tail


@dataclass
class _Component:
    """A component to start: its command line and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    timeout: float = 60.0
    env: dict[str, str] | None = None
    pass_fds: tuple[int, ...] = ()


@dataclass
class _Running:
    """A started component, as recorded in cluster.json."""

    name: str
    pid: int
    create_time: float
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)


class LocalCluster:
    """A local Kubernetes cluster whose state (pids, logs, data, kubeconfig) lives in state_dir."""

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR, *, node_emulator: bool = True):
        self.state_dir = Path(state_dir).resolve()
        self.node_emulator = node_emulator
        self._running: dict[str, _Running] = {}
        self._ports: dict[str, int] = {}
        self._bin_dir: Path | None = None
        self._api: _ApiClient | None = None
        self._load_state()

    # --- paths -------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig, written by :meth:`up`."""
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        """Where each component logs, as ``<name>.log``."""
        return self.state_dir / "logs"

    @property
    def csi_dir(self) -> Path:
        """The CSI driver's data dir: volume ``V`` is ``csi_dir / V``."""
        return self.state_dir / "csi"

    @property
    def bin_dir(self) -> Path:
        """The directory of executables the cluster runs (building them if needed)."""
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def _pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def _csi_socket(self) -> Path:
        path = self.state_dir / "run" / "csi.sock"
        if len(str(path)) < 100:
            return path
        # A unix socket path is limited to 108 bytes.
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"localcluster-{digest}" / "csi.sock"

    # --- lifecycle ---------------------------------------------------------------------------

    def up(
        self,
        *,
        apply_bleater: bool = False,
        bleater_timeout: float = 300.0,
        wait_for_other_cluster: float = 0.0,
    ) -> None:
        """Start every component, install the storage classes, and write the kubeconfig.

        With apply_bleater, also apply ``deploy/samples/bleater`` and wait until its workloads'
        pods are Running and Ready. Only one cluster with a node emulator can run on a machine
        (see :meth:`_claim_node_addresses`); wait_for_other_cluster is how many seconds to wait
        for another one to stop. On failure everything started is stopped again and a
        :class:`ComponentError` (or :class:`ClusterError`) says what failed.
        """
        if self._running and not any(_alive(r) for r in self._running.values()):
            self.down()  # stopped without `down` (a reboot, a kill): clear the records
        if self._running:
            alive = [r.name for r in self._running.values() if _alive(r)]
            if not self.failed_components():
                _progress(f"already running (state dir {self.state_dir})")
                if apply_bleater:
                    self.apply_bleater(timeout=bleater_timeout)
                return
            raise ClusterError(
                f"a cluster in {self.state_dir} is partly running ({', '.join(alive) or 'none'}"
                " alive); run `python -m localcluster down` first"
            )
        bin_dir = self.bin_dir
        node_lock = None
        if self.node_emulator:
            node_lock = self._claim_node_addresses(wait=wait_for_other_cluster)
        started = time.monotonic()
        for sub in ("logs", "csi", "node", "etcd", "pki"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        _make_searchable(self.csi_dir)
        self._csi_socket.parent.mkdir(parents=True, exist_ok=True)
        _ensure_pki(self._pki)
        self._choose_ports()
        self._write_kubeconfig()
        try:
            self._start_and_wait([self._hostpath_csi(bin_dir), self._etcd(bin_dir)])
            self._start_and_wait([self._apiserver(bin_dir)])
            kcm = self._controller_manager(bin_dir)
            self._start(kcm)
            self._install_cluster_resources(bin_dir)
            rest = [
                self._snapshot_controller(bin_dir),
                self._csi_provisioner(bin_dir),
                self._csi_snapshotter(bin_dir),
            ]
            if node_lock is not None:
                rest.append(self._node_emulator(bin_dir, node_lock))
            self._start_and_wait(rest, also_wait=[kcm])
        except BaseException:
            try:
                self.down()
            except ClusterError as exc:  # the original error matters more
                _progress(f"cleaning up after the failed start: {exc}")
            raise
        finally:
            if node_lock is not None:
                os.close(node_lock)  # the node emulator holds it from now on
        _progress(f"cluster up in {time.monotonic() - started:.1f}s; kubeconfig {self.kubeconfig}")
        if apply_bleater:
            self.apply_bleater(timeout=bleater_timeout)

    def down(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and leave no process of it behind.

        Works from any process, using the pids recorded in the state dir. Data, logs and the
        kubeconfig stay; a later :meth:`up` starts on the same data.
        """
        if not self._running:
            self._load_state()
        sessions = {r.pid for r in self._running.values()}
        # Stop in waves: the node emulator while the API server still answers; then everything
        # that talks to the API server; then the API server; etcd last.
        waves = [
            ["node-emulator"],
            ["csi-snapshotter", "csi-provisioner", "snapshot-controller", "kube-controller-manager"],
            ["hostpath-csi", "kube-apiserver"],
            ["etcd"],
        ]
        listed = {n for wave in waves for n in wave}
        waves.append([n for n in self._running if n not in listed])
        for wave in waves:
            self._stop([self._running[n] for n in wave if n in self._running])
        _kill_leftovers(sessions, self.state_dir)
        survivors = [r for r in self._running.values() if _alive(r)]
        if survivors:
            raise ClusterError("could not stop " + ", ".join(f"{r.name} (pid {r.pid})" for r in survivors))
        self._running.clear()
        self._api = None
        self._save_state()

    def restart_component(self, name: str) -> None:
        """Start a component that has died again, and wait until it is ready."""
        running = self._running.get(name)
        if running is not None and _alive(running):
            raise ClusterError(f"{name} is still running")
        specs = {c.name: c for c in self._component_specs()}
        if name not in specs:
            raise ClusterError(f"no component named {name!r}; known: {', '.join(specs)}")
        self._wait_ports_released(name)
        if name != "node-emulator":
            self._start_and_wait([specs[name]])
            return
        node_lock = self._claim_node_addresses()
        try:
            self._start_and_wait([self._node_emulator(self.bin_dir, node_lock)])
        finally:
            os.close(node_lock)

    def _wait_ports_released(self, name: str, timeout: float = 15.0) -> None:
        """Wait until a dead component's ports can be bound again.

        A killed multi-threaded process is reported as a zombie as soon as its main thread is
        gone, while the kernel may still be tearing down its other threads and their sockets.
        """
        ports = [port for key, port in self._ports.items() if key == name or key.startswith(f"{name}-")]
        deadline = time.monotonic() + timeout
        for port in ports:
            while True:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        probe.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise ClusterError(
                                f"{name}: port {port} still in use {timeout:.0f}s after it died"
                            ) from None
                time.sleep(0.05)  # the kernel is still closing the dead process's sockets

    def component_health(self) -> dict[str, str]:
        """Return each recorded component's health: ``"ok"`` or what is wrong with it."""
        checks = {c.name: c.ready for c in self._component_specs()}
        health: dict[str, str] = {}
        for name, running in self._running.items():
            if not _alive(running):
                health[name] = f"not running ({self._exit_description(running)})"
                continue
            try:
                health[name] = "ok" if checks[name]() else "running, not ready"
            except Exception as exc:
                health[name] = f"running, not ready: {exc}"
        return health

    def pids(self) -> dict[str, int]:
        """Return the pid of every component started and not stopped by :meth:`down`."""
        return {name: running.pid for name, running in self._running.items()}

    def failed_components(self) -> dict[str, str]:
        """Return the components that have died since they started, each with its log tail."""
        return {
            name: f"{self._exit_description(running)}\n{self.log_tail(name)}"
            for name, running in self._running.items()
            if not _alive(running)
        }

    def resident_memory(self) -> dict[str, int]:
        """Return each running component's RSS in bytes, including its child processes."""
        memory: dict[str, int] = {}
        for name, running in self._running.items():
            if not _alive(running):
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(running.pid)
                total = 0
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                memory[name] = total
        return memory

    def log_tail(self, name: str, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of a component's log."""
        path = self.logs_dir / f"{name}.log"
        try:
            with path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - 64 * 1024))
                tail = deque(log.read().decode(errors="replace").splitlines(), maxlen=lines)
        except FileNotFoundError:
            return f"(no log at {path})"
        return "\n".join(tail)

    # --- using the cluster -------------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raise ClusterError if it fails and check."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr.strip()}"
            )
        return result

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the API server as admin; return the decoded JSON, raise ClusterError on >= 400."""
        status, payload = self._api_client().request(method, path, body)
        if status >= 400:
            raise ClusterError(f"{method} {path}: HTTP {status}: {payload}")
        return payload

    def apply_bleater(self, timeout: float = 300.0) -> None:
        """Apply the bleater sample and wait until its workloads' pods are Running and Ready."""
        if not (BLEATER_SAMPLE / "kustomization.yaml").is_file():
            raise ClusterError(f"no kustomization.yaml in {BLEATER_SAMPLE}")
        self.kubectl("apply", "-k", str(BLEATER_SAMPLE))
        deadline = time.monotonic() + timeout
        while True:
            problem = self._workloads_not_ready("bleater")
            if problem is None:
                return
            failed = self.failed_components()
            if failed:
                name, detail = next(iter(failed.items()))
                raise ComponentError(name, "exited while the bleater sample started", detail)
            unrunnable = self._events("bleater", reason="ImageNotEmulated")
            if unrunnable:
                raise ClusterError("the node emulator cannot run a bleater image: " + "; ".join(unrunnable))
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"bleater pods not Running/Ready after {timeout:.0f}s: {problem}\n"
                    f"{self._recent_events('bleater')}\n--- node-emulator log ---\n"
                    f"{self.log_tail('node-emulator')}"
                )
            time.sleep(1.0)

    def _workloads_not_ready(self, namespace: str) -> str | None:
        """Return why the namespace's workloads are not all ready, or None when they are."""
        expected = 0
        for kind in ("deployments", "statefulsets"):
            items = self.api("GET", f"/apis/apps/v1/namespaces/{namespace}/{kind}")["items"]
            for item in items:
                name = f"{kind[:-1]}/{item['metadata']['name']}"
                want = item["spec"].get("replicas", 1)
                status = item.get("status", {})
                if status.get("observedGeneration", 0) < item["metadata"].get("generation", 1):
                    return f"{name}: not yet observed by its controller"
                if status.get("readyReplicas", 0) != want:
                    return f"{name}: {status.get('readyReplicas', 0)}/{want} ready"
                expected += want
        if expected == 0:
            return "no Deployment or StatefulSet yet"
        pods = self.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                return f"pod {pod['metadata']['name']} is terminating"
            phase = pod.get("status", {}).get("phase")
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions", [])
            )
            if phase != "Running" or not ready:
                return f"pod {pod['metadata']['name']}: phase {phase}, ready {ready}"
        return None

    def _events(self, namespace: str, reason: str) -> list[str]:
        events = self.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return [
            f"{e['involvedObject'].get('name')}: {e.get('message')}"
            for e in events
            if e.get("reason") == reason
        ]

    def _recent_events(self, namespace: str, count: int = 15) -> str:
        try:
            events = self.api("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        except ClusterError as exc:
            return f"(events unavailable: {exc})"
        lines = [
            f"{e.get('type')} {e.get('reason')} {e['involvedObject'].get('kind')}/"
            f"{e['involvedObject'].get('name')}: {e.get('message')}"
            for e in events[-count:]
        ]
        return "--- recent events ---\n" + "\n".join(lines)

    # --- components ----------------------------------------------------------------------------

    def _component_specs(self) -> list[_Component]:
        """Return every component spec (for health checks of a running cluster)."""
        if not self._ports:
            return []
        bin_dir = self._bin_dir or Path("/nonexistent")
        specs = [
            self._hostpath_csi(bin_dir),
            self._etcd(bin_dir),
            self._apiserver(bin_dir),
            self._controller_manager(bin_dir),
            self._snapshot_controller(bin_dir),
            self._csi_provisioner(bin_dir),
            self._csi_snapshotter(bin_dir),
        ]
        if self.node_emulator:
            specs.append(self._node_emulator(bin_dir))
        return specs

    def _etcd(self, bin_dir: Path) -> _Component:
        client = f"http://127.0.0.1:{self._ports['etcd']}"
        peer = f"http://127.0.0.1:{self._ports['etcd-peer']}"
        return _Component(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=localcluster",
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=localcluster={peer}",
                # Test data: losing it in a power cut is fine, waiting for fsync is not.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            ready=lambda: _http_get_json(f"{client}/health").get("health") == "true",
        )

    def _apiserver(self, bin_dir: Path) -> _Component:
        pki = self._pki
        return _Component(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                "--advertise-address=127.0.0.1",
                "--bind-address=127.0.0.1",
                f"--secure-port={self._ports['kube-apiserver']}",
                f"--etcd-servers=http://127.0.0.1:{self._ports['etcd']}",
                f"--cert-dir={pki / 'apiserver-generated'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # Loopback ClusterIPs: the node emulator's service proxy binds them locally.
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                # The Endpoints of the `kubernetes` Service would hold 127.0.0.1, which
                # Endpoints validation rejects (loopback); nothing here needs them.
                "--endpoint-reconciler-type=none",
                # Publishes a request-header CA, which the controller manager's delegated
                # authentication insists on; no front proxy holds a certificate for it.
                f"--requestheader-client-ca-file={pki / 'ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            ready=lambda: self._api_client().request("GET", "/readyz")[0] == 200,
            timeout=90.0,
        )

    def _controller_manager(self, bin_dir: Path) -> _Component:
        pki = self._pki
        port = self._ports["kube-controller-manager"]
        kubeconfig = str(self.kubeconfig)
        return _Component(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={pki / 'kcm-generated'}",
                "--leader-elect=false",
                # The node emulator is the only node: nothing may taint it or evict its pods
                # because a heartbeat came late on a busy machine. Endpoints and
                # EndpointSlices cannot hold loopback pod IPs (validation rejects them), so
                # their controllers would only retry and post warning Events on every
                # Service; the node emulator's service proxy selects pods itself.
                "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller,"
                "-endpoints-controller,-endpointslice-controller,-endpointslice-mirroring-controller",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
            ],
            ready=lambda: _https_status(f"https://127.0.0.1:{port}/healthz", self._pki) == 200,
        )

    def _sidecar_args(self) -> list[str]:
        # The client-side rate limits default to 5 requests/s (burst 10): every snapshot takes
        # several requests through the controller and the sidecar, so at the defaults a burst of
        # snapshots is cut at about one per second. A production cluster tunes these as well.
        return [
            f"--kubeconfig={self.kubeconfig}", "--leader-election=false",
            "--kube-api-qps=200", "--kube-api-burst=400", "--retry-interval-start=100ms",
        ]

    def _csi_sidecar(self, bin_dir: Path, name: str, *args: str, driver: bool = True) -> _Component:
        """One of the CSI sidecars (or the snapshot controller), ready once its metrics answer.

        ``driver``: whether it talks to the CSI driver's socket; ``args`` come after the common
        ones and before ``--retry-interval-max``.
        """
        port = self._ports[name]
        return _Component(
            name,
            [
                str(bin_dir / name),
                *self._sidecar_args(),
                *([f"--csi-address={self._csi_socket}"] if driver else []),
                f"--http-endpoint=127.0.0.1:{port}",
                *args,
                "--retry-interval-max=30s",
            ],
            # For the sidecars, the HTTP endpoint opens once they have talked to the driver.
            ready=lambda: _http_status(f"http://127.0.0.1:{port}/metrics") == 200,
        )

    # Both snapshot controllers resync every 30 s instead of every 15 minutes. A content whose
    # CreateSnapshot answered "not ready yet" (the hostpath driver uploads after the cut, as
    # cloud drivers do) is requeued only while the informer keeps up: when an API server
    # restart delays the informer past the requeue, external-snapshotter v8.6.0 drops the
    # item (its cache holds a newer copy than the lister) and the snapshot stays not ready
    # until the next resync. A production cluster with such a driver wants this tuned as well.
    _RESYNC = "--resync-period=30s"

    def _snapshot_controller(self, bin_dir: Path) -> _Component:
        return self._csi_sidecar(bin_dir, "snapshot-controller", self._RESYNC, driver=False)

    def _csi_provisioner(self, bin_dir: Path) -> _Component:
        return self._csi_sidecar(
            bin_dir,
            "csi-provisioner",
            # No CSINode objects exist without a kubelet.
            "--immediate-topology=false",
            "--extra-create-metadata",
            # Restoring a large snapshot takes longer than the default 10 s.
            "--timeout=2m",
        )

    def _csi_snapshotter(self, bin_dir: Path) -> _Component:
        return self._csi_sidecar(bin_dir, "csi-snapshotter", "--extra-create-metadata", "--timeout=2m",
                                 self._RESYNC)

    def _hostpath_csi(self, bin_dir: Path) -> _Component:
        sock = self._csi_socket
        return _Component(
            "hostpath-csi",
            [
                str(bin_dir / "hostpath-csi"),
                f"--endpoint=unix://{sock}",
                f"--data-dir={self.csi_dir}",
                f"--driver-name={CSI_DRIVER}",
                f"--node-id={NODE_NAME}",
            ],
            ready=lambda: _unix_socket_accepts(sock),
        )

    def _node_emulator(self, bin_dir: Path, address_lock: int = -1) -> _Component:
        python_path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
        return _Component(
            "node-emulator",
            [
                sys.executable,
                "-m",
                "localcluster.node",
                "--kubeconfig",
                str(self.kubeconfig),
                "--state-dir",
                str(self.state_dir),
                "--bin-dir",
                str(bin_dir),
                "--node-name",
                NODE_NAME,
            ],
            ready=self._node_ready,
            env={**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"},
            # Inherited and kept open for the emulator's lifetime: see _claim_node_addresses.
            pass_fds=(address_lock,) if address_lock >= 0 else (),
        )

    def _claim_node_addresses(self, wait: float = 0.0) -> int:
        """Take the machine-wide lock on the loopback addresses a node emulator binds.

        Service ClusterIPs (some pinned, like the bleater sample's) and pod IPs are loopback
        addresses, so two clusters with node emulators on one machine would take each other's
        ports. The lock is a file lock whose descriptor the node emulator inherits: it is
        released when that process ends, however it ends. Returns the descriptor.
        """
        fd = os.open(_NODE_ADDRESS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = Path(_NODE_ADDRESS_LOCK).read_text().strip() or "unknown"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ClusterError(
                        "another local cluster's node emulator is running on this machine"
                        f" ({holder}); pod and Service IPs would collide. Stop that cluster"
                        " first (`python -m localcluster down --state-dir DIR`)."
                    ) from None
                if not announced:
                    _progress(f"waiting up to {wait:.0f}s for another local cluster to stop ({holder})")
                    announced = True
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.write(fd, f"state dir {self.state_dir}, started by pid {os.getpid()}\n".encode())
        return fd

    def _node_ready(self) -> bool:
        status, node = self._api_client().request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions", [])
        )

    # --- starting and stopping -----------------------------------------------------------------

    def _start(self, component: _Component) -> None:
        log_path = self.logs_dir / f"{component.name}.log"
        with log_path.open("ab") as log:
            stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            log.write(f"=== {stamp} starting: {' '.join(component.argv)}\n".encode())
            log.flush()
            # Own session: the component outlives the launching CLI, and its whole process
            # group can be signalled.
            popen = subprocess.Popen(
                component.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=component.env,
                start_new_session=True,
                pass_fds=component.pass_fds,
            )
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone; reported as failed by the readiness wait
        self._running[component.name] = _Running(
            component.name, popen.pid, create_time, component.argv, popen
        )
        self._save_state()

    def _start_and_wait(
        self, components: list[_Component], also_wait: list[_Component] | None = None
    ) -> None:
        for component in components:
            self._start(component)
        pending = {c.name: c for c in [*components, *(also_wait or [])]}
        started = time.monotonic()
        last_error: dict[str, str] = {}
        while pending:
            for name, component in list(pending.items()):
                running = self._running[name]
                if not _alive(running):
                    raise ComponentError(
                        name,
                        f"{self._exit_description(running)} before becoming ready",
                        self.log_tail(name),
                    )
                try:
                    if component.ready():
                        del pending[name]
                        _progress(f"{name} ready ({time.monotonic() - started:.1f}s)")
                        continue
                except Exception as exc:  # not listening yet, and the like
                    last_error[name] = f"{type(exc).__name__}: {exc}"
                if time.monotonic() - started > component.timeout:
                    detail = last_error.get(name, "its readiness check kept failing")
                    raise ComponentError(
                        name,
                        f"did not become ready within {component.timeout:.0f}s ({detail})",
                        self.log_tail(name),
                    )
            if pending:
                time.sleep(_POLL_SECONDS)

    def _stop(self, components: list[_Running]) -> None:
        procs: dict[str, psutil.Process] = {}
        for running in components:
            proc = _process(running)
            if proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
                procs[running.name] = proc
        for name, proc in procs.items():
            grace = _STOP_GRACE.get(name, _DEFAULT_STOP_GRACE)
            try:
                proc.wait(timeout=grace)
            except psutil.TimeoutExpired:
                _progress(f"{name} did not stop within {grace:.0f}s of SIGTERM; killing it")
            except psutil.Error:
                pass
            # Whatever is left in its process group goes too (a component's own children).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._running[name].pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=5)
        for running in components:
            if running.popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running.popen.wait(timeout=5)

    def _exit_description(self, running: _Running) -> str:
        if running.popen is not None:
            code = running.popen.poll()
            if code is not None:
                return f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
        return "exited (exit status unknown: not started by this process)"

    # --- cluster resources -------------------------------------------------------------------

    def apply_crds(self, path: Path, timeout: float = 60.0) -> None:
        """Apply the CRDs in path (server-side) and wait until every one is Established.

        `kubectl wait` fails at once, rather than waiting, on a CRD whose status has no
        conditions yet (just created); such a failure is retried until the deadline.
        """
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        deadline = time.monotonic() + timeout
        while True:
            left = max(1, int(deadline - time.monotonic()))
            waited = self.kubectl("wait", "--for=condition=Established", f"--timeout={left}s",
                                  "-f", str(path), check=False)
            if waited.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"CRDs in {path} not Established within {timeout:g}s: "
                                   f"{waited.stderr.strip()}")
            time.sleep(0.2)

    def _install_cluster_resources(self, bin_dir: Path) -> None:
        self.apply_crds(bin_dir / SNAPSHOT_CRDS_DIR)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=_STORAGE_YAML)

    # --- state -------------------------------------------------------------------------------

    def _choose_ports(self) -> None:
        """Pick free loopback ports, keeping the previous ones when free (stable kubeconfig)."""
        names = [
            "etcd",
            "etcd-peer",
            "kube-apiserver",
            "kube-controller-manager",
            "snapshot-controller",
            "csi-provisioner",
            "csi-snapshotter",
        ]
        previous = dict(self._ports)
        held: list[socket.socket] = []
        try:
            for name in names:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                self._ports[name] = _bind_listening_port(sock, previous.get(name))
        finally:
            for sock in held:
                sock.close()

    def _save_state(self) -> None:
        state = {
            "ports": self._ports,
            "bin_dir": str(self._bin_dir) if self._bin_dir else None,
            "node_emulator": self.node_emulator,
            "components": {
                r.name: {"pid": r.pid, "create_time": r.create_time, "argv": r.argv}
                for r in self._running.values()
            },
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self._state_file)

    def _load_state(self) -> None:
        try:
            state = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return
        self._ports = {k: int(v) for k, v in state.get("ports", {}).items()}
        if state.get("bin_dir"):
            self._bin_dir = Path(state["bin_dir"])
        if state.get("components"):  # a running cluster keeps the setting it started with
            self.node_emulator = bool(state.get("node_emulator", self.node_emulator))
        self._running = {
            name: _Running(name, int(c["pid"]), float(c["create_time"]), list(c["argv"]))
            for name, c in state.get("components", {}).items()
        }

    def _write_kubeconfig(self) -> None:
        pki = self._pki
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "localcluster",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self._ports['kube-apiserver']}",
                        "certificate-authority-data": _b64(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": _b64(pki / "admin.crt"),
                        "client-key-data": _b64(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "localcluster", "context": {"cluster": "localcluster", "user": "admin"}}],
            "current-context": "localcluster",
        }
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(self.kubeconfig)

    def _api_client(self) -> _ApiClient:
        if self._api is None:
            self._api = _ApiClient(self._ports["kube-apiserver"], self._pki)
        return self._api


_STORAGE_YAML = f"""\
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: {CSI_DRIVER}
spec:
  # No external-attacher runs: volumes are local directories.
  attachRequired: false
  podInfoOnMount: false
  volumeLifecycleModes: [Persistent]
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {STORAGE_CLASS}
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: {CSI_DRIVER}
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: false
---
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshotClass
metadata:
  name: {SNAPSHOT_CLASS}
  annotations:
    snapshot.storage.kubernetes.io/is-default-class: "true"
driver: {CSI_DRIVER}
deletionPolicy: Delete
"""


# --- processes -------------------------------------------------------------------------------


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bind_listening_port(sock: socket.socket, previous: int | None) -> int:
    """Bind a free loopback port below the ephemeral range and return it.

    A port from the ephemeral range can be taken as the local end of some outgoing connection
    while its server is down, and a restarted component (the API server in a fault test) then
    fails with "address already in use".
    """
    low, _ = _ephemeral_range()
    candidates = [previous] if previous and previous < low else []
    candidates += random.sample(range(10000, max(low, 10001)), k=64)
    for port in candidates:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise ClusterError(f"no free loopback port between 10000 and {low}")


def _process(running: _Running) -> psutil.Process | None:
    """Return the component's process if it is still the one that was started."""
    if running.popen is not None and running.popen.poll() is not None:
        return None  # reaped: the pid may already belong to someone else
    try:
        proc = psutil.Process(running.pid)
        if abs(proc.create_time() - running.create_time) > 1.0:
            return None  # pid reused
        return proc
    except psutil.Error:
        return None


def _alive(running: _Running) -> bool:
    proc = _process(running)
    if proc is None:
        return False
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_leftovers(sessions: set[int], state_dir: Path) -> None:
    """SIGKILL what the components left behind.

    That is every process still in a component's session, and orphans (re-parented to init)
    whose command line points into the state dir: pod processes the node emulator started in
    sessions of their own and could not stop.
    """
    markers = (f"{state_dir}/csi/", f"{state_dir}/node/")
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "ppid", "cmdline", "status"]):
        if proc.pid == me or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            in_session = os.getsid(proc.pid) in sessions
            cmdline = " ".join(proc.info["cmdline"] or [])
            orphan = proc.info["ppid"] == 1 and any(m in cmdline for m in markers)
            if in_session or orphan:
                _progress(f"killing leftover process {proc.pid}: {cmdline[:200]}")
                proc.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue


def _make_searchable(directory: Path) -> None:
    """Let every user traverse (not list) the path to directory.

    Pods run as unprivileged users (PostgreSQL as ``postgres``) on volume directories under
    the state dir, and pytest's temporary directories are private (0700).
    """
    for path in [directory, *directory.parents]:
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            _progress(f"allowing other users to traverse {path} (pods run as other users)")
            path.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


# --- HTTP ------------------------------------------------------------------------------------


class _ApiClient:
    """A minimal JSON client for the API server, authenticating with the admin certificate."""

    def __init__(self, port: int, pki: Path) -> None:
        self._port = port
        self._context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPSConnection("127.0.0.1", self._port, context=self._context, timeout=10)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read().decode()
        finally:
            conn.close()
        try:
            return response.status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return response.status, data


def _http_get_json(url: str) -> Any:
    host, port, path = _split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def _http_status(url: str) -> int:
    host, port, path = _split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _https_status(url: str, pki: Path) -> int:
    """GET a component's own HTTPS endpoint (self-signed serving cert) as admin."""
    host, port, path = _split_url(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _split_url(url: str) -> tuple[str, int, str]:
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port), "/" + path


def _unix_socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(path))
    return True


# --- certificates ----------------------------------------------------------------------------


def _ensure_pki(pki: Path) -> None:
    """Create the CA, serving, admin and service-account keys once; later starts reuse them."""
    if all((pki / f).is_file() for f in ("ca.crt", "apiserver.crt", "admin.crt", "sa.key")):
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localcluster-ca")])
    ca_cert = (
        _cert_builder(ca_name, ca_key.public_key(), ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca_cert)

    service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())  # the `kubernetes` Service
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(service_ip)]
    _issue(pki / "apiserver", "kube-apiserver", None, ca_cert, ca_key, server_names=names)
    _issue(pki / "admin", "localcluster-admin", "system:masters", ca_cert, ca_key)

    sa_key = ec.generate_private_key(ec.SECP256R1())
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _cert_builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
    )


def _issue(
    base: Path,
    common_name: str,
    organization: str | None,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    server_names: list[x509.GeneralName] | None = None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = _cert_builder(x509.Name(attrs), key.public_key(), ca_cert.subject)
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(server_names), False)
        usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usage), False)
    _write_key(base.with_suffix(".key"), key)
    _write_cert(base.with_suffix(".crt"), builder.sign(ca_key, hashes.SHA256()))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _progress(message: str) -> None:
    print(f"localcluster: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def running_cluster(
    state_dir: Path | str = DEFAULT_STATE_DIR, *, apply_bleater: bool = False
) -> Iterator[LocalCluster]:
    """Bring a cluster up for the duration of a ``with`` block, and always take it down."""
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(apply_bleater=apply_bleater)
        yield cluster
    finally:
        cluster.down()
