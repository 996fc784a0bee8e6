#!/usr/bin/env bash
# Build the node image (Ray driver/head/workers and the MLflow server) and the PostgreSQL image.
#   docker/build.sh [WHEEL_DIR]   # WHEEL_DIR holds the torch wheel pip uses here (default /opt/wheels)
# The torch wheel is copied into the build context: the image installs torch from it, never from an index.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="${1:-/opt/wheels}"
mkdir -p docker/wheels
cp "$wheels"/torch-2.13.0*.whl docker/wheels/
# Installs from PyPI during the build need the host's network (the default bridge may not resolve it).
docker build --network host -f docker/Dockerfile -t catsith-node:0.1.0 .
docker build --network host -f docker/postgres.Dockerfile -t catsith-postgres:15 docker
