from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compose: builds cnm's images and runs docker-compose.yml under a dockerd in a test "
        "namespace (needs docker.io, docker-compose, debootstrap; select with -m compose)",
    )
