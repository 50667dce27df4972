#!/bin/sh
# Entry point of the agent image. The runtime mounts /proc/sys read-only in
# every container that is not `privileged`, but the agent writes sysctls of
# the host's network namespace (net.ipv4.ip_forward, and route_localnet on each
# bridge it makes). With CAP_SYS_ADMIN it makes this container's own view of
# /proc/sys writable; every other read-only and masked /proc path stays so.
# (`docker run --security-opt systempaths=unconfined` would unmask them all,
# and is a docker CLI option that compose files cannot pass.)
set -eu
if ! mount -o remount,bind,rw /proc/sys 2>/dev/null; then
  echo "agent-entrypoint: cannot make /proc/sys writable (needs CAP_SYS_ADMIN and no" \
       "AppArmor mount denial); sysctl changes will fail" >&2
fi
exec "$@"
