"""Container environment, computed the way the kubelet does it.

Order and precedence follow the kubelet: Service link variables first (lowest), then
`envFrom` sources, then `env` entries in order; `$(VAR)` in an `env` value expands to an
earlier entry or a Service variable, `$$` escapes a `$`, and unknown references stay as
written. Secrets and ConfigMaps are fetched by the caller (see `referenced_sources`) so
that this module stays free of I/O.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

# ("Secret" | "ConfigMap", name) -> the object's data (decoded), or None if it does not exist.
SourceKey = tuple[str, str]
Sources = Mapping[SourceKey, Mapping[str, str] | None]

# The kubelet always adds the API server's Service from this namespace.
MASTER_SERVICE_NAMESPACE = "default"
MASTER_SERVICE_NAME = "kubernetes"

_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ContainerConfigError(Exception):
    """The environment cannot be built (a missing Secret, key or field); the kubelet reports
    this as `CreateContainerConfigError` and retries."""


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    """Expand `$(NAME)` references like the kubelet (k8s.io/kubernetes third_party expansion).

    `mapping` returns None for an unknown name; the reference is then kept verbatim.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            read, is_var, advance = _read_variable_name(text[cursor + 1 :])
            if is_var:
                value = mapping(read)
                out.append(f"$({read})" if value is None else value)
            else:
                out.append(read)
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)


def _read_variable_name(rest: str) -> tuple[str, bool, int]:
    if rest[0] == "$":
        return "$", False, 1
    if rest[0] == "(":
        closer = rest.find(")", 1)
        if closer != -1:
            return rest[1:closer], True, closer + 1
        return "$(", False, 1
    return "$" + rest[0], False, 1


def service_env_vars(services: Iterable[JSON], namespace: str, enable_service_links: bool) -> dict[str, str]:
    """The `{SVC}_SERVICE_HOST`/`_PORT` and Docker-link variables for a pod in `namespace`."""
    chosen: dict[str, JSON] = {}
    for service in services:
        meta = service.get("metadata", {})
        if not _has_cluster_ip(service):
            continue
        name = meta.get("name", "")
        if meta.get("namespace") == MASTER_SERVICE_NAMESPACE and name == MASTER_SERVICE_NAME:
            chosen.setdefault(name, service)
        elif meta.get("namespace") == namespace and enable_service_links:
            chosen[name] = service
    env: dict[str, str] = {}
    for name in sorted(chosen):
        env.update(_variables_of(chosen[name]))
    return env


def _has_cluster_ip(service: JSON) -> bool:
    ip = service.get("spec", {}).get("clusterIP", "")
    return bool(ip) and ip != "None"


def _variable_prefix(name: str) -> str:
    return name.upper().replace("-", "_")


def _variables_of(service: JSON) -> dict[str, str]:
    prefix = _variable_prefix(service["metadata"]["name"])
    spec = service.get("spec", {})
    host = spec["clusterIP"]
    ports = spec.get("ports") or []
    env = {f"{prefix}_SERVICE_HOST": host}
    if ports:
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
    for port in ports:
        if port.get("name"):
            env[f"{prefix}_SERVICE_PORT_{_variable_prefix(port['name'])}"] = str(port["port"])
    for index, port in enumerate(ports):
        protocol = str(port.get("protocol", "TCP"))
        url = f"{protocol.lower()}://{host}:{port['port']}"
        if index == 0:
            env[f"{prefix}_PORT"] = url
        link = f"{prefix}_PORT_{port['port']}_{protocol.upper()}"
        env[link] = url
        env[f"{link}_PROTO"] = protocol.lower()
        env[f"{link}_PORT"] = str(port["port"])
        env[f"{link}_ADDR"] = host
    return env


def referenced_sources(container: JSON) -> set[SourceKey]:
    """The Secrets and ConfigMaps a container's `env`/`envFrom` read."""
    found: set[SourceKey] = set()
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            found.add(("Secret", source["secretRef"]["name"]))
        if "configMapRef" in source:
            found.add(("ConfigMap", source["configMapRef"]["name"]))
    for var in container.get("env") or []:
        value_from = var.get("valueFrom") or {}
        if "secretKeyRef" in value_from:
            found.add(("Secret", value_from["secretKeyRef"]["name"]))
        if "configMapKeyRef" in value_from:
            found.add(("ConfigMap", value_from["configMapKeyRef"]["name"]))
    return found


def decode_secret_data(secret: JSON) -> dict[str, str]:
    """A Secret's `data` (base64) merged with `stringData`, as text."""
    data = {
        key: base64.b64decode(value).decode(errors="replace")
        for key, value in (secret.get("data") or {}).items()
    }
    data.update(secret.get("stringData") or {})
    return data


