"""`python -m chaos`: at least 30 groups on the bleater sample, each with one random fault.

Starts a local cluster with the bleater sample (or uses a running one, `--state-dir`), two
operator replicas with leader election, runs the groups back to back and writes
`<report>/results.json` and `<report>/report.md`. Seeded (the seed is printed and reported) and
bounded in time (`--max-minutes`: no group starts after it). Exits 1 when any invariant broke
(a writer left isolated, a lock left, a session left, a record lost).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chaos.runner import FAULTS, Chaos, Replicas, WriterSampler, as_rows, summary
from e2e.bleater import Bleater
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from localcluster.cluster import LocalCluster

LEASE_NAMESPACE = "default"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=30)
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument("--hold", type=float, default=1.5,
                        help="seconds each window is held open at the cut (failpoint cut=pause:N)")
    parser.add_argument("--max-minutes", type=float, default=40.0)
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "chaos")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="a running local cluster with the bleater sample (default: start one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    print(f"chaos: seed {seed}, {args.groups} groups, hold {args.hold}s, "
          f"at most {args.max_minutes} min", flush=True)
    own = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="snapgroup-chaos-")) if own else args.state_dir
    cluster = LocalCluster(state_dir)
    logs = Path(tempfile.mkdtemp(prefix="snapgroup-chaos-logs-"))
    started = time.monotonic()
    try:
        if own:
            cluster.up(apply_bleater=True, wait_for_other_cluster=600)
        cluster.apply_crds(REPO / "crds")
        kube = Kube(Path(cluster.kubeconfig))
        bleater = Bleater(kube)
        lease = f"snapgroup-chaos-{seed}"
        os.environ["SNAPGROUP_FAILPOINTS"] = f"cut=pause:{args.hold}"

        def make(i: int) -> OperatorProcess:
            return OperatorProcess(Path(cluster.kubeconfig), logs / f"replica-{i}.log", (
                "--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE,
                "--leader-election-id", lease, "--retry-delay", "1"))

        replicas = Replicas(make)
        replicas.start()
        chaos = Chaos(cluster, kube, bleater, replicas, random.Random(seed), f"chaos-{seed}",
                      args.hold, log=lambda line: print(line, flush=True))
        try:
            with WriterSampler(kube) as sampler:
                results = chaos.run(args.groups, started + args.max_minutes * 60, sampler)
        finally:
            replicas.stop()
        totals = summary(results)
        meta = {"seed": seed, "groups_planned": args.groups, "hold_seconds": args.hold,
                "faults": list(FAULTS), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                "minutes": round((time.monotonic() - started) / 60, 1), "operator_logs": str(logs)}
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "results.json").write_text(json.dumps(
            {"meta": meta, "summary": totals, "groups": as_rows(results)}, indent=2) + "\n")
        (args.report / "report.md").write_text(render(meta, totals, as_rows(results)))
        print(json.dumps(totals, indent=2))
        print(f"chaos: report in {args.report}; operator logs in {logs}")
        broken = (totals["writers_left_isolated"] or totals["locks_left"] or totals["records_lost"]
                  or totals["pg_sessions_left"] or totals["groups_with_record_problems"])
        return 1 if broken else 0
    finally:
        if own:
            cluster.down()
            shutil.rmtree(state_dir, ignore_errors=True)


def render(meta: dict[str, Any], totals: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The Markdown report: every cell from the results."""
    out = [
        "# Chaos run",
        "",
        f"`make chaos` (`python -m chaos`), seed **{meta['seed']}**: {totals['groups']} groups on "
        f"the bleater sample back to back, finished {meta['finished']} after {meta['minutes']} min. "
        "Two operator replicas with leader election (`--retry-delay 1`); each window held "
        f"{meta['hold_seconds']} s at the cut (failpoint `cut=pause:{meta['hold_seconds']}`) so "
        "that a random instant often falls inside it. Each group gets one fault at a random "
        "instant after its creation; `landed` says whether the fault met the running group "
        "(process killed while the group ran, socket or session killed, budget run out). "
        "Regenerate with `make chaos` (`SEED=N` to repeat a run).",
        "",
        "## Invariants",
        "",
        "| what | value |",
        "|---|---|",
        f"| writers left isolated | {totals['writers_left_isolated']} |",
        f"| MongoDB locks left | {totals['locks_left']} |",
        f"| PostgreSQL sessions of the operator left | {totals['pg_sessions_left']} |",
        f"| records lost | {totals['records_lost']} |",
        f"| groups whose services' sequences differ or have gaps | "
        f"{totals['groups_with_record_problems']} |",
        f"| longest time a writer stayed isolated after its fault | "
        f"{totals['longest_isolation_after_fault']} s ({totals['longest_isolation_group']}) |",
        f"| longest fault -> writer scaled back (writer isolated at the fault) | "
        f"{totals['longest_writer_back_after_fault']} s |",
        f"| retried groups (an attempt failed) | {totals['retried_groups']} |",
        f"| retried groups that ended Succeeded, and of those Consistent | "
        f"{totals['retried_succeeded']}, {totals['retried_succeeded_consistent']} |",
        f"| retried groups that ended otherwise | "
        f"{', '.join(f'{k}: {v}' for k, v in totals['retried_failed'].items()) or 'none'} |",
        f"| Succeeded but not Consistent | {', '.join(totals['succeeded_not_consistent']) or 'none'} |",
        f"| operator replicas restarted after exiting on their own | {totals['operator_restarts']} |",
        "",
        "## Outcomes by reason",
        "",
        "| outcome / reason | groups |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(totals["outcomes"].items())],
        "",
        "## By fault",
        "",
        "| fault | groups | landed | outcomes |",
        "|---|---|---|---|",
        *[f"| {fault} | {row['groups']} | {row['landed']} | "
          + ", ".join(f"{k} x{v}" for k, v in sorted(row["outcomes"].items())) + " |"
          for fault, row in sorted(totals["by_fault"].items())],
        "",
        "## Groups",
        "",
        "| # | fault | at (s) | landed | what was seen | phase at fault | outcome | attempts | "
        "Consistent | Quiesced | writer back (s) | isolated after fault (s) | lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| {r['index']} | {r['fault']} | {r['delay']} | {r['landed']} | {r['fault_detail']} | "
          f"{r['phase_at_fault']} | {r['outcome']}/{r['reason']} | "
          f"{', '.join(r['attempts']) or '-'} | {r['consistent']} | {r['quiesced']} | "
          f"{r['writer_back_after_fault']} | {r['longest_isolation_after_fault']} | "
          f"{r['records_lost']} |" for r in rows],
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
