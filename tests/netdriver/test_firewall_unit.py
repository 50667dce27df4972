"""Unit tests of the firewall: JSON batch building, element round trips,
validation and conflict rules, and the ``none`` backend. No root needed;
the same behaviour is proven against real nftables in
test_firewall_nftables.py."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest
from prometheus_client import REGISTRY

from cnm import errors
from netdriver_service.firewall import NetworkRules, PortRule, ruleset
from netdriver_service.firewall.backends import BACKENDS, make_firewall
from netdriver_service.firewall.libnft import NftError, Timed
from netdriver_service.firewall.nftables_backend import NftablesFirewall
from netdriver_service.firewall.ports import split_against, validate_ports

NET_A = NetworkRules("net-a", "cnmA", "10.88.1.0/24", "10.88.1.1")
NET_B = NetworkRules("net-b", "cnmB", "10.88.2.0/24", "10.88.2.1", allowed_networks=("net-a",))
NET_I = NetworkRules("net-i", "cnmI", "10.88.3.0/24", "10.88.3.1", internal=True,
                     enable_icc=False)


def rule(endpoint="e1", host_port=8080, host_ip="", protocol="tcp", container_port=80):
    return PortRule(endpoint, "net-a", protocol, host_ip, host_port, "10.88.1.2", container_port)


def test_base_is_one_table_of_cnm_and_nothing_else():
    commands = ruleset.base_commands()
    tables = {(body["family"], body.get("table", body.get("name")))
              for command in commands for verb, objects in command.items()
              for body in objects.values()}
    assert tables == {("inet", "cnm")}
    assert all(list(command) == ["add"] for command in commands)
    verbs = [next(iter(command["add"])) for command in commands]
    assert verbs.count("rule") == sum(len(rules) for _, rules in ruleset.CHAINS.values())
    assert "flush" not in str(commands) and "ruleset" not in str(commands)


def test_rule_count_does_not_grow_with_networks_or_ports():
    networks = [NetworkRules(f"n{i}", f"br{i}", f"10.{i}.0.0/24", f"10.{i}.0.1")
                for i in range(50)]
    ports = [PortRule(f"e{i}", f"n{i}", "tcp", "", 1000 + i, f"10.{i}.0.2", 80)
             for i in range(50)]
    commands, _ = ruleset.diff_commands(ruleset.empty_elements(),
                                        ruleset.desired_elements(networks, ports))
    assert all(next(iter(command["add"])) == "element" for command in commands)


@pytest.mark.parametrize("set_name,element", [
    ("bridges", ruleset.Element(("cnmA",), comment="net-a 10.88.1.1")),
    ("subnet_bridge", ruleset.Element(("10.88.1.0/24", "cnmA"), comment="net-a")),
    ("masq_subnets", ruleset.Element(("10.88.1.0/24",))),
    ("self_verdicts", ruleset.Element(("cnmA", "cnmA"), "goto icc_off")),
    ("self_verdicts", ruleset.Element(("cnmA", "cnmA"), "accept")),
    ("allowances", ruleset.Element(("cnmB", 12345), comment="net-a")),
    ("ports_any_addr", ruleset.Element(("tcp", 8080), "10.88.1.2", "e1 net-a")),
    ("ports_addr_port", ruleset.Element(("127.0.0.1", "udp", 53), 5353, "e1 net-a")),
])
def test_elements_round_trip_through_json(set_name, element):
    assert ruleset.element_from_json(set_name, ruleset.element_to_json(set_name, element)) \
        == element


def test_element_json_is_what_libnftables_lists():
    element = ruleset.Element(("10.0.0.1", "tcp", 80), "10.88.1.2", "e1 net-a")
    assert ruleset.element_to_json("ports_addr_addr", element) == [
        {"elem": {"val": {"concat": ["10.0.0.1", "tcp", 80]}, "comment": "e1 net-a"}},
        "10.88.1.2",
    ]
    assert ruleset.element_to_json("masq_subnets", ruleset.Element(("10.88.1.0/24",))) == \
        {"prefix": {"addr": "10.88.1.0", "len": 24}}


def test_network_elements():
    wanted = ruleset.network_elements(NET_I)
    assert set(wanted["internal"]) == {("cnmI",)}
    assert wanted["masq_subnets"] == {}
    assert wanted["self_verdicts"][("cnmI", "cnmI")].value == "goto icc_off"
    wanted = ruleset.network_elements(NET_B)
    assert set(wanted["masq_subnets"]) == {("10.88.2.0/24",)}
    assert [e.comment for e in wanted["allowances"].values()] == ["net-a"]


def test_allowed_pairs_need_both_networks():
    alone = ruleset.desired_elements([NET_B], [])
    assert alone["allowed_pairs"] == {}
    both = ruleset.desired_elements([NET_A, NET_B], [])
    assert set(both["allowed_pairs"]) == {("cnmA", "cnmB")}


def test_publish_batch_creates_and_guards():
    batch = ruleset.publish_batch([rule(host_port=8080), rule(host_port=9090, host_ip="10.0.0.1")])
    verbs = [(verb, body["element"]["name"]) for command in batch
             for verb, body in command.items()]
    assert verbs == [
        ("create", "ports_any_addr"), ("create", "ports_any_port"),
        ("create", "specific_guard"), ("delete", "specific_guard"),
        ("create", "ports_addr_addr"), ("create", "ports_addr_port"),
        ("create", "ports_any_addr"), ("delete", "ports_any_addr"),
        ("add", "specific_guard"),
    ]


def test_ports_read_back_from_elements():
    ports = [rule(host_port=8080), rule("e2", 9090, "10.0.0.1", "udp", 53)]
    wanted = ruleset.desired_elements([], ports)
    assert ruleset.ports_from_elements(wanted) == sorted(ports, key=ruleset.port_sort_key)
    del wanted["ports_any_port"][("tcp", 8080)]  # half a mapping is no mapping
    assert ruleset.ports_from_elements(wanted) == [ports[1]]


@pytest.mark.parametrize(("listed", "key"), [
    ({"concat": ["tcp", 8081]}, ("tcp", 8081)),
    ({"concat": [6, 8081]}, ("tcp", 8081)),          # no /etc/protocols
    ({"concat": ["17", "5353"]}, ("udp", 5353)),
    ({"concat": [132, 9]}, ("sctp", 9)),
    ({"concat": ["tcp", "http"]}, ("tcp", 80)),      # nft named the port
])
def test_elements_read_back_whether_nft_prints_names_or_numbers(listed, key):
    item = [{"elem": {"val": listed, "comment": "e1 net-a"}}, 80]
    assert ruleset.element_from_json("ports_any_port", item).key == key


def test_a_port_of_a_protocol_cnm_does_not_publish_is_not_reported():
    # Written by hand into cnm's maps: resync removes it; nothing reads it as a port.
    elements = ruleset.desired_elements([], [rule()])
    stray = ruleset.element_from_json(
        "ports_any_addr", [{"elem": {"val": {"concat": [99, 7]}, "comment": "e9 net-a"}},
                           "10.88.1.9"])
    elements["ports_any_addr"][stray.key] = stray
    elements["ports_any_port"][stray.key] = ruleset.Element(stray.key, 7, stray.comment)
    assert ruleset.ports_from_elements(elements) == [rule()]


def test_diff_removes_stale_and_adds_missing():
    actual = ruleset.desired_elements([NET_A], [rule(host_port=7000)])
    wanted = ruleset.desired_elements([NET_A], [rule(host_port=8080)])
    commands, lines = ruleset.diff_commands(actual, wanted)
    assert [next(iter(command)) for command in commands] == ["delete", "delete", "add", "add"]
    assert "removed stale ports_any_addr element tcp . 7000 : 10.88.1.2 (e1 net-a)" in lines
    assert ruleset.diff_commands(wanted, wanted) == ([], [])


def test_elements_of_network_include_its_ports_and_pairs():
    state = ruleset.desired_elements([NET_A, NET_B], [rule(host_port=8080)])
    mine = ruleset.elements_of_network(state, "net-a")
    assert set(mine["allowed_pairs"]) == {("cnmA", "cnmB")}
    assert set(mine["ports_any_addr"]) == {("tcp", 8080)}
    assert mine["bridges"].keys() == {("cnmA",)} and mine["allowances"] == {}


def test_chain_drift():
    chains = {name: rules for name, (_, rules) in ruleset.CHAINS.items()}
    assert ruleset.chain_drift(chains) == []
    chains["forward"] = chains["forward"][1:]
    del chains["input"]
    assert ruleset.chain_drift(chains) == ["forward", "input"]


def test_validate_ports_refuses_overlap_within_one_request():
    assert validate_ports([rule(), rule()]) == [rule()]
    with pytest.raises(errors.InvalidArgument):
        validate_ports([rule(), rule("e2", host_ip="10.0.0.1")])
    with pytest.raises(errors.InvalidArgument):
        validate_ports([rule(protocol="icmp")])
    validate_ports([rule(), rule(protocol="udp"), rule(host_port=8081)])


def test_overlaps_are_found_among_thousands_of_mappings_wherever_they_sit():
    """The mappings are indexed by (protocol, host port): a host with many published
    ports checks one more as it checks the first, and still finds a clash at any
    distance, per address or on every address."""
    many = [rule(f"e{n}", 10000 + n, host_ip=f"10.0.{n % 200}.{n % 250 + 1}") for n in range(3000)]
    assert validate_ports(many + many[:10]) == many
    assert split_against(many, many[::-1]) == []
    assert split_against(many, [rule("new", 12999, "10.9.9.9")]) == [rule("new", 12999, "10.9.9.9")]
    with pytest.raises(errors.InvalidArgument, match="e2999"):
        validate_ports([*many, rule("late", 12999)])
    with pytest.raises(errors.AlreadyExists) as caught:
        split_against(many, [rule("late", 12999)])
    assert caught.value.metadata["endpoint_id"] == "e2999"
    with pytest.raises(errors.AlreadyExists) as caught:
        split_against([*many, rule("any", 20000)], [rule("late", 20000, "10.0.0.1")])
    assert caught.value.metadata["endpoint_id"] == "any"
    assert split_against(many, [rule("udp", 12999, protocol="udp")]) == [
        rule("udp", 12999, protocol="udp")
    ]


def test_split_against_names_the_holder():
    held = [rule("holder", 8080), rule("other", 9090, "10.0.0.1")]
    assert split_against(held, [rule("holder", 8080)]) == []
    with pytest.raises(errors.AlreadyExists) as caught:
        split_against(held, [rule("e2", 8080, "10.0.0.2")])
    assert caught.value.metadata["endpoint_id"] == "holder"
    with pytest.raises(errors.AlreadyExists) as caught:
        split_against(held, [rule("e2", 9090)])
    assert caught.value.metadata["endpoint_id"] == "other"
    assert split_against(held, [rule("e2", 9090, "10.0.0.2")]) == [rule("e2", 9090, "10.0.0.2")]


def test_registry():
    assert BACKENDS == ("nftables", "none")
    assert make_firewall("none").name == "none"
    with pytest.raises(errors.InvalidArgument):
        make_firewall("iptables")


async def test_none_backend_keeps_port_bookkeeping():
    firewall = make_firewall("none")
    await firewall.add_network(NET_A)
    await firewall.add_ports([rule("e1", 8080)])
    await firewall.add_ports([rule("e1", 8080)])
    with pytest.raises(errors.AlreadyExists) as caught:
        await firewall.add_ports([rule("e2", 8080, "10.0.0.1")])
    assert caught.value.metadata["endpoint_id"] == "e1"
    assert await firewall.list_ports() == [rule("e1", 8080)]
    assert await firewall.list_networks() == ["net-a"]
    await firewall.remove_network("net-a")
    assert await firewall.list_ports() == [] and await firewall.element_count() == 0


async def test_none_backend_drift_is_what_its_sync_would_change():
    firewall = make_firewall("none")
    await firewall.add_network(NET_A)
    await firewall.add_ports([rule("e1", 8080)])
    assert await firewall.drift([NET_A], [rule("e1", 8080)]) == []
    assert await firewall.drift([], [rule("e1", 8080)]) == ["network bookkeeping differs"]
    assert await firewall.drift([NET_A], []) == ["port bookkeeping differs"]
    assert await firewall.list_ports() == [rule("e1", 8080)]  # drift changed nothing
    await firewall.sync([NET_A], [])
    assert await firewall.drift([NET_A], []) == []


class FakeRunner:
    """Records batches; answers listings from ``state``; fails creates of held keys."""

    name = "fake"

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.state = ruleset.empty_elements()

    def run(self, commands: list[dict]) -> dict:
        if commands and "list" in commands[0]:
            return {"nftables": [{"map" if ruleset.SETS[name][1] else "set": {
                "family": "ip", "table": "cnm", "name": name,
                "elem": [ruleset.element_to_json(name, e) for e in elements.values()]}}
                for name, elements in self.state.items()]}
        for command in commands:
            body = command.get("create", {}).get("element")
            if body and any(ruleset.element_from_json(body["name"], item).key
                            in self.state[body["name"]] for item in body["elem"]):
                raise NftError("Error: Could not process rule: File exists")
        self.batches.append(commands)
        for command in commands:
            for verb, objects in command.items():
                body = objects.get("element")
                if body is None:
                    continue
                for item in body["elem"]:
                    element = ruleset.element_from_json(body["name"], item)
                    if verb == "delete":
                        self.state[body["name"]].pop(element.key, None)
                    else:
                        self.state[body["name"]][element.key] = element
        return {}


async def test_add_ports_is_one_batch_without_reading():
    runner = FakeRunner()
    firewall = NftablesFirewall(runner)
    await firewall.add_ports([rule("e1", 8080), rule("e1", 8081, "10.0.0.1")])
    assert len(runner.batches) == 1
    await firewall.add_ports([rule("e1", 8080)])  # conflict path: reads, finds it is ours
    assert len(runner.batches) == 1
    with pytest.raises(errors.AlreadyExists):
        await firewall.add_ports([dataclasses.replace(rule("e2", 8080), container_port=81)])
    await firewall.remove_ports("e1")
    assert all(not elements for elements in runner.state.values())


class SlowRunner(FakeRunner):
    """A FakeRunner whose batches take a while and that records overlapping calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = 0
        self.most_inside = 0
        self.guard = threading.Lock()

    def run(self, commands: list[dict]) -> dict:
        with self.guard:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(0.2)
            return super().run(commands)
        finally:
            with self.guard:
                self.inside -= 1


