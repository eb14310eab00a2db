"""What the benchmarks measure with: statistics, process sampling, request counters, watches."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from localcluster.cluster import LocalCluster

JSON = dict[str, Any]
SAMPLE_INTERVAL = 0.2
"""Seconds between two samples of a process's resident memory."""

# The kubernetes client's Watch is untyped; held as Any so that its calls are too.
_WATCH: Any = watch.Watch
_METRIC_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class BenchmarkError(RuntimeError):
    """A benchmark could not be carried out (not a slow result: those are reported)."""


def progress(message: str) -> None:
    """Tell the person running the benchmark where it is (stderr)."""
    print(f"benchmarks: {message}", file=sys.stderr, flush=True)


# -- statistics -------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Iterable[float]) -> dict[str, float]:
    """Median, p90, min, max and count of a sample, rounded to milliseconds."""
    data = list(values)
    if not data:
        return {"n": 0, "median": math.nan, "p90": math.nan, "min": math.nan, "max": math.nan}
    return {
        "n": len(data),
        "median": round(statistics.median(data), 3),
        "p90": round(percentile(data, 90), 3),
        "min": round(min(data), 3),
        "max": round(max(data), 3),
    }


def median(values: Iterable[float]) -> float:
    """The median, NaN for no values."""
    data = list(values)
    return statistics.median(data) if data else math.nan


# -- Prometheus text ------------------------------------------------------------------------


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in a Prometheus text page, with its labels."""
    found = []
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match is None or match["name"] != name:
            continue
        labels = dict(_LABEL.findall(match["labels"] or ""))
        with contextlib.suppress(ValueError):
            found.append((labels, float(match["value"])))
    return found


def by_label(samples: list[tuple[dict[str, str], float]], label: str) -> dict[str, float]:
    """Sum samples per value of one label."""
    totals: dict[str, float] = {}
    for labels, value in samples:
        key = labels.get(label, "")
        totals[key] = totals.get(key, 0.0) + value
    return totals


def operator_requests(operator: OperatorProcess) -> dict[str, float]:
    """The operator adapter's Kubernetes requests so far, by verb."""
    return by_label(metric_samples(operator.scrape(), "snapgroup_kubernetes_requests_total"), "verb")


def apiserver_requests(cluster: LocalCluster) -> dict[str, float]:
    """Every request the API server has served so far (all clients), by verb."""
    text = cluster.api("GET", "/metrics")
    if not isinstance(text, str):
        raise BenchmarkError("the API server's /metrics did not answer with the text format")
    return by_label(metric_samples(text, "apiserver_request_total"), "verb")


def apiserver_snapshot_requests(cluster: LocalCluster) -> dict[str, float]:
    """Requests the API server has served on VolumeSnapshots and their contents, by resource and verb."""
    text = cluster.api("GET", "/metrics")
    if not isinstance(text, str):
        raise BenchmarkError("the API server's /metrics did not answer with the text format")
    totals: dict[str, float] = {}
    for labels, value in metric_samples(text, "apiserver_request_total"):
        if labels.get("resource") in ("volumesnapshots", "volumesnapshotcontents"):
            key = f"{labels['resource']} {labels.get('verb', '')}"
            totals[key] = totals.get(key, 0.0) + value
    return totals


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """after - before per key (keys of either), dropping zeros."""
    keys = set(after) | set(before)
    changes = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(keys)}
    return {k: v for k, v in changes.items() if v}


# -- processes --------------------------------------------------------------------------------


@dataclass
class ResourceUse:
    """CPU and memory of one process tree over an interval."""

    cpu_seconds: float
    peak_rss_bytes: int
    start_rss_bytes: int
    samples: int


