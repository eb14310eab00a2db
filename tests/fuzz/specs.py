"""Specs as a user could write them: mostly well-formed, each part sometimes wrong or odd.

Each strategy draws the wire form (camelCase dicts, as `kubectl apply` sends it). Odd but valid
values are drawn on purpose: names of exactly 63 and 253 characters, unicode in label keys and
values, selectors that match nothing ({}), or everything (an Exists requirement).

Only structural rules are drawn on both sides of the line (what the CRD's OpenAPI schema and CEL
rules can check). What only the operator can know is left out on purpose: whether an IANA time
zone exists (the API server has no tz database; the schedule's Ready condition reports it) and the
values inside cron fields (croniter's), so time zones come from real names or break the pattern.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

LABEL = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
"""A DNS label, up to 63 characters."""


def _repeat(n: int) -> str:
    return ("a" * n)[:n]


dns_label = st.one_of(
    LABEL,
    st.just(_repeat(63)),                                   # the longest allowed
    st.sampled_from(["", _repeat(64), "Upper", "has_underscore", "-lead", "trail-", "ünï",
                     "a.b"]),                               # invalid
)
object_name = st.one_of(
    LABEL,
    st.just(".".join([_repeat(63), _repeat(63), _repeat(63), _repeat(61)])),  # 253 characters
    st.sampled_from(["", "a" * 254, "UPPER", "white space", "ü", "dots.ok.here"]),
)
duration = st.one_of(
    st.sampled_from(["60s", "1m30s", "500ms", "1.5h", "2h"]),
    st.sampled_from(["0s", "0ms", "60", "-1s", "1d", "s", "abc", ""]),
)
label_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20),
    st.sampled_from(["app", "app.kubernetes.io/name", "ключ", "名前", ""]),
)
selector = st.one_of(
    st.just({}),                                            # matches nothing here
    st.fixed_dictionaries({"matchLabels": st.dictionaries(label_text, label_text, max_size=3)}),
    st.fixed_dictionaries({"matchExpressions": st.lists(st.fixed_dictionaries({
        "key": label_text,
        "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist", "Matches"]),
    }, optional={"values": st.lists(label_text, max_size=2)}), min_size=1, max_size=2)}),
)


@st.composite
def writer(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["kind"] = draw(st.sampled_from(["Deployment", "StatefulSet", "DaemonSet"]))
    has = draw(st.sampled_from(["name", "selector", "name", "selector", "both", "neither"]))
    if has in ("name", "both"):
        body["name"] = draw(object_name)
    if has in ("selector", "both"):
        body["selector"] = draw(selector)
    return body


LAST_RECORDS: dict[str, Any] = {
    "postgresql": st.one_of(
        st.fixed_dictionaries({"table": st.sampled_from(
            ["events", "app.Events", '"odd.schema"."t"', "a.b.c", 'bad"quote', ""]),
            "column": st.sampled_from(["created_at", "At", "", "x" * 64])}),
        st.fixed_dictionaries({"query": st.sampled_from(
            ["SELECT max(created_at) FROM events", "COMMIT; DROP TABLE events", "", "x" * 4097])}),
        st.fixed_dictionaries({"table": st.just("events")}),  # incomplete
    ),
    "mongodb": st.fixed_dictionaries({
        "database": st.sampled_from(["bleater", "bad/name", "a" * 64, "$x"]),
        "collection": st.sampled_from(["events", "$cmd", "system.users"]),
        "field": st.sampled_from(["created_at", "meta.at", "$where", "a..b", ".a"]),
    }),
    "minio": st.fixed_dictionaries(
        {"bucket": st.sampled_from(["bleater", "ab", "Bleater", "a" * 63, "b" * 64])},
        optional={"prefix": st.sampled_from(["", "events/", "../", "a\nb", "ü/"]),
                  "startAfter": st.sampled_from(["events/2026", ""]),
                  "maxObjects": st.sampled_from([1, 10000, 0, 1000001, -5])},
    ),
}


@st.composite
def service(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["postgresql", "mongodb", "minio", "mysql"]))
    body: dict[str, Any] = {
        "name": draw(dns_label),
        "type": kind,
        "connection": {"secretRef": {"name": draw(object_name)}},
    }
    if draw(st.booleans()):
        body["connection"]["timeout"] = draw(duration)
    claims = draw(st.sampled_from(["pvcs", "pvcs", "selector", "both", "neither", "empty"]))
    if claims in ("pvcs", "both"):
        body["pvcs"] = draw(st.lists(object_name, min_size=1, max_size=2))
    if claims == "empty":
        body["pvcs"] = []
    if claims in ("selector", "both"):
        body["pvcSelector"] = draw(selector)
    if draw(st.booleans()):
        record_kind = kind if kind in LAST_RECORDS else "postgresql"
        body["lastRecord"] = draw(LAST_RECORDS[record_kind])
    return body


@st.composite
def group_spec(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"services": draw(st.lists(service(), min_size=0, max_size=3))}
    if draw(st.booleans()):
        spec["writers"] = draw(st.lists(writer(), max_size=3))
    if draw(st.booleans()):
        spec["freezeBudget"] = draw(duration)
    if draw(st.booleans()):
        spec["volumeSnapshotClassName"] = draw(object_name)
    if draw(st.booleans()):
        spec["snapshotDeletionPolicy"] = draw(st.sampled_from(["Delete", "Retain", "Keep"]))
    if draw(st.integers(0, 9)) == 0:
        spec["unknownField"] = True
    if draw(st.integers(0, 4)) == 0:
        spec["hooks"] = {"pre": [{"name": draw(dns_label), "type": draw(st.sampled_from(["scale", ""])),
                                  "params": {"kind": "Deployment", "name": "x"}}]}
    return spec


@st.composite
def schedule_spec(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedule": draw(st.sampled_from(
            ["@daily", "@every 10s", "0 3 * * *", "*/5 * * * * 30", "", "every day", "@fortnightly",
             "* * * *"])),
        "template": {"spec": draw(group_spec())},
    }
    if draw(st.booleans()):
        spec["timeZone"] = draw(st.sampled_from(["Europe/Berlin", "UTC", "America/New_York",
                                                 "not a zone", "/Berlin", "a" * 65]))
    if draw(st.booleans()):
        spec["concurrencyPolicy"] = draw(st.sampled_from(["Forbid", "Replace", "Allow", "Queue"]))
    if draw(st.booleans()):
        spec["retention"] = draw(st.fixed_dictionaries({}, optional={
            "succeeded": st.integers(-1, 5), "failed": st.integers(-1, 5), "maxAge": duration}))
    if draw(st.booleans()):
        spec["startingDeadline"] = draw(duration)
    if draw(st.integers(0, 4)) == 0:
        labels = draw(st.dictionaries(label_text, label_text, max_size=2))
        spec["template"]["metadata"] = {"labels": labels}
    return spec
