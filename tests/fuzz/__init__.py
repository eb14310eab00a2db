"""Hypothesis strategies for SnapshotGroup and ScheduledSnapshotGroup specs, valid and invalid."""
