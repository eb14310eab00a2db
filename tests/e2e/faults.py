"""Shared checks of the fault matrix: after any fault, nothing is left frozen and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from pymongo import MongoClient

from e2e.bleater import SERVICES, Bleater, contiguous
from e2e.kube import Kube

WRITER = "data-writer"
REPORT_ENV = "SNAPGROUP_FAULT_REPORT"
"""Where to collect the matrix as JSON (set by whoever wants the table; unset in plain runs)."""


@dataclass
class FaultOutcome:
    """One row of the fault matrix."""

    fault: str
    phase: str
    reason: str
    writers_back_seconds: float
    message: str


def mongo_lock_count(bleater: Bleater) -> int:
    """The emulated mongod's fsync lock count, read by locking once and unlocking again."""
    host = bleater.service_host("mongodb")
    with MongoClient(host, 27017, directConnection=True, serverSelectionTimeoutMS=5000,
                     username=bleater.mongo["username"], password=bleater.mongo["password"],
                     authSource="admin") as client:
        after_lock = int(client.admin.command({"fsync": 1, "lock": True})["lockCount"])
        client.admin.command({"fsyncUnlock": 1})
        return after_lock - 1


def operator_pg_sessions(bleater: Bleater) -> int:
    """PostgreSQL sessions the operator holds; a backup lives only as long as its session."""
    pg = bleater.pg
    with psycopg.connect(host=pg["host"], port=int(pg["port"]), user=pg["username"],
                         password=pg["password"], dbname=pg["database"], connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'snapgroup%'"
        ).fetchone()
        return int(row[0]) if row else 0


def wait_writer_back(kube: Kube, replicas: int, since: float, timeout: float = 120.0) -> float:
    """Wait until the writer has its replicas and a Ready pod; seconds since `since`."""
    deadline = time.monotonic() + timeout
    while kube.replicas("bleater", WRITER) != replicas:
        if time.monotonic() > deadline:
            raise AssertionError(f"writer not back at {replicas} replicas within {timeout}s")
        time.sleep(0.1)  # polling the Deployment for the operator's restore
    kube.wait_pods("bleater", "app=data-writer", replicas, timeout=timeout)
    return time.monotonic() - since


def assert_nothing_frozen_or_lost(kube: Kube, bleater: Bleater, replicas: int) -> None:
    """Writer at its replicas and writing, MongoDB unlocked, no backup session, no record lost."""
    assert kube.replicas("bleater", WRITER) == replicas
    assert mongo_lock_count(bleater) == 0
    assert operator_pg_sessions(bleater) == 0
    newest = min(max(r.seq for r in bleater.records(s)) for s in SERVICES)
    bleater.wait_new_records(newest)
    for service in SERVICES:
        seqs = [r.seq for r in bleater.records(service)]
        assert contiguous(seqs), f"{service}: sequence numbers have gaps or duplicates"


def hook_state(group: dict[str, Any] | None, key: str) -> str | None:
    """The journal state of one hook in a group's status, or None before it is journaled."""
    for hook in ((group or {}).get("status") or {}).get("hooks", []):
        if hook["name"] == key:
            return str(hook["state"])
    return None


def wait_journal(kube: Kube, name: str, key: str, state: str, timeout: float = 60.0) -> None:
    """Watch a bleater group until the hook `key` is journaled in `state`."""
    kube.wait_custom("bleater", "snapshotgroups", name,
                     lambda g: hook_state(g, key) == state, timeout, f"{key} {state}")


def stop_component(local_cluster: Any, name: str, timeout: float = 30.0) -> None:
    """Kill one component of the cluster and wait until the cluster reports it dead."""
    os.kill(local_cluster.pids()[name], signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while name not in local_cluster.failed_components():
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} still reported running {timeout}s after SIGKILL")
        time.sleep(0.1)  # waiting for the killed process to be reaped


def record(outcome: FaultOutcome) -> None:
    """Add a row to the fault report, when one is asked for."""
    print(f"fault matrix: {asdict(outcome)}")
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    path = Path(target)
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [r for r in rows if r["fault"] != outcome.fault] + [asdict(outcome)]
    path.write_text(json.dumps(rows, indent=2) + "\n")
