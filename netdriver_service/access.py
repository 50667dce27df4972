"""Who may call each host agent RPC (cnm.authz): the table to audit.

The agent runs as root and plumbs the kernel: only the orchestrator drives it.
An admin or a viewer may read its state.
"""

from __future__ import annotations

from cnm.authz import ADMIN, ORCHESTRATOR, VIEWER, Policy, allow
from cnm.netdriver.v1 import netdriver_pb2 as pb

DRIVE = allow(ORCHESTRATOR)
READ = allow(ORCHESTRATOR, ADMIN, VIEWER)

POLICY = Policy(pb.DESCRIPTOR.services_by_name["NetDriverService"].full_name, {
    "GetHostInfo": READ,
    "CreateNetwork": DRIVE,
    "DeleteNetwork": DRIVE,
    "CreateEndpoint": DRIVE,
    "DeleteEndpoint": DRIVE,
    "SetNetworkPeers": DRIVE,
    "CreateSandbox": DRIVE,
    "DeleteSandbox": DRIVE,
    "ListSandboxes": READ,
    "GetSandbox": READ,
    "GetState": READ,
    "Resync": DRIVE,
})
