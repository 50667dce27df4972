"""The ``cnm`` CLI: parsing, and the real command against an orchestrator over fakes."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from orchestrator import cli
from tests.orchestrator.e2e import CNM, CliResult


@pytest.mark.parametrize(("spec", "expected"), [
    ("8080:80", ("", 8080, 80, pb.PROTOCOL_TCP)),
    ("8080:80/udp", ("", 8080, 80, pb.PROTOCOL_UDP)),
    ("127.0.0.1:53:5353/udp", ("127.0.0.1", 53, 5353, pb.PROTOCOL_UDP)),
    ("[::1]:8443:443/tcp", ("::1", 8443, 443, pb.PROTOCOL_TCP)),
])
def test_parse_port(spec, expected):
    mapping = cli.parse_port(spec)
    assert (mapping.host_ip, mapping.host_port, mapping.container_port,
            mapping.protocol) == expected


@pytest.mark.parametrize("spec", ["80", "a:b", "0:80", "80:70000", "8080:80/icmp",
                                  "1.2.3:80:80", "x:80:80", "80:80:80"])
def test_parse_port_refuses(spec):
    with pytest.raises(cli.UsageError, match="invalid port mapping"):
        cli.parse_port(spec)


def test_sandbox_names_are_per_host_and_fit_the_api():
    assert cli.sandbox_name("h1", "web") == "cnm-h1-web"
    assert cli.sandbox_name("h2", "web") != cli.sandbox_name("h1", "web")
    long = cli.sandbox_name("host" * 10, "name" * 10)
    assert long.startswith("cnm-") and len(long) <= 64
    assert long == cli.sandbox_name("host" * 10, "name" * 10)


async def cnm(world, *args: str) -> CliResult:
    env = {**os.environ, "CNM_ORCHESTRATOR": world.address, "CNM_HOST_ID": "h1",
           "GRPC_ENABLE_FORK_SUPPORT": "0"}
    process = await asyncio.create_subprocess_exec(
        CNM, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    return CliResult(process.returncode, out.decode(), err.decode())


async def test_cli_network_commands_and_exit_codes(world):
    created = await cnm(world, "network", "create", "--subnet", "10.20.0.0/24",
                        "--label", "team=a", "-o", "com.docker.network.driver.mtu=1400", "n1")
    assert created.code == 0 and len(created.out.strip()) == 12
    assert (await cnm(world, "network", "create", "--subnet", "10.30.0.0/24", "n1")).code == 4
    bad = await cnm(world, "network", "create", "--subnet", "10.40.0.0/24", "-bad-")
    assert bad.code == 2
    no_subnet = await cnm(world, "network", "create", "n2")
    assert no_subnet.code == 2 and no_subnet.err == "cnm: error: subnet is required " \
        "(e.g. 10.10.0.0/24)\n"
    table = await cnm(world, "network", "ls")
    assert table.out.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SUBNET",
                                                 "GATEWAY"]
    assert "n1" in table.out and "10.20.0.1" in table.out
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


@pytest.mark.parametrize("args", [[], ["network"], ["network", "connect"], ["run"], ["ps"],
                                  ["rm"], ["host", "ls"], ["network", "prune"]])
def test_help_everywhere(args, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([*args, "--help"])
    assert exited.value.code == 0
    assert "usage: cnm" in capsys.readouterr().out
