"""The Docker Compose deployment, built and run for real.

Two "hosts" (network namespaces) joined by an underlay switch (a bridge in a
third namespace, which also plays the outside client). Each host runs its own
dockerd; host 1 runs docker-compose.yml (redis, ipam, orchestrator, agent),
host 2 runs docker-compose.agent.yml pointed at host 1's orchestrator, with the
`docker` profile (cnm-docker-plugin beside the agent, for host 2's dockerd). The
images are built offline from the one Dockerfile (deploy/build-images.sh: a
debootstrap base image, cached in /var/cache/cnm, and a wheelhouse). Then the
seed's story goes through the `cnm` CLI: a network, two sandboxes that reach
each other, a published port reached from outside, and the same on host 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import support
from tests.compose.daemon import Compose, DockerDaemon
from tests.docker.image import busybox_tar

pytestmark = [pytest.mark.root, pytest.mark.compose, pytest.mark.timeout(1200)]

REPO = support.REPO
CNM = str(Path(sys.executable).parent / "cnm")
UNDERLAY = "10.213.7"  # /24, only inside this test's namespaces
SERVICE_UID = 10001  # the image's user of ipam and the orchestrator
REDIS_PASSWORD = uuid.uuid4().hex
SWITCH_IP = f"{UNDERLAY}.254"
BUSYBOX = "cnm-busybox:compose"  # imported offline (tests/docker/image.py)
CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 12, 13, 16, 19, 21


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str):
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 1)


class Host:
    """One simulated host: a namespace on the underlay, its dockerd, its host id."""

    def __init__(self, number: int, switch: support.Netns, workdir: Path,
                 plugins: bool = False):
        """``plugins``: its dockerd has a plugin directory of its own (cnm's plugin
        serves there)."""
        self.number = number
        self.id = f"node{number}-{uuid.uuid4().hex[:6]}"
        self.ip = f"{UNDERLAY}.{number}"
        self.netns = support.Netns("cnmt")
        try:
            self._plug_into(switch)
        except BaseException:
            self.netns.close()
            raise
        self.workdir = workdir / f"host{number}"
        self.workdir.mkdir(parents=True)
        self.pki = self.workdir / "pki"  # this host's CNM_PKI_DIR
        self.daemon = DockerDaemon(self.netns, self.workdir,
                                   plugins_dir=self.workdir / "plugins" if plugins else None)

    def _plug_into(self, switch: support.Netns) -> None:
        # Both ends are created in their namespaces: nothing touches the root one.
        port = f"cnmsw{self.number}-{self.netns.name[-6:]}"[:15]
        subprocess.run(
            ["ip", "link", "add", "uplink0", "netns", self.netns.name, "type", "veth",
             "peer", "name", port, "netns", switch.name],
            check=True,
        )
        switch.run("ip", "link", "set", port, "master", "sw0", "up")
        self.netns.run("ip", "addr", "add", f"{self.ip}/24", "dev", "uplink0")
        self.netns.run("ip", "link", "set", "uplink0", "up")
        self.netns.run("ip", "route", "add", "default", "via", SWITCH_IP)

    def cli_env(self) -> dict[str, str]:
        """No CNM_* setting but where this host's CLI configuration is (as if in ~)."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("CNM_")},
                "CNM_CONFIG": str(self.workdir / "cli.json")}

    def configure_cli(self, orchestrator: str) -> None:
        """What an operator does once per host (deploy/README.md): `cnm config set`."""
        subprocess.run(
            [CNM, "config", "set", f"orchestrator={orchestrator}", f"host_id={self.id}",
             f"run_dir={self.workdir / 'run'}", f"tls_ca={self.pki / 'ca.crt'}",
             f"tls_cert={self.pki / 'admin.crt'}", f"tls_key={self.pki / 'admin.key'}"],
            check=True, capture_output=True, timeout=60, env=self.cli_env())

    def cli(self, *args: str, check: bool = True) -> str:
        """Runs the `cnm` CLI on this host (its network namespace, as root), with no flag
        but those of the command: the rest comes from the host's `cnm config`."""
        result = subprocess.run(
            ["nsenter", f"--net={self.netns.path}", "--", CNM, *args],
            check=False, capture_output=True, text=True, timeout=60, env=self.cli_env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"cnm {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def sandboxes(self) -> list[str]:
        prefix = f"cnm-{self.id}-"
        return [name for name in os.listdir("/var/run/netns") if name.startswith(prefix)]

    def remove_leftover_sandboxes(self) -> None:
        """Sandboxes (and their processes) the story left behind, if it failed midway."""
        for name in self.sandboxes():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "delete", name], check=False)

    def close(self) -> None:
        self.daemon.stop()
        self.remove_leftover_sandboxes()
        self.netns.close()


