"""Pod IP allocation and the image table."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from localcluster.node.addresses import AddressesExhausted, PodAddressPool
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
