"""Hook type `mongodb`: fsync with lock before the cut, fsyncUnlock back to the previous count.

MongoDB's fsync lock flushes data files and blocks writes. It is counted and belongs to the server,
not to a connection: it survives the operator's client (and the operator), and each lock needs its
own unlock. The undo therefore unlocks until the count is back where it was before our lock, which
leaves a lock someone else held before the group alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime

from snapgroup.api.snapshotgroup import LastRecord, ServiceTarget
from snapgroup.hooks.registry import HookContext, UndoRecord, register
from snapgroup.hooks.services import BoundService, ServiceHookType, journal_int
from snapgroup.ports import Connectors, MongoSession, StepError

MAX_UNLOCKS = 16
"""Upper bound on fsyncUnlock calls in one undo; more means someone keeps locking."""


async def unlock_down_to(session: MongoSession, lock_count_before: int) -> tuple[int, int]:
    """fsyncUnlock until the lock count is at most lock_count_before.

    Returns (lock count now, unlocks done). A server that says it holds no lock counts as 0.
    """
    count: int | None = None
    for done in range(MAX_UNLOCKS):
        try:
            count = await session.fsync_unlock()
        except StepError as exc:
            if exc.reason == "NotLocked":
                return 0, done
            raise
        if count <= lock_count_before:
            return count, done + 1
    raise StepError(
        "UnlockIncomplete",
        f"after {MAX_UNLOCKS} fsyncUnlock calls the lock count is still {count}, above the "
        f"{lock_count_before} held before the group; something else keeps locking the server",
    )


LATE_LOCK_CHECKS = 5
"""How often an undo looks for a lock whose call ended without an answer (it may still land)."""
LATE_LOCK_SETTLE = 1.0
"""Seconds between those looks."""
LOCK_IN_FLIGHT_WAIT = 20.0
"""Longest an undo waits for the group's lock call still running on the server (a slow flush);
the undo is then retried, and the safety net goes on where the retries end."""


async def release_lock(
    session: MongoSession, record: UndoRecord, app_name: str
) -> tuple[int | None, str]:
    """Undo our fsync lock as the record describes; returns (lock count now, what was done).

    Without a recorded count the lock call ended without an answer (a timeout, a cancellation,
    a crash): the server may have taken the lock, even after the call ended, and takes it late
    when its flush is slow. While currentOp shows the call (the group's clients are named
    app_name) the undo waits for it; then the server is watched for a while (LATE_LOCK_SETTLE
    seconds between looks). A lock that shows up is lowered only if the server held none before
    the group (lockedBefore), since only then is it ours.
    """
    before = journal_int(record, "lockCountBefore")
    if before is None:
        return await _release_unknown(session, record, app_name)
    count, unlocks = await unlock_down_to(session, before)
    if unlocks == 0:
        return count, "the server held no fsync lock any more; nothing to unlock"
    return count, f"unlocked {unlocks}x, lock count back to {count} (was {before} before the group)"


async def _release_unknown(
    session: MongoSession, record: UndoRecord, app_name: str
) -> tuple[int | None, str]:
    if record.get("lockedBefore") is not False:
        if await session.is_locked():
            raise StepError(
                "LockOwnerUnknown",
                "the server is fsync-locked, but it already was before the group and the lock "
                "call ended without an answer: whether one of the locks is ours is unknown; "
                "unlock by hand (db.fsyncUnlock()) once the other holder is done")
        return 0, "the server holds no fsync lock"
    started = time.monotonic()
    looks = 0
    while True:
        # While the group's call still runs, nothing is unlocked: a lock seen now may be
        # another client's, and ours would land after. A call not in flight now and no lock
        # after it means none will land.
        if await session.lock_in_flight(app_name):
            waited = time.monotonic() - started
            if waited > LOCK_IN_FLIGHT_WAIT:
                raise StepError(
                    "LockInFlight",
                    f"the group's fsync lock call is still running on the server after "
                    f"{waited:.0f}s (its flush has not ended); it locks the server when it ends, "
                    "and is unlocked then")
        elif await session.is_locked():
            count, unlocks = await unlock_down_to(session, 0)
            return count, (f"the lock call had ended without an answer and its lock landed; "
                           f"unlocked {unlocks}x, lock count back to {count}")
        else:
            looks += 1
            if looks >= LATE_LOCK_CHECKS:
                return 0, (f"the lock call ended without an answer and no lock landed "
                           f"(checked {LATE_LOCK_CHECKS} times over "
                           f"{LATE_LOCK_SETTLE * (LATE_LOCK_CHECKS - 1):g}s)")
        await asyncio.sleep(LATE_LOCK_SETTLE)  # a lock still on its way may land meanwhile


class MongoLock(BoundService[MongoSession]):
    """One MongoDB service: fsync-locked by apply, unlocked to the previous count by undo."""

    def __init__(
        self, ctx: HookContext, service: ServiceTarget, session: MongoSession, locked_before: bool
    ) -> None:
        super().__init__(ctx, service, session)
        self.locked_before = locked_before

    def intent(self) -> UndoRecord:
        """How to reconnect after a restart, and whether the server was locked before the group;
        the count is only known once locked."""
        return {**self.connection_record(), "lockedBefore": self.locked_before}

    def quiesce_record(self) -> UndoRecord:
        """What a repair needs if the group vanishes: the intent (the count comes later)."""
        return self.intent()

    async def apply(self) -> UndoRecord:
        """Flush and lock; record the lock count before our lock."""
        after = await self.session.fsync_lock()
        self._evidence["lockCountBefore"] = str(after - 1)
        self._evidence["lockCountAfterLock"] = str(after)
        return {**self.intent(), "lockCountBefore": after - 1, "lockCountAfterLock": after}

    async def undo(self, record: UndoRecord) -> str:
        """Unlock until the count is back to lockCountBefore."""
        count, message = await release_lock(self.session, record, self.ctx.session_name)
        if count is not None:
            self._evidence["lockCountAfterUnlock"] = str(count)
        return message

    async def read_newest(self, last_record: LastRecord) -> datetime | None:
        """The greatest date in lastRecord.field of the collection."""
        assert last_record.database and last_record.collection and last_record.field
        return await self.reader.newest_record(
            last_record.database, last_record.collection, last_record.field
        )


@register
class MongodbHookType(ServiceHookType[MongoSession]):
    """MongoDB: {fsync: 1, lock: true} before the cut, {fsyncUnlock: 1} after it."""

    name = "mongodb"
    secret_layouts = (("uri",), ("host",))
    default_port = 27017

    async def connect(
        self, connectors: Connectors, secret: Mapping[str, str], timeout: float, session_name: str
    ) -> MongoSession:
        """A client named session_name (currentOp's appName); it connects on first use."""
        return await connectors.mongo(secret, timeout, session_name)

    async def bind(
        self, ctx: HookContext, service: ServiceTarget, session: MongoSession, path: str
    ) -> MongoLock:
        """Ping: the server answers and takes the credentials; note whether it is locked now."""
        await session.ping()
        return MongoLock(ctx, service, session, locked_before=await session.is_locked())

    async def recover(
        self, ctx: HookContext, key: str, record: UndoRecord, side_effect_done: bool
    ) -> str:
        """Reconnect with the journaled Secret and unlock down to the recorded count."""
        session = await self.reconnect(ctx, key, record)
        try:
            _, message = await release_lock(session, record, ctx.session_name)
        finally:
            await session.close()
        return message
