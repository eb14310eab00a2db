"""Restore time of the bleater sample: a SnapshotGroupRestore applied -> the services answering
on the restored data, as a clone and in place; how long an in-place restore stops the writer; and
how long a verification by restoring takes.

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

Then `--runs` verifications of the group by restoring it (a new value of its verify-requested
annotation each, as `snapgroup verify --restore` sets it). A run's time is from the annotation to
the verification's answer (every service started on scratch claims, read, compared, and
everything removed); each run must end Verified=True before it counts. Per service, the
verification's own `seconds` (its start -> that service read).

Then `--runs` restores in place of the same group, one after another, each once the data-writer
has written records after the cut (which the restore must take away). A run's time is from the
create to the restore Succeeded (services and writer running again on the restored claims); the
writer's stop is the restore's `status.writersStoppedSeconds` (writers scaled to zero -> running
again). Each run is checked before it counts: every service holds exactly the cut's records up to
the cut, and every record after it was written after the restore began. The previous volumes
are deleted (`previousVolumes: Delete`).
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
from e2e.test_restore_clone import create_restore, wait_restore
from localcluster.cluster import LocalCluster
from snapgroup.api.labels import VERIFY_REQUESTED
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


def _succeeded(kube: Kube, name: str, spec: JSON, timeout: float) -> JSON:
    """Apply a SnapshotGroupRestore of the group and return its status once it Succeeded."""
    create_restore(kube, {"apiVersion": "snapgroup.dev/v1alpha1", "kind": "SnapshotGroupRestore",
                          "metadata": {"name": name, "namespace": NAMESPACE},
                          "spec": {"groupName": GROUP, "timeout": "5m", **spec}})
    status: JSON = wait_restore(kube, name, timeout)["status"]
    if status["phase"] != "Succeeded":
        raise RuntimeError(f"restore {name} failed: {status.get('message')}")
    return status


def one_clone(kube: Kube, cut: datetime) -> JSON:
    """One clone into a new namespace: timed, checked, removed."""
    target = f"bench-clone-{uuid.uuid4().hex[:6]}"
    kube.core.create_namespace({"metadata": {"name": target, "labels": {RESTORE_TARGET_LABEL: NAMESPACE}}})
    name = f"{GROUP}-{target}"
    try:
        started = time.monotonic()
        status = _succeeded(kube, name, {"targetNamespace": target}, 300.0)
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


def one_in_place(kube: Kube, cut: datetime, n: int) -> JSON:
    """One restore in place of the group, with records after the cut to take away: timed, checked."""
    bleater = Bleater(kube)
    top = max(r.seq for r in bleater.records("postgres"))
    bleater.wait_new_records(top + 2)
    before = {service: {r.seq: r.at for r in bleater.records(service) if r.at <= cut}
              for service in SERVICES}
    name = f"{GROUP}-in-place-{n}"
    begun = time.time()
    started = time.monotonic()
    status = _succeeded(kube, name, {"inPlace": True, "previousVolumes": "Delete"}, 360.0)
    ready = time.monotonic() - started
    held = _records_everywhere(bleater, time.monotonic() + ANSWER_TIMEOUT)
    answering = time.monotonic() - started
    for service, records in held.items():
        kept = {r.seq: r.at for r in records if r.at <= cut}
        if kept != before[service]:
            raise RuntimeError(f"{service} does not hold exactly the cut's records after restore {name}")
        late = [r.seq for r in records if r.at > cut and r.at.timestamp() < begun]
        if late:
            raise RuntimeError(f"{service} still holds records written after the cut, before the "
                               f"restore: {late}")
    kube.custom.delete_namespaced_custom_object("snapgroup.dev", "v1alpha1", NAMESPACE, PLURAL, name)
    return {"answeringSeconds": round(answering, 3), "readySeconds": round(ready, 3),
            "statusSeconds": status.get("seconds"),
            "writersStoppedSeconds": status.get("writersStoppedSeconds"),
            "records": len(before["postgres"])}


def one_verification(kube: Kube, n: int) -> JSON:
    """One verification of the group by restoring it: timed, checked Verified=True."""
    request = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    kube.custom.patch_namespaced_custom_object(
        "snapgroup.dev", "v1alpha1", NAMESPACE, "snapshotgroups", GROUP,
        {"metadata": {"annotations": {VERIFY_REQUESTED: request}}})
    done = kube.wait_custom(
        NAMESPACE, "snapshotgroups", GROUP,
        lambda o: ((o.get("status") or {}).get("verification") or {}).get("request") == request
        and bool(o["status"]["verification"].get("completionTime")), 600.0, "the verification's answer")
    answered = time.monotonic() - started
    status = done["status"]
    verdict = next(c for c in status["conditions"] if c["type"] == "Verified")
    if verdict["status"] != "True":
        raise RuntimeError(f"verification {request} failed: {verdict['message']}")
    services = {s["name"]: s["seconds"] for s in status["verification"]["services"]}
    return {"answeredSeconds": round(answered, 3), "statusSeconds": status["verification"]["seconds"],
            "services": services}


def run(cluster: LocalCluster, runs: int) -> JSON:
    """The group, then the clones, then the restores in place."""
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
        verifications = []
        for n in range(runs):
            verifications.append(one_verification(kube, n + 1))
            progress(f"verification {n + 1}/{runs}: answered after "
                     f"{verifications[-1]['answeredSeconds']:.2f}s")
        kube.core.patch_namespace(NAMESPACE, {"metadata": {"labels": {RESTORE_TARGET_LABEL: NAMESPACE}}})
        in_place = []
        for n in range(runs):
            in_place.append(one_in_place(kube, cut, n + 1))
            progress(f"in place {n + 1}/{runs}: {in_place[-1]['readySeconds']:.2f}s, writer stopped "
                     f"{in_place[-1]['writersStoppedSeconds']:.2f}s")
    finally:
        operator.stop()
    stopped = summary(float(r["writersStoppedSeconds"]) for r in in_place)
    verified = {"runs": verifications, "answered": summary(r["answeredSeconds"] for r in verifications),
                "status": summary(float(r["statusSeconds"]) for r in verifications),
                **{f"service:{name}": summary(float(r["services"][name]) for r in verifications)
                   for name in verifications[0]["services"]}}
    return {"clone": _summarised(clones), "inPlace": {**_summarised(in_place), "writersStopped": stopped},
            "verification": verified}


def _summarised(runs: list[JSON]) -> JSON:
    return {"runs": runs,
            "answering": summary(r["answeringSeconds"] for r in runs),
            "ready": summary(r["readySeconds"] for r in runs),
            "status": summary(float(r["statusSeconds"]) for r in runs)}


def render(results: JSON) -> str:
    """The report's markdown."""
    clone, in_place = results["restore"]["clone"], results["restore"]["inPlace"]
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
        "## In place",
        "",
        f"Then {len(in_place['runs'])} restores in place of the same group, one after another, each "
        "once the data-writer had written records after the cut. *Ready*: the SnapshotGroupRestore "
        "created -> Succeeded (each service proven on scratch claims, writer and services stopped, "
        "claims swapped, services Ready, writer running again). *Answering*: created -> all three "
        "services serve their records, checked to hold exactly the cut's records up to the cut and "
        "none of those written after it before the restore. *Writer stopped*: the restore's "
        "`status.writersStoppedSeconds`, from scaling the writer to zero to its pod running again.",
        "",
        report._table(["in place", "median s", "p90 s", "min s", "max s", "n"],
                      [report._summary_row(name, in_place[key]) for name, key in
                       (("ready", "ready"), ("answering", "answering"), ("status.seconds", "status"),
                        ("writer stopped", "writersStopped"))]),
        "",
        report._table(["run", "ready s", "answering s", "writer stopped s", "records of the cut"],
                      [[str(i + 1), r["readySeconds"], r["answeringSeconds"], r["writersStoppedSeconds"],
                        str(r["records"])] for i, r in enumerate(in_place["runs"])]),
        "",
    ]
    verified = results["restore"].get("verification")
    if verified:
        names = sorted(k.removeprefix("service:") for k in verified if k.startswith("service:"))
        lines += [
            "## Verified by restoring",
            "",
            f"Between the clones and the restores in place, {len(verified['runs'])} verifications of the "
            "group by restoring it, one after another, each asked for by a new value of the group's "
            "`snapgroup.dev/verify-requested` annotation. *Answered*: the annotation set -> the "
            "verification's answer in the status (every snapshot restored into a scratch claim, each "
            "service started on them and its newest record read and compared, everything removed), "
            "each run checked Verified=True. *Status*: the verification's own `seconds`. Per service: "
            "from the verification's start to that service read.",
            "",
            report._table(["verification", "median s", "p90 s", "min s", "max s", "n"],
                          [report._summary_row("answered", verified["answered"]),
                           report._summary_row("status.verification.seconds", verified["status"]),
                           *[report._summary_row(f"{name} read", verified[f"service:{name}"])
                             for name in names]]),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Cluster up, measure, write the report, cluster down."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.restore", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS,
                        help=f"clones, verifications and restores in place to time (default {RUNS} each)")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    state_dir = Path(tempfile.mkdtemp(prefix="snapgroup-bench-restore-"))
    cluster = LocalCluster(state_dir)
    try:
        cluster.up(apply_bleater=True, wait_for_other_cluster=3600.0)
        cluster.apply_crds(REPO / "crds")
        results = {"machine": report.describe_machine(cluster), "restore": run(cluster, args.runs)}
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
