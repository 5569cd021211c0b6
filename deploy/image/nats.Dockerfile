# The NATS server the fleet's 3-node cluster runs (deploy/compose/nats,
# deploy/k8s/nats): built from its Go module at the version `make
# nats-server` builds and the failover test ran (NATS_VERSION in the
# Makefile; a test keeps the two equal), not pulled from elsewhere.
# Context: this directory (nothing of the repository is needed).
#   docker build -f deploy/image/nats.Dockerfile -t edgefleet/nats:v2.15.3 deploy/image
FROM golang:1.26-bookworm AS build
ARG NATS_VERSION=v2.15.3
RUN CGO_ENABLED=0 GOBIN=/out GOFLAGS=-buildvcs=false \
      go install -trimpath -ldflags "-s -w" github.com/nats-io/nats-server/v2@${NATS_VERSION} && \
    /out/nats-server --version

FROM debian:12-slim
ARG NATS_VERSION=v2.15.3
LABEL org.opencontainers.image.title="nats-server for edgefleet" \
      org.opencontainers.image.version="${NATS_VERSION}"
# uid/gid 10002: broker sync runs as the same user beside each node, so it
# may signal the node (SIGHUP) to reread its logins; the Kubernetes
# manifest's securityContext and compose's user say the same.
RUN groupadd --system --gid 10002 nats && \
    useradd --system --uid 10002 --gid 10002 --home-dir /data --shell /usr/sbin/nologin nats && \
    mkdir -p /data/jetstream /etc/nats/run && chown -R nats:nats /data /etc/nats/run
COPY --from=build /out/nats-server /usr/local/bin/nats-server
USER 10002:10002
VOLUME /data
# 8883 MQTT over TLS (devices, the control plane), 6222 routes, 8222 /healthz.
EXPOSE 8883 6222 8222
ENTRYPOINT ["/usr/local/bin/nats-server"]
