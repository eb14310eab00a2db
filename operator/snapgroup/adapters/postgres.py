"""PostgreSQL through psycopg 3: one asynchronous session held open through the freeze window.

A non-exclusive backup belongs to the session that started it, so the same `PostgresConnection`
must start and stop it; closing the session aborts the backup on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, TypeVar

import psycopg
import psycopg.abc
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.postgres import types as pg_types

from snapgroup.adapters.pgdata import wal_file_name
from snapgroup.api.snapshotgroup import split_table
from snapgroup.ports import BackupEnd, BackupWal, ClockSample, StepError

APPLICATION_NAME = "snapgroup"
"""Shown in pg_stat_activity for the operator's sessions."""

_PG15 = 150000
"""server_version_num from which pg_backup_start/pg_backup_stop replace the older names."""

_AUTH_FAILURE_MARKERS = ("authentication failed", "pg_hba.conf", "role \"")
"""libpq reports connection failures as text only (no SQLSTATE); these phrases mean credentials."""

T = TypeVar("T")

_STATEMENT_TIMEOUT_SHARE = 0.8
_LOCK_TIMEOUT_SHARE = 0.5
"""statement_timeout and lock_timeout of a record read, as shares of the call timeout: a lock
wait is reported as one, and both end before the client gives up."""


def _oid(name: str) -> int:
    info = pg_types.get(name)
    assert info is not None
    return info.oid


_TIMESTAMPTZ_OID, _TIMESTAMP_OID, _DATE_OID = (
    _oid("timestamptz"), _oid("timestamp"), _oid("date")
)


@dataclass(frozen=True)
class PostgresAddress:
    """Connection parameters read from a Secret; the password never shows in a repr."""

    params: dict[str, str] = field(repr=False)
    """libpq keywords: host, port, user, password, dbname."""
    hidden: tuple[str, ...] = field(repr=False, default=())
    """Values that must never appear in a message."""

    @classmethod
    def from_secret(cls, secret: Mapping[str, str]) -> PostgresAddress:
        """Read `uri`, or host/port/username (or user)/password/database (or dbname)."""
        uri = secret.get("uri")
        if uri:
            try:
                params = {k: str(v) for k, v in conninfo_to_dict(uri).items()}
            except psycopg.Error:
                raise StepError(
                    "SecretInvalid",
                    "the Secret's uri key is not a PostgreSQL connection URI "
                    "(postgresql://user:password@host:port/database)",
                ) from None
            return cls(params, tuple(v for v in (uri, params.get("password")) if v))
        missing = [
            "/".join(names) for names in (("host",), ("username", "user"), ("password",))
            if not any(secret.get(n) for n in names)
        ]
        if missing:
            raise StepError(
                "SecretIncomplete",
                f"the Secret lacks {', '.join(missing)}; set uri, or host, port, username, "
                "password and database",
            )
        params = {
            "host": secret["host"],
            "port": secret.get("port") or "5432",
            "user": secret.get("username") or secret["user"],
            "password": secret["password"],
        }
        database = secret.get("database") or secret.get("dbname")
        if database:
            params["dbname"] = database
        return cls(params, (secret["password"],))

    def describe(self) -> str:
        """Where the server is, for messages: ``PostgreSQL at host:port as user``."""
        host = self.params.get("host") or "the default host"
        port = self.params.get("port") or "5432"
        user = self.params.get("user")
        return f"PostgreSQL at {host}:{port}" + (f" as {user}" if user else "")

    def redact(self, text: str) -> str:
        """The text with every credential replaced."""
        for value in self.hidden:
            text = text.replace(value, "***")
        return text


