"""The image table: which container images the node emulator can run, and how.

An image is "run" by starting local processes on the pod's volume directories:

- `postgres:15*`: PostgreSQL 15 itself (Debian's binaries), as OS user `postgres`.
- `mongo:7*`: a stand-in, not mongod: FerretDB (SQLite backend) behind the
  `localcluster.mongolock` layer, which adds the fsync lock FerretDB lacks.
- `minio/minio*`: a stand-in, not MinIO: the project's `s3server` (gofakes3, filesystem
  backend) with the MinIO root credentials.
- `snapgroup.dev/bleater-data-writer*`: `python -m localcluster.datawriter`.
- `snapgroup:*` (the operator's own image, e.g. a restored server's init step): the installed
  `snapgroup` command with the container's args, its mount paths mapped to their directories.

Any other image is not emulated; the pod stays Pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .access import AccessDenied, ensure_reachable
from .containers import ProcessSpec, run_to_completion

JSON = dict[str, Any]

TESTS_DIR = Path(__file__).resolve().parents[2]
DEFAULT_POSTGRES_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


class ContainerStartError(Exception):
    """A container cannot be started (bad configuration, missing binary, failed setup)."""


@dataclass
class ContainerContext:
    """Everything a runtime needs to start one container of one pod."""

    namespace: str
    pod_name: str
    pod_uid: str
    pod_ip: str
    container: JSON
    env: dict[str, str]
    # The container's volumeMounts: mountPath -> directory on this machine.
    mounts: dict[str, Path]
    # The volume the image keeps its data in (see `data_volume`).
    data_dir: Path
    pod_dir: Path
    # A short per-pod directory for unix sockets (their paths are limited to 107 bytes).
    run_dir: Path
    bin_dir: Path
    log_path: Path
    postgres_bin_dir: Path = DEFAULT_POSTGRES_BIN_DIR
    tests_dir: Path = TESTS_DIR
    host_path: str = field(default_factory=lambda: os.environ.get("PATH", "/usr/bin:/bin"))

    def container_port(self, default: int) -> int:
        """The first declared TCP containerPort, or `default`."""
        for port in self.container.get("ports") or []:
            if str(port.get("protocol", "TCP")) == "TCP":
                return int(port["containerPort"])
        return default

    def base_env(self) -> dict[str, str]:
        """What every container gets besides its own env: PATH, HOSTNAME, a UTF-8 locale."""
        return {
            "PATH": self.host_path,
            "HOSTNAME": self.pod_name,
            "HOME": str(self.pod_dir),
            "LANG": "C.UTF-8",
        }

    def python_env(self) -> dict[str, str]:
        """Environment for the project's Python processes (`localcluster` importable)."""
        return {**self.base_env(), **self.env, "PYTHONPATH": str(self.tests_dir)}


class Runtime(Protocol):
    """How one kind of image runs as local processes."""

    # Shown in logs and events; says plainly what stands in for what.
    description: str

    async def prepare(self, ctx: ContainerContext) -> None:
        """One-off setup before the processes start (e.g. initdb); may run for a while."""

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """The processes of the container, started together."""
        ...

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """Ports on the pod IP that must accept connections, besides the declared ones."""
        ...

    async def ready(self, ctx: ContainerContext) -> bool:
        """A check beyond open ports (e.g. PostgreSQL accepting connections)."""
        ...


def _normalise_image(image: str) -> str:
    """Drop Docker Hub's implicit registry and `library/` prefixes."""
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if image.startswith(prefix):
            image = image[len(prefix) :]
            break
    if image.startswith("library/"):
        image = image[len("library/") :]
    return image


