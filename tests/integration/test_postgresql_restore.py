"""A PostgreSQL backup kept with its snapshot restores by backup recovery (real PostgreSQL 15).

The "snapshot" is a file copy of the running server's data directory taken inside the backup, as
a copying CSI driver (the local hostpath driver) makes one: not one atomic instant. The hook keeps
the backup's label and WAL after the stop; `snapgroup prepare-pgdata` (the restored pod's init
step) writes them into the copy; the copy's server must then say in its log that it started
backup recovery at the backup's start LSN, and hold exactly the rows committed before the copy.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localcluster.services_bin import as_postgres, free_port
from snapgroup.adapters.pgdata import MARKER
from snapgroup.api.labels import PG_BACKUP_LABEL, PG_BACKUP_WAL, PG_BACKUP_WAL_START
from snapgroup.hooks.restore_prep import PREPARATION_MOUNT, Preparation, prepare_restore

from .conftest import PG_BIN
from .test_postgresql_hook import plan

pytestmark = pytest.mark.postgres

PGDATA = "/var/lib/postgresql/data"
CONTAINER = {"name": "postgres", "env": [{"name": "PGDATA", "value": PGDATA}]}


@pytest.fixture
def workdir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="snapgroup-pg-restore-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _chown_tree(path: Path) -> None:
    if os.geteuid() == 0:
        for directory, _, files in os.walk(path):
            shutil.chown(directory, "postgres", "postgres")
            for name in files:
                shutil.chown(os.path.join(directory, name), "postgres", "postgres")


def _prepare(pgdata: Path, preparation: Preparation, source: Path) -> subprocess.CompletedProcess[str]:
    """What the init step does: the Secret's files in a directory, then the operator's command
    with the step's arguments (the container paths mapped to this machine's)."""
    source.mkdir(exist_ok=True)
    for name, data in preparation.files.items():
        (source / name).write_bytes(base64.b64decode(data))
    args = [str(pgdata) if a == PGDATA else str(source) if a == PREPARATION_MOUNT else a
            for a in preparation.args]
    return subprocess.run([sys.executable, "-m", "snapgroup.cli", *args],
                          capture_output=True, text=True, check=False)


class _Restored:
    """A second server on the copied data directory."""

    def __init__(self, pgdata: Path, root: Path, password: str) -> None:
        self.pgdata, self.root, self.password = pgdata, root, password
        self.port = free_port()
        self.log = root / "restored.log"

    def start(self) -> subprocess.CompletedProcess[str]:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        return subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log),
                         "-o", options, "-w", "-t", "60", "start"]),
            capture_output=True, text=True, check=False)

    def stop(self) -> None:
        subprocess.run(as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "immediate",
                                    "-w", "stop"]), capture_output=True, check=False)

    def rows(self, table: str) -> list[int]:
        with self._connect() as conn:
            return [r[0] for r in conn.execute(f"SELECT seq FROM {table} ORDER BY seq").fetchall()]

    def setting(self, name: str) -> str:
        with self._connect() as conn:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            assert row is not None
            return str(row[0])

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.password,
                               dbname="postgres")


async def test_a_copy_taken_inside_the_backup_restores_by_backup_recovery_at_its_start_lsn(
    postgres_server: Any, hook_context: Any, workdir: Path
) -> None:
    table = "restore_records"
    async with await psycopg.AsyncConnection.connect(postgres_server.conninfo(), autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"CREATE TABLE {table} (seq int PRIMARY KEY, at timestamptz DEFAULT now())")
        await conn.execute(f"INSERT INTO {table} (seq) SELECT generate_series(1, 100)")
        hook = await plan(hook_context(**{"postgres-credentials": postgres_server.secret()}))
        try:
            record = await hook.apply()
            # Committed inside the backup, before the cut: the restore must hold these.
            await conn.execute(f"INSERT INTO {table} (seq) SELECT generate_series(101, 200)")
            copy = workdir / "pgdata"
            shutil.copytree(postgres_server.data_dir, copy, symlinks=True)
            await hook.undo(record)
            kept = await hook.keep_with_snapshot()
        finally:
            await hook.release()
        # Committed after the backup ended: never in the restore.
        await conn.execute(f"INSERT INTO {table} (seq) SELECT generate_series(201, 300)")

    assert {PG_BACKUP_LABEL, PG_BACKUP_WAL, PG_BACKUP_WAL_START} <= kept.keys(), hook.evidence()
    assert f"START WAL LOCATION: {record['startLsn']} " in kept[PG_BACKUP_LABEL]
    assert hook.evidence()["backupKept"].startswith("label and ")
    preparation = prepare_restore("postgresql", kept, CONTAINER, PGDATA)
    assert isinstance(preparation, Preparation), preparation

    (copy / "postmaster.pid").unlink(missing_ok=True)  # the copied server's, stale here
    # As if the source archived its WAL: the restored server must not archive into that archive.
    with (copy / "postgresql.conf").open("a") as conf:
        conf.write("archive_mode = on\narchive_command = 'cp %p /nonexistent/%f'\n")
    prepared = _prepare(copy, preparation, workdir / "restore")
    assert prepared.returncode == 0, prepared.stderr
    assert (copy / "backup_label").read_text() == kept[PG_BACKUP_LABEL]
    _chown_tree(workdir)

    restored = _Restored(copy, workdir, postgres_server.password)
    started = restored.start()
    try:
        log = restored.log.read_text(errors="replace")
        assert started.returncode == 0, log
        assert f"starting backup recovery with redo LSN {record['startLsn']}," in log
        assert "completed backup recovery with redo LSN" in log
        assert restored.rows(table) == list(range(1, 201))
        assert restored.setting("archive_mode") == "off"  # never into the source's archive
    finally:
        restored.stop()

    # The init step runs on every start of the pod: after recovery it must leave PGDATA alone.
    again = _prepare(copy, preparation, workdir / "restore")
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert not (copy / "backup_label").exists()  # recovery renamed it to backup_label.old
    assert (copy / MARKER).read_text() == kept[PG_BACKUP_LABEL]


def test_prepare_pgdata_refuses_a_directory_that_is_not_pgdata(workdir: Path) -> None:
    (workdir / "restore").mkdir()
    (workdir / "restore" / "backup_label").write_text("START WAL LOCATION: 0/2000028\n")
    done = subprocess.run(
        [sys.executable, "-m", "snapgroup.cli", "prepare-pgdata", "--pgdata", str(workdir / "empty"),
         "--from", str(workdir / "restore")], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "holds no PG_VERSION" in done.stderr