@dataclass
class Deployment:
    switch: support.Netns
    host1: Host
    host2: Host
    central: Compose | None = None  # docker-compose.yml on host 1
    agent: Compose | None = None  # docker-compose.agent.yml on host 2
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def orchestrator(self) -> str:
        return f"{self.host1.ip}:50051"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Both hosts up and healthy."""
    workdir = tmp_path_factory.mktemp("compose")
    timings: dict[str, float] = {}
    switch = support.Netns("cnmt")
    switch.run("ip", "link", "add", "sw0", "type", "bridge")
    switch.run("ip", "addr", "add", f"{SWITCH_IP}/24", "dev", "sw0")
    switch.run("ip", "link", "set", "sw0", "up")
    hosts: list[Host] = []
    projects: list[Compose] = []
    try:
        host1 = Host(1, switch, workdir)
        hosts.append(host1)
        host2 = Host(2, switch, workdir, plugins=True)
        hosts.append(host2)
        with timed(timings, "dockerd start"):
            host1.daemon.start()
        with timed(timings, "build images"):
            # The default image names, whatever CNM_* the caller has set; only
            # where the base rootfs is cached may be chosen (CNM_BASE_CACHE).
            env = {k: v for k, v in os.environ.items()
                   if not k.startswith("CNM_") or k == "CNM_BASE_CACHE"}
            # A wheelhouse of its own: another run in this tree may be building.
            wheelhouse = f"build/wheelhouse-{host1.netns.name}"
            try:
                build = subprocess.run(
                    [str(REPO / "deploy" / "build-images.sh")], check=False, cwd=REPO,
                    capture_output=True, text=True, timeout=900,
                    env={**env, "DOCKER_HOST": host1.daemon.host, "CNM_WHEELHOUSE": wheelhouse},
                )
            finally:
                shutil.rmtree(REPO / wheelhouse, ignore_errors=True)
            assert build.returncode == 0, f"image build failed:\n{build.stdout}\n{build.stderr}"

        orchestrator = f"{host1.ip}:50051"
        with timed(timings, "certificates, CLI configuration"):
            make_certificates(host1, host2)
            for host in (host1, host2):
                host.configure_cli(orchestrator)
        central = Compose(
            host1.daemon, f"cnmt{uuid.uuid4().hex[:8]}", [REPO / "docker-compose.yml"],
            {
                "CNM_HEALTH_INTERVAL": "1s",
                "CNM_HOST_ID": host1.id,
                "CNM_RUN_DIR": str(host1.workdir / "run"),
                "CNM_UNDERLAY_IP": host1.ip,
                "CNM_ORCHESTRATOR_LISTEN": orchestrator,
                "CNM_PKI_DIR": str(host1.pki),
                "CNM_REDIS_PASSWORD": REDIS_PASSWORD,
                # No CNM_HOSTS: the agents register themselves.
                "CNM_ORCHESTRATOR": orchestrator,
            },
        )
        projects.append(central)

        def central_up() -> None:
            with timed(timings, "central up + healthy"):
                central.run("up", "-d", "--no-build")
                central.wait_healthy()

        # Host 2's daemon and image are made ready while the central services start.
        with ThreadPoolExecutor(max_workers=1) as pool:
            starting = pool.submit(central_up)
            with timed(timings, "host 2: dockerd + agent image copy"):
                host2.daemon.start()
                image = workdir / "agent-image.tar"
                host1.daemon.docker("save", "--output", str(image), "cnm-agent:latest",
                                    timeout=300)
                host2.daemon.docker("load", "--input", str(image), timeout=300)
                image.unlink()
            starting.result()
        with timed(timings, "host 2: agent up + healthy"):
            agent = Compose(
                host2.daemon, f"cnmt{uuid.uuid4().hex[:8]}", [REPO / "docker-compose.agent.yml"],
                {
                    "CNM_HEALTH_INTERVAL": "1s",
                    "CNM_HOST_ID": host2.id,
                    "CNM_RUN_DIR": str(host2.workdir / "run"),
                    "CNM_UNDERLAY_IP": host2.ip,
                    "CNM_ORCHESTRATOR": orchestrator,
                    "CNM_NETDRIVER_LISTEN": f"{host2.ip}:50053",
                    "CNM_PKI_DIR": str(host2.pki),
                    "COMPOSE_PROFILES": "docker",
                },
            )
            projects.append(agent)
            agent.run("up", "-d", "--no-build")
            agent.wait_healthy()
        yield Deployment(switch, host1, host2, central, agent, timings)
    finally:
        with timed(timings, "teardown: compose down"):
            for project in reversed(projects):
                project.run("down", "--volumes", "--timeout", "10", check=False)
        with timed(timings, "teardown: daemons, namespaces"):
            for host in reversed(hosts):
                host.close()
            switch.close()
        sys.stderr.write(f"\ncompose test timings (s): {json.dumps(timings)}\n")


def make_certificates(host1: Host, host2: Host) -> None:
    """What deploy/README.md, "Certificates", tells an operator to do: a CA and the
    central services' certificates on host 1, an agent certificate per host, keys of the
    unprivileged services owned by their user; host 2 gets its own and the CA's."""
    def pki(*args: str) -> None:
        subprocess.run([CNM, "pki", *args], check=True, capture_output=True, timeout=60)

    directory = str(host1.pki)
    pki("init", "--dir", directory)
    pki("issue", "--dir", directory, "--role", "ipam", "--san", "127.0.0.1", "ipam")
    pki("issue", "--dir", directory, "--role", "orchestrator", "--san", host1.ip, "--san",
        "127.0.0.1", "orchestrator")
    pki("issue", "--dir", directory, "--role", "agent", "--host-id", host1.id, "--san",
        "127.0.0.1", "agent")
    pki("issue", "--dir", directory, "--role", "admin", "admin")
    for key in ("ipam.key", "orchestrator.key"):
        os.chown(host1.pki / key, SERVICE_UID, SERVICE_UID)
    pki("issue", "--dir", directory, "--role", "agent", "--host-id", host2.id, "--san",
        host2.ip, f"agent-{host2.id}")
    host2.pki.mkdir(mode=0o700)
    for source, target in (("ca.crt", "ca.crt"), (f"agent-{host2.id}.crt", "agent.crt"),
                           (f"agent-{host2.id}.key", "agent.key"), ("admin.crt", "admin.crt"),
                           ("admin.key", "admin.key")):
        shutil.copy2(host1.pki / source, host2.pki / target)


