"""What the service hook types (postgresql, mongodb, minio) share: reading the connection Secret,
opening and testing a session at plan time, reconnecting after a restart, and the newest record.

A type supplies how to connect, how to test a fresh session, and its bound hook; this module turns
every failure into a PlanError that names the offending field of the spec.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote

from pydantic import BaseModel

from snapgroup.api.base import parse_duration
from snapgroup.api.snapshotgroup import LastRecord, ServiceTarget
from snapgroup.hooks.evidence import skew_of
from snapgroup.hooks.registry import BoundHook, HookContext, HookType, ServiceHook, UndoRecord
from snapgroup.ports import ClockSample, Connectors, PlanError, StepError


class Session(Protocol):
    """Any service session: it can read the server's clock, and be closed."""

    async def clock_sample(self) -> ClockSample:
        """The server's clock between two readings of the operator's."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


SessionT = TypeVar("SessionT", bound=Session)

SecretKeys = tuple[tuple[str, ...], ...]
"""Accepted Secret layouts: the Secret must hold every key of one of them; ``a|b`` is either key."""

_SECRET_REASONS = frozenset({"SecretIncomplete", "SecretInvalid", "AuthenticationFailed",
                             "PermissionDenied"})
_LAST_RECORD_REASONS = frozenset({"LastRecordNotFound", "LastRecordInvalid"})


def call_timeout(service: ServiceTarget) -> float:
    """Seconds each call to the service may take (`connection.timeout`)."""
    return parse_duration(service.connection.timeout).total_seconds()


def plan_error(
    exc: StepError, path: str, secret_name: str, secret_field: str = "connection.secretRef.name"
) -> PlanError:
    """The PlanError for a failed connection or session test, naming the field to fix."""
    if exc.reason in _SECRET_REASONS:
        return PlanError(exc.reason, f"{path}.{secret_field}", f"Secret {secret_name}: {exc.message}")
    if exc.reason in _LAST_RECORD_REASONS:
        return PlanError(exc.reason, f"{path}.lastRecord", exc.message)
    return PlanError(exc.reason, f"{path}.connection", exc.message)


def record_plan_error(exc: StepError, path: str, service: ServiceTarget) -> PlanError:
    """The PlanError for a failed newest-record read at plan time: it names lastRecord, or the
    Secret of the session that read it."""
    reader = service.last_record.secret_ref if service.last_record else None
    if exc.reason in _SECRET_REASONS:
        if reader is not None:
            return plan_error(exc, path, reader.name, "lastRecord.secretRef.name")
        return plan_error(exc, path, service.connection.secret_ref.name)
    return PlanError(exc.reason, f"{path}.lastRecord", exc.message)


def _spell_key(key: str) -> str:
    first, *others = key.split("|")
    return f"{first} (or {', '.join(others)})" if others else first


def _spell_layouts(layouts: SecretKeys) -> str:
    return ", or ".join(", ".join(_spell_key(key) for key in keys) for keys in layouts)


async def read_secret(
    ctx: HookContext, name: str, path: str, service_type: str, layouts: SecretKeys,
    secret_field: str = "connection.secretRef.name",
) -> dict[str, str]:
    """The connection Secret's data; PlanError SecretNotFound or SecretIncomplete otherwise."""
    field = f"{path}.{secret_field}"
    data = await ctx.cluster.get_secret(ctx.namespace, name)
    if data is None:
        raise PlanError(
            "SecretNotFound", field,
            f"Secret {name} does not exist in namespace {ctx.namespace}; create it with the "
            f"connection details of the {service_type} service",
        )
    present = {k for k, v in data.items() if v}
    gaps = [
        (keys, [_spell_key(key) for key in keys if not present.intersection(key.split("|"))])
        for keys in layouts
    ]
    if all(missing for _, missing in gaps):
        # Name what is missing from the layout the Secret already comes closest to.
        _, nearest = max(gaps, key=lambda gap: (len(gap[0]) - len(gap[1]), -len(gap[1])))
        raise PlanError(
            "SecretIncomplete", field,
            f"Secret {name} lacks {', '.join(nearest)}; a {service_type} service needs "
            f"{_spell_layouts(layouts)}",
        )
    return data


