"""Faults inside the freeze window on the local cluster: each test proves the fault happened, then
checks the outcome.

Every test reads each service's `{seq: created_at}` before the fault and, after it, checks that no
record was lost and that the three services hold the same sequences (up to the writer's last
complete write); that the writer is back at its replicas with a Ready pod, writing, without our
annotations; that MongoDB's lock count is 0 and no PostgreSQL session of the group is left (a
backup lives only as long as its session); and that the status's words match what the cluster
shows. Operators run with `--retry-delay 1`; `backoffLimit: 0` where the failed attempt itself is
the end state under test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pymongo import MongoClient

from e2e.bleater import Bleater
from e2e.faults import (
    WRITER,
    FaultOutcome,
    Records,
    assert_records_kept,
    group_pg_sessions,
    kill_mongodb_connections,
    mongo_lock_count,
    operator_pg_sessions,
    read_records,
    record,
    wait_journal,
    wait_writer_back,
)
from e2e.kube import Kube
from e2e.test_bleater_group import condition, sample
from localcluster.fixtures import wait_for
from snapgroup.api.labels import ISOLATED_BY

pytestmark = pytest.mark.cluster

FAST = ("--retry-delay", "1")


class Sampler:
    """Calls `read` every 0.1 s in the background and keeps what it returned, with the time."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self.read = read
        self.seen: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.append((time.monotonic(), self.read()))
            except Exception as exc:  # kept: a failed read is an observation too
                self.seen.append((time.monotonic(), exc))
            self._stop.wait(0.1)

    @contextmanager
    def running(self) -> Iterator[Sampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


def writer_annotations(kube: Kube) -> dict[str, str]:
    return dict(kube.deployment("bleater", WRITER).metadata.annotations or {})


def assert_all_back(kube: Kube, bleater: Bleater, replicas: int, uid: str, before: Records) -> None:
    """The writer back, Ready and writing, nothing locked, no session of the group, nothing lost."""
    kube.wait_pods("bleater", "app=data-writer", replicas)
    assert kube.replicas("bleater", WRITER) == replicas
    assert ISOLATED_BY not in writer_annotations(kube)
    assert mongo_lock_count(bleater) == 0
    wait_for(lambda: group_pg_sessions(bleater, uid) == 0 and operator_pg_sessions(bleater) == 0,
             30, "no PostgreSQL session of the operator")
    assert_records_kept(bleater, before)


def assert_resumed(group: dict[str, Any]) -> dict[str, Any]:
    """The status says the window was thawed, each undo checked (and the cluster showed it)."""
    quiesced = condition(group, "Quiesced")
    assert (quiesced["status"], quiesced["reason"]) == ("False", "Resumed"), quiesced
    return quiesced


def test_budget_runs_out_while_the_writer_drains(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """The writer's pod is blocked inside a write when SIGTERM comes (its MongoDB insert waits on
    an fsync lock this test holds) and needs its grace period (10 s) to go; the budget (3 s) runs
    out while the pod is still terminating. The attempt thaws: the writer is scaled back."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("", *FAST)
    old_pods = {p.metadata.name for p in kube.pods("bleater", "app=data-writer")}
    mongo = bleater.mongo
    with MongoClient(bleater.service_host("mongodb"), 27017, directConnection=True,
                     serverSelectionTimeoutMS=5000, username=mongo["username"],
                     password=mongo["password"], authSource="admin") as client:
        client.admin.command({"fsync": 1, "lock": True})
        try:
            # The writer is inside a tick: PostgreSQL has a record MongoDB does not.
            wait_for(lambda: max(r.seq for r in bleater.records("postgres"))
                     > max(r.seq for r in bleater.records("mongodb")), 10,
                     "the writer blocked inside its MongoDB write")
            created = kube.create_group(sample(group_name, freezeBudget="3s", backoffLimit=0))
            group = kube.wait_group("bleater", group_name, timeout=60)
            # The fault, proven: when the budget ended the attempt, the old pod was still there,
            # terminating (SIGTERM sent, its grace period not over).
            terminating = [p for p in kube.pods("bleater", "app=data-writer")
                           if p.metadata.name in old_pods and p.metadata.deletion_timestamp]
            assert terminating, "the writer's pod was already gone: the budget did not meet a drain"
            failed = condition(group, "Succeeded")
            assert group["status"]["phase"] == "Failed", failed
            assert failed["reason"] == "FreezeBudgetExceeded", failed
            assert kube.replicas("bleater", WRITER) == replicas, "the writer was not scaled back"
            assert ISOLATED_BY not in writer_annotations(kube)
            assert_resumed(group)
        finally:
            client.admin.command({"fsyncUnlock": 1})
    back = wait_writer_back(kube, replicas, time.monotonic())
    assert_all_back(kube, bleater, replicas, created["metadata"]["uid"], before)
    assert not kube.snapshots("bleater", f"snapgroup.dev/group-uid={created['metadata']['uid']}")
    record(FaultOutcome("budget 3s runs out while the writer drains (pod terminating)",
                        group["status"]["phase"], failed["reason"], round(back, 2),
                        f"{len(terminating)} pod(s) still terminating at the end; freeze "
                        f"{group['status']['freeze']['seconds']}s"))


def test_budget_runs_out_while_a_service_quiesces(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """MongoDB's quiesce is held in flight (failpoint `before:service:mongodb=pause:8`, after its
    intent is journaled, before the lock is asked for) past the 3 s budget."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    operator = armed("before:service:mongodb=pause:8", *FAST)
    created = kube.create_group(sample(group_name, freezeBudget="3s", backoffLimit=0))
    uid = created["metadata"]["uid"]
    wait_journal(kube, group_name, "service:mongodb", "Applying")
    in_flight_at = time.monotonic()
    group = kube.wait_group("bleater", group_name, timeout=60)
    ended = time.monotonic()
    # The fault, proven: the quiesce was in flight (the failpoint held it) when the budget ended
    # the attempt, well before the pause would have let it go on.
    assert "failpoint before:service:mongodb: pause:8" in operator.tail(400)
    assert ended - in_flight_at < 8, "the attempt ended only after the quiesce went on"
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "FreezeBudgetExceeded", failed
    assert ("HookApplied", "service:mongodb applied") not in kube.events("bleater", group_name)
    assert float(group["status"]["freeze"]["seconds"]) < 3 + 5, group["status"]["freeze"]
    assert_resumed(group)
    back = wait_writer_back(kube, replicas, ended)
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("budget 3s runs out while MongoDB quiesces", group["status"]["phase"],
                        failed["reason"], round(back, 2),
                        f"attempt ended {ended - in_flight_at:.1f}s after the quiesce started; "
                        f"freeze {group['status']['freeze']['seconds']}s"))


