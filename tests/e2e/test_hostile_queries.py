"""Hostile `lastRecord` input through the running operator, on the real PostgreSQL of bleater: a
query that would drop the table is refused before anything is touched, and a query that tries to
put a secret value into an error message fails the group without that value reaching the status,
the Events or the operator's log (the adapter-level cases are in
tests/integration/test_postgresql_hostile.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from e2e.bleater import SERVICES, Bleater
from e2e.kube import Kube
from e2e.operator_process import OperatorProcess
from e2e.test_bleater_group import condition, sample

pytestmark = pytest.mark.cluster

SECRET_VALUE = f"hunter2-{uuid.uuid4().hex[:8]}"


def connect(bleater: Bleater) -> psycopg.Connection[tuple[object, ...]]:
    pg = bleater.pg
    return psycopg.connect(host=pg["host"], port=5432, user=pg["username"], password=pg["password"],
                           dbname=pg["database"], connect_timeout=5, autocommit=True)


@pytest.fixture
def vault(bleater: Bleater) -> Iterator[str]:
    """A table holding a value nobody outside the database may see."""
    table = f"vault_{uuid.uuid4().hex[:6]}"
    with connect(bleater) as conn:
        conn.execute(f"CREATE TABLE {table} (v text)")
        conn.execute(f"INSERT INTO {table} VALUES (%s)", (SECRET_VALUE,))
    yield table
    with connect(bleater) as conn:
        conn.execute(f"DROP TABLE {table}")


def with_query(name: str, query: str) -> dict[str, object]:
    doc = sample(name)
    postgres = next(s for s in doc["spec"]["services"] if s["type"] == "postgresql")
    postgres["lastRecord"] = {"query": query}
    return doc


def events_count(bleater: Bleater) -> int:
    with connect(bleater) as conn:
        row = conn.execute("SELECT count(*) FROM events").fetchone()
    assert row is not None
    return int(row[0])  # type: ignore[call-overload]


def test_a_query_of_several_statements_is_refused_and_the_table_stays(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str,
) -> None:
    before = events_count(bleater)
    writer = kube.deployment("bleater", "data-writer").metadata.resource_version
    kube.create_group(with_query(group_name, "COMMIT; DROP TABLE events; SELECT now()"))
    group = kube.wait_group("bleater", group_name)
    failed = condition(group, "Succeeded")
    assert (failed["status"], failed["reason"]) == ("False", "LastRecordQueryRejected"), failed
    assert "spec.services[0].lastRecord.query" in failed["message"]
    assert "nothing was touched" in failed["message"]
    # The table is there and growing, the writer was never isolated, nothing was cut.
    assert events_count(bleater) >= before
    assert kube.deployment("bleater", "data-writer").metadata.resource_version == writer
    assert kube.snapshots("bleater", f"snapgroup.dev/group={group_name}") == []
    newest = min(max(r.seq for r in bleater.records(s)) for s in SERVICES)
    bleater.wait_new_records(newest)


def test_a_value_of_the_database_never_reaches_the_status_events_or_log(
    operator: OperatorProcess, kube: Kube, bleater: Bleater, group_name: str, vault: str,
) -> None:
    kube.create_group(with_query(group_name, f"SELECT v::timestamptz FROM {vault}"))
    group = kube.wait_group("bleater", group_name)
    failed = condition(group, "Succeeded")
    assert failed["status"] == "False", failed
    # The fault, proven: the server did evaluate the value and refused it (SQLSTATE 22007,
    # invalid datetime format), which is where PostgreSQL would quote the value.
    assert "SQLSTATE 22007" in failed["message"], failed
    assert "spec.services[0].lastRecord" in failed["message"]
    kube.wait_event_reasons("bleater", group_name, {failed["reason"]})
    places = {
        "status": json.dumps(group["status"]),
        "events": json.dumps(kube.events("bleater", group_name)),
        "operator log": operator.log_path.read_text(errors="replace"),
    }
    leaked = [place for place, text in places.items() if SECRET_VALUE in text]
    assert not leaked, f"the database's value appears in the {', '.join(leaked)}"