def secret_files(secret: JSON) -> dict[str, bytes]:
    """A Secret's keys as the bytes a secret volume's files hold (binary data stays binary)."""
    files = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    files.update({key: value.encode() for key, value in (secret.get("stringData") or {}).items()})
    return files


def config_map_data(config_map: JSON) -> dict[str, str]:
    """A ConfigMap's text data (binaryData is decoded as text too)."""
    data = {
        key: base64.b64decode(value).decode(errors="replace")
        for key, value in (config_map.get("binaryData") or {}).items()
    }
    data.update(config_map.get("data") or {})
    return data


@dataclass(frozen=True)
class PodAddresses:
    """Addresses the downward API exposes."""

    pod_ip: str
    host_ip: str


def resolve_env(
    pod: JSON,
    container: JSON,
    services: Iterable[JSON],
    sources: Sources,
    addresses: PodAddresses,
) -> dict[str, str]:
    """The environment a container starts with, in the kubelet's order of precedence."""
    namespace = pod["metadata"]["namespace"]
    spec = pod.get("spec", {})
    service_env = service_env_vars(services, namespace, bool(spec.get("enableServiceLinks", True)))
    env: dict[str, str] = {}

    def mapping(name: str) -> str | None:
        if name in env:
            return env[name]
        return service_env.get(name)

    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            ref = source["secretRef"]
            data = _source(sources, "Secret", ref)
        else:
            ref = source.get("configMapRef", {})
            data = _source(sources, "ConfigMap", ref)
        for key, value in (data or {}).items():
            name = prefix + key
            if _ENV_NAME.match(name):
                env[name] = value

    for var in container.get("env") or []:
        name = var["name"]
        value_from = var.get("valueFrom")
        if var.get("value"):
            env[name] = expand(var["value"], mapping)
        elif value_from:
            resolved = _value_from(pod, container, value_from, sources, addresses)
            if resolved is None:
                # An optional reference to something missing: the variable is not set.
                continue
            env[name] = resolved
        else:
            env[name] = ""

    return {**service_env, **env}


def _source(sources: Sources, kind: str, ref: Mapping[str, Any]) -> Mapping[str, str] | None:
    data = sources.get((kind, ref["name"]))
    if data is None and not ref.get("optional", False):
        raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    return data


def _value_from(
    pod: JSON,
    container: JSON,
    value_from: Mapping[str, Any],
    sources: Sources,
    addresses: PodAddresses,
) -> str | None:
    for kind, field in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
        if field in value_from:
            ref = value_from[field]
            optional = bool(ref.get("optional", False))
            data = sources.get((kind, ref["name"]))
            if data is None:
                if optional:
                    return None
                raise ContainerConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            if ref["key"] not in data:
                if optional:
                    return None
                raise ContainerConfigError(
                    f"couldn't find key {ref['key']} in {kind} {pod['metadata']['namespace']}/{ref['name']}"
                )
            return data[ref["key"]]
    if "fieldRef" in value_from:
        return field_value(pod, value_from["fieldRef"]["fieldPath"], addresses)
    if "resourceFieldRef" in value_from:
        return _resource_value(container, value_from["resourceFieldRef"])
    raise ContainerConfigError(f"unsupported valueFrom {sorted(value_from)}")


_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: JSON, path: str, addresses: PodAddresses) -> str:
    """The value of a downward-API `fieldRef.fieldPath`."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": addresses.pod_ip,
        "status.podIPs": addresses.pod_ip,
        "status.hostIP": addresses.host_ip,
        "status.hostIPs": addresses.host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = _LABEL_PATH.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(items.items()))
    raise ContainerConfigError(f"unsupported fieldRef {path}")


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def _resource_value(container: JSON, ref: Mapping[str, Any]) -> str:
    # The kubelet reports the limit, or the node's allocatable when none is set; the node
    # emulator does not enforce limits, so an unset limit reads as "0".
    resource = str(ref.get("resource", ""))
    section, _, name = resource.partition(".")
    quantity = ((container.get("resources") or {}).get(section) or {}).get(name)
    if quantity is None:
        return "0"
    match = _QUANTITY.match(str(quantity))
    if not match or match.group(2) not in _SUFFIXES:
        return str(quantity)
    amount = float(match.group(1)) * _SUFFIXES[match.group(2)]
    divisor = str(ref.get("divisor", "1"))
    divisor_match = _QUANTITY.match(divisor)
    scale = 1.0
    if divisor_match and divisor_match.group(2) in _SUFFIXES:
        scale = float(divisor_match.group(1)) * _SUFFIXES[divisor_match.group(2)]
    return str(math.ceil(amount / scale))
