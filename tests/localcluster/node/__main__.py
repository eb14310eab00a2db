"""`python -m localcluster.node`: run the node emulator (a kubelet stand-in) for the local cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from .emulator import run_node
from .kubelet import NodeConfig
from .runtimes import DEFAULT_POSTGRES_BIN_DIR


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.node",
        description="Node emulator: registers a Node, binds pending pods to it and runs the "
        "images it knows as local processes, with a loopback service proxy.",
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="local cluster state directory (CSI data in STATE/csi)"
    )
    parser.add_argument(
        "--bin-dir", type=Path, required=True, help="directory with the ferretdb and s3server binaries"
    )
    parser.add_argument("--node-name", default="local-node")
    parser.add_argument("--postgres-bin-dir", type=Path, default=DEFAULT_POSTGRES_BIN_DIR)
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=10.0,
        help="longest a pod may take to stop when the emulator exits",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # urllib3 warns on every connection retry; the emulator logs failures itself.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    config = NodeConfig(
        node_name=args.node_name,
        state_dir=args.state_dir.resolve(),
        bin_dir=args.bin_dir.resolve(),
        postgres_bin_dir=args.postgres_bin_dir,
        shutdown_grace_seconds=args.shutdown_grace_seconds,
    )
    asyncio.run(run_node(args.kubeconfig, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
