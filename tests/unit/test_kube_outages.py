"""KubeCluster rides through short API outages and keeps requests apart from waiting watches.

Against `StubApiServer`, a scripted stand-in for kube-apiserver: it answers 503, drops
connections, is not listening yet, or holds watches open, on cue.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from localcluster.services_bin import free_port
from snapgroup.adapters.kube import MAX_CONCURRENT_REQUESTS, KubeCluster
from snapgroup.ports import StepError
from unit.stub_apiserver import DROP, Answer, Request, StubApiServer, api_client

NS = "shop"
DEPLOYMENT = {
    "metadata": {"name": "writer", "namespace": NS, "resourceVersion": "7"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "writer"}}},
}
PODS = {"metadata": {"resourceVersion": "9"}, "items": [{"metadata": {"name": "writer-1"}}]}
NO_PODS = {"metadata": {"resourceVersion": "10"}, "items": []}


@pytest.fixture
def stub() -> Iterator[StubApiServer]:
    server = StubApiServer()
    yield server
    server.close()


@pytest.fixture
async def cluster(stub: StubApiServer) -> AsyncIterator[KubeCluster]:
    kube = KubeCluster(stub.api_client(), request_timeout=5.0, outage_tolerance=15.0)
    yield kube
    kube.close()


def first_fail(times: int, failure: Answer, then: Answer, method: str = "GET") -> Callable[[Request], Answer]:
    """Answer `failure` to the first `times` requests of `method` (watches aside), then `then`."""
    seen = itertools.count()

    def script(request: Request) -> Answer:
        if request.method != method or request.watch:
            return None
        return failure if next(seen) < times else then

    return script


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait, on the loop, until condition() holds."""
    async with asyncio.timeout(timeout):
        # The conditions are counters that server threads and the adapter move; nothing to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # pacing between looks at the condition
    assert condition(), what


async def test_a_read_rides_through_503s(stub: StubApiServer, cluster: KubeCluster) -> None:
    stub.script = first_fail(3, (503, {"kind": "Status", "code": 503}), (200, DEPLOYMENT))
    workload = await cluster.get_workload("Deployment", NS, "writer")
    assert workload is not None and workload.replicas == 2
    assert stub.count("GET") == 4
    assert cluster.retries["get"] == 3


async def test_a_patch_rides_through_dropped_connections(stub: StubApiServer, cluster: KubeCluster) -> None:
    stub.script = first_fail(2, DROP, (200, DEPLOYMENT), method="PATCH")
    await cluster.scale("Deployment", NS, "writer", 0, {"snapgroup.dev/isolated-by": "g"})
    patches = [r for r in stub.requests if r.method == "PATCH"]
    assert len(patches) == 3
    assert all(p.body["spec"] == {"replicas": 0} for p in patches)  # the same patch each time
    assert cluster.retries["patch"] >= 1


async def test_a_request_waits_for_a_server_that_is_not_listening_yet() -> None:
    port = free_port()
    kube = KubeCluster(api_client(port), request_timeout=2.0, outage_tolerance=30.0)
    try:
        read = asyncio.create_task(kube.get_workload("Deployment", NS, "writer"))
        await until(lambda: kube.retries["get"] >= 2, "refused requests retried")
        assert not read.done()
        server = StubApiServer(port)
        try:
            server.script = lambda request: (200, DEPLOYMENT)
            workload = await read
            assert workload is not None and workload.name == "writer"
            assert server.count("GET") >= 1
        finally:
            server.close()
    finally:
        kube.close()


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
async def test_permanent_errors_are_not_retried(
    stub: StubApiServer, cluster: KubeCluster, status: int
) -> None:
    stub.script = lambda request: (status, {"kind": "Status", "code": status, "message": "no"})
    with pytest.raises(StepError) as raised:
        await cluster.list_workloads("Deployment", NS, "app=writer")
    assert f"HTTP {status}" in raised.value.message
    assert stub.count("GET") == 1
    assert cluster.retries["list"] == 0


async def test_an_outage_longer_than_the_tolerance_fails_the_call(stub: StubApiServer) -> None:
    stub.script = lambda request: (503, {"kind": "Status", "code": 503, "message": "starting"})
    kube = KubeCluster(stub.api_client(), request_timeout=2.0, outage_tolerance=1.0)
    try:
        with pytest.raises(StepError) as raised:
            await kube.get_workload("Deployment", NS, "writer")
    finally:
        kube.close()
    assert "HTTP 503" in raised.value.message and "retries" in raised.value.message
    assert stub.count("GET") >= 3


async def test_cancelling_a_retrying_call_stops_it(stub: StubApiServer, cluster: KubeCluster) -> None:
    stub.script = lambda request: (503, {"kind": "Status", "code": 503})
    read = asyncio.create_task(cluster.get_workload("Deployment", NS, "writer"))
    await until(lambda: cluster.retries["get"] >= 2, "the read is retrying")
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read  # not the StepError the 15 s tolerance would end in
    assert read.cancelled()


async def test_a_wait_lists_again_after_its_watch_broke(stub: StubApiServer, cluster: KubeCluster) -> None:
    lists = itertools.count()

    def script(request: Request) -> Answer:
        if request.watch:
            return DROP  # the server went away under the watch
        n = next(lists)
        if n == 0:
            return 200, PODS
        if n in (1, 2):
            return 503, {"kind": "Status", "code": 503}  # and is still starting
        return 200, NO_PODS

    stub.script = script
    await cluster.wait_pods_gone(NS, "app=writer", timeout=30)
    assert cluster.retries["watch"] >= 1
    assert cluster.retries["list"] == 2


async def test_requests_do_not_queue_behind_more_waits_than_request_threads(
    stub: StubApiServer, cluster: KubeCluster
) -> None:
    waits = MAX_CONCURRENT_REQUESTS + 6

    def script(request: Request) -> Answer:
        if request.method == "GET" and "/pods" in request.path and not request.watch:
            return 200, PODS  # a pod that never goes: every wait stays in its watch
        if "/deployments/" in request.path:
            return 200, DEPLOYMENT
        return None

    stub.script = script
    waiting = [asyncio.create_task(cluster.wait_pods_gone(NS, "app=writer", timeout=120))
               for _ in range(waits)]
    try:
        await until(lambda: stub.open_watches == waits, f"{waits} watches open")
        workload = await cluster.get_workload("Deployment", NS, "writer")
        assert workload is not None
        (read,) = [r for r in stub.requests if "/deployments/" in r.path]
        assert read.open_watches == waits > MAX_CONCURRENT_REQUESTS
        assert not any(task.done() for task in waiting)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def test_a_cancelled_patch_already_sent_lands_before_the_cancellation_returns(
    stub: StubApiServer, cluster: KubeCluster
) -> None:
    answered: list[float] = []
    received = threading.Event()

    def slow_patch(request: Request) -> Answer:
        if request.method != "PATCH":
            return None
        received.set()
        time.sleep(0.5)  # the server is still applying the patch (a server thread, not the loop)
        answered.append(time.monotonic())
        return 200, DEPLOYMENT

    stub.script = slow_patch
    scale = asyncio.create_task(
        cluster.scale("Deployment", NS, "writer", 0, {"snapgroup.dev/isolated-by": "g"}))
    await until(received.is_set, "the patch reached the server")
    scale.cancel()
    with pytest.raises(asyncio.CancelledError):
        await scale
    cancelled_at = time.monotonic()
    assert answered and answered[0] <= cancelled_at, (
        "the caller learnt of its cancellation only after the patch it had sent was applied, "
        "so an undo that follows cannot run before it")
