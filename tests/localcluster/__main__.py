"""Command line for the local cluster.

Usage (from the repository root)::

    PYTHONPATH=tests python -m localcluster build
    PYTHONPATH=tests python -m localcluster up [--with-bleater] [--state-dir DIR]
    PYTHONPATH=tests python -m localcluster status [--state-dir DIR]
    PYTHONPATH=tests python -m localcluster down [--state-dir DIR]

``up`` leaves the cluster running in the background and prints ``export KUBECONFIG=...`` as its
last line; ``down`` stops every process it started.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localcluster.build import BuildError, GoToolchainMissingError, ensure_binaries
from localcluster.cluster import DEFAULT_STATE_DIR, ClusterError, LocalCluster


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        choices=["build", "up", "down", "status"],
        help="build the binaries, start, stop, or show the state of the cluster",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where pids, logs, data and the kubeconfig live (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--with-bleater",
        action="store_true",
        help="up: also apply deploy/samples/bleater and wait until its pods are ready",
    )
    parser.add_argument(
        "--without-node",
        action="store_true",
        help="up: do not start the node emulator (control plane and storage only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = parse_args(argv)
    try:
        if args.command == "build":
            print(ensure_binaries())
            return 0
        cluster = LocalCluster(args.state_dir, node_emulator=not args.without_node)
        if args.command == "up":
            cluster.up(apply_bleater=args.with_bleater)
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            return 0
        if args.command == "down":
            cluster.down()
            return 0
        health = cluster.component_health()
        if not health:
            print(f"not running (state dir {cluster.state_dir})")
            return 1
        width = max(len(name) for name in health)
        for name, state in health.items():
            print(f"{name:<{width}}  {state}")
        print(f"kubeconfig: {cluster.kubeconfig}")
        return 0 if all(state == "ok" for state in health.values()) else 1
    except (ClusterError, BuildError, GoToolchainMissingError) as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
