"""Importing this module registers every built-in hook type."""

import snapgroup.hooks.minio
import snapgroup.hooks.mongodb
import snapgroup.hooks.postgresql
import snapgroup.hooks.writers

BUILTIN_HOOK_TYPES = (
    snapgroup.hooks.writers,
    snapgroup.hooks.postgresql,
    snapgroup.hooks.mongodb,
    snapgroup.hooks.minio,
)
"""The modules whose import registered the built-in hook types."""
