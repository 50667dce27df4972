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
echo "building with $(command -v docker) and $(command -v docker-compose) on" \
  "${DOCKER_HOST:-the local daemon} (Docker $(docker version --format '{{.Server.Version}}'))"
deploy/build-wheelhouse.sh "$wheelhouse"
# Debian's Prometheus for the metrics profile: its package from apt, unpacked into the
# build context (a Go server that needs nothing but libc).
if [ ! -x build/prometheus/usr/bin/prometheus ]; then
  download=$(mktemp -d)
  chmod 755 "$download"  # apt downloads as its _apt user
  (cd "$download" && apt-get download prometheus >/dev/null)
  dpkg-deb -x "$download"/prometheus_*.deb build/prometheus
  rm -rf "$download"
fi
DOCKER="docker${DOCKER_HOST:+ -H $DOCKER_HOST}" deploy/build-base-image.sh "$base" >/dev/null
# Building reads no secret, but compose checks every required variable of the file.
CNM_REDIS_PASSWORD=${CNM_REDIS_PASSWORD:-not-needed-to-build} \
CNM_BASE_IMAGE=$base docker-compose -f docker-compose.yml --profile metrics build \
  --build-arg WHEELHOUSE="$wheelhouse" "$@"
# The build stage: tagged, so that it is the next build's cache rather than a
# dangling image, and the ones it replaces (dangling now) removed.
docker build --quiet --target build --tag "cnm-build:${CNM_IMAGE_TAG:-latest}" \
  --build-arg BASE_IMAGE="$base" --build-arg WHEELHOUSE="$wheelhouse" . >/dev/null
docker image prune --force --filter label=org.cnm.stage=build >/dev/null