class BoundService(ServiceHook, Generic[SessionT]):
    """A service hook bound to one entry of spec.services, holding its open session."""

    def __init__(
        self, ctx: HookContext, service: ServiceTarget, session: SessionT, server: str = ""
    ) -> None:
        self.key = f"service:{service.name}"
        self.type = service.type
        self.ctx = ctx
        self.service = service
        self.session = session
        self.server = server
        """Which server it is (`server_identity`), read from the Secret: two groups never
        quiesce one server at once."""
        self.reader: SessionT = session
        """The session that reads the newest record: the quiesce session, or one of its own
        (lastRecord.secretRef)."""
        self.warnings: list[PlanError] = []
        """Problems the plan found that do not stop the group (e.g. an unindexed column)."""
        self._evidence: dict[str, str] = {}
        self._released = False

    def targets(self) -> list[str]:
        """The database server, as an exclusion key."""
        return [f"server:{self.type}/{self.server or self.service.name}"]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"

    def connection_record(self) -> UndoRecord:
        """What a restarted operator needs to reconnect: the Secret's name and the timeout."""
        return {
            "secretRef": self.service.connection.secret_ref.name,
            "timeout": call_timeout(self.service),
        }

    def evidence(self) -> dict[str, str]:
        """Type-specific proof of quiesce gathered so far."""
        return dict(self._evidence)

    def plan_warnings(self) -> list[PlanError]:
        """What the plan found worth a warning (see `warnings`)."""
        return list(self.warnings)

    async def newest_record(self) -> datetime | None:
        """Newest record per spec lastRecord; None when lastRecord is not configured."""
        if self.service.last_record is None:
            return None
        return await self.read_newest(self.service.last_record)

    @abstractmethod
    async def read_newest(self, last_record: LastRecord) -> datetime | None:
        """Read the newest record time (on `reader`) the way this type stores records."""

    async def check_last_record(self, last_record: LastRecord, path: str) -> None:
        """At plan time: the newest record can be read, and the server's clock against ours.

        The skew goes into the evidence (the verdict weighs it); subclasses add checks.
        """
        await self.read_newest(last_record)
        self._evidence.update(skew_of(await self.reader.clock_sample()).evidence())

    async def release(self) -> None:
        """Close the sessions; safe to call more than once (a close that failed is tried again)."""
        if not self._released:
            if self.reader is not self.session:
                await self.reader.close()
            await self.session.close()
            self._released = True


