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
from pydantic import ValidationError

import snapgroup.hooks.minio  # noqa: F401 - registers the hook type
from snapgroup.adapters.objectstore import ObjectStoreConnection
from snapgroup.api.snapshotgroup import ServiceTarget
from snapgroup.hooks.evidence import skew_from
from snapgroup.hooks.registry import HookContext, ServiceHook, lookup
from snapgroup.ports import PlanError, StepError

PATH = "spec.services[2]"
SECRET = "minio-credentials"


def target(last_record: dict[str, Any] | None = None, timeout: str = "10s") -> ServiceTarget:
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
    # No quiesce evidence: only what the plan's record read and clock reading found.
    assert set(hook.evidence()) == {
        "clockSkewSeconds", "clockSkewUncertaintySeconds", "lastRecordComplete", "lastRecordScanned"}


async def test_the_newest_record_read_stops_at_max_objects_and_says_so(
    s3_server: Any, hook_context: Any, store: Minio, bucket: str
) -> None:
    for i in range(5):
        put(store, bucket, f"bleats/{i:04d}.json")
    listed = {o.object_name: o.last_modified for o in store.list_objects(bucket, recursive=True)}
    ctx = hook_context(**{SECRET: s3_server.secret()})
    capped = await plan(ctx, target({"bucket": bucket, "maxObjects": 3}))
    after = await plan(ctx, target({"bucket": bucket, "startAfter": "bleats/0002.json", "maxObjects": 3}))
    try:
        await capped.newest_record()
        assert capped.evidence()["lastRecordComplete"] == "false"
        assert capped.evidence()["lastRecordScanned"] == "3"
        # Keys that sort by time and a start key: the last keys alone, and complete.
        assert await after.newest_record() == listed["bleats/0004.json"]
        assert after.evidence()["lastRecordComplete"] == "true"
        assert after.evidence()["lastRecordScanned"] == "2"
    finally:
        await capped.release()
        await after.release()


async def test_clock_skew_is_measured_from_the_date_header_to_a_fraction_of_a_second(
    s3_server: Any, hook_context: Any, bucket: str
) -> None:
    hook = await plan(hook_context(**{SECRET: s3_server.secret()}), target({"bucket": bucket}))
    await hook.release()
    skew = skew_from(hook.evidence())
    # The Date header has whole seconds; watching it tick over gives far better than that.
    assert skew is not None and skew.uncertainty < 0.1
    assert abs(skew.seconds) <= skew.uncertainty + 0.01  # one machine, one clock


def test_invalid_bucket_names_and_prefixes_are_refused_by_the_model() -> None:
    for last_record, field in (({"bucket": "ab"}, "bucket"), ({"bucket": "Bleater_1"}, "bucket"),
                               ({"bucket": "b" * 64}, "bucket"),
                               ({"bucket": "bleater", "prefix": "a\x00b"}, "prefix"),
                               ({"bucket": "bleater", "prefix": "x" * 1025}, "prefix"),
                               ({"bucket": "bleater", "maxObjects": 0}, "maxObjects")):
        with pytest.raises(ValidationError) as caught:
            target(last_record)  # type: ignore[arg-type]
        assert caught.value.errors()[0]["loc"] == ("lastRecord", field)


async def test_odd_prefixes_are_names_not_syntax(
    s3_server: Any, hook_context: Any, store: Minio, bucket: str
) -> None:
    put(store, bucket, "plain.json")
    ctx = hook_context(**{SECRET: s3_server.secret()})
    for prefix in ("../", "%2F..%2F", "?list-type=1&prefix=", "ünïcødé/", "a b/+&="):
        hook = await plan(ctx, target({"bucket": bucket, "prefix": prefix}))
        try:
            assert await hook.newest_record() is None
            assert hook.evidence()["lastRecordScanned"] == "0"
        finally:
            await hook.release()


@pytest.mark.parametrize(
    ("bucket_name", "reason", "field_path", "message"),
    [
        pytest.param("no-such-bucket", "LastRecordNotFound", f"{PATH}.lastRecord.bucket",
                     "no-such-bucket", id="missing-bucket"),
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
    # The message carries the S3 error's code and status, and our words for it.
    assert "S3 error AccessDenied, HTTP 403: these keys may not do that" in caught.value.message, \
        caught.value.message


async def test_unreachable_endpoint_fails_plan_with_database_unreachable(
    hook_context: Any, closed_port: int
) -> None:
    secret = {"endpoint": f"127.0.0.1:{closed_port}", "accessKey": "a", "secretKey": "b"}
    with pytest.raises(PlanError) as caught:
        await plan(hook_context(**{SECRET: secret}), target({"bucket": "bleater"}, "1s"))
    assert caught.value.reason == "DatabaseUnreachable"
    assert caught.value.field_path == f"{PATH}.connection"


async def test_the_servers_own_error_message_never_reaches_a_status(s3_server: Any, bucket: str) -> None:
    """A listing with a wrong secret key: the server answers with a sentence of its own (its XML
    error body); what the operator reports is the code, the status and our words."""
    wrong = s3_server.secret(secretKey="not-" + s3_server.secret_key)
    session = await ObjectStoreConnection.open(wrong, 5)
    try:
        with pytest.raises(StepError) as caught:
            await session.newest_object_time(bucket, "", "", 10)
    finally:
        await session.close()
    assert caught.value.reason == "AuthenticationFailed"
    assert ("S3 error SignatureDoesNotMatch, HTTP 403: the secret key does not belong to the access key"
            in caught.value.message), caught.value.message
    assert "we calculated" not in caught.value.message  # the stand-in's own sentence
