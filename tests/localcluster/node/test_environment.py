"""Container environment resolution, checked against the kubelet's documented behaviour."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from localcluster.node.environment import (
    ContainerConfigError,
    PodAddresses,
    expand,
    referenced_sources,
    resolve_env,
    service_env_vars,
)

ADDRESSES = PodAddresses(pod_ip="127.10.0.7", host_ip="127.0.0.1")


def _service(namespace: str, name: str, ip: str, *ports: tuple[str, int]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "clusterIP": ip,
            "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        },
    }


def _pod(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "writer-1",
            "namespace": "bleater",
            "uid": "u-1",
            "labels": {"app": "writer"},
        },
        "spec": {"nodeName": "local-node", "serviceAccountName": "default", **spec},
    }


def _lookup(values: dict[str, str]) -> Any:
    return values.get


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-y", "x-alpha-y"),
        ("$(A)$(B)", "alphabeta"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$$", "$"),
        ("$", "$"),
        ("a$", "a$"),
        ("$(A", "$(A"),
        ("$A", "$A"),
        ("$()", "$()"),
        ("100$", "100$"),
        ("$(A)$", "alpha$"),
    ],
)
def test_expand_follows_kubelet_syntax(text: str, expected: str) -> None:
    assert expand(text, _lookup({"A": "alpha", "B": "beta"})) == expected


def test_service_env_vars_cover_namespace_and_master_service() -> None:
    services = [
        _service("bleater", "postgres", "127.96.0.10", ("pg", 5432)),
        _service("bleater", "mongo-db", "127.96.0.11", ("", 27017)),
        _service("bleater", "headless", "None", ("", 80)),
        _service("other", "elsewhere", "127.96.0.50", ("", 80)),
        _service("default", "kubernetes", "127.96.0.1", ("https", 443)),
    ]
    env = service_env_vars(services, "bleater", enable_service_links=True)
    assert env["POSTGRES_SERVICE_HOST"] == "127.96.0.10"
    assert env["POSTGRES_SERVICE_PORT"] == "5432"
    assert env["POSTGRES_SERVICE_PORT_PG"] == "5432"
    assert env["POSTGRES_PORT"] == "tcp://127.96.0.10:5432"
    assert env["POSTGRES_PORT_5432_TCP_ADDR"] == "127.96.0.10"
    assert env["POSTGRES_PORT_5432_TCP_PROTO"] == "tcp"
    assert env["MONGO_DB_SERVICE_HOST"] == "127.96.0.11"
    assert env["KUBERNETES_SERVICE_HOST"] == "127.96.0.1"
    assert not any(key.startswith("HEADLESS_") for key in env)
    assert not any(key.startswith("ELSEWHERE_") for key in env)


def test_service_links_disabled_keeps_only_master_service() -> None:
    services = [
        _service("bleater", "postgres", "127.96.0.10", ("", 5432)),
        _service("default", "kubernetes", "127.96.0.1", ("https", 443)),
    ]
    env = service_env_vars(services, "bleater", enable_service_links=False)
    assert "POSTGRES_SERVICE_HOST" not in env
    assert env["KUBERNETES_SERVICE_PORT"] == "443"


def test_resolve_env_reads_secrets_config_maps_and_fields() -> None:
    container = {
        "name": "writer",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pw"}}},
            {
                "name": "INTERVAL",
                "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "interval"}},
            },
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "DSN", "value": "postgres://$(POSTGRES_SERVICE_HOST):$(PORT)/$(POD)"},
            {"name": "PORT", "value": "5432"},
            {"name": "EMPTY"},
        ],
    }
    sources = {
        ("Secret", "creds"): {"pw": "s3cret"},
        ("ConfigMap", "settings"): {"interval": "2", "mode": "fast", "bad key": "x"},
    }
    services = [_service("bleater", "postgres", "127.96.0.10", ("", 5432))]
    env = resolve_env(_pod(), container, services, sources, ADDRESSES)
    assert env["PGPASSWORD"] == "s3cret"
    assert env["INTERVAL"] == "2"
    assert env["CFG_mode"] == "fast"
    assert "CFG_bad key" not in env
    assert env["POD"] == "writer-1"
    assert env["NS"] == "bleater"
    assert env["IP"] == "127.10.0.7"
    assert env["APP"] == "writer"
    # PORT is defined after DSN, so the kubelet leaves that reference unexpanded.
    assert env["DSN"] == "postgres://127.96.0.10:$(PORT)/writer-1"
    assert env["EMPTY"] == ""
    assert env["POSTGRES_SERVICE_HOST"] == "127.96.0.10"


def test_container_env_overrides_service_variables() -> None:
    container = {"name": "c", "env": [{"name": "POSTGRES_SERVICE_HOST", "value": "mine"}]}
    services = [_service("bleater", "postgres", "127.96.0.10", ("", 5432))]
    env = resolve_env(_pod(), container, services, {}, ADDRESSES)
    assert env["POSTGRES_SERVICE_HOST"] == "mine"


def test_missing_secret_is_a_config_error_unless_optional() -> None:
    required = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}],
    }
    with pytest.raises(ContainerConfigError, match="nope"):
        resolve_env(_pod(), required, [], {("Secret", "nope"): None}, ADDRESSES)
    optional = {
        "name": "c",
        "env": [
            {
                "name": "X",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
            }
        ],
    }
    assert "X" not in resolve_env(_pod(), optional, [], {("Secret", "nope"): None}, ADDRESSES)


def test_missing_key_is_a_config_error() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "absent"}}}],
    }
    with pytest.raises(ContainerConfigError, match="absent"):
        resolve_env(_pod(), container, [], {("Secret", "s"): {"k": "v"}}, ADDRESSES)


def test_referenced_sources_lists_secrets_and_config_maps() -> None:
    container = {
        "envFrom": [{"secretRef": {"name": "a"}}, {"configMapRef": {"name": "b"}}],
        "env": [
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "c", "key": "k"}}},
            {"name": "Y", "valueFrom": {"configMapKeyRef": {"name": "d", "key": "k"}}},
            {"name": "Z", "value": "plain"},
        ],
    }
    assert referenced_sources(container) == {
        ("Secret", "a"),
        ("ConfigMap", "b"),
        ("Secret", "c"),
        ("ConfigMap", "d"),
    }


def test_decode_secret_data_is_used_for_base64() -> None:
    from localcluster.node.environment import decode_secret_data

    secret = {"data": {"password": base64.b64encode(b"pa$$").decode()}}
    assert decode_secret_data(secret) == {"password": "pa$$"}


def test_resource_field_ref_reports_limits() -> None:
    container = {
        "name": "c",
        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
        "env": [
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    env = resolve_env(_pod(), container, [], {}, ADDRESSES)
    assert env["MEM"] == "64"
    assert env["CPU"] == "1"
