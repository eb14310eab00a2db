"""Restore time of the bleater sample: a SnapshotGroupRestore applied -> the clone's services
answering on the restored data.

Usage (from the repository root; `make bench-restore` runs the first)::

    PYTHONPATH=tests python -m benchmarks.restore --report docs/benchmarks
    PYTHONPATH=tests python -m benchmarks.restore --runs 2 --report /tmp/restore

On a fresh local cluster with bleater: one SnapshotGroup of the sample, then `--runs` clones of
it, one after another, each into a new namespace that consents. A run's time is from the create
of the SnapshotGroupRestore to the moment all three services of the clone serve their records
through the clone's own Secrets (the test-side reads of `e2e.bleater`), and the restore's own
`status.seconds` (its create -> workloads Ready). Each clone is checked to hold the records of the
cut (the same sequence in all three, none newer than the earliest cut) before it counts, then
deleted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.measure import JSON, progress, summary
from e2e.bleater import NAMESPACE, SERVICES, Bleater, utc
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from e2e.test_bleater_group import sample
from localcluster.cluster import LocalCluster
from snapgroup.api.restore import PLURAL, RESTORE_TARGET_LABEL

GROUP = "bench-restore"
RUNS = 5
ANSWER_TIMEOUT = 120.0


def _records_everywhere(clone: Bleater, deadline: float) -> dict[str, list[Any]]:
    """Every service's records once all three answer."""
    while True:
        try:
            return {service: clone.records(service) for service in SERVICES}
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def one_clone(kube: Kube, cut: datetime) -> JSON:
    """One clone into a new namespace: timed, checked, removed."""
    target = f"bench-clone-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": target, "labels": {RESTORE_TARGET_LABEL: NAMESPACE}}})
    name = f"{GROUP}-{target}"
    try:
        started = time.monotonic()
        kube.custom.create_namespaced_custom_object("snapgroup.dev", "v1alpha1", NAMESPACE, PLURAL, {
            "apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"groupName": GROUP, "targetNamespace": target, "timeout": "5m"}})
        done = kube.wait_custom(NAMESPACE, PLURAL, name,
                                lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
                                300.0, "a terminal phase")
        status = done["status"]
        if status["phase"] != "Succeeded":
            raise RuntimeError(f"restore {name} failed: {status.get('message')}")
        ready = time.monotonic() - started
        held = _records_everywhere(Bleater(kube, target), time.monotonic() + ANSWER_TIMEOUT)
        answering = time.monotonic() - started
        seqs = {service: [r.seq for r in records] for service, records in held.items()}
        if not seqs["postgres"] or len({tuple(s) for s in seqs.values()}) != 1:
            raise RuntimeError(f"clone {target} does not hold one sequence in all services: {seqs}")
        newest = max(r.at for records in held.values() for r in records)
        if newest > cut:
            raise RuntimeError(f"clone {target} holds a record of {newest}, after the cut {cut}")
        recovery = {w["name"]: w.get("backupRecovery", "") for w in status.get("workloads") or []}
        return {"answeringSeconds": round(answering, 3), "readySeconds": round(ready, 3),
                "statusSeconds": status.get("seconds"), "records": len(seqs["postgres"]),
                "postgresRecovery": recovery.get("postgres", "")}
    finally:
        kube.custom.delete_namespaced_custom_object("snapgroup.dev", "v1alpha1", NAMESPACE, PLURAL, name)
        kube.core.delete_namespace(target)


def run(cluster: LocalCluster, runs: int) -> JSON:
    """The group, then the clones."""
    kube = Kube(cluster.kubeconfig)
    operator = OperatorProcess(cluster.kubeconfig, cluster.logs_dir / "operator.log")
    operator.start()
    try:
        kube.create_group(sample(GROUP))
        group = kube.wait_group(NAMESPACE, GROUP)
        if group["status"]["phase"] != "Succeeded" or group["status"].get("consistent") is not True:
            raise RuntimeError(f"the group did not succeed consistently: {group['status'].get('message')}")
        cut = utc(group["status"]["earliestSnapshotTime"])
        clones = []
        for n in range(runs):
            clones.append(one_clone(kube, cut))
            progress(f"clone {n + 1}/{runs}: services answering after {clones[-1]['answeringSeconds']:.2f}s")
    finally:
        operator.stop()
    return {"runs": clones,
            "answering": summary(c["answeringSeconds"] for c in clones),
            "ready": summary(c["readySeconds"] for c in clones),
            "status": summary(float(c["statusSeconds"]) for c in clones)}


def render(results: JSON) -> str:
    """The report's markdown."""
    clone = results["clone"]
    lines = [
        "# Restore benchmark",
        "",
        f"Written by `make bench-restore` on {results['machine']['date']}, source "
        f"`{results['machine']['revision']}`: one run on "
        "the machine of [report.md](report.md), a measurement, not a guarantee. Raw numbers: "
        "[restore.json](restore.json).",
        "",
        f"The bleater sample (PostgreSQL, MongoDB stand-in, MinIO stand-in, one 1Gi claim each), one "
        f"SnapshotGroup, then {len(clone['runs'])} clones of it one after another, each into a new "
        "namespace. *Answering*: the SnapshotGroupRestore created -> all three services of the clone "
        "serve their records through the clone's Secrets (each clone checked to hold exactly one "
        "sequence in all three, none newer than the cut). *Ready*: created -> the restore Succeeded "
        "(claims bound, workloads Ready). *Status*: the restore's own `status.seconds`.",
        "",
        report._table(["clone", "median s", "p90 s", "min s", "max s", "n"],
                      [report._summary_row(name, clone[key]) for name, key in
                       (("answering", "answering"), ("ready", "ready"), ("status.seconds", "status"))]),
        "",
        report._table(["run", "answering s", "ready s", "records", "PostgreSQL started by"],
                      [[str(i + 1), r["answeringSeconds"], r["readySeconds"], str(r["records"]),
                        r["postgresRecovery"]] for i, r in enumerate(clone["runs"])]),
        "",
        "In place: not measured (an in-place restore is not built yet).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Cluster up, measure, write the report, cluster down."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restore", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"clones to time (default {RUNS})")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    state_dir = Path(tempfile.mkdtemp(prefix="snapgroup-bench-restore-"))
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(apply_bleater=True, wait_for_other_cluster=3600.0)
        cluster.apply_crds(REPO / "crds")
        results = {"machine": report.describe_machine(cluster), "clone": run(cluster, args.runs)}
    finally:
        cluster.down()
        shutil.rmtree(state_dir, ignore_errors=True)
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "restore.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.report / "restore.md").write_text(render(results))
    progress(f"restore report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