@dataclass
class ResourceSampler:
    """Samples a process (and its children) every 0.2 s in a thread: peak RSS and CPU seconds."""

    pid: int
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _peak: int = 0
    _start_rss: int = 0
    _cpu_start: float = 0.0
    _samples: int = 0

    def _tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        with contextlib.suppress(psutil.Error):
            return [root, *root.children(recursive=True)]
        return [root]

    def _rss(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _cpu(self) -> float:
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            with contextlib.suppress(psutil.Error):
                self._peak = max(self._peak, self._rss())
                self._samples += 1

    def start(self) -> None:
        """Begin sampling."""
        self._start_rss = self._peak = self._rss()
        self._cpu_start = self._cpu()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.pid}", daemon=True)
        self._thread.start()

    def stop(self) -> ResourceUse:
        """Stop sampling and return what was used since start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(psutil.Error):
            self._peak = max(self._peak, self._rss())
        return ResourceUse(
            cpu_seconds=round(self._cpu() - self._cpu_start, 3),
            peak_rss_bytes=self._peak,
            start_rss_bytes=self._start_rss,
            samples=self._samples,
        )


# -- watching ---------------------------------------------------------------------------------


def object_key(obj: Mapping[str, Any]) -> str:
    """namespace/name of an object."""
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def watch_until(
    list_call: Callable[..., Any],
    *args: Any,
    predicate: Callable[[dict[str, JSON]], bool],
    timeout: float,
    what: str,
    **kwargs: Any,
) -> dict[str, JSON]:
    """List, then watch from that list's resourceVersion until predicate(objects by key) holds.

    The objects are kept up to date from the watch events, so the API server sees one list and
    one watch per call (plus a re-list when the watch expires). Raises BenchmarkError on timeout.
    """
    deadline = time.monotonic() + timeout
    objects: dict[str, JSON] = {}
    while True:
        response = list_call(*args, _preload_content=False, _request_timeout=30, **kwargs)
        listing = json.loads(response.data)
        objects = {object_key(o): o for o in listing.get("items", [])}
        if predicate(objects):
            return objects
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchmarkError(f"{what}: not reached within {timeout:.0f}s")
        stream: Any = _WATCH()
        try:
            for event in stream.stream(
                list_call,
                *args,
                resource_version=listing["metadata"]["resourceVersion"],
                timeout_seconds=max(1, min(int(remaining) + 1, 60)),
                **kwargs,
            ):
                if event["type"] == "ERROR":
                    break  # e.g. resourceVersion too old: list again
                obj = event["raw_object"]
                if event["type"] == "DELETED":
                    objects.pop(object_key(obj), None)
                else:
                    objects[object_key(obj)] = obj
                if predicate(objects):
                    stream.stop()
                    return objects
        except ApiException as exc:
            if exc.status != 410:
                raise
        finally:
            stream.stop()
        if time.monotonic() >= deadline:
            raise BenchmarkError(f"{what}: not reached within {timeout:.0f}s")


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, Ready and not terminating."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


class FinishedGroup:
    """A finished SnapshotGroup read from its status (subclasses hold `status` as a field)."""

    status: JSON

    @property
    def phase(self) -> str:
        """The group's final phase."""
        return str(self.status.get("phase"))

    @property
    def consistent(self) -> bool:
        """Whether the Consistent condition is True."""
        return any(c.get("type") == "Consistent" and c.get("status") == "True"
                   for c in self.status.get("conditions") or [])

    @property
    def window(self) -> float:
        """The freeze window the operator reports, in seconds (NaN if none)."""
        seconds = (self.status.get("freeze") or {}).get("seconds")
        return float(seconds) if seconds is not None else math.nan


# -- the CSI driver's own account ----------------------------------------------------------

_ARCHIVE_LINE = re.compile(
    r"cut snapshot (?P<id>\S+) of volume (?P<volume>\S+) at (?P<cut>\S+), "
    r"captured (?P<bytes>\d+) bytes in (?P<duration>\S+)")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Archive:
    """One CreateSnapshot as the hostpath CSI driver logged it: the cut (capturing the volume);
    the upload (compression) that makes it ready follows outside the call."""

    volume: str
    cut_at: float
    """Wall-clock time of the cut (epoch seconds)."""
    seconds: float
    """Time to capture the volume; CreateSnapshot answers with creationTime right after it."""
    size: int


