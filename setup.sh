#!/usr/bin/env bash
# Create .venv and install mmlib into it (with pymongo, a default dependency, so both stores work), with the
# `examples` extra (Pillow, for the provenance example's images) and the `bench` one (matplotlib). `--test` adds
# the `test` extra: pytest, mypy (the README's test command type-checks mmlib first), the secantusdb MongoDB
# wire-protocol server the tests start, transformers for the model zoo tests, Playwright for the web view's browser
# tests, and the system's Chromium for it to drive (installed with apt-get when missing and this runs as root;
# Playwright's own browser download is not used; without Chromium those tests are skipped).
#
# torch comes pinned and first: an unpinned torch, or PyPI's torch on Linux, is a CUDA build of several GB.
# A torch wheel that pip finds without an index (its find-links, e.g. a local folder of wheels) is used if
# there is one; else the CPU build from PyTorch's CPU index. TORCH_INDEX_URL names another index, such as
# a CUDA one of PyTorch's (https://download.pytorch.org/whl/cu128).
set -euo pipefail
cd "$(dirname "$0")"
torch_pin="torch==2.13.0"
cpu_index="https://download.pytorch.org/whl/cpu"
python3 -m venv .venv
pip=(.venv/bin/python -m pip)
"${pip[@]}" install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" install --quiet "$torch_pin" --index-url "$TORCH_INDEX_URL"
elif "${pip[@]}" install --quiet --dry-run --no-index --no-deps "$torch_pin" >/dev/null 2>&1; then
    # The local wheel; its dependencies come from pip's usual sources.
    "${pip[@]}" install --quiet "$torch_pin"
else
    echo "no local torch wheel: installing the CPU build of $torch_pin from $cpu_index"
    "${pip[@]}" install --quiet "$torch_pin" --index-url "$cpu_index"
fi
extras="examples,bench"

# The system's Chromium for the browser tests (tests/ui), installed quietly where it is missing and apt-get can; a
# failure here only means those tests skip, so it never fails the setup.
install_chromium() {
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "no chromium here: the browser tests will be skipped (apt-get install chromium, as root, adds it)"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "could not install chromium: the browser tests will be skipped"
}

if [ "${1:-}" = "--test" ]; then
    extras="test,examples,bench"
    install_chromium
fi
"${pip[@]}" install --quiet -e ".[${extras}]"
echo "mmlib is installed in $(pwd)/.venv; activate it with: source .venv/bin/activate"
