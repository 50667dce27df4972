"""The ``nftables`` firewall backend: cnm's own table, changed by atomic JSON batches.

The ruleset's shape is in :mod:`netdriver_service.firewall.ruleset`. This
module reads the kernel, decides the batch, and applies it in one
transaction. The kernel is the only record: networks and ports are read
back from the elements and their comments, so a restarted agent needs no
memory of what it did. Calls are serialized by one lock (a read-then-write
must not interleave with another) and run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from cnm import errors
from netdriver_service.firewall import (
    NetworkRules,
    PortRule,
    conntrack,
    ruleset,
    table_missing,
)
from netdriver_service.firewall.libnft import NftError, NftProcess, NftRunner, open_runner
from netdriver_service.firewall.ports import split_against, validate_network, validate_ports

log = logging.getLogger(__name__)
T = TypeVar("T")
_BR_NETFILTER = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
_TABLE_LIST = [{"list": {"table": {"family": ruleset.FAMILY, "name": ruleset.TABLE}}}]


def _br_netfilter_active() -> bool:
    try:
        return _BR_NETFILTER.read_text().strip() == "1"
    except OSError:
        return False


class NftablesFirewall:
    """Firewall backend over libnftables (or ``nft -j -f -``)."""

    name = "nftables"

    def __init__(self, runner: NftRunner | None = None, *, prefer: str = "auto") -> None:
        self._runner = runner or open_runner(prefer)
        self._lock = asyncio.Lock()
        # ``drift`` reads through an ``nft`` process of its own: a context that is
        # not shared needs no lock, so a resync's long read of a big table does
        # not keep the connects' batches waiting.
        self._reader: NftRunner | None = None
        if runner is None and shutil.which("nft"):
            self._reader = NftProcess()

    # --- plumbing -----------------------------------------------------------------

    async def _locked(self, work: Callable[[], T]) -> T:
        """Runs ``work`` in a thread, holding the lock until the thread is done.

        A cancelled caller cannot stop the thread: releasing the lock before it
        ends would let the next call use the same (not thread-safe) libnftables
        context at the same time.
        """
        async with self._lock:
            done = asyncio.ensure_future(asyncio.to_thread(work))
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await done
                raise

    def _apply(self, commands: list[dict], what: str) -> None:
        if not commands:
            return
        try:
            self._runner.run(commands)
        except NftError as error:
            if error.missing:
                raise table_missing(what) from error
            raise errors.Internal(f"{what}: nftables refused the batch: {error.message}",
                                  reason="NFTABLES_FAILED") from error

    def _listing(self, runner: NftRunner | None = None) -> dict | None:
        """``list table inet cnm`` as JSON, or None when the table does not exist."""
        try:
            return (runner or self._runner).run(_TABLE_LIST)
        except NftError as error:
            if error.missing:
                return None
            raise errors.Internal(f"read nftables table: {error.message}",
                                  reason="NFTABLES_FAILED") from error

    def _read_elements(self, names: tuple[str, ...] = tuple(ruleset.SETS)) -> ruleset.Elements:
        """The elements of the named sets (empty when missing), one listing each.

        libnftables 1.0.6 refuses several ``list`` commands in one batch, and a
        listing costs in proportion to its size, so callers name only the sets
        they need (the big port maps are read only when ports are concerned).
        """
        found = ruleset.empty_elements()
        for name in names:
            kind = "map" if ruleset.SETS[name][1] else "set"
            command = {"list": {kind: {"family": ruleset.FAMILY, "table": ruleset.TABLE,
                                       "name": name}}}
            try:
                listing = self._runner.run([command])
            except NftError as error:
                if error.missing:
                    continue
                raise errors.Internal(f"read nftables {kind} {name}: {error.message}",
                                      reason="NFTABLES_FAILED") from error
            found[name] = ruleset.elements_from_listing(listing)[name]
        return found

    def _table_exists(self, family: str = ruleset.FAMILY) -> bool:
        """Whether cnm's table of ``family`` is there (its forward chain, which it has)."""
        try:
            self._runner.run([{"list": {"chain": {"family": family,
                                                  "table": ruleset.TABLE, "name": "forward"}}}])
        except NftError as error:
            if error.missing:
                return False
            raise errors.Internal(f"read nftables table: {error.message}",
                                  reason="NFTABLES_FAILED") from error
        return True

    def _base_repairs(self, listing: dict | None) -> tuple[list[dict], list[str]]:
        """Commands restoring the table, sets and chains, and a line per repair."""
        if listing is None:
            return ruleset.base_commands(), [f"created table {ruleset.FAMILY} {ruleset.TABLE}"]
        commands: list[dict] = []
        lines: list[str] = []
        missing_sets = [name for name in ruleset.SETS
                        if name not in ruleset.set_names_in_listing(listing)]
        if missing_sets:
            commands += ruleset.set_commands(missing_sets)
            lines += [f"created missing set {name}" for name in missing_sets]
        kernel_chains = ruleset.rules_from_listing(listing)
        for name in ruleset.chain_drift(kernel_chains):
            if name in kernel_chains:
                commands.append({"flush": ruleset.obj("chain", name=name)})
                lines.append(f"rewrote chain {name}: its rules differed")
            else:
                lines.append(f"created missing chain {name}")
            commands += ruleset.chain_commands(name)
        return commands, lines

    # --- Firewall protocol --------------------------------------------------------

    async def ensure_base(self) -> None:
        def work() -> None:
            commands, lines = self._base_repairs(self._listing())
            if self._table_exists(ruleset.OLD_FAMILY):
                # An agent from before IPv6 left ``ip cnm``: gone in the same
                # transaction; the resync that follows refills ``inet cnm``.
                commands.insert(0, {"delete": {"table": {"family": ruleset.OLD_FAMILY,
                                                         "name": ruleset.TABLE}}})
                lines.insert(0, f"removed the old table {ruleset.OLD_FAMILY} {ruleset.TABLE}")
            self._apply(commands, "create cnm's nftables table")
            for line in lines:
                log.info("firewall: %s", line)

        await self._locked(work)

    async def _check_icc_support(self, networks: list[NetworkRules]) -> None:
        """icc off is enforced in the ip forward hook, which sees bridged traffic only
        through br_netfilter; refuse rather than silently not isolate."""
        without_icc = [network.network_id for network in networks if not network.enable_icc]
        if without_icc and not await asyncio.to_thread(_br_netfilter_active):
            raise errors.FailedPrecondition(
                f"networks {without_icc}: disabling inter-container communication needs "
                "br_netfilter with net.bridge.bridge-nf-call-iptables=1 in the agent's namespace",
                reason="BR_NETFILTER_INACTIVE",
            )

    async def add_network(self, network: NetworkRules) -> None:
        validate_network(network)
        await self._check_icc_support([network])

        def work() -> None:
            if not self._table_exists():
                raise table_missing(f"install rules of network {network.network_id!r}")
            actual = self._read_elements(ruleset.NETWORK_SETS)
            owner = ruleset.network_of_bridge(actual["bridges"])
            holder = owner.get(network.bridge)
            if holder is not None and holder != network.network_id:
                raise errors.AlreadyExists(
                    f"network {network.network_id!r}: bridge {network.bridge!r} already has the "
                    f"rules of network {holder!r}", reason="BRIDGE_TAKEN", network_id=holder,
                )
            mine = ruleset.elements_of_network(actual, network.network_id)
            wanted = ruleset.network_elements(network)
            others = {bridge: net for bridge, net in owner.items()
                      if net != network.network_id}
            bridge_of = {net: bridge for bridge, net in others.items()}
            bridge_of[network.network_id] = network.bridge
            allowances = {key: element for key, element in actual["allowances"].items()
                          if key[0] in others}
            allowances.update(wanted["allowances"])
            for pair in ruleset.allowed_pair_keys(bridge_of, allowances):
                if network.bridge in pair:
                    wanted["allowed_pairs"][pair] = ruleset.Element(pair)
            changes, _ = ruleset.diff_commands(mine, wanted)
            self._apply(changes, f"install rules of network {network.network_id!r}")

        await self._locked(work)

    async def remove_network(self, network_id: str) -> None:
        def work() -> None:
            actual = self._read_elements(ruleset.NETWORK_SETS + ruleset.ADDRESS_MAPS)
            self._delete_with_partners(
                ruleset.elements_of_network(actual, network_id), actual,
                f"remove rules of network {network_id!r}",
            )

        await self._locked(work)

    async def add_ports(self, ports: list[PortRule]) -> None:
        ports = validate_ports(ports)
        if not ports:
            return

        def work() -> None:
            try:
                self._runner.run(ruleset.publish_batch(ports))
                forget_flows(ports)
                return
            except NftError as error:
                if error.missing:  # flushed away: rebuilding only the base would lose the rest
                    raise table_missing(
                        f"publish ports of endpoint {ports[0].endpoint_id!r}"
                    ) from error
                if not error.exists:
                    raise errors.Internal(
                        f"publish ports of endpoint {ports[0].endpoint_id!r}: {error.message}",
                        reason="NFTABLES_FAILED",
                    ) from error
            # Something overlaps: read who holds it, or find it is this very mapping.
            existing = ruleset.ports_from_elements(self._read_elements(ruleset.PORT_MAPS))
            missing = split_against(existing, ports)
            if missing:
                self._apply(ruleset.publish_batch(missing),
                            f"publish ports of endpoint {ports[0].endpoint_id!r}")
                forget_flows(missing)

        await self._locked(work)

    async def remove_ports(self, endpoint_id: str, ports: list[PortRule] | None = None) -> None:
        """Removes the endpoint's published ports.

        With ``ports`` (what was published for it) their keys are deleted
        directly, at the same cost however many ports the host has, and an
        empty list costs nothing; without them, or when one of them is already
        gone, the maps are scanned for the endpoint's elements. (An element the
        record does not know of is stale, and resync removes it.)
        """
        known = [port for port in ports or () if port.endpoint_id == endpoint_id]
        if ports is not None and not known:
            return

        def work() -> None:
            if known and self._remove_known_ports(endpoint_id, known):
                forget_flows(known)
                return
            # The address maps carry the owner in their comments; each port-map
            # element shares its key, and the guards follow from the keys.
            actual = self._read_elements(ruleset.ADDRESS_MAPS)
            doomed = ruleset.empty_elements()
            for address_map in ruleset.ADDRESS_MAPS:
                doomed[address_map] = {
                    key: element for key, element in actual[address_map].items()
                    if element.comment.partition(" ")[0] == endpoint_id
                }
            self._delete_with_partners(
                doomed, actual, f"remove ports of endpoint {endpoint_id!r}"
            )

        await self._locked(work)

    def _delete_with_partners(self, doomed: dict, actual: dict, what: str) -> None:
        """Deletes ``doomed``'s address-map elements in one batch, with their port-map
        partners and the specific-address guards nothing else needs any more."""
        for address_map, port_map in ruleset.MAP_PAIRS:
            doomed[port_map] = ruleset.port_partners(doomed[address_map])
        doomed["specific_guard"] = ruleset.guards_freed(
            ruleset.specific_mappings(actual), ruleset.specific_mappings(doomed)
        )
        commands, _ = ruleset.diff_commands(doomed, ruleset.empty_elements())
        self._apply(commands, what)

    def _remove_known_ports(self, endpoint_id: str, ports: list[PortRule]) -> bool:
        """Deletes these ports' elements in one batch; False when one was not there."""
        doomed = ruleset.empty_elements()
        for port in ports:
            for map_name, element in ruleset.port_elements(port):
                doomed[map_name][element.key] = element
        specific = ruleset.specific_mappings(doomed)
        if specific:  # a guard goes with the last specific-address mapping of its port
            actual = ruleset.specific_mappings(
                self._read_elements(ruleset.SPECIFIC_ADDRESS_MAPS))
            doomed["specific_guard"] = ruleset.guards_freed(actual, specific)
        commands, _ = ruleset.diff_commands(doomed, ruleset.empty_elements())
        try:
            self._runner.run(commands)
        except NftError as error:
            if error.missing:
                return False
            raise errors.Internal(
                f"remove ports of endpoint {endpoint_id!r}: nftables refused the batch: "
                f"{error.message}", reason="NFTABLES_FAILED",
            ) from error
        return True

    async def list_ports(self) -> list[PortRule]:
        return await self._locked(
            lambda: ruleset.ports_from_elements(self._read_elements(ruleset.PORT_MAPS))
        )

    async def list_networks(self) -> list[str]:
        def work() -> list[str]:
            bridges = self._read_elements(("bridges",))["bridges"]
            return sorted(set(ruleset.network_of_bridge(bridges).values()))

        return await self._locked(work)

    async def sync(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        wanted = await self._wanted(networks, ports)

        def work() -> list[str]:
            commands, lines = self._sync_commands(wanted)
            self._apply(commands, "synchronize cnm's nftables table")
            return lines

        lines = await self._locked(work)
        for line in lines:
            log.info("firewall sync: %s", line)
        return lines

    async def drift(self, networks: list[NetworkRules], ports: list[PortRule]) -> list[str]:
        wanted = await self._wanted(networks, ports)
        if self._reader is None:
            return await self._locked(lambda: self._sync_commands(wanted)[1])
        reader = self._reader
        return (await asyncio.to_thread(self._sync_commands, wanted, reader))[1]

    async def _wanted(self, networks: list[NetworkRules], ports: list[PortRule]) -> ruleset.Elements:
        for network in networks:
            validate_network(network)
        ports = validate_ports(ports)
        await self._check_icc_support(networks)
        return ruleset.desired_elements(networks, ports)

    def _sync_commands(
        self, wanted: ruleset.Elements, reader: NftRunner | None = None
    ) -> tuple[list[dict], list[str]]:
        """The commands making the kernel's table hold ``wanted``, and a line per change."""
        listing = self._listing(reader)
        commands, lines = self._base_repairs(listing)
        actual = ruleset.empty_elements() if listing is None else (
            ruleset.elements_from_listing(listing))
        changes, change_lines = ruleset.diff_commands(actual, wanted)
        return commands + changes, lines + change_lines

    async def element_count(self) -> int:
        def work() -> int:
            listing = self._listing()
            return 0 if listing is None else ruleset.count_in_listing(listing)

        return await self._locked(work)

    async def remove_all(self) -> None:
        """Deletes cnm's table (for tests and uninstall); a missing table is fine."""
        def work() -> None:
            try:
                self._runner.run([ruleset.table_command("delete")])
            except NftError as error:
                if not error.missing:
                    raise errors.Internal(f"delete cnm's nftables table: {error.message}") from error

        await self._locked(work)


def forget_flows(ports: list[PortRule]) -> None:
    """Deletes the conntrack entries of these UDP and SCTP host ports (conntrack.py): the
    next packet of a flow that went on goes where the port is published now. A failure
    is logged, not raised: the rules are right, and the entries expire by themselves."""
    try:
        conntrack.forget({(port.protocol, port.host_port) for port in ports})
    except (OSError, NetlinkError) as error:
        log.warning("could not forget the conntrack entries of published ports",
                    extra={"ports": sorted({port.host_port for port in ports}),
                           "error": str(error)})
