# One Dockerfile for every cnm image. It builds with no registry and no
# package index: BASE_IMAGE is a local Debian bookworm image that already has
# python3, iproute2, nftables and redis-server (deploy/build-base-image.sh),
# and Python packages come from a wheelhouse made on the build host
# (deploy/build-wheelhouse.sh). deploy/build-images.sh runs all three steps.
#
# Targets:
#   service  ipam_service, orchestrator and the `cnm` CLI, as the non-root user cnm
#            (every image has cnm's console scripts: cnm-cni, cnm-docker-plugin too)
#   agent    netdriver_service, as root; the runtime grants it only the
#            capabilities it needs (cap_add in deploy/agent.compose.yml)
#   redis    Debian's redis-server, as the redis user, data in /data
#   prometheus  Debian's Prometheus server (unpacked from its package by
#            deploy/build-images.sh into build/prometheus), as nobody, data in /prometheus
ARG BASE_IMAGE=cnm-base:bookworm

FROM ${BASE_IMAGE} AS build
# deploy/build-images.sh keeps the newest build stage (tagged cnm-build, the next
# build's cache) and removes older ones by this label.
LABEL org.cnm.stage=build
ARG WHEELHOUSE=build/wheelhouse
# Dependencies first, in their own layer: source edits do not reinstall them.
COPY ${WHEELHOUSE}/ /wheelhouse/
RUN python3 -m venv /opt/cnm \
 && /opt/cnm/bin/pip install --quiet --no-cache-dir --no-index --find-links /wheelhouse \
        --requirement /wheelhouse/requirements.txt
COPY pyproject.toml /src/
COPY cnm /src/cnm
COPY ipam_service /src/ipam_service
COPY netdriver_service /src/netdriver_service
COPY orchestrator /src/orchestrator
COPY cnm_cli /src/cnm_cli
COPY cnm_cni /src/cnm_cni
COPY cnm_docker /src/cnm_docker
RUN /opt/cnm/bin/pip install --quiet --no-cache-dir --no-index --no-deps --no-build-isolation /src \
 && /opt/cnm/bin/pip uninstall --quiet --yes pip setuptools wheel

FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/cnm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRPC_ENABLE_FORK_SUPPORT=0
COPY --from=build /opt/cnm /opt/cnm

FROM ${BASE_IMAGE} AS redis
RUN install -d -o redis -g redis -m 0750 /data
VOLUME /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--appendonly", "yes", "--save", ""]

FROM ${BASE_IMAGE} AS prometheus
COPY build/prometheus/usr/bin/prometheus /usr/bin/prometheus
RUN install -d -o nobody -g nogroup -m 0750 /prometheus
VOLUME /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]

FROM runtime AS agent
COPY deploy/agent-entrypoint.sh /usr/local/bin/cnm-agent-entrypoint
ENTRYPOINT ["/usr/local/bin/cnm-agent-entrypoint"]
CMD ["python", "-m", "netdriver_service"]

FROM runtime AS service
RUN groupadd --gid 10001 cnm \
 && useradd --uid 10001 --gid cnm --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin cnm
USER cnm:cnm
CMD ["python", "-m", "orchestrator"]
