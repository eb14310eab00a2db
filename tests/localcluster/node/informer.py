"""List+watch caches of API collections, fed to the event loop.

One thread per collection lists it, then watches from the list's resourceVersion,
re-listing when the server answers 410 Gone or the connection breaks. The cache itself
is only touched on the event loop's thread, so the rest of the emulator reads it
without locks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

from .kubeapi import JSON, ApiError, KubeClient

log = logging.getLogger(__name__)

# Event types given to listeners; "DELETED" is also synthesised for objects a re-list no
# longer returns.
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"

Listener = Callable[[str, JSON], None]
ObjectKey = tuple[str, str]


class WatchExpired(Exception):
    """The server no longer has the resourceVersion the watch asked for (HTTP 410)."""


def object_key(obj: JSON) -> ObjectKey:
    """(namespace, name) of an object; namespace is "" for cluster-scoped ones."""
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta["name"])


class CacheChanges:
    """Wakes whoever waits for a cache to change (e.g. a pod for its claim to be bound).

    Changes are counted, so a waiter that read the count before its attempt never misses a
    change that happened while it was busy reporting the failure.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def waiting(self) -> int:
        """How many are waiting now."""
        return len(self._waiters)

    def notify(self, _kind: str = "", _obj: object = None) -> None:
        """Count a change and wake every waiter (an informer listener)."""
        self.generation += 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, since: int, timeout: float) -> None:
        """Return once a change after generation `since` happened, or after `timeout` seconds."""
        if self.generation != since:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


class Informer:
    """A cache of one collection kept current by list+watch, with change listeners."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        loop: asyncio.AbstractEventLoop,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.path = path
        self.objects: dict[ObjectKey, JSON] = {}
        self.synced = asyncio.Event()
        self._client = client
        self._loop = loop
        self._listeners: list[Listener] = []
        self._watch_timeout = watch_timeout_seconds
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event_type, obj)` on the event loop for every change."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start listing and watching in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current watch request ends (the thread is a daemon)."""
        self._stopped.set()

    def in_namespace(self, namespace: str) -> Iterator[JSON]:
        """Cached objects of one namespace."""
        return (obj for (ns, _), obj in self.objects.items() if ns == namespace)

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                resource_version = self._list()
                failures = 0
                while not self._stopped.is_set():
                    resource_version = self._watch(resource_version)
            except WatchExpired:
                log.info("watch of %s expired; listing again", self.path)
            except Exception as error:
                # Any other failure: list again after a short pause.
                failures += 1
                delay = min(0.2 * 2**failures, 5.0)
                log.warning("watch of %s failed (%s); listing again in %.1fs", self.path, error, delay)
                self._stopped.wait(delay)

    def _list(self) -> str:
        items: list[JSON] = []
        query: dict[str, str | int | bool] = {"limit": 500}
        while True:
            answer = self._client.request("GET", self.path, query=query)
            items.extend(answer.get("items", []))
            token = answer.get("metadata", {}).get("continue")
            if not token:
                break
            query = {"limit": 500, "continue": token}
        self._post(self._replace_all, items)
        return str(answer["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        try:
            for event in self._client.watch(self.path, resource_version, self._watch_timeout):
                kind = event.get("type")
                obj = event.get("object", {})
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise WatchExpired()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                resource_version = obj["metadata"]["resourceVersion"]
                if kind in (ADDED, MODIFIED, DELETED):
                    self._post(self._apply, kind, obj)
                if self._stopped.is_set():
                    break
        except ApiError as error:
            if error.status == 410:
                raise WatchExpired() from error
            raise
        return resource_version

    def _post(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: the emulator is shutting down.
            self._stopped.set()

    def _replace_all(self, items: list[JSON]) -> None:
        fresh = {object_key(obj): obj for obj in items}
        for key in [key for key in self.objects if key not in fresh]:
            self._apply(DELETED, self.objects[key])
        for obj in items:
            key = object_key(obj)
            previous = self.objects.get(key)
            if previous is None:
                self._apply(ADDED, obj)
            elif previous["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._apply(MODIFIED, obj)
        self.synced.set()

    def _apply(self, kind: str, obj: JSON) -> None:
        key = object_key(obj)
        if kind == DELETED:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        for listener in self._listeners:
            try:
                listener(kind, obj)
            except Exception:
                log.exception("listener of %s failed on %s %s/%s", self.path, kind, *key)
