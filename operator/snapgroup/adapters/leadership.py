"""Leader election over a coordination.k8s.io Lease, with client-go's leaderelection semantics.

Only the process holding the Lease runs groups and schedules. `LeaderElection.acquire` blocks
until this process holds the Lease; a thread then renews it every `retry_period`. A leader that
has not renewed for `renew_deadline` exits the process at once (client-go's OnStoppedLeading ->
exit): `renew_deadline` is shorter than the lease duration, so it stops acting before any standby
may take over, and whatever it left mid-window the next leader recovers from the journal. A
clean stop gives the Lease up, so a standby takes over at its next try instead of waiting for
the Lease to expire.

A standby judges expiry on its own clock, from the moment it last saw the Lease change (as
client-go does): clocks of different nodes need not agree. The Lease's own client and thread
keep renewals from ever queueing behind the operator's requests and watches.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from snapgroup import metrics

from .kube import _micro_time

log = logging.getLogger("snapgroup.leadership")

LEADER_LEASE = "snapgroup-leader"
"""The leader Lease's default name, in the operator's namespace."""
LEASE_DURATION = 15.0
"""How long a standby waits, after it last saw the Lease renewed, before taking it over."""
RENEW_DEADLINE = 10.0
"""How long a leader keeps acting without a successful renewal before it exits."""
RETRY_PERIOD = 2.0
"""Between two renewals by the leader, and two tries by a standby."""
EXIT_LOST_LEADERSHIP = 3
"""The exit status of a leader that lost its Lease (the pod restarts and stands by)."""

_JITTER = 1.2  # a standby's tries spread over retry_period * (1 .. 1.2), like client-go's
_MERGE_PATCH = "application/merge-patch+json"
_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    """The pod's name (HOSTNAME in a pod) and a random suffix: a restarted pod is a new holder."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host[:100]}_{uuid.uuid4().hex[:10]}"


def default_namespace() -> str | None:
    """The namespace of the pod's ServiceAccount, or None outside a pod."""
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE) as file:
            return file.read().strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class Timing:
    """Lease duration > renew deadline > retry period, as client-go requires."""

    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period * _JITTER > 0:
            raise ValueError(f"need lease duration > renew deadline > retry period: {self}")


