"""The ``cnm`` CLI: parsing, and the real command against an orchestrator over fakes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from cnm_cli import main as cli
from tests.orchestrator.e2e import CNM, CliResult


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:80", [("", 8080, 80, pb.PROTOCOL_TCP)]),
    ("8080:80/udp", [("", 8080, 80, pb.PROTOCOL_UDP)]),
    ("127.0.0.1:53:5353/udp", [("127.0.0.1", 53, 5353, pb.PROTOCOL_UDP)]),
    ("0.0.0.0:8080:80", [("", 8080, 80, pb.PROTOCOL_TCP)]),
    # No host port (or 0, as Docker takes it): any free one, which the orchestrator chooses.
    ("80", [("", 0, 80, pb.PROTOCOL_TCP)]),
    ("0:80", [("", 0, 80, pb.PROTOCOL_TCP)]),
    ("127.0.0.1::80/sctp", [("127.0.0.1", 0, 80, pb.PROTOCOL_SCTP)]),
    ("8000-8001:80-81", [("", 8000, 80, pb.PROTOCOL_TCP), ("", 8001, 81, pb.PROTOCOL_TCP)]),
    ("80-81/udp", [("", 0, 80, pb.PROTOCOL_UDP), ("", 0, 81, pb.PROTOCOL_UDP)]),
    ("[::1]:8443:443", [("::1", 8443, 443, pb.PROTOCOL_TCP)]),
    ("[fd00:0::5]::443", [("fd00::5", 0, 443, pb.PROTOCOL_TCP)]),
    ("[::]:8080:80", [("", 8080, 80, pb.PROTOCOL_TCP)]),
])
def test_parse_ports(spec, expected):
    assert [(m.host_ip, m.host_port, m.container_port, m.protocol)
            for m in cli.parse_ports(spec)] == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("a:b", "want"), ("80:70000", "invalid container_port 70000"), ("8080:80/icmp", "want"),
    ("1.2.3:80:80", "not an IP address"), ("x:80:80", "want"),
    ("80:80:80", "not an IP address"),
    ("[::1:8443:443", "want"), ("[fd00::zz]:8443:443", "want"),
    ("8000-8001:80", "2 host ports onto 1 container ports"),
    ("8000-8002:80-81", "3 host ports onto 2"), ("81-80", "range 81-80 is empty"),
    ("8000-8000:80-80", None),
])
def test_parse_ports_refuses(spec, message):
    if message is None:  # a range of one is a port
        assert [m.host_port for m in cli.parse_ports(spec)] == [8000]
        return
    with pytest.raises(cli.UsageError, match="invalid port mapping") as caught:
        cli.parse_ports(spec)
    assert message in str(caught.value)


def test_sandbox_names_are_per_host_and_fit_the_api():
    assert cli.sandbox_name("h1", "web") == "cnm-h1-web"
    assert cli.sandbox_name("h2", "web") != cli.sandbox_name("h1", "web")
    long = cli.sandbox_name("host" * 10, "name" * 10)
    assert long.startswith("cnm-") and len(long) <= 64
    assert long == cli.sandbox_name("host" * 10, "name" * 10)


async def cnm(world, *args: str, answer: str = "") -> CliResult:
    """Runs the CLI; ``answer`` is what it reads on stdin (a question's answer)."""
    env = {**os.environ, "CNM_ORCHESTRATOR": world.address, "CNM_HOST_ID": "h1",
           "GRPC_ENABLE_FORK_SUPPORT": "0"}
    process = await asyncio.create_subprocess_exec(
        CNM, *args, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate(answer.encode())
    return CliResult(process.returncode, out.decode(), err.decode())


async def test_cli_network_commands_and_exit_codes(world):
    created = await cnm(world, "network", "create", "--subnet", "10.20.0.0/24",
                        "--label", "team=a", "-o", "com.docker.network.driver.mtu=1400", "n1")
    assert created.code == 0 and len(created.out.strip()) == 12
    assert (await cnm(world, "network", "create", "--subnet", "10.30.0.0/24", "n1")).code == 4
    bad = await cnm(world, "network", "create", "--subnet", "10.40.0.0/24", "-bad-")
    assert bad.code == 2
    # Without --subnet: the first free subnet of the default address pools.
    assert (await cnm(world, "network", "create", "n2")).code == 0
    assert "172.17.0.0/16" in (await cnm(world, "network", "inspect", "n2")).out
    assert (await cnm(world, "network", "rm", "n2")).code == 0
    no_subnet = await cnm(world, "network", "create", "--gateway", "10.9.0.1", "n4")
    assert no_subnet.code == 2 and no_subnet.err == "cnm: error: gateway '10.9.0.1' needs a " \
        "subnet: give the subnet too, or neither (a subnet is then chosen from the default " \
        "address pools)\n"
    table = await cnm(world, "network", "ls")
    assert table.out.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE",
                                                 "SUBNET",
                                                 "GATEWAY"]
    assert "n1" in table.out and "10.20.0.1" in table.out
    assert table.out.splitlines()[1].split()[2] == "bridge"
    unknown = await cnm(world, "network", "create", "--driver", "macvlan", "--subnet",
                        "10.41.0.0/24", "n3")
    assert unknown.code == 2 and "unknown driver 'macvlan'" in unknown.err
    quiet = await cnm(world, "network", "ls", "-q")
    assert quiet.out.strip() == created.out.strip()
    assert json.loads((await cnm(world, "network", "ls", "--filter", "driver=overlay",
                                 "--format", "json")).out) == []
    bad_filter = await cnm(world, "network", "ls", "--filter", "color=red")
    assert bad_filter.code == 2 and "invalid filter" in bad_filter.err

    connected = await cnm(world, "network", "connect", "-p", "8080:80", "n1", "c1")
    assert (connected.code, connected.out) == (0, "10.20.0.2/24\n")
    assert world.agents["h1"].endpoints
    assert (await cnm(world, "network", "connect", "--host", "h9", "n1", "c2")).code == 3
    assert (await cnm(world, "network", "rm", "n1")).code == 5
    [inspected] = json.loads((await cnm(world, "network", "inspect", "n1")).out)
    assert inspected["options"] == {"com.docker.network.driver.mtu": "1400"}
    assert [e["container_id"] for e in inspected["endpoints"]] == ["c1"]
    assert inspected["driver"] == "bridge"
    hosts = await cnm(world, "host", "ls")
    row = hosts.out.splitlines()[1].split()
    assert row[0] == "h1" and row[2:] == ["healthy", "1", "static"]
    assert (await cnm(world, "network", "disconnect", "n1", "c1")).code == 0
    assert (await cnm(world, "network", "disconnect", "n1", "c1")).code == 3
    removed = await cnm(world, "network", "rm", "n1", "nope")
    assert removed.code == 3 and removed.out == "n1\n" and "nope" in removed.err


async def test_cli_unreachable_orchestrator(world):
    env = {**os.environ, "CNM_ORCHESTRATOR": "127.0.0.1:1"}
    process = await asyncio.create_subprocess_exec(
        CNM, "network", "ls", env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 6
    assert err.decode().startswith("cnm: error: cannot reach the orchestrator")


async def test_cli_disconnect_force_with_the_host_down(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    assert (await cnm(world, "network", "connect", "--host", "h2", "n1", "c1")).code == 0
    await world.servers["h2"].stop(0)
    refused = await cnm(world, "network", "disconnect", "--host", "h2", "n1", "c1")
    assert refused.code == 6 and "agent h2" in refused.err
    forced = await cnm(world, "network", "disconnect", "--force", "--host", "h2", "n1", "c1")
    assert (forced.code, forced.err) == (0, "")
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []
    pruned = await cnm(world, "network", "prune", "-f")
    assert (pruned.code, pruned.out) == (0, "")
    assert pruned.err == "cnm: warning: network n1 not pruned: a host that has it did not answer\n"


async def test_cli_disconnect_force_finds_a_run_sandbox_on_a_host_down(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    sandbox = cli.sandbox_name("h2", "web")
    await world.call("CreateSandbox", pb.CreateSandboxRequest(name=sandbox, host_id="h2"))
    assert (await cnm(world, "network", "connect", "--host", "h2", "n1", "web")).code == 0
    [endpoint] = (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints
    assert endpoint.container_id == sandbox
    await world.servers["h2"].stop(0)
    forced = await cnm(world, "network", "disconnect", "-f", "--host", "h2", "n1", "web")
    assert (forced.code, forced.err) == (0, "")
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []


async def test_cli_run_that_cannot_start_leaks_nothing_and_prints_one_line(world, tmp_path,
                                                                          monkeypatch):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CNM_RUN_DIR", str(blocker / "runs"))  # cannot be made
    failed = await cnm(world, "run", "-d", "--name", "web", "--net", "n1", "--", "true")
    assert failed.code == 1
    assert failed.err.startswith("cnm: error: ") and len(failed.err.splitlines()) == 1
    assert world.agents["h1"].sandboxes == {} and world.agents["h1"].endpoints == {}
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []


async def test_cli_json_listings(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    await world.call("CreateSandbox", pb.CreateSandboxRequest(name="cnm-h1-web", host_id="h1"))
    assert (await cnm(world, "network", "connect", "-p", "8080:80", "n1", "web")).code == 0
    [sandbox] = json.loads((await cnm(world, "ps", "--format", "json")).out)
    assert sandbox["name"] == "cnm-h1-web" and sandbox["host_id"] == "h1"
    assert [e["address"] for e in sandbox["endpoints"]] == ["10.20.0.2"]
    table = (await cnm(world, "ps")).out.splitlines()
    # The table names containers as `cnm run --name` and `cnm rm` do.
    assert table[1].split()[:2] == ["web", "h1"] and "8080->80/tcp" in table[1]
    hosts = json.loads((await cnm(world, "host", "ls", "--format", "json")).out)
    assert [(h["host_id"], h["state"], h["endpoint_count"]) for h in hosts] == [
        ("h1", "HOST_STATE_HEALTHY", 1), ("h2", "HOST_STATE_HEALTHY", 0)]


async def test_cli_host_rm_of_a_static_host_says_it_will_come_back(world):
    removed = await cnm(world, "host", "rm", "h2")
    assert (removed.code, removed.out) == (0, "h2\n")
    assert removed.err.startswith("cnm: warning: host 'h2' is in the orchestrator's static list")
    assert len(removed.err.splitlines()) == 1
    hosts = json.loads((await cnm(world, "host", "ls", "--format", "json")).out)
    assert [h["host_id"] for h in hosts] == ["h1"]
    missing = await cnm(world, "host", "rm", "h2")
    assert missing.code != 0 and missing.err.startswith("cnm: error: host 'h2' not found")


@pytest.mark.parametrize("args", [
    [], ["network"], ["network", "create"], ["network", "ls"], ["network", "inspect"],
    ["network", "rm"], ["network", "prune"], ["network", "connect"], ["network", "disconnect"],
    ["host"], ["host", "ls"], ["run"], ["ps"], ["rm"],
])
def test_help_everywhere(args, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*args, "--help"])
    assert exited.value.code == 0
    assert "usage: cnm" in capsys.readouterr().out


async def test_cli_usage_errors_are_one_line(world):
    for args, words in [
        ((), "arguments are required: COMMAND (see 'cnm --help')"),
        (("network", "create"), "required: name (see 'cnm network create --help')"),
        (("host", "ls", "--format", "xml"), "invalid choice: 'xml'"),
        (("bogus",), "invalid choice: 'bogus'"),
    ]:
        result = await cnm(world, *args)
        assert result.code == 2 and result.out == ""
        assert result.err.startswith("cnm: error: ") and words in result.err
        assert len(result.err.splitlines()) == 1, result.err


async def test_cli_inspect_prints_what_it_found_and_fails_on_the_rest(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    partial = await cnm(world, "network", "inspect", "n1", "nope")
    assert partial.code == 3 and [n["name"] for n in partial.json()] == ["n1"]
    assert partial.err == "cnm: error: network 'nope' not found\n"
    missing = await cnm(world, "network", "inspect", "nope")
    assert (missing.code, missing.json()) == (3, [])


async def test_cli_unresolvable_orchestrator_says_so(world):
    result = await cnm(world, "--orchestrator", "bad::::", "network", "ls")
    assert result.code == 6
    assert result.err.startswith("cnm: error: cannot reach the orchestrator: ")
    # An UNAVAILABLE the orchestrator itself sends is not taken for one.
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    assert (await cnm(world, "network", "connect", "--host", "h2", "n1", "c1")).code == 0
    await world.servers["h2"].stop(0)
    refused = await cnm(world, "network", "disconnect", "--host", "h2", "n1", "c1")
    assert refused.code == 6 and "cannot reach the orchestrator" not in refused.err


async def test_cli_port_taken_names_the_port_and_its_holder(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    assert (await cnm(world, "network", "connect", "-p", "8080:80", "n1", "c1")).code == 0
    taken = await cnm(world, "network", "connect", "-p", "8080:81", "n1", "c2")
    assert taken.code == 4
    assert taken.err.startswith("cnm: error: port 8080/tcp is already published on host h1 "
                                "by container 'c1' on network 'n1' (endpoint ")
    assert (await cnm(world, "network", "connect", "-p", "127.0.0.1:9090:80", "n1", "c3")).code == 0
    specific = await cnm(world, "network", "connect", "-p", "127.0.0.1:9090:80", "n1", "c4")
    assert specific.code == 4 and "port 127.0.0.1:9090/tcp is already" in specific.err


async def test_cli_run_refuses_a_name_in_use(world, tmp_path, monkeypatch):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    await world.call("CreateSandbox", pb.CreateSandboxRequest(name="cnm-h1-web", host_id="h1"))
    monkeypatch.setenv("CNM_RUN_DIR", str(tmp_path))
    for detach in (["-d"], []):
        again = await cnm(world, "run", *detach, "--name", "web", "--net", "n1", "--", "true")
        assert again.code == 4 and again.out == ""
        assert again.err == ("cnm: error: container name 'web' is already in use on host 'h1': "
                             "remove it with 'cnm rm web' or choose another --name\n")
    # The first container's sandbox is untouched: not connected, not removed.
    assert list(world.agents["h1"].sandboxes) == ["cnm-h1-web"]
    assert world.agents["h1"].endpoints == {}
    assert list(tmp_path.iterdir()) == []


async def run_cli(env: dict[str, str], *args: str) -> CliResult:
    process = await asyncio.create_subprocess_exec(
        CNM, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return CliResult(process.returncode, out.decode(), err.decode())


async def test_cli_configured_once_needs_no_flags_and_flags_still_win(world, tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("CNM_")}
    env.update(GRPC_ENABLE_FORK_SUPPORT="0", CNM_CONFIG=str(tmp_path / "cnm" / "config.json"),
               HOME=str(tmp_path))
    # Nothing configured: the default orchestrator address is not this one.
    assert (await run_cli(env, "network", "ls")).code == 6
    stored = await run_cli(env, "config", "set", f"orchestrator={world.address}", "host_id=h1")
    assert stored.code == 0 and stored.out.strip() == env["CNM_CONFIG"], stored.err
    assert oct((tmp_path / "cnm" / "config.json").stat().st_mode & 0o777) == "0o600"
    assert (await run_cli(env, "network", "create", "--subnet", "10.77.0.0/24", "cfg")).code == 0
    assert "cfg" in (await run_cli(env, "network", "ls")).out
    shown = json.loads((await run_cli(env, "config", "show", "--format", "json")).out)
    assert shown["orchestrator"] == {"value": world.address, "source": env["CNM_CONFIG"]}
    assert shown["host_id"]["value"] == "h1"
    # The environment, then flags, win over the file.
    overridden = {**env, "CNM_ORCHESTRATOR": "127.0.0.1:1"}
    assert (await run_cli(overridden, "network", "ls")).code == 6
    assert (await run_cli(overridden, "--orchestrator", world.address, "network", "ls")).code == 0
    shown = json.loads((await run_cli(overridden, "config", "show", "--format", "json")).out)
    assert shown["orchestrator"]["source"] == "environment CNM_ORCHESTRATOR"
    # Bad settings are refused in one line and change nothing.
    refused = await run_cli(env, "config", "set", "colour=blue")
    assert refused.code == 2 and refused.err.count("\n") == 1
    assert (await run_cli(env, "config", "unset", "orchestrator")).code == 0
    assert (await run_cli(env, "network", "ls")).code == 6
    (tmp_path / "cnm" / "config.json").write_text("{not json")
    broken = await run_cli(env, "network", "ls")
    assert broken.code == 2 and "cannot read the configuration" in broken.err


async def test_cli_network_ls_takes_dockers_filters_and_formats(world):
    for name, subnet, driver, labels in (("front", "10.20.0.0/24", "bridge", ["team=a"]),
                                         ("back", "10.21.0.0/24", "overlay", ["team=b"]),
                                         ("frontier", "10.22.0.0/24", "bridge", [])):
        args = ["network", "create", "--subnet", subnet, "-d", driver, name]
        for label in labels:
            args[2:2] = ["--label", label]
        assert (await cnm(world, *args)).code == 0

    async def names(*args: str) -> list[str]:
        result = await cnm(world, "network", "ls", "--format", "{{.Name}}", *args)
        assert result.code == 0, result.err
        return result.out.split()

    assert await names() == ["back", "front", "frontier"]
    assert await names("-f", "name=front") == ["front", "frontier"]
    assert await names("-f", "name=front", "-f", "name=back") == ["back", "front", "frontier"]
    assert await names("-f", "name=front", "-f", "label=team=a") == ["front"]
    assert await names("-f", "scope=global") == ["back"]
    assert await names("-f", "scope=local", "-f", "driver=bridge") == ["front", "frontier"]
    assert await names("-f", "driver=bridge", "-f", "driver=overlay") == [
        "back", "front", "frontier"]
    assert await names("-f", "type=builtin") == []
    assert await names("-f", "type=custom", "--no-trunc") == ["back", "front", "frontier"]
    [front_id] = (await cnm(world, "network", "ls", "-q", "-f", "name=frontier")).out.split()
    assert await names("-f", f"id={front_id[:5]}") == ["frontier"]

    table = await cnm(world, "network", "ls", "-f", "name=back", "--format",
                      "table {{.ID}}\\t{{.Name}}\\t{{.Scope}}\\t{{.Labels}}")
    header, row = table.out.splitlines()
    assert header.split() == ["NETWORK", "ID", "NAME", "SCOPE", "LABELS"]
    assert row.split()[1:] == ["back", "global", "team=b"]
    as_json = await cnm(world, "network", "ls", "-f", "name=back", "--format", "{{json .}}")
    assert json.loads(as_json.out)["Driver"] == "overlay"
    assert (await cnm(world, "network", "ls", "-f", "name=back", "--format",
                      "{{.Internal}} {{json .Labels}}")).out == 'false {"team": "b"}\n'

    for args, message in (
        (["--format", "{{.Nope}}"], "template: can't evaluate field Nope in type network"),
        (["--format", "{{if .Name}}x{{end}}"], "template: {{if .Name}} is not supported"),
        (["-f", "colour=red"], "invalid filter 'colour=red'"),
        (["-f", "scope=planet"], "scope is one of local, global, swarm"),
        (["-f", "driver=macvlan"], "unknown driver 'macvlan'"),
    ):
        refused = await cnm(world, "network", "ls", *args)
        assert refused.code == 2 and refused.err.startswith("cnm: error: ") and \
            message in refused.err and refused.err.count("\n") == 1, refused.err


async def test_cli_network_rm_force_is_dockers_and_disconnect_is_its_own_flag(world):
    assert (await cnm(world, "network", "create", "--subnet", "10.20.0.0/24", "n1")).code == 0
    assert (await cnm(world, "network", "connect", "n1", "c1")).code == 0
    missing = await cnm(world, "network", "rm", "nothere")
    assert missing.code == 3 and "not found" in missing.err
    quiet = await cnm(world, "network", "rm", "-f", "nothere")
    assert (quiet.code, quiet.err) == (0, "")
    in_use = await cnm(world, "network", "rm", "-f", "n1")
    assert in_use.code == 5 and "--disconnect" not in in_use.out
    removed = await cnm(world, "network", "rm", "--disconnect", "n1")
    assert (removed.code, removed.out) == (0, "n1\n")
    assert (await world.call("ListEndpoints", pb.ListEndpointsRequest())).endpoints == []


async def test_cli_network_prune_asks_first_and_takes_filters(world):
    for name, labels in (("keep", ["keep=yes"]), ("old", ["tier=test"]), ("other", [])):
        args = ["network", "create", name]
        for label in labels:
            args[2:2] = ["--label", label]
        assert (await cnm(world, *args)).code == 0

    async def listed() -> list[str]:
        return (await cnm(world, "network", "ls", "--format", "{{.Name}}")).out.split()

    declined = await cnm(world, "network", "prune", answer="n\n")
    assert (declined.code, declined.out) == (0, "")
    assert "Are you sure you want to continue? [y/N]" in declined.err
    assert (await cnm(world, "network", "prune")).out == ""  # no answer is no
    assert await listed() == ["keep", "old", "other"]
    assert (await cnm(world, "network", "prune", "-f", "--filter", "until=1h")).out == ""
    pruned = await cnm(world, "network", "prune", "--filter", "label=tier=test", answer="y\n")
    assert pruned.out == "Deleted Networks:\nold\n"
    pruned = await cnm(world, "network", "prune", "-f", "--filter", "label!=keep",
                       "--filter", "until=2020-01-01T00:00:00Z")
    assert pruned.out == ""
    pruned = await cnm(world, "network", "prune", "-f", "--filter", "label!=keep")
    assert pruned.out == "Deleted Networks:\nother\n"
    assert await listed() == ["keep"]
    for bad in ("until=yesterday", "colour=red", "label="):
        refused = await cnm(world, "network", "prune", "-f", "--filter", bad)
        assert refused.code == 2 and "cnm: error: invalid" in refused.err, refused.err


async def test_cli_network_create_aux_addresses_are_never_handed_out(world):
    created = await cnm(world, "network", "create", "--subnet", "10.20.0.0/29",
                        "--aux-address", "router=10.20.0.2", "--aux-address", "nas=10.20.0.3",
                        "n1")
    assert created.code == 0, created.err
    [pool] = world.ipam.pools.values()
    assert sorted(pool.reserved_addresses) == ["10.20.0.2", "10.20.0.3"]
    [network] = json.loads((await cnm(world, "network", "inspect", "n1")).out)
    assert network["aux_addresses"] == {"router": "10.20.0.2", "nas": "10.20.0.3"}
    for args, message in (
        (["--subnet", "10.21.0.0/24", "--aux-address", "r=10.99.0.1"], "outside subnet"),
        (["--subnet", "10.21.0.0/24", "--aux-address", "r=10.21.0.1"], "is the network's gateway"),
        (["--subnet", "10.21.0.0/24", "--aux-address", "r=10.21.0.255"], "broadcast"),
        (["--subnet", "10.21.0.0/24", "--aux-address", "a=10.21.0.9", "--aux-address",
          "b=10.21.0.9"], "given twice"),
        (["--aux-address", "r=10.21.0.9"], "needs a subnet"),
        (["--subnet", "10.21.0.0/24", "--aux-address", "10.21.0.9"], "invalid aux address"),
    ):
        refused = await cnm(world, "network", "create", *args, "n2")
        assert refused.code == 2 and message in refused.err, (args, refused.err)
    assert len(world.ipam.pools) == 1


def test_completion_scripts_complete_cnms_own_commands_and_options(tmp_path):
    """`cnm completion bash` (shtab), loaded by a real bash, completes subcommands and
    options; every shell shtab knows gets a script."""
    for shell in ("bash", "zsh", "fish"):
        made = subprocess.run([CNM, "completion", shell], capture_output=True, text=True,
                              timeout=60, check=False)
        assert made.returncode == 0 and "cnm" in made.stdout, made.stderr
    script = tmp_path / "cnm.bash"
    script.write_text(subprocess.run([CNM, "completion", "bash"], capture_output=True,
                                     text=True, timeout=60, check=True).stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        probe = (f'source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; '
                 f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; _shtab_cnm; '
                 'printf "%s\\n" "${COMPREPLY[@]}"')
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                              timeout=60, check=True).stdout.split()

    assert complete("cnm", "network", "cr") == ["create"]
    assert complete("cnm", "network", "ls", "--fo") == ["--format"]
    assert "--aux-address" in complete("cnm", "network", "create", "--")
    refused = subprocess.run([CNM, "completion", "cmd.exe"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
