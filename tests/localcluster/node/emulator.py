"""The node emulator: registration, informers, kubelet stand-in and service proxy together."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
from pathlib import Path

from .addresses import PodAddressPool, first_address_for
from .containers import kill_recorded_processes
from .informer import Informer
from .kubeapi import KubeClient, object_path
from .kubelet import Kubelet, NodeConfig, bound_pod_uids
from .registration import NodeRegistration
from .services import ServiceProxy
from .volumes import VolumeResolver

log = logging.getLogger(__name__)


async def run_node(kubeconfig: Path, config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Run the node until `stop` is set or SIGTERM/SIGINT arrives, then stop every pod."""
    loop = asyncio.get_running_loop()
    # API calls run in threads; the default pool (cores + 4) is too small for many pods.
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=64))
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    for directory in (config.pods_dir, config.logs_dir):
        directory.mkdir(parents=True, exist_ok=True)
    killed = kill_recorded_processes(config.pods_dir)
    if killed:
        log.warning("killed %d process groups left by an earlier node emulator", killed)

    client = KubeClient(kubeconfig)
    registration = NodeRegistration(client, config.node_name)
    if not await _register(registration, stop):
        return
    heartbeat = asyncio.create_task(registration.keep_alive())

    services = Informer(client, object_path(None, "services"), loop)
    claims = Informer(client, object_path(None, "persistentvolumeclaims"), loop)
    persistent_volumes = Informer(client, object_path(None, "persistentvolumes"), loop)
    pods = Informer(client, object_path(None, "pods"), loop)

    proxy = ServiceProxy(pods)
    services.add_listener(proxy.on_service_event)
    pods.add_listener(proxy.on_pod_event)
    volumes = VolumeResolver(client, claims, persistent_volumes, config.csi_dir)
    kubelet = Kubelet(
        client, config, services, volumes, PodAddressPool(first=first_address_for(config.state_dir))
    )

    # Pods start only once Services (for their env) and volumes are known.
    for informer in (services, claims, persistent_volumes):
        informer.start()
    await _wait_synced([services, claims, persistent_volumes], stop)
    pods.add_listener(kubelet.on_pod_event)
    pods.start()
    await _wait_synced([pods], stop)
    if pods.synced.is_set():
        kubelet.forget_orphan_pod_dirs(bound_pod_uids(pods, config.node_name))
        log.info("node %s is up (state in %s)", config.node_name, config.state_dir)

    await stop.wait()
    log.info("stopping: terminating pod processes and closing listeners")
    for informer in (pods, services, claims, persistent_volumes):
        informer.stop()
    heartbeat.cancel()
    await kubelet.shutdown()
    await proxy.close()
    log.info("node emulator stopped")


async def _register(registration: NodeRegistration, stop: asyncio.Event) -> bool:
    """Register the Node, retrying while the API server is not answering; False if stopped."""
    delay = 0.5
    while not stop.is_set():
        try:
            await registration.register()
            return True
        except Exception as error:
            log.warning("cannot register the node yet (%s); retrying in %.1fs", error, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)
    return False


async def _wait_synced(informers: list[Informer], stop: asyncio.Event) -> None:
    """Wait until every informer has listed its collection, or until `stop`."""

    async def all_synced() -> None:
        for informer in informers:
            await informer.synced.wait()

    async def stopped() -> None:
        await stop.wait()

    tasks = [asyncio.create_task(all_synced()), asyncio.create_task(stopped())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
