#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what is missing, lints, type-checks, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# tests/browser drive Debian's Chromium with Playwright (from the dev extra; no browser download). They fail,
# never skip, without it, so install it here when we may.
if [ ! -x "${MOTIF_TEST_CHROMIUM:-/usr/bin/chromium}" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "the browser tests need Chromium at /usr/bin/chromium: apt-get install -y chromium (as root)" >&2
  fi
fi
python -m ruff check src tests test_pipeline.py
python -m mypy src
python -m pytest "$@"