class LeaderElection:
    """One process's candidacy for the leader Lease ``namespace/name``.

    ``on_lost`` runs when leadership is lost; the default exits the process at once.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        timing: Timing = Timing(),
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.timing = timing
        self._api = client.CoordinationV1Api(api_client)
        self._on_lost = on_lost or _exit_at_once
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) as last seen
        self._observed_at = 0.0  # monotonic time it was first seen
        self._resource_version = ""
        self._renewed_at = 0.0  # monotonic start of the last successful renewal
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._last_try = time.monotonic()
        self.holder: str | None = None
        """The holder as last seen (this process's identity while it leads)."""

    @property
    def leading(self) -> bool:
        """True while this process holds the Lease and renews it."""
        return self.holder == self.identity and not self._stop.is_set()

    def alive(self) -> bool:
        """For the liveness probe: the election (standby tries or leader renewals) is running."""
        slack = self.timing.renew_deadline + self.timing.retry_period * _JITTER
        return time.monotonic() - self._last_try < slack

    def acquire(self) -> None:
        """Block until this process holds the Lease, then keep renewing it in a thread."""
        log.info("leader election: %s is a candidate for Lease %s/%s",
                 self.identity, self.namespace, self.name)
        reported: str | None = None
        while not self._try_acquire_or_renew(self.timing.retry_period * 2):
            if self.holder != reported and self.holder is not None:
                log.info("leader election: standing by; %s holds the Lease", self.holder)
                reported = self.holder
            time.sleep(self.timing.retry_period * random.uniform(1.0, _JITTER))
        log.warning("leader election: %s now leads (Lease %s/%s)", self.identity, self.namespace,
                    self.name)
        metrics.LEADER.set(1)
        self._renewer = threading.Thread(target=self._renew_loop, name="snapgroup-leader-renewal",
                                         daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stop renewing and give the Lease up, so a standby takes over at once."""
        was_leading = self.leading
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(self.timing.retry_period * 2 + 1)
        metrics.LEADER.set(0)
        if not was_leading:
            return
        # client-go's ReleaseOnCancel: no holder, a one-second duration; the resourceVersion
        # of the last renewal makes it a no-op if someone else took the Lease meanwhile.
        patch = {
            "metadata": {"resourceVersion": self._resource_version},
            "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                     "renewTime": _micro_time(datetime.now(UTC))},
        }
        try:
            self._request(self._api.patch_namespaced_lease, self.name, self.namespace, patch,
                          timeout=self.timing.retry_period * 2, _content_type=_MERGE_PATCH)
            log.warning("leader election: %s gave the Lease up", self.identity)
        except Exception as exc:  # it expires on its own
            log.warning("leader election: could not give the Lease up (%s); it expires in %gs",
                        _describe(exc), self.timing.lease_duration)

    # -- the loop ------------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.timing.retry_period):
            remaining = self.timing.renew_deadline - (time.monotonic() - self._renewed_at)
            # Each try ends by the deadline, so a hung request cannot stretch it.
            if remaining > 0 and self._try_acquire_or_renew(min(remaining, self.timing.retry_period * 2)):
                continue
            if self._stop.is_set():
                return
            if self.holder not in (None, self.identity):
                reason = f"{self.holder} took the Lease over"
            elif time.monotonic() - self._renewed_at < self.timing.renew_deadline:
                continue  # a failed try with time left: the next one may succeed
            else:
                reason = f"no successful renewal for {self.timing.renew_deadline:g}s"
            self._stop.set()
            metrics.LEADER.set(0)
            self._on_lost(reason)
            return

    def _try_acquire_or_renew(self, timeout: float) -> bool:
        """One try: True when this process holds the Lease afterwards."""
        started = time.monotonic()
        self._last_try = started
        try:
            lease = self._get(timeout)
            if lease is None:
                self._create(timeout)
            else:
                spec = lease.get("spec") or {}
                holder = str(spec.get("holderIdentity") or "")
                seen = (holder, str(spec.get("renewTime") or ""))
                if seen != self._observed:
                    self._observed, self._observed_at = seen, started
                self.holder = holder or None
                duration = float(spec.get("leaseDurationSeconds") or self.timing.lease_duration)
                if holder and holder != self.identity and started < self._observed_at + duration:
                    return False
                self._take(lease, timeout)
        except ApiException as exc:
            if exc.status != 409:  # 409: someone else wrote first; they hold it
                log.warning("leader election: try failed: %s", _describe(exc))
            return False
        except Exception as exc:  # no answer: the API server is down or slow
            log.warning("leader election: try failed: %s", _describe(exc))
            return False
        self.holder = self.identity
        self._renewed_at = started
        return True

    def _get(self, timeout: float) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self._request(
                self._api.read_namespaced_lease, self.name, self.namespace, timeout=timeout
            )
            return lease
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _create(self, timeout: float) -> None:
        now = _micro_time(datetime.now(UTC))
        body = {
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"holderIdentity": self.identity,
                     "leaseDurationSeconds": round(self.timing.lease_duration),
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        }
        created = self._request(self._api.create_namespaced_lease, self.namespace, body,
                                timeout=timeout)
        self._resource_version = created["metadata"]["resourceVersion"]

    def _take(self, lease: dict[str, Any], timeout: float) -> None:
        """Renew our Lease, or take over a free or expired one; the resourceVersion read is a
        precondition, so of two standbys only one wins."""
        spec = lease.get("spec") or {}
        now = _micro_time(datetime.now(UTC))
        new_spec: dict[str, Any] = {"holderIdentity": self.identity,
                                    "leaseDurationSeconds": round(self.timing.lease_duration),
                                    "renewTime": now}
        if spec.get("holderIdentity") != self.identity:
            new_spec["acquireTime"] = now
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                 "spec": new_spec}
        done = self._request(self._api.patch_namespaced_lease, self.name, self.namespace, patch,
                             timeout=timeout, _content_type=_MERGE_PATCH)
        self._resource_version = done["metadata"]["resourceVersion"]

    @staticmethod
    def _request(method: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any) -> Any:
        response = method(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
        try:
            return json.loads(response.data or b"{}")
        finally:
            response.release_conn()


def _exit_at_once(reason: str) -> None:
    log.critical("leader election: leadership lost (%s); exiting so that nothing runs without it",
                 reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_LOST_LEADERSHIP)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"[:300]
