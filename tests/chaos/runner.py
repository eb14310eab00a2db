"""Groups back to back on the bleater sample, each with one random fault at a random instant.

Two operator replicas run with leader election. For each group the runner reads every service's
records, creates the group, waits a random delay and injects one fault, then waits for the group's
end and checks the world: the writer back at its replicas with a Ready pod and writing, without
our annotations; MongoDB's lock count 0; no PostgreSQL session of the group left (a backup lives
only as long as its session); no record lost and the three services holding the same sequences.
Every number in the report is read from what happened, and each fault records whether it landed
(a process killed, a socket killed, a session terminated, the API server restarted while the
group was running).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from e2e.bleater import Bleater
from e2e.faults import (
    WRITER,
    Records,
    group_pg_sessions,
    kill_mongodb_connections,
    kill_pg_sessions,
    lost_records,
    mongo_lock_count,
    operator_pg_sessions,
    read_records,
    records_problems,
    stop_component,
)
from e2e.kube import TERMINAL, Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import sample
from snapgroup.api.labels import ISOLATED_BY

FAULTS = (
    "operator-sigkill",          # the leader SIGKILLed and restarted at once (a pod restart)
    "leader-kill",               # the leader SIGKILLed; the standby takes over, then it comes back
    "api-server-restart",        # kube-apiserver SIGKILLed and started again
    "postgres-session-killed",   # pg_terminate_backend of the group's `snapgroup:<uid>` sessions
    "mongodb-connections-killed",  # ss -K of the operators' connections to the MongoDB Service
    "budget-expiry",             # a freeze budget that runs out at a random instant of the window
    "deletion",                  # the group deleted
)

GROUP_TIMEOUT = 300.0
"""Longest a group may take to end (attempts, retries and a failover included)."""


@dataclass
class GroupResult:
    """What one group went through and how it ended, all of it observed."""

    index: int
    group: str
    fault: str
    delay: float
    landed: bool
    fault_detail: str
    phase_at_fault: str
    writer_isolated_at_fault: bool
    outcome: str
    reason: str
    attempts: list[str]
    consistent: str
    quiesced: str
    writer_back_after_fault: float
    """Seconds from the fault until the writer isolated at that instant was scaled back."""
    longest_isolation_after_fault: float
    writers_left_isolated: int
    locks_left: int
    pg_sessions_left: int
    records_lost: int
    record_problems: list[str]
    seconds: float
    operator_restarts: int = 0
    notes: list[str] = field(default_factory=list)


class WriterSampler:
    """Samples the writer Deployment's replicas in the background, so isolations can be timed."""

    def __init__(self, kube: Kube, interval: float = 0.2) -> None:
        self.kube, self.interval = kube, interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WriterSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            # The API server is down during its restart: no sample then.
            with contextlib.suppress(Exception):
                self.samples.append((time.monotonic(), self.kube.replicas("bleater", WRITER)))
            self._stop.wait(self.interval)

    def isolated_at(self, at: float) -> bool:
        """Whether the writer was at zero replicas at the last sample before `at`."""
        before = [r for t, r in self.samples if t <= at]
        return bool(before) and before[-1] == 0

    def restored_after(self, at: float, end: float) -> float:
        """Seconds from `at` until the writer left the isolation under way at `at` (0 if none)."""
        if not self.isolated_at(at):
            return 0.0
        after = next((t for t, r in self.samples if at < t <= end and r != 0), end)
        return after - at

    def isolation_after(self, at: float, end: float) -> float:
        """Seconds from `at` to the end of the writer's isolation that is under way at `at` or
        starts after it, the longest such stretch up to `end` (0 when the writer was never at 0)."""
        longest, start = 0.0, None
        for t, replicas in [s for s in self.samples if s[0] <= end]:
            if replicas == 0 and start is None:
                start = t
            elif replicas != 0 and start is not None:
                if t >= at:
                    longest = max(longest, t - max(start, at))
                start = None
        if start is not None:
            longest = max(longest, end - max(start, at))
        return longest


