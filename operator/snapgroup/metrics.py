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


def serve(port: int) -> None:
    """Serve /metrics on all interfaces in a background thread."""
    start_http_server(port)
