"""CustomResourceDefinitions generated from the API models.

The pydantic models are the single source of truth: this module rewrites their JSON schema into
the structural OpenAPI v3 schema the API server demands (every ``$ref`` inlined, ``nullable``
instead of ``anyOf [X, null]``, ``enum`` instead of ``const``, no ``additionalProperties: false``),
checks the result really is structural, and renders one CRD manifest per resource. The YAML in
``crds/`` is written by `write_crds` and compared by `check_crds`.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from snapgroup.api import GROUP, VERSION
from snapgroup.api.restore import SnapshotGroupRestoreSpec, SnapshotGroupRestoreStatus
from snapgroup.api.schedule import ScheduledSnapshotGroupSpec, ScheduledSnapshotGroupStatus
from snapgroup.api.snapshotgroup import SnapshotGroupSpec, SnapshotGroupStatus

HEADER = "# Generated from snapgroup.api models by `snapgroup crd`; do not edit.\n"
CATEGORY = "snapgroup"

ColumnType = Literal["string", "integer", "number", "boolean", "date"]


class NonStructuralSchema(ValueError):
    """A model cannot be expressed as a structural schema; the message names the schema path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get``."""

    name: str
    json_path: str
    type: ColumnType
    description: str
    priority: int = 0
    """0 shows in ``kubectl get``; 1 only with ``-o wide``."""

    def manifest(self) -> dict[str, Any]:
        """The column as an ``additionalPrinterColumns`` entry."""
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class CustomResource:
    """A namespaced custom resource of the snapgroup.dev API, described by its models."""

    kind: str
    spec: type[BaseModel]
    status: type[BaseModel]
    short_names: tuple[str, ...] = ()
    columns: tuple[PrinterColumn, ...] = ()
    categories: tuple[str, ...] = (CATEGORY,)
    plural: str = ""
    """Defaults to the lower-cased kind plus ``s``."""
    singular: str = ""
    """Defaults to the lower-cased kind."""
    description: str = ""
    """Defaults to the docstring of the module defining the spec model."""

    def __post_init__(self) -> None:
        # Frozen dataclass: fill the derived names once, here, so every reader sees the same ones.
        if not self.plural:
            object.__setattr__(self, "plural", self.kind.lower() + "s")
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())
        if not self.description:
            module = inspect.getmodule(self.spec)
            doc = inspect.cleandoc(module.__doc__ or "") if module else ""
            object.__setattr__(self, "description", doc or f"A {self.kind}.")

    @property
    def name(self) -> str:
        """Name of the CustomResourceDefinition, ``<plural>.<group>``."""
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        """File the CRD is written to in ``crds/``."""
        return f"{GROUP}_{self.plural}.yaml"

    def openapi_schema(self) -> dict[str, Any]:
        """The structural schema of the whole object: apiVersion, kind, metadata, spec, status."""
        schema: dict[str, Any] = {
            "description": self.description,
            "type": "object",
            "properties": {
                "apiVersion": {
                    "description": "Versioned schema of this representation of the object, "
                    f"here {GROUP}/{VERSION}.",
                    "type": "string",
                },
                "kind": {
                    "description": f"Kind of the object, here {self.kind}.",
                    "type": "string",
                },
                "metadata": {"type": "object"},
                "spec": structural_schema(self.spec),
                "status": structural_schema(self.status),
            },
            "required": ["spec"],
        }
        check_structural(schema)
        return schema

    def manifest(self) -> dict[str, Any]:
        """The CustomResourceDefinition (apiextensions.k8s.io/v1) as a dict."""
        names: dict[str, Any] = {
            "kind": self.kind,
            "listKind": f"{self.kind}List",
            "plural": self.plural,
            "singular": self.singular,
        }
        if self.short_names:
            names["shortNames"] = list(self.short_names)
        if self.categories:
            names["categories"] = list(self.categories)
        version: dict[str, Any] = {
            "name": VERSION,
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
        }
        if self.columns:
            version["additionalPrinterColumns"] = [c.manifest() for c in self.columns]
        version["schema"] = {"openAPIV3Schema": self.openapi_schema()}
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.name,
                "labels": {"app.kubernetes.io/part-of": "snapgroup"},
            },
            "spec": {
                "group": GROUP,
                "names": names,
                "scope": "Namespaced",
                "versions": [version],
            },
        }


SNAPSHOT_GROUP_COLUMNS = (
    PrinterColumn("Phase", ".status.phase", "string", "Where the group is."),
    PrinterColumn(
        "Consistent", ".status.consistent", "boolean",
        "No record in any service is newer than the earliest snapshot.",
    ),
    PrinterColumn(
        "Verified", ".status.verified", "boolean",
        "Restored into scratch claims, every service started and held what the group recorded.",
    ),
    PrinterColumn(
        "Freeze", ".status.freeze.seconds", "number",
        "Seconds writers were isolated and services quiesced.",
    ),
    PrinterColumn("Snapshots", ".status.snapshotsReady", "string", "Ready snapshots out of all."),
    PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since the group was created."),
    PrinterColumn("Message", ".status.message", "string", "Latest news.", priority=1),
)

SNAPSHOT_GROUP = CustomResource(
    "SnapshotGroup", SnapshotGroupSpec, SnapshotGroupStatus,
    short_names=("sg", "snapgroup"), columns=SNAPSHOT_GROUP_COLUMNS,
)

SNAPSHOT_GROUP_RESTORE = CustomResource(
    "SnapshotGroupRestore", SnapshotGroupRestoreSpec, SnapshotGroupRestoreStatus,
    short_names=("sgr",),
    columns=(
        PrinterColumn("Group", ".spec.groupName", "string", "The SnapshotGroup restored."),
        PrinterColumn("Target", ".spec.targetNamespace", "string", "The namespace cloned into."),
        PrinterColumn("InPlace", ".spec.inPlace", "boolean", "Restored into its own namespace."),
        PrinterColumn("Phase", ".status.phase", "string", "Where the restore is."),
        PrinterColumn("Seconds", ".status.seconds", "number", "From start to the restored services serving."),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since it was created."),
        PrinterColumn("Message", ".status.message", "string", "Latest news.", priority=1),
    ),
)

RESOURCES: tuple[CustomResource, ...] = (
    # One entry per kind of the API; each becomes crds/<group>_<plural>.yaml.
    SNAPSHOT_GROUP,
    SNAPSHOT_GROUP_RESTORE,
    CustomResource(
        "ScheduledSnapshotGroup", ScheduledSnapshotGroupSpec, ScheduledSnapshotGroupStatus,
        short_names=("ssg",),
        columns=(
            PrinterColumn("Schedule", ".spec.schedule", "string", "When groups are taken."),
            PrinterColumn("Suspend", ".spec.suspend", "boolean", "No new groups while true."),
            PrinterColumn(
                "Ready", '.status.conditions[?(@.type=="Ready")].status', "string",
                "The schedule is valid and taking groups.",
            ),
            PrinterColumn(
                "Last Schedule", ".status.lastScheduleTime", "date", "Time since the newest tick handled.",
            ),
            PrinterColumn(
                "Last Success", ".status.lastSuccessfulGroup", "string",
                "The newest group that succeeded.",
            ),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since it was created."),
            PrinterColumn("Next", ".status.nextScheduleTime", "string", "The next tick.", priority=1),
            PrinterColumn(
                "Message", '.status.conditions[?(@.type=="Ready")].message', "string",
                "What the Ready condition says.", priority=1,
            ),
        ),
    ),
)


# --- pydantic JSON schema -> structural OpenAPI v3 schema ---------------------------------------

# Keys of apiextensions.k8s.io/v1 JSONSchemaProps that the generated schemas may carry.
_ALLOWED = frozenset({
    "description", "type", "format", "nullable", "enum", "default", "example", "pattern",
    "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minItems", "maxItems", "minProperties", "maxProperties", "properties",
    "additionalProperties", "items", "required",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource",
})
# JSON Schema annotations pydantic emits that a CRD has no use for (or forbids).
_DROPPED = frozenset({
    "title", "uniqueItems", "examples", "readOnly", "writeOnly", "deprecated", "$comment",
    "$schema",
})
# The order keys are written in, so the YAML reads top-down and diffs stay small.
_KEY_ORDER = (
    "description", "type", "format", "nullable", "enum", "default", "example", "pattern",
    "minLength", "maxLength", "minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum",
    "multipleOf", "minItems", "maxItems", "minProperties", "maxProperties", "items",
    "properties", "additionalProperties", "required",
)
_NULL = {"type": "null"}
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's schema as the API server wants it: structural, every reference inlined.

    Validation mode is used because the schema checks what users write (defaults optional),
    with field aliases since the wire is camelCase.
    """
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _rewrite(raw, definitions, model.__name__, ())


