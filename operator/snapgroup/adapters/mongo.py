"""MongoDB through pymongo's AsyncMongoClient: ping, fsync lock/unlock and the newest record.

The fsync lock belongs to the server, not to the connection: it outlives the client that took it
and is counted, so every lock must be matched by one unlock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import AsyncMongoClient
from pymongo.errors import ConfigurationError, ConnectionFailure, OperationFailure, PyMongoError

from snapgroup.ports import ClockSample, StepError

_AUTHENTICATION_FAILED = 18
_UNAUTHORIZED = 13

T = TypeVar("T")


@dataclass(frozen=True)
class MongoAddress:
    """Where and how to connect, read from a Secret; credentials never show in a repr."""

    uri: str = field(repr=False)
    """A mongodb:// URI, possibly with credentials."""
    options: dict[str, Any] = field(repr=False, default_factory=dict)
    """username, password and authSource when the URI carries no credentials."""
    hidden: tuple[str, ...] = field(repr=False, default=())
    """Values that must never appear in a message."""

    @classmethod
    def from_secret(cls, secret: Mapping[str, str]) -> MongoAddress:
        """Read `uri` (plus `username`/`password` when it has no credentials), or host/port."""
        uri = secret.get("uri")
        if not uri:
            if not secret.get("host"):
                raise StepError(
                    "SecretIncomplete",
                    "the Secret lacks uri; set uri (mongodb://host:port), or host and port",
                )
            uri = f"mongodb://{secret['host']}:{secret.get('port') or '27017'}/"
        if not uri.startswith(("mongodb://", "mongodb+srv://")):
            raise StepError(
                "SecretInvalid", "the Secret's uri key is not a MongoDB URI (mongodb://host:port)"
            )
        options: dict[str, Any] = {}
        if "@" not in _authority(uri) and secret.get("username"):
            options["username"] = secret["username"]
            options["password"] = secret.get("password", "")
            if secret.get("authSource"):
                options["authSource"] = secret["authSource"]
        hidden = tuple(v for v in (uri, secret.get("password")) if v)
        return cls(uri, options, hidden)

    def describe(self) -> str:
        """Where the server is, for messages: ``MongoDB at host:port``."""
        return f"MongoDB at {_authority(self.uri).rpartition('@')[2]}"

    def redact(self, text: str) -> str:
        """The text with every credential replaced."""
        for value in self.hidden:
            text = text.replace(value, "***")
        return text


def _authority(uri: str) -> str:
    """The ``user:password@host:port`` part of a URI."""
    return uri.partition("://")[2].partition("/")[0].partition("?")[0]


