"""--metrics-listen: where the endpoint goes, and a bad or taken address refused at start."""

from __future__ import annotations

import socket
import subprocess

import pytest

from cnm import metrics
from tests import support


@pytest.mark.parametrize(("text", "where"), [
    ("9101", ("127.0.0.1", 9101)), ("0.0.0.0:9101", ("0.0.0.0", 9101)),
    ("[::1]:9101", ("::1", 9101)), ("localhost:9101", ("localhost", 9101)),
])
def test_a_bare_port_is_loopback(text, where):
    assert metrics.parse_listen(text) == where


@pytest.mark.parametrize("text", ["x", "9101x", "0", "70000", "host.example:9101", ":9101"])
def test_a_bad_address_is_refused(text):
    with pytest.raises(ValueError, match="--metrics-listen"):
        metrics.parse_listen(text)


@pytest.mark.parametrize("bad", ["nonsense", "taken"])
def test_a_service_with_a_bad_or_taken_metrics_address_does_not_start(bad, tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    value = "nonsense" if bad == "nonsense" else str(holder.getsockname()[1])
    try:
        started = subprocess.run(
            [support.PYTHON, "-m", "ipam_service", "--listen",
             f"127.0.0.1:{support.free_port()}", "--redis-url", "redis://127.0.0.1:1/0",
             "--metrics-listen", value],
            capture_output=True, text=True, timeout=60, check=False, cwd=support.REPO)
    finally:
        holder.close()
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot start" in lines[0] and "--metrics-listen" in lines[0], \
        started.stderr


def test_with_tls_the_metrics_are_https_and_ask_for_a_certificate_of_the_ca(
        tmp_path, redis_url):
    import ssl
    import urllib.error
    import urllib.request

    from cnm import pki

    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue(directory, "ipam", "ipam", sans=("127.0.0.1",))
    pki.issue(directory, "viewer", "viewer")
    port, address = support.free_port(), f"127.0.0.1:{support.free_port()}"
    process = support.Process(
        [support.PYTHON, "-m", "ipam_service", "--listen", address, "--redis-url", redis_url,
         "--metrics-listen", str(port), "--tls-ca", str(directory / "ca.crt"),
         "--tls-cert", str(directory / "ipam.crt"), "--tls-key", str(directory / "ipam.key")],
        log_path=tmp_path / "ipam.log")
    try:
        context = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        context.load_cert_chain(directory / "viewer.crt", directory / "viewer.key")

        def scraped() -> str | None:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics",
                                            context=context, timeout=2) as reply:
                    return reply.read().decode()
            except (OSError, urllib.error.URLError):
                return None

        text = support.wait_for(scraped, 20, 0.1, "the metrics over HTTPS")
        assert "process_resident_memory_bytes" in text
        anonymous = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=anonymous,
                                   timeout=2).read()
        with pytest.raises((OSError, urllib.error.URLError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    finally:
        process.stop()
