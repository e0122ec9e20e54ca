#!/usr/bin/env bash
# Install cosmos-kernels with its test dependencies and run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch>=2.6" setuptools wheel ninja
python3 -m pip install -q --no-build-isolation -e ".[test]"
python3 -m pytest -q "$@"
