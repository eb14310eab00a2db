"""What each emulated image starts: commands, addresses, environment."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from localcluster.node.runtimes import (
    TESTS_DIR,
    ContainerContext,
    ContainerStartError,
    DataWriterRuntime,
    MongoStandInRuntime,
    OperatorImageRuntime,
    PostgresRuntime,
    S3StandInRuntime,
    runtime_for,
)


def _context(tmp_path: Path, env: dict[str, str], ports: list[int] | None = None) -> ContainerContext:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("ferretdb", "s3server", "postgres"):
        binary = bin_dir / name
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return ContainerContext(
        namespace="bleater",
        pod_name="p",
        pod_uid="uid",
        pod_ip="127.10.0.42",
        container={"name": "c", "ports": [{"containerPort": p} for p in ports or []]},
        env=env,
        mounts={},
        data_dir=tmp_path / "volume",
        pod_dir=tmp_path / "pod",
        run_dir=tmp_path / "run",
        bin_dir=bin_dir,
        log_path=tmp_path / "c.log",
        postgres_bin_dir=bin_dir,
    )


def test_mongo_stand_in_is_ferretdb_behind_the_lock_layer_with_root_user(tmp_path: Path) -> None:
    ctx = _context(
        tmp_path,
        {"MONGO_INITDB_ROOT_USERNAME": "root", "MONGO_INITDB_ROOT_PASSWORD": "pw"},
        ports=[27017],
    )
    ferretdb, lock_layer = MongoStandInRuntime().processes(ctx)
    assert "--listen-addr=127.10.0.42:27018" in ferretdb.argv
    assert f"--sqlite-url=file:{tmp_path / 'volume' / 'ferretdb'}/" in ferretdb.argv
    assert "--telemetry=disable" in ferretdb.argv
    assert "--debug-addr=-" in ferretdb.argv
    assert "--test-enable-new-auth" in ferretdb.argv
    assert "--setup-username=root" in ferretdb.argv
    assert "--setup-database=admin" in ferretdb.argv
    assert ferretdb.env["FERRETDB_SETUP_PASSWORD"] == "pw"
    assert not any("pw" in arg for arg in ferretdb.argv)
    assert lock_layer.argv[1:] == [
        "-m",
        "localcluster.mongolock",
        "--listen",
        "127.10.0.42:27017",
        "--upstream",
        "127.10.0.42:27018",
    ]
    assert lock_layer.env["PYTHONPATH"] == str(TESTS_DIR)


def test_mongo_without_root_user_runs_without_authentication(tmp_path: Path) -> None:
    ferretdb, _ = MongoStandInRuntime().processes(_context(tmp_path, {}))
    assert not any(arg.startswith(("--test-enable-new-auth", "--setup")) for arg in ferretdb.argv)


def test_s3_stand_in_gets_the_minio_credentials(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "secret123"}, [9000])
    (server,) = S3StandInRuntime().processes(ctx)
    assert server.argv[1:] == ["--listen", "127.10.0.42:9000", "--data", str(tmp_path / "volume")]
    assert server.env["MINIO_ROOT_USER"] == "u"
    assert server.env["MINIO_ROOT_PASSWORD"] == "secret123"


def test_data_writer_runs_the_project_module_with_the_container_env(tmp_path: Path) -> None:
    (writer,) = DataWriterRuntime().processes(_context(tmp_path, {"PGHOST": "127.96.0.10"}))
    assert writer.argv[1:] == ["-m", "localcluster.datawriter"]
    assert writer.env["PGHOST"] == "127.96.0.10"
    assert writer.env["HOSTNAME"] == "p"


@pytest.mark.parametrize("image", ["snapgroup:0.1.0", "registry.example/team/snapgroup:1", "snapgroup"])
def test_the_operator_image_is_emulated(image: str) -> None:
    assert isinstance(runtime_for(image), OperatorImageRuntime)


def test_the_operator_image_runs_snapgroup_with_its_args_on_the_mounted_directories(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"X": "1"})
    ctx.container = {"name": "snapgroup-prepare", "image": "snapgroup:0.1.0",
                     "args": ["prepare-pgdata", "--pgdata", "/var/lib/postgresql/data/pgdata",
                              "--from", "/snapgroup/restore", "--other", "/elsewhere"]}
    ctx.mounts = {"/var/lib/postgresql/data": tmp_path / "claim", "/snapgroup/restore": tmp_path / "secret",
                  "/var/lib/postgresql": tmp_path / "outer"}
    (step,) = OperatorImageRuntime().processes(ctx)
    assert step.argv[1:] == ["-m", "snapgroup.cli", "prepare-pgdata",
                             "--pgdata", f"{tmp_path}/claim/pgdata", "--from", f"{tmp_path}/secret",
                             "--other", "/elsewhere"]
    assert step.env["X"] == "1"


def test_the_operator_image_runs_nothing_but_snapgroup(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {})
    ctx.container = {"name": "c", "image": "snapgroup:0.1.0", "command": ["sh", "-c", "id"]}
    with pytest.raises(ContainerStartError, match="runs only `snapgroup`"):
        OperatorImageRuntime().processes(ctx)


def test_postgres_listens_on_the_pod_ip_and_stops_fast(tmp_path: Path) -> None:
    (server,) = PostgresRuntime().processes(_context(tmp_path, {"PGPORT": "1"}, [5433]))
    assert server.user == "postgres"
    assert server.stop_signal == signal.SIGINT
    assert "listen_addresses=127.10.0.42" in server.argv
    assert server.argv[server.argv.index("-p") + 1] == "5433"
    assert "PGPORT" not in server.env


def test_missing_binary_is_a_start_error(tmp_path: Path) -> None:
    ctx = _context(tmp_path, {})
    (ctx.bin_dir / "s3server").unlink()
    with pytest.raises(ContainerStartError, match="s3server"):
        S3StandInRuntime().processes(ctx)
