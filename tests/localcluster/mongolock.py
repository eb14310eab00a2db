"""Fsync-lock layer: a MongoDB wire-protocol proxy that gives FerretDB mongod's fsync lock.

The local cluster cannot run mongod, so its MongoDB is a stand-in: FerretDB (SQLite backend)
speaks the wire protocol but has no ``fsync`` lock. This proxy sits in front of it and emulates
exactly the part of mongod that snapshotting depends on:

- ``{fsync: 1, lock: true}`` (admin database) raises a process-wide lock count, waits until no
  write forwarded earlier is still running, and replies ``{info, lockCount, seeAlso, ok: 1}``.
- ``{fsyncUnlock: 1}`` lowers the count and replies ``{info, lockCount, ok: 1}``; when the count is
  already 0 it fails like mongod (code 20, ``IllegalOperation``, "fsyncUnlock called when not
  locked").
- While the count is above 0, write commands from *every* connection (insert, update, delete,
  findAndModify, bulkWrite, DDL such as create/drop/createIndexes, user and role changes, and
  ``aggregate`` with ``$out``/``$merge``) are held before they reach FerretDB, until the count
  returns to 0. Reads pass.
- The lock belongs to the process, not to the connection that took it: it outlives that
  connection, as on mongod. Restarting the proxy drops it, as restarting mongod does.
- ``currentOp`` replies carry ``fsyncLock: true`` while locked, and an ``inprog`` entry (with the
  client's ``appName`` from its handshake) for each fsync lock still being taken.
- A lock raises the count at once (new writes stop, currentOp reports ``fsyncLock``), then waits
  for the writes already running and flushes, as mongod does; an ``fsyncUnlock`` sent meanwhile
  waits until the lock is taken. The flush is instant unless the stand-in's own fail point slows
  it (mongod's ``configureFailPoint`` command shape, a name mongod does not have):
  ``{configureFailPoint: "slowFsyncLockFlush", mode: "alwaysOn" | "off" | {times: n}, data:
  {seconds: s}}``. A lock whose client gave up meanwhile is still taken, and stays: mongod does
  not notice a client that went away while its fsync lock is taken.

Everything else (OP_MSG, legacy OP_QUERY handshakes and their OP_REPLY answers) is forwarded
byte for byte on one upstream connection per client connection.

Authentication is FerretDB's: SASL conversations pass through unchanged on the client's own
upstream connection, and before answering fsync/fsyncUnlock itself the proxy asks FerretDB, on
that same connection, whether the client is authenticated (when FerretDB runs with
``--test-enable-new-auth``); an unauthenticated client gets mongod's ``Unauthorized`` error.
There are no roles: any authenticated user may lock, as FerretDB has no authorization.

Not emulated: replica sets, sessions and transactions (FerretDB has none),
``fsync`` options such as ``forBackup``, and the ``$currentOp`` aggregation stage. Writes sent
fire-and-forget (``moreToCome``, w:0) are held like the others while locked, but the proxy cannot
see when FerretDB finishes them. A client that disconnects while one of its writes is held loses
that write, as mongod interrupts operations of clients that went away. Compressed messages
(OP_COMPRESSED) cannot be inspected; FerretDB does not offer compression, so clients do not send
them, and any that arrive are forwarded with a warning.

CLI::

    python -m localcluster.mongolock --listen 127.0.0.1:27017 --upstream 127.0.0.1:27018
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import signal
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bson

log = logging.getLogger("localcluster.mongolock")

OP_REPLY = 1
OP_QUERY = 2004
OP_COMPRESSED = 2012
OP_MSG = 2013

_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
_MSG_CHECKSUM_PRESENT = 1 << 0
_MSG_MORE_TO_COME = 1 << 1
# mongod's limit is 48 MB per message; anything larger is a framing error.
_MAX_MESSAGE_BYTES = 48_000_000
# How long a new client connection waits for FerretDB to accept, so a client that connects
# while FerretDB is still starting is delayed rather than refused.
_UPSTREAM_CONNECT_SECONDS = 15.0

# Commands that change data or metadata; mongod's fsync lock blocks all of them.
WRITE_COMMANDS = frozenset(
    {
        "insert",
        "update",
        "delete",
        "findAndModify",
        "findandmodify",
        "bulkWrite",
        "create",
        "drop",
        "dropDatabase",
        "createIndexes",
        "dropIndexes",
        "deleteIndexes",
        "renameCollection",
        "collMod",
        "convertToCapped",
        "cloneCollectionAsCapped",
        "compact",
        "reIndex",
        "applyOps",
        "createUser",
        "updateUser",
        "dropUser",
        "dropAllUsersFromDatabase",
        "createRole",
        "updateRole",
        "dropRole",
        "dropAllRolesFromDatabase",
        "grantRolesToUser",
        "revokeRolesFromUser",
        "grantRolesToRole",
        "revokeRolesFromRole",
        "grantPrivilegesToRole",
        "revokePrivilegesFromRole",
    }
)

_MONGOD_FSYNC_URL = "http://dochub.mongodb.org/core/fsynccommand"
SLOW_FLUSH = "slowFsyncLockFlush"
"""The stand-in's fail point that makes an fsync lock's flush take a while."""


class FsyncLock:
    """The process-wide fsync lock: a lock count, the locks still being taken, and the writes
    currently inside FerretDB.

    A write enters with :meth:`begin_write` (waiting while the count is above 0) and leaves with
    :meth:`end_write` once FerretDB has answered it. :meth:`lock` raises the count at once, so no
    new write enters, and returns only when the writes already inside have left and the flush
    (instant, unless the ``slowFsyncLockFlush`` fail point adds a delay) is done: after it
    returns, the data files hold every acknowledged write and nothing is being written.
    """

    def __init__(self) -> None:
        self._count = 0
        self._taking = 0
        self._writes_in_flight = 0
        self._changed = asyncio.Condition()
        self.flush_delays: list[float] = []
        """Seconds the next flushes take, one entry per lock (the ``slowFlush`` fail point)."""
        self.flush_delay_always: float = 0.0
        """Seconds every flush takes while the fail point is ``alwaysOn``."""

    @property
    def count(self) -> int:
        """The current lock count (0 = unlocked)."""
        return self._count

    async def lock(self) -> int:
        """Raise the lock count (new writes stop), wait for running writes to finish, flush;
        returns the count. The count rises first, as mongod's does: the server reports locked
        while the flush is still running, and an unlock waits until the lock is taken."""
        async with self._changed:
            self._count += 1
            self._taking += 1
            count = self._count
            try:
                await self._changed.wait_for(lambda: self._writes_in_flight == 0)
            except asyncio.CancelledError:
                # The layer is stopping before the lock was taken.
                self._count -= 1
                self._taking -= 1
                self._changed.notify_all()
                raise
        delay = self.flush_delays.pop(0) if self.flush_delays else self.flush_delay_always
        try:
            if delay:
                log.info("flushing for %.1fs before the lock is taken (fail point slowFlush)", delay)
                await asyncio.sleep(delay)  # the fail point's slow flush
        finally:
            async with self._changed:
                self._taking -= 1
                self._changed.notify_all()
        return count

    async def unlock(self) -> int | None:
        """Lower the lock count and return it, or return None when it already was 0; an unlock
        sent while a lock is still being taken waits for it, as on mongod."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._taking == 0)
            if self._count == 0:
                return None
            self._count -= 1
            self._changed.notify_all()
            return self._count

    async def begin_write(self) -> None:
        """Wait until unlocked, then count one more write as running."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._count == 0)
            self._writes_in_flight += 1

    async def end_write(self) -> None:
        """Count one running write as finished."""
        async with self._changed:
            self._writes_in_flight -= 1
            self._changed.notify_all()


@dataclass(frozen=True)
class WireMessage:
    """One framed wire-protocol message, kept as raw bytes so it can be forwarded unchanged."""

    raw: bytes

    @property
    def request_id(self) -> int:
        """The header's requestID."""
        return int(_HEADER.unpack_from(self.raw)[1])

    @property
    def response_to(self) -> int:
        """The header's responseTo."""
        return int(_HEADER.unpack_from(self.raw)[2])

    @property
    def op_code(self) -> int:
        """The header's opCode."""
        return int(_HEADER.unpack_from(self.raw)[3])

    @property
    def msg_flags(self) -> int:
        """OP_MSG flagBits (only meaningful for OP_MSG)."""
        return int(struct.unpack_from("<I", self.raw, _HEADER.size)[0])

    @property
    def more_to_come(self) -> bool:
        """True for an OP_MSG whose sender expects no reply to it."""
        return self.op_code == OP_MSG and bool(self.msg_flags & _MSG_MORE_TO_COME)

    def msg_body(self) -> dict[str, Any] | None:
        """Decode an OP_MSG's body section (kind 0), or None if this is no OP_MSG."""
        if self.op_code != OP_MSG:
            return None
        end = len(self.raw) - (4 if self.msg_flags & _MSG_CHECKSUM_PRESENT else 0)
        pos = _HEADER.size + 4
        while pos < end:
            kind = self.raw[pos]
            pos += 1
            (size,) = struct.unpack_from("<i", self.raw, pos)
            if kind == 0:
                body: dict[str, Any] = bson.decode(self.raw[pos : pos + size])
                return body
            pos += size  # kind 1: a document sequence, never holds the command itself
        return None


    def query_body(self) -> dict[str, Any] | None:
        """Decode a legacy OP_QUERY's query document (the handshake drivers send first), or None."""
        if self.op_code != OP_QUERY:
            return None
        name_end = self.raw.index(b"\x00", _HEADER.size + 4)
        pos = name_end + 1 + 8  # numberToSkip, numberToReturn
        (size,) = struct.unpack_from("<i", self.raw, pos)
        body: dict[str, Any] = bson.decode(self.raw[pos : pos + size])
        return body


