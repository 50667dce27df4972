"""A real runtime: Debian's podman 4.3 with its CNI backend runs containers on cnm
networks through cnm-cni.

Podman gets a containers.conf, storage, run and CNI configuration directories of
its own under the test's temp dir (never the machine's), and a root filesystem
made here (busybox); the cnm host is a namespace of the test's
(tests/multihost/cluster.py), where the agent plumbs what the plugin asks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cnm.orchestrator.v1 import orchestrator_pb2 as pb
from tests import support
from tests.multihost import cluster as multihost

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed"),
]
PLUGIN = str(Path(support.PYTHON).with_name("cnm-cni"))


class Podman:
    """``podman`` with every path of its own under ``root``."""

    def __init__(self, root: Path, cni_socket: str) -> None:
        self.root = root
        # Podman wants a run root of at most 50 characters.
        self.run_root = tempfile.mkdtemp(prefix="cnmt-podman-", dir="/tmp")
        bin_dir, self.conf_dir = root / "cni-bin", root / "cni-conf"
        for directory in (bin_dir, self.conf_dir, root / "tmp"):
            directory.mkdir(parents=True, exist_ok=True)
        # Installed as the docs say: one file in the runtime's CNI bin dir.
        subprocess.run([PLUGIN, "--install", str(bin_dir)], check=True, capture_output=True)
        self.containers_conf = root / "containers.conf"
        self.containers_conf.write_text(
            "[containers]\n"
            # Podman's defaults (and even this machine's own limits) are refused here.
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{bin_dir}"]\n'
            f'network_config_dir = "{self.conf_dir}"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n'
        )
        self.cni_socket = cni_socket
        self.rootfs = root / "rootfs"
        for directory in ("bin", "etc", "proc", "sys", "dev", "tmp", "www"):
            (self.rootfs / directory).mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which("busybox"), self.rootfs / "bin" / "busybox")
        (self.rootfs / "bin" / "sh").symlink_to("busybox")
        (self.rootfs / "www" / "index.html").write_text("podman-on-cnm\n")

    def network(self, name: str, cnm_network: str) -> None:
        (self.conf_dir / f"{name}.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": name,
            "plugins": [{"type": "cnm", "network": cnm_network, "socket": self.cni_socket,
                         "capabilities": {"portMappings": True, "ips": True, "mac": True,
                                          "aliases": True}}],
        }))

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ["PATH"], "CONTAINERS_CONF": str(self.containers_conf),
               "CONTAINERS_REGISTRIES_CONF": str(self.root / "registries.conf"),
               "HOME": str(self.root)}
        return subprocess.run(
            ["podman", "--root", str(self.root / "storage"), "--runroot",
             self.run_root, "--tmpdir", str(self.root / "tmp"),
             "--storage-driver", "vfs", "--network-config-dir", str(self.conf_dir), *args],
            env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def remove_all(self) -> None:
        self("rm", "-a", "-f", "-t", "0")
        shutil.rmtree(self.run_root, ignore_errors=True)


@pytest.fixture
def world(redis_url, netns, tmp_path):
    cluster = multihost.MultiHost(tmp=tmp_path, redis_url=redis_url,
                                  underlay=support.Underlay(netns)).start()
    cluster.add_host()
    cluster.add_host()
    podman = Podman(tmp_path / "podman", cluster.hosts[0].cni_socket)
    yield cluster, podman
    podman.remove_all()
    cluster.stop()


def test_a_podman_container_on_a_cnm_network_talks_publishes_and_is_released(world, netns):
    cluster, podman = world
    h1, h2 = cluster.hosts
    assert cluster.cnm("network", "create", "--subnet", "10.46.0.0/24", "podbr").code == 0
    podman.network("podbr", "podbr")
    started = podman("run", "-d", "--name", "web", "--network", "podbr", "--network-alias",
                     "www", "-p", "18090:80",
                     "--rootfs", str(podman.rootfs), "/bin/busybox", "httpd", "-f", "-p",
                     "80", "-h", "/www")
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    (endpoint,) = [e for e in cluster.call("ListEndpoints", pb.ListEndpointsRequest(
        network="podbr")).endpoints if e.container_id == container_id]
    assert [m.host_port for m in endpoint.port_mappings] == [18090]
    # Podman passes the container's name, its --network-alias and its short id as the
    # network's aliases (runtimeConfig.aliases); it writes the ADD result's resolver
    # first in the container's resolv.conf, and the names resolve there.
    assert list(endpoint.dns_names) == ["web", "www", container_id[:12]]
    looked = podman("run", "--rm", "--network", "podbr", "--rootfs", str(podman.rootfs),
                    "/bin/busybox", "sh", "-c", "head -2 /etc/resolv.conf; nslookup www; "
                    "nslookup web")
    assert looked.returncode == 0, looked.stderr
    assert looked.stdout.splitlines()[:2] == ["search cnm.internal", "nameserver 10.46.0.1"]
    assert looked.stdout.count(f"Address: {endpoint.address}") == 2, looked.stdout
    # A container started by cnm run on the same host reaches it...
    peer = cluster.container(h1, "peer", "podbr")
    support.wait_for(lambda: "podman-on-cnm" in (http_get(peer.sandbox, endpoint.address, 80)
                                                  or ""), 15, 0.5, "the podman container")
    # ... and its published port answers from a client namespace and from the host.
    client = netns("cnmt-client")
    support.connect_namespaces(h1.ns, "toclient", "10.47.0.1/24", client, "eth0",
                               "10.47.0.2/24")
    assert "podman-on-cnm" in (http_get(client.name, "10.47.0.1", 18090) or "")
    assert "podman-on-cnm" in (http_get(h1.ns.name, "127.0.0.1", 18090) or "")
    # podman rm -f gives back the address and the port (read back from cnm).
    removed = podman("rm", "-f", "-t", "0", "web")
    assert removed.returncode == 0, removed.stderr
    left = [e.container_id for e in cluster.call("ListEndpoints", pb.ListEndpointsRequest(
        network="podbr")).endpoints]
    assert left == [peer.sandbox]
    reuse = f"cnm-{h1.host_id}-reuse"
    cluster.call("CreateSandbox", pb.CreateSandboxRequest(name=reuse, host_id=h1.host_id))
    again = cluster.call("ConnectContainer", pb.ConnectContainerRequest(
        network="podbr", container_id=reuse, host_id=h1.host_id, sandbox=reuse,
        address=endpoint.address, port_mappings=[pb.PortMapping(host_port=18090,
                                                                container_port=80)]))
    assert again.endpoint.address == endpoint.address

    # Across hosts: a podman container on h1 reaches a container on h2 over an overlay.
    del h2
    cluster.create_overlay("podov", "10.48.0.0/24")
    podman.network("podov", "podov")
    far = cluster.container(cluster.hosts[1], "far", "podov")
    server = subprocess.Popen(["ip", "netns", "exec", far.sandbox, "busybox", "httpd", "-f",
                               "-p", "8080", "-h", str(podman.rootfs / "www")])
    try:
        reached = podman("run", "--rm", "--network", "podov", "--rootfs", str(podman.rootfs),
                         "/bin/busybox", "wget", "-q", "-O", "-",
                         f"http://{far.address}:8080/")
        assert reached.returncode == 0, reached.stderr
        assert "podman-on-cnm" in reached.stdout
    finally:
        server.kill()
        server.wait()


def http_get(namespace: str, host: str, port: int) -> str | None:
    """What an HTTP GET of host:port answers, asked from namespace ``namespace``."""
    # (Debian's static busybox wget crashes with -T: the subprocess's timeout bounds it.)
    done = subprocess.run(["ip", "netns", "exec", namespace, "busybox", "wget", "-q", "-O",
                           "-", f"http://{host}:{port}/"],
                          capture_output=True, text=True, timeout=30, check=False)
    return done.stdout if done.returncode == 0 else None
