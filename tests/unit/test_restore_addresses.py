"""Pointing a clone's Secrets, ConfigMaps and container environment at the clone's own Services
(`restore_addresses`): exact IPs, DNS names through the source namespace, nothing else."""

from __future__ import annotations

import base64
import copy

import pytest

from snapgroup.orchestration.restore_addresses import (
    Rewrite,
    address_rewrites,
    rewrite_object,
    rewrite_text,
)
from unit.restore_world import IPS, JSON, SOURCE, TLS_DER, b64, bleater, service, unb64

TARGET = "bleater-clone"
CLONE_IPS = {"postgres": "10.96.0.7", "mongodb": "10.96.0.8", "minio": "10.96.0.9"}


def clone_of(source: JSON, ip: str | None) -> JSON:
    """The cloned Service as the API server returns it: the same name, a fresh IP."""
    clone = copy.deepcopy(source)
    clone["metadata"]["namespace"] = TARGET
    if ip is None:
        clone["spec"]["clusterIP"] = "None"
    else:
        clone["spec"]["clusterIP"], clone["spec"]["clusterIPs"] = ip, [ip]
    return clone


def bleater_rewrites() -> list[Rewrite]:
    objects = bleater()
    pairs = [(objects[("Service", SOURCE, name)], clone_of(objects[("Service", SOURCE, name)], ip))
             for name, ip in CLONE_IPS.items()]
    return address_rewrites(pairs, SOURCE, TARGET)


def rewritten(text: str) -> str:
    return rewrite_text(text, bleater_rewrites())[0]


# -- IPs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("127.96.0.10", "10.96.0.7"),
    ("127.96.0.10:5432", "10.96.0.7:5432"),
    ("postgresql://bleater:pw@127.96.0.10:5432/bleater", "postgresql://bleater:pw@10.96.0.7:5432/bleater"),
    ("hosts=127.96.0.10,127.96.0.11", "hosts=10.96.0.7,10.96.0.8"),
    ("127.96.0.100", "127.96.0.100"),  # another address that starts with it
    ("127.96.0.1", "127.96.0.1"),  # another address it starts with
    ("10.127.96.0.10", "10.127.96.0.10"),  # ends with it
    ("127.96.0.10.5", "127.96.0.10.5"),  # not an address at all
    ("host127.96.0.10", "host127.96.0.10"),
    ("127.96.0.12:9000/bleater", "10.96.0.9:9000/bleater"),
])
def test_a_source_service_ip_is_replaced_exactly(text: str, expected: str) -> None:
    assert rewritten(text) == expected


def test_an_ip_that_prefixes_another_services_ip_touches_only_its_own() -> None:
    objects = bleater()
    short = service("gateway", ip="127.96.0.1", port=80, selector={"app": "gateway"})
    pg = objects[("Service", SOURCE, "postgres")]
    rewrites = address_rewrites([(short, clone_of(short, "10.96.0.21")), (pg, clone_of(pg, "10.96.0.7"))],
                                SOURCE, TARGET)
    text, what = rewrite_text("a=127.96.0.1 b=127.96.0.10 c=127.96.0.100", rewrites)
    assert text == "a=10.96.0.21 b=10.96.0.7 c=127.96.0.100"
    assert sorted(what) == ["gateway's IP", "postgres's IP"]


def test_a_headless_service_has_no_ip_to_rewrite_but_its_names_are() -> None:
    headless = service("postgres", port=5432, selector={"app": "postgres"})
    headless["spec"]["clusterIP"] = "None"
    rewrites = address_rewrites([(headless, clone_of(headless, None))], SOURCE, TARGET)
    assert [r.what for r in rewrites] == ["postgres's DNS name"]
    text, _ = rewrite_text("pod-0.postgres.bleater.svc None", rewrites)
    assert text == "pod-0.postgres.bleater-clone.svc None"


# -- DNS names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("postgres.bleater", "postgres.bleater-clone"),
    ("postgres.bleater.svc", "postgres.bleater-clone.svc"),
    ("postgres.bleater.svc.cluster.local:5432", "postgres.bleater-clone.svc.cluster.local:5432"),
    ("postgres.bleater.svc.cluster.local.", "postgres.bleater-clone.svc.cluster.local."),
    ("pod-0.postgres.bleater.svc", "pod-0.postgres.bleater-clone.svc"),
    ("postgresql://bleater@postgres.bleater.svc:5432/bleater?sslmode=disable",
     "postgresql://bleater@postgres.bleater-clone.svc:5432/bleater?sslmode=disable"),
    ("mongodb://u:p@mongodb.bleater:27017/?authSource=admin",
     "mongodb://u:p@mongodb.bleater-clone:27017/?authSource=admin"),
    ("http://minio.bleater.svc:9000/bleater", "http://minio.bleater-clone.svc:9000/bleater"),
    ("postgres", "postgres"),  # a short name resolves in the clone's own namespace
    ("postgres:5432", "postgres:5432"),
    ("postgres.bleater2.svc", "postgres.bleater2.svc"),  # another namespace
    ("postgres.bleater-clone.svc", "postgres.bleater-clone.svc"),  # already the clone's
    ("my-postgres.bleater.svc", "my-postgres.bleater.svc"),  # another Service
    ("postgres.bleater.example.com", "postgres.bleater.example.com"),  # not a cluster name
    ("postgresql.bleater.svc", "postgresql.bleater.svc"),
])
def test_dns_names_through_the_source_namespace_point_at_the_target(text: str, expected: str) -> None:
    assert rewritten(text) == expected


