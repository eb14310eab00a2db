"""Pod IP allocation and the image table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from localcluster.node.addresses import (
    AddressesExhausted,
    PodAddressPool,
    first_address_for,
    listening_addresses,
)
from localcluster.node.runtimes import (
    DataWriterRuntime,
    MongoStandInRuntime,
    PostgresRuntime,
    S3StandInRuntime,
    data_volume,
    runtime_for,
)


def test_addresses_are_unique_and_in_the_pod_network() -> None:
    pool = PodAddressPool()
    given = {pool.allocate(f"pod-{i}") for i in range(600)}
    assert len(given) == 600
    network = ipaddress.IPv4Network("127.10.0.0/16")
    assert all(ipaddress.IPv4Address(ip) in network for ip in given)
    assert not any(ip.endswith((".0", ".255")) for ip in given)


def test_same_owner_gets_same_address() -> None:
    pool = PodAddressPool()
    assert pool.allocate("a") == pool.allocate("a")
    assert pool.in_use() == 1


def test_released_address_is_not_reused_at_once() -> None:
    pool = PodAddressPool()
    first = pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b") != first
    assert pool.owner_of(first) is None


def test_reserve_keeps_an_address_across_restarts_but_never_doubles_it() -> None:
    pool = PodAddressPool()
    assert pool.reserve("a", "127.10.3.4")
    assert not pool.reserve("b", "127.10.3.4")
    assert pool.reserve("a", "127.10.3.4")
    assert not pool.reserve("c", "10.0.0.1")
    assert pool.allocate("a") == "127.10.3.4"


def test_allocation_continues_after_reserved_addresses() -> None:
    pool = PodAddressPool()
    assert pool.reserve("old", "127.10.0.9")
    assert pool.allocate("new") == "127.10.0.10"


def test_addresses_busy_on_the_host_are_skipped() -> None:
    pool = PodAddressPool()
    assert pool.allocate("a", busy={"127.10.0.2", "127.10.0.3"}) == "127.10.0.4"


def test_listening_addresses_reads_the_kernel_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        "   0: 02000A7F:1538 00000000:0000 0A 00000000:00000000\n"  # 127.10.0.2:5432 LISTEN
        "   1: 03000A7F:9C40 0100007F:1538 01 00000000:00000000\n"  # 127.10.0.3 ESTABLISHED
    )
    assert listening_addresses(table) == {"127.10.0.2"}


def test_listening_addresses_sees_a_real_listener() -> None:
    import socket

    with socket.socket() as server:
        server.bind(("127.10.254.254", 0))
        server.listen()
        assert "127.10.254.254" in listening_addresses()


def test_each_state_dir_starts_in_its_own_subnet(tmp_path: Path) -> None:
    first = first_address_for(tmp_path / "a")
    assert first == first_address_for(tmp_path / "a")
    assert first.endswith(".2")
    assert ipaddress.IPv4Address(first) in ipaddress.IPv4Network("127.10.0.0/16")
    starts = {first_address_for(tmp_path / str(i)) for i in range(20)}
    assert len(starts) > 10
    assert PodAddressPool(first=first).allocate("a") == first


def test_exhaustion_is_reported() -> None:
    pool = PodAddressPool(ipaddress.IPv4Network("127.10.0.0/29"))
    for i in range(5):
        pool.allocate(str(i))
    with pytest.raises(AddressesExhausted):
        pool.allocate("one-too-many")


@pytest.mark.parametrize(
    ("image", "runtime"),
    [
        ("postgres:15", PostgresRuntime),
        ("postgres:15.6", PostgresRuntime),
        ("postgres:15-alpine", PostgresRuntime),
        ("docker.io/library/postgres:15.4-bookworm", PostgresRuntime),
        ("library/postgres:15", PostgresRuntime),
        ("mongo:7", MongoStandInRuntime),
        ("mongo:7.0.12", MongoStandInRuntime),
        ("docker.io/mongo:7.0", MongoStandInRuntime),
        ("minio/minio", S3StandInRuntime),
        ("minio/minio:RELEASE.2024-01-01T00-00-00Z", S3StandInRuntime),
        ("quay.io/minio/minio:latest", S3StandInRuntime),
        ("docker.io/minio/minio:latest", S3StandInRuntime),
        ("snapgroup.dev/bleater-data-writer:0.1", DataWriterRuntime),
        ("snapgroup.dev/bleater-data-writer", DataWriterRuntime),
    ],
)
def test_known_images_are_emulated(image: str, runtime: type) -> None:
    assert isinstance(runtime_for(image), runtime)


@pytest.mark.parametrize(
    "image",
    [
        "postgres:16",
        "postgres:150",
        "postgres",
        "mongo:6.0",
        "mongo:70",
        "nginx:1.25",
        "bitnami/postgresql:15",
        "example.com/minio/minio:latest",
        "snapgroup.dev/other:0.1",
        "busybox",
    ],
)
def test_other_images_are_not_emulated(image: str) -> None:
    assert runtime_for(image) is None


def test_data_volume_prefers_claims_then_writable_mounts(tmp_path: Path) -> None:
    volumes = {
        "config": {"name": "config", "configMap": {"name": "x"}},
        "cache": {"name": "cache", "emptyDir": {}},
        "data": {"name": "data", "persistentVolumeClaim": {"claimName": "pg"}},
    }
    mounts = {"/etc/x": tmp_path / "cfg", "/cache": tmp_path / "cache", "/data": tmp_path / "pv"}
    container = {
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/x"},
            {"name": "cache", "mountPath": "/cache"},
            {"name": "data", "mountPath": "/data"},
        ]
    }
    scratch = tmp_path / "scratch"
    assert data_volume(container, volumes, mounts, scratch) == tmp_path / "pv"
    container["volumeMounts"] = container["volumeMounts"][:2]
    assert data_volume(container, volumes, mounts, scratch) == tmp_path / "cache"
    container["volumeMounts"] = container["volumeMounts"][:1]
    assert data_volume(container, volumes, mounts, scratch) == scratch