async def test_a_cancelled_call_keeps_the_lock_until_its_batch_is_done():
    runner = SlowRunner()
    firewall = NftablesFirewall(runner)
    call = asyncio.ensure_future(firewall.add_ports([rule("e1", 8080)]))
    await asyncio.sleep(0.05)  # the batch is running in its thread
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    # The cancelled call returned only once its batch was committed ...
    assert runner.inside == 0 and len(runner.batches) == 1
    await firewall.add_ports([rule("e2", 8081)])
    # ... so libnftables never ran two batches at once.
    assert runner.most_inside == 1


class CountingRunner(FakeRunner):
    """A FakeRunner that counts listings and, like the kernel, refuses to delete a missing key."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    def run(self, commands: list[dict]) -> dict:
        if commands and "list" in commands[0]:
            self.listings += 1
        deletes_only = all("delete" in command for command in commands)
        for command in commands if deletes_only else ():
            body = command["delete"].get("element")
            if body and any(ruleset.element_from_json(body["name"], item).key
                            not in self.state[body["name"]] for item in body["elem"]):
                raise NftError("Error: Could not process rule: No such file or directory")
        return super().run(commands)


async def test_remove_ports_with_the_known_ports_reads_nothing_and_stays_idempotent():
    runner = CountingRunner()
    firewall = NftablesFirewall(runner)
    mine = [rule("e1", 8080), rule("e1", 8081, "10.0.0.1")]
    others = [rule(f"o{n}", 9000 + n) for n in range(20)]
    await firewall.add_ports(mine)
    await firewall.add_ports(others)
    runner.listings = 0
    await firewall.remove_ports("e1", [rule("e1", 8080)])
    assert runner.listings == 0  # the any-address port: deleted by key, no listing
    await firewall.remove_ports("e1", mine)  # one is gone already: falls back to a scan
    assert runner.listings > 0
    assert {port.endpoint_id for port in await firewall.list_ports()} == {f"o{n}" for n in range(20)}
    assert not runner.state["specific_guard"]
    await firewall.remove_ports("e1", mine)
    assert len(await firewall.list_ports()) == 20


def test_every_batch_is_timed_by_kind_refused_ones_too():
    class Runner:
        name = "fake"

        def run(self, commands):
            if commands == [{"add": "bad"}]:
                raise NftError("Error: syntax error")
            return {"nftables": []}

    def count(kind):
        return REGISTRY.get_sample_value("cnm_agent_nftables_transaction_seconds_count",
                                         {"kind": kind}) or 0

    timed = Timed(Runner())
    before = {kind: count(kind) for kind in ("list", "change")}
    assert timed.run([{"list": {"table": {"family": "ip", "name": "cnm"}}}]) == {"nftables": []}
    timed.run([{"add": {"element": {}}}, {"list": {"table": {}}}])
    with pytest.raises(NftError):
        timed.run([{"add": "bad"}])
    assert {kind: count(kind) for kind in before} == {
        "list": before["list"] + 1, "change": before["change"] + 2}
    assert timed.name == "fake"
