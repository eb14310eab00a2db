"""ScheduledSnapshotGroup on the local cluster, with the operator running as `snapgroup run`.

A schedule every 10 seconds over the bleater sample: its groups succeed and are consistent,
retention keeps exactly the newest N and the pruned groups' VolumeSnapshots go with them, suspend
stops new groups, deleting the schedule leaves no child behind, and bad input is refused at apply
time or reported in the Ready condition. Kubernetes, the snapshot controller and PostgreSQL are
real; MongoDB and MinIO are the local cluster's stand-ins (see tests/localcluster).

Uses the shared `operator` and `kube` fixtures (tests/e2e/fixtures.py).
"""

from __future__ import annotations

import copy
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch

from e2e.kube import Kube
from e2e.operator_process import REPO, OperatorProcess
from snapgroup.api import GROUP, VERSION
from snapgroup.api.labels import GROUP_LABEL, SCHEDULE_LABEL
from snapgroup.api.schedule import PLURAL as SCHEDULES

pytestmark = pytest.mark.cluster

NAMESPACE = "bleater"
GROUPS = "snapshotgroups"
KEEP = 2
SAMPLE = REPO / "deploy" / "samples" / "bleater-snapshotgroup.yaml"
CRD = f"{SCHEDULES}.{GROUP}"

Items = dict[str, dict[str, Any]]


def kubectl(cluster: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig),
         "--request-timeout=30s", *args],
        input=stdin, capture_output=True, text=True, timeout=90, check=False,
    )


@pytest.fixture(scope="module")
def schedules_crd(local_cluster: Any, operator: OperatorProcess) -> None:
    """The schedule CRD (applied with the others by the `crds` fixture) is served."""
    done = kubectl(local_cluster, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
    assert done.returncode == 0, done.stderr


def schedule(name: str, **spec: Any) -> dict[str, Any]:
    """A schedule over the bleater sample's spec."""
    sample = yaml.safe_load(Path(SAMPLE).read_text())
    body: dict[str, Any] = {"schedule": "@every 10s", "template": {"spec": copy.deepcopy(sample["spec"])}}
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ScheduledSnapshotGroup",
        "metadata": {"name": name, "namespace": NAMESPACE}, "spec": body,
    }


@pytest.fixture
def schedule_name() -> Iterator[str]:
    yield f"sched-{uuid.uuid4().hex[:6]}"


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def watch_until(
    kube: Kube, group: str, version: str, plural: str, selector: str,
    predicate: Callable[[Items], bool], timeout: float, what: str,
) -> Items:
    """List, then watch, the objects matching a selector until predicate(objects by name) holds."""
    deadline = time.monotonic() + timeout
    items: Items = {}
    while True:
        listing = kube.custom.list_namespaced_custom_object(
            group, version, NAMESPACE, plural, label_selector=selector)
        items = {o["metadata"]["name"]: o for o in listing["items"]}
        if predicate(items):
            return items
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"{what}: not reached in {timeout}s; have {summary(items)}")
        stream = watch.Watch().stream(
            kube.custom.list_namespaced_custom_object, group, version, NAMESPACE, plural,
            label_selector=selector, resource_version=listing["metadata"]["resourceVersion"],
            timeout_seconds=remaining)
        for event in stream:
            obj = event["object"]
            if event["type"] == "DELETED":
                items.pop(obj["metadata"]["name"], None)
            elif event["type"] in ("ADDED", "MODIFIED"):
                items[obj["metadata"]["name"]] = obj
            if predicate(items):
                return items


def watch_schedule(kube: Kube, name: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 60) -> dict[str, Any]:
    """Watch the schedule until predicate(schedule) holds."""
    return watch_until(
        kube, GROUP, VERSION, SCHEDULES, "", lambda items: name in items and predicate(items[name]),
        timeout, what,
    )[name]


def wait_event(kube: Kube, name: str, reason: str, timeout: float = 30) -> str:
    """The message of the first Event with this reason about the object, watching until it comes."""
    selector = f"involvedObject.name={name}"
    listing = kube.core.list_namespaced_event(NAMESPACE, field_selector=selector)
    for event in listing.items:
        if event.reason == reason:
            return str(event.message)
    for change in watch.Watch().stream(
        kube.core.list_namespaced_event, NAMESPACE, field_selector=selector,
        resource_version=listing.metadata.resource_version, timeout_seconds=int(timeout),
    ):
        if change["object"].reason == reason:
            return str(change["object"].message)
    raise AssertionError(f"no {reason} Event about {name} in {timeout}s")


def watch_groups(kube: Kube, name: str, predicate: Callable[[Items], bool], timeout: float,
                 what: str) -> Items:
    return watch_until(kube, GROUP, VERSION, GROUPS, f"{SCHEDULE_LABEL}={name}", predicate, timeout, what)


def snapshots_of(kube: Kube, group: str) -> list[dict[str, Any]]:
    return kube.snapshots(NAMESPACE, f"{GROUP_LABEL}={group}")


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")


def live(items: Items) -> Items:
    return {n: o for n, o in items.items() if not o["metadata"].get("deletionTimestamp")}


