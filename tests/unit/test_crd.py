"""The CRDs generated from the API models: committed, structural, documented, and validating."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from snapgroup.api import API_VERSION
from snapgroup.api.crd import (
    RESOURCES,
    SNAPSHOT_GROUP,
    CustomResource,
    NonStructuralSchema,
    check_crds,
    check_structural,
    render,
    structural_schema,
    write_crds,
)
from snapgroup.api.snapshotgroup import ServiceTarget, SnapshotGroupSpec, SnapshotGroupStatus

CRDS = Path(__file__).resolve().parents[2] / "crds"

# The bleater example of the design (section 3), as a user would apply it.
BLEATER = yaml.safe_load("""
apiVersion: snapgroup.dev/v1alpha1
kind: SnapshotGroup
metadata: {name: bleater-nightly, namespace: bleater}
spec:
  volumeSnapshotClassName: csi-hostpath-snapclass
  freezeBudget: 60s
  writers:
    - kind: Deployment
      name: data-writer
  services:
    - name: postgres
      type: postgresql
      pvcs: [postgres-data]
      connection: {secretRef: {name: postgres-credentials}}
      lastRecord: {table: events, column: created_at}
    - name: mongodb
      type: mongodb
      pvcs: [mongodb-data]
      connection: {secretRef: {name: mongodb-credentials}}
      lastRecord: {database: bleater, collection: events, field: created_at}
    - name: minio
      type: minio
      pvcs: [minio-data]
      connection: {secretRef: {name: minio-credentials}}
      lastRecord: {bucket: bleater}
  hooks: {pre: [], post: []}
""")


def committed(resource: CustomResource) -> dict[str, Any]:
    text = (CRDS / resource.file_name).read_text(encoding="utf-8")
    manifest: dict[str, Any] = yaml.safe_load(text)
    return manifest


def schema_of(resource: CustomResource) -> dict[str, Any]:
    version = committed(resource)["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path, depth first."""
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}.*")


def test_committed_crds_match_the_models() -> None:
    differing = check_crds(CRDS)
    assert not differing, (
        f"{', '.join(differing)} in crds/ differ from the API models; run `make crds` and commit"
    )


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind)
def test_schema_is_structural(resource: CustomResource) -> None:
    schema = schema_of(resource)
    for path, node in nodes(schema):
        leftovers = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title"} & set(node)
        assert not leftovers, f"{path} keeps {sorted(leftovers)}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), (
            f"{path} has no type"
        )
        assert node.get("additionalProperties") not in (False, True), (
            f"{path} has a boolean additionalProperties"
        )
        assert "uniqueItems" not in node, path
    assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert schema["required"] == ["spec"]
    check_structural(schema)


def test_every_spec_field_is_described_for_kubectl_explain() -> None:
    spec = schema_of(SNAPSHOT_GROUP)["properties"]["spec"]
    fields = [
        (path, node) for path, node in nodes(spec, ".spec")
        if not path.endswith(("[]", ".*"))  # list items and map values are not fields
    ]
    assert len(fields) > 30
    undescribed = [path for path, node in fields if not node.get("description")]
    assert not undescribed


def test_descriptions_come_from_the_attribute_docstrings() -> None:
    spec = schema_of(SNAPSHOT_GROUP)["properties"]["spec"]
    freeze_budget = spec["properties"]["freezeBudget"]["description"]
    # Docstring line breaks are joined: kubectl explain wraps the text itself.
    assert freeze_budget.startswith("Longest time writers may stay isolated and services quiesced;")
    assert "\n" not in freeze_budget
    assert "FreezeBudgetExceeded" in freeze_budget


def test_snapshotgroup_names_and_printer_columns() -> None:
    crd = committed(SNAPSHOT_GROUP)
    assert crd["metadata"]["name"] == "snapshotgroups.snapgroup.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == (
        "SnapshotGroup", "snapshotgroups", "snapshotgroup",
    )
    assert names["shortNames"] == ["sg", "snapgroup"]
    assert names["categories"] == ["snapgroup"]
    version = crd["spec"]["versions"][0]
    assert f"{crd['spec']['group']}/{version['name']}" == API_VERSION
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [(n, c["jsonPath"], c["type"]) for n, c in columns.items()] == [
        ("Phase", ".status.phase", "string"),
        ("Consistent", ".status.consistent", "boolean"),
        ("Verified", ".status.verified", "boolean"),
        ("Freeze", ".status.freeze.seconds", "number"),
        ("Snapshots", ".status.snapshotsReady", "string"),
        ("Age", ".metadata.creationTimestamp", "date"),
        ("Message", ".status.message", "string"),
    ]
    assert "seconds" in columns["Freeze"]["description"].lower()
    assert columns["Message"]["priority"] == 1
    assert all("priority" not in c for n, c in columns.items() if n != "Message")


