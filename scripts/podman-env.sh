#!/usr/bin/env bash
# Run podman (and podman-compose) on a machine without a Docker engine whose host mounts
# cgroup v1. podman works there in a private mount namespace with cgroup v2 mounted on
# /sys/fs/cgroup, and everything that touches the same containers must run in the SAME
# namespace (their network namespaces and storage mounts live there; podman's state is
# global, so a second namespace would also trip over the first one's containers). This
# script keeps one such namespace for the whole machine, pinned to a file under /run (gone
# at reboot, like the containers), and runs its command inside it, with the settings of
# scripts/podman/containers.conf.
#
#   scripts/podman-env.sh images          build the local base image if missing, then the
#                                          orderflow images (service, gateway, onebox, postgres,
#                                          nats)
#   scripts/podman-env.sh base            only the local base image
#   scripts/podman-env.sh COMMAND [ARG..] anything else, e.g.
#       scripts/podman-env.sh podman-compose -f deploy/compose/multi.yaml up -d
#       scripts/podman-env.sh podman ps
#
# Environment: ORDERFLOW_BASE_CACHE (default /var/tmp/orderflow-base) keeps the debootstrap
# root filesystem between runs; ORDERFLOW_TAG (default dev) tags the images;
# BASE_IMAGE overrides the base (default: the local Debian base built here);
# ORDERFLOW_PODMAN_NS_DIR (default /run/orderflow-podman) holds the pinned namespace.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_CACHE=${ORDERFLOW_BASE_CACHE:-/var/tmp/orderflow-base}
LOCAL_BASE=localhost/debian-python:bookworm
TAG=${ORDERFLOW_TAG:-dev}

die() { echo "podman-env: $*" >&2; exit 1; }

NS_DIR=${ORDERFLOW_PODMAN_NS_DIR:-/run/orderflow-podman}

# The pinned namespace: made once (under a lock, several callers may race), then joined.
pinned_namespace() {
    mkdir -p "$NS_DIR"
    exec 9>"$NS_DIR.lock"
    flock 9
    # A namespace copies the mounts of its time: one made before this checkout's file
    # system was mounted cannot see it, so it is replaced (its containers, if any, are
    # left to it).
    if nsenter --mount="$NS_DIR/mnt" true 2>/dev/null &&
        ! nsenter --mount="$NS_DIR/mnt" test -e "$ROOT/scripts/podman-env.sh"; then
        echo "podman-env: $ROOT is not visible in $NS_DIR/mnt; making a new namespace" >&2
        umount "$NS_DIR/mnt"
    fi
    if ! nsenter --mount="$NS_DIR/mnt" true 2>/dev/null; then
        # A namespace can be pinned only on a private mount: make NS_DIR one.
        if ! mountpoint -q "$NS_DIR"; then
            mount --bind "$NS_DIR" "$NS_DIR"
        fi
        mount --make-private "$NS_DIR"
        touch "$NS_DIR/mnt"
        # shellcheck disable=SC2016  # expanded by the inner shell
        unshare --mount="$NS_DIR/mnt" --propagation private sh -euc '
            for d in /sys/fs/cgroup/*; do umount "$d" 2>/dev/null || true; done
            umount /sys/fs/cgroup
            mount -t cgroup2 none /sys/fs/cgroup'
        echo "podman-env: made the podman mount namespace $NS_DIR/mnt" >&2
    fi
    exec 9>&-
}

if [[ "${ORDERFLOW_PODMAN_NS:-}" != 1 ]]; then
    [[ $(id -u) == 0 ]] || die "needs root (rootful podman in a private mount namespace)"
    command -v podman >/dev/null || die "podman is not installed (apt-get install podman)"
    export ORDERFLOW_PODMAN_NS=1
    if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
        exec "$0" "$@"   # the host already has cgroup v2: no namespace needed
    fi
    pinned_namespace
    exec nsenter --mount="$NS_DIR/mnt" --wd="$PWD" -- "$0" "$@"
fi
[[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]] || die "no cgroup v2 in this namespace"
export CONTAINERS_CONF="$ROOT/scripts/podman/containers.conf"
export BUILDAH_ISOLATION=chroot

base_image() {
    podman image exists "$LOCAL_BASE" && return 0
    local rootfs="$BASE_CACHE/rootfs"
    if [[ ! -x "$rootfs/usr/bin/python3" ]]; then
        command -v debootstrap >/dev/null || die "debootstrap is not installed"
        local mirror
        mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
            true)
        mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
        [[ -n "$mirror" ]] || die "no Debian mirror found in the apt sources"
        echo "podman-env: debootstrap of the base into $rootfs (about a minute)" >&2
        mkdir -p "$BASE_CACHE"
        rm -rf "$rootfs.tmp"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs.tmp" "$mirror" >"$BASE_CACHE/debootstrap.log" 2>&1 ||
            die "debootstrap failed, see $BASE_CACHE/debootstrap.log"
        mv "$rootfs.tmp" "$rootfs"
    fi
    # Like a slim image: no package cache or lists, documentation or translations.
    tar -C "$rootfs" \
        --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' \
        --exclude='./usr/share/doc/*' --exclude='./usr/share/man/*' \
        --exclude='./usr/share/locale/*' --exclude='./usr/share/info/*' \
        -c . | podman import --quiet - "$LOCAL_BASE" >/dev/null
    echo "podman-env: imported $LOCAL_BASE" >&2
}

build() {  # build IMAGE DOCKERFILE [TARGET]
    local image=$1 file=$2 target=${3:-}
    local args=(--network=host --layers --quiet --format docker -f "$file" -t "$image"
        --build-arg "BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}")
    # pip in the build trusts what the host trusts (a registry may be reached through a
    # proxy that re-signs TLS); apt there fetches signed packages and needs no such thing.
    if [[ -d /etc/ssl/certs && "$file" != *postgres* && "$file" != *nats* ]]; then
        args+=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
    fi
    [[ -n "$target" ]] && args+=(--target "$target")
    echo "podman-env: building $image" >&2
    podman build "${args[@]}" "$ROOT" >/dev/null
}

images() {
    [[ -n "${BASE_IMAGE:-}" ]] || base_image
    local target
    for target in service gateway onebox; do
        build "localhost/orderflow-$target:$TAG" "$ROOT/deploy/docker/Dockerfile" "$target"
    done
    build "localhost/orderflow-postgres:$TAG" "$ROOT/deploy/docker/postgres.Dockerfile"
    build "localhost/orderflow-nats:$TAG" "$ROOT/deploy/docker/nats.Dockerfile"
}

case "${1:-}" in
    "") die "usage: $0 images | base | COMMAND [ARGS...]" ;;
    images) images ;;
    base) base_image ;;
    *) exec "$@" ;;
esac