class PostgresConnection:
    """A `ports.PostgresSession`: one autocommit psycopg AsyncConnection, every call bounded."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], address: PostgresAddress, timeout: float
    ) -> None:
        self._conn = conn
        self._address = address
        self._timeout = timeout
        self._version: int | None = None

    def __repr__(self) -> str:
        return f"<PostgresConnection {self._address.describe()}>"

    @classmethod
    async def open(
        cls, secret: Mapping[str, str], timeout: float, application_name: str = APPLICATION_NAME
    ) -> PostgresConnection:
        """Connect with the Secret's data; StepError DatabaseUnreachable or AuthenticationFailed.

        The session shows as application_name in pg_stat_activity (a group names its sessions,
        so one left behind can be found and closed)."""
        address = PostgresAddress.from_secret(secret)
        connecting = asyncio.ensure_future(asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                make_conninfo("", **address.params),
                autocommit=True,
                # libpq takes whole seconds and treats anything below 2 as 2.
                connect_timeout=max(2, math.ceil(timeout)),
                application_name=application_name,
            ),
            timeout,
        ))
        try:
            conn = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            # The server may already have the session: let the connect end (within its own
            # timeout) and close what it opened, so no session outlives a cancelled plan.
            await asyncio.wait({connecting})
            if not connecting.cancelled() and connecting.exception() is None:
                await connecting.result().close()
            raise
        except TimeoutError:
            raise StepError(
                "DatabaseUnreachable",
                f"{address.describe()} did not accept a connection within {timeout:g}s",
            ) from None
        except psycopg.Error as exc:
            text = address.redact(str(exc)).removeprefix("connection failed: ")
            reason = (
                "AuthenticationFailed"
                if any(m in text for m in _AUTH_FAILURE_MARKERS)
                else "DatabaseUnreachable"
            )
            raise StepError(
                reason, f"cannot connect to {address.describe()}: {' '.join(text.split())}"
            ) from None
        return cls(conn, address, timeout)

    async def server_version(self) -> int:
        """server_version_num of the server, e.g. 150004."""
        if self._version is None:
            # A round trip rather than the number libpq kept from the handshake: this is also
            # the plan's proof that the session works.
            value = await self._call(
                "reading the server version",
                lambda: self._scalar(sql.SQL("SELECT current_setting('server_version_num')")),
            )
            self._version = int(str(value))
        return self._version

    async def backup_start(self, label: str) -> str:
        """Enter non-exclusive backup mode with a fast checkpoint; returns the start LSN."""
        if await self.server_version() >= _PG15:
            query = sql.SQL("SELECT pg_backup_start({}, fast => true)::text")
        else:
            query = sql.SQL("SELECT pg_start_backup({}, true, false)::text")
        statement = query.format(sql.Literal(label))
        return str(await self._call("starting the backup", lambda: self._scalar(statement)))

    async def backup_stop(self) -> BackupEnd:
        """Leave backup mode on this session; returns the stop LSN, backup_label and
        tablespace_map.

        Does not wait for WAL archiving: the snapshot already holds the volume, and waiting on an
        archiver would keep the services frozen.
        """
        if await self.server_version() >= _PG15:
            query = sql.SQL("SELECT lsn::text, labelfile, coalesce(spcmapfile, '')"
                            " FROM pg_backup_stop(wait_for_archive => false)")
        else:
            query = sql.SQL("SELECT lsn::text, labelfile, coalesce(spcmapfile, '')"
                            " FROM pg_stop_backup(false, false)")
        lsn, label, spcmap = await self._call("stopping the backup", lambda: self._row(query))
        return BackupEnd(str(lsn), str(label or ""), str(spcmap or ""))

    async def backup_wal(self, start: str, end: str, limit: int) -> BackupWal:
        """WAL bytes from start through the WAL page holding end, read with
        pg_read_binary_file from each segment in between.

        pg_backup_stop switched to a new segment after its end-of-backup record, so that part of
        the WAL is on disk. Reading it needs superuser or pg_read_server_files.
        """
        layout = sql.SQL(
            "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_block_size'),"
            " (SELECT timeline_id FROM pg_control_checkpoint()),"
            " {}::pg_lsn - '0/0'::pg_lsn, {}::pg_lsn - '0/0'::pg_lsn"
        ).format(sql.Literal(start), sql.Literal(end))
        segment, block, timeline, first, last = (
            int(str(v)) for v in await self._call("reading the WAL layout", lambda: self._row(layout)))
        # Whole pages: from the one holding `start` (its header too) through the one holding `end`.
        first, last = first // block * block, (last // block + 1) * block
        if last - first > limit:
            raise StepError("BackupWalTooLong", f"the backup's WAL is {last - first} bytes, "
                                                f"more than the {limit} read for a snapshot")
        pieces: list[bytes] = []
        position = first
        while position < last:
            offset = position % segment
            length = min(segment - offset, last - position)
            name = wal_file_name(timeline, position // segment, segment)
            read = sql.SQL("SELECT pg_read_binary_file({}, {}, {})").format(
                sql.Literal(f"pg_wal/{name}"), sql.Literal(offset), sql.Literal(length))
            chunk = await self._call(f"reading WAL segment {name}", functools.partial(self._scalar, read))
            assert isinstance(chunk, bytes | memoryview)
            pieces.append(bytes(chunk))
            position += length
        return BackupWal(f"{first >> 32:X}/{first & 0xFFFFFFFF:X}", timeline, segment, b"".join(pieces))

    async def newest_record(
        self, table: str | None, column: str | None, query: str | None
    ) -> datetime | None:
        """max(column) of table, or the query's single value, in a READ ONLY transaction with
        statement and lock timeouts.

        Table and column are quoted as identifiers (``schema.table`` split on its dot). The query
        goes through the extended protocol, so the server refuses anything but one statement. A
        `timestamp without time zone` is read in the session's TimeZone; a `date` is refused.
        """
        statement: psycopg.abc.Query
        if query:
            statement, what = query, "the lastRecord query"
        elif table and column:
            statement = sql.SQL("SELECT max({}) FROM {}").format(
                sql.Identifier(column), sql.Identifier(*split_table(table))
            )
            what = f"lastRecord column {column} of table {table}"
        else:
            raise StepError("LastRecordInvalid", "lastRecord needs table and column, or query")
        value, type_oid = await self._call(
            f"reading {what}", lambda: self._read_only(statement), subject=what
        )
        return self._as_time(value, type_oid, what)

    async def column_indexed(self, table: str, column: str) -> bool:
        """True when an index of the table has the column as its first key (max() then reads one
        index entry instead of scanning the table)."""
        qualified = sql.Identifier(*split_table(table)).as_string(self._conn)
        statement = sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = to_regclass({}) AND a.attname = {})"
        ).format(sql.Literal(qualified), sql.Literal(column))
        return bool(await self._call("looking for an index", lambda: self._scalar(statement)))

    async def clock_sample(self) -> ClockSample:
        """The server's clock_timestamp() between two readings of the operator's clock."""
        before = datetime.now(UTC)
        value = await self._call(
            "reading the server clock", lambda: self._scalar(sql.SQL("SELECT clock_timestamp()"))
        )
        after = datetime.now(UTC)
        if not isinstance(value, datetime):
            raise StepError("QueryFailed", f"{self._address.describe()} returned no clock time")
        return ClockSample(before, value, after, resolution=1e-6)

    async def terminate_sessions(self, application_name: str) -> int:
        """End every other session named application_name (pg_terminate_backend); how many."""
        statement = sql.SQL(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = {} AND pid <> pg_backend_pid()"
        ).format(sql.Literal(application_name))
        value = await self._call("closing sessions left behind", lambda: self._scalar(statement))
        return int(str(value))

    async def close(self) -> None:
        """Close the session; a backup still in progress ends with it."""
        # The server ends the session (and its backup) when the socket goes away anyway.
        with contextlib.suppress(TimeoutError, psycopg.Error):
            await asyncio.wait_for(self._conn.close(), self._timeout)

    async def _read_only(self, statement: psycopg.abc.Query) -> tuple[object, int]:
        """The first value of the statement's first row and its type oid, read-only, bounded."""
        # The server's own timeouts end the statement first, a little before the client gives
        # up: the session (maybe holding the backup) stays usable.
        statement_ms = max(1, int(self._timeout * 1000 * _STATEMENT_TIMEOUT_SHARE))
        lock_ms = max(1, int(self._timeout * 1000 * _LOCK_TIMEOUT_SHARE))
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute(
                sql.SQL(
                    "SET TRANSACTION READ ONLY; SET LOCAL statement_timeout = {};"
                    " SET LOCAL lock_timeout = {}"
                ).format(sql.Literal(statement_ms), sql.Literal(lock_ms))
            )
            # Binary results force the extended protocol: one Parse, one statement. The simple
            # protocol would run `COMMIT; DROP TABLE ...` as three.
            await cur.execute(statement, binary=True)
            if cur.description is None or len(cur.description) != 1:
                raise StepError(
                    "LastRecordInvalid",
                    "the lastRecord query must return exactly one column, the newest record time",
                )
            type_oid = cur.description[0].type_code
            row = await cur.fetchone()
        return (None if row is None else row[0]), type_oid

    def _as_time(self, value: object, type_oid: int, what: str) -> datetime | None:
        if type_oid == _DATE_OID:
            raise StepError(
                "LastRecordInvalid",
                f"{what} is a date: it has no time of day, so no record can be placed before or "
                "after the cut; point lastRecord at a timestamp column",
            )
        if type_oid not in (_TIMESTAMPTZ_OID, _TIMESTAMP_OID):
            raise StepError(
                "LastRecordInvalid",
                f"{what} is not a timestamp (type oid {type_oid}); point lastRecord at a "
                "timestamp with time zone column",
            )
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            # timestamp without time zone: the wall time as the server's TimeZone reads it.
            value = value.replace(tzinfo=self.time_zone())
        return value.astimezone(UTC)

    def time_zone(self) -> tzinfo:
        """The session's TimeZone, as the server reported it."""
        return self._conn.info.timezone

    async def _row(self, statement: psycopg.abc.Query) -> tuple[Any, ...]:
        async with self._conn.cursor() as cur:
            await cur.execute(statement)
            row = await cur.fetchone()
        if row is None:
            raise StepError("QueryFailed", f"{self._address.describe()} returned no row")
        return tuple(row)

    async def _scalar(self, statement: psycopg.abc.Query) -> object:
        return (await self._row(statement))[0]

    async def _call(
        self, action: str, run: Callable[[], Awaitable[T]], subject: str | None = None
    ) -> T:
        """Run one exchange with the server within the timeout, translating its failures.

        subject names what the spec pointed at (for messages about missing objects).
        """
        where = self._address.describe()
        if self._conn.closed:
            raise StepError("SessionLost", f"{action}: the session to {where} has ended")
        try:
            return await asyncio.wait_for(run(), self._timeout)
        except TimeoutError:
            raise StepError(
                "Timeout", f"{action} on {where} took longer than {self._timeout:g}s"
            ) from None
        except psycopg.Error as exc:
            raise self._step_error(action, exc, subject) from None

    def _step_error(self, action: str, exc: psycopg.Error, subject: str | None) -> StepError:
        """Our words and the SQLSTATE; never the server's message, which can quote data."""
        where = self._address.describe()
        code = f"SQLSTATE {exc.sqlstate} {type(exc).__name__}" if exc.sqlstate else type(exc).__name__
        if self._conn.broken or self._conn.closed:
            return StepError("SessionLost", f"{action}: the session to {where} ended ({code})")
        if isinstance(exc, errors.UndefinedTable | errors.UndefinedColumn | errors.InvalidSchemaName):
            return StepError(
                "LastRecordNotFound",
                f"{action} on {where}: {subject or 'a table or column'} does not exist or is not "
                f"visible to this user ({code})",
            )
        if isinstance(exc, errors.InsufficientPrivilege):
            return StepError(
                "PermissionDenied",
                f"{action} on {where}: permission denied ({code}); grant the user the needed "
                "privilege (SELECT on the lastRecord table; EXECUTE on pg_backup_start and "
                "pg_backup_stop for the backup role)",
            )
        if isinstance(exc, errors.ObjectNotInPrerequisiteState):
            # Classified by the server's words, which are not passed on.
            not_running = "not in progress" in (exc.diag.message_primary or "")
            reason = "BackupNotInProgress" if not_running else "BackupInProgress"
            state = "no backup is in progress" if not_running else "a backup is already in progress"
            return StepError(reason, f"{action} on {where}: {state} on this session ({code})")
        if isinstance(exc, errors.SyntaxError):
            return StepError(
                "LastRecordInvalid",
                f"{action} on {where}: the server refused it as not one valid statement ({code})",
            )
        if isinstance(exc, errors.ReadOnlySqlTransaction):
            return StepError(
                "LastRecordInvalid",
                f"{action} on {where}: it tried to write in a read-only transaction ({code})",
            )
        if isinstance(exc, errors.QueryCanceled | errors.LockNotAvailable):
            return StepError(
                "Timeout",
                f"{action} on {where}: stopped by the server's "
                f"{'lock' if isinstance(exc, errors.LockNotAvailable) else 'statement'} timeout, "
                f"set from connection.timeout {self._timeout:g}s ({code})",
            )
        if isinstance(exc, psycopg.DataError):
            return StepError(
                "LastRecordInvalid",
                f"{action} on {where}: a value could not be converted ({code})",
            )
        return StepError("QueryFailed", f"{action} on {where} failed ({code})")
