#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, lints, type-checks, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
python -m ruff check src tests test_pipeline.py
python -m mypy src
python -m pytest "$@"
