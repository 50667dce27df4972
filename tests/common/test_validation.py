"""The shared input rules (cnm.validation) and the bounds on what an error echoes."""

from __future__ import annotations

import types

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from cnm import errors, validation


@pytest.mark.parametrize("value", ["", ".", "..", "a" * 65, "a/b", "tab\there", "é"])
def test_ids_are_refused(value):
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.check_id("network_id", value)
    assert caught.value.reason == "INVALID_ID" and caught.value.metadata["field"] == "network_id"


@pytest.mark.parametrize("value", ["line\nbreak", "nul\x00", "esc\x1b[2J", "del\x7f",
                                   "sep\u2028"])
def test_free_form_text_refuses_control_characters(value):
    with pytest.raises(errors.InvalidArgument, match="control character"):
        validation.check_text("owner", value, 256, reason="INVALID_OWNER")
    with pytest.raises(errors.InvalidArgument):
        validation.check_labels({"key": value})
    with pytest.raises(errors.InvalidArgument):
        validation.check_network_options({"key": value})
    validation.check_text("owner", "ok ünïcode and spaces", 256, reason="INVALID_OWNER")


@pytest.mark.parametrize(("subnet", "reason"), [
    ("10.0.0.0/33", "INVALID_CIDR"), ("300.1.1.0/24", "INVALID_CIDR"),
    ("10.0.0.1/24", "HOST_BITS_SET"), ("10.0.0.0", "INVALID_CIDR"),
    ("10.0.0.0/7", "RANGE_TOO_LARGE"), ("::/0", "SUBNET_TOO_LARGE"),
    ("fd00::/47", "SUBNET_TOO_LARGE"),
])
def test_subnets_are_refused_with_ipams_reasons(subnet, reason):
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.check_subnet(subnet)
    assert caught.value.reason == reason


def test_a_networks_main_subnet_is_ipv4_and_its_ipv6_one_ipv6():
    assert validation.check_subnet("fd00::/64", ip_range="fd00::/104").network.version == 6
    with pytest.raises(errors.InvalidArgument, match="IPv6-only networks come") as caught:
        validation.check_network_subnet("fd00::/64", ip_range="fd00::/104")
    assert caught.value.reason == "IPV6_NOT_SUPPORTED"
    assert str(validation.check_ipv6_subnet("fd00::/64").gateway) == "fd00::1"
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.check_ipv6_subnet("10.0.0.0/24")
    assert caught.value.reason == "WRONG_ADDRESS_FAMILY"
    for bad in ("fd00::/127", "fd00::/128", "fd00::/40"):
        with pytest.raises(errors.InvalidArgument):
            validation.check_ipv6_subnet(bad)
    assert validation.check_host_ip("[::1]") == "::1"
    assert validation.check_host_ip("::") == ""
    assert validation.check_host_ip("0.0.0.0") == ""
    assert validation.check_host_ip("127.000.0.1".replace("000", "0")) == "127.0.0.1"


def test_protocols_by_number():
    assert [validation.protocol_name(n) for n in (0, 1, 2, 3)] == ["tcp", "tcp", "udp", "sctp"]
    for number in (4, 99, -7):
        with pytest.raises(errors.InvalidArgument) as caught:
            validation.protocol_name(number)
        assert caught.value.reason == "INVALID_PROTOCOL"


def test_options_read_like_docker_and_refuse_what_the_agent_cannot_apply():
    options = validation.check_network_options({
        validation.OPTION_MTU: "1400", validation.OPTION_ICC: "False",
        validation.OPTION_BRIDGE_NAME: "br0", validation.OPTION_INTERNAL: "1",
    })
    assert (options.mtu, options.enable_icc, options.bridge_name, options.internal) == (
        1400, False, "br0", True)
    for key, value in ((validation.OPTION_INTERNAL, "maybe"), (validation.OPTION_MTU, "12"),
                       (validation.OPTION_MTU, "١٥٠٠"), (validation.OPTION_BRIDGE_NAME, "x" * 16),
                       (validation.OPTION_MCAST_SNOOPING, "on"), ("", "v")):
        with pytest.raises(errors.InvalidArgument):
            validation.check_network_options({key: value})