def test_group_deleted_while_queued_never_freezes_anything(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """A second group over the same targets waits (Waiting) behind one whose window is held open;
    deleted, it goes within seconds, its journal empty, the writer never isolated by it."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("cut=pause:8", *FAST)
    first, queued = f"{group_name}-a", f"{group_name}-b"
    running = kube.create_group(sample(first))
    wait_journal(kube, first, "service:minio", "Applied")
    waiting = kube.create_group(sample(queued))
    uid = waiting["metadata"]["uid"]
    watcher = Sampler(lambda: kube.group("bleater", queued))
    annotations = Sampler(lambda: writer_annotations(kube).get(ISOLATED_BY, ""))
    with watcher.running(), annotations.running():
        kube.wait_custom("bleater", "snapshotgroups", queued, lambda g: any(
            c["type"] == "Waiting" and c["status"] == "True"
            for c in (g.get("status") or {}).get("conditions", [])), 30, "Waiting")
        t0 = time.monotonic()
        kube.delete_group("bleater", queued)
        kube.wait_group_gone("bleater", queued, timeout=30)
        gone = time.monotonic() - t0
        group = kube.wait_group("bleater", first)
    seen = [g for _, g in watcher.seen if isinstance(g, dict)]
    assert seen, "the queued group was never observed"
    assert all(not (g.get("status") or {}).get("hooks") for g in seen), "the queued group journaled"
    named = {a for _, a in annotations.seen if isinstance(a, str) and a}
    assert named and all(a.endswith(running["metadata"]["uid"]) for a in named), named
    assert not any(reason == "HookApplied" for reason, _ in kube.events("bleater", queued))
    assert not kube.snapshots("bleater", f"snapgroup.dev/group-uid={uid}")
    assert gone < 10, f"the delete took {gone:.1f}s"
    assert group["status"]["phase"] == "Succeeded", condition(group, "Succeeded")
    assert condition(group, "Consistent")["status"] == "True"
    assert_resumed(group)
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("queued group deleted", "deleted", "never ran", round(gone, 2),
                        f"gone {gone:.2f}s after the delete; {len(seen)} observations, journal "
                        f"empty in each; writer isolated only by {first}"))


def test_group_object_removed_mid_window(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """Deleted while its window is held open, and its finalizer stripped at once (what a person
    does to an object stuck deleting): the object is gone from the API before the operator's
    delete handler is done, and the operator thaws the window all the same, by itself."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("cut=pause:6", *FAST)
    created = kube.create_group(sample(group_name))
    uid = created["metadata"]["uid"]
    wait_journal(kube, group_name, "service:minio", "Applied")
    assert kube.replicas("bleater", WRITER) == 0 and writer_annotations(kube)[ISOLATED_BY].endswith(uid)
    assert mongo_lock_count(bleater) == 1 and group_pg_sessions(bleater, uid) >= 1
    removed_at = time.monotonic()
    # Deleting first: kopf adds its finalizer back to an object that lost it, never to one
    # that is being deleted.
    kube.delete_group("bleater", group_name)
    kube.custom.patch_namespaced_custom_object("snapgroup.dev", "v1alpha1", "bleater",
                                               "snapshotgroups", group_name,
                                               {"metadata": {"finalizers": None}})
    kube.wait_group_gone("bleater", group_name, timeout=5)
    back = wait_writer_back(kube, replicas, removed_at)
    assert_all_back(kube, bleater, replicas, uid, before)
    kube.wait_snapshots_gone("bleater", f"snapgroup.dev/group-uid={uid}")
    kube.wait_event_reasons("bleater", group_name, {"GroupDeleted"})
    events = kube.events("bleater", group_name)
    # The operator stopped the run itself (the safety net did not have to repair anything).
    assert not any(r == "SafetyNetRepaired" for r, _ in events), events
    ended = next(m for r, m in events if r == "GroupDeleted")
    record(FaultOutcome("group object removed mid-window (finalizer stripped)", "gone",
                        "GroupDeleted", round(back, 2), ended[:160]))


def test_mongodb_connections_killed_mid_window(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """The operator's TCP connections to the MongoDB Service are killed (`ss -K`) while the
    window is held open with the server fsync-locked."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    operator = armed("cut=pause:4", *FAST)
    created = kube.create_group(sample(group_name))
    uid = created["metadata"]["uid"]
    wait_journal(kube, group_name, "service:minio", "Applied")
    assert operator.process is not None
    assert mongo_lock_count(bleater) == 1, "MongoDB is not locked: no window is open"
    killed = kill_mongodb_connections(bleater, [operator.process.pid])
    killed_at = time.monotonic()
    assert killed > 0, "no socket of the operator to MongoDB was killed"
    group = kube.wait_group("bleater", group_name)
    back = wait_writer_back(kube, replicas, killed_at)
    assert_resumed(group)
    result = condition(group, "Succeeded")
    if group["status"]["phase"] == "Succeeded":
        assert condition(group, "Consistent")["status"] == "True", condition(group, "Consistent")
    attempts = [a["reason"] for a in group["status"].get("attempts", [])]
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("MongoDB connections killed mid-window", group["status"]["phase"],
                        result["reason"], round(back, 2),
                        f"{killed} socket(s) killed; failed attempts {attempts or 'none'}"))