def proc_status(pid: int) -> dict[str, str]:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.strip()
    return status


def http_get(netns_path: str, url: str, timeout: float = 15.0) -> str:
    """GETs ``url`` from inside the namespace at ``netns_path``, retrying until answered."""
    script = (
        "import sys, urllib.request\n"
        "print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())\n"
    )
    last = ""

    def fetched():
        nonlocal last
        result = subprocess.run(
            ["nsenter", f"--net={netns_path}", "--", sys.executable, "-c", script, url],
            check=False, capture_output=True, text=True, timeout=10,
        )
        last = result.stderr.strip().splitlines()[-1:] or [""]
        return result.stdout.strip() if result.returncode == 0 else None

    try:
        return support.wait_for(fetched, timeout, 0.2, f"GET {url} from {netns_path}")
    except TimeoutError as error:
        raise AssertionError(f"{error}: last error {last}") from error


def ping(sandbox: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{sandbox}", "--", "ping", "-c", "1", "-W", "2",
         address],
        check=False, capture_output=True, text=True, timeout=10,
    )


def web_server(host: Host, name: str) -> list[str]:
    """The command of a sandbox that serves its own name over HTTP on port 80."""
    root = host.workdir / f"www-{name}"
    root.mkdir()
    (root / "index.html").write_text(name)
    return [sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0",
            "--directory", str(root)]