def test_rewriting_twice_changes_nothing_more() -> None:
    once = rewritten("postgres.bleater.svc 127.96.0.10 pod-1.mongodb.bleater")
    assert rewritten(once) == once == "postgres.bleater-clone.svc 10.96.0.7 pod-1.mongodb.bleater-clone"


def test_rewrite_text_says_what_it_replaced() -> None:
    text, what = rewrite_text("postgres.bleater.svc and 127.96.0.11", bleater_rewrites())
    assert text == "postgres.bleater-clone.svc and 10.96.0.8"
    assert sorted(what) == ["mongodb's IP", "postgres's DNS name"]
    assert rewrite_text("nothing here", bleater_rewrites()) == ("nothing here", [])


# -- objects -----------------------------------------------------------------------------------


def test_secret_values_are_rewritten_and_binary_values_left_alone() -> None:
    objects = bleater()
    credentials = copy.deepcopy(objects[("Secret", SOURCE, "postgres-credentials")])
    changed = rewrite_object(credentials, bleater_rewrites())
    assert changed == ["postgres's IP"]
    assert unb64(credentials["data"]["host"]) == "10.96.0.7"
    assert unb64(credentials["data"]["password"]) == "bleater-pg-sample"
    tls = copy.deepcopy(objects[("Secret", SOURCE, "minio-tls")])
    before = copy.deepcopy(tls["data"])
    assert IPS["minio"].encode() in TLS_DER  # the bytes spell the address, yet it is no text
    assert rewrite_object(tls, bleater_rewrites()) == []
    assert tls["data"] == before
    assert base64.b64decode(tls["data"]["private.der"]) == TLS_DER


def test_a_mongodb_uri_in_a_secret_points_at_the_clone() -> None:
    body = copy.deepcopy(bleater()[("Secret", SOURCE, "mongodb-credentials")])
    rewrite_object(body, bleater_rewrites())
    assert unb64(body["data"]["uri"]) == "mongodb://bleater:bleater-mongo-sample@10.96.0.8:27017/?authSource=admin"


def test_config_map_values_are_rewritten_and_binary_data_left_alone() -> None:
    body = copy.deepcopy(bleater()[("ConfigMap", SOURCE, "bleater-endpoints")])
    body["binaryData"] = {"blob": b64("postgres.bleater.svc")}
    changed = rewrite_object(body, bleater_rewrites())
    assert body["data"] == {
        "DATABASE_URL": "postgresql://bleater@postgres.bleater-clone.svc.cluster.local:5432/bleater",
        "MONGODB_HOST": "mongodb.bleater-clone.svc", "PLAIN_HOST": "postgres"}
    assert body["binaryData"] == {"blob": b64("postgres.bleater.svc")}
    assert changed == ["mongodb's DNS name", "postgres's DNS name"]


def test_container_env_literals_and_args_are_rewritten_references_are_not() -> None:
    body = copy.deepcopy(bleater()[("Deployment", SOURCE, "data-writer")])
    pod = body["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "wait", "image": "busybox",
                              "command": ["nc", "-z", "127.96.0.10", "5432"],
                              "env": [{"name": "TARGET", "value": "minio.bleater.svc"}]}]
    references = [e for e in pod["containers"][0]["env"] if "valueFrom" in e]
    before = copy.deepcopy(references)
    changed = rewrite_object(body, bleater_rewrites())
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["S3_ENDPOINT"] == "minio.bleater-clone.svc:9000"
    assert env["PG_FALLBACK"] == "postgresql://10.96.0.7:5432/bleater"
    assert env["PGHOST"] == "$(POSTGRES_SERVICE_HOST)"  # the kubelet's, already the clone's
    assert references == before
    assert pod["initContainers"][0]["command"] == ["nc", "-z", "10.96.0.7", "5432"]
    assert pod["initContainers"][0]["env"] == [{"name": "TARGET", "value": "minio.bleater-clone.svc"}]
    assert pod["containers"][0]["envFrom"] == [{"configMapRef": {"name": "bleater-endpoints"}}]
    assert changed == ["minio's DNS name", "postgres's IP"]
