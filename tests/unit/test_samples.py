"""The samples a user copies from validate against the API models."""

from pathlib import Path

import pytest
import yaml

from snapgroup.api.schedule import ScheduledSnapshotGroupSpec
from snapgroup.api.snapshotgroup import SnapshotGroupSpec

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
MODELS = {"SnapshotGroup": SnapshotGroupSpec, "ScheduledSnapshotGroup": ScheduledSnapshotGroupSpec}


@pytest.mark.parametrize("path", sorted(SAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_sample_validates(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in MODELS]
    assert docs, f"{path.name} holds no snapgroup resource"
    for doc in docs:
        MODELS[doc["kind"]].model_validate(doc["spec"])
