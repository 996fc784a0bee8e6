#!/usr/bin/env bash
# Build the local base images the node and database images start from, without Docker Hub:
# a Debian bookworm root filesystem from Debian's packages (debootstrap), imported with `docker import`.
#   sudo docker/build-base.sh            # -> catsith-base:bookworm, catsith-postgres-base:bookworm
# Needs: debootstrap (apt-get install debootstrap), a running dockerd, Debian's package mirror.
set -euo pipefail
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
build() {  # build TAG PACKAGES
    local root="$work/$1"
    debootstrap --variant=minbase --include="$2" bookworm "$root" "$MIRROR"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import - "$1"
}
# bookworm's python3 is 3.11: the same ABI as the cp311 torch wheel.
build catsith-base:bookworm "python3,python3-venv,ca-certificates,tini,procps"
build catsith-postgres-base:bookworm "postgresql-15,ca-certificates,tini"
