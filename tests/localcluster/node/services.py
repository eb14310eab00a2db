"""The service proxy: ClusterIP:port on loopback, forwarded to Ready pods (kube-proxy stand-in).

For every Service whose clusterIP lies in 127.0.0.0/8 the proxy listens on clusterIP:port
and forwards each TCP connection to a Ready pod the Service selects, at podIP:targetPort
(named target ports resolved against the pod's container ports). Pods are chosen from
the pod cache directly: loopback addresses are not valid in Endpoints/EndpointSlices, so
the endpoint controllers cannot describe these pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import struct
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .informer import DELETED, CacheChanges, ObjectKey, object_key

log = logging.getLogger(__name__)

JSON = dict[str, Any]

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
CONNECT_TIMEOUT_SECONDS = 3.0
NO_ENDPOINT_WAIT_SECONDS = 1.0
LISTEN_RETRY_SECONDS = 5.0
BUFFER_BYTES = 256 * 1024


@dataclass
class PortBinding:
    """One listening address of a Service and where its connections go."""

    service: ObjectKey
    address: tuple[str, int]
    selector: dict[str, str]
    target_port: int | str
    server: asyncio.Server | None = None


def proxied_ports(service: JSON) -> list[tuple[tuple[str, int], dict[str, str], int | str]]:
    """(listen address, selector, targetPort) for each TCP port the proxy should serve."""
    spec = service.get("spec", {})
    selector = spec.get("selector") or {}
    if not selector or spec.get("type") == "ExternalName":
        return []
    addresses = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP", "")] if ip]
    result = []
    for ip in addresses:
        try:
            if ipaddress.ip_address(ip) not in LOOPBACK:
                continue
        except ValueError:
            continue
        for port in spec.get("ports") or []:
            if str(port.get("protocol", "TCP")) != "TCP":
                continue
            target = port.get("targetPort", port["port"])
            result.append(((ip, int(port["port"])), dict(selector), target))
    return result


def is_ready(pod: JSON) -> bool:
    """A pod that may receive traffic: Ready, has an IP, not terminating."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def resolve_target_port(pod: JSON, target: int | str) -> int | None:
    """The pod port a Service targetPort means (a number, or a container port's name)."""
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in pod.get("spec", {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def backends(pods: Iterable[JSON], selector: dict[str, str], target: int | str) -> list[tuple[str, int]]:
    """(podIP, port) of every Ready pod matching `selector`, in a stable order."""
    found = []
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        if any(labels.get(key) != value for key, value in selector.items()):
            continue
        if not is_ready(pod):
            continue
        port = resolve_target_port(pod, target)
        if port is not None:
            found.append((str(pod["status"]["podIP"]), port))
    return sorted(found)


class PodCache(Protocol):
    """Where the proxy finds pods (the pod informer)."""

    def in_namespace(self, namespace: str) -> Iterable[JSON]:
        """The cached pods of one namespace."""
        ...


class ServiceProxy:
    """Listens on Service addresses and forwards connections to selected pods."""

    def __init__(self, pods: PodCache) -> None:
        self._pods = pods
        # Notified of every pod change (see `on_pod_event`).
        self.pod_changes = CacheChanges()
        self._bindings: dict[tuple[str, int], PortBinding] = {}
        self._services: dict[ObjectKey, JSON] = {}
        self._retrying: set[ObjectKey] = set()
        self._unavailable: set[tuple[str, int]] = set()
        self._counter = itertools.count()
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()

    def on_pod_event(self, kind: str, pod: JSON) -> None:
        """Informer listener for pods: wakes connections waiting for a Ready pod."""
        self.pod_changes.notify()

    def on_service_event(self, kind: str, service: JSON) -> None:
        """Informer listener for Services."""
        key = object_key(service)
        if kind == DELETED:
            self._services.pop(key, None)
        else:
            self._services[key] = service
        self._run(self._sync(key))

    def _run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retry_later(self, key: ObjectKey) -> None:
        await asyncio.sleep(LISTEN_RETRY_SECONDS)
        self._retrying.discard(key)
        await self._sync(key)

    async def _sync(self, key: ObjectKey) -> None:
        async with self._lock:
            service = self._services.get(key)
            wanted = {
                address: (selector, target)
                for address, selector, target in (proxied_ports(service) if service else [])
            }
            for address, existing in list(self._bindings.items()):
                if existing.service == key and address not in wanted:
                    await self._close(existing)
            for address, (selector, target) in wanted.items():
                binding = self._bindings.get(address)
                if binding is not None and binding.service == key:
                    binding.selector, binding.target_port = selector, target
                    continue
                if binding is not None:
                    log.warning("%s:%d is already served for %s/%s; replacing it", *address, *binding.service)
                    await self._close(binding)
                await self._open(PortBinding(key, address, selector, target))

    async def _open(self, binding: PortBinding) -> None:
        host, port = binding.address
        try:
            binding.server = await asyncio.start_server(
                lambda r, w: self._accept(binding, r, w),
                host,
                port,
                reuse_address=True,
                limit=BUFFER_BYTES,
            )
        except OSError as error:
            # Most likely another local cluster serves the same pinned address; try again
            # later, so this one takes over once that one is gone.
            if binding.address not in self._unavailable:
                self._unavailable.add(binding.address)
                log.error(
                    "cannot listen on %s:%d for service %s/%s: %s (retrying every %.0fs)",
                    host,
                    port,
                    *binding.service,
                    error,
                    LISTEN_RETRY_SECONDS,
                )
            if binding.service not in self._retrying:
                self._retrying.add(binding.service)
                self._run(self._retry_later(binding.service))
            return
        self._bindings[binding.address] = binding
        self._unavailable.discard(binding.address)
        log.info(
            "service %s/%s: proxying %s:%d -> pods %s port %s",
            *binding.service,
            host,
            port,
            binding.selector,
            binding.target_port,
        )

    async def _close(self, binding: PortBinding) -> None:
        self._bindings.pop(binding.address, None)
        if binding.server is not None:
            binding.server.close()
            with contextlib.suppress(Exception):
                await binding.server.wait_closed()
        log.info("service %s/%s: stopped proxying %s:%d", *binding.service, *binding.address)

    async def _accept(
        self, binding: PortBinding, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._forward(binding, reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _forward(
        self, binding: PortBinding, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        namespace = binding.service[0]
        # A pod that just turned Ready may not be in this cache yet (a client that saw it
        # Ready through the API can be a few milliseconds ahead): wait a moment for one.
        deadline = time.monotonic() + NO_ENDPOINT_WAIT_SECONDS
        while True:
            generation = self.pod_changes.generation
            candidates = backends(self._pods.in_namespace(namespace), binding.selector, binding.target_port)
            remaining = deadline - time.monotonic()
            if candidates or remaining <= 0:
                break
            await self.pod_changes.wait(generation, remaining)
        if not candidates:
            log.debug("service %s/%s has no ready pod; refusing a connection", *binding.service)
            _reset(writer)
            return
        start = next(self._counter)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for offset in range(len(candidates)):
            host, port = candidates[(start + offset) % len(candidates)]
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=BUFFER_BYTES),
                    CONNECT_TIMEOUT_SECONDS,
                )
                break
            except (OSError, TimeoutError) as error:
                log.debug("service %s/%s: pod %s:%d refused: %s", *binding.service, host, port, error)
        if upstream is None:
            _reset(writer)
            return
        up_reader, up_writer = upstream
        for stream in (writer, up_writer):
            sock = stream.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await _splice(reader, writer, up_reader, up_writer)

    async def close(self) -> None:
        """Stop listening and drop open connections."""
        async with self._lock:
            for binding in list(self._bindings.values()):
                await self._close(binding)
        for task in list(self._background) + list(self._connections):
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    # Answer like a refused connection: RST rather than an orderly close.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    while True:
        data = await source.read(BUFFER_BYTES)
        if not data:
            break
        target.write(data)
        await target.drain()
    if target.can_write_eof():
        target.write_eof()


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both sides closed; a reset on either side resets the other."""
    tasks = [asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))]
    try:
        pending: set[asyncio.Task[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(task.exception() is not None for task in done):
                for task in pending:
                    task.cancel()
                writer.transport.abort()
                up_writer.transport.abort()
                return
    finally:
        for task in tasks:
            task.cancel()
        for stream in (writer, up_writer):
            stream.close()
