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

from e2e.bleater import Bleater
from e2e.faults import (
    WRITER,
    FaultOutcome,
    Records,
    assert_records_kept,
    group_pg_sessions,
    kill_mongodb_connections,
    mongo_admin,
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

FAST = ("--retry-delay", "1", "--leader-election-namespace", "default")
"""Quick retries; the servers' exclusion Leases in an operator namespace, as in a pod."""


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


def remove_group(kube: Kube, name: str, timeout: float) -> None:
    """Delete a bleater group and strip its finalizer (what a person does to an object stuck
    deleting); return once it is gone from the API. Deleting first: kopf adds its finalizer
    back to an object that lost it, never to one that is being deleted."""
    kube.delete_group("bleater", name)
    kube.custom.patch_namespaced_custom_object("snapgroup.dev", "v1alpha1", "bleater",
                                               "snapshotgroups", name, {"metadata": {"finalizers": None}})
    kube.wait_group_gone("bleater", name, timeout=timeout)


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
    with mongo_admin(bleater) as client:
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


def fsync_state(client: Any) -> tuple[bool, list[str]]:
    """What mongod's currentOp shows: locked?, and the appNames of fsync locks being taken."""
    reply = client.admin.command("currentOp")
    return bool(reply.get("fsyncLock")), [
        op.get("appName", "") for op in reply.get("inprog", []) if op.get("command", {}).get("fsync")]


@contextmanager
def slow_flush(bleater: Bleater, seconds: float) -> Iterator[Sampler]:
    """The next fsync lock flushes for `seconds` before it is taken (the stand-in's fail point
    slowFsyncLockFlush, server side); the server's lock state sampled meanwhile."""
    with mongo_admin(bleater) as client:
        client.admin.command({"configureFailPoint": "slowFsyncLockFlush", "mode": {"times": 1},
                              "data": {"seconds": seconds}})
        try:
            with Sampler(lambda: fsync_state(client)).running() as sampler:
                yield sampler
        finally:
            client.admin.command({"configureFailPoint": "slowFsyncLockFlush", "mode": "off"})


def late_lock(sampler: Sampler, uid: str) -> tuple[float, float]:
    """When the group's lock call was first seen still running on the server, and when it was
    first seen done with the server locked; fails unless both were seen, in that order."""
    states = [(t, v) for t, v in sampler.seen if isinstance(v, tuple)]
    running = [t for t, (_, names) in states if f"snapgroup:{uid}" in names]
    assert running, "the group's lock call was never seen still running on the server"
    landed = [t for t, (is_locked, names) in states
              if is_locked and f"snapgroup:{uid}" not in names and t > min(running)]
    assert landed, "the lock was never seen taken after the call"
    return min(running), min(landed)


def test_budget_runs_out_while_mongodb_flushes_slowly(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """MongoDB's flush under the lock takes 10 s on the server, the budget is 3 s: the attempt
    ends while the lock call still runs there, and the lock lands seconds after the operator
    gave up on the call, with nobody waiting for its answer. The undo finds the call in
    currentOp, waits for the lock, and unlocks it."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("", *FAST)
    with slow_flush(bleater, 10) as sampler:
        created = kube.create_group(sample(group_name, freezeBudget="3s", backoffLimit=0))
        uid = created["metadata"]["uid"]
        group = kube.wait_group("bleater", group_name, timeout=90)
    ended = time.monotonic()
    # The fault, proven: the server had the group's call in flight, unlocked, and took the
    # lock only after longer than the budget.
    flushing, landed = late_lock(sampler, uid)
    assert landed - flushing > 3, f"the lock was taken {landed - flushing:.1f}s into the call"
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "FreezeBudgetExceeded", failed
    mongodb = next(h for h in group["status"]["hooks"] if h["name"] == "service:mongodb")
    assert "its lock landed" in mongodb["message"] and "lock count back to 0" in mongodb["message"]
    assert_resumed(group)
    back = wait_writer_back(kube, replicas, ended)
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("budget 3s runs out while MongoDB flushes slowly (server side)",
                        group["status"]["phase"], failed["reason"], round(back, 2),
                        f"lock landed {landed - flushing:.1f}s after the call was seen running; "
                        f"{mongodb['message'][:90]}"))


def test_a_service_call_timeout_is_enforced_and_its_late_lock_undone(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """MongoDB's `connection.timeout` (2 s) bounds the lock call while the server flushes for
    8 s, with a budget (60 s) that would have waited: the attempt fails on the call's timeout,
    and the lock that lands later is unlocked."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("", *FAST)
    doc = sample(group_name, backoffLimit=0)
    for service in doc["spec"]["services"]:
        if service["type"] == "mongodb":
            service["connection"]["timeout"] = "2s"
    with slow_flush(bleater, 8) as sampler:
        created = kube.create_group(doc)
        uid = created["metadata"]["uid"]
        group = kube.wait_group("bleater", group_name, timeout=90)
    ended = time.monotonic()
    flushing, landed = late_lock(sampler, uid)
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "Timeout", failed
    assert "did not answer within 2s" in group["status"]["message"], group["status"]["message"]
    mongodb = next(h for h in group["status"]["hooks"] if h["name"] == "service:mongodb")
    assert "its lock landed" in mongodb["message"], mongodb
    assert_resumed(group)
    back = wait_writer_back(kube, replicas, ended)
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("MongoDB call timeout 2s, flush 8s (server side)", group["status"]["phase"],
                        failed["reason"], round(back, 2),
                        f"lock landed {landed - flushing:.1f}s after the call was seen running"))


def test_a_hook_steps_timeout_is_enforced_while_the_writer_drains(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """The writer is stopped by a pre hook step (`type: scale`, `timeout: 2s`) instead of
    spec.writers. Its pod is inside a write when SIGTERM comes (its MongoDB insert waits on an
    fsync lock this test holds, as in the drain test) and needs its grace period (10 s): the
    step's own timeout ends the attempt, long before the 60 s budget."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    armed("", *FAST)
    old_pods = {p.metadata.name for p in kube.pods("bleater", "app=data-writer")}
    step = {"name": "stop-writer", "type": "scale", "timeout": "2s",
            "params": {"kind": "Deployment", "name": WRITER}}
    with mongo_admin(bleater) as client:
        client.admin.command({"fsync": 1, "lock": True})
        try:
            wait_for(lambda: max(r.seq for r in bleater.records("postgres"))
                     > max(r.seq for r in bleater.records("mongodb")), 10,
                     "the writer blocked inside its MongoDB write")
            created = kube.create_group(
                sample(group_name, writers=[], hooks={"pre": [step]}, backoffLimit=0))
            uid = created["metadata"]["uid"]
            group = kube.wait_group("bleater", group_name, timeout=60)
            ended = time.monotonic()
            # The fault, proven: the old pod was still terminating when the attempt ended.
            terminating = [p for p in kube.pods("bleater", "app=data-writer")
                           if p.metadata.name in old_pods and p.metadata.deletion_timestamp]
            assert terminating, "the writer's pod was already gone: the timeout did not meet a drain"
        finally:
            client.admin.command({"fsyncUnlock": 1})
    failed = condition(group, "Succeeded")
    assert group["status"]["phase"] == "Failed" and failed["reason"] == "HookTimeout", failed
    assert "within its timeout of 2s" in group["status"]["message"], group["status"]["message"]
    assert float(group["status"]["freeze"]["seconds"]) < 30, group["status"]["freeze"]
    assert_resumed(group)
    back = wait_writer_back(kube, replicas, ended)
    assert_all_back(kube, bleater, replicas, uid, before)
    record(FaultOutcome("hook step timeout 2s while the writer drains", group["status"]["phase"],
                        failed["reason"], round(back, 2),
                        f"{len(terminating)} pod(s) terminating at the end; freeze "
                        f"{group['status']['freeze']['seconds']}s"))


def test_the_safety_net_repairs_a_window_whose_group_vanished_while_the_operator_was_down(
    armed: Any, kube: Kube, bleater: Bleater, group_name: str
) -> None:
    """SIGKILL mid-window, then the group deleted with its finalizer stripped while no operator
    runs: no journal is left to recover from. The next operator's safety net finds the MongoDB
    lock by the quiesce record on the server's Lease and the writer by its annotations."""
    replicas = kube.replicas("bleater", WRITER)
    bleater.wait_new_records(0)
    before = read_records(bleater)
    crashing = armed("cut=pause:60", *FAST)
    created = kube.create_group(sample(group_name))
    uid = created["metadata"]["uid"]
    wait_journal(kube, group_name, "service:minio", "Applied")
    crashing.kill()
    remove_group(kube, group_name, timeout=10)
    # The fault, proven: no operator, no group, and the window's effects still in place.
    assert crashing.process is not None and crashing.process.poll() is not None
    assert kube.replicas("bleater", WRITER) == 0 and writer_annotations(kube)[ISOLATED_BY].endswith(uid)
    assert mongo_lock_count(bleater) == 1
    restarted_at = time.monotonic()
    repairing = armed("", *FAST)
    back = wait_writer_back(kube, replicas, restarted_at)
    with mongo_admin(bleater) as client:
        wait_for(lambda: fsync_state(client) == (False, []), 60, "the MongoDB lock lowered")
    assert_all_back(kube, bleater, replicas, uid, before)
    kube.wait_event_reasons("bleater", group_name, {"SafetyNetRepaired"})
    messages = [m for r, m in kube.events("bleater", group_name) if r == "SafetyNetRepaired"]
    assert any(m.startswith("mongodb server of service:mongodb (Lease default/") for m in messages), messages
    assert any(m.startswith(f"Deployment bleater/{WRITER}") for m in messages), messages
    scraped = repairing.scrape()
    for target in ("mongodb", "Deployment"):
        assert any(line.startswith("snapgroup_safety_net_repairs_total{") and f'target="{target}"' in line
                   and 'outcome="repaired"' in line and not line.endswith(" 0.0")
                   for line in scraped.splitlines()), target
    record(FaultOutcome("operator SIGKILLed mid-window, group removed while it was down", "gone",
                        "SafetyNetRepaired", round(back, 2), "; ".join(messages)[:160]))


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
    remove_group(kube, group_name, timeout=5)
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
