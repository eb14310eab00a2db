"""What a restored server needs before it starts, per service type.

A PostgreSQL snapshot taken inside an online backup restores correctly only with the backup's
`backup_label` (and `tablespace_map`) and the WAL up to the backup's end written into PGDATA: the
operator kept them as annotations of the snapshot, and the restored pod's init step
(`snapgroup prepare-pgdata`) writes them back. MongoDB and MinIO need nothing.
"""

from __future__ import annotations

import base64
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snapgroup.api.labels import (
    PG_BACKUP_LABEL,
    PG_BACKUP_WAL,
    PG_BACKUP_WAL_START,
    PG_TABLESPACE_MAP,
)
from snapgroup.api.restore import PG_LABEL_FILE, PG_TABLESPACE_MAP_FILE, PG_WAL_FILE, PG_WAL_START_FILE

PREPARATION_MOUNT = "/snapgroup/restore"
"""Where a restored server's init step finds the files kept with its snapshot."""
_DEFAULT_PGDATA = "/var/lib/postgresql/data"


@dataclass(frozen=True)
class Preparation:
    """Files (Secret data: base64 of each file's bytes) mounted at PREPARATION_MOUNT, and the
    arguments of the operator command that applies them to the restored volume."""

    files: dict[str, str]
    args: list[str]
    summary: str


def prepare_restore(
    service_type: str, annotations: Mapping[str, str], container: Mapping[str, Any], mount_path: str
) -> Preparation | str:
    """The init step for a restored server of this type, or a sentence saying how it starts."""
    if service_type != "postgresql":
        return "starts as it was cut; nothing to prepare"
    return _postgres(annotations, container, mount_path)


def _text(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _postgres(
    annotations: Mapping[str, str], container: Mapping[str, Any], mount_path: str
) -> Preparation | str:
    label = annotations.get(PG_BACKUP_LABEL)
    wal = annotations.get(PG_BACKUP_WAL)
    start = annotations.get(PG_BACKUP_WAL_START)
    if not label:
        return "crash recovery: no backup label was kept with the snapshot"
    if not wal or not start:
        # A backup_label without the WAL up to the backup's end makes PostgreSQL refuse to
        # start ("WAL ends before end of online backup"): crash recovery is the only way left.
        return "crash recovery: the backup's WAL was not kept with the snapshot, so its label cannot be used"
    pgdata = _pgdata(container, mount_path)
    if pgdata is None:
        return f"crash recovery: PGDATA of container {container.get('name')} is not on the restored claim"
    files = {PG_LABEL_FILE: _text(label), PG_WAL_FILE: wal, PG_WAL_START_FILE: _text(start)}
    if annotations.get(PG_TABLESPACE_MAP):
        files[PG_TABLESPACE_MAP_FILE] = _text(annotations[PG_TABLESPACE_MAP])
    return Preparation(
        files=files,
        args=["prepare-pgdata", "--pgdata", pgdata, "--from", PREPARATION_MOUNT],
        summary="backup recovery: the backup label and WAL kept with the snapshot are written into PGDATA",
    )


def _pgdata(container: Mapping[str, Any], mount_path: str) -> str | None:
    literal = next((e.get("value") for e in container.get("env") or []
                    if e.get("name") == "PGDATA" and isinstance(e.get("value"), str)), None)
    pgdata = posixpath.normpath(literal or _DEFAULT_PGDATA)
    mount = posixpath.normpath(mount_path)
    return pgdata if pgdata == mount or pgdata.startswith(mount + "/") else None
