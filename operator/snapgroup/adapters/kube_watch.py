"""A Kubernetes watch request read by a worker thread and consumed by a coroutine.

The official client is synchronous: a watch blocks its thread on a socket read. `WatchStream`
runs that read in an executor thread and hands every event to the event loop through a queue.
Stopping it (on cancellation, timeout or when the caller has what it wanted) shuts the socket
down, so the thread ends at once instead of lingering until the server closes the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from types import TracebackType
from typing import Any

from kubernetes.client.exceptions import ApiException

WatchEvent = dict[str, Any]
"""One event as the API server sends it: ``{"type": "ADDED", "object": {...}}``."""

_Item = WatchEvent | BaseException | None


class WatchStream:
    """One watch request; use as ``async with WatchStream(open_request, executor) as stream``.

    ``open_request`` performs the HTTP request (``watch=True``, ``_preload_content=False``) and
    returns the raw urllib3 response; it is called in the worker thread.
    """

    def __init__(self, open_request: Callable[[], Any], executor: Executor) -> None:
        self._open_request = open_request
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._lock = threading.Lock()
        self._stopped = False
        self._response: Any = None

    async def __aenter__(self) -> WatchStream:
        future = self._loop.run_in_executor(self._executor, self._pump)
        # The outcome travels through the queue; retrieve it here so it is never reported
        # as an exception nobody looked at.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def next_event(self) -> WatchEvent | None:
        """The next event; None when the server ended the watch (its timeout ran out).

        Raises ApiException for an error status, e.g. 410 Gone when the resource version the
        watch started from has been compacted away.
        """
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        """End the watch and free its thread; safe to call more than once, from the loop."""
        with self._lock:
            self._stopped = True
            response = self._response
        if response is not None:
            _shutdown_socket(response)

    def _pump(self) -> None:
        """Worker thread: read events until the watch ends or is stopped."""
        try:
            response = self._open_request()
        except BaseException as exc:  # delivered to the coroutine, which re-raises it
            self._deliver(exc)
            return
        with self._lock:
            if self._stopped:
                _release(response)
                return
            self._response = response
        try:
            for line in _lines(response):
                if self._stopped:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    self._deliver(
                        ApiException(status=status.get("code"), reason=status.get("message"))
                    )
                    return
                self._deliver(event)
            self._deliver(None)
        except BaseException as exc:
            if not self._stopped:  # a stopped stream fails its read on purpose
                self._deliver(exc)
        finally:
            _release(response)

    def _deliver(self, item: _Item) -> None:
        # A closed loop raises RuntimeError: nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


def _lines(response: Any) -> Iterator[str]:
    """Split the chunked watch body into its newline-delimited JSON documents."""
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=False):
        buffer.extend(chunk)
        while (end := buffer.find(b"\n")) != -1:
            line = buffer[:end].decode("utf-8", errors="replace").strip()
            del buffer[: end + 1]
            if line:
                yield line
    tail = buffer.decode("utf-8", errors="replace").strip()
    if tail:
        yield tail


def _shutdown_socket(response: Any) -> None:
    # Shutting the socket down (not closing it) wakes the blocked reader without racing it for
    # the connection object; the reader then closes the response itself.
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _release(response: Any) -> None:
    # A failing close leaves nothing to do: the connection is dropped from the pool either way.
    with contextlib.suppress(Exception):
        response.close()
        response.release_conn()
