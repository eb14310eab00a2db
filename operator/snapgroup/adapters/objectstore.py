"""S3 / MinIO through the minio SDK: bucket checks and the newest object's LastModified.

The SDK is synchronous; each call runs in a worker thread, bounded twice: urllib3 timeouts (no
retries) end each request, and asyncio.wait_for bounds the whole call.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from snapgroup.ports import ClockSample, NewestObject, StepError

_CREDENTIAL_ERRORS = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)
_S3_WORDS = {
    "AccessDenied": "these keys may not do that",
    "InvalidAccessKeyId": "the server does not know the access key",
    "SignatureDoesNotMatch": "the secret key does not belong to the access key",
    "InvalidToken": "the session token is not valid",
    "NoSuchBucket": "the bucket does not exist",
    "NoSuchKey": "the object does not exist",
    "InvalidBucketName": "the bucket name is not valid",
    "SlowDown": "the server asks its clients to slow down",
    "ServiceUnavailable": "the server is not available now",
    "InternalError": "the server failed; its own log says why",
    "RequestTimeTooSkewed": "the operator's clock and the server's differ too much",
}
"""Our words for the S3 error codes a read meets: the server's own message never goes into a
status or an Event (it is the server's text, and may quote what it holds)."""
_S3_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")
_TRUE = frozenset({"true", "1", "yes", "on"})

_TICK_WATCH = 1.2
"""Seconds to watch the Date header for its next second."""
_TICK_POLL = 0.01
"""Seconds between Date requests while watching: the clock sample's resolution."""

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectStoreAddress:
    """Endpoint and keys read from a Secret; the secret key never shows in a repr."""

    endpoint: str
    """host:port."""
    secure: bool
    """HTTPS when true."""
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    """Set so the SDK does not ask the server for the bucket's region first."""

    @classmethod
    def from_secret(cls, secret: Mapping[str, str]) -> ObjectStoreAddress:
        """Read `endpoint` (host:port, or an http(s):// URL), `accessKey`, `secretKey` and the
        optional `secure`/`tls` ("true") and `region`."""
        missing = [k for k in ("endpoint", "accessKey", "secretKey") if not secret.get(k)]
        if missing:
            raise StepError(
                "SecretIncomplete",
                f"the Secret lacks {', '.join(missing)}; set endpoint (host:port), accessKey "
                "and secretKey",
            )
        endpoint = secret["endpoint"]
        secure = (secret.get("secure") or secret.get("tls") or "").lower() in _TRUE
        scheme, sep, rest = endpoint.partition("://")
        if sep:
            secure = scheme.lower() == "https"
            endpoint = rest
        endpoint = endpoint.rstrip("/")
        if not endpoint or "/" in endpoint:
            raise StepError(
                "SecretInvalid",
                f"the Secret's endpoint {secret['endpoint']!r} is not host:port",
            )
        return cls(
            endpoint=endpoint,
            secure=secure,
            access_key=secret["accessKey"],
            secret_key=secret["secretKey"],
            region=secret.get("region") or "us-east-1",
        )

    def describe(self) -> str:
        """Where the server is, for messages: ``S3 endpoint http://host:port``."""
        return f"S3 endpoint {'https' if self.secure else 'http'}://{self.endpoint}"

    def redact(self, text: str) -> str:
        """The text with the secret key replaced."""
        return text.replace(self.secret_key, "***")


class ObjectStoreConnection:
    """A `ports.ObjectStoreSession`: a minio client with its own connection pool."""

    def __init__(self, address: ObjectStoreAddress, timeout: float) -> None:
        self._address = address
        self._timeout = timeout
        self._pool = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=False,
        )
        self._client = Minio(
            address.endpoint,
            access_key=address.access_key,
            secret_key=address.secret_key,
            secure=address.secure,
            region=address.region,
            http_client=self._pool,
        )

    def __repr__(self) -> str:
        return f"<ObjectStoreConnection {self._address.describe()}>"

    @classmethod
    async def open(cls, secret: Mapping[str, str], timeout: float) -> ObjectStoreConnection:
        """Build the client; it connects on first use, so `check_bucket` is the reachability test."""
        return cls(ObjectStoreAddress.from_secret(secret), timeout)

    async def check_bucket(self, bucket: str) -> bool:
        """True when the bucket exists and the keys may read it; StepError on bad keys."""
        return await self._call(f"checking bucket {bucket}", self._client.bucket_exists, bucket)

    async def newest_object_time(
        self, bucket: str, prefix: str, start_after: str, max_objects: int
    ) -> NewestObject:
        """The newest LastModified among at most max_objects keys under prefix after start_after.

        Bounded in memory (only the newest is kept) and in requests (max_objects / 1000 pages):
        a listing cut short by the timeout stops its worker thread at the next key. The SDK
        fetches pages (1000 keys each) lazily, so pages past the cap are never requested.
        """
        return await self._call(
            f"listing bucket {bucket}", self._newest_object_time, bucket, prefix, start_after,
            max_objects, stoppable=True,
        )

    async def clock_sample(self) -> ClockSample:
        """The server's Date header at one of its second boundaries (see `_clock_sample`)."""
        return await self._call("reading the server clock", self._clock_sample, stoppable=True)

    async def close(self) -> None:
        """Drop the pooled connections."""
        self._pool.clear()

    def _newest_object_time(
        self, stop: threading.Event, bucket: str, prefix: str, start_after: str, max_objects: int
    ) -> NewestObject:
        newest: datetime | None = None
        listed = 0
        objects = self._client.list_objects(
            bucket, prefix=prefix or None, recursive=True, start_after=start_after or None,
        )
        for obj in objects:
            if stop.is_set() or listed == max_objects:
                return NewestObject(newest, listed, complete=False)
            listed += 1
            modified = obj.last_modified
            if modified is None:
                continue
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=UTC)
            if newest is None or modified > newest:
                newest = modified
        return NewestObject(newest, listed, complete=True)

    def _date(self) -> tuple[datetime, datetime, datetime]:
        """(operator time before, the server's Date header, operator time after) of one HEAD /.

        Unsigned: no credentials travel, and any answer (even 403) carries the Date header.
        """
        scheme = "https" if self._address.secure else "http"
        before = datetime.now(UTC)
        response = self._pool.request("HEAD", f"{scheme}://{self._address.endpoint}/")
        after = datetime.now(UTC)
        header = response.headers.get("Date")
        if not header:
            raise StepError("QueryFailed", f"{self._address.describe()} sent no Date header")
        return before, parsedate_to_datetime(header).astimezone(UTC), after

    def _clock_sample(self, stop: threading.Event) -> ClockSample:
        """A Date header has whole seconds: watch it until it ticks over, which happened at a
        known server time (the new second) between the last two requests, so the sample's
        resolution is the polling interval, not one second. After about a second without a tick
        (a slow server), the first answer is the sample, with one second of resolution."""
        first_before, first_date, first_after = last = self._date()
        deadline = first_after + timedelta(seconds=min(_TICK_WATCH, self._timeout / 2))
        while not stop.is_set() and datetime.now(UTC) < deadline:
            time.sleep(_TICK_POLL)
            before, date, after = self._date()
            if date > last[1]:
                # The server's clock reached `date` after last's request went out and before
                # this answer came back.
                return ClockSample(last[0], date, after, resolution=0.0)
            last = (before, date, after)
        return ClockSample(first_before, first_date, first_after, resolution=1.0)

    async def _call(
        self, action: str, run: Callable[..., T], *args: object, stoppable: bool = False
    ) -> T:
        """Run one blocking SDK call in a thread within the timeout, translating its failures.

        A stoppable run takes a `threading.Event` first, set when the call is given up (timeout
        or cancellation), so its worker thread stops too.
        """
        where = self._address.describe()
        stop = threading.Event()
        try:
            # A thread cannot be cancelled: when wait_for gives up, the stop flag and the urllib3
            # timeouts end the work in the worker thread shortly after.
            return await asyncio.wait_for(
                asyncio.to_thread(run, *((stop, *args) if stoppable else args)), self._timeout
            )
        except TimeoutError:
            raise StepError(
                "Timeout", f"{action} on {where} took longer than {self._timeout:g}s"
            ) from None
        except S3Error as exc:
            reason = "AuthenticationFailed" if exc.code in _CREDENTIAL_ERRORS else "QueryFailed"
            raise StepError(reason, f"{action} on {where}: {_s3_words(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            detail = self._address.redact(str(exc))
            raise StepError(
                "DatabaseUnreachable", f"{action}: cannot reach {where}: {detail}"
            ) from None
        except ValueError as exc:
            # The SDK checks names before sending anything, e.g. "invalid bucket name x".
            raise StepError("LastRecordInvalid", f"{action}: {exc}") from None
        except StepError:
            raise
        except MinioException as exc:
            # InvalidResponseError and ServerError carry the server's answer: only its kind and
            # status go on.
            status = getattr(exc, "_code", None) or getattr(exc, "status_code", None)
            raise StepError(
                "QueryFailed", f"{action} on {where}: {type(exc).__name__}"
                + (f" (HTTP {status})" if isinstance(status, int) else "")
            ) from None
        finally:
            stop.set()


def _s3_words(exc: S3Error) -> str:
    """An S3 error in our words: its code (when it looks like one), the HTTP status, and what
    the code means."""
    code = exc.code if _S3_CODE.fullmatch(exc.code or "") else None
    status = getattr(exc.response, "status", None)
    words = _S3_WORDS.get(code or "", "an error the operator has no words for; the server's log says more")
    return f"S3 error {code or '(no code)'}" + (f", HTTP {status}" if status else "") + f": {words}"
