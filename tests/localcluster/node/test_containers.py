"""Containers as local process groups: exit, stop with grace, leftovers from a crashed run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from localcluster.node.containers import (
    ContainerProcesses,
    ProcessSpec,
    kill_recorded_processes,
    process_start_ticks,
    record_processes,
    run_to_completion,
    spawn,
)


def _python(code: str, tmp_path: Path, stop_signal: signal.Signals = signal.SIGTERM) -> ProcessSpec:
    return ProcessSpec(
        [sys.executable, "-c", code], {"PATH": os.environ["PATH"]}, tmp_path, stop_signal=stop_signal
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


async def test_output_goes_to_the_log_and_exit_code_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    code = await run_to_completion(_python("import sys; print('hello'); sys.exit(3)", tmp_path), log)
    assert code == 3
    assert "hello" in log.read_text()


async def test_container_ends_when_one_process_exits_and_the_rest_are_killed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "c.log"
    sleeper = spawn(_python("import time; time.sleep(60)", tmp_path), log)
    quitter = spawn(_python("import time; time.sleep(0.2)", tmp_path), log)
    container = ContainerProcesses([sleeper, quitter])
    code = await asyncio.wait_for(container.wait(), 10)
    assert code == 0
    assert not sleeper.running
    assert not _alive(sleeper.pid)


async def test_stop_sends_the_stop_signal_then_kills_after_grace(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    handles_int = _python(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(7))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
        tmp_path,
        stop_signal=signal.SIGINT,
    )
    ignores_term = _python(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n",
        tmp_path,
    )
    polite = spawn(handles_int, log)
    stubborn = spawn(ignores_term, log)
    for _ in range(200):
        if log.read_text().count("ready") == 2:
            break
        await asyncio.sleep(0.02)
    began = time.monotonic()
    await ContainerProcesses([polite, stubborn]).stop(grace_seconds=1.0)
    elapsed = time.monotonic() - began
    assert polite.exited.result() == 7
    assert stubborn.exited.result() == -signal.SIGKILL
    assert 0.9 <= elapsed < 5.0


async def test_children_die_with_the_container(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    pid_file = tmp_path / "child.pid"
    parent = spawn(
        _python(
            "import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
            "time.sleep(60)\n",
            tmp_path,
        ),
        log,
    )
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.02)
    child = int(pid_file.read_text())
    await ContainerProcesses([parent]).stop(grace_seconds=5.0)
    for _ in range(100):
        if not _alive(child):
            break
        await asyncio.sleep(0.02)
    assert not _alive(child), "a process started inside the container outlived it"


async def test_recorded_processes_of_a_crashed_run_are_killed(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pods" / "uid-1"
    pod_dir.mkdir(parents=True)
    process = spawn(_python("import time; time.sleep(60)", tmp_path), tmp_path / "c.log")
    assert process_start_ticks(process.pid) is not None
    record_processes(pod_dir, [process])
    assert kill_recorded_processes(tmp_path / "pods") == 1
    assert await asyncio.wait_for(process.exited, 5) == -signal.SIGKILL
    # The record is consumed; a reused pid is never killed by a second pass.
    assert kill_recorded_processes(tmp_path / "pods") == 0
