"""The MinIO/S3 newest-record read (the freeze window's record step) on a bucket of many objects.

Usage (from the repository root; `make bench-record` runs the first)::

    PYTHONPATH=operator:tests python -m benchmarks.record_read --objects 100000 --report docs/benchmarks
    PYTHONPATH=operator:tests python -m benchmarks.record_read --objects 2000 --report /tmp/rr

It starts the S3 stand-in (``s3server``, gofakes3 on a directory) on 127.0.0.1, fills one bucket
with N objects whose keys sort by time (``events/<UTC time>-<n>.json``), and times the operator's
own read (`ObjectStoreConnection.newest_object_time`, what the record step awaits) in three
set-ups:

- ``capped``: the whole bucket, ``maxObjects`` at its default (10000): the read stops at the cap
  and says it is incomplete, so the verdict is Unknown, in bounded time whatever N is;
- ``startAfter``: keys after the 3601st newest (an hour of one object a second): complete;
- ``unbounded``: the whole bucket with a cap above N, what the read did before it was bounded.

The objects are PUT through the S3 API (16 at a time), so the stand-in stores them as it stores any
object. The stand-in has no key index: it serves a page by walking the bucket's directories in key
order from the start key, so a page of keys that all sit in one directory (as here: the worst
case) reads every name of that directory, and stats only the keys it returns; S3 and MinIO seek
to the start key instead.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from minio import Minio

from localcluster.services_bin import free_port, services_bin_dir, start_process
from snapgroup.adapters.objectstore import ObjectStoreConnection
from snapgroup.api.snapshotgroup import DEFAULT_MAX_OBJECTS

BUCKET = "bleater"
PREFIX = "events/"
ACCESS_KEY = "bench"
REPEATS = 5
PUT_THREADS = 16
RECENT = 3600
"""startAfter leaves this many of the newest keys: an hour of one object a second."""
CALL_TIMEOUT = 600.0


@dataclass(frozen=True)
class Setup:
    """One way of configuring lastRecord."""

    name: str
    start_after: str
    max_objects: int


@dataclass(frozen=True)
class Result:
    """Timings of one set-up."""

    setup: str
    start_after: str
    max_objects: int
    listed: int
    complete: bool
    newest_is_right: bool
    seconds_median: float
    seconds_min: float
    seconds_max: float
    peak_python_kib: float
    """Peak of memory allocated by Python during one read (tracemalloc; the SDK's pages too)."""


def key_at(moment: datetime, n: int) -> str:
    """An object key that sorts by time (and by n, which breaks ties)."""
    return f"{PREFIX}{moment:%Y%m%dT%H%M%S.%fZ}-{n:07d}.json"


@contextmanager
def s3_stand_in(root: Path, secret_key: str) -> Iterator[str]:
    """s3server on a free port with its data under root; yields host:port."""
    port = free_port()
    process = start_process(
        "s3server",
        [str(services_bin_dir() / "s3server"), "--listen", f"127.0.0.1:{port}", "--data",
         str(root / "data"), "--access-key", ACCESS_KEY, "--secret-key", secret_key, "--quiet"],
        root,
    )
    try:
        process.wait_listening(port, "s3server", 60)
        yield f"127.0.0.1:{port}"
    finally:
        process.stop()


def fill(client: Minio, objects: int) -> None:
    """N small objects PUT in key order (a few at a time), keys sorting by the time of the PUT."""
    started = datetime.now(UTC)

    def put(n: int) -> None:
        moment = started + timedelta(milliseconds=n)
        client.put_object(BUCKET, key_at(moment, n), io.BytesIO(b"{}"), 2)

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(put, range(objects)):
            pass


async def time_read(session: ObjectStoreConnection, setup: Setup, newest: datetime) -> Result:
    """Median of REPEATS reads of one set-up, and the memory peak of one."""
    seconds = []
    found = None
    for _ in range(REPEATS):
        started = time.perf_counter()
        found = await session.newest_object_time(BUCKET, PREFIX, setup.start_after, setup.max_objects)
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    await session.newest_object_time(BUCKET, PREFIX, setup.start_after, setup.max_objects)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert found is not None
    return Result(
        setup=setup.name, start_after=setup.start_after, max_objects=setup.max_objects,
        listed=found.listed, complete=found.complete,
        newest_is_right=found.complete and found.newest == newest,
        seconds_median=round(statistics.median(seconds), 4), seconds_min=round(min(seconds), 4),
        seconds_max=round(max(seconds), 4), peak_python_kib=round(peak / 1024, 1),
    )


async def run(objects: int, cap: int = DEFAULT_MAX_OBJECTS, recent: int = RECENT) -> dict[str, object]:
    """Fill a bucket with `objects` objects and time the read in each set-up: `capped` with
    maxObjects `cap`, `startAfter` leaving the `recent` newest keys. Raises RuntimeError when a
    read does not give what its set-up must (see `expected`)."""
    if recent >= cap:
        raise ValueError(f"recent ({recent}) must be below the cap ({cap})")
    root = Path(tempfile.mkdtemp(prefix="snapgroup-bench-s3-"))
    secret_key = "bench-" + os.urandom(8).hex()
    try:
        with s3_stand_in(root, secret_key) as endpoint:
            client = Minio(endpoint, access_key=ACCESS_KEY, secret_key=secret_key, secure=False)
            client.make_bucket(BUCKET)
            started = time.perf_counter()
            fill(client, objects)
            fill_seconds = time.perf_counter() - started
            started = time.perf_counter()
            listing = [(o.object_name, o.last_modified)
                       for o in client.list_objects(BUCKET, prefix=PREFIX, recursive=True)]
            list_seconds = time.perf_counter() - started
            if len(listing) != objects:
                raise RuntimeError(f"the stand-in lists {len(listing)} objects, not {objects}")
            keys = sorted(name for name, _ in listing if name)
            newest = max(moment for _, moment in listing if moment)
            setups = [
                Setup("capped", "", cap),
                Setup("startAfter", keys[-recent - 1] if objects > recent else "", cap),
                Setup("unbounded", "", objects + 1),
            ]
            session = await ObjectStoreConnection.open(
                {"endpoint": endpoint, "accessKey": ACCESS_KEY, "secretKey": secret_key}, CALL_TIMEOUT)
            try:
                results = [await time_read(session, s, newest) for s in setups]
            finally:
                await session.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wrong = [f"{r.setup}: listed {r.listed}, complete {r.complete}, newest right {r.newest_is_right}"
             for r in results
             if (r.listed, r.complete, r.newest_is_right) != expected(r.setup, objects, cap, recent)]
    if wrong:
        raise RuntimeError("the read did not give what its set-up must: " + "; ".join(wrong))
    return {
        "objects": objects, "repeats": REPEATS, "fillSeconds": round(fill_seconds, 2),
        "fullListingSeconds": round(list_seconds, 2),
        "results": [asdict(r) for r in results],
    }


def expected(setup: str, objects: int, cap: int, recent: int) -> tuple[int, bool, bool]:
    """(listed, complete, newest right) a set-up must give: capped stops at the cap (incomplete,
    so its newest is only a hint, and wrong: the keys sort oldest first) when the bucket holds
    more; startAfter lists the recent keys (fewer than the cap), complete; unbounded lists
    everything."""
    if setup == "capped":
        return (cap, False, False) if objects > cap else (objects, True, True)
    if setup == "startAfter":
        return min(recent, objects), True, True
    return objects, True, True


def render(report: dict[str, object]) -> str:
    """The Markdown report."""
    lines = [
        "# MinIO/S3 newest-record read (the record step)",
        "",
        f"Bucket of {report['objects']:,} objects on the S3 stand-in (s3server, gofakes3 on a "
        "directory), keys sorting by time; median of "
        f"{report['repeats']} reads by `ObjectStoreConnection.newest_object_time`. Written by "
        "`make bench-record`.",
        "",
        "| set-up | startAfter | maxObjects | listed | complete | newest right | median s | min s "
        "| max s | peak Python KiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = report["results"]
    assert isinstance(results, list)
    for r in results:
        lines.append(
            f"| {r['setup']} | `{r['start_after'] or '-'}` | {r['max_objects']} | {r['listed']} | "
            f"{r['complete']} | {r['newest_is_right']} | {r['seconds_median']} | {r['seconds_min']} | "
            f"{r['seconds_max']} | {r['peak_python_kib']} |")
    lines += [
        "",
        "`capped` is what a group over a bucket this large gets without a start key: the read stops "
        "at maxObjects, the status says `lastRecordComplete: \"false\"` and `Consistent` is Unknown "
        "(LastRecordIncomplete), in bounded time. `startAfter` is the recommended layout. "
        "`unbounded` is the old behaviour, for comparison.",
        "",
        "The stand-in has no key index: it serves a page by walking the bucket's directories in key "
        "order from the start key, so here, with every key in one directory, each page of 1000 "
        "keys reads all the names of that directory (and stats only the keys it returns). S3 "
        "and MinIO seek to the start key instead; the client side (requests, memory) is the same. "
        "Filling took "
        f"{report['fillSeconds']}s ({PUT_THREADS} PUTs at a time); one full listing with the "
        f"minio SDK {report['fullListingSeconds']}s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run and write record-read.json and record-read.md under --report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.record_read",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--report", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.objects))
    args.report.mkdir(parents=True, exist_ok=True)
    (args.report / "record-read.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.report / "record-read.md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