def test_services_run_as_configured(deployment: Deployment):
    host1, host2, central = deployment.host1, deployment.host2, deployment.central
    assert central.health() == {
        "redis": "healthy", "ipam": "healthy", "orchestrator": "healthy", "agent": "healthy",
    }

    for service in ("ipam", "orchestrator"):
        info = host1.daemon.inspect(central.container(service))
        assert info["HostConfig"]["NetworkMode"] == "host"
        uid = proc_status(info["State"]["Pid"])["Uid"].split()
        assert uid[0] == "10001", f"{service} runs as uid {uid}, want the non-root cnm user"

    for host, compose in ((host1, central), (host2, deployment.agent)):
        info = host.daemon.inspect(compose.container("agent"))
        host_config = info["HostConfig"]
        assert host_config["Privileged"] is False
        assert host_config["NetworkMode"] == "host"
        assert host_config["PidMode"] == "host"
        assert "/var/run/netns:/var/run/netns:rshared" in host_config["Binds"]
        status = proc_status(info["State"]["Pid"])
        assert status["Uid"].split()[0] == "0"
        effective = int(status["CapEff"], 16)
        for cap in (CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN):
            assert effective >> cap & 1, f"agent lacks capability {cap}"
        for cap in (CAP_SYS_MODULE, CAP_SYS_PTRACE):
            assert not effective >> cap & 1, f"agent has capability {cap} it does not need"
        # An agent without CNM_HOST_ID takes the host's name as its id.
        assert compose.exec("agent", "hostname").stdout.strip() == socket.gethostname()
        # The agent works in its host's namespace: its nftables table is there.
        tables = host.netns.run("nft", "list", "tables").stdout
        assert "cnm" in tables, f"no cnm table in {host.netns.name}: {tables!r}"

    # Redis: a password, and AOF on, in the named volume.
    anonymous = central.exec("redis", "redis-cli", "ping", check=False)
    assert "NOAUTH" in anonymous.stdout + anonymous.stderr, anonymous
    appendonly = central.exec("redis", "sh", "-c", 'REDISCLI_AUTH="$CNM_REDIS_PASSWORD" '
                              'redis-cli config get appendonly').stdout.split()
    assert appendonly == ["appendonly", "yes"]
    mounts = host1.daemon.inspect(central.container("redis"))["Mounts"]
    assert [(m["Type"], m["Destination"]) for m in mounts] == [("volume", "/data")]


def test_story_on_one_host(deployment: Deployment):
    host1, central = deployment.host1, deployment.central
    # The host's CLI, with an admin certificate; it runs commands in sandboxes with nsenter.
    host1.cli("network", "create", "--subnet", "192.168.0.0/24", "testbr",
              )
    try:
        listed = host1.cli("network", "ls")
        assert "testbr" in listed and "192.168.0.0/24" in listed
        hosts = {h["host_id"]: h for h in json.loads(
            host1.cli("host", "ls", "--format", "json"))}
        assert hosts[host1.id]["address"] == "127.0.0.1:50053"
        # The services' own identities are not an operator's: the orchestrator's
        # certificate cannot drive the orchestrator.
        denied = central.exec("orchestrator", "cnm", "network", "ls", check=False)
        assert denied.returncode == 8 and "spiffe://cnm/orchestrator may not call" in \
            denied.stderr, denied.stderr

        host1.cli("run", "-d", "--net", "testbr", "--name", "web", "-p", "8080:80", "--",
                  *web_server(host1, "web"))
        host1.cli("run", "-d", "--net", "testbr", "--name", "peer", "--", "sleep", "600",
                  )
        web, peer = f"cnm-{host1.id}-web", f"cnm-{host1.id}-peer"
        # Made by the agent in its container, visible on the host: rshared.
        assert sorted(host1.sandboxes()) == sorted([web, peer])
        addresses = sandbox_addresses(host1)
        assert addresses[web].startswith("192.168.0.") and addresses[peer].startswith("192.168.0.")

        for sandbox, other in ((peer, web), (web, peer)):
            result = ping(sandbox, addresses[other])
            assert result.returncode == 0, f"{sandbox} -> {addresses[other]}: {result.stdout}"
        assert http_get(f"/var/run/netns/{peer}", f"http://{addresses[web]}:80/") == "web"
        # The published port: from outside (the switch), and from the host itself.
        assert http_get(deployment.switch.path, f"http://{host1.ip}:8080/") == "web"
        assert http_get(host1.netns.path, "http://127.0.0.1:8080/") == "web"
        # The agent image carries netbase, so its nft names protocols as an operator
        # reads them (the agent itself reads numbers too).
        mapped = central.exec("agent", "nft", "list", "map", "ip", "cnm", "ports_any_port").stdout
        assert "tcp . 8080" in mapped, mapped

        host1.cli("rm", "web", "peer")
        assert host1.sandboxes() == []
    finally:
        host1.cli("rm", "web", "peer", check=False)
        host1.cli("network", "rm", "testbr", check=False)
    assert "testbr" not in host1.cli("network", "ls")


