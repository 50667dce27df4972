"""Unit tests of the agent's names, request validation and fault parsing (no root)."""

from __future__ import annotations

import os

import pytest

from cnm import errors, validation
from cnm.netdriver.v1 import netdriver_pb2 as pb
from netdriver_service import model, names, netns
from netdriver_service.faults import CONNECT_STEPS, Faults
from netdriver_service.teardown import Teardown

DRIVERS = ("bridge",)


def test_bridge_name_fits_ifnamsiz_and_is_derived_from_the_id():
    assert names.bridge_name("n1") == "cnm-n1"
    long_id = "0123456789abcdef0123456789abcdef"
    assert names.bridge_name(long_id) == "cnm-0123456789a"
    assert len(names.bridge_name(long_id)) == 15


def test_host_veth_name_is_deterministic_short_and_distinct_for_shared_prefixes():
    first = names.host_veth_name("container-with-a-long-common-prefix-1")
    second = names.host_veth_name("container-with-a-long-common-prefix-2")
    assert first == names.host_veth_name("container-with-a-long-common-prefix-1")
    assert first != second
    assert len(first) == 15 and first.startswith("cv")
    validation.check_ifname("host", first)


def test_mac_from_address_is_locally_administered_like_docker():
    assert validation.mac_from_address("10.88.0.10") == "02:42:0a:58:00:0a"
    assert int(validation.mac_from_address("192.168.1.2")[:2], 16) & 0b10


@pytest.mark.parametrize("bad", ["01:00:5e:00:00:01", "zz:00:00:00:00:00", "00:00:00:00:00:00", "1:2:3"])
def test_check_mac_refuses_bad_values(bad):
    with pytest.raises(errors.InvalidArgument):
        validation.check_mac(bad)


def test_aliases_round_trip_and_foreign_aliases_are_not_ours():
    assert names.parse_alias(names.network_alias("n1")) == ("net", "n1", "")
    assert names.parse_alias(names.endpoint_alias("e1", "n1")) == ("ep", "e1", "n1")
    for foreign in (None, "", "docker0", "cnm:net:", "cnm:ep:e1", "cnm:ep:e/1:n1"):
        assert names.parse_alias(foreign) is None


@pytest.mark.parametrize("bad", ["", "a" * 65, "has space", "slash/", "colon:"])
def test_check_id_refuses(bad):
    with pytest.raises(errors.InvalidArgument):
        validation.check_id("endpoint_id", bad)


@pytest.mark.parametrize("bad", ["", "a" * 16, "eth 0", "a/b", ".", ".."])
def test_check_ifname_refuses(bad):
    with pytest.raises(errors.InvalidArgument):
        validation.check_ifname("container_interface", bad)


def _network(**fields):
    fields.setdefault("network_id", "n1")
    fields.setdefault("subnet", "10.88.0.0/24")
    return pb.Network(**fields)


def test_network_defaults():
    spec = model.network_from_proto(_network(), DRIVERS)
    assert (spec.bridge, spec.gateway, spec.mtu, spec.enable_icc, spec.internal) == (
        "cnm-n1", "10.88.0.1", 1500, True, False,
    )


def test_network_docker_options():
    spec = model.network_from_proto(
        _network(options={
            validation.OPTION_BRIDGE_NAME: "br-custom", validation.OPTION_MTU: "1400",
            validation.OPTION_ICC: "false",
        }),
        DRIVERS,
    )
    assert (spec.bridge, spec.mtu, spec.enable_icc) == ("br-custom", 1400, False)
    explicit = model.network_from_proto(_network(enable_icc=True, options={
        validation.OPTION_ICC: "false"}), DRIVERS)
    assert explicit.enable_icc is True


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"subnet": "10.88.0.1/24"}, errors.InvalidArgument),
        ({"subnet": "nonsense"}, errors.InvalidArgument),
        ({"gateway": "10.89.0.1"}, errors.InvalidArgument),
        ({"gateway": "10.88.0.255"}, errors.InvalidArgument),
        ({"bridge_name": "a-very-long-bridge-name"}, errors.InvalidArgument),
        ({"bridge_name": "bad name"}, errors.InvalidArgument),
        ({"driver": 42}, errors.InvalidArgument),  # an undefined driver
        ({"network_id": "bad id"}, errors.InvalidArgument),
        ({"mtu": 10}, errors.InvalidArgument),
        ({"options": {validation.OPTION_ICC: "maybe"}}, errors.InvalidArgument),
        ({"options": {validation.OPTION_MTU: "big"}}, errors.InvalidArgument),
    ],
)
def test_network_validation(fields, code):
    with pytest.raises(code):
        model.network_from_proto(_network(**fields), DRIVERS)


