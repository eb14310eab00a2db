"""Hook type `postgresql`: a non-exclusive backup (pg_backup_start / pg_backup_stop) held on one
session through the freeze window.

The backup forces a checkpoint, so a volume snapshot cut while it runs needs little WAL replay on
restore. It does not block application writes; that is what writer isolation is for. PostgreSQL
binds the backup to the session that started it and aborts it when that session ends, so the stop
runs on the very session the plan opened.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Mapping
from datetime import datetime

from snapgroup.api.labels import PG_BACKUP_LABEL, PG_BACKUP_WAL, PG_BACKUP_WAL_START, PG_TABLESPACE_MAP
from snapgroup.api.restore import WalStart
from snapgroup.api.snapshotgroup import LastRecord, ServiceTarget
from snapgroup.hooks.registry import HookContext, UndoRecord, register
from snapgroup.hooks.services import BoundService, ServiceHookType
from snapgroup.hooks.sql_statement import statement_problem
from snapgroup.ports import BackupEnd, Connectors, PlanError, PostgresSession, StepError

SESSION_ENDED = (
    "the backup ended with its session: PostgreSQL aborts a non-exclusive backup when the "
    "session that started it closes, so there is nothing left to stop"
)


KEPT_WAL_LIMIT = 160 * 1024
"""Bytes of packed WAL kept with a snapshot: Kubernetes holds at most 256 KiB of annotations
per object."""
READ_WAL_LIMIT = 8 * 1024 * 1024
"""Bytes of WAL read for it at most (a quiet server's backup needs a few kilobytes)."""


def _version_text(number: int) -> str:
    """server_version_num as people write it: 150004 -> 15.4."""
    return f"{number // 10000}.{number % 10000}"


class PostgresBackup(BoundService[PostgresSession]):
    """One PostgreSQL service: backup mode entered by apply, left by undo on the same session."""

    def __init__(
        self, ctx: HookContext, service: ServiceTarget, session: PostgresSession, version: int
    ) -> None:
        super().__init__(ctx, service, session)
        self.label = f"snapgroup {ctx.namespace}/{ctx.group} {service.name}"
        self._end: BackupEnd | None = None
        self._evidence["serverVersion"] = _version_text(version)

    def intent(self) -> UndoRecord:
        """The backup label and how a restarted operator reconnects (its recover step needs the
        Secret's name to find and close a session left behind), known before acting."""
        return {"label": self.label, **self.connection_record()}

    def quiesce_record(self) -> UndoRecord:
        """How a repair finds and closes the group's session if the group vanishes."""
        return {**self.connection_record(), "sessionName": self.ctx.session_name}

    async def apply(self) -> UndoRecord:
        """Enter backup mode (with a fast checkpoint); record the start LSN."""
        start = await self.session.backup_start(self.label)
        self._evidence["backupStartLSN"] = start
        return {**self.intent(), "startLsn": start}

    async def undo(self, record: UndoRecord) -> str:
        """Leave backup mode on the session that entered it."""
        try:
            stop = await self.session.backup_stop()
        except StepError as exc:
            if exc.reason == "SessionLost":
                return SESSION_ENDED
            if exc.reason == "BackupNotInProgress":
                return "no backup was in progress on the session; nothing to stop"
            # Closing the session is the one sure way left to end the backup: PostgreSQL aborts
            # a non-exclusive backup when its session ends, so once closed it is undone.
            await self.release()
            return f"pg_backup_stop failed ({exc.message}); the session was closed, {SESSION_ENDED}"
        self._evidence["backupStopLSN"] = stop.lsn
        self._end = stop
        return f"left backup mode at LSN {stop.lsn} (started at {record.get('startLsn', 'unknown')})"

    async def keep_with_snapshot(self) -> dict[str, str]:
        """The backup's label, tablespace map and WAL (start through end-of-backup), as
        annotations for the service's snapshots: a restore writes them into PGDATA so the
        server starts backup recovery rather than crash recovery over a copy that may be torn.

        Read after the thaw, on the session still open. Without them (the backup did not stop
        cleanly, or the WAL may not be read or is too long) a restore falls back to crash
        recovery, and the evidence says why.
        """
        start = self._evidence.get("backupStartLSN")
        if self._end is None or start is None or not self._end.backup_label:
            return {}
        try:
            wal = await self.session.backup_wal(start, self._end.lsn, READ_WAL_LIMIT)
        except StepError as exc:
            self._evidence["backupKept"] = (f"label only, no WAL ({exc.message}): "
                                            "a restore uses crash recovery")
            return {PG_BACKUP_LABEL: self._end.backup_label}
        packed = base64.b64encode(gzip.compress(wal.data, mtime=0)).decode()
        if len(packed) > KEPT_WAL_LIMIT:
            self._evidence["backupKept"] = (
                f"label only: the WAL packs to {len(packed)} bytes, more than {KEPT_WAL_LIMIT} "
                "an annotation holds; a restore uses crash recovery")
            return {PG_BACKUP_LABEL: self._end.backup_label}
        self._evidence["backupKept"] = f"label and {len(wal.data)} bytes of WAL from {wal.start}"
        kept = {
            PG_BACKUP_LABEL: self._end.backup_label, PG_BACKUP_WAL: packed,
            PG_BACKUP_WAL_START: WalStart(wal.start, wal.timeline, wal.segment_size).to_text(),
        }
        if self._end.tablespace_map:
            kept[PG_TABLESPACE_MAP] = self._end.tablespace_map
        return kept

    async def read_newest(self, last_record: LastRecord) -> datetime | None:
        """max(column) of table, or the configured query, read-only."""
        return await self.reader.newest_record(
            last_record.table, last_record.column, last_record.query
        )

    async def check_last_record(self, last_record: LastRecord, path: str) -> None:
        """Also warn when max(column) must scan the whole table inside the freeze window."""
        await super().check_last_record(last_record, path)
        if last_record.table and last_record.column and not await self.reader.column_indexed(
            last_record.table, last_record.column
        ):
            self.warnings.append(PlanError(
                "LastRecordNotIndexed", f"{path}.lastRecord.column",
                f"no index of table {last_record.table} leads with column {last_record.column}: "
                "reading the newest record scans the whole table while everything is frozen; "
                f"CREATE INDEX ON {last_record.table} ({last_record.column})",
            ))


@register
class PostgresqlHookType(ServiceHookType[PostgresSession]):
    """PostgreSQL: pg_backup_start(label, fast) before the cut, pg_backup_stop after it."""

    name = "postgresql"
    secret_layouts = (("uri",), ("host", "username|user", "password"))
    default_port = 5432

    async def connect(
        self, connectors: Connectors, secret: Mapping[str, str], timeout: float, session_name: str
    ) -> PostgresSession:
        """One session, to be held through the freeze window, named after the group."""
        return await connectors.postgres(secret, timeout, session_name)

    async def bind(
        self, ctx: HookContext, service: ServiceTarget, session: PostgresSession, path: str
    ) -> PostgresBackup:
        """Refuse a lastRecord query that is not one read statement; check the server answers.

        The generic plan then reads lastRecord once (read-only) to prove it works.
        """
        query = service.last_record.query if service.last_record else None
        problem = statement_problem(query) if query else None
        if problem is not None:
            raise PlanError(
                "LastRecordQueryRejected", f"{path}.lastRecord.query",
                f"the query must be exactly one read statement: {problem}",
            )
        version = await session.server_version()
        return PostgresBackup(ctx, service, session, version)

    async def recover(
        self, ctx: HookContext, key: str, record: UndoRecord, side_effect_done: bool
    ) -> str:
        """Close any session of the group still open on the server: its backup ends with it.

        After an operator crash that session died with the process; a session left behind by a
        run that ended without closing it is found by its application_name and terminated.
        """
        session = await self.reconnect(ctx, key, record)
        try:
            closed = await session.terminate_sessions(ctx.session_name)
        finally:
            await session.close()
        if closed:
            return f"closed {closed} session(s) of the group left open; their backup ended with them"
        return ("no session of the group is open on the server: a PostgreSQL backup is bound "
                "to the session that started it, and that session has ended")