def test_printer_columns_point_at_status_fields() -> None:
    status = schema_of(SNAPSHOT_GROUP)["properties"]["status"]
    version = committed(SNAPSHOT_GROUP)["spec"]["versions"][0]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].split(".")[1:]
        if path[0] != "status":
            continue
        node = status
        for name in path[1:]:
            node = node["properties"][name]
        assert node["type"] == column["type"], column["name"]


def _model_rules(model: type[BaseModel]) -> Any:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    return extra["x-kubernetes-validations"]


def test_cel_rules_of_the_models_are_carried() -> None:
    spec = schema_of(SNAPSHOT_GROUP)["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == _model_rules(SnapshotGroupSpec)
    assert {"rule": "self == oldSelf"}.items() <= spec["x-kubernetes-validations"][0].items()
    service = spec["properties"]["services"]["items"]
    assert service["x-kubernetes-validations"] == _model_rules(ServiceTarget)


def test_list_and_map_markers_are_carried() -> None:
    status = schema_of(SNAPSHOT_GROUP)["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    evidence = status["services"]["items"]["properties"]["evidence"]
    assert evidence["additionalProperties"] == {"type": "string"}
    undo = status["hooks"]["items"]["properties"]["undo"]
    assert undo["x-kubernetes-preserve-unknown-fields"] is True
    assert undo["nullable"] is True
    params = schema_of(SNAPSHOT_GROUP)["properties"]["spec"]["properties"]["hooks"]["properties"][
        "pre"]["items"]["properties"]["params"]
    assert params == {
        "description": params["description"], "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_optional_fields_are_nullable_and_defaults_kept() -> None:
    spec = schema_of(SNAPSHOT_GROUP)["properties"]["spec"]["properties"]
    assert spec["volumeSnapshotClassName"]["nullable"] is True
    assert "default" not in spec["volumeSnapshotClassName"]
    assert spec["freezeBudget"]["default"] == "60s"
    assert spec["freezeBudget"]["pattern"]
    assert spec["snapshotDeletionPolicy"] == {
        "description": spec["snapshotDeletionPolicy"]["description"],
        "type": "string", "enum": ["Delete", "Retain"], "default": "Delete",
    }
    assert spec["services"]["minItems"] == 1
    status = schema_of(SNAPSHOT_GROUP)["properties"]["status"]["properties"]
    assert status["startTime"]["format"] == "date-time"
    assert status["phase"]["enum"][0] == "Pending"


def test_bleater_sample_is_a_valid_spec() -> None:
    spec = SnapshotGroupSpec.model_validate(BLEATER["spec"])
    assert [s.name for s in spec.services] == ["postgres", "mongodb", "minio"]
    assert spec.wire()["services"][0]["lastRecord"] == {"table": "events", "column": "created_at"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: s["writers"][0].update(selector={"matchLabels": {"app": "w"}}),
         ("writers", 0), "exactly one of name and selector"),
        (lambda s: s["services"][0]["lastRecord"].pop("column"),
         ("services", 0), "needs table and column, or query"),
        (lambda s: s["services"][2].pop("pvcs"),
         ("services", 2), "exactly one of pvcs and pvcSelector"),
        (lambda s: s.update(freezeBudget="soon"), ("freezeBudget",), "pattern"),
        (lambda s: s["services"][1].update(type="redis"), ("services", 1, "type"), "postgresql"),
    ],
    ids=["writer-name-and-selector", "lastrecord-without-column", "no-pvcs", "freeze-soon",
         "unknown-type"],
)
def test_bad_spec_is_rejected_naming_the_field(
    change: Any, field: tuple[str | int, ...], words: str
) -> None:
    spec = yaml.safe_load(yaml.safe_dump(BLEATER["spec"]))
    change(spec)
    with pytest.raises(ValidationError) as caught:
        SnapshotGroupSpec.model_validate(spec)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [field]
    assert words in errors[0]["msg"]


def test_status_schema_accepts_what_the_model_writes() -> None:
    status = SnapshotGroupStatus.model_validate({
        "phase": "Succeeded", "consistent": True, "snapshotsReady": "3/3",
        "freeze": {"seconds": 0.84},
        "conditions": [{"type": "Consistent", "status": "True", "reason": "AllRecordsBeforeCut",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
    }).wire()
    properties = schema_of(SNAPSHOT_GROUP)["properties"]["status"]["properties"]
    assert set(status) <= set(properties)


# --- the generator on models of its own -------------------------------------------------------


class Knob(BaseModel):
    """A knob."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    mode: Literal["fast"] = "fast"
    """Only fast."""
    size: int | str = 1
    """A quantity."""
    keep: int = Field(default=3, gt=0)
    """How many to keep."""
    tags: set[str] = Field(default_factory=set)
    """Tags."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Anything."""


def test_generator_rewrites_pydantic_idioms() -> None:
    schema = structural_schema(Knob)
    check_structural(schema)
    properties = schema["properties"]
    assert properties["mode"] == {
        "description": "Only fast.", "type": "string", "enum": ["fast"], "default": "fast",
    }
    assert properties["size"]["x-kubernetes-int-or-string"] is True
    assert "type" not in properties["size"]
    assert properties["keep"]["minimum"] == 0
    assert properties["keep"]["exclusiveMinimum"] is True
    assert properties["tags"] == {"description": "Tags.", "type": "array", "items": {"type": "string"}}
    assert properties["extra"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "additionalProperties" not in properties["extra"]


class Tree(BaseModel):
    """Recursive: cannot be inlined."""

    children: list[Tree] = Field(default_factory=list)


class Cat(BaseModel):
    meow: str


class Dog(BaseModel):
    woof: str


class Pet(BaseModel):
    animal: Cat | Dog


@pytest.mark.parametrize(
    ("model", "problem"),
    [(Tree, "refers to itself"), (Pet, "union of several types")],
)
def test_generator_refuses_what_cannot_be_structural(model: type[BaseModel], problem: str) -> None:
    with pytest.raises(NonStructuralSchema, match=problem):
        structural_schema(model)


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": {"description": "untyped"}}}, r"\.a: has no type"),
        ({"type": "string", "pattern": "^[0-9]+s$", "default": "soon"}, "does not match"),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "default": {"b": "x"}},
         "would be pruned"),
        ({"type": "array"}, "without items"),
        ({"type": "string", "default": None}, "not nullable"),
        ({"anyOf": [{"type": "string"}]}, "anyOf"),
    ],
)
def test_structural_check_catches_what_the_api_server_would_refuse(
    schema: dict[str, Any], problem: str
) -> None:
    with pytest.raises(NonStructuralSchema, match=problem):
        check_structural(schema)