def summary(items: Items) -> list[tuple[str, str]]:
    return sorted((n, phase(o)) for n, o in items.items())


def test_every_10s_takes_consistent_groups_keeps_the_newest_n_and_suspend_stops_it(
    schedules_crd: None, local_cluster: Any, kube: Kube, schedule_name: str
) -> None:
    name = schedule_name
    body = schedule(name, retention={"succeeded": KEEP, "failed": KEEP})
    kube.custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES, body)
    try:
        succeeded: dict[str, dict[str, Any]] = {}

        def enough_succeeded(items: Items) -> bool:
            succeeded.update({n: o for n, o in items.items() if phase(o) == "Succeeded"})
            return len(succeeded) >= KEEP + 2

        watch_groups(kube, name, enough_succeeded, 300, f"{KEEP + 2} succeeded groups")
        # Every group is the template's, consistent, and named after its tick.
        for group_name, group in succeeded.items():
            assert group["status"]["consistent"] is True, (group_name, group["status"])
            stamp = group["metadata"]["annotations"][f"{GROUP}/scheduled-time"]
            assert group_name == f"{name}-{stamp.replace('-', '').replace(':', '').replace('T', '')[:14]}"
            owner = group["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"]) == ("ScheduledSnapshotGroup", name)

        # Suspend: nothing new after the groups in flight finish; retention settles at N.
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SCHEDULES, name, {"spec": {"suspend": True}})
        watch_schedule(kube, name, lambda s: ready(s).get("reason") == "Suspended", "Ready: Suspended")
        settled = watch_groups(
            kube, name,
            lambda items: all(phase(o) in ("Succeeded", "Failed") for o in live(items).values())
            and sum(phase(o) == "Succeeded" for o in live(items).values()) == KEEP,
            180, f"groups finished and exactly {KEEP} succeeded kept",
        )
        kept = sorted(n for n, o in live(settled).items() if phase(o) == "Succeeded")
        every_success = sorted({*succeeded, *kept})
        assert kept == every_success[-KEEP:], "retention must keep the newest"
        # The status follows: the newest success, nothing running (written after the pruning).
        watch_schedule(
            kube, name,
            lambda s: s.get("status", {}).get("lastSuccessfulGroup") == kept[-1]
            and not s["status"].get("active"),
            f"lastSuccessfulGroup {kept[-1]} and no active group",
        )

        # The pruned groups are gone, and their VolumeSnapshots with them.
        pruned = [n for n in every_success if n not in kept]
        assert pruned
        for group_name in pruned:
            watch_until(
                kube, "snapshot.storage.k8s.io", "v1", "volumesnapshots", f"{GROUP_LABEL}={group_name}",
                lambda items: not items, 120, f"VolumeSnapshots of pruned {group_name} deleted",
            )
            assert kube.group(NAMESPACE, group_name) is None
        for group_name in kept:
            assert len(snapshots_of(kube, group_name)) == 3

        # Suspended: three ticks pass without a new group.
        known = set(live(settled))
        listing = kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, GROUPS, label_selector=f"{SCHEDULE_LABEL}={name}")
        added = [
            e["object"]["metadata"]["name"]
            for e in watch.Watch().stream(
                kube.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, GROUPS,
                label_selector=f"{SCHEDULE_LABEL}={name}",
                resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=30)
            if e["type"] == "ADDED" and e["object"]["metadata"]["name"] not in known
        ]
        assert added == [], "a suspended schedule took groups"
    finally:
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES, name)


def test_deleting_the_schedule_leaves_no_children(
    schedules_crd: None, kube: Kube, schedule_name: str
) -> None:
    name = schedule_name
    kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, SCHEDULES, schedule(name, runOnCreate=True))
    taken = watch_groups(kube, name, lambda items: len(items) >= 1, 60, "a first group")
    kube.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES, name)
    watch_groups(kube, name, lambda items: not items, 240, "every group of the deleted schedule gone")
    for group_name in taken:
        watch_until(
            kube, "snapshot.storage.k8s.io", "v1", "volumesnapshots", f"{GROUP_LABEL}={group_name}",
            lambda items: not items, 120, f"VolumeSnapshots of {group_name} deleted",
        )
    assert kube.custom_object(NAMESPACE, SCHEDULES, name) is None


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (lambda s: s["spec"].update(schedule="every ten seconds"), "spec.schedule"),
        (lambda s: s["spec"].update(concurrencyPolicy="Sometimes"), "spec.concurrencyPolicy"),
        (lambda s: s["spec"]["template"].update(metadata={"labels": {SCHEDULE_LABEL: "x"}}),
         "is set by the operator"),
        (lambda s: s["spec"]["template"]["spec"]["services"][0].pop("pvcs"),
         "exactly one of pvcs and pvcSelector"),
    ],
    ids=["cron-typo", "unknown-policy", "schedule-label-in-template", "template-without-pvcs"],
)
def test_api_server_refuses_a_bad_schedule_at_apply_time(
    schedules_crd: None, local_cluster: Any, schedule_name: str, spoil: Callable[[dict[str, Any]], None],
    words: str,
) -> None:
    body = schedule(schedule_name)
    spoil(body)
    done = kubectl(local_cluster, "apply", "-f", "-", stdin=yaml.safe_dump(body))
    assert done.returncode != 0, "the API server accepted it"
    assert words in done.stderr


