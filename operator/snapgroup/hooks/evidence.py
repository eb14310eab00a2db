"""What a service's evidence says about its newest-record reading: the server's clock skew and
whether the read saw everything.

Both are written into `ServiceStatus.evidence` (strings, like all evidence) by the service hooks
and read back by the consistency verdict, so a checker reading only the status judges the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from snapgroup.ports import ClockSample

CLOCK_SKEW = "clockSkewSeconds"
"""Server clock minus operator clock, in seconds."""
CLOCK_SKEW_UNCERTAINTY = "clockSkewUncertaintySeconds"
"""How far the true skew can be from the measured one (half the round trip plus resolution)."""
RECORD_COMPLETE = "lastRecordComplete"
"""``false`` when the newest-record read stopped at a bound before seeing every record."""
RECORD_SCANNED = "lastRecordScanned"
"""How many records (objects) the newest-record read looked at."""


@dataclass(frozen=True)
class ClockSkew:
    """A server's clock against the operator's."""

    seconds: float
    """Server minus operator: positive when the server's clock is ahead."""
    uncertainty: float
    """The true skew lies within seconds ± uncertainty."""

    @property
    def bound(self) -> float:
        """The largest the skew can be, either way."""
        return abs(self.seconds) + self.uncertainty

    def evidence(self) -> dict[str, str]:
        """The skew as evidence entries."""
        return {CLOCK_SKEW: f"{self.seconds:.6f}", CLOCK_SKEW_UNCERTAINTY: f"{self.uncertainty:.6f}"}


def skew_of(sample: ClockSample) -> ClockSkew:
    """The skew a clock sample shows: the server read its clock somewhere between before and
    after, so the midpoint is the best guess and half the interval the doubt; a truncated clock
    (resolution r) was r/2 ahead of what it said, on average, with r/2 more doubt."""
    half_trip = (sample.after - sample.before).total_seconds() / 2
    midpoint = sample.before + (sample.after - sample.before) / 2
    seconds = (sample.server - midpoint).total_seconds() + sample.resolution / 2
    return ClockSkew(seconds, half_trip + sample.resolution / 2)


def skew_from(evidence: Mapping[str, str]) -> ClockSkew | None:
    """The skew recorded in evidence, or None when none was measured (or it is unreadable)."""
    try:
        return ClockSkew(float(evidence[CLOCK_SKEW]), float(evidence[CLOCK_SKEW_UNCERTAINTY]))
    except (KeyError, ValueError):
        return None


def scan_evidence(scanned: int, complete: bool) -> dict[str, str]:
    """Evidence of a bounded newest-record read."""
    return {RECORD_SCANNED: str(scanned), RECORD_COMPLETE: "true" if complete else "false"}


def record_incomplete(evidence: Mapping[str, str]) -> bool:
    """The newest-record read stopped at a bound: the newest record is unknown."""
    return evidence.get(RECORD_COMPLETE) == "false"
