"""Importing this module registers every built-in hook type."""

from snapgroup.hooks import minio, mongodb, postgresql, writers

BUILTIN_HOOK_TYPES = (writers, postgresql, mongodb, minio)
"""The modules whose import registered the built-in hook types."""