def _executable(path: Path) -> str:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ContainerStartError(f"executable {path} not found")
    return str(path)


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _ensure_reachable(path: Path, user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError as error:
        raise ContainerStartError(f"OS user {user!r} does not exist") from error
    try:
        ensure_reachable(user, path)
    except AccessDenied as error:
        raise ContainerStartError(str(error)) from error


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as handle:
        handle.write(f"\n{line}\n")


@dataclass(frozen=True)
class InitdbPlan:
    """The processes that initialise an empty PostgreSQL data directory."""

    initdb: ProcessSpec
    create_database: ProcessSpec | None
    host_auth: str


class PostgresRuntime:
    """PostgreSQL 15, initialised like the official image (POSTGRES_USER/PASSWORD/DB)."""

    description = "PostgreSQL 15 (Debian binaries)"
    user = "postgres"

    def _pgdata(self, ctx: ContainerContext) -> Path:
        return ctx.data_dir / "pgdata"

    def _bin(self, ctx: ContainerContext, name: str) -> str:
        return _executable(ctx.postgres_bin_dir / name)

    def _env(self, ctx: ContainerContext) -> dict[str, str]:
        # PG* variables in the container env would redirect the server; pass only the basics.
        return {**ctx.base_env(), "HOME": str(ctx.run_dir)}

    async def prepare(self, ctx: ContainerContext) -> None:
        """Own the volume, initdb an empty one, and clear a stale postmaster.pid."""
        pgdata = self._pgdata(ctx)
        if await asyncio.to_thread(self._own_volume, ctx):
            plan = await asyncio.to_thread(self._stage_initdb, ctx)
            try:
                code = await run_to_completion(plan.initdb, ctx.log_path)
            finally:
                await asyncio.to_thread(self._initdb_password_file(ctx).unlink, missing_ok=True)
            if code != 0:
                raise ContainerStartError(f"initdb exited with {code}")
            # Every pod and Service address is in 127.0.0.0/8.
            await asyncio.to_thread(
                _append_line,
                self._staging(ctx) / "pg_hba.conf",
                f"host all all 127.0.0.0/8 {plan.host_auth}",
            )
            if plan.create_database is not None:
                code = await run_to_completion(plan.create_database, ctx.log_path)
                if code != 0:
                    raise ContainerStartError(f"creating the database exited with {code}")
            await asyncio.to_thread(self._staging(ctx).rename, pgdata)
        await asyncio.to_thread(self._settle_pgdata, pgdata)

    def _staging(self, ctx: ContainerContext) -> Path:
        # initdb runs into a side directory that is renamed on success, so a pod deleted
        # mid-initdb does not leave a half-made cluster that the next start would refuse.
        return ctx.data_dir / "pgdata.initdb"

    def _initdb_password_file(self, ctx: ContainerContext) -> Path:
        return ctx.run_dir / "initdb-password"

    def _own_volume(self, ctx: ContainerContext) -> bool:
        """Give the volume to the postgres user; True if the data directory needs initdb."""
        _ensure_reachable(ctx.data_dir, self.user)
        _ensure_reachable(ctx.run_dir, self.user)
        _chown(ctx.data_dir, self.user)
        _chown(ctx.run_dir, self.user)
        pgdata = self._pgdata(ctx)
        if (pgdata / "PG_VERSION").exists():
            return False
        if pgdata.exists() and any(pgdata.iterdir()):
            raise ContainerStartError(f"{pgdata} is not empty but holds no PG_VERSION")
        return True

    def _stage_initdb(self, ctx: ContainerContext) -> InitdbPlan:
        """The initdb run and, if POSTGRES_DB asks for one, the database creation after it.

        Like the official image: POSTGRES_USER (default postgres) is the superuser with
        POSTGRES_PASSWORD; POSTGRES_DB (default: the user's name) is created.
        """
        user = ctx.env.get("POSTGRES_USER") or "postgres"
        password = ctx.env.get("POSTGRES_PASSWORD", "")
        database = ctx.env.get("POSTGRES_DB") or user
        auth = ctx.env.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256"
        if not password and auth != "trust":
            raise ContainerStartError(
                "database is uninitialized and POSTGRES_PASSWORD is not set "
                "(set it, or POSTGRES_HOST_AUTH_METHOD=trust)"
            )
        staging = self._staging(ctx)
        shutil.rmtree(staging, ignore_errors=True)
        argv = [
            self._bin(ctx, "initdb"),
            f"--pgdata={staging}",
            f"--username={user}",
            "--auth-local=trust",
            f"--auth-host={auth}",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        if password:
            password_file = self._initdb_password_file(ctx)
            password_file.write_text(password + "\n")
            _chown(password_file, self.user)
            os.chmod(password_file, 0o600)
            argv.append(f"--pwfile={password_file}")
        initdb = ProcessSpec(argv, self._env(ctx), ctx.run_dir, user=self.user)
        if database == "postgres":
            return InitdbPlan(initdb, None, auth)
        sql = ctx.run_dir / "initdb.sql"
        quoted = database.replace('"', '""')
        sql.write_text(f'CREATE DATABASE "{quoted}";\n')
        create_database = ProcessSpec(
            [self._bin(ctx, "postgres"), "--single", "-D", str(staging), "postgres"],
            self._env(ctx),
            ctx.run_dir,
            user=self.user,
            stdin=sql,
        )
        return InitdbPlan(initdb, create_database, auth)

    def _settle_pgdata(self, pgdata: Path) -> None:
        # A restored snapshot or an earlier run may carry files owned by someone else.
        _chown_tree(pgdata, self.user)
        os.chmod(pgdata, 0o700)
        self._remove_stale_pid_file(pgdata)

    def _remove_stale_pid_file(self, pgdata: Path) -> None:
        # A volume restored from a snapshot carries the pid file of the server that was
        # live when the snapshot was cut. In a container the pid namespace makes it stale;
        # here the pid may belong to an unrelated (or the original) server, so the file is
        # only kept when its pid is a process whose working directory is this pgdata
        # (the postmaster chdirs into its data directory).
        pid_file = pgdata / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid_file.unlink(missing_ok=True)
            return
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            cwd = None
        if cwd is not None and cwd == pgdata.resolve():
            raise ContainerStartError(f"another PostgreSQL (pid {pid}) is still running on {pgdata}")
        pid_file.unlink(missing_ok=True)

    def _port(self, ctx: ContainerContext) -> int:
        return ctx.container_port(5432)

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """`postgres -D <volume>/pgdata` in the foreground, listening on the pod IP."""
        argv = [
            self._bin(ctx, "postgres"),
            "-D",
            str(self._pgdata(ctx)),
            "-p",
            str(self._port(ctx)),
            "-c",
            f"listen_addresses={ctx.pod_ip}",
            "-c",
            f"unix_socket_directories={ctx.run_dir}",
            "-c",
            "logging_collector=off",
        ]
        # The official image's STOPSIGNAL is SIGINT: fast shutdown, which does not wait for
        # clients to disconnect, so a pod stops within its grace period.
        return [ProcessSpec(argv, self._env(ctx), ctx.run_dir, user=self.user, stop_signal=signal.SIGINT)]

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """The server port (also when no containerPort is declared)."""
        return [self._port(ctx)]

    async def ready(self, ctx: ContainerContext) -> bool:
        """`pg_isready` on the pod IP: the server accepts connections (not just TCP)."""
        argv = [
            self._bin(ctx, "pg_isready"),
            "-q",
            "-h",
            ctx.pod_ip,
            "-p",
            str(self._port(ctx)),
            "-t",
            "2",
        ]
        code = await run_to_completion(ProcessSpec(argv, self._env(ctx), ctx.run_dir), Path(os.devnull))
        return code == 0


class MongoStandInRuntime:
    """Stand-in for mongod: FerretDB (SQLite backend) on podIP:27018, fronted by the
    `localcluster.mongolock` layer on the container port, which adds the fsync lock.

    Like the mongo image, MONGO_INITDB_ROOT_USERNAME/PASSWORD turn authentication on and
    create that user in `admin` when the data directory has no `admin` database yet
    (FerretDB's SCRAM authentication, still marked experimental in FerretDB 1.24).
    """

    description = "MongoDB stand-in: FerretDB (SQLite) behind localcluster.mongolock"
    ferretdb_port: ClassVar[int] = 27018

    async def prepare(self, ctx: ContainerContext) -> None:
        """Create the SQLite directory on the volume and FerretDB's state directory."""
        (ctx.data_dir / "ferretdb").mkdir(parents=True, exist_ok=True)
        self._state_dir(ctx).mkdir(parents=True, exist_ok=True)

    def _state_dir(self, ctx: ContainerContext) -> Path:
        return ctx.pod_dir / f"ferretdb-state-{ctx.container['name']}"

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """FerretDB and the lock layer, as one container."""
        port = ctx.container_port(27017)
        upstream = f"{ctx.pod_ip}:{self.ferretdb_port}"
        ferretdb = [
            _executable(ctx.bin_dir / "ferretdb"),
            "--handler=sqlite",
            f"--sqlite-url=file:{ctx.data_dir / 'ferretdb'}/",
            f"--listen-addr={upstream}",
            "--telemetry=disable",
            f"--state-dir={self._state_dir(ctx)}",
            # Its debug listener defaults to a fixed 127.0.0.1 port shared by every pod.
            "--debug-addr=-",
        ]
        lock_layer = [
            sys.executable,
            "-m",
            "localcluster.mongolock",
            "--listen",
            f"{ctx.pod_ip}:{port}",
            "--upstream",
            upstream,
        ]
        ferretdb_env = ctx.base_env()
        root_user = ctx.env.get("MONGO_INITDB_ROOT_USERNAME", "")
        root_password = ctx.env.get("MONGO_INITDB_ROOT_PASSWORD", "")
        if root_user and root_password:
            ferretdb += [
                "--test-enable-new-auth",
                "--setup-database=admin",
                f"--setup-username={root_user}",
            ]
            # In the environment rather than argv, which any local user can read.
            ferretdb_env["FERRETDB_SETUP_PASSWORD"] = root_password
        return [
            ProcessSpec(ferretdb, ferretdb_env, ctx.pod_dir),
            ProcessSpec(lock_layer, ctx.python_env(), ctx.pod_dir),
        ]

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """The lock layer's port and FerretDB's own."""
        return [ctx.container_port(27017), self.ferretdb_port]

    async def ready(self, ctx: ContainerContext) -> bool:
        """Open ports are enough."""
        return True


class S3StandInRuntime:
    """Stand-in for MinIO: the project's `s3server` (gofakes3 with a filesystem backend)."""

    description = "MinIO stand-in: s3server (gofakes3, filesystem backend)"

    async def prepare(self, ctx: ContainerContext) -> None:
        """Nothing to set up: the server creates its layout in the volume."""

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """`s3server --listen podIP:port --data <volume>` with the container's env."""
        argv = [
            _executable(ctx.bin_dir / "s3server"),
            "--listen",
            f"{ctx.pod_ip}:{ctx.container_port(9000)}",
            "--data",
            str(ctx.data_dir),
        ]
        return [ProcessSpec(argv, {**ctx.base_env(), **ctx.env}, ctx.pod_dir)]

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """The S3 port (also when no containerPort is declared)."""
        return [ctx.container_port(9000)]

    async def ready(self, ctx: ContainerContext) -> bool:
        """Open ports are enough."""
        return True


class DataWriterRuntime:
    """The bleater data-writer: `python -m localcluster.datawriter` with the resolved env."""

    description = "bleater data-writer (localcluster.datawriter)"

    async def prepare(self, ctx: ContainerContext) -> None:
        """Nothing to set up."""

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """The writer process."""
        argv = [sys.executable, "-m", "localcluster.datawriter"]
        return [ProcessSpec(argv, ctx.python_env(), ctx.pod_dir)]

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """None beyond declared ones."""
        return []

    async def ready(self, ctx: ContainerContext) -> bool:
        """Running is ready."""
        return True


class OperatorImageRuntime:
    """The operator's image: its ENTRYPOINT `snapgroup` with the container's args.

    A container sees its volumes at their mountPaths; here they are directories elsewhere, so an
    argument naming a mount path (or a path below one) is given the directory it maps to.
    """

    description = "snapgroup (the installed operator command)"

    async def prepare(self, ctx: ContainerContext) -> None:
        """Nothing to set up."""

    def processes(self, ctx: ContainerContext) -> list[ProcessSpec]:
        """One run of the command."""
        command = list(ctx.container.get("command") or [])
        if command not in ([], ["snapgroup"]):
            raise ContainerStartError(f"the snapgroup image runs only `snapgroup`, not {command}")
        args = [_mapped(str(a), ctx.mounts) for a in ctx.container.get("args") or []]
        argv = [sys.executable, "-m", "snapgroup.cli", *args]
        return [ProcessSpec(argv, {**ctx.base_env(), **ctx.env}, ctx.pod_dir)]

    def probe_ports(self, ctx: ContainerContext) -> list[int]:
        """None."""
        return []

    async def ready(self, ctx: ContainerContext) -> bool:
        """Running is ready."""
        return True


def _mapped(arg: str, mounts: dict[str, Path]) -> str:
    """A container path as this machine's path, when it lies on one of the mounts."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        base = mount_path.rstrip("/")
        if arg == base or arg.startswith(base + "/"):
            return str(mounts[mount_path]) + arg[len(base):]
    return arg


# (pattern on the normalised image reference, runtime); first match wins.
IMAGE_TABLE: list[tuple[re.Pattern[str], Runtime]] = [
    (re.compile(r"^postgres:15([.\-@].*)?$"), PostgresRuntime()),
    (re.compile(r"^mongo:7([.\-@].*)?$"), MongoStandInRuntime()),
    (re.compile(r"^(quay\.io/)?minio/minio([:@].*)?$"), S3StandInRuntime()),
    (re.compile(r"^snapgroup\.dev/bleater-data-writer([:@].*)?$"), DataWriterRuntime()),
    (re.compile(r"^([^/]+/)*snapgroup([:@].*)?$"), OperatorImageRuntime()),
]


def runtime_for(image: str) -> Runtime | None:
    """The runtime that emulates `image`, or None if the image is not emulated."""
    normalised = _normalise_image(image.strip())
    for pattern, runtime in IMAGE_TABLE:
        if pattern.match(normalised):
            return runtime
    return None


def data_volume(
    container: JSON, volume_sources: dict[str, JSON], mounts: dict[str, Path], scratch: Path
) -> Path:
    """The directory an image keeps its data in.

    The first mount backed by a PersistentVolumeClaim, else the first mount of a writable
    kind (emptyDir, hostPath), else a scratch directory of the pod.
    """
    ordered = [(m["name"], m["mountPath"]) for m in container.get("volumeMounts") or []]
    for name, mount_path in ordered:
        if "persistentVolumeClaim" in volume_sources.get(name, {}):
            return mounts[mount_path]
    for name, mount_path in ordered:
        source = volume_sources.get(name, {})
        if "emptyDir" in source or "hostPath" in source:
            return mounts[mount_path]
    return scratch
