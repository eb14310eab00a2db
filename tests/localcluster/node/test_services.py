"""The service proxy, with real sockets on loopback and pods given as a plain list."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from localcluster.node.services import ServiceProxy, backends, proxied_ports


def _pod(name: str, ip: str, ready: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "labels": {"app": "db"}, **extra},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "db", "containerPort": 7000}]}]},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _service(ip: str, port: int, target: int | str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "db"},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": "db"},
            "ports": [{"port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


class PodList:
    """The pod cache, as a list a test edits."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []

    def in_namespace(self, namespace: str) -> Iterable[dict[str, Any]]:
        return [p for p in self.pods if p["metadata"]["namespace"] == namespace]


def test_only_loopback_services_with_selectors_are_proxied() -> None:
    assert proxied_ports(_service("127.96.0.10", 5432, 5432)) == [
        (("127.96.0.10", 5432), {"app": "db"}, 5432)
    ]
    assert proxied_ports(_service("10.96.0.10", 5432, 5432)) == []
    no_selector = _service("127.96.0.10", 5432, 5432)
    del no_selector["spec"]["selector"]
    assert proxied_ports(no_selector) == []


def test_backends_are_ready_matching_pods_with_named_ports_resolved() -> None:
    pods = [
        _pod("a", "127.10.0.2"),
        _pod("b", "127.10.0.3", ready=False),
        _pod("c", "127.10.0.4", deletionTimestamp="2024-01-01T00:00:00Z"),
        {**_pod("d", "127.10.0.5"), "metadata": {"namespace": "ns", "name": "d", "labels": {}}},
    ]
    assert backends(pods, {"app": "db"}, "db") == [("127.10.0.2", 7000)]
    assert backends(pods, {"app": "db"}, 7100) == [("127.10.0.2", 7100)]
    assert backends(pods, {"app": "db"}, "nope") == []


async def _echo_server(host: str, tag: bytes) -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(tag + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, host, 0)


@pytest.fixture
async def proxy_setup() -> AsyncIterator[tuple[ServiceProxy, PodList, str]]:
    pods = PodList()
    proxy = ServiceProxy(pods)
    # A random Service address keeps parallel runs apart.
    yield proxy, pods, f"127.96.{random.randint(200, 250)}.{random.randint(2, 250)}"
    await proxy.close()


async def _wait_listening(host: str, port: int) -> None:
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"proxy never listened on {host}:{port}")


async def test_proxy_forwards_to_a_ready_pod(
    proxy_setup: tuple[ServiceProxy, PodList, str],
) -> None:
    proxy, pods, service_ip = proxy_setup
    server = await _echo_server("127.10.250.2", b"A:")
    port = server.sockets[0].getsockname()[1]
    pods.pods = [_pod("a", "127.10.250.2"), _pod("b", "127.10.250.3", ready=False)]
    proxy.on_service_event("ADDED", _service(service_ip, 15432, port))
    await _wait_listening(service_ip, 15432)

    reader, writer = await asyncio.open_connection(service_ip, 15432)
    payload = b"x" * 300_000
    writer.write(payload)
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    assert answer.startswith(b"A:")
    assert answer.replace(b"A:", b"") == payload
    server.close()


async def test_proxy_resets_connections_without_ready_pods(
    proxy_setup: tuple[ServiceProxy, PodList, str],
) -> None:
    proxy, pods, service_ip = proxy_setup
    pods.pods = [_pod("b", "127.10.250.3", ready=False)]
    proxy.on_service_event("ADDED", _service(service_ip, 15433, 7000))
    await _wait_listening(service_ip, 15433)
    reader, writer = await asyncio.open_connection(service_ip, 15433)
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()


async def test_proxy_follows_service_changes(
    proxy_setup: tuple[ServiceProxy, PodList, str],
) -> None:
    proxy, pods, service_ip = proxy_setup
    first = await _echo_server("127.10.250.4", b"1:")
    second = await _echo_server("127.10.250.5", b"2:")
    first_port = first.sockets[0].getsockname()[1]
    second_port = second.sockets[0].getsockname()[1]
    pods.pods = [_pod("a", "127.10.250.4")]
    proxy.on_service_event("ADDED", _service(service_ip, 15434, first_port))
    await _wait_listening(service_ip, 15434)

    async def ask() -> bytes:
        reader, writer = await asyncio.open_connection(service_ip, 15434)
        writer.write(b"hi")
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        return answer

    assert await ask() == b"1:hi"
    # The pod is replaced and the Service's targetPort changes.
    pods.pods = [_pod("b", "127.10.250.5")]
    proxy.on_service_event("MODIFIED", _service(service_ip, 15434, second_port))
    for _ in range(100):
        if await ask() == b"2:hi":
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the proxy never switched to the new pod and port")

    proxy.on_service_event("DELETED", _service(service_ip, 15434, second_port))
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection(service_ip, 15434)
            writer.close()
        except ConnectionRefusedError:
            break
        except ConnectionResetError:
            pass  # the listener closed while this connection was queued
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the proxy kept listening after the Service was deleted")
    first.close()
    second.close()


async def test_a_connection_waits_briefly_for_a_pod_turning_ready(
    proxy_setup: tuple[ServiceProxy, PodList, str],
) -> None:
    proxy, pods, service_ip = proxy_setup
    server = await _echo_server("127.10.250.6", b"R:")
    port = server.sockets[0].getsockname()[1]
    pods.pods = [_pod("a", "127.10.250.6", ready=False)]
    proxy.on_service_event("ADDED", _service(service_ip, 15435, port))
    await _wait_listening(service_ip, 15435)

    reader, writer = await asyncio.open_connection(service_ip, 15435)
    writer.write(b"hi")
    writer.write_eof()
    for _ in range(250):
        if proxy.pod_changes.waiting:
            break
        await asyncio.sleep(0.004)
    else:
        raise AssertionError("the connection never waited for a Ready pod")
    # The pod turns Ready while the connection waits for it.
    pods.pods = [_pod("a", "127.10.250.6")]
    proxy.on_pod_event("MODIFIED", pods.pods[0])
    assert await asyncio.wait_for(reader.read(-1), 5) == b"R:hi"
    writer.close()
    server.close()
