"""snapgroup: application-consistent snapshots of several stateful services at once."""

__version__ = "0.1.0"
