"""The SnapshotGroup API: pydantic models are the single source of truth; CRDs are generated from them."""

GROUP = "snapgroup.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
