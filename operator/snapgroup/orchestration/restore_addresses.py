"""Pointing a clone at itself: the source Services' addresses, wherever a copied Secret,
ConfigMap or container environment spells them out, become the cloned Services' addresses.

Without this a clone's application would keep talking to the source's databases: the bleater
sample's Secrets hold Service IPs, and DNS names like ``postgres.bleater.svc`` name the source
namespace. A short name (``postgres``) resolves in the clone's own namespace and stays as it is.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Rewrite:
    """One source address and what it becomes in the clone."""

    pattern: re.Pattern[str]
    replacement: str
    what: str


def address_rewrites(pairs: Iterable[tuple[JSON, JSON]], source_ns: str, target_ns: str) -> list[Rewrite]:
    """Rewrites for (source Service, cloned Service as created) pairs: the cluster IP, and DNS
    names through the source namespace (``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``,
    and a StatefulSet pod's ``pod.name.ns...``)."""
    rewrites: list[Rewrite] = []
    for source, clone in pairs:
        name = source["metadata"]["name"]
        old_ip = (source.get("spec") or {}).get("clusterIP")
        new_ip = (clone.get("spec") or {}).get("clusterIP")
        if old_ip and old_ip != "None" and new_ip and new_ip != "None":
            rewrites.append(Rewrite(
                re.compile(rf"(?<![\w.]){re.escape(old_ip)}(?![\w]|\.\d)"), new_ip, f"{name}'s IP"))
        rewrites.append(Rewrite(
            re.compile(rf"(?<![\w.-])((?:[a-z0-9-]+\.)?{re.escape(name)})\.{re.escape(source_ns)}"
                       r"(?=\.svc\b|(?![\w.-])|\.(?![a-z]))"),
            rf"\1.{target_ns}", f"{name}'s DNS name"))
    return rewrites


def rewrite_text(text: str, rewrites: Iterable[Rewrite]) -> tuple[str, list[str]]:
    """The text with every source address replaced, and what was replaced."""
    changed: list[str] = []
    for rewrite in rewrites:
        text, count = rewrite.pattern.subn(rewrite.replacement, text)
        if count:
            changed.append(rewrite.what)
    return text, changed


def rewrite_object(obj: JSON, rewrites: list[Rewrite]) -> list[str]:
    """Rewrite a Secret's or ConfigMap's values, or a workload's literal env values, in place;
    returns what was replaced."""
    changed: list[str] = []
    kind = obj["kind"]
    if kind == "Secret":
        for key, value in (obj.get("data") or {}).items():
            try:
                text = base64.b64decode(value, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                continue  # binary data holds no address to rewrite
            new, what = rewrite_text(text, rewrites)
            if what:
                obj["data"][key] = base64.b64encode(new.encode()).decode()
                changed += what
    elif kind == "ConfigMap":
        for key, value in (obj.get("data") or {}).items():
            obj["data"][key], what = rewrite_text(value, rewrites)
            changed += what
    else:
        pod = obj["spec"]["template"]["spec"]
        for container in (pod.get("containers") or []) + (pod.get("initContainers") or []):
            for env in container.get("env") or []:
                if isinstance(env.get("value"), str):
                    env["value"], what = rewrite_text(env["value"], rewrites)
                    changed += what
            for key in ("args", "command"):
                if container.get(key):
                    pieces = [rewrite_text(a, rewrites) for a in container[key]]
                    container[key] = [p for p, _ in pieces]
                    changed += [w for _, ws in pieces for w in ws]
    return sorted(set(changed))
