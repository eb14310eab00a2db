"""Leader election: one leader at a time, handover on release, a leader that cannot renew stops.

Against `StubApiServer`, which stores Leases like the API server (resourceVersion preconditions
on writes) and can be made to fail on cue; short timings keep each case to a few seconds. The
cluster test tests/e2e/test_leader_failover.py runs two real operator processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from snapgroup.adapters.leadership import LeaderElection, Timing
from unit.stub_apiserver import Request, StubApiServer

NS, NAME = "snapgroup-system", "snapgroup-leader"
FAST = Timing(lease_duration=2.0, renew_deadline=1.0, retry_period=0.2)


class Candidate:
    """A LeaderElection whose loss of leadership is recorded instead of exiting the process."""

    def __init__(self, stub: StubApiServer, identity: str) -> None:
        self.lost = threading.Event()
        self.lost_at = 0.0
        self.reason = ""
        self.election = LeaderElection(stub.api_client(), NS, NAME, identity, FAST, on_lost=self._lost)
        self.leading = threading.Event()

    def _lost(self, reason: str) -> None:
        self.lost_at, self.reason = time.monotonic(), reason
        self.lost.set()

    def run(self) -> threading.Thread:
        """acquire() in a thread, as `snapgroup run` blocks in it."""
        def campaign() -> None:
            self.election.acquire()
            self.leading.set()

        thread = threading.Thread(target=campaign, daemon=True)
        thread.start()
        return thread


@pytest.fixture
def stub() -> Iterator[StubApiServer]:
    server = StubApiServer()
    yield server
    server.close()


def holders(stub: StubApiServer) -> list[str | None]:
    """The Lease's holders in the order they changed."""
    seen: list[str | None] = []
    for _, holder in stub.lease_history:
        if not seen or seen[-1] != holder:
            seen.append(holder)
    return seen


def test_one_leader_the_other_stands_by_until_it_releases(stub: StubApiServer) -> None:
    a, b = Candidate(stub, "a"), Candidate(stub, "b")
    a.run()
    assert a.leading.wait(10)
    b.run()
    # b has looked at least twice, and each time found a's Lease renewed.
    deadline = time.monotonic() + 10
    while sum(1 for r in stub.requests if r.method == "GET") < 6 and time.monotonic() < deadline:
        time.sleep(0.05)  # pacing between looks at the request log
    assert not b.leading.is_set() and b.election.holder == "a" and a.election.leading
    a.election.release()
    assert b.leading.wait(10)
    assert holders(stub) == ["a", None, "b"]  # handed over, never held by two
    assert b.election.leading and not a.election.leading
    assert stub.leases[NAME]["spec"]["leaseTransitions"] == 1
    b.election.release()


def test_a_standby_takes_over_a_lease_its_holder_stopped_renewing(stub: StubApiServer) -> None:
    a, b = Candidate(stub, "a"), Candidate(stub, "b")
    a.run()
    assert a.leading.wait(10)
    b.run()
    # a dies without a word (as if SIGKILLed): its renewals stop, the Lease stays with it.
    a.election._stop.set()
    assert b.leading.wait(15)
    last_renewal_by_a = max(at for at, holder in stub.lease_history if holder == "a")
    taken = min(at for at, holder in stub.lease_history if holder == "b")
    # Not before a's Lease had expired on b's clock.
    assert taken - last_renewal_by_a >= FAST.lease_duration
    assert holders(stub) == ["a", "b"]
    b.election.release()


def test_a_leader_that_cannot_renew_stops_before_a_standby_may_take_over(stub: StubApiServer) -> None:
    a = Candidate(stub, "a")
    a.run()
    assert a.leading.wait(10)
    failing_since = time.monotonic()

    def outage(request: Request) -> tuple[int, dict[str, object]]:
        return 503, {"kind": "Status", "code": 503}

    stub.script = outage
    assert a.lost.wait(10)
    assert "no successful renewal" in a.reason
    last_renewal = max(at for at, holder in stub.lease_history if holder == "a")
    assert last_renewal <= failing_since
    # The safety margin client-go keeps: the leader gives up before its Lease can expire.
    assert a.lost_at - last_renewal < FAST.lease_duration
    assert not a.election.leading


def test_a_leader_whose_lease_was_taken_stops_at_once(stub: StubApiServer) -> None:
    a = Candidate(stub, "a")
    a.run()
    assert a.leading.wait(10)
    # Someone else writes the Lease (a paused leader whose Lease expired meanwhile sees this).
    lease = stub.leases[NAME]
    stub.leases[NAME] = {**lease, "metadata": {**lease["metadata"], "resourceVersion": "999"},
                         "spec": {**lease["spec"], "holderIdentity": "intruder"}}
    assert a.lost.wait(10)
    assert "intruder took the Lease over" in a.reason


def test_timings_must_leave_the_safety_margin() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        Timing(lease_duration=10, renew_deadline=10, retry_period=2)
