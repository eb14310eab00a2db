"""Prometheus metrics of the operator (served by `snapgroup run --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_WINDOW_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 34, 60, 120, 300)

FREEZE_SECONDS = Histogram(
    "snapgroup_freeze_window_seconds",
    "Length of freeze windows: first writer isolated to last service resumed.",
    buckets=_WINDOW_BUCKETS,
)
CUT_SECONDS = Histogram(
    "snapgroup_time_to_cut_seconds",
    "From creating a group's VolumeSnapshots to the last creationTime.",
    buckets=_WINDOW_BUCKETS,
)
HOOK_SECONDS = Histogram(
    "snapgroup_hook_duration_seconds",
    "Duration of hook steps, by hook type and stage (apply or undo).",
    ["type", "stage"],
    buckets=_WINDOW_BUCKETS,
)
GROUPS = Counter(
    "snapgroup_groups_total",
    "Finished SnapshotGroups, by result (Succeeded or Failed) and reason.",
    ["result", "reason"],
)
VERIFICATIONS = Counter(
    "snapgroup_verifications_total",
    "Verifications by restoring that answered, by result (the Verified condition: True or False) "
    "and reason.",
    ["result", "reason"],
)
VERIFICATION_SECONDS = Histogram(
    "snapgroup_verification_seconds",
    "Length of verifications by restoring: from start to every service read and everything removed.",
    buckets=_WINDOW_BUCKETS,
)
SNAPSHOTS_CREATED = Counter(
    "snapgroup_volumesnapshots_created_total", "VolumeSnapshots created by the operator."
)
API_REQUESTS = Counter(
    "snapgroup_kubernetes_requests_total",
    "Requests the operator's Kubernetes adapter sent, by verb (kopf's own watches not included).",
    ["verb"],
)
API_RETRIES = Counter(
    "snapgroup_kubernetes_request_retries_total",
    "Kubernetes requests retried after a transient failure (no answer, HTTP 429/5xx), by verb.",
    ["verb"],
)
LEADER = Gauge(
    "snapgroup_leader",
    "1 while this process runs groups: it holds the leader Lease, or runs without --leader-elect.",
)
WRITERS_ISOLATED = Gauge("snapgroup_writers_isolated", "Writer workloads currently held at zero replicas.")
REPAIRS = Counter(
    "snapgroup_safety_net_repairs_total",
    "Repairs made by the safety net, by what was repaired (workload, server) and outcome.",
    ["target", "outcome"],
)


class IsolatedWorkloads:
    """The workloads held at zero right now, as a set: the gauge is its size.

    A window adds a workload when its isolation starts and removes it only once the undo was
    checked; the safety net replaces the whole set with what the cluster shows, so the gauge
    reports what is really still isolated even when an undo failed.
    """

    def __init__(self, gauge: Gauge) -> None:
        self._gauge = gauge
        self._held: set[str] = set()

    def started(self, namespace: str, targets: list[str]) -> None:
        """Isolation of these targets begins (only workload targets count)."""
        self._held.update(f"{namespace}/{t}" for t in targets if t.startswith("workload:"))
        self._gauge.set(len(self._held))

    def ended(self, namespace: str, targets: list[str]) -> None:
        """These targets were checked restored."""
        self._held.difference_update(f"{namespace}/{t}" for t in targets)
        self._gauge.set(len(self._held))

    def observed(self, held: set[str]) -> None:
        """What the cluster shows as isolated now (``namespace/workload:Kind/name``)."""
        self._held = set(held)
        self._gauge.set(len(self._held))


ISOLATED = IsolatedWorkloads(WRITERS_ISOLATED)


def serve(port: int) -> None:
    """Serve /metrics on all interfaces in a background thread."""
    start_http_server(port)