def encode_msg(document: Mapping[str, Any], request_id: int, response_to: int) -> bytes:
    """Frame ``document`` as an OP_MSG with a single body section and no checksum."""
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(document)
    return _HEADER.pack(_HEADER.size + len(payload), request_id, response_to, OP_MSG) + payload


async def read_message(reader: asyncio.StreamReader) -> WireMessage | None:
    """Read one framed message; None at a clean end of stream."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ConnectionError("connection closed inside a message header") from exc
        return None
    length = _HEADER.unpack(header)[0]
    if not _HEADER.size < length <= _MAX_MESSAGE_BYTES:
        raise ConnectionError(f"invalid message length {length}")
    rest = await reader.readexactly(length - _HEADER.size)
    return WireMessage(header + rest)


def command_name(body: Mapping[str, Any]) -> str:
    """The command of an OP_MSG body: its first key."""
    return next(iter(body), "")


def is_write(body: Mapping[str, Any]) -> bool:
    """True if the command changes data or metadata, i.e. mongod's fsync lock would block it."""
    name = command_name(body)
    if name in WRITE_COMMANDS:
        return True
    if name == "aggregate":
        pipeline = body.get("pipeline") or []
        return any(
            isinstance(stage, Mapping) and ("$out" in stage or "$merge" in stage) for stage in pipeline
        )
    if name == "mapReduce":
        out = body.get("out")
        return not (isinstance(out, Mapping) and "inline" in out)
    return False


