# PostgreSQL from Debian's own package, for the compose and Kubernetes examples
# (deploy/compose/multi.yaml, deploy/k8s/overlays/postgres). It creates, on first start,
# one database per name in POSTGRES_DATABASES, each owned by a login role of the same
# name whose password is in POSTGRES_PASSWORD_<NAME> (or the file POSTGRES_PASSWORD_<NAME>_FILE
# names); only that role may connect to it. The superuser has no password and is reachable
# only through the local socket.
#
#   docker build -f deploy/docker/postgres.Dockerfile -t orderflow-postgres .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-e", "-c"]
# The fixed ids let Kubernetes run it with runAsUser/fsGroup 999 and runAsNonRoot.
# Debian's package would create a cluster of its own at install time; ours is made
# by the entry point in PGDATA instead. The JIT provider and the LLVM it loads (over
# 130 MB) go: without them PostgreSQL runs every query without JIT, which orderflow's
# short statements never benefit from anyway.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql \
        --shell /bin/bash postgres \
    && export DEBIAN_FRONTEND=noninteractive \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common \
    && sed -ri 's/^#?\s*(create_main_cluster)\s*=.*$/\1 = false/' \
        /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
    && rm -rf /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode \
        /usr/lib/*-linux-gnu/libLLVM-* /usr/lib/*-linux-gnu/libz3.so.* \
    && if ldd /usr/lib/postgresql/15/bin/postgres | grep 'not found'; then exit 1; fi \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R 999:999 /var/lib/postgresql /run/postgresql \
    && chmod 0700 /var/lib/postgresql/data

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data/pgdata
COPY --chmod=0755 deploy/docker/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
USER 999:999
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
