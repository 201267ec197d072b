#!/usr/bin/env bash
# Create .venv and install mmlib into it. `--test` adds the test and benchmark tools
# (pytest, the secantusdb MongoDB wire-protocol server the tests start, transformers for the model zoo
# tests, matplotlib).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Pinned and first: an unpinned torch would pull several GB of CUDA packages.
.venv/bin/python -m pip install --quiet torch==2.13.0
extras="bench"
if [ "${1:-}" = "--test" ]; then
    extras="test,bench"
fi
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
echo "mmlib is installed in $(pwd)/.venv"
