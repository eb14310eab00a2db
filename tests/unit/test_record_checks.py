"""The single-statement check of lastRecord queries, clock skew and the verdict that weighs it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from snapgroup.api.labels import GROUP_LABEL
from snapgroup.api.snapshotgroup import ServiceStatus
from snapgroup.hooks.evidence import ClockSkew, scan_evidence, skew_from, skew_of
from snapgroup.hooks.sql_statement import statement_problem
from snapgroup.orchestration.snapshots import consistency, snapshot_manifest
from snapgroup.ports import ClockSample

CUT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("query", [
    "SELECT max(created_at) FROM events",
    "select max(created_at) from events;",
    "  -- a comment; with a semicolon\n SELECT now()",
    "/* nested /* ; */ still ; a comment */ SELECT now()",
    "SELECT ';' || $$;$$ || $tag$ ; $$ ; $tag$, now()",
    "SELECT E'it\\'s; fine', now()",
    "SELECT 'it''s; fine', now()",
    'SELECT "odd;name" FROM "t;" ;  -- trailing',
    "WITH t AS (SELECT now() AS v) SELECT v FROM t",
    "VALUES (now())",
    "TABLE newest",
    "SELECT a$b$c FROM t",  # an identifier with dollars, not a dollar quote
])
def test_one_read_statement_passes(query: str) -> None:
    assert statement_problem(query) is None


@pytest.mark.parametrize(("query", "words"), [
    ("COMMIT; DROP TABLE events; SELECT now()", "more than one statement"),
    ("COMMIT", "COMMIT statement"),
    ("SELECT now(); DROP TABLE events", "more than one statement"),
    ("SELECT now() /* ; */ ; DROP TABLE events", "more than one statement"),
    ("SELECT $$;$$; DROP TABLE events", "more than one statement"),
    ("SELECT $a$ $b$ ; $a$; DROP TABLE events", "more than one statement"),
    ("SELECT 'it''s'; DROP TABLE events", "more than one statement"),
    ("SELECT E'\\''; DROP TABLE events", "more than one statement"),
    ("SELECT '\\'; DROP TABLE events; --'", "more than one statement"),  # conforming strings
    ("SELECT 'never closed", "never closed"),
    ('SELECT "never closed', "never closed"),
    ("SELECT $x$ never closed", "never closed"),
    ("SELECT /* /* */ never closed", "never closed"),
    ("DELETE FROM events RETURNING created_at", "DELETE statement"),
    ("SET TRANSACTION READ WRITE", "SET statement"),
    ("-- only a comment", "empty"),
    ("", "empty"),
    ("SELECT now()\x00; DROP TABLE events", "NUL"),
])
def test_anything_else_is_refused_with_a_reason(query: str, words: str) -> None:
    problem = statement_problem(query)
    assert problem is not None and words in problem


def test_skew_of_a_sample_is_the_midpoint_with_half_the_round_trip_as_doubt() -> None:
    before = CUT
    sample = ClockSample(before, before + timedelta(seconds=2.5), before + timedelta(seconds=1), 0.0)
    skew = skew_of(sample)
    assert skew == ClockSkew(2.0, 0.5)
    # A clock with whole seconds only: half a second more doubt, and half a second ahead.
    coarse = skew_of(ClockSample(before, before, before, 1.0))
    assert coarse == ClockSkew(0.5, 0.5)
    assert skew_from(skew.evidence()) == skew
    assert skew_from({}) is None and skew_from({"clockSkewSeconds": "x"}) is None


def service(name: str, at: datetime | None, skew: float | None = None, **evidence: str) -> ServiceStatus:
    extra = ClockSkew(skew, 0.001).evidence() if skew is not None else {}
    return ServiceStatus(name=name, type="postgresql", last_record_time=at,
                         evidence={**extra, **evidence})


def test_records_before_the_cut_by_more_than_the_skew_are_consistent() -> None:
    verdict = consistency([service("pg", CUT - timedelta(seconds=2), skew=0.5)], CUT)
    assert (verdict.status, verdict.reason) == ("True", "AllRecordsBeforeCut")


def test_a_record_within_the_skew_of_the_cut_makes_the_verdict_unknown() -> None:
    before = consistency([service("pg", CUT - timedelta(seconds=0.3), skew=0.5)], CUT)
    after = consistency([service("pg", CUT + timedelta(seconds=0.3), skew=-0.5)], CUT)
    for verdict in (before, after):
        assert (verdict.status, verdict.reason) == ("Unknown", "ClockSkewTooLarge")
        assert "pg's clock" in verdict.message
    # Without skew the same records are judged as before.
    assert consistency([service("pg", CUT - timedelta(seconds=0.3))], CUT).status == "True"
    assert consistency([service("pg", CUT + timedelta(seconds=0.3))], CUT).status == "False"


def test_a_record_beyond_the_cut_by_more_than_the_skew_is_inconsistent() -> None:
    verdict = consistency([service("pg", CUT + timedelta(seconds=3), skew=0.5),
                           service("minio", CUT - timedelta(seconds=0.1), skew=1.0)], CUT)
    assert (verdict.status, verdict.reason, verdict.newer) == ("False", "RecordsNewerThanCut", ["pg"])


def test_an_incomplete_record_read_makes_the_verdict_unknown() -> None:
    capped = service("minio", CUT - timedelta(seconds=5), **scan_evidence(10000, complete=False))
    verdict = consistency([service("pg", CUT - timedelta(seconds=5)), capped], CUT)
    assert (verdict.status, verdict.reason) == ("Unknown", "LastRecordIncomplete")
    assert "minio" in verdict.message and "maxObjects" in verdict.message
    # Even with nothing listed at all: unknown, not "not checked".
    empty = service("minio", None, **scan_evidence(10000, complete=False))
    assert consistency([service("pg", CUT - timedelta(seconds=5)), empty], CUT).status == "Unknown"


def test_snapshots_of_a_group_with_a_253_character_name_carry_valid_labels() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    labels = snapshot_manifest(namespace="ns", group=name, group_uid="uid", service="s" * 63,
                               pvc="p", snapshot_class="c")["metadata"]["labels"]
    for value in labels.values():
        assert len(value) <= 63 and re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)
    assert labels[GROUP_LABEL] != snapshot_manifest(
        namespace="ns", group=name[:-1] + "c", group_uid="uid", service="s", pvc="p",
        snapshot_class="c")["metadata"]["labels"][GROUP_LABEL]
