"""The compose files as docker-compose reads them: no daemon, no root needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests import support

pytestmark = pytest.mark.compose

if shutil.which("docker-compose") is None and not support.IS_ROOT:
    pytest.skip("docker-compose is not installed (scripts/setup installs it)",
                allow_module_level=True)

# docker-compose is a Python program that depends on PyYAML: its interpreter
# turns the resolved YAML into JSON for us.
TO_JSON = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"


class ComposeConfig:
    """`docker-compose config` of files of this repository, in a clean environment."""

    def __init__(self, env_file):
        # An empty .env, so that a developer's own .env beside the files is not read.
        self.env_file = env_file
        self.env_file.write_text("")

    def run(self, *files: str, **env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CNM_", "COMPOSE_"))}
        args = ["docker-compose", "--env-file", str(self.env_file),
                "--project-directory", str(support.REPO)]
        for name in files:
            args += ["-f", str(support.REPO / name)]
        return subprocess.run([*args, "config"], check=False, capture_output=True, text=True,
                              env={**clean, **env}, cwd=support.REPO, timeout=60)

    def resolved(self, *files: str, **env: str) -> dict:
        result = self.run(*files, **env)
        assert result.returncode == 0, result.stderr
        with open(shutil.which("docker-compose")) as script:
            interpreter = script.readline().removeprefix("#!").strip()
        converted = subprocess.run([interpreter, "-c", TO_JSON], input=result.stdout,
                                   check=True, capture_output=True, text=True, timeout=30)
        return json.loads(converted.stdout)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> ComposeConfig:
    return ComposeConfig(tmp_path_factory.mktemp("compose-files") / "empty.env")


PASSWORD = {"CNM_REDIS_PASSWORD": "0123abcd"}


def test_first_host_file_runs_everything_on_the_host_network(config):
    services = config.resolved("docker-compose.yml", **PASSWORD)["services"]
    assert set(services) == {"redis", "ipam", "orchestrator", "agent", "docker-plugin",
                             "prometheus"}
    assert services["prometheus"]["profiles"] == ["metrics"]
    # Metrics off unless asked for; the agent's from the shared definition too.
    for name, variable in (("ipam", "CNM_IPAM_METRICS_LISTEN"),
                           ("orchestrator", "CNM_ORCHESTRATOR_METRICS_LISTEN"),
                           ("agent", "CNM_AGENT_METRICS_LISTEN")):
        assert services[name]["environment"]["CNM_METRICS_LISTEN"] == "", name
        on = config.resolved("docker-compose.yml", **PASSWORD, **{variable: "127.0.0.1:9"})
        assert on["services"][name]["environment"]["CNM_METRICS_LISTEN"] == "127.0.0.1:9"
    for name, service in services.items():
        assert service["network_mode"] == "host", name
        assert not service.get("privileged"), name
        assert "CMD-SHELL" in service["healthcheck"]["test"], name
    assert services["ipam"]["environment"]["CNM_IPAM_LISTEN"] == "127.0.0.1:50052"
    assert services["orchestrator"]["environment"]["CNM_ORCHESTRATOR_LISTEN"] == "127.0.0.1:50051"
    assert "cnm.healthcheck" in services["ipam"]["healthcheck"]["test"][1]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] \
        == "yes"
    assert services["redis"]["volumes"] == ["redis-data:/data:rw"]
    # Mutual TLS on every link, each service with its own certificate and only that.
    for name in ("ipam", "orchestrator", "agent"):
        environment = services[name]["environment"]
        assert (environment["CNM_TLS_CA"], environment["CNM_TLS_CERT"],
                environment["CNM_TLS_KEY"]) == ("/etc/cnm/pki/ca.crt",
                                                f"/etc/cnm/pki/{name}.crt",
                                                f"/etc/cnm/pki/{name}.key")
        mounted = sorted(v for v in services[name]["volumes"] if "/etc/cnm/pki" in v)
        assert mounted == sorted(f"{support.REPO}/pki/{f}:/etc/cnm/pki/{f}:ro"
                                 for f in ("ca.crt", f"{name}.crt", f"{name}.key")), mounted
        assert "CNM_INSECURE" not in environment
    for name in ("ipam", "orchestrator", "redis"):
        assert services[name]["environment"]["CNM_REDIS_PASSWORD"] == "0123abcd"
    # Never on a command line.
    assert "0123abcd" not in json.dumps(services["redis"]["command"])
    assert {dep: spec["condition"] for dep, spec in services["agent"]["depends_on"].items()} \
        == {"orchestrator": "service_healthy"}

    agent = services["agent"]
    assert agent["pid"] == "host"
    assert sorted(agent["cap_add"]) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    assert "/var/run/netns:/var/run/netns:rshared" in agent["volumes"]
    # The agent's state is on the host's tmpfs: it lives as long as the kernel objects.
    assert "/run/cnm:/run/cnm:rw" in agent["volumes"]
    for name in ("ipam", "orchestrator"):
        assert services[name]["build"]["target"] == "service"
    assert agent["build"]["target"] == "agent"
    assert agent["build"]["context"] == str(support.REPO)


def test_settings_come_from_the_environment(config):
    services = config.resolved(
        "docker-compose.yml", CNM_IPAM_LISTEN="0.0.0.0:6052", CNM_HOSTS="a=10.0.0.1:50053",
        CNM_BASE_IMAGE="example/base:1", CNM_IMAGE_TAG="v9", **PASSWORD,
    )["services"]
    assert services["ipam"]["environment"]["CNM_IPAM_LISTEN"] == "0.0.0.0:6052"
    assert services["orchestrator"]["environment"]["CNM_HOSTS"] == "a=10.0.0.1:50053"
    assert services["agent"]["build"]["args"]["BASE_IMAGE"] == "example/base:1"
    assert services["agent"]["image"] == "cnm-agent:v9"


def test_first_host_file_requires_a_redis_password(config):
    missing = config.run("docker-compose.yml")
    assert missing.returncode != 0 and "set CNM_REDIS_PASSWORD" in missing.stderr


def test_agent_file_requires_the_central_addresses(config):
    missing = config.run("docker-compose.agent.yml")
    assert missing.returncode != 0
    assert "set CNM_ORCHESTRATOR" in missing.stderr
    missing_listen = config.run("docker-compose.agent.yml", CNM_ORCHESTRATOR="10.0.0.1:50051")
    assert missing_listen.returncode != 0
    assert "set CNM_NETDRIVER_LISTEN" in missing_listen.stderr


def test_agent_file_is_the_first_hosts_agent_alone(config):
    alone = config.resolved(
        "docker-compose.agent.yml",
        CNM_ORCHESTRATOR="10.0.0.1:50051", CNM_NETDRIVER_LISTEN="10.0.0.2:50053",
    )["services"]
    assert set(alone) == {"agent", "docker-plugin"}
    assert alone["docker-plugin"]["environment"]["CNM_ORCHESTRATOR"] == "10.0.0.1:50051"
    agent = alone["agent"]
    assert agent["environment"]["CNM_ORCHESTRATOR"] == "10.0.0.1:50051"
    assert agent["environment"]["CNM_NETDRIVER_LISTEN"] == "10.0.0.2:50053"
    assert "depends_on" not in agent

    first = config.resolved("docker-compose.yml", **PASSWORD)["services"]["agent"]
    same = {key: value for key, value in first.items() if key not in ("depends_on", "environment")}
    assert {key: value for key, value in agent.items() if key != "environment"} == same


def test_the_docker_plugin_runs_only_with_its_profile_and_no_capability(config):
    services = config.resolved("docker-compose.yml", **PASSWORD)["services"]
    plugin = services["docker-plugin"]
    assert plugin["profiles"] == ["docker"]
    assert plugin["image"] == services["agent"]["image"]  # beside the agent, its image
    assert plugin["entrypoint"] == ["cnm-docker-plugin"]
    assert plugin["cap_drop"] == ["ALL"] and "cap_add" not in plugin
    assert plugin["read_only"] and "no-new-privileges:true" in plugin["security_opt"]
    assert "pid" not in plugin
    assert "/run/docker/plugins:/run/docker/plugins:rw" in plugin["volumes"]
    # An admin client (docker network create makes cnm networks), with only that key.
    mounted = sorted(v for v in plugin["volumes"] if "/etc/cnm/pki" in v)
    assert mounted == sorted(f"{support.REPO}/pki/{f}:/etc/cnm/pki/{f}:ro"
                             for f in ("ca.crt", "admin.crt", "admin.key"))
    assert plugin["environment"]["CNM_TLS_CERT"] == "/etc/cnm/pki/admin.crt"
    assert {dep: spec["condition"] for dep, spec in plugin["depends_on"].items()} \
        == {"orchestrator": "service_healthy"}
    moved = config.resolved("docker-compose.yml", CNM_DOCKER_PLUGINS_DIR="/srv/plugins",
                            **PASSWORD)["services"]["docker-plugin"]
    assert "/srv/plugins:/run/docker/plugins:rw" in moved["volumes"]