class ServiceHookType(HookType[ServiceTarget], Generic[SessionT]):
    """A service type: plan reads the Secret, connects, tests the session and binds one hook."""

    params_model: ClassVar[type[BaseModel]] = ServiceTarget
    secret_layouts: ClassVar[SecretKeys]
    """Secret keys the type accepts, checked at plan time before connecting."""
    default_port: ClassVar[int | None] = None
    """The port a client uses when the Secret names none (None: it depends on the scheme)."""

    @abstractmethod
    async def connect(
        self, connectors: Connectors, secret: Mapping[str, str], timeout: float, session_name: str
    ) -> SessionT:
        """Open a session with the Secret's data, named session_name where the server shows
        names; StepError on failure."""

    @abstractmethod
    async def bind(
        self, ctx: HookContext, service: ServiceTarget, session: SessionT, path: str
    ) -> BoundService[SessionT]:
        """Test the fresh session (StepError or PlanError on failure) and bind the hook."""

    async def plan(self, ctx: HookContext, params: ServiceTarget, path: str) -> list[BoundHook]:
        """Read the Secret, connect and test the session; one bound hook holding the session."""
        secret_name = params.connection.secret_ref.name
        secret = await read_secret(ctx, secret_name, path, self.name, self.secret_layouts)
        try:
            session = await self.connect(
                ctx.connectors, secret, call_timeout(params), ctx.session_name)
        except StepError as exc:
            raise plan_error(exc, path, secret_name) from None
        hook: BoundService[SessionT] | None = None
        try:
            hook = await self.bind(ctx, params, session, path)
            hook.server = server_identity(secret, ctx.namespace, self.default_port)
            if params.last_record is not None:
                await self._attach_reader(ctx, hook, params.last_record, path)
                await hook.check_last_record(params.last_record, path)
        except BaseException as exc:
            # Whatever was opened is closed: the hook's sessions once bound, else the session.
            await (hook.release() if hook is not None else session.close())
            if not isinstance(exc, StepError):
                raise
            if hook is None:
                raise plan_error(exc, path, secret_name) from None
            raise record_plan_error(exc, path, params) from None
        return [hook]

    async def _attach_reader(
        self, ctx: HookContext, hook: BoundService[SessionT], last_record: LastRecord, path: str
    ) -> None:
        """Open lastRecord.secretRef's own session for reading records, when one is named."""
        if last_record.secret_ref is None:
            return
        name, field = last_record.secret_ref.name, "lastRecord.secretRef.name"
        secret = await read_secret(ctx, name, path, self.name, self.secret_layouts, field)
        try:
            hook.reader = await self.connect(
                ctx.connectors, secret, call_timeout(hook.service), ctx.session_name)
        except StepError as exc:
            raise plan_error(exc, path, name, field) from None

    async def newest_at(
        self, ctx: HookContext, service: ServiceTarget,
        relocate: Callable[[str, int | None], tuple[str, int | None]], path: str,
    ) -> datetime | None:
        """The newest record of a copy of the service's server (a restored one) at relocate(the
        Secret's host and port), read with the service's credentials as lastRecord says. Without
        lastRecord, the copy is asked for its clock (so it answered) and None returned.

        Raises StepError when the copy cannot be reached or read, PlanError when a Secret is
        missing or incomplete."""
        reader = service.last_record.secret_ref if service.last_record is not None else None
        name, field = ((reader.name, "lastRecord.secretRef.name") if reader is not None
                       else (service.connection.secret_ref.name, "connection.secretRef.name"))
        secret = await read_secret(ctx, name, path, self.name, self.secret_layouts, field)
        try:
            moved = pointed_at(secret, *relocate(*address_of(secret)))
        except ValueError as exc:
            raise StepError("SecretInvalid", f"Secret {name}: {exc}") from None
        session = await self.connect(ctx.connectors, moved, call_timeout(service), ctx.session_name)
        try:
            hook = await self.bind(ctx, service, session, path)
            if service.last_record is None:
                await session.clock_sample()
                return None
            return await hook.read_newest(service.last_record)
        finally:
            await session.close()

    async def reconnect(self, ctx: HookContext, key: str, record: UndoRecord) -> SessionT:
        """A fresh session from the journal's connection record, for recovery after a restart.

        Raises StepError: the plan's checks no longer hold or the service cannot be reached.
        """
        name = record.get("secretRef")
        timeout = record.get("timeout")
        if not isinstance(name, str) or not isinstance(timeout, int | float):
            raise StepError(
                "RecordIncomplete",
                f"{key}: the journal does not say which Secret to connect with",
            )
        try:
            secret = await read_secret(ctx, name, key, self.name, self.secret_layouts)
        except PlanError as exc:
            raise StepError(exc.reason, exc.message) from None
        return await self.connect(ctx.connectors, secret, float(timeout), "snapgroup")


def server_address(secret: Mapping[str, str]) -> str:
    """Where a Secret says its server is, without credentials: ``host:port`` (lower case)."""
    uri = secret.get("uri") or secret.get("endpoint") or ""
    if uri:
        authority = uri.partition("://")[2] if "://" in uri else uri
        authority = authority.partition("/")[0].partition("?")[0]
        return authority.rpartition("@")[2].lower()
    host = secret.get("host", "").lower()
    port = secret.get("port", "")
    return f"{host}:{port}" if port else host


