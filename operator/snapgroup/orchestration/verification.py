"""Checking a finished group the way an automated checker would, from its status alone."""

from __future__ import annotations

from dataclasses import dataclass

from snapgroup.api.base import stamp
from snapgroup.api.snapshotgroup import Phase, SnapshotGroupStatus
from snapgroup.orchestration.snapshots import consistency


@dataclass(frozen=True)
class Check:
    """One line of a verification."""

    subject: str
    check: str
    passed: bool
    detail: str


def verify(status: SnapshotGroupStatus) -> list[Check]:
    """Every check a backup must pass: succeeded, cut, ready, consistent, writers restored."""
    checks = [Check("group", "succeeded", status.phase == Phase.SUCCEEDED,
                    status.message or status.phase.value)]
    earliest = status.earliest_snapshot_time
    for svc in status.services:
        for snap in svc.volume_snapshots:
            checks.append(Check(
                f"{svc.name}/{snap.name}", "cut", snap.creation_time is not None,
                f"creationTime {stamp(snap.creation_time)}" if snap.creation_time
                else (snap.error or "no creationTime")))
            checks.append(Check(f"{svc.name}/{snap.name}", "readyToUse", bool(snap.ready_to_use),
                                f"restoreSize {snap.restore_size}" if snap.ready_to_use
                                else (snap.error or "not ready")))
        if svc.last_record_time is None:
            checks.append(Check(svc.name, "newest record <= earliest cut", True,
                                "no record time recorded; not checked"))
        else:
            ok = earliest is not None and svc.last_record_time <= earliest
            checks.append(Check(
                svc.name, "newest record <= earliest cut", ok,
                f"newest {stamp(svc.last_record_time)}, earliest cut "
                + (stamp(earliest) if earliest else "none")))
    for writer in status.writers:
        checks.append(Check(f"{writer.kind}/{writer.name}", "restored", writer.restored_at is not None,
                            writer.note or f"back to {writer.original_replicas} replica(s)"))
    verdict = consistency(status.services, earliest)
    checks.append(Check("group", "consistent", verdict.status == "True", verdict.message))
    return checks + restored_checks(status)


def restored_checks(status: SnapshotGroupStatus) -> list[Check]:
    """The latest verification by restoring, once it answered: each service, and the verdict."""
    verified = next((c for c in status.conditions if c.type == "Verified"), None)
    if status.verification is None or verified is None or verified.status == "Unknown":
        return []
    checks = [Check(s.name, "restored holds the recorded newest record", s.matches is not False
                    and s.seconds is not None, s.message) for s in status.verification.services]
    return [*checks, Check("group", "verified by restoring", verified.status == "True",
                           verified.message or verified.reason or verified.status)]
