"""Generated specs on the real API server: the CRDs' schemas and the pydantic models accept and
reject the same specs, and every rejection names its field.

Server-side dry-run creates with strict field validation (unknown fields are errors, as the
models' extra=forbid makes them), so nothing is stored and no operator sees them. Bounded: one
module, 150 examples per kind, a few seconds of API calls each. Then a handful of odd but valid
groups go through the operator's real plan against the API server: nothing crashes.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from e2e.operator_process import REPO
from fuzz.specs import group_spec, schedule_spec
from snapgroup.adapters.connectors import DatabaseConnectors
from snapgroup.adapters.kube import KubeCluster, load_api_client
from snapgroup.api import GROUP, VERSION
from snapgroup.api.schedule import ScheduledSnapshotGroupSpec
from snapgroup.api.snapshotgroup import SnapshotGroupSpec
from snapgroup.hooks.builtin import BUILTIN_HOOK_TYPES
from snapgroup.hooks.registry import HookContext
from snapgroup.orchestration.plan import make_plan

pytestmark = pytest.mark.cluster
assert BUILTIN_HOOK_TYPES

ON_CLUSTER = settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KINDS = {"SnapshotGroup": ("snapshotgroups", SnapshotGroupSpec),
         "ScheduledSnapshotGroup": ("scheduledsnapshotgroups", ScheduledSnapshotGroupSpec)}
FIELD = re.compile(r"\bspec(\.|\[|:)")


@pytest.fixture(scope="module")
def api(local_cluster: Any) -> Iterator[client.ApiClient]:
    local_cluster.apply_crds(REPO / "crds")
    api_client = load_api_client(str(local_cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"fuzz-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def server_verdict(api: client.ApiClient, namespace: str, kind: str, spec: dict[str, Any]) -> str | None:
    """None when the API server would store the object, else its message."""
    plural, _ = KINDS[kind]
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
            "metadata": {"name": f"f-{uuid.uuid4().hex[:8]}", "namespace": namespace}, "spec": spec}
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, body, dry_run="All", field_validation="Strict")
    except ApiException as exc:
        assert exc.status in (400, 422), (exc.status, exc.body)
        return str(exc.body)
    return None


def model_verdict(kind: str, spec: dict[str, Any]) -> str | None:
    _, model = KINDS[kind]
    try:
        model.model_validate(spec)
    except ValidationError as exc:
        assert all(e["loc"] for e in exc.errors()), exc.errors()
        return str(exc)
    return None


def agree(api: client.ApiClient, namespace: str, kind: str, spec: dict[str, Any]) -> None:
    server = server_verdict(api, namespace, kind, spec)
    model = model_verdict(kind, spec)
    assert (server is None) == (model is None), (
        f"{kind} spec {spec}: API server {'accepts' if server is None else 'refuses: ' + server}; "
        f"model {'accepts' if model is None else 'refuses: ' + model}")
    if server is not None:
        assert FIELD.search(server), f"the API server's refusal names no field: {server}"


@ON_CLUSTER
@given(spec=group_spec())
def test_snapshot_group_schema_and_model_agree(api: client.ApiClient, namespace: str,
                                               spec: dict[str, Any]) -> None:
    agree(api, namespace, "SnapshotGroup", spec)


@ON_CLUSTER
@given(spec=schedule_spec())
def test_schedule_schema_and_model_agree(api: client.ApiClient, namespace: str,
                                         spec: dict[str, Any]) -> None:
    agree(api, namespace, "ScheduledSnapshotGroup", spec)


ODD_SELECTORS: list[dict[str, Any]] = [
    {},                                                            # matches nothing
    {"matchExpressions": [{"key": "app", "operator": "Exists"}]},  # matches everything labelled
    {"matchLabels": {"ключ": "значение"}},                          # not a valid label at all
    {"matchLabels": {"a" * 63: "b" * 63}},
    {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ü", "x y"]}]},
]


@pytest.mark.parametrize("selector", ODD_SELECTORS)
def test_planning_odd_selectors_and_names_against_the_api_server_never_crashes(
    local_cluster: Any, namespace: str, selector: dict[str, Any]
) -> None:
    spec = SnapshotGroupSpec.model_validate({
        "writers": [{"kind": "StatefulSet", "selector": selector}, {"name": "w" * 253}],
        "services": [{"name": "s" * 63, "type": "minio", "pvcSelector": selector,
                      "connection": {"secretRef": {"name": "x" * 253}}}],
    })

    async def plan() -> list[tuple[str, str]]:
        cluster = KubeCluster(load_api_client(str(local_cluster.kubeconfig)))
        try:
            ctx = HookContext(namespace=namespace, group="g" * 63, group_uid="uid", cluster=cluster,
                              connectors=DatabaseConnectors())
            made = await make_plan(ctx, spec)
            await made.release()
            return [(p.reason, p.field_path) for p in made.problems]
        finally:
            cluster.close()

    problems = asyncio.run(plan())
    assert problems and all(field.startswith("spec.") for _, field in problems), problems
    assert ("SecretNotFound", "spec.services[0].connection.secretRef.name") in problems


SAMPLE_SPEC: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "samples" / "bleater-snapshotgroup.yaml")
                                             .read_text())["spec"]
ONE_FIELD_WRONG: list[tuple[tuple[str | int, ...], Any]] = [
    (("freezeBudget",), "abc"),
    (("verifyTimeout",), "1d"),
    (("verify",), "Sometimes"),
    (("backoffLimit",), 11),
    (("volumeSnapshotClassName",), "UPPER case"),
    (("services", 0, "name"), "Upper"),
    (("services", 1, "connection", "timeout"), "-1s"),
    (("services", 2, "lastRecord", "maxObjects"), 0),
    (("writers", 0, "kind"), "DaemonSet"),
]


def spelled(path: tuple[str | int, ...]) -> str:
    """A path as the API server spells it: spec.services[0].name."""
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


@pytest.mark.parametrize(("path", "value"), ONE_FIELD_WRONG, ids=[spelled(p) for p, _ in ONE_FIELD_WRONG])
def test_one_wrong_field_is_the_field_both_the_api_server_and_the_model_name(
    api: client.ApiClient, namespace: str, path: tuple[str | int, ...], value: Any,
) -> None:
    spec = copy.deepcopy(SAMPLE_SPEC)
    where: Any = spec
    for part in path[:-1]:
        where = where[part]
    where[path[-1]] = value
    server = server_verdict(api, namespace, "SnapshotGroup", spec)
    assert server is not None and spelled(path) in server, server
    with pytest.raises(ValidationError) as caught:
        SnapshotGroupSpec.model_validate(spec)
    assert [tuple(e["loc"]) for e in caught.value.errors()] == [path], caught.value.errors()
