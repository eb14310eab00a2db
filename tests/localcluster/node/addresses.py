"""Pod IP allocation from a loopback range (each pod gets its own 127.x address)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Collection
from pathlib import Path

POD_NETWORK = ipaddress.IPv4Network("127.10.0.0/16")


class AddressesExhausted(Exception):
    """Every address of the pod network is in use."""


def first_address_for(state_dir: Path, network: ipaddress.IPv4Network = POD_NETWORK) -> str:
    """Where a node starts allocating: a /24 of the network chosen by its state directory.

    Local clusters with different state directories running on one machine at the same time
    then start in different parts of the shared loopback range and rarely meet; the same
    cluster keeps its addresses across restarts.
    """
    subnets = max(network.num_addresses // 256, 1)
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).digest()
    subnet = int.from_bytes(digest[:4], "big") % subnets
    return str(network.network_address + subnet * 256 + 2)


class PodAddressPool:
    """Hands out pod IPs; an address is never given to two pods at once.

    Allocation walks the range round-robin rather than taking the lowest free address, so a
    released IP is reused as late as possible: a client still holding a connection to a
    deleted pod then never reaches its successor by accident.
    """

    def __init__(self, network: ipaddress.IPv4Network = POD_NETWORK, first: str | None = None) -> None:
        self._network = network
        # .0 and .255 addresses are usable on loopback but look like network/broadcast
        # addresses to a reader, so they are skipped; so is the network's first address
        # (127.10.0.1 reads like a gateway).
        self._candidates = [
            ip
            for ip in network.hosts()
            if int(ip) & 0xFF not in (0, 255) and ip != network.network_address + 1
        ]
        self._index = {ip: i for i, ip in enumerate(self._candidates)}
        self._next = self._index.get(ipaddress.IPv4Address(first), 0) if first else 0
        self._owners: dict[ipaddress.IPv4Address, str] = {}

    def allocate(self, owner: str, busy: Collection[str] = ()) -> str:
        """Give `owner` (a pod uid) an address; the same owner gets the same address back.

        Addresses in `busy` (e.g. where something else on this machine listens, such as the
        pods of another local cluster) are skipped.
        """
        for address, current in self._owners.items():
            if current == owner:
                return str(address)
        for _ in range(len(self._candidates)):
            address = self._candidates[self._next]
            self._next = (self._next + 1) % len(self._candidates)
            if address not in self._owners and str(address) not in busy:
                self._owners[address] = owner
                return str(address)
        raise AddressesExhausted(f"no free address left in {self._network}")

    def reserve(self, owner: str, address: str) -> bool:
        """Claim a specific address (one a pod already had); False if it is not available."""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        if ip not in self._network:
            return False
        current = self._owners.get(ip)
        if current is not None:
            return current == owner
        for held, held_by in list(self._owners.items()):
            if held_by == owner:
                del self._owners[held]
        self._owners[ip] = owner
        # Continue the round-robin after the highest address in use, so that after an
        # emulator restart the addresses of pods deleted just before are not reused at once.
        index = self._index.get(ip)
        if index is not None and index >= self._next:
            self._next = (index + 1) % len(self._candidates)
        return True

    def release(self, owner: str) -> None:
        """Return the address of `owner` to the pool (no-op if it has none)."""
        for address, current in list(self._owners.items()):
            if current == owner:
                del self._owners[address]

    def owner_of(self, address: str) -> str | None:
        """The owner of an address, if it is in use."""
        return self._owners.get(ipaddress.IPv4Address(address))

    def in_use(self) -> int:
        """How many addresses are allocated."""
        return len(self._owners)


def listening_addresses(proc_net_tcp: Path = Path("/proc/net/tcp")) -> set[str]:
    """IPv4 addresses with a listening TCP socket on this machine (any process)."""
    found: set[str] = set()
    try:
        lines = proc_net_tcp.read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A":  # 0A: LISTEN
            continue
        address_hex = fields[1].split(":")[0]
        # The kernel prints the address as a host-order (little-endian) 32-bit number.
        found.add(str(ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(address_hex), "little"))))
    return found
