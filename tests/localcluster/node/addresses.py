"""Pod IP allocation from a loopback range (each pod gets its own 127.x address)."""

from __future__ import annotations

import ipaddress

POD_NETWORK = ipaddress.IPv4Network("127.10.0.0/16")


class AddressesExhausted(Exception):
    """Every address of the pod network is in use."""


class PodAddressPool:
    """Hands out pod IPs; an address is never given to two pods at once.

    Allocation walks the range round-robin rather than taking the lowest free address, so a
    released IP is reused as late as possible: a client still holding a connection to a
    deleted pod then never reaches its successor by accident.
    """

    def __init__(self, network: ipaddress.IPv4Network = POD_NETWORK) -> None:
        self._network = network
        # .0 and .255 addresses are usable on loopback but look like network/broadcast
        # addresses to a reader, so they are skipped; so is the network's first address
        # (127.10.0.1 reads like a gateway).
        self._candidates = [
            ip
            for ip in network.hosts()
            if int(ip) & 0xFF not in (0, 255) and ip != network.network_address + 1
        ]
        self._next = 0
        self._owners: dict[ipaddress.IPv4Address, str] = {}

    def allocate(self, owner: str) -> str:
        """Give `owner` (a pod uid) an address; the same owner gets the same address back."""
        for address, current in self._owners.items():
            if current == owner:
                return str(address)
        for _ in range(len(self._candidates)):
            address = self._candidates[self._next]
            self._next = (self._next + 1) % len(self._candidates)
            if address not in self._owners:
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
