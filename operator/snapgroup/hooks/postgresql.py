"""Hook type `postgresql`: a non-exclusive backup (pg_backup_start / pg_backup_stop) held on one
session through the freeze window.

The backup forces a checkpoint, so a volume snapshot cut while it runs needs little WAL replay on
restore. It does not block application writes; that is what writer isolation is for. PostgreSQL
binds the backup to the session that started it and aborts it when that session ends, so the stop
runs on the very session the plan opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from snapgroup.api.snapshotgroup import LastRecord, ServiceTarget
from snapgroup.hooks.registry import HookContext, UndoRecord, register
from snapgroup.hooks.services import BoundService, ServiceHookType
from snapgroup.ports import Connectors, PostgresSession, StepError

SESSION_ENDED = (
    "the backup ended with its session: PostgreSQL aborts a non-exclusive backup when the "
    "session that started it closes, so there is nothing left to stop"
)


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
        self._evidence["serverVersion"] = _version_text(version)

    def intent(self) -> UndoRecord:
        """The backup label, and how a restarted operator reconnects to close the session."""
        return {**self.connection_record(), "label": self.label}

    def quiesce_record(self) -> UndoRecord:
        """How a repair finds and closes the group's session if the group vanishes."""
        return {**self.connection_record(), "sessionName": self.ctx.session_name}

    async def apply(self) -> UndoRecord:
        """Enter backup mode (with a fast checkpoint); record the start LSN."""
        start = await self.session.backup_start(self.label)
        self._evidence["backupStartLSN"] = start
        return {**self.connection_record(), "label": self.label, "startLsn": start}

    async def undo(self, record: UndoRecord) -> str:
        """Leave backup mode on the session that entered it."""
        try:
            stop = await self.session.backup_stop()
        except StepError as exc:
            if exc.reason == "SessionLost":
                return SESSION_ENDED
            if exc.reason == "BackupNotInProgress":
                return "no backup was in progress on the session; nothing to stop"
            # Closing the session is the one sure way left to end the backup.
            await self.release()
            raise StepError(
                exc.reason, f"{exc.message}; the session was closed, which ends the backup"
            ) from None
        self._evidence["backupStopLSN"] = stop
        return f"left backup mode at LSN {stop} (started at {record.get('startLsn', 'unknown')})"

    async def read_newest(self, last_record: LastRecord) -> datetime | None:
        """max(column) of table, or the configured query, read-only."""
        return await self.session.newest_record(
            last_record.table, last_record.column, last_record.query
        )


@register
class PostgresqlHookType(ServiceHookType[PostgresSession]):
    """PostgreSQL: pg_backup_start(label, fast) before the cut, pg_backup_stop after it."""

    name = "postgresql"
    secret_layouts = (("uri",), ("host", "username|user", "password"))

    async def connect(
        self, connectors: Connectors, secret: Mapping[str, str], timeout: float, session_name: str
    ) -> PostgresSession:
        """One session, to be held through the freeze window, named after the group."""
        return await connectors.postgres(secret, timeout, session_name)

    async def bind(
        self, ctx: HookContext, service: ServiceTarget, session: PostgresSession, path: str
    ) -> PostgresBackup:
        """Check the server answers and that lastRecord can be read (a read-only query)."""
        version = await session.server_version()
        hook = PostgresBackup(ctx, service, session, version)
        await hook.newest_record()
        return hook

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
