"""Writing a PostgreSQL backup's files into a restored PGDATA, before the server starts.

The restored volume holds PGDATA as it was while the backup ran. With the backup's
`backup_label` (and `tablespace_map`) in place, PostgreSQL starts backup recovery at the backup's
redo point and replays up to its end-of-backup record instead of trusting the copy as a crash
image. That record was written after the snapshot, so the WAL from the backup's start through it,
kept with the snapshot, is laid over the restored `pg_wal` first.

Run as the restored pod's init step on every start: a marker file makes it act once, so a pod
restarted after recovery never puts a label back on a server that has moved on.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from snapgroup.api.restore import PG_LABEL_FILE as BACKUP_LABEL
from snapgroup.api.restore import PG_TABLESPACE_MAP_FILE as TABLESPACE_MAP
from snapgroup.api.restore import PG_WAL_FILE as BACKUP_WAL
from snapgroup.api.restore import PG_WAL_START_FILE as BACKUP_WAL_START
from snapgroup.api.restore import WalStart

MARKER = "snapgroup-backup-prepared"
"""In PGDATA once the backup's files are written: its content is the label written."""



class PreparationError(Exception):
    """The files cannot be applied to this directory; the server must not start."""


def lsn_number(lsn: str) -> int:
    """An LSN as PostgreSQL prints it ("0/2000028") as a byte position."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def wal_file_name(timeline: int, segment_number: int, segment_size: int) -> str:
    """The name of a WAL segment file, as PostgreSQL's XLogFileName makes it."""
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{segment_number // per_id:08X}{segment_number % per_id:08X}"


AUTO_CONF = "postgresql.auto.conf"
NO_ARCHIVING = (
    "# snapgroup restore: a restored server never archives into its source's WAL archive;\n"
    "# ALTER SYSTEM RESET archive_mode (and a restart) archives again, once it has its own.\n"
    "archive_mode = 'off'\n"
)

MAX_WAL = 64 * 1024 * 1024
"""Bytes of kept WAL accepted at most, unpacked (what the operator keeps is far less)."""


def prepare_pgdata(pgdata: Path, source: Path, keep_archiving: bool = False) -> str:
    """Apply the backup in `source` to `pgdata`; a sentence saying what was done.

    Archiving is turned off (a clone must not write into its source's archive) unless
    keep_archiving: a restore in place is the source itself, and goes on archiving as it did.

    A marker holding the applied label makes a later start of the same restore do nothing; a
    different label is a new backup (a clone of a clone) and is applied. What is written belongs
    to PGDATA's owner, whoever runs this.
    """
    if not (pgdata / "PG_VERSION").is_file():
        raise PreparationError(f"{pgdata} holds no PG_VERSION: it is not the restored data directory")
    label = (source / BACKUP_LABEL).read_text()
    marker = pgdata / MARKER
    if marker.is_file() and marker.read_text() == label:
        return "the backup was prepared on an earlier start; nothing to do"
    start = _checked(WalStart.from_text((source / BACKUP_WAL_START).read_text()))
    wal = _unpacked((source / BACKUP_WAL).read_bytes())
    owner = pgdata.stat()
    segments = _lay_wal(pgdata / "pg_wal", start, wal, (owner.st_uid, owner.st_gid))
    _write(pgdata / BACKUP_LABEL, label, (owner.st_uid, owner.st_gid))
    if (source / TABLESPACE_MAP).is_file() and (source / TABLESPACE_MAP).read_text():
        _write(pgdata / TABLESPACE_MAP, (source / TABLESPACE_MAP).read_text(), (owner.st_uid, owner.st_gid))
    if not keep_archiving:
        _no_archiving(pgdata / AUTO_CONF, (owner.st_uid, owner.st_gid))
    _write(marker, label, (owner.st_uid, owner.st_gid))
    return (f"wrote {BACKUP_LABEL} and {len(wal)} bytes of WAL from {start.start} into "
            f"{len(segments)} segment(s): the server starts backup recovery, "
            + ("archiving as before" if keep_archiving else "with archiving off"))


def _no_archiving(auto_conf: Path, owner: tuple[int, int]) -> None:
    """Turn WAL archiving off in the restored server's postgresql.auto.conf (read last, so it
    wins over postgresql.conf): the restored server is on its source's timeline, and archiving
    would write WAL files of the same names into the source's archive."""
    text = auto_conf.read_text() if auto_conf.is_file() else ""
    if NO_ARCHIVING in text:
        return
    _write(auto_conf, text + ("" if not text or text.endswith("\n") else "\n") + NO_ARCHIVING, owner)


def _checked(start: WalStart) -> WalStart:
    size = start.segment_size
    if not (2**20 <= size <= 2**30 and size & (size - 1) == 0):
        raise PreparationError(f"segment size {size} is not a power of two from 1 MiB to 1 GiB")
    if start.timeline < 1:
        raise PreparationError(f"timeline {start.timeline} is not a PostgreSQL timeline")
    lsn_number(start.start)  # a readable LSN
    return start


def _unpacked(packed: bytes) -> bytes:
    inflate = zlib.decompressobj(wbits=31)  # gzip
    wal = inflate.decompress(packed, MAX_WAL)
    if inflate.unconsumed_tail or not inflate.eof:
        raise PreparationError(f"the kept WAL unpacks to more than {MAX_WAL} bytes, or is cut short")
    return wal


def _lay_wal(pg_wal: Path, start: WalStart, wal: bytes, owner: tuple[int, int]) -> list[str]:
    """Write the WAL bytes at their places in the segment files; missing segments are made
    full size (zeros beyond the bytes, as PostgreSQL reads them: the end of the WAL)."""
    if not pg_wal.is_dir():
        raise PreparationError(f"{pg_wal} is missing: PGDATA is not whole")
    position = lsn_number(start.start)
    done = 0
    names: list[str] = []
    while done < len(wal):
        offset = position % start.segment_size
        length = min(start.segment_size - offset, len(wal) - done)
        name = wal_file_name(start.timeline, position // start.segment_size, start.segment_size)
        path = pg_wal / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < start.segment_size:
                os.ftruncate(fd, start.segment_size)
            os.pwrite(fd, wal[done:done + length], offset)
            _own(fd, owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        names.append(name)
        position += length
        done += length
    _sync_directory(pg_wal)
    return names


def _write(path: Path, text: str, owner: tuple[int, int]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as out:
        out.write(text)
        out.flush()
        _own(out.fileno(), owner)
        os.fsync(out.fileno())
    os.chmod(partial, 0o600)
    partial.replace(path)
    _sync_directory(path.parent)


def _own(fd: int, owner: tuple[int, int]) -> None:
    """Give a written file to PGDATA's owner (possible as root, needless as that owner)."""
    if os.fstat(fd).st_uid != owner[0]:
        os.fchown(fd, *owner)


def _sync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
