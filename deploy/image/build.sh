#!/usr/bin/env bash
# Builds the Weir container image from this repository's own files, with no registry:
#   1. once, a Debian bookworm base root filesystem made with debootstrap and imported as
#      `weir-base:bookworm` (skipped when that image exists);
#   2. the release binary built on the host (`cargo build --release -p weir`);
#   3. `weir:<version>` (and `weir:latest`) FROM the base, with the binary, a `weir` user
#      and /var/lib/weir owned by it.
#
#   deploy/image/build.sh [--skip-cargo]
#   WEIR_IMAGE_BINARY=target/debug/weir deploy/image/build.sh   (another binary, no cargo)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

if ! docker image inspect weir-base:bookworm >/dev/null 2>&1; then
  echo "== base image: debootstrap bookworm (minbase)"
  if ! command -v debootstrap >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null
  fi
  mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d /tmp/weir-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase \
    --include=iproute2,iptables,procps,tini,ca-certificates,netbase \
    bookworm "$rootfs" "$mirror" >/tmp/weir-debootstrap.log 2>&1 \
    || { tail -20 /tmp/weir-debootstrap.log; exit 1; }
  # what a container never needs
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  tar -C "$rootfs" -c . | docker import - weir-base:bookworm >/dev/null
  echo "imported weir-base:bookworm"
fi

binary=${WEIR_IMAGE_BINARY:-target/release/weir}
if [ "${1:-}" != "--skip-cargo" ] && [ -z "${WEIR_IMAGE_BINARY:-}" ]; then
  echo "== release binary"
  cargo build --release --locked -q -p weir
fi
context=$(mktemp -d /tmp/weir-image.XXXXXX)
cp "$binary" "$context/weir"
strip "$context/weir" 2>/dev/null || true
cp "$here/Dockerfile" "$context/Dockerfile"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
echo "== weir:$version"
docker build -q -t "weir:$version" -t weir:latest "$context" >/dev/null
rm -rf "$context"
docker image ls weir --format '{{.Repository}}:{{.Tag}} {{.Size}}'
