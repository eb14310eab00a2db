"""The minio hook type against the local S3 stand-in (see conftest.s3_server).

The MinIO server is AGPL and not used here; s3server (gofakes3 storing objects in a directory,
with signature checking) serves the S3 role, and the client is the minio SDK as in production.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from minio import Minio

import snapgroup.hooks.minio  # noqa: F401 - registers the hook type
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.ports import PlanError

PATH = "spec.services[2]"
SECRET = "minio-credentials"


def target(last_record: dict[str, str] | None = None, timeout: str = "10s") -> ServiceTarget:
    return ServiceTarget.model_validate({
        "name": "minio", "type": "minio", "pvcs": ["minio-data"],
        "connection": {"secretRef": {"name": SECRET}, "timeout": timeout},
        **({"lastRecord": last_record} if last_record else {}),
    })


async def plan(ctx: HookContext, service: ServiceTarget) -> ServiceHook:
    hook_type = lookup("minio")
    assert hook_type is not None
    [hook] = await hook_type.plan(ctx, service, PATH)
    assert isinstance(hook, ServiceHook)
    return hook


@pytest.fixture
def store(s3_server: Any) -> Minio:
    """A test-side client."""
    return Minio(s3_server.endpoint, access_key=s3_server.access_key,
                 secret_key=s3_server.secret_key, secure=False)


@pytest.fixture
def bucket(store: Minio) -> str:
    name = f"bleater-{uuid.uuid4().hex[:8]}"
    store.make_bucket(name)
    return name


def put(store: Minio, bucket: str, key: str) -> None:
    store.put_object(bucket, key, io.BytesIO(b"{}"), 2)


async def test_newest_record_is_the_newest_object_under_the_prefix(
    s3_server: Any, hook_context: Any, store: Minio, bucket: str
) -> None:
    for key in ("bleats/1.json", "bleats/2.json", "avatars/a.png"):  # in time order
        put(store, bucket, key)
    listed = {o.object_name: o.last_modified for o in store.list_objects(bucket, recursive=True)}
    ctx = hook_context(**{SECRET: s3_server.secret()})
    whole = await plan(ctx, target({"bucket": bucket}))
    bleats = await plan(ctx, target({"bucket": bucket, "prefix": "bleats/"}))
    nothing = await plan(ctx, target({"bucket": bucket, "prefix": "none/"}))
    try:
        assert await whole.newest_record() == listed["avatars/a.png"]
        assert await bleats.newest_record() == listed["bleats/2.json"]
        assert await nothing.newest_record() is None
    finally:
        for hook in (whole, bleats, nothing):
            await hook.release()


async def test_apply_and_undo_leave_the_store_writable(
    s3_server: Any, hook_context: Any, store: Minio, bucket: str
) -> None:
    hook = await plan(hook_context(**{SECRET: s3_server.secret()}), target({"bucket": bucket}))
    try:
        assert await hook.apply() == {}
        put(store, bucket, "during-the-freeze.json")  # no quiesce: writer isolation covers S3
        assert "not quiesced" in await hook.undo({})
    finally:
        await hook.release()
    assert hook.evidence() == {}


@pytest.mark.parametrize(
    ("bucket_name", "reason", "field_path", "message"),
    [
        pytest.param("no-such-bucket", "LastRecordNotFound", f"{PATH}.lastRecord.bucket",
                     "no-such-bucket", id="missing-bucket"),
        pytest.param("ab", "LastRecordInvalid", f"{PATH}.lastRecord", "invalid bucket name ab",
                     id="invalid-bucket-name"),
    ],
)
async def test_unusable_last_record_bucket_fails_plan(
    s3_server: Any, hook_context: Any, bucket_name: str, reason: str, field_path: str, message: str
) -> None:
    ctx = hook_context(**{SECRET: s3_server.secret()})
    with pytest.raises(PlanError) as caught:
        await plan(ctx, target({"bucket": bucket_name}))
    assert caught.value.reason == reason
    assert caught.value.field_path == field_path
    assert message in caught.value.message


async def test_wrong_secret_key_fails_plan_with_authentication_failed(
    s3_server: Any, hook_context: Any, bucket: str
) -> None:
    wrong = "not-" + s3_server.secret_key
    ctx = hook_context(**{SECRET: s3_server.secret(secretKey=wrong)})
    with pytest.raises(PlanError) as caught:
        await plan(ctx, target({"bucket": bucket}))
    assert caught.value.reason == "AuthenticationFailed"
    assert caught.value.field_path == f"{PATH}.connection.secretRef.name"
    assert wrong not in str(caught.value)


async def test_unreachable_endpoint_fails_plan_with_database_unreachable(
    hook_context: Any, closed_port: int
) -> None:
    secret = {"endpoint": f"127.0.0.1:{closed_port}", "accessKey": "a", "secretKey": "b"}
    with pytest.raises(PlanError) as caught:
        await plan(hook_context(**{SECRET: secret}), target({"bucket": "bleater"}, "1s"))
    assert caught.value.reason == "DatabaseUnreachable"
    assert caught.value.field_path == f"{PATH}.connection"
