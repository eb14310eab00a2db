"""Containers as local process groups.

An emulated container is one or more processes, each the leader of its own process group
(session), sharing one log file. The container ends when any of its processes exits;
the others are then killed, as the container runtime would when PID 1 of a container dies.
Stopping sends each leader its stop signal, waits for the grace period, then kills the
whole group.

Exits are observed through pidfds on the event loop (no thread per child). Every started
process is recorded in the pod's directory, so a later node emulator can kill processes a
crashed one left behind (`kill_recorded_processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

# The file in a pod's directory listing the processes started for it.
PROCESS_RECORD = "processes.json"


@dataclass(frozen=True)
class ProcessSpec:
    """One process of a container."""

    argv: Sequence[str]
    env: dict[str, str]
    cwd: Path
    user: str | None = None
    # What a graceful stop sends to the leader (the image's STOPSIGNAL).
    stop_signal: signal.Signals = signal.SIGTERM
    stdin: Path | None = None


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of a process (clock ticks since boot), to tell reused pids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it are split from its ")".
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


class LocalProcess:
    """A started process whose exit is awaited on the event loop through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], spec: ProcessSpec) -> None:
        self.popen = popen
        self.spec = spec
        self.pid = popen.pid
        self.start_ticks = process_start_ticks(popen.pid)
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        code = self.popen.wait()
        if not self.exited.done():
            self.exited.set_result(code)

    @property
    def running(self) -> bool:
        """True until the process has exited and been reaped."""
        return not self.exited.done()

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the leader only."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL every process of the group (the leader and anything it started)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def spawn(spec: ProcessSpec, log_path: Path) -> LocalProcess:
    """Start a process in its own session, its output appended to `log_path`.

    The process is also bound to the emulator's life (parent-death signal), so a node
    emulator that is killed outright does not leave pods running with nobody to stop them.
    """
    argv = ["setpriv", "--pdeathsig", "KILL", "--", *spec.argv]
    stdin = spec.stdin.open("rb") if spec.stdin is not None else subprocess.DEVNULL
    with log_path.open("ab") as output:
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=spec.env,
                start_new_session=True,
                user=spec.user,
                group=spec.user,
                extra_groups=[] if spec.user is not None else None,
                close_fds=True,
            )
        finally:
            if not isinstance(stdin, int):
                stdin.close()
    return LocalProcess(popen, spec)


async def run_to_completion(spec: ProcessSpec, log_path: Path) -> int:
    """Run a one-off process (initdb, a probe) and return its exit code; killed if cancelled."""
    process = spawn(spec, log_path)
    try:
        return await asyncio.shield(process.exited)
    except asyncio.CancelledError:
        process.kill_group()
        raise


@dataclass
class ContainerProcesses:
    """The running processes of one container."""

    processes: list[LocalProcess] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    async def wait(self) -> int:
        """Wait until any process exits, kill the rest, and return the first exit code."""
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(p.exited) for p in self.processes],
            return_when=asyncio.FIRST_COMPLETED,
        )
        code = next(iter(done)).result()
        await self.kill_all()
        return code

    async def stop(self, grace_seconds: float) -> None:
        """Send each leader its stop signal, wait up to `grace_seconds`, then kill everything."""
        self.send_stop_signals()
        pending = self.pending_exits()
        if pending:
            await asyncio.wait(pending, timeout=max(grace_seconds, 0.0))
        await self.kill_all()

    def send_stop_signals(self) -> None:
        """The graceful part of stopping: each leader gets its stop signal."""
        for process in self.processes:
            process.signal(process.spec.stop_signal)

    def pending_exits(self) -> list[asyncio.Future[int]]:
        """The exits still to come."""
        return [p.exited for p in self.processes if p.running]

    async def kill_all(self) -> None:
        """SIGKILL every process group of the container and wait until all are gone."""
        for process in self.processes:
            # Also after the leader exited: whatever it started dies with the container.
            process.kill_group()
        pending = [asyncio.ensure_future(p.exited) for p in self.processes if p.running]
        if pending:
            await asyncio.wait(pending)


def record_processes(pod_dir: Path, processes: Sequence[LocalProcess]) -> None:
    """Write the pod's live processes (pid and start time) to its directory."""
    entries = [
        {"pid": p.pid, "start": p.start_ticks, "argv": list(p.spec.argv)} for p in processes if p.running
    ]
    path = pod_dir / PROCESS_RECORD
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)


def kill_recorded_processes(pods_dir: Path) -> int:
    """Kill the process groups recorded by an earlier emulator run; return how many."""
    killed = 0
    for record in pods_dir.glob(f"*/{PROCESS_RECORD}"):
        try:
            entries = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        for entry in entries:
            pid = int(entry["pid"])
            if entry.get("start") is not None and process_start_ticks(pid) == entry["start"]:
                log.warning("killing process group %d left by an earlier run: %s", pid, entry["argv"])
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                killed += 1
        record.unlink(missing_ok=True)
    return killed
