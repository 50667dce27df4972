"""A Docker daemon inside a test network namespace, and docker-compose against it.

dockerd is started with ``nsenter --net`` into a namespace the test made, so
"the host network" of its containers (``network_mode: host``) is that
namespace: every link, route and nftables rule the composed cnm agent makes
stays inside it. ``nsenter`` rather than ``ip netns exec``: the latter mounts
a fresh /sys, hiding the cgroup mounts dockerd needs. The daemon runs without
a default bridge and without iptables rules (cnm's compose file uses only host
networking), with its own data root, exec root, socket and containerd
namespace, so that two test runs (or a system dockerd) never meet.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from tests import support


def docker_binary() -> str:
    """Debian's docker CLI (matches its dockerd), else whichever is on PATH."""
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("docker CLI not found (apt-get install docker.io)")
    return found


def mount_points_under(root: Path) -> list[str]:
    """Mount points below ``root`` in this mount namespace, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


class DockerDaemon:
    """dockerd in network namespace ``netns``, its state under ``workdir``."""

    def __init__(self, netns: support.Netns, workdir: Path, plugins_dir: Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        """``plugins_dir``: the daemon's own plugin directory, seen by it (in a mount
        namespace of its own) at /run/docker/plugins, where dockerd always looks: two
        daemons of one machine each find their own ``cnm`` plugin there."""
        self.netns = netns
        self.workdir = workdir
        self.plugins_dir = plugins_dir
        self.extra_args = extra_args
        self.holder: support.Process | None = None  # of the mount namespace (plugins_dir)
        # Unix socket paths are limited to 108 bytes: keep them short.
        self.run_dir = Path("/run") / f"{netns.name}-docker"
        self.data_root = workdir / "data"
        self.socket = self.run_dir / "docker.sock"
        self.process: support.Process | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout: float = 60.0) -> DockerDaemon:
        for binary in ("dockerd", "nsenter"):
            if shutil.which(binary) is None:
                raise RuntimeError(f"{binary} not found (apt-get install docker.io util-linux)")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        args = [
            "nsenter", f"--net={self.netns.path}", "--",
            "dockerd",
            "--host", self.host,
            "--data-root", str(self.data_root),
            "--exec-root", str(self.run_dir / "exec"),
            "--pidfile", str(self.run_dir / "docker.pid"),
            "--containerd-namespace", self.netns.name,
            "--containerd-plugins-namespace", f"{self.netns.name}-plugins",
            "--bridge=none", "--iptables=false", "--ip-masq=false",
            "--log-level=warn", *self.extra_args,
        ]
        if self.plugins_dir is not None:
            args[1:1] = [f"--mount=/proc/{self._mount_holder()}/ns/mnt"]
        self.process = support.Process(args, log_path=self.workdir / "dockerd.log")
        try:
            support.wait_for(self._answers, timeout, 0.1, f"dockerd in {self.netns.name}")
        except TimeoutError as error:
            raise RuntimeError(f"{error}\n{self.process.log_tail()}") from error
        return self

    def _mount_holder(self) -> int:
        """The PID of a process holding the daemon's mount namespace, in which its plugin
        directory is /run/docker/plugins: made at the first start, kept across restarts
        (the containers' namespaces are mounted in it, and a daemon restarted with
        --live-restore finds them there again)."""
        if self.holder is None:
            self.plugins_dir.mkdir(parents=True, exist_ok=True)
            # Only the plugin directory is the daemon's own: the mounts it is made on
            # stop propagating to the machine's, while the rest (/run/netns, shared)
            # still does, so that namespaces its containers mount there (cnm's agent's
            # sandboxes) are seen by the machine as they would be without it.
            mount = ('mount --make-slave / && { ! mountpoint -q /run || '
                     'mount --make-slave /run; } && mkdir -p /run/docker/plugins && '
                     'mount --bind "$0" /run/docker/plugins')
            self.holder = support.Process(
                ["unshare", "--mount", "--propagation", "unchanged", "sh", "-c",
                 f"{mount} && exec sleep infinity", str(self.plugins_dir)])
            support.wait_for(lambda: " /run/docker/plugins " in Path(
                f"/proc/{self.holder.pid}/mountinfo").read_text(), 10, 0.02,
                "the daemon's mount namespace")
        return self.holder.pid

    def _answers(self) -> bool:
        if self.process is not None and not self.process.alive():
            raise RuntimeError(f"dockerd exited:\n{self.process.log_tail()}")
        return self.docker("version", check=False, timeout=10).returncode == 0

    def docker(self, *args: str, check: bool = True, timeout: float = 120, **kwargs):
        return subprocess.run(
            [docker_binary(), "--host", self.host, *args],
            check=check, capture_output=True, text=True, timeout=timeout, **kwargs,
        )

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker("inspect", container).stdout)[0]

    def stop(self) -> None:
        """Removes its containers, stops dockerd (and so its containerd) by PID and removes
        its state. Containers first: a --live-restore daemon leaves them running when it
        stops, and a test that failed midway may have left some."""
        if self.process is not None and self.process.alive():
            listed = self.docker("ps", "--all", "--quiet", check=False, timeout=60)
            if listed.returncode == 0 and listed.stdout.split():
                self.docker("rm", "--force", *listed.stdout.split(), check=False, timeout=120)
        self.stop_daemon()
        self._remove_state()

    def stop_daemon(self) -> None:
        """Stops dockerd (and so its containerd) by PID, keeping its state: start() again
        is a daemon restart."""
        containerd_pid = self._containerd_pid()
        if self.process is not None:
            self.process.stop(timeout=60)
            self.process = None
        if containerd_pid is not None:
            # dockerd stops the containerd it started; make sure, by that PID only.
            deadline = time.monotonic() + 10
            while Path(f"/proc/{containerd_pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{containerd_pid}").exists():
                os.kill(containerd_pid, 9)

    def _remove_state(self) -> None:
        if self.holder is not None:
            self.holder.stop()
            self.holder = None
        for root in (self.run_dir, self.data_root):
            for point in mount_points_under(root):
                subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
            subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)
        # dockerd makes its plugin directory whatever --exec-root says; leave
        # nothing behind but what is still in use.
        for empty in ("/run/docker/plugins", "/run/docker"):
            with contextlib.suppress(OSError):
                os.rmdir(empty)

    def _containerd_pid(self) -> int | None:
        pidfile = self.run_dir / "exec" / "containerd" / "containerd.pid"
        try:
            return int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return None


class Compose:
    """docker-compose for one project, against one daemon, with a fixed environment."""

    def __init__(self, daemon: DockerDaemon, project: str, files: list[Path], env: dict[str, str]):
        """The project of ``files``, with the ``.env`` beside the first (as an operator
        runs it from that directory), and ``env`` for the rest."""
        self.daemon = daemon
        self.project = project
        self.files = files
        # No stray CNM_* settings of the machine running the test.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CNM_", "COMPOSE_"))}
        self.env = {**clean, "DOCKER_HOST": daemon.host, **env}

    def args(self, *args: str) -> list[str]:
        files = [arg for path in self.files for arg in ("-f", str(path))]
        return ["docker-compose", "-p", self.project, *files, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 300):
        result = subprocess.run(
            self.args(*args), check=False, env=self.env, cwd=self.files[0].parent,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    # Lookups go through the docker CLI and compose's labels: one docker-compose
    # (Python) start costs about a second, which adds up in polling loops.

    def containers(self) -> dict[str, str]:
        """Service name -> container id, for this project's containers."""
        listed = self.daemon.docker(
            "ps", "--all", "--filter", f"label=com.docker.compose.project={self.project}",
            "--format", '{{.Label "com.docker.compose.service"}} {{.ID}}',
        ).stdout
        return dict(line.split() for line in listed.splitlines() if line.strip())

    def container(self, service: str) -> str:
        found = self.containers().get(service)
        if found is None:
            raise AssertionError(f"no {service} container in project {self.project}")
        return found

    def exec(self, service: str, *command: str, check: bool = True):
        """Runs ``command`` in ``service``'s container (like docker-compose exec -T)."""
        return self.daemon.docker("exec", self.container(service), *command, check=check)

    def health(self) -> dict[str, str]:
        """Health status of each of the project's containers, by service."""
        containers = self.containers()
        if not containers:
            return {}
        states = json.loads(self.daemon.docker("inspect", *containers.values()).stdout)
        by_id = {state["Id"]: state["State"] for state in states}
        status = {}
        for service, short_id in containers.items():
            state = next(v for k, v in by_id.items() if k.startswith(short_id))
            status[service] = (state.get("Health") or {}).get("Status", state["Status"])
        return status

    def wait_healthy(self, timeout: float = 120.0) -> None:
        last: dict[str, str] = {}

        # Those `up` started: the files also list services of profiles not turned on.
        services = list(self.containers())

        def all_healthy() -> bool:
            nonlocal last
            last = self.health()
            return all(last.get(service) == "healthy" for service in services)

        try:
            support.wait_for(all_healthy, timeout, 0.5, f"{self.project} to be healthy")
        except TimeoutError as error:
            logs = self.run("logs", "--no-color", "--tail", "30", check=False).stdout
            raise AssertionError(f"{error}: {last}\n{logs}") from error
