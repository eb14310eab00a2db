"""Hook type `minio`: an S3 / MinIO service. There is no quiesce for object stores: its snapshot
is crash-consistent, and writer isolation is what keeps new objects out of the cut.

The hook still checks the connection and bucket at plan time, and reads the newest object's
LastModified while frozen so the consistency check covers the object store too.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from snapgroup.api.snapshotgroup import DEFAULT_MAX_OBJECTS, LastRecord, ServiceTarget
from snapgroup.hooks.evidence import scan_evidence
from snapgroup.hooks.registry import HookContext, UndoRecord, register
from snapgroup.hooks.services import BoundService, ServiceHookType
from snapgroup.ports import Connectors, ObjectStoreSession, PlanError

NOT_QUIESCED = "nothing to resume: an object store is not quiesced"


class ObjectStoreService(BoundService[ObjectStoreSession]):
    """One object store: apply and undo do nothing; the newest object time is its record."""

    async def apply(self) -> UndoRecord:
        """Nothing to do: S3 has no quiesce."""
        return {}

    async def undo(self, record: UndoRecord) -> str:
        """Nothing to undo."""
        return NOT_QUIESCED

    async def read_newest(self, last_record: LastRecord) -> datetime | None:
        """Newest LastModified among at most lastRecord.maxObjects keys under bucket/prefix after
        startAfter. When more are there, the evidence says the read is incomplete (the verdict
        is then Unknown), and the newest seen is kept only as a hint."""
        assert last_record.bucket
        found = await self.reader.newest_object_time(
            last_record.bucket, last_record.prefix or "", last_record.start_after or "",
            last_record.max_objects or DEFAULT_MAX_OBJECTS,
        )
        self._evidence.update(scan_evidence(found.listed, found.complete))
        return found.newest


@register
class MinioHookType(ServiceHookType[ObjectStoreSession]):
    """MinIO or any S3 endpoint: no quiesce, newest object time as the record."""

    name = "minio"
    secret_layouts = (("endpoint", "accessKey", "secretKey"),)

    async def connect(
        self, connectors: Connectors, secret: Mapping[str, str], timeout: float, session_name: str
    ) -> ObjectStoreSession:
        """An S3 client; it connects on first use."""
        return await connectors.object_store(secret, timeout)

    async def bind(
        self, ctx: HookContext, service: ServiceTarget, session: ObjectStoreSession, path: str
    ) -> ObjectStoreService:
        """Check lastRecord's bucket exists and is readable with these keys."""
        bucket = service.last_record.bucket if service.last_record else None
        if bucket and not await session.check_bucket(bucket):
            raise PlanError(
                "LastRecordNotFound", f"{path}.lastRecord.bucket",
                f"bucket {bucket} does not exist; create it or correct lastRecord.bucket",
            )
        return ObjectStoreService(ctx, service, session)

    async def recover(
        self, ctx: HookContext, key: str, record: UndoRecord, side_effect_done: bool
    ) -> str:
        """Nothing to undo."""
        return NOT_QUIESCED
