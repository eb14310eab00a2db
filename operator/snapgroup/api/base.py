"""Shared building blocks of the API models: camelCase on the wire, durations, selectors, conditions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


class ApiModel(BaseModel):
    """Base of every API model: camelCase field names on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API stores it: camelCase, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def stamp(moment: datetime) -> str:
    """A time as the status and its messages spell it: RFC 3339 with microseconds, ``Z``."""
    return f"{moment:%Y-%m-%dT%H:%M:%S.%fZ}"


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration such as ``90s``, ``1m30s`` or ``500ms``."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 60s, 1m30s or 500ms")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    seconds = sum(float(n) * scale[unit] for n, unit in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


def _positive_duration(text: str) -> str:
    if parse_duration(text) <= timedelta(0):
        raise ValueError("must be longer than zero")
    return text


Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        json_schema_extra={
            "example": "60s",
            "x-kubernetes-validations": [
                {"rule": "duration(self) > duration('0s')", "message": "must be longer than zero"}
            ],
        },
    ),
    AfterValidator(_positive_duration),
]
DnsLabel = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]
ObjectName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]


class LabelSelectorRequirement(ApiModel):
    """One set-based requirement of a label selector."""

    key: str
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values."""
    values: list[str] | None = None
    """The values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(ApiModel):
    """A Kubernetes label selector; an empty selector matches nothing here, never everything."""

    match_labels: dict[str, str] | None = None
    """Labels an object must carry, all of them."""
    match_expressions: list[LabelSelectorRequirement] | None = None
    """Set-based requirements, all of which must hold."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object's labels satisfy the selector (an empty one matches nothing)."""
        if not self.match_labels and not self.match_expressions:
            return False
        if any(labels.get(k) != v for k, v in (self.match_labels or {}).items()):
            return False
        for req in self.match_expressions or []:
            present = req.key in labels
            values = req.values or []
            if ((req.operator == "In" and labels.get(req.key) not in values)
                    or (req.operator == "NotIn" and present and labels[req.key] in values)
                    or (req.operator == "Exists" and not present)
                    or (req.operator == "DoesNotExist" and present)):
                return False
        return True

    def as_query(self) -> str:
        """Render the selector in the ``labelSelector`` query syntax of the API server."""
        parts = [f"{k}={v}" for k, v in sorted((self.match_labels or {}).items())]
        for req in self.match_expressions or []:
            values = ",".join(req.values or [])
            if req.operator == "In":
                parts.append(f"{req.key} in ({values})")
            elif req.operator == "NotIn":
                parts.append(f"{req.key} notin ({values})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts)


class SecretRef(ApiModel):
    """A Secret in the group's namespace."""

    name: ObjectName
    """Name of the Secret."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition in the standard Kubernetes shape (metav1.Condition)."""

    type: str
    """Condition type, e.g. Succeeded, Quiesced, SnapshotsCut, SnapshotsReady, Consistent."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """A CamelCase reason a program can match on."""
    message: str = ""
    """A sentence a person can act on."""
    last_transition_time: datetime
    """When the status last changed."""
    observed_generation: int | None = None
    """The spec generation the condition was computed for."""
