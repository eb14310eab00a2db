"""Starting the servers the tests talk to on 127.0.0.1: the stand-ins and their binaries.

FerretDB (the MongoDB stand-in, SQLite backend) with ``localcluster.mongolock`` in front of it,
and ``s3server`` (the S3 stand-in), built from the project's Go module; and the process, port and
OS-user plumbing that starting any of them (PostgreSQL too) takes. Shared by the integration
tests, test_mongolock and test_datawriter.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymongo
import pytest

SERVICES_MODULE = Path(__file__).parent / "go" / "services"
TESTS_DIR = Path(__file__).parent.parent
# FerretDB panics at start-up when it is built from outside its own repository unless the
# build info is cleared: it then asks for a version file only its release builds carry.
FERRETDB_LDFLAGS = "-X runtime.modinfo="


def services_bin_dir() -> Path:
    """The directory holding ``ferretdb`` and ``s3server``, built from the services module.

    ``SNAPGROUP_SERVICES_BIN`` points at prebuilt binaries; otherwise they are built once per
    source state into ``${SNAPGROUP_CACHE:-~/.cache/snapgroup}/services-bin/<key>``.
    """
    if override := os.environ.get("SNAPGROUP_SERVICES_BIN"):
        return Path(override)
    digest = hashlib.sha256()
    for path in sorted(SERVICES_MODULE.rglob("*")):
        if path.is_file() and (path.name in ("go.mod", "go.sum") or path.suffix == ".go"):
            digest.update(str(path.relative_to(SERVICES_MODULE)).encode())
            digest.update(path.read_bytes())
    cache = Path(os.environ.get("SNAPGROUP_CACHE", Path.home() / ".cache" / "snapgroup"))
    out = cache / "services-bin" / digest.hexdigest()[:16]
    if (out / "ferretdb").is_file() and (out / "s3server").is_file():
        return out
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "go",
            "build",
            f"-ldflags={FERRETDB_LDFLAGS}",
            "-o",
            f"{staging}/",
            "github.com/FerretDB/FerretDB/cmd/ferretdb",
            "./cmd/s3server",
        ],
        cwd=SERVICES_MODULE,
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
    )
    if out.exists():  # built concurrently by someone else
        shutil.rmtree(staging)
    else:
        staging.rename(out)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    """A started service process and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, port: int, what: str, timeout: float = 30.0) -> None:
        """Return once the server accepts connections; fail with its log if it exits first."""
        def ready() -> bool:
            if self.popen.poll() is not None:
                pytest.fail(f"{what} exited with {self.popen.returncode}:\n"
                            f"{self.log_text()[-3000:]}")
            return port_open(port)
        wait_until(ready, what, timeout)

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not exit within 10 s; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_process(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Process:
    """Start ``argv`` with its output in ``log_dir/<name>.log``."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    return Process(name, popen, log_path)


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run ``argv`` as the postgres OS user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for ``python -m localcluster.*``: this interpreter's, plus tests/ on the path."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    return env


@dataclass
class MongoStandIn:
    """FerretDB with the fsync-lock layer in front: the local cluster's MongoDB."""

    port: int
    ferretdb: Process
    lock_layer: Process
    username: str | None = None
    password: str | None = None

    @property
    def uri(self) -> str:
        """A connection string for the lock layer (with credentials when auth is on)."""
        auth = f"{self.username}:{self.password}@" if self.username else ""
        return f"mongodb://{auth}127.0.0.1:{self.port}/?directConnection=true&authSource=admin"

    def client(self, authenticated: bool = True) -> pymongo.MongoClient[dict[str, Any]]:
        """A new client, i.e. its own connections to the lock layer."""
        uri = self.uri if authenticated else f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
        return pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)

    def stop(self) -> None:
        """Stop both processes."""
        self.lock_layer.stop()
        self.ferretdb.stop()


def start_mongo_stand_in(
    bin_dir: Path,
    data_dir: Path,
    log_dir: Path,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 30.0,
) -> MongoStandIn:
    """Start FerretDB on a free port and the lock layer in front of it; wait until both accept.

    Their logs are ``log_dir/ferretdb.log`` and ``log_dir/mongolock.log``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ferretdb_port, lock_port = free_port(), free_port()
    argv = [
        str(bin_dir / "ferretdb"),
        "--handler=sqlite",
        f"--sqlite-url=file:{data_dir}/",
        f"--listen-addr=127.0.0.1:{ferretdb_port}",
        "--telemetry=disable",
        "--state-dir=-",
        "--debug-addr=-",
        "--log-level=error",
    ]
    if username and password:
        argv += [
            "--test-enable-new-auth",
            "--setup-database=admin",
            f"--setup-username={username}",
            f"--setup-password={password}",
        ]
    ferretdb = start_process("ferretdb", argv, log_dir)
    lock_layer = start_process(
        "mongolock",
        [
            sys.executable,
            "-m",
            "localcluster.mongolock",
            "--listen",
            f"127.0.0.1:{lock_port}",
            "--upstream",
            f"127.0.0.1:{ferretdb_port}",
        ],
        log_dir,
        env=python_env(),
    )
    stand_in = MongoStandIn(lock_port, ferretdb, lock_layer, username, password)
    try:
        ferretdb.wait_listening(ferretdb_port, f"FerretDB on port {ferretdb_port}", timeout)
        lock_layer.wait_listening(lock_port, f"the lock layer on port {lock_port}", timeout)
    except BaseException:
        stand_in.stop()
        raise
    return stand_in
