"""Fault injection, to prove that every step of an operation is undone.

``CNM_NETDRIVER_FAULT=after:veth`` (or ``--fault after:veth``) makes the
agent fail right after the named step of every operation that has it;
several steps may be given, comma-separated. Off unless set.
"""

from __future__ import annotations

from cnm import errors

CONNECT_STEPS = ("network", "veth", "address", "route", "port", "ports", "record")
NETWORK_STEPS = ("bridge", "gateway", "network_rules", "vxlan")


class Faults:
    def __init__(self, spec: str = "") -> None:
        self.after: set[str] = set()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            when, _, step = item.partition(":")
            if when != "after" or step not in (*CONNECT_STEPS, *NETWORK_STEPS):
                raise ValueError(
                    f"invalid fault {item!r}: want after:<step>, step one of "
                    + ", ".join((*CONNECT_STEPS, *NETWORK_STEPS))
                )
            self.after.add(step)

    def check(self, step: str) -> None:
        if step in self.after:
            raise errors.Internal(f"injected fault after step {step!r}", reason="INJECTED_FAULT")
