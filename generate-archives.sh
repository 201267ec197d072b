#!/usr/bin/env bash
# Build mmlib's wheel and sdist into dist/ inside a throw-away virtual environment.
set -euo pipefail
cd "$(dirname "$0")"
trap 'rm -rf .build-venv' EXIT
python3 -m venv .build-venv
.build-venv/bin/python -m pip install --quiet --upgrade pip build
.build-venv/bin/python -m build --outdir dist .
ls -l dist