class Replicas:
    """Two `snapgroup run --leader-elect` processes sharing one leader Lease."""

    def __init__(self, make: Callable[[int], OperatorProcess]) -> None:
        self.make = make
        self.processes = [make(0), make(1)]
        self.restarts = 0

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def leader(self, timeout: float = 60.0) -> OperatorProcess:
        """The replica that holds the Lease now."""
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.process is not None and process.process.poll() is None:
                    try:
                        if process.health().get("leader"):
                            return process
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                raise RuntimeError("no replica leads")
            time.sleep(0.2)

    def pids(self) -> list[int]:
        return [p.process.pid for p in self.processes if p.process is not None and p.process.poll() is None]

    def revive(self) -> int:
        """Start again any replica that has exited (as Kubernetes restarts a pod); how many."""
        revived = 0
        for process in self.processes:
            if process.process is None or process.process.poll() is not None:
                process.start()
                revived += 1
        self.restarts += revived
        return revived


def condition(group: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((group or {}).get("status") or {}).get("conditions", []):
        if cond["type"] == type_:
            return dict(cond)
    return {}


class Chaos:
    """Runs the groups; `cluster` is the LocalCluster (for the API server restart)."""

    def __init__(self, cluster: Any, kube: Kube, bleater: Bleater, replicas: Replicas,
                 rng: random.Random, prefix: str, hold: float, log: Callable[[str], None] = print
                 ) -> None:
        self.cluster, self.kube, self.bleater, self.replicas = cluster, kube, bleater, replicas
        self.rng, self.prefix, self.hold, self.log = rng, prefix, hold, log
        self.writer_replicas = kube.replicas("bleater", WRITER)

    def plan(self, groups: int) -> list[str]:
        """Every fault about equally often, in a seeded random order."""
        faults = [FAULTS[i % len(FAULTS)] for i in range(groups)]
        self.rng.shuffle(faults)
        return faults

    def run(self, groups: int, deadline: float, sampler: WriterSampler) -> list[GroupResult]:
        results = []
        for index, fault in enumerate(self.plan(groups)):
            if time.monotonic() > deadline:
                self.log(f"time bound reached after {index} groups")
                break
            result = self.one(index, fault, sampler)
            self.log(f"[{index + 1}/{groups}] {result.group}: {fault} after {result.delay:.2f}s "
                     f"(landed={result.landed}: {result.fault_detail}) -> {result.outcome}/"
                     f"{result.reason} attempts={result.attempts} consistent={result.consistent} "
                     f"writer back {result.writer_back_after_fault:.1f}s lost={result.records_lost} "
                     f"locks={result.locks_left} isolated={result.writers_left_isolated}")
            results.append(result)
        return results

    # -- one group ---------------------------------------------------------------------------

    def one(self, index: int, fault: str, sampler: WriterSampler) -> GroupResult:
        name = f"{self.prefix}-{index + 1:02d}"
        restarts_before = self.replicas.restarts
        self.bleater.wait_new_records(0)
        before = read_records(self.bleater)
        changes: dict[str, Any] = {}
        # The window (writer drain + quiesce + the held cut) lasts about 1.5 s + hold; a budget
        # drawn inside it runs out at a random instant of the window.
        budget = round(self.rng.uniform(0.8, 1.5 + self.hold), 1)
        if fault == "budget-expiry":
            changes["freezeBudget"] = f"{budget}s"
        delay = round(self.rng.uniform(0.0, 2.0 + self.hold), 2)
        started = time.monotonic()
        created = self.kube.create_group(sample(name, **changes))
        uid = created["metadata"]["uid"]
        time.sleep(delay if fault != "budget-expiry" else 0)
        fault_at = time.monotonic()
        group_now = self.kube.group("bleater", name)
        phase_at_fault = ((group_now or {}).get("status") or {}).get("phase", "none")
        landed, detail = self.inject(fault, name, uid, budget)
        if fault == "budget-expiry":
            fault_at = self.budget_instant(sampler, started, budget)
        isolated_at_fault = sampler.isolated_at(fault_at)

        notes: list[str] = []
        group = self.wait_end(name, fault, notes)
        self.replicas.revive()
        self.wait_writer_back(fault_at, notes)  # replicas back and a Ready pod, before the checks
        sampler_end = time.monotonic()
        back = sampler.restored_after(fault_at, sampler_end)
        locks = self.settle(lambda: mongo_lock_count(self.bleater), 30)
        sessions = self.settle(lambda: group_pg_sessions(self.bleater, uid)
                               + operator_pg_sessions(self.bleater), 30)
        isolated = self.writers_isolated()
        after = self.records_after(before, notes)
        status = (group or {}).get("status") or {}
        succeeded = condition(group, "Succeeded")
        if fault == "budget-expiry":  # landed when an attempt of the group ran out of budget
            reasons = [a.get("reason") for a in status.get("attempts", [])] + [succeeded.get("reason")]
            landed = "FreezeBudgetExceeded" in reasons
            detail += f"; {reasons.count('FreezeBudgetExceeded')} attempt(s) ran out of it"
            isolated_at_fault = landed
        quiesced = condition(group, "Quiesced")
        return GroupResult(
            index=index + 1, group=name, fault=fault, delay=delay, landed=landed,
            fault_detail=detail, phase_at_fault=phase_at_fault,
            writer_isolated_at_fault=isolated_at_fault,
            outcome="Deleted" if group is None else str(status.get("phase")),
            reason=self.deleted_reason(name) if group is None else str(succeeded.get("reason")),
            attempts=[str(a.get("reason")) for a in status.get("attempts", [])],
            consistent=str(condition(group, "Consistent").get("status", "-")),
            quiesced=f"{quiesced.get('status', '-')}/{quiesced.get('reason', '-')}",
            writer_back_after_fault=round(back, 2),
            longest_isolation_after_fault=round(sampler.isolation_after(fault_at, sampler_end), 2),
            writers_left_isolated=isolated, locks_left=locks, pg_sessions_left=sessions,
            records_lost=lost_records(before, after), record_problems=records_problems(before, after),
            seconds=round(time.monotonic() - started, 1),
            operator_restarts=self.replicas.restarts - restarts_before, notes=notes,
        )

    def inject(self, fault: str, name: str, uid: str, budget: float) -> tuple[bool, str]:
        """Inject the fault now; whether it landed, and what was seen."""
        if fault in ("operator-sigkill", "leader-kill"):
            leader = self.replicas.leader()
            running = self.group_running(name)
            assert leader.process is not None
            victim = leader.process.pid
            leader.kill()
            code = leader.process.returncode
            killed = code == -9
            if fault == "operator-sigkill":
                leader.start()
                return killed and running, (f"leader pid {victim} ended with {code} (SIGKILL is -9), "
                                            f"restarted as pid {leader.process.pid}")
            other = next(p for p in self.replicas.processes if p is not leader)
            took = self.wait_leading(other, 60)
            leader.start()
            return killed and running, f"leader SIGKILLed, standby led after {took:.1f}s"
        if fault == "api-server-restart":
            running = self.group_running(name)
            t0 = time.monotonic()
            stop_component(self.cluster, "kube-apiserver")
            self.cluster.restart_component("kube-apiserver")
            return running, f"API server down {time.monotonic() - t0:.1f}s"
        if fault == "postgres-session-killed":
            killed = kill_pg_sessions(self.bleater, uid)
            return killed > 0, f"{killed} session(s) of snapgroup:{uid[:8]} terminated"
        if fault == "mongodb-connections-killed":
            killed = kill_mongodb_connections(self.bleater, self.replicas.pids())
            return killed > 0, f"{killed} socket(s) killed"
        if fault == "budget-expiry":
            return True, f"freezeBudget {budget}s"
        if fault == "deletion":
            running = self.group_running(name)
            t0 = time.monotonic()
            self.kube.delete_group("bleater", name)
            returned = time.monotonic() - t0
            return running, f"delete returned in {returned:.2f}s"
        raise ValueError(fault)

    def group_running(self, name: str) -> bool:
        """Whether the group exists and is not terminal (so a fault now hits it)."""
        try:
            group = self.kube.group("bleater", name)
        except ApiException:
            return False
        return group is not None and ((group.get("status") or {}).get("phase") not in TERMINAL)

    def wait_leading(self, process: OperatorProcess, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if process.health().get("leader"):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.2)
        return time.monotonic() - t0

    def budget_instant(self, sampler: WriterSampler, since: float, budget: float) -> float:
        """When the first attempt's budget ran out: its first isolation plus the budget."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            first = next((t for t, r in sampler.samples if t >= since and r == 0), None)
            if first is not None:
                return first + budget
            time.sleep(0.1)
        return since + budget

    def wait_end(self, name: str, fault: str, notes: list[str]) -> dict[str, Any] | None:
        """The group once terminal (None once deleted and gone)."""
        deadline = time.monotonic() + GROUP_TIMEOUT
        while time.monotonic() < deadline:
            self.replicas.revive()  # a leader that exited (lost its Lease) comes back as a pod would
            try:
                group = self.kube.group("bleater", name)
            except Exception as exc:  # the API server restarting
                notes.append(f"read failed: {type(exc).__name__}")
                time.sleep(0.5)
                continue
            if group is None:
                return None
            if ((group.get("status") or {}).get("phase")) in TERMINAL:
                return group
            time.sleep(0.3)
        notes.append(f"not terminal after {GROUP_TIMEOUT:.0f}s")
        return self.kube.group("bleater", name)

    def wait_writer_back(self, since: float, notes: list[str]) -> float:
        """Seconds from `since` until the writer has its replicas and Ready pods."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.kube.replicas("bleater", WRITER) == self.writer_replicas:
                    pods = self.kube.pods("bleater", "app=data-writer")
                    live = [p for p in pods if p.metadata.deletion_timestamp is None]
                    if len(pods) == len(live) == self.writer_replicas and all(
                        any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                        for p in live):
                        return time.monotonic() - since
            except Exception:  # the API server restarting
                pass
            time.sleep(0.1)
        notes.append("writer not back within 120 s")
        return time.monotonic() - since

    def writers_isolated(self) -> int:
        """1 when the writer is not at its replicas or still carries our isolation annotation."""
        writer = self.kube.deployment("bleater", WRITER)
        annotated = ISOLATED_BY in (writer.metadata.annotations or {})
        return int(annotated or writer.spec.replicas != self.writer_replicas)

    def settle(self, read: Callable[[], int], timeout: float) -> int:
        """A count read until it is 0 or the timeout passes (the safety net acts every 15 s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = read()
            if value == 0 or time.monotonic() > deadline:
                return value
            time.sleep(1)

    def records_after(self, before: Records, notes: list[str]) -> Records:
        newest = min(max(v, default=0) for v in before.values())
        try:
            self.bleater.wait_new_records(newest + 1, timeout=60)
        except AssertionError as exc:
            notes.append(str(exc))
        return read_records(self.bleater)

    def deleted_reason(self, name: str) -> str:
        reasons = {reason for reason, _ in self.kube.events("bleater", name)}
        return "GroupDeleted" if "GroupDeleted" in reasons else "deleted before it ran"


def summary(results: list[GroupResult]) -> dict[str, Any]:
    """The report's numbers, each computed from the results."""
    outcomes: dict[str, int] = {}
    for r in results:
        key = f"{r.outcome}/{r.reason}"
        outcomes[key] = outcomes.get(key, 0) + 1
    by_fault: dict[str, dict[str, Any]] = {}
    for r in results:
        row = by_fault.setdefault(r.fault, {"groups": 0, "landed": 0, "outcomes": {}})
        row["groups"] += 1
        row["landed"] += int(r.landed)
        key = f"{r.outcome}/{r.reason}"
        row["outcomes"][key] = row["outcomes"].get(key, 0) + 1
    retried = [r for r in results if r.attempts]
    retried_succeeded = [r for r in retried if r.outcome == "Succeeded"]
    return {
        "groups": len(results),
        "outcomes": outcomes,
        "by_fault": by_fault,
        "writers_left_isolated": sum(r.writers_left_isolated for r in results),
        "locks_left": sum(r.locks_left for r in results),
        "pg_sessions_left": sum(r.pg_sessions_left for r in results),
        "records_lost": sum(r.records_lost for r in results),
        "groups_with_record_problems": sum(1 for r in results if r.record_problems),
        "longest_isolation_after_fault": max((r.longest_isolation_after_fault for r in results),
                                             default=0.0),
        "longest_isolation_group": max(results, key=lambda r: r.longest_isolation_after_fault).group
        if results else None,
        "longest_writer_back_after_fault": max((r.writer_back_after_fault for r in results),
                                               default=0.0),
        "retried_groups": len(retried),
        "retried_succeeded": len(retried_succeeded),
        "retried_succeeded_consistent": sum(1 for r in retried_succeeded if r.consistent == "True"),
        "retried_failed": {f"{r.group}": r.reason for r in retried if r.outcome != "Succeeded"},
        "succeeded_not_consistent": [r.group for r in results
                                     if r.outcome == "Succeeded" and r.consistent != "True"],
        "operator_restarts": sum(r.operator_restarts for r in results),
    }


def as_rows(results: list[GroupResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
