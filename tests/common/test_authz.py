"""The authorization tables (cnm.authz, each service's access.py) on their own."""

from __future__ import annotations

import pytest

from cnm import authz, errors
from cnm.ipam.v1 import ipam_pb2
from cnm.netdriver.v1 import netdriver_pb2
from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm.pki import Identity
from ipam_service import access as ipam_access
from netdriver_service import access as agent_access
from orchestrator import access as orchestrator_access

TABLES = [(ipam_access.POLICY, ipam_pb2), (agent_access.POLICY, netdriver_pb2),
          (orchestrator_access.POLICY, pb)]
ADMIN, VIEWER = Identity("admin"), Identity("viewer")
AGENT_A = Identity("agent", "a")
ORCH = "/cnm.orchestrator.v1.OrchestratorService/"


@pytest.mark.parametrize(("policy", "module"), TABLES)
def test_every_rpc_has_exactly_one_rule(policy, module):
    (service,) = module.DESCRIPTOR.services_by_name.values()
    assert policy.service == service.full_name
    assert set(policy.rules) == {method.name for method in service.methods}


def test_reading_is_for_viewers_and_changing_for_admins():
    policy = orchestrator_access.POLICY
    policy.check(ORCH + "ListNetworks", pb.ListNetworksRequest(), VIEWER)
    policy.check(ORCH + "CreateNetwork", pb.CreateNetworkRequest(), ADMIN)
    with pytest.raises(errors.PermissionDenied) as caught:
        policy.check(ORCH + "CreateNetwork", pb.CreateNetworkRequest(), VIEWER)
    assert caught.value.reason == "ROLE_NOT_ALLOWED"
    assert caught.value.message == f"spiffe://cnm/viewer may not call {ORCH}CreateNetwork"


def test_no_identity_is_unauthenticated_except_for_health():
    with pytest.raises(errors.Unauthenticated) as caught:
        orchestrator_access.POLICY.check(ORCH + "ListNetworks", pb.ListNetworksRequest(), None)
    assert caught.value.reason == "NO_IDENTITY"
    orchestrator_access.POLICY.check("/grpc.health.v1.Health/Check", None, None)


def test_a_method_of_another_service_or_unknown_is_denied():
    with pytest.raises(errors.PermissionDenied):
        orchestrator_access.POLICY.check("/cnm.ipam.v1.IpamService/ListPools", None, ADMIN)
    with pytest.raises(errors.PermissionDenied):
        orchestrator_access.POLICY.check(ORCH + "Backdoor", None, ADMIN)


@pytest.mark.parametrize(("method", "request_"), [
    ("RegisterHost", pb.RegisterHostRequest(host=pb.Host(host_id="b"))),
    ("HeartbeatHost", pb.HeartbeatHostRequest(host_id="b")),
    ("ConnectContainer", pb.ConnectContainerRequest(host_id="b")),
    ("CreateSandbox", pb.CreateSandboxRequest(host_id="b")),
    ("DeleteSandbox", pb.DeleteSandboxRequest(host_id="b")),
])
def test_an_agent_acts_on_its_own_host_only(method, request_):
    with pytest.raises(errors.PermissionDenied) as caught:
        orchestrator_access.POLICY.check(ORCH + method, request_, AGENT_A)
    assert caught.value.reason == "OTHER_HOST"
    mine = type(request_)()
    mine.CopyFrom(request_)
    if method == "RegisterHost":
        mine.host.host_id = "a"
    else:
        mine.host_id = "a"
    orchestrator_access.POLICY.check(ORCH + method, mine, AGENT_A)


def test_the_bound_host_follows_the_caller():
    authz.set_caller(AGENT_A)
    assert authz.bound_host() == "a"
    authz.set_caller(ADMIN)
    assert authz.bound_host() is None
    authz.set_caller(None)


def test_only_the_orchestrator_drives_an_agent():
    for name, rule in agent_access.POLICY.rules.items():
        if name not in ("GetHostInfo", "ListSandboxes", "GetSandbox", "GetState"):
            assert rule.roles == {"orchestrator"}, name
