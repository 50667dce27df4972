"""Forgetting the connection-tracking entries of a published UDP or SCTP port.

A UDP "connection" is a conntrack entry that the kernel keeps while packets keep
coming (30 s, 180 s once both sides have spoken). Its NAT was decided at its first
packet: a client that goes on sending to a host port after the port moved to
another container (or went away) keeps reaching the old container's address, for
as long as it keeps sending. The CNI portmap plugin had exactly this bug. So when a
UDP or SCTP port is published or unpublished, the entries whose original
destination is that port are deleted, and the next packet is NATed afresh. TCP
needs none of this: a new connection is a new entry.

Runs in the calling thread's network namespace (the agent's host), over
ctnetlink with pyroute2; the kernel filters the dump (Linux 5.8+).
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket

from pyroute2 import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

log = logging.getLogger("netdriver.conntrack")

PROTOCOLS = {"udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
FAMILIES = (socket.AF_INET, socket.AF_INET6)


def forget(ports: set[tuple[str, int]]) -> int:
    """Deletes the entries of each (protocol, host port) of UDP or SCTP, IPv4 and IPv6; returns
    how many. An entry that expires meanwhile is not an error."""
    wanted = sorted((PROTOCOLS[protocol], port) for protocol, port in ports
                    if protocol in PROTOCOLS)
    if not wanted:
        return 0
    deleted = 0
    with Conntrack() as conntrack:
        for (protocol, port), family in itertools.product(wanted, FAMILIES):
            match = NFCTAttrTuple(family=family, proto=protocol, dport=port)
            for entry in list(conntrack.dump_entries(tuple_orig=match)):
                try:
                    conntrack.delete(entry)
                    deleted += 1
                except NetlinkError as error:
                    if error.code != errno.ENOENT:
                        raise
    if deleted:
        log.debug("forgot conntrack entries", extra={"ports": sorted(ports),
                                                      "entries": deleted})
    return deleted
