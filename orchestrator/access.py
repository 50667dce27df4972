"""Who may call each orchestrator RPC (cnm.authz): the table to audit.

``admin`` may do everything; ``viewer`` reads. An ``agent`` registers and
heartbeats its own host only, and may connect and disconnect containers and
make sandboxes on its own host (what node-local runtime adapters need),
and read networks and endpoints.
"""

from __future__ import annotations

from cnm.authz import ADMIN, AGENT, VIEWER, Policy, allow
from cnm.orchestrator.v1 import orchestrator_pb2 as pb

READ = allow(ADMIN, VIEWER, AGENT)
ON_OWN_HOST = allow(ADMIN, AGENT, own_host=lambda request: request.host_id)

POLICY = Policy(pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name, {
    "CreateNetwork": allow(ADMIN),
    "GetNetwork": READ,
    "ListNetworks": READ,
    "DeleteNetwork": allow(ADMIN),
    "PruneNetworks": allow(ADMIN),
    "ConnectContainer": ON_OWN_HOST,
    # The endpoint's host is known once it is found: the flow checks an agent's
    # (authz.bound_host).
    "DisconnectContainer": allow(ADMIN, AGENT),
    "GetEndpoint": READ,
    "ListEndpoints": READ,
    "ReserveAddress": ON_OWN_HOST,
    "ReleaseAddress": ON_OWN_HOST,
    "CreateSandbox": ON_OWN_HOST,
    "DeleteSandbox": ON_OWN_HOST,
    "ListSandboxes": READ,
    "RegisterHost": allow(AGENT, own_host=lambda request: request.host.host_id),
    "HeartbeatHost": allow(AGENT, own_host=lambda request: request.host_id),
    "ListHosts": allow(ADMIN, VIEWER),
    "DeleteHost": allow(ADMIN),
})