def _hosts(secret: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every (host, port as written, "" for none) a Secret names, in its order."""
    uri = secret.get("uri") or ""
    if uri and "://" not in uri and "=" in uri:  # libpq's keyword form
        words = {k.lower(): v.strip("'") for k, v in keyword_pairs(uri)}
        hosts, ports = words.get("host", "").split(","), words.get("port", "").split(",")
        return [(h, ports[min(i, len(ports) - 1)]) for i, h in enumerate(hosts)]
    spelled = server_address(secret)
    if not spelled and "?" in uri:  # postgresql:///db?host=...&port=...
        query = dict(parse_qsl(uri.partition("?")[2]))
        spelled = query.get("host", "").split(",")[0] + (f":{query['port']}" if query.get("port") else "")
    found = []
    for where in spelled.split(","):
        if where.startswith("["):
            host, _, rest = where[1:].partition("]")
            found.append((host, rest.removeprefix(":")))
        elif where.count(":") == 1:
            host, _, port = where.partition(":")
            found.append((host, port))
        else:
            found.append((where, ""))
    return found


def address_of(secret: Mapping[str, str]) -> tuple[str, int | None]:
    """The first host a Secret names and its port (None when it names none)."""
    first, port = _hosts(secret)[0]
    return first, int(port) if port.isdigit() else None


CLUSTER_DOMAIN = ".cluster.local"


def server_identity(secret: Mapping[str, str], namespace: str, default_port: int | None) -> str:
    """The server a Secret in `namespace` names, spelled one way whatever the Secret's spelling:
    each host as the cluster's DNS reads it from there (``pg`` and ``pg.<namespace>`` are
    ``pg.<namespace>.svc``; ``.svc.cluster.local`` is cut to ``.svc``), the type's default port
    where none is written, hosts sorted. Two groups over one server share one exclusion Lease."""
    spelled = []
    for host, port in _hosts(secret):
        name = host.lower().rstrip(".")
        if name.endswith(".svc" + CLUSTER_DOMAIN):
            name = name.removesuffix(CLUSTER_DOMAIN)
        elif name and ":" not in name and not name.replace(".", "").isdigit():
            labels = name.split(".")
            if len(labels) == 1:
                name = f"{name}.{namespace}.svc"
            elif len(labels) == 2:
                name = f"{name}.svc"
        written = port or (str(default_port) if default_port is not None else "")
        bracketed = f"[{name}]" if ":" in name else name
        spelled.append(f"{bracketed}:{written}" if written else bracketed)
    return ",".join(sorted(spelled))


def pointed_at(secret: Mapping[str, str], host: str, port: int | None) -> dict[str, str]:
    """The Secret's data with its server's address (``uri``, ``endpoint``, or ``host`` and
    ``port``) replaced by host:port; credentials and options stay. port None keeps the port."""
    out = dict(secret)
    for key in ("uri", "endpoint"):
        if out.get(key):
            out[key] = _with_authority(out[key], host, port)
    if out.get("host"):
        out["host"] = host
        if port is not None:
            out["port"] = str(port)
    return out


_ADDRESS_OPTIONS = frozenset({"host", "hostaddr", "port", "service"})
"""Connection options that say (or look up) where the server is (libpq's): never kept."""
_KEYWORD = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s\\]|\\.)*)")


def keyword_pairs(text: str) -> list[tuple[str, str]]:
    """libpq's keyword form (``host = a port=5432 password='x y'``) as (keyword, value as
    written) pairs; ValueError for text it does not read in full."""
    pairs: list[tuple[str, str]] = []
    position = 0
    while text[position:].strip():
        match = _KEYWORD.match(text, position)
        if match is None or match.end() == position:
            raise ValueError("the Secret's uri is neither a URI nor libpq keyword=value pairs")
        pairs.append((match.group(1), match.group(2)))
        position = match.end()
    return pairs


def _with_authority(address: str, host: str, port: int | None) -> str:
    """A URI (``scheme://creds@hosts/rest?options``), a bare ``host:port``, or libpq's keyword
    form with its host (every host of a list) replaced, and every other option that says where
    the server is (host, hostaddr, port in the query or the keywords) dropped."""
    if "://" not in address and "=" in address:
        kept = [f"{k}={v}" for k, v in keyword_pairs(address) if k.lower() not in _ADDRESS_OPTIONS]
        return " ".join([f"host={host}", *([f"port={port}"] if port is not None else []), *kept])
    scheme, _, rest = address.rpartition("://")
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path, _, query = tail.partition("?")
    if query:
        # Each option as written (libpq does not read '+' as a space): only its name is decoded.
        options = [o for o in query.split("&")
                   if unquote(o.partition("=")[0]).lower() not in _ADDRESS_OPTIONS]
        tail = path + (f"?{'&'.join(options)}" if options else "")
    credentials, _, hosts = authority.rpartition("@")
    first = hosts.split(",")[0]
    old_port = first.rpartition("]")[2].rpartition(":")[2] if ":" in first.rpartition("]")[2] else ""
    new_port = str(port) if port is not None else old_port
    bracketed = f"[{host}]" if ":" in host else host
    where = f"{bracketed}:{new_port}" if new_port else bracketed
    if scheme == "mongodb+srv":
        scheme = "mongodb"  # an address, not a DNS SRV name
    return (f"{scheme}://" if scheme else "") + (f"{credentials}@" if credentials else "") + where + tail


def journal_int(record: Mapping[str, Any], key: str) -> int | None:
    """An integer from an undo record (the journal round-trips through JSON), or None."""
    value = record.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