def test_write_and_check_crds_report_drift(tmp_path: Path) -> None:
    written = write_crds(tmp_path)
    assert sorted(p.name for p in written) == sorted(r.file_name for r in RESOURCES)
    assert "snapgroup.dev_snapshotgroups.yaml" in [p.name for p in written]
    for resource in RESOURCES:
        text = (tmp_path / resource.file_name).read_text(encoding="utf-8")
        assert text.startswith(
            "# Generated from snapgroup.api models by `snapgroup crd`; do not edit.\n"
        )
        assert "&id" not in text, "shared sub-schemas must be written out, not anchored"
        assert yaml.safe_load(text) == resource.manifest()
    assert check_crds(tmp_path) == []

    group_file = tmp_path / SNAPSHOT_GROUP.file_name
    text = group_file.read_text(encoding="utf-8")
    group_file.write_text(text.replace("Immutable once", "Mutable once"), encoding="utf-8")
    (tmp_path / "snapgroup.dev_oldthings.yaml").write_text("{}\n", encoding="utf-8")
    (tmp_path / "kustomization.yaml").write_text("resources: []\n", encoding="utf-8")
    assert check_crds(tmp_path) == ["snapgroup.dev_oldthings.yaml", SNAPSHOT_GROUP.file_name]
    group_file.unlink()
    assert SNAPSHOT_GROUP.file_name in check_crds(tmp_path)


def test_rendering_is_stable() -> None:
    assert render(SNAPSHOT_GROUP) == render(SNAPSHOT_GROUP)
    manifest = SNAPSHOT_GROUP.manifest()
    assert list(manifest) == ["apiVersion", "kind", "metadata", "spec"]
    # The manifest does not share lists between schema nodes; editing one leaves others intact.
    items = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["hooks"]["properties"]
    items["pre"]["items"]["required"].append("x")
    assert items["post"]["items"]["required"] == ["name", "type"]
