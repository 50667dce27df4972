"""Who may call each IPAM RPC (cnm.authz): the table to audit.

Only the orchestrator and an admin change pools and allocations; a viewer reads.
"""

from __future__ import annotations

from cnm.authz import ADMIN, ORCHESTRATOR, VIEWER, Policy, allow
from cnm.ipam.v1 import ipam_pb2 as pb

MUTATE = allow(ORCHESTRATOR, ADMIN)
READ = allow(ORCHESTRATOR, ADMIN, VIEWER)

POLICY = Policy(pb.DESCRIPTOR.services_by_name["IpamService"].full_name, {
    "CreatePool": MUTATE,
    "GetPool": READ,
    "ListPools": READ,
    "DeletePool": MUTATE,
    "AllocateAddress": MUTATE,
    "BatchAllocateAddresses": MUTATE,
    "ReleaseAddress": MUTATE,
    "TransferAddress": MUTATE,
    "ListAllocations": READ,
})