def _rewrite(
    node: Mapping[str, Any], defs: Mapping[str, Any], path: str, inlining: tuple[str, ...]
) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        if name in inlining:
            raise NonStructuralSchema(path, f"{name} refers to itself and cannot be inlined")
        # Keys next to the reference (the field's own description, its default) win over the
        # referenced model's.
        return _rewrite({**defs[name], **node}, defs, path, (*inlining, name))
    for combinator in ("allOf", "oneOf"):
        if combinator in node:
            branches = node.pop(combinator)
            if combinator == "allOf" and len(branches) == 1:
                return _rewrite({**branches[0], **node}, defs, path, inlining)
            raise NonStructuralSchema(path, f"{combinator} of several schemas is not structural")
    if "anyOf" in node:
        return _rewrite_union(node, defs, path, inlining)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "description":
            out["description"] = _reflow(value)
        elif key == "x-kubernetes-validations":
            out[key] = [_ordered_rule(rule) for rule in value]
        elif key == "properties":
            out["properties"] = {
                name: _rewrite(sub, defs, f"{path}.{name}", inlining) for name, sub in value.items()
            }
        elif key == "items":
            if not isinstance(value, Mapping):
                raise NonStructuralSchema(path, "tuple-shaped items are not structural")
            out["items"] = _rewrite(value, defs, f"{path}[]", inlining)
        elif key == "additionalProperties":
            if value is True or value == {}:
                # An open mapping (dict[str, Any]): the API server must keep what it cannot see.
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, Mapping):
                out["additionalProperties"] = _rewrite(value, defs, f"{path}.*", inlining)
            # false is pydantic's extra="forbid"; a structural schema prunes unknown fields anyway.
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 puts the bound here; OpenAPI v3.0 wants it in minimum/maximum.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "prefixItems":
            raise NonStructuralSchema(path, "tuple-shaped items are not structural")
        elif key in _ALLOWED:
            # A copy: pydantic shares lists between schemas, and the CRD must not share them.
            out[key] = copy.deepcopy(value)
        else:
            raise NonStructuralSchema(path, f"schema key {key!r} has no place in a CRD")

    if out.get("default", 0) is None:
        # A null default is the same as no default; the API server would otherwise store nulls.
        del out["default"]
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"], path)
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        # A bare mapping without a value schema: keep its content rather than prune it all.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