@pytest.mark.parametrize(
    ("mapping", "code"),
    [
        (pb.PortMapping(host_port=0, container_port=80), errors.InvalidArgument),
        (pb.PortMapping(host_port=70000, container_port=80), errors.InvalidArgument),
        (pb.PortMapping(host_port=8080, container_port=0), errors.InvalidArgument),
        (pb.PortMapping(protocol=9, host_port=8080, container_port=80), errors.InvalidArgument),
        (pb.PortMapping(host_ip="not-an-ip", host_port=8080, container_port=80),
         errors.InvalidArgument),
    ],
)
def test_port_validation(mapping, code):
    spec = model.network_from_proto(_network(), DRIVERS)
    with pytest.raises(code):
        model.ports_from_proto([mapping], spec)


def test_ports_default_to_tcp_and_duplicates_are_refused():
    spec = model.network_from_proto(_network(), DRIVERS)
    (port,) = model.ports_from_proto([pb.PortMapping(host_port=1, container_port=2)], spec)
    assert port.protocol == "tcp"
    twice = [pb.PortMapping(host_port=1, container_port=2)] * 2
    with pytest.raises(errors.InvalidArgument, match="published twice"):
        model.ports_from_proto(twice, spec)


def test_ports_on_an_internal_network_are_refused():
    spec = model.network_from_proto(_network(internal=True), DRIVERS)
    with pytest.raises(errors.FailedPrecondition, match="internal"):
        model.ports_from_proto([pb.PortMapping(host_port=1, container_port=2)], spec)


def test_endpoint_validation_checks_address_before_the_sandbox(tmp_path):
    spec = model.network_from_proto(_network(), DRIVERS)
    # The sandbox is invalid too (not a namespace): the address must be what is refused.
    for address, reason in (("10.99.0.5", "ADDRESS_OUTSIDE_SUBNET"),
                            ("10.88.0.0", "INVALID_ADDRESS"), ("10.88.0.1", "ADDRESS_IS_GATEWAY"),
                            ("x", "INVALID_ADDRESS")):
        with pytest.raises(errors.InvalidArgument) as caught:
            model.endpoint_from_proto(
                pb.Endpoint(endpoint_id="e1", address=address, sandbox="/nonexistent"), spec,
                str(tmp_path), netns.Confinement.at_start((str(tmp_path),)),
            )
        assert caught.value.reason == reason, address


def test_endpoint_sandbox_must_be_a_network_namespace_the_agent_may_use(tmp_path):
    spec = model.network_from_proto(_network(), DRIVERS)
    regular = tmp_path / "file"
    regular.write_text("")
    os.mkfifo(tmp_path / "fifo")  # never opened for reading: it would block
    confinement = netns.Confinement.at_start((str(tmp_path),))
    for sandbox, reason in (("relative/path", "INVALID_SANDBOX"),
                            (str(tmp_path / "missing"), "NAMESPACE_NOT_FOUND"),
                            (str(regular), "INVALID_NAMESPACE"),
                            (str(tmp_path / "fifo"), "INVALID_NAMESPACE"),
                            ("/proc/self/ns/uts", "INVALID_NAMESPACE"),
                            ("/nonexistent/ns", "SANDBOX_NOT_ALLOWED"),
                            (f"{tmp_path}/../{tmp_path.name}/../x", "SANDBOX_NOT_ALLOWED"),
                            ("/proc/self/ns/net", "SANDBOX_IS_HOST"),
                            ("/proc/self/task/../ns/net", "SANDBOX_IS_HOST")):
        with pytest.raises(errors.CnmError) as caught:
            model.endpoint_from_proto(
                pb.Endpoint(endpoint_id="e1", address="10.88.0.5", sandbox=sandbox), spec,
                str(tmp_path), confinement,
            )
        assert caught.value.reason == reason, sandbox


