"""A pod worker without a cluster: the status it reports (no API calls are made) and how it
stops a pod's processes within the grace period."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from localcluster.node.containers import ContainerProcesses, ProcessSpec, spawn
from localcluster.node.kubelet import ContainerRunner, PodWorker
from localcluster.node.runtimes import DataWriterRuntime


def _worker(tmp_path: Path, containers: list[dict[str, Any]], **spec: Any) -> PodWorker:
    kubelet: Any = SimpleNamespace(events=None, config=SimpleNamespace(pods_dir=tmp_path))
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "uid-1"},
        "spec": {"containers": containers, **spec},
    }
    return PodWorker(kubelet, pod)


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_unknown_images_keep_the_pod_pending_in_spec_order(tmp_path: Path) -> None:
    containers = [
        {"name": "b-web", "image": "nginx:1.25"},
        {"name": "a-writer", "image": "snapgroup.dev/bleater-data-writer:0.1"},
    ]
    worker = _worker(tmp_path, containers)
    worker.runners = [ContainerRunner(worker, containers[1], DataWriterRuntime(), init=False)]
    worker.unknown_images = [("b-web", "nginx:1.25")]
    status = worker.build_status()
    assert status["phase"] == "Pending"
    assert [s["name"] for s in status["containerStatuses"]] == ["b-web", "a-writer"]
    assert status["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImageNotEmulated"
    assert _conditions(status)["Ready"]["status"] == "False"
    assert "podIP" not in status


def test_ready_pod_reports_running_and_clears_condition_reasons(tmp_path: Path) -> None:
    containers = [{"name": "w", "image": "snapgroup.dev/bleater-data-writer:0.1"}]
    worker = _worker(tmp_path, containers)
    runner = ContainerRunner(worker, containers[0], DataWriterRuntime(), init=False)
    worker.runners = [runner]
    worker.pod_ip = "127.10.0.9"
    worker.sandbox_ready = True

    before = worker.build_status()
    assert before["phase"] == "Pending"
    assert _conditions(before)["Ready"]["reason"] == "ContainersNotReady"

    worker.initialized = True
    runner.state = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
    runner.started = True
    runner.ready = True
    after = worker.build_status()
    assert after["phase"] == "Running"
    assert after["podIP"] == "127.10.0.9"
    assert after["podIPs"] == [{"ip": "127.10.0.9"}]
    ready = _conditions(after)["Ready"]
    assert ready["status"] == "True"
    # Sent as a strategic merge patch: null removes the reason left by the earlier False.
    assert ready["reason"] is None and ready["message"] is None
    assert after["containerStatuses"][0]["ready"] is True


def test_crash_looping_container_keeps_phase_running(tmp_path: Path) -> None:
    containers = [{"name": "w", "image": "snapgroup.dev/bleater-data-writer:0.1"}]
    worker = _worker(tmp_path, containers)
    runner = ContainerRunner(worker, containers[0], DataWriterRuntime(), init=False)
    worker.runners = [runner]
    worker.initialized = True
    runner.last_state = {"terminated": {"exitCode": 1}}
    runner.state = {"waiting": {"reason": "CrashLoopBackOff"}}
    assert worker.build_status()["phase"] == "Running"


def test_finished_pods_with_restart_policy_never_succeed_or_fail(tmp_path: Path) -> None:
    containers = [{"name": "w", "image": "snapgroup.dev/bleater-data-writer:0.1"}]
    for code, phase in ((0, "Succeeded"), (2, "Failed")):
        worker = _worker(tmp_path, containers, restartPolicy="Never")
        runner = ContainerRunner(worker, containers[0], DataWriterRuntime(), init=False)
        worker.runners = [runner]
        worker.initialized = True
        runner.state = {"terminated": {"exitCode": code}}
        assert worker.build_status()["phase"] == phase


def _stubborn(tmp_path: Path) -> ContainerProcesses:
    # Ignores SIGTERM, like a process that would use its whole grace period.
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "c.log"
    process = spawn(ProcessSpec([sys.executable, "-c", code], {"PATH": os.environ["PATH"]}, tmp_path), log)
    return ContainerProcesses([process])


async def _until_up(tmp_path: Path) -> None:
    for _ in range(250):
        if "up" in (tmp_path / "c.log").read_text():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the test process never started")


async def test_a_shorter_grace_period_cuts_the_wait_short(tmp_path: Path) -> None:
    worker = _worker(tmp_path, [], terminationGracePeriodSeconds=30)
    worker.pod["metadata"].update(deletionTimestamp="2024-01-01T00:00:00Z", deletionGracePeriodSeconds=30)
    processes = _stubborn(tmp_path)
    await _until_up(tmp_path)
    began = time.monotonic()
    stopping = asyncio.create_task(worker._stop_within_grace([processes]))
    await asyncio.sleep(0.3)
    assert not stopping.done(), "stopped before the grace period"
    # A second delete with --grace-period=1.
    shorter = {**worker.pod, "metadata": {**worker.pod["metadata"], "deletionGracePeriodSeconds": 1}}
    worker.update(shorter)
    await asyncio.wait_for(stopping, 10)
    assert 0.9 < time.monotonic() - began < 5
    assert processes.processes[0].exited.result() == -signal.SIGKILL


async def test_a_force_deleted_pod_is_stopped_at_once(tmp_path: Path) -> None:
    worker = _worker(tmp_path, [], terminationGracePeriodSeconds=30)
    worker.pod["metadata"].update(deletionTimestamp="2024-01-01T00:00:00Z", deletionGracePeriodSeconds=30)
    processes = _stubborn(tmp_path)
    await _until_up(tmp_path)
    began = time.monotonic()
    stopping = asyncio.create_task(worker._stop_within_grace([processes]))
    await asyncio.sleep(0.1)
    worker.gone()
    await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - began < 5
