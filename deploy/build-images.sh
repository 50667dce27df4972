#!/usr/bin/env bash
# Builds cnm's images offline: the wheelhouse (on this host, from PyPI), the
# local Debian base image (debootstrap, cached), then every image of
# docker-compose.yml from the one Dockerfile.
#
#   deploy/build-images.sh [docker-compose build options]
#
# Environment: DOCKER_HOST (the daemon to build on), CNM_BASE_IMAGE (default
# cnm-base:bookworm), CNM_IMAGE_TAG (default latest), CNM_WHEELHOUSE (default
# build/wheelhouse), and those of build-base-image.sh and build-wheelhouse.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${CNM_BASE_IMAGE:-cnm-base:bookworm}
# Inside the build context; CNM_WHEELHOUSE lets concurrent builds of one tree
# keep apart (it must match build/wheelhouse*, see .dockerignore).
wheelhouse=${CNM_WHEELHOUSE:-build/wheelhouse}
deploy/build-wheelhouse.sh "$wheelhouse"
DOCKER="docker${DOCKER_HOST:+ -H $DOCKER_HOST}" deploy/build-base-image.sh "$base" >/dev/null
# Building reads no secret, but compose checks every required variable of the file.
CNM_REDIS_PASSWORD=${CNM_REDIS_PASSWORD:-not-needed-to-build} \
CNM_BASE_IMAGE=$base docker-compose -f docker-compose.yml build \
  --build-arg WHEELHOUSE="$wheelhouse" "$@"
