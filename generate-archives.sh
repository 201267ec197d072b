#!/usr/bin/env bash
# Build mmlib's wheel and sdist into dist/ inside a fresh virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .build-venv
.build-venv/bin/python -m pip install --quiet --upgrade pip build
.build-venv/bin/python -m build --outdir dist .
rm -rf .build-venv
ls -l dist
