"""One group at a time in the bleater namespace: the operator against the naive procedure.

Runs alternate (operator first on even runs, naive first on odd ones) so that a slow spell of the
machine falls on both alike. Before each run the writer is Ready and has written a new record to
every service; after it, the run's snapshots are deleted, so every run starts from the same state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from benchmarks.measure import (
    JSON,
    Archive,
    BenchmarkError,
    FinishedGroup,
    apiserver_requests,
    csi_archives,
    delta,
    median,
    operator_requests,
    pipeline_means,
    progress,
    snapshot_pipeline,
    summary,
    volume_handles,
    wall_time,
    watch_until,
)
from benchmarks.naive import (
    SNAPSHOT_GROUP,
    SNAPSHOT_PLURAL,
    SNAPSHOT_VERSION,
    WRITER,
    WRITER_SELECTOR,
    NaiveProcedure,
    NaiveRun,
)
from e2e.bleater import SERVICES, Bleater
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample
from localcluster.cluster import SNAPSHOT_CLASS, LocalCluster

GROUP_TIMEOUT = 300.0
OPERATOR_STEPS = ("isolate", "quiesce", "cut", "record", "resume")

# The common steps of both procedures, in window order, for the breakdown table and chart.
COMMON_STEPS = (
    ("drain", "writer drain (waiting for pods to go)"),
    ("isolateOwn", "isolate: requests"),
    ("quiesce", "quiesce (pg_backup_start, fsync lock)"),
    ("cutOwn", "cut: requests"),
    ("cutWait", "waiting for the cut (CSI)"),
    ("record", "record newest records"),
    ("resume", "resume (unlock, backup stop, scale back)"),
    ("other", "between steps (journal writes)"),
)


@dataclass
class OperatorRun(FinishedGroup):
    """One SnapshotGroup as the benchmark saw it."""

    name: str
    status: JSON
    apply_to_done: float
    operator_requests: dict[str, float] = field(default_factory=dict)
    apiserver_requests: dict[str, float] = field(default_factory=dict)


    @property
    def breakdown(self) -> dict[str, float]:
        """The operator's breakdown with the common steps derived from it."""
        raw = {k: float(v) for k, v in ((self.status.get("freeze") or {}).get("breakdown") or {}).items()}
        steps = {s: raw.get(s, 0.0) for s in OPERATOR_STEPS}
        derived = {
            "drain": raw.get("waitingOnPods", 0.0),
            "isolateOwn": steps["isolate"] - raw.get("waitingOnPods", 0.0),
            "quiesce": steps["quiesce"],
            "cutOwn": steps["cut"] - raw.get("waitingOnCut", 0.0),
            "cutWait": raw.get("waitingOnCut", 0.0),
            "record": steps["record"],
            "resume": steps["resume"],
            "other": self.window - sum(steps.values()),
        }
        return {**raw, **{k: round(v, 3) for k, v in derived.items()}}

    def as_json(self) -> JSON:
        """The run as plain data for results.json."""
        conditions = {c["type"]: c for c in self.status.get("conditions") or []}
        succeeded = conditions.get("Succeeded", {})
        return {
            "name": self.name,
            "phase": self.phase,
            "consistent": self.consistent,
            "reason": succeeded.get("reason"),
            "message": self.status.get("message"),
            "window": self.window,
            "breakdown": self.breakdown,
            "applyToSucceeded": round(self.apply_to_done, 3),
            "startTime": self.status.get("startTime"),
            "completionTime": self.status.get("completionTime"),
            "operatorRequests": self.operator_requests,
            "operatorRequestsTotal": sum(self.operator_requests.values()),
            "apiserverRequests": self.apiserver_requests,
            "apiserverRequestsTotal": sum(self.apiserver_requests.values()),
        }


