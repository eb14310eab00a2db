"""VolumeSnapshots of a group: deterministic names, manifests, and the consistency verdict."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from snapgroup.api import API_VERSION
from snapgroup.api.base import ConditionStatus, stamp
from snapgroup.api.labels import (
    ATTEMPT_LABEL,
    GROUP_LABEL,
    GROUP_UID_LABEL,
    SERVICE_LABEL,
    label_value,
)
from snapgroup.api.snapshotgroup import KIND, ServiceStatus
from snapgroup.hooks.evidence import ClockSkew, record_incomplete, skew_from

SNAPSHOT_API_VERSION = "snapshot.storage.k8s.io/v1"
_MAX_NAME = 253


def snapshot_name(group: str, service: str, pvc: str, attempt: int = 1) -> str:
    """Deterministic VolumeSnapshot name: ``<group>-<service>-<pvc>`` (``-a<N>`` appended from
    the second attempt on), hashed down when too long."""
    name = f"{group}-{service}-{pvc}" + (f"-a{attempt}" if attempt > 1 else "")
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11]}-{digest}"


def group_selector(group_uid: str, attempt: int | None = None) -> str:
    """Label selector of every VolumeSnapshot one group (by uid: names are reused) created, or of
    one of its attempts."""
    selector = f"{GROUP_UID_LABEL}={group_uid}"
    return selector if attempt is None else f"{selector},{ATTEMPT_LABEL}={attempt}"


def snapshot_manifest(
    *, namespace: str, group: str, group_uid: str, service: str, pvc: str, snapshot_class: str,
    attempt: int = 1,
) -> dict[str, Any]:
    """The VolumeSnapshot for one claim, labelled and owned by its group."""
    return {
        "apiVersion": SNAPSHOT_API_VERSION,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": snapshot_name(group, service, pvc, attempt),
            "namespace": namespace,
            # A group's name may be 253 characters long, a label value 63.
            "labels": {GROUP_LABEL: label_value(group), GROUP_UID_LABEL: group_uid, SERVICE_LABEL: service,
                       ATTEMPT_LABEL: str(attempt)},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": KIND, "name": group, "uid": group_uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "volumeSnapshotClassName": snapshot_class,
            "source": {"persistentVolumeClaimName": pvc},
        },
    }


@dataclass(frozen=True)
class Verdict:
    """Whether every service's newest record is not newer than the earliest cut."""

    status: ConditionStatus
    reason: str
    message: str
    newer: list[str]
    """Services holding records newer than the earliest cut."""


def consistency(services: list[ServiceStatus], earliest: datetime | None) -> Verdict:
    """Judge the group: Consistent when every checked lastRecordTime <= earliest creationTime.

    A service's measured clock skew (its evidence) widens its record time to a span: a record
    beyond the cut by more than the skew is False; one within the skew of the cut cannot be
    placed, and neither can a newest record whose read stopped at a bound: Unknown.
    """
    if earliest is None:
        return Verdict("Unknown", "NotCut", "no snapshot was cut", [])
    checked = [s for s in services if s.last_record_time is not None]
    skew = {s.name: (skew_from(s.evidence) or ClockSkew(0.0, 0.0)).bound for s in checked}
    newer = [s for s in checked if s.last_record_time is not None
             and s.last_record_time - timedelta(seconds=skew[s.name]) > earliest]
    if newer:
        detail = "; ".join(f"{s.name} has a record at {stamp(s.last_record_time)}"
                           for s in newer if s.last_record_time is not None)
        return Verdict(
            "False", "RecordsNewerThanCut",
            f"records newer than the earliest cut ({stamp(earliest)}): {detail}; "
            "a writer is probably missing from spec.writers", [s.name for s in newer])
    incomplete = [s.name for s in services if record_incomplete(s.evidence)]
    if incomplete:
        return Verdict(
            "Unknown", "LastRecordIncomplete",
            f"the newest record of {', '.join(incomplete)} is unknown: the read stopped at "
            "lastRecord.maxObjects before the end; narrow lastRecord.prefix or startAfter", [])
    unsure = [s for s in checked if s.last_record_time is not None and skew[s.name] > 0
              and s.last_record_time + timedelta(seconds=skew[s.name]) > earliest]
    if unsure:
        detail = "; ".join(
            f"{s.name}'s clock differs from the operator's by up to {skew[s.name]:.3f}s, and its "
            f"newest record ({stamp(s.last_record_time)}) is closer to the cut than that"
            for s in unsure if s.last_record_time is not None)
        return Verdict("Unknown", "ClockSkewTooLarge",
                       f"cannot tell records from the cut ({stamp(earliest)}): {detail}", [])
    if not checked:
        return Verdict("Unknown", "NoLastRecord",
                       "no service has lastRecord configured, so nothing could be checked", [])
    unchecked = [s.name for s in services if s.last_record_time is None]
    note = f"; not checked (no lastRecord or empty): {', '.join(unchecked)}" if unchecked else ""
    return Verdict(
        "True", "AllRecordsBeforeCut",
        f"every service's newest record is at or before the earliest cut{note}", [])
