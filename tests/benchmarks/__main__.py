"""Run the benchmarks on a fresh local cluster and write the report.

Usage (from the repository root)::

    PYTHONPATH=tests python -m benchmarks --report docs/benchmarks     # what `make bench` runs
    PYTHONPATH=tests python -m benchmarks --quick --report /tmp/bench  # a short smoke run
    PYTHONPATH=tests python -m benchmarks --rewrite                    # report.md from results.json

The local cluster is started in a temporary state directory (only one local cluster runs on a
machine at a time: this waits for another to stop) and stopped at the end, with the operator and
every namespace the benchmarks created.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from benchmarks import report
from benchmarks.measure import JSON, progress
from benchmarks.scale import ScaleBenchmark
from benchmarks.single import SingleGroupBenchmark
from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from localcluster.cluster import LocalCluster

OPERATOR_LOG_LEVEL = "INFO"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "benchmarks",
                        help="directory for report.md, results.json and the charts")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 runs, scale rounds of 1 and 3 groups")
    parser.add_argument("--runs", type=int, help="runs of each procedure with one group (default 10)")
    parser.add_argument("--scale", type=lambda s: [int(x) for x in s.split(",")],
                        help="comma-separated group counts (default 1,10,50)")
    parser.add_argument("--lone-repeats", type=int, help="repeats of the one-group scale round (default 5)")
    parser.add_argument("--skip-single", action="store_true", help="skip the operator-vs-naive runs")
    parser.add_argument("--skip-scale", action="store_true", help="skip the scale rounds")
    parser.add_argument("--rewrite", action="store_true",
                        help="only write report.md and the charts again from REPORT/results.json")
    parser.add_argument("--state-dir", type=Path,
                        help="the local cluster's state directory (default: a new temporary one)")
    parser.add_argument("--wait-for-cluster", type=float, default=3600.0,
                        help="seconds to wait for another local cluster on this machine to stop")
    args = parser.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 10)
    args.scale = args.scale or ([1, 3] if args.quick else [1, 10, 50])
    args.lone_repeats = args.lone_repeats or (2 if args.quick else 5)
    return args


def main(argv: list[str] | None = None) -> int:
    """Bring the cluster up, run the benchmarks, write the report, and stop everything."""
    args = parse_args(argv)
    if args.rewrite:
        report.rewrite(args.report)
        return 0
    own_state = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="snapgroup-bench-")) if own_state else args.state_dir
    cluster = LocalCluster(state_dir)
    operator: OperatorProcess | None = None
    results: JSON = {
        "config": {"runs": args.runs, "scale": args.scale, "loneRepeats": args.lone_repeats,
                   "quick": args.quick, "operatorLogLevel": OPERATOR_LOG_LEVEL},
    }
    failed = False
    try:
        cluster.up(apply_bleater=True, wait_for_other_cluster=args.wait_for_cluster)
        cluster.apply_crds(REPO / "crds")
        results["machine"] = report.describe_machine(cluster)
        operator = OperatorProcess(cluster.kubeconfig, cluster.logs_dir / "operator.log",
                                   extra_args=("--log-level", OPERATOR_LOG_LEVEL))
        operator.start()
        kube = Kube(cluster.kubeconfig)
        if not args.skip_single:
            progress(f"one group: {args.runs} runs of the operator and of the naive procedure")
            try:
                results["single"] = SingleGroupBenchmark(cluster, kube, operator, args.runs).run()
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results["single"] = {"error": f"{type(exc).__name__}: {exc}"}
            report.write(args.report, results)
        if not args.skip_scale:
            progress(f"scale: rounds of {', '.join(map(str, args.scale))} groups")
            try:
                results["scale"] = ScaleBenchmark(cluster, kube, operator, args.scale,
                                                  args.lone_repeats).run()
            except Exception as exc:
                failed = True
                traceback.print_exc()
                results["scale"] = {"error": f"{type(exc).__name__}: {exc}"}
        report.write(args.report, results)
        progress(f"report written to {args.report}")
        for target in results.get("targets", []):
            verdict = "met" if target["met"] else "MISSED"
            progress(f"{verdict}: {target['target']}: {target['measured']}")
    finally:
        if operator is not None:
            operator.stop()
            log = cluster.logs_dir / "operator.log"
            if failed and log.exists():
                print(operator.tail(80), file=sys.stderr)
        cluster.down()
        if own_state and not failed:
            shutil.rmtree(state_dir, ignore_errors=True)
        elif own_state:
            progress(f"kept the cluster's state and logs in {state_dir}")
    print(json.dumps({t["target"]: t["met"] for t in results.get("targets", [])}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