def test_endpoint_matches_for_idempotency():
    spec = model.network_from_proto(_network(), DRIVERS)
    base = model.EndpointSpec(
        endpoint_id="e1", network_id="n1", sandbox="s", netns_path="/var/run/netns/s",
        address="10.88.0.5", mac="02:42:0a:58:00:05", host_interface="cv1",
        container_interface="eth0",
    )
    from dataclasses import replace

    assert base.matches(replace(base, container_interface=""))
    assert not base.matches(replace(base, address="10.88.0.6"))
    assert not base.matches(replace(base, container_interface="eth1"))
    assert not base.matches(
        replace(base, ports=(model.PortSpec("tcp", "", 80, 80),))
    )
    assert spec.same_as(model.network_from_proto(_network(name="other label"), DRIVERS))
    assert not spec.same_as(model.network_from_proto(_network(internal=True), DRIVERS))


def test_faults_parse():
    assert Faults("after:veth,after:ports").after == {"veth", "ports"}
    assert set(CONNECT_STEPS) >= {"veth", "ports", "record"}
    with pytest.raises(ValueError):
        Faults("before:veth")
    with pytest.raises(ValueError):
        Faults("after:nothing")
    with pytest.raises(errors.Internal, match="injected"):
        Faults("after:veth").check("veth")
    Faults("").check("veth")


async def test_teardown_runs_every_step_and_reports_all_failures():
    ran = []

    async def ok():
        ran.append("ok")

    async def missing():
        ran.append("missing")
        raise errors.NotFound("gone")

    async def broken():
        ran.append("broken")
        raise errors.Unavailable("kernel said no")

    teardown = Teardown("delete thing")
    for step in (broken, missing, ok, broken):
        await teardown.step(step.__name__, step)
    assert ran == ["broken", "missing", "ok", "broken"]
    with pytest.raises(errors.Internal, match="2 steps failed"):
        teardown.raise_failures()
    single = Teardown("delete thing")
    await single.step("broken", broken)
    with pytest.raises(errors.Unavailable, match="delete thing: broken: kernel said no"):
        single.raise_failures()


async def test_context_keeps_the_class_reason_metadata_and_cause():
    async def taken():
        raise errors.AlreadyExists("port taken", reason="PORT_ALLOCATED", endpoint_id="e1")

    teardown = Teardown("disconnect endpoint 'e2'")
    await teardown.step("remove ports", taken)
    with pytest.raises(errors.AlreadyExists) as caught:
        teardown.raise_failures()
    error = caught.value
    assert error.message == "disconnect endpoint 'e2': remove ports: port taken"
    assert (error.reason, error.metadata) == ("PORT_ALLOCATED", {"endpoint_id": "e1"})
    assert error.__cause__.__cause__.message == "port taken"


@pytest.mark.parametrize(
    ("code", "expected"),
    [(19, errors.NotFound), (17, errors.AlreadyExists), (54, errors.ResourceExhausted),
     (1, errors.PermissionDenied), (5, errors.Internal)],
)
def test_kernel_errors_become_named_errors_with_context(code, expected):
    from pyroute2.netlink.exceptions import NetlinkError

    from netdriver_service import netlink

    converted = netlink._convert(NetlinkError(code), "create veth 'cv1' for endpoint 'e1'")
    assert isinstance(converted, expected)
    assert converted.message.startswith("create veth 'cv1' for endpoint 'e1': ")


class _NoIpv6Handle:
    """A netlink handle of a kernel booted with ipv6.disable=1: IFLA_AF_SPEC{AF_INET6}
    is refused with EAFNOSUPPORT (a test cannot reboot the machine's kernel)."""

    def __init__(self):
        self.requests = []

    async def link(self, command, **fields):
        from pyroute2.netlink.exceptions import NetlinkError

        if "IFLA_AF_SPEC" in fields:
            raise NetlinkError(97)  # EAFNOSUPPORT
        self.requests.append((command, fields))


async def test_a_kernel_without_ipv6_still_gets_alias_and_hairpin():
    from netdriver_service.netlink import Netlink

    handle = _NoIpv6Handle()
    netlink = Netlink()

    async def fake_handle(ns):
        return handle

    netlink._handle = fake_handle
    await netlink.set_bridge_port("cv1", alias="cnm:ep:e1:n1", hairpin=True)
    await netlink.disable_ipv6_link_local("eth0", "/proc/self/ns/net")
    assert handle.requests == [("set", {"ifname": "cv1", "kind": "bridge_slave", "mode": 1,
                                         "ifalias": "cnm:ep:e1:n1"})]
