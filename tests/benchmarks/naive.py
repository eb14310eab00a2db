"""The naive procedure the operator is measured against: one step after the other, by hand.

What a careful person or a shell script does without the operator, with the same clients the
operator has (kubernetes, psycopg, pymongo):

1. scale the writer to 0 and wait until its pods are gone (the rollout);
2. ``pg_backup_start`` on a session held open, then MongoDB ``fsync`` with ``lock: true``;
3. create each VolumeSnapshot in turn, waiting for ``readyToUse`` before the next;
4. ``fsyncUnlock``, ``pg_backup_stop``, and scale the writer back.

The freeze window runs from the scale-down request to the scale-back request. The database
connections are opened before it, as a script would set up first; so the comparison is of the
procedure, not of connection set-up.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pymongo import MongoClient

from benchmarks.measure import JSON, watch_until
from e2e.bleater import Bleater
from e2e.kube import Kube

SNAPSHOT_GROUP, SNAPSHOT_VERSION, SNAPSHOT_PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshots"
NAIVE_LABEL = "benchmarks.snapgroup.dev/naive"
PVCS = ("postgres-data", "mongodb-data", "minio-data")
"""The bleater sample's volumes, in the order the procedure snapshots them."""
WRITER = "data-writer"
WRITER_SELECTOR = "app=data-writer"
STEP_TIMEOUT = 180.0
"""Bound of each waiting step, in seconds."""


@dataclass
class NaiveRun:
    """The timings of one naive run, in seconds."""

    name: str
    window: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    snapshots: dict[str, float] = field(default_factory=dict)
    """Seconds from each VolumeSnapshot's creation to readyToUse."""
    snapshot_walls: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Wall-clock (epoch) times of each VolumeSnapshot's create request and of readyToUse seen."""
    waits: float = 0.0
    """Seconds spent waiting on pods and snapshots (the rest is the procedure's own share)."""
    backup_lsns: tuple[str, str] = ("", "")
    lock_count: int = 0

    def as_json(self) -> JSON:
        """The run as plain data for results.json."""
        return {
            "name": self.name,
            "window": round(self.window, 3),
            "steps": {k: round(v, 3) for k, v in self.steps.items()},
            "snapshotSeconds": {k: round(v, 3) for k, v in self.snapshots.items()},
            "own": round(self.window - self.waits, 3),
            "backupLSNs": list(self.backup_lsns),
            "lockCount": self.lock_count,
        }


class NaiveProcedure:
    """Runs the naive procedure against the bleater namespace."""

    def __init__(self, kube: Kube, bleater: Bleater, snapshot_class: str) -> None:
        self.kube = kube
        self.bleater = bleater
        self.namespace = bleater.namespace
        self.snapshot_class = snapshot_class

    def run(self, name: str) -> NaiveRun:
        """One naive run; the writer is always scaled back and the databases released."""
        result = NaiveRun(name)
        replicas = self.kube.replicas(self.namespace, WRITER)
        pg = self.bleater.pg
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(psycopg.connect(
                host=pg["host"], port=int(pg["port"]), user=pg["username"], password=pg["password"],
                dbname=pg["database"], autocommit=True, connect_timeout=5,
                application_name="benchmark-naive-backup"))
            mongo: MongoClient[dict[str, Any]] = stack.enter_context(MongoClient(
                self.bleater.service_host("mongodb"), 27017, directConnection=True,
                serverSelectionTimeoutMS=5000, username=self.bleater.mongo["username"],
                password=self.bleater.mongo["password"], authSource="admin"))
            mongo.admin.command("ping")
            session.execute("SELECT 1")

            started = time.monotonic()
            backup_started = locked = False
            start_lsn = stop_lsn = ""
            try:
                self.kube.scale(self.namespace, WRITER, 0)
                result.steps["drainRequest"] = time.monotonic() - started
                t = time.monotonic()
                self._wait_writer_gone()
                result.steps["drainWait"] = time.monotonic() - t

                t = time.monotonic()
                row = session.execute("SELECT pg_backup_start(%s, true)::text", (name,)).fetchone()
                backup_started = True
                start_lsn = str(row[0]) if row else ""
                lock = mongo.admin.command({"fsync": 1, "lock": True})
                locked = True
                result.lock_count = int(lock.get("lockCount", 0))
                result.steps["quiesce"] = time.monotonic() - t

                t = time.monotonic()
                for pvc in PVCS:
                    created = time.time()
                    result.snapshots[pvc] = self._snapshot(name, pvc)
                    result.snapshot_walls[pvc] = (created, time.time())
                result.steps["snapshots"] = time.monotonic() - t
            finally:
                t = time.monotonic()
                if locked:
                    mongo.admin.command({"fsyncUnlock": 1})
                if backup_started:
                    row = session.execute("SELECT lsn::text FROM pg_backup_stop(false)").fetchone()
                    stop_lsn = str(row[0]) if row else ""
                self.kube.scale(self.namespace, WRITER, replicas)
                ended = time.monotonic()
                result.steps["resume"] = ended - t
                result.window = ended - started
        result.backup_lsns = (start_lsn, stop_lsn)
        result.waits = result.steps["drainWait"] + sum(result.snapshots.values())
        return result

    def _wait_writer_gone(self) -> None:
        watch_until(
            self.kube.core.list_namespaced_pod, self.namespace, label_selector=WRITER_SELECTOR,
            predicate=lambda pods: not pods, timeout=STEP_TIMEOUT, what="writer pods gone")

    def _snapshot(self, run: str, pvc: str) -> float:
        """Create one VolumeSnapshot and wait until it is readyToUse; return the seconds taken."""
        name = f"{run}-{pvc}"
        started = time.monotonic()
        self.kube.custom.create_namespaced_custom_object(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, SNAPSHOT_PLURAL,
            {
                "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
                "kind": "VolumeSnapshot",
                "metadata": {"name": name, "labels": {NAIVE_LABEL: run}},
                "spec": {
                    "volumeSnapshotClassName": self.snapshot_class,
                    "source": {"persistentVolumeClaimName": pvc},
                },
            },
        )
        watch_until(
            self.kube.custom.list_namespaced_custom_object, SNAPSHOT_GROUP, SNAPSHOT_VERSION,
            self.namespace, SNAPSHOT_PLURAL, field_selector=f"metadata.name={name}",
            predicate=lambda snaps: any((s.get("status") or {}).get("readyToUse") for s in snaps.values()),
            timeout=STEP_TIMEOUT, what=f"VolumeSnapshot {name} readyToUse")
        return time.monotonic() - started

    def clean_up(self, run: str) -> None:
        """Delete the run's VolumeSnapshots and wait until they are gone."""
        self.kube.custom.delete_collection_namespaced_custom_object(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, SNAPSHOT_PLURAL,
            label_selector=f"{NAIVE_LABEL}={run}")
        watch_until(
            self.kube.custom.list_namespaced_custom_object, SNAPSHOT_GROUP, SNAPSHOT_VERSION,
            self.namespace, SNAPSHOT_PLURAL, label_selector=f"{NAIVE_LABEL}={run}",
            predicate=lambda snaps: not snaps, timeout=STEP_TIMEOUT, what=f"snapshots of {run} deleted")