def go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``1.5s``, ``12ms`` or ``1m2.5s``."""
    return sum(float(n) * _GO_UNITS[unit] for n, unit in _GO_DURATION_PART.findall(text))


def csi_archives(cluster: LocalCluster) -> list[Archive]:
    """Every snapshot the CSI driver has cut since the cluster started, from its log."""
    path = cluster.logs_dir / "hostpath-csi.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text(errors="replace").splitlines():
        match = _ARCHIVE_LINE.search(line)
        if match is None:
            continue
        cut = dt.datetime.fromisoformat(match["cut"].replace("Z", "+00:00"))
        found.append(Archive(match["volume"], cut.timestamp(), go_duration(match["duration"]),
                             int(match["bytes"])))
    return found


def wall_time(value: str | None) -> float:
    """Epoch seconds of an RFC 3339 timestamp from a status, NaN if there is none."""
    if not value:
        return math.nan
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def volume_handles(kube: Kube, namespace: str) -> dict[str, str]:
    """The CSI volume handle behind each bound PVC of a namespace."""
    core: Any = kube.core  # raw responses (_preload_content=False), which the client's types omit
    claims = json.loads(core.list_namespaced_persistent_volume_claim(
        namespace, _preload_content=False).data)["items"]
    volumes = json.loads(core.list_persistent_volume(_preload_content=False).data)["items"]
    handle_of = {v["metadata"]["name"]: ((v.get("spec") or {}).get("csi") or {}).get("volumeHandle")
                 for v in volumes}
    handles: dict[str, str] = {}
    for claim in claims:
        handle = handle_of.get((claim.get("spec") or {}).get("volumeName", ""))
        if handle:
            handles[claim["metadata"]["name"]] = str(handle)
    return handles


# -- the snapshot controller and the CSI sidecar, from their own metrics ---------------------


def _component_metrics(cluster: LocalCluster, name: str) -> str:
    """The /metrics page of a component started with --http-endpoint (found on its command line)."""
    pid = cluster.pids().get(name)
    if pid is None:
        return ""
    endpoint = next((arg.split("=", 1)[1] for arg in psutil.Process(pid).cmdline()
                     if arg.startswith("--http-endpoint=")), None)
    if endpoint is None:
        return ""
    with urllib.request.urlopen(f"http://{endpoint}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def snapshot_pipeline(cluster: LocalCluster) -> dict[str, float]:
    """Cumulative counters of VolumeSnapshot creation in the snapshot controller and the sidecar.

    controllerCreate*: the snapshot controller's CreateSnapshot operations (a VolumeSnapshot
    created until its status holds the driver's answer); sidecarGrpc*: the sidecar's
    CreateSnapshot calls to the driver; sidecarQueue*/sidecarWork*: its content work queue.
    """
    counters: dict[str, float] = {}
    controller = _component_metrics(cluster, "snapshot-controller")
    operation = "snapshot_controller_operation_total_seconds"
    for suffix, key in (("_sum", "Seconds"), ("_count", "Count")):
        for labels, value in metric_samples(controller, operation + suffix):
            if (labels.get("operation_name"), labels.get("operation_status")) == ("CreateSnapshot",
                                                                                  "success"):
                counters["controllerCreate" + key] = counters.get("controllerCreate" + key, 0.0) + value
    sidecar = _component_metrics(cluster, "csi-snapshotter")
    for suffix, key in (("_sum", "Seconds"), ("_count", "Count")):
        for labels, value in metric_samples(sidecar, "csi_sidecar_operations_seconds" + suffix):
            if labels.get("method_name", "").endswith("/CreateSnapshot"):
                counters["sidecarGrpc" + key] = counters.get("sidecarGrpc" + key, 0.0) + value
    for metric, key in (("workqueue_queue_duration_seconds_sum", "sidecarQueueSeconds"),
                        ("workqueue_work_duration_seconds_sum", "sidecarWorkSeconds"),
                        ("workqueue_adds_total", "sidecarQueueAdds"),
                        ("workqueue_retries_total", "sidecarQueueRetries")):
        counters[key] = sum(v for labels, v in metric_samples(sidecar, metric)
                            if labels.get("name") == "csi-snapshotter-content")
    return counters


def pipeline_means(after: Mapping[str, float], before: Mapping[str, float]) -> JSON:
    """Mean seconds per operation between two snapshot_pipeline() readings."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}

    def mean(total: str, count: str) -> float:
        return round(d[total] / d[count], 3) if d.get(count) else math.nan

    return {
        "controllerCreateSnapshots": d.get("controllerCreateCount", 0.0),
        "controllerCreateMeanSeconds": mean("controllerCreateSeconds", "controllerCreateCount"),
        "sidecarCreateCalls": d.get("sidecarGrpcCount", 0.0),
        "sidecarCreateMeanSeconds": mean("sidecarGrpcSeconds", "sidecarGrpcCount"),
        "sidecarQueueMeanSeconds": mean("sidecarQueueSeconds", "sidecarQueueAdds"),
        "sidecarWorkMeanSeconds": mean("sidecarWorkSeconds", "sidecarQueueAdds"),
        "sidecarQueueRetries": d.get("sidecarQueueRetries", 0.0),
    }