@pytest.mark.parametrize("address", ["127.0.0.1:1", "[fd00::1]:50053", "agent.example:443",
                                     "unix:/run/a.sock", "unix:///run/a.sock"])
def test_host_addresses_taken(address):
    assert validation.check_host_address(address) == address


@pytest.mark.parametrize("address", ["", "127.0.0.1", "127.0.0.1:0", "1.2.3.4:99999",
                                     "unix:a.sock", "unix:/a/../b", "x y:1", "-a:1",
                                     "[zz]:1", "999.1.1.1:1", "; drop table pools; --"])
def test_host_addresses_refused(address):
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.check_host_address(address)
    assert caught.value.reason == "INVALID_HOST_ADDRESS"


def test_generations_leave_room_for_a_later_one():
    assert validation.check_generation(validation.MAX_GENERATION) == 2**63 - 1
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.check_generation(2**64 - 1)
    assert caught.value.reason == "INVALID_GENERATION"


def test_mac_from_address_and_check_mac():
    assert validation.mac_from_address("10.88.0.10") == "02:42:0a:58:00:0a"
    # An IPv6 address (an IPv6-only network): its last 32 bits.
    assert validation.mac_from_address("fd00:e::a:10") == "02:42:00:0a:00:10"
    assert validation.check_mac("02:42:0A:58:00:0A") == "02:42:0a:58:00:0a"


def test_overlap_is_already_exists_wherever_found():
    with pytest.raises(errors.AlreadyExists) as caught:
        validation.subnets_overlap("10.0.0.0/24", "10.0.0.0/16", "network 'a'", "network 'b'")
    assert caught.value.reason == "SUBNET_OVERLAP"
    validation.subnets_overlap("10.1.0.0/24", "10.0.0.0/24", "a", "b")


def test_sandboxes():
    assert validation.check_sandbox("/var/run/netns//x") == "/var/run/netns/x"
    for bad in (".", "..", "../..", "a/b", "s" * 10_000, "/x\n"):
        with pytest.raises(errors.InvalidArgument) as caught:
            validation.check_sandbox(bad)
        assert caught.value.reason == "INVALID_SANDBOX"
        assert len(caught.value.message) < 300


def test_an_error_status_stays_small_whatever_it_echoes():
    huge = "x" * 10_000
    error = errors.InvalidArgument(f"bad {huge} and é" * 3, reason="R",
                                   **{f"k{n}": huge for n in range(40)})
    status = errors.to_grpc_status(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(status.details.encode()) <= errors.MAX_MESSAGE_BYTES
    trailer = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(trailer) < 8 * 1024 // 2
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(trailer).details[0].Unpack(info)
    assert info.reason == "R" and 0 < len(info.metadata) < 40
    assert errors.capped(huge) == "x" * errors.MAX_SHOWN + "..."


def test_port_mappings_refuse_what_the_container_or_the_host_cannot_take():
    def mapping(host_ip, protocol=validation.PROTOCOL_NUMBERS["tcp"]):
        return types.SimpleNamespace(protocol=protocol, host_ip=host_ip, host_port=8080,
                                     container_port=80)
    sctp = validation.PROTOCOL_NUMBERS["sctp"]
    for mappings, flags, match in (
            ([mapping("::1")], {"ipv6": False}, "IPv6 host address"),
            ([mapping("127.0.0.1")], {"ipv4": False}, "IPv4 host address"),
            ([mapping("::1", sctp)], {}, "sctp on"),
    ):
        with pytest.raises(errors.InvalidArgument, match=match):
            validation.check_port_mappings(mappings, False, **flags)
    assert validation.check_port_mappings([mapping("", sctp), mapping("::1")], False)
