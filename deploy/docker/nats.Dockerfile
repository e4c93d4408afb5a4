# NATS with JetStream from Debian's own `nats-server` package (2.9), for the compose and
# Kubernetes deployments (deploy/compose/multi.yaml, deploy/k8s/base/nats.yaml): the broker
# of the services' events (stream ORDERFLOW_EVENTS, see docs/deploy.md). JetStream keeps
# its streams under /data (a volume); port 4222 is for clients, 8222 for monitoring
# (GET /healthz answers 200 once JetStream is up).
#
#   docker build -f deploy/docker/nats.Dockerfile -t orderflow-nats .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-e", "-c"]
# The package's own `nats` system user is left alone; the server runs as uid 10001 like
# every orderflow image, so Kubernetes can run it with runAsNonRoot and fsGroup 10001.
# hadolint ignore=DL3008
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get update \
    && apt-get install -y --no-install-recommends nats-server \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /etc/nats-server.conf \
    && groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin orderflow \
    && mkdir -p /data \
    && chown 10001:10001 /data

COPY deploy/docker/nats.conf /etc/nats/nats.conf
VOLUME ["/data"]
EXPOSE 4222 8222
USER 10001:10001
ENTRYPOINT ["/usr/sbin/nats-server"]
CMD ["--config", "/etc/nats/nats.conf"]