class LockProxy:
    """The proxy server: accepts clients, pairs each with an upstream FerretDB connection."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.fsync_lock = FsyncLock()
        self.locks_in_flight: dict[int, tuple[dict[str, Any], float]] = {}
        """fsync lock commands still being taken, by connection: what currentOp lists for each,
        and when it began (loop time)."""
        self._request_ids = itertools.count(1 << 24)
        self._connection_ids = itertools.count(1)

    def next_request_id(self) -> int:
        """A requestID for a reply the proxy writes itself."""
        return next(self._request_ids) & 0x7FFFFFFF

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to FerretDB, retrying while it is still starting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _UPSTREAM_CONNECT_SECONDS
        while True:
            try:
                return await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def handle_client(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        """Serve one client connection until either side closes."""
        conn_id = next(self._connection_ids)
        peer = client_writer.get_extra_info("peername")
        try:
            upstream_reader, upstream_writer = await self.open_upstream()
        except OSError as exc:
            log.warning(
                "conn %d from %s: FerretDB at %s:%d unreachable: %s",
                conn_id,
                peer,
                self.upstream_host,
                self.upstream_port,
                exc,
            )
            client_writer.close()
            return
        connection = _ProxiedConnection(
            self, conn_id, client_reader, client_writer, upstream_reader, upstream_writer
        )
        connection.peer = ":".join(str(part) for part in (peer or ())[:2])
        try:
            await connection.run()
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


class _ProxiedConnection:
    """One client connection and its upstream connection, pumped in both directions."""

    def __init__(
        self,
        proxy: LockProxy,
        conn_id: int,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.conn_id = conn_id
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_reader = upstream_reader
        self.upstream_writer = upstream_writer
        # requestIDs of forwarded writes whose reply has not come back yet.
        self.pending_writes: set[int] = set()
        # requestIDs of forwarded currentOp commands, whose reply gets fsyncLock added.
        self.pending_current_ops: set[int] = set()
        # Requests the proxy itself sent upstream, by requestID; their replies are not forwarded.
        self.probes: dict[int, asyncio.Future[WireMessage]] = {}
        self.app_name = ""
        """The client's appName, from its handshake (hello / isMaster)."""
        self.peer = ""
        """The client's address, ``host:port``."""

    async def run(self) -> None:
        to_upstream = asyncio.create_task(self.pump_client_to_upstream())
        to_client = asyncio.create_task(self.pump_upstream_to_client())
        try:
            # Either side closing ends the connection; a held write is dropped with it.
            await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_upstream, to_client):
                task.cancel()
            outcomes = await asyncio.gather(to_upstream, to_client, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception) and not isinstance(outcome, ConnectionError | OSError):
                    log.warning("conn %d: closed after an error: %r", self.conn_id, outcome)
            for _ in range(len(self.pending_writes)):
                await self.proxy.fsync_lock.end_write()
            self.pending_writes.clear()

    async def pump_client_to_upstream(self) -> None:
        lock = self.proxy.fsync_lock
        while (message := await read_message(self.client_reader)) is not None:
            if message.op_code == OP_COMPRESSED:
                log.warning("conn %d: forwarding a compressed message uninspected", self.conn_id)
            body = message.msg_body()
            if body is None:
                self.note_handshake(message.query_body())
                self.upstream_writer.write(message.raw)
                await self.upstream_writer.drain()
                continue
            name = command_name(body)
            self.note_handshake(body)
            if name in ("fsync", "fsyncUnlock") or (
                name == "configureFailPoint" and body.get(name) == SLOW_FLUSH
            ):
                reply = await self.run_fsync_command(name, body)
                if not message.more_to_come:
                    self.client_writer.write(
                        encode_msg(reply, self.proxy.next_request_id(), message.request_id)
                    )
                    await self.client_writer.drain()
                continue
            if is_write(body):
                if lock.count:
                    log.info("conn %d: %s held by the fsync lock", self.conn_id, name)
                await lock.begin_write()
                if message.more_to_come:
                    # No reply will tell when FerretDB is done; count it finished once sent.
                    try:
                        self.upstream_writer.write(message.raw)
                        await self.upstream_writer.drain()
                    finally:
                        await lock.end_write()
                    continue
                self.pending_writes.add(message.request_id)
            elif name == "currentOp":
                self.pending_current_ops.add(message.request_id)
            self.upstream_writer.write(message.raw)
            await self.upstream_writer.drain()

    async def pump_upstream_to_client(self) -> None:
        while (message := await read_message(self.upstream_reader)) is not None:
            probe = self.probes.pop(message.response_to, None)
            if probe is not None:
                if not probe.done():
                    probe.set_result(message)
                continue
            raw = message.raw
            if message.response_to in self.pending_writes:
                self.pending_writes.discard(message.response_to)
                await self.proxy.fsync_lock.end_write()
            elif message.response_to in self.pending_current_ops:
                self.pending_current_ops.discard(message.response_to)
                raw = self.annotate_current_op(message)
            self.client_writer.write(raw)
            await self.client_writer.drain()

    def note_handshake(self, body: Mapping[str, Any] | None) -> None:
        """Keep the appName a driver's handshake (hello / isMaster) introduces the client with."""
        if body is None or command_name(body) not in ("hello", "isMaster", "ismaster"):
            return
        client = body.get("client")
        application = client.get("application") if isinstance(client, Mapping) else None
        if isinstance(application, Mapping) and application.get("name"):
            self.app_name = str(application["name"])

    def annotate_current_op(self, message: WireMessage) -> bytes:
        """Add mongod's ``fsyncLock`` fields to a currentOp reply while locked, and an ``inprog``
        entry for each fsync lock still being taken."""
        body = message.msg_body()
        in_flight = list(self.proxy.locks_in_flight.values())
        if (not self.proxy.fsync_lock.count and not in_flight) or body is None:
            return message.raw
        if self.proxy.fsync_lock.count:
            body["fsyncLock"] = True
            body["info"] = "use db.fsyncUnlock() to terminate the fsync write/snapshot lock"
        now = asyncio.get_running_loop().time()
        body["inprog"] = [*(body.get("inprog") or []),
                          *({**op, "secs_running": int(now - began)} for op, began in in_flight)]
        return encode_msg(body, message.request_id, message.response_to)

    async def client_is_authorized(self) -> bool:
        """Ask FerretDB whether this connection may run privileged commands.

        The proxy answers fsync/fsyncUnlock itself, so it borrows FerretDB's verdict: on the
        client's own upstream connection (which carries the client's SASL conversation) it sends
        a command that FerretDB refuses to unauthenticated clients when authentication is on.
        """
        request_id = self.proxy.next_request_id()
        reply: asyncio.Future[WireMessage] = asyncio.get_running_loop().create_future()
        self.probes[request_id] = reply
        probe = {"listDatabases": 1, "nameOnly": True, "$db": "admin"}
        self.upstream_writer.write(encode_msg(probe, request_id, 0))
        await self.upstream_writer.drain()
        body = (await reply).msg_body() or {}
        return body.get("code") not in (13, 18)  # Unauthorized, AuthenticationFailed

    async def run_fsync_command(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Answer fsync / fsyncUnlock the way mongod does."""
        if body.get("$db", "admin") != "admin":
            return {
                "ok": 0.0,
                "errmsg": f"{name} may only be run against the admin database.",
                "code": 13,
                "codeName": "Unauthorized",
            }
        if not await self.client_is_authorized():
            return {
                "ok": 0.0,
                "errmsg": f"Command {name} requires authentication",
                "code": 13,
                "codeName": "Unauthorized",
            }
        lock = self.proxy.fsync_lock
        if name == "configureFailPoint":
            return self.configure_slow_flush(body)
        if name == "fsyncUnlock":
            count = await lock.unlock()
            if count is None:
                return {
                    "ok": 0.0,
                    "errmsg": "fsyncUnlock called when not locked",
                    "code": 20,
                    "codeName": "IllegalOperation",
                }
            log.info(
                "conn %d: fsyncUnlock completed, lockCount=%d%s",
                self.conn_id,
                count,
                "; writes flow again" if count == 0 else "",
            )
            return {"info": "fsyncUnlock completed", "lockCount": bson.Int64(count), "ok": 1.0}
        if not body.get("lock"):
            return {"numFiles": 1, "ok": 1.0}
        op = {"opid": self.proxy.next_request_id(), "active": True, "op": "command",
              "ns": "admin.$cmd", "command": {"fsync": 1, "lock": True, "$db": "admin"},
              "appName": self.app_name, "client": self.peer, "connectionId": self.conn_id,
              "desc": f"conn{self.conn_id}", "msg": "fsyncLock: flushing before the lock"}
        self.proxy.locks_in_flight[self.conn_id] = (op, asyncio.get_running_loop().time())
        try:
            count = await lock.lock()
        finally:
            self.proxy.locks_in_flight.pop(self.conn_id, None)
        log.info(
            "conn %d: fsync lock taken, lockCount=%d; writes are held (stand-in for mongod's "
            "fsync lock in front of FerretDB)",
            self.conn_id,
            count,
        )
        return {
            "info": "now locked against writes, use db.fsyncUnlock() to unlock",
            "lockCount": bson.Int64(count),
            "seeAlso": _MONGOD_FSYNC_URL,
            "ok": 1.0,
        }


    def configure_slow_flush(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The stand-in's own fail point (mongod's configureFailPoint shape; mongod has no such
        point): ``{configureFailPoint: "slowFsyncLockFlush", mode: "alwaysOn" | "off" |
        {times: n}, data: {seconds: s}}`` makes fsync locks flush for s seconds before the lock
        is taken and the count rises."""
        lock = self.proxy.fsync_lock
        mode = body.get("mode")
        data = body.get("data")
        seconds = data.get("seconds") if isinstance(data, Mapping) else None
        if mode != "off" and not (isinstance(seconds, int | float) and seconds >= 0):
            return {"ok": 0.0, "errmsg": "data.seconds must be a number >= 0", "code": 2,
                    "codeName": "BadValue"}
        if mode == "off":
            lock.flush_delays.clear()
            lock.flush_delay_always = 0.0
        elif mode == "alwaysOn":
            lock.flush_delay_always = float(seconds or 0)
        elif isinstance(mode, Mapping) and isinstance(mode.get("times"), int):
            lock.flush_delays[:] = [float(seconds or 0)] * int(mode["times"])
        else:
            return {"ok": 0.0, "errmsg": "mode must be alwaysOn, off or {times: n}", "code": 2,
                    "codeName": "BadValue"}
        log.info("conn %d: fail point %s set to %r (%ss)", self.conn_id, SLOW_FLUSH, mode, seconds)
        return {"count": 0, "ok": 1.0}


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    """Run the proxy until SIGTERM or SIGINT."""
    proxy = LockProxy(*upstream)
    server = await asyncio.start_server(proxy.handle_client, *listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "fsync-lock layer (stand-in for mongod's fsync lock) listening on %s:%d, "
        "forwarding to FerretDB at %s:%d",
        *listen,
        *upstream,
    )
    async with server:
        await stop.wait()
    log.info("stopped (lockCount was %d)", proxy.fsync_lock.count)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.mongolock",
        description="MongoDB fsync-lock layer in front of FerretDB (local cluster stand-in)",
    )
    parser.add_argument("--listen", type=_host_port, required=True, help="HOST:PORT to serve")
    parser.add_argument("--upstream", type=_host_port, required=True, help="FerretDB HOST:PORT")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s mongolock: %(message)s",
    )
    asyncio.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
