"""Pod volumes as directories on this machine.

- persistentVolumeClaim: waits until the claim is Bound, then uses the bound PV's CSI
  volume handle: the hostpath CSI driver keeps volume N in `<state>/csi/N`.
- emptyDir: a directory of the pod, removed with the pod.
- secret / configMap / downwardAPI / projected: files written into a directory of the pod
  (service-account tokens are not issued).
- hostPath: the path itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .environment import (
    ContainerConfigError,
    PodAddresses,
    config_map_data,
    field_value,
    secret_files,
)
from .informer import CacheChanges, Informer
from .kubeapi import ApiError, KubeClient, object_path

log = logging.getLogger(__name__)

JSON = dict[str, Any]


class VolumeNotReady(Exception):
    """A volume cannot be set up yet (claim unbound, PV or data directory missing)."""


class VolumeResolver:
    """Maps a pod's volumes to directories."""

    def __init__(
        self, client: KubeClient, claims: Informer, persistent_volumes: Informer, csi_dir: Path
    ) -> None:
        self._client = client
        self._claims = claims
        self._persistent_volumes = persistent_volumes
        self._csi_dir = csi_dir
        self.changes = CacheChanges()
        claims.add_listener(self.changes.notify)
        persistent_volumes.add_listener(self.changes.notify)

    async def mount_all(self, pod: JSON, pod_dir: Path, addresses: PodAddresses) -> dict[str, Path]:
        """Directories for every volume of `pod`, by volume name.

        Raises VolumeNotReady while a claim is not usable yet.
        """
        mounted: dict[str, Path] = {}
        for volume in pod.get("spec", {}).get("volumes") or []:
            mounted[volume["name"]] = await self._mount(pod, volume, pod_dir, addresses)
        return mounted

    async def _mount(self, pod: JSON, volume: JSON, pod_dir: Path, addresses: PodAddresses) -> Path:
        name: str = volume["name"]
        namespace = pod["metadata"]["namespace"]
        own_dir: Path = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in volume:
            return self.claim_directory(namespace, volume["persistentVolumeClaim"]["claimName"])
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                _make_dir(path)
            return path
        _make_dir(own_dir)
        if "emptyDir" in volume:
            return own_dir
        if "secret" in volume:
            source = volume["secret"]
            data = await self._secret(namespace, source["secretName"], source.get("optional"))
            _write_items(own_dir, data, source.get("items"))
        elif "configMap" in volume:
            source = volume["configMap"]
            data = await self._config_map(namespace, source["name"], source.get("optional"))
            _write_items(own_dir, data, source.get("items"))
        elif "downwardAPI" in volume:
            _write_downward(own_dir, pod, volume["downwardAPI"].get("items") or [], addresses)
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                if "secret" in source:
                    ref = source["secret"]
                    data = await self._secret(namespace, ref["name"], ref.get("optional"))
                    _write_items(own_dir, data, ref.get("items"))
                elif "configMap" in source:
                    ref = source["configMap"]
                    data = await self._config_map(namespace, ref["name"], ref.get("optional"))
                    _write_items(own_dir, data, ref.get("items"))
                elif "downwardAPI" in source:
                    _write_downward(own_dir, pod, source["downwardAPI"].get("items") or [], addresses)
                # serviceAccountToken: no token is issued; the emulated images do not
                # talk to the API server.
        else:
            log.info(
                "volume %s of %s/%s has an unsupported type; using an empty directory",
                name,
                namespace,
                pod["metadata"]["name"],
            )
        return own_dir

    def claim_directory(self, namespace: str, claim_name: str) -> Path:
        """The data directory of a bound claim; VolumeNotReady until it is usable."""
        claim = self._claims.objects.get((namespace, claim_name))
        if claim is None:
            raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" not found')
        if claim.get("status", {}).get("phase") != "Bound":
            raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" is not bound')
        volume_name = claim.get("spec", {}).get("volumeName")
        pv = self._persistent_volumes.objects.get(("", volume_name or ""))
        if pv is None:
            raise VolumeNotReady(f'persistentvolume "{volume_name}" not found')
        spec = pv.get("spec", {})
        directory: Path
        if "csi" in spec:
            directory = self._csi_dir / spec["csi"]["volumeHandle"]
        elif "hostPath" in spec:
            directory = Path(spec["hostPath"]["path"])
        elif "local" in spec:
            directory = Path(spec["local"]["path"])
        else:
            raise VolumeNotReady(f'persistentvolume "{volume_name}" has no usable source')
        if not directory.is_dir():
            raise VolumeNotReady(
                f'data directory {directory} of persistentvolume "{volume_name}" does not exist'
            )
        return directory

    async def _secret(self, namespace: str, name: str, optional: bool | None) -> dict[str, bytes]:
        secret = await read_optional(self._client, object_path(namespace, "secrets", name))
        if secret is None:
            if optional:
                return {}
            raise VolumeNotReady(f'secret "{name}" not found')
        return secret_files(secret)

    async def _config_map(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        config_map = await read_optional(self._client, object_path(namespace, "configmaps", name))
        if config_map is None:
            if optional:
                return {}
            raise VolumeNotReady(f'configmap "{name}" not found')
        return config_map_data(config_map)


async def read_optional(client: KubeClient, path: str) -> JSON | None:
    """GET an object, None if it does not exist."""
    try:
        return await client.call("GET", path)
    except ApiError as error:
        if error.status == 404:
            return None
        raise


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _write_items(directory: Path, data: Mapping[str, str | bytes], items: list[JSON] | None) -> None:
    chosen = (
        [(item["key"], item["path"]) for item in items if item["key"] in data]
        if items
        else [(key, key) for key in data]
    )
    for key, relative in chosen:
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        value = data[key]
        target.write_bytes(value if isinstance(value, bytes) else value.encode())
        os.chmod(target, 0o644)


def _write_downward(directory: Path, pod: JSON, items: list[JSON], addresses: PodAddresses) -> None:
    for item in items:
        if "fieldRef" not in item:
            continue
        try:
            value = field_value(pod, item["fieldRef"]["fieldPath"], addresses)
        except ContainerConfigError:
            continue
        target = directory / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(value)