class SingleGroupBenchmark:
    """The bleater SnapshotGroup, runs times, interleaved with the naive procedure."""

    def __init__(self, cluster: LocalCluster, kube: Kube, operator: OperatorProcess, runs: int) -> None:
        self.cluster = cluster
        self.kube = kube
        self.operator = operator
        self.runs = runs
        self.bleater = Bleater(kube)
        self.naive = NaiveProcedure(kube, self.bleater, SNAPSHOT_CLASS)
        self.replicas = kube.replicas(self.bleater.namespace, WRITER)
        self.handles = volume_handles(kube, self.bleater.namespace)

    def run(self) -> JSON:
        """Every run; returns the raw runs and their summaries."""
        operator_runs: list[OperatorRun] = []
        naive_runs: list[NaiveRun] = []
        naive_requests: list[dict[str, float]] = []
        pipeline_before = snapshot_pipeline(self.cluster)
        for i in range(self.runs):
            order = ("operator", "naive") if i % 2 == 0 else ("naive", "operator")
            for which in order:
                self._settle()
                if which == "operator":
                    operator_runs.append(self._operator_run(f"bench-{i:02d}"))
                    progress(f"run {i + 1}/{self.runs}: operator window {operator_runs[-1].window:.2f}s "
                              f"({operator_runs[-1].phase})")
                else:
                    before = apiserver_requests(self.cluster)
                    naive_runs.append(self.naive.run(f"naive-{i:02d}"))
                    naive_requests.append(delta(apiserver_requests(self.cluster), before))
                    self.naive.clean_up(f"naive-{i:02d}")
                    progress(f"run {i + 1}/{self.runs}: naive window {naive_runs[-1].window:.2f}s")
        results = self._results(operator_runs, naive_runs, naive_requests)
        try:
            results["csi"] = self._driver_account(operator_runs, naive_runs, csi_archives(self.cluster))
            results["csi"]["pipeline"] = pipeline_means(snapshot_pipeline(self.cluster), pipeline_before)
        except Exception as exc:  # the account explains the numbers; losing it must not lose them
            results["csi"] = {"error": f"{type(exc).__name__}: {exc}"}
        return results

    def _driver_account(self, operator_runs: list[OperatorRun], naive_runs: list[NaiveRun],
                        archives: list[Archive]) -> JSON:
        """Split the snapshot waits into the CSI driver's captures and the controllers' share.

        The driver logs when it cut each volume and how long the capture took; it answers
        CreateSnapshot with creationTime after the capture, and readyToUse after the upload.
        """
        pvc_of = {handle: pvc for pvc, handle in self.handles.items()}
        ours = [a for a in archives if a.volume in pvc_of]
        operator_spans, operator_pipeline, operator_archives = [], [], []
        per_pvc: dict[str, list[float]] = {}
        for run in operator_runs:
            freeze = run.status.get("freeze") or {}
            start, end = wall_time(freeze.get("start")), wall_time(freeze.get("end"))
            cut = [a for a in ours if start <= a.cut_at <= end]
            if not cut:
                continue
            span = max(a.cut_at + a.seconds for a in cut) - min(a.cut_at for a in cut)
            operator_spans.append(span)
            operator_pipeline.append(run.breakdown["cutWait"] - span)
            for a in cut:
                operator_archives.append(a.seconds)
                per_pvc.setdefault(pvc_of[a.volume], []).append(a.seconds)
        before, archive_times, after = [], [], []
        for naive in naive_runs:
            for pvc, (created, ready) in naive.snapshot_walls.items():
                match = [a for a in ours if pvc_of[a.volume] == pvc and created - 0.5 <= a.cut_at <= ready]
                if not match:
                    continue
                a = match[0]
                before.append(a.cut_at - created)
                archive_times.append(a.seconds)
                after.append(ready - (a.cut_at + a.seconds))
        return {
            "operator": {
                "archiveSeconds": summary(operator_archives),
                "archiveSecondsByPvc": {pvc: summary(v) for pvc, v in sorted(per_pvc.items())},
                "driverSpan": summary(operator_spans),
                "controllersShare": summary(operator_pipeline),
            },
            "naive": {
                "createToCut": summary(before),
                "archiveSeconds": summary(archive_times),
                "archiveToReadySeen": summary(after),
            },
        }

    def _settle(self) -> None:
        """Wait until the writer is back, Ready, and has written a new record everywhere."""
        namespace = self.bleater.namespace
        if self.kube.replicas(namespace, WRITER) != self.replicas:
            raise BenchmarkError(f"the writer has {self.kube.replicas(namespace, WRITER)} replicas, "
                                 f"expected {self.replicas}: a run did not scale it back")
        self.kube.wait_pods(namespace, WRITER_SELECTOR, self.replicas, timeout=120)
        newest = min(max((r.seq for r in self.bleater.records(s)), default=0) for s in SERVICES)
        self.bleater.wait_new_records(newest, timeout=60)

    def _operator_run(self, name: str) -> OperatorRun:
        namespace = self.bleater.namespace
        before_operator = operator_requests(self.operator)
        before_api = apiserver_requests(self.cluster)
        started = time.monotonic()
        self.kube.create_group(sample(name))
        group = self.kube.wait_group(namespace, name, timeout=GROUP_TIMEOUT)
        done = time.monotonic() - started
        run = OperatorRun(
            name, group.get("status") or {}, done,
            operator_requests=delta(operator_requests(self.operator), before_operator),
            apiserver_requests=delta(apiserver_requests(self.cluster), before_api),
        )
        self.kube.delete_group(namespace, name)
        self.kube.wait_group_gone(namespace, name, timeout=120)
        watch_until(
            self.kube.custom.list_namespaced_custom_object, SNAPSHOT_GROUP, SNAPSHOT_VERSION,
            namespace, SNAPSHOT_PLURAL, label_selector=f"snapgroup.dev/group={name}",
            predicate=lambda snaps: not snaps, timeout=120, what=f"snapshots of {name} deleted")
        return run

    def _results(self, operator_runs: list[OperatorRun], naive_runs: list[NaiveRun],
                 naive_requests: list[dict[str, float]]) -> JSON:
        ratios = [o.window / n.window for o, n in zip(operator_runs, naive_runs, strict=True)]
        op_steps = {key: summary(o.breakdown[key] for o in operator_runs) for key, _ in COMMON_STEPS}
        naive_steps = {
            "drain": summary(n.steps["drainRequest"] + n.steps["drainWait"] for n in naive_runs),
            "quiesce": summary(n.steps["quiesce"] for n in naive_runs),
            "cutWait": summary(n.steps["snapshots"] for n in naive_runs),
            "resume": summary(n.steps["resume"] for n in naive_runs),
        }
        requests_per_group = [sum(o.operator_requests.values()) for o in operator_runs]
        verbs: dict[str, list[float]] = {}
        for o in operator_runs:
            for verb, count in o.operator_requests.items():
                verbs.setdefault(verb, []).append(count)
        return {
            "runs": self.runs,
            "operator": {
                "runs": [o.as_json() for o in operator_runs],
                "window": summary(o.window for o in operator_runs),
                "own": summary(o.breakdown.get("operator", math.nan) for o in operator_runs),
                "steps": op_steps,
                "applyToSucceeded": summary(o.apply_to_done for o in operator_runs),
                "succeeded": sum(o.phase == "Succeeded" for o in operator_runs),
                "consistent": sum(o.consistent for o in operator_runs),
                "requestsPerGroup": summary(requests_per_group),
                "requestsPerGroupByVerb": {v: median(c) for v, c in sorted(verbs.items())},
                "apiserverRequestsPerGroup": summary(sum(o.apiserver_requests.values())
                                                     for o in operator_runs),
            },
            "naive": {
                "runs": [
                    {**n.as_json(), "apiserverRequests": r, "apiserverRequestsTotal": sum(r.values())}
                    for n, r in zip(naive_runs, naive_requests, strict=True)
                ],
                "window": summary(n.window for n in naive_runs),
                "own": summary(n.window - n.waits for n in naive_runs),
                "steps": naive_steps,
                "snapshotEach": summary(s for n in naive_runs for s in n.snapshots.values()),
                "apiserverRequestsPerRun": summary(sum(r.values()) for r in naive_requests),
            },
            "ratios": [round(r, 3) for r in ratios],
            "ratio": summary(ratios),
        }
