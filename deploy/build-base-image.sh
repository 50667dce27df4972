#!/usr/bin/env bash
# Builds the local base image every cnm image starts from, with no registry:
# a Debian bookworm rootfs made by debootstrap (minbase) with the runtime
# packages installed at bootstrap time, then `docker import`ed.
#
# The rootfs tarball is cached (CNM_BASE_CACHE, default /var/cache/cnm), keyed
# by suite, package list and architecture, so a rebuild only imports it.
#
#   deploy/build-base-image.sh [TAG]            default tag: cnm-base:bookworm
#
# Environment: DOCKER (docker command, default "docker"), CNM_DEBIAN_MIRROR
# (default: the first Debian mirror in apt's sources), CNM_BASE_CACHE,
# CNM_BASE_REBUILD=1 to ignore the cache.
set -euo pipefail

TAG=${1:-cnm-base:bookworm}
SUITE=bookworm
# netbase: /etc/protocols and /etc/services, which nft reads to print "tcp . 8081"
# rather than "6 . 8081" (the agent reads both; an operator reading `nft list` wants names).
PACKAGES=(python3 python3-venv libnftables1 nftables iproute2 redis-server
          procps iputils-ping ca-certificates netbase)
CACHE_DIR=${CNM_BASE_CACHE:-/var/cache/cnm}
read -r -a DOCKER_CMD <<< "${DOCKER:-docker}"

debian_mirror() {
  if [ -n "${CNM_DEBIAN_MIRROR:-}" ]; then
    echo "$CNM_DEBIAN_MIRROR"
    return
  fi
  # deb822 sources ("URIs: ...") first, then one-line sources ("deb URI suite ...").
  local mirror
  mirror=$(grep -hs -A3 '^Types:.*deb' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}')
  if [ -z "$mirror" ]; then
    mirror=$(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$2 ~ /debian\/?$/ && $3 ~ /^bookworm$/ {print $2; exit}')
  fi
  echo "${mirror:-http://deb.debian.org/debian}"
}

arch=$(dpkg --print-architecture)
key=$(printf '%s\n' "$SUITE" "$arch" "${PACKAGES[@]}" | sha256sum | cut -c1-12)
tarball="$CACHE_DIR/rootfs-$SUITE-$arch-$key.tar"

if [ ! -s "$tarball" ] || [ "${CNM_BASE_REBUILD:-0}" = 1 ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
  mkdir -p "$CACHE_DIR"
  rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
  partial=""
  trap 'rm -rf --one-file-system "$rootfs"; rm -f "$partial"' EXIT
  mirror=$(debian_mirror)
  echo "debootstrap $SUITE ($arch) from $mirror into $rootfs" >&2
  include=$(IFS=,; echo "${PACKAGES[*]}")
  debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$mirror" >&2
  # What an image does not need: package caches and lists, docs, man pages.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
         "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*
  # debootstrap copied the build host's resolver and hostname; the container runtime
  # provides its own.
  : > "$rootfs/etc/hostname"
  rm -f "$rootfs/etc/resolv.conf"
  # Written beside the cache entry and renamed into place: a concurrent build
  # never imports a partial tarball.
  partial=$(mktemp "$tarball.XXXXXX")
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$partial" .
  mv "$partial" "$tarball"
  rm -rf --one-file-system "$rootfs"
  trap - EXIT
fi

# Importing makes a new image id every time, which would invalidate every
# layer built on it: skip when TAG already holds this rootfs.
current=$("${DOCKER_CMD[@]}" image inspect --format '{{index .Config.Labels "org.cnm.rootfs"}}' \
  "$TAG" 2>/dev/null || true)
if [ "$current" = "$key" ]; then
  echo "$TAG is up to date (rootfs $key)" >&2
  echo "$TAG"
  exit 0
fi
echo "importing $tarball as $TAG" >&2
"${DOCKER_CMD[@]}" import \
  --change "LABEL org.cnm.rootfs=$key" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  "$tarball" "$TAG" >/dev/null
echo "$TAG"
