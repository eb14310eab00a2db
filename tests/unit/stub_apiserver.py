"""A stand-in for kube-apiserver, on loopback over plain HTTP, answering from a script.

It is a fake, and named as such: the unit tests use it to make the API fail exactly the way a
restarting or overloaded server does (503s, dropped connections, watches that hang), which the
real API server in tests/localcluster cannot be made to do on cue. Leases are kept for real
(get, create, merge patch with the resourceVersion as a precondition), enough for leader
election.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client

DROP = "drop"
"""An answer: close the connection without a response."""

Answer = tuple[int, dict[str, Any]] | str | None
"""(status, JSON body), DROP, or None for the default answer."""


def api_client(port: int) -> client.ApiClient:
    """A client of the official library for a server on a loopback port (listening or not)."""
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{port}"
    return client.ApiClient(configuration)


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]
    open_watches: int
    """Watches open when it arrived."""
    at: float = field(default_factory=time.monotonic)

    @property
    def watch(self) -> bool:
        return self.query.get("watch") == ["true"]


class StubApiServer:
    """``script(request)`` decides each answer; None falls back to the defaults: watches hang
    until released, Leases are stored, anything else is 404."""

    def __init__(self, port: int = 0) -> None:
        self.script: Callable[[Request], Answer] = lambda request: None
        self.requests: list[Request] = []
        self.open_watches = 0
        self.leases: dict[str, dict[str, Any]] = {}
        self.lease_history: list[tuple[float, str | None]] = []
        """(when, holderIdentity) after every successful Lease write."""
        self.release_watches = threading.Event()
        self._lock = threading.Lock()
        self._version = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def api_client(self) -> client.ApiClient:
        """A client of the official library pointed at this server."""
        return api_client(self.port)

    def count(self, method: str, *, watch: bool = False) -> int:
        return sum(1 for r in list(self.requests) if r.method == method and r.watch == watch)

    def close(self) -> None:
        self.release_watches.set()
        self._server.shutdown()
        self._server.server_close()

    # -- the server side ---------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                with stub._lock:
                    request = Request(self.command, parts.path, parse_qs(parts.query),
                                      json.loads(raw) if raw else {}, stub.open_watches)
                    stub.requests.append(request)
                answer = stub.script(request)
                if answer == DROP:
                    self.close_connection = True
                    self.connection.close()
                    return
                if answer is None and request.watch:
                    self._hang()
                    return
                status, body = answer if isinstance(answer, tuple) else stub._default(request)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _hang(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.flush()
                with stub._lock:
                    stub.open_watches += 1
                try:
                    stub.release_watches.wait()
                finally:
                    with stub._lock:
                        stub.open_watches -= 1

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PATCH(self) -> None:
                self._serve()

            def do_DELETE(self) -> None:
                self._serve()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _default(self, request: Request) -> tuple[int, dict[str, Any]]:
        if "/leases/" in request.path or request.path.endswith("/leases"):
            with self._lock:
                return self._lease(request)
        return 404, {"kind": "Status", "code": 404, "message": f"{request.path} not found"}

    def _lease(self, request: Request) -> tuple[int, dict[str, Any]]:
        if request.method == "POST":
            name = request.body["metadata"]["name"]
            if name in self.leases:
                return 409, {"kind": "Status", "code": 409, "message": "already exists"}
            return 201, self._store(name, request.body)
        name = request.path.rsplit("/", 1)[1]
        lease = self.leases.get(name)
        if lease is None:
            return 404, {"kind": "Status", "code": 404, "message": "not found"}
        if request.method == "GET":
            return 200, lease
        if request.method == "PATCH":
            wanted = (request.body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != lease["metadata"]["resourceVersion"]:
                return 409, {"kind": "Status", "code": 409, "message": "the object has been modified"}
            spec = {**lease.get("spec", {}), **request.body.get("spec", {})}
            spec = {k: v for k, v in spec.items() if v is not None}
            return 200, self._store(name, {"metadata": lease["metadata"], "spec": spec})
        return 405, {"kind": "Status", "code": 405}

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = {"metadata": {**body["metadata"], "name": name, "resourceVersion": str(self._version)},
                  "spec": dict(body.get("spec") or {})}
        self.leases[name] = stored
        self.lease_history.append((time.monotonic(), stored["spec"].get("holderIdentity")))
        return stored