def _rewrite_union(
    node: dict[str, Any], defs: Mapping[str, Any], path: str, inlining: tuple[str, ...]
) -> dict[str, Any]:
    branches: list[Mapping[str, Any]] = node.pop("anyOf")
    present = [b for b in branches if b != _NULL]
    nullable = len(present) < len(branches)
    if len(present) == 1:
        out = _rewrite({**present[0], **node}, defs, path, inlining)
    elif sorted(b.get("type", "") for b in present) == ["integer", "string"] and all(
        set(b) == {"type"} for b in present
    ):
        out = _rewrite(node, defs, path, inlining)
        out["x-kubernetes-int-or-string"] = True
    else:
        raise NonStructuralSchema(path, "a union of several types is not structural")
    if nullable:
        out["nullable"] = True
    return _ordered(out)


def _enum_type(values: Sequence[Any], path: str) -> str:
    for candidate in ("boolean", "string", "integer", "number"):
        if all(_is_json_type(v, candidate) for v in values):
            return candidate
    raise NonStructuralSchema(path, f"enum {list(values)!r} mixes value types")


def _is_json_type(value: Any, kind: str) -> bool:
    # bool is an int in Python but never a number in JSON.
    if isinstance(value, bool) and kind != "boolean":
        return False
    return isinstance(value, _JSON_TYPES[kind])


def _reflow(text: str) -> str:
    """Join a docstring's hard-wrapped lines; keep its paragraphs.

    ``kubectl explain`` wraps text itself, so source line breaks would only show as ragged lines.
    """
    paragraphs = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _ordered_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    return _ordered(rule, ("rule", "message", "messageExpression", "reason", "fieldPath"))


def _ordered(node: Mapping[str, Any], order: Sequence[str] = _KEY_ORDER) -> dict[str, Any]:
    rank = {key: i for i, key in enumerate(order)}
    return {key: node[key] for key in sorted(node, key=lambda k: (rank.get(k, len(rank)), k))}


# --- the structural check -----------------------------------------------------------------------

_FORBIDDEN = ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "title", "uniqueItems")


