"""PostgreSQL through psycopg 3: one asynchronous session held open through the freeze window.

A non-exclusive backup belongs to the session that started it, so the same `PostgresConnection`
must start and stop it; closing the session aborts the backup on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any, TypeVar

import psycopg
import psycopg.abc
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from snapgroup.ports import StepError

APPLICATION_NAME = "snapgroup"
"""Shown in pg_stat_activity for the operator's sessions."""

_PG15 = 150000
"""server_version_num from which pg_backup_start/pg_backup_stop replace the older names."""

_AUTH_FAILURE_MARKERS = ("authentication failed", "pg_hba.conf", "role \"")
"""libpq reports connection failures as text only (no SQLSTATE); these phrases mean credentials."""

T = TypeVar("T")


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
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(
                    make_conninfo("", **address.params),
                    autocommit=True,
                    # libpq takes whole seconds and treats anything below 2 as 2.
                    connect_timeout=max(2, math.ceil(timeout)),
                    application_name=application_name,
                ),
                timeout,
            )
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

    async def backup_stop(self) -> str:
        """Leave backup mode on this session; returns the stop LSN.

        Does not wait for WAL archiving: the snapshot already holds the volume, and waiting on an
        archiver would keep the services frozen.
        """
        if await self.server_version() >= _PG15:
            query = sql.SQL("SELECT lsn::text FROM pg_backup_stop(wait_for_archive => false)")
        else:
            query = sql.SQL("SELECT lsn::text FROM pg_stop_backup(false, false)")
        return str(await self._call("stopping the backup", lambda: self._scalar(query)))

    async def newest_record(
        self, table: str | None, column: str | None, query: str | None
    ) -> datetime | None:
        """max(column) of table (identifiers quoted; ``schema.table`` allowed), or the query's
        single value; both run in a READ ONLY transaction. A timestamp without time zone is
        taken as UTC."""
        statement: psycopg.abc.Query
        if query:
            # The spec's own query, verbatim; READ ONLY keeps it from changing anything.
            statement = query.encode()
        elif table and column:
            statement = sql.SQL("SELECT max({}) FROM {}").format(
                sql.Identifier(column), sql.Identifier(*table.split("."))
            )
        else:
            raise StepError("LastRecordInvalid", "lastRecord needs table and column, or query")
        value = await self._call("reading the newest record", lambda: self._read_only(statement))
        return _as_time(value)

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

    async def _read_only(self, statement: psycopg.abc.Query) -> object:
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute(b"SET TRANSACTION READ ONLY")
            await cur.execute(statement)
            row = await cur.fetchone()
        return None if row is None else row[0]

    async def _scalar(self, statement: psycopg.abc.Query) -> object:
        async with self._conn.cursor() as cur:
            await cur.execute(statement)
            row = await cur.fetchone()
        if row is None:
            raise StepError("QueryFailed", f"{self._address.describe()} returned no row")
        return row[0]

    async def _call(self, action: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run one exchange with the server within the timeout, translating its failures."""
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
            raise self._step_error(action, exc) from None

    def _step_error(self, action: str, exc: psycopg.Error) -> StepError:
        where = self._address.describe()
        detail = self._address.redact(exc.diag.message_primary or str(exc).split("\n")[0])
        if self._conn.broken or self._conn.closed:
            return StepError("SessionLost", f"{action}: the session to {where} ended: {detail}")
        if isinstance(exc, errors.UndefinedTable | errors.UndefinedColumn | errors.InvalidSchemaName):
            return StepError("LastRecordNotFound", f"{action} on {where}: {detail}")
        if isinstance(exc, errors.InsufficientPrivilege):
            return StepError(
                "PermissionDenied",
                f"{action} on {where}: {detail}; grant the user the needed privilege "
                "(e.g. EXECUTE on pg_backup_start and pg_backup_stop)",
            )
        if isinstance(exc, errors.ObjectNotInPrerequisiteState):
            reason = "BackupNotInProgress" if "not in progress" in detail else "BackupInProgress"
            return StepError(reason, f"{action} on {where}: {detail}")
        return StepError("QueryFailed", f"{action} on {where}: {detail}")


def _as_time(value: object) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    raise StepError(
        "LastRecordInvalid",
        f"the newest record is of type {type(value).__name__}, not a timestamp; "
        "point lastRecord at a timestamp column",
    )
