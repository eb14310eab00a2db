"""S3 / MinIO through the minio SDK: bucket checks and the newest object's LastModified.

The SDK is synchronous; each call runs in a worker thread, bounded twice: urllib3 timeouts (no
retries) end each request, and asyncio.wait_for bounds the whole call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from snapgroup.ports import StepError

_CREDENTIAL_ERRORS = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}
)
_TRUE = frozenset({"true", "1", "yes", "on"})

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

    async def newest_object_time(self, bucket: str, prefix: str) -> datetime | None:
        """The newest LastModified of the objects under prefix, or None when there are none."""
        return await self._call(
            f"listing bucket {bucket}", self._newest_object_time, bucket, prefix
        )

    async def close(self) -> None:
        """Drop the pooled connections."""
        self._pool.clear()

    def _newest_object_time(self, bucket: str, prefix: str) -> datetime | None:
        newest: datetime | None = None
        for obj in self._client.list_objects(bucket, prefix=prefix or None, recursive=True):
            modified = obj.last_modified
            if modified is None:
                continue
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=UTC)
            if newest is None or modified > newest:
                newest = modified
        return newest

    async def _call(self, action: str, run: Callable[..., T], *args: object) -> T:
        """Run one blocking SDK call in a thread within the timeout, translating its failures."""
        where = self._address.describe()
        try:
            # A thread cannot be cancelled: when wait_for gives up, the urllib3 timeouts still
            # end the request in the worker thread shortly after.
            return await asyncio.wait_for(asyncio.to_thread(run, *args), self._timeout)
        except TimeoutError:
            raise StepError(
                "Timeout", f"{action} on {where} took longer than {self._timeout:g}s"
            ) from None
        except S3Error as exc:
            reason = "AuthenticationFailed" if exc.code in _CREDENTIAL_ERRORS else "QueryFailed"
            detail = self._address.redact(f"{exc.code}: {exc.message}")
            raise StepError(reason, f"{action} on {where}: {detail}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            detail = self._address.redact(str(exc))
            raise StepError(
                "DatabaseUnreachable", f"{action}: cannot reach {where}: {detail}"
            ) from None
        except ValueError as exc:
            # The SDK checks names before sending anything, e.g. "invalid bucket name x".
            raise StepError("LastRecordInvalid", f"{action}: {exc}") from None
        except MinioException as exc:
            raise StepError(
                "QueryFailed", f"{action} on {where}: {self._address.redact(str(exc))}"
            ) from None