def test_cron_values_out_of_range_are_reported_in_ready(
    schedules_crd: None, kube: Kube, schedule_name: str
) -> None:
    name = schedule_name
    kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, SCHEDULES, schedule(name, schedule="61 * * * *"))
    try:
        condition = ready(watch_schedule(kube, name, lambda s: bool(ready(s)), "the Ready condition"))
        assert (condition["status"], condition["reason"]) == ("False", "InvalidSchedule")
        assert "61" in condition["message"]
        assert wait_event(kube, name, "InvalidSchedule") == condition["message"]
        assert not kube.custom.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, GROUPS, label_selector=f"{SCHEDULE_LABEL}={name}")["items"]
        # Fixed in place (as a GitOps tool would): Ready again, with the next tick.
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SCHEDULES, name, {"spec": {"schedule": "0 3 * * *"}})
        fixed = watch_schedule(kube, name, lambda s: ready(s).get("status") == "True", "Ready again")
        assert fixed["status"]["nextScheduleTime"].endswith("T03:00:00Z")
    finally:
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES, name)


def condition_of(obj: dict[str, Any], kind: str) -> str | None:
    found = next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)
    return None if found is None else str(found["status"])


def test_inconsistent_groups_never_push_out_a_consistent_one_nor_the_newest_verified(
    schedules_crd: None, kube: Kube, schedule_name: str
) -> None:
    """Retention keeps one success and one other group; the template changes on the way:
    verified groups first, then groups made inconsistent (PostgreSQL's lastRecord reads an hour
    ahead, a record "after" every cut), then good groups that nobody verifies."""
    name = schedule_name
    body = schedule(name, retention={"succeeded": 1, "failed": 1})
    sample = copy.deepcopy(body["spec"]["template"]["spec"])
    kube.custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, SCHEDULES, {**body, "spec": {**body["spec"], "template": {
            "spec": {**sample, "verify": "Restore"}}}})
    seen: Items = {}

    def remember(items: Items) -> Items:
        seen.update(items)
        return items

    def template(spec: dict[str, Any]) -> None:
        kube.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SCHEDULES, name, {"spec": {"template": {"spec": spec}}})

    try:
        watch_groups(kube, name, lambda items: any(condition_of(o, "Verified") == "True"
                                                   for o in remember(items).values()),
                     240, "a group verified by restoring")
        late = copy.deepcopy(sample)
        postgres = next(s for s in late["services"] if s["type"] == "postgresql")
        postgres["lastRecord"] = {"query": "SELECT now() + interval '1 hour'"}
        template({**late, "verify": "None"})

        def inconsistent(items: Items) -> list[str]:
            """Every inconsistent group seen so far (retention prunes them as they come)."""
            remember(items)
            return [n for n, o in seen.items()
                    if phase(o) == "Succeeded" and (o.get("status") or {}).get("consistent") is False]

        watch_groups(kube, name, lambda items: len(inconsistent(items)) >= 3, 240,
                     "three inconsistent groups")
        template({**sample, "verify": "None"})

        def verified() -> str:
            return max(n for n, o in seen.items() if condition_of(o, "Verified") == "True")

        def settled(items: Items) -> bool:
            remember(items)
            now = live(items)
            good = [n for n, o in now.items() if phase(o) == "Succeeded"
                    and (o.get("status") or {}).get("consistent") is True and n > verified()
                    and condition_of(o, "Verified") is None]
            others = [n for n, o in now.items() if (o.get("status") or {}).get("consistent") is False]
            return bool(good) and len(others) <= 1 and all(
                phase(o) in ("Succeeded", "Failed") for o in now.values())

        final = live(watch_groups(kube, name, settled, 240, "a newer unverified success, retention settled"))
        newest_verified = verified()
        # The fault, proven: inconsistent groups ran and all but one were pruned.
        assert len(inconsistent(seen)) >= 3
        gone = [n for n in inconsistent(seen) if n not in final]
        assert len(gone) >= 2, (summary(final), inconsistent(seen))
        # The newest verified group outlived retention.succeeded=1 with a newer success there.
        assert newest_verified in final, (newest_verified, summary(final))
        newest_good = max(n for n, o in final.items() if (o.get("status") or {}).get("consistent") is True)
        assert newest_good > newest_verified
        # Every success kept is the newest success or the newest verified one.
        kept_good = sorted(n for n, o in final.items() if (o.get("status") or {}).get("consistent") is True)
        assert kept_good == sorted({newest_good, newest_verified}), summary(final)
        watch_schedule(kube, name, lambda s: s.get("status", {}).get("lastSuccessfulGroup") == newest_good,
                       f"lastSuccessfulGroup {newest_good}")
    finally:
        kube.custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SCHEDULES, name)