def test_second_host_runs_the_agent_compose_file(deployment: Deployment):
    host1, host2 = deployment.host1, deployment.host2
    hosts = {h["host_id"]: h for h in json.loads(
        host2.cli("host", "ls", "--format", "json"))}
    assert hosts[host2.id]["address"] == f"{host2.ip}:50053"

    host2.cli("network", "create", "--subnet", "192.168.60.0/24", "far",
              )
    try:
        host2.cli("run", "-d", "--host", host2.id, "--net", "far", "--name", "web2",
                  "-p", "8081:80", "--", *web_server(host2, "web2"))
        assert host2.sandboxes() == [f"cnm-{host2.id}-web2"]
        # The network's bridge is on host 2 only.
        assert host2.netns.run("ip", "-o", "link", "show", "type", "bridge").stdout
        assert host1.netns.run("ip", "-o", "link", "show", "type", "bridge").stdout == ""
        assert http_get(host1.netns.path, f"http://{host2.ip}:8081/") == "web2"
        host2.cli("rm", "--host", host2.id, "web2")
    finally:
        host2.cli("rm", "--host", host2.id, "web2", check=False)
        host2.cli("network", "rm", "far", check=False)
    assert host2.sandboxes() == []


def test_docker_uses_cnm_through_the_plugin_beside_the_agent(deployment: Deployment):
    host1, host2, agent = deployment.host1, deployment.host2, deployment.agent
    info = host2.daemon.inspect(agent.container("docker-plugin"))
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and info["HostConfig"]["ReadonlyRootfs"]
    assert int(proc_status(info["State"]["Pid"])["CapEff"], 16) == 0
    docker = host2.daemon.docker
    docker("import", str(busybox_tar(host2.workdir)), BUSYBOX)
    docker("network", "create", "-d", "cnm", "--ipam-driver", "cnm",
           "--subnet", "192.168.70.0/24", "dnet")
    try:
        docker("run", "-d", "--name", "dweb", "--network", "dnet", "-p", "8082:80", BUSYBOX,
               "sh", "-c", "echo dweb > /www/index.html && exec httpd -f -p 80 -h /www")
        address = host2.daemon.inspect("dweb")["NetworkSettings"]["Networks"]["dnet"][
            "IPAddress"]
        assert address.startswith("192.168.70.")
        # cnm made it: its network and endpoint, on host 2.
        [network] = json.loads(host1.cli("network", "inspect", "docker-192.168.70.0-24"))
        assert [(e["host_id"], e["address"]) for e in network["endpoints"]] == \
            [(host2.id, address)]
        assert http_get(host2.netns.path, f"http://{address}:80/") == "dweb"
        # Published by cnm's nftables: from the other host, and from host 2 itself.
        assert http_get(host1.netns.path, f"http://{host2.ip}:8082/") == "dweb"
        assert http_get(host2.netns.path, "http://127.0.0.1:8082/") == "dweb"
        docker("rm", "-f", "dweb")
    finally:
        docker("rm", "-f", "dweb", check=False)
        docker("network", "rm", "dnet", check=False)
    assert "docker-192.168.70.0-24" not in host1.cli("network", "ls")


def test_state_survives_redis_replacement(deployment: Deployment):
    """AOF in a named volume: a new redis container finds the networks of the old one.

    Last in the module: replacing Redis leaves stale connections in the
    orchestrator's pool, which a client without retries turns into one failed
    request each.
    """
    host1, central = deployment.host1, deployment.central
    host1.cli("network", "create", "--subnet", "192.168.50.0/24", "durable")
    old = central.container("redis")
    central.run("rm", "--stop", "--force", "redis")
    central.run("up", "-d", "--no-build", "--no-deps", "redis")
    assert central.container("redis") != old
    central.wait_healthy()

    def network_ls() -> str | None:
        return host1.cli("network", "ls", check=False) or None

    first_answer = network_ls()
    assert "192.168.50.0/24" in support.wait_for(network_ls, 30, 0.2, "networks listed")
    support.wait_for(
        lambda: host1.cli("network", "rm", "durable", check=False),
        30, 0.2, "network durable removed",
    )
    if first_answer is None:
        pytest.xfail("the records survived, but the orchestrator's first request after the "
                     "Redis restart failed: its redis client does not retry a stale connection")


def sandbox_addresses(host: Host) -> dict[str, str]:
    """Sandbox name -> the address of its first endpoint, from `cnm ps`."""
    listed = json.loads(host.cli("ps", "--format", "json"))
    return {sandbox["name"]: sandbox["endpoints"][0]["address"] for sandbox in listed}
