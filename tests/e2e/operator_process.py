"""The operator as a user runs it: `snapgroup run` in a process of its own, killable at will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from localcluster.services_bin import free_port

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """`python -m snapgroup run` against a kubeconfig, with its log in a file."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        """Where Prometheus would scrape it."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        """Its liveness endpoint."""
        return f"http://127.0.0.1:{self.health_port}/healthz"

    def start(self, timeout: float = 60.0) -> None:
        """Start it (unless it runs) and return once its health endpoint answers."""
        if self.process is not None and self.process.poll() is None:
            return
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "operator"), env.get("PYTHONPATH")]))
        args = [
            sys.executable, "-m", "snapgroup", "--kubeconfig", str(self.kubeconfig), "run",
            "--liveness", self.health_url,
            "--metrics-port", str(self.metrics_port), "--log-level", "DEBUG", *self.extra_args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)  # waiting for the health endpoint to come up
        raise RuntimeError(f"operator not healthy after {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: the crash the journal exists for."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM and wait, as Kubernetes stops a pod."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def health(self) -> dict[str, Any]:
        """The health endpoint's JSON (with --leader-elect: leader, identity, holder)."""
        try:
            with urllib.request.urlopen(self.health_url, timeout=5) as response:
                body: dict[str, Any] = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:  # 503: unhealthy, and the body says why
            body = json.loads(exc.read() or b"{}")
        return body

    def scrape(self) -> str:
        """The /metrics page."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def tail(self, lines: int = 60) -> str:
        """The end of its log, for failure messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