class MongoConnection:
    """A `ports.MongoSession`: an AsyncMongoClient to one server, every call bounded."""

    def __init__(
        self, client: AsyncMongoClient[dict[str, Any]], address: MongoAddress, timeout: float
    ) -> None:
        self._client = client
        self._address = address
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<MongoConnection {self._address.describe()}>"

    @classmethod
    async def open(
        cls, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup"
    ) -> MongoConnection:
        """Create the client, introducing itself as app_name; it connects on first use, so
        `ping` is the reachability test."""
        address = MongoAddress.from_secret(secret)
        millis = max(1, int(timeout * 1000))
        try:
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                address.uri,
                directConnection=True,
                serverSelectionTimeoutMS=millis,
                connectTimeoutMS=millis,
                socketTimeoutMS=millis,
                tz_aware=True,
                appname=app_name,
                **address.options,
            )
        except (ConfigurationError, ValueError, TypeError) as exc:
            raise StepError(
                "SecretInvalid",
                f"the Secret does not describe a usable MongoDB connection: "
                f"{address.redact(str(exc))}",
            ) from None
        return cls(client, address, timeout)

    async def ping(self) -> None:
        """Check that the server answers and accepts the credentials."""
        await self._call(
            "ping", lambda: self._client.admin.command("ping"), on_timeout="DatabaseUnreachable"
        )

    async def fsync_lock(self) -> int:
        """Flush to disk and block writes; returns the server's lock count after locking."""
        reply = await self._call(
            "fsync lock", lambda: self._client.admin.command({"fsync": 1, "lock": True})
        )
        return self._lock_count("fsync lock", reply)

    async def fsync_unlock(self) -> int:
        """Lower the lock count by one; StepError NotLocked when the server holds no lock."""
        reply = await self._call(
            "fsyncUnlock", lambda: self._client.admin.command({"fsyncUnlock": 1})
        )
        return self._lock_count("fsyncUnlock", reply)

    async def is_locked(self) -> bool:
        """True while the server holds an fsync lock: currentOp then reports fsyncLock."""
        reply = await self._call(
            "reading the fsync lock state", lambda: self._client.admin.command({"currentOp": 1})
        )
        return bool(reply.get("fsyncLock"))

    async def lock_in_flight(self, app_name: str) -> bool:
        """True while currentOp lists an fsync lock command of a client named app_name."""
        reply = await self._call(
            "reading the operations in progress",
            lambda: self._client.admin.command({"currentOp": 1}),
        )
        for op in reply.get("inprog") or []:
            command = op.get("command") if isinstance(op, Mapping) else None
            if (isinstance(command, Mapping) and command.get("fsync") and command.get("lock")
                    and op.get("appName") == app_name):
                return True
        return False

    async def newest_record(self, database: str, collection: str, field: str) -> datetime | None:
        """The greatest date in field, or None when no document has one."""
        # Only dates count: in a descending sort other BSON types (timestamps, regexes) could
        # outrank them.
        doc = await self._call(
            "reading the newest record",
            lambda: self._client[database][collection].find_one(
                {field: {"$type": "date"}}, projection={field: 1, "_id": 0}, sort=[(field, -1)]
            ),
        )
        if doc is None:
            return None
        value: Any = doc
        for part in field.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    async def clock_sample(self) -> ClockSample:
        """hello.localTime (milliseconds) between two readings of the operator's clock."""
        before = datetime.now(UTC)
        reply = await self._call("hello", lambda: self._client.admin.command("hello"))
        after = datetime.now(UTC)
        server = reply.get("localTime")
        if not isinstance(server, datetime):
            raise StepError(
                "QueryFailed", f"hello on {self._address.describe()} returned no localTime"
            )
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        return ClockSample(before, server, after, resolution=0.001)

    async def close(self) -> None:
        """Close the client; an fsync lock stays on the server (it is not bound to connections)."""
        with contextlib.suppress(TimeoutError, PyMongoError):
            await asyncio.wait_for(self._client.close(), self._timeout)

    def _lock_count(self, action: str, reply: Mapping[str, Any]) -> int:
        count = reply.get("lockCount")
        if not isinstance(count, int):
            raise StepError(
                "QueryFailed",
                f"{action} on {self._address.describe()} returned no lock count",
            )
        return count

    async def _call(
        self, action: str, run: Callable[[], Awaitable[T]], on_timeout: str = "Timeout"
    ) -> T:
        """Run one exchange with the server within the timeout, translating its failures.

        on_timeout is the reason when time runs out: for the first contact it means the server
        cannot be reached.
        """
        where = self._address.describe()
        try:
            return await asyncio.wait_for(run(), self._timeout)
        except TimeoutError:
            raise StepError(
                on_timeout, f"{action}: {where} did not answer within {self._timeout:g}s"
            ) from None
        except OperationFailure as exc:
            # The server's errmsg can quote documents: it classifies, it is not passed on.
            errmsg = str((exc.details or {}).get("errmsg") or "")
            code_name = (exc.details or {}).get("codeName") or "no code name"
            if exc.code == _AUTHENTICATION_FAILED:
                reason, words = "AuthenticationFailed", "authentication failed"
            elif exc.code == _UNAUTHORIZED:
                reason, words = "PermissionDenied", "not authorized"
            elif "not locked" in errmsg:
                reason, words = "NotLocked", "the server holds no fsync lock"
            else:
                reason, words = "QueryFailed", "the server refused it"
            raise StepError(
                reason, f"{action} on {where}: {words} (error code {exc.code} {code_name})"
            ) from None
        except ConnectionFailure as exc:
            # Server selection errors append a long topology description after the cause.
            detail = self._address.redact(str(exc)).split(", Timeout:")[0]
            raise StepError(
                "DatabaseUnreachable", f"{action}: cannot reach {where}: {detail}"
            ) from None
        except PyMongoError as exc:
            raise StepError(
                "QueryFailed", f"{action} on {where}: {self._address.redact(str(exc))}"
            ) from None
