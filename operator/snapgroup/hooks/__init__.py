"""Hook types: one module per type, each registering itself with `snapgroup.hooks.registry`."""
