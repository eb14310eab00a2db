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


def mongo_admin(bleater: Bleater) -> MongoClient[dict[str, Any]]:
    """A client of bleater's MongoDB (the stand-in) as its admin user; close it after use."""
    return MongoClient(bleater.service_host("mongodb"), 27017, directConnection=True,
                       serverSelectionTimeoutMS=5000, username=bleater.mongo["username"],
                       password=bleater.mongo["password"], authSource="admin")


def mongo_lock_count(bleater: Bleater) -> int:
    """The emulated mongod's fsync lock count, read by locking once and unlocking again."""
    with mongo_admin(bleater) as client:
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


Records = dict[str, dict[int, Any]]
"""Per service, each record's `{seq: created_at}` as the service holds it."""


def read_records(bleater: Bleater) -> Records:
    """Every service's records, `{seq: created_at}`."""
    return {service: {r.seq: r.at for r in bleater.records(service)} for service in SERVICES}


def records_problems(before: Records, after: Records) -> list[str]:
    """What is wrong between two readings: a record lost or changed since `before`, services whose
    sequence sets differ up to the writer's last complete write, gaps. Empty when all is well."""
    problems = []
    for service in SERVICES:
        lost = [seq for seq, at in before[service].items() if after[service].get(seq) != at]
        if lost:
            problems.append(f"{service}: {len(lost)} record(s) lost or changed, e.g. seq {lost[:5]}")
    complete = min(max(after[s], default=0) for s in SERVICES)
    sets = {s: {seq for seq in after[s] if seq <= complete} for s in SERVICES}
    reference = sets[SERVICES[0]]
    for service in SERVICES[1:]:
        if sets[service] != reference:
            differ = sorted(sets[service] ^ reference)[:5]
            problems.append(f"{service}: sequence set differs from {SERVICES[0]} up to {complete}, "
                            f"e.g. seq {differ}")
    for service in SERVICES:
        if not contiguous(sorted(after[service])):
            problems.append(f"{service}: sequence numbers have gaps or duplicates")
    return problems


def lost_records(before: Records, after: Records) -> int:
    """How many records of `before` are missing (or changed) in `after`, over every service."""
    return sum(1 for s in SERVICES for seq, at in before[s].items() if after[s].get(seq) != at)


def assert_records_kept(bleater: Bleater, before: Records) -> Records:
    """Wait for the writer to write again, then assert nothing of `before` was lost and the three
    services hold the same sequences; return the reading."""
    newest = min(max(before[s], default=0) for s in SERVICES)
    bleater.wait_new_records(newest)
    after = read_records(bleater)
    problems = records_problems(before, after)
    assert not problems, problems
    return after


def group_pg_sessions(bleater: Bleater, uid: str) -> int:
    """Open PostgreSQL sessions of one group (application_name `snapgroup:<uid>`)."""
    pg = bleater.pg
    with psycopg.connect(host=pg["host"], port=int(pg["port"]), user=pg["username"],
                         password=pg["password"], dbname=pg["database"], connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                           (f"snapgroup:{uid}",)).fetchone()
        return int(row[0]) if row else 0


def kill_pg_sessions(bleater: Bleater, uid: str) -> int:
    """pg_terminate_backend every session of one group; how many were killed."""
    pg = bleater.pg
    with psycopg.connect(host=pg["host"], port=int(pg["port"]), user=pg["username"],
                         password=pg["password"], dbname=pg["database"], autocommit=True,
                         connect_timeout=5) as conn:
        row = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name = %s", (f"snapgroup:{uid}",)).fetchone()
        return int(row[0]) if row else 0


def kill_mongodb_connections(bleater: Bleater, pids: list[int]) -> int:
    """Kill (`ss -K`) every TCP connection the given processes hold to the MongoDB Service;
    return how many sockets the kernel reports killed."""
    import subprocess

    import psutil

    host = bleater.service_host("mongodb")
    killed = 0
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if not conn.raddr or conn.raddr.ip != host or conn.raddr.port != 27017:
                continue
            out = subprocess.run(
                ["ss", "-K", "-t", "-n", "src", conn.laddr.ip, "sport", "=", f":{conn.laddr.port}",
                 "dst", host, "dport", "=", ":27017"],
                check=True, capture_output=True, text=True, timeout=10).stdout
            killed += sum(1 for line in out.splitlines()[1:] if line.strip())
    return killed
