"""A small JSON client for the Kubernetes API, built on the `kubernetes` package's kubeconfig loader.

The node emulator works with plain dicts (the API's own JSON) rather than the client library's
models: it reads a few fields of many objects and writes strategic-merge patches, and
dicts keep both cheap. Every call is blocking; the asyncio side runs them in threads
through `KubeClient.call`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.client.rest import RESTClientObject

log = logging.getLogger(__name__)

JSON = dict[str, Any]

STRATEGIC_MERGE = "application/strategic-merge-patch+json"
MERGE_PATCH = "application/merge-patch+json"

# (connect, read) seconds for ordinary requests; watches set their own read timeout.
DEFAULT_TIMEOUT = (5.0, 30.0)


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeClient:
    """Blocking JSON access to one API server, safe to share between threads."""

    def __init__(self, kubeconfig: Path, pool_size: int = 64) -> None:
        configuration = Configuration()
        kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
        )
        configuration.connection_pool_maxsize = pool_size
        self._host = configuration.host.rstrip("/")
        self._pool = RESTClientObject(configuration).pool_manager
        self._headers: dict[str, str] = {"Accept": "application/json"}
        auth = configuration.auth_settings().get("BearerToken")
        if auth is not None:
            self._headers["Authorization"] = str(auth["value"])

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> JSON:
        """Send one request and return the decoded JSON answer; raise `ApiError` on failure."""
        response = self._send(method, path, query, body, content_type, timeout, preload=True)
        data = response.data
        return json.loads(data) if data else {}

    def watch(self, path: str, resource_version: str, timeout_seconds: int) -> Iterator[JSON]:
        """Yield the events of one watch request, starting after `resource_version`."""
        query: dict[str, str | int | bool] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        response = self._send(
            "GET", path, query, None, "application/json", (5.0, timeout_seconds + 30.0), False
        )
        try:
            pending = b""
            for chunk in response.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
            if pending.strip():
                yield json.loads(pending)
        finally:
            response.release_conn()

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> JSON:
        """`request` run in a worker thread, for use from the event loop."""
        return await asyncio.to_thread(
            self.request,
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            timeout=timeout,
        )

    def _send(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | int | bool] | None,
        body: object,
        content_type: str,
        timeout: tuple[float, float],
        preload: bool,
    ) -> urllib3.BaseHTTPResponse:
        url = self._host + path
        if query:
            url += "?" + urlencode({k: _query_value(v) for k, v in query.items()})
        headers = dict(self._headers)
        payload = None
        if body is not None:
            headers["Content-Type"] = content_type
            payload = json.dumps(body).encode()
        response = self._pool.request(
            method,
            url,
            body=payload,
            headers=headers,
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
            preload_content=preload,
            # Connection failures are retried; read failures only for idempotent methods
            # (urllib3's default allowed_methods), never for POST or PATCH.
            retries=urllib3.Retry(total=3, connect=3, read=2, status=0, redirect=0, backoff_factor=0.1),
        )
        if response.status >= 300:
            if not preload:
                response.read()
                response.release_conn()
            raise _api_error(response.status, response.data)
        return response


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _api_error(status: int, data: bytes) -> ApiError:
    try:
        answer = json.loads(data)
        return ApiError(status, str(answer.get("reason", "")), str(answer.get("message", "")))
    except ValueError:
        return ApiError(status, "", data.decode(errors="replace")[:500])


def object_path(
    namespace: str | None, resource: str, name: str | None = None, group_version: str = "v1"
) -> str:
    """The REST path of a collection or object (`core/v1` when `group_version` is `v1`)."""
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = root
    if namespace is not None:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{quote(name, safe='')}"
    return path
