"""prepare-pgdata: the backup's WAL laid over the restored pg_wal, the label written, once."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from snapgroup.adapters.pgdata import (
    MARKER,
    MAX_WAL,
    NO_ARCHIVING,
    PreparationError,
    lsn_number,
    prepare_pgdata,
    wal_file_name,
)
from snapgroup.api.restore import WalStart

SEGMENT = 2**20  # the smallest segment PostgreSQL allows
LABEL = "START WAL LOCATION: 0/1FFF8 (file 000000010000000000000001)\n"


def pgdata(tmp_path: Path) -> Path:
    data = tmp_path / "pgdata"
    (data / "pg_wal").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    return data


def source(tmp_path: Path, start: str, wal: bytes, tablespace_map: str = "") -> Path:
    src = tmp_path / "restore"
    src.mkdir(exist_ok=True)
    (src / "backup_label").write_text(LABEL)
    (src / "backup-wal").write_bytes(gzip.compress(wal))
    (src / "backup-wal-start").write_text(WalStart(start, 1, SEGMENT).to_text())
    if tablespace_map:
        (src / "tablespace_map").write_text(tablespace_map)
    return src


def test_lsns_and_segment_names_are_read_as_postgresql_writes_them() -> None:
    assert lsn_number("0/2000028") == 0x2000028
    assert lsn_number("1/0") == 1 << 32
    assert wal_file_name(1, 2, 16 * 1024 * 1024) == "000000010000000000000002"
    assert wal_file_name(1, 0x100, 16 * 1024 * 1024) == "000000010000000100000000"
    assert wal_file_name(3, 0x100000000 // SEGMENT, SEGMENT) == "000000030000000100000000"


def test_the_wal_is_laid_at_its_offsets_across_a_segment_boundary_over_what_the_copy_holds(
    tmp_path: Path,
) -> None:
    data = pgdata(tmp_path)
    first = data / "pg_wal" / wal_file_name(1, 1, SEGMENT)
    copied = bytes(range(256)) * (SEGMENT // 256)
    first.write_bytes(copied)  # the torn copy's segment: full size, older bytes
    wal = b"W" * 16 + b"X" * 32
    start = SEGMENT + SEGMENT - 16  # the last 16 bytes of segment 1, then 32 bytes of segment 2

    message = prepare_pgdata(data, source(tmp_path, f"0/{start:X}", wal, "16384 /ts\n"))

    first_bytes = first.read_bytes()
    assert first_bytes[:-16] == copied[:-16]  # what the copy held before the backup's WAL stays
    assert first_bytes[-16:] == b"W" * 16
    second = data / "pg_wal" / wal_file_name(1, 2, SEGMENT)
    assert second.stat().st_size == SEGMENT  # made full size, zeros beyond the WAL
    assert second.read_bytes()[:32] == b"X" * 32 and set(second.read_bytes()[32:]) == {0}
    assert (data / "backup_label").read_text() == LABEL
    assert (data / "tablespace_map").read_text() == "16384 /ts\n"
    assert "2 segment(s)" in message
    # The restored server would archive into its source's archive: off, after what was there.
    assert (data / "postgresql.auto.conf").read_text() == NO_ARCHIVING


def test_a_second_start_finds_the_marker_and_writes_nothing(tmp_path: Path) -> None:
    data = pgdata(tmp_path)
    src = source(tmp_path, "0/10", b"W" * 8)
    prepare_pgdata(data, src)
    (data / "backup_label").rename(data / "backup_label.old")  # what recovery does with it
    assert (data / MARKER).read_text() == LABEL

    assert "nothing to do" in prepare_pgdata(data, src)
    assert not (data / "backup_label").exists()
    assert (data / "postgresql.auto.conf").read_text().count("archive_mode = 'off'") == 1


def test_a_directory_prepared_from_another_backup_takes_the_new_one(tmp_path: Path) -> None:
    # A clone's PGDATA carries the marker of its own restore; a clone of it brings a new backup.
    data = pgdata(tmp_path)
    (data / MARKER).write_text("START WAL LOCATION: 0/5000028\n")
    (data / "postgresql.auto.conf").write_text("work_mem = '8MB'\n" + NO_ARCHIVING)
    prepare_pgdata(data, source(tmp_path, "0/10", b"W"))
    assert (data / "postgresql.auto.conf").read_text() == "work_mem = '8MB'\n" + NO_ARCHIVING
    assert (data / "backup_label").read_text() == LABEL
    assert (data / MARKER).read_text() == LABEL


@pytest.mark.parametrize(("start", "problem"), [
    (WalStart("0/10", 1, 3 * 2**20), "not a power of two"),
    (WalStart("0/10", 1, 2**31), "not a power of two"),
    (WalStart("0/10", 0, SEGMENT * 16), "not a PostgreSQL timeline"),
])
def test_a_hostile_wal_start_is_refused_before_anything_is_written(
    tmp_path: Path, start: WalStart, problem: str
) -> None:
    data = pgdata(tmp_path)
    src = source(tmp_path, "0/10", b"W")
    (src / "backup-wal-start").write_text(start.to_text())
    with pytest.raises(PreparationError, match=problem):
        prepare_pgdata(data, src)
    assert sorted(p.name for p in data.iterdir()) == ["PG_VERSION", "pg_wal"]
    assert list((data / "pg_wal").iterdir()) == []


def test_kept_wal_that_unpacks_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    data = pgdata(tmp_path)
    src = source(tmp_path, "0/10", b"")
    (src / "backup-wal").write_bytes(gzip.compress(b"\0" * (MAX_WAL + 1)))
    with pytest.raises(PreparationError, match="unpacks to more than"):
        prepare_pgdata(data, src)
    assert not (data / "backup_label").exists()


def test_a_directory_without_pg_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PreparationError, match="holds no PG_VERSION"):
        prepare_pgdata(empty, source(tmp_path, "0/10", b"W"))
    assert list(empty.iterdir()) == []