def check_structural(schema: Mapping[str, Any], path: str = "") -> None:
    """Raise NonStructuralSchema unless the schema would be accepted as structural.

    Every node has a type (or preserves unknown fields, or is int-or-string), no combinators or
    references are left, objects have either properties or additionalProperties, arrays have
    items, list map keys are required scalars, and every default fits its node and survives
    pruning.
    """
    here = path or "<root>"
    for key in _FORBIDDEN:
        if key in schema:
            raise NonStructuralSchema(here, f"{key!r} is not allowed in a structural schema")
    unknown = set(schema) - _ALLOWED
    if unknown:
        raise NonStructuralSchema(here, f"unknown schema keys {sorted(unknown)}")
    open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or schema.get(
        "x-kubernetes-int-or-string"
    )
    kind = schema.get("type")
    if kind is None and not open_ended:
        raise NonStructuralSchema(here, "has no type")
    if kind is not None and kind not in _JSON_TYPES:
        raise NonStructuralSchema(here, f"type {kind!r} is not an OpenAPI type")
    if "properties" in schema and "additionalProperties" in schema:
        raise NonStructuralSchema(here, "has both properties and additionalProperties")
    if isinstance(schema.get("additionalProperties"), bool):
        raise NonStructuralSchema(here, "additionalProperties must be a schema")
    if kind == "array" and "items" not in schema:
        raise NonStructuralSchema(here, "is an array without items")
    for name in schema.get("required", []):
        if name not in schema.get("properties", {}):
            raise NonStructuralSchema(here, f"requires {name!r}, which it does not define")
    if schema.get("x-kubernetes-list-type") == "map":
        _check_map_keys(schema, here)
    if "default" in schema:
        _check_default(schema["default"], schema, f"{here} default")
    for name, sub in schema.get("properties", {}).items():
        check_structural(sub, f"{path}.{name}")
    if "items" in schema:
        check_structural(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        check_structural(schema["additionalProperties"], f"{path}.*")


def _check_map_keys(schema: Mapping[str, Any], here: str) -> None:
    items = schema.get("items", {})
    for key in schema.get("x-kubernetes-list-map-keys", []):
        prop = items.get("properties", {}).get(key)
        if prop is None or prop.get("type") not in ("string", "integer", "boolean"):
            raise NonStructuralSchema(here, f"list map key {key!r} must be a scalar field")
        if key not in items.get("required", []) and "default" not in prop:
            raise NonStructuralSchema(here, f"list map key {key!r} must be required or defaulted")


def _check_default(value: Any, schema: Mapping[str, Any], here: str) -> None:
    if value is None:
        if not schema.get("nullable"):
            raise NonStructuralSchema(here, "is null but the field is not nullable")
        return
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema:
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not (_is_json_type(value, "integer") or isinstance(value, str)):
            raise NonStructuralSchema(here, f"{value!r} is neither an integer nor a string")
        return
    kind = schema.get("type")
    if kind is None or not _is_json_type(value, kind):
        raise NonStructuralSchema(here, f"{value!r} is not of type {kind}")
    if "enum" in schema and value not in schema["enum"]:
        raise NonStructuralSchema(here, f"{value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise NonStructuralSchema(here, f"{value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            raise NonStructuralSchema(here, f"{value!r} has the wrong length")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise NonStructuralSchema(here, f"has fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            _check_default(item, schema["items"], f"{here}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None and key in properties:
                _check_default(item, properties[key], f"{here}.{key}")
            elif "additionalProperties" in schema:
                _check_default(item, schema["additionalProperties"], f"{here}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                raise NonStructuralSchema(here, f"key {key!r} would be pruned")
        missing = set(schema.get("required", [])) - set(value)
        if missing:
            raise NonStructuralSchema(here, f"lacks required {sorted(missing)}")


# --- files --------------------------------------------------------------------------------------


class _CrdDumper(yaml.SafeDumper):
    """Block style throughout; multi-line text as literal blocks so descriptions stay legible."""

    def ignore_aliases(self, data: Any) -> bool:
        # Shared sub-schemas are written out in full: a CRD file is read by people and tools
        # that do not expect anchors.
        return True


def _represent_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_CrdDumper.add_representer(str, _represent_text)


def render(resource: CustomResource) -> str:
    """The CRD file's text: header comment, then the manifest with keys in a stable order."""
    body = yaml.dump(
        resource.manifest(), Dumper=_CrdDumper, sort_keys=False, default_flow_style=False,
        width=1 << 16, allow_unicode=True,  # long descriptions stay on one line, never folded
    )
    return HEADER + body


def write_crds(directory: str | Path, resources: Iterable[CustomResource] = RESOURCES) -> list[Path]:
    """Write one YAML file per CRD into directory; return the paths written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in resources:
        path = target / resource.file_name
        path.write_text(render(resource), encoding="utf-8")
        written.append(path)
    return written


def check_crds(directory: str | Path, resources: Iterable[CustomResource] = RESOURCES) -> list[str]:
    """Names of the CRD files in directory that differ from what would be generated.

    A missing file counts as differing, and so does a leftover ``<group>_*.yaml`` no resource
    generates any more.
    """
    target = Path(directory)
    expected = {r.file_name: render(r) for r in resources}
    stale = []
    for name, text in expected.items():
        path = target / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    leftovers = (p.name for p in target.glob(f"{GROUP}_*.yaml") if p.name not in expected)
    return sorted([*stale, *leftovers])
