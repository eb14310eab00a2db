"""The health endpoint of a process that may stand by: served from its own thread for its whole life.

kopf serves its liveness endpoint only once its start-up handlers are done, and only in a
process that runs kopf: a standby (or a leader still starting up after a takeover) would look
dead to the kubelet. This server answers from the first moment with what ``check`` says.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("snapgroup.health")

HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]
"""Healthy or not, and a JSON body saying why."""


class HealthServer:
    """``GET <path>`` at an ``http://host:port/path`` URL: 200 when healthy, else 503."""

    def __init__(self, url: str, check: HealthCheck) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.port is None:
            raise ValueError(f"health endpoint must be http://host:port/path, not {url!r}")
        path = parts.path or "/"

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != path:
                    self.send_error(404)
                    return
                try:
                    healthy, body = check()
                except Exception as exc:  # a failing check is an unhealthy process
                    healthy, body = False, {"error": f"{type(exc).__name__}: {exc}"}
                data = json.dumps(body).encode()
                self.send_response(200 if healthy else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
                log.debug(format, *args)

        self._server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="snapgroup-health",
                                        daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
