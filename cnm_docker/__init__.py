"""cnm as Docker's network and IPAM plugin (``cnm-docker-plugin``); see docs/docker.md."""
