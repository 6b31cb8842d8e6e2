#!/usr/bin/env bash
# A local stand-in for the official base image apache/airflow:3.3.2-python3.11, for machines that
# cannot pull it (no registry here). A TEST AID: deploy on the official image.
#
#   images/airflow-base/build.sh [TAG]      # default tag: fanout-airflow-base:3.3.2-python3.11
#
# 1. `debootstrap --variant=minbase bookworm` and `docker import` give a Debian image with
#    Python 3.11 (bookworm's python3 and venv), curl, dumb-init and this host's CA
#    bundle (pip inside a build needs it here); cached as fanout-debian:bookworm-python3.11.
# 2. images/airflow-base/Dockerfile adds what fanout relies on in the official image: user
#    `airflow` (uid 50000, gid 0), AIRFLOW_HOME=/opt/airflow, a Python environment in
#    /home/airflow/.local that `pip install` as airflow fills, apache-airflow==3.3.2 and an
#    entrypoint that runs `airflow <args>` (or bash/python), as the official one does.
# Needs root, debootstrap and a Docker engine (images/dockerd.sh start).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TAG="${1:-fanout-airflow-base:3.3.2-python3.11}"
DEBIAN_IMAGE=fanout-debian:bookworm-python3.11
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  rootfs="$(mktemp -d /var/tmp/fanout-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,curl,dumb-init,procps \
    bookworm "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$DEBIAN_IMAGE" >/dev/null
fi

docker build --network host -q -t "$TAG" \
  --build-arg DEBIAN_IMAGE="$DEBIAN_IMAGE" \
  -f "$ROOT/images/airflow-base/Dockerfile" "$ROOT/images/airflow-base" >/dev/null
echo "$TAG"
