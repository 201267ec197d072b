#!/usr/bin/env bash
# Build mmlib's archives inside the Docker image (needs a Docker engine) and copy them to dist/.
set -euo pipefail
cd "$(dirname "$0")"
docker build -t mmlib-build .
mkdir -p dist
docker run --rm -v "$(pwd)/dist:/out" mmlib-build sh -c 'cp /dist/* /out/'
ls -l dist
