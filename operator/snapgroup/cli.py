"""The `snapgroup` command: run the operator, write CRDs, plan a group dry, verify a group, restore one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from snapgroup.adapters.health import HealthServer
from snapgroup.adapters.kube import load_api_client
from snapgroup.adapters.leadership import (
    LEADER_LEASE,
    LeaderElection,
    default_identity,
    default_namespace,
)
from snapgroup.adapters.pgdata import PreparationError, prepare_pgdata
from snapgroup.api import API_VERSION
from snapgroup.api.base import parse_duration, stamp
from snapgroup.api.crd import check_crds, write_crds
from snapgroup.api.labels import VERIFY_REQUESTED, shortened
from snapgroup.api.restore import KIND as RESTORE_KIND
from snapgroup.api.restore import RESTORE_TARGET_LABEL, PreviousVolumes, SnapshotGroupRestoreSpec
from snapgroup.api.snapshotgroup import KIND, Phase, SnapshotGroupSpec, SnapshotGroupStatus
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.groups import MAX_WINDOWS, RETRY_DELAY
from snapgroup.orchestration.in_place_plan import InPlacePlan
from snapgroup.orchestration.plan import Plan, make_plan
from snapgroup.orchestration.restore_plan import RestorePlan, RestoreRef
from snapgroup.orchestration.verification import verify
from snapgroup.ports import PlanError, StepError
from snapgroup.runtime import Runtime

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
VERIFY_SLACK = 120.0
"""Seconds `verify --restore` waits beyond the verification's timeout (removing what it made)."""
LOOP_ANSWER_SECONDS = 5.0
"""How long the leader's event loop may take to answer the health endpoint."""


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table, like kubectl's."""
    cells = [[str(h).upper() for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


# -- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the operator until interrupted; with --leader-elect, only while this process leads."""
    from snapgroup import handlers, metrics

    assert handlers  # registers the kopf handlers
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # kopf logs in through the same kubeconfig
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    # asyncio.run's set-up and clean-up, with the loop known beforehand for the health check.
    with asyncio.Runner() as runner:
        return _run_operator(args, runner.get_loop())


def _run_operator(args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> int:
    """Stand by until leading (with --leader-elect), then run kopf on loop until it stops."""
    import kopf

    from snapgroup import metrics

    election: LeaderElection | None = None
    health: HealthServer | None = None
    namespace = args.leader_election_namespace or default_namespace()
    if args.leader_elect:
        if namespace is None:
            print("--leader-elect outside a pod needs --leader-election-namespace", file=sys.stderr)
            return EXIT_USAGE
        election = LeaderElection(
            load_api_client(args.kubeconfig, pool_size=2), namespace, args.leader_election_id,
            default_identity(),
        )
        # Served from now on, standby or not; kopf serves none in this mode.
        health = HealthServer(args.liveness, partial(_health, election, loop))
        health.start()
        election.acquire()  # blocks while another replica leads
    else:
        metrics.LEADER.set(1)  # alone: this process acts
    memo = kopf.Memo(
        runtime=Runtime.from_environment(
            args.kubeconfig, args.namespace or (), args.max_windows, args.retry_delay,
            server_lease_namespace=namespace)
    )
    try:
        kopf.run(
            loop=loop,
            standalone=True,  # kopf's peering pauses operators, it elects none: see the README
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
            liveness_endpoint=None if election else args.liveness,
            memo=memo,
        )
    finally:
        if election is not None:
            election.release()  # after kopf's cleanup thawed open windows
        if health is not None:
            health.stop()
    return EXIT_OK


def _health(election: LeaderElection, loop: asyncio.AbstractEventLoop) -> tuple[bool, dict[str, Any]]:
    """Alive: the election runs and, in the leader, kopf's event loop answers."""
    body: dict[str, Any] = {"leader": election.leading, "identity": election.identity,
                            "holder": election.holder}
    if not election.alive():
        return False, {**body, "problem": "the leader election loop stalled"}
    if loop.is_running():
        answered = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
        try:
            answered.result(timeout=LOOP_ANSWER_SECONDS)
        except TimeoutError:
            answered.cancel()
            return False, {**body, "problem": f"event loop blocked for {LOOP_ANSWER_SECONDS:g}s"}
    return True, body


# -- crd ---------------------------------------------------------------------------------------


def cmd_prepare_pgdata(args: argparse.Namespace) -> int:
    """A restored PostgreSQL pod's init step: write the backup kept with its snapshot into PGDATA."""
    try:
        print(prepare_pgdata(Path(args.pgdata), Path(args.source), args.keep_archiving))
    except (PreparationError, OSError, ValueError, KeyError) as exc:
        print(f"prepare-pgdata: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_crd(args: argparse.Namespace) -> int:
    """Write the CRDs, or check the committed ones against the models."""
    directory = Path(args.directory)
    if args.check:
        stale = check_crds(directory)
        for name in stale:
            print(f"{directory / name}: differs from the models; run `make crds`", file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK
    for path in write_crds(directory):
        print(path)
    return EXIT_OK


# -- plan --------------------------------------------------------------------------------------


def _load_groups(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") == KIND]


def _spec_problems(exc: ValidationError) -> list[PlanError]:
    return [
        PlanError("InvalidSpec", "spec." + ".".join(str(p) for p in err["loc"]), err["msg"])
        for err in exc.errors()
    ]


async def _plan_one(runtime: Runtime, doc: dict[str, Any], namespace: str | None) -> dict[str, Any]:
    meta = doc.get("metadata", {})
    ns = meta.get("namespace") or namespace or "default"
    result: dict[str, Any] = {
        "name": meta.get("name"),
        "namespace": ns,
        "writers": [],
        "volumes": [],
        "hooks": [],
        "problems": [],
    }
    try:
        spec = SnapshotGroupSpec.model_validate(doc.get("spec", {}))
    except ValidationError as exc:
        result["problems"] = [_problem(p) for p in _spec_problems(exc)]
        return result
    ctx = HookContext(
        namespace=ns,
        group=str(meta.get("name", "dry-run")),
        group_uid="dry-run",
        cluster=runtime.cluster,
        connectors=runtime.connectors,
    )
    plan = await make_plan(ctx, spec)
    try:
        result.update(_describe_plan(plan))
    finally:
        await plan.release()
    return result


def _problem(p: PlanError) -> dict[str, str]:
    return {"reason": p.reason, "field": p.field_path, "message": p.message}


def _describe_plan(plan: Plan) -> dict[str, Any]:
    order = [("isolate", h.key) for h in plan.writers]
    order += [("quiesce", s.hook.key) for s in plan.services]
    order += [(f"{s.stage.lower()}-hook", h.key) for s in plan.steps for h in s.hooks]
    order += [("cut", f"{len(plan.services)} service(s)")]
    order += [("resume", key) for step, key in reversed(order) if step in ("isolate", "quiesce")]
    return {
        "snapshotClass": plan.snapshot_class,
        "writers": [h.key.removeprefix("writer:") for h in plan.writers],
        "volumes": [
            {"service": s.target.name, "type": s.target.type, "pvc": p} for s in plan.services for p in s.pvcs
        ],
        "hooks": [{"step": step, "target": key} for step, key in order],
        "problems": [_problem(p) for p in plan.problems],
        "warnings": [_problem(p) for p in plan.warnings],
    }


def cmd_plan(args: argparse.Namespace) -> int:
    """Dry-run groups from a file against the cluster; touch nothing."""
    docs = _load_groups(args.filename)
    if not docs:
        print(f"{args.filename}: no {KIND} found", file=sys.stderr)
        return EXIT_USAGE
    runtime = Runtime.from_environment(args.kubeconfig)
    try:
        results = asyncio.run(_plan_all(runtime, docs, args.namespace))
    finally:
        runtime.close()
    if args.output == "json":
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(_render_plan(r))
    return EXIT_FAILED if any(r["problems"] for r in results) else EXIT_OK


async def _plan_all(
    runtime: Runtime, docs: list[dict[str, Any]], namespace: str | None
) -> list[dict[str, Any]]:
    return [await _plan_one(runtime, d, namespace) for d in docs]


def _issues(title: str, items: list[dict[str, str]]) -> list[str]:
    return ["", title, table(["reason", "field", "message"],
                             [[p["reason"], p["field"], p["message"]] for p in items])]


def _render_plan(r: dict[str, Any]) -> str:
    lines = [f"{KIND} {r['namespace']}/{r['name']}"]
    if r.get("snapshotClass"):
        lines.append(f"VolumeSnapshotClass: {r['snapshotClass']}")
    lines.append("Writers: " + (", ".join(r["writers"]) or "none"))
    if r["volumes"]:
        lines += [
            "",
            table(["service", "type", "pvc"], [[v["service"], v["type"], v["pvc"]] for v in r["volumes"]]),
        ]
    if r["hooks"]:
        lines += [
            "",
            table(
                ["#", "step", "target"], [[i + 1, h["step"], h["target"]] for i, h in enumerate(r["hooks"])]
            ),
        ]
    if r.get("warnings"):
        lines += _issues(f"{len(r['warnings'])} warning(s); they do not stop the group:", r["warnings"])
    if r["problems"]:
        lines += _issues(f"{len(r['problems'])} problem(s); nothing would be touched:", r["problems"])
    else:
        lines += ["", "No problems found. Nothing was changed."]
    return "\n".join(lines) + "\n"


# -- verify / status ---------------------------------------------------------------------------


async def _read_status(runtime: Runtime, namespace: str, name: str) -> SnapshotGroupStatus | None:
    group = await runtime.cluster.get_group(namespace, name)
    if group is None:
        return None
    return SnapshotGroupStatus.model_validate(group.get("status") or {})


def _fetch(args: argparse.Namespace) -> SnapshotGroupStatus | None:
    runtime = Runtime.from_environment(args.kubeconfig)
    try:
        status = asyncio.run(_read_status(runtime, args.namespace, args.name))
    finally:
        runtime.close()
    if status is None:
        print(f"{KIND} {args.namespace}/{args.name} not found", file=sys.stderr)
    return status


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a group's status like an automated checker; exit non-zero when anything fails.
    With --restore, have the operator restore it into scratch claims and read it back first."""
    if args.restore:
        runtime = Runtime.from_environment(args.kubeconfig)
        try:
            code = asyncio.run(_verify_by_restoring(runtime, args))
        finally:
            runtime.close()
        if code != EXIT_OK:
            return code
    status = _fetch(args)
    if status is None:
        return EXIT_USAGE
    checks = verify(status)
    failed = [c for c in checks if not c.passed]
    if args.output == "json":
        print(json.dumps({"passed": not failed, "checks": [c.__dict__ for c in checks]}, indent=2))
    else:
        print(
            table(
                ["subject", "check", "result", "detail"],
                [[c.subject, c.check, "PASS" if c.passed else "FAIL", c.detail] for c in checks],
            )
        )
        print()
        print(
            f"{args.namespace}/{args.name}: "
            + (
                "verified"
                if not failed
                else f"{len(failed)} check(s) failed: " + ", ".join(f"{c.subject} {c.check}" for c in failed)
            )
        )
    return EXIT_FAILED if failed else EXIT_OK


async def _verify_by_restoring(runtime: Runtime, args: argparse.Namespace) -> int:
    """Ask the operator for a verification by restoring (a new value of the group's
    verify-requested annotation), follow it, and print what each service held."""
    title = f"{KIND} {args.namespace}/{args.name}"
    group = await runtime.objects.get(KIND, args.namespace, args.name)
    if group is None:
        print(f"{title} not found", file=sys.stderr)
        return EXIT_USAGE
    status = SnapshotGroupStatus.model_validate(group.get("status") or {})
    if status.phase != Phase.SUCCEEDED:
        print(f"{title} is {status.phase.value}: only a Succeeded group can be verified by restoring it",
              file=sys.stderr)
        return EXIT_FAILED
    request = f"{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
    await runtime.objects.patch(KIND, args.namespace, args.name,
                                {"metadata": {"annotations": {VERIFY_REQUESTED: request}}})
    spec = SnapshotGroupSpec.model_validate(group.get("spec") or {})
    quiet = args.output == "json"  # stdout is then the checker's JSON only
    if not quiet:
        print(f"{title}: verification requested ({VERIFY_REQUESTED}={request})", flush=True)
    seen: list[str] = []

    def answered(obj: dict[str, Any]) -> bool:
        current = SnapshotGroupStatus.model_validate(obj.get("status") or {})
        found = next((c for c in current.conditions if c.type == "Verified"), None)
        mine = current.verification is not None and current.verification.request == request
        if mine and found is not None and (not seen or seen[-1] != found.message):
            seen.append(found.message or "")
            if not quiet:
                print(f"Verified={found.status}: {found.message}", flush=True)
        return bool(mine and current.verification and current.verification.completion_time)

    timeout = parse_duration(args.timeout or spec.verify_timeout).total_seconds() + VERIFY_SLACK
    try:
        final = await runtime.objects.wait(KIND, args.namespace, args.name, answered, timeout)
    except TimeoutError:
        print(f"{title}: the operator did not answer the verification within {timeout:.0f}s "
              "(is it running, and does it watch this namespace?)", file=sys.stderr)
        return EXIT_FAILED
    verification = SnapshotGroupStatus.model_validate(final.get("status") or {}).verification
    assert verification is not None
    if quiet:
        return EXIT_OK
    print(table(["service", "pods", "restored newest", "recorded newest", "match", "seconds", "detail"],
                [[v.name, ", ".join(v.pods) or None, _time(v.restored_newest_record),
                  _time(v.recorded_newest_record), v.matches, v.seconds, v.message]
                 for v in verification.services]))
    print()
    return EXIT_OK


def _time(at: datetime | None) -> str | None:
    return stamp(at) if at is not None else None


def cmd_status(args: argparse.Namespace) -> int:
    """Print a group's status as tables."""
    status = _fetch(args)
    if status is None:
        return EXIT_USAGE
    if args.output == "json":
        print(json.dumps(status.wire(), indent=2))
        return EXIT_OK
    print(render_status(f"{args.namespace}/{args.name}", status))
    return EXIT_OK


def render_status(title: str, status: SnapshotGroupStatus) -> str:
    """The status as a person reads it: summary, snapshots, writers, hooks, conditions."""
    freeze = status.freeze.seconds if status.freeze else None
    lines = [
        f"{KIND} {title}",
        f"Phase: {status.phase.value}    Consistent: {_cell(status.consistent)}    "
        f"Freeze: {_cell(freeze)}s    Snapshots ready: {_cell(status.snapshots_ready)}",
        f"Earliest cut: {_cell(status.earliest_snapshot_time)}",
        f"Message: {_cell(status.message)}",
        "",
        table(
            ["service", "type", "volumesnapshot", "pvc", "creationTime", "ready", "lastRecordTime"],
            [
                [s.name, s.type, v.name, v.pvc, v.creation_time, v.ready_to_use, s.last_record_time]
                for s in status.services
                for v in s.volume_snapshots
            ],
        ),
    ]
    evidence = [[s.name, k, v] for s in status.services for k, v in sorted(s.evidence.items())]
    if evidence:
        lines += ["", table(["service", "evidence", "value"], evidence)]
    if status.writers:
        lines += [
            "",
            table(
                ["writer", "original replicas", "isolated at", "restored at", "note"],
                [
                    [f"{w.kind}/{w.name}", w.original_replicas, w.isolated_at, w.restored_at, w.note]
                    for w in status.writers
                ],
            ),
        ]
    lines += [
        "",
        table(
            ["condition", "status", "reason", "message"],
            [[c.type, c.status, c.reason, c.message] for c in status.conditions],
        ),
    ]
    return "\n".join(lines)


# -- restore -----------------------------------------------------------------------------------


def cmd_restore(args: argparse.Namespace) -> int:
    """Print a restore's plan; unless --dry-run, create the SnapshotGroupRestore and follow it."""
    spec: dict[str, Any] = {"groupName": args.group, "includeWriters": args.include_writers,
                            "timeout": args.timeout}
    if args.in_place:
        spec.update(inPlace=True, previousVolumes=args.previous_volumes)
    else:
        spec["targetNamespace"] = args.to_namespace
    try:
        parsed = SnapshotGroupRestoreSpec.model_validate(spec)
    except ValidationError as exc:
        for p in _spec_problems(exc):
            print(f"{p.field_path}: {p.message}", file=sys.stderr)
        return EXIT_USAGE
    runtime = Runtime.from_environment(args.kubeconfig)
    try:
        return asyncio.run(_restore(runtime, args, parsed))
    finally:
        runtime.close()


async def _restore(runtime: Runtime, args: argparse.Namespace, spec: SnapshotGroupRestoreSpec) -> int:
    where = "in-place" if spec.in_place else f"to-{args.to_namespace}"
    name = args.name or shortened(f"{args.group}-{where}", 253)
    ref = RestoreRef(args.namespace, name, "dry-run")
    try:
        if spec.in_place:
            text = render_in_place_plan(f"{args.namespace}/{name}", spec,
                                        await runtime.restorer.plan_in_place(ref, spec))
        else:
            text = render_restore_plan(f"{args.namespace}/{name}", spec,
                                       await runtime.restorer.plan(ref, spec))
    except PlanError as exc:
        print(f"{RESTORE_KIND} {args.namespace}/{name}: {exc.reason}: {exc.field_path}: {exc.message}",
              file=sys.stderr)
        return EXIT_FAILED
    except StepError as exc:  # the plan reads with the caller's own credentials
        print(f"{RESTORE_KIND} {args.namespace}/{name}: the plan could not read what it needs "
              f"({exc.reason}): {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    print(text)
    if args.dry_run:
        print("\nDry run: nothing was created.")
        return EXIT_OK
    body = {"apiVersion": API_VERSION, "kind": RESTORE_KIND, "metadata": {"name": name}, "spec": spec.wire()}
    if await runtime.objects.create(RESTORE_KIND, args.namespace, body) is None:
        existing = await runtime.objects.get(RESTORE_KIND, args.namespace, name) or {}
        phase = (existing.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            print(f"{RESTORE_KIND} {args.namespace}/{name} exists already and {phase}: nothing was done; "
                  "give a new one a --name (or delete that one)", file=sys.stderr)
            return EXIT_FAILED
        print(f"{RESTORE_KIND} {args.namespace}/{name} exists already; following it", file=sys.stderr)
    seen: list[str] = []

    def progress(obj: dict[str, Any]) -> bool:
        status = obj.get("status") or {}
        line = f"{status.get('phase', 'Pending')}: {status.get('message', 'waiting for the operator')}"
        if not seen or seen[-1] != line:
            seen.append(line)
            print(line, flush=True)
        return status.get("phase") in ("Succeeded", "Failed")

    final = await runtime.objects.wait(RESTORE_KIND, args.namespace, name, progress,
                                       parse_duration(spec.timeout).total_seconds() + 60)
    return EXIT_OK if (final.get("status") or {}).get("phase") == "Succeeded" else EXIT_FAILED


def render_restore_plan(title: str, spec: SnapshotGroupRestoreSpec, plan: RestorePlan) -> str:
    """What a restore would create, as a person reads it."""
    lines = [f"{RESTORE_KIND} {title}: SnapshotGroup {spec.group_name} -> namespace {spec.target_namespace}",
             "", table(["pvc", "from volumesnapshot", "service"],
                       [[v.pvc, v.snapshot, v.service] for v in plan.volumes])]
    lines += ["", table(["workload", "replicas", "starts"],
                        [[f"{w['kind']}/{w['metadata']['name']}", w["spec"].get("replicas", 1),
                          plan.preparations.get(f"{w['kind']}/{w['metadata']['name']}", "as it was cut")]
                         for w in plan.workloads])]
    others = [*plan.services, *plan.secrets, *plan.config_maps]
    if others:
        lines += ["", "Also created: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in others)]
    lines += [f"Note: {n}" for n in plan.notes]
    return "\n".join(lines)


def render_in_place_plan(title: str, spec: SnapshotGroupRestoreSpec, plan: InPlacePlan) -> str:
    """What a restore in place would swap and stop, as a person reads it."""
    lines = [f"{RESTORE_KIND} {title}: SnapshotGroup {spec.group_name} -> in place, "
             f"previous volumes: {spec.previous_volumes}",
             "", table(["pvc", "from volumesnapshot", "service", "previous volume"],
                       [[s.pvc, s.snapshot, s.service, s.previous_volume] for s in plan.swaps])]
    lines += ["", table(["workload", "replicas", "role", "starts"],
                        [[w.key, w.replicas, "writer" if w.writer else "service",
                          plan.preparations.get(w.key, "as it was cut")]
                         for w in [*plan.services, *plan.writers]])]
    lines += ["", "Each service is first proven on claims restored under temporary names; only then are "
              "the writers and services stopped and the claims swapped. A failure before the services "
              "answer on the restored data puts the previous volumes and workloads back."]
    lines += [f"Note: {n}" for n in plan.notes]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="snapgroup", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable)")
    run.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="health endpoint URL")
    run.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0: off)")
    run.add_argument("--max-windows", type=int, default=MAX_WINDOWS,
                     help="freeze windows open at once; later groups wait, with nothing frozen")
    run.add_argument("--retry-delay", type=float, default=RETRY_DELAY,
                     help="seconds before a failed attempt is retried (doubling for each further one)")
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--leader-elect", action="store_true",
                     help="run groups and schedules only while holding the leader Lease (for replicas > 1)")
    run.add_argument("--leader-election-namespace",
                     help="the operator's namespace: of the leader Lease and the database servers' "
                          "exclusion Leases (default: the pod's own; outside a pod without it, a "
                          "server's Lease is in each group's namespace)")
    run.add_argument("--leader-election-id", default=LEADER_LEASE, help="name of the leader Lease")
    run.set_defaults(func=cmd_run)

    crd = sub.add_parser("crd", help="write the CRDs from the models, or --check them")
    crd.add_argument("--directory", "-d", default="crds")
    crd.add_argument("--check", action="store_true", help="exit 1 when a committed CRD is stale")
    crd.set_defaults(func=cmd_crd)

    plan = sub.add_parser("plan", help="dry-run a SnapshotGroup file against the cluster")
    plan.add_argument("-f", "--filename", required=True, help="YAML file with SnapshotGroups (- for stdin)")
    plan.add_argument("--namespace", "-n", help="namespace when the file names none")
    plan.add_argument("--output", "-o", choices=["table", "json"], default="table")
    plan.set_defaults(func=cmd_plan)

    restore = sub.add_parser("restore",
                             help="clone a SnapshotGroup into another namespace, or restore it in place")
    restore.add_argument("group", help="the SnapshotGroup to restore")
    restore.add_argument("--namespace", "-n", default="default", help="the group's namespace")
    where = restore.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-namespace",
                       help=f"namespace to clone into (labelled {RESTORE_TARGET_LABEL}=<source>)")
    where.add_argument("--in-place", action="store_true",
                       help=f"swap the group's own claims onto restored volumes (the namespace labelled "
                            f"{RESTORE_TARGET_LABEL}=<itself>)")
    restore.add_argument("--previous-volumes", choices=[p.value for p in PreviousVolumes],
                         default=PreviousVolumes.RETAIN.value,
                         help="in place: keep (Retain) or delete the volumes the claims had before")
    restore.add_argument("--name",
                         help="name of the SnapshotGroupRestore (default: GROUP-to-NS, GROUP-in-place)")
    restore.add_argument("--include-writers", action="store_true", help="also copy the group's writers")
    restore.add_argument("--timeout", default="10m", help="how long the restore may take")
    restore.add_argument("--dry-run", action="store_true", help="print the plan; create nothing")
    restore.set_defaults(func=cmd_restore)

    prepare = sub.add_parser("prepare-pgdata",
                             help="write a PostgreSQL backup's label and WAL into a restored PGDATA")
    prepare.add_argument("--pgdata", required=True, help="the restored data directory")
    prepare.add_argument("--from", dest="source", required=True,
                         help="directory with backup_label, backup-wal and backup-wal-start")
    prepare.add_argument("--keep-archiving", action="store_true",
                         help="leave WAL archiving as it is (a restore in place, not a clone)")
    prepare.set_defaults(func=cmd_prepare_pgdata)

    for name, func, text in (
        ("verify", cmd_verify, "check a group like an automated checker"),
        ("status", cmd_status, "show a group's status"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("name")
        cmd.add_argument("--namespace", "-n", default="default")
        cmd.add_argument("--output", "-o", choices=["table", "json"], default="table")
        cmd.set_defaults(func=func)
        if name == "verify":
            cmd.add_argument("--restore", action="store_true",
                             help="first have the operator restore the group into scratch claims, start "
                                  "each service there and compare its newest record with the recorded one")
            cmd.add_argument("--timeout",
                             help="how long to wait for that (default: the group's verifyTimeout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
